//! One collection from the cluster: partition offsets (log start, high watermark, last stable
//! offset), consumer groups with their members' assignments, each group's commits, and a probe
//! of the first record each lagging group has not consumed. Blocking librdkafka calls, each
//! bounded by the timeout; the caller runs a collection on the blocking pool, never on scrape.
//!
//! Costs (`BENCHMARKS.md`, "Lag exporter"): two ListOffsets per partition (rust-rdkafka has no
//! batched call); one OffsetFetch per group, by `COMMIT_READERS` threads; probes batched across
//! groups (one read per topic and isolation level), their answers cached (a record found at or
//! after a position does not change).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use boxoffice_topics::kafka::KafkaArgs;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use thiserror::Error;

use crate::assignment;
use crate::lag::{FirstUnconsumed, PartitionOffsets};

#[derive(Debug, Error)]
pub enum CollectError {
    #[error("creating a Kafka client: {0}")]
    Client(KafkaError),
    #[error("the collection task panicked: {0}")]
    Panicked(String),
    #[error("{what}: {source}")]
    Kafka {
        what: String,
        #[source]
        source: KafkaError,
    },
}

fn kafka(what: impl Into<String>) -> impl FnOnce(KafkaError) -> CollectError {
    let what = what.into();
    move |source| CollectError::Kafka { what, source }
}

/// A member owning a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub client_id: String,
    pub host: String,
}

/// One group as a collection saw it.
#[derive(Debug, Clone)]
pub struct GroupView {
    pub name: String,
    pub state: String,
    pub members: usize,
    pub read_committed: bool,
    /// Committed offsets, by partition (only partitions with a commit).
    pub committed: Commits,
    /// Owners, by partition.
    pub owners: BTreeMap<(String, i32), Owner>,
    /// What a reader with the group's isolation found from the group's position, where probed.
    pub first: BTreeMap<(String, i32), FirstUnconsumed>,
}

/// Everything one collection read.
#[derive(Debug, Clone, Default)]
pub struct Collection {
    pub offsets: BTreeMap<(String, i32), PartitionOffsets>,
    pub groups: Vec<GroupView>,
}

/// Which groups read `read_committed`: names starting with one of the prefixes (`*`: every
/// group).
#[derive(Debug, Clone)]
pub struct Isolation {
    pub read_committed_prefixes: Vec<String>,
}

impl Isolation {
    pub fn read_committed(&self, group: &str) -> bool {
        self.read_committed_prefixes
            .iter()
            .any(|p| p == "*" || group.starts_with(p.as_str()))
    }
}

/// The probes' context: reaching the end of a partition is an answer there, not an error to log
/// (librdkafka reports it as an error event).
#[derive(Debug, Clone, Copy)]
pub struct ProbeContext;

impl ClientContext for ProbeContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::Global(RDKafkaErrorCode::PartitionEOF)) {
            tracing::warn!(%error, reason, "probe client error");
        }
    }
}

impl ConsumerContext for ProbeContext {}

/// The clients of the collections, kept between them.
#[allow(missing_debug_implementations)] // librdkafka clients have no useful Debug
pub struct Collector {
    kafka: KafkaArgs,
    topic_prefix: String,
    isolation: Isolation,
    probe_timeout: Duration,
    /// `read_uncommitted`: metadata, groups, log start and high watermark.
    uncommitted: BaseConsumer,
    /// `read_committed`: the last stable offset (librdkafka lists offsets with the client's
    /// isolation level).
    committed_reader: BaseConsumer,
    probes: [BaseConsumer<ProbeContext>; 2],
    /// One client per group (the group id is how OffsetFetch names it); dropped with the group.
    group_clients: HashMap<String, BaseConsumer>,
    /// First records found, by `(read_committed, topic, partition, from)`: records do not change.
    first_cache: HashMap<(bool, String, i32, i64), FirstUnconsumed>,
}

/// Client ids and group ids of the exporter's own clients (never joined: no rebalances).
const CLIENT: &str = "boxoffice-lag-exporter";
/// First records remembered at most (then forgotten at once; they are re-probed).
const FIRST_CACHE_LIMIT: usize = 100_000;
/// A group's committed offsets, by partition.
type Commits = BTreeMap<(String, i32), i64>;

