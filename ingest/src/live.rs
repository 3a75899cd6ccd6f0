//! Live fan-out: each replica follows `orders.events`, `availability` and `notifications`
//! with its own consumer (partitions assigned directly, no consumer group shared with anyone,
//! `read_committed`), decodes with the registry codec, drops records already seen (by record
//! id; availability by per-event sequence) and fans out through broadcast channels to the SSE
//! streams and to `POST v1/orders?wait=` waiters.
//!
//! Availability resume: the last [`RECENT_PER_EVENT`] changes of every event are kept in
//! memory. Sequences have gaps: the booking processor publishes each event's latest change once
//! per batch, so a stream sees, say, 12, 17, 31. A stream resumed with `Last-Event-ID:
//! <sequence>` gets every kept change after it when the oldest kept is at most one past it;
//! when the requested sequence is older than that (or unknown) it gets the latest change
//! instead. Either way it is exactly up to date: each `AvailabilityChanged` is the event's full
//! state, so skipping changes loses nothing.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use boxoffice_avro::OrderEvent;
use boxoffice_avro::records::{AvailabilityChanged, NotificationRequested};
use boxoffice_topics::kafka::KafkaArgs;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{broadcast, oneshot};

use crate::config::Topics;
use crate::metrics::IngestMetrics;

/// Availability changes kept per event for resuming streams.
pub const RECENT_PER_EVENT: usize = 256;
/// Memory for the record ids remembered for deduplication, allocated once (about 229,000 ids).
const SEEN_BYTES: usize = 8 * 1024 * 1024;
/// Broadcast buffer: a subscriber further behind than this skips ahead (and, for
/// availability, gets a snapshot).
const CHANNEL_CAPACITY: usize = 4096;

/// A set of recently seen record ids of a fixed size in bytes (oldest forgotten first). Ids
/// are kept as 128 bits: a record id is a UUID, anything else its name-based digest.
#[derive(Debug)]
struct Seen {
    ids: HashSet<u128>,
    order: VecDeque<u128>,
    capacity: usize,
}

/// Bytes a [`Seen`] of `buckets` hash buckets takes: 16 bytes and a control byte per bucket
/// (the hash table keeps at most 7/8 of its buckets full), 16 bytes per id in the queue.
fn seen_bytes(buckets: usize) -> usize {
    buckets * 17 + buckets / 8 * 7 * 16
}

impl Seen {
    /// The largest set whose tables fit `bytes`, allocated now (so it never grows).
    fn with_bytes(bytes: usize) -> Seen {
        let mut buckets = 16;
        while seen_bytes(buckets * 2) <= bytes {
            buckets *= 2;
        }
        let capacity = buckets / 8 * 7;
        Seen {
            ids: HashSet::with_capacity(capacity),
            order: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    fn key(id: &str) -> u128 {
        uuid::Uuid::parse_str(id).map_or_else(
            |_| boxoffice_avro::ids::derive("seen", &[id]).as_u128(),
            |u| u.as_u128(),
        )
    }

    /// True the first time `id` is offered.
    fn first(&mut self, id: &str) -> bool {
        let key = Seen::key(id);
        if self.ids.contains(&key) {
            return false;
        }
        if self.order.len() >= self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.ids.remove(&old);
        }
        self.ids.insert(key);
        self.order.push_back(key);
        true
    }
}

type Waiters = HashMap<String, Vec<(u64, oneshot::Sender<Arc<OrderEvent>>)>>;

/// How a resumed availability stream starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Resume {
    /// Every change after the requested sequence, in order (possibly none).
    Replay(Vec<Arc<AvailabilityChanged>>),
    /// The requested sequence is too old (or absent): the latest full state.
    Snapshot(Arc<AvailabilityChanged>),
    /// Nothing is known about the event yet.
    Unknown,
}

/// The in-process fan-out hub.
#[derive(Debug)]
pub struct Live {
    orders: broadcast::Sender<Arc<OrderEvent>>,
    notifications: broadcast::Sender<Arc<NotificationRequested>>,
    availability: broadcast::Sender<Arc<AvailabilityChanged>>,
    recent: Mutex<HashMap<String, VecDeque<Arc<AvailabilityChanged>>>>,
    waiters: Mutex<Waiters>,
    seen: Mutex<Seen>,
    next_waiter: AtomicU64,
}

impl Default for Live {
    fn default() -> Self {
        Self::new()
    }
}

/// A waiter for an order's first decision; unregisters itself when dropped.
#[derive(Debug)]
pub struct OrderWaiter {
    live: Arc<Live>,
    order_id: String,
    id: u64,
    receiver: Option<oneshot::Receiver<Arc<OrderEvent>>>,
}

