//! Tests of the pure booking core: one per transition, then properties over random
//! interleavings of every input (with duplicates and redeliveries), and a negative control
//! proving the properties catch an allocator that oversells.

use std::collections::HashMap;

use boxoffice_avro::ids;
use boxoffice_avro::records::{
    BookingCommand, BookingRequested, CancelReason, CancelRequested, EventUpserted, HoldExpired,
    NotificationKind, OrderEvent, PaymentFailed, PaymentFailureReason, PaymentRequest,
    PaymentSucceeded, RecordGroup, RefundReason, RejectReason,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::coalesce;
use super::core::{Allocator, ExactAllocator};
use super::partition::{Decision, Partition, TimerChange};
use super::render::Output;
use super::state::{Millis, OrderStatus};

const EVENT: &str = "event-1";
const T0: Millis = 1_800_000_000_000;
const HOLD_MS: Millis = 600_000;

fn upsert_at(capacity: i32, price_minor: i64, at: Millis) -> BookingCommand {
    BookingCommand::EventUpserted(EventUpserted {
        record_id: format!("upsert-{capacity}-{price_minor}-{at}"),
        event_id: EVENT.into(),
        name: "Concert".into(),
        category_id: None,
        capacity,
        price_minor,
        currency: "EUR".into(),
        sale_starts_at: T0,
        sale_ends_at: T0 + 30 * 24 * 3_600_000,
        hold_seconds: (HOLD_MS / 1000) as i32,
        max_per_order: 4,
        max_per_user: 6,
        occurred_at: at,
    })
}

fn upsert(capacity: i32, price_minor: i64) -> BookingCommand {
    upsert_at(capacity, price_minor, T0)
}

fn book(order: &str, user: &str, slots: i32, at: Millis) -> BookingCommand {
    BookingCommand::BookingRequested(BookingRequested {
        record_id: format!("book-{order}"),
        order_id: order.into(),
        event_id: EVENT.into(),
        user_id: user.into(),
        number_slot: slots,
        idempotency_key: None,
        occurred_at: at,
    })
}

fn pay(order: &str, user: &str, at: Millis) -> BookingCommand {
    BookingCommand::PaymentSucceeded(PaymentSucceeded {
        record_id: format!("paid-{order}-{at}"),
        payment_id: ids::payment_id(order),
        order_id: order.into(),
        event_id: EVENT.into(),
        user_id: user.into(),
        amount_minor: 0,
        currency: "EUR".into(),
        provider_reference: "sandbox".into(),
        occurred_at: at,
    })
}

fn fail(order: &str, user: &str, at: Millis) -> BookingCommand {
    BookingCommand::PaymentFailed(PaymentFailed {
        record_id: format!("failed-{order}-{at}"),
        payment_id: ids::payment_id(order),
        order_id: order.into(),
        event_id: EVENT.into(),
        user_id: user.into(),
        amount_minor: 0,
        currency: "EUR".into(),
        reason: PaymentFailureReason::Declined,
        detail: None,
        occurred_at: at,
    })
}

fn expire(order: &str, user: &str, deadline: Millis, at: Millis) -> BookingCommand {
    BookingCommand::HoldExpired(HoldExpired {
        record_id: format!("expired-{order}-{deadline}"),
        order_id: order.into(),
        event_id: EVENT.into(),
        user_id: user.into(),
        hold_expires_at: deadline,
        occurred_at: at,
    })
}

fn cancel(order: &str, user: &str, at: Millis) -> BookingCommand {
    BookingCommand::CancelRequested(CancelRequested {
        record_id: format!("cancel-{order}-{at}"),
        order_id: order.into(),
        event_id: EVENT.into(),
        user_id: user.into(),
        occurred_at: at,
    })
}

fn order_facts(decision: &Decision) -> Vec<&OrderEvent> {
    decision
        .outputs
        .iter()
        .filter_map(|o| match o {
            Output::Order(e) => Some(e),
            _ => None,
        })
        .collect()
}

fn notifications(decision: &Decision) -> Vec<NotificationKind> {
    decision
        .outputs
        .iter()
        .filter_map(|o| match o {
            Output::Notification(n) => Some(n.kind),
            _ => None,
        })
        .collect()
}

fn payments(decision: &Decision) -> Vec<&PaymentRequest> {
    decision
        .outputs
        .iter()
        .filter_map(|o| match o {
            Output::Payment(p) => Some(p),
            _ => None,
        })
        .collect()
}

fn counters(p: &Partition<impl Allocator>) -> (u32, u32, u32) {
    let s = &p.events[EVENT];
    (s.available(), s.held, s.sold)
}

fn status(p: &Partition<impl Allocator>, order: &str) -> OrderStatus {
    p.events[EVENT].orders[order].status
}

// ------------------------------------------------------------------------------ transitions

#[test]
fn event_upserted_creates_the_event_and_announces_availability() {
    let mut p = Partition::new();
    let d = p.decide(&upsert(10, 2500));
    assert_eq!(counters(&p), (10, 0, 0));
    match d.outputs.as_slice() {
        [Output::Availability(a)] => {
            assert_eq!(
                (a.sequence, a.total, a.available, a.held, a.sold),
                (1, 10, 10, 0, 0)
            );
        }
        other => panic!("unexpected outputs {other:?}"),
    }
}

#[test]
fn capacity_is_never_set_below_held_plus_sold() {
    let mut p = Partition::new();
    p.decide(&upsert(10, 2500));
    p.decide(&book("o1", "u1", 4, T0 + 1));
    let d = p.decide(&upsert_at(2, 2500, T0 + 2));
    assert_eq!(p.events[EVENT].capacity(), 4, "raised to held + sold");
    assert_eq!(counters(&p), (0, 4, 0));
    assert!(
        d.ignored.iter().any(|r| r.contains("raised")),
        "{:?}",
        d.ignored
    );
}

#[test]
fn an_older_or_repeated_event_edit_is_ignored() {
    let mut p = Partition::new();
    p.decide(&upsert_at(10, 2500, T0 + 10));
    let d = p.decide(&upsert_at(3, 2500, T0 + 5));
    assert!(d.outputs.is_empty());
    assert_eq!(p.events[EVENT].capacity(), 10);
    let d = p.decide(&upsert_at(10, 2500, T0 + 10));
    assert!(d.outputs.is_empty());
}

#[test]
fn booking_reserves_with_a_hold_and_asks_for_payment() {
    let mut p = Partition::new();
    p.decide(&upsert(10, 2500));
    let d = p.decide(&book("o1", "u1", 3, T0 + 1000));
    assert_eq!(counters(&p), (7, 3, 0));
    assert_eq!(
        status(&p, "o1"),
        OrderStatus::Reserved {
            hold_expires_at: T0 + 1000 + HOLD_MS
        }
    );
    match order_facts(&d).as_slice() {
        [OrderEvent::OrderReserved(r)] => {
            assert_eq!((r.number_slot, r.amount_minor), (3, 7500));
            assert_eq!(r.hold_expires_at, T0 + 1000 + HOLD_MS);
            assert_eq!(
                r.payment_id.as_deref(),
                Some(ids::payment_id("o1").as_str())
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    match payments(&d).as_slice() {
        [PaymentRequest::PaymentRequested(r)] => assert_eq!(r.amount_minor, 7500),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(notifications(&d), vec![NotificationKind::OrderReserved]);
    assert!(
        d.outputs
            .iter()
            .any(|o| matches!(o, Output::Availability(a) if a.sequence == 2 && a.held == 3))
    );
    assert_eq!(
        d.timers,
        vec![TimerChange::Schedule {
            event_id: EVENT.into(),
            order_id: "o1".into(),
            user_id: "u1".into(),
            at: T0 + 1000 + HOLD_MS
        }]
    );
}

#[test]
fn a_free_event_confirms_at_once_with_tickets() {
    let mut p = Partition::new();
    p.decide(&upsert(10, 0));
    let d = p.decide(&book("o1", "u1", 2, T0 + 1));
    assert_eq!(counters(&p), (8, 0, 2));
    let facts = order_facts(&d);
    assert!(matches!(facts[0], OrderEvent::OrderConfirmed(c) if c.payment_id.is_none()));
    assert!(
        matches!(facts[1], OrderEvent::TicketsIssued(t) if t.ticket_ids == ids::ticket_ids("o1", 2))
    );
    assert!(payments(&d).is_empty());
    assert_eq!(notifications(&d), vec![NotificationKind::OrderConfirmed]);
}

#[test]
fn booking_is_rejected_with_its_reason() {
    let cases: Vec<(BookingCommand, RejectReason)> = vec![
        (
            book("late", "u1", 1, T0 + 31 * 24 * 3_600_000),
            RejectReason::NotOnSale,
        ),
        (book("early", "u1", 1, T0 - 1), RejectReason::NotOnSale),
        (book("big", "u1", 5, T0 + 1), RejectReason::LimitExceeded),
        (book("zero", "u1", 0, T0 + 1), RejectReason::InvalidRequest),
        (
            book("negative", "u1", -3, T0 + 1),
            RejectReason::InvalidRequest,
        ),
        (book("soldout", "u2", 3, T0 + 1), RejectReason::SoldOut),
    ];
    for (command, reason) in cases {
        let mut p = Partition::new();
        p.decide(&upsert(2, 100));
        let d = p.decide(&command);
        match order_facts(&d).as_slice() {
            [OrderEvent::OrderRejected(r)] => assert_eq!(r.reason, reason, "{command:?}"),
            other => panic!("{command:?}: unexpected {other:?}"),
        }
        assert_eq!(notifications(&d), vec![NotificationKind::OrderRejected]);
        assert_eq!(counters(&p), (2, 0, 0));
    }
    let mut p = Partition::new();
    let d = p.decide(&book("o1", "u1", 1, T0));
    assert!(
        matches!(order_facts(&d)[0], OrderEvent::OrderRejected(r) if r.reason == RejectReason::UnknownEvent)
    );
}

#[test]
fn the_per_user_limit_counts_held_and_sold_slots() {
    let mut p = Partition::new();
    p.decide(&upsert(100, 100));
    p.decide(&book("o1", "u1", 4, T0 + 1));
    let d = p.decide(&book("o2", "u1", 3, T0 + 2));
    assert!(
        matches!(order_facts(&d)[0], OrderEvent::OrderRejected(r) if r.reason == RejectReason::LimitExceeded)
    );
    let d = p.decide(&book("o3", "u1", 2, T0 + 3));
    assert!(matches!(order_facts(&d)[0], OrderEvent::OrderReserved(_)));
}

#[test]
fn payment_succeeded_sells_the_hold_and_issues_one_ticket_per_slot() {
    let mut p = Partition::new();
    p.decide(&upsert(10, 2500));
    p.decide(&book("o1", "u1", 3, T0 + 1));
    let d = p.decide(&pay("o1", "u1", T0 + 2));
    assert_eq!(counters(&p), (7, 0, 3));
    let facts = order_facts(&d);
    assert!(matches!(facts[0], OrderEvent::OrderConfirmed(c) if !c.late_payment));
    assert!(matches!(facts[1], OrderEvent::TicketsIssued(t) if t.ticket_ids.len() == 3));
    assert_eq!(notifications(&d), vec![NotificationKind::OrderConfirmed]);
    assert!(d.timers.contains(&TimerChange::Clear {
        event_id: EVENT.into(),
        order_id: "o1".into()
    }));
}

#[test]
fn payment_failed_releases_the_hold_and_cancels() {
    let mut p = Partition::new();
    p.decide(&upsert(10, 2500));
    p.decide(&book("o1", "u1", 3, T0 + 1));
    let d = p.decide(&fail("o1", "u1", T0 + 2));
    assert_eq!(counters(&p), (10, 0, 0));
    assert!(
        matches!(order_facts(&d)[0], OrderEvent::OrderCancelled(c) if c.reason == CancelReason::PaymentFailed)
    );
    assert_eq!(notifications(&d), vec![NotificationKind::OrderCancelled]);
}

#[test]
fn hold_expired_releases_an_unpaid_hold_only_at_its_deadline() {
    let mut p = Partition::new();
    p.decide(&upsert(10, 2500));
    p.decide(&book("o1", "u1", 3, T0));
    let deadline = T0 + HOLD_MS;
    let early = p.decide(&expire("o1", "u1", deadline, deadline - 1));
    assert!(
        early.outputs.is_empty(),
        "an expiry before the deadline changes nothing"
    );
    let d = p.decide(&expire("o1", "u1", deadline, deadline));
    assert_eq!(counters(&p), (10, 0, 0));
    assert!(matches!(order_facts(&d)[0], OrderEvent::OrderExpired(_)));
    assert_eq!(notifications(&d), vec![NotificationKind::OrderExpired]);
}

#[test]
fn hold_expired_is_ignored_once_the_order_ended() {
    let mut p = Partition::new();
    p.decide(&upsert(10, 2500));
    p.decide(&book("o1", "u1", 3, T0));
    p.decide(&pay("o1", "u1", T0 + 1));
    let d = p.decide(&expire("o1", "u1", T0 + HOLD_MS, T0 + HOLD_MS));
    assert!(d.outputs.is_empty());
    assert_eq!(counters(&p), (7, 0, 3));
}

#[test]
fn cancelling_an_unpaid_hold_releases_it() {
    let mut p = Partition::new();
    p.decide(&upsert(10, 2500));
    p.decide(&book("o1", "u1", 3, T0));
    let d = p.decide(&cancel("o1", "u1", T0 + 1));
    assert_eq!(counters(&p), (10, 0, 0));
    assert!(matches!(order_facts(&d)[0], OrderEvent::OrderCancelled(c) if c.refund_id.is_none()));
    assert!(payments(&d).is_empty());
}

#[test]
fn cancelling_a_confirmed_order_releases_the_slots_and_refunds() {
    let mut p = Partition::new();
    p.decide(&upsert(10, 2500));
    p.decide(&book("o1", "u1", 3, T0));
    p.decide(&pay("o1", "u1", T0 + 1));
    let d = p.decide(&cancel("o1", "u1", T0 + 2));
    assert_eq!(counters(&p), (10, 0, 0));
    let refund_id = ids::refund_id(&ids::payment_id("o1"));
    assert!(
        matches!(order_facts(&d)[0], OrderEvent::OrderCancelled(c) if c.refund_id.as_deref() == Some(refund_id.as_str()))
    );
    match payments(&d).as_slice() {
        [PaymentRequest::RefundRequested(r)] => {
            assert_eq!(
                (r.amount_minor, r.reason),
                (7500, RefundReason::OrderCancelled)
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_cancel_by_someone_else_is_ignored() {
    let mut p = Partition::new();
    p.decide(&upsert(10, 2500));
    p.decide(&book("o1", "u1", 3, T0));
    let d = p.decide(&cancel("o1", "intruder", T0 + 1));
    assert!(d.outputs.is_empty());
    assert_eq!(counters(&p), (7, 3, 0));
}

#[test]
fn a_late_payment_is_reallocated_when_slots_remain() {
    let mut p = Partition::new();
    p.decide(&upsert(10, 2500));
    p.decide(&book("o1", "u1", 3, T0));
    p.decide(&expire("o1", "u1", T0 + HOLD_MS, T0 + HOLD_MS));
    let d = p.decide(&pay("o1", "u1", T0 + HOLD_MS + 5));
    assert_eq!(counters(&p), (7, 0, 3));
    assert!(matches!(order_facts(&d)[0], OrderEvent::OrderConfirmed(c) if c.late_payment));
    assert_eq!(
        notifications(&d),
        vec![NotificationKind::LatePaymentReallocated]
    );
    assert_eq!(status(&p, "o1"), OrderStatus::Confirmed { late: true });
}

#[test]
fn a_late_payment_is_refunded_when_sold_out() {
    let mut p = Partition::new();
    p.decide(&upsert(3, 2500));
    p.decide(&book("o1", "u1", 3, T0));
    p.decide(&expire("o1", "u1", T0 + HOLD_MS, T0 + HOLD_MS));
    p.decide(&book("o2", "u2", 3, T0 + HOLD_MS + 1));
    let d = p.decide(&pay("o1", "u1", T0 + HOLD_MS + 5));
    assert_eq!(counters(&p), (0, 3, 0));
    match payments(&d).as_slice() {
        [PaymentRequest::RefundRequested(r)] => {
            assert_eq!(r.reason, RefundReason::LatePaymentSoldOut)
        }
        other => panic!("unexpected {other:?}"),
    }
    // The payment processor tells the fan once the refund went through.
    assert!(notifications(&d).is_empty());
    let again = p.decide(&pay("o1", "u1", T0 + HOLD_MS + 6));
    assert!(again.outputs.is_empty(), "one refund per payment");
}

/// `state` as a restore rebuilds it from these orders and this index.
fn restored_with(
    state: &super::state::EventState,
    orders: std::collections::HashMap<String, super::state::Order>,
    index: super::state::OrderIndex,
) -> super::state::EventState {
    super::state::EventState::restore(
        state.event_id.clone(),
        state.config.clone(),
        state.held,
        state.sold,
        state.sequence,
        orders,
        index,
        true,
        state.digest,
    )
}

/// The orders an assignment loads: the live ones.
fn live_orders(
    state: &super::state::EventState,
) -> std::collections::HashMap<String, super::state::Order> {
    state
        .orders
        .iter()
        .filter(|(_, o)| o.is_live())
        .map(|(id, o)| (id.clone(), o.clone()))
        .collect()
}

fn book_with_key(order: &str, user: &str, slots: i32, key: &str, at: Millis) -> BookingCommand {
    match book(order, user, slots, at) {
        BookingCommand::BookingRequested(mut r) => {
            r.idempotency_key = Some(key.into());
            BookingCommand::BookingRequested(r)
        }
        other => other,
    }
}

#[test]
fn a_key_reused_with_another_body_is_rejected_and_books_nothing() {
    let mut p = Partition::new();
    p.decide(&upsert(10, 2500));
    // Order ids name the request (user, key, event, slots): another body, another id.
    let first = p.decide(&book_with_key("o-2", "u1", 2, "checkout", T0 + 1));
    assert!(matches!(
        order_facts(&first)[0],
        OrderEvent::OrderReserved(_)
    ));
    let reused = p.decide(&book_with_key("o-3", "u1", 3, "checkout", T0 + 2));
    match order_facts(&reused).as_slice() {
        [OrderEvent::OrderRejected(r)] => {
            assert_eq!(r.reason, RejectReason::IdempotencyKeyReused);
            assert_eq!(r.order_id, "o-3");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(counters(&p), (8, 2, 0), "the reused key booked nothing");
    assert_eq!(
        status(&p, "o-3"),
        OrderStatus::Rejected(RejectReason::IdempotencyKeyReused)
    );
    // The exact retry of the first is a duplicate; the key of another user is theirs.
    let retried = p.decide(&book_with_key("o-2", "u1", 2, "checkout", T0 + 3));
    assert!(retried.outputs.is_empty());
    let other_user = p.decide(&book_with_key("o-4", "u2", 1, "checkout", T0 + 4));
    assert!(matches!(
        order_facts(&other_user)[0],
        OrderEvent::OrderReserved(_)
    ));
    // After a restore, in full (the index derived from the orders) or as an assignment loads
    // it (the stored index and the live orders only), the reuse is still recognised, and a
    // retry of the rejected request, whose order is not in memory, is still a duplicate.
    let state = p.events[EVENT].clone();
    let live = live_orders(&state);
    for (orders, index) in [
        (state.orders.clone(), super::state::OrderIndex::default()),
        (live, state.index.clone()),
    ] {
        let restored = restored_with(&state, orders, index);
        assert_eq!(restored.index, state.index);
        let mut p2 = Partition::new();
        p2.events.insert(EVENT.into(), restored);
        let again = p2.decide(&book_with_key("o-5", "u1", 1, "checkout", T0 + 5));
        assert!(matches!(
            order_facts(&again)[0],
            OrderEvent::OrderRejected(r) if r.reason == RejectReason::IdempotencyKeyReused
        ));
        let retried = p2.decide(&book_with_key("o-3", "u1", 3, "checkout", T0 + 6));
        assert!(retried.outputs.is_empty(), "{:?}", retried.outputs);
    }
}

#[test]
fn duplicates_change_nothing_and_emit_nothing() {
    let mut p = Partition::new();
    let log = vec![
        upsert(10, 2500),
        book("o1", "u1", 3, T0),
        book("o2", "u2", 1, T0 + 1),
        pay("o1", "u1", T0 + 2),
        fail("o2", "u2", T0 + 3),
        cancel("o1", "u1", T0 + 4),
    ];
    for command in &log {
        p.decide(command);
    }
    let before = p.events.clone();
    for command in &log {
        let d = p.decide(command);
        assert!(d.outputs.is_empty(), "{command:?} emitted {:?}", d.outputs);
    }
    assert_eq!(p.events, before);
}

// ------------------------------------------------------------------------------ properties

/// One step of a random interleaving. Indices pick orders and users from small pools so
/// interactions (same user, same order) are frequent.
#[derive(Debug, Clone)]
enum Op {
    Upsert {
        capacity: i32,
        paid: bool,
    },
    Book {
        order: u8,
        user: u8,
        slots: i32,
    },
    Pay {
        order: u8,
    },
    Fail {
        order: u8,
    },
    /// The timer fires for the order's current deadline (if it holds slots).
    Expire {
        order: u8,
    },
    Cancel {
        order: u8,
        by_owner: bool,
    },
    /// An earlier command delivered again.
    Redeliver {
        index: usize,
    },
    Advance {
        ms: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0..12_i32, any::<bool>()).prop_map(|(capacity, paid)| Op::Upsert { capacity, paid }),
        6 => (0..16_u8, 0..4_u8, -1..6_i32).prop_map(|(order, user, slots)| Op::Book { order, user, slots }),
        3 => (0..16_u8).prop_map(|order| Op::Pay { order }),
        1 => (0..16_u8).prop_map(|order| Op::Fail { order }),
        2 => (0..16_u8).prop_map(|order| Op::Expire { order }),
        1 => (0..16_u8, any::<bool>()).prop_map(|(order, by_owner)| Op::Cancel { order, by_owner }),
        2 => any::<usize>().prop_map(|index| Op::Redeliver { index }),
        2 => (0..HOLD_MS).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// The order lifecycle facts allowed, as an automaton over what was emitted for one order.
fn next_lifecycle(
    previous: Option<&'static str>,
    fact: &OrderEvent,
) -> Result<&'static str, String> {
    let fact_name = match fact {
        OrderEvent::OrderReserved(_) => "reserved",
        OrderEvent::OrderRejected(_) => "rejected",
        OrderEvent::OrderConfirmed(c) if c.late_payment => "confirmed-late",
        OrderEvent::OrderConfirmed(_) => "confirmed",
        OrderEvent::OrderCancelled(_) => "cancelled",
        OrderEvent::OrderExpired(_) => "expired",
        OrderEvent::TicketsIssued(_) => {
            return Ok(previous.unwrap_or("tickets-before-confirmation"));
        }
    };
    let allowed = matches!(
        (previous, fact_name),
        (None, "reserved" | "rejected" | "confirmed")
            | (Some("reserved"), "confirmed" | "expired" | "cancelled")
            | (Some("expired"), "confirmed-late")
            | (Some("confirmed" | "confirmed-late"), "cancelled")
    );
    if allowed {
        Ok(fact_name)
    } else {
        Err(format!(
            "{previous:?} -> {fact_name} is not a lifecycle step"
        ))
    }
}

/// What the property checker has seen so far.
#[derive(Default)]
struct Observed {
    log: Vec<BookingCommand>,
    /// Commands that changed something: delivering one of these again must change nothing.
    effective: Vec<BookingCommand>,
    emitted: Vec<Output>,
    lifecycle: HashMap<String, &'static str>,
    tickets_valid: HashMap<String, usize>,
    refunds: HashMap<String, usize>,
}

impl Observed {
    /// Decides `command` and checks every property that must hold after a step.
    fn step<A: Allocator>(
        &mut self,
        partition: &mut Partition<A>,
        command: BookingCommand,
        redelivery: bool,
    ) -> Result<(), TestCaseError> {
        let before = if redelivery {
            Some(partition.events.clone())
        } else {
            None
        };
        let decision = partition.decide(&command);
        if let Some(before) = before {
            prop_assert!(
                decision.outputs.is_empty(),
                "redelivery emitted {:?}",
                decision.outputs
            );
            prop_assert_eq!(&partition.events, &before, "redelivery changed state");
        }
        let state = &partition.events[command.key()];
        prop_assert_eq!(state.check_invariant(), Ok(()));
        for output in &decision.outputs {
            match output {
                Output::Order(fact) => {
                    let order_id = fact.order_id();
                    let next = next_lifecycle(self.lifecycle.get(order_id).copied(), fact)
                        .map_err(|e| TestCaseError::fail(format!("order {order_id}: {e}")))?;
                    self.lifecycle.insert(order_id.to_owned(), next);
                    match fact {
                        OrderEvent::TicketsIssued(t) => {
                            self.tickets_valid
                                .insert(order_id.to_owned(), t.ticket_ids.len());
                        }
                        OrderEvent::OrderCancelled(_) => {
                            self.tickets_valid.remove(order_id);
                        }
                        _ => {}
                    }
                }
                Output::Payment(PaymentRequest::RefundRequested(r)) => {
                    *self.refunds.entry(r.payment_id.clone()).or_default() += 1;
                }
                _ => {}
            }
        }
        let tickets: usize = self.tickets_valid.values().sum();
        prop_assert_eq!(tickets, state.sold as usize, "tickets valid == slots sold");
        prop_assert!(
            self.refunds.values().all(|&n| n == 1),
            "at most one refund per payment"
        );
        if !redelivery {
            if !decision.outputs.is_empty() {
                self.effective.push(command.clone());
            }
            self.log.push(command);
        }
        self.emitted.extend(decision.outputs);
        Ok(())
    }
}

/// Runs `ops` through a partition with `allocator`, checking every property after each step.
/// Checks the properties over one interleaving; returns the log and everything emitted.
fn check_interleaving<A: Allocator>(
    allocator: A,
    ops: &[Op],
) -> Result<(Vec<BookingCommand>, Vec<Output>), TestCaseError> {
    let mut partition = Partition::with_allocator(allocator);
    let mut seen = Observed::default();
    let mut clock = T0;
    let owner = |order: u8| format!("u{}", order % 4);

    for op in ops {
        let command = match op {
            Op::Upsert { capacity, paid } => {
                clock += 1;
                upsert_at(*capacity, if *paid { 1500 } else { 0 }, clock)
            }
            Op::Book { order, user, slots } => {
                book(&format!("o{order}"), &format!("u{user}"), *slots, clock)
            }
            Op::Pay { order } => pay(&format!("o{order}"), &owner(*order), clock),
            Op::Fail { order } => fail(&format!("o{order}"), &owner(*order), clock),
            Op::Expire { order } => {
                let id = format!("o{order}");
                let deadline = partition
                    .events
                    .get(EVENT)
                    .and_then(|s| s.orders.get(&id))
                    .and_then(|o| match o.status {
                        OrderStatus::Reserved { hold_expires_at } => Some(hold_expires_at),
                        _ => None,
                    });
                match deadline {
                    Some(deadline) => {
                        clock = clock.max(deadline);
                        expire(&id, &owner(*order), deadline, clock)
                    }
                    None => expire(&id, &owner(*order), clock, clock),
                }
            }
            Op::Cancel { order, by_owner } => {
                let user = if *by_owner {
                    owner(*order)
                } else {
                    "intruder".to_owned()
                };
                cancel(&format!("o{order}"), &user, clock)
            }
            Op::Redeliver { index } => {
                if seen.effective.is_empty() {
                    continue;
                }
                // A repeated edit of the event is recognised by its record id and time; a
                // booking by its order id; payments, expiries and cancels by the order's status.
                let earlier = seen.effective[index % seen.effective.len()].clone();
                seen.step(&mut partition, earlier, true)?;
                continue;
            }
            Op::Advance { ms } => {
                clock += ms;
                continue;
            }
        };
        seen.step(&mut partition, command, false)?;
    }

    // Let every remaining hold run out: each accepted order must end in a terminal state.
    let remaining: Vec<(String, Millis)> = partition
        .events
        .get(EVENT)
        .map(|s| {
            s.active_holds()
                .map(|(id, at)| (id.to_owned(), at))
                .collect()
        })
        .unwrap_or_default();
    for (order_id, deadline) in remaining {
        clock = clock.max(deadline);
        let user = partition.events[EVENT].orders[&order_id].user_id.clone();
        seen.step(
            &mut partition,
            expire(&order_id, &user, deadline, clock),
            false,
        )?;
    }
    if let Some(state) = partition.events.get(EVENT) {
        prop_assert_eq!(state.held, 0);
        for (order_id, order) in &state.orders {
            prop_assert!(
                !order.status.holds(),
                "order {} still holds slots",
                order_id
            );
            let expected = match order.status {
                OrderStatus::Confirmed { late: false } => "confirmed",
                OrderStatus::Confirmed { late: true } => "confirmed-late",
                OrderStatus::Rejected(_) => "rejected",
                OrderStatus::Expired => "expired",
                OrderStatus::Cancelled(_) => "cancelled",
                OrderStatus::Reserved { .. } => "reserved",
            };
            prop_assert_eq!(
                seen.lifecycle.get(order_id).copied(),
                Some(expected),
                "order {}: facts and state disagree",
                order_id
            );
        }
    }

    // Replaying the same log gives identical effects.
    let mut replay = Partition::new();
    let replayed: Vec<Output> = seen
        .log
        .iter()
        .flat_map(|c| replay.decide(c).outputs)
        .collect();
    prop_assert_eq!(&replayed, &seen.emitted);
    Ok((seen.log, seen.emitted))
}

/// Replays `log` cut into batches of `sizes` (cycled), each batch's outputs passed through
/// `coalesce`, and checks what the batch-wise publication promises: every record but
/// availability exactly as emitted one by one and in the same order; every availability
/// record published is one of those emitted (same id, same content), at most one per event per
/// batch, with growing sequences; and after every batch each event's latest published state is
/// its latest emitted one.
fn check_batched(
    log: &[BookingCommand],
    emitted: &[Output],
    sizes: &[usize],
    coalesce: impl Fn(Vec<Output>) -> Vec<Output>,
) -> Result<(), TestCaseError> {
    let is_availability = |o: &&Output| matches!(o, Output::Availability(_));
    let mut replay = Partition::new();
    let mut published: Vec<Output> = Vec::new();
    let mut emitted_so_far: Vec<Output> = Vec::new();
    let mut rest = log;
    for size in sizes.iter().copied().cycle() {
        if rest.is_empty() {
            break;
        }
        let (batch, after) = rest.split_at(size.clamp(1, rest.len()));
        rest = after;
        let outputs: Vec<Output> = batch
            .iter()
            .flat_map(|c| replay.decide(c).outputs)
            .collect();
        emitted_so_far.extend(outputs.iter().cloned());
        let batch_published = coalesce(outputs);
        let mut events_in_batch = std::collections::HashSet::new();
        for output in batch_published.iter().filter(is_availability) {
            let Output::Availability(change) = output else {
                continue;
            };
            prop_assert!(
                events_in_batch.insert(change.event_id.clone()),
                "two availability records of {} in one batch",
                change.event_id
            );
            prop_assert!(
                emitted.contains(output),
                "published {:?} was never emitted",
                change
            );
        }
        published.extend(batch_published);
        let latest = |outputs: &[Output]| {
            outputs.iter().rev().find_map(|o| match o {
                Output::Availability(a) => Some(a.clone()),
                _ => None,
            })
        };
        prop_assert_eq!(latest(&published), latest(&emitted_so_far));
    }
    let others = |outputs: &[Output]| -> Vec<Output> {
        outputs
            .iter()
            .filter(|o| !is_availability(o))
            .cloned()
            .collect()
    };
    prop_assert_eq!(others(&published), others(emitted));
    let sequences: Vec<i64> = published
        .iter()
        .filter_map(|o| match o {
            Output::Availability(a) => Some(a.sequence),
            _ => None,
        })
        .collect();
    prop_assert!(
        sequences.windows(2).all(|w| w[0] < w[1]),
        "sequences do not grow: {:?}",
        sequences
    );
    Ok(())
}

proptest! {
    #![proptest_config(Config { cases: 512, ..Config::default() })]

    #[test]
    fn every_interleaving_keeps_the_invariants(ops in prop::collection::vec(op(), 1..120)) {
        check_interleaving(ExactAllocator, &ops)?;
    }

    #[test]
    fn any_batching_publishes_a_subset_of_the_same_availability_ending_in_the_latest(
        ops in prop::collection::vec(op(), 1..120),
        sizes in prop::collection::vec(1..12_usize, 1..6),
    ) {
        let (log, emitted) = check_interleaving(ExactAllocator, &ops)?;
        check_batched(&log, &emitted, &sizes, coalesce::coalesce)?;
    }
}

/// Keeps each event's *first* change of a batch: stale availability, which the batching
/// property must catch.
fn keep_first_availability(outputs: Vec<Output>) -> Vec<Output> {
    let mut seen = std::collections::HashSet::new();
    outputs
        .into_iter()
        .filter(|o| match o {
            Output::Availability(a) => seen.insert(a.event_id.clone()),
            _ => true,
        })
        .collect()
}

#[test]
fn negative_control_the_batching_property_catches_stale_availability() {
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        prop::collection::vec(op(), 1..120),
        prop::collection::vec(2..12_usize, 1..6),
    );
    let result = runner.run(&strategy, |(ops, sizes)| {
        let (log, emitted) = check_interleaving(ExactAllocator, &ops)?;
        check_batched(&log, &emitted, &sizes, keep_first_availability)
    });
    assert!(
        result.is_err(),
        "the batching property did not notice availability that stays stale"
    );
}

/// Allocates one slot more than is free: the bug the properties exist to catch.
struct OversellingAllocator;

impl Allocator for OversellingAllocator {
    fn can_allocate(&self, available: u32, requested: u32) -> bool {
        requested <= available + 1
    }
}

#[test]
fn negative_control_the_properties_catch_an_overselling_allocator() {
    let mut runner = TestRunner::new(Config {
        cases: 512,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&prop::collection::vec(op(), 1..120), |ops| {
        check_interleaving(OversellingAllocator, &ops).map(|_| ())
    });
    assert!(
        result.is_err(),
        "the property test did not notice an allocator that oversells"
    );
}

/// An event loaded for an assignment keeps only its live orders in memory. A command about an
/// order that ended (a late payment of an expired hold) needs the order's row: with it (what
/// the runtime reads from the store) the decision is the one a state holding every order
/// makes; without it the order would look unknown and the payment be ignored.
#[test]
fn a_command_about_an_order_not_in_memory_decides_the_same_once_the_order_is_loaded() {
    let mut full = Partition::new();
    full.decide(&upsert(10, 2500));
    full.decide(&book("o1", "u1", 3, T0));
    full.decide(&book("o2", "u2", 1, T0));
    let deadline = T0 + HOLD_MS;
    full.decide(&expire("o1", "u1", deadline, deadline));
    let state = full.events[EVENT].clone();
    let lean_state = |orders| restored_with(&state, orders, state.index.clone());
    let live = live_orders(&state);
    let mut lean = lean_state(live.clone());
    assert!(lean.must_load("o1"), "the expired order is not in memory");
    assert!(!lean.must_load("o2") && !lean.must_load("o9"));
    // A live order read from the store would be a bug: it is always in memory.
    assert!(
        lean.insert_loaded("o2".into(), state.orders["o2"].clone())
            .is_err()
    );
    lean.insert_loaded("o1".into(), state.orders["o1"].clone())
        .unwrap();
    let mut loaded = Partition::new();
    loaded.events.insert(EVENT.into(), lean);
    let late = pay("o1", "u1", deadline + 5);
    let expected = full.decide(&late);
    assert!(!order_facts(&expected).is_empty());
    assert_eq!(loaded.decide(&late), expected);

    // Negative control: the same command without loading the order decides something else.
    let mut unloaded = Partition::new();
    unloaded.events.insert(EVENT.into(), lean_state(live));
    assert_ne!(unloaded.decide(&late), expected);
}

#[test]
fn order_ids_the_store_cannot_keep_are_refused_before_any_decision() {
    use super::core::refusal;
    assert_eq!(refusal(&book("o-1", "u1", 1, T0)), None);
    assert_eq!(refusal(&book(&"x".repeat(64), "u1", 1, T0)), None);
    assert_eq!(refusal(&upsert(10, 2500)), None);
    for id in [String::new(), "\0index/1".to_owned(), "x".repeat(65)] {
        let reason = refusal(&book(&id, "u1", 1, T0));
        assert!(reason.is_some_and(|r| r.contains("order id")), "{id:?}");
        assert!(refusal(&pay(&id, "u1", T0)).is_some());
    }
}
