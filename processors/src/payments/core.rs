//! The payment decision core: `apply(state, input, now) -> effects`, one payment at a time.
//! Pure: no clock (`now` is an input), no I/O; the runtime carries out the effects (calls the
//! gateway, writes the store, keeps the payment's timer, produces records) and feeds the
//! gateway's answers back in.
//!
//! ```text
//!            Submitted(before the request)         Requested
//!   NEW ─────────────────────────────▶ AWAITING_REQUEST ─────┐
//!    │ Requested                                             │ (parked submission checked)
//!    ▼                    Submitted (amount, currency,       ▼
//!  PENDING ─────────────────────────  user must match) ──▶ CHARGING ──Captured──▶ CAPTURED
//!    │ Wake past the deadline                                │  ▲                    │ RefundRequested
//!    ▼                                 Unknown: query /      │  │ NotFound: charge   ▼
//!  EXPIRED                              check later          │  │ again, same key  REFUNDING ─▶ REFUNDED
//!                                 Pending ─▶ PROVIDER_PENDING ──┘ (event or check)      └──▶ REFUND_FAILED
//!                                 Declined ─▶ FAILED
//! ```
//!
//! # Timers: nothing waits inside a record
//!
//! A payment that waits for something outside the log (the provider completing a charge, an
//! answer that was lost, a fan who never pays) is never waited for in place: the core asks for
//! a timer with [`Effect::Schedule`] and the runtime feeds [`Input::Wake`] back at that time
//! (the runtime keeps one timer per payment, stored so it outlives a restart). Every state
//! that is neither terminal nor `NEW` has a timer, so every payment reaches a terminal state
//! without another record:
//!
//! - `PENDING` / `AWAITING_REQUEST`: at the expiry deadline ([`PaymentState::expires_at`]);
//!   woken then, the payment expires.
//! - `CHARGING` / `REFUNDING`: a check [`Policy::pending_check_ms`] after the call, in case the
//!   answer is lost (a crash, a timeout): woken, the core queries the provider.
//! - `PROVIDER_PENDING`: the provider's event (`Input::ProviderEvent`) normally settles it;
//!   the check is the fallback for an event that never comes.
//!
//! A check that finds nothing settled checks again later, backing off with the time the
//! payment has been waiting (the delay is the time since its last state change, between the
//! first delay and [`Policy::max_check_ms`]), so a payment pending for an hour is asked about
//! every few minutes, not every second. A payment that becomes terminal cancels its timer
//! ([`Effect::Unschedule`]).
//!
//! Within one input the gateway is called a bounded number of times: an `Unknown` answer to
//! the first charge is queried at once (most timeouts lose only the answer); any later
//! `Unknown` or `Pending` waits for the timer.
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
//!   `FAILED`, `EXPIRED`, `REFUNDED` or `REFUND_FAILED`; until then it has a timer.
//! - **Amounts come from the server**: the amount charged is the `PaymentRequested` amount
//!   (the booking processor's); a submission with another amount, currency or user is refused,
//!   and so is a provider event that names another order, amount or currency.
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

/// Where a payment stands: the store's [`PaymentStatus`], whose wire names are the stored ones.
pub use boxoffice_store::payments::PaymentStatus as Status;

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
    /// The answer to a `Charge` effect.
    ChargeResult(ChargeOutcome),
    /// The answer to a `Query` effect.
    QueryResult(ChargeOutcome),
    /// An asynchronous completion pushed by the provider (webhook); settles the payment only
    /// when it describes this payment's charge.
    ProviderEvent(ProviderReport),
    /// The answer to a `Refund` effect.
    RefundResult(RefundOutcome),
    /// The answer to a `QueryRefund` effect.
    RefundQueryResult(RefundOutcome),
    /// The runtime found the payment in flight (after a restart): ask what happened.
    Recover,
    /// Time passed (`now`): an unsubmitted payment past its deadline expires.
    Expire,
    /// The payment's timer (the last [`Effect::Schedule`]) came due.
    Wake,
}