impl OrderWaiter {
    /// The decision, if it comes within `timeout`.
    pub async fn wait(mut self, timeout: Duration) -> Option<Arc<OrderEvent>> {
        let receiver = self.receiver.take()?;
        tokio::time::timeout(timeout, receiver).await.ok()?.ok()
    }
}

impl Drop for OrderWaiter {
    fn drop(&mut self) {
        if let Ok(mut waiters) = self.live.waiters.lock()
            && let Some(list) = waiters.get_mut(&self.order_id)
        {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                waiters.remove(&self.order_id);
            }
        }
    }
}

impl Live {
    pub fn new() -> Self {
        Live {
            orders: broadcast::channel(CHANNEL_CAPACITY).0,
            notifications: broadcast::channel(CHANNEL_CAPACITY).0,
            availability: broadcast::channel(CHANNEL_CAPACITY).0,
            recent: Mutex::new(HashMap::new()),
            waiters: Mutex::new(HashMap::new()),
            seen: Mutex::new(Seen::with_bytes(SEEN_BYTES)),
            next_waiter: AtomicU64::new(0),
        }
    }

    fn first_sight(&self, record_id: &str) -> bool {
        self.seen
            .lock()
            .map(|mut seen| seen.first(record_id))
            .unwrap_or(true)
    }

    /// Registers interest in `order_id`'s decision (reserved, rejected or confirmed). Register
    /// before producing the request, so the decision cannot slip past.
    pub fn wait_for(self: &Arc<Self>, order_id: &str) -> OrderWaiter {
        let (sender, receiver) = oneshot::channel();
        let id = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut waiters) = self.waiters.lock() {
            waiters
                .entry(order_id.to_owned())
                .or_default()
                .push((id, sender));
        }
        OrderWaiter {
            live: Arc::clone(self),
            order_id: order_id.to_owned(),
            id,
            receiver: Some(receiver),
        }
    }

    /// An order fact arrived (deduplicated by record id).
    pub fn publish_order(&self, event: OrderEvent) {
        use boxoffice_avro::RecordGroup;
        if !self.first_sight(event.record_id()) {
            return;
        }
        let event = Arc::new(event);
        let decides = matches!(
            *event,
            OrderEvent::OrderReserved(_)
                | OrderEvent::OrderRejected(_)
                | OrderEvent::OrderConfirmed(_)
        );
        if decides
            && let Ok(mut waiters) = self.waiters.lock()
            && let Some(list) = waiters.remove(event.order_id())
        {
            for (_, sender) in list {
                let _ = sender.send(Arc::clone(&event));
            }
        }
        let _ = self.orders.send(event);
    }

    /// A notification arrived (deduplicated by record id).
    pub fn publish_notification(&self, notification: NotificationRequested) {
        if !self.first_sight(&notification.record_id) {
            return;
        }
        let _ = self.notifications.send(Arc::new(notification));
    }

    /// An availability change arrived; ignored unless its sequence is newer than the event's
    /// latest.
    pub fn publish_availability(&self, change: AvailabilityChanged) {
        let change = Arc::new(change);
        {
            let Ok(mut recent) = self.recent.lock() else {
                return;
            };
            let list = recent.entry(change.event_id.clone()).or_default();
            if list
                .back()
                .is_some_and(|last| last.sequence >= change.sequence)
            {
                return;
            }
            if list.len() >= RECENT_PER_EVENT {
                list.pop_front();
            }
            list.push_back(Arc::clone(&change));
        }
        let _ = self.availability.send(change);
    }

    pub fn subscribe_orders(&self) -> broadcast::Receiver<Arc<OrderEvent>> {
        self.orders.subscribe()
    }

    pub fn subscribe_notifications(&self) -> broadcast::Receiver<Arc<NotificationRequested>> {
        self.notifications.subscribe()
    }

    pub fn subscribe_availability(&self) -> broadcast::Receiver<Arc<AvailabilityChanged>> {
        self.availability.subscribe()
    }

    /// The latest known availability of `event_id`.
    pub fn latest(&self, event_id: &str) -> Option<Arc<AvailabilityChanged>> {
        self.recent.lock().ok()?.get(event_id)?.back().cloned()
    }

    /// How to start a stream for `event_id` that has seen up to `after` (see the module docs).
    pub fn resume(&self, event_id: &str, after: Option<i64>) -> Resume {
        let Ok(recent) = self.recent.lock() else {
            return Resume::Unknown;
        };
        let Some(list) = recent.get(event_id) else {
            return Resume::Unknown;
        };
        let (Some(oldest), Some(latest)) = (list.front(), list.back()) else {
            return Resume::Unknown;
        };
        match after {
            // Everything after `after` is still here (the oldest kept is at most one past it).
            Some(after) if after >= latest.sequence => Resume::Replay(Vec::new()),
            Some(after) if after + 1 >= oldest.sequence => Resume::Replay(
                list.iter()
                    .filter(|c| c.sequence > after)
                    .cloned()
                    .collect(),
            ),
            _ => Resume::Snapshot(Arc::clone(latest)),
        }
    }
}

