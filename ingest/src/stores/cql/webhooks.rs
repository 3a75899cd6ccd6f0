//! Users' webhook endpoints in CQL (`webhook_endpoints`, one partition per user, read by the
//! notifier). Changes to an existing row are lightweight transactions (`IF EXISTS`), so none
//! of them can bring back a row deleted meanwhile.

use async_trait::async_trait;
use scylla::value::CqlTimestamp;

use super::{CqlStores, applied, none_if_empty};
use crate::stores::{StoreResult, WebhookEndpointRecord, WebhookStore};

type EndpointRow = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<bool>,
    Option<String>,
    Option<CqlTimestamp>,
    Option<CqlTimestamp>,
);

/// A stored row as a record; `null` and `''` texts are none, a `null` flag is "enabled".
fn endpoint(user_id: &str, row: EndpointRow) -> WebhookEndpointRecord {
    let (id, url, description, secret, disabled, reason, disabled_at, created_at) = row;
    WebhookEndpointRecord {
        id,
        user_id: user_id.to_owned(),
        url: url.unwrap_or_default(),
        description: none_if_empty(description),
        secret: secret.unwrap_or_default(),
        disabled: disabled.unwrap_or(false),
        disabled_reason: none_if_empty(reason),
        disabled_at: disabled_at.map(|t| t.0),
        created_at: created_at.map_or(0, |t| t.0),
    }
}

#[async_trait]
impl WebhookStore for CqlStores {
    async fn list_endpoints(&self, user_id: &str) -> StoreResult<Vec<WebhookEndpointRecord>> {
        let rows: Vec<EndpointRow> = self
            .all(&self.s.list_endpoints, (user_id,), "list webhook endpoints")
            .await?;
        Ok(rows.into_iter().map(|row| endpoint(user_id, row)).collect())
    }

    async fn get_endpoint(
        &self,
        user_id: &str,
        endpoint_id: &str,
    ) -> StoreResult<Option<WebhookEndpointRecord>> {
        let row: Option<EndpointRow> = self
            .one(
                &self.s.read_endpoint,
                (user_id, endpoint_id),
                "read webhook endpoint",
            )
            .await?;
        Ok(row.map(|row| endpoint(user_id, row)))
    }

    async fn insert_endpoint(&self, e: &WebhookEndpointRecord) -> StoreResult<()> {
        self.run(
            &self.s.insert_endpoint,
            (
                &e.user_id,
                &e.id,
                &e.url,
                e.description.as_deref().unwrap_or(""),
                &e.secret,
                CqlTimestamp(e.created_at),
            ),
            "write webhook endpoint",
        )
        .await?;
        Ok(())
    }

    async fn delete_endpoint(&self, user_id: &str, endpoint_id: &str) -> StoreResult<bool> {
        let operation = "delete webhook endpoint";
        let result = self
            .run(&self.s.delete_endpoint, (user_id, endpoint_id), operation)
            .await?;
        applied(result, operation)
    }

    async fn enable_endpoint(&self, user_id: &str, endpoint_id: &str) -> StoreResult<bool> {
        let operation = "enable webhook endpoint";
        let result = self
            .run(&self.s.enable_endpoint, (user_id, endpoint_id), operation)
            .await?;
        applied(result, operation)
    }

    async fn set_endpoint_secret(
        &self,
        user_id: &str,
        endpoint_id: &str,
        secret: &str,
    ) -> StoreResult<bool> {
        let operation = "rotate webhook secret";
        let result = self
            .run(
                &self.s.set_endpoint_secret,
                (secret, user_id, endpoint_id),
                operation,
            )
            .await?;
        applied(result, operation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_written_by_others_read_as_enabled_without_reason() {
        // The notifier's own insert leaves description, reason and times unset.
        let row: EndpointRow = (
            "e1".into(),
            Some("https://example.com/hook".into()),
            None,
            Some("whsec_x".into()),
            None,
            Some(String::new()),
            None,
            None,
        );
        let e = endpoint("u1", row);
        assert!(!e.disabled);
        assert_eq!(
            (e.description, e.disabled_reason, e.disabled_at),
            (None, None, None)
        );
        assert_eq!((e.user_id.as_str(), e.secret.as_str()), ("u1", "whsec_x"));
        let disabled: EndpointRow = (
            "e2".into(),
            Some("https://example.com/hook".into()),
            Some("ops".into()),
            Some("s".into()),
            Some(true),
            Some("endpoint answered 410 Gone".into()),
            Some(CqlTimestamp(5)),
            Some(CqlTimestamp(1)),
        );
        let e = endpoint("u1", disabled);
        assert!(e.disabled);
        assert_eq!(
            e.disabled_reason.as_deref(),
            Some("endpoint answered 410 Gone")
        );
        assert_eq!((e.disabled_at, e.created_at), (Some(5), 1));
        assert_eq!(e.description.as_deref(), Some("ops"));
    }
}
