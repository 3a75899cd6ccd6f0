//! One channel's consumer loop: its own consumer group on `notifications`, records handled one
//! at a time in partition order, each offset stored for commit only once every target of the
//! record is final (see the module docs of [`super`] for the guarantee).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boxoffice_avro::clock::now_millis;
use boxoffice_avro::records::{DeadLetterErrorKind, NotificationRequested};
use boxoffice_runtime::dead_letter;
use boxoffice_runtime::retry::{Retries, RetryPolicy};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::email::EmailSender;
use super::endpoint_health::{Admission, EndpointHealth, HealthLimits};
use super::store::{Delivery, DeliveryState, WebhookEndpoint};
use super::webhook::WebhookSender;
use super::{Channel, NotifierDeps, NotifierError, SendError};
use boxoffice_runtime::rebalance::{GroupContext, Membership, committed_offset, seek_and_resume};
use boxoffice_store::session::transient_failures;
use boxoffice_store::watermarks::{Advanced, Resume, Written, check};

/// Records waiting per lane before the consumer waits for the lane.
const LANE_CAPACITY: usize = 256;
/// How often the main loop acts on rebalances (in-app: where a new partition resumes).
const MEMBERSHIP_TICK: Duration = Duration::from_millis(250);
/// How often the in-app channel compares the stored watermarks with what it wrote, with no
/// record to write (every write compares first).
const WATERMARK_CHECK: Duration = Duration::from_secs(5);
/// The in-app channel writes each partition's watermark at most this often (then on the next
/// finished record or tick): one read and one write per interval instead of per record.
const WATERMARK_SAVE_EVERY: Duration = Duration::from_millis(100);

/// The lane of a record: by its key (the user id), so one user's records share a lane.
pub fn lane_of(key: &[u8], lanes: usize) -> usize {
    // FNV-1a: stable across runs and processes.
    let hash = key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    usize::try_from(hash % lanes.max(1) as u64).unwrap_or(0)
}

/// The watermark the in-app channel last stored per owned partition, and the offsets final
/// since, waiting for the next write (see [`WATERMARK_SAVE_EVERY`]).
#[derive(Debug, Default)]
struct StoredMarks {
    written: HashMap<i32, Written>,
    /// Per partition, the offset to store for commit once the watermark past it is written.
    pending: BTreeMap<i32, i64>,
    saved_at: Option<Instant>,
}

impl StoredMarks {
    /// Forgets a partition that changed hands or is read again.
    fn forget(&mut self, partition: i32) {
        self.written.remove(&partition);
        self.pending.remove(&partition);
    }

    /// Whether the pending offsets are due for their watermark write.
    fn due(&self, now: Instant) -> bool {
        !self.pending.is_empty()
            && self
                .saved_at
                .is_none_or(|at| now.duration_since(at) >= WATERMARK_SAVE_EVERY)
    }
}

/// Per partition, the offsets handed to lanes and not yet final.
#[derive(Debug, Default)]
struct Watermarks {
    partitions: HashMap<i32, PartitionMarks>,
}

#[derive(Debug, Default)]
struct PartitionMarks {
    in_flight: BTreeSet<i64>,
    highest_done: Option<i64>,
}

impl Watermarks {
    fn started(&mut self, partition: i32, offset: i64) {
        let marks = self.partitions.entry(partition).or_default();
        // A record seen again after a rebalance starts over.
        marks.in_flight.insert(offset);
    }

    /// Marks `offset` final; returns the offset to store (`store_offset` commits it + 1):
    /// everything at or below it is final.
    fn done(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let marks = self.partitions.get_mut(&partition)?;
        marks.in_flight.remove(&offset);
        marks.highest_done = marks.highest_done.max(Some(offset));
        match marks.in_flight.first() {
            Some(lowest) => (*lowest > 0)
                .then(|| lowest - 1)
                .filter(|c| marks.highest_done.is_some_and(|h| h >= *c)),
            None => marks.highest_done,
        }
    }
}

