//! Tests of the pure payment core: one per transition, the timers (expiry, pending checks and
//! their backoff), then properties over random sequences of every input (redeliveries, lost
//! gateway answers, crashes before and after a gateway call, provider events, timers firing)
//! against a model provider that does NOT deduplicate (so a second charge call would capture
//! twice), and negative controls proving the properties catch a core that charges again when
//! the outcome is unknown and a core that forgets a pending payment's timer.

use boxoffice_avro::ids;
use boxoffice_avro::records::{
    BookingCommand, NotificationKind, PaymentFailureReason, PaymentRequested, PaymentSubmitted,
    RefundReason, RefundRequested,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::core::{
    Effect, Input, Millis, Outcome, PaymentState, Policy, ProviderReport, Status, apply, apply_with,
};
use super::gateway::{ChargeOutcome, DeclineReason, RefundOutcome, Token};
use super::render::{Output, render};

const ORDER: &str = "order-1";
const USER: &str = "user-1";
const AMOUNT: i64 = 9000;
const T0: Millis = 1_800_000_000_000;

fn payment_id() -> String {
    ids::payment_id(ORDER)
}

fn request() -> Input {
    Input::Requested(PaymentRequested {
        record_id: "req".into(),
        payment_id: payment_id(),
        order_id: ORDER.into(),
        event_id: "event-1".into(),
        user_id: USER.into(),
        amount_minor: AMOUNT,
        currency: "EUR".into(),
        hold_expires_at: T0 + 600_000,
        occurred_at: T0,
    })
}

/// The provider's event about this payment's charge (the right order, amount and currency).
fn provider_event(outcome: ChargeOutcome) -> Input {
    Input::ProviderEvent(ProviderReport {
        outcome,
        order_id: ORDER.into(),
        amount_minor: AMOUNT,
        currency: "EUR".into(),
    })
}

fn submit_as(token: &str, amount: i64, user: &str) -> Input {
    Input::Submitted(PaymentSubmitted {
        record_id: format!("sub-{token}-{amount}-{user}"),
        payment_id: payment_id(),
        order_id: ORDER.into(),
        event_id: "event-1".into(),
        user_id: user.into(),
        amount_minor: amount,
        currency: "EUR".into(),
        payment_method_token: token.into(),
        occurred_at: T0 + 1000,
    })
}

fn submit(token: &str) -> Input {
    submit_as(token, AMOUNT, USER)
}

fn refund_request(amount: i64) -> Input {
    let refund_id = ids::refund_id(&payment_id());
    Input::RefundRequested(RefundRequested {
        record_id: format!("refund-{amount}"),
        refund_id,
        payment_id: payment_id(),
        order_id: ORDER.into(),
        event_id: "event-1".into(),
        user_id: USER.into(),
        amount_minor: amount,
        currency: "EUR".into(),
        reason: RefundReason::OrderCancelled,
        occurred_at: T0 + 5000,
    })
}

fn captured() -> ChargeOutcome {
    ChargeOutcome::Captured {
        provider_reference: "ch_1".into(),
    }
}

fn has_charge(fx: &[Effect]) -> bool {
    fx.iter().any(|e| matches!(e, Effect::Charge { .. }))
}

fn emitted(fx: &[Effect]) -> Vec<&Outcome> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Emit(o) => Some(o),
            _ => None,
        })
        .collect()
}

/// The timer a step set, if any.
fn scheduled(fx: &[Effect]) -> Option<Millis> {
    fx.iter().rev().find_map(|e| match e {
        Effect::Schedule { at } => Some(*at),
        _ => None,
    })
}

const PENDING_CHECK: Millis = super::core::DEFAULT_PENDING_CHECK_MS;
const UNKNOWN_CHECK: Millis = super::core::DEFAULT_UNKNOWN_CHECK_MS;

fn histories(fx: &[Effect]) -> Vec<&'static str> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::History { status, .. } => Some(*status),
            _ => None,
        })
        .collect()
}

