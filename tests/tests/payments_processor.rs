//! The payment processor end to end with the booking processor, against real Kafka, a real
//! CQL store and a real registry: book → reserved → pay → confirmed with tickets; a declined
//! card cancels and releases; a tampered amount is refused; a submission before its request is
//! parked; a timeout is resolved without a second charge; cancelling a paid order refunds it.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap fails the test"
)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use boxoffice_avro::ids;
use boxoffice_avro::records::{
    BookingCommand, BookingRequested, CancelReason, CancelRequested, EventUpserted,
    NotificationKind, NotificationRequested, OrderEvent, OrderReserved, PaymentRequest,
    PaymentSubmitted,
};
use boxoffice_processors::payments::render::refund_notification_id;
use boxoffice_store::payments::StoredPayment;
use boxoffice_tests::pipeline::{Pipeline, TopicReader};
use boxoffice_tests::{services, wait};

const PRICE: i64 = 4500;
const WAIT: Duration = Duration::from_secs(60);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn event(event_id: &str, capacity: i32) -> BookingCommand {
    let at = now_ms() - 60_000;
    BookingCommand::EventUpserted(EventUpserted {
        record_id: ids::record_id("test-upsert", &[event_id]),
        event_id: event_id.into(),
        name: format!("Event {event_id}"),
        category_id: None,
        capacity,
        price_minor: PRICE,
        currency: "EUR".into(),
        sale_starts_at: at,
        sale_ends_at: at + 24 * 3_600_000,
        hold_seconds: 600,
        max_per_order: 4,
        max_per_user: 0,
        occurred_at: at,
    })
}

fn booking(event_id: &str, order_id: &str, user_id: &str, slots: i32) -> BookingCommand {
    BookingCommand::BookingRequested(BookingRequested {
        record_id: ids::record_id_for::<BookingRequested>(&[order_id]),
        order_id: order_id.into(),
        event_id: event_id.into(),
        user_id: user_id.into(),
        number_slot: slots,
        idempotency_key: None,
        occurred_at: now_ms(),
    })
}

/// What ingest produces for `POST v1/payments`.
fn submission(
    event_id: &str,
    order_id: &str,
    user_id: &str,
    amount: i64,
    token: &str,
) -> PaymentRequest {
    PaymentRequest::PaymentSubmitted(PaymentSubmitted {
        record_id: ids::record_id_for::<PaymentSubmitted>(&[order_id, token, &amount.to_string()]),
        payment_id: ids::payment_id(order_id),
        order_id: order_id.into(),
        event_id: event_id.into(),
        user_id: user_id.into(),
        amount_minor: amount,
        currency: "EUR".into(),
        payment_method_token: token.into(),
        occurred_at: now_ms(),
    })
}

fn pay(reserved: &OrderReserved, token: &str) -> PaymentRequest {
    submission(
        &reserved.event_id,
        &reserved.order_id,
        &reserved.user_id,
        reserved.amount_minor,
        token,
    )
}

async fn reserved(orders: &mut TopicReader, order_id: &str) -> OrderReserved {
    let facts = orders
        .read_group_until(WAIT, |f: &[OrderEvent]| {
            f.iter()
                .any(|f| matches!(f, OrderEvent::OrderReserved(r) if r.order_id == order_id))
        })
        .await
        .unwrap();
    facts
        .into_iter()
        .find_map(|f| match f {
            OrderEvent::OrderReserved(r) if r.order_id == order_id => Some(r),
            _ => None,
        })
        .unwrap()
}

/// Reads order facts until `matches` holds for one of `order_id`'s; returns all of them.
async fn until_fact(
    orders: &mut TopicReader,
    order_id: &str,
    matches: impl Fn(&OrderEvent) -> bool,
) -> Vec<OrderEvent> {
    let facts = orders
        .read_group_until(WAIT, |f: &[OrderEvent]| {
            f.iter().any(|f| f.order_id() == order_id && matches(f))
        })
        .await
        .unwrap();
    facts
        .into_iter()
        .filter(|f| f.order_id() == order_id)
        .collect()
}

async fn payment_row(pipeline: &Pipeline, order_id: &str, status: &str) -> StoredPayment {
    let store = pipeline.payment_store().await.unwrap();
    let payment_id = ids::payment_id(order_id);
    wait::until(&format!("payment of {order_id} {status}"), WAIT, || {
        let store = store.clone();
        let payment_id = payment_id.clone();
        async move {
            store
                .load(&payment_id)
                .await
                .ok()
                .flatten()
                .filter(|p| p.status.name() == status)
        }
    })
    .await
    .unwrap()
}

