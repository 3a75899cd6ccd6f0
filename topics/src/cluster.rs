//! The Kafka side of the CLI: reads what a cluster has (metadata, topic configs with their
//! source, watermarks, consumer group offsets) and carries out plan changes through the admin
//! API. Every call is bounded by `--kafka-timeout`: a broker that does not answer is an error
//! naming the setting, never a hang.
//!
//! librdkafka's metadata, watermark and offset calls block their thread, so they run on
//! tokio's blocking pool; admin calls are futures, wrapped in an outer timeout in case the
//! broker never answers the request at all.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic,
    ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::kafka::KafkaArgs;
use crate::plan::{ClusterSnapshot, ObservedTopic, Scope};

/// Kafka could not do what was asked; each message says what and where.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "Kafka client settings are invalid (--bootstrap-servers / KAFKA_BOOTSTRAP_SERVERS = {servers}): {reason}"
    )]
    Settings { servers: String, reason: String },
    #[error(
        "Kafka is unreachable at {servers} (no answer within {timeout}; set --bootstrap-servers / KAFKA_BOOTSTRAP_SERVERS and --kafka-timeout, or start the stack with `scripts/stack up`): {reason}"
    )]
    Unreachable {
        servers: String,
        timeout: String,
        reason: String,
    },
    #[error("{what}: no answer from Kafka at {servers} within {timeout} (--kafka-timeout)")]
    Timeout {
        what: String,
        servers: String,
        timeout: String,
    },
    #[error("{what} failed: {reason}")]
    Failed { what: String, reason: String },
}

/// One broker as metadata lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Broker {
    pub id: i32,
    pub host: String,
    pub port: i32,
}

/// One partition as metadata lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionMeta {
    pub id: i32,
    pub leader: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
}

/// One topic as metadata lists it; `error` is set while e.g. it is being deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicMeta {
    pub partitions: Vec<PartitionMeta>,
    pub error: Option<String>,
}

impl TopicMeta {
    pub fn replication_factor(&self) -> u16 {
        self.partitions
            .iter()
            .map(|p| u16::try_from(p.replicas.len()).unwrap_or(u16::MAX))
            .min()
            .unwrap_or(0)
    }
}

/// An owned copy of cluster metadata (librdkafka's borrows the client).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MetadataView {
    pub brokers: Vec<Broker>,
    pub topics: BTreeMap<String, TopicMeta>,
}

/// Where a config value comes from, in operator words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Set on the topic itself.
    Override,
    /// Set in the broker's configuration (static file or dynamic broker config).
    Broker,
    /// Kafka's built-in default.
    Default,
    Unknown,
}

impl Source {
    fn from_kafka(source: &ConfigSource) -> Source {
        match source {
            ConfigSource::DynamicTopic => Source::Override,
            ConfigSource::DynamicBroker
            | ConfigSource::DynamicDefaultBroker
            | ConfigSource::StaticBroker => Source::Broker,
            ConfigSource::Default => Source::Default,
            ConfigSource::Unknown => Source::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Override => "override",
            Source::Broker => "broker",
            Source::Default => "default",
            Source::Unknown => "unknown",
        }
    }
}

/// One config entry of a topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigValue {
    pub name: String,
    /// `None` for sensitive values and for entries the broker leaves unset.
    pub value: Option<String>,
    pub source: Source,
}

/// Low and high watermark of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Watermarks {
    pub low: i64,
    pub high: i64,
}

/// A connection to one cluster, with the timeout every call is bounded by.
pub struct Cluster {
    servers: String,
    timeout: Duration,
    config: ClientConfig,
    admin: AdminClient<DefaultClientContext>,
    consumer: Arc<BaseConsumer>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("servers", &self.servers)
            .field("timeout", &self.timeout)
            .finish()
    }
}

fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

