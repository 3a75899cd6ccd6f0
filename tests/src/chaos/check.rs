//! What every chaos run must show once the fault is over: `verify-event` passes (never
//! oversold, fans told what the log gives, store and Kafka agree), every 202 has exactly one
//! decision, the capacity is sold exactly, every paid order is confirmed and captured once at
//! the provider, and every notification reached each of its channels at least once and never
//! as two different notifications.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use boxoffice_processors::booking::audit::{AuditReport, verify_event};
use boxoffice_processors::booking::topics::Topics;
use boxoffice_store::inventory::InventoryStore;
use boxoffice_store::schema::Keyspace;

use super::follow::{Fact, Follower};
use super::sale::Fan;
use super::system::System;
use crate::wait;

/// How long the system gets to settle after the fault is over.
pub const SETTLE: Duration = Duration::from_secs(180);

/// Waits until every accepted order has a decision; returns the undecided ones (empty: all
/// decided) and how long it took.
pub async fn decisions(
    follower: &Follower,
    accepted: &HashMap<String, usize>,
    within: Duration,
) -> (Vec<String>, Duration) {
    let started = std::time::Instant::now();
    let undecided = || {
        follower.with(|seen| {
            accepted
                .keys()
                .filter(|id| {
                    seen.facts.get(*id).is_none_or(|f| {
                        !f.contains(&Fact::Reserved) && !f.contains(&Fact::Rejected)
                    })
                })
                .cloned()
                .collect::<Vec<_>>()
        })
    };
    let _ = wait::until("every accepted order decided", within, || {
        let left = undecided();
        async move { left.is_empty().then_some(()) }
    })
    .await;
    (undecided(), started.elapsed())
}

/// Exactly one decision per accepted order, and the capacity sold exactly.
pub fn exactly_one_decision(
    follower: &Follower,
    accepted: &HashMap<String, usize>,
    capacity: usize,
    violations: &mut Vec<String>,
) -> (usize, usize) {
    follower.with(|seen| {
        let mut reserved = 0;
        let mut rejected = 0;
        for order in accepted.keys() {
            let facts = seen.facts.get(order).cloned().unwrap_or_default();
            match (
                facts.contains(&Fact::Reserved),
                facts.contains(&Fact::Rejected),
            ) {
                (true, true) => {
                    violations.push(format!("order {order} was told RESERVED and REJECTED"))
                }
                (true, false) => reserved += 1,
                (false, true) => rejected += 1,
                (false, false) => violations.push(format!("accepted order {order} never decided")),
            }
        }
        let want = capacity.min(accepted.len());
        if reserved != want {
            violations.push(format!(
                "{reserved} orders reserved of {} accepted for {capacity} slots (want {want})",
                accepted.len()
            ));
        }
        (reserved, rejected)
    })
}

/// `verify-event` against the private stack, once the processor stored and published
/// everything.
pub async fn audit(
    system: &System,
    event_id: &str,
    violations: &mut Vec<String>,
) -> Option<AuditReport> {
    let services = &system.services;
    let session = match services.scylla().connect().await {
        Ok(session) => std::sync::Arc::new(session),
        Err(e) => {
            violations.push(format!("verify-event: connecting to the store: {e}"));
            return None;
        }
    };
    let keyspace = Keyspace::new("boxoffice").ok()?;
    let store = match InventoryStore::new(session, &keyspace).await {
        Ok(store) => store,
        Err(e) => {
            violations.push(format!("verify-event: {e}"));
            return None;
        }
    };
    let topics = Topics::with_prefix("");
    let last = std::sync::Mutex::new(String::new());
    let settled = wait::until("the event settled in the store and Kafka", SETTLE, || {
        let (store, topics, last) = (&store, &topics, &last);
        async move {
            let seen = match verify_event(&services.kafka(), &system.codec, store, topics, event_id)
                .await
            {
                Ok(report) if report.settled() => return Some(report),
                Ok(report) => format!("{report:?}"),
                Err(e) => e.to_string(),
            };
            *last.lock().unwrap_or_else(|p| p.into_inner()) = seen;
            None
        }
    })
    .await;
    let last = last.into_inner().unwrap_or_else(|p| p.into_inner());
    match settled {
        Ok(report) => {
            violations.extend(
                report
                    .violations
                    .iter()
                    .map(|v| format!("verify-event: {v}")),
            );
            Some(report)
        }
        Err(e) => {
            violations.push(format!("verify-event: {e}; last: {last}"));
            None
        }
    }
}

/// Every order paid is confirmed, and captured exactly once at the provider.
pub async fn payments(
    system: &System,
    follower: &Follower,
    paid: &HashSet<String>,
    captures_before: u64,
    charges_before: u64,
    violations: &mut Vec<String>,
) -> usize {
    let unconfirmed = || {
        follower.with(|seen| {
            paid.iter()
                .filter(|o| {
                    seen.facts
                        .get(*o)
                        .is_none_or(|f| !f.contains(&Fact::Confirmed))
                })
                .count()
        })
    };
    let _ = wait::until("every paid order confirmed", SETTLE, || {
        let left = unconfirmed();
        async move { (left == 0).then_some(()) }
    })
    .await;
    let left = unconfirmed();
    if left > 0 {
        violations.push(format!("{left} paid orders never confirmed"));
    }
    for order in paid {
        let payment = boxoffice_avro::ids::payment_id(order);
        match system.provider.charge(&payment) {
            Some(charge) if charge.status == "succeeded" => {}
            Some(charge) => violations.push(format!(
                "order {order}: the provider's charge is {}",
                charge.status
            )),
            None => violations.push(format!(
                "order {order} was paid but the provider has no charge"
            )),
        }
    }
    let stats = system.provider.stats();
    let (charges, captures) = (
        stats.charges - charges_before,
        stats.captures - captures_before,
    );
    if charges != paid.len() as u64 || captures != paid.len() as u64 {
        violations.push(format!(
            "{} orders paid, but the provider made {charges} charges and {captures} captures",
            paid.len()
        ));
    }
    paid.len() - left
}

