//! The Rust side of every record contract: one struct per `.avsc` file (same fields, same order,
//! same types), enums for the Avro enums, the [`Record`] trait the codec works with, and one
//! enum per topic that carries several record types ([`BookingCommand`], [`OrderEvent`],
//! [`PaymentRequest`]).
//!
//! The `.avsc` files are the source of truth. Each struct also derives `AvroSchema`; the drift
//! test compares that derived schema with the file, so adding, removing, renaming, reordering or
//! retyping a field on only one side fails the build's tests.
//!
//! Conventions (see avro/README.md): ids are UUID text, times are `i64` milliseconds since the
//! Unix epoch (Avro `timestamp-millis`, fields named `*_at`), money is `i64` minor units plus an
//! ISO 4217 `currency`.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Debug;
use std::sync::LazyLock;

use apache_avro::schema::{Name, NamespaceRef};
use apache_avro::types::Value;
use apache_avro::{AvroSchema, Schema};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec::DecodeError;

/// Production topics (the catalogue in `topics/` is built from the same names).
pub mod topic {
    /// Every input that can change an event's inventory; key `event_id`.
    pub const BOOKING_COMMANDS: &str = "booking.commands";
    /// Order lifecycle facts; key `order_id`.
    pub const ORDERS_EVENTS: &str = "orders.events";
    /// Work for the payment processor; key `order_id`.
    pub const PAYMENTS_REQUESTS: &str = "payments.requests";
    /// Per-event inventory, compacted; key `event_id`.
    pub const AVAILABILITY: &str = "availability";
    /// What users must be told; key `user_id`.
    pub const NOTIFICATIONS: &str = "notifications";
    /// Records a consumer could not process; key = the failed record's key.
    pub const DEAD_LETTERS: &str = "dead.letters";
    /// How far the booking processor has published each event, compacted; key `event_id`.
    pub const BOOKING_PROGRESS: &str = "booking.progress";
}

/// A boxoffice record: a Rust type mirroring one `.avsc` file.
pub trait Record:
    Serialize + DeserializeOwned + Clone + Debug + PartialEq + Send + Sync + 'static
{
    /// Avro full name, `boxoffice.<RecordName>`.
    const FULL_NAME: &'static str;
    /// The production topic the record is written to.
    const TOPIC: &'static str;

    /// The `.avsc` text (the source of truth), as compiled into the crate.
    fn avsc() -> &'static str;

    /// The parsed `.avsc`, parsed once on first use.
    fn schema() -> &'static Schema;

    /// The deterministic id consumers deduplicate on.
    fn record_id(&self) -> &str;

    /// The id the record is keyed by on its topic (`event_id`, `order_id` or `user_id`).
    fn key(&self) -> &str;

    /// The bytes to use as the Kafka key. The key id's text for every record except
    /// [`DeadLetter`], which keeps the failed record's raw key.
    fn kafka_key(&self) -> Option<&[u8]> {
        Some(self.key().as_bytes())
    }

    /// When the fact happened, milliseconds since the Unix epoch (UTC).
    fn occurred_at(&self) -> i64;

    /// Turns a value written with any schema of this record into `Self`: the value is resolved
    /// against this type's schema first (fields added since with a default get the default;
    /// fields removed since are dropped), which is what makes older writers readable.
    fn from_writer_value(value: Value) -> Result<Self, String> {
        let resolved = value.resolve(Self::schema()).map_err(|e| e.to_string())?;
        apache_avro::from_value(&resolved).map_err(|e| e.to_string())
    }
}

/// Parses an embedded `.avsc`. Invariant: the text is compiled in from `avro/schemas/`, and the
/// crate's tests parse every one of those files, so this cannot fail in a tested build.
fn parse_embedded(full_name: &str, avsc: &str) -> Schema {
    Schema::parse_str(avsc).unwrap_or_else(|e| {
        panic!("invariant broken: embedded schema {full_name} does not parse ({e})")
    })
}

// Schema overrides for the derive, where the Rust type alone does not say the Avro type.

