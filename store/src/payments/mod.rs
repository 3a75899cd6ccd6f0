//! The payment processor's state in the CQL store: one row per payment in `payments` (the
//! seed's table, with the processor's columns added), an append-only `payment_histories`
//! with one row per state change, and `payment_timers`: when each unsettled payment must be
//! looked at again, by the `payments.requests` partition that owns it.
//!
//! # Writing: history first, then the fenced payment row
//!
//! A step writes its history rows (plain inserts, keyed `(payment_id, at, seq)` with `seq` the
//! payment's own counter) and then the payment row with one lightweight transaction:
//!
//! ```cql
//! UPDATE ks.payments SET status = ..., ..., revision = :new WHERE id = :id IF revision = :previous
//! ```
//!
//! `revision` counts the row's writes; `:previous` is `null` for a payment never saved (`IF
//! revision = null` holds when the row does not exist, as in `inventory`). A refused write
//! ([`PaymentSaveOutcome::Conflict`]) means another processor (a newer owner of the Kafka
//! partition) wrote the payment: the caller reloads. A conditional batch cannot span two
//! tables, hence two writes; history goes first so that every state the row ever shows is in
//! the history. A crash between the two leaves a history row ahead of the state; the replayed
//! step writes its entry again with the same `seq` (at a later `at`), so readers take the last
//! entry per `seq` (or simply show both: they say the same thing).
//!
//! # No card data
//!
//! The row holds the provider's payment method token only while the payment is waiting for its
//! request or being charged (a charge the provider never saw is retried with it); the processor
//! writes `''` once the payment is settled. Card numbers never reach the processor.
//!
//! # Timers
//!
//! `payment_timers` has one row per payment that waits for something outside the log (a
//! provider that completes later, a lost answer, a fan who never pays), keyed
//! `((topic, kafka_partition), payment_id)` so the processor that is given a partition loads
//! that partition's timers with one query. Plain upserts and deletes: the payment row (fenced
//! by its revision) is the truth, a timer only says when to look at it. The processor writes
//! a timer before the payment row that needs it and deletes it after the row that settles the
//! payment, so a crash leaves at worst a timer for a settled payment, which wakes it for
//! nothing and is deleted then.
//!
//! # No nulls
//!
//! Absent texts are stored as `''` and absent numbers as `0`, never as `null` (tombstones), as
//! in `inventory`.

use std::sync::Arc;

use futures::TryStreamExt;
use scylla::client::session::Session;
use scylla::errors::{ExecutionError, PagerExecutionError};
use scylla::statement::Consistency;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlTimestamp, CqlValue, Row};

use crate::schema::Keyspace;
use crate::session::{execution_is_transient, prepare_is_transient};

mod reader;
pub use reader::{PaymentReader, PaymentView};

/// One payment as stored. Absent texts are `""`, absent numbers `0`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct StoredPayment {
    pub id: String,
    pub order_id: String,
    pub event_id: String,
    pub user_id: String,
    pub amount_minor: i64,
    pub currency: String,
    /// Where the payment stands (`NEW` when another writer created the row without one).
    pub status: PaymentStatus,
    pub provider_reference: String,
    pub hold_expires_at: i64,
    pub requested: bool,
    /// The provider's token, only while needed (see the module docs).
    pub payment_method_token: String,
    pub submitted_user_id: String,
    pub submitted_amount_minor: i64,
    pub submitted_currency: String,
    pub submitted_at: i64,
    pub charge_attempts: i32,
    pub captured_minor: i64,
    pub failure_reason: String,
    pub failure_detail: String,
    pub refund_id: String,
    pub refund_amount_minor: i64,
    pub refund_reason: String,
    pub refund_reference: String,
    pub refunded_minor: i64,
    pub history_seq: i32,
    /// Offset in `payments.requests` of the last record fully applied (-1: none).
    pub applied_offset: i64,
    /// Writes so far; the next save is conditional on it.
    pub revision: i64,
    /// Milliseconds since the epoch (stored as `timestamp`).
    pub created_at: i64,
    pub updated_at: i64,
}

impl std::fmt::Debug for StoredPayment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredPayment")
            .field("id", &self.id)
            .field("order_id", &self.order_id)
            .field("status", &self.status)
            .field("amount_minor", &self.amount_minor)
            .field("currency", &self.currency)
            .field("revision", &self.revision)
            .field("applied_offset", &self.applied_offset)
            .finish_non_exhaustive()
    }
}