/// What the provider's asynchronous event says about a charge: its outcome, and what the
/// charge was for. Checked against the payment before it settles anything: a signed event that
/// names another order, amount or currency is refused ([`Effect::ProviderEventRefused`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderReport {
    pub outcome: ChargeOutcome,
    pub order_id: String,
    pub amount_minor: i64,
    pub currency: String,
}

/// How a provider event differs from the payment it names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderMismatch {
    #[error("the provider event names order {got}, the payment is for order {expected}")]
    Order { expected: String, got: String },
    #[error(
        "the provider event is for {got_minor} {got_currency}, the payment for {expected_minor} {expected_currency}"
    )]
    Amount {
        expected_minor: i64,
        expected_currency: String,
        got_minor: i64,
        got_currency: String,
    },
}

/// Whether `report` describes the charge of `state`. A payment not requested yet has nothing
/// to compare with (and an event for it changes nothing anyway).
pub fn provider_mismatch(
    state: &PaymentState,
    report: &ProviderReport,
) -> Option<ProviderMismatch> {
    if !state.requested {
        return None;
    }
    if report.order_id != state.order_id {
        return Some(ProviderMismatch::Order {
            expected: state.order_id.clone(),
            got: report.order_id.clone(),
        });
    }
    if report.amount_minor != state.amount_minor || report.currency != state.currency {
        return Some(ProviderMismatch::Amount {
            expected_minor: state.amount_minor,
            expected_currency: state.currency.clone(),
            got_minor: report.amount_minor,
            got_currency: report.currency.clone(),
        });
    }
    None
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
        /// Sent to the provider as metadata: its events name the order (the Kafka key).
        order_id: String,
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
    /// Feed [`Input::Wake`] at `at` (replaces the payment's earlier timer). Stored before the
    /// payment row, so a stored state that needs a timer always has one.
    Schedule {
        at: Millis,
    },
    /// The payment needs no timer any more (it is terminal). Removed after the payment row is
    /// stored; a timer left behind by a crash only wakes a settled payment, which cancels it.
    Unschedule,
    /// The provider's event does not describe this payment's charge: nothing changed; the
    /// runtime dead-letters the record with the reason and counts it.
    ProviderEventRefused(ProviderMismatch),
    /// Nothing changed, for a reason worth logging.
    Ignored {
        reason: String,
    },
}

/// How long a payment waits for the provider before the processor asks (the first check).
pub const DEFAULT_PENDING_CHECK_MS: Millis = 10_000;
/// The first check after an answer that was lost (timeout, provider unreachable).
pub const DEFAULT_UNKNOWN_CHECK_MS: Millis = 1_000;
/// The longest time between two checks of a payment the provider has not settled.
pub const DEFAULT_MAX_CHECK_MS: Millis = 5 * 60_000;

/// The rules a core applies. Only the real ones outside tests; the seam lets the property
/// tests prove they catch a core that retries blindly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub late_grace_ms: Millis,
    /// First check of a charge the provider reported pending (or a call still in flight).
    pub pending_check_ms: Millis,
    /// First check after an unknown outcome the immediate query could not resolve.
    pub unknown_check_ms: Millis,
    /// Checks back off up to this interval.
    pub max_check_ms: Millis,
    /// Test seam: a broken core charges again on `Unknown` instead of querying.
    pub retry_charge_on_unknown: bool,
    /// Test seam: a broken core sets no check for a charge the provider reports pending.
    pub skip_pending_check: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            late_grace_ms: DEFAULT_LATE_GRACE_MS,
            pending_check_ms: DEFAULT_PENDING_CHECK_MS,
            unknown_check_ms: DEFAULT_UNKNOWN_CHECK_MS,
            max_check_ms: DEFAULT_MAX_CHECK_MS,
            retry_charge_on_unknown: false,
            skip_pending_check: false,
        }
    }
}

/// The timer a step asks for; resolved once the step's state (and `updated_at`) is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// At this time.
    At(Millis),
    /// A check: `first` after the last state change, then backing off with the time waited.
    Check { first: Millis },
    /// No timer any more.
    Cancel,
}

