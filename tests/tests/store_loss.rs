//! The payment processor and the notifier's in-app channel when the CQL store loses writes it
//! had acknowledged, against real Kafka, a real CQL store and a real registry. The loss is made
//! by hand, exactly: rows removed together with the consumer's stored watermark, while Kafka's
//! committed offset stays ahead. Each test first proves the rows are gone.
//!
//! - payments: the running processor sees its watermark go backwards and replays; a restarted
//!   one sees the store behind the committed offset and replays; lost payments come back
//!   captured, the provider is asked again with the same idempotency key and never charges
//!   twice, and the outcomes are the same records;
//! - notifier: lost in-app rows are written again, also those lost after a watermark that
//!   survived (seen through the channel's failed store calls).
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap fails the test"
)]

mod notifier_common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use boxoffice_avro::ids;
use boxoffice_avro::records::{
    BookingCommand, PaymentRequest, PaymentRequested, PaymentSubmitted, RecordGroup,
};
use boxoffice_processors::payments::gateway::Gateway;
use boxoffice_sinks::notify::Channel;
use boxoffice_store::schema::Keyspace;
use boxoffice_store::watermarks::WatermarkStore;
use boxoffice_tests::load::now_ms;
use boxoffice_tests::pipeline::{Pipeline, RunningPaymentProcessor};
use boxoffice_tests::tcp_cut::TcpCut;
use boxoffice_tests::{services, wait};
use notifier_common::{RunningNotifier, new_id, order_life, produce, settings};

const WAIT: Duration = Duration::from_secs(90);

/// Tests that cut the store run alone. The count of failed store calls is one per process
/// (`boxoffice_store::session::transient_failures`, right for a service: one consumer of each
/// kind per process), so a cut in one test makes every other test's consumers in this binary
/// read their partitions again, at any moment, also between another test's injected loss and
/// its check that the loss happened (a CI run failed so: a deleted payment was already back).
static STORE_CUTS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn order(i: usize) -> String {
    format!("loss-order-{i:03}")
}

fn requests(range: std::ops::Range<usize>) -> Vec<PaymentRequest> {
    let mut out = Vec::new();
    for i in range {
        let order = order(i);
        let payment_id = ids::payment_id(&order);
        out.push(PaymentRequest::PaymentRequested(PaymentRequested {
            record_id: ids::record_id_for::<PaymentRequested>(&[&order]),
            payment_id: payment_id.clone(),
            order_id: order.clone(),
            event_id: "loss-event".into(),
            user_id: format!("fan-{i}"),
            amount_minor: 4500,
            currency: "EUR".into(),
            hold_expires_at: now_ms() + 600_000,
            occurred_at: now_ms(),
        }));
        out.push(PaymentRequest::PaymentSubmitted(PaymentSubmitted {
            record_id: ids::record_id_for::<PaymentSubmitted>(&[&order]),
            payment_id,
            order_id: order,
            event_id: "loss-event".into(),
            user_id: format!("fan-{i}"),
            amount_minor: 4500,
            currency: "EUR".into(),
            payment_method_token: "tok_success".into(),
            occurred_at: now_ms(),
        }));
    }
    out
}

/// Removes the payments' rows (and history, timers) and every watermark of the group: what a
/// store that lost the writes since the watermark holds.
async fn lose_payments(pipeline: &Pipeline, orders: &[String]) {
    delete_payments(pipeline, orders).await;
    forget_watermarks(pipeline).await;
}

/// Removes every consumer's watermark: what a store that lost them holds.
async fn forget_watermarks(pipeline: &Pipeline) {
    pipeline
        .session
        .query_unpaged(
            format!("TRUNCATE \"{}\".consumer_watermarks", pipeline.keyspace),
            &[],
        )
        .await
        .unwrap();
}

/// Deletes the orders' payment rows and checks they are gone (before any watermark changes,
/// so no replay can bring them back in between).
async fn delete_payments(pipeline: &Pipeline, orders: &[String]) {
    let ks = &pipeline.keyspace;
    for order in orders {
        let payment = ids::payment_id(order);
        for table in [
            "payments WHERE id = ?",
            "payment_histories WHERE payment_id = ?",
        ] {
            pipeline
                .session
                .query_unpaged(format!("DELETE FROM \"{ks}\".{table}"), (&payment,))
                .await
                .unwrap();
        }
    }
    let store = pipeline.payment_store().await.unwrap();
    for order in orders {
        assert!(
            store.load(&ids::payment_id(order)).await.unwrap().is_none(),
            "the fault happened: {order}'s payment is gone from the store"
        );
    }
}

