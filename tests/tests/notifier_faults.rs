//! Faults against the real parts: the webhook receiver answers 500 for a while, then
//! recovers; the SMTP server goes down mid-stream and comes back. Every notification is
//! delivered once after recovery, nothing is lost, nothing is dead-lettered, per-user order
//! holds, and the in-app channel is not held up meanwhile.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap fails the test"
)]

mod notifier_common;

use std::collections::HashMap;
use std::time::Duration;

use boxoffice_avro::records::NotificationRequested;
use boxoffice_sinks::notify::Channel;
use boxoffice_sinks::notify::email::message_id;
use boxoffice_sinks::notify::runner::lane_of;
use boxoffice_store::notifications::DeliveryState;
use boxoffice_tests::pipeline::Pipeline;
use boxoffice_tests::{services, wait};
use notifier_common::*;

async fn in_app_count(pipeline: &Pipeline, users: &[String]) -> usize {
    let mut total = 0;
    for user in users {
        let rows = pipeline
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
            .unwrap();
        total += rows.rows_num();
    }
    total
}

/// `users` users with `orders` orders each (reserved + confirmed).
fn workload(users: &[String], orders: usize, t: i64) -> Vec<NotificationRequested> {
    let mut all = Vec::new();
    for (i, user) in users.iter().enumerate() {
        for j in 0..orders {
            all.extend(order_life(user, &new_id(), t + (i * 100 + j * 10) as i64));
        }
    }
    all
}