/// One `apply`: where the handlers put their effects and the timer they ask for.
struct Step<'a> {
    policy: &'a Policy,
    now: Millis,
    fx: Vec<Effect>,
    timer: Option<Timer>,
}

impl Step<'_> {
    fn ignored(&mut self, reason: impl Into<String>) {
        self.fx.push(Effect::Ignored {
            reason: reason.into(),
        });
    }

    fn history(&mut self, status: Status, detail: impl Into<String>) {
        self.fx.push(Effect::History {
            status: status.name(),
            detail: detail.into(),
        });
    }

    fn refusal(&mut self, label: &'static str, detail: impl Into<String>) {
        self.fx.push(Effect::History {
            status: label,
            detail: detail.into(),
        });
    }

    fn check_later(&mut self, first: Millis) {
        self.timer = Some(Timer::Check { first });
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
    let mut step = Step {
        policy,
        now,
        fx: Vec::new(),
        timer: None,
    };
    let before = state.status;
    match input {
        Input::Requested(r) => requested(&mut step, state, r),
        Input::Submitted(s) => submitted(&mut step, state, s),
        Input::RefundRequested(r) => refund_requested(&mut step, state, r),
        Input::ChargeResult(outcome) => charge_answer(&mut step, state, outcome, Source::Charge),
        Input::QueryResult(outcome) => charge_answer(&mut step, state, outcome, Source::Query),
        Input::ProviderEvent(report) => match provider_mismatch(state, &report) {
            Some(mismatch) => {
                step.refusal("PROVIDER_EVENT_REFUSED", mismatch.to_string());
                step.fx.push(Effect::ProviderEventRefused(mismatch));
            }
            None => charge_answer(&mut step, state, report.outcome, Source::Provider),
        },
        Input::RefundResult(outcome) => refund_answer(&mut step, state, outcome, Source::Charge),
        Input::RefundQueryResult(outcome) => {
            refund_answer(&mut step, state, outcome, Source::Query)
        }
        Input::Recover => recover(&mut step, state),
        Input::Expire => expire(&mut step, state),
        Input::Wake => wake(&mut step, state),
    }
    let Step {
        mut fx, mut timer, ..
    } = step;
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
        // Nothing left to wait for: a terminal payment never keeps a timer.
        if before != state.status || timer.is_some() {
            timer = Some(Timer::Cancel);
        }
    }
    match timer {
        Some(Timer::At(at)) => fx.push(Effect::Schedule { at: at.max(now) }),
        Some(Timer::Check { first }) => fx.push(Effect::Schedule {
            at: check_at(policy, state, now, first),
        }),
        Some(Timer::Cancel) => fx.push(Effect::Unschedule),
        None => {}
    }
    fx
}

/// When to check a payment that is still waiting: `first` after its last state change, or,
/// once it has waited longer than that, as long again as it has waited (so checks double
/// their spacing), at most `max_check_ms` apart. `updated_at` is the last state change: every
/// change writes history, which moves it (a step that changed the state has set it to `now`).
fn check_at(policy: &Policy, state: &PaymentState, now: Millis, first: Millis) -> Millis {
    let first = first.max(1);
    let waited = now.saturating_sub(state.updated_at.clamp(0, now));
    let cap = policy.max_check_ms.max(first);
    now.saturating_add(waited.max(first).min(cap))
}

/// Who answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The answer to the call that moves money (`charge`, `refund`).
    Charge,
    /// The answer to a `query` / `query_refund`.
    Query,
    /// An event the provider pushed.
    Provider,
}

fn requested(step: &mut Step<'_>, state: &mut PaymentState, r: PaymentRequested) {
    if state.requested {
        return step.ignored("payment already requested");
    }
    if r.amount_minor <= 0 || !valid_currency(&r.currency) {
        return step.refusal(
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
            let detail = format!("requested {} {}", state.amount_minor, state.currency);
            step.history(Status::Pending, detail);
            expiry_timer(step, state);
        }
        Status::AwaitingRequest => {
            let parked = state.submission.take();
            state.status = Status::Pending;
            let detail = format!("requested {} {}", state.amount_minor, state.currency);
            step.history(Status::Pending, detail);
            expiry_timer(step, state);
            if let Some(submission) = parked {
                start_charge(step, state, submission);
            }
        }
        // A request can only come first or after a parked submission.
        _ => step.ignored("request for a payment already under way"),
    }
}