/// Where a payment stands, as `payments.status` stores it: the payment processor writes it,
/// ingest shows it. One wire-name table (strum, `SCREAMING_SNAKE_CASE`: `PROVIDER_PENDING`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::VariantArray,
)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentStatus {
    /// Nothing known yet (no row).
    #[default]
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

impl PaymentStatus {
    /// The stored name (`CAPTURED`).
    pub fn name(self) -> &'static str {
        self.into()
    }

    /// The status a stored name stands for.
    pub fn parse(name: &str) -> Option<PaymentStatus> {
        name.parse().ok()
    }

    /// No further step happens without a new request (a refund of a captured payment).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            PaymentStatus::Captured
                | PaymentStatus::Failed
                | PaymentStatus::Expired
                | PaymentStatus::Refunded
                | PaymentStatus::RefundFailed
        )
    }

    /// The gateway owes an answer: the runtime must resolve it (query) before anything else.
    pub fn is_in_flight(self) -> bool {
        matches!(
            self,
            PaymentStatus::Charging | PaymentStatus::ProviderPending | PaymentStatus::Refunding
        )
    }
}

#[cfg(test)]
mod status_tests {
    use super::PaymentStatus;
    use strum::VariantArray;

    #[test]
    fn every_status_reads_back_from_its_stored_name() {
        for status in PaymentStatus::VARIANTS {
            assert_eq!(PaymentStatus::parse(status.name()), Some(*status));
        }
        assert_eq!(PaymentStatus::ProviderPending.name(), "PROVIDER_PENDING");
        assert_eq!(PaymentStatus::parse("captured"), None);
    }
}

const PAYMENT_COLUMNS: &str = "id, order_id, event_id, user_id, amount_minor, currency, status, \
    provider_reference, hold_expires_at, requested, payment_method_token, submitted_user_id, \
    submitted_amount_minor, submitted_currency, submitted_at, charge_attempts, captured_minor, \
    failure_reason, failure_detail, refund_id, refund_amount_minor, refund_reason, \
    refund_reference, refunded_minor, history_seq, applied_offset, revision, created_at, \
    updated_at";

impl StoredPayment {
    /// From a row of `SELECT {PAYMENT_COLUMNS}`; a column that is null (a row another writer
    /// created with fewer columns) reads as its sentinel.
    fn from_row(row: Row) -> Result<Self, PaymentStoreError> {
        let mut columns = row.columns.into_iter();
        let mut next = || columns.next().flatten();
        let text = |v: Option<CqlValue>| match v {
            Some(CqlValue::Text(s) | CqlValue::Ascii(s)) => s,
            _ => String::new(),
        };
        let big = |v: Option<CqlValue>| match v {
            Some(CqlValue::BigInt(n)) => n,
            _ => 0,
        };
        let int = |v: Option<CqlValue>| match v {
            Some(CqlValue::Int(n)) => n,
            _ => 0,
        };
        let time = |v: Option<CqlValue>| match v {
            Some(CqlValue::Timestamp(t)) => t.0,
            _ => 0,
        };
        let id = text(next());
        let (order_id, event_id, user_id) = (text(next()), text(next()), text(next()));
        let (amount_minor, currency) = (big(next()), text(next()));
        let status = match text(next()) {
            name if name.is_empty() => PaymentStatus::New,
            name => PaymentStatus::parse(&name).ok_or_else(|| PaymentStoreError::CorruptRow {
                id: id.clone(),
                reason: format!("unknown status {name:?}"),
            })?,
        };
        Ok(StoredPayment {
            id,
            order_id,
            event_id,
            user_id,
            amount_minor,
            currency,
            status,
            provider_reference: text(next()),
            hold_expires_at: big(next()),
            requested: matches!(next(), Some(CqlValue::Boolean(true))),
            payment_method_token: text(next()),
            submitted_user_id: text(next()),
            submitted_amount_minor: big(next()),
            submitted_currency: text(next()),
            submitted_at: big(next()),
            charge_attempts: int(next()),
            captured_minor: big(next()),
            failure_reason: text(next()),
            failure_detail: text(next()),
            refund_id: text(next()),
            refund_amount_minor: big(next()),
            refund_reason: text(next()),
            refund_reference: text(next()),
            refunded_minor: big(next()),
            history_seq: int(next()),
            applied_offset: match next() {
                Some(CqlValue::BigInt(n)) => n,
                _ => -1,
            },
            revision: big(next()),
            created_at: time(next()),
            updated_at: time(next()),
        })
    }
}