#[test]
fn request_then_success_captures_once_and_tells_the_booking_processor() {
    let mut s = PaymentState::new(&payment_id());
    let fx = apply(&mut s, request(), T0);
    assert_eq!(s.status, Status::Pending);
    assert_eq!(histories(&fx), ["PENDING"]);
    let fx = apply(&mut s, submit("tok_success"), T0 + 1);
    assert_eq!(s.status, Status::Charging);
    let Some(Effect::Charge {
        payment_id: key,
        amount_minor,
        token,
        ..
    }) = fx.iter().find(|e| matches!(e, Effect::Charge { .. }))
    else {
        panic!("a charge: {fx:?}")
    };
    assert_eq!(
        (key.as_str(), *amount_minor, token.expose()),
        (payment_id().as_str(), AMOUNT, "tok_success")
    );
    let fx = apply(&mut s, Input::ChargeResult(captured()), T0 + 2);
    assert_eq!(s.status, Status::Captured);
    assert_eq!(
        emitted(&fx),
        [&Outcome::Succeeded {
            provider_reference: "ch_1".into()
        }]
    );
    assert_eq!(s.captured_minor, AMOUNT);
    assert!(s.submission.is_none(), "the token is dropped once settled");
    // Everything after is a duplicate.
    assert!(!has_charge(&apply(&mut s, submit("tok_success"), T0 + 3)));
    assert!(emitted(&apply(&mut s, Input::ChargeResult(captured()), T0 + 4)).is_empty());
    assert_eq!(s.history_seq, 3);
}

#[test]
fn a_decline_fails_the_payment_with_its_reason() {
    let mut s = PaymentState::new(&payment_id());
    apply(&mut s, request(), T0);
    apply(&mut s, submit("tok_insufficient_funds"), T0);
    let fx = apply(
        &mut s,
        Input::ChargeResult(ChargeOutcome::Declined {
            reason: DeclineReason::InsufficientFunds,
            message: "insufficient funds".into(),
        }),
        T0,
    );
    assert_eq!(s.status, Status::Failed);
    assert!(matches!(
        emitted(&fx)[..],
        [Outcome::Failed {
            reason: PaymentFailureReason::InsufficientFunds,
            ..
        }]
    ));
}

#[test]
fn an_unknown_outcome_is_queried_never_charged_again() {
    let mut s = PaymentState::new(&payment_id());
    apply(&mut s, request(), T0);
    apply(&mut s, submit("tok_timeout"), T0);
    let fx = apply(
        &mut s,
        Input::ChargeResult(ChargeOutcome::Unknown {
            detail: "timeout".into(),
        }),
        T0,
    );
    assert!(!has_charge(&fx));
    assert!(fx.iter().any(|e| matches!(e, Effect::Query { .. })));
    assert_eq!(s.status, Status::Charging);
    // The query says the provider never saw it: charging again with the same key is safe.
    let fx = apply(&mut s, Input::QueryResult(ChargeOutcome::NotFound), T0);
    assert!(has_charge(&fx));
    assert_eq!(s.charge_attempts, 2);
    // A second unknown answer is not queried at once: it waits for the timer.
    let fx = apply(
        &mut s,
        Input::ChargeResult(ChargeOutcome::Unknown {
            detail: "timeout".into(),
        }),
        T0,
    );
    assert!(!fx.iter().any(|e| matches!(e, Effect::Query { .. })));
    assert!(scheduled(&fx).is_some());
    apply(&mut s, Input::ChargeResult(captured()), T0);
    assert_eq!(s.status, Status::Captured);
}

#[test]
fn a_submission_with_another_amount_or_user_is_refused_and_the_right_one_charges() {
    let mut s = PaymentState::new(&payment_id());
    apply(&mut s, request(), T0);
    let fx = apply(&mut s, submit_as("tok_success", 1, USER), T0);
    assert!(!has_charge(&fx));
    assert_eq!(histories(&fx), ["SUBMISSION_REFUSED"]);
    assert_eq!(s.status, Status::Pending);
    let fx = apply(&mut s, submit_as("tok_success", AMOUNT, "intruder"), T0);
    assert!(!has_charge(&fx));
    assert!(has_charge(&apply(&mut s, submit("tok_success"), T0)));
}

#[test]
fn a_submission_before_the_request_is_parked_then_checked() {
    let mut s = PaymentState::new(&payment_id());
    let fx = apply(&mut s, submit("tok_success"), T0);
    assert_eq!(s.status, Status::AwaitingRequest);
    assert!(!has_charge(&fx));
    let fx = apply(&mut s, request(), T0);
    assert!(has_charge(&fx));
    assert_eq!(histories(&fx), ["PENDING", "CHARGING"]);
    // Parked with the wrong amount: refused when the request arrives.
    let mut s = PaymentState::new(&payment_id());
    apply(&mut s, submit_as("tok_success", AMOUNT + 1, USER), T0);
    let fx = apply(&mut s, request(), T0);
    assert!(!has_charge(&fx));
    assert_eq!(s.status, Status::Pending);
}

