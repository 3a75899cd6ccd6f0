//! The payment decision core: `apply(state, input, now) -> effects`, one payment at a time.
//! Pure: no clock (`now` is an input), no I/O; the runtime carries out the effects (calls the
//! gateway, writes the store, produces records) and feeds the gateway's answers back in.
//!
//! ```text
//!            Submitted(before the request)         Requested
//!   NEW ─────────────────────────────▶ AWAITING_REQUEST ─────┐
//!    │ Requested                                             │ (parked submission checked)
//!    ▼                    Submitted (amount, currency,       ▼
//!  PENDING ─────────────────────────  user must match) ──▶ CHARGING ──Captured──▶ CAPTURED
//!    │ Expire (never submitted)                              │  ▲                    │ RefundRequested
//!    ▼                                      Unknown: Query   │  │ NotFound: charge   ▼
//!  EXPIRED                        Pending ─▶ PROVIDER_PENDING   │ again, same key  REFUNDING ─▶ REFUNDED
//!                                 Declined ─▶ FAILED ───────────┘                       └──▶ REFUND_FAILED
//! ```
//!
//! Rules (property-tested in `tests.rs`):
//! - **At most one capture.** A charge is asked for only when no earlier charge can have
//!   captured: the first time, or after the provider said `NotFound` or declined... never after
//!   `Unknown` or `Pending` (those are resolved with `query`), never once captured. The
//!   idempotency key is always the payment id, so even a repeated call is deduplicated by the
//!   provider.
//! - **Refunds never exceed the capture**: a refund is asked for only on a captured payment,
//!   once, for at most the captured amount.
//! - **Every payment ends in a terminal state** once the provider answers: `CAPTURED`,
//!   `FAILED`, `EXPIRED`, `REFUNDED` or `REFUND_FAILED`.
//! - **Amounts come from the server**: the amount charged is the `PaymentRequested` amount
//!   (the booking processor's); a submission with another amount, currency or user is refused.
//! - **Every state change yields a history entry** (`Effect::History`).

use boxoffice_avro::records::{
    PaymentFailureReason, PaymentRequested, PaymentSubmitted, RefundReason, RefundRequested,
};

use super::gateway::{ChargeOutcome, RefundOutcome, Token};

/// Milliseconds since the Unix epoch (UTC).
pub type Millis = i64;

/// How long after its hold expired an unsubmitted payment stays payable (late payments are
/// the booking processor's business: re-allocate or refund). After that it expires.
pub const DEFAULT_LATE_GRACE_MS: Millis = 24 * 3_600_000;

/// Where a payment stands. The stored names are [`Status::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Nothing known yet (no row).
    New,
    /// A submission arrived before the booking processor's request; parked.
    AwaitingRequest,
    /// Requested, waiting for the fan's submission.
    Pending,
    /// The charge is (or may be) in flight: the intent is stored before the gateway is called.
    Charging,
    /// The provider accepted the charge and completes it later.
    ProviderPending,
    Captured,
    Failed,
    /// Never submitted in time.
    Expired,
    Refunding,
    Refunded,
    /// The provider refused the refund for good: an operator must act.
    RefundFailed,
}

impl Status {
    pub const ALL: [Status; 11] = [
        Status::New,
        Status::AwaitingRequest,
        Status::Pending,
        Status::Charging,
        Status::ProviderPending,
        Status::Captured,
        Status::Failed,
        Status::Expired,
        Status::Refunding,
        Status::Refunded,
        Status::RefundFailed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Status::New => "NEW",
            Status::AwaitingRequest => "AWAITING_REQUEST",
            Status::Pending => "PENDING",
            Status::Charging => "CHARGING",
            Status::ProviderPending => "PROVIDER_PENDING",
            Status::Captured => "CAPTURED",
            Status::Failed => "FAILED",
            Status::Expired => "EXPIRED",
            Status::Refunding => "REFUNDING",
            Status::Refunded => "REFUNDED",
            Status::RefundFailed => "REFUND_FAILED",
        }
    }

    pub fn parse(name: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.name() == name)
    }

    /// No further step happens without a new request (a refund of a captured payment).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Captured
                | Status::Failed
                | Status::Expired
                | Status::Refunded
                | Status::RefundFailed
        )
    }

    /// The gateway owes an answer: the runtime must resolve it (query) before anything else.
    pub fn is_in_flight(self) -> bool {
        matches!(
            self,
            Status::Charging | Status::ProviderPending | Status::Refunding
        )
    }
}