/// An unsubmitted payment is woken at its expiry deadline.
fn expiry_timer(step: &mut Step<'_>, state: &PaymentState) {
    if let Some(deadline) = state.expires_at(step.policy.late_grace_ms) {
        step.timer = Some(Timer::At(deadline));
    }
}

fn submitted(step: &mut Step<'_>, state: &mut PaymentState, s: PaymentSubmitted) {
    let submission = Submission {
        user_id: s.user_id,
        amount_minor: s.amount_minor,
        currency: s.currency,
        token: Token::new(s.payment_method_token),
        submitted_at: s.occurred_at,
    };
    if submission.token.is_empty() {
        return step.refusal("SUBMISSION_REFUSED", "empty payment method token");
    }
    match state.status {
        Status::New => {
            state.order_id = s.order_id;
            state.event_id = s.event_id;
            state.user_id = submission.user_id.clone();
            state.submission = Some(submission);
            state.status = Status::AwaitingRequest;
            step.history(
                Status::AwaitingRequest,
                "submitted before the payment was requested; parked",
            );
            expiry_timer(step, state);
        }
        // A newer submission replaces the parked one (the fan tried again).
        Status::AwaitingRequest => {
            state.submission = Some(submission);
            step.history(Status::AwaitingRequest, "parked submission replaced");
            expiry_timer(step, state);
        }
        Status::Pending => start_charge(step, state, submission),
        _ => step.ignored(format!(
            "submission for a payment that is {}",
            state.status.name()
        )),
    }
}

/// Checks a submission against the server-side request and charges, or refuses it.
fn start_charge(step: &mut Step<'_>, state: &mut PaymentState, submission: Submission) {
    debug_assert_eq!(state.status, Status::Pending);
    if submission.amount_minor != state.amount_minor || submission.currency != state.currency {
        return step.refusal(
            "SUBMISSION_REFUSED",
            format!(
                "submitted amount {} {} differs from the requested {} {}",
                submission.amount_minor, submission.currency, state.amount_minor, state.currency
            ),
        );
    }
    if submission.user_id != state.user_id {
        return step.refusal(
            "SUBMISSION_REFUSED",
            "submitted by someone other than the order's user",
        );
    }
    let token = submission.token.clone();
    state.submission = Some(submission);
    charge(step, state, token);
}

fn charge(step: &mut Step<'_>, state: &mut PaymentState, token: Token) {
    state.status = Status::Charging;
    state.charge_attempts += 1;
    step.history(
        Status::Charging,
        format!("charge attempt {}", state.charge_attempts),
    );
    // Should the answer be lost (a crash mid-call), the timer asks the provider.
    step.check_later(step.policy.pending_check_ms);
    step.fx.push(Effect::Charge {
        payment_id: state.payment_id.clone(),
        order_id: state.order_id.clone(),
        amount_minor: state.amount_minor,
        currency: state.currency.clone(),
        token,
    });
}

/// First check after an unknown outcome: doubles with every charge attempt already made, so a
/// provider that keeps losing charges is not called every second.
fn unknown_check(policy: &Policy, attempts: u32) -> Millis {
    let doublings = attempts.saturating_sub(1).min(16);
    policy
        .unknown_check_ms
        .saturating_mul(1 << doublings)
        .min(policy.max_check_ms.max(policy.unknown_check_ms))
}