#[test]
fn a_pending_charge_waits_for_the_providers_event_without_querying() {
    let mut s = PaymentState::new(&payment_id());
    apply(&mut s, request(), T0);
    apply(&mut s, submit("tok_pending"), T0);
    let fx = apply(
        &mut s,
        Input::ChargeResult(ChargeOutcome::Pending {
            provider_reference: "p".into(),
        }),
        T0 + 5,
    );
    assert_eq!(s.status, Status::ProviderPending);
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::Query { .. })),
        "nothing is asked while the provider works: {fx:?}"
    );
    assert_eq!(scheduled(&fx), Some(T0 + 5 + PENDING_CHECK));
    let fx = apply(&mut s, provider_event(captured()), T0 + 50);
    assert_eq!(s.status, Status::Captured);
    assert_eq!(emitted(&fx).len(), 1);
    assert!(
        fx.contains(&Effect::Unschedule),
        "a settled payment has no timer"
    );
    // The same event again (a duplicate delivery) changes nothing.
    let fx = apply(&mut s, provider_event(captured()), T0 + 60);
    assert!(emitted(&fx).is_empty() && histories(&fx).is_empty());
}

#[test]
fn a_lost_event_is_made_up_for_by_checks_that_back_off() {
    let mut s = PaymentState::new(&payment_id());
    apply(&mut s, request(), T0);
    apply(&mut s, submit("tok_pending"), T0);
    let pending = || {
        Input::QueryResult(ChargeOutcome::Pending {
            provider_reference: "p".into(),
        })
    };
    let fx = apply(
        &mut s,
        Input::ChargeResult(ChargeOutcome::Pending {
            provider_reference: "p".into(),
        }),
        T0,
    );
    let mut at = scheduled(&fx).unwrap();
    assert_eq!(at, T0 + PENDING_CHECK);
    let mut gaps = Vec::new();
    for _ in 0..12 {
        let fx = apply(&mut s, Input::Wake, at);
        assert_eq!(
            fx,
            [Effect::Query {
                payment_id: payment_id()
            }],
            "a wake asks the provider and keeps the timer until it answers"
        );
        let fx = apply(&mut s, pending(), at);
        assert!(histories(&fx).is_empty(), "still pending is no new state");
        let next = scheduled(&fx).unwrap();
        gaps.push(next - at);
        at = next;
    }
    assert_eq!(
        gaps[..4],
        [
            PENDING_CHECK,
            2 * PENDING_CHECK,
            4 * PENDING_CHECK,
            8 * PENDING_CHECK
        ]
    );
    assert_eq!(
        *gaps.last().unwrap(),
        Policy::default().max_check_ms,
        "capped"
    );
    let fx = apply(&mut s, Input::QueryResult(captured()), at);
    assert_eq!(s.status, Status::Captured);
    assert_eq!(emitted(&fx).len(), 1);
    assert!(fx.contains(&Effect::Unschedule));
    // A timer left behind (a crash between the row and the delete) only cancels itself.
    assert_eq!(
        apply(&mut s, Input::Wake, at + 1).last(),
        Some(&Effect::Unschedule)
    );
}

#[test]
fn an_unknown_answer_to_a_check_waits_for_the_next_check() {
    let mut s = PaymentState::new(&payment_id());
    apply(&mut s, request(), T0);
    let fx = apply(&mut s, submit("tok_timeout"), T0);
    assert_eq!(
        scheduled(&fx),
        Some(T0 + PENDING_CHECK),
        "the charge's own check"
    );
    let Some(Effect::Charge { order_id, .. }) =
        fx.iter().find(|e| matches!(e, Effect::Charge { .. }))
    else {
        panic!("a charge: {fx:?}")
    };
    assert_eq!(
        order_id, ORDER,
        "the provider is told the order (its events are keyed by it)"
    );
    let unknown = |detail: &str| ChargeOutcome::Unknown {
        detail: detail.into(),
    };
    let fx = apply(&mut s, Input::ChargeResult(unknown("504")), T0 + 10);
    assert!(fx.iter().any(|e| matches!(e, Effect::Query { .. })));
    let fx = apply(&mut s, Input::QueryResult(unknown("unreachable")), T0 + 20);
    assert!(!has_charge(&fx) && !fx.iter().any(|e| matches!(e, Effect::Query { .. })));
    assert_eq!(scheduled(&fx), Some(T0 + 20 + UNKNOWN_CHECK));
    // Recovered later: the check asks, the provider has it.
    assert!(
        apply(&mut s, Input::Wake, T0 + 20 + UNKNOWN_CHECK)
            .iter()
            .any(|e| matches!(e, Effect::Query { .. }))
    );
    apply(&mut s, Input::QueryResult(captured()), T0 + 30_000);
    assert_eq!(s.status, Status::Captured);
    assert_eq!(s.charge_attempts, 1, "never charged again");
}