async fn history(pipeline: &Pipeline, order_id: &str) -> Vec<String> {
    let store = pipeline.payment_store().await.unwrap();
    store
        .history(&ids::payment_id(order_id))
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.status)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paying_with_the_success_token_confirms_the_order_with_tickets() {
    let pipeline = Pipeline::create(services().await, "pay_ok").await.unwrap();
    let booking_processor = pipeline.start_processor().await.unwrap();
    let payments = pipeline.start_payment_processor().await.unwrap();
    let (e, order, user) = ("pay-event", "pay-order-1", "fan-1");
    pipeline
        .produce_commands(&[event(e, 10), booking(e, order, user, 2)])
        .await
        .unwrap();
    let mut orders = pipeline.reader(&pipeline.topics.orders).unwrap();
    let reservation = reserved(&mut orders, order).await;
    assert_eq!(reservation.amount_minor, 2 * PRICE);

    pipeline
        .produce_payment_requests(&[pay(&reservation, "tok_success")])
        .await
        .unwrap();
    let facts = until_fact(&mut orders, order, |f| {
        matches!(f, OrderEvent::TicketsIssued(_))
    })
    .await;
    let confirmed = facts.iter().find_map(|f| match f {
        OrderEvent::OrderConfirmed(c) => Some(c),
        _ => None,
    });
    assert_eq!(
        confirmed.unwrap().payment_id.as_deref(),
        Some(ids::payment_id(order).as_str())
    );
    let tickets = facts.iter().find_map(|f| match f {
        OrderEvent::TicketsIssued(t) => Some(t.ticket_ids.len()),
        _ => None,
    });
    assert_eq!(tickets, Some(2), "one ticket per slot");

    let row = payment_row(&pipeline, order, "CAPTURED").await;
    assert_eq!(
        (row.amount_minor, row.captured_minor, row.currency.as_str()),
        (2 * PRICE, 2 * PRICE, "EUR")
    );
    assert!(
        row.payment_method_token.is_empty(),
        "no token kept once settled"
    );
    assert!(!row.provider_reference.is_empty());
    assert_eq!(
        history(&pipeline, order).await,
        ["PENDING", "CHARGING", "CAPTURED"]
    );
    assert_eq!(payments.metrics.charges.get(), 1);
    payments.stop().await.unwrap();
    booking_processor.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_card_cancels_the_order_and_releases_the_slots() {
    let pipeline = Pipeline::create(services().await, "pay_declined")
        .await
        .unwrap();
    let booking_processor = pipeline.start_processor().await.unwrap();
    let payments = pipeline.start_payment_processor().await.unwrap();
    let e = "declined-event";
    // One slot: only its release lets the second fan book.
    pipeline
        .produce_commands(&[event(e, 1), booking(e, "declined-1", "fan-1", 1)])
        .await
        .unwrap();
    let mut orders = pipeline.reader(&pipeline.topics.orders).unwrap();
    let reservation = reserved(&mut orders, "declined-1").await;
    pipeline
        .produce_payment_requests(&[pay(&reservation, "tok_declined")])
        .await
        .unwrap();
    let facts = until_fact(&mut orders, "declined-1", |f| {
        matches!(f, OrderEvent::OrderCancelled(_))
    })
    .await;
    let cancelled = facts.iter().find_map(|f| match f {
        OrderEvent::OrderCancelled(c) => Some(c),
        _ => None,
    });
    assert_eq!(cancelled.unwrap().reason, CancelReason::PaymentFailed);
    assert_eq!(cancelled.unwrap().refund_id, None);
    let row = payment_row(&pipeline, "declined-1", "FAILED").await;
    assert_eq!(row.failure_reason, "DECLINED");

    pipeline
        .produce_commands(&[booking(e, "declined-2", "fan-2", 1)])
        .await
        .unwrap();
    reserved(&mut orders, "declined-2").await;
    payments.stop().await.unwrap();
    booking_processor.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_amount_is_refused_then_a_submission_before_its_request_is_parked() {
    let pipeline = Pipeline::create(services().await, "pay_refused")
        .await
        .unwrap();
    let booking_processor = pipeline.start_processor().await.unwrap();
    let payments = pipeline.start_payment_processor().await.unwrap();
    let e = "refused-event";
    pipeline
        .produce_commands(&[event(e, 10), booking(e, "cheap", "fan-1", 1)])
        .await
        .unwrap();
    let mut orders = pipeline.reader(&pipeline.topics.orders).unwrap();
    let reservation = reserved(&mut orders, "cheap").await;
    pipeline
        .produce_payment_requests(&[submission(e, "cheap", "fan-1", 1, "tok_success")])
        .await
        .unwrap();
    let store = pipeline.payment_store().await.unwrap();
    wait::until("the tampered submission refused", WAIT, || {
        let store = store.clone();
        async move {
            let history = store.history(&ids::payment_id("cheap")).await.ok()?;
            history
                .iter()
                .any(|h| h.status == "SUBMISSION_REFUSED")
                .then_some(())
        }
    })
    .await
    .unwrap();
    assert_eq!(payments.metrics.charges.get(), 0, "nothing charged");
    assert_eq!(
        payment_row(&pipeline, "cheap", "PENDING")
            .await
            .amount_minor,
        PRICE
    );
    // The right amount goes through.
    pipeline
        .produce_payment_requests(&[pay(&reservation, "tok_success")])
        .await
        .unwrap();
    until_fact(&mut orders, "cheap", |f| {
        matches!(f, OrderEvent::OrderConfirmed(_))
    })
    .await;

    // Ingest's submission can reach the payment processor before the booking processor's
    // request: it waits, then is checked against the request.
    pipeline
        .produce_payment_requests(&[submission(e, "early", "fan-2", PRICE, "tok_success")])
        .await
        .unwrap();
    payment_row(&pipeline, "early", "AWAITING_REQUEST").await;
    pipeline
        .produce_commands(&[booking(e, "early", "fan-2", 1)])
        .await
        .unwrap();
    until_fact(&mut orders, "early", |f| {
        matches!(f, OrderEvent::OrderConfirmed(_))
    })
    .await;
    // The outcome is produced before the history and the row are written; the row comes last.
    payment_row(&pipeline, "early", "CAPTURED").await;
    assert_eq!(
        history(&pipeline, "early").await,
        ["AWAITING_REQUEST", "PENDING", "CHARGING", "CAPTURED"]
    );
    payments.stop().await.unwrap();
    booking_processor.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_timeout_is_resolved_by_query_without_a_second_charge() {
    let pipeline = Pipeline::create(services().await, "pay_timeout")
        .await
        .unwrap();
    let booking_processor = pipeline.start_processor().await.unwrap();
    let payments = pipeline.start_payment_processor().await.unwrap();
    let e = "timeout-event";
    pipeline
        .produce_commands(&[event(e, 10), booking(e, "slow-1", "fan-1", 1)])
        .await
        .unwrap();
    let mut orders = pipeline.reader(&pipeline.topics.orders).unwrap();
    let reservation = reserved(&mut orders, "slow-1").await;
    pipeline
        .produce_payment_requests(&[pay(&reservation, "tok_timeout")])
        .await
        .unwrap();
    until_fact(&mut orders, "slow-1", |f| {
        matches!(f, OrderEvent::OrderConfirmed(_))
    })
    .await;
    assert_eq!(payments.metrics.charges.get(), 1);
    assert!(payments.metrics.queries.get() >= 1);
    assert_eq!(payments.gateway.replays(), 0, "never charged again");
    payments.stop().await.unwrap();
    booking_processor.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_confirmed_order_refunds_it_and_tells_the_user() {
    let pipeline = Pipeline::create(services().await, "pay_refund")
        .await
        .unwrap();
    let booking_processor = pipeline.start_processor().await.unwrap();
    let payments = pipeline.start_payment_processor().await.unwrap();
    let (e, order, user) = ("refund-event", "refund-1", "fan-1");
    pipeline
        .produce_commands(&[event(e, 10), booking(e, order, user, 1)])
        .await
        .unwrap();
    let mut orders = pipeline.reader(&pipeline.topics.orders).unwrap();
    let reservation = reserved(&mut orders, order).await;
    pipeline
        .produce_payment_requests(&[pay(&reservation, "tok_success")])
        .await
        .unwrap();
    until_fact(&mut orders, order, |f| {
        matches!(f, OrderEvent::OrderConfirmed(_))
    })
    .await;

    pipeline
        .produce_commands(&[BookingCommand::CancelRequested(CancelRequested {
            record_id: ids::record_id_for::<CancelRequested>(&[order]),
            order_id: order.into(),
            event_id: e.into(),
            user_id: user.into(),
            occurred_at: now_ms(),
        })])
        .await
        .unwrap();
    let facts = until_fact(&mut orders, order, |f| {
        matches!(f, OrderEvent::OrderCancelled(_))
    })
    .await;
    let refund_id = facts
        .iter()
        .find_map(|f| match f {
            OrderEvent::OrderCancelled(c) => c.refund_id.clone(),
            _ => None,
        })
        .expect("a paid order's cancellation names its refund");

    let mut notifications = pipeline.reader(&pipeline.topics.notifications).unwrap();
    let expected = refund_notification_id(&refund_id);
    let seen: Vec<NotificationRequested> = notifications
        .read_until(WAIT, |n: &[NotificationRequested]| {
            n.iter().any(|n| n.record_id == expected)
        })
        .await
        .unwrap();
    let refunded = seen.iter().find(|n| n.record_id == expected).unwrap();
    assert_eq!(refunded.kind, NotificationKind::OrderRefunded);
    assert_eq!(refunded.user_id, user);
    assert_eq!(refunded.params["amount_minor"], PRICE.to_string());

    let row = payment_row(&pipeline, order, "REFUNDED").await;
    assert_eq!(
        (row.refunded_minor, row.refund_id.as_str()),
        (PRICE, refund_id.as_str())
    );
    assert_eq!(
        history(&pipeline, order).await,
        ["PENDING", "CHARGING", "CAPTURED", "REFUNDING", "REFUNDED"]
    );
    assert_eq!(payments.metrics.refunds.get(), 1);
    payments.stop().await.unwrap();
    booking_processor.stop().await.unwrap();
}
