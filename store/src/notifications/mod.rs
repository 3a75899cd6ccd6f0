//! The notifier's CQL: the in-app list (`notifications`), per-channel delivery state
//! (`notification_deliveries`), users' email addresses (`users`, then `auth_profiles`) and
//! webhook endpoints (`webhook_endpoints`).

use std::sync::Arc;

use boxoffice_avro::clock::now_millis;
use boxoffice_avro::records::NotificationRequested;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;

use crate::schema::Keyspace;

mod reader;
pub use reader::{NotificationReader, PageStart, StoredNotification};

/// A CQL call failed. The notifier treats every store failure as an outage: retried, nothing
/// skipped.
#[derive(Debug, thiserror::Error)]
#[error("notifier store: {operation}: {reason}")]
pub struct NotifyStoreError {
    pub operation: &'static str,
    pub reason: String,
}

/// The error for a failed `operation`. A failed call (not a row that did not decode) is
/// classified like every store call, so a transient one counts in
/// `session::transient_failures` (the in-app channel reads its partition again after one).
fn failed<E: std::error::Error + 'static>(
    operation: &'static str,
) -> impl FnOnce(E) -> NotifyStoreError {
    move |e| {
        let any: &dyn std::any::Any = &e;
        if let Some(call) = any.downcast_ref::<scylla::errors::ExecutionError>() {
            crate::session::execution_is_transient(call);
        } else if let Some(prepare) = any.downcast_ref::<scylla::errors::PrepareError>() {
            crate::session::prepare_is_transient(prepare);
        }
        NotifyStoreError {
            operation,
            reason: e.to_string(),
        }
    }
}

/// Where a delivery to one target stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// A send may be in flight (or was, before a crash): send again, same delivery id.
    Pending,
    Sent,
    /// Nothing to send to (no address).
    Skipped,
    /// The endpoint answered 410 Gone and was disabled.
    Disabled,
    /// Attempts exhausted or refused for good: on the dead-letter topic.
    Dead,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "PENDING",
            DeliveryState::Sent => "SENT",
            DeliveryState::Skipped => "SKIPPED",
            DeliveryState::Disabled => "DISABLED",
            DeliveryState::Dead => "DEAD",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "PENDING" => DeliveryState::Pending,
            "SENT" => DeliveryState::Sent,
            "SKIPPED" => DeliveryState::Skipped,
            "DISABLED" => DeliveryState::Disabled,
            "DEAD" => DeliveryState::Dead,
            _ => return None,
        })
    }

    /// Nothing more will be sent for it.
    pub fn is_final(self) -> bool {
        self != DeliveryState::Pending
    }
}

/// A stored delivery row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub state: DeliveryState,
    pub attempts: i32,
    pub detail: String,
}

/// A user's webhook endpoint.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookEndpoint {
    pub user_id: String,
    pub endpoint_id: String,
    pub url: String,
    pub secret: String,
    pub disabled: bool,
}

impl std::fmt::Debug for WebhookEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookEndpoint")
            .field("user_id", &self.user_id)
            .field("endpoint_id", &self.endpoint_id)
            .field("url", &self.url)
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

/// Prepared statements over one keyspace.
#[derive(Debug)]
pub struct NotifyStore {
    session: Arc<Session>,
    insert_notification: PreparedStatement,
    read_delivery: PreparedStatement,
    write_delivery: PreparedStatement,
    user_email: PreparedStatement,
    profile_email: PreparedStatement,
    event_name: PreparedStatement,
    endpoints: PreparedStatement,
    disable_endpoint: PreparedStatement,
    insert_endpoint: PreparedStatement,
}

impl NotifyStore {
    pub async fn new(session: Arc<Session>, keyspace: &Keyspace) -> Result<Self, NotifyStoreError> {
        let t = |table: &str| keyspace.table(table);
        let prepare = |cql: String| {
            let session = session.clone();
            async move { session.prepare(cql).await.map_err(failed("prepare")) }
        };
        Ok(NotifyStore {
            // `read` is never written here: a redelivery must not mark a read notification
            // unread again.
            insert_notification: prepare(format!(
                "INSERT INTO {} (user_id, created_at, notification_id, kind, order_id, event_id, \
                 params) VALUES (?, ?, ?, ?, ?, ?, ?)",
                t("notifications")
            ))
            .await?,
            read_delivery: prepare(format!(
                "SELECT state, attempts, detail FROM {} WHERE notification_id = ? AND channel = ? \
                 AND target = ?",
                t("notification_deliveries")
            ))
            .await?,
            write_delivery: prepare(format!(
                "INSERT INTO {} (notification_id, channel, target, state, attempts, detail, \
                 updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                t("notification_deliveries")
            ))
            .await?,
            user_email: prepare(format!("SELECT email FROM {} WHERE id = ?", t("users"))).await?,
            event_name: prepare(format!("SELECT name FROM {} WHERE id = ?", t("events"))).await?,
            profile_email: prepare(format!(
                "SELECT email FROM {} WHERE user_id = ?",
                t("auth_profiles")
            ))
            .await?,
            endpoints: prepare(format!(
                "SELECT endpoint_id, url, secret, disabled FROM {} WHERE user_id = ?",
                t("webhook_endpoints")
            ))
            .await?,
            disable_endpoint: prepare(format!(
                "UPDATE {} SET disabled = true, disabled_reason = ?, disabled_at = ? \
                 WHERE user_id = ? AND endpoint_id = ?",
                t("webhook_endpoints")
            ))
            .await?,
            insert_endpoint: prepare(format!(
                "INSERT INTO {} (user_id, endpoint_id, url, secret, disabled, created_at) \
                 VALUES (?, ?, ?, ?, false, ?)",
                t("webhook_endpoints")
            ))
            .await?,
            session,
        })
    }