/// `long` with `logicalType: timestamp-millis` for the `i64` `*_at` fields.
fn timestamp_millis(_: &mut HashSet<Name>, _: NamespaceRef) -> Schema {
    Schema::TimestampMillis
}

/// `map<string>` for a `BTreeMap<String, String>` (sorted, so encoding is deterministic).
fn string_map(_: &mut HashSet<Name>, _: NamespaceRef) -> Schema {
    Schema::map(Schema::String).build()
}

macro_rules! impl_record {
    ($ty:ident, topic = $topic:expr, key = $key:ident) => {
        impl Record for $ty {
            const FULL_NAME: &'static str = concat!("boxoffice.", stringify!($ty));
            const TOPIC: &'static str = $topic;

            fn avsc() -> &'static str {
                include_str!(concat!("../schemas/", stringify!($ty), ".avsc"))
            }

            fn schema() -> &'static Schema {
                static SCHEMA: LazyLock<Schema> =
                    LazyLock::new(|| parse_embedded($ty::FULL_NAME, $ty::avsc()));
                &SCHEMA
            }

            fn record_id(&self) -> &str {
                &self.record_id
            }

            fn key(&self) -> &str {
                &self.$key
            }

            fn occurred_at(&self) -> i64 {
                self.occurred_at
            }
        }
    };
}

