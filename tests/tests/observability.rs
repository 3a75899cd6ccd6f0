//! The shipped dashboards and alert rules (`observability/`) against what the services really
//! export: every service and the lag exporter run as their real binaries on a private stack, a
//! real Prometheus scrapes them with the alert rules loaded, a small sale with payments runs
//! through the public API; then every metric a dashboard or rule names must exist in
//! Prometheus, every expression must evaluate, every panel that is not a filter must show
//! data, every rule must evaluate without error, and no alert may fire on the healthy system.
//! `promtool` checks the files and runs the rules' unit tests (`alerts_test.yml`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use boxoffice_tests::chaos::sale::{self, Api, Payer, SaleConfig};
use boxoffice_tests::chaos::system::{Service, System};
use boxoffice_tests::receivers::{free_port, repo_root};
use boxoffice_tests::wait;
use serde_json::Value;

/// A tool of the Prometheus distribution, from `$BOXOFFICE_PROMETHEUS_BIN_DIR` or the PATH.
fn prometheus_tool(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("BOXOFFICE_PROMETHEUS_BIN_DIR") {
        return Path::new(&dir).join(name);
    }
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "{name} is needed: sudo apt-get install -y prometheus (scripts/test installs it), \
             or set BOXOFFICE_PROMETHEUS_BIN_DIR"
        )
    })
}

fn observability() -> PathBuf {
    repo_root().join("observability")
}