/// Threads reading group commits at once.
const COMMIT_READERS: usize = 8;
/// Records one probe reads past a partition's lowest wanted position before it leaves the
/// higher positions to the next collection (groups far apart on one partition).
const MAX_PROBE_SPAN: i64 = 50_000;

impl Collector {
    pub fn new(
        kafka: KafkaArgs,
        topic_prefix: String,
        isolation: Isolation,
        probe_timeout: Duration,
    ) -> Result<Self, CollectError> {
        let config = |isolation: &str, eof: bool| {
            let mut config = kafka.client_config();
            config
                .set("group.id", CLIENT)
                .set("client.id", CLIENT)
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("isolation.level", isolation)
                .set("enable.partition.eof", if eof { "true" } else { "false" })
                // A probe wants the end of a partition answered at once, not after 500 ms.
                .set("fetch.wait.max.ms", "10");
            config
        };
        let client = |isolation: &str| -> Result<BaseConsumer, CollectError> {
            config(isolation, false)
                .create()
                .map_err(CollectError::Client)
        };
        let probe = |isolation: &str| -> Result<BaseConsumer<ProbeContext>, CollectError> {
            config(isolation, true)
                .create_with_context(ProbeContext)
                .map_err(CollectError::Client)
        };
        Ok(Self {
            uncommitted: client("read_uncommitted")?,
            committed_reader: client("read_committed")?,
            probes: [probe("read_uncommitted")?, probe("read_committed")?],
            kafka,
            topic_prefix,
            isolation,
            probe_timeout,
            group_clients: HashMap::new(),
            first_cache: HashMap::new(),
        })
    }

