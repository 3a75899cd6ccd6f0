//! Helpers for end-to-end tests of the pipeline: a private set of topics and a keyspace per
//! test, producing commands the way ingest does, reading what the processors produced, and
//! running the processor either in this process or as its real binary.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use boxoffice_avro::Codec;
use boxoffice_avro::records::{BookingCommand, Record, RecordGroup};
use boxoffice_processors::booking::runtime::{BookingDeps, BookingSettings, Topics, run};
use boxoffice_processors::metrics::BookingMetrics;
use boxoffice_store::inventory::InventoryStore;
use boxoffice_store::orders::OrderRows;
use boxoffice_store::schema::{Keyspace, SchemaSettings, ensure_schema};
use boxoffice_topics::names::TopicPrefix;
use futures::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use scylla::client::session::Session;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{Services, names};

/// Partitions of `booking.commands` in tests: several, so events spread and rebalances move
/// something.
pub const COMMAND_PARTITIONS: i32 = 4;

/// One test's private pipeline: topics under a unique prefix, a unique keyspace.
pub struct Pipeline {
    pub services: Services,
    pub prefix: String,
    pub topics: Topics,
    pub keyspace: String,
    pub session: Arc<Session>,
    pub codec: Arc<Codec>,
    pub producer: FutureProducer,
}

impl Pipeline {
    /// Creates the topics and the schema.
    pub async fn create(services: &Services, name: &str) -> anyhow::Result<Pipeline> {
        Self::create_with(services, name, COMMAND_PARTITIONS).await
    }

    /// Like `create`, with `command_partitions` partitions of `booking.commands`.
    pub async fn create_with(
        services: &Services,
        name: &str,
        command_partitions: i32,
    ) -> anyhow::Result<Pipeline> {
        let unique = names::unique(name);
        let prefix = format!("{unique}.");
        let topics = Topics::with_prefix(&prefix);
        let kafka = services.kafka();
        let admin: AdminClient<DefaultClientContext> = kafka.client_config().create()?;
        let specs = [
            (&topics.commands, command_partitions),
            (&topics.orders, 3),
            (&topics.payments, 3),
            (&topics.availability, command_partitions),
            (&topics.notifications, 3),
            (&topics.dead_letters, 1),
            (&topics.progress, command_partitions),
        ];
        let new_topics: Vec<NewTopic> = specs
            .iter()
            .map(|(name, partitions)| {
                let topic = NewTopic::new(name, *partitions, TopicReplication::Fixed(1));
                // As in topics/topics.yaml: progress is compacted (latest per event).
                if **name == topics.progress {
                    topic.set("cleanup.policy", "compact")
                } else {
                    topic
                }
            })
            .collect();
        for result in admin
            .create_topics(
                &new_topics,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await?
        {
            result.map_err(|(topic, e)| anyhow::anyhow!("creating {topic}: {e}"))?;
        }
        let session = Arc::new(services.scylla().connect().await?);
        let keyspace = unique.clone();
        let settings =
            SchemaSettings::local(Keyspace::new(&keyspace).map_err(|e| anyhow::anyhow!("{e}"))?);
        ensure_schema(&session, &settings).await?;
        let codec = Arc::new(Codec::new(&services.registry())?);
        let producer: FutureProducer = kafka.durable_producer_config().create()?;
        Ok(Pipeline {
            services: services.clone(),
            prefix,
            topics,
            keyspace,
            session,
            codec,
            producer,
        })
    }

    pub async fn store(&self) -> anyhow::Result<Arc<InventoryStore>> {
        let keyspace = Keyspace::new(&self.keyspace).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Arc::new(
            InventoryStore::new(self.session.clone(), &keyspace).await?,
        ))
    }

    pub fn settings(&self) -> BookingSettings {
        BookingSettings {
            group_id: format!("{}booking", self.prefix),
            topic_prefix: TopicPrefix::new(&self.prefix)
                .expect("test prefixes are valid topic-name starts"),
            max_batch_records: 2000,
            max_batch_wait: Duration::from_millis(20),
            retry_budget: Duration::from_secs(30),
            recovery_source: Default::default(),
        }
    }

    /// Starts the booking processor in this process.
    pub async fn start_processor(&self) -> anyhow::Result<RunningProcessor> {
        self.start_processor_with(self.settings()).await
    }

