//! The payment processor SIGKILLed mid-stream and restarted (its real binary, the sandbox
//! provider's ledger in a file so the provider outlives the processor, as a real one does):
//! no payment is charged twice, no charge call is repeated for a captured payment, and every
//! payment gets exactly one outcome.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap fails the test"
)]

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use boxoffice_avro::ids;
use boxoffice_avro::records::{BookingCommand, PaymentRequest, PaymentRequested, PaymentSubmitted};
use boxoffice_processors::payments::gateway::{LedgerEntry, read_ledger};
use boxoffice_tests::pipeline::{Pipeline, processor_binary};
use boxoffice_tests::services;

const PAYMENTS: usize = 240;
const TOKENS: [&str; 5] = [
    "tok_success",
    "tok_slow",
    "tok_timeout",
    "tok_declined",
    "tok_insufficient_funds",
];

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

struct PaymentChild(Child);

impl PaymentChild {
    fn start(pipeline: &Pipeline, ledger: &Path) -> Self {
        let services = &pipeline.services;
        let child = Command::new(processor_binary().unwrap())
            .arg("payments")
            // The local test stack: the sandbox gateway and development secrets are allowed.
            .env("BOXOFFICE_DEV", "1")
            .env("KAFKA_BOOTSTRAP_SERVERS", &services.kafka_bootstrap)
            .env("SCYLLA_URI", &services.scylla_uri)
            .env("SCHEMA_REGISTRY_URL", &services.registry_url)
            .env("SCYLLA_KEYSPACE", &pipeline.keyspace)
            .env("BOXOFFICE_TOPIC_PREFIX", &pipeline.prefix)
            .env("PAYMENTS_GROUP_ID", format!("{}payments", pipeline.prefix))
            .env("PAYMENTS_METRICS_ADDR", "127.0.0.1:0")
            .env("PAYMENTS_MAX_BATCH_RECORDS", "50")
            .env("PAYMENTS_SANDBOX_SLOW", "400ms")
            .env("PAYMENTS_SANDBOX_LEDGER", ledger)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        PaymentChild(child)
    }

    fn kill(mut self) {
        // SIGKILL: no shutdown path runs.
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for PaymentChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn order_id(i: usize) -> String {
    format!("crash-order-{i:04}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_payment_processor_never_charges_twice_and_loses_nothing() {
    let pipeline = Pipeline::create(services().await, "pay_crash")
        .await
        .unwrap();
    let ledger = std::env::temp_dir().join(format!("{}ledger.jsonl", pipeline.prefix));
    let _ = std::fs::remove_file(&ledger);
    // What the booking processor and ingest would produce: a request and a submission per order.
    let mut requests = Vec::new();
    let mut expected_token = HashMap::new();
    for i in 0..PAYMENTS {
        let order = order_id(i);
        let payment_id = ids::payment_id(&order);
        let token = TOKENS[i % TOKENS.len()];
        expected_token.insert(payment_id.clone(), token);
        requests.push(PaymentRequest::PaymentRequested(PaymentRequested {
            record_id: ids::record_id_for::<PaymentRequested>(&[&order]),
            payment_id: payment_id.clone(),
            order_id: order.clone(),
            event_id: format!("crash-event-{}", i % 7),
            user_id: format!("fan-{i}"),
            amount_minor: 1000 + i as i64,
            currency: "EUR".into(),
            hold_expires_at: now_ms() + 600_000,
            occurred_at: now_ms(),
        }));
        requests.push(PaymentRequest::PaymentSubmitted(PaymentSubmitted {
            record_id: ids::record_id_for::<PaymentSubmitted>(&[&order]),
            payment_id,
            order_id: order.clone(),
            event_id: format!("crash-event-{}", i % 7),
            user_id: format!("fan-{i}"),
            amount_minor: 1000 + i as i64,
            currency: "EUR".into(),
            payment_method_token: token.into(),
            occurred_at: now_ms(),
        }));
    }
    let first = PaymentChild::start(&pipeline, &ledger);
    pipeline.produce_payment_requests(&requests).await.unwrap();

    // Kill it once it is well into the stream (slow and timed-out charges are in flight).
    let mut progress = pipeline.reader(&pipeline.topics.commands).unwrap();
    progress
        .read_group_until(Duration::from_secs(120), |outcomes: &[BookingCommand]| {
            outcomes.len() >= PAYMENTS / 3
        })
        .await
        .unwrap();
    first.kill();
    // What the kill interrupted: payments whose charge intent is stored without an outcome.
    let store = pipeline.payment_store().await.unwrap();
    let mut in_flight = 0;
    for i in 0..PAYMENTS {
        let row = store.load(&ids::payment_id(&order_id(i))).await.unwrap();
        if row.is_some_and(|r| r.status.name() == "CHARGING") {
            in_flight += 1;
        }
    }
    eprintln!("payment crash: killed with {in_flight} charges in flight");
    // Slow charges take most of each partition's time, so the kill lands inside some.
    assert!(
        in_flight > 0,
        "the kill did not interrupt a charge; the test proves nothing"
    );

    let _second = PaymentChild::start(&pipeline, &ledger);
    let mut outcomes_reader = pipeline.reader(&pipeline.topics.commands).unwrap();
    let outcomes = outcomes_reader
        .read_group_until(Duration::from_secs(180), |outcomes: &[BookingCommand]| {
            outcomes.len() >= PAYMENTS
        })
        .await
        .unwrap();
    eprintln!(
        "payment crash: {} outcomes delivered again were deduplicated by id",
        outcomes_reader.duplicates
    );

    // Exactly one outcome per payment (after deduplication by record id), the right one.
    let mut decided = HashSet::new();
    for outcome in &outcomes {
        let (payment_id, succeeded) = match outcome {
            BookingCommand::PaymentSucceeded(p) => (p.payment_id.clone(), true),
            BookingCommand::PaymentFailed(p) => (p.payment_id.clone(), false),
            other => panic!("unexpected record {other:?}"),
        };
        assert!(
            decided.insert(payment_id.clone()),
            "payment {payment_id} decided twice"
        );
        let token = expected_token[&payment_id];
        let should_succeed = matches!(token, "tok_success" | "tok_slow" | "tok_timeout");
        assert_eq!(succeeded, should_succeed, "{payment_id} paid with {token}");
    }
    assert_eq!(decided.len(), PAYMENTS, "nothing lost");

    // The provider's own books: one charge per payment, never a repeated charge call.
    let entries = read_ledger(&ledger).unwrap();
    let mut charges: HashMap<&str, usize> = HashMap::new();
    let mut replays = 0;
    for entry in &entries {
        match entry {
            LedgerEntry::Charge { key, .. } => *charges.entry(key.as_str()).or_default() += 1,
            LedgerEntry::Replay { .. } => replays += 1,
            LedgerEntry::Refund { .. } => {}
        }
    }
    assert_eq!(
        charges.len(),
        PAYMENTS,
        "every payment reached the provider"
    );
    assert!(
        charges.values().all(|n| *n == 1),
        "a payment was charged twice"
    );
    assert_eq!(
        replays, 0,
        "a captured payment was charged again after the restart"
    );
    let _ = std::fs::remove_file(&ledger);
}
