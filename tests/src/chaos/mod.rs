//! The chaos suite: a flash sale through the public HTTP API while one part of the system is
//! SIGKILLed and started again, on a private stack of its own (`stack`: its own state
//! directory and ports; its CQL store syncs the commit log every 10 s, so killing it loses
//! what it acknowledged since). After every run the checks of `check` must hold.
//!
//! The faults, in turn: the CQL store, the Kafka broker, the booking processor, the payment
//! processor, the notifier, and the store together with the booking processor. A store run
//! must show that loss really happened (the booking processor found the store behind Kafka
//! and re-folded, or a consumer replayed from the store's watermark).
//!
//! `tests/tests/chaos.rs` runs each fault once, small; the `chaos` binary repeats any fault
//! with large sales (see its `--help`).

pub mod check;
pub mod follow;
pub mod sale;
pub mod stack;
pub mod system;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context;

use follow::Follower;
use sale::{Api, Fan, Payer, SaleConfig};
use stack::{BROKER, STORE};
use system::{Service, System};

/// What is killed in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    Store,
    Broker,
    BookingProcessor,
    PaymentProcessor,
    Notifier,
    StoreAndBookingProcessor,
}

impl Fault {
    pub const ALL: [Fault; 6] = [
        Fault::Store,
        Fault::Broker,
        Fault::BookingProcessor,
        Fault::PaymentProcessor,
        Fault::Notifier,
        Fault::StoreAndBookingProcessor,
    ];

    /// Whether the CQL store is killed (so loss must be observed).
    pub fn kills_store(self) -> bool {
        matches!(self, Fault::Store | Fault::StoreAndBookingProcessor)
    }
}

/// How one run is driven.
#[derive(Debug, Clone, Copy)]
pub struct RunConfig {
    pub capacity: u32,
    pub sale: SaleConfig,
    /// When the fault hits, after the sale started.
    pub fault_at: Duration,
    /// How long what was killed stays down before it is started again.
    pub down_for: Duration,
    /// How long the broker stays down in its run (longer than every service's retry budget,
    /// so each consumer gives up and must resume by itself).
    pub broker_down_for: Duration,
}

/// What one run showed.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub fault: Fault,
    pub event_id: String,
    pub requests: usize,
    pub accepted: usize,
    pub reserved: usize,
    pub rejected: usize,
    pub paid: usize,
    pub confirmed: usize,
    pub retries: usize,
    pub gave_up: usize,
    /// What was killed, with pids, and how long until it was back.
    pub fault_proof: String,
    /// Store runs: the counters that show the loss was seen and repaired.
    pub loss_evidence: String,
    pub loss_observed: bool,
    /// Store runs: what the booking processor's `/readyz` and give-up counter showed while
    /// the store was down for longer than the retry budget.
    pub outage_evidence: String,
    /// From the fault being over until every accepted order was decided.
    pub decided_after_recovery: Duration,
    pub undecided: usize,
    /// Reserved orders their fan could not pay because ingest answered 404 (see `run`).
    pub unpayable: Vec<String>,
    pub delivered: check::Delivered,
    pub violations: Vec<String>,
}

impl RunReport {
    /// No check failed. Whether a store kill lost writes is up to the store's last sync; the
    /// suite asks that at least one store run saw the loss (see `tests/tests/chaos.rs`).
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn summary(&self) -> String {
        format!(
            "{:?}: {} requests, {} accepted, {} reserved, {} rejected, {} paid, {} confirmed, {} unpayable (404); {} retries, {} gave up; \
             decided {:.1?} after recovery ({} undecided); notifications {} (in-app {}, email {}, webhook {}); \
             fault: {}; loss: {}; outage: {}; {}",
            self.fault,
            self.requests,
            self.accepted,
            self.reserved,
            self.rejected,
            self.paid,
            self.confirmed,
            self.unpayable.len(),
            self.retries,
            self.gave_up,
            self.decided_after_recovery,
            self.undecided,
            self.delivered.notices,
            self.delivered.in_app,
            self.delivered.email,
            self.delivered.webhook,
            self.fault_proof,
            if self.fault.kills_store() {
                format!(
                    "{} ({})",
                    if self.loss_observed {
                        "observed"
                    } else {
                        "NOT observed"
                    },
                    self.loss_evidence
                )
            } else {
                "n/a".to_owned()
            },
            self.outage_evidence,
            if self.violations.is_empty() {
                "OK".to_owned()
            } else {
                format!(
                    "{} VIOLATIONS: {:?}",
                    self.violations.len(),
                    self.violations
                )
            }
        )
    }
}