/// Declares a record of the catalogue: the struct with the derives every record has,
/// `record_id` as its first field and `occurred_at` as its last (the [`Record`] trait reads
/// both, and the `.avsc` files put them there), and its [`Record`] impl.
macro_rules! record {
    (
        $(#[$meta:meta])*
        $name:ident, topic = $topic:expr, key = $key:ident {
            $($(#[$field_meta:meta])* $field:ident: $ty:ident $(<$($arg:ident),+>)?,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
        #[avro(namespace = "boxoffice")]
        pub struct $name {
            pub record_id: String,
            $($(#[$field_meta])* pub $field: $ty $(<$($arg),+>)?,)*
            #[avro(with = timestamp_millis)]
            pub occurred_at: i64,
        }
        impl_record!($name, topic = $topic, key = $key);
    };
}

// ---------------------------------------------------------------------------------------------
// Enums

/// An enum that travels on the wire. One wire name per variant: the Avro symbol, the JSON value,
/// the header value and the name templates match. serde and strum both derive it from
/// `SCREAMING_SNAKE_CASE` and a test checks they agree, so every producer and consumer uses
/// `wire_name()` and `str::parse`.
macro_rules! wire_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($body:tt)* }) => {
        $(#[$meta])*
        #[derive(
            Debug,
            Clone,
            Copy,
            PartialEq,
            Eq,
            Hash,
            Serialize,
            Deserialize,
            AvroSchema,
            strum::IntoStaticStr,
            strum::EnumString,
            strum::VariantArray,
        )]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        #[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
        #[avro(namespace = "boxoffice")]
        pub enum $name { $($body)* }

        impl $name {
            /// The variant's name on the wire (`SOLD_OUT`).
            pub fn wire_name(self) -> &'static str {
                self.into()
            }
        }
    };
}

wire_enum! {
    /// Why a payment failed.
    pub enum PaymentFailureReason {
        Declined,
        InsufficientFunds,
        ProviderError,
        Timeout,
    }
}

wire_enum! {
    /// What a provider's asynchronous event says about a charge.
    pub enum ProviderChargeOutcome {
        Captured,
        Declined,
    }
}

wire_enum! {
    /// Why a booking request was refused.
    pub enum RejectReason {
        SoldOut,
        NotOnSale,
        LimitExceeded,
        UnknownEvent,
        InvalidRequest,
        // The user's `Idempotency-Key` was already used for this event with another body.
        IdempotencyKeyReused,
    }
}

wire_enum! {
    /// Why an order was cancelled.
    pub enum CancelReason {
        UserRequested,
        PaymentFailed,
    }
}

wire_enum! {
    /// Why a payment is refunded.
    pub enum RefundReason {
        OrderCancelled,
        LatePaymentSoldOut,
    }
}

wire_enum! {
    /// What a notification tells.
    pub enum NotificationKind {
        OrderReserved,
        OrderConfirmed,
        OrderRejected,
        OrderExpired,
        OrderCancelled,
        OrderRefunded,
        LatePaymentReallocated,
        // Account notices, produced by ingest and sent by email only (never in-app or to
        // webhooks): the recipient address is the `to` parameter.
        EmailVerification,
        PasswordReset,
        AccountExists,
        UserNameTaken,
    }
}

impl NotificationKind {
    /// An account notice (email only, to the `to` parameter), not an order's news.
    pub fn is_account_notice(self) -> bool {
        matches!(
            self,
            NotificationKind::EmailVerification
                | NotificationKind::PasswordReset
                | NotificationKind::AccountExists
                | NotificationKind::UserNameTaken
        )
    }
}

wire_enum! {
    /// Class of a dead-lettered failure. `Other` is also the Avro enum default, so a reader that
    /// predates a newer kind still reads the record (as `Other`).
    #[derive(Default)]
    pub enum DeadLetterErrorKind {
        ShortFrame,
        BadMagicByte,
        UnknownSchemaId,
        SchemaMismatch,
        UndecodableBody,
        UnexpectedRecord,
        InvalidRecord,
        // The consumer's state for the record's entity is gone and cannot be rebuilt from the
        // log (its commands are below the log start): the record waits for an operator.
        StateLost,
        // A signed payment provider event that names another order, amount or currency than
        // the payment it is about: refused, never settles the payment.
        ProviderEventMismatch,
        #[default]
        Other,
    }
}

// ---------------------------------------------------------------------------------------------
// booking.commands (key event_id)

record! {
    /// A fan asked for slots of an event.
    BookingRequested, topic = topic::BOOKING_COMMANDS, key = event_id {
        order_id: String,
        event_id: String,
        user_id: String,
        number_slot: i32,
        idempotency_key: Option<String>,
    }
}

record! {
    /// A fan asked to cancel an order.
    CancelRequested, topic = topic::BOOKING_COMMANDS, key = event_id {
        order_id: String,
        event_id: String,
        user_id: String,
    }
}

record! {
    /// The gateway charged an order.
    PaymentSucceeded, topic = topic::BOOKING_COMMANDS, key = event_id {
        payment_id: String,
        order_id: String,
        event_id: String,
        user_id: String,
        amount_minor: i64,
        currency: String,
        provider_reference: String,
    }
}

record! {
    /// The gateway refused or could not charge an order.
    PaymentFailed, topic = topic::BOOKING_COMMANDS, key = event_id {
        payment_id: String,
        order_id: String,
        event_id: String,
        user_id: String,
        amount_minor: i64,
        currency: String,
        reason: PaymentFailureReason,
        detail: Option<String>,
    }
}

record! {
    /// Time passed an order's hold (time enters the log as data).
    HoldExpired, topic = topic::BOOKING_COMMANDS, key = event_id {
        order_id: String,
        event_id: String,
        user_id: String,
        #[avro(with = timestamp_millis)]
        hold_expires_at: i64,
    }
}

record! {
    /// An organiser created or edited an event.
    EventUpserted, topic = topic::BOOKING_COMMANDS, key = event_id {
        event_id: String,
        name: String,
        category_id: Option<String>,
        capacity: i32,
        price_minor: i64,
        currency: String,
        #[avro(with = timestamp_millis)]
        sale_starts_at: i64,
        #[avro(with = timestamp_millis)]
        sale_ends_at: i64,
        #[avro(default = "600")]
        hold_seconds: i32,
        max_per_order: i32,
        max_per_user: i32,
    }
}

impl EventUpserted {
    /// The schema's default hold time, for producers that have no setting of their own.
    pub const DEFAULT_HOLD_SECONDS: i32 = 600;
}

// ---------------------------------------------------------------------------------------------
// orders.events (key order_id)

record! {
    /// Slots are held for an order until `hold_expires_at`.
    OrderReserved, topic = topic::ORDERS_EVENTS, key = order_id {
        order_id: String,
        event_id: String,
        user_id: String,
        number_slot: i32,
        amount_minor: i64,
        currency: String,
        #[avro(with = timestamp_millis)]
        hold_expires_at: i64,
        payment_id: Option<String>,
    }
}

record! {
    /// A booking request was refused.
    OrderRejected, topic = topic::ORDERS_EVENTS, key = order_id {
        order_id: String,
        event_id: String,
        user_id: String,
        number_slot: i32,
        reason: RejectReason,
        detail: Option<String>,
    }
}

record! {
    /// An order is paid (or free) and its slots are sold.
    OrderConfirmed, topic = topic::ORDERS_EVENTS, key = order_id {
        order_id: String,
        event_id: String,
        user_id: String,
        payment_id: Option<String>,
        number_slot: i32,
        amount_minor: i64,
        currency: String,
        #[avro(default = "false")]
        late_payment: bool,
    }
}

record! {
    /// An order was cancelled.
    OrderCancelled, topic = topic::ORDERS_EVENTS, key = order_id {
        order_id: String,
        event_id: String,
        user_id: String,
        number_slot: i32,
        reason: CancelReason,
        refund_id: Option<String>,
    }
}

record! {
    /// An order's hold ran out unpaid.
    OrderExpired, topic = topic::ORDERS_EVENTS, key = order_id {
        order_id: String,
        event_id: String,
        user_id: String,
        number_slot: i32,
    }
}

record! {
    /// Tickets were issued for a confirmed order, one per slot.
    TicketsIssued, topic = topic::ORDERS_EVENTS, key = order_id {
        order_id: String,
        event_id: String,
        user_id: String,
        ticket_ids: Vec<String>,
    }
}

// ---------------------------------------------------------------------------------------------
// payments.requests (key order_id)

record! {
    /// The booking processor asks for payment of a reserved order.
    PaymentRequested, topic = topic::PAYMENTS_REQUESTS, key = order_id {
        payment_id: String,
        order_id: String,
        event_id: String,
        user_id: String,
        amount_minor: i64,
        currency: String,
        #[avro(with = timestamp_millis)]
        hold_expires_at: i64,
    }
}

record! {
    /// A fan submitted payment details for an order.
    PaymentSubmitted, topic = topic::PAYMENTS_REQUESTS, key = order_id {
        payment_id: String,
        order_id: String,
        event_id: String,
        user_id: String,
        amount_minor: i64,
        currency: String,
        payment_method_token: String,
    }
}

record! {
    /// Money must go back for a paid order.
    RefundRequested, topic = topic::PAYMENTS_REQUESTS, key = order_id {
        refund_id: String,
        payment_id: String,
        order_id: String,
        event_id: String,
        user_id: String,
        amount_minor: i64,
        currency: String,
        reason: RefundReason,
    }
}

record! {
    /// What an asynchronous payment provider reported about a charge, received by ingest on
    /// `POST v1/payments/webhook` after its signature was verified. The payment processor applies
    /// it to the payment (a provider event for a payment already final changes nothing).
    PaymentProviderEvent, topic = topic::PAYMENTS_REQUESTS, key = order_id {
        provider_event_id: String,
        payment_id: String,
        order_id: String,
        // What the provider says the charge was for; the payment processor refuses an event
        // that differs from the payment. Records written before these fields read as 0 and
        // "" (and would be refused, but they were applied before the upgrade).
        #[avro(default = "0")]
        amount_minor: i64,
        #[avro(default = "\"\"")]
        currency: String,
        outcome: ProviderChargeOutcome,
        provider_reference: String,
        failure_reason: Option<PaymentFailureReason>,
        detail: Option<String>,
    }
}

// ---------------------------------------------------------------------------------------------
// availability (compacted, key event_id)

record! {
    /// An event's inventory after a step; `available + held + sold == total`.
    AvailabilityChanged, topic = topic::AVAILABILITY, key = event_id {
        event_id: String,
        sequence: i64,
        total: i32,
        available: i32,
        held: i32,
        sold: i32,
    }
}

// ---------------------------------------------------------------------------------------------
// booking.progress (compacted, key event_id)

record! {
    /// How far the booking processor has published an event (see the `.avsc`): written in the
    /// same transaction as the decisions, read back on every assignment.
    EventProgress, topic = topic::BOOKING_PROGRESS, key = event_id {
        event_id: String,
        applied_offset: i64,
        first_offset: i64,
        decisions: i64,
        decision_digest: String,
        capacity: i32,
        held: i32,
        sold: i32,
        sequence: i64,
    }
}

// ---------------------------------------------------------------------------------------------
// notifications (key user_id)

record! {
    /// Something a user must be told.
    NotificationRequested, topic = topic::NOTIFICATIONS, key = user_id {
        user_id: String,
        order_id: Option<String>,
        event_id: Option<String>,
        kind: NotificationKind,
        #[avro(with = string_map)]
        params: BTreeMap<String, String>,
    }
}

impl NotificationRequested {
    /// The notification's id: its record id (so a redelivered record is one notification).
    pub fn notification_id(&self) -> &str {
        &self.record_id
    }
}

// ---------------------------------------------------------------------------------------------
// dead.letters (key = the failed record's key)

/// A record a consumer could not process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "boxoffice")]
pub struct DeadLetter {
    pub record_id: String,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    #[avro(with, default = "null")]
    #[serde(with = "apache_avro::serde::bytes_opt")]
    pub key: Option<Vec<u8>>,
    #[avro(with, default = "null")]
    #[serde(with = "apache_avro::serde::bytes_opt")]
    pub payload: Option<Vec<u8>>,
    pub reason: String,
    pub error_kind: DeadLetterErrorKind,
    pub consumer: String,
    #[avro(with = timestamp_millis)]
    pub failed_at: i64,
    #[avro(with = timestamp_millis)]
    pub occurred_at: i64,
}

impl Record for DeadLetter {
    const FULL_NAME: &'static str = "boxoffice.DeadLetter";
    const TOPIC: &'static str = topic::DEAD_LETTERS;

    fn avsc() -> &'static str {
        include_str!("../schemas/DeadLetter.avsc")
    }

    fn schema() -> &'static Schema {
        static SCHEMA: LazyLock<Schema> =
            LazyLock::new(|| parse_embedded(DeadLetter::FULL_NAME, DeadLetter::avsc()));
        &SCHEMA
    }

    fn record_id(&self) -> &str {
        &self.record_id
    }

    /// A dead letter is keyed by the failed record's raw key (see [`Record::kafka_key`]); as
    /// text that is the key when it is UTF-8 (every boxoffice key is UUID text), otherwise the
    /// dead letter's own record id.
    fn key(&self) -> &str {
        self.key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
            .unwrap_or(&self.record_id)
    }

    fn kafka_key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }

    fn occurred_at(&self) -> i64 {
        self.occurred_at
    }
}

