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

/// The committed offset of `group` on `topic`, summed over partitions, and the sum of the
/// partitions' end offsets.
fn committed_and_end(pipeline: &Pipeline, group: &str, topic: &str) -> (i64, i64) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = pipeline
        .services
        .kafka()
        .client_config()
        .set("group.id", group)
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let partitions: Vec<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    let mut list = rdkafka::TopicPartitionList::new();
    for p in &partitions {
        list.add_partition(topic, *p);
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .unwrap();
    let mut sums = (0, 0);
    for p in partitions {
        let (_, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap();
        let at = committed
            .find_partition(topic, p)
            .and_then(|e| e.offset().to_raw())
            .filter(|o| *o >= 0)
            .unwrap_or(0);
        sums = (sums.0 + at, sums.1 + high);
    }
    sums
}

/// Issue 13, finding 5: one user's slow endpoints stalled every user's deliveries (endpoints
/// delivered one after another in a user's lane, 8 attempts × 10 s each, then the lane's queue
/// filled and the consumer stopped). With one lane, so both users share it: Mallory's endpoint
/// never answers, Alice's answers. Alice gets all her deliveries while Mallory's first request
/// still hangs; Mallory's endpoint is suspended after two timeouts and the rest of her
/// deliveries are parked (dead-lettered with the reason) instead of tried; the channel's
/// committed offset reaches the end of the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_endpoint_never_delays_another_users_deliveries() {
    let services = services().await;
    let pipeline = Pipeline::create(services, "webhook_isolation")
        .await
        .unwrap();
    let receiver = WebhookReceiver::start().await;
    let store = notify_store(&pipeline).await;
    let (mallory, alice) = (new_id(), new_id());
    for (user, endpoint) in [(&mallory, "hung"), (&alice, "fast")] {
        store
            .add_endpoint(user, endpoint, &receiver.url(endpoint), SECRET)
            .await
            .unwrap();
    }
    receiver.endpoint_hangs("hung");
    let t = now_ms();
    let per_user = 12;
    let mut all = Vec::new();
    for (user, at) in [(&mallory, t), (&alice, t + 1_000)] {
        for i in 0..per_user {
            let order = new_id();
            let kind = NotificationKind::OrderRejected;
            all.push(notification(user, &order, kind, &[], at + i));
        }
    }
    let (mallorys, alices) = all.split_at(per_user as usize);
    produce(&pipeline, mallorys).await;

    let mut settings = settings(&pipeline, &[Channel::Webhook], 1);
    settings.lanes = 1;
    // Mallory's endpoint is suspended after two timeouts; Alice's twelve deliveries must all
    // happen before that (asserted below), so the timeouts leave a slow machine room.
    settings.webhook_timeout = Duration::from_secs(10);
    // Room for either user's burst: Mallory's are parked by the suspension, not the bound.
    settings.webhook_endpoint_queue = 16;
    settings.webhook_suspend_after = Some(2);
    let group = settings.group_id(Channel::Webhook);
    let notifier = RunningNotifier::start(&pipeline, settings).await;
    // Alice's come after Mallory's first delivery hangs (and after all of Mallory's records
    // reached the one lane).
    wait::until("Mallory's endpoint called", Duration::from_secs(30), || {
        let n = receiver.hung_requests();
        async move { (n >= 1).then_some(()) }
    })
    .await
    .unwrap();
    produce(&pipeline, alices).await;

    wait::until("Alice's deliveries", Duration::from_secs(30), || {
        let n = receiver
            .received()
            .iter()
            .filter(|r| r.endpoint == "fast")
            .count();
        async move { (n == per_user as usize).then_some(()) }
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}: fast {} hung {} records {} parked {} sent {} dead {}",
            receiver
                .received()
                .iter()
                .filter(|r| r.endpoint == "fast")
                .count(),
            receiver.hung_requests(),
            notifier.metrics.records.get(),
            notifier.metrics.webhooks_parked.get(),
            notifier.metrics.webhooks_sent.get(),
            notifier.metrics.dead_lettered.get(),
        )
    });
    assert_eq!(
        notifier.metrics.endpoints_suspended.get(),
        0,
        "Alice was served while Mallory's endpoint was still being tried"
    );
    assert!(
        receiver.hung_requests() >= 1,
        "Mallory's endpoint was called and hangs"
    );

    let topic = pipeline.topics.notifications.clone();
    wait::until(
        "the committed offset at the end",
        Duration::from_secs(60),
        || {
            let (committed, end) = committed_and_end(&pipeline, &group, &topic);
            async move { (committed == end).then_some(()) }
        },
    )
    .await
    .unwrap();
    assert_eq!(notifier.metrics.endpoints_suspended.get(), 1);
    assert!(
        receiver.hung_requests() <= 2,
        "a suspended endpoint is not called: {}",
        receiver.hung_requests()
    );
    // Every one of Mallory's deliveries is final and on the dead-letter topic with its reason.
    let mut dead_letters = pipeline.reader(&pipeline.topics.dead_letters).unwrap();
    let dead: Vec<DeadLetter> = dead_letters
        .read_until(Duration::from_secs(30), |records: &[DeadLetter]| {
            records.len() >= per_user as usize
        })
        .await
        .unwrap();
    assert!(
        dead.iter().all(|d| d.consumer.ends_with("/hung")),
        "{dead:#?}"
    );
    assert!(
        dead.iter().any(|d| d.reason.contains("suspended")),
        "{dead:#?}"
    );
    for n in all.iter().filter(|n| n.user_id == mallory) {
        let row = store
            .delivery(&n.record_id, "webhook", "hung")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.state, DeliveryState::Dead, "{row:?}");
    }
    notifier.stop().await.unwrap();
}