/// A fan's submission (kept while parked or charging: the token is needed to charge again
/// after a `NotFound`; dropped once the payment is settled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    pub user_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub token: Token,
    pub submitted_at: Millis,
}

/// The refund of a payment (one per payment: its id is derived from the payment id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    pub refund_id: String,
    pub amount_minor: i64,
    pub reason: RefundReason,
    pub provider_reference: Option<String>,
}

/// Everything the processor knows about one payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentState {
    pub payment_id: String,
    pub status: Status,
    pub order_id: String,
    pub event_id: String,
    pub user_id: String,
    /// From `PaymentRequested` (server side); 0 until requested.
    pub amount_minor: i64,
    pub currency: String,
    pub hold_expires_at: Millis,
    pub requested: bool,
    pub submission: Option<Submission>,
    /// Charge calls asked for (each with the same idempotency key).
    pub charge_attempts: u32,
    pub provider_reference: Option<String>,
    pub captured_minor: i64,
    pub failure: Option<(PaymentFailureReason, String)>,
    pub refund: Option<Refund>,
    pub refunded_minor: i64,
    /// History entries written so far (the next entry's sequence number).
    pub history_seq: i32,
    pub created_at: Millis,
    pub updated_at: Millis,
}

impl PaymentState {
    pub fn new(payment_id: &str) -> Self {
        PaymentState {
            payment_id: payment_id.to_owned(),
            status: Status::New,
            order_id: String::new(),
            event_id: String::new(),
            user_id: String::new(),
            amount_minor: 0,
            currency: String::new(),
            hold_expires_at: 0,
            requested: false,
            submission: None,
            charge_attempts: 0,
            provider_reference: None,
            captured_minor: 0,
            failure: None,
            refund: None,
            refunded_minor: 0,
            history_seq: 0,
            created_at: 0,
            updated_at: 0,
        }
    }

    /// When an unsubmitted payment expires (`None`: it cannot expire now).
    pub fn expires_at(&self, late_grace_ms: Millis) -> Option<Millis> {
        match self.status {
            Status::Pending => Some(self.hold_expires_at.saturating_add(late_grace_ms)),
            Status::AwaitingRequest => self
                .submission
                .as_ref()
                .map(|s| s.submitted_at.saturating_add(late_grace_ms)),
            _ => None,
        }
    }
}

/// What happens to a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Requested(PaymentRequested),
    Submitted(PaymentSubmitted),
    RefundRequested(RefundRequested),
    /// The answer to a `Charge` or `Query` effect.
    ChargeResult(ChargeOutcome),
    /// An asynchronous completion pushed by the provider (webhook).
    ProviderEvent(ChargeOutcome),
    /// The answer to a `Refund` or `QueryRefund` effect.
    RefundResult(RefundOutcome),
    /// The runtime found the payment in flight (after a restart): ask what happened.
    Recover,
    /// Time passed (`now`): an unsubmitted payment past its deadline expires.
    Expire,
}

/// The outcome the booking processor is told about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded {
        provider_reference: String,
    },
    Failed {
        reason: PaymentFailureReason,
        detail: String,
    },
    /// The refund went through: the user is told (`ORDER_REFUNDED`).
    Refunded {
        refund_id: String,
        provider_reference: String,
    },
}

/// What a decision asks the runtime to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Call the gateway's `charge` (idempotency key = payment id). The intent is stored first.
    Charge {
        payment_id: String,
        amount_minor: i64,
        currency: String,
        token: Token,
    },
    /// Call the gateway's `query` for the payment id.
    Query {
        payment_id: String,
    },
    Refund {
        refund_id: String,
        charge_reference: String,
        amount_minor: i64,
        currency: String,
    },
    QueryRefund {
        refund_id: String,
    },
    Emit(Outcome),
    /// Append to `payment_histories`: the status reached (or the refusal) and why.
    History {
        status: &'static str,
        detail: String,
    },
    /// Nothing changed, for a reason worth logging.
    Ignored {
        reason: String,
    },
}

/// The rules a core applies. Only the real ones outside tests; the seam lets the property
/// tests prove they catch a core that retries blindly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub late_grace_ms: Millis,
    /// Test seam: a broken core charges again on `Unknown` instead of querying.
    pub retry_charge_on_unknown: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            late_grace_ms: DEFAULT_LATE_GRACE_MS,
            retry_charge_on_unknown: false,
        }
    }
}

