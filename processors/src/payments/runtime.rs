//! The payment processor's runtime: `payments.requests` in, the pure core in the middle, the
//! gateway, ScyllaDB and `booking.commands` / `notifications` out.
//!
//! Records are processed in log order per partition (partitions concurrently). For each
//! record the payment is loaded from ScyllaDB; a record at or below the payment's stored
//! `applied_offset` is skipped. Then every decision step is carried out in this order:
//!
//! 1. produce the step's outcome records (idempotent producer, deterministic record ids);
//! 2. append the step's history entries, then write the payment row, conditional on the
//!    revision loaded (a zombie's write is refused);
//! 3. only then call the gateway (so a `CHARGING` intent is stored before any charge), and
//!    feed its answer back into the core, which is step 1 again.
//!
//! Finally the payment is written with the record's offset as `applied_offset`.
//!
//! A crash anywhere replays the record: a payment found `CHARGING` (or waiting for the
//! provider, or `REFUNDING`) is first resolved with `query` (same idempotency key), never with a
//! second blind charge; an outcome already produced is produced again with the same record id,
//! which consumers deduplicate. The booking processor ignores a second `PaymentSucceeded` or
//! `PaymentFailed` for an order that already moved on.
//!
//! Outputs are produced without a Kafka transaction: every output is keyed by a deterministic
//! id and every outcome is the gateway's answer for the payment's idempotency key, so a
//! duplicate (from a replay or a zombie) can only repeat the same fact.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use boxoffice_avro::ids;
use boxoffice_avro::records::{
    DeadLetter, DeadLetterErrorKind, PaymentFailureReason, PaymentProviderEvent, PaymentRequest,
    ProviderChargeOutcome, RecordGroup, topic,
};
use boxoffice_avro::{Codec, CodecError};
use boxoffice_sinks::payments::{HistoryEntry, PaymentSaveOutcome, PaymentStore};
use boxoffice_topics::kafka::KafkaArgs;
use futures::future::join_all;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::core::{self, Effect, Input, Millis, PaymentState, Policy};
use super::gateway::{
    ChargeOutcome, ChargeRequest, DeclineReason, Gateway, LedgerError, PaymentGateway,
    RefundRequest, SandboxGateway, SandboxSettings,
};
use super::render::{Output, render};
use super::store::{self, Stored};

/// The topics the payment processor reads and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub requests: String,
    pub commands: String,
    pub notifications: String,
    pub dead_letters: String,
}

impl Topics {
    pub fn with_prefix(prefix: &str) -> Self {
        Topics {
            requests: format!("{prefix}{}", topic::PAYMENTS_REQUESTS),
            commands: format!("{prefix}{}", topic::BOOKING_COMMANDS),
            notifications: format!("{prefix}{}", topic::NOTIFICATIONS),
            dead_letters: format!("{prefix}{}", topic::DEAD_LETTERS),
        }
    }
}

/// How the payment processor batches, identifies itself and reaches its provider.
#[derive(Debug, Clone, clap::Args)]
pub struct PaymentSettings {
    /// Consumer group of the payment processors; every instance of one deployment shares it.
    #[arg(
        long = "group-id",
        env = "PAYMENTS_GROUP_ID",
        default_value = "payment-processor"
    )]
    pub group_id: String,

    /// Prefix of every topic name (empty in production; tests and side-by-side deployments).
    #[arg(
        long = "topic-prefix",
        env = "BOXOFFICE_TOPIC_PREFIX",
        default_value = ""
    )]
    pub topic_prefix: String,

    /// Most records taken in one batch.
    #[arg(long = "max-batch-records", env = "PAYMENTS_MAX_BATCH_RECORDS", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_batch_records: u32,

    /// Longest a batch waits to fill up once its first record arrived (e.g. `20ms`).
    #[arg(long = "max-batch-wait", env = "PAYMENTS_MAX_BATCH_WAIT", default_value = "20ms",
          value_parser = humantime::parse_duration)]
    pub max_batch_wait: Duration,

    /// The payment provider: `sandbox` (test mode, behaviour chosen by the token).
    #[arg(long = "gateway", env = "PAYMENTS_GATEWAY", default_value = "sandbox",
          value_parser = ["sandbox"])]
    pub gateway: String,

    /// How long the sandbox's `tok_slow` takes.
    #[arg(long = "sandbox-slow", env = "PAYMENTS_SANDBOX_SLOW", default_value = "2s",
          value_parser = humantime::parse_duration)]
    pub sandbox_slow: Duration,

    /// How long a sandbox `tok_pending` charge stays pending.
    #[arg(long = "sandbox-pending", env = "PAYMENTS_SANDBOX_PENDING", default_value = "1s",
          value_parser = humantime::parse_duration)]
    pub sandbox_pending: Duration,

    /// File the sandbox keeps its ledger in (JSON lines), so it outlives a restart like a real
    /// provider; unset: in memory.
    #[arg(long = "sandbox-ledger", env = "PAYMENTS_SANDBOX_LEDGER")]
    pub sandbox_ledger: Option<PathBuf>,
}

