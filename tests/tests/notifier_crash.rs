//! The notifier binary SIGKILLed mid-stream, twice, and restarted: every notification ends up
//! in the in-app list once, and delivered by email and webhook with nothing lost; after
//! deduplication by id (Message-ID, X-Boxoffice-Delivery-Id) exactly one of each is visible,
//! and only sends in flight at a kill (at most one per lane) are repeated.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap fails the test"
)]

mod notifier_common;

use std::collections::HashMap;
use std::time::Duration;

use boxoffice_avro::records::NotificationRequested;
use boxoffice_sinks::notify::email::message_id;
use boxoffice_tests::pipeline::Pipeline;
use boxoffice_tests::{services, wait};
use notifier_common::*;

const USERS: usize = 6;
const ORDERS_PER_USER: usize = 30;
const KILLS: usize = 2;
/// `NOTIFIER_LANES` of the child: at most this many sends are in flight per channel.
const LANES: usize = 4;

async fn in_app_rows(pipeline: &Pipeline, users: &[String]) -> usize {
    let mut total = 0;
    for user in users {
        total += pipeline
            .session
            .query_unpaged(
                format!(
                    "SELECT notification_id FROM \"{}\".notifications WHERE user_id = ?",
                    pipeline.keyspace
                ),
                (user,),
            )
            .await
            .unwrap()
            .into_rows_result()
            .unwrap()
            .rows_num();
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_stream_loses_nothing_and_shows_no_duplicate() {
    let services = services().await;
    let pipeline = Pipeline::create(services, "notifier_crash").await.unwrap();
    let smtp = SmtpSink::start();
    let receiver = WebhookReceiver::start().await;
    let store = notify_store(&pipeline).await;
    let users: Vec<String> = (0..USERS).map(|_| new_id()).collect();
    for (i, user) in users.iter().enumerate() {
        add_user(&pipeline, user, Some(&format!("fan{i}@example.com"))).await;
        let endpoint = format!("u{i}");
        store
            .add_endpoint(user, &endpoint, &receiver.url(&endpoint), SECRET)
            .await
            .unwrap();
    }
    let t = now_ms();
    let mut all: Vec<NotificationRequested> = Vec::new();
    for j in 0..ORDERS_PER_USER {
        for (i, user) in users.iter().enumerate() {
            all.extend(order_life(user, &new_id(), t + (j * 100 + i) as i64));
        }
    }
    let total = all.len();
    produce(&pipeline, &all).await;

    let mut child = NotifierChild::start(&pipeline, smtp.port, LANES);
    for kill in 1..=KILLS {
        // Let it get part of the way, then kill it without warning.
        let goal = total * kill / (KILLS + 1);
        wait::until(
            "progress on every channel",
            Duration::from_secs(120),
            || {
                let (emails, hooks) = (smtp.distinct().len(), receiver.received().len());
                async move { (emails >= goal && hooks >= goal).then_some(()) }
            },
        )
        .await
        .unwrap();
        child.kill9();
        child = NotifierChild::start(&pipeline, smtp.port, LANES);
    }

    wait::until(
        "every notification on every channel",
        Duration::from_secs(180),
        || {
            let (pipeline, users) = (&pipeline, &users);
            let (emails, hooks) = (smtp.distinct().len(), receiver.received().len());
            async move {
                let rows = in_app_rows(pipeline, users).await;
                (rows >= total && emails >= total && hooks >= total).then_some(())
            }
        },
    )
    .await
    .unwrap();
    // A graceful stop after the test: SIGTERM, exit 0.
    let pid = child.0.id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let exited = wait::until(
        "the notifier to exit on SIGTERM",
        Duration::from_secs(30),
        || {
            let status = child.0.try_wait().unwrap();
            async move { status }
        },
    )
    .await
    .unwrap();
    assert!(exited.success(), "{exited:?}");

    // In-app: exactly one row each.
    assert_eq!(in_app_rows(&pipeline, &users).await, total);

    // Email: nothing lost; by Message-ID exactly one each; raw repeats only from kills.
    let distinct = smtp.distinct();
    assert_eq!(distinct.len(), total);
    for n in &all {
        assert!(
            distinct.contains_key(&message_id(&n.record_id)),
            "lost {}",
            n.record_id
        );
    }
    let email_repeats = smtp.messages().len() - total;
    assert!(
        email_repeats <= KILLS * LANES,
        "{email_repeats} repeated emails"
    );

    // Webhooks: the same.
    let received = receiver.received();
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    for r in &received {
        *by_id.entry(r.delivery_id.as_str()).or_default() += 1;
    }
    assert_eq!(by_id.len(), total);
    for n in &all {
        assert!(
            by_id.contains_key(n.record_id.as_str()),
            "lost {}",
            n.record_id
        );
    }
    let webhook_repeats = received.len() - total;
    assert!(
        webhook_repeats <= KILLS * LANES,
        "{webhook_repeats} repeated webhooks"
    );
    assert_eq!(receiver.bad_signatures(), 0);

    // Per user, the first sight of each notification is in order (reserved before confirmed).
    let mut first_seen: Vec<&str> = Vec::new();
    for r in &received {
        if !first_seen.contains(&r.delivery_id.as_str()) {
            first_seen.push(&r.delivery_id);
        }
    }
    let position: HashMap<&str, usize> = first_seen
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, i))
        .collect();
    for pair in all.chunks(2) {
        assert!(position[pair[0].record_id.as_str()] < position[pair[1].record_id.as_str()]);
    }
    eprintln!(
        "notifier crash test: {total} notifications, {KILLS} kills, repeated sends: \
         email {email_repeats}, webhook {webhook_repeats}"
    );
}
