//! Signed webhooks. Each POST carries the notification as JSON and:
//!
//! - `X-Boxoffice-Delivery-Id`: the notification id (the same on every retry, so receivers
//!   deduplicate on it);
//! - `X-Boxoffice-Timestamp`: Unix seconds when this attempt was signed;
//! - `X-Boxoffice-Signature`: `v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
//!
//! Endpoints may be `http://` or `https://` (rustls, certificates from the platform's store).
//!
//! Egress: every address an endpoint's name resolves to is checked against the
//! [`EgressPolicy`] when the notifier connects (a resolver that drops refused addresses, so a
//! name re-pointed at a private address after registration reaches nothing), and so is a
//! literal address in the URL. Redirects are not followed, system proxies are not used (a proxy
//! would resolve the name itself), every POST is bounded by the timeout, and the response
//! body is never read (only the status), so its size costs nothing. A refused destination is
//! a permanent failure: the record is dead-lettered with the reason.
//!
//! A receiver recomputes the HMAC over the timestamp and the raw body, compares in constant
//! time, and refuses timestamps too far from now (replay). Answers: 2xx delivered; 410 Gone
//! disables the endpoint; 408, 429 and 5xx (and network errors) are retried; other 4xx are
//! refused for good (dead letter).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use boxoffice_avro::records::NotificationRequested;
use boxoffice_runtime::egress::{EgressPolicy, EgressRefused};
use boxoffice_runtime::signature;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

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

/// Resolves endpoint names, keeping only the addresses the egress policy allows; a name with
/// none left fails with the [`EgressRefused`] of its first address.
#[derive(Debug)]
struct EgressResolver {
    policy: EgressPolicy,
}

impl Resolve for EgressResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|addr| match policy.check(addr.ip()) {
                    Ok(()) => true,
                    Err(e) => {
                        refused.get_or_insert(e);
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), refused) {
                (true, Some(refused)) => Err(Box::new(refused) as Box<_>),
                _ => Ok(Box::new(allowed.into_iter()) as Addrs),
            }
        })
    }
}

/// The egress refusal somewhere in a request error's chain of causes, if any.
fn egress_refusal(error: &reqwest::Error) -> Option<&EgressRefused> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if let Some(refused) = e.downcast_ref::<EgressRefused>() {
            return Some(refused);
        }
        cause = e.source();
    }
    None
}

/// Posts signed webhooks.
#[derive(Debug, Clone)]
pub struct WebhookSender {
    client: reqwest::Client,
    policy: EgressPolicy,
}

impl WebhookSender {
    pub fn new(timeout: Duration, policy: EgressPolicy) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(EgressResolver {
                policy: policy.clone(),
            }))
            .user_agent("boxoffice-notifier")
            .build()
            .map_err(|e| format!("building the webhook client: {e}"))?;
        Ok(WebhookSender { client, policy })
    }

    pub async fn send(
        &self,
        endpoint: &WebhookEndpoint,
        n: &NotificationRequested,
        now_seconds: i64,
    ) -> Result<(), SendError> {
        // A literal address in the URL is connected to without resolving: check it here.
        if let Some(addr) = literal_address(&endpoint.url)
            && let Err(refused) = self.policy.check(addr)
        {
            return Err(SendError::Permanent(format!(
                "refused by the egress policy: {refused}"
            )));
        }
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
            // Errors without the URL: they reach logs and dead letters, and users put tokens
            // in their webhook URLs.
            Err(e) if e.is_builder() => {
                return Err(SendError::Permanent(format!(
                    "the endpoint URL cannot be used: {}",
                    e.without_url()
                )));
            }
            Err(e) => {
                if let Some(refused) = egress_refusal(&e) {
                    return Err(SendError::Permanent(format!(
                        "refused by the egress policy: {refused}"
                    )));
                }
                return Err(SendError::Retryable(format!(
                    "POST failed: {}",
                    e.without_url()
                )));
            }
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

/// The host of `url` when it is a literal IPv4 or IPv6 address.
fn literal_address(url: &str) -> Option<IpAddr> {
    match reqwest::Url::parse(url).ok()?.host()? {
        url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        url::Host::Domain(_) => None,
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
        let loopback = EgressPolicy::allowing(vec!["127.0.0.0/8".parse().unwrap()]);
        let sender = WebhookSender::new(Duration::from_secs(2), loopback).unwrap();
        let endpoint = endpoint_at(format!("https://127.0.0.1:{port}/hook"));
        let result = sender.send(&endpoint, &notification(), 1_700_000_000).await;
        // 0x16: TLS handshake content type; 0x03: TLS major version.
        assert_eq!(&first_bytes.await.unwrap()[..2], &[0x16, 0x03]);
        assert!(matches!(result, Err(SendError::Retryable(_))), "{result:?}");
    }

    fn endpoint_at(url: String) -> WebhookEndpoint {
        WebhookEndpoint {
            user_id: "u".into(),
            endpoint_id: "e".into(),
            url,
            secret: "s".into(),
            disabled: false,
        }
    }

    fn notification() -> NotificationRequested {
        NotificationRequested {
            record_id: "r".into(),
            user_id: "u".into(),
            order_id: None,
            event_id: None,
            kind: boxoffice_avro::records::NotificationKind::OrderReserved,
            params: Default::default(),
            occurred_at: 0,
        }
    }

    /// Loopback by address and by a name that resolves to it: refused for good without the
    /// allow-list, and the listener is never connected to; delivered with it.
    #[tokio::test]
    async fn private_destinations_are_refused_unless_allowed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        let endpoint = |host: &str| endpoint_at(format!("http://{host}:{port}/hook"));
        let public =
            WebhookSender::new(Duration::from_secs(2), EgressPolicy::public_only()).unwrap();
        for host in ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"] {
            let result = public.send(&endpoint(host), &notification(), 1).await;
            let Err(SendError::Permanent(reason)) = result else {
                panic!("{host}: {result:?}");
            };
            assert!(reason.contains("egress policy"), "{host}: {reason}");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
        let allowed = EgressPolicy::allowing(vec!["127.0.0.0/8".parse().unwrap()]);
        let local = WebhookSender::new(Duration::from_secs(2), allowed).unwrap();
        for host in ["127.0.0.1", "localhost"] {
            let result = local.send(&endpoint(host), &notification(), 1).await;
            assert_eq!(result, Ok(()), "{host}");
        }
        assert!(accepted.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    }

    /// Users put tokens in webhook URLs: a failed POST's reason (logged, dead-lettered) never
    /// carries the URL.
    #[tokio::test]
    async fn failures_never_carry_the_url() {
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let allowed = EgressPolicy::allowing(vec!["127.0.0.0/8".parse().unwrap()]);
        let sender = WebhookSender::new(Duration::from_secs(2), allowed).unwrap();
        let url = format!("http://127.0.0.1:{closed}/hook?token=s3cr3t-token");
        let result = sender.send(&endpoint_at(url), &notification(), 1).await;
        let Err(SendError::Retryable(reason)) = result else {
            panic!("{result:?}");
        };
        assert!(!reason.contains("s3cr3t-token"), "{reason}");
    }

    #[test]
    fn signatures_are_deterministic_per_timestamp() {
        assert_eq!(signature(b"k", 1, b"x"), signature(b"k", 1, b"x"));
        assert_ne!(signature(b"k", 1, b"x"), signature(b"k", 2, b"x"));
    }
}
