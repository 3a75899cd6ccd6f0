//! The notifier's webhook channel against a real HTTP receiver that verifies every HMAC
//! signature: one delivery per notification and endpoint, in order, with the notification id
//! as delivery id; 410 disables the endpoint; a refusal (400) is dead-lettered at once; an
//! endpoint that keeps failing (503) is dead-lettered after the bounded attempts; endpoints on
//! private addresses are refused unless allow-listed.
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

/// Issue 13, finding 2 (SSRF): users choose webhook URLs, so without a policy the notifier
/// POSTs wherever they point inside the network. With the default policy (public addresses
/// only) endpoints at a loopback address, at a name that resolves to loopback (`localhost`:
/// the check is on the resolved address) and at the cloud metadata address are refused for
/// good: dead-lettered with the reason, and the receiver on loopback never sees a request. The
/// control: a notifier whose allow-list names loopback delivers to the same receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn private_destinations_are_refused_unless_allow_listed() {
    let services = services().await;
    let pipeline = Pipeline::create(services, "notifier_egress").await.unwrap();
    let receiver = WebhookReceiver::start().await;
    let store = notify_store(&pipeline).await;
    let by_name = receiver.url("by-name").replace("127.0.0.1", "localhost");
    assert!(by_name.contains("localhost"), "{by_name}");
    let (mallory, alice) = (new_id(), new_id());
    for (endpoint, url) in [
        ("by-address", receiver.url("by-address")),
        ("by-name", by_name.clone()),
        (
            "metadata",
            "http://169.254.169.254/latest/meta-data/".to_owned(),
        ),
    ] {
        store
            .add_endpoint(&mallory, endpoint, &url, SECRET)
            .await
            .unwrap();
    }
    let allowed = receiver.url("allowed").replace("127.0.0.1", "localhost");
    store
        .add_endpoint(&alice, "allowed", &allowed, SECRET)
        .await
        .unwrap();

    let t = now_ms();
    let first = notification(&mallory, &new_id(), NotificationKind::OrderReserved, &[], t);
    produce(&pipeline, std::slice::from_ref(&first)).await;
    let mut public_only = settings(&pipeline, &[Channel::Webhook], 1);
    public_only.egress = Default::default();
    let notifier = RunningNotifier::start(&pipeline, public_only).await;
    let mut dead_letters = pipeline.reader(&pipeline.topics.dead_letters).unwrap();
    let dead: Vec<DeadLetter> = dead_letters
        .read_until(Duration::from_secs(60), |records: &[DeadLetter]| {
            records.len() >= 3
        })
        .await
        .unwrap();
    // Handled (every target's row final) before the next notifier reads the same partition.
    wait::until("the record handled", Duration::from_secs(60), || {
        let n = notifier.metrics.records.get();
        async move { (n >= 1).then_some(()) }
    })
    .await
    .unwrap();
    notifier.stop().await.unwrap();
    assert_eq!(dead.len(), 3, "{dead:#?}");
    for letter in &dead {
        assert!(letter.reason.contains("egress policy"), "{letter:?}");
    }
    let metadata = dead
        .iter()
        .find(|d| d.consumer.ends_with("/metadata"))
        .unwrap();
    assert!(metadata.reason.contains("link-local"), "{metadata:?}");
    assert!(receiver.received().is_empty(), "{:?}", receiver.received());

    // Control: loopback allow-listed, the same receiver gets the next notification.
    let second = notification(
        &alice,
        &new_id(),
        NotificationKind::OrderReserved,
        &[],
        t + 10,
    );
    produce(&pipeline, std::slice::from_ref(&second)).await;
    let notifier =
        RunningNotifier::start(&pipeline, settings(&pipeline, &[Channel::Webhook], 1)).await;
    wait::until("the allowed delivery", Duration::from_secs(60), || {
        let n = receiver.received().len();
        async move { (n >= 1).then_some(()) }
    })
    .await
    .unwrap();
    notifier.stop().await.unwrap();
    let received = receiver.received();
    assert_eq!(received.len(), 1, "{received:#?}");
    assert_eq!(received[0].endpoint, "allowed");
    assert_eq!(received[0].delivery_id, second.record_id);
}