fn charge_answer(
    step: &mut Step<'_>,
    state: &mut PaymentState,
    outcome: ChargeOutcome,
    source: Source,
) {
    if !matches!(state.status, Status::Charging | Status::ProviderPending) {
        return step.ignored(format!(
            "charge result for a payment that is {}",
            state.status.name()
        ));
    }
    match outcome {
        ChargeOutcome::Captured { provider_reference } => {
            state.status = Status::Captured;
            state.captured_minor = state.amount_minor;
            state.provider_reference = Some(provider_reference.clone());
            step.history(
                Status::Captured,
                format!("captured; provider reference {provider_reference}"),
            );
            step.fx
                .push(Effect::Emit(Outcome::Succeeded { provider_reference }));
        }
        ChargeOutcome::Declined { reason, message } => {
            let reason = reason.failure_reason();
            state.status = Status::Failed;
            state.failure = Some((reason, message.clone()));
            step.history(Status::Failed, format!("{reason:?}: {message}"));
            step.fx.push(Effect::Emit(Outcome::Failed {
                reason,
                detail: message,
            }));
        }
        ChargeOutcome::Pending { provider_reference } => {
            state.provider_reference = Some(provider_reference);
            if state.status != Status::ProviderPending {
                state.status = Status::ProviderPending;
                step.history(
                    Status::ProviderPending,
                    "the provider completes the charge later",
                );
            }
            // The provider's event settles it; the check is the fallback if it never comes.
            if !step.policy.skip_pending_check {
                step.check_later(step.policy.pending_check_ms);
            }
        }
        ChargeOutcome::Unknown { detail } => {
            if source == Source::Provider {
                return step.ignored("provider event without an outcome");
            }
            if step.policy.retry_charge_on_unknown
                && let Some(token) = state.submission.as_ref().map(|s| s.token.clone())
            {
                // The bug the properties catch: a blind retry may capture twice.
                return charge(step, state, token);
            }
            // The money may have moved: ask, never charge blindly. The first charge's lost
            // answer is asked for at once; anything else waits for the timer.
            if source == Source::Charge
                && state.status == Status::Charging
                && state.charge_attempts <= 1
            {
                step.ignored(format!("outcome unknown ({detail}); querying"));
                step.fx.push(Effect::Query {
                    payment_id: state.payment_id.clone(),
                });
            } else {
                step.ignored(format!("outcome unknown ({detail}); checking later"));
                let first = if state.status == Status::ProviderPending {
                    step.policy.pending_check_ms
                } else {
                    unknown_check(step.policy, state.charge_attempts)
                };
                step.check_later(first);
            }
        }
        ChargeOutcome::NotFound => {
            if source == Source::Provider {
                return step.ignored("provider event without an outcome");
            }
            if state.status == Status::ProviderPending {
                // The provider accepted it earlier: keep asking.
                step.ignored("provider does not find a charge it accepted; checking later");
                return step.check_later(step.policy.pending_check_ms);
            }
            // The provider never saw the charge: charging (same key) is safe.
            match state.submission.as_ref().map(|s| s.token.clone()) {
                Some(token) => charge(step, state, token),
                None => {
                    state.status = Status::Failed;
                    let detail = "charge lost and no payment method to retry".to_owned();
                    state.failure = Some((PaymentFailureReason::ProviderError, detail.clone()));
                    step.history(Status::Failed, detail.clone());
                    step.fx.push(Effect::Emit(Outcome::Failed {
                        reason: PaymentFailureReason::ProviderError,
                        detail,
                    }));
                }
            }
        }
    }
}