impl DeadLetter {
    /// The deterministic record id of the dead letter for one consumed record: dead-lettering
    /// the same record twice (after a crash) yields one id.
    pub fn record_id_for(
        consumer: &str,
        source_topic: &str,
        partition: i32,
        offset: i64,
    ) -> String {
        crate::ids::record_id_for::<DeadLetter>(&[
            consumer,
            source_topic,
            &partition.to_string(),
            &offset.to_string(),
        ])
    }
}

// ---------------------------------------------------------------------------------------------
// Topics with several record types

/// The records a topic with several record types carries, as one enum: encode any variant with
/// `Codec::encode_group`, decode whatever the writer wrote with `Codec::decode_group`.
pub trait RecordGroup:
    Serialize + Clone + Debug + PartialEq + Send + Sync + Sized + 'static
{
    /// The topic the group's records are written to.
    const TOPIC: &'static str;
    /// Full names of the member records.
    const MEMBERS: &'static [&'static str];

    /// The full name of the variant's record.
    fn full_name(&self) -> &'static str;
    /// The `.avsc` of the variant's record.
    fn avsc(&self) -> &'static str;
    /// The variant's record id.
    fn record_id(&self) -> &str;
    /// The variant's key (the same id for every member of a group).
    fn key(&self) -> &str;
    /// When the variant's fact happened.
    fn occurred_at(&self) -> i64;

    /// Decodes by name: picks the member whose full name the writer used and resolves the
    /// writer's value against that member's schema. A name outside the group is a
    /// [`DecodeError::SchemaMismatch`].
    fn from_named_value(full_name: &str, value: Value) -> Result<Self, DecodeError>;
}

