//! The HTTP payment provider: [`ProviderGateway`] speaks the provider API of the "boxoffice test
//! provider" (shaped like Stripe; `tests/src/provider_sim.rs` serves it locally) and maps its
//! answers onto the gateway's outcomes. It owns the provider settings (`--provider-*`) too.
//!
//! # The API it calls
//!
//! Every call carries `Authorization: Bearer <api key>`.
//!
//! | Call | Answer | Outcome |
//! |---|---|---|
//! | `POST /v1/charges`, `Idempotency-Key: <payment id>` | 200 charge, `status` `pending` / `succeeded` / `failed` | `Pending` / `Captured` / `Declined` (reason from `failure_code`) |
//! | | 400, 402, 422 | `Declined` (`ProviderError`): the provider refused the request, nothing was charged |
//! | `GET /v1/charges/{payment id}` | 200 charge / 404 | as above / `NotFound` |
//! | `POST /v1/refunds`, `Idempotency-Key: <refund id>` | 200 refund `succeeded` / 400, 402 `{"error"}` | `Refunded` / `Failed` |
//! | `GET /v1/refunds/{refund id}` | 200 / 404 | `Refunded` / `NotFound` |
//!
//! Anything else is `Unknown`: a 5xx, a network error, a timeout (`--provider-timeout`), but
//! also a 401/403 (a wrong API key is an operator's problem, not the fan's: the payment waits
//! and is checked again, it is not failed) and a 409 on a charge (the key exists with another
//! amount: the query shows what the provider holds). `Unknown` is resolved by querying, never
//! by a blind second charge.
//!
//! # Secrets
//!
//! The API key is an [`ApiKey`] (redacted in `Debug`, its environment value hidden from
//! `--help`), the payment method token a `gateway::Token`; neither is logged. Logs name the payment (the idempotency key),
//! the call and the HTTP status.
//!
//! # TLS
//!
//! `https://` provider URLs are served by rustls (reqwest's `rustls` feature with its default
//! crypto provider, the same TLS stack the notifier's webhooks use); `http://` is for loopback
//! (the simulator). Certificates are verified against the platform's trust store.

use std::fmt;
use std::time::Duration;

use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::core::{self, Millis, Policy};
use super::gateway::{
    ChargeOutcome, ChargeRequest, DeclineReason, PaymentGateway, RefundOutcome, RefundRequest,
};

/// The local-development API key every side defaults to.
pub const DEFAULT_API_KEY: &str = "sk_boxoffice_local_dev";

/// Where the provider is and how long a call may take.
#[derive(Debug, Clone, clap::Args)]
pub struct ProviderSettings {
    /// Base URL of the payment provider's API (with `--gateway provider`): `https://` in
    /// production, `http://` for a local provider.
    #[arg(long = "provider-url", env = "PAYMENT_PROVIDER_URL",
          default_value = "http://127.0.0.1:8090", value_parser = parse_provider_url)]
    pub url: Url,

    /// API key sent as `Authorization: Bearer <key>` (with `--gateway provider`). Not a flag:
    /// read from `PAYMENT_PROVIDER_API_KEY` or `..._FILE` by
    /// [`super::settings::PaymentSettings::read_secrets`].
    #[arg(skip = ApiKey(DEFAULT_API_KEY.to_owned()))]
    pub api_key: ApiKey,

    /// Longest a provider call may take before its outcome counts as unknown (then queried).
    #[arg(long = "provider-timeout", env = "PAYMENT_PROVIDER_TIMEOUT", default_value = "10s",
          value_parser = parse_provider_timeout)]
    pub timeout: Duration,

    /// How long a charge the provider reported pending (or a call whose answer was lost) waits
    /// for the provider's event before the processor asks; later checks back off to 5 min.
    /// Applies to every gateway (the sandbox's `tok_pending` too).
    #[arg(long = "provider-pending-check", env = "PAYMENT_PROVIDER_PENDING_CHECK",
          default_value = "10s", value_parser = parse_pending_check)]
    pub pending_check: Duration,
}

impl ProviderSettings {
    /// The core's rules with this deployment's pending check.
    pub fn policy(&self) -> Policy {
        Policy {
            pending_check_ms: Millis::try_from(self.pending_check.as_millis())
                .unwrap_or(core::DEFAULT_PENDING_CHECK_MS),
            ..Policy::default()
        }
    }
}