/// The system, its fans and what it told them, reused by every run.
#[derive(Debug)]
pub struct Suite {
    pub system: System,
    pub api: Api,
    pub fans: Vec<Fan>,
    pub follower: Follower,
    runs: usize,
}

/// The booking processor's count of calls that outlasted their retry budget.
const GIVE_UP: &str = "booking_retries_exhausted_total";

/// The counters that show a store loss was seen: (booking processor, payments, notifier).
const LOSS_COUNTERS: [(Service, &str); 4] = [
    (
        Service::BookingProcessor,
        "booking_store_loss_detected_total",
    ),
    (Service::BookingProcessor, "booking_events_refolded_total"),
    (
        Service::PaymentProcessor,
        "payments_store_loss_replays_total",
    ),
    (Service::Notifier, "notifier_store_loss_replays_total"),
];

/// The counters of partitions read again after a failed store call (writes after the last
/// watermark may have been lost): reported, not proof of a loss.
const FAULT_REPLAY_COUNTERS: [(Service, &str); 2] = [
    (
        Service::PaymentProcessor,
        "payments_store_fault_replays_total",
    ),
    (Service::Notifier, "notifier_store_fault_replays_total"),
];

impl Suite {
    /// Starts everything and registers `fans` fans.
    pub async fn start(name: &str, fans: usize, recovery_source: &str) -> anyhow::Result<Suite> {
        let system = System::start(name, recovery_source).await?;
        let api = Api::new(&system.ingest_url)?;
        let admin = api
            .login(&system.admin_email, system.admin_password())
            .await?;
        let fans = api.fans(&admin, fans, &system.webhooks).await?;
        let follower = Follower::start(&system.services, system.codec.clone())?;
        Ok(Suite {
            system,
            api,
            fans,
            follower,
            runs: 0,
        })
    }

    async fn counters(&self, counters: &[(Service, &str)]) -> Vec<u64> {
        let mut values = Vec::new();
        for (service, name) in counters {
            values.push(self.system.counter(*service, name).await);
        }
        values
    }

