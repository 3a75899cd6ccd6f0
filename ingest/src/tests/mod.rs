//! Router tests without any network: validation, problem+json shapes, every auth path, the
//! order and payment rules, pagination tokens. Stores are the in-memory fakes in `memory`;
//! the real stores are tested against the real stack in tests/tests/ingest_*.rs.
#![allow(clippy::unwrap_used, reason = "tests: a failed unwrap fails the test")]

mod accounts;
mod memory;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use boxoffice_avro::{BookingCommand, PaymentRequest};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::config::{IngestSettings, JwtSecret, TopicPrefix};
use crate::live::Live;
use crate::state::SharedState;
use crate::stores::{EventRecord, OrderDecision, Role};
use memory::{Memory, RecordingBus};

const SECRET: &str = "router-test-secret-of-at-least-32-bytes!";

fn settings(secret: &str) -> IngestSettings {
    IngestSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        topic_prefix: TopicPrefix::default(),
        jwt_secret: JwtSecret::new(secret.as_bytes().to_vec()).unwrap(),
        jwt_issuer: "boxoffice-ingest".into(),
        jwt_audience: "boxoffice-api".into(),
        access_token_ttl: Duration::from_secs(900),
        refresh_token_ttl: Duration::from_secs(3600),
        produce_timeout: Duration::from_secs(1),
        login_account_burst: 5,
        login_account_refill: Duration::from_secs(60),
        login_ip_burst: 1000,
        login_ip_refill: Duration::from_millis(1),
        // Every test user orders and registers from this one address.
        order_user_burst: 100_000,
        order_user_refill: Duration::from_millis(1),
        order_ip_burst: 100_000,
        order_ip_refill: Duration::from_millis(1),
        register_ip_burst: 100_000,
        register_ip_refill: Duration::from_millis(1),
        trusted_proxies: Vec::new(),
        streams_per_user: 1_000,
        streams_per_address: 10_000,
        streams_total: 100_000,
        password_hash_concurrency: 2,
        password_hash_queue: 1000,
        account_link_base: "https://tickets.example".parse().unwrap(),
        // Webhook receivers in the tests listen on loopback.
        egress: boxoffice_runtime::egress::EgressArgs::loopback(),
    }
}

struct Harness {
    state: SharedState,
    memory: Memory,
    bus: RecordingBus,
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

impl Reply {
    fn problem_type(&self) -> &str {
        self.body["type"].as_str().unwrap_or("")
    }

    fn assert_problem(&self, status: u16) {
        assert_eq!(self.status.as_u16(), status, "{}", self.body);
        assert_eq!(
            self.headers
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "{}",
            self.body
        );
        assert!(
            self.problem_type()
                .starts_with("https://boxoffice.dev/problems/"),
            "{}",
            self.body
        );
        assert_eq!(self.body["status"], status);
    }
}

impl Harness {
    /// What the booking processor does once it decided them: stores the row of every order
    /// requested on the bus so far (ingest writes none).
    fn store_requested_orders(&self) {
        for command in self.bus.commands.lock().unwrap().iter() {
            if let BookingCommand::BookingRequested(r) = command {
                self.memory.insert_order(crate::stores::OrderRecord {
                    id: r.order_id.clone(),
                    event_id: r.event_id.clone(),
                    user_id: r.user_id.clone(),
                    number_slot: r.number_slot,
                    created_at: r.occurred_at,
                    idempotency_key: r.idempotency_key.clone(),
                });
            }
        }
    }

    fn new() -> Self {
        let memory = Memory::default();
        let bus = RecordingBus::default();
        let state = crate::state(
            &settings(SECRET),
            memory.stores(),
            Arc::new(bus.clone()),
            Arc::new(Live::new()),
        );
        Harness { state, memory, bus }
    }

    async fn raw(&self, request: Request<Body>) -> Reply {
        let response = crate::router(self.state.clone())
            .oneshot(request)
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        self.call_with(method, path, token, body, &[]).await
    }

