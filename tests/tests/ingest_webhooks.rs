//! Webhooks through ingest, against the real Kafka, CQL store and registry:
//!
//! - the payment provider's callback (`POST v1/payments/webhook`): a correctly signed delivery
//!   puts exactly one decodable `PaymentProviderEvent` on the (prefixed) `payments.requests`,
//!   a second delivery of the same event id adds nothing, a bad signature adds nothing and
//!   answers 400;
//! - endpoints registered through the API (`v1/webhooks`) are the rows the notifier reads: the
//!   real notifier signs a delivery with the secret the API showed once (and with the new one
//!   after a rotation), disables the endpoint on 410, and the API enables it again;
//! - in-app notifications whose `read` was never written are shown unread.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap fails the test"
)]

mod ingest_common;
mod notifier_common;

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use boxoffice_avro::PaymentRequest;
use boxoffice_avro::ids;
use boxoffice_avro::records::{
    NotificationKind, PaymentFailureReason, PaymentProviderEvent, ProviderChargeOutcome,
};
use boxoffice_ingest::config::{ProviderSecret, ProviderWebhookSettings};
use boxoffice_sinks::notify::Channel;
use boxoffice_tests::wait;
use hmac::{Hmac, Mac};
use ingest_common::{Ingest, Reply};
use serde_json::{Value, json};
use sha2::Sha256;