impl Default for ProviderSettings {
    fn default() -> Self {
        ProviderSettings {
            url: Url::parse("http://127.0.0.1:8090").unwrap_or_else(|_| unreachable!()),
            api_key: ApiKey(DEFAULT_API_KEY.to_owned()),
            timeout: Duration::from_secs(10),
            pending_check: Duration::from_secs(10),
        }
    }
}

/// A provider API key: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: &str) -> Result<Self, String> {
        parse_api_key(key)
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

fn parse_api_key(value: &str) -> Result<ApiKey, String> {
    if value.is_empty() || value.len() > 256 || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be 1 to 256 visible ASCII characters (no spaces)".to_owned());
    }
    Ok(ApiKey(value.to_owned()))
}

fn parse_provider_url(value: &str) -> Result<Url, String> {
    let url = Url::parse(value).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("scheme {:?} is not http or https", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".to_owned());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials (use PAYMENT_PROVIDER_API_KEY)".to_owned());
    }
    Ok(url)
}

fn parse_duration_between(value: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let duration = humantime::parse_duration(value).map_err(|e| e.to_string())?;
    if duration < min || duration > max {
        return Err(format!(
            "must be between {} and {}",
            humantime::format_duration(min),
            humantime::format_duration(max)
        ));
    }
    Ok(duration)
}

fn parse_provider_timeout(value: &str) -> Result<Duration, String> {
    parse_duration_between(value, Duration::from_millis(100), Duration::from_secs(300))
}

fn parse_pending_check(value: &str) -> Result<Duration, String> {
    parse_duration_between(value, Duration::from_millis(100), Duration::from_secs(3600))
}

/// The provider could not be set up or does not accept us.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("the HTTP client could not be built: {0}")]
    Client(String),
    #[error(
        "payment provider at {url} is unreachable (check --provider-url / PAYMENT_PROVIDER_URL): {reason}"
    )]
    Unreachable { url: String, reason: String },
    #[error(
        "payment provider at {url} refused the API key with {status} (check PAYMENT_PROVIDER_API_KEY)"
    )]
    Unauthorized { url: String, status: u16 },
    #[error(
        "payment provider at {url} answered {status} to a charge lookup; is --provider-url / PAYMENT_PROVIDER_URL the provider's API?"
    )]
    Unexpected { url: String, status: u16 },
}

/// The provider's charge object (fields the processor uses).
#[derive(Debug, Clone, Deserialize)]
struct ChargeObject {
    id: String,
    status: String,
    #[serde(default)]
    failure_code: Option<String>,
    #[serde(default)]
    failure_message: Option<String>,
}

/// The provider's refund object (fields the processor uses).
#[derive(Debug, Clone, Deserialize)]
struct RefundObject {
    id: String,
    status: String,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: Option<String>,
}

#[derive(Serialize)]
struct ChargeBody<'a> {
    amount_minor: i64,
    currency: &'a str,
    payment_method: &'a str,
    metadata: Metadata<'a>,
}

#[derive(Serialize)]
struct Metadata<'a> {
    payment_id: &'a str,
    order_id: &'a str,
}

#[derive(Serialize)]
struct RefundBody<'a> {
    charge: &'a str,
    amount_minor: i64,
    currency: &'a str,
}

/// What one HTTP exchange gave: a status and body, or why there is none.
enum Reply {
    Answered { status: StatusCode, body: Vec<u8> },
    Failed(String),
}

/// A payment provider over HTTP (see the module docs).
pub struct ProviderGateway {
    base: Url,
    api_key: ApiKey,
    http: reqwest::Client,
    timeout: Duration,
}