impl PaymentSettings {
    pub fn topics(&self) -> Topics {
        Topics::with_prefix(&self.topic_prefix)
    }

    /// The configured provider.
    pub fn gateway(&self) -> Result<Gateway, LedgerError> {
        Ok(Gateway::Sandbox(SandboxGateway::new(SandboxSettings {
            slow: self.sandbox_slow,
            pending: self.sandbox_pending,
            ledger: self.sandbox_ledger.clone(),
        })?))
    }
}

/// What the payment processor counts.
#[derive(Debug, Default)]
pub struct PaymentMetrics {
    pub records_processed: AtomicU64,
    pub records_skipped: AtomicU64,
    pub dead_letters: AtomicU64,
    pub charges: AtomicU64,
    pub queries: AtomicU64,
    pub refunds: AtomicU64,
    pub captured: AtomicU64,
    pub failed: AtomicU64,
    pub outputs_produced: AtomicU64,
    pub store_retries: AtomicU64,
    pub conflicts: AtomicU64,
}

impl PaymentMetrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters = [
            (
                "payments_records_processed_total",
                "Records applied",
                &self.records_processed,
            ),
            (
                "payments_records_skipped_total",
                "Records already applied (replay)",
                &self.records_skipped,
            ),
            (
                "payments_dead_letters_total",
                "Records sent to the dead-letter topic",
                &self.dead_letters,
            ),
            (
                "payments_gateway_charges_total",
                "Charge calls",
                &self.charges,
            ),
            (
                "payments_gateway_queries_total",
                "Charge or refund queries",
                &self.queries,
            ),
            (
                "payments_gateway_refunds_total",
                "Refund calls",
                &self.refunds,
            ),
            (
                "payments_captured_total",
                "Payments captured",
                &self.captured,
            ),
            ("payments_failed_total", "Payments failed", &self.failed),
            (
                "payments_outputs_produced_total",
                "Records produced",
                &self.outputs_produced,
            ),
            (
                "payments_store_retries_total",
                "Store calls retried",
                &self.store_retries,
            ),
            (
                "payments_conflicts_total",
                "Payment writes refused (another owner)",
                &self.conflicts,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        out
    }
}

/// Serves `/metrics` and `/healthz` until the process ends.
pub async fn serve_metrics(listener: tokio::net::TcpListener, metrics: Arc<PaymentMetrics>) {
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/metrics", get(move || async move { metrics.render() }))
        .route("/healthz", get(|| async { "ok" }));
    if let Err(e) = axum::serve(listener, app).await {
        warn!(error = %e, "metrics server stopped");
    }
}

/// Why the processor stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "Kafka client could not be created (check --bootstrap-servers / KAFKA_BOOTSTRAP_SERVERS): {0}"
    )]
    Kafka(#[from] KafkaError),
    #[error("topic {topic} does not exist: create it with `topics apply`")]
    MissingTopic { topic: String },
    #[error("stopped rather than skip a record: {0}")]
    Fatal(String),
}