/// Applies one input with the default policy.
pub fn apply(state: &mut PaymentState, input: Input, now: Millis) -> Vec<Effect> {
    apply_with(&Policy::default(), state, input, now)
}

/// Applies one input; returns the effects to carry out, in order.
pub fn apply_with(
    policy: &Policy,
    state: &mut PaymentState,
    input: Input,
    now: Millis,
) -> Vec<Effect> {
    let mut fx = Vec::new();
    let before = state.status;
    match input {
        Input::Requested(r) => requested(state, r, now, &mut fx),
        Input::Submitted(s) => submitted(state, s, now, &mut fx),
        Input::RefundRequested(r) => refund_requested(state, r, &mut fx),
        Input::ChargeResult(outcome) => charge_result(policy, state, outcome, false, &mut fx),
        Input::ProviderEvent(outcome) => charge_result(policy, state, outcome, true, &mut fx),
        Input::RefundResult(outcome) => refund_result(state, outcome, &mut fx),
        Input::Recover => recover(state, &mut fx),
        Input::Expire => expire(policy, state, now, &mut fx),
    }
    let histories = fx
        .iter()
        .filter(|e| matches!(e, Effect::History { .. }))
        .count();
    if histories > 0 || before != state.status {
        if state.created_at == 0 {
            state.created_at = now;
        }
        state.updated_at = now;
    }
    state.history_seq = state
        .history_seq
        .saturating_add(i32::try_from(histories).unwrap_or(i32::MAX));
    // Every status change is in the history.
    debug_assert!(
        before == state.status || histories > 0,
        "status changed without history"
    );
    if state.status.is_terminal() {
        // Settled: the token is of no further use and is not kept.
        state.submission = None;
    }
    fx
}

fn ignored(fx: &mut Vec<Effect>, reason: impl Into<String>) {
    fx.push(Effect::Ignored {
        reason: reason.into(),
    });
}

fn history(fx: &mut Vec<Effect>, status: Status, detail: impl Into<String>) {
    fx.push(Effect::History {
        status: status.name(),
        detail: detail.into(),
    });
}

fn refusal(fx: &mut Vec<Effect>, label: &'static str, detail: impl Into<String>) {
    fx.push(Effect::History {
        status: label,
        detail: detail.into(),
    });
}

fn requested(state: &mut PaymentState, r: PaymentRequested, now: Millis, fx: &mut Vec<Effect>) {
    if state.requested {
        return ignored(fx, "payment already requested");
    }
    if r.amount_minor <= 0 || !valid_currency(&r.currency) {
        return refusal(
            fx,
            "REQUEST_REFUSED",
            format!("invalid amount {} {}", r.amount_minor, r.currency),
        );
    }
    state.requested = true;
    state.order_id = r.order_id;
    state.event_id = r.event_id;
    state.user_id = r.user_id;
    state.amount_minor = r.amount_minor;
    state.currency = r.currency;
    state.hold_expires_at = r.hold_expires_at;
    match state.status {
        Status::New => {
            state.status = Status::Pending;
            history(
                fx,
                Status::Pending,
                format!("requested {} {}", state.amount_minor, state.currency),
            );
        }
        Status::AwaitingRequest => {
            let parked = state.submission.take();
            state.status = Status::Pending;
            history(
                fx,
                Status::Pending,
                format!("requested {} {}", state.amount_minor, state.currency),
            );
            if let Some(submission) = parked {
                start_charge(state, submission, now, fx);
            }
        }
        // A request can only come first or after a parked submission.
        _ => ignored(fx, "request for a payment already under way"),
    }
}

fn submitted(state: &mut PaymentState, s: PaymentSubmitted, now: Millis, fx: &mut Vec<Effect>) {
    let submission = Submission {
        user_id: s.user_id,
        amount_minor: s.amount_minor,
        currency: s.currency,
        token: Token::new(s.payment_method_token),
        submitted_at: s.occurred_at,
    };
    if submission.token.is_empty() {
        return refusal(fx, "SUBMISSION_REFUSED", "empty payment method token");
    }
    match state.status {
        Status::New => {
            state.order_id = s.order_id;
            state.event_id = s.event_id;
            state.user_id = submission.user_id.clone();
            state.submission = Some(submission);
            state.status = Status::AwaitingRequest;
            history(
                fx,
                Status::AwaitingRequest,
                "submitted before the payment was requested; parked",
            );
        }
        // A newer submission replaces the parked one (the fan tried again).
        Status::AwaitingRequest => {
            state.submission = Some(submission);
            history(fx, Status::AwaitingRequest, "parked submission replaced");
        }
        Status::Pending => start_charge(state, submission, now, fx),
        _ => ignored(
            fx,
            format!("submission for a payment that is {}", state.status.name()),
        ),
    }
}