/// Each user's notifications arrived in the order they were produced.
fn assert_in_order(produced: &[NotificationRequested], arrived: &[String]) {
    let position: HashMap<&str, usize> = arrived
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let mut last: HashMap<&str, usize> = HashMap::new();
    for n in produced {
        let at = position[n.record_id.as_str()];
        if let Some(previous) = last.insert(n.user_id.as_str(), at) {
            assert!(previous < at, "out of order for user {}", n.user_id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_receiver_failing_for_a_while_then_everything_once() {
    let services = services().await;
    let pipeline = Pipeline::create(services, "notifier_fault_http")
        .await
        .unwrap();
    let receiver = WebhookReceiver::start().await;
    let store = notify_store(&pipeline).await;
    let users: Vec<String> = (0..4).map(|_| new_id()).collect();
    for (i, user) in users.iter().enumerate() {
        let endpoint = format!("u{i}");
        store
            .add_endpoint(user, &endpoint, &receiver.url(&endpoint), SECRET)
            .await
            .unwrap();
    }
    let all = workload(&users, 3, now_ms());
    receiver.force_status(500);
    let mut s = settings(&pipeline, &[Channel::Inapp, Channel::Webhook], 1);
    s.max_attempts = 40; // the outage below is shorter than the retry budget
    let notifier = RunningNotifier::start(&pipeline, s).await;
    produce(&pipeline, &all).await;

    // While the receiver fails, the in-app channel is not held up.
    wait::until("every in-app notification", Duration::from_secs(60), || {
        let (pipeline, users) = (&pipeline, &users);
        async move { (in_app_count(pipeline, users).await == 24).then_some(()) }
    })
    .await
    .unwrap();
    wait::until(
        "the receiver refused 8 requests",
        Duration::from_secs(60),
        || {
            let n = receiver.requests();
            async move { (n >= 8).then_some(()) }
        },
    )
    .await
    .unwrap();
    assert!(receiver.received().is_empty());
    receiver.force_status(0);

    wait::until(
        "every webhook after recovery",
        Duration::from_secs(90),
        || {
            let n = receiver.received().len();
            let want = all.len();
            async move { (n >= want).then_some(()) }
        },
    )
    .await
    .unwrap();
    notifier.stop().await.unwrap();
    let received = receiver.received();
    assert_eq!(received.len(), all.len(), "each once");
    assert_eq!(receiver.bad_signatures(), 0);
    let arrived: Vec<String> = received.iter().map(|r| r.delivery_id.clone()).collect();
    assert_in_order(&all, &arrived);
    for n in &all {
        let row = store
            .delivery(
                &n.record_id,
                "webhook",
                &format!("u{}", users.iter().position(|u| *u == n.user_id).unwrap()),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.state, DeliveryState::Sent);
    }
    let mut dead_letters = pipeline.reader(&pipeline.topics.dead_letters).unwrap();
    assert!(
        dead_letters
            .read_raw(1, Duration::from_secs(3))
            .await
            .is_err(),
        "nothing dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn smtp_down_mid_stream_then_back_everything_once() {
    let services = services().await;
    let pipeline = Pipeline::create(services, "notifier_fault_smtp")
        .await
        .unwrap();
    let mut smtp = SmtpSink::start();
    let users: Vec<String> = (0..4).map(|_| new_id()).collect();
    for (i, user) in users.iter().enumerate() {
        add_user(&pipeline, user, Some(&format!("fan{i}@example.com"))).await;
    }
    let t = now_ms();
    let before = workload(&users, 1, t);
    let during = workload(&users, 2, t + 10_000);
    let notifier = RunningNotifier::start(
        &pipeline,
        settings(&pipeline, &[Channel::Inapp, Channel::Email], smtp.port),
    )
    .await;
    produce(&pipeline, &before).await;
    wait::until("the first emails", Duration::from_secs(60), || {
        let n = smtp.distinct().len();
        let want = before.len();
        async move { (n >= want).then_some(()) }
    })
    .await
    .unwrap();

    smtp.stop();
    let retries_before = notifier.metrics.retries.get();
    produce(&pipeline, &during).await;
    wait::until(
        "the notifier noticed the outage",
        Duration::from_secs(60),
        || {
            let n = notifier.metrics.retries.get();
            async move { (n >= retries_before + 3).then_some(()) }
        },
    )
    .await
    .unwrap();
    // The in-app list is complete while SMTP is down.
    let total = before.len() + during.len();
    wait::until("every in-app notification", Duration::from_secs(60), || {
        let (pipeline, users) = (&pipeline, &users);
        async move { (in_app_count(pipeline, users).await == total).then_some(()) }
    })
    .await
    .unwrap();

    smtp.restart();
    wait::until(
        "every email after recovery",
        Duration::from_secs(90),
        || {
            let n = smtp.distinct().len();
            async move { (n >= total).then_some(()) }
        },
    )
    .await
    .unwrap();
    notifier.stop().await.unwrap();

    let messages = smtp.messages();
    assert_eq!(messages.len(), total, "each once");
    let mut all = before.clone();
    all.extend(during.iter().cloned());
    let by_message_id: HashMap<String, &NotificationRequested> =
        all.iter().map(|n| (message_id(&n.record_id), n)).collect();
    let arrived: Vec<String> = messages
        .iter()
        .map(|m| by_message_id[&m.message_id].record_id.clone())
        .collect();
    assert_in_order(&all, &arrived);
    // The outage did not use up attempts.
    let store = notify_store(&pipeline).await;
    for n in &during {
        let row = store
            .delivery(&n.record_id, "email", "email")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (row.state, row.attempts),
            (DeliveryState::Sent, 1),
            "{row:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_users_failing_endpoint_does_not_hold_up_the_others() {
    let services = services().await;
    let pipeline = Pipeline::create(services, "notifier_fault_lane")
        .await
        .unwrap();
    let receiver = WebhookReceiver::start().await;
    let store = notify_store(&pipeline).await;
    let lanes = 16;
    let stuck = new_id();
    // Other users on other lanes than the stuck one (a shared lane waits, by design).
    let others: Vec<String> = std::iter::repeat_with(new_id)
        .filter(|u| lane_of(u.as_bytes(), lanes) != lane_of(stuck.as_bytes(), lanes))
        .take(5)
        .collect();
    store
        .add_endpoint(&stuck, "stuck", &receiver.url("stuck"), SECRET)
        .await
        .unwrap();
    for (i, user) in others.iter().enumerate() {
        let endpoint = format!("o{i}");
        store
            .add_endpoint(user, &endpoint, &receiver.url(&endpoint), SECRET)
            .await
            .unwrap();
    }
    receiver.endpoint_answers("stuck", 503);
    let t = now_ms();
    // The stuck user's records come first in every partition they share.
    let mut all = workload(std::slice::from_ref(&stuck), 2, t);
    all.extend(workload(&others, 2, t + 1000));
    let mut s = settings(&pipeline, &[Channel::Webhook], 1);
    s.lanes = lanes as u16;
    s.max_attempts = 100;
    s.retry_max = Duration::from_millis(300);
    let notifier = RunningNotifier::start(&pipeline, s).await;
    produce(&pipeline, &all).await;

    let others_total = others.len() * 4;
    wait::until(
        "every other user's webhooks",
        Duration::from_secs(60),
        || {
            let n = receiver
                .received()
                .iter()
                .filter(|r| r.endpoint.starts_with('o'))
                .count();
            async move { (n >= others_total).then_some(()) }
        },
    )
    .await
    .unwrap();
    assert!(
        receiver.received().iter().all(|r| r.endpoint != "stuck"),
        "the stuck endpoint is still failing"
    );
    // It recovers within its retry budget: its notifications follow, in order.
    receiver.endpoint_recovers("stuck");
    wait::until("the stuck user's webhooks", Duration::from_secs(60), || {
        let n = receiver.received().len();
        let want = all.len();
        async move { (n >= want).then_some(()) }
    })
    .await
    .unwrap();
    notifier.stop().await.unwrap();
    let received = receiver.received();
    assert_eq!(received.len(), all.len());
    let arrived: Vec<String> = received.iter().map(|r| r.delivery_id.clone()).collect();
    assert_in_order(&all, &arrived);
}