/// Follows the three topics until `shutdown` resolves. Topics that do not exist yet (or a broker
/// that does not answer) are retried within `follow.retry`'s budget; past it the failure is
/// counted (`ingest_live_retries_exhausted_total`), readiness on the metrics address says why,
/// and a new round of retries starts. Decoding failures are logged and skipped (the producers
/// dead-letter their own records).
pub async fn follow(
    follow: crate::Follow,
    topics: Topics,
    live: Arc<Live>,
    metrics: Arc<IngestMetrics>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    tokio::pin!(shutdown);
    let crate::Follow {
        kafka,
        codec,
        retry,
    } = follow;
    // Each round is bounded by the retry budget; what ends a round is counted and shown.
    let consumer = 'rounds: loop {
        let mut retries = retry.start(Instant::now());
        let reason = loop {
            let error = match assign(&kafka, &topics).await {
                Ok(consumer) => break 'rounds consumer,
                Err(e) => e,
            };
            let Some(delay) = retries.next_delay(Instant::now()) else {
                break error;
            };
            tracing::warn!(error = %error, attempt = retries.attempts(), "live streams: cannot follow the topics yet; retrying");
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(delay) => {}
            }
        };
        metrics.live_retries_exhausted.inc();
        metrics.readiness.set(vec![format!(
            "live streams: cannot follow the topics ({reason}); retrying"
        )]);
        tracing::error!(error = %reason, budget = ?retry.budget, "live streams: topics unreachable for the whole retry budget; starting over");
        // A pause between rounds: a new round never starts at once, whatever the budget.
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(retry.max_delay) => {}
        }
    };
    metrics.readiness.set(Vec::new());
    metrics.live_following.set(1);
    tracing::info!("live streams: following orders, availability and notifications");
    loop {
        // The follower loop: one record a turn, until `shutdown`.
        let message = tokio::select! {
            _ = &mut shutdown => return,
            message = consumer.recv() => message,
        };
        let message = match message {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!(error = %e, "live streams: consumer error");
                continue;
            }
        };
        let Some(payload) = message.payload() else {
            continue;
        };
        let topic = message.topic();
        if topic == topics.orders {
            match codec.decode_group::<OrderEvent>(payload).await {
                Ok(event) => live.publish_order(event),
                Err(e) => skip(topic, message.offset(), &e),
            }
        } else if topic == topics.availability {
            match codec.decode_as::<AvailabilityChanged>(payload).await {
                Ok(change) => live.publish_availability(change),
                Err(e) => skip(topic, message.offset(), &e),
            }
        } else if topic == topics.notifications {
            match codec.decode_as::<NotificationRequested>(payload).await {
                // Account notices carry tokens and go by email only, never to a stream.
                Ok(notification) if notification.kind.is_account_notice() => {}
                Ok(notification) => live.publish_notification(notification),
                Err(e) => skip(topic, message.offset(), &e),
            }
        }
    }
}

fn skip(topic: &str, offset: i64, error: &boxoffice_avro::DecodeError) {
    tracing::warn!(topic, offset, %error, "live streams: record skipped");
}