#[test]
fn promtool_accepts_the_configs_and_the_alert_rules_pass_their_unit_tests() {
    let promtool = prometheus_tool("promtool");
    let dir = observability().join("prometheus");
    for args in [
        vec!["check", "config", "prometheus.yml"],
        vec!["check", "config", "prometheus.compose.yml"],
        vec!["test", "rules", "alerts_test.yml"],
    ] {
        let output = Command::new(&promtool)
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("promtool runs");
        assert!(
            output.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// `(where, PromQL)` of every dashboard target and template query, and every rule.
fn expressions() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let dashboards = observability().join("grafana/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dashboards)
        .expect("the dashboards folder")
        .map(|e| e.expect("a directory entry").path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "three dashboards: {files:?}");
    for file in files {
        let name = file
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let dashboard: Value =
            serde_json::from_str(&std::fs::read_to_string(&file).expect("readable"))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        for panel in dashboard["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().expect("targets") {
                let expr = target["expr"].as_str().expect("an expr").to_owned();
                out.push((format!("{name}: {}", panel["title"]), expr));
            }
        }
    }
    let rules =
        std::fs::read_to_string(observability().join("prometheus/alerts.yml")).expect("alerts.yml");
    for line in rules.lines() {
        if let Some(expr) = line.trim().strip_prefix("expr: ") {
            out.push(("alerts.yml".to_owned(), expr.to_owned()));
        }
    }
    out
}

/// Panels (by title) that list only trouble, so a healthy system leaves them empty.
const QUIET_WHEN_HEALTHY: [&str; 2] = ["\"Partitions not OK\"", "\"HTTP answers by class\""];

/// The expression as Prometheus takes it (Grafana's variables replaced).
fn concrete(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$group", ".*")
}

/// Metric names an expression reads (label values in quotes are not names).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut unquoted = String::new();
    let mut quoted = false;
    for c in expr.chars() {
        if c == '"' {
            quoted = !quoted;
        } else if !quoted {
            unquoted.push(c);
        }
    }
    unquoted
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| {
            [
                "kafka_",
                "boxoffice_",
                "booking_",
                "payments_",
                "notifier_",
                "ingest_",
            ]
            .iter()
            .any(|p| t.starts_with(p))
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn metric_names_are_read_from_expressions_without_label_values() {
    let names = metric_names(
        r#"sum by (group) (rate(booking_order_events_total{kind="booking_x"}[1m])) / ingest_a"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["booking_order_events_total", "ingest_a"]
    );
}

struct Prometheus {
    child: Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts Prometheus scraping `targets` (job, address) every second, with the alert rules.
fn start_prometheus(state: &Path, targets: &[(&str, String)]) -> Prometheus {
    let port = free_port();
    let rules = observability().join("prometheus/alerts.yml");
    let mut config = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [{}]\nscrape_configs:\n",
        rules.display()
    );
    for (job, address) in targets {
        config.push_str(&format!(
            "  - job_name: {job}\n    static_configs: [{{targets: [\"{address}\"]}}]\n"
        ));
    }
    let dir = state.join("prometheus");
    std::fs::create_dir_all(&dir).expect("a prometheus directory");
    let file = dir.join("prometheus.yml");
    std::fs::write(&file, config).expect("the config is written");
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("a log file");
    let child = Command::new(prometheus_tool("prometheus"))
        .arg(format!("--config.file={}", file.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("prometheus starts");
    Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

async fn query(http: &reqwest::Client, prometheus: &str, path: &str, q: &[(&str, &str)]) -> Value {
    let url = reqwest::Url::parse_with_params(&format!("{prometheus}{path}"), q)
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let answer = http
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    answer
        .json()
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// What is wrong with the expressions on `prometheus` now: ones that do not evaluate, and
/// panels (but those that list only trouble) that show no data.
async fn evaluate(
    http: &reqwest::Client,
    prometheus: &str,
    expressions: &[(String, String)],
) -> Vec<String> {
    let mut failures = Vec::new();
    let mut with_data: BTreeSet<&str> = BTreeSet::new();
    for (place, expr) in expressions {
        let answer = query(
            http,
            prometheus,
            "/api/v1/query",
            &[("query", &concrete(expr))],
        )
        .await;
        if answer["status"] != "success" {
            failures.push(format!("{place}: {expr}: {answer}"));
        } else if answer["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
        {
            with_data.insert(place);
        }
    }
    for (place, _) in expressions {
        let quiet_when_healthy =
            place == "alerts.yml" || QUIET_WHEN_HEALTHY.iter().any(|t| place.ends_with(t));
        if !quiet_when_healthy && !with_data.contains(place.as_str()) {
            failures.push(format!("{place}: no data"));
        }
    }
    failures.dedup();
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_dashboard_panel_and_alert_rule_reads_what_the_services_export() {
    // Before anything starts: the tool must be there.
    prometheus_tool("prometheus");
    let system = System::start("observability", "log")
        .await
        .expect("the system starts");
    let lag_port = free_port();
    let mut exporter = system
        .start_lag_exporter(lag_port, "10s")
        .expect("the lag exporter starts");
    let mut targets: Vec<(&str, String)> = Service::ALL
        .iter()
        .map(|s| (s.name(), system.metrics_address(*s)))
        .collect();
    targets.push(("lag-exporter", format!("127.0.0.1:{lag_port}")));
    let jobs: Vec<(String, String)> = targets
        .iter()
        .map(|(job, address)| (format!("boxoffice-{job}"), address.clone()))
        .collect();
    let job_refs: Vec<(&str, String)> = jobs.iter().map(|(j, a)| (j.as_str(), a.clone())).collect();
    let prometheus = start_prometheus(&system.stack.state, &job_refs);

    // A small sale with payments: reservations, rejections, confirmations, emails.
    let api = Api::new(&system.ingest_url).expect("an API client");
    let admin = api
        .login(&system.admin_email, system.admin_password())
        .await
        .expect("admin login");
    let fans = api.fans(&admin, 4, &system.webhooks).await.expect("fans");
    let event_id = api
        .create_event(&admin, "Observability", 3)
        .await
        .expect("an event");
    let payer = Payer::start(
        &system.services,
        system.codec.clone(),
        api.clone(),
        &fans,
        &event_id,
    )
    .expect("the payer");
    let config = SaleConfig {
        requests: 8,
        rate: 20,
        concurrency: 4,
        give_up_after: Duration::from_secs(30),
    };
    let outcome = sale::flash_sale(&api, &fans, &event_id, "observability", config).await;
    assert!(outcome.accepted.len() >= 3, "{outcome:?}");
    wait::until("three reservations paid", Duration::from_secs(60), || {
        let paid = payer.paid().len();
        async move { (paid >= 3).then_some(()) }
    })
    .await
    .expect("payments");

    let http = reqwest::Client::new();
    let expressions = expressions();
    let wanted: BTreeSet<String> = expressions
        .iter()
        .flat_map(|(_, e)| metric_names(e))
        .collect();
    // Every name a dashboard or rule reads, scraped (histograms and label families appear
    // once something was observed; the lag exporter once it has collected).
    let missing = wait::until(
        "every metric the dashboards read",
        Duration::from_secs(90),
        || {
            let (http, url, wanted) = (&http, &prometheus.url, &wanted);
            async move {
                let names = query(http, url, "/api/v1/label/__name__/values", &[]).await;
                let have: BTreeSet<String> = names["data"]
                    .as_array()?
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect();
                wanted.is_subset(&have).then_some(())
            }
        },
    )
    .await;
    if missing.is_err() {
        let names = query(&http, &prometheus.url, "/api/v1/label/__name__/values", &[]).await;
        let have: BTreeSet<String> = names["data"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let absent: Vec<&String> = wanted.difference(&have).collect();
        panic!("metrics the dashboards or rules read that no service exports: {absent:?}");
    }
    // Rates need two scrapes inside their window: evaluate until every panel passes, bounded.
    let mut failures = Vec::new();
    for _ in 0..15 {
        failures = evaluate(&http, &prometheus.url, &expressions).await;
        if failures.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(failures.is_empty(), "{failures:#?}");

    // Every rule evaluates without error, and none fires on the healthy system.
    let answer = query(&http, &prometheus.url, "/api/v1/rules", &[]).await;
    let rules: Vec<Value> = answer["data"]["groups"]
        .as_array()
        .expect("rule groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(
        rules.len(),
        9,
        "every rule of alerts.yml is loaded: {answer}"
    );
    for rule in &rules {
        assert_ne!(rule["health"], "err", "{rule}");
        assert_ne!(rule["state"], "firing", "on a healthy system: {rule}");
    }
    let _ = exporter.kill();
    let _ = exporter.wait();
}
