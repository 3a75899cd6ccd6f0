//! The payment gateway: what the payment processor asks a payment provider to do, the
//! providers it can be configured with ([`Gateway`]), and the sandbox provider used locally
//! and in tests. The HTTP provider lives in `provider`.
//!
//! # The trait
//!
//! [`PaymentGateway`] has four calls, each keyed by an **idempotency key** the provider dedupes
//! on: `charge` and `query` use the payment id, `refund` and `query_refund` the refund id. A
//! call repeated with the same key never moves money twice; it answers what the first call
//! did. Every answer is one of a few outcomes:
//!
//! - [`ChargeOutcome::Captured`] / [`ChargeOutcome::Declined`]: final;
//! - [`ChargeOutcome::Pending`]: accepted, completed later by the provider (an asynchronous
//!   provider: a webhook adapter turns its events into `Input::ProviderEvent`, or `query`
//!   reveals the result);
//! - [`ChargeOutcome::Unknown`]: the call timed out or broke; the money may or may not have
//!   moved. Resolved with `query` (never with a blind second charge);
//! - [`ChargeOutcome::NotFound`]: only from `query`: the provider never saw the key, so
//!   charging (with the same key) is safe.
//!
//! The processor never hands the provider card data: only the provider's own token
//! (`payment_method_token`, from client-side tokenisation). [`Token`] keeps it out of `Debug`
//! output and logs.
//!
//! `async fn` in traits (Rust 1.75+) is used directly; the runtime holds a [`Gateway`] enum, so
//! no boxing or `async_trait` is needed. A new provider is a new variant:
//! [`Gateway::Sandbox`] (in process) and [`Gateway::Provider`] (the HTTP provider API of
//! `provider`, which completes charges asynchronously and reports them by webhook).
//!
//! # The sandbox
//!
//! [`SandboxGateway`] behaves like a real provider's test mode, chosen by the token:
//!
//! | Token | Charge |
//! |---|---|
//! | `tok_success` | captured |
//! | `tok_declined` | declined (`DECLINED`) |
//! | `tok_insufficient_funds` | declined (`INSUFFICIENT_FUNDS`) |
//! | `tok_slow` | captured after the configured delay (default 2 s) |
//! | `tok_timeout` | the capture is recorded, but the call answers `Unknown`; `query` reveals it |
//! | `tok_pending` | `Pending`; `query` answers captured once the pending delay has passed (the sandbox sends no events: the processor's pending check settles it) |
//! | anything else | declined (`DECLINED`, unknown payment method) |
//!
//! It keeps a ledger of charges and refunds keyed by idempotency key (in memory, or appended
//! to a JSON-lines file so it outlives a processor restart, like a real provider does). It also
//! counts **replayed** charge calls (a `charge` for a key it already captured): the provider
//! dedupes them, but the processor should never make one, and the crash tests assert none was.

use std::collections::HashMap;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use boxoffice_avro::ids;
use boxoffice_avro::records::PaymentFailureReason;
use serde::{Deserialize, Serialize};

use super::provider::ProviderGateway;

/// A provider's payment method token. Never a card number; still never printed.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Token(String);

impl Token {
    pub fn new(token: impl Into<String>) -> Self {
        Token(token.into())
    }

    /// The token itself, for the provider call and the store only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Why a provider refused a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DeclineReason {
    Declined,
    InsufficientFunds,
    /// The provider failed for good (not a timeout): nothing was charged.
    ProviderError,
}

impl DeclineReason {
    pub fn failure_reason(self) -> PaymentFailureReason {
        match self {
            DeclineReason::Declined => PaymentFailureReason::Declined,
            DeclineReason::InsufficientFunds => PaymentFailureReason::InsufficientFunds,
            DeclineReason::ProviderError => PaymentFailureReason::ProviderError,
        }
    }
}

/// What the provider said about a charge (to `charge`, `query`, or in an asynchronous event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    Captured {
        provider_reference: String,
    },
    Declined {
        reason: DeclineReason,
        message: String,
    },
    /// Accepted; the result comes later (provider event or `query`).
    Pending {
        provider_reference: String,
    },
    /// The money may or may not have moved: ask again with `query`.
    Unknown {
        detail: String,
    },
    /// Only from `query`: the provider has no charge under this key.
    NotFound,
}

/// What the provider said about a refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundOutcome {
    Refunded {
        provider_reference: String,
    },
    /// Refused for good (for example more than was captured).
    Failed {
        message: String,
    },
    Unknown {
        detail: String,
    },
    /// Only from `query_refund`.
    NotFound,
}

