//! Webhook isolation: one worker and one bounded queue per endpoint. A lane hands a record's
//! deliveries to the workers of its endpoints and goes on with the next record; the record is
//! final (its offset may be committed) once every endpoint's delivery is. An endpoint whose
//! queue is full, or that is suspended after failing (see [`EndpointHealth`]), has the delivery
//! parked at once: dead-lettered with the reason and its row `DEAD`. So a slow or hung endpoint
//! delays only its own deliveries, and holds a record in flight for at most its attempts before
//! the suspension.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::notify::endpoint_health::{Admission, EndpointHealth, HealthLimits};

use super::*;

/// Endpoints with a worker at once; a delivery to one more is parked (counted).
const MAX_ENDPOINT_WORKERS: usize = 10_000;
/// A worker with nothing to do for this long ends (its endpoint's health goes with it).
const WORKER_IDLE: Duration = Duration::from_secs(60);
/// An attempt in flight for longer than half the webhook timeout, and at least this, means the
/// endpoint is not keeping up: a delivery that finds its queue full is then parked instead of
/// waiting for room.
const MIN_STALL: Duration = Duration::from_secs(1);

/// One delivery to one endpoint, with the record it belongs to.
pub(super) struct Job {
    pub message: Arc<OwnedMessage>,
    pub notification: Arc<NotificationRequested>,
    pub endpoint: WebhookEndpoint,
    pub record: Arc<RecordProgress>,
}

/// How one record's deliveries are going; the last to finish reports the record to the main
/// loop (done, or its partition given up).
pub(super) struct RecordProgress {
    partition: i32,
    offset: i64,
    epoch: u64,
    remaining: AtomicUsize,
    outcome: Mutex<Option<Interrupted>>,
    done: mpsc::UnboundedSender<DoneReport>,
    gave_up: mpsc::UnboundedSender<GaveUpReport>,
}

impl RecordProgress {
    pub(super) fn new(
        message: &OwnedMessage,
        epoch: u64,
        deliveries: usize,
        done: mpsc::UnboundedSender<DoneReport>,
        gave_up: mpsc::UnboundedSender<GaveUpReport>,
    ) -> Arc<Self> {
        Arc::new(RecordProgress {
            partition: message.partition(),
            offset: message.offset(),
            epoch,
            remaining: AtomicUsize::new(deliveries),
            outcome: Mutex::new(None),
            done,
            gave_up,
        })
    }

    /// One delivery ended. A stop or a give-up wins over success: the record is then not
    /// reported done (it is read again).
    pub(super) fn finish(&self, result: Result<(), Interrupted>) {
        let mut outcome = self.outcome.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(interrupted) = result
            && !matches!(*outcome, Some(Interrupted::Stopped))
        {
            *outcome = Some(interrupted);
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        match outcome.take() {
            None => {
                let _ = self.done.send((self.partition, self.offset, self.epoch));
            }
            Some(Interrupted::GaveUp(reason)) => {
                let _ = self.gave_up.send((self.partition, reason, self.epoch));
            }
            Some(Interrupted::Stopped) => {}
        }
    }
}

struct Worker {
    queue: mpsc::Sender<Job>,
    health: Arc<Mutex<EndpointHealth>>,
    generation: u64,
}

/// What became of a job handed to [`EndpointWorkers::submit`].
enum Submitted {
    Queued,
    /// The endpoint's queue is full: wait for room while it keeps up.
    Full {
        queue: mpsc::Sender<Job>,
        health: Arc<Mutex<EndpointHealth>>,
        job: Job,
    },
    /// Too many endpoints with workers, or the worker is gone: park it.
    Refused {
        job: Job,
        why: String,
    },
}

/// The workers of the endpoints that have deliveries, and their health.
pub(super) struct EndpointWorkers {
    queue: usize,
    limits: HealthLimits,
    workers: Mutex<(HashMap<String, Worker>, u64)>,
    tasks: Mutex<tokio::task::JoinSet<()>>,
}

impl EndpointWorkers {
    pub(super) fn new(queue: usize, limits: HealthLimits) -> Self {
        EndpointWorkers {
            queue: queue.max(1),
            limits,
            workers: Mutex::new((HashMap::new(), 0)),
            tasks: Mutex::new(tokio::task::JoinSet::new()),
        }
    }

    /// Waits for every worker to end (they end on stop).
    pub(super) async fn join(&self) {
        let mut tasks =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        while tasks.join_next().await.is_some() {}
    }