/// Why a record in hand was not finished: it stays uncommitted either way.
#[derive(Debug)]
pub enum Interrupted {
    /// The notifier is stopping.
    Stopped,
    /// A fault outlasted the retry budget: the record's partition is given up on this channel
    /// (see [`Parked`]).
    GaveUp(String),
}

/// A partition given up on this channel: paused, its marks dropped, its records in lanes
/// finishing as they may, until it is taken again from its committed offset (in-app: the
/// store's watermark), the path of a new assignment.
#[derive(Debug)]
struct Parked {
    reason: String,
    attempt: u32,
    retry_at: Instant,
}

/// Where one record goes on this channel.
enum Target {
    Email(String),
    Webhook(WebhookEndpoint),
}

impl Target {
    /// The delivery row's `target`: one email per notification whatever the address; one
    /// webhook per endpoint.
    fn key(&self) -> &str {
        match self {
            Target::Email(_) => "email",
            Target::Webhook(endpoint) => &endpoint.endpoint_id,
        }
    }
}

/// One channel's consumer and senders.
pub struct ChannelRunner {
    deps: Arc<NotifierDeps>,
    channel: Channel,
    group_id: String,
    topic: String,
    consumer: StreamConsumer<GroupContext>,
    context: GroupContext,
    dead_letters: FutureProducer,
    email: Option<EmailSender>,
    webhook: Option<WebhookSender>,
    /// The webhook channel's per-endpoint workers.
    endpoints: Option<endpoints::EndpointWorkers>,
    /// Per partition, which reading of it is current: bumped when it is given up, revoked or
    /// read again from an older offset. Lanes skip records of an older reading, and the main
    /// loop ignores their reports, so a record handed out before never moves the commit point
    /// of the reading after.
    epochs: std::sync::Mutex<HashMap<i32, u64>>,
}

/// A record handed to a lane, with the reading of its partition it belongs to.
type Handed = (OwnedMessage, u64);
/// A lane's report: (partition, offset, reading).
type DoneReport = (i32, i64, u64);
/// A lane's report of a record that gave up: (partition, reason, reading).
type GaveUpReport = (i32, String, u64);

/// What became of a record a lane handled.
pub(super) enum Handled {
    /// Final on this channel: report it done.
    Done,
    /// Handed to endpoint workers, which report it (webhooks).
    Dispatched,
}

/// Where a record's outcome is reported, and which reading of its partition it belongs to.
pub(super) struct Reports {
    epoch: u64,
    done: mpsc::UnboundedSender<DoneReport>,
    gave_up: mpsc::UnboundedSender<GaveUpReport>,
}

impl std::fmt::Debug for ChannelRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelRunner")
            .field("channel", &self.channel)
            .field("group_id", &self.group_id)
            .finish_non_exhaustive()
    }
}

