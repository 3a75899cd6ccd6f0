//! The whole system for the chaos suite: a private stack, every boxoffice service as its real
//! binary in a child process (so it can be SIGKILLed), and the outside world in this process:
//! the payment provider (`provider_sim`, with its ledger), a real SMTP server and a webhook
//! receiver. Service logs go to files under the stack's state directory.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use boxoffice_avro::Codec;

use super::stack::PrivateStack;
use crate::provider_sim::{self, ProviderSim, SimSettings};
use crate::receivers::{SmtpSink, WebhookReceiver, free_port, repo_root};
use crate::{Services, wait};

/// The retry budget of every service in the chaos system (see `spawn`).
pub const RETRY_BUDGET: &str = "3s";
/// Ingest's produce timeout here: a request waits at most this long for the broker.
pub const INGEST_PRODUCE_TIMEOUT: &str = "5s";
/// The longest an answer of ingest may take: its produce timeout, the bus's one-second guard
/// around it, and the CQL reads and writes around the produce on this loaded machine (the
/// client gives up at 15 s).
pub const INGEST_ANSWER_BOUND: Duration = Duration::from_secs(12);
/// A boxoffice service the suite runs and kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    Ingest,
    BookingProcessor,
    PaymentProcessor,
    Notifier,
}

impl Service {
    pub const ALL: [Service; 4] = [
        Service::BookingProcessor,
        Service::PaymentProcessor,
        Service::Notifier,
        Service::Ingest,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Service::Ingest => "ingest",
            Service::BookingProcessor => "booking-processor",
            Service::PaymentProcessor => "payment-processor",
            Service::Notifier => "notifier",
        }
    }
}

/// Secrets of one run: made here, never committed.
#[derive(Clone)]
struct Secrets {
    jwt: String,
    admin_password: String,
    provider_api_key: String,
    webhook_secret: String,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(..)")
    }
}

