//! Signed webhooks. Each POST carries the notification as JSON and:
//!
//! - `X-Boxoffice-Delivery-Id`: the notification id (the same on every retry, so receivers
//!   deduplicate on it);
//! - `X-Boxoffice-Timestamp`: Unix seconds when this attempt was signed;
//! - `X-Boxoffice-Signature`: `v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
//!
//! Endpoints may be `http://` or `https://` (rustls, certificates from the platform's store).
//!
//! A receiver recomputes the HMAC over the timestamp and the raw body, compares in constant
//! time, and refuses timestamps too far from now (replay). Answers: 2xx delivered; 410 Gone
//! disables the endpoint; 408, 429 and 5xx (and network errors) are retried; other 4xx are
//! refused for good (dead letter).

use std::time::Duration;

use boxoffice_avro::records::NotificationRequested;
use boxoffice_runtime::signature;

use super::SendError;
use super::store::WebhookEndpoint;

pub const DELIVERY_ID_HEADER: &str = "X-Boxoffice-Delivery-Id";
pub const TIMESTAMP_HEADER: &str = "X-Boxoffice-Timestamp";
pub const SIGNATURE_HEADER: &str = "X-Boxoffice-Signature";

/// `v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!("v1={}", signature::tag_hex(secret, timestamp, body))
}

/// Checks a signature header the way a receiver should (constant-time comparison).
pub fn verify(secret: &[u8], timestamp: i64, body: &[u8], header: &str) -> bool {
    header
        .trim()
        .strip_prefix("v1=")
        .and_then(signature::decode_tag)
        .is_some_and(|tag| signature::verify_tag(secret, &timestamp.to_string(), body, &tag))
}

/// The JSON body of a notification's webhook.
pub fn body(n: &NotificationRequested) -> Vec<u8> {
    let value = serde_json::json!({
        "id": n.notification_id(),
        "type": n.kind.wire_name(),
        "user_id": n.user_id,
        "order_id": n.order_id,
        "event_id": n.event_id,
        "params": n.params,
        "occurred_at": n.occurred_at,
    });
    serde_json::to_vec(&value).unwrap_or_default()
}

/// Posts signed webhooks.
#[derive(Debug, Clone)]
pub struct WebhookSender {
    client: reqwest::Client,
}

impl WebhookSender {
    pub fn new(timeout: Duration) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("boxoffice-notifier")
            .build()
            .map_err(|e| format!("building the webhook client: {e}"))?;
        Ok(WebhookSender { client })
    }

    pub async fn send(
        &self,
        endpoint: &WebhookEndpoint,
        n: &NotificationRequested,
        now_seconds: i64,
    ) -> Result<(), SendError> {
        let body = body(n);
        let signature = signature(endpoint.secret.as_bytes(), now_seconds, &body);
        let response = self
            .client
            .post(&endpoint.url)
            .header("Content-Type", "application/json")
            .header(DELIVERY_ID_HEADER, n.notification_id())
            .header(TIMESTAMP_HEADER, now_seconds.to_string())
            .header(SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(e) if e.is_builder() => {
                return Err(SendError::Permanent(format!(
                    "endpoint URL {:?} cannot be used: {e}",
                    endpoint.url
                )));
            }
            Err(e) => return Err(SendError::Retryable(format!("POST failed: {e}"))),
        };
        let status = response.status();
        match status.as_u16() {
            200..=299 => Ok(()),
            410 => Err(SendError::Gone(format!("endpoint answered {status}"))),
            408 | 429 | 500..=599 => {
                Err(SendError::Retryable(format!("endpoint answered {status}")))
            }
            _ => Err(SendError::Permanent(format!("endpoint answered {status}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_detect_tampering() {
        let sig = signature(b"secret", 1700000000, b"{\"a\":1}");
        assert!(sig.starts_with("v1="));
        assert_eq!(sig.len(), 3 + 64);
        assert!(verify(b"secret", 1700000000, b"{\"a\":1}", &sig));
        assert!(!verify(b"secret", 1700000001, b"{\"a\":1}", &sig));
        assert!(!verify(b"other", 1700000000, b"{\"a\":1}", &sig));
        assert!(!verify(b"secret", 1700000000, b"{\"a\":2}", &sig));
    }

    /// An `https://` endpoint is spoken to in TLS (reqwest is built with rustls): the first
    /// bytes a loopback listener receives are a TLS handshake record, and the failed handshake
    /// (no certificate on that side) is a retryable network error, not an unusable URL.
    #[tokio::test]
    async fn https_endpoints_get_a_tls_handshake() {
        use tokio::io::AsyncReadExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let first_bytes = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 3];
            socket.read_exact(&mut buf).await.unwrap();
            buf
        });
        let sender = WebhookSender::new(Duration::from_secs(2)).unwrap();
        let endpoint = WebhookEndpoint {
            user_id: "u".into(),
            endpoint_id: "e".into(),
            url: format!("https://127.0.0.1:{port}/hook"),
            secret: "s".into(),
            disabled: false,
        };
        let n = NotificationRequested {
            record_id: "r".into(),
            user_id: "u".into(),
            order_id: None,
            event_id: None,
            kind: boxoffice_avro::records::NotificationKind::OrderReserved,
            params: Default::default(),
            occurred_at: 0,
        };
        let result = sender.send(&endpoint, &n, 1_700_000_000).await;
        // 0x16: TLS handshake content type; 0x03: TLS major version.
        assert_eq!(&first_bytes.await.unwrap()[..2], &[0x16, 0x03]);
        assert!(matches!(result, Err(SendError::Retryable(_))), "{result:?}");
    }

    #[test]
    fn signatures_are_deterministic_per_timestamp() {
        assert_eq!(signature(b"k", 1, b"x"), signature(b"k", 1, b"x"));
        assert_ne!(signature(b"k", 1, b"x"), signature(b"k", 2, b"x"));
    }
}
