//! An ingest for load runs: started in this process, or as the real binary in a child process,
//! on a private pipeline (topics under a unique prefix, its own keyspace, both removed when
//! the pipeline is dropped) with the rate limits opened (a load generator would otherwise
//! measure the limits), plus the setup every run needs through the public API: the admin's
//! login, the hot event, verified users.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use boxoffice_ingest::bus::KafkaBus;
use boxoffice_ingest::config::{IngestSettings, JwtSecret, Topics};
use boxoffice_ingest::live::Live;
use boxoffice_ingest::stores::cql::CqlStores;
use boxoffice_ingest::{Deps, Follow};
use boxoffice_store::schema::Keyspace;
use boxoffice_topics::names::TopicPrefix;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::json;
use tokio::sync::oneshot;

use crate::accounts::{self, VerifiedAccount};
use crate::pipeline::Pipeline;

/// The password of every account the load generators create.
pub const PASSWORD: &str = "a load test password";
/// The in-process ingest's admin.
pub const ADMIN_EMAIL: &str = "load-admin@boxoffice.test";
pub const ADMIN_LOGIN: &str = "loadadmin";

/// Signs in; the access token.
pub async fn login(
    http: &reqwest::Client,
    base: &str,
    login: &str,
    password: &str,
) -> anyhow::Result<String> {
    let answer = accounts::sign_in(http, base, login, password).await?;
    answer["access_token"]
        .as_str()
        .map(str::to_owned)
        .context("login answer without access_token")
}

/// Creates the hot event (admin) with `capacity` slots, on sale now; its id.
pub async fn create_event(
    http: &reqwest::Client,
    base: &str,
    admin: &str,
    capacity: u32,
) -> anyhow::Result<String> {
    let (status, body) = accounts::post(
        http,
        format!("{base}/v1/tickets"),
        Some(admin),
        &json!({"name": "Flash sale load test", "description": "load generator", "venue": "Main hall",
                "starts_at": "2031-06-01T20:00:00Z", "price_minor": 4500, "currency": "EUR",
                "capacity": capacity, "sale_starts_at": "2020-01-01T00:00:00Z",
                "sale_ends_at": "2031-06-01T18:00:00Z", "max_per_order": 10,
                // Load users book many times each: no per-account cap (measured as before).
                "max_per_user": 0}),
    )
    .await?;
    anyhow::ensure!(status == 201, "creating the event: {status} {body}");
    body["id"]
        .as_str()
        .map(str::to_owned)
        .context("event answer without id")
}

/// Registers and logs in `count` users (4 at a time: Argon2 costs CPU; `admin` verifies their
/// addresses).
pub async fn users(
    http: &reqwest::Client,
    base: &str,
    admin: &str,
    count: usize,
) -> anyhow::Result<Vec<VerifiedAccount>> {
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let next = AtomicUsize::new(0);
    let tokens = Mutex::new(Vec::with_capacity(count));
    let worker = || async {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= count {
                return anyhow::Ok(());
            }
            let name = format!("ld{tag}_{i}");
            let account = accounts::register_verified(
                http,
                base,
                admin,
                &json!({"email": format!("{name}@example.com"), "user_name": name,
                        "first_name": "Load", "last_name": "User", "password": PASSWORD,
                        "mobile_phone": "+49 30 1234567"}),
            )
            .await?;
            tokens
                .lock()
                .map_err(|_| anyhow::anyhow!("account list poisoned"))?
                .push(account);
        }
    };
    futures::future::try_join_all((0..4).map(|_| worker())).await?;
    tokens
        .into_inner()
        .map_err(|_| anyhow::anyhow!("account list poisoned"))
}