impl fmt::Debug for ProviderGateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderGateway")
            .field("base", &self.base.as_str())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ProviderGateway {
    pub fn new(settings: &ProviderSettings) -> Result<Self, ProviderError> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(|e| ProviderError::Client(e.to_string()))?;
        Ok(ProviderGateway {
            base: settings.url.clone(),
            api_key: settings.api_key.clone(),
            http,
            timeout: settings.timeout,
        })
    }

    /// Startup check: the provider answers, and accepts the API key (a lookup of a charge that
    /// does not exist must answer 404).
    pub async fn check(&self) -> Result<(), ProviderError> {
        let url = self.url(&["v1", "charges", "boxoffice-startup-check"]);
        let response = self
            .http
            .get(url)
            .bearer_auth(self.api_key.expose())
            .send()
            .await
            .map_err(|e| ProviderError::Unreachable {
                url: self.base.to_string(),
                reason: e.without_url().to_string(),
            })?;
        match response.status() {
            StatusCode::NOT_FOUND | StatusCode::OK => Ok(()),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(ProviderError::Unauthorized {
                url: self.base.to_string(),
                status: response.status().as_u16(),
            }),
            other => Err(ProviderError::Unexpected {
                url: self.base.to_string(),
                status: other.as_u16(),
            }),
        }
    }

    /// `base` + path segments (each percent-encoded: ids come from records).
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        match request.bearer_auth(self.api_key.expose()).send().await {
            Ok(response) => {
                let status = response.status();
                match response.bytes().await {
                    Ok(body) => Reply::Answered {
                        status,
                        body: body.to_vec(),
                    },
                    Err(e) => Reply::Failed(describe(&e, self.timeout)),
                }
            }
            Err(e) => Reply::Failed(describe(&e, self.timeout)),
        }
    }

    fn charge_outcome(&self, key: &str, call: &str, reply: Reply) -> ChargeOutcome {
        match reply {
            Reply::Failed(detail) => {
                warn!(payment_id = key, call, detail = %detail, "provider call failed; outcome unknown");
                ChargeOutcome::Unknown { detail }
            }
            Reply::Answered { status, body } => {
                debug!(
                    payment_id = key,
                    call,
                    status = status.as_u16(),
                    "provider answered"
                );
                charge_reply(call, status, &body)
            }
        }
    }
}

/// A failed exchange, for logs and the payment's history (never a header: the key is there).
fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        format!("no answer within {}", humantime::format_duration(timeout))
    } else if e.is_connect() {
        format!("provider unreachable: {e}")
    } else {
        format!("provider call failed: {e}")
    }
}

/// A charge answer (`call` is `charge` or `query`) as an outcome. Pure, unit-tested.
fn charge_reply(call: &str, status: StatusCode, body: &[u8]) -> ChargeOutcome {
    let is_query = call == "query";
    if status == StatusCode::NOT_FOUND && is_query {
        return ChargeOutcome::NotFound;
    }
    if status.is_success() {
        return match serde_json::from_slice::<ChargeObject>(body) {
            Ok(charge) => charge_object_outcome(charge),
            Err(e) => ChargeOutcome::Unknown {
                detail: format!("provider answered {status} with an unreadable charge: {e}"),
            },
        };
    }
    let refused = matches!(
        status,
        StatusCode::BAD_REQUEST | StatusCode::PAYMENT_REQUIRED | StatusCode::UNPROCESSABLE_ENTITY
    );
    if refused && !is_query {
        // The provider refused the request itself: nothing was charged.
        return ChargeOutcome::Declined {
            reason: DeclineReason::ProviderError,
            message: format!(
                "provider refused the charge ({status}): {}",
                error_text(body)
            ),
        };
    }
    ChargeOutcome::Unknown {
        detail: format!("provider answered {status} to {call}"),
    }
}

fn charge_object_outcome(charge: ChargeObject) -> ChargeOutcome {
    match charge.status.as_str() {
        "succeeded" => ChargeOutcome::Captured {
            provider_reference: charge.id,
        },
        "pending" => ChargeOutcome::Pending {
            provider_reference: charge.id,
        },
        "failed" => {
            let code = charge.failure_code.unwrap_or_default();
            let reason = match code.as_str() {
                "insufficient_funds" => DeclineReason::InsufficientFunds,
                "processing_error" => DeclineReason::ProviderError,
                // `card_declined` and any code this processor does not know.
                _ => DeclineReason::Declined,
            };
            let message = charge
                .failure_message
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| {
                    if code.is_empty() {
                        "declined".to_owned()
                    } else {
                        code
                    }
                });
            ChargeOutcome::Declined { reason, message }
        }
        other => ChargeOutcome::Unknown {
            detail: format!("provider reported charge status {other:?}"),
        },
    }
}

