//! The notifications family's reader interface for other services: a user's in-app list, newest
//! first, one page at a time (ingest's `GET v1/notifications`). Read-only: the notifier writes
//! the list.

use std::collections::HashMap;
use std::sync::Arc;

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;

use super::{NotifyStoreError, failed};
use crate::schema::Keyspace;

/// One in-app notification as the notifier stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredNotification {
    pub id: String,
    /// The notification kind's wire name (`ORDER_RESERVED`, ...).
    pub kind: String,
    pub order_id: Option<String>,
    pub event_id: Option<String>,
    pub params: HashMap<String, String>,
    /// `null` until someone marks it read (the notifier never writes the column, so a
    /// redelivery cannot mark it unread again): `null` reads as unread.
    pub read: bool,
    /// Milliseconds since the epoch.
    pub created_at: i64,
}

/// Where a page of a user's list starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageStart<'a> {
    /// The newest notifications.
    Newest,
    /// Those older than the notification `(at, id)`, newest first.
    OlderThan { at: i64, id: &'a str },
    /// Those newer than the notification `(at, id)`, **oldest first** (the nearest ones).
    NewerThan { at: i64, id: &'a str },
}

/// Reads the in-app list for other services.
#[derive(Debug, Clone)]
pub struct NotificationReader {
    session: Arc<Session>,
    newest: PreparedStatement,
    older: PreparedStatement,
    newer: PreparedStatement,
}

type Row = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<HashMap<String, String>>,
    Option<CqlTimestamp>,
    Option<bool>,
);

fn non_empty(text: Option<String>) -> Option<String> {
    text.filter(|t| !t.is_empty())
}

/// A row as a notification. `read` is `null` until someone marks the notification read (the
/// notifier never writes it, so a redelivery cannot mark it unread again): `null` is unread.
fn from_row(row: Row) -> StoredNotification {
    let (id, kind, order_id, event_id, params, at, read) = row;
    StoredNotification {
        id,
        kind: kind.unwrap_or_default(),
        order_id: non_empty(order_id),
        event_id: non_empty(event_id),
        params: params.unwrap_or_default(),
        read: read.unwrap_or(false),
        created_at: at.map_or(0, |t| t.0),
    }
}

impl NotificationReader {
    /// Prepares the reads. The schema must exist (`schema::ensure_schema`).
    pub async fn new(session: Arc<Session>, keyspace: &Keyspace) -> Result<Self, NotifyStoreError> {
        let table = keyspace.table("notifications");
        let select = format!(
            "SELECT notification_id, kind, order_id, event_id, params, created_at, read \
             FROM {table} WHERE user_id = ?"
        );
        let prepare = |cql: String| {
            let session = Arc::clone(&session);
            async move {
                let mut statement = session
                    .prepare(cql)
                    .await
                    .map_err(|e| failed("prepare the notification reads")(e.to_string()))?;
                statement.set_is_idempotent(true);
                Ok(statement)
            }
        };
        Ok(NotificationReader {
            newest: prepare(format!("{select} LIMIT ?")).await?,
            older: prepare(format!(
                "{select} AND (created_at, notification_id) < (?, ?) LIMIT ?"
            ))
            .await?,
            newer: prepare(format!(
                "{select} AND (created_at, notification_id) > (?, ?) \
                 ORDER BY created_at ASC, notification_id ASC LIMIT ?"
            ))
            .await?,
            session,
        })
    }

    /// Up to `limit` of `user_id`'s notifications from `start`.
    pub async fn page(
        &self,
        user_id: &str,
        start: PageStart<'_>,
        limit: i32,
    ) -> Result<Vec<StoredNotification>, NotifyStoreError> {
        const OPERATION: &str = "read notifications";
        let result = match start {
            PageStart::Newest => {
                self.session
                    .execute_unpaged(&self.newest, (user_id, limit))
                    .await
            }
            PageStart::OlderThan { at, id } => {
                self.session
                    .execute_unpaged(&self.older, (user_id, CqlTimestamp(at), id, limit))
                    .await
            }
            PageStart::NewerThan { at, id } => {
                self.session
                    .execute_unpaged(&self.newer, (user_id, CqlTimestamp(at), id, limit))
                    .await
            }
        }
        .map_err(|e| failed(OPERATION)(e.to_string()))?;
        let rows = result
            .into_rows_result()
            .map_err(|e| failed(OPERATION)(e.to_string()))?;
        rows.rows::<Row>()
            .map_err(|e| failed(OPERATION)(e.to_string()))?
            .map(|row| {
                row.map(from_row)
                    .map_err(|e| failed(OPERATION)(e.to_string()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(read: Option<bool>) -> Row {
        (
            "n1".into(),
            Some("ORDER_RESERVED".into()),
            Some(String::new()),
            None,
            None,
            Some(CqlTimestamp(7)),
            read,
        )
    }

    #[test]
    fn a_null_read_column_is_unread() {
        assert!(!from_row(row(None)).read);
        assert!(!from_row(row(Some(false))).read);
        assert!(from_row(row(Some(true))).read);
        let n = from_row(row(None));
        assert_eq!((n.order_id, n.event_id, n.created_at), (None, None, 7));
        assert!(n.params.is_empty());
    }
}
