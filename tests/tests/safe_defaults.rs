//! Issue 13, finding 1: no secret or setting shipped for development works in production. The
//! real binaries are started with a clean environment (nothing inherited from `scripts/test`,
//! which runs in the development mode): without `BOXOFFICE_DEV` each refuses a missing,
//! shipped or guessable secret and the sandbox gateway, naming the setting, before contacting
//! anything. The controls: the same binaries with `BOXOFFICE_DEV=1`, or with real-looking
//! secrets (one read from a `*_FILE`), get past the checks and stop only at the unreachable
//! Kafka broker. Needs no running service.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap fails the test"
)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use boxoffice_tests::pipeline::workspace_binary;

const JWT: &str = "kR3vX9pQ2mZ7tY1wB5nC8dF0gH4jL6sAe2Wq";
const HOOK: &str = "whsec_Hq2Zr8Kc1Vt5Xn9Lm3Pw";
/// Nothing listens there: a binary that gets past its checks fails on Kafka, quickly.
const NO_KAFKA: &str = "127.0.0.1:9";

/// Runs `binary args` with only `env` set; returns (success, stderr).
fn run(binary: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let started = Instant::now();
    let output = Command::new(workspace_binary(binary).unwrap())
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .env("KAFKA_BOOTSTRAP_SERVERS", NO_KAFKA)
        .env("KAFKA_TIMEOUT", "2s")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{binary} took {:?}",
        started.elapsed()
    );
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn refused(binary: &str, args: &[&str], env: &[(&str, &str)], setting: &str) {
    let (ok, stderr) = run(binary, args, env);
    assert!(!ok, "{binary} {args:?} {env:?} started");
    assert!(
        stderr.contains(setting),
        "{binary} {env:?}: the refusal names {setting}: {stderr}"
    );
    assert!(
        !stderr.contains("Kafka is unreachable"),
        "{binary} {env:?}: refused before contacting anything: {stderr}"
    );
}

/// The binary got past every secret and production check: it stopped at Kafka.
fn past_the_checks(binary: &str, args: &[&str], env: &[(&str, &str)]) {
    let (ok, stderr) = run(binary, args, env);
    assert!(!ok, "nothing listens at {NO_KAFKA}");
    assert!(
        stderr.contains("Kafka is unreachable"),
        "{binary} {env:?}: the checks passed, Kafka did not answer: {stderr}"
    );
}

#[test]
fn ingest_refuses_shipped_missing_and_guessable_secrets_outside_the_development_mode() {
    let ingest = "boxoffice-ingest";
    // The provider webhook secret used to default to a value in the repository: anyone could
    // sign `charge.succeeded` and confirm an order without paying.
    refused(
        ingest,
        &[],
        &[("INGEST_JWT_SECRET", JWT)],
        "PAYMENT_PROVIDER_WEBHOOK_SECRET",
    );
    refused(
        ingest,
        &[],
        &[
            ("INGEST_JWT_SECRET", JWT),
            (
                "PAYMENT_PROVIDER_WEBHOOK_SECRET",
                "whsec_boxoffice_local_dev_secret",
            ),
        ],
        "PAYMENT_PROVIDER_WEBHOOK_SECRET",
    );
    // The compose file's example JWT secret, and 40 times one character.
    for jwt in [
        "dev-only-secret-change-me-0123456789abcdef".to_owned(),
        "s".repeat(40),
    ] {
        refused(
            ingest,
            &[],
            &[
                ("INGEST_JWT_SECRET", &jwt),
                ("PAYMENT_PROVIDER_WEBHOOK_SECRET", HOOK),
            ],
            "INGEST_JWT_SECRET",
        );
    }
    // The compose file's example admin password.
    refused(
        ingest,
        &[],
        &[
            ("INGEST_JWT_SECRET", JWT),
            ("PAYMENT_PROVIDER_WEBHOOK_SECRET", HOOK),
            ("INGEST_ADMIN_EMAIL", "admin@example.com"),
            ("INGEST_ADMIN_PASSWORD", "dev-only-admin-password"),
        ],
        "INGEST_ADMIN_PASSWORD",
    );
    // Secrets are not flags (a flag shows in `ps`).
    let (ok, stderr) = run(ingest, &["--jwt-secret", JWT], &[]);
    assert!(!ok && stderr.contains("--jwt-secret"), "{stderr}");
}

#[test]
fn ingest_starts_with_real_secrets_or_in_the_development_mode() {
    let ingest = "boxoffice-ingest";
    let dir = std::env::temp_dir().join(format!("boxoffice-safe-defaults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jwt_file = dir.join("jwt");
    std::fs::write(&jwt_file, format!("{JWT}\n")).unwrap();
    past_the_checks(
        ingest,
        &[],
        &[
            ("INGEST_JWT_SECRET_FILE", jwt_file.to_str().unwrap()),
            ("PAYMENT_PROVIDER_WEBHOOK_SECRET", HOOK),
        ],
    );
    std::fs::remove_dir_all(&dir).unwrap();
    // The development mode: the webhook secret falls back to the development one.
    past_the_checks(
        ingest,
        &[],
        &[("INGEST_JWT_SECRET", JWT), ("BOXOFFICE_DEV", "1")],
    );
    past_the_checks(ingest, &["--dev"], &[("INGEST_JWT_SECRET", JWT)]);
}

#[test]
fn the_payment_processor_refuses_the_sandbox_and_plain_http_outside_the_development_mode() {
    let processor = "boxoffice-processor";
    // The sandbox gateway (the default) pays every `tok_success`.
    refused(processor, &["payments"], &[], "PAYMENTS_GATEWAY");
    let provider = ["payments", "--gateway", "provider"];
    refused(
        processor,
        &provider,
        &[
            ("PAYMENT_PROVIDER_URL", "http://pay.example.com"),
            ("PAYMENT_PROVIDER_API_KEY", "sk_live_Qw3Er5Ty7Ui9Op1As"),
        ],
        "PAYMENT_PROVIDER_URL",
    );
    for key in [None, Some("sk_boxoffice_local_dev")] {
        let mut env = vec![("PAYMENT_PROVIDER_URL", "https://pay.example.com")];
        env.extend(key.map(|key| ("PAYMENT_PROVIDER_API_KEY", key)));
        refused(processor, &provider, &env, "PAYMENT_PROVIDER_API_KEY");
    }
    // Controls: the development mode takes the sandbox; a real-looking https provider passes.
    past_the_checks(processor, &["payments"], &[("BOXOFFICE_DEV", "1")]);
    past_the_checks(
        processor,
        &provider,
        &[
            ("PAYMENT_PROVIDER_URL", "https://pay.example.com"),
            ("PAYMENT_PROVIDER_API_KEY", "sk_live_Qw3Er5Ty7Ui9Op1As"),
        ],
    );
}