/// Deliveries per channel.
#[derive(Debug, Default, Clone, Copy)]
pub struct Delivered {
    pub notices: usize,
    pub in_app: usize,
    pub email: usize,
    pub webhook: usize,
}

/// Every notification about the run's orders reached every channel at least once; no
/// channel got two different notifications for the same order and kind.
pub async fn notifications(
    system: &System,
    follower: &Follower,
    fans: &[Fan],
    orders: &HashSet<String>,
    violations: &mut Vec<String>,
) -> Delivered {
    let notices: Vec<super::follow::Notice> = follower.with(|seen| {
        seen.notices
            .values()
            .filter(|n| n.order_id.as_ref().is_some_and(|o| orders.contains(o)))
            .cloned()
            .collect()
    });
    // Published once per (order, kind).
    let mut by_fact: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for n in &notices {
        by_fact
            .entry((n.order_id.clone().unwrap_or_default(), n.kind.clone()))
            .or_default()
            .push(n.id.clone());
    }
    for ((order, kind), ids) in &by_fact {
        if ids.len() > 1 {
            violations.push(format!(
                "order {order}: {} different {kind} notifications {ids:?}",
                ids.len()
            ));
        }
    }
    let with_webhook: HashSet<&str> = fans
        .iter()
        .filter(|f| f.webhook.is_some())
        .map(|f| f.user_id.as_str())
        .collect();
    let users: HashSet<&str> = notices.iter().map(|n| n.user_id.as_str()).collect();
    let session = match system.services.scylla().connect().await {
        Ok(session) => session,
        Err(e) => {
            violations.push(format!("notifications: connecting to the store: {e}"));
            return Delivered::default();
        }
    };
    let missing = |ids: &HashSet<String>, want: &[&super::follow::Notice]| {
        want.iter().filter(|n| !ids.contains(&n.id)).count()
    };
    let webhook_wanted: Vec<&super::follow::Notice> = notices
        .iter()
        .filter(|n| with_webhook.contains(n.user_id.as_str()))
        .collect();
    let all: Vec<&super::follow::Notice> = notices.iter().collect();
    let mut delivered = Delivered {
        notices: notices.len(),
        ..Delivered::default()
    };
    let last = std::sync::Mutex::new((0, 0, 0));
    let _ = wait::until(
        "every notification delivered on every channel",
        SETTLE,
        || {
            let (session, users, all, webhook_wanted) = (&session, &users, &all, &webhook_wanted);
            let last = &last;
            async move {
                let in_app = in_app_ids(session, users).await;
                let email: HashSet<String> = system
                    .smtp
                    .messages()
                    .iter()
                    .map(|m| {
                        m.message_id
                            .trim_matches(['<', '>'])
                            .trim_end_matches("@boxoffice")
                            .to_owned()
                    })
                    .collect();
                let webhook: HashSet<String> = system
                    .webhooks
                    .received()
                    .into_iter()
                    .map(|r| r.delivery_id)
                    .collect();
                let now = (
                    missing(&in_app, all),
                    missing(&email, all),
                    missing(&webhook, webhook_wanted),
                );
                *last.lock().unwrap_or_else(|p| p.into_inner()) = now;
                (now == (0, 0, 0)).then_some(())
            }
        },
    )
    .await;
    let (in_app_missing, email_missing, webhook_missing) =
        last.into_inner().unwrap_or_else(|p| p.into_inner());
    for (channel, count) in [
        ("in-app", in_app_missing),
        ("email", email_missing),
        ("webhook", webhook_missing),
    ] {
        if count > 0 {
            violations.push(format!(
                "{count} notifications never reached the {channel} channel"
            ));
        }
    }
    delivered.in_app = notices.len() - in_app_missing;
    delivered.email = notices.len() - email_missing;
    delivered.webhook = webhook_wanted.len() - webhook_missing;
    delivered
}

/// The in-app notification ids of `users`.
async fn in_app_ids(
    session: &scylla::client::session::Session,
    users: &HashSet<&str>,
) -> HashSet<String> {
    let mut ids = HashSet::new();
    for user in users {
        let rows = session
            .query_unpaged(
                "SELECT notification_id FROM boxoffice.notifications WHERE user_id = ?",
                (*user,),
            )
            .await
            .ok()
            .and_then(|r| r.into_rows_result().ok());
        if let Some(rows) = rows
            && let Ok(iter) = rows.rows::<(String,)>()
        {
            ids.extend(iter.filter_map(Result::ok).map(|(id,)| id));
        }
    }
    ids
}