    /// One sale with `fault` injected; returns what the checks found.
    pub async fn run(&mut self, fault: Fault, config: RunConfig) -> anyhow::Result<RunReport> {
        self.runs += 1;
        // A processor that just started may not own its partitions yet (readiness says only
        // that none waits): the fault must find it processing.
        let system = &self.system;
        crate::wait::until(
            "the booking processor owns its partitions",
            Duration::from_secs(120),
            || async {
                let owned = system
                    .counter(Service::BookingProcessor, "booking_partitions_owned")
                    .await;
                let ready = system::status(&system.readiness_url(Service::BookingProcessor)).await;
                (owned > 0 && ready == Some(200)).then_some(())
            },
        )
        .await?;
        self.api.refresh(&mut self.fans).await?;
        let admin = self
            .api
            .login(&self.system.admin_email, self.system.admin_password())
            .await
            .context("admin login")?;
        let name = format!("Chaos {:?} {}", fault, self.runs);
        let event_id = self
            .api
            .create_event(&admin, &name, config.capacity)
            .await?;
        let payer = Payer::start(
            &self.system.services,
            self.system.codec.clone(),
            self.api.clone(),
            &self.fans,
            &event_id,
        )?;
        let before = self.counters(&LOSS_COUNTERS).await;
        let replays_before = self.counters(&FAULT_REPLAY_COUNTERS).await;
        let gave_up_before = self
            .system
            .counter(Service::BookingProcessor, GIVE_UP)
            .await;
        let provider_before = self.system.provider.stats();
        let run_key = format!("{}-{}", crate::names::unique("chaos"), self.runs);

        // The sale, and the fault while it runs.
        let (api, fans) = (self.api.clone(), self.fans.clone());
        let sale = sale::flash_sale(&api, &fans, &event_id, &run_key, config.sale);
        // While the store is down, the booking processor's readiness is watched, and a
        // command of an event of its own goes straight to the log (as an organiser's edit
        // would), so the processor has a store write to give up on whatever the sale does.
        let (watching, watched) = tokio::sync::watch::channel(false);
        let readyz = self.system.readiness_url(Service::BookingProcessor);
        // Its own task: `inject` blocks its thread while the store restarts (block_in_place),
        // which would stop a future polled beside it for exactly the outage.
        let readiness = tokio::spawn(async move {
            let mut seen = Vec::new();
            if !matches!(fault, Fault::Store | Fault::Broker) {
                return seen;
            }
            let mut watched = watched;
            while !*watched.borrow() {
                let status = system::status(&readyz).await;
                if seen.last() != Some(&status) {
                    seen.push(status);
                }
                tokio::select! {
                    _ = watched.changed() => {}
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
            seen
        });
        let probe_key = format!("{run_key}-probe");
        let injected = async {
            tokio::time::sleep(config.fault_at).await;
            let down_for = if fault == Fault::Broker {
                config.broker_down_for
            } else {
                config.down_for
            };
            let injected = self.inject(fault, down_for, &probe_key).await;
            let _ = watching.send(true);
            injected
        };
        let (outcome, injected) = tokio::join!(sale, injected);
        let statuses = readiness.await.unwrap_or_default();
        let (fault_proof, recovered_at) = injected?;

        let mut violations = Vec::new();
        for (status, body) in &outcome.server_errors {
            violations.push(format!("ingest answered {status}: {body}"));
        }
        for (status, body) in outcome.refused.iter().take(5) {
            violations.push(format!("a booking was refused with {status}: {body}"));
        }
        let (undecided, _) =
            check::decisions(&self.follower, &outcome.accepted, check::SETTLE).await;
        let decided_after_recovery = recovered_at.elapsed();
        let (reserved, rejected) = check::exactly_one_decision(
            &self.follower,
            &outcome.accepted,
            config.capacity as usize,
            &mut violations,
        );
        // Every reservation gets paid (or its fan gives up), then confirmed.
        let _ = crate::wait::until(
            "every reservation paid",
            sale::PAY_WITHIN + Duration::from_secs(30),
            || {
                let done = payer.paid().len() + payer.failures().len();
                async move { (done >= reserved).then_some(()) }
            },
        )
        .await;
        // A 404 means ingest lost the order's own row (written before the record, acknowledged,
        // then lost with the store): the order is decided in Kafka and in the processor's
        // state, but its fan cannot see it. Reported apart: ingest's dual write is what the
        // log-only accept path replaces.
        let (unpayable, failed): (Vec<String>, Vec<String>) = payer
            .failures()
            .into_iter()
            .partition(|f| f.contains("404"));
        violations.extend(failed);
        let paid: HashSet<String> = payer.paid();
        let confirmed = check::payments(
            &self.system,
            &self.follower,
            &paid,
            provider_before.captures,
            provider_before.charges,
            &mut violations,
        )
        .await;
        check::audit(&self.system, &event_id, &mut violations).await;
        let orders: HashSet<String> = outcome.accepted.keys().cloned().collect();
        let delivered = check::notifications(
            &self.system,
            &self.follower,
            &self.fans,
            &orders,
            &mut violations,
        )
        .await;
        // A counter of a service restarted in this run starts from 0: count what it shows.
        let moved = |counters: &[(Service, &str)], before: &[u64], after: &[u64]| {
            counters
                .iter()
                .zip(before.iter().zip(after))
                .filter(|(_, (b, a))| a > b || (**b > **a && **a > 0))
                .map(|((_, name), (b, a))| format!("{name} {b}→{a}"))
                .collect::<Vec<String>>()
        };
        let after = self.counters(&LOSS_COUNTERS).await;
        let seen = moved(&LOSS_COUNTERS, &before, &after);
        let loss_observed = !seen.is_empty();
        let replays_after = self.counters(&FAULT_REPLAY_COUNTERS).await;
        let replayed = moved(&FAULT_REPLAY_COUNTERS, &replays_before, &replays_after);
        let outage_evidence = if fault == Fault::Store {
            let gave_up = self
                .system
                .counter(Service::BookingProcessor, GIVE_UP)
                .await;
            let not_ready = statuses.contains(&Some(503));
            if gave_up <= gave_up_before || !not_ready {
                violations.push(format!(
                    "the store was down for longer than the retry budget ({}), but the booking processor did not give a partition up: {GIVE_UP} {gave_up_before}→{gave_up}, /readyz {statuses:?}",
                    system::RETRY_BUDGET
                ));
            }
            // Taken again: every accepted order was decided (checked above) and it is ready.
            if let Err(e) = self.system.wait_ready(Service::BookingProcessor).await {
                violations.push(format!("the booking processor is not ready again: {e}"));
            }
            format!("{GIVE_UP} {gave_up_before}→{gave_up}, booking /readyz {statuses:?}")
        } else if fault == Fault::Broker {
            self.broker_outage_evidence(&outcome, &statuses, &mut violations)
                .await
        } else {
            "n/a".to_owned()
        };
        Ok(RunReport {
            fault,
            event_id,
            requests: config.sale.requests,
            accepted: outcome.accepted.len(),
            reserved,
            rejected,
            paid: paid.len(),
            confirmed,
            retries: outcome.retries,
            gave_up: outcome.gave_up,
            fault_proof,
            loss_evidence: format!(
                "{}; read again after failed store calls: {}",
                if seen.is_empty() {
                    "no counter moved".to_owned()
                } else {
                    seen.join(", ")
                },
                if replayed.is_empty() {
                    "none".to_owned()
                } else {
                    replayed.join(", ")
                }
            ),
            loss_observed,
            outage_evidence,
            decided_after_recovery,
            undecided: undecided.len(),
            unpayable,
            delivered,
            violations,
        })
    }

    /// The broker run's checks: while it was down ingest answered 503 with `Retry-After`
    /// (never a 500, which the sale records as a violation anyway), no answer took longer than
    /// the produce timeout allows, and every service (ingest's live streams too) is ready again
    /// without being restarted; the booking processor's readiness during the outage and its
    /// give-up counter are reported (whether it gives up depends on whether a batch was in
    /// flight; that every 202 was decided after the outage is checked for every run).
    async fn broker_outage_evidence(
        &self,
        outcome: &sale::SaleOutcome,
        booking_statuses: &[Option<u16>],
        violations: &mut Vec<String>,
    ) -> String {
        if outcome.unavailable == 0 {
            violations.push(
                "the broker was down, but ingest never answered 503 (did the outage happen?)"
                    .to_owned(),
            );
        }
        if outcome.unavailable_without_retry_after > 0 {
            violations.push(format!(
                "{} of {} 503 answers had no Retry-After",
                outcome.unavailable_without_retry_after, outcome.unavailable
            ));
        }
        if outcome.slowest_answer > system::INGEST_ANSWER_BOUND {
            violations.push(format!(
                "an answer took {:.1?}, longer than ingest's produce timeout allows ({:?})",
                outcome.slowest_answer,
                system::INGEST_ANSWER_BOUND
            ));
        }
        if outcome.no_answer > 0 {
            violations.push(format!(
                "{} requests got no answer (timed out or connection failed)",
                outcome.no_answer
            ));
        }
        let mut ready = Vec::new();
        let urls = Service::ALL
            .iter()
            .map(|s| (s.name(), self.system.readiness_url(*s)))
            .chain([(
                "ingest live streams",
                self.system.ingest_live_readiness_url(),
            )]);
        for (name, url) in urls {
            let resumed = crate::wait::until(
                &format!("{name} /readyz 200"),
                Duration::from_secs(120),
                || {
                    let url = url.clone();
                    async move { (system::status(&url).await == Some(200)).then_some(()) }
                },
            )
            .await;
            match resumed {
                Ok(()) => ready.push(name),
                Err(e) => violations.push(format!(
                    "{name} did not resume by itself after the broker came back: {e}"
                )),
            }
        }
        let gave_up = self
            .system
            .counter(Service::BookingProcessor, GIVE_UP)
            .await;
        format!(
            "{} answers 503 (all with Retry-After: {}), slowest answer {:.1?}; booking /readyz during the outage {booking_statuses:?}, {GIVE_UP} {gave_up}; ready again without a restart: {}",
            outcome.unavailable,
            outcome.unavailable_without_retry_after == 0,
            outcome.slowest_answer,
            ready.join(", ")
        )
    }

    /// Kills what `fault` names, waits `down_for`, starts it again; returns the proof and when
    /// everything was back.
    async fn inject(
        &mut self,
        fault: Fault,
        down_for: Duration,
        probe_key: &str,
    ) -> anyhow::Result<(String, Instant)> {
        let started = Instant::now();
        let (kafka, codec) = (self.system.services.kafka(), self.system.codec.clone());
        let system = &mut self.system;
        let mut proof = Vec::new();
        let kill_stack =
            |system: &System, service: &str, proof: &mut Vec<String>| -> anyhow::Result<()> {
                let pid = system.stack.pid(service);
                tokio::task::block_in_place(|| system.stack.kill(service))?;
                anyhow::ensure!(
                    system.stack.pid(service).is_none(),
                    "{service} still has a pid file"
                );
                proof.push(format!("{service} pid {pid:?} SIGKILLed"));
                Ok(())
            };
        let restart_stack =
            |system: &System, service: &str, proof: &mut Vec<String>| -> anyhow::Result<()> {
                tokio::task::block_in_place(|| system.stack.up(&[service]))?;
                proof.push(format!(
                    "{service} back as pid {:?} after {:.0?}",
                    system.stack.pid(service),
                    started.elapsed()
                ));
                Ok(())
            };
        match fault {
            Fault::Store => kill_stack(system, STORE, &mut proof)?,
            Fault::Broker => kill_stack(system, BROKER, &mut proof)?,
            Fault::StoreAndBookingProcessor => {
                kill_stack(system, STORE, &mut proof)?;
                system.kill(Service::BookingProcessor)?;
                proof.push("booking processor SIGKILLed".to_owned());
            }
            Fault::BookingProcessor | Fault::PaymentProcessor | Fault::Notifier => {
                let service = match fault {
                    Fault::BookingProcessor => Service::BookingProcessor,
                    Fault::PaymentProcessor => Service::PaymentProcessor,
                    _ => Service::Notifier,
                };
                system.kill(service)?;
                proof.push(format!("{} SIGKILLed", service.name()));
            }
        }
        if fault == Fault::Store {
            probe_command(&kafka, &codec, probe_key)
                .await
                .context("producing the probe command while the store is down")?;
            proof.push("a probe command produced while the store was down".to_owned());
        }
        tokio::time::sleep(down_for).await;
        match fault {
            Fault::Store => restart_stack(system, STORE, &mut proof)?,
            Fault::Broker => restart_stack(system, BROKER, &mut proof)?,
            Fault::StoreAndBookingProcessor => {
                restart_stack(system, STORE, &mut proof)?;
                system.spawn(Service::BookingProcessor)?;
                system.wait_ready(Service::BookingProcessor).await?;
                proof.push(format!(
                    "booking processor restarted after {:.0?}",
                    started.elapsed()
                ));
            }
            Fault::BookingProcessor | Fault::PaymentProcessor | Fault::Notifier => {
                let service = match fault {
                    Fault::BookingProcessor => Service::BookingProcessor,
                    Fault::PaymentProcessor => Service::PaymentProcessor,
                    _ => Service::Notifier,
                };
                system.spawn(service)?;
                system.wait_ready(service).await?;
                proof.push(format!(
                    "{} restarted after {:.0?}",
                    service.name(),
                    started.elapsed()
                ));
            }
        }
        Ok((proof.join("; "), Instant::now()))
    }
}

/// Produces an `EventUpserted` of an event of its own straight to `booking.commands` (as an
/// organiser's edit would arrive), so the booking processor has a store write to make.
async fn probe_command(
    kafka: &boxoffice_topics::kafka::KafkaArgs,
    codec: &boxoffice_avro::Codec,
    key: &str,
) -> anyhow::Result<()> {
    use boxoffice_avro::records::{BookingCommand, EventUpserted, topic};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let now = boxoffice_avro::clock::now_millis();
    let event_id = boxoffice_avro::ids::record_id("chaos-probe", &[key]);
    let command = BookingCommand::EventUpserted(EventUpserted {
        record_id: boxoffice_avro::ids::record_id("chaos-probe-upsert", &[key]),
        event_id: event_id.clone(),
        name: format!("Chaos probe {key}"),
        category_id: None,
        capacity: 1,
        price_minor: 100,
        currency: "EUR".into(),
        sale_starts_at: now,
        sale_ends_at: now + 3_600_000,
        hold_seconds: 600,
        max_per_order: 1,
        max_per_user: 1,
        occurred_at: now,
    });
    let payload = codec
        .encode_group(topic::BOOKING_COMMANDS, &command)
        .await?;
    let producer: FutureProducer = kafka.durable_producer_config().create()?;
    producer
        .send(
            FutureRecord::to(topic::BOOKING_COMMANDS)
                .key(event_id.as_bytes())
                .payload(&payload),
            Duration::from_secs(15),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("producing the probe: {e}"))?;
    Ok(())
}