    /// Starts the booking processor in this process with `settings`.
    pub async fn start_processor_with(
        &self,
        settings: BookingSettings,
    ) -> anyhow::Result<RunningProcessor> {
        let metrics = Arc::new(BookingMetrics::default());
        let keyspace = Keyspace::new(&self.keyspace).map_err(|e| anyhow::anyhow!("{e}"))?;
        let deps = BookingDeps {
            order_rows: OrderRows::new(self.session.clone(), &keyspace).await?,
            kafka: self.services.kafka(),
            codec: self.codec.clone(),
            store: self.store().await?,
            settings,
            metrics: metrics.clone(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            run(deps, async {
                let _ = stopped.await;
            })
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
        });
        Ok(RunningProcessor {
            stop: Some(stop),
            task,
            metrics,
        })
    }

    /// Produces commands keyed by event id, as ingest does, all in flight at once.
    pub async fn produce_commands(&self, commands: &[BookingCommand]) -> anyhow::Result<()> {
        for chunk in commands.chunks(5000) {
            let mut frames = Vec::with_capacity(chunk.len());
            for command in chunk {
                frames.push((
                    command.key().to_owned(),
                    self.codec
                        .encode_group(&self.topics.commands, command)
                        .await?,
                ));
            }
            let sends = frames.iter().map(|(key, payload)| {
                self.producer.send(
                    FutureRecord::to(&self.topics.commands)
                        .key(key.as_bytes())
                        .payload(payload),
                    Duration::from_secs(30),
                )
            });
            for result in futures::future::join_all(sends).await {
                result.map_err(|(e, _)| anyhow::anyhow!("producing a command: {e}"))?;
            }
        }
        Ok(())
    }

    /// Produces raw bytes to the commands topic (poison records).
    pub async fn produce_raw(&self, key: &str, payload: &[u8]) -> anyhow::Result<()> {
        self.producer
            .send(
                FutureRecord::to(&self.topics.commands)
                    .key(key)
                    .payload(payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
        Ok(())
    }

    /// A consumer reading `topic` from the beginning, committed records only.
    pub fn reader(&self, topic: &str) -> anyhow::Result<TopicReader> {
        let consumer: StreamConsumer = self
            .services
            .kafka()
            .client_config()
            .set("group.id", names::unique("reader"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()?;
        consumer.subscribe(&[topic])?;
        Ok(TopicReader {
            consumer,
            codec: self.codec.clone(),
            seen: HashMap::new(),
            duplicates: 0,
        })
    }
}

/// Each test's keyspace and topics are dropped when its pipeline goes out of scope (also when
/// the test fails): a long suite would otherwise fill the CQL store's heap with keyspaces.
/// The drop runs on its own thread and runtime with fresh clients, so it works from any test
/// runtime.
impl Drop for Pipeline {
    fn drop(&mut self) {
        let services = self.services.clone();
        let keyspace = self.keyspace.clone();
        let topics = [
            self.topics.commands.clone(),
            self.topics.orders.clone(),
            self.topics.payments.clone(),
            self.topics.availability.clone(),
            self.topics.notifications.clone(),
            self.topics.dead_letters.clone(),
            self.topics.progress.clone(),
        ];
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let session = services.scylla().connect().await?;
                session
                    .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), &[])
                    .await?;
                let admin: AdminClient<DefaultClientContext> =
                    services.kafka().client_config().create()?;
                let names: Vec<&str> = topics.iter().map(String::as_str).collect();
                admin.delete_topics(&names, &AdminOptions::new()).await?;
                anyhow::Ok(())
            })
        });
        if let Ok(Err(e)) = cleanup.join() {
            eprintln!("cleaning up pipeline {}: {e}", self.prefix);
        }
    }
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("prefix", &self.prefix)
            .field("keyspace", &self.keyspace)
            .finish_non_exhaustive()
    }
}

/// Reads a topic, deduplicating by record id as every boxoffice consumer does.
pub struct TopicReader {
    consumer: StreamConsumer,
    codec: Arc<Codec>,
    seen: HashMap<String, ()>,
    /// Records delivered again with an id already seen (replays after a crash).
    pub duplicates: usize,
}