macro_rules! record_group {
    (
        $(#[$meta:meta])*
        $group:ident, topic = $topic:expr, { $($variant:ident),+ $(,)? }
    ) => {
        $(#[$meta])*
        ///
        /// Serializes as the variant's record itself (untagged): the record's schema names it.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
        #[serde(untagged)]
        pub enum $group {
            $($variant($variant)),+
        }

        $(impl From<$variant> for $group {
            fn from(record: $variant) -> Self {
                $group::$variant(record)
            }
        })+

        impl RecordGroup for $group {
            const TOPIC: &'static str = $topic;
            const MEMBERS: &'static [&'static str] = &[$(<$variant as Record>::FULL_NAME),+];

            fn full_name(&self) -> &'static str {
                match self { $($group::$variant(_) => <$variant as Record>::FULL_NAME),+ }
            }

            fn avsc(&self) -> &'static str {
                match self { $($group::$variant(_) => <$variant as Record>::avsc()),+ }
            }

            fn record_id(&self) -> &str {
                match self { $($group::$variant(r) => r.record_id()),+ }
            }

            fn key(&self) -> &str {
                match self { $($group::$variant(r) => r.key()),+ }
            }

            fn occurred_at(&self) -> i64 {
                match self { $($group::$variant(r) => r.occurred_at()),+ }
            }

            fn from_named_value(full_name: &str, value: Value) -> Result<Self, DecodeError> {
                $(
                    if full_name == <$variant as Record>::FULL_NAME {
                        return <$variant as Record>::from_writer_value(value)
                            .map($group::$variant)
                            .map_err(|reason| DecodeError::SchemaMismatch {
                                expected: full_name.to_owned(),
                                found: full_name.to_owned(),
                                reason,
                            });
                    }
                )+
                Err(DecodeError::SchemaMismatch {
                    expected: format!("one of {}", Self::MEMBERS.join(", ")),
                    found: full_name.to_owned(),
                    reason: format!("{} does not carry this record type", Self::TOPIC),
                })
            }
        }
    };
}