/// A charge, with the payment id as its idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRequest {
    pub idempotency_key: String,
    /// Given to the provider as metadata, so its asynchronous events name the order.
    pub order_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub token: Token,
}

/// A refund, with the refund id as its idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    pub idempotency_key: String,
    /// The provider's reference of the captured charge.
    pub charge_reference: String,
    pub amount_minor: i64,
    pub currency: String,
}

/// A payment provider. Every call is idempotent by its key (see the module docs).
pub trait PaymentGateway: Send + Sync {
    fn charge(&self, request: &ChargeRequest) -> impl Future<Output = ChargeOutcome> + Send;
    fn query(&self, idempotency_key: &str) -> impl Future<Output = ChargeOutcome> + Send;
    fn refund(&self, request: &RefundRequest) -> impl Future<Output = RefundOutcome> + Send;
    fn query_refund(&self, idempotency_key: &str) -> impl Future<Output = RefundOutcome> + Send;
}

/// The providers the processor can be configured with.
#[derive(Debug)]
pub enum Gateway {
    Sandbox(SandboxGateway),
    Provider(ProviderGateway),
}

impl Gateway {
    /// Charge calls the provider saw for a key it had already captured (deduplicated by the
    /// provider; the processor should never make one). Only the sandbox knows: a remote
    /// provider counts them on its side (the test provider's `GET /_sim/stats`), so this is 0
    /// for [`Gateway::Provider`].
    pub fn replays(&self) -> u64 {
        match self {
            Gateway::Sandbox(g) => g.replays(),
            Gateway::Provider(_) => 0,
        }
    }

    /// `sandbox` or `provider`, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Gateway::Sandbox(_) => "sandbox",
            Gateway::Provider(_) => "provider",
        }
    }
}

impl PaymentGateway for Gateway {
    async fn charge(&self, request: &ChargeRequest) -> ChargeOutcome {
        match self {
            Gateway::Sandbox(g) => g.charge(request).await,
            Gateway::Provider(g) => g.charge(request).await,
        }
    }

    async fn query(&self, idempotency_key: &str) -> ChargeOutcome {
        match self {
            Gateway::Sandbox(g) => g.query(idempotency_key).await,
            Gateway::Provider(g) => g.query(idempotency_key).await,
        }
    }

    async fn refund(&self, request: &RefundRequest) -> RefundOutcome {
        match self {
            Gateway::Sandbox(g) => g.refund(request).await,
            Gateway::Provider(g) => g.refund(request).await,
        }
    }

    async fn query_refund(&self, idempotency_key: &str) -> RefundOutcome {
        match self {
            Gateway::Sandbox(g) => g.query_refund(idempotency_key).await,
            Gateway::Provider(g) => g.query_refund(idempotency_key).await,
        }
    }
}

// ------------------------------------------------------------------------------------ sandbox

pub const TOKEN_SUCCESS: &str = "tok_success";
pub const TOKEN_DECLINED: &str = "tok_declined";
pub const TOKEN_INSUFFICIENT_FUNDS: &str = "tok_insufficient_funds";
pub const TOKEN_SLOW: &str = "tok_slow";
pub const TOKEN_TIMEOUT: &str = "tok_timeout";
pub const TOKEN_PENDING: &str = "tok_pending";

/// How the sandbox behaves.
#[derive(Debug, Clone)]
pub struct SandboxSettings {
    /// How long `tok_slow` takes.
    pub slow: Duration,
    /// How long a `tok_pending` charge stays pending.
    pub pending: Duration,
    /// Where the ledger is kept (JSON lines); `None`: in memory only.
    pub ledger: Option<PathBuf>,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        SandboxSettings {
            slow: Duration::from_secs(2),
            pending: Duration::from_secs(1),
            ledger: None,
        }
    }
}

/// One line of the sandbox ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LedgerEntry {
    /// A charge the sandbox decided (the first call with this key).
    Charge {
        key: String,
        amount_minor: i64,
        currency: String,
        /// `captured`, `declined`, `insufficient_funds`, `pending`.
        outcome: String,
        reference: String,
    },
    /// A `charge` call for a key that was already captured (deduplicated, but a processor bug).
    Replay { key: String },
    Refund {
        key: String,
        charge_reference: String,
        amount_minor: i64,
        reference: String,
    },
}

#[derive(Debug, Clone)]
struct SandboxCharge {
    amount_minor: i64,
    outcome: String,
    reference: String,
    /// When a pending charge completes (in-process time; a reloaded ledger completes at once).
    completes_at: Option<Instant>,
}

