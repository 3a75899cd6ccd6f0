//! Issue 13, finding 9: the API reference at `/docs` loaded its script from a third-party CDN,
//! so in a browser without internet it was a blank page and no strict Content-Security-Policy
//! could be set. Rendered here in real headless Chromium (Debian's `chromium`; `scripts/test`
//! installs it), on a machine whose network reaches no CDN: the page shows the API's title and
//! operations, and its CSP allows nothing but the server itself.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap fails the test"
)]

mod ingest_common;

use std::process::Command;

use ingest_common::Ingest;

/// The Chromium binary: `BOXOFFICE_CHROMIUM`, else `chromium` on the PATH.
fn chromium() -> String {
    let binary = std::env::var("BOXOFFICE_CHROMIUM").unwrap_or_else(|_| "chromium".to_owned());
    let found = Command::new(&binary).arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "{binary} is not installed: `apt-get install -y chromium` (scripts/test installs it), \
         or set BOXOFFICE_CHROMIUM"
    );
    binary
}

/// `html` without the contents of its `<script>` elements: what was rendered, not what a
/// script carries (a page can embed the whole API description in one and still show nothing).
fn outside_scripts(html: &str) -> String {
    let mut rest = html;
    let mut shown = String::new();
    while let Some(start) = rest.find("<script") {
        shown.push_str(&rest[..start]);
        rest = rest[start..]
            .find("</script>")
            .map_or("", |end| &rest[start + end + "</script>".len()..]);
    }
    shown.push_str(rest);
    shown
}

/// The page's DOM after its scripts ran (up to 15 s of virtual time).
fn rendered_dom(url: &str) -> String {
    // A new empty profile each time, removed after.
    let profile = std::env::temp_dir().join(format!("boxoffice-chromium-{}", uuid::Uuid::new_v4()));
    let output = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=15000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        output.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_reference_renders_from_the_server_alone() {
    let ingest = Ingest::start("api_docs_browser", false).await;
    let url = ingest.url("/docs");
    let dom = tokio::task::spawn_blocking(move || rendered_dom(&url))
        .await
        .unwrap();
    let dom = outside_scripts(&dom);
    assert!(
        dom.contains("boxoffice ingest API"),
        "the title rendered: {dom:.2000}"
    );
    for operation in [
        "/v1/orders",
        "/v1/login",
        "/v1/tickets/{id}/availability/stream",
    ] {
        assert!(dom.contains(operation), "{operation} listed");
    }
    // What the browser was sent: nothing from elsewhere may load or run.
    let page = ingest.http.get(ingest.url("/docs")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    for directive in csp.split(';') {
        assert!(
            !directive.contains("http") && !directive.contains('*'),
            "no third-party source: {csp}"
        );
    }
    assert!(
        !csp.contains("script-src") || !csp.contains("unsafe"),
        "{csp}"
    );
    let html = page.text().await.unwrap();
    assert!(
        !html.contains("https://"),
        "the page loads nothing from elsewhere: {html}"
    );

    ingest.stop().await;
}
