//! Issue 13 (accounts): in-app notifications can be marked read, one (`POST
//! v1/notifications/{id}/read`) or all (`POST v1/notifications/read`). Against the real ingest
//! and CQL store, with the notifications written by the notifier's own store code.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap fails the test"
)]

mod ingest_common;
mod notifier_common;

use boxoffice_avro::records::NotificationKind;
use ingest_common::{Ingest, Reply};
use serde_json::json;

fn read_flags(reply: &Reply) -> Vec<(String, bool)> {
    reply.body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("a page: {}", reply.body))
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap().to_owned(),
                n["read"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_are_marked_read_one_or_all() {
    let ingest = Ingest::start("notifications_read", false).await;
    let (fan, token, _) = ingest.user("reader_fan").await;
    let (other, other_token, _) = ingest.user("other_reader").await;
    let store = notifier_common::notify_store(&ingest.pipeline).await;
    let t = notifier_common::now_ms();
    let kinds = [
        NotificationKind::OrderReserved,
        NotificationKind::OrderConfirmed,
        NotificationKind::OrderExpired,
    ];
    for (i, kind) in kinds.into_iter().enumerate() {
        let order = notifier_common::new_id();
        let n = notifier_common::notification(&fan, &order, kind, &[], t + i as i64);
        store.store_in_app(&n).await.unwrap();
    }
    let theirs = notifier_common::notification(
        &other,
        &notifier_common::new_id(),
        NotificationKind::OrderRejected,
        &[],
        t,
    );
    store.store_in_app(&theirs).await.unwrap();

    let listed = ingest.get("/v1/notifications", Some(&token)).await;
    let flags = read_flags(&listed);
    assert_eq!(flags.len(), 3);
    assert!(flags.iter().all(|(_, read)| !read), "{flags:?}");

    let one = &flags[1].0;
    let marked = ingest
        .post(
            &format!("/v1/notifications/{one}/read"),
            Some(&token),
            json!({}),
        )
        .await;
    assert_eq!(marked.status, 204, "{}", marked.body);
    let after = read_flags(&ingest.get("/v1/notifications", Some(&token)).await);
    let read: Vec<&str> = after
        .iter()
        .filter(|(_, r)| *r)
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(read, vec![one.as_str()]);

    // Someone else's notification, or none, is 404 (never 403).
    ingest
        .post(
            &format!("/v1/notifications/{}/read", theirs.record_id),
            Some(&token),
            json!({}),
        )
        .await
        .assert_problem(404);
    ingest
        .post(
            "/v1/notifications/nothing-here/read",
            Some(&token),
            json!({}),
        )
        .await
        .assert_problem(404);

    let all = ingest
        .post("/v1/notifications/read", Some(&token), json!({}))
        .await;
    assert_eq!(all.status, 200, "{}", all.body);
    assert_eq!(all.body["marked"], 2);
    let after_all = read_flags(&ingest.get("/v1/notifications", Some(&token)).await);
    assert!(after_all.iter().all(|(_, read)| *read), "{after_all:?}");
    let again = ingest
        .post("/v1/notifications/read", Some(&token), json!({}))
        .await;
    assert_eq!(again.body["marked"], 0);
    // The other fan's stays unread.
    let theirs_listed = read_flags(&ingest.get("/v1/notifications", Some(&other_token)).await);
    assert_eq!(theirs_listed, vec![(theirs.record_id.clone(), false)]);
    ingest.stop().await;
}