/// Checks a submission against the server-side request and charges, or refuses it.
fn start_charge(
    state: &mut PaymentState,
    submission: Submission,
    _now: Millis,
    fx: &mut Vec<Effect>,
) {
    debug_assert_eq!(state.status, Status::Pending);
    if submission.amount_minor != state.amount_minor || submission.currency != state.currency {
        return refusal(
            fx,
            "SUBMISSION_REFUSED",
            format!(
                "submitted amount {} {} differs from the requested {} {}",
                submission.amount_minor, submission.currency, state.amount_minor, state.currency
            ),
        );
    }
    if submission.user_id != state.user_id {
        return refusal(
            fx,
            "SUBMISSION_REFUSED",
            "submitted by someone other than the order's user",
        );
    }
    let token = submission.token.clone();
    state.submission = Some(submission);
    charge(state, token, fx);
}

fn charge(state: &mut PaymentState, token: Token, fx: &mut Vec<Effect>) {
    state.status = Status::Charging;
    state.charge_attempts += 1;
    history(
        fx,
        Status::Charging,
        format!("charge attempt {}", state.charge_attempts),
    );
    fx.push(Effect::Charge {
        payment_id: state.payment_id.clone(),
        amount_minor: state.amount_minor,
        currency: state.currency.clone(),
        token,
    });
}

fn charge_result(
    policy: &Policy,
    state: &mut PaymentState,
    outcome: ChargeOutcome,
    from_provider: bool,
    fx: &mut Vec<Effect>,
) {
    if !matches!(state.status, Status::Charging | Status::ProviderPending) {
        return ignored(
            fx,
            format!(
                "charge result for a payment that is {}",
                state.status.name()
            ),
        );
    }
    match outcome {
        ChargeOutcome::Captured { provider_reference } => {
            state.status = Status::Captured;
            state.captured_minor = state.amount_minor;
            state.provider_reference = Some(provider_reference.clone());
            history(
                fx,
                Status::Captured,
                format!("captured; provider reference {provider_reference}"),
            );
            fx.push(Effect::Emit(Outcome::Succeeded { provider_reference }));
        }
        ChargeOutcome::Declined { reason, message } => {
            let reason = reason.failure_reason();
            state.status = Status::Failed;
            state.failure = Some((reason, message.clone()));
            history(fx, Status::Failed, format!("{reason:?}: {message}"));
            fx.push(Effect::Emit(Outcome::Failed {
                reason,
                detail: message,
            }));
        }
        ChargeOutcome::Pending { provider_reference } => {
            state.provider_reference = Some(provider_reference);
            if state.status != Status::ProviderPending {
                state.status = Status::ProviderPending;
                history(
                    fx,
                    Status::ProviderPending,
                    "the provider completes the charge later",
                );
            }
            if !from_provider {
                // Keep asking until the provider's event (or the query) settles it.
                fx.push(Effect::Query {
                    payment_id: state.payment_id.clone(),
                });
            }
        }
        ChargeOutcome::Unknown { detail } => {
            if from_provider {
                return ignored(fx, "provider event without an outcome");
            }
            if policy.retry_charge_on_unknown
                && let Some(token) = state.submission.as_ref().map(|s| s.token.clone())
            {
                // The bug the properties catch: a blind retry may capture twice.
                return charge(state, token, fx);
            }
            // The money may have moved: ask, never charge blindly.
            ignored(fx, format!("outcome unknown ({detail}); querying"));
            fx.push(Effect::Query {
                payment_id: state.payment_id.clone(),
            });
        }
        ChargeOutcome::NotFound => {
            if state.status == Status::ProviderPending || from_provider {
                // The provider accepted it earlier: keep asking.
                fx.push(Effect::Query {
                    payment_id: state.payment_id.clone(),
                });
                return;
            }
            // The provider never saw the charge: charging (same key) is safe.
            match state.submission.as_ref().map(|s| s.token.clone()) {
                Some(token) => charge(state, token, fx),
                None => {
                    state.status = Status::Failed;
                    let detail = "charge lost and no payment method to retry".to_owned();
                    state.failure = Some((PaymentFailureReason::ProviderError, detail.clone()));
                    history(fx, Status::Failed, detail.clone());
                    fx.push(Effect::Emit(Outcome::Failed {
                        reason: PaymentFailureReason::ProviderError,
                        detail,
                    }));
                }
            }
        }
    }
}

