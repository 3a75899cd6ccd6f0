//! Issue 13, findings 3, 4 and 9. Registration was a free CPU and memory bomb (no limit, a 19 MiB
//! Argon2 hash per request, unbounded). Against the real `boxoffice-ingest` binary on the test
//! stack:
//!
//! - registrations per client address are limited: past the burst, **429** with `Retry-After`
//!   and a problem body, and no account is created;
//! - password hashing runs under a bound (one at a time here, two waiting): a flood of
//!   concurrent registrations gets **202** or **429** (with `Retry-After`), never a 5xx, and
//!   every 201 is a real account that can sign in;
//! - (finding 9) answers carry the security headers and `Cache-Control: no-store`;
//! - (finding 4) orders per account are limited (429 with `Retry-After`), another fan is not;
//! - (finding 3) `X-Forwarded-For` is believed only from a configured trusted proxy.
//!
//! The memory figure under 1,000 concurrent registrations is measured, not asserted (see the
//! closing notes of issue 13 and `ingest/README.md`).
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap fails the test"
)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use boxoffice_tests::pipeline::{Pipeline, workspace_binary};
use boxoffice_tests::receivers::free_port;
use boxoffice_tests::{services, wait};
use serde_json::{Value, json};

/// The ingest binary, killed when dropped.
struct IngestProcess {
    child: Child,
    base: String,
}