    /// Queues `job` on its endpoint's worker (started if needed), or says why it could not.
    fn submit(
        &self,
        runner: &Arc<ChannelRunner>,
        job: Job,
        stop: &watch::Receiver<bool>,
    ) -> Box<Submitted> {
        // Sends happen under the lock, or with a sender taken under it while the queue is full
        // (so not idle), and a worker leaves the map under it only when its queue is empty and
        // it has been idle: a queued job always has a worker.
        let mut guard = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        let (workers, generations) = &mut *guard;
        let endpoint_id = job.endpoint.endpoint_id.clone();
        if !workers.contains_key(&endpoint_id) {
            if workers.len() >= MAX_ENDPOINT_WORKERS {
                let why = format!("{MAX_ENDPOINT_WORKERS} endpoints are busy");
                return Box::new(Submitted::Refused { job, why });
            }
            *generations += 1;
            let (queue, receiver) = mpsc::channel(self.queue);
            let health = Arc::new(Mutex::new(EndpointHealth::default()));
            let worker = run_worker(
                Arc::clone(runner),
                endpoint_id.clone(),
                *generations,
                receiver,
                Arc::clone(&health),
                self.limits,
                stop.clone(),
            );
            self.tasks
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .spawn(worker);
            workers.insert(
                endpoint_id.clone(),
                Worker {
                    queue,
                    health,
                    generation: *generations,
                },
            );
        }
        let Some(worker) = workers.get(&endpoint_id) else {
            unreachable!("inserted above when missing");
        };
        Box::new(match worker.queue.try_send(job) {
            Ok(()) => Submitted::Queued,
            Err(mpsc::error::TrySendError::Full(job)) => Submitted::Full {
                queue: worker.queue.clone(),
                health: Arc::clone(&worker.health),
                job,
            },
            Err(mpsc::error::TrySendError::Closed(job)) => Submitted::Refused {
                job,
                why: "its worker stopped".to_owned(),
            },
        })
    }

    /// Removes the worker of `endpoint_id` if it is still `generation` and nothing is in its
    /// `queue`: looked at under the lock that every send takes, so no job lands after.
    fn retire(&self, endpoint_id: &str, generation: u64, queue: &mpsc::Receiver<Job>) -> bool {
        let mut guard = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        let current = guard.0.get(endpoint_id).map(|w| w.generation);
        if !queue.is_empty() || current != Some(generation) {
            return false;
        }
        guard.0.remove(endpoint_id);
        true
    }
}

/// One endpoint's worker: its deliveries one at a time, in the order they were queued (one
/// user's records reach it in log order), until stop or idle.
async fn run_worker(
    runner: Arc<ChannelRunner>,
    endpoint_id: String,
    generation: u64,
    mut queue: mpsc::Receiver<Job>,
    health: Arc<Mutex<EndpointHealth>>,
    limits: HealthLimits,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let next = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            next = tokio::time::timeout(WORKER_IDLE, queue.recv()) => next,
        };
        let job = match next {
            Ok(Some(job)) => job,
            Ok(None) => return,
            Err(_idle) => {
                let Some(endpoints) = runner.endpoints.as_ref() else {
                    return;
                };
                if endpoints.retire(&endpoint_id, generation, &queue) {
                    return;
                }
                continue;
            }
        };
        // Given up, revoked or read again since it was queued: the newer reading handles it.
        if runner.epoch(job.message.partition()) != job.record.epoch {
            job.record.finish(Err(Interrupted::Stopped));
            continue;
        }
        let result = runner
            .deliver(
                &job.message,
                &job.notification,
                Target::Webhook(job.endpoint),
                Some((&*health, &limits)),
                &mut stop,
            )
            .await;
        job.record.finish(result);
    }
}

impl ChannelRunner {
    /// Hands a record's deliveries to its endpoints' workers (see the module docs); parks
    /// those that cannot be queued.
    pub(super) async fn dispatch_webhooks(
        self: &Arc<Self>,
        message: &OwnedMessage,
        notification: NotificationRequested,
        endpoints: Vec<WebhookEndpoint>,
        record: Arc<RecordProgress>,
        stop: &mut watch::Receiver<bool>,
    ) {
        let Some(workers) = self.endpoints.as_ref() else {
            record.finish(Err(Interrupted::GaveUp(
                "the webhook channel has no endpoint workers".to_owned(),
            )));
            return;
        };
        let (message, notification) = (Arc::new(message.clone()), Arc::new(notification));
        for endpoint in endpoints {
            let job = Job {
                message: Arc::clone(&message),
                notification: Arc::clone(&notification),
                endpoint,
                record: Arc::clone(&record),
            };
            let (job, why) = match *workers.submit(self, job, stop) {
                Submitted::Queued => continue,
                Submitted::Refused { job, why } => (job, why),
                Submitted::Full { queue, health, job } => {
                    match self.wait_for_room(queue, &health, job, stop).await {
                        Some(parked) => parked,
                        None => continue,
                    }
                }
            };
            let key = job.endpoint.endpoint_id.clone();
            let reason = format!("webhook delivery to {key} parked: {why}");
            let result = self
                .park_delivery(&job.message, &job.notification, &key, reason, stop)
                .await;
            job.record.finish(result);
        }
    }

