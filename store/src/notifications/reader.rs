//! The notifications family's reader interface for other services: a user's in-app list, newest
//! first, one page at a time (ingest's `GET v1/notifications`), and the one write they make:
//! marking notifications read (`read` is the one column the notifier never writes). The
//! notifier writes the list.

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
    find: PreparedStatement,
    mark: PreparedStatement,
}

/// Notifications looked at by one [`NotificationReader::mark_all_read`], newest first.
pub const MARK_ALL_AT_MOST: i32 = 10_000;
/// Rows read per page while marking all read.
const MARK_PAGE: i32 = 500;

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
                    .map_err(failed("prepare the notification reads"))?;
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
            // Within one partition (a user's list): the id is a clustering column after the
            // time, so finding a row by id filters that partition.
            find: prepare(format!(
                "SELECT created_at FROM {table} WHERE user_id = ? AND notification_id = ? \
                 ALLOW FILTERING"
            ))
            .await?,
            mark: prepare(format!(
                "UPDATE {table} SET read = true \
                 WHERE user_id = ? AND created_at = ? AND notification_id = ?"
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
        .map_err(failed(OPERATION))?;
        let rows = result.into_rows_result().map_err(failed(OPERATION))?;
        rows.rows::<Row>()
            .map_err(failed(OPERATION))?
            .map(|row| row.map(from_row).map_err(failed(OPERATION)))
            .collect()
    }
}

impl NotificationReader {
    /// Marks `user_id`'s notification `notification_id` read; `false` when there is none.
    pub async fn mark_read(
        &self,
        user_id: &str,
        notification_id: &str,
    ) -> Result<bool, NotifyStoreError> {
        const OPERATION: &str = "mark a notification read";
        let rows = self
            .session
            .execute_unpaged(&self.find, (user_id, notification_id))
            .await
            .map_err(failed(OPERATION))?
            .into_rows_result()
            .map_err(failed(OPERATION))?;
        let found = rows
            .maybe_first_row::<(Option<CqlTimestamp>,)>()
            .map_err(failed(OPERATION))?;
        let Some((Some(at),)) = found else {
            return Ok(false);
        };
        self.session
            .execute_unpaged(&self.mark, (user_id, at, notification_id))
            .await
            .map_err(failed(OPERATION))?;
        Ok(true)
    }

    /// Marks `user_id`'s unread notifications read, the newest [`MARK_ALL_AT_MOST`] looked at:
    /// how many were marked.
    pub async fn mark_all_read(&self, user_id: &str) -> Result<usize, NotifyStoreError> {
        const OPERATION: &str = "mark notifications read";
        let (mut marked, mut seen) = (0, 0);
        let mut cursor: Option<(i64, String)> = None;
        // Bounded: at most MARK_ALL_AT_MOST / MARK_PAGE pages.
        while seen < MARK_ALL_AT_MOST {
            let start = match &cursor {
                None => PageStart::Newest,
                Some((at, id)) => PageStart::OlderThan { at: *at, id },
            };
            let page = self.page(user_id, start, MARK_PAGE).await?;
            seen += i32::try_from(page.len()).unwrap_or(MARK_PAGE);
            for n in page.iter().filter(|n| !n.read) {
                self.session
                    .execute_unpaged(&self.mark, (user_id, CqlTimestamp(n.created_at), &n.id))
                    .await
                    .map_err(failed(OPERATION))?;
                marked += 1;
            }
            if page.len() < usize::try_from(MARK_PAGE).unwrap_or(usize::MAX) {
                break;
            }
            cursor = page.last().map(|n| (n.created_at, n.id.clone()));
        }
        Ok(marked)
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