#[test]
fn a_provider_event_for_another_order_amount_or_currency_is_refused() {
    let mut s = PaymentState::new(&payment_id());
    apply(&mut s, request(), T0);
    apply(&mut s, submit("tok_timeout"), T0);
    assert_eq!(s.status, Status::Charging);
    for which in 0..3 {
        let before = s.clone();
        let fx = apply(&mut s, forged_capture(which), T0 + 10);
        assert!(
            fx.iter()
                .any(|e| matches!(e, Effect::ProviderEventRefused(_))),
            "{which}: {fx:?}"
        );
        assert_eq!(histories(&fx), ["PROVIDER_EVENT_REFUSED"], "{which}");
        assert!(emitted(&fx).is_empty(), "{which}: nothing settled");
        assert_eq!(s.status, before.status);
        assert_eq!(s.captured_minor, 0);
    }
    // The provider's real event still settles it.
    let fx = apply(&mut s, provider_event(captured()), T0 + 20);
    assert_eq!(s.status, Status::Captured);
    assert_eq!(emitted(&fx).len(), 1);
}

#[test]
fn a_provider_event_settles_a_charge_whose_answer_was_lost() {
    let mut s = PaymentState::new(&payment_id());
    apply(&mut s, request(), T0);
    apply(&mut s, submit("tok_timeout"), T0);
    let fx = apply(
        &mut s,
        provider_event(ChargeOutcome::Declined {
            reason: DeclineReason::InsufficientFunds,
            message: "nsf".into(),
        }),
        T0 + 10,
    );
    assert_eq!(s.status, Status::Failed);
    assert!(fx.contains(&Effect::Unschedule));
    // An event without an outcome is no answer.
    let mut s = PaymentState::new(&payment_id());
    apply(&mut s, request(), T0);
    apply(&mut s, submit("tok_timeout"), T0);
    for outcome in [
        ChargeOutcome::NotFound,
        ChargeOutcome::Unknown { detail: "?".into() },
    ] {
        let fx = apply(&mut s, provider_event(outcome), T0 + 10);
        assert!(matches!(fx[..], [Effect::Ignored { .. }]), "{fx:?}");
    }
    assert_eq!(s.status, Status::Charging);
}

#[test]
fn refunds_only_what_was_captured_once() {
    let mut s = PaymentState::new(&payment_id());
    // Nothing captured yet: refused.
    apply(&mut s, request(), T0);
    assert_eq!(
        histories(&apply(&mut s, refund_request(AMOUNT), T0)),
        ["REFUND_REFUSED"]
    );
    apply(&mut s, submit("tok_success"), T0);
    apply(&mut s, Input::ChargeResult(captured()), T0);
    assert_eq!(
        histories(&apply(&mut s, refund_request(AMOUNT + 1), T0)),
        ["REFUND_REFUSED"]
    );
    let fx = apply(&mut s, refund_request(AMOUNT), T0);
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::Refund {
            amount_minor: AMOUNT,
            ..
        }
    )));
    assert_eq!(s.status, Status::Refunding);
    assert!(matches!(
        apply(&mut s, refund_request(AMOUNT), T0)[..],
        [Effect::Ignored { .. }]
    ));
    let fx = apply(
        &mut s,
        Input::RefundResult(RefundOutcome::Refunded {
            provider_reference: "re".into(),
        }),
        T0,
    );
    assert_eq!(s.status, Status::Refunded);
    let outcome = emitted(&fx)[0].clone();
    let Output::Notification(n) = render(&s, &outcome, T0) else {
        panic!("a notification")
    };
    assert_eq!(n.kind, NotificationKind::OrderRefunded);
    assert_eq!(n.params["amount_minor"], AMOUNT.to_string());
}

