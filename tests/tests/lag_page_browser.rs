//! The lag exporter's built-in page in real headless Chromium (Debian's `chromium` and
//! `chromium-driver`; `scripts/test` installs them), driven over WebDriver: the whole system
//! runs on a private stack, the booking processor is SIGKILLed while fans keep booking, and the
//! page (one load, updated live over server-sent events) must show the booking processor's
//! group falling behind (lag rising, status leaving OK), then recovering once the processor is
//! started again. Screenshots of both are saved under the target directory's test artifacts.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use boxoffice_tests::chaos::sale::{self, Api, SaleConfig};
use boxoffice_tests::chaos::system::{Service, System};
use boxoffice_tests::receivers::free_port;
use boxoffice_tests::wait;
use fantoccini::{Client, ClientBuilder};
use serde_json::{Value, json};

/// The booking processor's consumer group (its default `--group-id`).
const GROUP: &str = "booking-processor";

/// `name` from `$env`, else its full path on the PATH (chromedriver wants an absolute browser
/// path); fails with the command that installs it.
fn tool(env: &str, name: &str, package: &str) -> String {
    let binary = std::env::var(env).ok().or_else(|| {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
            .map(|p| p.display().to_string())
    });
    let works = binary.as_ref().is_some_and(|b| {
        Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    assert!(
        works,
        "{name} is not installed: `apt-get install -y {package}` (scripts/test installs it), \
         or set {env}"
    );
    binary.unwrap_or_default()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the page shows for `GROUP`: (status, lag), read from the DOM.
async fn shown(client: &Client) -> Option<(String, i64)> {
    let script = "const s = document.querySelector(`section[data-group=\"${arguments[0]}\"]`);
                  return s ? [s.querySelector('.group-status').textContent,
                              s.querySelector('.group-lag').textContent] : null;";
    let answer = client.execute(script, vec![json!(GROUP)]).await.ok()?;
    let pair = answer.as_array()?;
    let status = pair.first()?.as_str()?.to_owned();
    let lag = pair.get(1)?.as_str()?.parse().ok()?;
    Some((status, lag))
}

/// The exporter's view as JSON, for failure messages.
async fn api_lag(port: u16) -> String {
    match reqwest::get(format!("http://127.0.0.1:{port}/api/lag")).await {
        Ok(answer) => answer.text().await.unwrap_or_default(),
        Err(e) => e.to_string(),
    }
}

async fn screenshot(client: &Client, name: &str) -> PathBuf {
    let png = client.screenshot().await.expect("a screenshot");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&dir).expect("the artifacts directory");
    let path = dir.join(name);
    std::fs::write(&path, png).expect("the screenshot is saved");
    eprintln!("screenshot: {}", path.display());
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_page_shows_a_stopped_processor_falling_behind_and_recovering() {
    let chromium = tool("BOXOFFICE_CHROMIUM", "chromium", "chromium");
    let chromedriver = tool("BOXOFFICE_CHROMEDRIVER", "chromedriver", "chromium-driver");
    let mut system = System::start("lagpage", "log")
        .await
        .expect("the system starts");
    let lag_port = free_port();
    let _exporter = Killed(
        system
            .start_lag_exporter(lag_port, "4s")
            .expect("the lag exporter starts"),
    );
    let driver_port = free_port();
    let _driver = Killed(
        Command::new(&chromedriver)
            .arg(format!("--port={driver_port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts"),
    );
    let driver_url = format!("http://127.0.0.1:{driver_port}");
    wait::until("chromedriver answers", Duration::from_secs(20), || {
        let url = format!("{driver_url}/status");
        async move {
            reqwest::get(url)
                .await
                .ok()
                .filter(|r| r.status().is_success())
        }
    })
    .await
    .expect("chromedriver");
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        json!({"binary": chromium, "args": ["--headless", "--no-sandbox", "--disable-gpu",
               "--disable-dev-shm-usage", "--window-size=1280,1000"]}),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver_url)
        .await
        .expect("a browser session");
    client
        .goto(&format!("http://127.0.0.1:{lag_port}/"))
        .await
        .expect("the page loads");

    // The processor keeps up: the page shows its group OK with no lag.
    wait::until(
        "the page shows the group OK",
        Duration::from_secs(120),
        || async {
            shown(&client)
                .await
                .filter(|(s, lag)| s == "OK" && *lag == 0)
        },
    )
    .await
    .expect("OK before the fault");

    // The processor dies while fans keep booking: the lag rises, the status leaves OK.
    let api = Api::new(&system.ingest_url).expect("an API client");
    let admin = api
        .login(&system.admin_email, system.admin_password())
        .await
        .expect("admin login");
    let fans = api.fans(&admin, 3, &system.webhooks).await.expect("fans");
    let event_id = api
        .create_event(&admin, "Lag page", 1_000)
        .await
        .expect("an event");
    // One booking decided first: the processor has read (and committed on) the event's
    // partition, so what arrives there after the kill is lag of a committed position.
    let warm_up = SaleConfig {
        requests: 1,
        rate: 1,
        concurrency: 1,
        give_up_after: Duration::from_secs(30),
    };
    let first_order = sale::flash_sale(&api, &fans, &event_id, "lagpage-first", warm_up).await;
    let (order_id, fan) = first_order
        .accepted
        .iter()
        .next()
        .map(|(id, fan)| (id.clone(), *fan))
        .expect("the first booking is accepted");
    let path = format!("/v1/orders/{order_id}");
    wait::until(
        "the first booking decided",
        Duration::from_secs(60),
        || async {
            let answer = api
                .send(
                    reqwest::Method::GET,
                    &path,
                    Some(&fans[fan].token),
                    None,
                    &[],
                )
                .await
                .ok()?;
            let status = answer.body["status"].as_str()?.to_owned();
            (status != "PENDING").then_some(())
        },
    )
    .await
    .expect("a decision before the kill");
    system.kill(Service::BookingProcessor).expect("the kill");
    let sale = tokio::spawn(async move {
        let config = SaleConfig {
            requests: 60,
            rate: 6,
            concurrency: 4,
            give_up_after: Duration::from_secs(30),
        };
        sale::flash_sale(&api, &fans, &event_id, "lagpage", config).await
    });
    let first = wait::until("the page shows lag", Duration::from_secs(60), || async {
        shown(&client).await.filter(|(_, lag)| *lag > 0)
    })
    .await;
    let first = match first {
        Ok(first) => first,
        Err(e) => panic!("{e}; the exporter's view: {}", api_lag(lag_port).await),
    };
    let (status, risen) = wait::until(
        "the page shows the lag rising and the status leaving OK",
        Duration::from_secs(90),
        || async {
            shown(&client)
                .await
                .filter(|(s, lag)| s != "OK" && *lag > first.1)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; first seen {first:?}"));
    assert_eq!(
        status, "ERR",
        "a partition STALL or STOP makes the group ERR"
    );
    eprintln!("while stopped: {first:?} then {status} with lag {risen}");
    screenshot(&client, "lag-page-processor-stopped.png").await;
    let outcome = sale.await.expect("the sale");
    assert!(
        !outcome.accepted.is_empty(),
        "fans booked while the processor was down"
    );

    // Started again, it catches up: lag 0, OK.
    system
        .spawn(Service::BookingProcessor)
        .expect("the processor starts again");
    wait::until(
        "the page shows the group OK again",
        Duration::from_secs(180),
        || async {
            shown(&client)
                .await
                .filter(|(s, lag)| s == "OK" && *lag == 0)
        },
    )
    .await
    .expect("recovery");
    screenshot(&client, "lag-page-recovered.png").await;
    let sources: Value = client
        .execute(
            "return performance.getEntriesByType('resource').map(e => e.name);",
            vec![],
        )
        .await
        .expect("resource list");
    let external: Vec<&Value> = sources
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|u| !u.as_str().is_some_and(|u| u.contains("127.0.0.1")))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        external.is_empty(),
        "the page loaded only from the exporter: {external:?}"
    );
    client.close().await.expect("the session closes");
}