fn hmac_hex(secret: &str, message: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(message);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn now_secs() -> i64 {
    notifier_common::now_ms() / 1000
}

// ---------------------------------------------------------------- payment provider callback

/// What the provider simulator sends: the contract's body and signature header.
struct Provider {
    secret: String,
}

impl Provider {
    fn signature(&self, t: i64, body: &[u8]) -> String {
        let mut signed = format!("{t}.").into_bytes();
        signed.extend_from_slice(body);
        format!("t={t},v1={}", hmac_hex(&self.secret, &signed))
    }

    async fn deliver(&self, ingest: &Ingest, body: &[u8], signature: &str) -> Reply {
        let response = ingest
            .http
            .post(ingest.url("/v1/payments/webhook"))
            .header("content-type", "application/json")
            .header("Boxoffice-Provider-Signature", signature)
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.unwrap();
        Reply {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }
}

fn charge_event(
    event_id: &str,
    kind: &str,
    payment_id: &str,
    order_id: &str,
    failure_code: Option<&str>,
) -> Vec<u8> {
    json!({
        "id": event_id, "type": kind, "created": now_secs(),
        "data": {"object": {
            "id": format!("ch_{event_id}"), "idempotency_key": payment_id,
            "status": if kind == "charge.failed" { "failed" } else { "succeeded" },
            "amount_minor": 9000, "currency": "EUR",
            "failure_code": failure_code,
            "failure_message": failure_code.map(|_| "The card was declined."),
            "metadata": {"payment_id": payment_id, "order_id": order_id}
        }}
    })
    .to_string()
    .into_bytes()
}

async fn provider_row(ingest: &Ingest, event_id: &str) -> Option<(String, bool)> {
    ingest
        .pipeline
        .session
        .query_unpaged(
            format!(
                "SELECT payment_id, forwarded FROM \"{}\".payment_provider_events WHERE provider_event_id = ?",
                ingest.pipeline.keyspace
            ),
            (event_id,),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .maybe_first_row::<(Option<String>, Option<bool>)>()
        .unwrap()
        .map(|(payment, forwarded)| (payment.unwrap_or_default(), forwarded.unwrap_or(false)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn provider_events_reach_payments_requests_once_and_only_when_signed() {
    let provider = Provider {
        secret: format!("whsec_it_{}", uuid::Uuid::new_v4().simple()),
    };
    let settings = ProviderWebhookSettings {
        secret: ProviderSecret::new(provider.secret.as_bytes().to_vec()).unwrap(),
        tolerance: Duration::from_secs(300),
    };
    let ingest = Ingest::start_with_provider("ingest_webhooks_provider", settings).await;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (captured, forged, declined) = (
        format!("evt_ok_{suffix}"),
        format!("evt_forged_{suffix}"),
        format!("evt_declined_{suffix}"),
    );
    // One order: every record has the same key, so they share a partition and its order.
    let order_id = uuid::Uuid::new_v4().to_string();
    let payment_id = ids::payment_id(&order_id);

    let body = charge_event(&captured, "charge.succeeded", &payment_id, &order_id, None);
    let first = provider
        .deliver(&ingest, &body, &provider.signature(now_secs(), &body))
        .await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body, json!({"received": true, "duplicate": false}));
    assert_eq!(
        provider_row(&ingest, &captured).await,
        Some((payment_id.clone(), true))
    );

    // The provider retries the same event (signed anew): acknowledged, nothing produced.
    let again = provider
        .deliver(&ingest, &body, &provider.signature(now_secs(), &body))
        .await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body, json!({"received": true, "duplicate": true}));

    // Forged: signed with another secret, or an old signature replayed.
    let forged_body = charge_event(&forged, "charge.succeeded", &payment_id, &order_id, None);
    let other = Provider {
        secret: "whsec_attacker".to_owned(),
    };
    for signature in [
        other.signature(now_secs(), &forged_body),
        provider.signature(now_secs() - 3600, &forged_body),
    ] {
        let refused = provider.deliver(&ingest, &forged_body, &signature).await;
        refused.assert_problem(400);
        assert!(!refused.body.to_string().contains(&provider.secret));
    }
    assert_eq!(provider_row(&ingest, &forged).await, None);

    // A declined charge after them, as the marker that everything before it was read.
    let declined_body = charge_event(
        &declined,
        "charge.failed",
        &payment_id,
        &order_id,
        Some("card_declined"),
    );
    let reply = provider
        .deliver(
            &ingest,
            &declined_body,
            &provider.signature(now_secs(), &declined_body),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    let mut reader = ingest
        .pipeline
        .reader(&ingest.pipeline.topics.payments)
        .unwrap();
    let records: Vec<PaymentRequest> = reader
        .read_group_until(Duration::from_secs(30), |records: &[PaymentRequest]| {
            records.iter().any(|r| {
                matches!(r, PaymentRequest::PaymentProviderEvent(e) if e.provider_event_id == declined)
            })
        })
        .await
        .unwrap();
    assert_eq!(
        reader.duplicates, 0,
        "the duplicate delivery produced nothing"
    );
    let events: Vec<PaymentProviderEvent> = records
        .into_iter()
        .map(|r| match r {
            PaymentRequest::PaymentProviderEvent(e) => e,
            other => panic!("unexpected record {other:?}"),
        })
        .collect();
    let ids_seen: Vec<&str> = events
        .iter()
        .map(|e| e.provider_event_id.as_str())
        .collect();
    assert_eq!(ids_seen, [captured.as_str(), declined.as_str()]);
    let ok = &events[0];
    assert_eq!(
        ok.record_id,
        ids::record_id_for::<PaymentProviderEvent>(&[&captured])
    );
    assert_eq!(
        (
            ok.payment_id.as_str(),
            ok.order_id.as_str(),
            ok.outcome,
            ok.failure_reason
        ),
        (
            payment_id.as_str(),
            order_id.as_str(),
            ProviderChargeOutcome::Captured,
            None
        )
    );
    assert_eq!(ok.provider_reference, format!("ch_{captured}"));
    let no = &events[1];
    assert_eq!(
        (no.outcome, no.failure_reason, no.detail.as_deref()),
        (
            ProviderChargeOutcome::Declined,
            Some(PaymentFailureReason::Declined),
            Some("The card was declined.")
        )
    );
    ingest.stop().await;
}

// ------------------------------------------------------------------ endpoints and notifier

#[derive(Debug, Clone)]
struct Delivered {
    delivery_id: String,
    body: Value,
}

/// A receiver that verifies every delivery with the secret it was given (the one the API
/// showed), independently of the notifier's code.
#[derive(Default)]
struct Receiver {
    secret: Mutex<String>,
    answer: AtomicU16,
    delivered: Mutex<Vec<Delivered>>,
    bad_signatures: Mutex<u32>,
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let timestamp = header("x-boxoffice-timestamp");
    let mut signed = format!("{timestamp}.").into_bytes();
    signed.extend_from_slice(&body);
    let secret = receiver.secret.lock().unwrap().clone();
    let fresh = timestamp
        .parse::<i64>()
        .is_ok_and(|t| (t - now_secs()).abs() < 300);
    if header("x-boxoffice-signature") != format!("v1={}", hmac_hex(&secret, &signed)) || !fresh {
        *receiver.bad_signatures.lock().unwrap() += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let answer = receiver.answer.load(Ordering::SeqCst);
    if answer != 0 {
        return StatusCode::from_u16(answer).unwrap();
    }
    receiver.delivered.lock().unwrap().push(Delivered {
        delivery_id: header("x-boxoffice-delivery-id"),
        body: serde_json::from_slice(&body).unwrap_or_default(),
    });
    StatusCode::NO_CONTENT
}

async fn start_receiver() -> (Arc<Receiver>, String, tokio::task::JoinHandle<()>) {
    let receiver = Arc::new(Receiver::default());
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (receiver, url, task)
}

async fn wait_for_delivery(receiver: &Receiver, count: usize) -> Vec<Delivered> {
    wait::until(
        &format!("{count} signed deliveries"),
        Duration::from_secs(60),
        || {
            let delivered = receiver.delivered.lock().unwrap().clone();
            async move { (delivered.len() >= count).then_some(delivered) }
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn endpoints_registered_through_the_api_receive_signed_notifications() {
    let ingest = Ingest::start("ingest_webhooks_endpoints", false).await;
    let pipeline = &ingest.pipeline;
    let (user, token, _) = ingest.user("hooked").await;
    let (_, stranger, _) = ingest.user("stranger").await;
    let (receiver, url, server) = start_receiver().await;

    let created = ingest
        .post(
            "/v1/webhooks",
            Some(&token),
            json!({"url": url, "description": "integration test"}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let secret = created.body["secret"].as_str().unwrap().to_owned();
    assert!(
        secret.starts_with("whsec_") && secret.len() == 49,
        "{secret}"
    );

    // The row the notifier reads: this URL, this secret, enabled.
    let store = notifier_common::notify_store(pipeline).await;
    let rows = store.webhook_endpoints(&user).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (
            rows[0].endpoint_id.as_str(),
            rows[0].url.as_str(),
            rows[0].secret.as_str(),
            rows[0].disabled
        ),
        (id.as_str(), url.as_str(), secret.as_str(), false)
    );
    // Shown once: not in the list or the endpoint, and not to anyone else.
    let listed = ingest.get("/v1/webhooks", Some(&token)).await;
    assert_eq!(listed.body["items"][0]["id"], id.as_str());
    assert_eq!(listed.body["items"][0]["description"], "integration test");
    assert!(!listed.body.to_string().contains(&secret));
    let shown = ingest
        .get(&format!("/v1/webhooks/{id}"), Some(&token))
        .await;
    assert_eq!(shown.status, 200);
    assert!(!shown.body.to_string().contains(&secret));
    ingest
        .get(&format!("/v1/webhooks/{id}"), Some(&stranger))
        .await
        .assert_problem(404);
    ingest
        .send(
            "DELETE",
            &format!("/v1/webhooks/{id}"),
            Some(&stranger),
            None,
            &[],
        )
        .await
        .assert_problem(404);

    // The real notifier delivers, signed with that secret.
    *receiver.secret.lock().unwrap() = secret.clone();
    let notifier = notifier_common::RunningNotifier::start(
        pipeline,
        notifier_common::settings(pipeline, &[Channel::Webhook], 1),
    )
    .await;
    let t = notifier_common::now_ms();
    let order_id = uuid::Uuid::new_v4().to_string();
    let life = notifier_common::order_life(&user, &order_id, t);
    notifier_common::produce(pipeline, &life[..1]).await;
    let delivered = wait_for_delivery(&receiver, 1).await;
    assert_eq!(delivered[0].delivery_id, life[0].record_id);
    assert_eq!(delivered[0].body["type"], "ORDER_RESERVED");

    // Rotation: the next delivery is signed with the new secret only.
    let rotated = ingest
        .send(
            "POST",
            &format!("/v1/webhooks/{id}/rotate-secret"),
            Some(&token),
            None,
            &[],
        )
        .await;
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    let new_secret = rotated.body["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    *receiver.secret.lock().unwrap() = new_secret.clone();
    notifier_common::produce(pipeline, &life[1..2]).await;
    let delivered = wait_for_delivery(&receiver, 2).await;
    assert_eq!(delivered[1].delivery_id, life[1].record_id);
    assert_eq!(*receiver.bad_signatures.lock().unwrap(), 0);

    // 410 Gone: the notifier disables the endpoint; the API shows it, and enables it again.
    receiver.answer.store(410, Ordering::SeqCst);
    let gone = notifier_common::notification(
        &user,
        &order_id,
        NotificationKind::OrderExpired,
        &[],
        t + 10,
    );
    notifier_common::produce(pipeline, std::slice::from_ref(&gone)).await;
    let disabled = wait::until("the endpoint disabled", Duration::from_secs(60), || {
        let ingest = &ingest;
        let (path, token) = (format!("/v1/webhooks/{id}"), token.clone());
        async move {
            let reply = ingest.get(&path, Some(&token)).await;
            (reply.body["disabled"] == true).then_some(reply)
        }
    })
    .await
    .unwrap();
    assert!(
        disabled.body["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("410"),
        "{}",
        disabled.body
    );
    assert!(disabled.body["disabled_at"].as_str().is_some());
    notifier.stop().await.unwrap();
    let enabled = ingest
        .send(
            "POST",
            &format!("/v1/webhooks/{id}/enable"),
            Some(&token),
            None,
            &[],
        )
        .await;
    assert_eq!(enabled.status, 200, "{}", enabled.body);
    assert_eq!(enabled.body["disabled"], false);
    let shown = ingest
        .get(&format!("/v1/webhooks/{id}"), Some(&token))
        .await;
    assert_eq!(shown.body["disabled"], false);
    assert!(
        shown.body.get("disabled_reason").is_none(),
        "{}",
        shown.body
    );
    assert!(shown.body.get("disabled_at").is_none(), "{}", shown.body);
    let rows = store.webhook_endpoints(&user).await.unwrap();
    assert_eq!((rows.len(), rows[0].disabled), (1, false));
    assert_eq!(rows[0].secret, new_secret);

    // At most ten per user.
    for i in 1..10 {
        let reply = ingest
            .post(
                "/v1/webhooks",
                Some(&token),
                json!({"url": format!("https://example.com/{i}")}),
            )
            .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
    }
    ingest
        .post(
            "/v1/webhooks",
            Some(&token),
            json!({"url": "https://example.com/eleven"}),
        )
        .await
        .assert_problem(409);
    assert_eq!(store.webhook_endpoints(&user).await.unwrap().len(), 10);

    // Deleted: gone from the notifier's view.
    let deleted = ingest
        .send(
            "DELETE",
            &format!("/v1/webhooks/{id}"),
            Some(&token),
            None,
            &[],
        )
        .await;
    assert_eq!(deleted.status, 204);
    let rows = store.webhook_endpoints(&user).await.unwrap();
    assert!(rows.iter().all(|r| r.endpoint_id != id));
    ingest
        .send(
            "POST",
            &format!("/v1/webhooks/{id}/enable"),
            Some(&token),
            None,
            &[],
        )
        .await
        .assert_problem(404);
    ingest
        .send(
            "POST",
            &format!("/v1/webhooks/{id}/rotate-secret"),
            Some(&token),
            None,
            &[],
        )
        .await
        .assert_problem(404);
    // Enabling or rotating a deleted endpoint must not bring a partial row back.
    assert!(
        store
            .webhook_endpoints(&user)
            .await
            .unwrap()
            .iter()
            .all(|r| r.endpoint_id != id)
    );

    server.abort();
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notifications_never_marked_read_are_shown_unread() {
    let ingest = Ingest::start("ingest_webhooks_read", false).await;
    let (user, token, _) = ingest.user("reader").await;
    let table = format!("\"{}\".notifications", ingest.pipeline.keyspace);
    // As the notifier writes them (no `read`), and one marked read.
    ingest
        .pipeline
        .session
        .query_unpaged(
            format!(
                "INSERT INTO {table} (user_id, created_at, notification_id, kind, order_id, event_id, params) \
                 VALUES (?, ?, 'n-unread', 'ORDER_RESERVED', '', '', {{}})"
            ),
            (&user, scylla::value::CqlTimestamp(2_000)),
        )
        .await
        .unwrap();
    ingest
        .pipeline
        .session
        .query_unpaged(
            format!(
                "INSERT INTO {table} (user_id, created_at, notification_id, kind, read) \
                 VALUES (?, ?, 'n-read', 'ORDER_CONFIRMED', true)"
            ),
            (&user, scylla::value::CqlTimestamp(1_000)),
        )
        .await
        .unwrap();
    let page = ingest.get("/v1/notifications", Some(&token)).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let items = page.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{}", page.body);
    assert_eq!(
        (&items[0]["id"], &items[0]["read"]),
        (&json!("n-unread"), &json!(false))
    );
    assert_eq!(
        (&items[1]["id"], &items[1]["read"]),
        (&json!("n-read"), &json!(true))
    );
    ingest.stop().await;
}

/// Issue 13, finding 2 (SSRF) at registration: a URL whose host is a non-public literal
/// address (or `localhost`) is refused with 422 naming the setting, unless the allow-list
/// names it (this ingest allows loopback, as the local stack does); public destinations and
/// other names are accepted (the notifier checks what names resolve to at delivery).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_urls_at_non_public_addresses_are_refused_at_registration() {
    let ingest = Ingest::start("ingest_webhooks_egress", false).await;
    let (_, token, _) = ingest.user("egress").await;
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/hook",
        "http://192.168.1.1:8080/hook",
        "http://[fd00::1]/hook",
        "http://[::ffff:10.0.0.1]/hook",
        "http://0.0.0.0:9042/",
    ] {
        let reply = ingest
            .post("/v1/webhooks", Some(&token), json!({"url": url}))
            .await;
        reply.assert_problem(422);
        let text = reply.body.to_string();
        assert!(text.contains("WEBHOOK_ALLOW_NETWORKS"), "{url}: {text}");
        assert_eq!(reply.body["errors"][0]["field"], "url", "{url}");
    }
    for url in [
        "https://hooks.example.com/boxoffice",
        "http://127.0.0.1:9/allowed-loopback",
        "http://localhost:9/allowed-loopback",
    ] {
        let reply = ingest
            .post("/v1/webhooks", Some(&token), json!({"url": url}))
            .await;
        assert_eq!(reply.status, 201, "{url}: {}", reply.body);
    }
}