    /// Writes the in-app notification. Idempotent: the key is (user, occurred_at, id), all
    /// from the record, so a redelivery overwrites the row with the same values.
    pub async fn store_in_app(&self, n: &NotificationRequested) -> Result<(), NotifyStoreError> {
        self.session
            .execute_unpaged(
                &self.insert_notification,
                (
                    &n.user_id,
                    CqlTimestamp(n.occurred_at),
                    n.notification_id(),
                    n.kind.wire_name(),
                    n.order_id.as_deref().unwrap_or_default(),
                    n.event_id.as_deref().unwrap_or_default(),
                    &n.params,
                ),
            )
            .await
            .map_err(failed("store in-app notification"))?;
        Ok(())
    }

    pub async fn delivery(
        &self,
        notification_id: &str,
        channel: &str,
        target: &str,
    ) -> Result<Option<Delivery>, NotifyStoreError> {
        let rows = self
            .session
            .execute_unpaged(&self.read_delivery, (notification_id, channel, target))
            .await
            .map_err(failed("read delivery"))?
            .into_rows_result()
            .map_err(failed("read delivery"))?;
        let row = rows
            .maybe_first_row::<(Option<String>, Option<i32>, Option<String>)>()
            .map_err(failed("read delivery"))?;
        Ok(row.map(|(state, attempts, detail)| Delivery {
            state: state
                .as_deref()
                .and_then(DeliveryState::parse)
                .unwrap_or(DeliveryState::Pending),
            attempts: attempts.unwrap_or(0),
            detail: detail.unwrap_or_default(),
        }))
    }

    pub async fn set_delivery(
        &self,
        notification_id: &str,
        channel: &str,
        target: &str,
        delivery: &Delivery,
    ) -> Result<(), NotifyStoreError> {
        self.session
            .execute_unpaged(
                &self.write_delivery,
                (
                    notification_id,
                    channel,
                    target,
                    delivery.state.as_str(),
                    delivery.attempts,
                    delivery.detail.as_str(),
                    CqlTimestamp(now_millis()),
                ),
            )
            .await
            .map_err(failed("write delivery"))?;
        Ok(())
    }

    /// The user's email address: `users.email`, else `auth_profiles.email`; `None` when
    /// neither has one.
    pub async fn email_address(&self, user_id: &str) -> Result<Option<String>, NotifyStoreError> {
        for statement in [&self.user_email, &self.profile_email] {
            let rows = self
                .session
                .execute_unpaged(statement, (user_id,))
                .await
                .map_err(failed("read email address"))?
                .into_rows_result()
                .map_err(failed("read email address"))?;
            let row = rows
                .maybe_first_row::<(Option<String>,)>()
                .map_err(failed("read email address"))?;
            if let Some((Some(email),)) = row
                && !email.trim().is_empty()
            {
                return Ok(Some(email.trim().to_owned()));
            }
        }
        Ok(None)
    }

    /// The event's name from the catalogue (`events.name`); `None` when it has none.
    pub async fn event_name(&self, event_id: &str) -> Result<Option<String>, NotifyStoreError> {
        let rows = self
            .session
            .execute_unpaged(&self.event_name, (event_id,))
            .await
            .map_err(failed("read event name"))?
            .into_rows_result()
            .map_err(failed("read event name"))?;
        let row = rows
            .maybe_first_row::<(Option<String>,)>()
            .map_err(failed("read event name"))?;
        Ok(row
            .and_then(|(name,)| name)
            .filter(|name| !name.trim().is_empty()))
    }

    pub async fn webhook_endpoints(
        &self,
        user_id: &str,
    ) -> Result<Vec<WebhookEndpoint>, NotifyStoreError> {
        let rows = self
            .session
            .execute_unpaged(&self.endpoints, (user_id,))
            .await
            .map_err(failed("read webhook endpoints"))?
            .into_rows_result()
            .map_err(failed("read webhook endpoints"))?;
        let mut endpoints = Vec::new();
        for row in rows
            .rows::<(String, Option<String>, Option<String>, Option<bool>)>()
            .map_err(failed("read webhook endpoints"))?
        {
            let (endpoint_id, url, secret, disabled) =
                row.map_err(failed("read webhook endpoints"))?;
            endpoints.push(WebhookEndpoint {
                user_id: user_id.to_owned(),
                endpoint_id,
                url: url.unwrap_or_default(),
                secret: secret.unwrap_or_default(),
                disabled: disabled.unwrap_or(false),
            });
        }
        Ok(endpoints)
    }

    pub async fn disable_endpoint(
        &self,
        user_id: &str,
        endpoint_id: &str,
        reason: &str,
    ) -> Result<(), NotifyStoreError> {
        self.session
            .execute_unpaged(
                &self.disable_endpoint,
                (reason, CqlTimestamp(now_millis()), user_id, endpoint_id),
            )
            .await
            .map_err(failed("disable webhook endpoint"))?;
        Ok(())
    }

    /// Registers an endpoint (what ingest's API does; tests and tools use it too).
    pub async fn add_endpoint(
        &self,
        user_id: &str,
        endpoint_id: &str,
        url: &str,
        secret: &str,
    ) -> Result<(), NotifyStoreError> {
        self.session
            .execute_unpaged(
                &self.insert_endpoint,
                (
                    user_id,
                    endpoint_id,
                    url,
                    secret,
                    CqlTimestamp(now_millis()),
                ),
            )
            .await
            .map_err(failed("add webhook endpoint"))?;
        Ok(())
    }
}
