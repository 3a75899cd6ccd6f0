//! The payment processor against an asynchronous payment provider, end to end over real HTTP:
//! the provider simulator (`boxoffice_tests::provider_sim`) answers charges `pending` and
//! completes them later, its signed webhooks go to the real ingest (`POST
//! /v1/payments/webhook`), which forwards them as `PaymentProviderEvent` on
//! `payments.requests`, and the real payment processor (its binary, or its runtime in this
//! process) settles the payments from them, against real Kafka, a real CQL store and a real
//! registry.
//!
//! - `tok_success`, `tok_declined`, `tok_insufficient_funds` settle through webhooks (the
//!   pending check is set far beyond the test's wait, and the provider sees no query), and
//!   every event delivered twice changes nothing;
//! - `tok_webhook_lost` settles through the pending check's query, `tok_timeout` (a 504 for a
//!   charge that was made) without a second charge;
//! - a pending charge does not hold up the partition's next payment, and its check survives a
//!   processor restart (the timer is stored);
//! - unpaid payments expire by their timer; the sandbox's `tok_pending` takes the same path;
//! - a signed event naming another amount, currency or order settles nothing (issue 13).
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap fails the test"
)]

mod ingest_common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use boxoffice_avro::ids;
use boxoffice_avro::records::{
    BookingCommand, DeadLetter, DeadLetterErrorKind, PaymentFailureReason, PaymentRequest,
    PaymentRequested, PaymentSubmitted, RecordGroup,
};
use boxoffice_ingest::config::{ProviderSecret, ProviderWebhookSettings};
use boxoffice_processors::payments::core::Policy;
use boxoffice_processors::payments::gateway::Gateway;
use boxoffice_processors::payments::provider::{ApiKey, ProviderGateway, ProviderSettings};
use boxoffice_processors::payments::runtime::{
    PaymentDeps, PaymentMetrics, PaymentSettings, run as run_payments,
};
use boxoffice_store::payments::{HistoryEntry, StoredPayment};
use boxoffice_tests::pipeline::{Pipeline, processor_binary};
use boxoffice_tests::provider_sim::{self, ProviderSim, SimSettings};
use boxoffice_tests::{services, wait};
use ingest_common::Ingest;
use rdkafka::producer::FutureRecord;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(60);
const AMOUNT: i64 = 4200;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// An order id as ingest makes them (the webhook route only accepts UUIDs).
fn new_order() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn requested(order_id: &str, hold_expires_at: i64) -> PaymentRequest {
    PaymentRequest::PaymentRequested(PaymentRequested {
        record_id: ids::record_id_for::<PaymentRequested>(&[order_id]),
        payment_id: ids::payment_id(order_id),
        order_id: order_id.into(),
        event_id: "provider-event".into(),
        user_id: format!("fan-{order_id}"),
        amount_minor: AMOUNT,
        currency: "EUR".into(),
        hold_expires_at,
        occurred_at: now_ms(),
    })
}

fn submitted(order_id: &str, token: &str) -> PaymentRequest {
    PaymentRequest::PaymentSubmitted(PaymentSubmitted {
        record_id: ids::record_id_for::<PaymentSubmitted>(&[order_id, token]),
        payment_id: ids::payment_id(order_id),
        order_id: order_id.into(),
        event_id: "provider-event".into(),
        user_id: format!("fan-{order_id}"),
        amount_minor: AMOUNT,
        currency: "EUR".into(),
        payment_method_token: token.into(),
        occurred_at: now_ms(),
    })
}

/// A request and a submission with `token` (the hold ends in ten minutes).
fn payment(order_id: &str, token: &str) -> [PaymentRequest; 2] {
    [
        requested(order_id, now_ms() + 600_000),
        submitted(order_id, token),
    ]
}