/// The in-process ingest's settings: the login limits are raised so one address can log in
/// every user at once (defaults: 60 per address, then one every 200 ms).
pub fn settings(prefix: &str, users: usize) -> anyhow::Result<IngestSettings> {
    let secret = uuid::Uuid::new_v4().simple().to_string().repeat(2);
    Ok(IngestSettings {
        listen: "127.0.0.1:0".parse()?,
        topic_prefix: TopicPrefix::new(prefix).expect("test prefixes are valid topic-name starts"),
        jwt_secret: JwtSecret::new(secret.into_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?,
        jwt_issuer: "boxoffice-ingest".into(),
        jwt_audience: "boxoffice-api".into(),
        access_token_ttl: Duration::from_secs(3600),
        refresh_token_ttl: Duration::from_secs(3600),
        produce_timeout: Duration::from_secs(5),
        login_account_burst: 10,
        login_account_refill: Duration::from_secs(6),
        login_ip_burst: u32::try_from(users + 100).unwrap_or(u32::MAX),
        login_ip_refill: Duration::from_millis(1),
        // A load generator: the limits would measure themselves, not the accept path.
        order_user_burst: u32::MAX,
        order_user_refill: Duration::from_millis(1),
        order_ip_burst: u32::MAX,
        order_ip_refill: Duration::from_millis(1),
        register_ip_burst: u32::try_from(users + 100).unwrap_or(u32::MAX),
        register_ip_refill: Duration::from_millis(1),
        trusted_proxies: Vec::new(),
        streams_per_user: 1_000,
        streams_per_address: 10_000,
        streams_total: 100_000,
        password_hash_concurrency: 2,
        password_hash_queue: u16::try_from(users + 100).unwrap_or(u16::MAX),
        account_link_base: "http://localhost:8888".parse()?,
        egress: Default::default(),
    })
}

/// Ingest running in this process, on a private pipeline (dropping it removes the topics and
/// the keyspace).
pub struct Local {
    pub pipeline: Pipeline,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    server: Server,
}

/// Where ingest runs.
enum Server {
    /// On the runtime that started it.
    InProcess {
        stop: oneshot::Sender<()>,
        server: tokio::task::JoinHandle<std::io::Result<()>>,
    },
    /// The `boxoffice-ingest` binary, as a child process.
    Process(Child),
}

/// A child process that is killed (and reaped) when dropped: on a failed start as on a stop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// A private pipeline with ingest's stores, bus and admin ready, before anything serves it.
struct Prepared {
    pipeline: Pipeline,
    settings: IngestSettings,
    stores: boxoffice_ingest::stores::Stores,
    bus: Arc<KafkaBus>,
}

async fn prepare(name: &str, partitions: i32, users: usize) -> anyhow::Result<Prepared> {
    let services = crate::services().await;
    let pipeline = Pipeline::create_with(services, name, partitions).await?;
    let keyspace = Keyspace::new(&pipeline.keyspace).map_err(|e| anyhow::anyhow!("{e}"))?;
    let stores = CqlStores::new(pipeline.session.clone(), &keyspace)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .into_stores();
    let settings = settings(&pipeline.prefix, users)?;
    let bus = Arc::new(KafkaBus::new(
        &pipeline.services.kafka(),
        pipeline.codec.clone(),
        Topics::with_prefix(&pipeline.prefix),
        settings.produce_timeout,
    )?);
    let state = boxoffice_ingest::state(
        &settings,
        stores.clone(),
        bus.clone(),
        Arc::new(Live::new()),
    );
    boxoffice_ingest::ensure_admin(
        &state,
        ADMIN_EMAIL,
        PASSWORD,
        Some(ADMIN_LOGIN),
        boxoffice_ingest::ExistingAccount::RequireAdmin,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Prepared {
        pipeline,
        settings,
        stores,
        bus,
    })
}

/// Starts ingest in this process (on the calling runtime) on a new pipeline named `name` with
/// `partitions` command partitions; its admin is [`ADMIN_LOGIN`] / [`PASSWORD`].
pub async fn start_local(name: &str, partitions: i32, users: usize) -> anyhow::Result<Local> {
    let Prepared {
        pipeline,
        settings,
        stores,
        bus,
    } = prepare(name, partitions, users).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = oneshot::channel::<()>();
    let deps = Deps {
        settings,
        stores,
        bus,
        follow: Some(Follow {
            kafka: pipeline.services.kafka(),
            codec: pipeline.codec.clone(),
            retry: boxoffice_ingest::RetryPolicy::with_budget(std::time::Duration::from_secs(60)),
        }),
        metrics: Default::default(),
    };
    let server = tokio::spawn(boxoffice_ingest::run(deps, listener, async {
        let _ = stopped.await;
    }));
    Ok(Local {
        pipeline,
        base,
        server: Server::InProcess { stop, server },
    })
}

/// A free port on 127.0.0.1 (bound, read and released: another process may take it in
/// between, which the child's startup then reports).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts the `boxoffice-ingest` binary at `binary` as a child process on a new pipeline named
/// `name` (so its memory and CPU show apart from the load generator's), with the settings
/// [`start_local`] uses: the rate limits opened, live followers on. The stack's addresses come
/// from this process's environment (`eval "$(scripts/stack env)"`); its log goes to
/// `<temp dir>/<prefix>ingest.log`. Waits at most 60 s for it to answer.
pub async fn start_process(
    name: &str,
    partitions: i32,
    users: usize,
    binary: &Path,
) -> anyhow::Result<Local> {
    anyhow::ensure!(
        binary.is_file(),
        "{} is missing: build it with `cargo build --release -p boxoffice-ingest`",
        binary.display()
    );
    let Prepared {
        pipeline, settings, ..
    } = prepare(name, partitions, users).await?;
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let log_path = std::env::temp_dir().join(format!("{}ingest.log", pipeline.prefix));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let open = u32::MAX.to_string();
    let child = std::process::Command::new(binary)
        .env("BOXOFFICE_DEV", "1")
        .env("RUST_LOG", "warn")
        .env("BOXOFFICE_TOPIC_PREFIX", &pipeline.prefix)
        .env("SCYLLA_KEYSPACE", &pipeline.keyspace)
        .env("INGEST_LISTEN", format!("127.0.0.1:{port}"))
        .env("INGEST_METRICS_ADDR", format!("127.0.0.1:{}", free_port()?))
        .env(
            "INGEST_JWT_SECRET",
            uuid::Uuid::new_v4().simple().to_string().repeat(2),
        )
        .env("INGEST_ACCESS_TOKEN_TTL", "1h")
        .env("INGEST_LOGIN_IP_BURST", settings.login_ip_burst.to_string())
        .env("INGEST_LOGIN_IP_REFILL", "1ms")
        .env(
            "INGEST_REGISTER_IP_BURST",
            settings.register_ip_burst.to_string(),
        )
        .env("INGEST_REGISTER_IP_REFILL", "1ms")
        .env("INGEST_ORDER_USER_BURST", &open)
        .env("INGEST_ORDER_USER_REFILL", "1ms")
        .env("INGEST_ORDER_IP_BURST", &open)
        .env("INGEST_ORDER_IP_REFILL", "1ms")
        .env(
            "INGEST_PASSWORD_HASH_QUEUE",
            settings.password_hash_queue.to_string(),
        )
        .env(
            "INGEST_STREAMS_PER_USER",
            settings.streams_per_user.to_string(),
        )
        .env(
            "INGEST_STREAMS_PER_ADDRESS",
            settings.streams_per_address.to_string(),
        )
        .env("INGEST_STREAMS_TOTAL", settings.streams_total.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let mut local = Local {
        pipeline,
        base,
        server: Server::Process(Child(child)),
    };
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Server::Process(Child(child)) = &mut local.server
            && let Some(status) = child.try_wait()?
        {
            anyhow::bail!(
                "{} exited ({status}) before it answered; its log: {}",
                binary.display(),
                log_path.display()
            );
        }
        let ready = http.get(format!("{}/readyz", local.base)).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return Ok(local);
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{} did not answer {}/readyz within 60 s; its log: {}",
            binary.display(),
            local.base,
            log_path.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Local {
    /// The ingest child process's pid, when ingest runs as one ([`start_process`]).
    pub fn pid(&self) -> Option<u32> {
        match &self.server {
            Server::Process(Child(child)) => Some(child.id()),
            Server::InProcess { .. } => None,
        }
    }

    /// Stops ingest (at most 15 s). The pipeline stays until `self.pipeline` is dropped.
    pub async fn stop(self) -> anyhow::Result<Pipeline> {
        match self.server {
            Server::InProcess { stop, server } => {
                let _ = stop.send(());
                tokio::time::timeout(Duration::from_secs(15), server)
                    .await
                    .context("ingest did not stop within 15 s")???;
            }
            // Killed and reaped here; the pipeline's topics and keyspace go when it is dropped.
            Server::Process(child) => drop(child),
        }
        Ok(self.pipeline)
    }
}

/// Records in the commands topic (all partitions): what the broker holds after the runs.
pub fn commands_in_topic(pipeline: &Pipeline) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = pipeline.services.kafka().client_config().create()?;
    let metadata =
        consumer.fetch_metadata(Some(&pipeline.topics.commands), Duration::from_secs(10))?;
    let mut total = 0;
    for topic in metadata.topics() {
        for partition in topic.partitions() {
            let (low, high) = consumer.fetch_watermarks(
                &pipeline.topics.commands,
                partition.id(),
                Duration::from_secs(10),
            )?;
            total += high - low;
        }
    }
    Ok(total)
}
