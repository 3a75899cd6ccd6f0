//! The notifier's in-app channel against real Kafka, CQL and registry: every notification is
//! one row in the user's list, newest first; redeliveries and a full replay add nothing and do
//! not mark a read notification unread.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap fails the test"
)]

mod notifier_common;

use std::time::Duration;

use boxoffice_avro::records::NotificationKind;
use boxoffice_sinks::notify::Channel;
use boxoffice_tests::pipeline::Pipeline;
use boxoffice_tests::{services, wait};
use notifier_common::*;
use scylla::value::CqlTimestamp;

type Row = (String, String, CqlTimestamp, Option<bool>);

async fn list(pipeline: &Pipeline, user_id: &str) -> Vec<Row> {
    pipeline
        .session
        .query_unpaged(
            format!(
                "SELECT notification_id, kind, created_at, read FROM \"{}\".notifications \
                 WHERE user_id = ?",
                pipeline.keyspace
            ),
            (user_id,),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<Row>()
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_app_notifications_are_stored_once_and_in_order() {
    let services = services().await;
    let pipeline = Pipeline::create(services, "notifier_inapp").await.unwrap();
    let (alice, bob) = (new_id(), new_id());
    let (o1, o2, o3) = (new_id(), new_id(), new_id());
    let t = now_ms();
    let mut all = order_life(&alice, &o1, t);
    all.push(notification(
        &alice,
        &o2,
        NotificationKind::OrderRejected,
        &[("reason", "SOLD_OUT")],
        t + 10,
    ));
    all.push(notification(
        &bob,
        &o3,
        NotificationKind::OrderReserved,
        &[],
        t + 20,
    ));
    all.push(notification(
        &bob,
        &o3,
        NotificationKind::OrderExpired,
        &[],
        t + 30,
    ));
    // A redelivery, as after a processor crash: the same record again.
    let mut produced = all.clone();
    produced.push(all[0].clone());
    produce(&pipeline, &produced).await;

    let notifier =
        RunningNotifier::start(&pipeline, settings(&pipeline, &[Channel::Inapp], 1)).await;
    wait::until(
        "alice's 3 and bob's 2 notifications",
        Duration::from_secs(60),
        || {
            let pipeline = &pipeline;
            let (alice, bob) = (alice.clone(), bob.clone());
            async move {
                (list(pipeline, &alice).await.len() == 3 && list(pipeline, &bob).await.len() == 2)
                    .then_some(())
            }
        },
    )
    .await
    .unwrap();
    wait::until("every record handled", Duration::from_secs(30), || {
        let n = notifier.metrics.in_app_stored.get();
        async move { (n >= 6).then_some(()) }
    })
    .await
    .unwrap();

    let rows = list(&pipeline, &alice).await;
    let kinds: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    // Newest first.
    assert_eq!(
        kinds,
        ["ORDER_REJECTED", "ORDER_CONFIRMED", "ORDER_RESERVED"]
    );
    assert_eq!(rows[2].0, all[0].record_id);
    assert_eq!(rows[2].2, CqlTimestamp(t));
    assert!(rows.iter().all(|r| r.3.is_none()), "unread: {rows:?}");

    // The user reads the reservation; a replay of the whole topic must not undo that.
    pipeline
        .session
        .query_unpaged(
            format!(
                "UPDATE \"{}\".notifications SET read = true WHERE user_id = ? AND created_at = ? \
                 AND notification_id = ?",
                pipeline.keyspace
            ),
            (&alice, CqlTimestamp(t), &all[0].record_id),
        )
        .await
        .unwrap();
    notifier.stop().await.unwrap();

    let mut replay = settings(&pipeline, &[Channel::Inapp], 1);
    replay.group_prefix = format!("{}replay-", pipeline.prefix);
    let notifier = RunningNotifier::start(&pipeline, replay).await;
    wait::until(
        "the replay handled every record",
        Duration::from_secs(60),
        || {
            let n = notifier.metrics.in_app_stored.get();
            async move { (n >= 6).then_some(()) }
        },
    )
    .await
    .unwrap();
    notifier.stop().await.unwrap();
    let rows = list(&pipeline, &alice).await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(rows[2].3, Some(true), "read flag kept: {rows:?}");
    assert_eq!(list(&pipeline, &bob).await.len(), 2);
}