#[test]
fn an_unsubmitted_payment_expires_after_the_grace_period() {
    let policy = Policy {
        late_grace_ms: 1000,
        ..Policy::default()
    };
    let mut s = PaymentState::new(&payment_id());
    let fx = apply_with(&policy, &mut s, request(), T0);
    let deadline = T0 + 600_000 + 1000;
    assert_eq!(scheduled(&fx), Some(deadline), "woken at the deadline");
    apply_with(&policy, &mut s, Input::Expire, T0 + 600_000);
    assert_eq!(
        s.status,
        Status::Pending,
        "late payments stay possible for the grace period"
    );
    // Woken early (a stale timer): back to sleep until the deadline.
    let fx = apply_with(&policy, &mut s, Input::Wake, T0 + 600_000);
    assert_eq!(s.status, Status::Pending);
    assert_eq!(scheduled(&fx), Some(deadline));
    let fx = apply_with(&policy, &mut s, Input::Wake, deadline);
    assert_eq!(s.status, Status::Expired);
    assert_eq!(histories(&fx), ["EXPIRED"]);
    assert!(fx.contains(&Effect::Unschedule));
    // A parked submission that never gets its request expires too.
    let mut s = PaymentState::new(&payment_id());
    let fx = apply_with(&policy, &mut s, submit("tok_success"), T0);
    let parked_deadline = T0 + 1000 + 1000;
    assert_eq!(scheduled(&fx), Some(parked_deadline));
    apply_with(&policy, &mut s, Input::Wake, parked_deadline);
    assert_eq!(s.status, Status::Expired);
    assert!(s.submission.is_none(), "the token is dropped");
}

#[test]
fn outcomes_render_with_ids_derived_from_the_payment() {
    let mut s = PaymentState::new(&payment_id());
    apply(&mut s, request(), T0);
    apply(&mut s, submit("tok_success"), T0);
    let fx = apply(&mut s, Input::ChargeResult(captured()), T0);
    let a = render(&s, emitted(&fx)[0], T0);
    let b = render(&s, emitted(&fx)[0], T0 + 99);
    assert_eq!(a.record_id(), b.record_id());
    let Output::Command(BookingCommand::PaymentSucceeded(p)) = a else {
        panic!("succeeded")
    };
    assert_eq!(
        (p.amount_minor, p.event_id.as_str(), p.order_id.as_str()),
        (AMOUNT, "event-1", ORDER)
    );
}

// ------------------------------------------------------------------------------- properties

/// A truthful provider that does not deduplicate: every `charge` call that succeeds captures
/// again. Only the core's discipline keeps captures at one.
#[derive(Debug, Default)]
struct NaiveProvider {
    captures: u32,
    /// The last charge's truth: captured, declined, pending.
    charge: Option<ChargeOutcome>,
    pending_polls: u32,
    refunded: i64,
    refund: Option<RefundOutcome>,
}

impl NaiveProvider {
    fn charge(&mut self, token: &str) -> ChargeOutcome {
        let reference = format!("ch_{}", self.captures + 1);
        let (truth, answer) = match token {
            "tok_success" => (
                ChargeOutcome::Captured {
                    provider_reference: reference,
                },
                None,
            ),
            "tok_timeout" => (
                ChargeOutcome::Captured {
                    provider_reference: reference,
                },
                Some(ChargeOutcome::Unknown {
                    detail: "timeout".into(),
                }),
            ),
            "tok_pending" => (
                ChargeOutcome::Pending {
                    provider_reference: reference,
                },
                None,
            ),
            "tok_insufficient_funds" => (
                ChargeOutcome::Declined {
                    reason: DeclineReason::InsufficientFunds,
                    message: "nsf".into(),
                },
                None,
            ),
            _ => (
                ChargeOutcome::Declined {
                    reason: DeclineReason::Declined,
                    message: "no".into(),
                },
                None,
            ),
        };
        if matches!(
            truth,
            ChargeOutcome::Captured { .. } | ChargeOutcome::Pending { .. }
        ) {
            self.captures += 1;
        }
        self.charge = Some(truth.clone());
        answer.unwrap_or(truth)
    }