/// Produces to `payments.requests`, keyed by order id; `partition` forces one partition (to
/// put payments one behind the other).
async fn produce(pipeline: &Pipeline, partition: Option<i32>, requests: &[PaymentRequest]) {
    for request in requests {
        let payload = pipeline
            .codec
            .encode_group(&pipeline.topics.payments, request)
            .await
            .unwrap();
        let mut record = FutureRecord::to(&pipeline.topics.payments)
            .key(request.key().as_bytes())
            .payload(&payload);
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        pipeline
            .producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

async fn row(pipeline: &Pipeline, order_id: &str) -> Option<StoredPayment> {
    let store = pipeline.payment_store().await.unwrap();
    store.load(&ids::payment_id(order_id)).await.unwrap()
}

/// Waits for the payment of `order_id` to reach `status`.
async fn settled(pipeline: &Pipeline, order_id: &str, status: &str) -> StoredPayment {
    let store = pipeline.payment_store().await.unwrap();
    let payment_id = ids::payment_id(order_id);
    wait::until(&format!("payment of {order_id} {status}"), WAIT, || {
        let (store, payment_id) = (store.clone(), payment_id.clone());
        async move {
            store
                .load(&payment_id)
                .await
                .ok()
                .flatten()
                .filter(|p| p.status.name() == status)
        }
    })
    .await
    .unwrap()
}

async fn history(pipeline: &Pipeline, order_id: &str) -> Vec<HistoryEntry> {
    let store = pipeline.payment_store().await.unwrap();
    store.history(&ids::payment_id(order_id)).await.unwrap()
}

fn statuses(history: &[HistoryEntry]) -> Vec<&str> {
    history.iter().map(|h| h.status.as_str()).collect()
}

fn entry<'a>(history: &'a [HistoryEntry], status: &str) -> &'a HistoryEntry {
    history
        .iter()
        .find(|h| h.status == status)
        .unwrap_or_else(|| panic!("no {status} in {:?}", statuses(history)))
}

/// The payment ids with a stored timer, over every partition of the test's topic.
async fn timers(pipeline: &Pipeline) -> Vec<String> {
    let store = pipeline.payment_store().await.unwrap();
    let mut ids = Vec::new();
    for partition in 0..3 {
        for timer in store
            .timers(&pipeline.topics.payments, partition)
            .await
            .unwrap()
        {
            ids.push(timer.payment_id);
        }
    }
    ids
}

fn sim_settings(webhook_url: Option<String>) -> SimSettings {
    SimSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        webhook_url,
        ..SimSettings::default()
    }
}

fn provider_settings(sim: &ProviderSim, pending_check: Duration) -> ProviderSettings {
    ProviderSettings {
        url: sim.url().parse().unwrap(),
        api_key: ApiKey::new(provider_sim::DEFAULT_API_KEY).unwrap(),
        timeout: Duration::from_secs(5),
        pending_check,
    }
}

/// The payment processor's runtime in this process, with the given gateway and rules.
struct InProcess {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
    metrics: Arc<PaymentMetrics>,
}