/// Values of the save statement, in statement order.
#[derive(scylla::SerializeRow)]
#[scylla(flavor = "enforce_order", skip_name_checks)]
struct SaveValues<'a> {
    order_id: &'a str,
    event_id: &'a str,
    user_id: &'a str,
    amount_minor: i64,
    currency: &'a str,
    status: &'a str,
    provider_reference: &'a str,
    hold_expires_at: i64,
    requested: bool,
    payment_method_token: &'a str,
    submitted_user_id: &'a str,
    submitted_amount_minor: i64,
    submitted_currency: &'a str,
    submitted_at: i64,
    charge_attempts: i32,
    captured_minor: i64,
    failure_reason: &'a str,
    failure_detail: &'a str,
    refund_id: &'a str,
    refund_amount_minor: i64,
    refund_reason: &'a str,
    refund_reference: &'a str,
    refunded_minor: i64,
    history_seq: i32,
    applied_offset: i64,
    revision: i64,
    created_at: CqlTimestamp,
    updated_at: CqlTimestamp,
    id: &'a str,
    expected_revision: Option<i64>,
}

/// One entry of a payment's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub at: i64,
    pub seq: i32,
    pub status: String,
    pub detail: String,
}

/// When a payment must be looked at again (milliseconds since the epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentTimer {
    pub payment_id: String,
    pub due_at: i64,
}

/// What a save did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentSaveOutcome {
    Applied,
    /// Nothing written: the stored revision is `current_revision`, not the expected one.
    Conflict {
        current_revision: Option<i64>,
    },
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PaymentStoreError {
    #[error("CQL store unavailable during {operation} (retry with backoff): {source}")]
    Unavailable {
        operation: &'static str,
        #[source]
        source: BoxError,
    },
    #[error("CQL store refused {operation}: {source}")]
    Rejected {
        operation: &'static str,
        #[source]
        source: BoxError,
    },
    /// A stored row no version of the processor writes (give up: an operator must look).
    #[error("payment {id}: the stored row is unusable: {reason}")]
    CorruptRow { id: String, reason: String },
}

impl PaymentStoreError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, PaymentStoreError::Unavailable { .. })
    }

    fn execution(operation: &'static str, e: ExecutionError) -> Self {
        if execution_is_transient(&e) {
            PaymentStoreError::Unavailable {
                operation,
                source: e.into(),
            }
        } else {
            PaymentStoreError::Rejected {
                operation,
                source: e.into(),
            }
        }
    }

    fn unusable(operation: &'static str, e: impl Into<BoxError>) -> Self {
        PaymentStoreError::Rejected {
            operation,
            source: e.into(),
        }
    }
}

#[derive(Debug)]
struct Statements {
    load: PreparedStatement,
    save: PreparedStatement,
    history: PreparedStatement,
    read_history: PreparedStatement,
    schedule: PreparedStatement,
    unschedule: PreparedStatement,
    timers: PreparedStatement,
}

/// Loads and saves payments and appends their history. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PaymentStore {
    session: Arc<Session>,
    statements: Arc<Statements>,
}