    /// Waits for room in a full endpoint queue while the endpoint keeps up (its deliveries
    /// succeed without stalling); gives the job back to be parked once it does not, or after
    /// the time a failing endpoint needs to be suspended. `None`: queued (or stopping).
    async fn wait_for_room(
        &self,
        queue: mpsc::Sender<Job>,
        health: &Mutex<EndpointHealth>,
        job: Job,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<(Job, String)> {
        let settings = &self.deps.settings;
        let stall = (settings.webhook_timeout / 2).max(MIN_STALL);
        let deadline = Instant::now()
            + settings
                .webhook_timeout
                .saturating_mul(settings.webhook_health_limits().suspend_after)
                .max(stall);
        let full = format!("{} deliveries are waiting for it", queue.max_capacity());
        loop {
            // Bounded by `deadline`.
            let now = Instant::now();
            let keeping_up = health
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .keeping_up(now, stall);
            if !keeping_up {
                return Some((job, format!("{full} and it is not keeping up")));
            }
            if now >= deadline {
                return Some((job, full));
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {
                    job.record.finish(Err(Interrupted::Stopped));
                    return None;
                }
                room = tokio::time::timeout(MIN_STALL, queue.reserve()) => match room {
                    Ok(Ok(permit)) => {
                        permit.send(job);
                        return None;
                    }
                    Ok(Err(_closed)) => {
                        job.record.finish(Err(Interrupted::Stopped));
                        return None;
                    }
                    Err(_waited) => {}
                },
            }
        }
    }

    /// Parks one delivery: dead-lettered with `reason`, its row `DEAD` (counted).
    pub(super) async fn park_delivery(
        &self,
        message: &OwnedMessage,
        n: &NotificationRequested,
        key: &str,
        reason: String,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), Interrupted> {
        self.deps.metrics.webhooks_parked.inc_by(1);
        let attempts = self
            .store_retry(stop, "reading the delivery", || {
                self.deps
                    .store
                    .delivery(n.notification_id(), self.channel.name(), key)
            })
            .await?
            .map_or(0, |d| d.attempts);
        self.give_up(message, n, key, attempts, reason, stop).await
    }

    /// Whether `health` lets a delivery go now (always without one).
    pub(super) fn admission(
        &self,
        health: Option<(&Mutex<EndpointHealth>, &HealthLimits)>,
    ) -> Admission {
        health.map_or(Admission::Send, |(health, _)| {
            health
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .admit(Instant::now())
        })
    }

    /// The endpoint answered 410 Gone (it is disabled): its queued deliveries are dropped.
    pub(super) fn note_gone(&self, health: Option<(&Mutex<EndpointHealth>, &HealthLimits)>) {
        if let Some((health, _)) = health {
            health.lock().unwrap_or_else(PoisonError::into_inner).gone();
        }
    }

    /// An attempt to the endpoint starts (`true`) or ended without telling anything about
    /// the endpoint (`false`).
    pub(super) fn note_attempt(
        &self,
        health: Option<(&Mutex<EndpointHealth>, &HealthLimits)>,
        starts: bool,
    ) {
        if let Some((health, _)) = health {
            let mut health = health.lock().unwrap_or_else(PoisonError::into_inner);
            if starts {
                health.started(Instant::now());
            } else {
                health.ended();
            }
        }
    }

    /// Records an attempt's result in the endpoint's health (counted when it suspends).
    pub(super) fn note_health(
        &self,
        health: Option<(&Mutex<EndpointHealth>, &HealthLimits)>,
        key: &str,
        succeeded: bool,
    ) {
        let Some((health, limits)) = health else {
            return;
        };
        let mut health = health.lock().unwrap_or_else(PoisonError::into_inner);
        if succeeded {
            health.succeeded();
        } else if let Some(until) = health.failed(Instant::now(), limits) {
            self.deps.metrics.endpoints_suspended.inc_by(1);
            let seconds = until.saturating_duration_since(Instant::now()).as_secs();
            // Never the URL (see `disable`).
            info!(endpoint_id = %key, seconds, "webhook endpoint suspended after failing repeatedly");
        }
    }
}