#[derive(Debug, Default)]
struct Ledger {
    charges: HashMap<String, SandboxCharge>,
    refunds: HashMap<String, String>,
    /// Refunded amount per charge reference.
    refunded: HashMap<String, i64>,
    replays: u64,
}

/// A test-mode provider: behaviour chosen by the token, dedup by idempotency key.
#[derive(Debug)]
pub struct SandboxGateway {
    settings: SandboxSettings,
    ledger: Mutex<Ledger>,
}

/// The sandbox ledger could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("sandbox ledger {path}: {reason}")]
pub struct LedgerError {
    pub path: String,
    pub reason: String,
}

impl SandboxGateway {
    /// A sandbox; with a ledger file, what it holds is loaded first.
    pub fn new(settings: SandboxSettings) -> Result<Self, LedgerError> {
        let mut ledger = Ledger::default();
        if let Some(path) = &settings.ledger {
            for entry in read_ledger(path)? {
                ledger.apply(&entry);
            }
        }
        Ok(SandboxGateway {
            settings,
            ledger: Mutex::new(ledger),
        })
    }

    /// Charge calls repeated for an already captured key (should stay 0).
    pub fn replays(&self) -> u64 {
        self.lock().replays
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // A poisoned lock means a panic while holding it: the ledger itself is still whole
        // (every change is one insert).
        self.ledger
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record(&self, ledger: &mut Ledger, entry: LedgerEntry) {
        ledger.apply(&entry);
        if let Some(path) = &self.settings.ledger
            && let Err(e) = append_ledger(path, &entry)
        {
            tracing::error!(error = %e, "sandbox ledger not written");
        }
    }

    fn answer(charge: &SandboxCharge) -> ChargeOutcome {
        let provider_reference = charge.reference.clone();
        match charge.outcome.as_str() {
            "captured" => ChargeOutcome::Captured { provider_reference },
            "pending" => match charge.completes_at {
                Some(at) if Instant::now() < at => ChargeOutcome::Pending { provider_reference },
                _ => ChargeOutcome::Captured { provider_reference },
            },
            "insufficient_funds" => ChargeOutcome::Declined {
                reason: DeclineReason::InsufficientFunds,
                message: "insufficient funds".into(),
            },
            "unknown_token" => ChargeOutcome::Declined {
                reason: DeclineReason::Declined,
                message: "unknown payment method".into(),
            },
            _ => ChargeOutcome::Declined {
                reason: DeclineReason::Declined,
                message: "card declined".into(),
            },
        }
    }
}

impl Ledger {
    fn apply(&mut self, entry: &LedgerEntry) {
        match entry {
            LedgerEntry::Charge {
                key,
                amount_minor,
                outcome,
                reference,
                ..
            } => {
                self.charges.entry(key.clone()).or_insert(SandboxCharge {
                    amount_minor: *amount_minor,
                    outcome: outcome.clone(),
                    reference: reference.clone(),
                    completes_at: None,
                });
            }
            LedgerEntry::Replay { .. } => self.replays += 1,
            LedgerEntry::Refund {
                key,
                charge_reference,
                amount_minor,
                reference,
            } => {
                if self
                    .refunds
                    .insert(key.clone(), reference.clone())
                    .is_none()
                {
                    *self.refunded.entry(charge_reference.clone()).or_default() += amount_minor;
                }
            }
        }
    }
}

impl PaymentGateway for SandboxGateway {
    async fn charge(&self, request: &ChargeRequest) -> ChargeOutcome {
        let token = request.token.expose();
        if token == TOKEN_SLOW {
            tokio::time::sleep(self.settings.slow).await;
        }
        let mut ledger = self.lock();
        if let Some(existing) = ledger.charges.get(&request.idempotency_key).cloned() {
            if existing.outcome == "captured" || existing.outcome == "pending" {
                self.record(
                    &mut ledger,
                    LedgerEntry::Replay {
                        key: request.idempotency_key.clone(),
                    },
                );
            }
            return Self::answer(&existing);
        }
        let outcome = if request.amount_minor <= 0 {
            "declined"
        } else {
            match token {
                TOKEN_SUCCESS | TOKEN_SLOW | TOKEN_TIMEOUT => "captured",
                TOKEN_DECLINED => "declined",
                TOKEN_INSUFFICIENT_FUNDS => "insufficient_funds",
                TOKEN_PENDING => "pending",
                _ => "unknown_token",
            }
        };
        let reference = format!(
            "sbx_ch_{}",
            ids::derive("sandbox-charge", &[&request.idempotency_key]).simple()
        );
        self.record(
            &mut ledger,
            LedgerEntry::Charge {
                key: request.idempotency_key.clone(),
                amount_minor: request.amount_minor,
                currency: request.currency.clone(),
                outcome: outcome.to_owned(),
                reference,
            },
        );
        if let Some(charge) = ledger.charges.get_mut(&request.idempotency_key)
            && charge.outcome == "pending"
        {
            charge.completes_at = Some(Instant::now() + self.settings.pending);
        }
        let charge = ledger.charges.get(&request.idempotency_key).cloned();
        drop(ledger);
        match charge {
            // The capture happened, but the answer is "lost on the way back".
            Some(_) if token == TOKEN_TIMEOUT => ChargeOutcome::Unknown {
                detail: "gateway timeout (sandbox)".into(),
            },
            Some(charge) => Self::answer(&charge),
            None => ChargeOutcome::Unknown {
                detail: "sandbox ledger lost the charge".into(),
            },
        }
    }