impl std::fmt::Debug for TopicReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicReader")
            .field("seen", &self.seen.len())
            .field("duplicates", &self.duplicates)
            .finish_non_exhaustive()
    }
}

/// A raw record, for topics read without decoding (dead letters' headers).
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, String)>,
}

impl TopicReader {
    /// Reads group records until `done` says the collection is complete, or fails after
    /// `timeout`. Returns every distinct record (first delivery of each id), in log order.
    pub async fn read_group_until<G: RecordGroup>(
        &mut self,
        timeout: Duration,
        done: impl FnMut(&[G]) -> bool,
    ) -> anyhow::Result<Vec<G>> {
        let codec = self.codec.clone();
        self.read_distinct(
            timeout,
            done,
            <G as RecordGroup>::record_id,
            move |payload| {
                let codec = codec.clone();
                async move {
                    codec
                        .decode_group::<G>(&payload)
                        .await
                        .map_err(anyhow::Error::from)
                }
            },
        )
        .await
    }

    /// Like `read_group_until`, for a topic of one record type.
    pub async fn read_until<R: Record>(
        &mut self,
        timeout: Duration,
        done: impl FnMut(&[R]) -> bool,
    ) -> anyhow::Result<Vec<R>> {
        let codec = self.codec.clone();
        self.read_distinct(timeout, done, <R as Record>::record_id, move |payload| {
            let codec = codec.clone();
            async move {
                codec
                    .decode_as::<R>(&payload)
                    .await
                    .map_err(anyhow::Error::from)
            }
        })
        .await
    }

    /// The loop behind both readers: decode, drop ids already seen, stop when `done`.
    async fn read_distinct<T, Fut>(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&[T]) -> bool,
        record_id: fn(&T) -> &str,
        decode: impl Fn(Vec<u8>) -> Fut,
    ) -> anyhow::Result<Vec<T>>
    where
        Fut: std::future::Future<Output = anyhow::Result<T>>,
    {
        let mut records: Vec<T> = Vec::new();
        let read = async {
            while !done(&records) {
                let message = self.consumer.recv().await?;
                let Some(payload) = message.payload() else {
                    continue;
                };
                let record = decode(payload.to_vec()).await?;
                if self
                    .seen
                    .insert(record_id(&record).to_owned(), ())
                    .is_some()
                {
                    self.duplicates += 1;
                    continue;
                }
                records.push(record);
            }
            anyhow::Ok(())
        };
        tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "timed out after {timeout:?}; read so far: {}",
                    records.len()
                )
            })
            .and_then(|r| r)?;
        Ok(records)
    }

    /// Reads `count` raw records.
    pub async fn read_raw(
        &mut self,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<RawRecord>> {
        let mut records = Vec::new();
        let mut stream = self.consumer.stream();
        let read = async {
            while records.len() < count {
                let message = stream.next().await.context("stream ended")??;
                let headers = message
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|header| {
                                let value = header
                                    .value
                                    .map(|v| String::from_utf8_lossy(v).into_owned());
                                (header.key.to_owned(), value.unwrap_or_default())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                records.push(RawRecord {
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec),
                    headers,
                });
            }
            anyhow::Ok(())
        };
        tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| anyhow::anyhow!("timed out"))??;
        Ok(records)
    }
}

/// A booking processor running in this process.
#[derive(Debug)]
pub struct RunningProcessor {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
    pub metrics: Arc<BookingMetrics>,
}

impl RunningProcessor {
    /// Asks it to finish its batch and leave the group; waits for that.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), self.task).await??
    }
}

/// The `boxoffice-processor` binary next to the test binaries. `scripts/test` builds every
/// binary before the tests run; run `cargo build --workspace --bins` when running tests alone.
pub fn processor_binary() -> anyhow::Result<PathBuf> {
    workspace_binary("boxoffice-processor")
}

/// A binary of this workspace, built next to the test binary (`target/<profile>/<name>`).
pub fn workspace_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test binary>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("test binary is not in target/<profile>/deps")?;
    let binary = profile_dir.join(name);
    anyhow::ensure!(
        binary.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
        binary.display()
    );
    Ok(binary)
}

// ------------------------------------------------------------------------- payment processor