    fn query(&mut self) -> ChargeOutcome {
        match &self.charge {
            None => ChargeOutcome::NotFound,
            Some(ChargeOutcome::Pending { provider_reference }) => {
                self.pending_polls += 1;
                if self.pending_polls >= 2 {
                    let done = ChargeOutcome::Captured {
                        provider_reference: provider_reference.clone(),
                    };
                    self.charge = Some(done.clone());
                    done
                } else {
                    ChargeOutcome::Pending {
                        provider_reference: provider_reference.clone(),
                    }
                }
            }
            Some(other) => other.clone(),
        }
    }

    fn refund(&mut self, amount: i64, captured: bool) -> RefundOutcome {
        if !captured {
            return RefundOutcome::Failed {
                message: "nothing captured".into(),
            };
        }
        self.refunded += amount;
        let done = RefundOutcome::Refunded {
            provider_reference: "re_1".into(),
        };
        self.refund = Some(done.clone());
        done
    }
}

#[derive(Debug, Clone)]
enum Op {
    Request,
    Submit {
        token: usize,
        wrong_amount: bool,
        wrong_user: bool,
    },
    Refund {
        amount_pct: u8,
    },
    /// The provider pushes what it knows (webhook).
    ProviderEvent,
    /// A signed event saying "captured" about this payment, but for another order (0), amount
    /// (1) or currency (2): what a leaked webhook secret or a confused provider sends.
    ForgedProviderEvent {
        which: u8,
    },
    /// Redeliver an earlier record.
    Redeliver {
        index: usize,
    },
    /// The next gateway call is lost: `before` = never made, else made but the answer lost.
    CrashNextCall {
        before: bool,
    },
    Recover,
    Advance {
        ms: i64,
    },
    Expire,
    /// The payment's stored timer fires (time moves to it if it is later).
    Fire,
}

const TOKENS: [&str; 6] = [
    "tok_success",
    "tok_timeout",
    "tok_pending",
    "tok_declined",
    "tok_insufficient_funds",
    "tok_other",
];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Request),
        4 => (0..TOKENS.len(), prop::bool::weighted(0.15), prop::bool::weighted(0.1))
            .prop_map(|(token, wrong_amount, wrong_user)| Op::Submit { token, wrong_amount, wrong_user }),
        2 => (0u8..=120).prop_map(|amount_pct| Op::Refund { amount_pct }),
        1 => Just(Op::ProviderEvent),
        1 => (0u8..3).prop_map(|which| Op::ForgedProviderEvent { which }),
        2 => any::<usize>().prop_map(|index| Op::Redeliver { index }),
        2 => any::<bool>().prop_map(|before| Op::CrashNextCall { before }),
        2 => Just(Op::Recover),
        1 => (1i64..100_000_000).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Expire),
        2 => Just(Op::Fire),
    ]
}

struct Harness {
    policy: Policy,
    state: PaymentState,
    provider: NaiveProvider,
    now: Millis,
    records: Vec<Input>,
    crash_next: Option<bool>,
    /// The payment's stored timer (the `payment_timers` row): set by `Schedule`, removed by
    /// `Unschedule`, left in place when it fires (as the row is until the next step replaces it).
    timer: Option<Millis>,
    succeeded: u32,
    failed: u32,
    refunded_notices: u32,
    /// Provider events the core refused (forged ones are always refused).
    refused_events: u32,
}

impl Harness {
    fn new(policy: Policy) -> Self {
        Harness {
            policy,
            state: PaymentState::new(&payment_id()),
            provider: NaiveProvider::default(),
            now: T0,
            records: Vec::new(),
            crash_next: None,
            timer: None,
            succeeded: 0,
            failed: 0,
            refunded_notices: 0,
            refused_events: 0,
        }
    }