record_group!(
    /// What `booking.commands` carries: every input that can change an event's inventory.
    BookingCommand, topic = topic::BOOKING_COMMANDS, {
        BookingRequested, CancelRequested, PaymentSucceeded, PaymentFailed, HoldExpired,
        EventUpserted,
    }
);

record_group!(
    /// What `orders.events` carries: the order lifecycle.
    OrderEvent, topic = topic::ORDERS_EVENTS, {
        OrderReserved, OrderRejected, OrderConfirmed, OrderCancelled, OrderExpired, TicketsIssued,
    }
);

impl OrderEvent {
    /// The order the fact is about (also its key: `RecordGroup::key`).
    pub fn order_id(&self) -> &str {
        self.key()
    }

    /// The fan who placed the order.
    pub fn user_id(&self) -> &str {
        self.user_and_event().0
    }

    /// The event the order is for.
    pub fn event_id(&self) -> &str {
        self.user_and_event().1
    }

    /// Every order record names its fan and its event; one match reads both.
    fn user_and_event(&self) -> (&str, &str) {
        match self {
            OrderEvent::OrderReserved(r) => (&r.user_id, &r.event_id),
            OrderEvent::OrderRejected(r) => (&r.user_id, &r.event_id),
            OrderEvent::OrderConfirmed(r) => (&r.user_id, &r.event_id),
            OrderEvent::OrderCancelled(r) => (&r.user_id, &r.event_id),
            OrderEvent::OrderExpired(r) => (&r.user_id, &r.event_id),
            OrderEvent::TicketsIssued(r) => (&r.user_id, &r.event_id),
        }
    }
}

record_group!(
    /// What `payments.requests` carries: work for the payment processor.
    PaymentRequest, topic = topic::PAYMENTS_REQUESTS, {
        PaymentRequested, PaymentSubmitted, RefundRequested, PaymentProviderEvent,
    }
);

#[cfg(test)]
pub(crate) mod tests;