    async fn call_with(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = match body {
            Some(body) => request
                .header("content-type", "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        };
        self.raw(request.unwrap()).await
    }

    async fn register(&self, name: &str) -> Value {
        let reply = self
            .call(
                "POST",
                "/v1/register",
                None,
                Some(json!({
                    "email": format!("{name}@example.com"), "user_name": name, "first_name": "Ann",
                    "last_name": "Lee", "password": "a good password", "mobile_phone": "+49 30 1234567"
                })),
            )
            .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
        reply.body
    }

    /// The newest account notice of `kind` sent to `to`.
    fn notice(
        &self,
        kind: boxoffice_avro::records::NotificationKind,
        to: &str,
    ) -> Option<boxoffice_avro::records::NotificationRequested> {
        self.bus
            .notices
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|n| n.kind == kind && n.params.get("to").map(String::as_str) == Some(to))
            .cloned()
    }

    /// Opens the verification link the registration of `name` sent.
    async fn verify(&self, name: &str) -> Reply {
        let notice = self
            .notice(
                boxoffice_avro::records::NotificationKind::EmailVerification,
                &format!("{name}@example.com"),
            )
            .expect("registration sends a verification link");
        self.call(
            "POST",
            "/v1/verify-email",
            None,
            Some(json!({"token": notice.params["token"]})),
        )
        .await
    }

    /// Registers, verifies the address through its emailed link and logs in; returns (user
    /// id, access token, refresh token).
    async fn user(&self, name: &str) -> (String, String, String) {
        self.register(name).await;
        let verified = self.verify(name).await;
        assert_eq!(verified.status, StatusCode::OK, "{}", verified.body);
        let login = self
            .call(
                "POST",
                "/v1/login",
                None,
                Some(json!({"login": name, "password": "a good password"})),
            )
            .await;
        assert_eq!(login.status, StatusCode::OK, "{}", login.body);
        (
            login.body["user_id"].as_str().unwrap().to_owned(),
            login.body["access_token"].as_str().unwrap().to_owned(),
            login.body["refresh_token"].as_str().unwrap().to_owned(),
        )
    }

    async fn admin(&self) -> String {
        let (id, _, _) = self.user("root_admin").await;
        crate::stores::AccountStore::set_role(&self.memory, &id, Role::Admin)
            .await
            .unwrap();
        let login = self
            .call(
                "POST",
                "/v1/login",
                None,
                Some(json!({"login": "root_admin", "password": "a good password"})),
            )
            .await;
        login.body["access_token"].as_str().unwrap().to_owned()
    }

    fn event(&self) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        self.memory.put_event_now(EventRecord {
            id: id.clone(),
            name: "Gig".into(),
            description: String::new(),
            venue: "Hall".into(),
            category_id: None,
            starts_at: 2_000_000_000_000,
            price_minor: 4500,
            currency: "EUR".into(),
            capacity: 100,
            sale_starts_at: 0,
            sale_ends_at: 3_000_000_000_000,
            hold_seconds: 600,
            max_per_order: 0,
            max_per_user: 0,
            created_at: 1,
            updated_at: 1,
        });
        id
    }
}

#[tokio::test]
async fn bad_input_is_always_a_4xx_problem() {
    let h = Harness::new();
    let cases: Vec<(Body, Option<&str>, u16)> = vec![
        (Body::from("{not json"), Some("application/json"), 400),
        (Body::from("[]"), Some("application/json"), 422),
        (Body::from(r#"{"email": 5}"#), Some("application/json"), 422),
        (
            Body::from(r#"{"email":"a@b.co"}"#),
            Some("application/json"),
            422,
        ),
        (Body::from(r#"{"email":"a@b.co"}"#), None, 415),
        (
            Body::from(vec![b'x'; 200 * 1024]),
            Some("application/json"),
            413,
        ),
        (Body::from("\u{0}\u{1}\u{2}"), Some("application/json"), 400),
    ];
    for (body, content_type, status) in cases {
        let mut request = Request::builder().method("POST").uri("/v1/register");
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        h.raw(request.body(body).unwrap())
            .await
            .assert_problem(status);
    }
    let missing = h
        .call(
            "POST",
            "/v1/register",
            None,
            Some(json!({"email": "a@b.co"})),
        )
        .await;
    missing.assert_problem(422);
    assert_eq!(
        missing.body["errors"][0]["field"], "user_name",
        "{}",
        missing.body
    );

    let odd = h
        .call(
            "POST",
            "/v1/register",
            None,
            Some(json!({
                "email": "x'); DROP TABLE users;--@a.b", "user_name": "'; SELECT * FROM auth_profiles; --",
                "first_name": "a\u{202E}b", "last_name": "\u{0}", "password": "short", "mobile_phone": "call me"
            })),
        )
        .await;
    odd.assert_problem(422);
    let fields: Vec<&str> = odd.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "email",
            "user_name",
            "first_name",
            "last_name",
            "mobile_phone",
            "password"
        ]
    );

    // Unicode names are fine.
    let ok = h
        .call(
            "POST",
            "/v1/register",
            None,
            Some(json!({
                "email": "zoe@example.com", "user_name": "zoe", "first_name": "Zoë 李",
                "last_name": "Ñúñez-😀", "password": "ünïcödé pässwörd", "mobile_phone": "0301234567"
            })),
        )
        .await;
    assert_eq!(ok.status, StatusCode::ACCEPTED, "{}", ok.body);

    h.call("GET", "/v1/nowhere", None, None)
        .await
        .assert_problem(404);
    h.call("DELETE", "/v1/register", None, None)
        .await
        .assert_problem(405);
}

#[tokio::test]
async fn registration_is_unique_and_login_works_by_name_or_email() {
    use boxoffice_avro::records::NotificationKind;
    let h = Harness::new();
    let first = h.register("ann").await;
    let links = |h: &Harness| {
        h.bus
            .notices
            .lock()
            .unwrap()
            .iter()
            .filter(|n| n.kind == NotificationKind::EmailVerification)
            .count()
    };
    // Registering an address that is not verified yet sends the link again.
    assert_eq!(h.register("ann").await, first);
    assert_eq!(links(&h), 2);
    assert_eq!(h.verify("ann").await.status, StatusCode::OK);
    let again = h
        .call(
            "POST",
            "/v1/register",
            None,
            Some(json!({"email": "ANN@example.com", "user_name": "other", "first_name": "A", "last_name": "B",
                        "password": "a good password", "mobile_phone": "+4930123456"})),
        )
        .await;
    // Issue 13, findings 8 and 9: the answer does not say the address has an account; its
    // owner is told by email.
    assert_eq!((again.status, &again.body), (StatusCode::ACCEPTED, &first));
    assert!(
        h.notice(NotificationKind::AccountExists, "ann@example.com")
            .is_some()
    );
    let same_name = h
        .call(
            "POST",
            "/v1/register",
            None,
            Some(json!({"email": "new@example.com", "user_name": "Ann", "first_name": "A", "last_name": "B",
                        "password": "a good password", "mobile_phone": "+4930123456"})),
        )
        .await;
    assert_eq!(
        (same_name.status, &same_name.body),
        (StatusCode::ACCEPTED, &first)
    );
    let taken = h
        .notice(NotificationKind::UserNameTaken, "new@example.com")
        .expect("the registrant hears that the name is taken");
    assert_eq!(taken.params["user_name"], "ann");
    assert!(
        h.notice(NotificationKind::EmailVerification, "new@example.com")
            .is_none(),
        "no account was made"
    );
    for login in [
        json!({"login": "ann@example.com", "password": "a good password"}),
        json!({"email": "Ann@Example.com", "password": "a good password"}),
        json!({"user_name": "ANN", "password": "a good password"}),
    ] {
        let reply = h.call("POST", "/v1/login", None, Some(login)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(reply.body["token_type"], "Bearer");
        assert_eq!(reply.body["expires_in"], 900);
    }
    h.call(
        "POST",
        "/v1/login",
        None,
        Some(json!({"login": "ann", "password": "wrong password"})),
    )
    .await
    .assert_problem(401);
    h.call(
        "POST",
        "/v1/login",
        None,
        Some(json!({"login": "nobody", "password": "wrong password"})),
    )
    .await
    .assert_problem(401);
}

/// Issue 13, finding 9: the email and the user name of one account share one bucket.
#[tokio::test]
async fn an_accounts_email_and_user_name_share_one_login_bucket() {
    let h = Harness::new();
    h.register("dora").await;
    for login in [
        "dora",
        "dora",
        "dora@example.com",
        "DORA@example.com",
        "dora",
    ] {
        h.call(
            "POST",
            "/v1/login",
            None,
            Some(json!({"login": login, "password": "wrong password"})),
        )
        .await
        .assert_problem(401);
    }
    h.call(
        "POST",
        "/v1/login",
        None,
        Some(json!({"login": "dora@example.com", "password": "a good password"})),
    )
    .await
    .assert_problem(429);
}

/// Issue 13, finding 9: answers carry security headers; token answers are never cached.
#[tokio::test]
async fn answers_carry_security_headers_and_tokens_are_not_cached() {
    let h = Harness::new();
    h.register("erin").await;
    let reply = h
        .call(
            "POST",
            "/v1/login",
            None,
            Some(json!({"login": "erin", "password": "a good password"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    for (name, value) in [
        ("cache-control", "no-store"),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        (
            "content-security-policy",
            "default-src 'none'; frame-ancestors 'none'",
        ),
    ] {
        assert_eq!(
            reply.headers.get(name).and_then(|v| v.to_str().ok()),
            Some(value),
            "{name}"
        );
    }
    let problem = h.call("GET", "/v1/orders", None, None).await;
    assert_eq!(
        problem
            .headers
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
}

#[tokio::test]
async fn logins_are_rate_limited_per_account() {
    let h = Harness::new();
    h.register("bob").await;
    // Burst of 5 per account; three attempts were not used yet.
    for _ in 0..5 {
        h.call(
            "POST",
            "/v1/login",
            None,
            Some(json!({"login": "bob", "password": "wrong password"})),
        )
        .await
        .assert_problem(401);
    }
    let limited = h
        .call(
            "POST",
            "/v1/login",
            None,
            Some(json!({"login": "bob", "password": "a good password"})),
        )
        .await;
    limited.assert_problem(429);
    assert!(limited.headers.get("retry-after").is_some());
    // Another account is not affected.
    h.register("carl").await;
    let other = h
        .call(
            "POST",
            "/v1/login",
            None,
            Some(json!({"login": "carl", "password": "a good password"})),
        )
        .await;
    assert_eq!(other.status, StatusCode::OK);
}

#[tokio::test]
async fn bad_tokens_are_refused_with_401() {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    let h = Harness::new();
    let (id, token, _) = h.user("dora").await;
    assert_eq!(
        h.call("GET", &format!("/v1/users/{id}"), Some(&token), None)
            .await
            .status,
        StatusCode::OK
    );
    let path = format!("/v1/users/{id}");
    let keys = &h.state.tokens;
    let mut claims = keys.verify(&token).unwrap();

    let expired = {
        let mut c = claims.clone();
        c.exp = crate::auth::jwt::now_secs() - 120;
        keys.sign(&c).unwrap()
    };
    let tampered = {
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        claims.role = Role::Admin;
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
        parts.join(".")
    };
    let alg_none = {
        let header = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"alg":"none","typ":"JWT","kid":"{}"}}"#,
            keys.kid()
        ));
        format!(
            "{header}.{}.",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap())
        )
    };
    let other_key = crate::auth::jwt::TokenKeys::new(
        &JwtSecret::new(b"another-secret-another-secret-another!!".to_vec()).unwrap(),
        "boxoffice-ingest",
        "boxoffice-api",
        Duration::from_secs(900),
    )
    .issue(&id, Role::User, "s", true)
    .unwrap();
    let wrong_audience = crate::auth::jwt::TokenKeys::new(
        &JwtSecret::new(SECRET.as_bytes().to_vec()).unwrap(),
        "boxoffice-ingest",
        "someone-else",
        Duration::from_secs(900),
    )
    .issue(&id, Role::User, "s", true)
    .unwrap();
    for (what, bad) in [
        ("expired", expired.as_str()),
        ("tampered", tampered.as_str()),
        ("alg none", alg_none.as_str()),
        ("other key", other_key.as_str()),
        ("wrong audience", wrong_audience.as_str()),
        ("garbage", "not.a.jwt"),
    ] {
        let reply = h.call("GET", &path, Some(bad), None).await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{what}: {}",
            reply.body
        );
        reply.assert_problem(401);
        assert!(reply.headers.get("www-authenticate").is_some(), "{what}");
    }
    h.call("GET", &path, None, None).await.assert_problem(401);
    let basic = h
        .call_with(
            "GET",
            &path,
            None,
            None,
            &[("authorization", "Basic Zm9vOmJhcg==")],
        )
        .await;
    basic.assert_problem(401);
}

#[tokio::test]
async fn refresh_rotates_reuse_revokes_and_logout_ends_the_session() {
    let h = Harness::new();
    let (id, access, refresh) = h.user("eve").await;
    let first = h
        .call(
            "POST",
            "/v1/refresh",
            None,
            Some(json!({"refresh_token": refresh})),
        )
        .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let rotated = first.body["refresh_token"].as_str().unwrap().to_owned();
    let access2 = first.body["access_token"].as_str().unwrap().to_owned();
    assert_ne!(rotated, refresh);
    // Reusing the old one: refused, and the whole session is revoked.
    h.call(
        "POST",
        "/v1/refresh",
        None,
        Some(json!({"refresh_token": refresh})),
    )
    .await
    .assert_problem(401);
    h.call(
        "POST",
        "/v1/refresh",
        None,
        Some(json!({"refresh_token": rotated})),
    )
    .await
    .assert_problem(401);
    h.call("GET", &format!("/v1/users/{id}"), Some(&access2), None)
        .await
        .assert_problem(401);
    h.call("GET", &format!("/v1/users/{id}"), Some(&access), None)
        .await
        .assert_problem(401);

    // A fresh login; logout revokes its access and refresh tokens.
    let login = h
        .call(
            "POST",
            "/v1/login",
            None,
            Some(json!({"login": "eve", "password": "a good password"})),
        )
        .await;
    let access = login.body["access_token"].as_str().unwrap().to_owned();
    let refresh = login.body["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(
        h.call("POST", "/v1/logout", Some(&access), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    h.call("GET", &format!("/v1/users/{id}"), Some(&access), None)
        .await
        .assert_problem(401);
    h.call(
        "POST",
        "/v1/refresh",
        None,
        Some(json!({"refresh_token": refresh})),
    )
    .await
    .assert_problem(401);
    h.call(
        "POST",
        "/v1/refresh",
        None,
        Some(json!({"refresh_token": "x".repeat(43)})),
    )
    .await
    .assert_problem(401);
    h.call(
        "POST",
        "/v1/refresh",
        None,
        Some(json!({"refresh_token": "short"})),
    )
    .await
    .assert_problem(401);
}

#[tokio::test]
async fn admin_only_routes_refuse_users_with_403() {
    let h = Harness::new();
    let (_, token, _) = h.user("fred").await;
    h.call("GET", "/v1/users", Some(&token), None)
        .await
        .assert_problem(403);
    let event = json!({"name": "Gig", "starts_at": "2030-01-01T20:00:00Z", "price_minor": 100, "currency": "EUR",
                       "capacity": 10, "sale_starts_at": "2029-01-01T00:00:00Z", "sale_ends_at": "2030-01-01T19:00:00Z"});
    h.call("POST", "/v1/tickets", Some(&token), Some(event.clone()))
        .await
        .assert_problem(403);
    h.call(
        "POST",
        "/v1/categories",
        Some(&token),
        Some(json!({"name": "Jazz", "is_free": false})),
    )
    .await
    .assert_problem(403);
    let admin = h.admin().await;
    let created = h
        .call("POST", "/v1/tickets", Some(&admin), Some(event.clone()))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["id"].as_str().unwrap();
    h.call(
        "PUT",
        &format!("/v1/tickets/{id}"),
        Some(&token),
        Some(event.clone()),
    )
    .await
    .assert_problem(403);
    let mut edit = event.clone();
    edit["capacity"] = json!(20);
    let updated = h
        .call(
            "PUT",
            &format!("/v1/tickets/{id}"),
            Some(&admin),
            Some(edit),
        )
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);
    let commands = h.bus.commands.lock().unwrap().clone();
    assert_eq!(commands.len(), 2);
    match (&commands[0], &commands[1]) {
        (BookingCommand::EventUpserted(a), BookingCommand::EventUpserted(b)) => {
            assert_eq!((a.capacity, b.capacity), (10, 20));
            assert!(b.occurred_at > a.occurred_at);
            assert_ne!(a.record_id, b.record_id);
        }
        other => panic!("{other:?}"),
    }
    let mut bad = event;
    bad["sale_ends_at"] = json!("2028-01-01T00:00:00Z");
    bad["capacity"] = json!(-1);
    bad["currency"] = json!("euro");
    let reply = h.call("POST", "/v1/tickets", Some(&admin), Some(bad)).await;
    reply.assert_problem(422);
    assert_eq!(
        reply.body["errors"].as_array().unwrap().len(),
        3,
        "{}",
        reply.body
    );
    assert_eq!(
        h.call("GET", "/v1/users", Some(&admin), None).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn orders_are_accepted_only_after_the_bus_and_are_private() {
    let h = Harness::new();
    let (alice, token, _) = h.user("alice").await;
    let (_, mallory, _) = h.user("mallory").await;
    let event = h.event();
    for slots in [
        json!(0),
        json!(-1),
        json!(101),
        json!(1e12),
        json!("2"),
        json!(null),
    ] {
        let reply = h
            .call(
                "POST",
                "/v1/orders",
                Some(&token),
                Some(json!({"event_id": event, "number_slot": slots})),
            )
            .await;
        reply.assert_problem(422);
    }
    h.call(
        "POST",
        "/v1/orders",
        Some(&token),
        Some(json!({"event_id": uuid::Uuid::new_v4(), "number_slot": 1})),
    )
    .await
    .assert_problem(404);
    h.call(
        "POST",
        "/v1/orders",
        Some(&token),
        Some(json!({"event_id": "' OR 1=1 --", "number_slot": 1})),
    )
    .await
    .assert_problem(422);

    let accepted = h
        .call(
            "POST",
            "/v1/orders",
            Some(&token),
            Some(json!({"event_id": event, "number_slot": 2})),
        )
        .await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.body);
    assert_eq!(accepted.body["status"], "PENDING");
    let order_id = accepted.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        accepted.headers.get("location").unwrap(),
        &format!("/v1/orders/{order_id}")
    );
    match h.bus.commands.lock().unwrap().last() {
        Some(BookingCommand::BookingRequested(r)) => {
            assert_eq!(
                (r.order_id.as_str(), r.user_id.as_str(), r.number_slot),
                (order_id.as_str(), alice.as_str(), 2)
            );
            assert_eq!(
                r.record_id,
                boxoffice_avro::ids::record_id_for::<boxoffice_avro::records::BookingRequested>(&[
                    &order_id
                ])
            );
        }
        other => panic!("{other:?}"),
    }

    // Other users see nothing; the owner does (once the booking processor stored it).
    h.store_requested_orders();
    let path = format!("/v1/orders/{order_id}");
    h.call("GET", &path, Some(&mallory), None)
        .await
        .assert_problem(404);
    h.call("POST", &format!("{path}/cancel"), Some(&mallory), None)
        .await
        .assert_problem(404);
    h.call(
        "POST",
        "/v1/payments",
        Some(&mallory),
        Some(json!({"order_id": order_id, "price": 9000, "payment_method": "tok"})),
    )
    .await
    .assert_problem(404);
    assert_eq!(
        h.call("GET", &path, Some(&token), None).await.body["status"],
        "PENDING"
    );
    h.call("GET", "/v1/orders/not-an-id", Some(&token), None)
        .await
        .assert_problem(404);

    // Kafka down: 503 with Retry-After, never 202.
    h.bus.down.store(true, Ordering::SeqCst);
    let refused = h
        .call(
            "POST",
            "/v1/orders",
            Some(&token),
            Some(json!({"event_id": event, "number_slot": 1})),
        )
        .await;
    refused.assert_problem(503);
    assert!(refused.headers.get("retry-after").is_some());
    h.call("GET", "/readyz", None, None)
        .await
        .assert_problem(503);
    h.bus.down.store(false, Ordering::SeqCst);
}

#[tokio::test]
async fn an_order_not_stored_yet_is_pending_for_its_owner_and_unknown_to_others() {
    let h = Harness::new();
    let (alice, token, _) = h.user("ada").await;
    let (_, mallory, _) = h.user("mal").await;
    let event = h.event();
    let accepted = h
        .call(
            "POST",
            "/v1/orders",
            Some(&token),
            Some(json!({"event_id": event, "number_slot": 2})),
        )
        .await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED);
    let order_id = accepted.body["id"].as_str().unwrap().to_owned();
    assert!(boxoffice_avro::ids::order_id_owned_by(&order_id, &alice));
    let path = format!("/v1/orders/{order_id}");
    // No row yet: the owner is told to retry (after a bounded wait), never 404.
    let started = std::time::Instant::now();
    let pending = h.call("GET", &path, Some(&token), None).await;
    pending.assert_problem(503);
    assert!(pending.headers.get("retry-after").is_some());
    assert!(started.elapsed() >= crate::routes::orders::PENDING_ORDER_WAIT);
    h.call("POST", &format!("{path}/cancel"), Some(&token), None)
        .await
        .assert_problem(503);
    // Anyone else: no such order, at once.
    h.call("GET", &path, Some(&mallory), None)
        .await
        .assert_problem(404);
    // The decision arrives while the owner waits: answered from it.
    let live = h.state.live.clone();
    let decided = {
        let order_id = order_id.clone();
        let alice = alice.clone();
        let event = event.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            live.publish_order(boxoffice_avro::OrderEvent::OrderRejected(
                boxoffice_avro::records::OrderRejected {
                    record_id: "decision-1".into(),
                    order_id,
                    event_id: event,
                    user_id: alice,
                    number_slot: 2,
                    reason: boxoffice_avro::records::RejectReason::SoldOut,
                    detail: None,
                    occurred_at: 1,
                },
            ));
        })
    };
    let answered = h.call("GET", &path, Some(&token), None).await;
    decided.await.unwrap();
    assert_eq!(answered.status, StatusCode::OK, "{}", answered.body);
    assert_eq!(answered.body["id"], order_id.as_str());
    assert_eq!(answered.body["number_slot"], 2);
    // Stored: the row answers.
    h.store_requested_orders();
    assert_eq!(
        h.call("GET", &path, Some(&token), None).await.status,
        StatusCode::OK
    );
    // An id of the caller's shape that was never accepted is the same 503 (it cannot be told
    // apart before the wait); someone else's shape is 404.
    h.call(
        "GET",
        &format!(
            "/v1/orders/{}",
            boxoffice_avro::ids::new_order_id("someone-else")
        ),
        Some(&token),
        None,
    )
    .await
    .assert_problem(404);
}

#[tokio::test]
async fn idempotency_keys_name_the_request_and_another_body_names_another_order() {
    let h = Harness::new();
    let (_, token, _) = h.user("gina").await;
    let event = h.event();
    let body = json!({"event_id": event, "number_slot": 1});
    let key = [("idempotency-key", "checkout-42")];
    let first = h
        .call_with("POST", "/v1/orders", Some(&token), Some(body.clone()), &key)
        .await;
    let second = h
        .call_with("POST", "/v1/orders", Some(&token), Some(body), &key)
        .await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    assert_eq!(second.status, StatusCode::ACCEPTED);
    assert_eq!(first.body["id"], second.body["id"]);
    let other = h
        .call_with(
            "POST",
            "/v1/orders",
            Some(&token),
            Some(json!({"event_id": event, "number_slot": 3})),
            &key,
        )
        .await;
    // Nothing is read before the answer: another body is another order, which the booking
    // processor rejects as IDEMPOTENCY_KEY_REUSED (tests/tests/ingest_flow.rs).
    assert_eq!(other.status, StatusCode::ACCEPTED);
    assert_ne!(other.body["id"], first.body["id"]);
    let commands = h.bus.commands.lock().unwrap().clone();
    let keys: Vec<Option<String>> = commands
        .iter()
        .filter_map(|c| match c {
            BookingCommand::BookingRequested(r) => Some(r.idempotency_key.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(keys, vec![Some("checkout-42".to_owned()); 3]);
    h.call_with(
        "POST",
        "/v1/orders",
        Some(&token),
        Some(json!({"event_id": event, "number_slot": 1})),
        &[("idempotency-key", "bad key")],
    )
    .await
    .assert_problem(422);
}

#[tokio::test]
async fn payments_need_a_reserved_order_at_its_exact_price() {
    let h = Harness::new();
    let (_, token, _) = h.user("hank").await;
    let event = h.event();
    let order = h
        .call(
            "POST",
            "/v1/orders",
            Some(&token),
            Some(json!({"event_id": event, "number_slot": 2})),
        )
        .await;
    let order_id = order.body["id"].as_str().unwrap().to_owned();
    h.store_requested_orders();
    let pay =
        |price: i64| json!({"order_id": order_id, "price": price, "payment_method": "tok_visa"});
    h.call("POST", "/v1/payments", Some(&token), Some(pay(9000)))
        .await
        .assert_problem(409);
    h.memory.set_decision(
        &order_id,
        OrderDecision {
            status: "RESERVED".into(),
            slots: 2,
            amount_minor: 9000,
            currency: "EUR".into(),
            payment_id: Some(boxoffice_avro::ids::payment_id(&order_id)),
            hold_expires_at: Some(2_000_000_000_000),
            reason: None,
            late: false,
        },
    );
    h.call("POST", "/v1/payments", Some(&token), Some(pay(8999)))
        .await
        .assert_problem(422);
    h.call("POST", "/v1/payments", Some(&token), Some(pay(-5)))
        .await
        .assert_problem(422);
    let paid = h
        .call("POST", "/v1/payments", Some(&token), Some(pay(9000)))
        .await;
    assert_eq!(paid.status, StatusCode::ACCEPTED, "{}", paid.body);
    assert_eq!(paid.body["id"], boxoffice_avro::ids::payment_id(&order_id));
    match h.bus.payments.lock().unwrap().last() {
        Some(PaymentRequest::PaymentSubmitted(p)) => {
            assert_eq!(
                (
                    p.amount_minor,
                    p.currency.as_str(),
                    p.payment_method_token.as_str()
                ),
                (9000, "EUR", "tok_visa")
            );
        }
        other => panic!("{other:?}"),
    }
    let got = h
        .call(
            "GET",
            &format!("/v1/payments/{}", paid.body["id"].as_str().unwrap()),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(got.body["status"], "SUBMITTED");
    let list = h.call("GET", "/v1/payments", Some(&token), None).await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn pages_go_both_ways_and_tokens_cannot_be_forged() {
    let h = Harness::new();
    let admin = h.admin().await;
    for i in 0..6 {
        h.register(&format!("user{i}")).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let path = match &token {
            Some(t) => format!("/v1/users?limit=3&page_token={t}"),
            None => "/v1/users?limit=3".to_owned(),
        };
        let page = h.call("GET", &path, Some(&admin), None).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let ids: Vec<String> = page.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["id"].as_str().unwrap().to_owned())
            .collect();
        seen.extend(ids.clone());
        pages.push((ids, page.body["previous_token"].as_str().map(str::to_owned)));
        match page.body["next_token"].as_str() {
            Some(next) => token = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7, "6 users and the admin, each once");
    assert!(pages[0].1.is_none(), "the first page has no previous page");
    // Back from the last page to the one before.
    let previous = pages.last().unwrap().1.clone().unwrap();
    let back = h
        .call(
            "GET",
            &format!("/v1/users?limit=3&page_token={previous}"),
            Some(&admin),
            None,
        )
        .await;
    let back_ids: Vec<String> = back.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(back_ids, pages[pages.len() - 2].0);
    // Tampered and foreign tokens.
    let mut forged = previous.clone().into_bytes();
    forged[2] = if forged[2] == b'a' { b'b' } else { b'a' };
    let forged = String::from_utf8(forged).unwrap();
    h.call(
        "GET",
        &format!("/v1/users?page_token={forged}"),
        Some(&admin),
        None,
    )
    .await
    .assert_problem(400);
    h.call("GET", "/v1/users?page_token=%00%01", Some(&admin), None)
        .await
        .assert_problem(400);
    h.call(
        "GET",
        &format!("/v1/orders?page_token={previous}"),
        Some(&admin),
        None,
    )
    .await
    .assert_problem(400);
    h.call("GET", "/v1/users?limit=0", Some(&admin), None)
        .await
        .assert_problem(422);
    h.call("GET", "/v1/users?limit=abc", Some(&admin), None)
        .await
        .assert_problem(422);
}

#[tokio::test]
async fn every_response_has_a_request_id_and_the_spec_is_served() {
    let h = Harness::new();
    let reply = h
        .call_with(
            "GET",
            "/healthz",
            None,
            None,
            &[("x-request-id", "abc-123")],
        )
        .await;
    assert_eq!(reply.headers.get("x-request-id").unwrap(), "abc-123");
    let generated = h.call("GET", "/v1/nowhere", None, None).await;
    assert!(generated.headers.get("x-request-id").is_some());
    let spec = h.call("GET", "/openapi.json", None, None).await;
    assert_eq!(spec.status, StatusCode::OK);
    for path in [
        "/v1/register",
        "/v1/login",
        "/v1/orders",
        "/v1/tickets/{id}",
        "/v1/payments",
        "/v1/orders/{id}/stream",
    ] {
        assert!(
            spec.body["paths"].get(path).is_some(),
            "{path} missing from the spec"
        );
    }
    let docs = crate::router(h.state.clone())
        .oneshot(
            Request::builder()
                .uri("/docs/")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
}

#[tokio::test]
async fn every_answer_is_counted_by_matched_route_and_status() {
    let h = Harness::new();
    let before = h.state.metrics.render();
    assert!(!before.contains("route=\"/v1/orders/{id}\""), "{before}");
    let reply = h.call("GET", "/v1/orders/some-order", None, None).await;
    reply.assert_problem(401);
    h.call("GET", "/healthz", None, None).await;
    let text = h.state.metrics.render();
    // The matched route, not the path: ids never become label values.
    assert!(
        text.contains(
            r#"ingest_http_requests_total{method="GET",route="/v1/orders/{id}",status="401"} 1"#
        ),
        "{text}"
    );
    assert!(!text.contains("some-order"), "{text}");
    assert!(
        text.contains(
            r#"ingest_http_requests_total{method="GET",route="/healthz",status="200"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains("ingest_http_request_duration_ms_count{method=\"GET\",route=\"/healthz\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn users_edit_themselves_and_nobody_else() {
    let h = Harness::new();
    let (ivy, token, _) = h.user("ivy").await;
    let (jim, _, _) = h.user("jim").await;
    let edit = json!({"user_name": "ivy_2", "first_name": "Ivy", "last_name": "Lee", "birth_day": "1990-05-17", "mobile_phone": "+4930111222"});
    let reply = h
        .call(
            "PUT",
            &format!("/v1/users/{ivy}"),
            Some(&token),
            Some(edit.clone()),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["birth_day"], "1990-05-17");
    h.call(
        "PUT",
        &format!("/v1/users/{jim}"),
        Some(&token),
        Some(edit.clone()),
    )
    .await
    .assert_problem(404);
    h.call("GET", &format!("/v1/users/{jim}"), Some(&token), None)
        .await
        .assert_problem(404);
    let mut taken = edit.clone();
    taken["user_name"] = json!("jim");
    h.call(
        "PUT",
        &format!("/v1/users/{ivy}"),
        Some(&token),
        Some(taken),
    )
    .await
    .assert_problem(409);
    let mut bad = edit;
    bad["birth_day"] = json!("2999-01-01");
    h.call("PUT", &format!("/v1/users/{ivy}"), Some(&token), Some(bad))
        .await
        .assert_problem(422);
}

#[tokio::test]
async fn wait_returns_the_decision_when_it_comes_in_time() {
    use boxoffice_avro::OrderEvent;
    use boxoffice_avro::records::{OrderRejected, RejectReason};

    let h = Harness::new();
    let (user, token, _) = h.user("kim").await;
    let event = h.event();
    let live = Arc::clone(&h.state.live);
    let bus = h.bus.clone();
    // Plays the booking processor: rejects the order as soon as its request was produced.
    let processor = tokio::spawn(async move {
        for _ in 0..200 {
            let produced = bus.commands.lock().unwrap().iter().find_map(|c| match c {
                BookingCommand::BookingRequested(r) => Some(r.clone()),
                _ => None,
            });
            if let Some(r) = produced {
                live.publish_order(OrderEvent::OrderRejected(OrderRejected {
                    record_id: format!("rejected-{}", r.order_id),
                    order_id: r.order_id,
                    event_id: r.event_id,
                    user_id: r.user_id,
                    number_slot: r.number_slot,
                    reason: RejectReason::SoldOut,
                    detail: None,
                    occurred_at: 1,
                }));
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let reply = h
        .call(
            "POST",
            "/v1/orders?wait=5",
            Some(&token),
            Some(json!({"event_id": event, "number_slot": 1})),
        )
        .await;
    processor.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["status"], "REJECTED");
    assert_eq!(reply.body["reason"], "SOLD_OUT");
    assert_eq!(reply.body["user_id"], user.as_str());
    h.call(
        "POST",
        "/v1/orders?wait=11",
        Some(&token),
        Some(json!({"event_id": event, "number_slot": 1})),
    )
    .await
    .assert_problem(422);
}

#[tokio::test]
async fn a_logged_out_session_cannot_order_and_leaves_no_order_behind() {
    let h = Harness::new();
    let (user, token, _) = h.user("lou").await;
    let event = h.event();
    assert_eq!(
        h.call("POST", "/v1/logout", Some(&token), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    // A fresh cache, as on a replica that did not handle the logout.
    let other_replica = crate::state(
        &settings(SECRET),
        h.memory.stores(),
        Arc::new(h.bus.clone()),
        Arc::new(Live::new()),
    );
    let request = Request::builder()
        .method("POST")
        .uri("/v1/orders")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"event_id": event, "number_slot": 1}).to_string(),
        ))
        .unwrap();
    let response = crate::router(other_replica).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(
        h.bus.commands.lock().unwrap().is_empty(),
        "nothing produced"
    );
    let page = crate::stores::OrderStore::list_orders(
        &h.memory,
        &user,
        &crate::stores::PageRequest {
            cursor: None,
            direction: crate::stores::Direction::Next,
            limit: 10,
        },
    )
    .await
    .unwrap();
    assert!(
        page.items.is_empty(),
        "the order written alongside the check was removed"
    );
}

// ------------------------------------------------------------------------ webhook endpoints

fn secret_is_well_formed(secret: &str) -> bool {
    secret.strip_prefix("whsec_").is_some_and(|rest| {
        rest.len() == 43
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

#[tokio::test]
async fn webhook_endpoints_are_registered_with_a_secret_shown_once() {
    let h = Harness::new();
    let (user, token, _) = h.user("wendy").await;
    let created = h
        .call(
            "POST",
            "/v1/webhooks",
            Some(&token),
            Some(json!({"url": "https://example.com/hooks/boxoffice", "description": "ops"})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let secret = created.body["secret"].as_str().unwrap().to_owned();
    assert!(secret_is_well_formed(&secret), "{secret}");
    assert_eq!(created.body["url"], "https://example.com/hooks/boxoffice");
    assert_eq!(created.body["description"], "ops");
    assert_eq!(created.body["disabled"], false);
    assert!(created.body["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        created.headers.get("location").unwrap(),
        &format!("/v1/webhooks/{id}")
    );
    assert_eq!(created.headers.get("cache-control").unwrap(), "no-store");
    // Stored as shown: the notifier signs with exactly this string.
    let stored = h.memory.endpoint(&user, &id).unwrap();
    assert_eq!(stored.secret, secret);
    assert!(!stored.disabled);

    // Never again: not in the list, not in the endpoint.
    let list = h.call("GET", "/v1/webhooks", Some(&token), None).await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
    assert!(
        list.body["items"][0].get("secret").is_none(),
        "{}",
        list.body
    );
    assert!(!list.body.to_string().contains(&secret));
    let one = h
        .call("GET", &format!("/v1/webhooks/{id}"), Some(&token), None)
        .await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.body["id"], id.as_str());
    assert!(!one.body.to_string().contains(&secret));

    // A second endpoint gets another secret.
    let other = h
        .call(
            "POST",
            "/v1/webhooks",
            Some(&token),
            Some(json!({"url": "http://127.0.0.1:9/hook"})),
        )
        .await;
    assert_eq!(other.status, StatusCode::CREATED, "{}", other.body);
    assert_ne!(other.body["secret"], created.body["secret"]);
    assert!(other.body.get("description").is_none());
}

#[tokio::test]
async fn webhook_urls_and_descriptions_are_checked() {
    let h = Harness::new();
    let (_, token, _) = h.user("xavi").await;
    let long_url = format!("https://example.com/{}", "a".repeat(2048));
    for body in [
        json!({"url": "ftp://example.com/x"}),
        json!({"url": "https://user:pw@example.com/x"}),
        json!({"url": "/relative"}),
        json!({"url": "https://"}),
        json!({"url": "https://exa mple.com"}),
        json!({"url": long_url}),
        json!({"url": ""}),
        json!({"url": "https://example.com", "description": "a\u{202E}b"}),
        json!({"url": "https://example.com", "description": "d".repeat(257)}),
        json!({"url": 5}),
        json!({"url": "https://example.com", "secret": "mine"}),
        json!({}),
    ] {
        let reply = h
            .call("POST", "/v1/webhooks", Some(&token), Some(body.clone()))
            .await;
        reply.assert_problem(422);
        assert!(
            !reply.body["errors"].as_array().unwrap().is_empty(),
            "{body}"
        );
    }
    h.call(
        "POST",
        "/v1/webhooks",
        None,
        Some(json!({"url": "https://example.com"})),
    )
    .await
    .assert_problem(401);
    h.call("GET", "/v1/webhooks", None, None)
        .await
        .assert_problem(401);
    let list = h.call("GET", "/v1/webhooks", Some(&token), None).await;
    assert_eq!(list.body["items"], json!([]));
}

#[tokio::test]
async fn at_most_ten_webhook_endpoints_per_user() {
    let h = Harness::new();
    let (_, token, _) = h.user("yara").await;
    let (_, other, _) = h.user("zack").await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let reply = h
            .call(
                "POST",
                "/v1/webhooks",
                Some(&token),
                Some(json!({"url": format!("https://example.com/{i}")})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        ids.push(reply.body["id"].as_str().unwrap().to_owned());
    }
    let eleventh = h
        .call(
            "POST",
            "/v1/webhooks",
            Some(&token),
            Some(json!({"url": "https://example.com/11"})),
        )
        .await;
    eleventh.assert_problem(409);
    assert!(
        eleventh.body["detail"].as_str().unwrap().contains("10"),
        "{}",
        eleventh.body
    );
    // Per user: someone else still can.
    let theirs = h
        .call(
            "POST",
            "/v1/webhooks",
            Some(&other),
            Some(json!({"url": "https://example.com/z"})),
        )
        .await;
    assert_eq!(theirs.status, StatusCode::CREATED);
    // Deleting one makes room again.
    let deleted = h
        .call(
            "DELETE",
            &format!("/v1/webhooks/{}", ids[0]),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let again = h
        .call(
            "POST",
            "/v1/webhooks",
            Some(&token),
            Some(json!({"url": "https://example.com/11"})),
        )
        .await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.body);
    let list = h.call("GET", "/v1/webhooks", Some(&token), None).await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 10);
}

#[tokio::test]
async fn other_users_webhook_endpoints_do_not_exist_for_you() {
    let h = Harness::new();
    let (owner, token, _) = h.user("olga").await;
    let (_, mallory, _) = h.user("mallory").await;
    let admin = h.admin().await;
    let created = h
        .call(
            "POST",
            "/v1/webhooks",
            Some(&token),
            Some(json!({"url": "https://example.com/olga"})),
        )
        .await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    let secret = created.body["secret"].as_str().unwrap().to_owned();
    for caller in [&mallory, &admin] {
        for (method, path) in [
            ("GET", format!("/v1/webhooks/{id}")),
            ("DELETE", format!("/v1/webhooks/{id}")),
            ("POST", format!("/v1/webhooks/{id}/enable")),
            ("POST", format!("/v1/webhooks/{id}/rotate-secret")),
        ] {
            h.call(method, &path, Some(caller), None)
                .await
                .assert_problem(404);
        }
        let list = h.call("GET", "/v1/webhooks", Some(caller), None).await;
        assert_eq!(list.body["items"], json!([]));
    }
    // Untouched by all that.
    let stored = h.memory.endpoint(&owner, &id).unwrap();
    assert_eq!(stored.secret, secret);
    for bad in ["not-an-id", "%00", &uuid::Uuid::new_v4().to_string()] {
        h.call("GET", &format!("/v1/webhooks/{bad}"), Some(&token), None)
            .await
            .assert_problem(404);
        h.call("DELETE", &format!("/v1/webhooks/{bad}"), Some(&token), None)
            .await
            .assert_problem(404);
    }
    let deleted = h
        .call("DELETE", &format!("/v1/webhooks/{id}"), Some(&token), None)
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert!(h.memory.endpoint(&owner, &id).is_none());
    h.call("DELETE", &format!("/v1/webhooks/{id}"), Some(&token), None)
        .await
        .assert_problem(404);
    h.call("GET", &format!("/v1/webhooks/{id}"), Some(&token), None)
        .await
        .assert_problem(404);
}

#[tokio::test]
async fn disabled_endpoints_show_why_and_can_be_enabled_again() {
    let h = Harness::new();
    let (user, token, _) = h.user("gone_user").await;
    let created = h
        .call(
            "POST",
            "/v1/webhooks",
            Some(&token),
            Some(json!({"url": "https://example.com/gone"})),
        )
        .await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    h.memory
        .disable_endpoint(&user, &id, "endpoint answered 410 Gone", 1_700_000_000_000);
    let shown = h
        .call("GET", &format!("/v1/webhooks/{id}"), Some(&token), None)
        .await;
    assert_eq!(shown.body["disabled"], true);
    assert_eq!(shown.body["disabled_reason"], "endpoint answered 410 Gone");
    assert_eq!(shown.body["disabled_at"], "2023-11-14T22:13:20.000Z");
    let listed = h.call("GET", "/v1/webhooks", Some(&token), None).await;
    assert_eq!(listed.body["items"][0]["disabled"], true);

    let enabled = h
        .call(
            "POST",
            &format!("/v1/webhooks/{id}/enable"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(enabled.status, StatusCode::OK, "{}", enabled.body);
    assert_eq!(enabled.body["disabled"], false);
    assert!(enabled.body.get("disabled_reason").is_none());
    assert!(enabled.body.get("secret").is_none());
    let stored = h.memory.endpoint(&user, &id).unwrap();
    assert_eq!(
        (stored.disabled, stored.disabled_reason, stored.disabled_at),
        (false, None, None)
    );
    // Enabling an enabled endpoint is fine.
    let again = h
        .call(
            "POST",
            &format!("/v1/webhooks/{id}/enable"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(again.status, StatusCode::OK);
}

#[tokio::test]
async fn rotating_a_secret_replaces_it_and_shows_the_new_one_once() {
    let h = Harness::new();
    let (user, token, _) = h.user("rita").await;
    let created = h
        .call(
            "POST",
            "/v1/webhooks",
            Some(&token),
            Some(json!({"url": "https://example.com/r"})),
        )
        .await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    let first = created.body["secret"].as_str().unwrap().to_owned();
    let rotated = h
        .call(
            "POST",
            &format!("/v1/webhooks/{id}/rotate-secret"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.body);
    assert_eq!(rotated.headers.get("cache-control").unwrap(), "no-store");
    let second = rotated.body["secret"].as_str().unwrap().to_owned();
    assert!(secret_is_well_formed(&second));
    assert_ne!(first, second);
    assert_eq!(rotated.body["id"], id.as_str());
    assert_eq!(h.memory.endpoint(&user, &id).unwrap().secret, second);
    let shown = h
        .call("GET", &format!("/v1/webhooks/{id}"), Some(&token), None)
        .await;
    assert!(shown.body.get("secret").is_none());
}

#[tokio::test]
async fn notifications_show_read_and_an_unset_read_as_false() {
    let h = Harness::new();
    let (user, token, _) = h.user("nina").await;
    for (id, read, at) in [("n-old", true, 1_000), ("n-new", false, 2_000)] {
        h.memory
            .put_notification(crate::stores::NotificationRecord {
                id: id.into(),
                user_id: user.clone(),
                kind: "ORDER_RESERVED".into(),
                order_id: None,
                event_id: None,
                params: Default::default(),
                read,
                created_at: at,
            });
    }
    let page = h.call("GET", "/v1/notifications", Some(&token), None).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let items = page.body["items"].as_array().unwrap();
    assert_eq!(items[0]["id"], "n-new");
    assert_eq!(items[0]["read"], json!(false));
    assert_eq!(items[1]["read"], json!(true));
}

// ---------------------------------------------------------------- payment provider webhook

const PROVIDER_SECRET: &str = "whsec_router_test_provider";
const PAYMENT_ID: &str = "0c3f7a52-1e4b-4c9d-8f00-000000000001";
const ORDER_ID: &str = "0c3f7a52-1e4b-4c9d-8f00-0000000000aa";

impl Harness {
    fn with_provider_secret() -> Self {
        let memory = Memory::default();
        let bus = RecordingBus::default();
        let provider = crate::config::ProviderWebhookSettings {
            secret: crate::config::ProviderSecret::new(PROVIDER_SECRET.as_bytes().to_vec())
                .unwrap(),
            tolerance: Duration::from_secs(300),
        };
        let state = crate::state_with(
            &settings(SECRET),
            &provider,
            memory.stores(),
            Arc::new(bus.clone()),
            Arc::new(Live::new()),
        );
        Harness { state, memory, bus }
    }

    async fn deliver(&self, body: &[u8], signature: Option<&str>) -> Reply {
        let mut request = Request::builder()
            .method("POST")
            .uri("/v1/payments/webhook")
            .header("content-type", "application/json");
        if let Some(signature) = signature {
            request = request.header("Boxoffice-Provider-Signature", signature);
        }
        self.raw(request.body(Body::from(body.to_vec())).unwrap())
            .await
    }

    fn provider_events(&self) -> Vec<boxoffice_avro::records::PaymentProviderEvent> {
        self.bus
            .payments
            .lock()
            .unwrap()
            .iter()
            .filter_map(|p| match p {
                PaymentRequest::PaymentProviderEvent(e) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }
}

fn now_secs() -> i64 {
    crate::now_millis() / 1000
}

/// The provider's signature, written here independently of `crate::provider`.
fn v1(secret: &str, t: i64, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn signed(t: i64, body: &[u8]) -> String {
    format!("t={t},v1={}", v1(PROVIDER_SECRET, t, body))
}

fn provider_event(id: &str, kind: &str, payment_id: &str, failure_code: Option<&str>) -> Vec<u8> {
    json!({
        "id": id, "type": kind, "created": now_secs(),
        "data": {"object": {
            "id": "ch_router_1", "idempotency_key": PAYMENT_ID,
            "status": if kind == "charge.failed" { "failed" } else { "succeeded" },
            "amount_minor": 9000, "currency": "EUR",
            "failure_code": failure_code,
            "failure_message": failure_code.map(|_| "Insufficient funds."),
            "metadata": {"payment_id": payment_id, "order_id": ORDER_ID}
        }}
    })
    .to_string()
    .into_bytes()
}

#[tokio::test]
async fn a_signed_charge_event_is_produced_once_and_acknowledged() {
    use boxoffice_avro::records::{PaymentFailureReason, ProviderChargeOutcome};

    let h = Harness::with_provider_secret();
    let body = provider_event("evt_ok_1", "charge.succeeded", PAYMENT_ID, None);
    let before = crate::now_millis();
    let reply = h.deliver(&body, Some(&signed(now_secs(), &body))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body, json!({"received": true, "duplicate": false}));
    let events = h.provider_events();
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(
        e.record_id,
        boxoffice_avro::ids::record_id_for::<boxoffice_avro::records::PaymentProviderEvent>(&[
            "evt_ok_1"
        ])
    );
    assert_eq!(
        (
            e.provider_event_id.as_str(),
            e.payment_id.as_str(),
            e.order_id.as_str(),
            e.provider_reference.as_str()
        ),
        ("evt_ok_1", PAYMENT_ID, ORDER_ID, "ch_router_1")
    );
    assert_eq!(e.outcome, ProviderChargeOutcome::Captured);
    assert_eq!((e.failure_reason, e.detail.as_deref()), (None, None));
    assert!(e.occurred_at >= before && e.occurred_at <= crate::now_millis());
    let row = h.memory.provider_event("evt_ok_1").unwrap();
    assert!(row.forwarded);
    assert_eq!(row.event_type, "charge.succeeded");

    // The same event again (a provider retry, freshly signed): acknowledged, nothing produced.
    let again = h.deliver(&body, Some(&signed(now_secs(), &body))).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.body, json!({"received": true, "duplicate": true}));
    assert_eq!(h.provider_events().len(), 1);

    // A declined charge.
    let failed = provider_event(
        "evt_fail_1",
        "charge.failed",
        PAYMENT_ID,
        Some("insufficient_funds"),
    );
    let reply = h.deliver(&failed, Some(&signed(now_secs(), &failed))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let events = h.provider_events();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].outcome, ProviderChargeOutcome::Declined);
    assert_eq!(
        events[1].failure_reason,
        Some(PaymentFailureReason::InsufficientFunds)
    );
    assert_eq!(events[1].detail.as_deref(), Some("Insufficient funds."));
}

#[tokio::test]
async fn bad_signatures_are_400_problems_that_reveal_nothing() {
    let h = Harness::with_provider_secret();
    let body = provider_event("evt_bad_1", "charge.succeeded", PAYMENT_ID, None);
    let now = now_secs();
    let expected = v1(PROVIDER_SECRET, now, &body);
    let mut tampered = body.clone();
    let at = tampered.len() - 3;
    tampered[at] = b' ';
    let cases: Vec<(&str, Vec<u8>, Option<String>)> = vec![
        (
            "wrong secret",
            body.clone(),
            Some(format!("t={now},v1={}", v1("whsec_wrong", now, &body))),
        ),
        (
            "tampered body",
            tampered,
            Some(format!("t={now},v1={expected}")),
        ),
        // The server reads the wall clock later than `now`; a minute's margin keeps a slow run
        // from moving these inside the tolerance (the exact edges are unit tests in
        // `provider.rs`).
        ("stale", body.clone(), Some(signed(now - 360, &body))),
        ("future", body.clone(), Some(signed(now + 360, &body))),
        ("missing", body.clone(), None),
        ("no t", body.clone(), Some(format!("v1={expected}"))),
        ("no v1", body.clone(), Some(format!("t={now}"))),
        ("garbage", body.clone(), Some("sha256=abc".to_owned())),
        (
            "upper-case hex",
            body.clone(),
            Some(format!("t={now},v1={}", expected.to_uppercase())),
        ),
        (
            "timestamp not the signed one",
            body.clone(),
            Some(format!("t={},v1={expected}", now + 1)),
        ),
    ];
    for (what, body, header) in cases {
        let reply = h.deliver(&body, header.as_deref()).await;
        reply.assert_problem(400);
        assert_eq!(
            reply.problem_type(),
            "https://boxoffice.dev/problems/invalid-signature",
            "{what}: {}",
            reply.body
        );
        let text = reply.body.to_string();
        assert!(!text.contains(PROVIDER_SECRET), "{what}: {text}");
        assert!(!text.contains(&expected), "{what}: {text}");
    }
    assert!(h.provider_events().is_empty());
    assert!(h.memory.provider_event("evt_bad_1").is_none());
    // A header that is not ASCII text.
    let request = Request::builder()
        .method("POST")
        .uri("/v1/payments/webhook")
        .header(
            "Boxoffice-Provider-Signature",
            axum::http::HeaderValue::from_bytes(b"t=1,v1=\xff").unwrap(),
        )
        .body(Body::from(body_of_len(10)))
        .unwrap();
    h.raw(request).await.assert_problem(400);
    assert!(h.provider_events().is_empty());
    // Inside the tolerance passes (a minute inside, for the same reason).
    let edge_body = body_ok("evt_edge");
    let reply = h
        .deliver(&edge_body, Some(&signed(now_secs() - 240, &edge_body)))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
}

fn body_ok(id: &str) -> Vec<u8> {
    provider_event(id, "charge.succeeded", PAYMENT_ID, None)
}

fn body_of_len(n: usize) -> Vec<u8> {
    vec![b'x'; n]
}

#[tokio::test]
async fn any_of_several_v1_signatures_may_match_during_a_rotation() {
    let h = Harness::with_provider_secret();
    let body = body_ok("evt_rot_1");
    let now = now_secs();
    let header = format!(
        "t={now},v1={},v1={}",
        v1("whsec_previous_secret", now, &body),
        v1(PROVIDER_SECRET, now, &body)
    );
    let reply = h.deliver(&body, Some(&header)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(h.provider_events().len(), 1);
}

#[tokio::test]
async fn other_event_types_are_acknowledged_and_ignored() {
    let h = Harness::with_provider_secret();
    let body = json!({"id": "evt_other", "type": "charge.refund.updated", "created": 1, "data": {"object": {}}})
        .to_string()
        .into_bytes();
    let reply = h.deliver(&body, Some(&signed(now_secs(), &body))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body, json!({"received": true, "ignored": true}));
    assert!(h.bus.payments.lock().unwrap().is_empty());
    assert!(h.memory.provider_event("evt_other").is_none());
}

#[tokio::test]
async fn signed_but_unusable_bodies_are_refused() {
    let h = Harness::with_provider_secret();
    let other_payment = "0c3f7a52-1e4b-4c9d-8f00-0000000000ff";
    let mismatch = provider_event("evt_mismatch", "charge.succeeded", other_payment, None);
    let reply = h
        .deliver(&mismatch, Some(&signed(now_secs(), &mismatch)))
        .await;
    reply.assert_problem(422);
    assert_eq!(
        reply.body["errors"][0]["field"],
        "data.object.metadata.payment_id"
    );
    let not_ids = provider_event("evt_not_ids", "charge.failed", "payment-7", None);
    h.deliver(&not_ids, Some(&signed(now_secs(), &not_ids)))
        .await
        .assert_problem(422);
    for malformed in [
        b"{not json".to_vec(),
        br#"{"id":"evt_x","type":"charge.succeeded"}"#.to_vec(),
        br#"{"id":"evt_x","type":"charge.succeeded","data":{"object":{"id":"ch_1"}}}"#.to_vec(),
        b"[]".to_vec(),
    ] {
        h.deliver(&malformed, Some(&signed(now_secs(), &malformed)))
            .await
            .assert_problem(400);
    }
    assert!(h.bus.payments.lock().unwrap().is_empty());
    // Too large: 413 before anything else.
    let big = vec![b' '; 65 * 1024];
    h.deliver(&big, Some(&signed(now_secs(), &big)))
        .await
        .assert_problem(413);
}

#[tokio::test]
async fn kafka_down_answers_503_and_the_retry_forwards_the_same_record() {
    let h = Harness::with_provider_secret();
    let body = body_ok("evt_retry_1");
    h.bus.down.store(true, Ordering::SeqCst);
    let refused = h.deliver(&body, Some(&signed(now_secs(), &body))).await;
    refused.assert_problem(503);
    assert!(refused.headers.get("retry-after").is_some());
    let row = h.memory.provider_event("evt_retry_1").unwrap();
    assert!(!row.forwarded, "claimed, not forwarded");
    h.bus.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let retried = h.deliver(&body, Some(&signed(now_secs(), &body))).await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.body);
    assert_eq!(retried.body["duplicate"], false);
    let events = h.provider_events();
    assert_eq!(events.len(), 1);
    // The first accept time: the retry's record is the one the first attempt would have been.
    assert_eq!(events[0].occurred_at, row.received_at);
    assert!(h.memory.provider_event("evt_retry_1").unwrap().forwarded);
    let third = h.deliver(&body, Some(&signed(now_secs(), &body))).await;
    assert_eq!(third.body["duplicate"], true);
    assert_eq!(h.provider_events().len(), 1);
}

#[tokio::test]
async fn a_reused_event_id_for_another_payment_is_refused() {
    let h = Harness::with_provider_secret();
    let first = body_ok("evt_reused");
    assert_eq!(
        h.deliver(&first, Some(&signed(now_secs(), &first)))
            .await
            .status,
        StatusCode::OK
    );
    let other = "0c3f7a52-1e4b-4c9d-8f00-0000000000bb";
    let body = json!({
        "id": "evt_reused", "type": "charge.succeeded", "created": now_secs(),
        "data": {"object": {"id": "ch_2", "idempotency_key": other, "status": "succeeded",
            "amount_minor": 9000, "currency": "EUR",
            "metadata": {"payment_id": other, "order_id": ORDER_ID}}}
    })
    .to_string()
    .into_bytes();
    h.deliver(&body, Some(&signed(now_secs(), &body)))
        .await
        .assert_problem(409);
    assert_eq!(h.provider_events().len(), 1);
}

#[tokio::test]
async fn the_spec_describes_webhooks_and_the_provider_callback() {
    let h = Harness::new();
    let spec = h.call("GET", "/openapi.json", None, None).await;
    let paths = &spec.body["paths"];
    for (path, method) in [
        ("/v1/webhooks", "post"),
        ("/v1/webhooks", "get"),
        ("/v1/webhooks/{id}", "get"),
        ("/v1/webhooks/{id}", "delete"),
        ("/v1/webhooks/{id}/enable", "post"),
        ("/v1/webhooks/{id}/rotate-secret", "post"),
        ("/v1/payments/webhook", "post"),
    ] {
        assert!(paths[path].get(method).is_some(), "{method} {path} missing");
    }
    let provider = &paths["/v1/payments/webhook"]["post"];
    assert!(provider.get("security").is_none(), "no bearer token there");
    assert_eq!(
        provider["parameters"][0]["name"],
        "Boxoffice-Provider-Signature"
    );
    assert!(
        spec.body["components"]["schemas"]["NotificationView"]["properties"]
            .get("read")
            .is_some()
    );
}