fn random_secret(prefix: &str) -> String {
    format!(
        "{prefix}{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Everything running for the suite.
#[derive(Debug)]
pub struct System {
    pub stack: PrivateStack,
    pub services: Services,
    pub codec: Arc<Codec>,
    pub provider: ProviderSim,
    pub smtp: SmtpSink,
    pub webhooks: WebhookReceiver,
    pub ingest_url: String,
    pub admin_email: String,
    admin_password: String,
    bin: PathBuf,
    logs: PathBuf,
    ports: HashMap<Service, u16>,
    /// Where ingest's `/metrics` and the live streams' `/readyz` answer.
    ingest_metrics_port: u16,
    children: HashMap<Service, Child>,
    secrets: Secrets,
    /// `BOOKING_RECOVERY_SOURCE` for the booking processor (`log`; `trust-store` is the
    /// negative control).
    recovery_source: String,
}

/// The directory the test binary's sibling binaries are in (`target/<profile>`).
fn binaries() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("no directory")?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    for binary in [
        "boxoffice-ingest",
        "boxoffice-processor",
        "boxoffice-notifier",
        "topics",
        "lag-exporter",
    ] {
        anyhow::ensure!(
            dir.join(binary).exists(),
            "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
            dir.join(binary).display()
        );
    }
    Ok(dir)
}

impl System {
    /// Starts the private stack, the topics, the outside world and every service.
    pub async fn start(name: &str, recovery_source: &str) -> anyhow::Result<System> {
        let bin = binaries()?;
        let stack = PrivateStack::new(name)?;
        let started = std::time::Instant::now();
        tokio::task::block_in_place(|| stack.up(&[]))?;
        eprintln!(
            "chaos: private stack up in {:.0?} ({})",
            started.elapsed(),
            stack.state.display()
        );
        let logs = stack.state.join("services");
        std::fs::create_dir_all(&logs)?;
        let services = stack.services();
        let secrets = Secrets {
            jwt: random_secret(""),
            admin_password: random_secret("pw-"),
            provider_api_key: random_secret("sk_"),
            webhook_secret: random_secret("whsec_"),
        };
        let ports: HashMap<Service, u16> = Service::ALL.iter().map(|s| (*s, free_port())).collect();
        let ingest_url = format!("http://127.0.0.1:{}", ports[&Service::Ingest]);
        let provider = provider_sim::start(SimSettings {
            listen: "127.0.0.1:0".parse()?,
            api_key: secrets.provider_api_key.clone(),
            webhook_url: Some(format!("{ingest_url}/v1/payments/webhook")),
            webhook_secret: secrets.webhook_secret.clone(),
            completion_delay: Duration::from_millis(200),
            duplicate_webhooks: false,
            // Ingest may be unable to take webhooks for a while (the store or the broker is
            // down): keep trying for about two minutes.
            webhook_max_attempts: 12,
            webhook_backoff: Duration::from_millis(200),
        })
        .await?;
        let mut system = System {
            codec: Arc::new(Codec::new(&services.registry())?),
            stack,
            services,
            provider,
            smtp: tokio::task::block_in_place(SmtpSink::start),
            webhooks: WebhookReceiver::start().await,
            ingest_url,
            admin_email: "chaos-admin@boxoffice.test".to_owned(),
            admin_password: secrets.admin_password.clone(),
            bin,
            logs,
            ports,
            ingest_metrics_port: free_port(),
            children: HashMap::new(),
            secrets,
            recovery_source: recovery_source.to_owned(),
        };
        system.run_tool(&["apply"])?;
        system.run_tool(&["schemas", "register"])?;
        for service in Service::ALL {
            system.spawn(service)?;
        }
        for service in Service::ALL {
            system.wait_ready(service).await?;
        }
        Ok(system)
    }

    pub fn admin_password(&self) -> &str {
        &self.admin_password
    }

    /// Runs the `topics` CLI against the private stack.
    fn run_tool(&self, args: &[&str]) -> anyhow::Result<()> {
        let output = Command::new(self.bin.join("topics"))
            .args(args)
            .envs(self.stack.env())
            .current_dir(repo_root())
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "topics {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }

    fn metrics_addr(&self, service: Service) -> String {
        format!("127.0.0.1:{}", self.ports[&service])
    }

    /// Where `service` serves `/metrics` (ingest: its metrics address, not the API).
    pub fn metrics_address(&self, service: Service) -> String {
        match service {
            Service::Ingest => format!("127.0.0.1:{}", self.ingest_metrics_port),
            _ => self.metrics_addr(service),
        }
    }

    /// The path of a workspace binary beside the services' (`lag-exporter`, ...).
    pub fn binary(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// Starts the lag exporter on `port` against the private stack, collecting every second
    /// with a status window of `status_window` (its log beside the services').
    pub fn start_lag_exporter(&self, port: u16, status_window: &str) -> anyhow::Result<Child> {
        let log = File::create(self.logs.join("lag-exporter.log"))?;
        let child = Command::new(self.bin.join("lag-exporter"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--interval", "1s"])
            .args(["--status-window", status_window])
            .envs(self.stack.env())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the lag exporter")?;
        Ok(child)
    }

    /// Starts `service` as a child process.
    pub fn spawn(&mut self, service: Service) -> anyhow::Result<()> {
        let (program, args): (&str, Vec<String>) = match service {
            Service::Ingest => (
                "boxoffice-ingest",
                vec![
                    "--metrics-addr".into(),
                    format!("127.0.0.1:{}", self.ingest_metrics_port),
                ],
            ),
            Service::BookingProcessor => (
                "boxoffice-processor",
                vec![
                    "booking".into(),
                    "--metrics-addr".into(),
                    self.metrics_addr(service),
                ],
            ),
            Service::PaymentProcessor => (
                "boxoffice-processor",
                vec![
                    "payments".into(),
                    "--gateway".into(),
                    "provider".into(),
                    "--metrics-addr".into(),
                    self.metrics_addr(service),
                ],
            ),
            Service::Notifier => (
                "boxoffice-notifier",
                vec!["--metrics-addr".into(), self.metrics_addr(service)],
            ),
        };
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{}.log", service.name())))?;
        let s = &self.secrets;
        let child = Command::new(self.bin.join(program))
            .args(&args)
            .envs(self.stack.env())
            .env("BOXOFFICE_DEV", "1")
            .env(
                "WEBHOOK_ALLOW_NETWORKS",
                boxoffice_runtime::egress::LOCAL_STACK_NETWORKS,
            )
            .env("RUST_LOG", "info")
            .env(
                "INGEST_LISTEN",
                format!("127.0.0.1:{}", self.ports[&Service::Ingest]),
            )
            .env("INGEST_JWT_SECRET", &s.jwt)
            .env("INGEST_PRODUCE_TIMEOUT", INGEST_PRODUCE_TIMEOUT)
            .env("INGEST_ADMIN_EMAIL", &self.admin_email)
            .env("INGEST_ADMIN_PASSWORD", &s.admin_password)
            // Every fan logs in from this one address.
            .env("INGEST_LOGIN_IP_BURST", "100000")
            .env("INGEST_REGISTER_IP_BURST", "100000")
            .env("INGEST_ORDER_USER_BURST", "100000")
            .env("INGEST_ORDER_IP_BURST", "100000")
            .env("INGEST_PASSWORD_HASH_QUEUE", "10000")
            .env("PAYMENT_PROVIDER_WEBHOOK_SECRET", &s.webhook_secret)
            .env("PAYMENT_PROVIDER_URL", self.provider.url())
            .env("PAYMENT_PROVIDER_API_KEY", &s.provider_api_key)
            .env("PAYMENT_PROVIDER_PENDING_CHECK", "3s")
            .env("NOTIFIER_SMTP_HOST", "127.0.0.1")
            .env("NOTIFIER_SMTP_PORT", self.smtp.port.to_string())
            .env("BOOKING_RECOVERY_SOURCE", &self.recovery_source)
            // Shorter than a store restart (about 10 s here), so a store run also exercises
            // giving a partition up and taking it again.
            .env("BOOKING_RETRY_BUDGET", RETRY_BUDGET)
            .env("PAYMENTS_RETRY_BUDGET", RETRY_BUDGET)
            .env("NOTIFIER_RETRY_BUDGET", RETRY_BUDGET)
            .current_dir(repo_root())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", service.name()))?;
        self.children.insert(service, child);
        Ok(())
    }

    /// SIGKILLs `service` and reaps it.
    pub fn kill(&mut self, service: Service) -> anyhow::Result<()> {
        let mut child = self
            .children
            .remove(&service)
            .with_context(|| format!("{} is not running", service.name()))?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// `service`'s `/readyz` (ingest's, the processors' and the notifier's).
    pub fn readiness_url(&self, service: Service) -> String {
        match service {
            Service::Ingest => format!("{}/readyz", self.ingest_url),
            _ => format!("http://{}/readyz", self.metrics_addr(service)),
        }
    }

    /// Ingest's second `/readyz`, on its metrics address: 200 once the live streams follow.
    pub fn ingest_live_readiness_url(&self) -> String {
        format!("http://127.0.0.1:{}/readyz", self.ingest_metrics_port)
    }

    /// `Ok` once `service` answers its readiness check.
    pub async fn wait_ready(&self, service: Service) -> anyhow::Result<()> {
        let url = match service {
            Service::Ingest => format!("{}/readyz", self.ingest_url),
            Service::BookingProcessor => format!("http://{}/readyz", self.metrics_addr(service)),
            _ => format!("http://{}/healthz", self.metrics_addr(service)),
        };
        let http = reqwest::Client::new();
        wait::until(
            &format!("{} ready", service.name()),
            Duration::from_secs(120),
            || async {
                let answer = http.get(&url).timeout(Duration::from_secs(2)).send().await;
                answer.ok().filter(|r| r.status().is_success()).map(|_| ())
            },
        )
        .await
    }

    /// The Prometheus text `service` serves (empty for ingest).
    pub async fn metrics(&self, service: Service) -> anyhow::Result<String> {
        if service == Service::Ingest {
            return Ok(String::new());
        }
        let url = format!("http://{}/metrics", self.metrics_addr(service));
        Ok(reqwest::get(url).await?.text().await?)
    }

    /// A counter's value in `service`'s metrics (0 when absent).
    pub async fn counter(&self, service: Service, name: &str) -> u64 {
        let text = self.metrics(service).await.unwrap_or_default();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (metric, value) = l.split_once(' ')?;
                (metric == name).then(|| value.trim().parse::<f64>().ok())?
            })
            .map_or(0, |v| v as u64)
    }

    /// The end of a service's log (for failures).
    pub fn log_tail(&self, service: Service, lines: usize) -> String {
        let text = std::fs::read_to_string(self.logs.join(format!("{}.log", service.name())))
            .unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for System {
    fn drop(&mut self) {
        for (_, mut child) in self.children.drain() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The status code `url` answers now; `None` when it does not answer.
pub async fn status(url: &str) -> Option<u16> {
    let answer = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    Some(answer.status().as_u16())
}