fn refund_requested(state: &mut PaymentState, r: RefundRequested, fx: &mut Vec<Effect>) {
    if let Some(refund) = &state.refund {
        if refund.refund_id == r.refund_id {
            return ignored(fx, "refund already requested");
        }
        return refusal(fx, "REFUND_REFUSED", "the payment already has a refund");
    }
    if state.status != Status::Captured {
        return refusal(
            fx,
            "REFUND_REFUSED",
            format!("nothing captured (payment is {})", state.status.name()),
        );
    }
    let Some(charge_reference) = state.provider_reference.clone() else {
        return refusal(
            fx,
            "REFUND_REFUSED",
            "captured without a provider reference",
        );
    };
    let refundable = state.captured_minor - state.refunded_minor;
    if r.amount_minor <= 0 || r.amount_minor > refundable || r.currency != state.currency {
        return refusal(
            fx,
            "REFUND_REFUSED",
            format!(
                "refund of {} {} exceeds the {} {} refundable",
                r.amount_minor, r.currency, refundable, state.currency
            ),
        );
    }
    state.refund = Some(Refund {
        refund_id: r.refund_id.clone(),
        amount_minor: r.amount_minor,
        reason: r.reason,
        provider_reference: None,
    });
    state.status = Status::Refunding;
    history(
        fx,
        Status::Refunding,
        format!("refund {} {} ({:?})", r.amount_minor, r.currency, r.reason),
    );
    fx.push(Effect::Refund {
        refund_id: r.refund_id,
        charge_reference,
        amount_minor: r.amount_minor,
        currency: state.currency.clone(),
    });
}

fn refund_result(state: &mut PaymentState, outcome: RefundOutcome, fx: &mut Vec<Effect>) {
    let (Status::Refunding, Some(refund)) = (state.status, state.refund.as_mut()) else {
        return ignored(
            fx,
            format!(
                "refund result for a payment that is {}",
                state.status.name()
            ),
        );
    };
    match outcome {
        RefundOutcome::Refunded { provider_reference } => {
            refund.provider_reference = Some(provider_reference.clone());
            state.refunded_minor += refund.amount_minor;
            let refund_id = refund.refund_id.clone();
            state.status = Status::Refunded;
            history(
                fx,
                Status::Refunded,
                format!("refunded; provider reference {provider_reference}"),
            );
            fx.push(Effect::Emit(Outcome::Refunded {
                refund_id,
                provider_reference,
            }));
        }
        RefundOutcome::Failed { message } => {
            state.status = Status::RefundFailed;
            history(
                fx,
                Status::RefundFailed,
                format!("refund refused by the provider: {message}"),
            );
        }
        RefundOutcome::Unknown { detail } => {
            ignored(fx, format!("refund outcome unknown ({detail}); querying"));
            fx.push(Effect::QueryRefund {
                refund_id: refund.refund_id.clone(),
            });
        }
        RefundOutcome::NotFound => {
            // The provider never saw it: asking again with the same key is safe.
            let charge_reference = state.provider_reference.clone().unwrap_or_default();
            fx.push(Effect::Refund {
                refund_id: refund.refund_id.clone(),
                charge_reference,
                amount_minor: refund.amount_minor,
                currency: state.currency.clone(),
            });
        }
    }
}

fn recover(state: &mut PaymentState, fx: &mut Vec<Effect>) {
    match (state.status, &state.refund) {
        (Status::Charging | Status::ProviderPending, _) => {
            fx.push(Effect::Query {
                payment_id: state.payment_id.clone(),
            });
        }
        (Status::Refunding, Some(refund)) => {
            fx.push(Effect::QueryRefund {
                refund_id: refund.refund_id.clone(),
            });
        }
        _ => ignored(fx, "nothing in flight"),
    }
}

fn expire(policy: &Policy, state: &mut PaymentState, now: Millis, fx: &mut Vec<Effect>) {
    match state.expires_at(policy.late_grace_ms) {
        Some(deadline) if now >= deadline => {
            state.status = Status::Expired;
            history(fx, Status::Expired, "not submitted in time");
        }
        _ => ignored(fx, "nothing to expire"),
    }
}

/// ISO 4217 shape: three upper-case letters.
fn valid_currency(currency: &str) -> bool {
    currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase())
}