impl Drop for IngestProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_ingest(pipeline: &Pipeline, limits: &[(&str, &str)]) -> IngestProcess {
    let port = free_port();
    let child = Command::new(workspace_binary("boxoffice-ingest").unwrap())
        .env("BOXOFFICE_DEV", "1")
        .env("INGEST_JWT_SECRET", "kR3vX9pQ2mZ7tY1wB5nC8dF0gH4jL6sAe2Wq")
        .env("INGEST_LISTEN", format!("127.0.0.1:{port}"))
        .env("INGEST_METRICS_ADDR", "127.0.0.1:0")
        .env("SCYLLA_KEYSPACE", &pipeline.keyspace)
        .env("BOXOFFICE_TOPIC_PREFIX", &pipeline.prefix)
        .envs(limits.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let healthz = format!("{base}/healthz");
    wait::until("ingest serving", Duration::from_secs(90), || {
        let request = http.get(&healthz).send();
        async move { request.await.ok().filter(|r| r.status() == 200) }
    })
    .await
    .unwrap();
    IngestProcess { child, base }
}

fn registration(n: usize, run: &str) -> Value {
    json!({
        "email": format!("fan{n}-{run}@example.com"), "user_name": format!("fan{n}_{run}"),
        "first_name": "Fan", "last_name": "Flood", "mobile_phone": "+4915112345678",
        "password": format!("correct horse {n} battery"),
    })
}

/// Status, `Retry-After` and the content type of a registration's answer.
async fn register(
    http: &reqwest::Client,
    base: &str,
    body: &Value,
) -> (u16, Option<String>, String) {
    register_forwarded(http, base, body, None).await
}

/// [`register`] with an `X-Forwarded-For` header.
async fn register_forwarded(
    http: &reqwest::Client,
    base: &str,
    body: &Value,
    forwarded_for: Option<&str>,
) -> (u16, Option<String>, String) {
    let mut request = http.post(format!("{base}/v1/register")).json(body);
    if let Some(forwarded_for) = forwarded_for {
        request = request.header("x-forwarded-for", forwarded_for);
    }
    let response = request.send().await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    (
        response.status().as_u16(),
        header("retry-after"),
        header("content-type").unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_per_address_are_limited() {
    let pipeline = Pipeline::create(services().await, "abuse_register_ip")
        .await
        .unwrap();
    let ingest = start_ingest(
        &pipeline,
        &[
            ("INGEST_REGISTER_IP_BURST", "3"),
            ("INGEST_REGISTER_IP_REFILL", "1h"),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    for n in 0..3 {
        let (status, ..) = register(&http, &ingest.base, &registration(n, &run)).await;
        assert_eq!(status, 202, "registration {n}");
    }
    let (status, retry_after, content_type) =
        register(&http, &ingest.base, &registration(3, &run)).await;
    assert_eq!(status, 429);
    assert!(retry_after.is_some_and(|s| s.parse::<u64>().unwrap() > 0));
    assert_eq!(content_type, "application/problem+json");
    // The refused registration created nothing: its user name cannot sign in.
    let login = http
        .post(format!("{}/v1/login", ingest.base))
        .json(&json!({"login": format!("fan3_{run}"), "password": "correct horse 3 battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 401);
    // Finding 9: every answer carries the security headers and is not cached.
    for (name, value) in [
        ("cache-control", "no-store"),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
    ] {
        let got = login.headers().get(name).and_then(|v| v.to_str().ok());
        assert_eq!(got, Some(value), "{name}");
    }
}

/// `X-Forwarded-For` names the client only when the peer is a configured trusted proxy:
/// behind one, each forwarded client has its own registration bucket; without one, a client
/// that writes the header itself cannot get a fresh bucket per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
    let pipeline = Pipeline::create(services().await, "abuse_forwarded")
        .await
        .unwrap();
    let limits = [
        ("INGEST_REGISTER_IP_BURST", "1"),
        ("INGEST_REGISTER_IP_REFILL", "1h"),
    ];
    let http = reqwest::Client::new();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let behind_proxy = start_ingest(
        &pipeline,
        &[
            limits[0],
            limits[1],
            ("INGEST_TRUSTED_PROXIES", "127.0.0.0/8"),
        ],
    )
    .await;
    let base = &behind_proxy.base;
    let first = register_forwarded(&http, base, &registration(0, &run), Some("198.51.100.1")).await;
    assert_eq!(first.0, 202);
    let again = register_forwarded(&http, base, &registration(1, &run), Some("198.51.100.1")).await;
    assert_eq!(again.0, 429, "the same forwarded client has used its burst");
    // A client-written first hop does not help: the proxy's hop (the last) is the client.
    let spoofed = "203.0.113.50, 198.51.100.1";
    let spoof = register_forwarded(&http, base, &registration(2, &run), Some(spoofed)).await;
    assert_eq!(spoof.0, 429, "the nearest untrusted hop is the client");
    let other = register_forwarded(&http, base, &registration(3, &run), Some("198.51.100.2")).await;
    assert_eq!(other.0, 202, "another forwarded client has its own bucket");
    drop(behind_proxy);

    let direct = start_ingest(&pipeline, &limits).await;
    let base = &direct.base;
    let first = register_forwarded(&http, base, &registration(4, &run), Some("198.51.100.3")).await;
    assert_eq!(first.0, 202);
    let rotated =
        register_forwarded(&http, base, &registration(5, &run), Some("198.51.100.4")).await;
    assert_eq!(
        rotated.0, 429,
        "from an untrusted peer the header is ignored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_flood_waits_in_a_bounded_queue_or_gets_429() {
    let pipeline = Pipeline::create(services().await, "abuse_hash_queue")
        .await
        .unwrap();
    let ingest = start_ingest(
        &pipeline,
        &[
            ("INGEST_REGISTER_IP_BURST", "100000"),
            ("INGEST_PASSWORD_HASH_CONCURRENCY", "1"),
            ("INGEST_PASSWORD_HASH_QUEUE", "2"),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let flood = 40;
    let answers = futures::future::join_all((0..flood).map(|n| {
        let (http, base, body) = (http.clone(), ingest.base.clone(), registration(n, &run));
        async move { (n, register(&http, &base, &body).await) }
    }))
    .await;
    let created: Vec<usize> = answers
        .iter()
        .filter(|(_, (status, ..))| *status == 202)
        .map(|(n, _)| *n)
        .collect();
    let busy = answers
        .iter()
        .filter(|(_, (status, retry_after, content_type))| {
            *status == 429 && retry_after.is_some() && content_type == "application/problem+json"
        })
        .count();
    assert_eq!(created.len() + busy, flood, "only 202 or 429: {answers:?}");
    assert!(busy > 0, "40 at once with room for 3: some are turned away");
    assert!(!created.is_empty(), "the bound lets work through");
    // Every 202 is a real account.
    for n in created.iter().take(3) {
        let login = http
            .post(format!("{}/v1/login", ingest.base))
            .json(&json!({"login": format!("fan{n}_{run}"), "password": format!("correct horse {n} battery")}))
            .send()
            .await
            .unwrap();
        assert_eq!(login.status(), 200, "fan{n}");
    }
}

/// POSTs `body` (with a bearer token when given): status, `Retry-After`, body.
async fn post(
    http: &reqwest::Client,
    url: String,
    token: Option<&str>,
    body: &Value,
) -> (u16, Option<String>, Value) {
    let mut request = http.post(url).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (
        status,
        retry_after,
        response.json().await.unwrap_or(Value::Null),
    )
}

async fn access_token(http: &reqwest::Client, base: &str, login: &str, password: &str) -> String {
    let body = json!({"login": login, "password": password});
    let (status, _, reply) = post(http, format!("{base}/v1/login"), None, &body).await;
    assert_eq!(status, 200, "{reply}");
    reply["access_token"].as_str().unwrap().to_owned()
}

/// Registers `count` fans of `run`, has `admin` verify their addresses and signs them in:
/// their access tokens.
async fn signed_in_fans(
    http: &reqwest::Client,
    base: &str,
    admin: &str,
    run: &str,
    count: usize,
) -> Vec<String> {
    let mut fans = Vec::new();
    for n in 0..count {
        let account =
            boxoffice_tests::accounts::register_verified(http, base, admin, &registration(n, run))
                .await
                .unwrap_or_else(|e| panic!("{e:#}"));
        fans.push(account.access_token);
    }
    fans
}

/// A paid event on sale now, created by `admin`: its id.
async fn create_event(http: &reqwest::Client, base: &str, admin: &str) -> String {
    let event = json!({"name": "Flash sale", "description": "Limited", "venue": "Hall",
        "starts_at": "2031-06-01T20:00:00Z", "price_minor": 1000, "currency": "EUR",
        "capacity": 100, "sale_starts_at": "2020-01-01T00:00:00Z",
        "sale_ends_at": "2031-06-01T18:00:00Z"});
    let (status, _, created) = post(http, format!("{base}/v1/tickets"), Some(admin), &event).await;
    assert_eq!(status, 201, "{created}");
    created["id"].as_str().unwrap().to_owned()
}

/// Issue 13, finding 4: a script could hold a whole sale. Orders are limited per account (and
/// per address) in each replica: past the burst, 429 with `Retry-After` and a problem body;
/// another fan is not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_per_account_are_limited() {
    let pipeline = Pipeline::create(services().await, "abuse_orders")
        .await
        .unwrap();
    let admin_password = "Zq8$kP2wLm5#xR-admin";
    let ingest = start_ingest(
        &pipeline,
        &[
            ("INGEST_ORDER_USER_BURST", "2"),
            ("INGEST_ORDER_USER_REFILL", "1h"),
            ("INGEST_ADMIN_EMAIL", "admin@abuse.example"),
            ("INGEST_ADMIN_PASSWORD", admin_password),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let base = ingest.base.as_str();
    let admin = access_token(&http, base, "admin@abuse.example", admin_password).await;
    let event = create_event(&http, base, &admin).await;
    let order = json!({"event_id": event, "number_slot": 1});

    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let fans = signed_in_fans(&http, base, &admin, &run, 2).await;
    let orders = format!("{base}/v1/orders");
    for _ in 0..2 {
        let (status, _, reply) = post(&http, orders.clone(), Some(&fans[0]), &order).await;
        assert_eq!(status, 202, "{reply}");
    }
    let (status, retry_after, reply) = post(&http, orders.clone(), Some(&fans[0]), &order).await;
    assert_eq!(status, 429, "{reply}");
    assert!(retry_after.is_some_and(|s| s.parse::<u64>().unwrap() > 0));
    assert_eq!(reply["status"], 429);
    // Another fan orders as before.
    let (status, _, reply) = post(&http, orders, Some(&fans[1]), &order).await;
    assert_eq!(status, 202, "{reply}");
}

/// Opens a live stream (bearer token when given): the response, whatever its status.
async fn open_stream(http: &reqwest::Client, url: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = http.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

/// Reads a stream until its final `end` event (or `within` passes): the end's `reason`.
async fn end_reason(mut stream: reqwest::Response, within: Duration) -> Option<String> {
    let mut text = String::new();
    let read = async {
        while let Ok(Some(chunk)) = stream.chunk().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if let Some(at) = text.find("event: end\n") {
                let data = text[at..].lines().find_map(|l| l.strip_prefix("data: "))?;
                let data: Value = serde_json::from_str(data).ok()?;
                return data["reason"].as_str().map(str::to_owned);
            }
        }
        None
    };
    tokio::time::timeout(within, read).await.ok().flatten()
}

/// Issue 13, finding 6: live streams outlived logout and token expiry, with no cap per user or
/// in total. A signed-in stream ends with a final `end` event (`session-revoked` after a
/// logout, `token-expired` when its token expires); streams per account, per address and in
/// total are capped (429 with `Retry-After`), and a closed stream's slot comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_streams_end_with_the_session_and_are_capped() {
    let pipeline = Pipeline::create(services().await, "abuse_streams")
        .await
        .unwrap();
    let admin_password = "Zq8$kP2wLm5#xR-admin";
    let ingest = start_ingest(
        &pipeline,
        &[
            // Long enough for the caps below to finish on one fan's token on a slow machine.
            ("INGEST_ACCESS_TOKEN_TTL", "20s"),
            ("INGEST_STREAMS_PER_USER", "2"),
            ("INGEST_STREAMS_PER_ADDRESS", "2"),
            ("INGEST_STREAMS_TOTAL", "5"),
            ("INGEST_ADMIN_EMAIL", "admin@streams.example"),
            ("INGEST_ADMIN_PASSWORD", admin_password),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let base = ingest.base.as_str();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let admin = access_token(&http, base, "admin@streams.example", admin_password).await;
    let fans = signed_in_fans(&http, base, &admin, &run, 2).await;
    let notifications = format!("{base}/v1/notifications/stream");

    // Logout ends the stream; an untouched token's stream ends when the token expires. A
    // fresh token for the first, so it cannot expire before the logout is seen (5 s).
    let fresh = access_token(
        &http,
        base,
        &format!("fan0_{run}"),
        "correct horse 0 battery",
    )
    .await;
    let revoked = open_stream(&http, &notifications, Some(&fresh)).await;
    assert_eq!(revoked.status(), 200);
    let expiring = open_stream(&http, &notifications, Some(&fans[1])).await;
    assert_eq!(expiring.status(), 200);
    let (status, ..) = post(&http, format!("{base}/v1/logout"), Some(&fresh), &json!({})).await;
    assert_eq!(status, 204);
    let (revoked_end, expired_end) = tokio::join!(
        end_reason(revoked, Duration::from_secs(11)),
        end_reason(expiring, Duration::from_secs(45)),
    );
    assert_eq!(revoked_end.as_deref(), Some("session-revoked"));
    assert_eq!(expired_end.as_deref(), Some("token-expired"));

    // Caps: two per account, two per address, five in total.
    let fan = access_token(
        &http,
        base,
        &format!("fan1_{run}"),
        "correct horse 1 battery",
    )
    .await;
    let first = open_stream(&http, &notifications, Some(&fan)).await;
    let _second = open_stream(&http, &notifications, Some(&fan)).await;
    let third = open_stream(&http, &notifications, Some(&fan)).await;
    assert_eq!(third.status(), 429);
    assert!(third.headers().get("retry-after").is_some());
    drop(first);
    let reopened = wait::until(
        "a closed stream's slot is free",
        Duration::from_secs(10),
        || {
            let request = open_stream(&http, &notifications, Some(&fan));
            async move { Some(request.await).filter(|r| r.status() == 200) }
        },
    )
    .await
    .unwrap();
    let admin = access_token(&http, base, "admin@streams.example", admin_password).await;
    let event = create_event(&http, base, &admin).await;
    let availability = format!("{base}/v1/tickets/{event}/availability/stream");
    let public: Vec<_> = [
        open_stream(&http, &availability, None).await,
        open_stream(&http, &availability, None).await,
    ]
    .into();
    assert!(public.iter().all(|r| r.status() == 200));
    let refused = open_stream(&http, &availability, None).await;
    assert_eq!(refused.status(), 429, "per address");
    let admins = open_stream(&http, &notifications, Some(&admin)).await;
    assert_eq!(admins.status(), 200, "the fifth stream");
    let over_total = open_stream(&http, &notifications, Some(&admin)).await;
    assert_eq!(over_total.status(), 429, "in total");
    let problem: Value = over_total.json().await.unwrap();
    assert_eq!(problem["status"], 429);
    drop((reopened, public, admins));
}

/// Issue 13, finding 9: refresh sessions never reached an absolute end (every rotation gave the
/// new token a full lifetime, so a stolen token kept alive by rotation lived forever). The
/// session ends `INGEST_REFRESH_TOKEN_TTL` after login however often it is rotated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotation_never_extends_a_session() {
    let pipeline = Pipeline::create(services().await, "abuse_session_end")
        .await
        .unwrap();
    let ingest = start_ingest(&pipeline, &[("INGEST_REFRESH_TOKEN_TTL", "6s")]).await;
    let http = reqwest::Client::new();
    let base = ingest.base.as_str();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let (status, ..) = register(&http, base, &registration(0, &run)).await;
    assert_eq!(status, 202);
    let body = json!({"login": format!("fan0_{run}"), "password": "correct horse 0 battery"});
    // Before the login is sent: the session starts somewhere inside the login's round trip.
    let started = std::time::Instant::now();
    let (status, _, mut pair) = post(&http, format!("{base}/v1/login"), None, &body).await;
    assert_eq!(status, 200, "{pair}");
    let mut rotations = 0;
    let refused = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let body = json!({"refresh_token": pair["refresh_token"]});
        let (status, _, next) = post(&http, format!("{base}/v1/refresh"), None, &body).await;
        if status != 200 {
            break (status, started.elapsed());
        }
        assert!(
            next["refresh_expires_in"].as_u64().unwrap() < 6,
            "the session's end does not move: {next}"
        );
        rotations += 1;
        pair = next;
        assert!(
            rotations < 10,
            "a session of 6 s still rotating after {rotations} rotations"
        );
    };
    assert_eq!(refused.0, 401);
    assert!(rotations >= 2, "rotation works until the end: {rotations}");
    assert!(refused.1 >= Duration::from_secs(6), "{:?}", refused.1);
}
