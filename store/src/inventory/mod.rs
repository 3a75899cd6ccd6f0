//! The booking processor's per-event state in the CQL store (table `event_inventory`, see
//! `schema`): load it when a processor is given an event's partition, save it with the Kafka
//! offset it was computed from.
//!
//! Plain row types here ([`StoredEvent`], [`StoredConfig`], [`StoredOrder`]); the processors
//! crate converts them to and from its `EventState` (sinks does not depend on processors).
//!
//! # Saving: one conditional batch, fenced by the applied offset
//!
//! [`InventoryStore::save`] writes everything that changed in ONE single-partition LOGGED batch:
//!
//! ```cql
//! BEGIN BATCH
//!   UPDATE ks.event_inventory SET applied_offset = :new, configured = true, name = ..., held = ...,
//!          sold = ..., sequence = ... WHERE event_id = :e IF applied_offset = :previous;
//!   INSERT INTO ks.event_inventory (event_id, order_id, user_id, ...) VALUES (:e, :o1, ...);
//!   INSERT INTO ks.event_inventory (event_id, order_id, user_id, ...) VALUES (:e, :o2, ...);
//!   ...
//! APPLY BATCH
//! ```
//!
//! The batch applies only if the stored `applied_offset` is still the one this owner loaded or
//! last saved; otherwise nothing of it is written and the answer is [`SaveOutcome::Conflict`]
//! with the offset someone else (a newer owner of the partition) stored: the caller is fenced.
//! For an event never saved, `:previous` is bound to `null`: `IF applied_offset = null` holds
//! when the partition does not exist, and also when it holds rows but no static columns
//! (verified on Cassandra 5.0.6; ScyllaDB documents the same: a missing value compares equal
//! to null). So one prepared statement serves both cases; `IF NOT EXISTS` is not needed (it also
//! works for a statics-only insert in a batch on Cassandra 5, but would be a second statement).
//! A refused batch answers `[applied] = false` followed by the current row (`event_id`,
//! `order_id` of the first row, `applied_offset`); the store reads `[applied]` by position and
//! `applied_offset` by name.
//!
//! ## Why never more than one batch per save
//!
//! `batch_size_fail_threshold` (640 KiB in our stack) applies only to batches spanning more than
//! one partition (CASSANDRA-10876; ScyllaDB has the same rule). Ours is single-partition, so the
//! limits are the CQL frame and the commit log's largest mutation (16 MiB by default on both).
//! Measured on Cassandra 5: 20,000 rows of ~240 bytes (about 5 MB) in one conditional batch
//! applied in 0.6 s; the same rows spread over two partitions were refused ("Batch too large").
//! [`MAX_SAVE_BYTES`] keeps a save well below the limits (about 15,000 typical orders), and its
//! Paxos round well inside the default 2 s write timeout: at 8 MiB, a save on a busy 2-core node
//! timed out (`WriteTimeout`, `write_type: CAS`), and a timed-out conditional write has an
//! unknown outcome that the caller must then resolve by reloading.
//!
//! Writing the order rows first, in separate unconditional batches, and then the fenced
//! statics, was considered and rejected: it is not crash-safe and not fence-safe.
//! - A crash between the order rows and the statics leaves rows from offset N beside statics
//!   from offset P < N. The row's value as of P is overwritten and cannot be recovered, and the
//!   next owner replays P+1..N on that mix: an order already present is taken as a duplicate
//!   while `held` does not count it, and the event can be oversold.
//! - A zombie (a previous owner that has not noticed it lost the partition) can overwrite a row
//!   the new owner already advanced with an older value; the fence on the statics stops only
//!   the zombie's statics, not its earlier unconditional row writes.
//!
//! So a save is atomic or refused. A caller with more changes than [`MAX_SAVE_BYTES`] allows
//! must save more often (any record boundary is a valid save point, since the state after each
//! record is a complete state with that record's offset); [`StoredEventUpdate::estimated_bytes`]
//! tells it when. [`InventoryStore::save`] refuses an oversized update with
//! [`StoreError::TooLarge`] before sending anything.
//!
//! # No nulls: absent values are stored as sentinels
//!
//! Writing `null` to a column writes a tombstone, and reads count tombstones: Cassandra warns
//! from 1,000 (`tombstone_warn_threshold`, verified: 2,000 rows with two null columns "Read 2000
//! live rows and 4000 tombstone cells") and fails the read from 100,000. An event with 50,000
//! orders and a few absent fields each would become unloadable. So optional values are stored
//! as sentinels and never as null: an absent text is `''` (payment id, reject and cancel
//! reasons, category id) and an absent hold deadline is `0`. In the orders (which the
//! processor generates) `Some("")` and `Some(0)` are therefore refused as bad data; an empty
//! category id (organisers' input) is stored, and loaded back, as none. Config columns of an event without configuration are left
//! unset (never written), not nulled.
//!
//! # The order index
//!
//! Each save of an event whose every save was indexed (`order_digests_complete`) also writes
//! one index row in the same batch (clustering key [`index_row_key`], blob `order_digests`, see
//! `index.rs`): digests of the orders the save changed, and the ids of those that are live. So
//! [`InventoryStore::load_for_assignment`] reads the statics, the index rows and only the live
//! orders' rows (`IN` reads of 200 ids, 8 in flight), however many orders the event decided;
//! [`InventoryStore::read_some_orders`] reads an ended order back when a command needs it.
//! Order ids starting with a NUL are refused: index rows live there.
//!
//! # Loading: paged, and a consistent snapshot
//!
//! [`InventoryStore::load`] reads the static columns at `LOCAL_SERIAL` (so a lightweight
//! transaction left half-done by a crashed owner is finished first), then every order row in
//! pages of [`ORDER_PAGE_SIZE`] (or, for an assignment, the index and the live orders), then
//! the applied offset again. Pages are separate reads, so if
//! the offset moved meanwhile (a concurrent save), the load starts over (at most
//! [`LOAD_ATTEMPTS`] times, then [`StoreError::Unstable`], which is retryable).
//!
//! # Consistency
//!
//! The driver defaults apply: `LOCAL_QUORUM` for reads and writes, `LOCAL_SERIAL` for the
//! conditions. That is correct while every booking processor of one consumer group runs in one
//! data centre (the Kafka cluster's), which is how the pipeline is deployed.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::errors::{ExecutionError, NextRowError, PagerExecutionError, PrepareError};
use scylla::statement::Consistency;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};

use crate::schema::Keyspace;
use crate::session::{execution_is_transient, next_page_is_transient, prepare_is_transient};

mod index;
mod reader;
pub use index::{
    INDEX_ROW_PREFIX, INDEX_ROWS_END, MAX_ORDER_ID_BYTES, StoredIndexEntry, index_row_key,
};
pub use reader::{InventoryReader, StoredCounters, StoredDecision};