    /// Applies `input` and carries out its effects like the runtime, feeding answers back.
    fn step(&mut self, input: Input) -> Result<(), TestCaseError> {
        let woken = input == Input::Wake;
        let status_before = self.state.status;
        let mut armed = false;
        let mut interrupted = false;
        let mut queue = vec![input];
        let mut rounds = 0;
        while let Some(input) = queue.pop() {
            rounds += 1;
            prop_assert!(
                rounds < 12,
                "the core keeps asking the gateway within one input"
            );
            let before = self.state.status;
            let fx = apply_with(&self.policy, &mut self.state, input, self.now);
            let logged = fx.iter().any(|e| matches!(e, Effect::History { .. }));
            prop_assert!(
                before == self.state.status || logged,
                "{:?} -> {:?} without history",
                before,
                self.state.status
            );
            for effect in fx {
                match effect {
                    Effect::History { detail, .. } => {
                        prop_assert!(
                            !detail.contains("tok_"),
                            "a token in the history: {}",
                            detail
                        );
                    }
                    Effect::Emit(Outcome::Succeeded { .. }) => self.succeeded += 1,
                    Effect::Emit(Outcome::Failed { .. }) => self.failed += 1,
                    Effect::Emit(Outcome::Refunded { .. }) => self.refunded_notices += 1,
                    Effect::Schedule { at } => {
                        prop_assert!(at >= self.now, "a timer in the past: {} < {}", at, self.now);
                        self.timer = Some(at);
                        armed = true;
                    }
                    Effect::Unschedule => self.timer = None,
                    Effect::Charge {
                        amount_minor,
                        token,
                        ..
                    } => {
                        prop_assert_eq!(amount_minor, AMOUNT, "charged a client-chosen amount");
                        match self.crash_next.take() {
                            Some(true) => interrupted = true,
                            Some(false) => {
                                interrupted = true;
                                self.provider.charge(token.expose());
                            }
                            None => queue
                                .push(Input::ChargeResult(self.provider.charge(token.expose()))),
                        }
                    }
                    Effect::Query { .. } => match self.crash_next.take() {
                        Some(_) => interrupted = true,
                        None => queue.push(Input::QueryResult(self.provider.query())),
                    },
                    Effect::Refund { amount_minor, .. } => {
                        prop_assert!(
                            amount_minor <= self.state.captured_minor,
                            "refund above the capture"
                        );
                        let captured = self.provider.captures > 0;
                        match self.crash_next.take() {
                            Some(true) => interrupted = true,
                            Some(false) => {
                                interrupted = true;
                                self.provider.refund(amount_minor, captured);
                            }
                            None => queue.push(Input::RefundResult(
                                self.provider.refund(amount_minor, captured),
                            )),
                        }
                    }
                    Effect::QueryRefund { .. } => match self.crash_next.take() {
                        Some(_) => interrupted = true,
                        None => queue.push(Input::RefundQueryResult(
                            self.provider
                                .refund
                                .clone()
                                .unwrap_or(RefundOutcome::NotFound),
                        )),
                    },
                    Effect::ProviderEventRefused(_) => self.refused_events += 1,
                    Effect::Ignored { .. } => {}
                }
            }
            self.check()?;
        }
        // Timers: what makes every payment settle without another record.
        let status = self.state.status;
        if status.is_terminal() {
            prop_assert!(self.timer.is_none(), "a settled payment kept its timer");
        } else if status != Status::New {
            prop_assert!(self.timer.is_some(), "{:?} without a timer", status);
            if !interrupted {
                prop_assert!(
                    !woken || armed,
                    "woken {:?} and left without a new timer",
                    status
                );
                prop_assert!(
                    status == status_before || armed,
                    "{:?} -> {:?} without a timer",
                    status_before,
                    status
                );
            }
        }
        Ok(())
    }

    /// Fires the stored timer, as the runtime's timer loop does once it is due.
    fn fire(&mut self) -> Result<bool, TestCaseError> {
        let Some(at) = self.timer else {
            return Ok(false);
        };
        self.now = self.now.max(at);
        self.step(Input::Wake)?;
        Ok(true)
    }

    fn check(&self) -> Result<(), TestCaseError> {
        prop_assert!(
            self.provider.captures <= 1,
            "captured {} times",
            self.provider.captures
        );
        prop_assert!(
            self.succeeded <= 1 && self.failed <= 1 && self.succeeded + self.failed <= 1,
            "outcomes: {} succeeded, {} failed",
            self.succeeded,
            self.failed
        );
        prop_assert!(
            self.succeeded == 0 || self.provider.captures == 1,
            "told the booking processor of a success the provider never captured"
        );
        prop_assert!(self.provider.refunded <= AMOUNT * i64::from(self.provider.captures));
        prop_assert!(self.state.refunded_minor <= self.state.captured_minor);
        prop_assert!(self.refunded_notices <= 1);
        Ok(())
    }
}