    async fn query(&self, idempotency_key: &str) -> ChargeOutcome {
        match self.lock().charges.get(idempotency_key) {
            Some(charge) => Self::answer(charge),
            None => ChargeOutcome::NotFound,
        }
    }

    async fn refund(&self, request: &RefundRequest) -> RefundOutcome {
        let mut ledger = self.lock();
        if let Some(reference) = ledger.refunds.get(&request.idempotency_key) {
            return RefundOutcome::Refunded {
                provider_reference: reference.clone(),
            };
        }
        let captured = ledger
            .charges
            .values()
            .find(|c| c.reference == request.charge_reference && c.outcome == "captured")
            .map(|c| c.amount_minor);
        let Some(captured) = captured else {
            return RefundOutcome::Failed {
                message: "no captured charge with this reference".into(),
            };
        };
        let already = ledger
            .refunded
            .get(&request.charge_reference)
            .copied()
            .unwrap_or(0);
        if request.amount_minor <= 0 || already + request.amount_minor > captured {
            return RefundOutcome::Failed {
                message: "refund exceeds the captured amount".into(),
            };
        }
        let reference = format!(
            "sbx_re_{}",
            ids::derive("sandbox-refund", &[&request.idempotency_key]).simple()
        );
        self.record(
            &mut ledger,
            LedgerEntry::Refund {
                key: request.idempotency_key.clone(),
                charge_reference: request.charge_reference.clone(),
                amount_minor: request.amount_minor,
                reference: reference.clone(),
            },
        );
        RefundOutcome::Refunded {
            provider_reference: reference,
        }
    }

    async fn query_refund(&self, idempotency_key: &str) -> RefundOutcome {
        match self.lock().refunds.get(idempotency_key) {
            Some(reference) => RefundOutcome::Refunded {
                provider_reference: reference.clone(),
            },
            None => RefundOutcome::NotFound,
        }
    }
}

/// Reads a ledger file (missing file: empty ledger).
pub fn read_ledger(path: &Path) -> Result<Vec<LedgerEntry>, LedgerError> {
    let fail = |reason: String| LedgerError {
        path: path.display().to_string(),
        reason,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(fail(e.to_string())),
    };
    // A process killed mid-append leaves at most a torn last line: ignore it.
    Ok(text
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect())
}

fn append_ledger(path: &Path, entry: &LedgerEntry) -> Result<(), LedgerError> {
    let fail = |reason: String| LedgerError {
        path: path.display().to_string(),
        reason,
    };
    let mut line = serde_json::to_string(entry).map_err(|e| fail(e.to_string()))?;
    line.push('\n');
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| fail(e.to_string()))?;
    file.write_all(line.as_bytes())
        .map_err(|e| fail(e.to_string()))?;
    file.sync_data().map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(key: &str, token: &str) -> ChargeRequest {
        ChargeRequest {
            idempotency_key: key.into(),
            order_id: format!("order-{key}"),
            amount_minor: 4500,
            currency: "EUR".into(),
            token: Token::new(token),
        }
    }