impl InProcess {
    async fn start(pipeline: &Pipeline, gateway: Gateway, policy: Policy) -> InProcess {
        let metrics = Arc::new(PaymentMetrics::default());
        let mut settings: PaymentSettings = pipeline.payment_settings();
        settings.gateway = gateway.kind().to_owned();
        let deps = PaymentDeps {
            kafka: pipeline.services.kafka(),
            codec: pipeline.codec.clone(),
            store: pipeline.payment_store().await.unwrap(),
            watermarks: pipeline.watermarks().await.unwrap(),
            gateway: Arc::new(gateway),
            settings,
            policy,
            metrics: metrics.clone(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            run_payments(deps, async {
                let _ = stopped.await;
            })
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
        });
        InProcess {
            stop: Some(stop),
            task,
            metrics,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

fn policy(pending_check: Duration) -> Policy {
    Policy {
        pending_check_ms: pending_check.as_millis() as i64,
        ..Policy::default()
    }
}

/// The payment processor's binary with `--gateway provider`.
struct Binary(Child);

impl Binary {
    fn command(pipeline: &Pipeline, provider_url: &str, api_key: &str) -> Command {
        let services = &pipeline.services;
        let mut command = Command::new(processor_binary().unwrap());
        command
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
            .env("PAYMENTS_GATEWAY", "provider")
            .env("PAYMENT_PROVIDER_URL", provider_url)
            .env("PAYMENT_PROVIDER_API_KEY", api_key)
            // Far beyond the test's wait: only webhooks can settle the payments in time.
            .env("PAYMENT_PROVIDER_PENDING_CHECK", "1h")
            .stdout(Stdio::null());
        command
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Outcomes on `booking.commands` by payment id: `Ok(())` succeeded, `Err(reason)` failed.
fn outcome_of(command: &BookingCommand) -> (String, Result<(), PaymentFailureReason>) {
    match command {
        BookingCommand::PaymentSucceeded(p) => (p.payment_id.clone(), Ok(())),
        BookingCommand::PaymentFailed(p) => (p.payment_id.clone(), Err(p.reason)),
        other => panic!("unexpected record {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_settle_pending_charges_and_duplicate_deliveries_change_nothing() {
    let ingest = Ingest::start("pay_provider_webhooks", false).await;
    let pipeline = &ingest.pipeline;
    let api_key = format!("sk_test_{}", uuid::Uuid::new_v4().simple());
    let sim = provider_sim::start(SimSettings {
        api_key: api_key.clone(),
        duplicate_webhooks: true,
        ..sim_settings(Some(ingest.url("/v1/payments/webhook")))
    })
    .await
    .unwrap();

    // A key the provider refuses stops startup, naming the setting.
    let mut wrong_key = Binary::command(pipeline, &sim.url(), "sk_wrong");
    wrong_key.stderr(Stdio::piped());
    let refused = tokio::task::spawn_blocking(move || wrong_key.output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "started with a wrong key");
    assert!(stderr.contains("PAYMENT_PROVIDER_API_KEY"), "{stderr}");
    assert!(
        !stderr.contains("sk_wrong"),
        "the key is never printed: {stderr}"
    );

    let processor = Binary(
        Binary::command(pipeline, &sim.url(), &api_key)
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let cases = [
        ("tok_success", "CAPTURED", Ok(())),
        (
            "tok_declined",
            "FAILED",
            Err(PaymentFailureReason::Declined),
        ),
        (
            "tok_insufficient_funds",
            "FAILED",
            Err(PaymentFailureReason::InsufficientFunds),
        ),
        // Failed in the charge's own answer; its event comes after and changes nothing.
        (
            "tok_unknown_card",
            "FAILED",
            Err(PaymentFailureReason::Declined),
        ),
    ];
    let orders: Vec<String> = cases.iter().map(|_| new_order()).collect();
    for (order, (token, ..)) in orders.iter().zip(&cases) {
        produce(pipeline, None, &payment(order, token)).await;
    }

    let mut outcomes = pipeline.reader(&pipeline.topics.commands).unwrap();
    let decided = outcomes
        .read_group_until(WAIT, |c: &[BookingCommand]| c.len() >= cases.len())
        .await
        .unwrap();
    for (order, (token, status, expected)) in orders.iter().zip(&cases) {
        let payment_id = ids::payment_id(order);
        let outcome = decided
            .iter()
            .map(outcome_of)
            .find(|(id, _)| *id == payment_id)
            .unwrap_or_else(|| panic!("no outcome for {token}"));
        assert_eq!(&outcome.1, expected, "{token}");
        let stored = settled(pipeline, order, status).await;
        let expected_history: &[&str] = if *token == "tok_unknown_card" {
            &["PENDING", "CHARGING", status]
        } else {
            &["PENDING", "CHARGING", "PROVIDER_PENDING", status]
        };
        assert_eq!(
            statuses(&history(pipeline, order).await),
            expected_history,
            "{token}"
        );
        assert!(
            stored.payment_method_token.is_empty(),
            "no token kept once settled"
        );
        if *token != "tok_unknown_card" {
            // A decline in the charge's own answer carries no reference to keep.
            assert!(stored.provider_reference.starts_with("ch_"), "{token}");
        }
        match expected {
            Ok(()) => assert_eq!(stored.captured_minor, AMOUNT),
            Err(PaymentFailureReason::InsufficientFunds) => {
                assert_eq!(stored.failure_reason, "INSUFFICIENT_FUNDS")
            }
            Err(_) => assert_eq!(stored.failure_reason, "DECLINED"),
        }
    }

    // Every event was delivered twice (ingest answered both), then a barrier record per
    // partition: once the processor has applied those, it has applied every forwarded event.
    let events = sim.events();
    assert_eq!(
        events.len(),
        cases.len(),
        "one event per charge: {events:?}"
    );
    wait::until("every event delivered twice", WAIT, || async {
        (sim.stats().webhooks_sent >= 2 * events.len() as u64).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}", sim.stats()));
    let barriers: Vec<String> = (0..3).map(|_| new_order()).collect();
    for (partition, order) in barriers.iter().enumerate() {
        produce(
            pipeline,
            Some(partition as i32),
            &[requested(order, now_ms() + 600_000)],
        )
        .await;
    }
    for order in &barriers {
        settled(pipeline, order, "PENDING").await;
    }

    // Nothing changed: no second outcome, no further history, one event each on the topic.
    let more = outcomes
        .read_group_until(Duration::from_secs(3), |_: &[BookingCommand]| false)
        .await;
    assert!(more.is_err(), "only the timeout ends this read");
    assert_eq!(outcomes.duplicates, 0, "an outcome was produced again");
    for (order, (token, status, _)) in orders.iter().zip(&cases) {
        let entries = history(pipeline, order).await;
        assert_eq!(
            statuses(&entries).iter().filter(|s| *s == status).count(),
            1,
            "{token}: {:?}",
            statuses(&entries)
        );
    }
    let mut requests = pipeline.reader(&pipeline.topics.payments).unwrap();
    let seen = requests
        .read_group_until(WAIT, |r: &[PaymentRequest]| {
            r.len() >= 2 * cases.len() + events.len() + barriers.len()
        })
        .await
        .unwrap();
    let forwarded: Vec<&str> = seen
        .iter()
        .filter_map(|r| match r {
            PaymentRequest::PaymentProviderEvent(e) => Some(e.provider_event_id.as_str()),
            _ => None,
        })
        .collect();
    let mut sent: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    let mut got = forwarded.clone();
    sent.sort_unstable();
    got.sort_unstable();
    assert_eq!(got, sent, "each provider event forwarded");
    assert_eq!(
        requests.duplicates, 0,
        "ingest forwarded a duplicate delivery"
    );

    let stats = sim.stats();
    assert_eq!(stats.charges, cases.len() as u64, "{stats:?}");
    assert_eq!(stats.replays, 0, "{stats:?}");
    assert_eq!(stats.captures, 1, "{stats:?}");
    assert_eq!(stats.queries, 1, "only the startup check asked: {stats:?}");
    assert_eq!(stats.webhooks_abandoned, 0, "{stats:?}");
    assert!(
        timers(pipeline)
            .await
            .iter()
            .all(|id| barriers.iter().any(|b| ids::payment_id(b) == *id)),
        "settled payments keep no timer"
    );
    drop(processor);
    sim.shutdown().await;
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_webhook_is_made_up_for_by_a_query_and_a_timeout_never_charges_twice() {
    let ingest = Ingest::start("pay_provider_lost", false).await;
    let pipeline = &ingest.pipeline;
    let sim = provider_sim::start(sim_settings(Some(ingest.url("/v1/payments/webhook"))))
        .await
        .unwrap();
    let check = Duration::from_secs(1);
    let gateway = Gateway::Provider(ProviderGateway::new(&provider_settings(&sim, check)).unwrap());
    let processor = InProcess::start(pipeline, gateway, policy(check)).await;
    let (lost, timeout) = (new_order(), new_order());
    produce(pipeline, None, &payment(&lost, "tok_webhook_lost")).await;
    produce(pipeline, None, &payment(&timeout, "tok_timeout")).await;

    let lost_row = settled(pipeline, &lost, "CAPTURED").await;
    let timeout_row = settled(pipeline, &timeout, "CAPTURED").await;
    assert_eq!(
        statuses(&history(pipeline, &lost).await),
        ["PENDING", "CHARGING", "PROVIDER_PENDING", "CAPTURED"]
    );
    // The 504's charge was found by the query (still pending, or already completed when the
    // query came late), and never charged again.
    let timeout_history = history(pipeline, &timeout).await;
    assert!(
        [
            &["PENDING", "CHARGING", "PROVIDER_PENDING", "CAPTURED"][..],
            &["PENDING", "CHARGING", "CAPTURED"][..]
        ]
        .contains(&&statuses(&timeout_history)[..]),
        "{:?}",
        statuses(&timeout_history)
    );
    assert_eq!(timeout_row.charge_attempts, 1);
    for (order, row) in [(&lost, &lost_row), (&timeout, &timeout_row)] {
        let charge = sim.charge(&ids::payment_id(order)).unwrap();
        assert_eq!(row.provider_reference, charge.id);
        assert_eq!(charge.status, "succeeded");
    }
    assert!(
        !sim.events()
            .iter()
            .any(|e| e.idempotency_key == ids::payment_id(&lost)),
        "the lost webhook was never sent"
    );
    let stats = sim.stats();
    assert_eq!(stats.charges, 2, "one charge per payment: {stats:?}");
    assert_eq!(stats.replays, 0, "never charged again: {stats:?}");
    assert!(
        stats.queries >= 2,
        "the timeout and the lost event were asked about: {stats:?}"
    );
    assert_eq!(processor.metrics.charges.get(), 2);
    assert!(processor.metrics.wakes.get() >= 1);
    let mut outcomes = pipeline.reader(&pipeline.topics.commands).unwrap();
    let decided = outcomes
        .read_group_until(WAIT, |c: &[BookingCommand]| c.len() >= 2)
        .await
        .unwrap();
    assert!(decided.iter().all(|c| outcome_of(c).1.is_ok()));
    // A settled payment's timer is deleted after its row is saved.
    let no_timer = wait::until("settled payments keep no timer", WAIT, || async {
        timers(pipeline).await.is_empty().then_some(())
    })
    .await;
    assert!(no_timer.is_ok(), "{:?}", timers(pipeline).await);
    processor.stop().await;
    sim.shutdown().await;
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_charge_holds_up_no_other_payment_and_its_check_survives_a_restart() {
    let ingest = Ingest::start("pay_provider_restart", false).await;
    let pipeline = &ingest.pipeline;
    let sim = provider_sim::start(sim_settings(Some(ingest.url("/v1/payments/webhook"))))
        .await
        .unwrap();
    let check = Duration::from_secs(8);
    let gateway =
        || Gateway::Provider(ProviderGateway::new(&provider_settings(&sim, check)).unwrap());
    let first = InProcess::start(pipeline, gateway(), policy(check)).await;
    // One partition, the lost webhook first: the next payment must not wait for it.
    let (lost, next) = (new_order(), new_order());
    produce(pipeline, Some(0), &payment(&lost, "tok_webhook_lost")).await;
    produce(pipeline, Some(0), &payment(&next, "tok_success")).await;
    let store = pipeline.payment_store().await.unwrap();
    wait::until("the next payment charged", WAIT, || {
        let (store, id) = (store.clone(), ids::payment_id(&next));
        async move {
            let status = store.load(&id).await.ok().flatten()?.status;
            ["PROVIDER_PENDING", "CAPTURED"]
                .contains(&status.name())
                .then_some(())
        }
    })
    .await
    .unwrap();
    let pending = row(pipeline, &lost).await.unwrap();
    assert_eq!(pending.status.name(), "PROVIDER_PENDING");
    assert!(
        timers(pipeline).await.contains(&pending.id),
        "the pending payment's check is stored"
    );
    let first_metrics = first.metrics.clone();
    first.stop().await;
    // The restart must find the payment still waiting, or this test proves nothing.
    assert_eq!(
        row(pipeline, &lost).await.unwrap().status.name(),
        "PROVIDER_PENDING",
        "settled before the restart; the test proves nothing"
    );
    assert_eq!(first_metrics.wakes.get(), 0);

    let second = InProcess::start(pipeline, gateway(), policy(check)).await;
    settled(pipeline, &lost, "CAPTURED").await;
    settled(pipeline, &next, "CAPTURED").await;
    assert!(
        second.metrics.wakes.get() >= 1,
        "settled by the restored timer"
    );
    assert_eq!(second.metrics.charges.get(), 0, "never charged again");
    let lost_history = history(pipeline, &lost).await;
    let next_history = history(pipeline, &next).await;
    assert_eq!(
        statuses(&lost_history),
        ["PENDING", "CHARGING", "PROVIDER_PENDING", "CAPTURED"]
    );
    // The partition went on to the next payment while the first was pending, and the first
    // was settled only once its stored check came due.
    assert!(
        entry(&next_history, "CHARGING").at < entry(&lost_history, "CAPTURED").at,
        "the partition waited for the pending charge"
    );
    assert!(
        entry(&lost_history, "CAPTURED").at
            >= entry(&lost_history, "PROVIDER_PENDING").at + check.as_millis() as i64
    );
    assert_eq!(sim.stats().replays, 0);
    assert_eq!(sim.stats().charges, 2);
    second.stop().await;
    sim.shutdown().await;
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaid_payments_expire_by_their_timer_and_the_sandbox_pending_token_is_checked() {
    let pipeline = Pipeline::create(services().await, "pay_timers")
        .await
        .unwrap();
    // Long enough that the next payment on the partition (a few store writes) is captured
    // before the pending one's check comes due, even on a loaded machine.
    let check = Duration::from_secs(3);
    let rules = Policy {
        late_grace_ms: 1500,
        ..policy(check)
    };
    let mut settings = pipeline.payment_settings();
    settings.sandbox_pending = Duration::from_millis(300);
    let processor = InProcess::start(&pipeline, settings.gateway().unwrap(), rules).await;
    let (unpaid, parked, pending, next) = (new_order(), new_order(), new_order(), new_order());
    // Never submitted (its hold already over), submitted but never requested, and the
    // sandbox's pending token followed by a payment on the same partition.
    produce(&pipeline, None, &[requested(&unpaid, now_ms() - 1000)]).await;
    produce(&pipeline, None, &[submitted(&parked, "tok_success")]).await;
    produce(&pipeline, Some(1), &payment(&pending, "tok_pending")).await;
    produce(&pipeline, Some(1), &payment(&next, "tok_success")).await;

    settled(&pipeline, &unpaid, "EXPIRED").await;
    let expired = settled(&pipeline, &parked, "EXPIRED").await;
    assert!(
        expired.payment_method_token.is_empty(),
        "the token is dropped"
    );
    assert_eq!(
        statuses(&history(&pipeline, &unpaid).await),
        ["PENDING", "EXPIRED"]
    );
    assert_eq!(
        statuses(&history(&pipeline, &parked).await),
        ["AWAITING_REQUEST", "EXPIRED"]
    );
    settled(&pipeline, &pending, "CAPTURED").await;
    settled(&pipeline, &next, "CAPTURED").await;
    let pending_history = history(&pipeline, &pending).await;
    assert_eq!(
        statuses(&pending_history),
        ["PENDING", "CHARGING", "PROVIDER_PENDING", "CAPTURED"]
    );
    let next_history = history(&pipeline, &next).await;
    assert!(
        entry(&next_history, "CAPTURED").at < entry(&pending_history, "CAPTURED").at,
        "the partition waited for the pending charge"
    );
    assert!(
        entry(&pending_history, "CAPTURED").at
            >= entry(&pending_history, "PROVIDER_PENDING").at + check.as_millis() as i64,
        "settled by its check"
    );
    assert!(processor.metrics.wakes.get() >= 3);
    assert_eq!(processor.metrics.charges.get(), 2);
    wait::until("every timer gone", WAIT, || async {
        timers(&pipeline).await.is_empty().then_some(())
    })
    .await
    .unwrap();
    processor.stop().await;
}

/// Issue 13, finding 7: a signed provider event is cross-checked with its payment. Events
/// signed with the right secret but naming another amount, currency or order are forwarded by
/// ingest (it cannot know the payment) and refused by the payment processor: the payment stays
/// unsettled, each refusal is in its history, dead-lettered with the reason and counted. The
/// control: the provider's true event then settles it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_events_for_another_amount_currency_or_order_are_refused() {
    let secret = format!("whsec_it_{}", uuid::Uuid::new_v4().simple());
    let webhook = ProviderWebhookSettings {
        secret: ProviderSecret::new(secret.as_bytes().to_vec()).unwrap(),
        tolerance: Duration::from_secs(300),
    };
    let ingest = Ingest::start_with_provider("pay_provider_crosscheck", webhook).await;
    let pipeline = &ingest.pipeline;
    // No webhooks from the simulator: this test speaks for the provider.
    let sim = provider_sim::start(sim_settings(None)).await.unwrap();
    let check = Duration::from_secs(600);
    let gateway = Gateway::Provider(ProviderGateway::new(&provider_settings(&sim, check)).unwrap());
    let processor = InProcess::start(pipeline, gateway, policy(check)).await;

    let order = new_order();
    let payment_id = ids::payment_id(&order);
    produce(pipeline, None, &payment(&order, "tok_success")).await;
    settled(pipeline, &order, "PROVIDER_PENDING").await;

    let deliver = |event_id: String, order_id: String, amount: i64, currency: &'static str| {
        let body = serde_json::json!({
            "id": event_id, "type": "charge.succeeded", "created": now_ms() / 1000,
            "data": {"object": {
                "id": format!("ch_{event_id}"), "idempotency_key": payment_id, "status": "succeeded",
                "amount_minor": amount, "currency": currency,
                "metadata": {"payment_id": payment_id, "order_id": order_id}
            }}
        })
        .to_string();
        let signature =
            boxoffice_ingest::provider::sign(secret.as_bytes(), now_ms() / 1000, body.as_bytes());
        let request = ingest
            .http
            .post(ingest.url("/v1/payments/webhook"))
            .header("content-type", "application/json")
            .header("Boxoffice-Provider-Signature", signature)
            .body(body);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
        }
    };
    let forged = [
        (order.clone(), 1, "EUR"),
        (order.clone(), AMOUNT, "USD"),
        (new_order(), AMOUNT, "EUR"),
    ];
    for (n, (order_id, amount, currency)) in forged.iter().enumerate() {
        deliver(
            format!("evt_forged_{n}_{order}"),
            order_id.clone(),
            *amount,
            currency,
        )
        .await;
    }

    let mut letters = pipeline.reader(&pipeline.topics.dead_letters).unwrap();
    let refused = letters
        .read_until::<DeadLetter>(WAIT, |d| d.len() >= forged.len())
        .await
        .unwrap();
    assert_eq!(refused.len(), forged.len(), "{refused:?}");
    // Another amount or currency: refused by the payment's core. Another order: its payment id
    // is not that order's, which the processor refuses as it decodes the record.
    let kinds: Vec<(DeadLetterErrorKind, &str)> = refused
        .iter()
        .map(|letter| (letter.error_kind, letter.reason.as_str()))
        .collect();
    let mismatches = kinds
        .iter()
        .filter(|(kind, reason)| {
            *kind == DeadLetterErrorKind::ProviderEventMismatch && reason.contains("the payment")
        })
        .count();
    assert_eq!(mismatches, 2, "{kinds:?}");
    assert!(
        kinds
            .iter()
            .any(|(kind, reason)| *kind == DeadLetterErrorKind::InvalidRecord
                && reason.contains("is not the payment of order")),
        "{kinds:?}"
    );
    assert_eq!(processor.metrics.provider_events_refused.get(), 2);
    let stored = row(pipeline, &order).await.unwrap();
    assert_eq!(
        stored.status.name(),
        "PROVIDER_PENDING",
        "no forged event settled it"
    );
    assert_eq!(stored.captured_minor, 0);
    let refusals = history(pipeline, &order).await;
    assert_eq!(
        statuses(&refusals)
            .iter()
            .filter(|s| **s == "PROVIDER_EVENT_REFUSED")
            .count(),
        2,
        "{:?}",
        statuses(&refusals)
    );

    // The provider's true event settles the payment.
    deliver(format!("evt_true_{order}"), order.clone(), AMOUNT, "EUR").await;
    let captured = settled(pipeline, &order, "CAPTURED").await;
    assert_eq!(captured.captured_minor, AMOUNT);
    processor.stop().await;
    sim.shutdown().await;
}
