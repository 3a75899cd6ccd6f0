//! The user's in-app notifications, newest first, from `notifications` (written by the
//! notifier).

use std::collections::HashMap;

use async_trait::async_trait;
use scylla::value::CqlTimestamp;

use super::{CqlStores, none_if_empty};
use crate::stores::{NotificationRecord, NotificationStore, Page, PageRequest, StoreResult};

type NotificationRow = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<HashMap<String, String>>,
    Option<CqlTimestamp>,
    Option<bool>,
);

/// A stored row as a record. `read` is `null` until someone marks the notification read (the
/// notifier never writes it, so a redelivery cannot mark it unread again): `null` is unread.
fn notification(user_id: &str, row: NotificationRow) -> NotificationRecord {
    let (id, kind, order_id, event_id, params, at, read) = row;
    NotificationRecord {
        id,
        user_id: user_id.to_owned(),
        kind: kind.unwrap_or_default(),
        order_id: none_if_empty(order_id),
        event_id: none_if_empty(event_id),
        params: params.unwrap_or_default().into_iter().collect(),
        read: read.unwrap_or(false),
        created_at: at.map_or(0, |t| t.0),
    }
}

#[async_trait]
impl NotificationStore for CqlStores {
    async fn list_notifications(
        &self,
        user_id: &str,
        request: &PageRequest,
    ) -> StoreResult<Page<NotificationRecord>> {
        let page: Page<NotificationRow> = self
            .page(
                &self.s.notifications_page,
                user_id,
                request,
                "list notifications",
            )
            .await?;
        Ok(Page {
            items: page
                .items
                .into_iter()
                .map(|row| notification(user_id, row))
                .collect(),
            more: page.more,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(read: Option<bool>) -> NotificationRow {
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
        assert!(!notification("u1", row(None)).read);
        assert!(!notification("u1", row(Some(false))).read);
        assert!(notification("u1", row(Some(true))).read);
        let n = notification("u1", row(None));
        assert_eq!((n.order_id, n.event_id, n.created_at), (None, None, 7));
        assert!(n.params.is_empty());
    }
}