/// Order rows fetched per page when loading an event.
pub const ORDER_PAGE_SIZE: i32 = 5_000;
/// Largest estimated request one save may send (see the module docs): about 15,000 orders.
pub const MAX_SAVE_BYTES: usize = 4 * 1024 * 1024;
/// A batch holds at most `u16::MAX` statements; one is the statics update.
pub const MAX_ORDERS_PER_SAVE: usize = u16::MAX as usize - 1;
/// How often a load starts over when a concurrent save moved the offset under it.
pub const LOAD_ATTEMPTS: usize = 3;
/// Index rows fetched per page: a row holds up to a save's orders (at most about 800 KB for
/// the largest batch), so a page stays well inside a CQL frame (16 MiB by default).
const INDEX_PAGE_ROWS: i32 = 8;
/// Live orders read per `IN` query during an assignment, and queries in flight.
const LIVE_ORDERS_PER_READ: usize = 200;
const LIVE_READS_IN_FLIGHT: usize = 8;

/// The stored form of an absent text value (never `null`: see the module docs).
const NO_TEXT: &str = "";
/// The stored form of an absent hold deadline.
const NO_MILLIS: i64 = 0;

/// Where an order stands (the lifecycle in ARCHITECTURE.md, without `PENDING`, which only
/// ingest knows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoredStatus {
    Reserved,
    Confirmed,
    Rejected,
    Expired,
    Cancelled,
}

impl StoredStatus {
    pub const ALL: [StoredStatus; 5] = [
        StoredStatus::Reserved,
        StoredStatus::Confirmed,
        StoredStatus::Rejected,
        StoredStatus::Expired,
        StoredStatus::Cancelled,
    ];

    /// The stored (and wire) name: `RESERVED`, `CONFIRMED`, ...
    pub fn as_str(&self) -> &'static str {
        match self {
            StoredStatus::Reserved => "RESERVED",
            StoredStatus::Confirmed => "CONFIRMED",
            StoredStatus::Rejected => "REJECTED",
            StoredStatus::Expired => "EXPIRED",
            StoredStatus::Cancelled => "CANCELLED",
        }
    }
}