/// A consumer with every partition of the three topics assigned: availability from the
/// beginning (compacted: the latest state per event), the others from the end.
async fn assign(kafka: &KafkaArgs, topics: &Topics) -> Result<StreamConsumer, String> {
    let consumer: StreamConsumer = kafka
        .client_config()
        .set(
            "group.id",
            format!("ingest-live-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(|e| e.to_string())?;
    let names = [
        (topics.availability.clone(), Offset::Beginning),
        (topics.orders.clone(), Offset::End),
        (topics.notifications.clone(), Offset::End),
    ];
    let timeout = kafka.timeout;
    let (consumer, partitions) = tokio::task::spawn_blocking(move || {
        let mut partitions = Vec::new();
        for (topic, offset) in &names {
            let metadata = consumer
                .fetch_metadata(Some(topic), timeout)
                .map_err(|e| e.to_string())?;
            let count = metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .map(|t| t.partitions().len())
                .unwrap_or(0);
            if count == 0 {
                return Err(format!("topic {topic} does not exist yet"));
            }
            partitions.push((topic.clone(), count, *offset));
        }
        Ok((consumer, partitions))
    })
    .await
    .map_err(|e| e.to_string())??;
    let mut list = TopicPartitionList::new();
    for (topic, count, offset) in partitions {
        for partition in 0..count {
            let partition = i32::try_from(partition).map_err(|e| e.to_string())?;
            list.add_partition_offset(&topic, partition, offset)
                .map_err(|e| e.to_string())?;
        }
    }
    consumer.assign(&list).map_err(|e| e.to_string())?;
    Ok(consumer)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_seen_set_has_its_size_in_bytes_and_forgets_the_oldest_first() {
        let seen = super::Seen::with_bytes(super::SEEN_BYTES);
        assert_eq!(seen.capacity, 229_376);
        assert!(seen.ids.capacity() >= seen.capacity && seen.order.capacity() >= seen.capacity);
        assert!(super::seen_bytes(262_144) <= super::SEEN_BYTES);

        let mut small = super::Seen::with_bytes(super::seen_bytes(16));
        assert_eq!(small.capacity, 14);
        let id = |i: u32| uuid::Uuid::from_u128(u128::from(i)).to_string();
        assert!(small.first(&id(0)) && small.first("not-a-uuid"));
        assert!(!small.first(&id(0)) && !small.first("not-a-uuid"));
        for i in 1..=13 {
            assert!(small.first(&id(i)));
        }
        // Full at 14: the next new id forgets the oldest (id 0), nothing else.
        assert!(small.first(&id(14)));
        assert!(small.first(&id(0)), "the oldest was forgotten");
        assert!(!small.first(&id(14)));
        assert_eq!(small.order.len(), 14);
    }

    use boxoffice_avro::records::OrderRejected;

    use super::*;

    fn change(event: &str, sequence: i64) -> AvailabilityChanged {
        AvailabilityChanged {
            record_id: format!("{event}-{sequence}"),
            event_id: event.into(),
            sequence,
            total: 10,
            available: 10 - sequence as i32,
            held: sequence as i32,
            sold: 0,
            occurred_at: sequence,
        }
    }

    #[test]
    fn availability_resumes_without_gaps_or_with_a_snapshot() {
        let live = Live::new();
        assert_eq!(live.resume("e", Some(1)), Resume::Unknown);
        for s in 1..=3 {
            live.publish_availability(change("e", s));
        }
        live.publish_availability(change("e", 2)); // stale: ignored
        assert_eq!(live.latest("e").unwrap().sequence, 3);
        match live.resume("e", Some(1)) {
            Resume::Replay(list) => assert_eq!(
                list.iter().map(|c| c.sequence).collect::<Vec<_>>(),
                vec![2, 3]
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(live.resume("e", Some(3)), Resume::Replay(vec![]));
        for s in 4..(RECENT_PER_EVENT as i64 + 10) {
            live.publish_availability(change("e", s));
        }
        assert!(
            matches!(live.resume("e", Some(1)), Resume::Snapshot(latest) if latest.sequence == RECENT_PER_EVENT as i64 + 9)
        );
        assert!(matches!(live.resume("e", None), Resume::Snapshot(_)));
    }

    #[test]
    fn availability_with_gaps_in_the_sequence_resumes_from_what_was_kept() {
        let live = Live::new();
        for s in [2, 5, 9] {
            live.publish_availability(change("e", s));
        }
        let sequences = |resume: Resume| match resume {
            Resume::Replay(list) => list.iter().map(|c| c.sequence).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        // Seen 3 (published in another replay's batches) or 5: the later kept changes.
        assert_eq!(sequences(live.resume("e", Some(3))), vec![5, 9]);
        assert_eq!(sequences(live.resume("e", Some(5))), vec![9]);
        assert_eq!(sequences(live.resume("e", Some(1))), vec![2, 5, 9]);
        // Older than the oldest kept: the latest full state.
        assert!(
            matches!(live.resume("e", Some(0)), Resume::Snapshot(latest) if latest.sequence == 9)
        );
        // A gap after the latest is not a reason to go back.
        live.publish_availability(change("e", 7));
        assert_eq!(live.latest("e").unwrap().sequence, 9);
    }

    #[tokio::test]
    async fn waiters_get_the_decision_once_and_duplicates_are_dropped() {
        let live = Arc::new(Live::new());
        let waiter = live.wait_for("o1");
        let mut orders = live.subscribe_orders();
        let rejected = OrderEvent::OrderRejected(OrderRejected {
            record_id: "r1".into(),
            order_id: "o1".into(),
            event_id: "e".into(),
            user_id: "u".into(),
            number_slot: 1,
            reason: boxoffice_avro::records::RejectReason::SoldOut,
            detail: None,
            occurred_at: 1,
        });
        live.publish_order(rejected.clone());
        live.publish_order(rejected.clone());
        let got = waiter.wait(Duration::from_secs(1)).await.unwrap();
        assert_eq!(*got, rejected);
        assert!(orders.try_recv().is_ok());
        assert!(orders.try_recv().is_err(), "the duplicate was dropped");
        let late = live.wait_for("o2");
        drop(late);
        assert!(live.waiters.lock().unwrap().is_empty());
    }
}
