//! Ingest's auth and input handling against the real CQL store and Kafka: tokens (expired,
//! tampered, alg none, wrong key), refresh rotation and reuse, logout, roles; hostile input
//! never gets a 5xx; Kafka down answers 503, never a false 202.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap fails the test"
)]

mod ingest_common;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use boxoffice_tests::pipeline::Pipeline;
use boxoffice_tests::services;
use boxoffice_topics::kafka::KafkaArgs;
use ingest_common::{Ingest, SECRET};
use serde_json::{Value, json};

fn forge(token: &str, edit: impl Fn(&mut Value)) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    edit(&mut claims);
    format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_sessions_and_roles() {
    let ingest = Ingest::start("ingest_auth", false).await;
    let (id, access, refresh) = ingest.user("token_user").await;
    let me = format!("/v1/users/{id}");
    assert_eq!(ingest.get(&me, Some(&access)).await.status, 200);

    let keys = boxoffice_ingest::auth::jwt::TokenKeys::new(
        &boxoffice_ingest::config::JwtSecret::new(SECRET.as_bytes().to_vec()).unwrap(),
        "boxoffice-ingest",
        "boxoffice-api",
        Duration::from_secs(900),
    );
    let mut claims = keys.verify(&access).unwrap();
    claims.exp = boxoffice_ingest::auth::jwt::now_secs() - 60;
    let expired = keys.sign(&claims).unwrap();
    let tampered = forge(&access, |c| c["role"] = json!("admin"));
    let header = URL_SAFE_NO_PAD.encode(format!(
        r#"{{"alg":"none","typ":"JWT","kid":"{}"}}"#,
        keys.kid()
    ));
    let none = format!("{header}.{}.", access.split('.').nth(1).unwrap());
    let other_key = boxoffice_ingest::auth::jwt::TokenKeys::new(
        &boxoffice_ingest::config::JwtSecret::new(
            b"a-completely-different-secret-key-123456".to_vec(),
        )
        .unwrap(),
        "boxoffice-ingest",
        "boxoffice-api",
        Duration::from_secs(900),
    )
    .issue(&id, boxoffice_ingest::stores::Role::Admin, "x", true)
    .unwrap();
    for (what, token) in [
        ("expired", expired),
        ("tampered", tampered),
        ("alg none", none),
        ("wrong key", other_key),
    ] {
        let reply = ingest.get(&me, Some(&token)).await;
        assert_eq!(reply.status, 401, "{what}: {}", reply.body);
        reply.assert_problem(401);
    }

    // Non-admins cannot list users or edit events.
    ingest
        .get("/v1/users", Some(&access))
        .await
        .assert_problem(403);
    let admin = ingest.admin().await;
    let event_id = ingest.event(&admin, "Admin Only", 10, 100).await;
    let edit = json!({"name": "Hacked", "starts_at": "2031-06-01T20:00:00Z", "price_minor": 0, "currency": "EUR",
                      "capacity": 1, "sale_starts_at": "2020-01-01T00:00:00Z", "sale_ends_at": "2031-01-01T00:00:00Z"});
    ingest
        .send(
            "PUT",
            &format!("/v1/tickets/{event_id}"),
            Some(&access),
            Some(edit),
            &[],
        )
        .await
        .assert_problem(403);

    // Refresh rotates; reusing a used token revokes the session (real LWT on the store).
    let rotated = ingest
        .post("/v1/refresh", None, json!({"refresh_token": refresh}))
        .await;
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    let new_refresh = rotated.body["refresh_token"].as_str().unwrap().to_owned();
    let new_access = rotated.body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(ingest.get(&me, Some(&new_access)).await.status, 200);
    ingest
        .post("/v1/refresh", None, json!({"refresh_token": refresh}))
        .await
        .assert_problem(401);
    ingest
        .post("/v1/refresh", None, json!({"refresh_token": new_refresh}))
        .await
        .assert_problem(401);
    ingest.get(&me, Some(&new_access)).await.assert_problem(401);

    // Logout revokes the session's access and refresh tokens.
    let (access, refresh) = ingest.login("token_user").await;
    assert_eq!(
        ingest
            .send("POST", "/v1/logout", Some(&access), None, &[])
            .await
            .status,
        204
    );
    ingest.get(&me, Some(&access)).await.assert_problem(401);
    ingest
        .post("/v1/refresh", None, json!({"refresh_token": refresh}))
        .await
        .assert_problem(401);
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_never_gets_a_5xx() {
    let ingest = Ingest::start("ingest_input", false).await;
    let admin = ingest.admin().await;
    let event_id = ingest.event(&admin, "Input Fest", 10, 100).await;
    let (_, token, _) = ingest.user("input_user").await;
    // A fresh connection per request: the server closes one after refusing an oversized
    // body, and a pooled connection reused after that would fail on the client's side.
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let raw = |path: &str, body: Vec<u8>, content_type: Option<&str>| {
        let mut request = fresh.post(ingest.url(path)).bearer_auth(&token).body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        request.send()
    };
    let paths = [
        "/v1/register",
        "/v1/login",
        "/v1/refresh",
        "/v1/orders",
        "/v1/payments",
        "/v1/tickets",
        "/v1/categories",
    ];
    let bodies: Vec<(Vec<u8>, Option<&str>)> = vec![
        (b"{not json".to_vec(), Some("application/json")),
        (b"null".to_vec(), Some("application/json")),
        (b"[1,2,3]".to_vec(), Some("application/json")),
        (
            b"{\"event_id\": 5, \"number_slot\": \"x\"}".to_vec(),
            Some("application/json"),
        ),
        (vec![b'{'; 100_000], Some("application/json")),
        (
            format!("{{\"a\": \"{}\"}}", "x".repeat(300_000)).into_bytes(),
            Some("application/json"),
        ),
        (vec![0xff, 0xfe, 0x00], Some("application/json")),
        (b"{\"email\":\"a@b.co\"}".to_vec(), Some("text/plain")),
        (b"{}".to_vec(), None),
    ];
    for path in paths {
        for (body, content_type) in &bodies {
            let response = match raw(path, body.clone(), *content_type).await {
                Ok(response) => response,
                // The server answers 413 without reading an oversized body to its end and
                // closes the connection; the client may see that as a reset while sending.
                Err(e) if body.len() > boxoffice_ingest::BODY_LIMIT_BYTES => {
                    eprintln!("{path}: oversized body refused with a closed connection: {e}");
                    continue;
                }
                Err(e) => panic!("{path} {content_type:?}: {e}"),
            };
            let status = response.status().as_u16();
            assert!(
                (400..500).contains(&status),
                "{path} {content_type:?}: {status}"
            );
        }
    }
    let slots: Vec<Value> = vec![
        json!(0),
        json!(-1),
        json!(i64::MAX),
        json!(1.5),
        json!("1"),
        json!([1]),
        json!(null),
        json!(2_147_483_648_i64),
    ];
    for number_slot in slots {
        let reply = ingest
            .post(
                "/v1/orders",
                Some(&token),
                json!({"event_id": event_id, "number_slot": number_slot}),
            )
            .await;
        assert_eq!(reply.status, 422, "{number_slot}: {}", reply.body);
    }
    let odd = [
        "'; DROP KEYSPACE boxoffice; --",
        "\" OR \"\"=\"",
        "\u{202E}gnp.exe",
        "\u{0}\u{1}\u{1b}[31m",
        "😀🎟️👩‍👩‍👧",
        "ｆｕｌｌｗｉｄｔｈ",
        "a\u{0301}\u{0301}\u{0301}",
        "SELECT * FROM users WHERE token(id) > 0",
    ];
    for text in odd {
        for (path, body) in [
            (
                "/v1/register",
                json!({"email": text, "user_name": text, "first_name": text, "last_name": text, "password": text, "mobile_phone": text}),
            ),
            ("/v1/login", json!({"login": text, "password": text})),
            ("/v1/orders", json!({"event_id": text, "number_slot": 1})),
            (
                "/v1/payments",
                json!({"order_id": text, "price": 1, "payment_method": text}),
            ),
            ("/v1/refresh", json!({"refresh_token": text})),
        ] {
            let reply = ingest.post(path, Some(&token), body).await;
            assert!(
                (400..500).contains(&reply.status),
                "{path} {text:?}: {} {}",
                reply.status,
                reply.body
            );
        }
        let encoded: String = text.bytes().map(|b| format!("%{b:02X}")).collect();
        for path in [
            format!("/v1/tickets?q={encoded}"),
            format!("/v1/tickets/{encoded}"),
            format!("/v1/orders/{encoded}"),
            format!("/v1/users?page_token={encoded}"),
        ] {
            let reply = ingest.get(&path, Some(&token)).await;
            assert!(
                reply.status < 500,
                "{path}: {} {}",
                reply.status,
                reply.body
            );
        }
    }
    // A name in any script is fine.
    let unicode = ingest
        .post(
            "/v1/register",
            None,
            json!({"email": "zoe@example.com", "user_name": "zoe_u", "first_name": "Zoë 李", "last_name": "Ñúñez",
                   "password": "pässwörd ünïcödé", "mobile_phone": "+81 3-1234-5678"}),
        )
        .await;
    assert_eq!(unicode.status, 202, "{}", unicode.body);
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_down_answers_503_never_202() {
    let pipeline = Pipeline::create(services().await, "ingest_down")
        .await
        .unwrap();
    // The producer points at a port nobody listens on; the stores and registry are real.
    let dead = KafkaArgs {
        bootstrap_servers: "127.0.0.1:1".to_owned(),
        timeout: Duration::from_secs(2),
    };
    let ingest = Ingest::start_on(pipeline, dead, false).await;
    let admin = ingest.admin().await;
    let event = ingest
        .post(
            "/v1/tickets",
            Some(&admin),
            json!({"name": "Unreachable", "starts_at": "2031-06-01T20:00:00Z", "price_minor": 100, "currency": "EUR",
                   "capacity": 10, "sale_starts_at": "2020-01-01T00:00:00Z", "sale_ends_at": "2031-06-01T18:00:00Z"}),
        )
        .await;
    event.assert_problem(503);
    let event_id = ingest.get("/v1/tickets", None).await.body["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The account is made, but its verification email cannot be queued: 503, never a 202 that
    // promised an email (registering again resends the link).
    ingest
        .post(
            "/v1/register",
            None,
            json!({"email": "unlucky@example.com", "user_name": "unlucky", "first_name": "Un",
                   "last_name": "Lucky", "password": ingest_common::PASSWORD,
                   "mobile_phone": "+49 30 1234567"}),
        )
        .await
        .assert_problem(503);
    let (_, token, _) = ingest.verified_login("unlucky").await;
    let started = std::time::Instant::now();
    let order = ingest
        .post(
            "/v1/orders",
            Some(&token),
            json!({"event_id": event_id, "number_slot": 1}),
        )
        .await;
    order.assert_problem(503);
    assert!(order.headers.get("retry-after").is_some());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded by the produce timeout: {:?}",
        started.elapsed()
    );
    ingest.get("/readyz", None).await.assert_problem(503);
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_orders_table_gets_ingests_columns() {
    let services = services().await;
    let session = services.scylla().connect().await.unwrap();
    let name = boxoffice_tests::names::unique("ingest_migrate");
    let keyspace = boxoffice_store::schema::Keyspace::new(&name).unwrap();
    session
        .query_unpaged(
            format!(
                "CREATE KEYSPACE {} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}",
                keyspace.cql()
            ),
            &[],
        )
        .await
        .unwrap();
    // The orders table as it was before ingest added its columns.
    session
        .query_unpaged(
            format!(
                "CREATE TABLE {} (id text PRIMARY KEY, event_id text, user_id text, number_slot int, \
                 status text, created_at timestamp)",
                keyspace.table("orders")
            ),
            &[],
        )
        .await
        .unwrap();
    for _ in 0..2 {
        boxoffice_ingest::stores::cql::ensure_columns(&session, &keyspace)
            .await
            .unwrap();
    }
    let columns: Vec<String> = session
        .query_unpaged(
            "SELECT column_name FROM system_schema.columns WHERE keyspace_name = ? AND table_name = 'orders'",
            (keyspace.as_str(),),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(String,)>()
        .unwrap()
        .map(|row| row.unwrap().0)
        .collect();
    assert!(
        columns.contains(&"request_fingerprint".to_owned()),
        "{columns:?}"
    );
    assert!(
        columns.contains(&"idempotency_key".to_owned()),
        "{columns:?}"
    );
    session
        .query_unpaged(format!("DROP KEYSPACE {}", keyspace.cql()), &[])
        .await
        .unwrap();
}

/// Issue 13, finding 8: the startup bootstrap made an admin of whoever had registered
/// `INGEST_ADMIN_EMAIL` first (emails were not verified). Now it refuses an existing non-admin
/// account, naming the way out, and the account stays a fan; only the operator's explicit
/// `create-admin` (`ExistingAccount::Promote`) promotes it, and only once its address is
/// verified. The bootstrap stays idempotent for an account that is an admin already.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_startup_bootstrap_never_promotes_an_account_someone_registered() {
    use boxoffice_ingest::{AdminError, ExistingAccount, ensure_admin};
    let ingest = Ingest::start("ingest_admin_bootstrap", false).await;
    // Someone registers the address the operator will configure as the admin's.
    let (squatter_id, squatter, _) = ingest.user("ops_squatter").await;
    let email = "ops_squatter@example.com";
    let bootstrap = ensure_admin(
        &ingest.library,
        email,
        "a long admin password",
        None,
        ExistingAccount::RequireAdmin,
    )
    .await;
    let Err(AdminError::ExistingNotAdmin(named)) = bootstrap else {
        panic!("the bootstrap accepted a registered account: {bootstrap:?}");
    };
    assert_eq!(named, email);
    assert!(
        AdminError::ExistingNotAdmin(named)
            .to_string()
            .contains("create-admin"),
        "the error says how to promote deliberately"
    );
    ingest
        .get("/v1/users", Some(&squatter))
        .await
        .assert_problem(403);

    // The operator's deliberate promotion works, and the bootstrap then accepts the admin.
    let promoted = ensure_admin(
        &ingest.library,
        email,
        "a long admin password",
        None,
        ExistingAccount::Promote,
    )
    .await
    .unwrap();
    assert_eq!(promoted, squatter_id);
    let again = ensure_admin(
        &ingest.library,
        email,
        "a long admin password",
        None,
        ExistingAccount::RequireAdmin,
    )
    .await
    .unwrap();
    assert_eq!(again, squatter_id);

    // Issue 13, finding 8: not even `create-admin` promotes an account whose address was never
    // verified (anyone can register any address).
    let unverified = ingest
        .post(
            "/v1/register",
            None,
            json!({"email": "ops_lead@example.com", "user_name": "ops_lead", "first_name": "Ops",
                   "last_name": "Lead", "password": ingest_common::PASSWORD,
                   "mobile_phone": "+49 30 1234567"}),
        )
        .await;
    assert_eq!(unverified.status, 202, "{}", unverified.body);
    let refused = ensure_admin(
        &ingest.library,
        "ops_lead@example.com",
        "a long admin password",
        None,
        ExistingAccount::Promote,
    )
    .await;
    let Err(AdminError::Unverified(named)) = refused else {
        panic!("create-admin promoted an unverified address: {refused:?}");
    };
    assert_eq!(named, "ops_lead@example.com");
    let (_, lead, _) = ingest.verified_login("ops_lead").await;
    ingest
        .get("/v1/users", Some(&lead))
        .await
        .assert_problem(403);
}