    /// Reads the cluster once (blocking).
    pub fn collect(&mut self) -> Result<Collection, CollectError> {
        let started = Instant::now();
        let timeout = self.kafka.timeout;
        let metadata = self
            .uncommitted
            .fetch_metadata(None, timeout)
            .map_err(kafka("reading metadata"))?;
        let partitions: Vec<(String, i32)> = metadata
            .topics()
            .iter()
            .filter(|t| !t.name().starts_with("__") && t.name().starts_with(&self.topic_prefix))
            .flat_map(|t| t.partitions().iter().map(|p| (t.name().to_owned(), p.id())))
            .collect();
        let mut offsets = BTreeMap::new();
        for (topic, partition) in &partitions {
            let (log_start, high_watermark) = self
                .uncommitted
                .fetch_watermarks(topic, *partition, timeout)
                .map_err(kafka(format!("listing offsets of {topic}[{partition}]")))?;
            let (_, last_stable) = self
                .committed_reader
                .fetch_watermarks(topic, *partition, timeout)
                .map_err(kafka(format!(
                    "listing stable offsets of {topic}[{partition}]"
                )))?;
            offsets.insert(
                (topic.clone(), *partition),
                PartitionOffsets {
                    log_start,
                    high_watermark,
                    last_stable,
                },
            );
        }
        tracing::debug!(
            partitions = offsets.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "offsets listed"
        );
        let list = self
            .uncommitted
            .fetch_group_list(None, timeout)
            .map_err(kafka("listing consumer groups"))?;
        let mut listed = Vec::new();
        for info in list.groups() {
            let consumer_protocol = matches!(info.protocol_type(), "consumer" | "");
            if !consumer_protocol || info.name() == CLIENT {
                continue;
            }
            let mut owners = BTreeMap::new();
            for member in info.members() {
                // A member whose assignment does not parse owns nothing we can name.
                let owned = member.assignment().map(assignment::parse);
                for tp in owned.and_then(Result::ok).unwrap_or_default() {
                    let owner = Owner {
                        client_id: member.client_id().to_owned(),
                        host: member.client_host().to_owned(),
                    };
                    owners.insert(tp, owner);
                }
            }
            listed.push(GroupView {
                name: info.name().to_owned(),
                state: info.state().to_owned(),
                members: info.members().len(),
                read_committed: self.isolation.read_committed(info.name()),
                committed: BTreeMap::new(),
                owners,
                first: BTreeMap::new(),
            });
        }
        // A client per group as long as the group exists (creating one costs threads).
        self.group_clients
            .retain(|name, _| listed.iter().any(|g| &g.name == name));
        for group in &listed {
            if !self.group_clients.contains_key(&group.name) {
                let client = self
                    .kafka
                    .client_config()
                    // Reads the group's offsets; never joins it (no subscribe, no commit).
                    .set("group.id", &group.name)
                    .set("client.id", CLIENT)
                    .set("enable.auto.commit", "false")
                    .create()
                    .map_err(CollectError::Client)?;
                self.group_clients.insert(group.name.clone(), client);
            }
        }
        let commits = self.committed(&listed, &partitions)?;
        let mut groups: Vec<GroupView> = listed
            .into_iter()
            .zip(commits)
            .filter(|(group, committed)| !committed.is_empty() || !group.owners.is_empty())
            .map(|(group, committed)| GroupView { committed, ..group })
            .collect();
        tracing::debug!(
            groups = groups.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "commits read"
        );
        self.probe(&groups, &offsets);
        tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "probed");
        for group in &mut groups {
            group.first = self.answers(group, &offsets);
        }
        Ok(Collection { offsets, groups })
    }

    /// The commits of every group on `partitions`, read by up to `COMMIT_READERS` threads
    /// (one OffsetFetch per group: rust-rdkafka has no batched call).
    fn committed(
        &self,
        groups: &[GroupView],
        partitions: &[(String, i32)],
    ) -> Result<Vec<Commits>, CollectError> {
        let read = |group: &GroupView| -> Result<Commits, CollectError> {
            let Some(client) = self.group_clients.get(&group.name) else {
                return Ok(BTreeMap::new());
            };
            let mut list = TopicPartitionList::new();
            for (topic, partition) in partitions {
                list.add_partition(topic, *partition);
            }
            let answer = client
                .committed_offsets(list, self.kafka.timeout)
                .map_err(kafka(format!(
                    "reading the commits of group {}",
                    group.name
                )))?;
            Ok(answer
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(n) => Some(((e.topic().to_owned(), e.partition()), n)),
                    _ => None,
                })
                .collect())
        };
        let chunk = groups.len().div_ceil(COMMIT_READERS).max(1);
        std::thread::scope(|scope| {
            let readers: Vec<_> = groups
                .chunks(chunk)
                .map(|chunk| scope.spawn(|| chunk.iter().map(read).collect::<Result<Vec<_>, _>>()))
                .collect();
            let mut out = Vec::with_capacity(groups.len());
            for reader in readers {
                let read = reader
                    .join()
                    .map_err(|_| CollectError::Panicked("a commit reader".to_owned()))??;
                out.extend(read);
            }
            Ok(out)
        })
    }

    /// Where `group` must be probed on `tp` (its position, when offsets leave records to
    /// find), and the end its reader sees there.
    fn position(
        group: &GroupView,
        tp: &(String, i32),
        offsets: &BTreeMap<(String, i32), PartitionOffsets>,
    ) -> Option<(i64, i64)> {
        let o = offsets.get(tp)?;
        let rc = group.read_committed;
        let from = crate::lag::probe_from(*o, group.committed.get(tp).copied(), rc)?;
        Some((from, o.end(rc)))
    }

    /// A cached answer that still holds: a record stays what it is; "nothing before" holds
    /// while the end has not moved.
    fn cached(&self, rc: bool, tp: &(String, i32), from: i64, end: i64) -> Option<FirstUnconsumed> {
        self.first_cache
            .get(&(rc, tp.0.clone(), tp.1, from))
            .filter(
                |hit| !matches!(hit, FirstUnconsumed::NothingBefore { end: seen } if *seen != end),
            )
            .copied()
    }

    /// Finds the first record at or after every position some group needs and the cache does
    /// not hold: one read per topic and isolation level for all groups together, each
    /// partition from its lowest wanted position (at most `MAX_PROBE_SPAN` records on).
    fn probe(&mut self, groups: &[GroupView], offsets: &BTreeMap<(String, i32), PartitionOffsets>) {
        type Wanted = BTreeMap<i32, (BTreeSet<i64>, i64)>;
        let mut wanted: BTreeMap<(bool, String), Wanted> = BTreeMap::new();
        for group in groups {
            let rc = group.read_committed;
            for tp in group.committed.keys() {
                let Some((from, end)) = Self::position(group, tp, offsets) else {
                    continue;
                };
                if self.cached(rc, tp, from, end).is_none() {
                    let partitions = wanted.entry((rc, tp.0.clone())).or_default();
                    partitions
                        .entry(tp.1)
                        .or_insert_with(|| (BTreeSet::new(), end))
                        .0
                        .insert(from);
                }
            }
        }
        for ((rc, topic), partitions) in wanted {
            self.probe_topic(rc, &topic, partitions);
        }
    }

    /// What `group` would get first on each partition it lags on, from the cache.
    fn answers(
        &self,
        group: &GroupView,
        offsets: &BTreeMap<(String, i32), PartitionOffsets>,
    ) -> BTreeMap<(String, i32), FirstUnconsumed> {
        group
            .committed
            .keys()
            .filter_map(|tp| {
                let (from, end) = Self::position(group, tp, offsets)?;
                let answer = self.cached(group.read_committed, tp, from, end)?;
                Some((tp.clone(), answer))
            })
            .collect()
    }

    /// Reads `topic` (isolation `rc`) from each partition's lowest wanted position, answering
    /// every wanted position with the first record at or after it, or "nothing before the end"
    /// at the partition's end, within the probe timeout. Answers go to the cache; positions
    /// left unanswered are probed again next time.
    fn probe_topic(
        &mut self,
        rc: bool,
        topic: &str,
        mut pending: BTreeMap<i32, (BTreeSet<i64>, i64)>,
    ) {
        let mut list = TopicPartitionList::new();
        for (partition, (positions, _)) in &pending {
            if let Some(first) = positions.first() {
                // A listed offset is always a valid position; a failure only skips the probe.
                let _ = list.add_partition_offset(topic, *partition, Offset::Offset(*first));
            }
        }
        let probe = &self.probes[usize::from(rc)];
        if let Err(e) = probe.assign(&list) {
            tracing::warn!(topic, error = %e, "probe assignment failed");
            return;
        }
        // librdkafka keeps a partition paused across assignments: undo an earlier probe's pause.
        let _ = probe.resume(&list);
        let mut answers: Vec<(i32, i64, FirstUnconsumed)> = Vec::new();
        let deadline = Instant::now() + self.probe_timeout;
        while !pending.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let (partition, answer, upto) = match probe.poll(left) {
                Some(Ok(message)) => {
                    let record = FirstUnconsumed::Record {
                        offset: message.offset(),
                        timestamp_ms: message.timestamp().to_millis().unwrap_or(0),
                    };
                    (message.partition(), record, message.offset())
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    let end = pending.get(&partition).map_or(0, |(_, end)| *end);
                    (partition, FirstUnconsumed::NothingBefore { end }, i64::MAX)
                }
                Some(Err(e)) => {
                    tracing::debug!(topic, error = %e, "probe read failed");
                    continue;
                }
                None => continue,
            };
            let Some((positions, _)) = pending.get_mut(&partition) else {
                continue;
            };
            // Reading in order: this record is the first at or after every position up to it.
            let answered: Vec<i64> = positions.range(..=upto).copied().collect();
            for from in answered {
                positions.remove(&from);
                answers.push((partition, from, answer));
            }
            // Groups far ahead of the lowest position wait for the next collection.
            let read = upto.saturating_sub(list_start(&list, partition));
            let too_far = upto != i64::MAX && read > MAX_PROBE_SPAN;
            if positions.is_empty() || too_far {
                pending.remove(&partition);
                let mut done = TopicPartitionList::new();
                done.add_partition(topic, partition);
                let _ = probe.pause(&done);
            }
        }
        let _ = probe.unassign();
        tracing::debug!(
            topic,
            answered = answers.len(),
            left = pending.len(),
            "probed"
        );
        if self.first_cache.len() + answers.len() > FIRST_CACHE_LIMIT {
            self.first_cache.clear();
        }
        for (partition, from, answer) in answers {
            self.first_cache
                .insert((rc, topic.to_owned(), partition, from), answer);
        }
    }
}

/// The offset `partition` was assigned from in `list`.
fn list_start(list: &TopicPartitionList, partition: i32) -> i64 {
    list.elements()
        .iter()
        .find(|e| e.partition() == partition)
        .and_then(|e| match e.offset() {
            Offset::Offset(n) => Some(n),
            _ => None,
        })
        .unwrap_or(0)
}
