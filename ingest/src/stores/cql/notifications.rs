//! The user's in-app notifications, newest first, from `notifications` (written by the
//! notifier).

use std::collections::HashMap;

use async_trait::async_trait;
use scylla::value::CqlTimestamp;

use super::{CqlStores, none_if_empty};
use crate::stores::{NotificationRecord, NotificationStore, Page, PageRequest, StoreResult};

#[async_trait]
impl NotificationStore for CqlStores {
    async fn list_notifications(
        &self,
        user_id: &str,
        request: &PageRequest,
    ) -> StoreResult<Page<NotificationRecord>> {
        type Row = (
            String,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<HashMap<String, String>>,
            Option<CqlTimestamp>,
        );
        let page: Page<Row> = self
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
                .map(
                    |(id, kind, order_id, event_id, params, at)| NotificationRecord {
                        id,
                        user_id: user_id.to_owned(),
                        kind: kind.unwrap_or_default(),
                        order_id: none_if_empty(order_id),
                        event_id: none_if_empty(event_id),
                        params: params.unwrap_or_default().into_iter().collect(),
                        created_at: at.map_or(0, |t| t.0),
                    },
                )
                .collect(),
            more: page.more,
        })
    }
}