impl ChannelRunner {
    pub fn new(deps: Arc<NotifierDeps>, channel: Channel) -> Result<Self, NotifierError> {
        let settings = &deps.settings;
        let group_id = settings.group_id(channel);
        // The in-app channel's effect is the store: a new partition stays paused until it is
        // known where the store says it may resume (`reposition`). Email and webhooks go out
        // of the system; their offsets are the truth.
        let context = if channel == Channel::Inapp {
            GroupContext::pausing()
        } else {
            GroupContext::default()
        };
        let consumer: StreamConsumer<GroupContext> = deps
            .kafka
            .client_config()
            .set("group.id", &group_id)
            .set("auto.offset.reset", "earliest")
            // Offsets are stored by hand once a record is final, committed in the background.
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", "500")
            .set("isolation.level", "read_committed")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            // A target may be retried for a while; stay in the group meanwhile.
            .set("max.poll.interval.ms", "900000")
            .create_with_context(context.clone())?;
        let dead_letters: FutureProducer = deps.kafka.durable_producer_config().create()?;
        let email = match channel {
            Channel::Email => Some(
                EmailSender::new(
                    &settings.smtp_host,
                    settings.smtp_port,
                    settings.smtp_timeout,
                    &settings.email_from,
                    u32::from(settings.lanes),
                )
                .map_err(NotifierError::Settings)?,
            ),
            _ => None,
        };
        let webhook = match channel {
            Channel::Webhook => Some(
                WebhookSender::new(settings.webhook_timeout, settings.egress.policy())
                    .map_err(NotifierError::Settings)?,
            ),
            _ => None,
        };
        let endpoints = (channel == Channel::Webhook).then(|| {
            endpoints::EndpointWorkers::new(
                settings.webhook_endpoint_queue as usize,
                settings.webhook_health_limits(),
            )
        });
        Ok(ChannelRunner {
            endpoints,
            topic: settings.notifications_topic(),
            deps,
            channel,
            group_id,
            consumer,
            context,
            dead_letters,
            email,
            webhook,
            epochs: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Consumes until `stop` turns true. Records are spread over `--lanes` workers by user
    /// id: one user's records always go to the same lane, in log order, so per-user order
    /// holds, while a user whose target is failing holds up only the users sharing its lane.
    /// The offset stored for commit is the lowest one still in a lane (a watermark), so a
    /// restart resumes at the first record not yet final.
    pub async fn run(self, stop: watch::Receiver<bool>) -> Result<(), NotifierError> {
        let this = Arc::new(self);
        this.consumer.subscribe(&[&this.topic])?;
        info!(channel = this.channel.name(), group = %this.group_id, topic = %this.topic,
              lanes = this.deps.settings.lanes, "notifier channel joined its group");
        // Unbounded, but never longer than the records in the lanes (one report each): a
        // worker never waits for the main loop, which may be waiting for its lane.
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<DoneReport>();
        let (gave_up_tx, mut gave_up_rx) = mpsc::unbounded_channel::<GaveUpReport>();
        let (lanes, mut workers) = Self::spawn_lanes(&this, &stop, done_tx, gave_up_tx);
        let mut parked: BTreeMap<i32, Parked> = BTreeMap::new();
        let mut watermarks = Watermarks::default();
        let mut stored = StoredMarks::default();
        let mut stop_main = stop.clone();
        let mut stop_send = stop.clone();
        let mut tick = tokio::time::interval(MEMBERSHIP_TICK);
        let mut checked = std::time::Instant::now();
        enum Event {
            Stop,
            Done(i32, i64, u64),
            GaveUp(i32, String, u64),
            Message(OwnedMessage),
            Tick,
            Skip,
        }
        loop {
            // The consumer loop: one event a turn, until stop.
            let event = tokio::select! {
                _ = stop_main.wait_for(|s| *s) => Event::Stop,
                _ = tick.tick() => Event::Tick,
                Some((partition, offset, epoch)) = done_rx.recv() => Event::Done(partition, offset, epoch),
                Some((partition, reason, epoch)) = gave_up_rx.recv() => Event::GaveUp(partition, reason, epoch),
                message = this.consumer.recv() => match message {
                    Ok(message) => Event::Message(message.detach()),
                    Err(e) => {
                        warn!(channel = this.channel.name(), error = %e, "consumer error");
                        Event::Skip
                    }
                },
            };
            match event {
                Event::Stop => break,
                Event::Skip => {}
                Event::Tick => {
                    this.act_on_membership(&mut stored, &mut watermarks, &mut parked)
                        .await;
                    this.tend_parked(&mut stored, &mut parked).await;
                    this.store_pending(&mut stored, &mut watermarks).await;
                    if this.channel == Channel::Inapp && checked.elapsed() >= WATERMARK_CHECK {
                        checked = std::time::Instant::now();
                        this.check_watermarks(&mut stored, &mut watermarks).await;
                    }
                }
                // A report of an older reading of the partition (see `epochs`).
                Event::Done(partition, _, epoch) | Event::GaveUp(partition, _, epoch)
                    if epoch != this.epoch(partition) => {}
                Event::Done(partition, offset, _) => {
                    if let Some(commit) = watermarks.done(partition, offset) {
                        stored.pending.insert(partition, commit);
                        if this.channel != Channel::Inapp || stored.due(Instant::now()) {
                            this.store_pending(&mut stored, &mut watermarks).await;
                        }
                    }
                }
                Event::GaveUp(partition, reason, _) => {
                    this.bump_epoch(partition);
                    this.park(&mut parked, partition, reason);
                    // Its offsets in flight are forgotten: nothing past the record that gave
                    // up is stored for commit, and taking it again reads from the committed
                    // offset (in-app: the store's watermark).
                    watermarks.partitions.remove(&partition);
                    stored.forget(partition);
                }
                // Fetched before the pause took effect: read again when the partition is taken.
                Event::Message(message) if parked.contains_key(&message.partition()) => {}
                Event::Message(message) => {
                    this.deps.metrics.records.inc_by(1);
                    watermarks.started(message.partition(), message.offset());
                    let lane = lane_of(message.key().unwrap_or_default(), lanes.len());
                    let epoch = this.epoch(message.partition());
                    let sent = tokio::select! {
                        _ = stop_send.wait_for(|s| *s) => false,
                        sent = lanes[lane].send((message, epoch)) => sent.is_ok(),
                    };
                    if !sent {
                        break;
                    }
                }
            }
        }
        drop(lanes);
        while workers.join_next().await.is_some() {}
        if let Some(endpoints) = &this.endpoints {
            endpoints.join().await;
        }
        while let Ok((partition, offset, epoch)) = done_rx.try_recv() {
            if epoch != this.epoch(partition) {
                continue;
            }
            if let Some(commit) = watermarks.done(partition, offset) {
                stored.pending.insert(partition, commit);
            }
        }
        this.store_pending(&mut stored, &mut watermarks).await;
        if let Err(e) = this.consumer.commit_consumer_state(CommitMode::Sync) {
            debug!(channel = this.channel.name(), error = %e, "final commit");
        }
        this.consumer.unsubscribe();
        info!(channel = this.channel.name(), "notifier channel stopped");
        Ok(())
    }

    fn epochs(&self) -> std::sync::MutexGuard<'_, HashMap<i32, u64>> {
        // A panic while holding the map leaves it whole (single reads and increments).
        self.epochs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current reading of `partition` (see `epochs`).
    fn epoch(&self, partition: i32) -> u64 {
        self.epochs().get(&partition).copied().unwrap_or(0)
    }

    /// Starts a new reading of `partition`: what was handed out before is skipped.
    fn bump_epoch(&self, partition: i32) {
        let mut epochs = self.epochs();
        let epoch = epochs.entry(partition).or_insert(0);
        *epoch = epoch.wrapping_add(1);
    }

    /// Starts `--lanes` workers, each handling the records sent to its lane in order and
    /// reporting each one done (or given up) to the main loop.
    fn spawn_lanes(
        this: &Arc<Self>,
        stop: &watch::Receiver<bool>,
        done_tx: mpsc::UnboundedSender<DoneReport>,
        gave_up_tx: mpsc::UnboundedSender<GaveUpReport>,
    ) -> (Vec<mpsc::Sender<Handed>>, tokio::task::JoinSet<()>) {
        let mut lanes = Vec::new();
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..this.deps.settings.lanes.max(1) {
            let (tx, mut rx) = mpsc::channel::<Handed>(LANE_CAPACITY);
            lanes.push(tx);
            let (runner, done, mut stop) = (this.clone(), done_tx.clone(), stop.clone());
            let gave_up = gave_up_tx.clone();
            workers.spawn(async move {
                while let Some((message, epoch)) = rx.recv().await {
                    let partition = message.partition();
                    // Given up, revoked or read again since it was handed out: the newer
                    // reading handles it.
                    if epoch != runner.epoch(partition) {
                        continue;
                    }
                    let reports = Reports {
                        epoch,
                        done: done.clone(),
                        gave_up: gave_up.clone(),
                    };
                    match runner.handle(&message, &reports, &mut stop).await {
                        Ok(Handled::Done) => {
                            let _ = done.send((partition, message.offset(), epoch));
                        }
                        Ok(Handled::Dispatched) => {}
                        Err(Interrupted::GaveUp(reason)) => {
                            let _ = gave_up.send((partition, reason, epoch));
                        }
                        Err(Interrupted::Stopped) => break,
                    }
                }
            });
        }
        (lanes, workers)
    }

    /// Acts on rebalances: a revoked partition's marks are dropped; an assigned one resumes
    /// where the store says (in-app) or at the committed offset (the others, unpaused).
    async fn act_on_membership(
        &self,
        stored: &mut StoredMarks,
        marks: &mut Watermarks,
        parked: &mut BTreeMap<i32, Parked>,
    ) {
        for change in self.context.take() {
            match change {
                Membership::Revoked(partitions) => {
                    for p in partitions {
                        stored.forget(p);
                        marks.partitions.remove(&p);
                        self.bump_epoch(p);
                        // Our pause would outlive the assignment (librdkafka keeps an
                        // application's pause): a partition given up is resumed as it goes.
                        if parked.remove(&p).is_some() {
                            let mut tpl = TopicPartitionList::new();
                            tpl.add_partition(&self.topic, p);
                            if let Err(e) = self.consumer.resume(&tpl) {
                                debug!(channel = self.channel.name(), partition = p, error = %e,
                                       "resuming a revoked parked partition");
                            }
                        }
                    }
                }
                Membership::Assigned(partitions) if self.channel == Channel::Inapp => {
                    for p in partitions {
                        let policy = self.deps.settings.retry_policy();
                        if let Err(reason) = self.reposition(stored, p, policy).await {
                            self.park(parked, p, reason);
                        }
                    }
                }
                Membership::Assigned(_) => {}
            }
        }
        self.publish_parked(parked);
    }
}

mod deliver;
mod endpoints;
mod positions;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_is_below_the_lowest_record_in_flight() {
        let mut marks = Watermarks::default();
        for offset in 10..15 {
            marks.started(0, offset);
        }
        // 12 and 13 finish first (other lanes): nothing below 10 is final yet beyond 9.
        assert_eq!(marks.done(0, 12), Some(9));
        assert_eq!(marks.done(0, 13), Some(9));
        assert_eq!(marks.done(0, 10), Some(10));
        assert_eq!(marks.done(0, 11), Some(13));
        assert_eq!(marks.done(0, 14), Some(14));
        // Unknown partitions store nothing.
        assert_eq!(marks.done(7, 1), None);
        marks.started(1, 0);
        marks.started(1, 1);
        assert_eq!(marks.done(1, 1), None, "offset 0 still in flight");
        assert_eq!(marks.done(1, 0), Some(1));
    }

    #[test]
    fn pending_offsets_are_written_at_most_every_interval_and_forgotten_with_their_partition() {
        let t0 = Instant::now();
        let mut stored = StoredMarks::default();
        assert!(!stored.due(t0), "nothing pending");
        stored.pending.insert(3, 41);
        assert!(stored.due(t0), "never written: due at once");
        stored.saved_at = Some(t0);
        assert!(!stored.due(t0 + WATERMARK_SAVE_EVERY / 2));
        assert!(stored.due(t0 + WATERMARK_SAVE_EVERY));
        stored.written.insert(3, Written::now(Some(40)));
        stored.forget(3);
        assert!(stored.pending.is_empty() && stored.written.is_empty());
        assert!(!stored.due(t0 + WATERMARK_SAVE_EVERY));
    }

    #[test]
    fn a_user_always_gets_the_same_lane() {
        assert_eq!(lane_of(b"user-1", 16), lane_of(b"user-1", 16));
        assert!(lane_of(b"user-2", 16) < 16);
        assert_eq!(lane_of(b"anything", 1), 0);
        let lanes: std::collections::HashSet<usize> = (0..200)
            .map(|i| lane_of(format!("u{i}").as_bytes(), 16))
            .collect();
        assert_eq!(lanes.len(), 16, "keys spread over every lane");
    }
}
