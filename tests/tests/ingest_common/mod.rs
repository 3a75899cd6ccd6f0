//! Shared by the ingest end-to-end tests: a private pipeline (topics, keyspace), the ingest
//! server on 127.0.0.1:0 with the real CQL stores and the real Kafka producer, the booking
//! processor in-process, and a small HTTP client.
#![allow(dead_code, reason = "each test file uses a different part")]

use std::sync::Arc;
use std::time::Duration;

use boxoffice_ingest::bus::KafkaBus;
use boxoffice_ingest::config::{IngestSettings, JwtSecret, ProviderWebhookSettings, Topics};
use boxoffice_ingest::live::Live;
use boxoffice_ingest::stores::cql::CqlStores;
use boxoffice_ingest::{Deps, Follow};
use boxoffice_store::schema::Keyspace;
use boxoffice_tests::pipeline::{Pipeline, RunningProcessor};
use boxoffice_tests::services;
use boxoffice_topics::kafka::KafkaArgs;
use boxoffice_topics::names::TopicPrefix;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use serde_json::{Value, json};
use tokio::sync::oneshot;

pub const SECRET: &str = "end-to-end-test-secret-with-enough-bytes";
pub const ADMIN_EMAIL: &str = "admin@boxoffice.test";
pub const PASSWORD: &str = "a good password";

pub fn settings(prefix: &str) -> IngestSettings {
    IngestSettings {
        listen: "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()),
        topic_prefix: TopicPrefix::new(prefix).expect("test prefixes are valid topic-name starts"),
        jwt_secret: JwtSecret::new(SECRET.as_bytes().to_vec()).unwrap_or_else(|e| panic!("{e}")),
        jwt_issuer: "boxoffice-ingest".into(),
        jwt_audience: "boxoffice-api".into(),
        access_token_ttl: Duration::from_secs(900),
        refresh_token_ttl: Duration::from_secs(3600),
        produce_timeout: Duration::from_secs(5),
        login_account_burst: 50,
        login_account_refill: Duration::from_millis(100),
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
        account_link_base: "http://localhost:8888"
            .parse()
            .unwrap_or_else(|_| unreachable!()),
        // Webhook receivers in the tests listen on loopback.
        egress: boxoffice_runtime::egress::EgressArgs::loopback(),
    }
}

/// A running ingest (and, when asked, a booking processor) on a private pipeline.
pub struct Ingest {
    pub pipeline: Pipeline,
    pub base: String,
    pub http: reqwest::Client,
    /// A state on the same stores and topics, for calling ingest's library functions (the
    /// admin bootstrap) as the binary does.
    pub library: boxoffice_ingest::state::SharedState,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    processor: Option<RunningProcessor>,
}

impl Ingest {
    /// Starts ingest on a fresh pipeline; `processor` also starts the booking processor.
    pub async fn start(name: &str, processor: bool) -> Ingest {
        let pipeline = Pipeline::create(services().await, name)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let kafka = pipeline.services.kafka();
        Self::start_on(pipeline, kafka, processor).await
    }

    /// Starts ingest producing through `kafka` (a dead address makes Kafka "down").
    pub async fn start_on(pipeline: Pipeline, kafka: KafkaArgs, processor: bool) -> Ingest {
        Self::start_on_with(
            pipeline,
            kafka,
            processor,
            ProviderWebhookSettings::default(),
        )
        .await
    }

    /// Starts ingest on a fresh pipeline with the payment provider webhook's `provider`
    /// settings (no processor).
    pub async fn start_with_provider(name: &str, provider: ProviderWebhookSettings) -> Ingest {
        let pipeline = Pipeline::create(services().await, name)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let kafka = pipeline.services.kafka();
        Self::start_on_with(pipeline, kafka, false, provider).await
    }