impl fmt::Display for StoredStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status name that is not one of [`StoredStatus::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown order status {0:?} (expected RESERVED, CONFIRMED, REJECTED, EXPIRED or CANCELLED)"
)]
pub struct UnknownStatus(pub String);

impl FromStr for StoredStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StoredStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// What an organiser set for an event. Times in ms since the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredConfig {
    pub name: String,
    /// Organisers' input: `Some("")` is stored as `None` (the empty text is the stored form
    /// of `None`).
    pub category_id: Option<String>,
    pub capacity: i32,
    pub price_minor: i64,
    pub currency: String,
    pub sale_starts_at: i64,
    pub sale_ends_at: i64,
    pub hold_ms: i64,
    pub max_per_order: i32,
    pub max_per_user: i32,
    pub updated_at: i64,
    pub updated_by_record: String,
}

/// One decided order of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOrder {
    pub order_id: String,
    pub user_id: String,
    pub slots: i32,
    pub amount_minor: i64,
    pub currency: String,
    /// `Some("")` cannot be stored.
    pub payment_id: Option<String>,
    /// Stored as its name (`RESERVED`, ...); a row with any other name is bad data on load.
    pub status: StoredStatus,
    /// Deadline of the hold (ms since the epoch); `Some(0)` cannot be stored.
    pub hold_expires_at: Option<i64>,
    /// `Some("")` cannot be stored.
    pub reject_reason: Option<String>,
    /// `Some("")` cannot be stored.
    pub cancel_reason: Option<String>,
    pub late: bool,
    pub refunded: bool,
    /// The booking request's `Idempotency-Key` (reuse with another body is detected against
    /// it). `Some("")` cannot be stored.
    pub idempotency_key: Option<String>,
}

/// An event's state as stored: what [`InventoryStore::load`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub event_id: String,
    /// The Kafka offset of the last record folded into this state; the next record to apply
    /// is the one after it. `None` only for a partition that has rows but was never saved.
    pub applied_offset: Option<i64>,
    pub config: Option<StoredConfig>,
    pub held: i32,
    pub sold: i32,
    pub sequence: i64,
    /// Order facts published for the event's commands up to `applied_offset` (0 when never
    /// recorded).
    pub decisions: i64,
    /// Their digest (32 hex digits, see `EventProgress`); empty when never recorded (a state
    /// saved before digests existed).
    pub decision_digest: String,
    /// Whether every save of this event wrote an index row (events first saved by a build
    /// with the order index); `false` for older states, which are always loaded in full.
    pub indexed: bool,
    /// `None`: `orders` holds every order of the event, ordered by `order_id` ([`InventoryStore::load`]).
    /// `Some`: the index rows' entries in save order, and `orders` holds only the live orders
    /// ([`InventoryStore::load_for_assignment`] of an indexed event).
    pub index: Option<Vec<StoredIndexEntry>>,
    pub orders: Vec<StoredOrder>,
}

/// One save: the event-level state in full, and only the orders that changed since the
/// previous save.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEventUpdate {
    pub event_id: String,
    /// The offset stored now, as loaded or last saved by this owner (`None`: never saved).
    pub previous_offset: Option<i64>,
    /// The offset of the last record folded into this state; greater than `previous_offset`.
    pub new_offset: i64,
    /// `None` (the event has no configuration yet) leaves stored configuration untouched.
    pub config: Option<StoredConfig>,
    pub held: i32,
    pub sold: i32,
    pub sequence: i64,
    /// Order facts the event's commands produced up to `new_offset`, and their digest (32 hex
    /// digits; empty for "unknown", a state saved before digests existed).
    pub decisions: i64,
    pub decision_digest: String,
    /// Orders created or changed since `previous_offset`; each order id at most once.
    pub changed_orders: Vec<StoredOrder>,
    /// The index entries of the changed orders, written as one index row; `None` for an event
    /// whose stored state predates the index (it stays unindexed).
    pub index_entries: Option<Vec<StoredIndexEntry>>,
}

/// What a save did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveOutcome {
    /// Everything was written, atomically; the stored offset is now `new_offset`.
    Applied,
    /// Nothing was written: the stored offset is not `previous_offset`. Either someone else (a
    /// newer owner of the partition) stored `current_offset` (it is ahead), or the store lost
    /// writes it had acknowledged (it is behind, or `None`). Either way this owner's view is
    /// stale and it must rebuild before writing again. After a save that failed with a timeout
    /// and was retried, `current_offset == Some(new_offset)` usually means the first attempt
    /// did land.
    Conflict { current_offset: Option<i64> },
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a store operation failed. [`StoreError::is_retryable`] tells the caller whether to retry
/// with backoff or to stop.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store did not answer in time, not enough replicas were up, it was overloaded, or the
    /// connection broke. Retry with backoff. For a save this includes timeouts whose outcome is
    /// unknown: the retried save is either applied or answers `Conflict` with the offset.
    #[error("CQL store unavailable during {operation} (retry with backoff): {source}")]
    Unavailable {
        operation: &'static str,
        #[source]
        source: BoxError,
    },
    /// The store refused the request or answered something unusable (missing schema, invalid
    /// query, wrong column types, no permission). Retrying does not help.
    #[error("CQL store refused {operation}: {source}")]
    Rejected {
        operation: &'static str,
        #[source]
        source: BoxError,
    },
    /// The values to save, or the stored row, break the store's rules.
    #[error("bad inventory data for event {event_id}: {reason}")]
    BadData { event_id: String, reason: String },
    /// One save would be too large for one atomic batch; save more often.
    #[error(
        "save of event {event_id} too large for one atomic batch: {orders} orders, about {estimated_bytes} bytes (at most {max_orders} orders and {max_bytes} bytes); save more often"
    )]
    TooLarge {
        event_id: String,
        orders: usize,
        estimated_bytes: usize,
        max_orders: usize,
        max_bytes: usize,
    },
    /// Saves kept moving the event's offset while it was being loaded.
    #[error("event {event_id} kept changing while it was loaded ({attempts} attempts); retry")]
    Unstable { event_id: String, attempts: usize },
}

impl StoreError {
    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable { .. } | StoreError::Unstable { .. }
        )
    }

    fn bad(event_id: &str, reason: impl Into<String>) -> Self {
        StoreError::BadData {
            event_id: event_id.to_owned(),
            reason: reason.into(),
        }
    }

    fn classify(operation: &'static str, transient: bool, source: BoxError) -> Self {
        if transient {
            StoreError::Unavailable { operation, source }
        } else {
            StoreError::Rejected { operation, source }
        }
    }

    pub(crate) fn execution(operation: &'static str, e: ExecutionError) -> Self {
        Self::classify(operation, execution_is_transient(&e), e.into())
    }

    pub(crate) fn prepare(operation: &'static str, e: PrepareError) -> Self {
        Self::classify(operation, prepare_is_transient(&e), e.into())
    }

    fn pager(operation: &'static str, e: PagerExecutionError) -> Self {
        let transient = match &e {
            PagerExecutionError::PrepareError(p) => prepare_is_transient(p),
            PagerExecutionError::NextPageError(p) => next_page_is_transient(p),
            _ => false,
        };
        Self::classify(operation, transient, e.into())
    }

    fn next_row(operation: &'static str, e: NextRowError) -> Self {
        let transient = match &e {
            NextRowError::NextPageError(p) => next_page_is_transient(p),
            _ => false,
        };
        Self::classify(operation, transient, e.into())
    }

    fn unusable(operation: &'static str, e: impl Into<BoxError>) -> Self {
        StoreError::Rejected {
            operation,
            source: e.into(),
        }
    }
}

/// Bytes one text value takes in a request (length prefix and UTF-8).
fn text_bytes(s: &str) -> usize {
    4 + s.len()
}

/// Per statement in a batch: kind, prepared id, value count.
const STATEMENT_OVERHEAD: usize = 1 + 2 + 16 + 2;

impl StoredOrder {
    fn estimated_bytes(&self, event_id: &str) -> usize {
        STATEMENT_OVERHEAD
            + text_bytes(event_id)
            + text_bytes(&self.order_id)
            + text_bytes(&self.user_id)
            + (4 + 4)
            + (4 + 8)
            + text_bytes(&self.currency)
            + text_bytes(self.payment_id.as_deref().unwrap_or(NO_TEXT))
            + text_bytes(self.status.as_str())
            + (4 + 8)
            + text_bytes(self.reject_reason.as_deref().unwrap_or(NO_TEXT))
            + text_bytes(self.cancel_reason.as_deref().unwrap_or(NO_TEXT))
            + 2 * (4 + 1)
            + text_bytes(self.idempotency_key.as_deref().unwrap_or(NO_TEXT))
    }
}

impl StoredEventUpdate {
    /// About how many bytes the save's request takes; a save is refused above
    /// [`MAX_SAVE_BYTES`]. Cheap: callers may check it while accumulating changes.
    pub fn estimated_bytes(&self) -> usize {
        let config = self.config.as_ref().map_or(0, |c| {
            text_bytes(&c.name)
                + text_bytes(c.category_id.as_deref().unwrap_or(NO_TEXT))
                + text_bytes(&c.currency)
                + text_bytes(&c.updated_by_record)
                + 10 * (4 + 8)
        });
        let statics = STATEMENT_OVERHEAD
            + text_bytes(&self.event_id)
            + text_bytes(&self.decision_digest)
            + 7 * (4 + 8)
            + config;
        let index = self.index_entries.as_ref().map_or(0, |entries| {
            STATEMENT_OVERHEAD
                + text_bytes(&self.event_id)
                + 4
                + 20
                + 4
                + 1
                + entries
                    .iter()
                    .map(StoredIndexEntry::encoded_len)
                    .sum::<usize>()
        });
        statics
            + index
            + self
                .changed_orders
                .iter()
                .map(|o| o.estimated_bytes(&self.event_id))
                .sum::<usize>()
    }

    /// Checks the rules the store relies on; the save sends nothing when they fail.
    pub fn validate(&self) -> Result<(), StoreError> {
        let event_id = self.event_id.as_str();
        let bad = |reason: String| Err(StoreError::bad(event_id, reason));
        if event_id.is_empty() {
            return bad("empty event id".to_owned());
        }
        if self.new_offset < 0 {
            return bad(format!("negative new offset {}", self.new_offset));
        }
        if let Some(previous) = self.previous_offset
            && previous >= self.new_offset
        {
            return bad(format!(
                "new offset {} is not after the previous offset {previous}",
                self.new_offset
            ));
        }
        if self.held < 0 || self.sold < 0 || self.sequence < 0 || self.decisions < 0 {
            return bad(format!(
                "negative counters: held {} sold {} sequence {} decisions {}",
                self.held, self.sold, self.sequence, self.decisions
            ));
        }
        let digest = &self.decision_digest;
        if !digest.is_empty()
            && (digest.len() != 32 || !digest.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return bad(format!("decision digest {digest:?} is not 32 hex digits"));
        }
        if let Some(config) = &self.config
            && (config.capacity < 0 || config.max_per_order < 0 || config.max_per_user < 0)
        {
            return bad(format!(
                "negative capacity {} or limits {}/{}",
                config.capacity, config.max_per_order, config.max_per_user
            ));
        }
        let mut seen = HashSet::with_capacity(self.changed_orders.len());
        for order in &self.changed_orders {
            let id = &order.order_id;
            if id.is_empty() || id.starts_with('\0') {
                // A leading NUL is where index rows live (`INDEX_ROW_PREFIX`).
                return bad(format!("order id {id:?} is empty or starts with NUL"));
            }
            if !seen.insert(id.as_str()) {
                // Two rows for one order in one batch get the same write timestamp, and
                // the stored result would be a mix of both.
                return bad(format!("order {id} appears twice in one save"));
            }
            if order.slots < 0 {
                return bad(format!("order {id}: negative slots {}", order.slots));
            }
            for (field, value) in [
                ("payment_id", &order.payment_id),
                ("reject_reason", &order.reject_reason),
                ("cancel_reason", &order.cancel_reason),
                ("idempotency_key", &order.idempotency_key),
            ] {
                if value.as_deref() == Some(NO_TEXT) {
                    return bad(format!(
                        "order {id}: {field} Some(\"\") (store None instead)"
                    ));
                }
            }
            if order.hold_expires_at == Some(NO_MILLIS) {
                return bad(format!(
                    "order {id}: hold_expires_at Some(0) (store None instead)"
                ));
            }
        }
        let orders = self.changed_orders.len();
        let estimated_bytes = self.estimated_bytes();
        if orders > MAX_ORDERS_PER_SAVE || estimated_bytes > MAX_SAVE_BYTES {
            return Err(StoreError::TooLarge {
                event_id: event_id.to_owned(),
                orders,
                estimated_bytes,
                max_orders: MAX_ORDERS_PER_SAVE,
                max_bytes: MAX_SAVE_BYTES,
            });
        }
        Ok(())
    }
}

fn text_or_none(value: &Option<String>) -> &str {
    value.as_deref().unwrap_or(NO_TEXT)
}

fn none_if_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| v != NO_TEXT)
}

/// Values of the statics update of an event with configuration (statement order).
#[derive(scylla::SerializeRow)]
#[scylla(flavor = "enforce_order", skip_name_checks)]
struct ConfiguredStatics<'a> {
    applied_offset: i64,
    name: &'a str,
    category_id: &'a str,
    capacity: i32,
    price_minor: i64,
    currency: &'a str,
    sale_starts_at: i64,
    sale_ends_at: i64,
    hold_ms: i64,
    max_per_order: i32,
    max_per_user: i32,
    updated_at: i64,
    updated_by_record: &'a str,
    held: i32,
    sold: i32,
    sequence: i64,
    decisions: i64,
    decision_digest: &'a str,
    indexed: bool,
    event_id: &'a str,
    expected_offset: Option<i64>,
}

/// Values of the statics update of an event without configuration.
#[derive(scylla::SerializeRow)]
#[scylla(flavor = "enforce_order", skip_name_checks)]
struct UnconfiguredStatics<'a> {
    applied_offset: i64,
    held: i32,
    sold: i32,
    sequence: i64,
    decisions: i64,
    decision_digest: &'a str,
    indexed: bool,
    event_id: &'a str,
    expected_offset: Option<i64>,
}

/// Values of one index row.
#[derive(scylla::SerializeRow)]
#[scylla(flavor = "enforce_order", skip_name_checks)]
struct IndexValues<'a> {
    event_id: &'a str,
    row_key: String,
    entries: Vec<u8>,
}

/// Values of one order row.
#[derive(scylla::SerializeRow)]
#[scylla(flavor = "enforce_order", skip_name_checks)]
struct OrderValues<'a> {
    event_id: &'a str,
    order_id: &'a str,
    user_id: &'a str,
    slots: i32,
    amount_minor: i64,
    order_currency: &'a str,
    payment_id: &'a str,
    status: &'a str,
    hold_expires_at: i64,
    reject_reason: &'a str,
    cancel_reason: &'a str,
    late: bool,
    refunded: bool,
    idempotency_key: &'a str,
}

impl<'a> OrderValues<'a> {
    fn new(event_id: &'a str, order: &'a StoredOrder) -> Self {
        OrderValues {
            event_id,
            order_id: &order.order_id,
            user_id: &order.user_id,
            slots: order.slots,
            amount_minor: order.amount_minor,
            order_currency: &order.currency,
            payment_id: text_or_none(&order.payment_id),
            status: order.status.as_str(),
            hold_expires_at: order.hold_expires_at.unwrap_or(NO_MILLIS),
            reject_reason: text_or_none(&order.reject_reason),
            cancel_reason: text_or_none(&order.cancel_reason),
            late: order.late,
            refunded: order.refunded,
            idempotency_key: text_or_none(&order.idempotency_key),
        }
    }
}

/// The values of one save's batch: the statics first, then one entry per order row.
enum SaveValues<'a> {
    Configured(ConfiguredStatics<'a>),
    Unconfigured(UnconfiguredStatics<'a>),
    Order(OrderValues<'a>),
    Index(IndexValues<'a>),
}

impl scylla::serialize::row::SerializeRow for SaveValues<'_> {
    fn serialize(
        &self,
        ctx: &scylla::serialize::row::RowSerializationContext<'_>,
        writer: &mut scylla::serialize::writers::RowWriter,
    ) -> Result<(), scylla::serialize::SerializationError> {
        match self {
            SaveValues::Configured(v) => v.serialize(ctx, writer),
            SaveValues::Unconfigured(v) => v.serialize(ctx, writer),
            SaveValues::Order(v) => v.serialize(ctx, writer),
            SaveValues::Index(v) => v.serialize(ctx, writer),
        }
    }

    fn is_empty(&self) -> bool {
        false
    }
}

/// The static columns as read back.
#[derive(scylla::DeserializeRow)]
struct StaticsRow {
    applied_offset: Option<i64>,
    configured: Option<bool>,
    name: Option<String>,
    category_id: Option<String>,
    capacity: Option<i32>,
    price_minor: Option<i64>,
    currency: Option<String>,
    sale_starts_at: Option<i64>,
    sale_ends_at: Option<i64>,
    hold_ms: Option<i64>,
    max_per_order: Option<i32>,
    max_per_user: Option<i32>,
    updated_at: Option<i64>,
    updated_by_record: Option<String>,
    held: Option<i32>,
    sold: Option<i32>,
    sequence: Option<i64>,
    decisions: Option<i64>,
    decision_digest: Option<String>,
    order_digests_complete: Option<bool>,
}

const STATICS_COLUMNS: &str = "applied_offset, configured, name, category_id, capacity, \
    price_minor, currency, sale_starts_at, sale_ends_at, hold_ms, max_per_order, max_per_user, \
    updated_at, updated_by_record, held, sold, sequence, decisions, decision_digest, order_digests_complete";

/// One order row as read back. All optional: a partition with static columns only answers one
/// row whose clustering and regular columns are all null.
#[derive(scylla::DeserializeRow)]
struct OrderRow {
    order_id: Option<String>,
    user_id: Option<String>,
    slots: Option<i32>,
    amount_minor: Option<i64>,
    order_currency: Option<String>,
    payment_id: Option<String>,
    status: Option<String>,
    hold_expires_at: Option<i64>,
    reject_reason: Option<String>,
    cancel_reason: Option<String>,
    late: Option<bool>,
    refunded: Option<bool>,
    idempotency_key: Option<String>,
}

const ORDER_COLUMNS: &str = "order_id, user_id, slots, amount_minor, order_currency, \
    payment_id, status, hold_expires_at, reject_reason, cancel_reason, late, refunded, \
    idempotency_key";

fn missing(event_id: &str, what: &str) -> StoreError {
    StoreError::bad(event_id, format!("stored {what} is null"))
}

impl StaticsRow {
    fn config(self, event_id: &str) -> Result<Option<StoredConfig>, StoreError> {
        if self.configured != Some(true) {
            return Ok(None);
        }
        let m = |what| missing(event_id, what);
        Ok(Some(StoredConfig {
            name: self.name.ok_or_else(|| m("name"))?,
            category_id: none_if_empty(self.category_id),
            capacity: self.capacity.ok_or_else(|| m("capacity"))?,
            price_minor: self.price_minor.ok_or_else(|| m("price_minor"))?,
            currency: self.currency.ok_or_else(|| m("currency"))?,
            sale_starts_at: self.sale_starts_at.ok_or_else(|| m("sale_starts_at"))?,
            sale_ends_at: self.sale_ends_at.ok_or_else(|| m("sale_ends_at"))?,
            hold_ms: self.hold_ms.ok_or_else(|| m("hold_ms"))?,
            max_per_order: self.max_per_order.ok_or_else(|| m("max_per_order"))?,
            max_per_user: self.max_per_user.ok_or_else(|| m("max_per_user"))?,
            updated_at: self.updated_at.ok_or_else(|| m("updated_at"))?,
            updated_by_record: self
                .updated_by_record
                .ok_or_else(|| m("updated_by_record"))?,
        }))
    }
}

impl OrderRow {
    /// `None` for the all-null row of a statics-only partition.
    fn into_order(self, event_id: &str) -> Result<Option<StoredOrder>, StoreError> {
        let Some(order_id) = self.order_id.filter(|id| !id.starts_with(INDEX_ROW_PREFIX)) else {
            return Ok(None);
        };
        let m = |what: &str| missing(event_id, &format!("{what} of order {order_id}"));
        let status = self
            .status
            .ok_or_else(|| m("status"))?
            .parse::<StoredStatus>()
            .map_err(|e| StoreError::bad(event_id, format!("order {order_id}: {e}")))?;
        Ok(Some(StoredOrder {
            user_id: self.user_id.ok_or_else(|| m("user_id"))?,
            slots: self.slots.ok_or_else(|| m("slots"))?,
            amount_minor: self.amount_minor.ok_or_else(|| m("amount_minor"))?,
            currency: self.order_currency.ok_or_else(|| m("order_currency"))?,
            payment_id: none_if_empty(self.payment_id),
            status,
            hold_expires_at: self.hold_expires_at.filter(|&at| at != NO_MILLIS),
            reject_reason: none_if_empty(self.reject_reason),
            cancel_reason: none_if_empty(self.cancel_reason),
            late: self.late.unwrap_or(false),
            refunded: self.refunded.unwrap_or(false),
            idempotency_key: none_if_empty(self.idempotency_key),
            order_id,
        }))
    }
}

/// The ids of the orders the index names live after its last entry for them.
fn live_order_ids(index: &[StoredIndexEntry]) -> Vec<String> {
    let mut live: std::collections::HashMap<u128, &str> = std::collections::HashMap::new();
    for entry in index {
        match &entry.live_order_id {
            Some(id) => {
                live.insert(entry.order, id);
            }
            None => {
                live.remove(&entry.order);
            }
        }
    }
    let mut ids: Vec<String> = live.into_values().map(str::to_owned).collect();
    ids.sort_unstable();
    ids
}

/// Reads an LWT answer: `[applied]` by position, then the stored `applied_offset` (by name)
/// when refused.
fn lwt_outcome(
    result: scylla::response::query_result::QueryResult,
) -> Result<SaveOutcome, StoreError> {
    const OPERATION: &str = "save (reading [applied])";
    let rows = result
        .into_rows_result()
        .map_err(|e| StoreError::unusable(OPERATION, e))?;
    let offset_column = rows
        .column_specs()
        .iter()
        .position(|spec| spec.name() == "applied_offset");
    let row: Row = rows
        .first_row::<Row>()
        .map_err(|e| StoreError::unusable(OPERATION, e))?;
    match row.columns.first() {
        Some(Some(CqlValue::Boolean(true))) => Ok(SaveOutcome::Applied),
        Some(Some(CqlValue::Boolean(false))) => {
            let current_offset = offset_column
                .and_then(|i| row.columns.get(i))
                .and_then(|value| match value {
                    Some(CqlValue::BigInt(offset)) => Some(*offset),
                    _ => None,
                });
            Ok(SaveOutcome::Conflict { current_offset })
        }
        other => Err(StoreError::unusable(
            OPERATION,
            format!("first column is not [applied]: {other:?}"),
        )),
    }
}

/// The prepared statements, made once per store.
#[derive(Debug)]
struct Statements {
    statics_configured: PreparedStatement,
    statics_unconfigured: PreparedStatement,
    order_row: PreparedStatement,
    read_statics: PreparedStatement,
    read_offset: PreparedStatement,
    read_orders: PreparedStatement,
    register_event: PreparedStatement,
    partition_events: PreparedStatement,
    index_row: PreparedStatement,
    read_index: PreparedStatement,
    read_some_orders: PreparedStatement,
}

/// Loads and saves the booking processor's per-event state. Cheap to share (`Arc` inside);
/// independent events may be loaded and saved concurrently.
#[derive(Debug, Clone)]
pub struct InventoryStore {
    session: Arc<Session>,
    statements: Arc<Statements>,
}

impl InventoryStore {
    /// Prepares every statement once. The schema must exist (`schema::ensure_schema`).
    pub async fn new(session: Arc<Session>, keyspace: &Keyspace) -> Result<Self, StoreError> {
        let inventory = keyspace.table("event_inventory");
        let partitions = keyspace.table("partition_events");
        let prepare = |cql: String| {
            let session = Arc::clone(&session);
            async move {
                session
                    .prepare(cql)
                    .await
                    .map_err(|e| StoreError::prepare("preparing statements", e))
            }
        };
        let texts = [
            format!(
                "UPDATE {inventory} SET applied_offset = ?, configured = true, name = ?, \
                 category_id = ?, capacity = ?, price_minor = ?, currency = ?, \
                 sale_starts_at = ?, sale_ends_at = ?, hold_ms = ?, max_per_order = ?, \
                 max_per_user = ?, updated_at = ?, updated_by_record = ?, held = ?, sold = ?, \
                 sequence = ?, decisions = ?, decision_digest = ?, order_digests_complete = ? \
                 WHERE event_id = ? IF applied_offset = ?"
            ),
            format!(
                "UPDATE {inventory} SET applied_offset = ?, held = ?, sold = ?, sequence = ?, \
                 decisions = ?, decision_digest = ?, order_digests_complete = ? \
                 WHERE event_id = ? IF applied_offset = ?"
            ),
            format!(
                "INSERT INTO {inventory} (event_id, order_id, user_id, slots, amount_minor, \
                 order_currency, payment_id, status, hold_expires_at, reject_reason, \
                 cancel_reason, late, refunded, idempotency_key) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ),
            format!("SELECT {STATICS_COLUMNS} FROM {inventory} WHERE event_id = ? LIMIT 1"),
            format!("SELECT applied_offset FROM {inventory} WHERE event_id = ? LIMIT 1"),
            format!("SELECT {ORDER_COLUMNS} FROM {inventory} WHERE event_id = ?"),
            format!("INSERT INTO {partitions} (topic, kafka_partition, event_id) VALUES (?, ?, ?)"),
            format!("SELECT event_id FROM {partitions} WHERE topic = ? AND kafka_partition = ?"),
            format!("INSERT INTO {inventory} (event_id, order_id, order_digests) VALUES (?, ?, ?)"),
            format!(
                "SELECT order_id, order_digests FROM {inventory} \
                 WHERE event_id = ? AND order_id >= ? AND order_id < ?"
            ),
            format!("SELECT {ORDER_COLUMNS} FROM {inventory} WHERE event_id = ? AND order_id IN ?"),
        ];
        let prepared = futures::future::try_join_all(texts.map(prepare)).await?;
        let [
            statics_configured,
            statics_unconfigured,
            order_row,
            mut read_statics,
            read_offset,
            mut read_orders,
            mut register_event,
            mut partition_events,
            index_row,
            mut read_index,
            read_some_orders,
        ]: [PreparedStatement; 11] = prepared
            .try_into()
            .map_err(|_| StoreError::unusable("preparing statements", "statement count"))?;
        // Finishes a lightweight transaction a crashed owner left half-done before reading.
        read_statics.set_consistency(Consistency::LocalSerial);
        read_orders.set_page_size(ORDER_PAGE_SIZE);
        partition_events.set_page_size(ORDER_PAGE_SIZE);
        read_index.set_page_size(INDEX_PAGE_ROWS);
        register_event.set_is_idempotent(true);
        Ok(InventoryStore {
            session,
            statements: Arc::new(Statements {
                statics_configured,
                statics_unconfigured,
                order_row,
                read_statics,
                read_offset,
                read_orders,
                register_event,
                partition_events,
                index_row,
                read_index,
                read_some_orders,
            }),
        })
    }

    /// Records that `event_id` lives in `topic`'s `partition`, so the partition's next owner
    /// loads it. Idempotent.
    pub async fn register_event(
        &self,
        topic: &str,
        partition: i32,
        event_id: &str,
    ) -> Result<(), StoreError> {
        self.session
            .execute_unpaged(
                &self.statements.register_event,
                (topic, partition, event_id),
            )
            .await
            .map_err(|e| StoreError::execution("register_event", e))?;
        Ok(())
    }

    /// Every event registered for `topic`'s `partition`, ordered by event id.
    pub async fn events_of_partition(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Vec<String>, StoreError> {
        const OPERATION: &str = "events_of_partition";
        self.session
            .execute_iter(self.statements.partition_events.clone(), (topic, partition))
            .await
            .map_err(|e| StoreError::pager(OPERATION, e))?
            .rows_stream::<(String,)>()
            .map_err(|e| StoreError::unusable(OPERATION, e))?
            .map_ok(|(event_id,)| event_id)
            .try_collect()
            .await
            .map_err(|e| StoreError::next_row(OPERATION, e))
    }

    /// The stored state of `event_id` with every order, or `None` if it was never saved. A
    /// consistent snapshot: if a concurrent save moves the offset while the orders are paged
    /// in, it starts over. For audits and tests; a processor uses [`Self::load_for_assignment`].
    pub async fn load(&self, event_id: &str) -> Result<Option<StoredEvent>, StoreError> {
        self.load_with(event_id, false).await
    }

    /// What a processor needs when it is given the event: for an indexed event the index rows
    /// and the live orders only (a few rows per save plus one per live order, however many
    /// orders the event decided); for an older event every order, as [`Self::load`].
    pub async fn load_for_assignment(
        &self,
        event_id: &str,
    ) -> Result<Option<StoredEvent>, StoreError> {
        self.load_with(event_id, true).await
    }

    async fn load_with(
        &self,
        event_id: &str,
        by_index: bool,
    ) -> Result<Option<StoredEvent>, StoreError> {
        for _ in 0..LOAD_ATTEMPTS {
            let Some(statics) = self.read_statics(event_id).await? else {
                return Ok(None);
            };
            let applied_offset = statics.applied_offset;
            let held = statics.held.unwrap_or(0);
            let sold = statics.sold.unwrap_or(0);
            let sequence = statics.sequence.unwrap_or(0);
            let decisions = statics.decisions.unwrap_or(0);
            let decision_digest = statics.decision_digest.clone().unwrap_or_default();
            let indexed = statics.order_digests_complete.unwrap_or(false);
            let config = statics.config(event_id)?;
            let (index, orders) = if by_index && indexed {
                let index = self.read_index(event_id).await?;
                let live = live_order_ids(&index);
                let orders = self.read_live_orders(event_id, live).await?;
                (Some(index), orders)
            } else {
                (None, self.read_orders(event_id).await?)
            };
            if self.read_offset(event_id).await? != applied_offset {
                tracing::info!(
                    event_id,
                    "event saved concurrently while loading; reloading"
                );
                continue;
            }
            return Ok(Some(StoredEvent {
                event_id: event_id.to_owned(),
                applied_offset,
                config,
                held,
                sold,
                sequence,
                decisions,
                decision_digest,
                indexed,
                index,
                orders,
            }));
        }
        Err(StoreError::Unstable {
            event_id: event_id.to_owned(),
            attempts: LOAD_ATTEMPTS,
        })
    }

    /// Every index entry of the event, in save order.
    async fn read_index(&self, event_id: &str) -> Result<Vec<StoredIndexEntry>, StoreError> {
        const OPERATION: &str = "load (order index)";
        let mut rows = self
            .session
            .execute_iter(
                self.statements.read_index.clone(),
                (event_id, INDEX_ROW_PREFIX, INDEX_ROWS_END),
            )
            .await
            .map_err(|e| StoreError::pager(OPERATION, e))?
            .rows_stream::<(String, Option<Vec<u8>>)>()
            .map_err(|e| StoreError::unusable(OPERATION, e))?;
        let mut entries = Vec::new();
        while let Some((row_key, blob)) = rows
            .try_next()
            .await
            .map_err(|e| StoreError::next_row(OPERATION, e))?
        {
            let blob = blob.ok_or_else(|| missing(event_id, &format!("index row {row_key:?}")))?;
            let decoded = index::decode(&blob).map_err(|reason| {
                StoreError::bad(event_id, format!("index row {row_key:?}: {reason}"))
            })?;
            entries.extend(decoded);
        }
        Ok(entries)
    }

    /// The rows of `order_ids` (each must exist: the index named them live).
    async fn read_live_orders(
        &self,
        event_id: &str,
        order_ids: Vec<String>,
    ) -> Result<Vec<StoredOrder>, StoreError> {
        let chunks: Vec<Vec<String>> = order_ids
            .chunks(LIVE_ORDERS_PER_READ)
            .map(<[String]>::to_vec)
            .collect();
        let reads = futures::stream::iter(chunks)
            .map(|chunk| async move { self.read_some_orders(event_id, &chunk).await })
            .buffered(LIVE_READS_IN_FLIGHT);
        let pages: Vec<Vec<StoredOrder>> = reads.try_collect().await?;
        let orders: Vec<StoredOrder> = pages.into_iter().flatten().collect();
        if orders.len() != order_ids.len() {
            return Err(StoreError::bad(
                event_id,
                format!(
                    "the index names {} live orders but {} of their rows exist",
                    order_ids.len(),
                    orders.len()
                ),
            ));
        }
        Ok(orders)
    }

    /// The stored rows of some orders of the event (absent ones are left out). A processor
    /// reads an order this way when a command needs one it does not keep in memory.
    pub async fn read_some_orders(
        &self,
        event_id: &str,
        order_ids: &[String],
    ) -> Result<Vec<StoredOrder>, StoreError> {
        const OPERATION: &str = "load (some orders)";
        let result = self
            .session
            .execute_unpaged(&self.statements.read_some_orders, (event_id, order_ids))
            .await
            .map_err(|e| StoreError::execution(OPERATION, e))?
            .into_rows_result()
            .map_err(|e| StoreError::unusable(OPERATION, e))?;
        let mut orders = Vec::with_capacity(order_ids.len());
        for row in result
            .rows::<OrderRow>()
            .map_err(|e| StoreError::unusable(OPERATION, e))?
        {
            let row = row.map_err(|e| StoreError::unusable(OPERATION, e))?;
            if let Some(order) = row.into_order(event_id)? {
                orders.push(order);
            }
        }
        Ok(orders)
    }

    async fn read_statics(&self, event_id: &str) -> Result<Option<StaticsRow>, StoreError> {
        const OPERATION: &str = "load (event state)";
        self.session
            .execute_unpaged(&self.statements.read_statics, (event_id,))
            .await
            .map_err(|e| StoreError::execution(OPERATION, e))?
            .into_rows_result()
            .map_err(|e| StoreError::unusable(OPERATION, e))?
            .maybe_first_row::<StaticsRow>()
            .map_err(|e| StoreError::unusable(OPERATION, e))
    }

    async fn read_offset(&self, event_id: &str) -> Result<Option<i64>, StoreError> {
        const OPERATION: &str = "load (offset check)";
        let row = self
            .session
            .execute_unpaged(&self.statements.read_offset, (event_id,))
            .await
            .map_err(|e| StoreError::execution(OPERATION, e))?
            .into_rows_result()
            .map_err(|e| StoreError::unusable(OPERATION, e))?
            .maybe_first_row::<(Option<i64>,)>()
            .map_err(|e| StoreError::unusable(OPERATION, e))?;
        Ok(row.and_then(|(offset,)| offset))
    }

    async fn read_orders(&self, event_id: &str) -> Result<Vec<StoredOrder>, StoreError> {
        const OPERATION: &str = "load (orders)";
        let mut rows = self
            .session
            .execute_iter(self.statements.read_orders.clone(), (event_id,))
            .await
            .map_err(|e| StoreError::pager(OPERATION, e))?
            .rows_stream::<OrderRow>()
            .map_err(|e| StoreError::unusable(OPERATION, e))?;
        let mut orders = Vec::new();
        while let Some(row) = rows
            .try_next()
            .await
            .map_err(|e| StoreError::next_row(OPERATION, e))?
        {
            if let Some(order) = row.into_order(event_id)? {
                orders.push(order);
            }
        }
        Ok(orders)
    }

    /// Saves one step of the event's state atomically, fenced by the applied offset: applied
    /// only if the stored offset is still `update.previous_offset` (see the module docs).
    pub async fn save(&self, update: &StoredEventUpdate) -> Result<SaveOutcome, StoreError> {
        update.validate()?;
        let event_id = update.event_id.as_str();
        let mut batch = Batch::new(BatchType::Logged);
        let mut values = Vec::with_capacity(1 + update.changed_orders.len());
        match &update.config {
            Some(c) => {
                batch.append_statement(self.statements.statics_configured.clone());
                values.push(SaveValues::Configured(ConfiguredStatics {
                    applied_offset: update.new_offset,
                    name: &c.name,
                    // An empty category id (organisers' input) is stored as none.
                    category_id: text_or_none(&c.category_id),
                    capacity: c.capacity,
                    price_minor: c.price_minor,
                    currency: &c.currency,
                    sale_starts_at: c.sale_starts_at,
                    sale_ends_at: c.sale_ends_at,
                    hold_ms: c.hold_ms,
                    max_per_order: c.max_per_order,
                    max_per_user: c.max_per_user,
                    updated_at: c.updated_at,
                    updated_by_record: &c.updated_by_record,
                    held: update.held,
                    sold: update.sold,
                    sequence: update.sequence,
                    decisions: update.decisions,
                    decision_digest: &update.decision_digest,
                    indexed: update.index_entries.is_some(),
                    event_id,
                    expected_offset: update.previous_offset,
                }));
            }
            None => {
                batch.append_statement(self.statements.statics_unconfigured.clone());
                values.push(SaveValues::Unconfigured(UnconfiguredStatics {
                    applied_offset: update.new_offset,
                    held: update.held,
                    sold: update.sold,
                    sequence: update.sequence,
                    decisions: update.decisions,
                    decision_digest: &update.decision_digest,
                    indexed: update.index_entries.is_some(),
                    event_id,
                    expected_offset: update.previous_offset,
                }));
            }
        }
        for order in &update.changed_orders {
            batch.append_statement(self.statements.order_row.clone());
            values.push(SaveValues::Order(OrderValues::new(event_id, order)));
        }
        if let Some(entries) = update.index_entries.as_ref().filter(|e| !e.is_empty()) {
            let entries =
                index::encode(entries).map_err(|reason| StoreError::bad(event_id, reason))?;
            batch.append_statement(self.statements.index_row.clone());
            values.push(SaveValues::Index(IndexValues {
                event_id,
                row_key: index_row_key(update.new_offset),
                entries,
            }));
        }
        let result = self
            .session
            .batch(&batch, values)
            .await
            .map_err(|e| StoreError::execution("save", e))?;
        let outcome = lwt_outcome(result)?;
        if let SaveOutcome::Conflict { current_offset } = outcome {
            tracing::warn!(
                event_id,
                previous_offset = ?update.previous_offset,
                new_offset = update.new_offset,
                ?current_offset,
                "save refused: the stored offset is not the one this owner expected (a newer owner saved, or the store lost writes)"
            );
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::CAS_WRITE_UNKNOWN;
    use scylla::errors::{DbError, RequestAttemptError};

    fn order(id: &str) -> StoredOrder {
        StoredOrder {
            order_id: id.to_owned(),
            user_id: "user-1".into(),
            slots: 2,
            amount_minor: 5000,
            currency: "EUR".into(),
            payment_id: Some(format!("pay-{id}")),
            status: StoredStatus::Reserved,
            hold_expires_at: Some(1_700_000_600_000),
            reject_reason: None,
            cancel_reason: None,
            late: false,
            refunded: false,
            idempotency_key: None,
        }
    }

    fn update(orders: Vec<StoredOrder>) -> StoredEventUpdate {
        StoredEventUpdate {
            event_id: "event-1".into(),
            previous_offset: Some(9),
            new_offset: 10,
            config: Some(StoredConfig {
                name: "Gig".into(),
                category_id: None,
                capacity: 100,
                price_minor: 2500,
                currency: "EUR".into(),
                sale_starts_at: 1,
                sale_ends_at: 2,
                hold_ms: 600_000,
                max_per_order: 4,
                max_per_user: 8,
                updated_at: 1,
                updated_by_record: "rec-1".into(),
            }),
            held: 2,
            sold: 0,
            sequence: 3,
            decisions: 5,
            decision_digest: "0000000000000000000000000000002a".into(),
            changed_orders: orders,
            index_entries: None,
        }
    }

    fn reason(result: Result<(), StoreError>) -> String {
        match result {
            Err(StoreError::BadData { reason, .. }) => reason,
            other => panic!("expected BadData, got {other:?}"),
        }
    }

    #[test]
    fn status_names_round_trip() {
        for status in StoredStatus::ALL {
            assert_eq!(status.as_str().parse::<StoredStatus>().unwrap(), status);
            assert_eq!(status.to_string(), status.as_str());
        }
        let names: Vec<&str> = StoredStatus::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            ["RESERVED", "CONFIRMED", "REJECTED", "EXPIRED", "CANCELLED"]
        );
        let err = "reserved".parse::<StoredStatus>().unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown order status \"reserved\"")
        );
        assert!("PENDING".parse::<StoredStatus>().is_err());
    }

    #[test]
    fn a_sound_update_validates() {
        update(vec![order("o1"), order("o2")]).validate().unwrap();
        let mut first = update(vec![]);
        first.previous_offset = None;
        first.new_offset = 0;
        first.config = None;
        first.validate().unwrap();
    }

    #[test]
    fn updates_breaking_the_rules_are_refused_before_sending() {
        let mut u = update(vec![]);
        u.new_offset = 9;
        assert!(reason(u.validate()).contains("not after the previous offset 9"));

        let u = update(vec![order("o1"), order("o1")]);
        assert!(reason(u.validate()).contains("order o1 appears twice"));

        let mut o = order("o1");
        o.payment_id = Some(String::new());
        assert!(reason(update(vec![o]).validate()).contains("payment_id Some(\"\")"));

        let mut o = order("o1");
        o.hold_expires_at = Some(0);
        assert!(reason(update(vec![o]).validate()).contains("hold_expires_at Some(0)"));

        let mut u = update(vec![]);
        u.held = -1;
        assert!(reason(u.validate()).contains("negative counters"));

        // An unknown status cannot be saved: `StoredOrder.status` is a `StoredStatus` (a row
        // read back with one is bad data, see below).

        // An empty category id is organisers' input: stored as none, not refused.
        let mut u = update(vec![]);
        if let Some(c) = u.config.as_mut() {
            c.category_id = Some(String::new());
        }
        u.validate().unwrap();

        let mut u = update(vec![]);
        u.event_id = String::new();
        assert!(reason(u.validate()).contains("empty event id"));
    }

    #[test]
    fn oversized_saves_are_refused_with_the_limits() {
        let typical = order(&uuid_like(0));
        let per_order = typical.estimated_bytes(&uuid_like(1));
        // About 15,000 typical orders fit (ids are 36-character UUIDs).
        let fitting = MAX_SAVE_BYTES / per_order;
        assert!((12_000..20_000).contains(&fitting), "{fitting} orders fit");

        let orders: Vec<StoredOrder> = (0..fitting + 10).map(|i| order(&uuid_like(i))).collect();
        let mut u = update(orders);
        u.event_id = uuid_like(1);
        match u.validate() {
            Err(e @ StoreError::TooLarge { .. }) => {
                assert!(!e.is_retryable());
                assert!(e.to_string().contains("save more often"), "{e}");
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        u.changed_orders.truncate(fitting - 10);
        u.validate().unwrap();
    }

    fn uuid_like(i: usize) -> String {
        format!("{:08x}-0000-4000-8000-{:012x}", i % (1 << 32), i)
    }

    #[test]
    fn absent_values_are_stored_as_sentinels_and_read_back_as_none() {
        let mut o = order("o1");
        o.payment_id = None;
        o.hold_expires_at = None;
        o.status = StoredStatus::Rejected;
        o.reject_reason = Some("SOLD_OUT".into());
        let values = OrderValues::new("event-1", &o);
        assert_eq!(values.payment_id, "");
        assert_eq!(values.hold_expires_at, 0);
        assert_eq!(values.cancel_reason, "");
        assert_eq!(values.reject_reason, "SOLD_OUT");
        assert_eq!(values.idempotency_key, "");

        let row = OrderRow {
            order_id: Some("o1".into()),
            user_id: Some(values.user_id.into()),
            slots: Some(values.slots),
            amount_minor: Some(values.amount_minor),
            order_currency: Some(values.order_currency.into()),
            payment_id: Some(values.payment_id.into()),
            status: Some(values.status.into()),
            hold_expires_at: Some(values.hold_expires_at),
            reject_reason: Some(values.reject_reason.into()),
            cancel_reason: Some(values.cancel_reason.into()),
            late: Some(values.late),
            refunded: Some(values.refunded),
            idempotency_key: Some(values.idempotency_key.into()),
        };
        assert_eq!(row.into_order("event-1").unwrap(), Some(o));
    }

    #[test]
    fn a_statics_only_row_is_no_order_and_a_bad_status_is_bad_data() {
        let empty = OrderRow {
            order_id: None,
            user_id: None,
            slots: None,
            amount_minor: None,
            order_currency: None,
            payment_id: None,
            status: None,
            hold_expires_at: None,
            reject_reason: None,
            cancel_reason: None,
            late: None,
            refunded: None,
            idempotency_key: None,
        };
        assert_eq!(empty.into_order("e").unwrap(), None);
        let bad = OrderRow {
            order_id: Some("o1".into()),
            user_id: Some("u".into()),
            slots: Some(1),
            amount_minor: Some(1),
            order_currency: Some("EUR".into()),
            payment_id: Some(String::new()),
            status: Some("LOST".into()),
            hold_expires_at: Some(0),
            reject_reason: Some(String::new()),
            cancel_reason: Some(String::new()),
            late: Some(false),
            refunded: Some(false),
            idempotency_key: None,
        };
        match bad.into_order("e") {
            Err(StoreError::BadData { reason, .. }) => {
                assert!(reason.contains("unknown order status \"LOST\""), "{reason}")
            }
            other => panic!("expected BadData, got {other:?}"),
        }
    }

    #[test]
    fn timeouts_and_unavailability_are_retryable_and_invalid_queries_are_not() {
        let timeout = ExecutionError::LastAttemptError(RequestAttemptError::DbError(
            DbError::WriteTimeout {
                consistency: Consistency::LocalSerial,
                received: 0,
                required: 1,
                write_type: scylla::errors::WriteType::Cas,
            },
            "timeout".into(),
        ));
        assert!(StoreError::execution("save", timeout).is_retryable());
        let cas_unknown = ExecutionError::LastAttemptError(RequestAttemptError::DbError(
            DbError::Other(CAS_WRITE_UNKNOWN),
            "unknown".into(),
        ));
        assert!(StoreError::execution("save", cas_unknown).is_retryable());
        let client_timeout = ExecutionError::RequestTimeout(std::time::Duration::from_secs(1));
        assert!(StoreError::execution("save", client_timeout).is_retryable());
        let invalid = ExecutionError::LastAttemptError(RequestAttemptError::DbError(
            DbError::Invalid,
            "unconfigured table".into(),
        ));
        let err = StoreError::execution("save", invalid);
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("refused save"), "{err}");
        assert!(
            StoreError::Unstable {
                event_id: "e".into(),
                attempts: 3
            }
            .is_retryable()
        );
    }
}