impl PaymentStore {
    /// Prepares the statements. The schema must exist (`schema::ensure_schema`).
    pub async fn new(
        session: Arc<Session>,
        keyspace: &Keyspace,
    ) -> Result<Self, PaymentStoreError> {
        let payments = keyspace.table("payments");
        let histories = keyspace.table("payment_histories");
        let timers = keyspace.table("payment_timers");
        let assignments: Vec<String> = PAYMENT_COLUMNS
            .split(", ")
            .map(str::trim)
            .filter(|c| *c != "id")
            .map(|c| format!("{c} = ?"))
            .collect();
        let texts = [
            format!("SELECT {PAYMENT_COLUMNS} FROM {payments} WHERE id = ?"),
            format!(
                "UPDATE {payments} SET {} WHERE id = ? IF revision = ?",
                assignments.join(", ")
            ),
            format!(
                "INSERT INTO {histories} (payment_id, at, seq, status, detail) VALUES (?, ?, ?, ?, ?)"
            ),
            format!("SELECT at, seq, status, detail FROM {histories} WHERE payment_id = ?"),
            format!(
                "INSERT INTO {timers} (topic, kafka_partition, payment_id, due_at) VALUES (?, ?, ?, ?)"
            ),
            format!(
                "DELETE FROM {timers} WHERE topic = ? AND kafka_partition = ? AND payment_id = ?"
            ),
            format!(
                "SELECT payment_id, due_at FROM {timers} WHERE topic = ? AND kafka_partition = ?"
            ),
        ];
        let mut prepared = Vec::with_capacity(texts.len());
        for text in texts {
            prepared.push(session.prepare(text).await.map_err(|e| {
                if prepare_is_transient(&e) {
                    PaymentStoreError::Unavailable {
                        operation: "preparing statements",
                        source: e.into(),
                    }
                } else {
                    PaymentStoreError::Rejected {
                        operation: "preparing statements",
                        source: e.into(),
                    }
                }
            })?);
        }
        let [
            mut load,
            save,
            mut history,
            read_history,
            mut schedule,
            mut unschedule,
            timers,
        ]: [PreparedStatement; 7] = prepared
            .try_into()
            .map_err(|_| PaymentStoreError::unusable("preparing statements", "statement count"))?;
        // Finishes a lightweight transaction a crashed processor left half-done before reading.
        load.set_consistency(Consistency::LocalSerial);
        history.set_is_idempotent(true);
        schedule.set_is_idempotent(true);
        unschedule.set_is_idempotent(true);
        Ok(PaymentStore {
            session,
            statements: Arc::new(Statements {
                load,
                save,
                history,
                read_history,
                schedule,
                unschedule,
                timers,
            }),
        })
    }

    /// The stored payment, or `None`.
    pub async fn load(&self, payment_id: &str) -> Result<Option<StoredPayment>, PaymentStoreError> {
        const OPERATION: &str = "load payment";
        self.session
            .execute_unpaged(&self.statements.load, (payment_id,))
            .await
            .map_err(|e| PaymentStoreError::execution(OPERATION, e))?
            .into_rows_result()
            .map_err(|e| PaymentStoreError::unusable(OPERATION, e))?
            .maybe_first_row::<Row>()
            .map_err(|e| PaymentStoreError::unusable(OPERATION, e))
            .and_then(|row| row.map(StoredPayment::from_row).transpose())
    }

    /// Appends history entries (idempotent: the same entry written twice is one row).
    pub async fn append_history(
        &self,
        payment_id: &str,
        entries: &[HistoryEntry],
    ) -> Result<(), PaymentStoreError> {
        for entry in entries {
            self.session
                .execute_unpaged(
                    &self.statements.history,
                    (
                        payment_id,
                        CqlTimestamp(entry.at),
                        entry.seq,
                        &entry.status,
                        &entry.detail,
                    ),
                )
                .await
                .map_err(|e| PaymentStoreError::execution("append payment history", e))?;
        }
        Ok(())
    }

