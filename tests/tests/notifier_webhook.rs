//! The notifier's webhook channel against a real HTTP receiver that verifies every HMAC
//! signature: one delivery per notification and endpoint, in order, with the notification id
//! as delivery id; 410 disables the endpoint; a refusal (400) is dead-lettered at once; an
//! endpoint that keeps failing (503) is dead-lettered after the bounded attempts.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap fails the test"
)]

mod notifier_common;

use std::time::Duration;

use boxoffice_avro::records::{DeadLetter, NotificationKind};
use boxoffice_sinks::notify::Channel;
use boxoffice_store::notifications::DeliveryState;
use boxoffice_tests::pipeline::Pipeline;
use boxoffice_tests::{services, wait};
use notifier_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_are_signed_delivered_once_and_failures_dead_lettered() {
    let services = services().await;
    let pipeline = Pipeline::create(services, "notifier_webhook")
        .await
        .unwrap();
    let receiver = WebhookReceiver::start().await;
    let store = notify_store(&pipeline).await;
    let (alice, bob, carol, dave) = (new_id(), new_id(), new_id(), new_id());
    let endpoints = [
        (&alice, "a1"),
        (&alice, "a2"),
        (&bob, "b1"),
        (&bob, "gone"),
        (&carol, "bad"),
        (&dave, "flaky"),
    ];
    for (user, endpoint) in endpoints {
        store
            .add_endpoint(user, endpoint, &receiver.url(endpoint), SECRET)
            .await
            .unwrap();
    }
    receiver.endpoint_answers("gone", 410);
    receiver.endpoint_answers("bad", 400);
    receiver.endpoint_answers("flaky", 503);

    let t = now_ms();
    let (o1, o2, o3, o4) = (new_id(), new_id(), new_id(), new_id());
    let mut all = order_life(&alice, &o1, t);
    all.push(notification(
        &bob,
        &o2,
        NotificationKind::OrderReserved,
        &[],
        t + 10,
    ));
    all.push(notification(
        &bob,
        &o2,
        NotificationKind::OrderExpired,
        &[],
        t + 20,
    ));
    all.push(notification(
        &carol,
        &o3,
        NotificationKind::OrderRejected,
        &[],
        t + 30,
    ));
    all.push(notification(
        &dave,
        &o4,
        NotificationKind::OrderRejected,
        &[],
        t + 40,
    ));
    let mut produced = all.clone();
    produced.push(all[0].clone()); // a redelivery
    produce(&pipeline, &produced).await;

    let notifier =
        RunningNotifier::start(&pipeline, settings(&pipeline, &[Channel::Webhook], 1)).await;
    let mut dead_letters = pipeline.reader(&pipeline.topics.dead_letters).unwrap();
    let dead: Vec<DeadLetter> = dead_letters
        .read_until(Duration::from_secs(60), |records: &[DeadLetter]| {
            records.len() >= 2
        })
        .await
        .unwrap();
    wait::until("6 webhook deliveries", Duration::from_secs(60), || {
        let n = receiver.received().len();
        async move { (n >= 6).then_some(()) }
    })
    .await
    .unwrap();
    wait::until("every record handled", Duration::from_secs(60), || {
        let n = notifier.metrics.records.get();
        let total = produced.len() as u64;
        async move { (n >= total).then_some(()) }
    })
    .await
    .unwrap();
    notifier.stop().await.unwrap();

    assert_eq!(receiver.bad_signatures(), 0);
    let received = receiver.received();
    assert_eq!(received.len(), 6, "{received:#?}");
    let ids_at = |endpoint: &str| -> Vec<String> {
        received
            .iter()
            .filter(|r| r.endpoint == endpoint)
            .map(|r| r.delivery_id.clone())
            .collect()
    };
    // One each, in order (reserved before confirmed), the notification id as delivery id.
    let alice_ids = vec![all[0].record_id.clone(), all[1].record_id.clone()];
    assert_eq!(ids_at("a1"), alice_ids);
    assert_eq!(ids_at("a2"), alice_ids);
    assert_eq!(
        ids_at("b1"),
        vec![all[2].record_id.clone(), all[3].record_id.clone()]
    );
    let first = received.iter().find(|r| r.endpoint == "a1").unwrap();
    assert_eq!(first.body["type"], "ORDER_RESERVED");
    assert_eq!(first.body["id"], all[0].record_id.as_str());
    assert_eq!(first.body["order_id"], o1.as_str());

    // 410: disabled after its first answer, never called again.
    let bob_endpoints = store.webhook_endpoints(&bob).await.unwrap();
    let gone = bob_endpoints
        .iter()
        .find(|e| e.endpoint_id == "gone")
        .unwrap();
    assert!(gone.disabled);
    let gone_row = store
        .delivery(&all[2].record_id, "webhook", "gone")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(gone_row.state, DeliveryState::Disabled);
    assert!(
        store
            .delivery(&all[3].record_id, "webhook", "gone")
            .await
            .unwrap()
            .is_none()
    );

    // 400 at once, 503 after 6 attempts: both on the dead-letter topic with the reason.
    let bad = dead.iter().find(|d| d.consumer.ends_with("/bad")).unwrap();
    assert!(bad.reason.contains("400"), "{bad:?}");
    assert_eq!(bad.key.as_deref(), Some(carol.as_bytes()));
    let flaky = dead
        .iter()
        .find(|d| d.consumer.ends_with("/flaky"))
        .unwrap();
    assert!(flaky.reason.contains("failed 6 times"), "{flaky:?}");
    assert!(flaky.reason.contains("503"), "{flaky:?}");
    let flaky_row = store
        .delivery(&all[5].record_id, "webhook", "flaky")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (flaky_row.state, flaky_row.attempts),
        (DeliveryState::Dead, 6)
    );
    assert_eq!(dead.len(), 2, "{dead:#?}");
}