/// A refund answer (`call` is `refund` or `query_refund`) as an outcome. Pure, unit-tested.
fn refund_reply(call: &str, status: StatusCode, body: &[u8]) -> RefundOutcome {
    let is_query = call == "query_refund";
    if status == StatusCode::NOT_FOUND && is_query {
        return RefundOutcome::NotFound;
    }
    if status.is_success() {
        return match serde_json::from_slice::<RefundObject>(body) {
            Ok(refund) if refund.status == "succeeded" => RefundOutcome::Refunded {
                provider_reference: refund.id,
            },
            Ok(refund) if refund.status == "failed" => RefundOutcome::Failed {
                message: format!("provider reports refund {} failed", refund.id),
            },
            Ok(refund) => RefundOutcome::Unknown {
                detail: format!("provider reported refund status {:?}", refund.status),
            },
            Err(e) => RefundOutcome::Unknown {
                detail: format!("provider answered {status} with an unreadable refund: {e}"),
            },
        };
    }
    if !is_query
        && matches!(
            status,
            StatusCode::BAD_REQUEST | StatusCode::PAYMENT_REQUIRED
        )
    {
        return RefundOutcome::Failed {
            message: format!(
                "provider refused the refund ({status}): {}",
                error_text(body)
            ),
        };
    }
    RefundOutcome::Unknown {
        detail: format!("provider answered {status} to {call}"),
    }
}

/// The provider's `{"error": ...}` text (bounded: it goes into the payment's history).
fn error_text(body: &[u8]) -> String {
    let text = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|b| b.error)
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    text.chars().take(200).collect()
}

impl PaymentGateway for ProviderGateway {
    async fn charge(&self, request: &ChargeRequest) -> ChargeOutcome {
        let body = ChargeBody {
            amount_minor: request.amount_minor,
            currency: &request.currency,
            payment_method: request.token.expose(),
            metadata: Metadata {
                payment_id: &request.idempotency_key,
                order_id: &request.order_id,
            },
        };
        let http = self
            .http
            .post(self.url(&["v1", "charges"]))
            .header("Idempotency-Key", &request.idempotency_key)
            .json(&body);
        let reply = self.send(http).await;
        self.charge_outcome(&request.idempotency_key, "charge", reply)
    }

    async fn query(&self, idempotency_key: &str) -> ChargeOutcome {
        let http = self.http.get(self.url(&["v1", "charges", idempotency_key]));
        let reply = self.send(http).await;
        self.charge_outcome(idempotency_key, "query", reply)
    }

    async fn refund(&self, request: &RefundRequest) -> RefundOutcome {
        let body = RefundBody {
            charge: &request.charge_reference,
            amount_minor: request.amount_minor,
            currency: &request.currency,
        };
        let http = self
            .http
            .post(self.url(&["v1", "refunds"]))
            .header("Idempotency-Key", &request.idempotency_key)
            .json(&body);
        match self.send(http).await {
            Reply::Failed(detail) => {
                warn!(refund_id = %request.idempotency_key, detail = %detail, "provider refund call failed; outcome unknown");
                RefundOutcome::Unknown { detail }
            }
            Reply::Answered { status, body } => refund_reply("refund", status, &body),
        }
    }