    /// [`Ingest::start_on`] with the payment provider webhook's `provider` settings.
    pub async fn start_on_with(
        pipeline: Pipeline,
        kafka: KafkaArgs,
        processor: bool,
        provider: ProviderWebhookSettings,
    ) -> Ingest {
        let keyspace = Keyspace::new(&pipeline.keyspace).unwrap_or_else(|e| panic!("{e}"));
        let stores = CqlStores::new(pipeline.session.clone(), &keyspace)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .into_stores();
        let settings = settings(&pipeline.prefix);
        let mut ingest_kafka = kafka.clone();
        ingest_kafka.timeout = Duration::from_secs(2);
        let bus = Arc::new(
            KafkaBus::new(
                &ingest_kafka,
                pipeline.codec.clone(),
                Topics::with_prefix(&pipeline.prefix),
                settings.produce_timeout,
            )
            .unwrap_or_else(|e| panic!("{e}")),
        );
        let admin_state = boxoffice_ingest::state(
            &settings,
            stores.clone(),
            bus.clone(),
            Arc::new(Live::new()),
        );
        boxoffice_ingest::ensure_admin(
            &admin_state,
            ADMIN_EMAIL,
            PASSWORD,
            Some("admin"),
            boxoffice_ingest::ExistingAccount::RequireAdmin,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let base = format!(
            "http://{}",
            listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let deps = Deps {
            settings,
            stores,
            bus,
            follow: Some(Follow {
                kafka: pipeline.services.kafka(),
                codec: pipeline.codec.clone(),
                retry: boxoffice_ingest::RetryPolicy::with_budget(std::time::Duration::from_secs(
                    60,
                )),
            }),
            metrics: Default::default(),
        };
        let server = tokio::spawn(boxoffice_ingest::run_with(
            deps,
            provider,
            listener,
            async {
                let _ = stopped.await;
            },
        ));
        let processor = if processor {
            Some(
                pipeline
                    .start_processor()
                    .await
                    .unwrap_or_else(|e| panic!("{e:#}")),
            )
        } else {
            None
        };
        Ingest {
            pipeline,
            base,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap_or_else(|e| panic!("{e}")),
            library: admin_state,
            stop: Some(stop),
            server: Some(server),
            processor,
        }
    }

    /// Stops the server gracefully (and the processor).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let result = tokio::time::timeout(Duration::from_secs(15), server).await;
            assert!(
                matches!(result, Ok(Ok(Ok(())))),
                "graceful shutdown: {result:?}"
            );
        }
        if let Some(processor) = self.processor.take() {
            processor.stop().await.unwrap_or_else(|e| panic!("{e:#}"));
        }
        cleanup(&self.pipeline).await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request; answers (status, headers, JSON body or Null).
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::GET);
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        Reply::from(
            request
                .send()
                .await
                .unwrap_or_else(|e| panic!("{path}: {e}")),
        )
        .await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.send("GET", path, token, None, &[]).await
    }

    /// Waits (at most 60 s) until `GET v1/orders` lists `count` orders for `token`: the booking
    /// processor writes an order's rows once it decided it. The listing.
    pub async fn orders_listed(&self, token: &str, count: usize) -> Reply {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            // Bounded by `deadline`.
            let listed = self.get("/v1/orders?limit=100", Some(token)).await;
            let n = listed.body["items"].as_array().map_or(0, Vec::len);
            if n >= count || std::time::Instant::now() > deadline {
                assert_eq!(n, count, "orders listed: {}", listed.body);
                return listed;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        self.send("POST", path, token, Some(body), &[]).await
    }

    /// Registers `name` and logs in: (user id, access token, refresh token).
    pub async fn user(&self, name: &str) -> (String, String, String) {
        let registered = self
            .post(
                "/v1/register",
                None,
                json!({"email": format!("{name}@example.com"), "user_name": name, "first_name": "Test",
                       "last_name": "User", "password": PASSWORD, "mobile_phone": "+49 30 1234567"}),
            )
            .await;
        assert_eq!(registered.status, 202, "{}", registered.body);
        self.verified_login(name).await
    }

    /// Marks the account `name` verified and signs it in: (user id, access token, refresh
    /// token).
    pub async fn verified_login(&self, name: &str) -> (String, String, String) {
        // The address is marked verified in the store, as `POST v1/users/{id}/verify-email`
        // does (tests/tests/accounts.rs follows the emailed link and calls that API).
        let id = self.user_id(name).await;
        self.library
            .stores
            .accounts
            .set_email_verified(&id, boxoffice_ingest::now_millis())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let (access, refresh) = self.login(name).await;
        (id, access, refresh)
    }

    /// Signs `login` in with [`PASSWORD`]: the token answer.
    async fn sign_in(&self, login: &str) -> Reply {
        let reply = self
            .post(
                "/v1/login",
                None,
                json!({"login": login, "password": PASSWORD}),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply
    }

    /// The user id of `login` (from a sign-in).
    pub async fn user_id(&self, login: &str) -> String {
        self.sign_in(login).await.body["user_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub async fn login(&self, login: &str) -> (String, String) {
        let reply = self.sign_in(login).await;
        (
            reply.body["access_token"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            reply.body["refresh_token"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    }

    pub async fn admin(&self) -> String {
        self.login("admin").await.0
    }

    /// Creates a paid event on sale now (admin); returns its id.
    pub async fn event(&self, admin: &str, name: &str, capacity: i64, price: i64) -> String {
        let reply = self
            .post(
                "/v1/tickets",
                Some(admin),
                json!({"name": name, "description": "An evening of music", "venue": "Main hall",
                       "starts_at": "2031-06-01T20:00:00Z", "price_minor": price, "currency": "EUR",
                       "capacity": capacity, "sale_starts_at": "2020-01-01T00:00:00Z",
                       "sale_ends_at": "2031-06-01T18:00:00Z", "max_per_order": 10}),
            )
            .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        reply.body["id"].as_str().unwrap_or_default().to_owned()
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    async fn from(response: reqwest::Response) -> Reply {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.unwrap_or_default();
        Reply {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    /// A 4xx (or the given status) problem+json answer.
    pub fn assert_problem(&self, status: u16) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(
            self.headers
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "{}",
            self.body
        );
        assert_eq!(self.body["status"], status, "{}", self.body);
    }
}

/// Reads server-sent events from `response` until `done` says enough, within `timeout`.
/// Returns `(event name, id, data)` triples.
pub async fn read_events(
    mut response: reqwest::Response,
    timeout: Duration,
    mut done: impl FnMut(&[(String, String, Value)]) -> bool,
) -> Vec<(String, String, Value)> {
    let mut events = Vec::new();
    let mut buffer = String::new();
    let read = async {
        while !done(&events) {
            let Ok(Some(chunk)) = response.chunk().await else {
                break;
            };
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let (mut name, mut id, mut data) = (String::new(), String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if !name.is_empty() {
                    events.push((name, id, serde_json::from_str(&data).unwrap_or(Value::Null)));
                }
            }
        }
    };
    let _ = tokio::time::timeout(timeout, read).await;
    events
}

/// Drops the test's keyspace and deletes its topics (best effort): the local Cassandra's heap
/// does not hold an unbounded number of keyspaces.
pub async fn cleanup(pipeline: &Pipeline) {
    let drop = format!("DROP KEYSPACE IF EXISTS \"{}\"", pipeline.keyspace);
    if let Err(e) = pipeline.session.query_unpaged(drop, &[]).await {
        eprintln!("dropping keyspace {}: {e}", pipeline.keyspace);
    }
    let admin: Result<AdminClient<DefaultClientContext>, _> =
        pipeline.services.kafka().client_config().create();
    if let Ok(admin) = admin {
        let t = &pipeline.topics;
        let names = [
            &t.commands,
            &t.orders,
            &t.payments,
            &t.availability,
            &t.notifications,
            &t.dead_letters,
        ];
        let names: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
        if let Err(e) = admin.delete_topics(&names, &AdminOptions::new()).await {
            eprintln!("deleting topics of {}: {e}", pipeline.prefix);
        }
    }
}