    fn sandbox() -> SandboxGateway {
        SandboxGateway::new(SandboxSettings {
            slow: Duration::from_millis(10),
            pending: Duration::from_millis(30),
            ledger: None,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn tokens_choose_the_outcome() {
        let g = sandbox();
        assert!(matches!(
            g.charge(&charge("a", TOKEN_SUCCESS)).await,
            ChargeOutcome::Captured { .. }
        ));
        assert!(matches!(
            g.charge(&charge("s", TOKEN_SLOW)).await,
            ChargeOutcome::Captured { .. }
        ));
        assert!(matches!(
            g.charge(&charge("b", TOKEN_DECLINED)).await,
            ChargeOutcome::Declined {
                reason: DeclineReason::Declined,
                ..
            }
        ));
        assert!(matches!(
            g.charge(&charge("c", TOKEN_INSUFFICIENT_FUNDS)).await,
            ChargeOutcome::Declined {
                reason: DeclineReason::InsufficientFunds,
                ..
            }
        ));
        assert!(matches!(
            g.charge(&charge("d", "4242424242424242")).await,
            ChargeOutcome::Declined { .. }
        ));
        assert_eq!(g.query("never").await, ChargeOutcome::NotFound);
    }

    #[tokio::test]
    async fn a_timeout_captured_anyway_and_query_reveals_it() {
        let g = sandbox();
        assert!(matches!(
            g.charge(&charge("t", TOKEN_TIMEOUT)).await,
            ChargeOutcome::Unknown { .. }
        ));
        assert!(matches!(g.query("t").await, ChargeOutcome::Captured { .. }));
        assert_eq!(g.replays(), 0);
    }

    #[tokio::test]
    async fn the_same_key_never_captures_twice_and_replays_are_counted() {
        let g = sandbox();
        let first = g.charge(&charge("k", TOKEN_SUCCESS)).await;
        let second = g.charge(&charge("k", TOKEN_SUCCESS)).await;
        assert_eq!(first, second);
        assert_eq!(g.replays(), 1);
        // A decline is remembered too: the retry answers the same.
        let d1 = g.charge(&charge("d", TOKEN_DECLINED)).await;
        assert_eq!(d1, g.charge(&charge("d", TOKEN_SUCCESS)).await);
    }

    #[tokio::test]
    async fn pending_charges_complete_later() {
        // Pending for long enough that a descheduled test thread still queries inside it.
        let g = SandboxGateway::new(SandboxSettings {
            slow: Duration::from_millis(10),
            pending: Duration::from_millis(500),
            ledger: None,
        })
        .unwrap();
        assert!(matches!(
            g.charge(&charge("p", TOKEN_PENDING)).await,
            ChargeOutcome::Pending { .. }
        ));
        assert!(matches!(g.query("p").await, ChargeOutcome::Pending { .. }));
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(matches!(g.query("p").await, ChargeOutcome::Captured { .. }));
    }

    #[tokio::test]
    async fn refunds_never_exceed_the_capture_and_are_idempotent() {
        let g = sandbox();
        let ChargeOutcome::Captured { provider_reference } =
            g.charge(&charge("r", TOKEN_SUCCESS)).await
        else {
            panic!("captured")
        };
        let refund = |key: &str, amount| RefundRequest {
            idempotency_key: key.into(),
            charge_reference: provider_reference.clone(),
            amount_minor: amount,
            currency: "EUR".into(),
        };
        assert!(matches!(
            g.refund(&refund("x", 5000)).await,
            RefundOutcome::Failed { .. }
        ));
        let first = g.refund(&refund("r1", 4500)).await;
        assert!(matches!(first, RefundOutcome::Refunded { .. }));
        assert_eq!(g.refund(&refund("r1", 4500)).await, first);
        assert!(matches!(
            g.refund(&refund("r2", 1)).await,
            RefundOutcome::Failed { .. }
        ));
        assert_eq!(g.query_refund("r1").await, first);
        assert_eq!(g.query_refund("r2").await, RefundOutcome::NotFound);
    }

    #[tokio::test]
    async fn the_ledger_file_outlives_the_gateway() {
        let path =
            std::env::temp_dir().join(format!("sandbox-ledger-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let settings = SandboxSettings {
            ledger: Some(path.clone()),
            ..SandboxSettings::default()
        };
        let first = SandboxGateway::new(settings.clone()).unwrap();
        let captured = first.charge(&charge("k", TOKEN_TIMEOUT)).await;
        assert!(matches!(captured, ChargeOutcome::Unknown { .. }));
        drop(first);
        let second = SandboxGateway::new(settings).unwrap();
        assert!(matches!(
            second.query("k").await,
            ChargeOutcome::Captured { .. }
        ));
        let entries = read_ledger(&path).unwrap();
        assert_eq!(entries.len(), 1);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn tokens_never_show_in_debug_output() {
        let request = charge("k", "tok_secret_value");
        assert!(!format!("{request:?}").contains("tok_secret_value"));
    }
}
