//! What the system told fans, followed from Kafka as it happens: every order fact on
//! `orders.events` and every notification on `notifications`, deduplicated by record id as
//! every consumer does, kept in memory for the checks.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use boxoffice_avro::Codec;
use boxoffice_avro::records::{NotificationRequested, OrderEvent, RecordGroup, topic};
use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;

use crate::Services;
use crate::names;

/// One order fact, reduced to what the checks need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fact {
    Reserved,
    Rejected,
    Confirmed,
    Cancelled,
    Expired,
    TicketsIssued,
}

/// One notification: who, about which order, what kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub id: String,
    pub user_id: String,
    pub order_id: Option<String>,
    pub kind: String,
}

#[derive(Debug, Default)]
pub struct Seen {
    /// Order id → its distinct facts (by record id).
    pub facts: HashMap<String, HashSet<Fact>>,
    /// Order id → event id.
    pub event_of: HashMap<String, String>,
    pub notices: HashMap<String, Notice>,
    record_ids: HashSet<String>,
}

/// Follows the two topics in the background.
#[derive(Debug)]
pub struct Follower {
    pub seen: Arc<Mutex<Seen>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn consumer(services: &Services, topic: &str) -> anyhow::Result<StreamConsumer> {
    let consumer: StreamConsumer = services
        .kafka()
        .client_config()
        .set("group.id", names::unique("chaos_follow"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    consumer.subscribe(&[topic])?;
    Ok(consumer)
}

impl Follower {
    pub fn start(services: &Services, codec: Arc<Codec>) -> anyhow::Result<Follower> {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let orders = consumer(services, topic::ORDERS_EVENTS)?;
        let notices = consumer(services, topic::NOTIFICATIONS)?;
        let (seen_orders, codec_orders) = (seen.clone(), codec.clone());
        let follow_orders = tokio::spawn(async move {
            let mut stream = orders.stream();
            // Consumer errors (the broker restarting) are passed over: the consumer reconnects.
            while let Some(item) = stream.next().await {
                let Ok(message) = item else { continue };
                let Some(payload) = message.payload() else {
                    continue;
                };
                let Ok(fact) = codec_orders.decode_group::<OrderEvent>(payload).await else {
                    continue;
                };
                let kind = match &fact {
                    OrderEvent::OrderReserved(_) => Fact::Reserved,
                    OrderEvent::OrderRejected(_) => Fact::Rejected,
                    OrderEvent::OrderConfirmed(_) => Fact::Confirmed,
                    OrderEvent::OrderCancelled(_) => Fact::Cancelled,
                    OrderEvent::OrderExpired(_) => Fact::Expired,
                    OrderEvent::TicketsIssued(_) => Fact::TicketsIssued,
                };
                let (order, event) = (fact.order_id().to_owned(), fact.event_id().to_owned());
                let mut seen = seen_orders.lock().unwrap_or_else(|p| p.into_inner());
                if seen.record_ids.insert(fact.record_id().to_owned()) {
                    seen.facts.entry(order.clone()).or_default().insert(kind);
                    seen.event_of.insert(order, event);
                }
            }
        });
        let seen_notices = seen.clone();
        let follow_notices = tokio::spawn(async move {
            let mut stream = notices.stream();
            // Consumer errors (the broker restarting) are passed over: the consumer reconnects.
            while let Some(item) = stream.next().await {
                let Ok(message) = item else { continue };
                let Some(payload) = message.payload() else {
                    continue;
                };
                let Ok(n) = codec.decode_as::<NotificationRequested>(payload).await else {
                    continue;
                };
                // Account emails (verification links at registration) are no order's news: the
                // checks are about what every channel owes a fan's orders.
                if n.kind.is_account_notice() {
                    continue;
                }
                let notice = Notice {
                    id: n.record_id.clone(),
                    user_id: n.user_id.clone(),
                    order_id: n.order_id.clone(),
                    kind: format!("{:?}", n.kind),
                };
                let mut seen = seen_notices.lock().unwrap_or_else(|p| p.into_inner());
                seen.notices.insert(n.record_id, notice);
            }
        });
        Ok(Follower {
            seen,
            tasks: vec![follow_orders, follow_notices],
        })
    }

    /// Runs `f` on what was seen so far.
    pub fn with<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.seen.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
