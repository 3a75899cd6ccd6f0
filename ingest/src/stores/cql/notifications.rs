//! The user's in-app notifications, newest first, from `notifications` (written by the
//! notifier).

use async_trait::async_trait;
use boxoffice_store::notifications::{PageStart, StoredNotification};

use super::{CqlStores, fetch_count, into_page};
use crate::stores::{
    Direction, NotificationRecord, NotificationStore, Page, PageRequest, StoreError, StoreResult,
};

/// A stored notification as a record (the store's reader decodes the row: a `null` `read` is
/// unread, see `boxoffice_store::notifications::reader`).
fn notification(user_id: &str, n: StoredNotification) -> NotificationRecord {
    NotificationRecord {
        id: n.id,
        user_id: user_id.to_owned(),
        kind: n.kind,
        order_id: n.order_id,
        event_id: n.event_id,
        params: n.params.into_iter().collect(),
        read: n.read,
        created_at: n.created_at,
    }
}

#[async_trait]
impl NotificationStore for CqlStores {
    async fn list_notifications(
        &self,
        user_id: &str,
        request: &PageRequest,
    ) -> StoreResult<Page<NotificationRecord>> {
        let start = match (&request.cursor, request.direction) {
            (None, _) => PageStart::Newest,
            (Some(c), Direction::Next) => PageStart::OlderThan {
                at: c.at,
                id: &c.id,
            },
            (Some(c), Direction::Previous) => PageStart::NewerThan {
                at: c.at,
                id: &c.id,
            },
        };
        let rows = self
            .notification_reader
            .page(user_id, start, fetch_count(request))
            .await
            .map_err(|e| StoreError::unavailable("list notifications", e))?;
        let page = into_page(rows, request);
        Ok(Page {
            items: page
                .items
                .into_iter()
                .map(|n| notification(user_id, n))
                .collect(),
            more: page.more,
        })
    }

    async fn mark_read(&self, user_id: &str, notification_id: &str) -> StoreResult<bool> {
        self.notification_reader
            .mark_read(user_id, notification_id)
            .await
            .map_err(|e| StoreError::unavailable("mark a notification read", e))
    }

    async fn mark_all_read(&self, user_id: &str) -> StoreResult<usize> {
        self.notification_reader
            .mark_all_read(user_id)
            .await
            .map_err(|e| StoreError::unavailable("mark notifications read", e))
    }
}