    /// Writes `payment` (its `revision` is the new one) if the stored revision is
    /// `expected_revision` (`None`: never saved).
    pub async fn save(
        &self,
        payment: &StoredPayment,
        expected_revision: Option<i64>,
    ) -> Result<PaymentSaveOutcome, PaymentStoreError> {
        const OPERATION: &str = "save payment";
        let p = payment;
        let values = SaveValues {
            order_id: &p.order_id,
            event_id: &p.event_id,
            user_id: &p.user_id,
            amount_minor: p.amount_minor,
            currency: &p.currency,
            status: p.status.name(),
            provider_reference: &p.provider_reference,
            hold_expires_at: p.hold_expires_at,
            requested: p.requested,
            payment_method_token: &p.payment_method_token,
            submitted_user_id: &p.submitted_user_id,
            submitted_amount_minor: p.submitted_amount_minor,
            submitted_currency: &p.submitted_currency,
            submitted_at: p.submitted_at,
            charge_attempts: p.charge_attempts,
            captured_minor: p.captured_minor,
            failure_reason: &p.failure_reason,
            failure_detail: &p.failure_detail,
            refund_id: &p.refund_id,
            refund_amount_minor: p.refund_amount_minor,
            refund_reason: &p.refund_reason,
            refund_reference: &p.refund_reference,
            refunded_minor: p.refunded_minor,
            history_seq: p.history_seq,
            applied_offset: p.applied_offset,
            revision: p.revision,
            created_at: CqlTimestamp(p.created_at),
            updated_at: CqlTimestamp(p.updated_at),
            id: &p.id,
            expected_revision,
        };
        let result = self
            .session
            .execute_unpaged(&self.statements.save, values)
            .await
            .map_err(|e| PaymentStoreError::execution(OPERATION, e))?;
        let rows = result
            .into_rows_result()
            .map_err(|e| PaymentStoreError::unusable(OPERATION, e))?;
        let revision_column = rows
            .column_specs()
            .iter()
            .position(|spec| spec.name() == "revision");
        let row: Row = rows
            .first_row::<Row>()
            .map_err(|e| PaymentStoreError::unusable(OPERATION, e))?;
        match row.columns.first() {
            Some(Some(CqlValue::Boolean(true))) => Ok(PaymentSaveOutcome::Applied),
            Some(Some(CqlValue::Boolean(false))) => {
                let current_revision = revision_column.and_then(|i| row.columns.get(i)).and_then(
                    |value| match value {
                        Some(CqlValue::BigInt(revision)) => Some(*revision),
                        _ => None,
                    },
                );
                Ok(PaymentSaveOutcome::Conflict { current_revision })
            }
            other => Err(PaymentStoreError::unusable(
                OPERATION,
                format!("first column is not [applied]: {other:?}"),
            )),
        }
    }

    /// A payment's history, oldest first.
    pub async fn history(&self, payment_id: &str) -> Result<Vec<HistoryEntry>, PaymentStoreError> {
        const OPERATION: &str = "read payment history";
        self.session
            .execute_iter(self.statements.read_history.clone(), (payment_id,))
            .await
            .map_err(|e: PagerExecutionError| PaymentStoreError::unusable(OPERATION, e))?
            .rows_stream::<(CqlTimestamp, i32, String, String)>()
            .map_err(|e| PaymentStoreError::unusable(OPERATION, e))?
            .map_ok(|(at, seq, status, detail)| HistoryEntry {
                at: at.0,
                seq,
                status,
                detail,
            })
            .try_collect()
            .await
            .map_err(|e| PaymentStoreError::unusable(OPERATION, e))
    }

    /// Sets the payment's timer in `topic`'s `partition` (replacing an earlier one).
    pub async fn schedule(
        &self,
        topic: &str,
        partition: i32,
        payment_id: &str,
        due_at: i64,
    ) -> Result<(), PaymentStoreError> {
        self.session
            .execute_unpaged(
                &self.statements.schedule,
                (topic, partition, payment_id, due_at),
            )
            .await
            .map_err(|e| PaymentStoreError::execution("schedule payment timer", e))?;
        Ok(())
    }

    /// Removes the payment's timer (nothing when it has none).
    pub async fn unschedule(
        &self,
        topic: &str,
        partition: i32,
        payment_id: &str,
    ) -> Result<(), PaymentStoreError> {
        self.session
            .execute_unpaged(&self.statements.unschedule, (topic, partition, payment_id))
            .await
            .map_err(|e| PaymentStoreError::execution("delete payment timer", e))?;
        Ok(())
    }

    /// Every timer of `topic`'s `partition`.
    pub async fn timers(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Vec<PaymentTimer>, PaymentStoreError> {
        const OPERATION: &str = "read payment timers";
        self.session
            .execute_iter(self.statements.timers.clone(), (topic, partition))
            .await
            .map_err(|e: PagerExecutionError| PaymentStoreError::Unavailable {
                operation: OPERATION,
                source: e.into(),
            })?
            .rows_stream::<(String, i64)>()
            .map_err(|e| PaymentStoreError::unusable(OPERATION, e))?
            .map_ok(|(payment_id, due_at)| PaymentTimer { payment_id, due_at })
            .try_collect()
            .await
            .map_err(|e| PaymentStoreError::Unavailable {
                operation: OPERATION,
                source: e.into(),
            })
    }
}