async fn captured(pipeline: &Pipeline, orders: &[String]) {
    let store = pipeline.payment_store().await.unwrap();
    wait::until("the lost payments captured again", WAIT, || {
        let store = &store;
        async move {
            for order in orders {
                let payment = store.load(&ids::payment_id(order)).await.ok().flatten()?;
                if payment.status.name() != "CAPTURED" {
                    return None;
                }
            }
            Some(())
        }
    })
    .await
    .unwrap();
}

/// A new pipeline with a running payment processor that captured `count` payments.
async fn paid(name: &str, count: usize) -> (Pipeline, RunningPaymentProcessor) {
    let pipeline = Pipeline::create(services().await, name).await.unwrap();
    let mut outcomes = pipeline.reader(&pipeline.topics.commands).unwrap();
    let processor = pipeline.start_payment_processor().await.unwrap();
    pipeline
        .produce_payment_requests(&requests(0..count))
        .await
        .unwrap();
    outcomes
        .read_group_until(WAIT, |o: &[BookingCommand]| o.len() >= count)
        .await
        .unwrap();
    let all: Vec<String> = (0..count).map(order).collect();
    captured(&pipeline, &all).await;
    (pipeline, processor)
}

fn replays(gateway: &Gateway) -> u64 {
    gateway.replays()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_payment_processor_replays_what_the_store_lost_and_never_charges_twice() {
    let _alone = STORE_CUTS.read().await;
    let (pipeline, processor) = paid("payments_loss", 20).await;

    // The running processor: its watermark goes backwards under it.
    let lost: Vec<String> = (0..10).map(order).collect();
    let before = replays(&processor.gateway);
    lose_payments(&pipeline, &lost).await;
    captured(&pipeline, &lost).await;
    assert!(
        processor.metrics.store_loss_replays.get() >= 1,
        "the loss was seen"
    );
    assert!(
        replays(&processor.gateway) >= before + lost.len() as u64,
        "the provider was asked again with the same keys (never a new charge)"
    );

    // Negative control: the same loss, but the store claims to hold everything (its watermark
    // far ahead, as it would be without the watermark mechanism: nothing to compare with).
    // The rows stay lost: it is the comparison that brings them back.
    let control: Vec<String> = vec![order(0)];
    // The watermarks first: with none stored for a moment, a check would replay.
    let watermarks = pipeline.watermarks().await.unwrap();
    for partition in 0..3 {
        watermarks
            .save(
                &format!("{}payments", pipeline.prefix),
                &pipeline.topics.payments,
                partition,
                i64::MAX / 2,
            )
            .await
            .unwrap();
    }
    delete_payments(&pipeline, &control).await;
    // Two watermark checks (5 s apart) pass without a replay.
    let replays_before = processor.metrics.store_loss_replays.get();
    tokio::time::sleep(Duration::from_secs(12)).await;
    let store = pipeline.payment_store().await.unwrap();
    assert!(
        store
            .load(&ids::payment_id(&control[0]))
            .await
            .unwrap()
            .is_none(),
        "without the comparison nothing is replayed"
    );
    assert_eq!(processor.metrics.store_loss_replays.get(), replays_before);
    processor.stop().await.unwrap();
    forget_watermarks(&pipeline).await;

    // A restarted processor: the store is behind the committed offset.
    let mut lost: Vec<String> = (10..20).map(order).collect();
    lose_payments(&pipeline, &lost).await;
    let processor = pipeline.start_payment_processor().await.unwrap();
    lost.extend(control);
    captured(&pipeline, &lost).await;
    assert!(processor.metrics.store_loss_replays.get() >= 1);

    processor.stop().await.unwrap();

    // Every outcome is the same record as before: 20 distinct PaymentSucceeded, no other, in
    // the whole log.
    let distinct = everything_on(&pipeline, &pipeline.topics.commands).await;
    assert_eq!(distinct.len(), 20, "one outcome per payment: {distinct:?}");
    assert!(
        distinct
            .values()
            .all(|o| matches!(o, BookingCommand::PaymentSucceeded(_))),
        "{distinct:?}"
    );
}

/// Every record of `topic` up to its end, by record id.
async fn everything_on(
    pipeline: &Pipeline,
    topic: &str,
) -> std::collections::HashMap<String, BookingCommand> {
    let kafka = pipeline.services.kafka();
    let topic = topic.to_owned();
    let payloads = tokio::task::spawn_blocking(move || {
        let mut payloads = Vec::new();
        for partition in 0..boxoffice_tests::pipeline::COMMAND_PARTITIONS {
            boxoffice_topics::reader::read_to_end(
                &kafka,
                "store-loss-test",
                &topic,
                partition,
                None,
                WAIT,
                |m| {
                    if let Some(p) = rdkafka::Message::payload(m) {
                        payloads.push(p.to_vec());
                    }
                },
            )
            .unwrap();
        }
        payloads
    })
    .await
    .unwrap();
    let mut distinct = std::collections::HashMap::new();
    for payload in payloads {
        let command = pipeline
            .codec
            .decode_group::<BookingCommand>(&payload)
            .await
            .unwrap();
        distinct.insert(command.record_id().to_owned(), command);
    }
    distinct
}

async fn in_app_ids(pipeline: &Pipeline, user: &str) -> HashSet<String> {
    pipeline
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
        .rows::<(String,)>()
        .unwrap()
        .map(|r| r.unwrap().0)
        .collect()
}

/// A new pipeline with a running in-app channel that stored 10 rows (5 orders) per user.
async fn notified(name: &str, users: &[String]) -> (Pipeline, RunningNotifier) {
    let pipeline = Pipeline::create(services().await, name).await.unwrap();
    let mut notifications = Vec::new();
    for (i, user) in users.iter().enumerate() {
        for n in 0..5 {
            notifications.extend(order_life(user, &new_id(), now_ms() + (i * 10 + n) as i64));
        }
    }
    produce(&pipeline, &notifications).await;
    let notifier =
        RunningNotifier::start(&pipeline, settings(&pipeline, &[Channel::Inapp], 1)).await;
    for user in users {
        in_app_rows_reach(&pipeline, user, 10, "every in-app row stored").await;
    }
    (pipeline, notifier)
}

async fn in_app_rows_reach(pipeline: &Pipeline, user: &str, rows: usize, what: &str) {
    wait::until(what, WAIT, || async {
        (in_app_ids(pipeline, user).await.len() == rows).then_some(())
    })
    .await
    .unwrap();
}

/// The store loses one user's rows and the channel's watermarks.
async fn lose_in_app(pipeline: &Pipeline, user: &str) {
    let ks = &pipeline.keyspace;
    pipeline
        .session
        .query_unpaged(
            format!("DELETE FROM \"{ks}\".notifications WHERE user_id = ?"),
            (user,),
        )
        .await
        .unwrap();
    // Checked before the watermarks go: no replay can bring the rows back in between.
    assert!(
        in_app_ids(pipeline, user).await.is_empty(),
        "the fault happened"
    );
    forget_watermarks(pipeline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_notifier_writes_again_in_app_rows_the_store_lost() {
    let _alone = STORE_CUTS.read().await;
    let users: Vec<String> = (0..3).map(|_| new_id()).collect();
    let (pipeline, notifier) = notified("inapp_loss", &users).await;

    lose_in_app(&pipeline, &users[0]).await;
    in_app_rows_reach(&pipeline, &users[0], 10, "the lost rows written again").await;
    assert!(notifier.metrics.store_loss_replays.get() >= 1);
    notifier.stop().await.unwrap();
}

/// The loss is followed at once by new records on the same partition (same user): the write
/// of their watermark, not only the periodic check, must see that the store went backwards,
/// or it moves the watermark past what was lost and the loss is never seen. (Without the
/// check on write, this failed: the 10 lost rows stayed lost, only the 2 new ones came.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_notifier_sees_the_loss_when_new_records_come_before_its_check() {
    let _alone = STORE_CUTS.read().await;
    let user = new_id();
    let (pipeline, notifier) = notified("inapp_loss_busy", std::slice::from_ref(&user)).await;

    lose_in_app(&pipeline, &user).await;
    produce(&pipeline, &order_life(&user, &new_id(), now_ms() + 100)).await;
    let what = "the lost rows written again, and the new ones";
    in_app_rows_reach(&pipeline, &user, 12, what).await;
    assert!(notifier.metrics.store_loss_replays.get() >= 1);
    notifier.stop().await.unwrap();
}

/// The payment processor's version of the race above: new requests on the lost payments'
/// partitions come before its periodic check; their batch's watermark write sees the loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_payment_processor_sees_the_loss_when_new_records_come_before_its_check() {
    let _alone = STORE_CUTS.read().await;
    let (pipeline, processor) = paid("payments_loss_busy", 10).await;
    let lost: Vec<String> = (0..10).map(order).collect();

    lose_payments(&pipeline, &lost).await;
    // Thirty new payments: every partition gets some at once.
    pipeline
        .produce_payment_requests(&requests(10..40))
        .await
        .unwrap();
    let all: Vec<String> = (0..40).map(order).collect();
    captured(&pipeline, &all).await;
    assert!(
        processor.metrics.store_loss_replays.get() >= 1,
        "the loss was seen"
    );
    processor.stop().await.unwrap();
}

/// Every watermark of the pipeline's consumers, summed: the records they cover (the test
/// topics start at offset 0 and hold no transaction markers).
async fn watermark_total(pipeline: &Pipeline) -> i64 {
    pipeline
        .session
        .query_unpaged(
            format!(
                "SELECT next_offset FROM \"{}\".consumer_watermarks",
                pipeline.keyspace
            ),
            &[],
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(Option<i64>,)>()
        .unwrap()
        .map(|r| r.unwrap().0.unwrap_or_default())
        .sum()
}

/// A watermark store whose calls go through a relay the test can cut.
async fn relayed_watermarks(pipeline: &Pipeline) -> (TcpCut, Arc<WatermarkStore>) {
    let relay = TcpCut::start(&pipeline.services.scylla_uri).await.unwrap();
    let session = boxoffice_store::session::ScyllaArgs {
        uri: relay.address(),
        timeout: Duration::from_secs(10),
    }
    .connect()
    .await
    .unwrap();
    let keyspace = Keyspace::new(&pipeline.keyspace).unwrap();
    let watermarks = WatermarkStore::new(Arc::new(session), &keyspace)
        .await
        .unwrap();
    (relay, Arc::new(watermarks))
}

/// Waits until a store call of this process failed after `failures` were counted.
async fn a_store_call_failed(failures: u64) {
    wait::until("a watermark call failed", WAIT, || async {
        (boxoffice_store::session::transient_failures() > failures).then_some(())
    })
    .await
    .unwrap();
}

/// The loss a watermark cannot show: rows written after the last watermark that survived are
/// lost, and the watermark keeps its value, so its next write finds what it expects and would
/// move past them. The in-app channel's watermark calls go through a relay the test cuts (what
/// they meet when the store crashed); its rows go straight to the store and are deleted during
/// the cut (what the crash lost). The failed calls must make the channel read the partition
/// again from the stored watermark. (Without that check this failed: the 2 rows stayed lost,
/// as 5 in-app rows did in a chaos run that killed the store.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_notifier_writes_again_rows_lost_after_a_watermark_that_survived() {
    let _alone = STORE_CUTS.write().await;
    let user = new_id();
    let pipeline = Pipeline::create(services().await, "inapp_loss_after_mark")
        .await
        .unwrap();
    let (relay, watermarks) = relayed_watermarks(&pipeline).await;
    let first: Vec<_> = (0..5)
        .flat_map(|n| order_life(&user, &new_id(), now_ms() + n))
        .collect();
    produce(&pipeline, &first).await;
    let settings = settings(&pipeline, &[Channel::Inapp], 1);
    let notifier = RunningNotifier::start_with(&pipeline, settings, Arc::clone(&watermarks)).await;
    in_app_rows_reach(&pipeline, &user, 10, "every in-app row stored").await;
    let covered = first.len() as i64;
    wait::until("the watermark covers the first rows", WAIT, || async {
        (watermark_total(&pipeline).await == covered).then_some(())
    })
    .await
    .unwrap();

    // The crash: the channel's store calls fail from here on ...
    relay.cut();
    let failures = boxoffice_store::session::transient_failures();
    let second = order_life(&user, &new_id(), now_ms() + 100);
    produce(&pipeline, &second).await;
    in_app_rows_reach(&pipeline, &user, 12, "the new rows stored").await;
    a_store_call_failed(failures).await;
    // ... and the store lost the rows written after its watermark, which kept its value.
    for n in &second {
        pipeline
            .session
            .query_unpaged(
                format!(
                    "DELETE FROM \"{}\".notifications WHERE user_id = ? AND created_at = ? AND notification_id = ?",
                    pipeline.keyspace
                ),
                (&user, scylla::value::CqlTimestamp(n.occurred_at), n.notification_id()),
            )
            .await
            .unwrap();
    }
    assert_eq!(
        in_app_ids(&pipeline, &user).await.len(),
        10,
        "the fault happened: the new rows are gone"
    );
    assert_eq!(
        watermark_total(&pipeline).await,
        covered,
        "the watermark did not move (or go backwards): nothing shows the loss but the failures"
    );
    assert!(
        watermarks.load("any", "any", 0).await.is_err(),
        "the channel's watermark calls meet the cut"
    );
    relay.mend();

    in_app_rows_reach(&pipeline, &user, 12, "the lost rows written again").await;
    assert!(notifier.metrics.store_fault_replays.get() >= 1);
    assert_eq!(
        notifier.metrics.store_loss_replays.get(),
        0,
        "not a watermark that went backwards"
    );
    notifier.stop().await.unwrap();
}

/// The payment processor's version: payments written after the last watermark that survived
/// are lost while their batch's watermark write meets the cut. The failed calls must make it
/// read the partition again from the stored watermark: the payments come back captured, the
/// provider asked again with the same keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_payment_processor_replays_payments_lost_after_a_watermark_that_survived() {
    let _alone = STORE_CUTS.write().await;
    let pipeline = Pipeline::create(services().await, "payments_loss_after_mark")
        .await
        .unwrap();
    let (relay, watermarks) = relayed_watermarks(&pipeline).await;
    let processor = pipeline
        .start_payment_processor_watermarked(pipeline.payment_settings(), watermarks.clone())
        .await
        .unwrap();
    let first = requests(0..10);
    pipeline.produce_payment_requests(&first).await.unwrap();
    captured(&pipeline, &(0..10).map(order).collect::<Vec<_>>()).await;
    let covered = first.len() as i64;
    wait::until("the watermarks cover the first payments", WAIT, || async {
        (watermark_total(&pipeline).await == covered).then_some(())
    })
    .await
    .unwrap();

    // The crash: the processor's watermark calls fail from here on ...
    relay.cut();
    let failures = boxoffice_store::session::transient_failures();
    let lost: Vec<String> = (10..20).map(order).collect();
    pipeline
        .produce_payment_requests(&requests(10..20))
        .await
        .unwrap();
    captured(&pipeline, &lost).await;
    a_store_call_failed(failures).await;
    // ... and the store lost the payments written after its watermark, which kept its value.
    let before = replays(&processor.gateway);
    delete_payments(&pipeline, &lost).await;
    assert_eq!(
        watermark_total(&pipeline).await,
        covered,
        "the watermarks did not move (or go backwards): nothing shows the loss but the failures"
    );
    assert!(
        watermarks.load("any", "any", 0).await.is_err(),
        "the processor's watermark calls meet the cut"
    );
    relay.mend();

    captured(&pipeline, &lost).await;
    assert!(processor.metrics.store_fault_replays.get() >= 1);
    assert_eq!(
        processor.metrics.store_loss_replays.get(),
        0,
        "not a watermark that went backwards"
    );
    assert!(
        replays(&processor.gateway) >= before + lost.len() as u64,
        "the provider was asked again with the same keys (never a new charge)"
    );
    processor.stop().await.unwrap();
}