fn refund_requested(step: &mut Step<'_>, state: &mut PaymentState, r: RefundRequested) {
    if let Some(refund) = &state.refund {
        if refund.refund_id == r.refund_id {
            return step.ignored("refund already requested");
        }
        return step.refusal("REFUND_REFUSED", "the payment already has a refund");
    }
    if state.status != Status::Captured {
        return step.refusal(
            "REFUND_REFUSED",
            format!("nothing captured (payment is {})", state.status.name()),
        );
    }
    let Some(charge_reference) = state.provider_reference.clone() else {
        return step.refusal("REFUND_REFUSED", "captured without a provider reference");
    };
    let refundable = state.captured_minor - state.refunded_minor;
    if r.amount_minor <= 0 || r.amount_minor > refundable || r.currency != state.currency {
        return step.refusal(
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
    step.history(
        Status::Refunding,
        format!("refund {} {} ({:?})", r.amount_minor, r.currency, r.reason),
    );
    // Should the answer be lost, the timer asks the provider.
    step.check_later(step.policy.pending_check_ms);
    step.fx.push(Effect::Refund {
        refund_id: r.refund_id,
        charge_reference,
        amount_minor: r.amount_minor,
        currency: state.currency.clone(),
    });
}

fn refund_answer(
    step: &mut Step<'_>,
    state: &mut PaymentState,
    outcome: RefundOutcome,
    source: Source,
) {
    let (Status::Refunding, Some(refund)) = (state.status, state.refund.as_mut()) else {
        return step.ignored(format!(
            "refund result for a payment that is {}",
            state.status.name()
        ));
    };
    match outcome {
        RefundOutcome::Refunded { provider_reference } => {
            refund.provider_reference = Some(provider_reference.clone());
            state.refunded_minor += refund.amount_minor;
            let refund_id = refund.refund_id.clone();
            state.status = Status::Refunded;
            step.history(
                Status::Refunded,
                format!("refunded; provider reference {provider_reference}"),
            );
            step.fx.push(Effect::Emit(Outcome::Refunded {
                refund_id,
                provider_reference,
            }));
        }
        RefundOutcome::Failed { message } => {
            state.status = Status::RefundFailed;
            step.history(
                Status::RefundFailed,
                format!("refund refused by the provider: {message}"),
            );
        }
        RefundOutcome::Unknown { detail } => {
            // Refunds are not urgent for anyone waiting: every unknown answer waits for the
            // timer, which queries (never a blind second refund).
            let refund_id = refund.refund_id.clone();
            step.ignored(format!(
                "refund {refund_id} outcome unknown ({detail}); checking later"
            ));
            step.check_later(step.policy.unknown_check_ms);
        }
        RefundOutcome::NotFound => {
            if source == Source::Charge {
                // Only a query answers NotFound; from anything else it means nothing.
                step.ignored("refund call answered not found; checking later");
                return step.check_later(step.policy.unknown_check_ms);
            }
            // The provider never saw it: asking again with the same key is safe.
            let refund_id = refund.refund_id.clone();
            let amount_minor = refund.amount_minor;
            let charge_reference = state.provider_reference.clone().unwrap_or_default();
            step.check_later(step.policy.pending_check_ms);
            step.fx.push(Effect::Refund {
                refund_id,
                charge_reference,
                amount_minor,
                currency: state.currency.clone(),
            });
        }
    }
}

fn recover(step: &mut Step<'_>, state: &PaymentState) {
    match (state.status, &state.refund) {
        (Status::Charging | Status::ProviderPending, _) => {
            step.fx.push(Effect::Query {
                payment_id: state.payment_id.clone(),
            });
        }
        (Status::Refunding, Some(refund)) => {
            step.fx.push(Effect::QueryRefund {
                refund_id: refund.refund_id.clone(),
            });
        }
        _ => step.ignored("nothing in flight"),
    }
}

fn expire(step: &mut Step<'_>, state: &mut PaymentState) {
    match state.expires_at(step.policy.late_grace_ms) {
        Some(deadline) if step.now >= deadline => {
            state.status = Status::Expired;
            step.history(Status::Expired, "not submitted in time");
        }
        _ => step.ignored("nothing to expire"),
    }
}

fn wake(step: &mut Step<'_>, state: &mut PaymentState) {
    match state.status {
        Status::Pending | Status::AwaitingRequest => {
            expire(step, state);
            if !state.status.is_terminal() {
                // Woken early (a timer from an older deadline): sleep until the real one.
                expiry_timer(step, state);
            }
        }
        Status::Charging | Status::ProviderPending | Status::Refunding => {
            // The answers decide the next timer; until they come the current one stays.
            recover(step, state);
        }
        Status::New
        | Status::Captured
        | Status::Failed
        | Status::Expired
        | Status::Refunded
        | Status::RefundFailed => {
            step.ignored(format!("nothing to wait for ({})", state.status.name()));
            step.timer = Some(Timer::Cancel);
        }
    }
}

/// ISO 4217 shape: three upper-case letters.
fn valid_currency(currency: &str) -> bool {
    currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase())
}