impl Cluster {
    /// Creates the clients and proves the cluster answers (one metadata request, bounded).
    pub async fn connect(args: &KafkaArgs) -> Result<(Cluster, MetadataView), ClusterError> {
        let servers = args.bootstrap_servers.clone();
        let config = args.client_config();
        let settings = |e: rdkafka::error::KafkaError| ClusterError::Settings {
            servers: servers.clone(),
            reason: e.to_string(),
        };
        let admin: AdminClient<DefaultClientContext> = config.create().map_err(settings)?;
        let consumer: BaseConsumer = config.create().map_err(settings)?;
        let cluster = Cluster {
            servers,
            timeout: args.timeout,
            config,
            admin,
            consumer: Arc::new(consumer),
        };
        let metadata = cluster.metadata().await.map_err(|e| match e {
            ClusterError::Failed { reason, .. } => ClusterError::Unreachable {
                servers: cluster.servers.clone(),
                timeout: format_duration(cluster.timeout),
                reason,
            },
            other => other,
        })?;
        Ok((cluster, metadata))
    }

    pub fn servers(&self) -> &str {
        &self.servers
    }

    fn failed(what: impl Into<String>, reason: impl ToString) -> ClusterError {
        ClusterError::Failed {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    fn admin_options(&self) -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(self.timeout))
            .operation_timeout(Some(self.timeout))
    }

    /// Runs an admin future, failing with a timeout error if the broker never answers. The
    /// outer bound is a little longer than the request timeout so that librdkafka's own, more
    /// specific, error usually wins.
    async fn bounded<T>(
        &self,
        what: &str,
        future: impl Future<Output = T>,
    ) -> Result<T, ClusterError> {
        tokio::time::timeout(self.timeout + Duration::from_secs(2), future)
            .await
            .map_err(|_| ClusterError::Timeout {
                what: what.to_owned(),
                servers: self.servers.clone(),
                timeout: format_duration(self.timeout),
            })
    }