fn forged_capture(which: u8) -> Input {
    let Input::ProviderEvent(mut report) = provider_event(captured()) else {
        unreachable!("provider_event builds a provider event")
    };
    match which {
        0 => report.order_id = "order-2".into(),
        1 => report.amount_minor = 1,
        _ => report.currency = "USD".into(),
    }
    Input::ProviderEvent(report)
}

fn check_sequence(policy: Policy, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut h = Harness::new(policy);
    for op in ops {
        let input = match op {
            Op::Request => request(),
            Op::Submit {
                token,
                wrong_amount,
                wrong_user,
            } => submit_as(
                TOKENS[*token],
                if *wrong_amount { AMOUNT + 1 } else { AMOUNT },
                if *wrong_user { "intruder" } else { USER },
            ),
            Op::Refund { amount_pct } => refund_request(AMOUNT * i64::from(*amount_pct) / 100),
            Op::ProviderEvent => match h.provider.charge.clone() {
                Some(truth) => provider_event(truth),
                None => continue,
            },
            Op::ForgedProviderEvent { which } => forged_capture(*which),
            Op::Redeliver { index } => {
                if h.records.is_empty() {
                    continue;
                }
                let earlier = h.records[index % h.records.len()].clone();
                h.step(earlier)?;
                continue;
            }
            Op::CrashNextCall { before } => {
                h.crash_next = Some(*before);
                continue;
            }
            Op::Recover => Input::Recover,
            Op::Advance { ms } => {
                h.now += ms;
                continue;
            }
            Op::Expire => Input::Expire,
            Op::Fire => {
                h.fire()?;
                continue;
            }
        };
        if matches!(
            input,
            Input::Requested(_) | Input::Submitted(_) | Input::RefundRequested(_)
        ) {
            h.records.push(input.clone());
        }
        let forged_after_request =
            matches!(op, Op::ForgedProviderEvent { .. }) && h.state.requested;
        let refused_before = h.refused_events;
        h.step(input)?;
        prop_assert!(
            !forged_after_request || h.refused_events == refused_before + 1,
            "a forged provider event was not refused"
        );
    }
    // Drain: the provider answers from now on and no record comes: only the timers act (a
    // crash left the stored timer in place, as the store does).
    h.crash_next = None;
    for _ in 0..64 {
        if h.state.status.is_terminal() || !h.fire()? {
            break;
        }
    }
    let status = h.state.status;
    prop_assert!(
        status.is_terminal() || status == Status::New,
        "payment left {:?}",
        status
    );
    prop_assert_eq!(
        status == Status::Captured || status.name().starts_with("REFUND"),
        h.succeeded == 1
    );
    prop_assert!(
        h.state.status.is_terminal() == h.state.submission.is_none() || status == Status::New
    );
    if status == Status::Refunded {
        prop_assert_eq!(h.refunded_notices, 1);
    }
    Ok(())
}

proptest! {
    #![proptest_config(Config { cases: 1024, ..Config::default() })]

    #[test]
    fn every_sequence_keeps_the_payment_invariants(ops in prop::collection::vec(op(), 1..60)) {
        check_sequence(Policy::default(), &ops)?;
    }
}

#[test]
fn negative_control_the_properties_catch_a_core_that_forgets_a_pending_charge() {
    let broken = Policy {
        skip_pending_check: true,
        ..Policy::default()
    };
    let mut runner = TestRunner::new(Config {
        cases: 1024,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&prop::collection::vec(op(), 1..60), |ops| {
        check_sequence(broken, &ops)
    });
    assert!(
        result.is_err(),
        "the properties did not notice a pending charge left without a check"
    );
}

#[test]
fn negative_control_the_properties_catch_a_core_that_retries_blindly() {
    let broken = Policy {
        retry_charge_on_unknown: true,
        ..Policy::default()
    };
    let mut runner = TestRunner::new(Config {
        cases: 1024,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&prop::collection::vec(op(), 1..60), |ops| {
        check_sequence(broken, &ops)
    });
    assert!(
        result.is_err(),
        "the properties did not notice a core that charges twice"
    );
}

#[test]
fn tokens_never_reach_debug_output() {
    let mut s = PaymentState::new(&payment_id());
    apply(&mut s, request(), T0);
    let fx = apply(&mut s, submit("tok_very_secret"), T0);
    assert!(!format!("{s:?}{fx:?}").contains("tok_very_secret"));
    assert!(!format!("{:?}", Token::new("tok_very_secret")).contains("secret"));
}