/// What the processor needs from the outside world.
pub struct PaymentDeps {
    pub kafka: KafkaArgs,
    pub codec: Arc<Codec>,
    pub store: Arc<PaymentStore>,
    pub gateway: Arc<Gateway>,
    pub settings: PaymentSettings,
    pub policy: Policy,
    pub metrics: Arc<PaymentMetrics>,
}

impl std::fmt::Debug for PaymentDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentDeps")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

/// 50 ms doubling to 5 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(50u64.saturating_mul(1 << attempt.min(7)).min(5_000))
}

struct Runtime {
    deps: PaymentDeps,
    topics: Topics,
    producer: FutureProducer,
}

/// Runs the payment processor until `shutdown` resolves; then finishes the batch in flight
/// and leaves the group.
pub async fn run(deps: PaymentDeps, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let topics = deps.settings.topics();
    let consumer: StreamConsumer = deps
        .kafka
        .client_config()
        .set("group.id", &deps.settings.group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // The booking processor writes its requests in transactions.
        .set("isolation.level", "read_committed")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(&topics.requests), deps.kafka.timeout)?;
    let exists = metadata
        .topics()
        .iter()
        .any(|t| t.name() == topics.requests && t.error().is_none() && !t.partitions().is_empty());
    if !exists {
        return Err(RunError::MissingTopic {
            topic: topics.requests.clone(),
        });
    }
    consumer.subscribe(&[&topics.requests])?;
    let producer: FutureProducer = deps.kafka.durable_producer_config().create()?;
    info!(group = %deps.settings.group_id, topic = %topics.requests, "payment processor joined its group");
    let runtime = Runtime {
        deps,
        topics,
        producer,
    };
    tokio::pin!(shutdown);
    loop {
        let batch = tokio::select! {
            _ = &mut shutdown => break,
            batch = collect_batch(&consumer, &runtime.deps.settings) => batch,
        };
        runtime.process(&consumer, batch).await?;
    }
    info!("payment processor stopping: batch finished, leaving the group");
    consumer.unsubscribe();
    Ok(())
}

async fn collect_batch(consumer: &StreamConsumer, settings: &PaymentSettings) -> Vec<OwnedMessage> {
    let mut batch = Vec::new();
    match tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await {
        Ok(Ok(message)) => batch.push(message.detach()),
        Ok(Err(e)) => {
            warn!(error = %e, "consumer error");
            return batch;
        }
        Err(_) => return batch,
    }
    let deadline = tokio::time::Instant::now() + settings.max_batch_wait;
    while batch.len() < settings.max_batch_records as usize {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(message)) => batch.push(message.detach()),
            Ok(Err(e)) => {
                warn!(error = %e, "consumer error");
                break;
            }
            Err(_) => break,
        }
    }
    batch
}

/// A step could not be completed; the record is retried from the stored state.
enum StepError {
    /// Another processor wrote the payment meanwhile.
    Conflict(String),
    /// Nothing a retry can fix.
    Fatal(String),
}

