//! One collection from the cluster: partition offsets (log start, high watermark, last stable
//! offset), consumer groups with their members' assignments, each group's commits, and a probe
//! of the first record each lagging group has not consumed. Blocking librdkafka calls, each
//! bounded by the timeout; the caller runs a collection on the blocking pool, never on scrape.
//!
//! Per-partition ListOffsets requests (rust-rdkafka has no batched call): two per partition a
//! collection; `BENCHMARKS.md` has what that costs.

use std::collections::{BTreeMap, HashMap};
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
    pub committed: BTreeMap<(String, i32), i64>,
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
        let list = self
            .uncommitted
            .fetch_group_list(None, timeout)
            .map_err(kafka("listing consumer groups"))?;
        let mut groups = Vec::new();
        for info in list.groups() {
            let name = info.name();
            let consumer_protocol = matches!(info.protocol_type(), "consumer" | "");
            if !consumer_protocol || name == CLIENT {
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
            let committed = self.committed(name, &partitions)?;
            if committed.is_empty() && owners.is_empty() {
                continue;
            }
            groups.push(GroupView {
                name: name.to_owned(),
                state: info.state().to_owned(),
                members: info.members().len(),
                read_committed: self.isolation.read_committed(name),
                committed,
                owners,
                first: BTreeMap::new(),
            });
        }
        self.group_clients
            .retain(|name, _| groups.iter().any(|g| &g.name == name));
        for group in &mut groups {
            group.first = self.probe(group, &offsets);
        }
        Ok(Collection { offsets, groups })
    }

    /// The group's commits on `partitions`.
    fn committed(
        &mut self,
        group: &str,
        partitions: &[(String, i32)],
    ) -> Result<BTreeMap<(String, i32), i64>, CollectError> {
        let client = match self.group_clients.entry(group.to_owned()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(
                self.kafka
                    .client_config()
                    // Reads the group's offsets; never joins it (no subscribe, no commit).
                    .set("group.id", group)
                    .set("client.id", CLIENT)
                    .set("enable.auto.commit", "false")
                    .create()
                    .map_err(CollectError::Client)?,
            ),
        };
        let mut list = TopicPartitionList::new();
        for (topic, partition) in partitions {
            list.add_partition(topic, *partition);
        }
        let answer = client
            .committed_offsets(list, self.kafka.timeout)
            .map_err(kafka(format!("reading the commits of group {group}")))?;
        Ok(answer
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(n) => Some(((e.topic().to_owned(), e.partition()), n)),
                _ => None,
            })
            .collect())
    }

    /// The first record the group would get on each partition where offsets leave one to find.
    fn probe(
        &mut self,
        group: &GroupView,
        offsets: &BTreeMap<(String, i32), PartitionOffsets>,
    ) -> BTreeMap<(String, i32), FirstUnconsumed> {
        let rc = group.read_committed;
        let mut found = BTreeMap::new();
        // Partition -> (position, end), by topic: one assignment per topic, because an
        // end-of-partition event names the partition only.
        let mut wanted: BTreeMap<String, HashMap<i32, (i64, i64)>> = BTreeMap::new();
        for (tp, committed) in &group.committed {
            let Some(o) = offsets.get(tp) else { continue };
            let Some(from) = crate::lag::probe_from(*o, Some(*committed), rc) else {
                continue;
            };
            let end = if rc { o.last_stable } else { o.high_watermark };
            // A record stays what it is; "nothing before" holds while the end has not moved.
            let cached = self.first_cache.get(&(rc, tp.0.clone(), tp.1, from)).filter(|hit| {
                !matches!(hit, FirstUnconsumed::NothingBefore { end: seen } if *seen != end)
            });
            match cached {
                Some(hit) => {
                    found.insert(tp.clone(), *hit);
                }
                None => {
                    wanted
                        .entry(tp.0.clone())
                        .or_default()
                        .insert(tp.1, (from, end));
                }
            }
        }
        for (topic, pending) in wanted {
            for (partition, first) in self.probe_topic(&group.name, rc, &topic, pending) {
                found.insert((topic.clone(), partition), first);
            }
        }
        found
    }

    /// Reads `topic` from each pending position until a record or the end of each partition,
    /// within the probe timeout; partitions with no answer are left out. Answers are cached.
    fn probe_topic(
        &mut self,
        group: &str,
        rc: bool,
        topic: &str,
        mut pending: HashMap<i32, (i64, i64)>,
    ) -> Vec<(i32, FirstUnconsumed)> {
        let mut list = TopicPartitionList::new();
        for (partition, (from, _)) in &pending {
            // A listed offset is always a valid position; a failure only skips the probe.
            let _ = list.add_partition_offset(topic, *partition, Offset::Offset(*from));
        }
        let probe = &self.probes[usize::from(rc)];
        if let Err(e) = probe.assign(&list) {
            tracing::warn!(group, topic, error = %e, "probe assignment failed");
            return Vec::new();
        }
        let mut answers = Vec::new();
        let deadline = Instant::now() + self.probe_timeout;
        while !pending.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let (partition, answer) = match probe.poll(left) {
                Some(Ok(message)) => (
                    message.partition(),
                    FirstUnconsumed::Record {
                        offset: message.offset(),
                        timestamp_ms: message.timestamp().to_millis().unwrap_or(0),
                    },
                ),
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    let end = pending.get(&partition).map_or(0, |(_, end)| *end);
                    (partition, FirstUnconsumed::NothingBefore { end })
                }
                Some(Err(e)) => {
                    tracing::debug!(group, topic, error = %e, "probe read failed");
                    continue;
                }
                None => continue,
            };
            // Events of partitions already answered (or of an earlier probe) are ignored.
            let Some((from, _)) = pending.remove(&partition) else {
                continue;
            };
            if self.first_cache.len() >= FIRST_CACHE_LIMIT {
                self.first_cache.clear();
            }
            self.first_cache
                .insert((rc, topic.to_owned(), partition, from), answer);
            answers.push((partition, answer));
        }
        let _ = probe.unassign();
        tracing::debug!(
            group,
            topic,
            answered = answers.len(),
            left = pending.len(),
            "probed"
        );
        answers
    }
}
