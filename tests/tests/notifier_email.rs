//! The notifier's email channel against a real SMTP server (`scripts/smtp-sink`, aiosmtpd):
//! one email per notification with the kind's text, in order per order, none for a user
//! without an address (recorded), and none again on a full replay.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap fails the test"
)]

mod notifier_common;

use std::time::Duration;

use boxoffice_avro::ids;
use boxoffice_avro::records::NotificationKind;
use boxoffice_sinks::notify::Channel;
use boxoffice_sinks::notify::email::message_id;
use boxoffice_sinks::notify::templates::format_millis;
use boxoffice_store::notifications::DeliveryState;
use boxoffice_tests::pipeline::Pipeline;
use boxoffice_tests::{services, wait};
use notifier_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn emails_are_sent_once_per_notification_in_order() {
    let services = services().await;
    let pipeline = Pipeline::create(services, "notifier_email").await.unwrap();
    let smtp = SmtpSink::start();
    let (alice, bob, carol) = (new_id(), new_id(), new_id());
    add_user(&pipeline, &alice, Some("alice@example.com")).await;
    add_user(&pipeline, &bob, Some("bob@example.com")).await;
    // carol has no users row and no auth profile: no address.
    let (o1, o2, o3, o4, o5) = (new_id(), new_id(), new_id(), new_id(), new_id());
    let t = now_ms();
    let mut all = order_life(&alice, &o1, t);
    all.push(notification(
        &alice,
        &o2,
        NotificationKind::OrderRejected,
        &[("reason", "SOLD_OUT"), ("event_name", "Night Gig")],
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
    all.push(notification(
        &bob,
        &o4,
        NotificationKind::OrderCancelled,
        &[("reason", "USER_REQUESTED"), ("refund", "true")],
        t + 40,
    ));
    all.push(notification(
        &bob,
        &o4,
        NotificationKind::OrderRefunded,
        &[
            ("reason", "ORDER_CANCELLED"),
            ("amount_minor", "5000"),
            ("currency", "EUR"),
        ],
        t + 50,
    ));
    let for_carol = notification(&carol, &o5, NotificationKind::OrderReserved, &[], t + 60);
    let mut produced = all.clone();
    produced.push(for_carol.clone());
    produced.push(all[1].clone()); // a redelivery
    produce(&pipeline, &produced).await;

    let notifier =
        RunningNotifier::start(&pipeline, settings(&pipeline, &[Channel::Email], smtp.port)).await;
    let expected = all.len();
    wait::until("7 distinct emails", Duration::from_secs(60), || {
        let n = smtp.distinct().len();
        async move { (n >= expected).then_some(()) }
    })
    .await
    .unwrap();
    wait::until("carol's email skipped", Duration::from_secs(30), || {
        let n = notifier.metrics.skipped_no_address.get();
        async move { (n == 1).then_some(()) }
    })
    .await
    .unwrap();

    let messages = smtp.messages();
    assert_eq!(messages.len(), all.len(), "no duplicates: {messages:#?}");
    let position = |id: &str| {
        messages
            .iter()
            .position(|m| m.message_id == message_id(id))
            .unwrap_or_else(|| panic!("no email for {id}"))
    };
    for n in &all {
        let email = &messages[position(&n.record_id)];
        let expected_to = if n.user_id == alice {
            "alice@example.com"
        } else {
            "bob@example.com"
        };
        assert!(email.to.contains(expected_to), "{email:?}");
    }
    // In order per order.
    assert!(position(&all[0].record_id) < position(&all[1].record_id));
    assert!(position(&all[3].record_id) < position(&all[4].record_id));
    assert!(position(&all[5].record_id) < position(&all[6].record_id));
    // The kind's text.
    let reserved = &messages[position(&all[0].record_id)];
    assert!(reserved.subject.starts_with("Reserved"), "{reserved:?}");
    let deadline = format_millis(&(t + 600_000).to_string()).unwrap();
    assert!(reserved.body.contains(&deadline), "{reserved:?}");
    assert!(reserved.body.contains("50.00 EUR"), "{reserved:?}");
    let confirmed = &messages[position(&all[1].record_id)];
    for ticket in ids::ticket_ids(&o1, 2) {
        assert!(confirmed.body.contains(&ticket), "{confirmed:?}");
    }
    let rejected = &messages[position(&all[2].record_id)];
    assert!(rejected.body.contains("sold out"), "{rejected:?}");
    let refunded = &messages[position(&all[6].record_id)];
    assert!(refunded.body.contains("50.00 EUR"), "{refunded:?}");
    let cancelled = &messages[position(&all[5].record_id)];
    assert!(cancelled.body.contains("refunded"), "{cancelled:?}");

    // The rows are written after the counter moves and after the server took the message.
    let store = notify_store(&pipeline).await;
    let (skipped, sent) = wait::until("both delivery rows", Duration::from_secs(30), || {
        let store = &store;
        let (carol, first) = (&for_carol.record_id, &all[0].record_id);
        async move {
            let skipped = store.delivery(carol, "email", "email").await.unwrap()?;
            let sent = store.delivery(first, "email", "email").await.unwrap()?;
            Some((skipped, sent))
        }
    })
    .await
    .unwrap();
    assert_eq!(skipped.state, DeliveryState::Skipped);
    assert_eq!((sent.state, sent.attempts), (DeliveryState::Sent, 1));
    notifier.stop().await.unwrap();

    // A full replay (a new consumer group reads the topic from the start): nothing is sent again.
    let mut replay = settings(&pipeline, &[Channel::Email], smtp.port);
    replay.group_prefix = format!("{}replay-", pipeline.prefix);
    let notifier = RunningNotifier::start(&pipeline, replay).await;
    wait::until(
        "the replay handled every record",
        Duration::from_secs(60),
        || {
            let n = notifier.metrics.records.get();
            let total = produced.len() as u64;
            async move { (n >= total).then_some(()) }
        },
    )
    .await
    .unwrap();
    notifier.stop().await.unwrap();
    assert_eq!(smtp.messages().len(), all.len(), "the replay sent nothing");
}