impl Runtime {
    async fn process(
        &self,
        consumer: &StreamConsumer,
        batch: Vec<OwnedMessage>,
    ) -> Result<(), RunError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut by_partition: HashMap<i32, Vec<OwnedMessage>> = HashMap::new();
        for message in batch {
            by_partition
                .entry(message.partition())
                .or_default()
                .push(message);
        }
        let jobs = by_partition.into_iter().map(|(partition, records)| {
            let span = info_span!("payments", partition, records = records.len());
            async move {
                let mut last = None;
                for message in &records {
                    self.process_record(message).await?;
                    last = Some(message.offset());
                }
                Ok::<_, RunError>((partition, last))
            }
            .instrument(span)
        });
        let mut commit = TopicPartitionList::new();
        for outcome in join_all(jobs).await {
            let (partition, last) = outcome?;
            if let Some(last) = last {
                let _ = commit.add_partition_offset(
                    &self.topics.requests,
                    partition,
                    Offset::Offset(last + 1),
                );
            }
        }
        if commit.count() > 0
            && let Err(e) = consumer.commit(&commit, CommitMode::Async)
        {
            // Only a hint for restarts: stored offsets decide what is skipped.
            debug!(error = %e, "offset commit failed");
        }
        Ok(())
    }

    /// Applies one record fully (or dead-letters it). `Err` only for what no retry fixes.
    async fn process_record(&self, message: &OwnedMessage) -> Result<(), RunError> {
        let metrics = &self.deps.metrics;
        let request = match self.decode(message).await {
            Ok(request) => request,
            Err((kind, reason)) => {
                warn!(offset = message.offset(), ?kind, reason = %reason, "dead-lettering a record");
                self.dead_letter(message, kind, &reason)
                    .await
                    .map_err(|e| RunError::Fatal(e.to_string()))?;
                metrics.dead_letters.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        };
        let payment_id = payment_id_of(&request).to_owned();
        let mut attempt = 0u32;
        loop {
            match self
                .apply_record(&payment_id, &request, message.offset())
                .await
            {
                Ok(applied) => {
                    let counter = if applied {
                        &metrics.records_processed
                    } else {
                        &metrics.records_skipped
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err(StepError::Conflict(reason)) => {
                    attempt += 1;
                    metrics.conflicts.fetch_add(1, Ordering::Relaxed);
                    warn!(payment_id, attempt, reason = %reason, "payment written by another processor; reloading");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(StepError::Fatal(reason)) => {
                    error!(payment_id, reason = %reason, "record cannot be applied; stopping");
                    return Err(RunError::Fatal(reason));
                }
            }
        }
    }

    /// Loads the payment, resolves anything in flight, applies the record, stores the offset.
    /// `Ok(false)`: already applied.
    async fn apply_record(
        &self,
        payment_id: &str,
        request: &PaymentRequest,
        offset: i64,
    ) -> Result<bool, StepError> {
        let (mut state, mut stored) = self.load(payment_id).await?;
        if stored
            .applied_offset
            .is_some_and(|applied| offset <= applied)
        {
            return Ok(false);
        }
        if state.status.is_in_flight() {
            info!(
                payment_id,
                status = state.status.name(),
                "payment in flight after a restart; asking the provider"
            );
            self.run_input(&mut state, &mut stored, Input::Recover)
                .await?;
        }
        let input = match request {
            PaymentRequest::PaymentRequested(r) => Input::Requested(r.clone()),
            PaymentRequest::PaymentSubmitted(s) => Input::Submitted(s.clone()),
            PaymentRequest::RefundRequested(r) => Input::RefundRequested(r.clone()),
            PaymentRequest::PaymentProviderEvent(e) => Input::ProviderEvent(provider_outcome(e)),
        };
        self.run_input(&mut state, &mut stored, input).await?;
        stored.applied_offset = Some(offset);
        self.persist(&state, &mut stored, &[]).await?;
        Ok(true)
    }

    async fn load(&self, payment_id: &str) -> Result<(PaymentState, Stored), StepError> {
        let mut attempt = 0;
        loop {
            match self.deps.store.load(payment_id).await {
                Ok(None) => {
                    return Ok((
                        PaymentState::new(payment_id),
                        Stored {
                            applied_offset: None,
                            revision: 0,
                        },
                    ));
                }
                Ok(Some(row)) => return store::restore(row).map_err(StepError::Fatal),
                Err(e) if e.is_retryable() => {
                    attempt += 1;
                    self.deps
                        .metrics
                        .store_retries
                        .fetch_add(1, Ordering::Relaxed);
                    warn!(payment_id, attempt, error = %e, "loading a payment failed; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) => return Err(StepError::Fatal(e.to_string())),
            }
        }
    }

    /// Feeds `input` to the core and carries out every effect, feeding the gateway's answers
    /// back until nothing is left to do.
    async fn run_input(
        &self,
        state: &mut PaymentState,
        stored: &mut Stored,
        input: Input,
    ) -> Result<(), StepError> {
        let metrics = &self.deps.metrics;
        let gateway = &self.deps.gateway;
        let mut queue = VecDeque::from([input]);
        let mut queries = 0u32;
        while let Some(input) = queue.pop_front() {
            let now = now_millis();
            let first_seq = state.history_seq;
            let effects = core::apply_with(&self.deps.policy, state, input, now);
            // 1. Outcomes first: a crash after them replays the step, which produces them again.
            for effect in &effects {
                if let Effect::Emit(outcome) = effect {
                    self.produce(&render(state, outcome, now)).await?;
                }
            }
            // 2. History, then the row: the intent is stored before any gateway call.
            let mut history = Vec::new();
            for effect in &effects {
                match effect {
                    Effect::History { status, detail } => {
                        history.push(HistoryEntry {
                            at: now,
                            seq: first_seq + i32::try_from(history.len()).unwrap_or(i32::MAX),
                            status: (*status).to_owned(),
                            detail: detail.clone(),
                        });
                    }
                    Effect::Ignored { reason } => {
                        debug!(payment_id = %state.payment_id, reason = %reason, "input changed nothing");
                    }
                    _ => {}
                }
            }
            if !history.is_empty() {
                self.persist(state, stored, &history).await?;
            }
            // 3. The gateway.
            for effect in effects {
                match effect {
                    Effect::Charge {
                        payment_id,
                        amount_minor,
                        currency,
                        token,
                    } => {
                        metrics.charges.fetch_add(1, Ordering::Relaxed);
                        let request = ChargeRequest {
                            idempotency_key: payment_id,
                            amount_minor,
                            currency,
                            token,
                        };
                        let outcome = gateway.charge(&request).await;
                        info!(payment_id = %state.payment_id, outcome = outcome_name(&outcome), "charge answered");
                        queue.push_back(Input::ChargeResult(outcome));
                    }
                    Effect::Query { payment_id } => {
                        if queries > 0 {
                            tokio::time::sleep(backoff(queries.min(6))).await;
                        }
                        queries += 1;
                        metrics.queries.fetch_add(1, Ordering::Relaxed);
                        let outcome = gateway.query(&payment_id).await;
                        info!(payment_id = %state.payment_id, outcome = outcome_name(&outcome), "charge queried");
                        queue.push_back(Input::ChargeResult(outcome));
                    }
                    Effect::Refund {
                        refund_id,
                        charge_reference,
                        amount_minor,
                        currency,
                    } => {
                        metrics.refunds.fetch_add(1, Ordering::Relaxed);
                        let request = RefundRequest {
                            idempotency_key: refund_id,
                            charge_reference,
                            amount_minor,
                            currency,
                        };
                        queue.push_back(Input::RefundResult(gateway.refund(&request).await));
                    }
                    Effect::QueryRefund { refund_id } => {
                        if queries > 0 {
                            tokio::time::sleep(backoff(queries.min(6))).await;
                        }
                        queries += 1;
                        metrics.queries.fetch_add(1, Ordering::Relaxed);
                        queue
                            .push_back(Input::RefundResult(gateway.query_refund(&refund_id).await));
                    }
                    Effect::Emit(core::Outcome::Succeeded { .. }) => {
                        metrics.captured.fetch_add(1, Ordering::Relaxed);
                    }
                    Effect::Emit(core::Outcome::Failed { .. }) => {
                        metrics.failed.fetch_add(1, Ordering::Relaxed);
                    }
                    Effect::Emit(_) | Effect::History { .. } | Effect::Ignored { .. } => {}
                }
            }
        }
        Ok(())
    }

    /// Appends `history` and writes the payment as the next revision, retrying outages.
    async fn persist(
        &self,
        state: &PaymentState,
        stored: &mut Stored,
        history: &[HistoryEntry],
    ) -> Result<(), StepError> {
        let store = &self.deps.store;
        let mut attempt = 0u32;
        let retry = |attempt: &mut u32, what: &str, e: &dyn std::fmt::Display| {
            *attempt += 1;
            self.deps
                .metrics
                .store_retries
                .fetch_add(1, Ordering::Relaxed);
            warn!(payment_id = %state.payment_id, attempt = *attempt, error = %e, "{what} failed; retrying");
            backoff(*attempt)
        };
        loop {
            match store.append_history(&state.payment_id, history).await {
                Ok(()) => break,
                Err(e) if e.is_retryable() => {
                    tokio::time::sleep(retry(&mut attempt, "appending history", &e)).await
                }
                Err(e) => return Err(StepError::Fatal(e.to_string())),
            }
        }
        let next = stored.revision + 1;
        let row = store::to_stored(state, stored.applied_offset, next);
        let expected = (stored.revision > 0).then_some(stored.revision);
        let mut retried = false;
        loop {
            match store.save(&row, expected).await {
                Ok(PaymentSaveOutcome::Applied) => break,
                // A retried save whose first attempt landed.
                Ok(PaymentSaveOutcome::Conflict {
                    current_revision: Some(current),
                }) if retried && current == next => break,
                Ok(PaymentSaveOutcome::Conflict { current_revision }) => {
                    return Err(StepError::Conflict(format!(
                        "stored revision {current_revision:?}, expected {expected:?}"
                    )));
                }
                Err(e) if e.is_retryable() => {
                    retried = true;
                    tokio::time::sleep(retry(&mut attempt, "saving the payment", &e)).await;
                }
                Err(e) => return Err(StepError::Fatal(e.to_string())),
            }
        }
        stored.revision = next;
        Ok(())
    }

    /// Produces one output, waiting out outages (the same record again is deduplicated by id).
    async fn produce(&self, output: &Output) -> Result<(), StepError> {
        let (topic, payload) = self.encode(output).await?;
        let headers = OwnedHeaders::new().insert(Header {
            key: "record_id",
            value: Some(output.record_id()),
        });
        let mut attempt = 0u32;
        loop {
            let record = FutureRecord::to(&topic)
                .key(output.key())
                .payload(&payload)
                .headers(headers.clone());
            match self.producer.send(record, Duration::from_secs(30)).await {
                Ok(_) => {
                    self.deps
                        .metrics
                        .outputs_produced
                        .fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err((e, _)) => {
                    attempt += 1;
                    warn!(attempt, error = %e, topic = %topic, "producing an outcome failed; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
    }

    async fn encode(&self, output: &Output) -> Result<(String, Vec<u8>), StepError> {
        let codec = &self.deps.codec;
        let mut attempt = 0u32;
        loop {
            let encoded = match output {
                Output::Command(r) => codec
                    .encode_group(&self.topics.commands, r)
                    .await
                    .map(|p| (self.topics.commands.clone(), p)),
                Output::Notification(r) => codec
                    .encode(&self.topics.notifications, r)
                    .await
                    .map(|p| (self.topics.notifications.clone(), p)),
            };
            match encoded {
                Ok(done) => return Ok(done),
                Err(e) if e.is_retryable() => {
                    attempt += 1;
                    warn!(attempt, error = %e, "registry unavailable while encoding; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) => return Err(StepError::Fatal(format!("encoding an output: {e}"))),
            }
        }
    }

    /// Decodes a request and checks it is consistent. Registry outages are waited out.
    async fn decode(
        &self,
        message: &OwnedMessage,
    ) -> Result<PaymentRequest, (DeadLetterErrorKind, String)> {
        let Some(payload) = message.payload() else {
            return Err((
                DeadLetterErrorKind::InvalidRecord,
                "record has no value".to_owned(),
            ));
        };
        let mut attempt = 0;
        let request = loop {
            match self
                .deps
                .codec
                .decode_group::<PaymentRequest>(payload)
                .await
            {
                Ok(request) => break request,
                Err(e) if e.is_retryable() => {
                    attempt += 1;
                    warn!(offset = message.offset(), attempt, error = %e, "registry unavailable while decoding; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) => return Err((e.dead_letter_kind(), e.to_string())),
            }
        };
        let order_id = request.key();
        if message.key().unwrap_or_default() != order_id.as_bytes() {
            return Err((
                DeadLetterErrorKind::InvalidRecord,
                format!("record key does not match its order_id {order_id}"),
            ));
        }
        // One payment per order: a request naming another payment id is not ours to act on.
        if payment_id_of(&request) != ids::payment_id(order_id) {
            return Err((
                DeadLetterErrorKind::InvalidRecord,
                format!(
                    "payment id {} is not the payment of order {order_id}",
                    payment_id_of(&request)
                ),
            ));
        }
        Ok(request)
    }

    async fn dead_letter(
        &self,
        message: &OwnedMessage,
        kind: DeadLetterErrorKind,
        reason: &str,
    ) -> Result<(), CodecError> {
        let now = now_millis();
        let group = &self.deps.settings.group_id;
        let record = DeadLetter {
            record_id: DeadLetter::record_id_for(
                group,
                message.topic(),
                message.partition(),
                message.offset(),
            ),
            source_topic: message.topic().to_owned(),
            source_partition: message.partition(),
            source_offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            reason: reason.to_owned(),
            error_kind: kind,
            consumer: group.clone(),
            failed_at: now,
            occurred_at: message.timestamp().to_millis().unwrap_or(now),
        };
        let mut attempt = 0u32;
        let payload = loop {
            match self
                .deps
                .codec
                .encode(&self.topics.dead_letters, &record)
                .await
            {
                Ok(payload) => break payload,
                Err(e) if e.is_retryable() => {
                    attempt += 1;
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let kind_name = format!("{kind:?}");
        let source = format!(
            "{}/{}/{}",
            message.topic(),
            message.partition(),
            message.offset()
        );
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "dlq.reason",
                value: Some(reason),
            })
            .insert(Header {
                key: "dlq.error_kind",
                value: Some(kind_name.as_str()),
            })
            .insert(Header {
                key: "dlq.source",
                value: Some(source.as_str()),
            });
        let key = message.key().map(<[u8]>::to_vec).unwrap_or_default();
        let mut attempt = 0u32;
        loop {
            let out = FutureRecord::to(&self.topics.dead_letters)
                .key(&key)
                .payload(&payload)
                .headers(headers.clone());
            match self.producer.send(out, Duration::from_secs(30)).await {
                Ok(_) => return Ok(()),
                Err((e, _)) => {
                    attempt += 1;
                    warn!(attempt, error = %e, "producing a dead letter failed; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
    }
}

fn payment_id_of(request: &PaymentRequest) -> &str {
    match request {
        PaymentRequest::PaymentRequested(r) => &r.payment_id,
        PaymentRequest::PaymentSubmitted(r) => &r.payment_id,
        PaymentRequest::RefundRequested(r) => &r.payment_id,
        PaymentRequest::PaymentProviderEvent(r) => &r.payment_id,
    }
}

/// A provider's asynchronous event as the charge outcome it reports.
fn provider_outcome(event: &PaymentProviderEvent) -> ChargeOutcome {
    match event.outcome {
        ProviderChargeOutcome::Captured => ChargeOutcome::Captured {
            provider_reference: event.provider_reference.clone(),
        },
        ProviderChargeOutcome::Declined => ChargeOutcome::Declined {
            reason: match event.failure_reason {
                Some(PaymentFailureReason::InsufficientFunds) => DeclineReason::InsufficientFunds,
                Some(PaymentFailureReason::ProviderError | PaymentFailureReason::Timeout) => {
                    DeclineReason::ProviderError
                }
                Some(PaymentFailureReason::Declined) | None => DeclineReason::Declined,
            },
            message: event.detail.clone().unwrap_or_default(),
        },
    }
}

/// For logs: the outcome's kind only (never a token; references are not secret but not needed).
fn outcome_name(outcome: &super::gateway::ChargeOutcome) -> &'static str {
    use super::gateway::ChargeOutcome as C;
    match outcome {
        C::Captured { .. } => "captured",
        C::Declined { .. } => "declined",
        C::Pending { .. } => "pending",
        C::Unknown { .. } => "unknown",
        C::NotFound => "not_found",
    }
}