impl Pipeline {
    /// The payment processor's settings for this pipeline: its own group, the sandbox with
    /// short delays, ledger in memory.
    pub fn payment_settings(&self) -> boxoffice_processors::payments::runtime::PaymentSettings {
        boxoffice_processors::payments::runtime::PaymentSettings {
            group_id: format!("{}payments", self.prefix),
            topic_prefix: TopicPrefix::new(&self.prefix)
                .expect("test prefixes are valid topic-name starts"),
            max_batch_records: 500,
            max_batch_wait: Duration::from_millis(20),
            gateway: "sandbox".to_owned(),
            sandbox_slow: Duration::from_millis(300),
            sandbox_pending: Duration::from_millis(300),
            sandbox_ledger: None,
            retry_budget: Duration::from_secs(30),
            provider: Default::default(),
        }
    }

    pub async fn payment_store(
        &self,
    ) -> anyhow::Result<Arc<boxoffice_store::payments::PaymentStore>> {
        let keyspace = Keyspace::new(&self.keyspace).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Arc::new(
            boxoffice_store::payments::PaymentStore::new(self.session.clone(), &keyspace).await?,
        ))
    }

    /// The consumers' watermarks in this pipeline's keyspace.
    pub async fn watermarks(
        &self,
    ) -> anyhow::Result<Arc<boxoffice_store::watermarks::WatermarkStore>> {
        let keyspace = Keyspace::new(&self.keyspace).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Arc::new(
            boxoffice_store::watermarks::WatermarkStore::new(self.session.clone(), &keyspace)
                .await?,
        ))
    }

    /// Starts the payment processor in this process with [`Pipeline::payment_settings`].
    pub async fn start_payment_processor(&self) -> anyhow::Result<RunningPaymentProcessor> {
        self.start_payment_processor_with(self.payment_settings())
            .await
    }

    pub async fn start_payment_processor_with(
        &self,
        settings: boxoffice_processors::payments::runtime::PaymentSettings,
    ) -> anyhow::Result<RunningPaymentProcessor> {
        let watermarks = self.watermarks().await?;
        self.start_payment_processor_watermarked(settings, watermarks)
            .await
    }

    /// [`start_payment_processor_with`](Self::start_payment_processor_with), its watermarks
    /// read and written through `watermarks`.
    pub async fn start_payment_processor_watermarked(
        &self,
        settings: boxoffice_processors::payments::runtime::PaymentSettings,
        watermarks: Arc<boxoffice_store::watermarks::WatermarkStore>,
    ) -> anyhow::Result<RunningPaymentProcessor> {
        use boxoffice_processors::payments::runtime::{
            PaymentDeps, PaymentMetrics, run as run_payments,
        };
        let metrics = Arc::new(PaymentMetrics::default());
        let gateway = Arc::new(settings.gateway()?);
        let deps = PaymentDeps {
            kafka: self.services.kafka(),
            codec: self.codec.clone(),
            store: self.payment_store().await?,
            watermarks,
            gateway: gateway.clone(),
            settings,
            policy: Default::default(),
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
        Ok(RunningPaymentProcessor {
            stop: Some(stop),
            task,
            metrics,
            gateway,
        })
    }

    /// Produces records to `payments.requests` keyed by order id, as ingest (submissions) and
    /// the booking processor (requests, refunds) do.
    pub async fn produce_payment_requests(
        &self,
        requests: &[boxoffice_avro::records::PaymentRequest],
    ) -> anyhow::Result<()> {
        for request in requests {
            let payload = self
                .codec
                .encode_group(&self.topics.payments, request)
                .await?;
            self.producer
                .send(
                    FutureRecord::to(&self.topics.payments)
                        .key(request.key().as_bytes())
                        .payload(&payload),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| anyhow::anyhow!("producing a payment request: {e}"))?;
        }
        Ok(())
    }
}

/// A payment processor running in this process.
#[derive(Debug)]
pub struct RunningPaymentProcessor {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
    pub metrics: Arc<boxoffice_processors::payments::runtime::PaymentMetrics>,
    /// The in-process sandbox provider (its ledger and replay count).
    pub gateway: Arc<boxoffice_processors::payments::gateway::Gateway>,
}

impl RunningPaymentProcessor {
    /// Asks it to finish its batch and leave the group; waits for that.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), self.task).await??
    }
}