    async fn query_refund(&self, idempotency_key: &str) -> RefundOutcome {
        let http = self.http.get(self.url(&["v1", "refunds", idempotency_key]));
        match self.send(http).await {
            Reply::Failed(detail) => RefundOutcome::Unknown { detail },
            Reply::Answered { status, body } => refund_reply("query_refund", status, &body),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge_json(status: &str, code: Option<&str>) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "id": "ch_1", "idempotency_key": "p", "status": status, "amount_minor": 100,
            "currency": "EUR", "failure_code": code, "failure_message": code.map(|c| format!("{c}!")),
            "metadata": {"payment_id": "p", "order_id": "o"}
        }))
        .unwrap_or_default()
    }

    #[test]
    fn charge_answers_map_to_outcomes() {
        let ok = StatusCode::OK;
        assert_eq!(
            charge_reply("charge", ok, &charge_json("pending", None)),
            ChargeOutcome::Pending {
                provider_reference: "ch_1".into()
            }
        );
        assert_eq!(
            charge_reply("query", ok, &charge_json("succeeded", None)),
            ChargeOutcome::Captured {
                provider_reference: "ch_1".into()
            }
        );
        for (code, reason) in [
            ("card_declined", DeclineReason::Declined),
            ("insufficient_funds", DeclineReason::InsufficientFunds),
            ("processing_error", DeclineReason::ProviderError),
            ("something_new", DeclineReason::Declined),
        ] {
            assert_eq!(
                charge_reply("charge", ok, &charge_json("failed", Some(code))),
                ChargeOutcome::Declined {
                    reason,
                    message: format!("{code}!")
                }
            );
        }
        assert_eq!(
            charge_reply("query", StatusCode::NOT_FOUND, b"{}"),
            ChargeOutcome::NotFound
        );
    }

    #[test]
    fn only_a_refusal_of_the_request_itself_declines_everything_else_is_unknown() {
        assert!(matches!(
            charge_reply("charge", StatusCode::PAYMENT_REQUIRED, br#"{"error":"bad token"}"#),
            ChargeOutcome::Declined { reason: DeclineReason::ProviderError, ref message } if message.contains("bad token")
        ));
        for status in [
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::BAD_GATEWAY,
            StatusCode::GATEWAY_TIMEOUT,
            StatusCode::UNAUTHORIZED,
            StatusCode::CONFLICT,
            // A charge call never answers "not found": a wrong URL, not a verdict.
            StatusCode::NOT_FOUND,
        ] {
            assert!(
                matches!(
                    charge_reply("charge", status, b""),
                    ChargeOutcome::Unknown { .. }
                ),
                "{status}"
            );
        }
        assert!(matches!(
            charge_reply("query", StatusCode::BAD_REQUEST, b""),
            ChargeOutcome::Unknown { .. }
        ));
        assert!(matches!(
            charge_reply("charge", StatusCode::OK, b"not json"),
            ChargeOutcome::Unknown { .. }
        ));
    }

    #[test]
    fn refund_answers_map_to_outcomes() {
        let refund = br#"{"id":"re_1","status":"succeeded","charge":"ch_1","amount_minor":100}"#;
        assert_eq!(
            refund_reply("refund", StatusCode::OK, refund),
            RefundOutcome::Refunded {
                provider_reference: "re_1".into()
            }
        );
        assert!(matches!(
            refund_reply("refund", StatusCode::PAYMENT_REQUIRED, br#"{"error":"more than captured"}"#),
            RefundOutcome::Failed { ref message } if message.contains("more than captured")
        ));
        assert_eq!(
            refund_reply("query_refund", StatusCode::NOT_FOUND, b""),
            RefundOutcome::NotFound
        );
        assert!(matches!(
            refund_reply("refund", StatusCode::SERVICE_UNAVAILABLE, b""),
            RefundOutcome::Unknown { .. }
        ));
    }

    #[test]
    fn settings_refuse_what_cannot_work() {
        assert!(parse_provider_url("https://api.example.com").is_ok());
        assert!(parse_provider_url("ftp://x").is_err());
        assert!(parse_provider_url("http://user:pw@x").is_err());
        assert!(parse_provider_url("not a url").is_err());
        assert!(parse_provider_url("http://127.0.0.1:8090/base/").is_ok());
        assert!(parse_api_key("").is_err());
        assert!(parse_api_key("sk with space").is_err());
        assert!(parse_provider_timeout("0s").is_err());
        assert!(parse_provider_timeout("2s").is_ok());
        assert!(parse_pending_check("2h").is_err());
    }

    #[test]
    fn urls_are_built_from_segments_under_the_base() {
        let settings = ProviderSettings {
            url: parse_provider_url("http://127.0.0.1:1/api/").unwrap_or_else(|e| panic!("{e}")),
            ..ProviderSettings::default()
        };
        let gateway = ProviderGateway::new(&settings).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            gateway.url(&["v1", "charges", "a/b c"]).as_str(),
            "http://127.0.0.1:1/api/v1/charges/a%2Fb%20c"
        );
    }

    #[test]
    fn an_https_provider_gets_a_tls_client() {
        let settings = ProviderSettings {
            url: parse_provider_url("https://api.provider.example/")
                .unwrap_or_else(|e| panic!("{e}")),
            ..ProviderSettings::default()
        };
        assert!(ProviderGateway::new(&settings).is_ok());
    }

    #[test]
    fn the_api_key_never_shows_in_debug_output() {
        let settings = ProviderSettings {
            api_key: ApiKey("sk_live_secret".into()),
            ..ProviderSettings::default()
        };
        assert!(!format!("{settings:?}").contains("sk_live_secret"));
        let gateway = ProviderGateway::new(&settings).unwrap_or_else(|e| panic!("{e}"));
        assert!(!format!("{gateway:?}").contains("sk_live_secret"));
    }
}