    /// Runs a blocking librdkafka call on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        what: &str,
        call: impl FnOnce(&BaseConsumer) -> Result<T, String> + Send + 'static,
    ) -> Result<T, ClusterError> {
        let consumer = Arc::clone(&self.consumer);
        let joined = tokio::task::spawn_blocking(move || call(&consumer)).await;
        match joined {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(reason)) => Err(Self::failed(what, reason)),
            Err(e) => Err(Self::failed(what, e)),
        }
    }

    /// Brokers and topics, bounded by the timeout.
    pub async fn metadata(&self) -> Result<MetadataView, ClusterError> {
        let timeout = self.timeout;
        self.blocking("reading cluster metadata", move |consumer| {
            let metadata = consumer
                .fetch_metadata(None, timeout)
                .map_err(|e| e.to_string())?;
            let brokers = metadata
                .brokers()
                .iter()
                .map(|b| Broker {
                    id: b.id(),
                    host: b.host().to_owned(),
                    port: b.port(),
                })
                .collect();
            let topics = metadata
                .topics()
                .iter()
                .map(|t| {
                    let mut partitions: Vec<PartitionMeta> = t
                        .partitions()
                        .iter()
                        .map(|p| PartitionMeta {
                            id: p.id(),
                            leader: p.leader(),
                            replicas: p.replicas().to_vec(),
                            isr: p.isr().to_vec(),
                        })
                        .collect();
                    partitions.sort_by_key(|p| p.id);
                    let error = t
                        .error()
                        .map(|e| format!("{:?}", rdkafka::types::RDKafkaErrorCode::from(e)));
                    (t.name().to_owned(), TopicMeta { partitions, error })
                })
                .collect();
            Ok(MetadataView { brokers, topics })
        })
        .await
    }

    /// Every config entry of each topic, with its source.
    pub async fn topic_configs(
        &self,
        topics: &[&str],
    ) -> Result<BTreeMap<String, Vec<ConfigValue>>, ClusterError> {
        if topics.is_empty() {
            return Ok(BTreeMap::new());
        }
        let specifiers: Vec<ResourceSpecifier<'_>> =
            topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
        let what = "describing topic configs";
        let results = self
            .bounded(
                what,
                self.admin
                    .describe_configs(&specifiers, &self.admin_options()),
            )
            .await?
            .map_err(|e| Self::failed(what, e))?;
        let mut out = BTreeMap::new();
        for (topic, result) in topics.iter().zip(results) {
            let resource = result
                .map_err(|code| Self::failed(format!("describing the configs of {topic}"), code))?;
            let mut entries: Vec<ConfigValue> = resource
                .entries
                .into_iter()
                .map(|e| ConfigValue {
                    source: Source::from_kafka(&e.source),
                    value: if e.is_sensitive { None } else { e.value },
                    name: e.name,
                })
                .collect();
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            out.insert((*topic).to_owned(), entries);
        }
        Ok(out)
    }

    /// What the plan compares against: in-scope topics with their overrides and defaults.
    pub async fn snapshot(
        &self,
        scope: &Scope,
    ) -> Result<(ClusterSnapshot, MetadataView), ClusterError> {
        let metadata = self.metadata().await?;
        let names: Vec<&str> = metadata
            .topics
            .iter()
            .filter(|(name, meta)| scope.contains(name) && meta.error.is_none())
            .map(|(name, _)| name.as_str())
            .collect();
        let configs = self.topic_configs(&names).await?;
        let mut topics = BTreeMap::new();
        for name in names {
            let Some(meta) = metadata.topics.get(name) else {
                continue;
            };
            let mut observed = ObservedTopic {
                partitions: u32::try_from(meta.partitions.len()).unwrap_or(u32::MAX),
                replication_factor: meta.replication_factor(),
                ..ObservedTopic::default()
            };
            for entry in configs.get(name).into_iter().flatten() {
                let Some(value) = &entry.value else { continue };
                if entry.source == Source::Override {
                    observed.overrides.insert(entry.name.clone(), value.clone());
                } else {
                    observed.defaults.insert(entry.name.clone(), value.clone());
                }
            }
            topics.insert(name.to_owned(), observed);
        }
        let snapshot = ClusterSnapshot {
            brokers: metadata.brokers.len(),
            topics,
        };
        Ok((snapshot, metadata))
    }

    /// Low and high watermarks of the given partitions, all within one timeout.
    pub async fn watermarks(
        &self,
        partitions: Vec<(String, i32)>,
    ) -> Result<BTreeMap<(String, i32), Watermarks>, ClusterError> {
        let timeout = self.timeout;
        let servers = self.servers.clone();
        self.blocking("reading watermarks", move |consumer| {
            let deadline = Instant::now() + timeout;
            let mut out = BTreeMap::new();
            for (topic, partition) in partitions {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(format!(
                        "no answer from {servers} within {}",
                        format_duration(timeout)
                    ));
                }
                let (low, high) = consumer
                    .fetch_watermarks(&topic, partition, left)
                    .map_err(|e| format!("{topic}[{partition}]: {e}"))?;
                out.insert((topic, partition), Watermarks { low, high });
            }
            Ok(out)
        })
        .await
    }

    /// Names of the consumer groups the cluster knows.
    pub async fn groups(&self) -> Result<Vec<String>, ClusterError> {
        let timeout = self.timeout;
        self.blocking("listing consumer groups", move |consumer| {
            let list = consumer
                .fetch_group_list(None, timeout)
                .map_err(|e| e.to_string())?;
            let mut names: Vec<String> =
                list.groups().iter().map(|g| g.name().to_owned()).collect();
            names.sort();
            Ok(names)
        })
        .await
    }

    /// The committed offset of `group` on each given partition (`None`: never committed).
    pub async fn committed(
        &self,
        group: &str,
        partitions: Vec<(String, i32)>,
    ) -> Result<Vec<(String, i32, Option<i64>)>, ClusterError> {
        let mut config = self.config.clone();
        // Reading offsets needs the group id but must not join the group (that would trigger a
        // rebalance of the real consumers): no subscribe, no auto-commit.
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false");
        let consumer: BaseConsumer = config.create().map_err(|e| ClusterError::Settings {
            servers: self.servers.clone(),
            reason: e.to_string(),
        })?;
        let timeout = self.timeout;
        let what = format!("reading the committed offsets of group {group}");
        let joined = tokio::task::spawn_blocking(move || {
            let mut list = TopicPartitionList::new();
            for (topic, partition) in &partitions {
                list.add_partition(topic, *partition);
            }
            let committed = consumer
                .committed_offsets(list, timeout)
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(
                committed
                    .elements()
                    .iter()
                    .map(|e| {
                        let offset = match e.offset() {
                            Offset::Offset(n) => Some(n),
                            _ => None,
                        };
                        (e.topic().to_owned(), e.partition(), offset)
                    })
                    .collect(),
            )
        })
        .await;
        match joined {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(reason)) => Err(Self::failed(what, reason)),
            Err(e) => Err(Self::failed(what, e)),
        }
    }

    /// Creates one topic with its configs.
    pub async fn create_topic(
        &self,
        topic: &str,
        partitions: u32,
        replication_factor: u16,
        configs: &BTreeMap<String, String>,
    ) -> Result<(), ClusterError> {
        let what = format!("creating {topic}");
        let partitions = i32::try_from(partitions).map_err(|e| Self::failed(&what, e))?;
        let mut new_topic = NewTopic::new(
            topic,
            partitions,
            TopicReplication::Fixed(i32::from(replication_factor)),
        );
        for (name, value) in configs {
            new_topic = new_topic.set(name, value);
        }
        let results = self
            .bounded(
                &what,
                self.admin
                    .create_topics(&[new_topic], &self.admin_options()),
            )
            .await?
            .map_err(|e| Self::failed(&what, e))?;
        for result in results {
            result.map_err(|(_, code)| Self::failed(&what, code))?;
        }
        Ok(())
    }

    /// Raises the partition count of a topic to `total`.
    pub async fn add_partitions(&self, topic: &str, total: u32) -> Result<(), ClusterError> {
        let what = format!("adding partitions to {topic}");
        let total = usize::try_from(total).map_err(|e| Self::failed(&what, e))?;
        let results = self
            .bounded(
                &what,
                self.admin
                    .create_partitions(&[NewPartitions::new(topic, total)], &self.admin_options()),
            )
            .await?
            .map_err(|e| Self::failed(&what, e))?;
        for result in results {
            result.map_err(|(_, code)| Self::failed(&what, code))?;
        }
        Ok(())
    }

    /// Makes the topic's overrides exactly `configs`. Kafka's (non-incremental) AlterConfigs
    /// replaces the whole set: overrides not listed revert to their default, which is what a
    /// declarative catalogue wants.
    pub async fn set_topic_configs(
        &self,
        topic: &str,
        configs: &BTreeMap<String, String>,
    ) -> Result<(), ClusterError> {
        let what = format!("setting the configs of {topic}");
        let mut alter = AlterConfig::new(ResourceSpecifier::Topic(topic));
        for (name, value) in configs {
            alter = alter.set(name, value);
        }
        let results = self
            .bounded(
                &what,
                self.admin.alter_configs(&[alter], &self.admin_options()),
            )
            .await?
            .map_err(|e| Self::failed(&what, e))?;
        for result in results {
            result.map_err(|(_, code)| Self::failed(&what, code))?;
        }
        Ok(())
    }

    /// Deletes the named topics.
    pub async fn delete_topics(&self, topics: &[&str]) -> Result<(), ClusterError> {
        let what = format!("deleting {}", topics.join(", "));
        let results = self
            .bounded(
                &what,
                self.admin.delete_topics(topics, &self.admin_options()),
            )
            .await?
            .map_err(|e| Self::failed(&what, e))?;
        let failures: Vec<String> = results
            .into_iter()
            .filter_map(Result::err)
            .map(|(topic, code)| format!("{topic}: {code}"))
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(Self::failed(what, failures.join("; ")))
        }
    }
}
