//! boxoffice's CQL store, and the only crate that speaks CQL to the processors' and the
//! notifier's tables: the session and which failures are transient (`session`), the schema and
//! its one ordered list of migrations (`schema`), and one module per table family, each the
//! family's owner and its documented reader interface for other services:
//!
//! - `inventory`: the booking processor's per-event state (`event_inventory`,
//!   `partition_events`); other services read it through `inventory::InventoryReader` (an
//!   event's counters, one order's decision);
//! - `payments`: the payment processor's state (`payments`, `payment_histories`,
//!   `payment_timers`); other services read it through `payments::PaymentReader` (a payment
//!   without the fan's token, its history);
//! - `orders`: the orders read model (`orders`, `orders_by_user`), written by the booking
//!   processor once per decided order; ingest reads it;
//! - `notifications`: the notifier's in-app list (`notifications`), delivery state
//!   (`notification_deliveries`) and webhook endpoints (`webhook_endpoints`);
//! - `watermarks`: where a consumer whose effects live in the store resumes
//!   (`consumer_watermarks`).
//!
//! The ingest-facing tables (`auth_profiles`, `users`, `events`, `cate_events`, `tickets`, ...)
//! are created by `schema` and written by ingest's own store module.

pub mod inventory;
pub mod notifications;
pub mod orders;
pub mod payments;
pub mod schema;
pub mod session;
pub mod watermarks;
