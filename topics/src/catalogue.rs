//! The topic catalogue: the declarative file (`topics/topics.yaml`) that lists every topic the
//! pipeline uses, and its per-environment overlays (`topics/env/<env>.yaml`).
//!
//! This module owns reading those files (serde model, every struct `deny_unknown_fields`, YAML
//! errors reported as `file:line:column: reason`), merging an overlay over the base, and the
//! validation that refuses a bad catalogue before anything touches a cluster. Validation
//! collects every problem it finds instead of stopping at the first, so one run tells the
//! operator everything to fix.
//!
//! Precedence, most specific first: overlay topic entry, base topic entry, overlay `defaults`,
//! base `defaults`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::num::{NonZeroU16, NonZeroU32};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

/// Where the catalogue lives, relative to the repository root (the default `--catalogue`).
pub const DEFAULT_CATALOGUE: &str = "topics/topics.yaml";

/// The only catalogue format version this build understands.
pub const FORMAT_VERSION: u32 = 1;

/// The catalogue shipped in this crate (for tests and tools that run outside the repo root).
pub fn repo_catalogue() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("topics.yaml")
}

/// The overlay file of `env` for the catalogue at `catalogue`: `<dir>/env/<env>.yaml`.
pub fn overlay_path(catalogue: &Path, env: &str) -> PathBuf {
    catalogue
        .parent()
        .unwrap_or(Path::new("."))
        .join("env")
        .join(format!("{env}.yaml"))
}

/// The environments that have an overlay beside `catalogue`, sorted.
pub fn environments(catalogue: &Path) -> Vec<String> {
    let dir = catalogue.parent().unwrap_or(Path::new(".")).join("env");
    let mut envs: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let path = entry.path();
            (path.extension()? == "yaml").then(|| path.file_stem()?.to_str().map(str::to_owned))?
        })
        .collect();
    envs.sort();
    envs
}

/// Why a catalogue could not be used. Nothing has been changed anywhere when one is returned.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error(
        "cannot read {file}: {source} (pass --catalogue or set BOXOFFICE_TOPICS_CATALOGUE; the default is {DEFAULT_CATALOGUE}, relative to the repository root)"
    )]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error(
        "no overlay for environment `{env}`: {file} does not exist (environments with an overlay: {known})"
    )]
    UnknownEnv {
        env: String,
        file: String,
        known: String,
    },
    #[error("{file}:{line}:{column}: {reason}")]
    Yaml {
        file: String,
        line: usize,
        column: usize,
        reason: String,
    },
    #[error("{file} (environment `{env}`) is invalid:\n{}", bullet_list(.problems))]
    Invalid {
        file: String,
        env: String,
        problems: Vec<String>,
    },
}

fn bullet_list(problems: &[String]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Kafka's `cleanup.policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum CleanupPolicy {
    #[serde(rename = "delete")]
    Delete,
    #[serde(rename = "compact")]
    Compact,
    #[serde(rename = "compact,delete", alias = "delete,compact")]
    CompactDelete,
}

impl CleanupPolicy {
    /// The value Kafka stores.
    pub fn as_kafka(self) -> &'static str {
        match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
            CleanupPolicy::CompactDelete => "compact,delete",
        }
    }

    /// Whether time-based retention deletes anything under this policy.
    pub fn deletes(self) -> bool {
        !matches!(self, CleanupPolicy::Compact)
    }
}

/// How long records are kept: a duration (`7d`, `36h`) or `infinite`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    Infinite,
    Finite(Duration),
}

impl Retention {
    /// `retention.ms` as Kafka stores it (`-1` for infinite).
    pub fn as_kafka_ms(self) -> String {
        match self {
            Retention::Infinite => "-1".to_owned(),
            Retention::Finite(d) => d.as_millis().to_string(),
        }
    }
}

impl fmt::Display for Retention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Retention::Infinite => f.write_str("infinite"),
            Retention::Finite(d) => write!(f, "{}", humantime::format_duration(*d)),
        }
    }
}

/// Parses `infinite` or a humantime duration of at least one millisecond.
pub fn parse_retention(raw: &str) -> Result<Retention, String> {
    let raw = raw.trim();
    if raw.eq_ignore_ascii_case("infinite") {
        return Ok(Retention::Infinite);
    }
    let duration = humantime::parse_duration(raw)
        .map_err(|e| format!("`{raw}` is not a duration such as `7d` or `infinite`: {e}"))?;
    if duration.as_millis() == 0 {
        return Err(format!(
            "`{raw}` is shorter than a millisecond; Kafka would delete records at once"
        ));
    }
    Ok(Retention::Finite(duration))
}

impl<'de> Deserialize<'de> for Retention {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RetentionVisitor;
        impl Visitor<'_> for RetentionVisitor {
            type Value = Retention;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as `7d` or `12h`, or `infinite`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Retention, E> {
                parse_retention(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(RetentionVisitor)
    }
}

/// A Kafka config value as written in YAML: a string, number or boolean, kept as Kafka's text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ConfigValue(String);

impl<'de> Deserialize<'de> for ConfigValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValueVisitor;
        impl Visitor<'_> for ValueVisitor {
            type Value = ConfigValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a config value (string, number or boolean)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ConfigValue, E> {
                Ok(ConfigValue(v.to_owned()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ConfigValue, E> {
                Ok(ConfigValue(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ConfigValue, E> {
                Ok(ConfigValue(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ConfigValue, E> {
                Ok(ConfigValue(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ConfigValue, E> {
                Ok(ConfigValue(v.to_string()))
            }
        }
        deserializer.deserialize_any(ValueVisitor)
    }
}

/// Settings that `defaults`, a topic, or an overlay may set. All optional: the merge decides.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    partitions: Option<NonZeroU32>,
    replication_factor: Option<NonZeroU16>,
    min_insync_replicas: Option<NonZeroU16>,
    cleanup_policy: Option<CleanupPolicy>,
    retention: Option<Retention>,
    #[serde(default)]
    configs: BTreeMap<String, ConfigValue>,
}

/// A topic in the base catalogue. The settings are repeated rather than `#[serde(flatten)]`ed
/// because serde cannot combine `flatten` with `deny_unknown_fields`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopic {
    name: String,
    purpose: String,
    key: String,
    records: Vec<String>,
    producers: Vec<String>,
    consumers: Vec<String>,
    partitions: Option<NonZeroU32>,
    replication_factor: Option<NonZeroU16>,
    min_insync_replicas: Option<NonZeroU16>,
    cleanup_policy: Option<CleanupPolicy>,
    retention: Option<Retention>,
    #[serde(default)]
    configs: BTreeMap<String, ConfigValue>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: String,
    key: String,
    topics: Vec<String>,
    #[serde(default)]
    why: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalogue {
    version: u32,
    #[serde(default)]
    defaults: RawSettings,
    topics: Vec<RawTopic>,
    #[serde(default)]
    co_partitioned: Vec<RawGroup>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverlay {
    #[serde(default)]
    #[allow(dead_code)] // Documentation for readers of the file; nothing is derived from it.
    description: Option<String>,
    #[serde(default)]
    defaults: RawSettings,
    #[serde(default)]
    topics: BTreeMap<String, RawSettings>,
}

/// One topic as it should exist in the chosen environment, every setting resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicSpec {
    pub name: String,
    pub purpose: String,
    pub key: String,
    /// Full names of the Avro records written to the topic.
    pub records: Vec<String>,
    pub producers: Vec<String>,
    pub consumers: Vec<String>,
    pub partitions: u32,
    pub replication_factor: u16,
    pub min_insync_replicas: u16,
    pub cleanup_policy: CleanupPolicy,
    /// `None` for compact-only topics, where time-based retention deletes nothing.
    #[serde(serialize_with = "serialize_retention")]
    pub retention: Option<Retention>,
    /// Every topic-level Kafka config the catalogue manages, as Kafka stores it: the first-class
    /// settings above plus the topic's `configs`.
    pub configs: BTreeMap<String, String>,
    /// The co-partition group the topic belongs to, if any.
    pub co_partition_group: Option<String>,
}

fn serialize_retention<S: serde::Serializer>(
    value: &Option<Retention>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(r) => serializer.serialize_some(&r.to_string()),
        None => serializer.serialize_none(),
    }
}

/// Topics that must have the same partition count and key, so that one key lands on the same
/// partition number in each and one processor instance owns it everywhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CoPartitionGroup {
    pub name: String,
    pub key: String,
    pub topics: Vec<String>,
    pub why: Option<String>,
}

/// A validated catalogue for one environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Catalogue {
    pub env: String,
    pub topics: Vec<TopicSpec>,
    pub co_partitioned: Vec<CoPartitionGroup>,
}

/// Configs the catalogue manages through first-class fields; `configs:` may not set them.
const FIRST_CLASS: [(&str, &str); 3] = [
    ("cleanup.policy", "cleanup_policy"),
    ("retention.ms", "retention"),
    ("min.insync.replicas", "min_insync_replicas"),
];

/// Topic-level configs Kafka 4.1 accepts (the names a `describe` of a topic returns, minus the
/// read-only ones). A name outside this list is a typo or a broker-level setting, and is refused
/// before anything is created.
pub const KNOWN_TOPIC_CONFIGS: &[&str] = &[
    "cleanup.policy",
    "compression.gzip.level",
    "compression.lz4.level",
    "compression.type",
    "compression.zstd.level",
    "delete.retention.ms",
    "file.delete.delay.ms",
    "flush.messages",
    "flush.ms",
    "follower.replication.throttled.replicas",
    "index.interval.bytes",
    "leader.replication.throttled.replicas",
    "local.retention.bytes",
    "local.retention.ms",
    "max.compaction.lag.ms",
    "max.message.bytes",
    "message.timestamp.after.max.ms",
    "message.timestamp.before.max.ms",
    "message.timestamp.type",
    "min.cleanable.dirty.ratio",
    "min.compaction.lag.ms",
    "min.insync.replicas",
    "preallocate",
    "remote.log.copy.disable",
    "remote.log.delete.on.disable",
    "remote.storage.enable",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
    "segment.index.bytes",
    "segment.jitter.ms",
    "segment.ms",
    "unclean.leader.election.enable",
];

impl Catalogue {
    /// Reads the catalogue at `path` and the overlay of `env` beside it, merges and validates.
    pub fn load(path: &Path, env: &str) -> Result<Catalogue, CatalogueError> {
        let base = read(path)?;
        let overlay_file = overlay_path(path, env);
        let overlay = match std::fs::read_to_string(&overlay_file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let known = environments(path);
                return Err(CatalogueError::UnknownEnv {
                    env: env.to_owned(),
                    file: overlay_file.display().to_string(),
                    known: if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    },
                });
            }
            Err(source) => {
                return Err(CatalogueError::Read {
                    file: overlay_file.display().to_string(),
                    source,
                });
            }
        };
        Catalogue::parse(
            &base,
            &path.display().to_string(),
            Some((&overlay, &overlay_file.display().to_string())),
            env,
        )
    }

    /// Parses, merges and validates catalogue text; `overlay` is `(text, file name)`. The file
    /// names only label error messages.
    pub fn parse(
        base: &str,
        base_file: &str,
        overlay: Option<(&str, &str)>,
        env: &str,
    ) -> Result<Catalogue, CatalogueError> {
        let raw: RawCatalogue = from_yaml(base, base_file)?;
        let overlay: RawOverlay = match overlay {
            Some((text, file)) => from_yaml(text, file)?,
            None => RawOverlay::default(),
        };
        resolve(raw, overlay, env).map_err(|problems| CatalogueError::Invalid {
            file: base_file.to_owned(),
            env: env.to_owned(),
            problems,
        })
    }

    /// The same catalogue with `prefix` in front of every topic name: lets tests and shared
    /// development clusters apply the catalogue side by side without touching each other.
    pub fn with_prefix(mut self, prefix: &str) -> Catalogue {
        if prefix.is_empty() {
            return self;
        }
        for topic in &mut self.topics {
            topic.name = format!("{prefix}{}", topic.name);
        }
        for group in &mut self.co_partitioned {
            for topic in &mut group.topics {
                *topic = format!("{prefix}{topic}");
            }
        }
        self
    }

    pub fn topic(&self, name: &str) -> Option<&TopicSpec> {
        self.topics.iter().find(|t| t.name == name)
    }
}

fn read(path: &Path) -> Result<String, CatalogueError> {
    std::fs::read_to_string(path).map_err(|source| CatalogueError::Read {
        file: path.display().to_string(),
        source,
    })
}

/// Deserialises YAML, turning an error into `file:line:column: reason`.
fn from_yaml<T: serde::de::DeserializeOwned>(text: &str, file: &str) -> Result<T, CatalogueError> {
    serde_norway::from_str(text).map_err(|e| {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        let full = e.to_string();
        // The library appends " at line L column C"; the prefix already says where.
        let reason = match full.rsplit_once(" at line ") {
            Some((reason, _)) => reason.to_owned(),
            None => full,
        };
        CatalogueError::Yaml {
            file: file.to_owned(),
            line,
            column,
            reason,
        }
    })
}

/// Kafka's rule for topic names.
pub fn valid_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a topic name may not be empty".to_owned());
    }
    if name == "." || name == ".." {
        return Err(format!("`{name}` is not a valid topic name"));
    }
    if name.len() > 249 {
        return Err(format!("`{name}` is longer than 249 characters"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "`{name}` contains `{bad}`; topic names use [a-zA-Z0-9._-]"
        ));
    }
    Ok(())
}

/// An Avro full name with a namespace: dot-separated identifiers, at least two of them.
fn valid_record_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    parts.len() >= 2
        && parts.iter().all(|p| {
            let mut chars = p.chars();
            matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// The first setting present, most specific layer first.
fn pick<T>(
    overlay_topic: Option<T>,
    topic: Option<T>,
    overlay_default: Option<T>,
    default: Option<T>,
) -> Option<T> {
    overlay_topic.or(topic).or(overlay_default).or(default)
}

fn merge_configs(layers: [&BTreeMap<String, ConfigValue>; 4]) -> BTreeMap<String, String> {
    let mut merged = BTreeMap::new();
    for layer in layers {
        for (k, v) in layer {
            merged.insert(k.clone(), v.0.clone());
        }
    }
    merged
}

/// Merges the overlay over the base and validates; returns every problem found.
fn resolve(raw: RawCatalogue, overlay: RawOverlay, env: &str) -> Result<Catalogue, Vec<String>> {
    let mut problems = Vec::new();
    if raw.version != FORMAT_VERSION {
        problems.push(format!(
            "version {} is not supported (this build reads version {FORMAT_VERSION})",
            raw.version
        ));
    }
    if raw.topics.is_empty() {
        problems.push("the catalogue lists no topics".to_owned());
    }

    let names: BTreeSet<&str> = raw.topics.iter().map(|t| t.name.as_str()).collect();
    for name in overlay.topics.keys() {
        if !names.contains(name.as_str()) {
            problems.push(format!(
                "the `{env}` overlay sets topic `{name}`, which the catalogue does not list"
            ));
        }
    }

    let empty = BTreeMap::new();
    let mut seen = BTreeSet::new();
    // Kafka warns that `.` and `_` collide in metric names: `a.b` and `a_b` cannot both exist.
    let mut metric_names: BTreeMap<String, String> = BTreeMap::new();
    let mut topics = Vec::new();
    for t in &raw.topics {
        let at = format!("topic `{}`", t.name);
        if let Err(e) = valid_topic_name(&t.name) {
            problems.push(e);
        }
        if !seen.insert(t.name.as_str()) {
            problems.push(format!("{at} is listed twice"));
        }
        if let Some(other) = metric_names.insert(t.name.replace('.', "_"), t.name.clone())
            && other != t.name
        {
            problems.push(format!(
                "{at} collides with `{other}`: Kafka treats `.` and `_` alike in metric names"
            ));
        }
        for (field, value) in [("purpose", &t.purpose), ("key", &t.key)] {
            if value.trim().is_empty() {
                problems.push(format!("{at}: `{field}` is empty"));
            }
        }
        for (field, list) in [
            ("records", &t.records),
            ("producers", &t.producers),
            ("consumers", &t.consumers),
        ] {
            if list.is_empty() {
                problems.push(format!("{at}: `{field}` is empty"));
            }
        }
        let mut records = BTreeSet::new();
        for record in &t.records {
            if !valid_record_name(record) {
                problems.push(format!("{at}: record `{record}` is not an Avro full name with a namespace (e.g. `boxoffice.BookingRequested`)"));
            }
            if !records.insert(record) {
                problems.push(format!("{at}: record `{record}` is listed twice"));
            }
        }

        let over = overlay.topics.get(&t.name);
        let partitions = pick(
            over.and_then(|o| o.partitions),
            t.partitions,
            overlay.defaults.partitions,
            raw.defaults.partitions,
        );
        let replication = pick(
            over.and_then(|o| o.replication_factor),
            t.replication_factor,
            overlay.defaults.replication_factor,
            raw.defaults.replication_factor,
        );
        let min_isr = pick(
            over.and_then(|o| o.min_insync_replicas),
            t.min_insync_replicas,
            overlay.defaults.min_insync_replicas,
            raw.defaults.min_insync_replicas,
        )
        .map_or(1, NonZeroU16::get);
        let cleanup = pick(
            over.and_then(|o| o.cleanup_policy),
            t.cleanup_policy,
            overlay.defaults.cleanup_policy,
            raw.defaults.cleanup_policy,
        )
        .unwrap_or(CleanupPolicy::Delete);
        let explicit_retention = over.and_then(|o| o.retention).or(t.retention);
        let retention = if cleanup.deletes() {
            explicit_retention
                .or(overlay.defaults.retention)
                .or(raw.defaults.retention)
        } else {
            // Compact-only topics keep the latest record per key whatever its age, so a
            // retention set on the topic itself is a misunderstanding worth refusing; a
            // default retention simply does not apply.
            if let Some(r) = explicit_retention {
                problems.push(format!("{at}: retention {r} has no effect with cleanup_policy `compact`; use `compact,delete` to also expire old records"));
            }
            None
        };

        let Some(partitions) = partitions else {
            problems.push(format!(
                "{at}: no `partitions` (set it on the topic or under `defaults`)"
            ));
            continue;
        };
        let Some(replication) = replication else {
            problems.push(format!("{at}: no `replication_factor` (set it on the topic, under `defaults`, or in the `{env}` overlay)"));
            continue;
        };
        if min_isr > replication.get() {
            problems.push(format!(
                "{at}: min_insync_replicas {min_isr} is above replication_factor {replication}: every acks=all write would fail"
            ));
        }

        let configs = merge_configs([
            &raw.defaults.configs,
            &overlay.defaults.configs,
            &t.configs,
            over.map_or(&empty, |o| &o.configs),
        ]);
        let mut desired = BTreeMap::new();
        for (name, value) in &configs {
            if let Some((_, field)) = FIRST_CLASS.iter().find(|(config, _)| config == name) {
                problems.push(format!(
                    "{at}: set `{name}` through the `{field}` field, not `configs`"
                ));
            } else if !KNOWN_TOPIC_CONFIGS.contains(&name.as_str()) {
                problems.push(format!("{at}: `{name}` is not a topic-level Kafka config"));
            } else if value.trim().is_empty() {
                problems.push(format!("{at}: config `{name}` has an empty value"));
            } else {
                desired.insert(name.clone(), value.trim().to_owned());
            }
        }
        desired.insert("cleanup.policy".to_owned(), cleanup.as_kafka().to_owned());
        desired.insert("min.insync.replicas".to_owned(), min_isr.to_string());
        if let Some(r) = retention {
            desired.insert("retention.ms".to_owned(), r.as_kafka_ms());
        }

        topics.push(TopicSpec {
            name: t.name.clone(),
            purpose: t.purpose.trim().to_owned(),
            key: t.key.trim().to_owned(),
            records: t.records.clone(),
            producers: t.producers.clone(),
            consumers: t.consumers.clone(),
            partitions: partitions.get(),
            replication_factor: replication.get(),
            min_insync_replicas: min_isr,
            cleanup_policy: cleanup,
            retention,
            configs: desired,
            co_partition_group: None,
        });
    }

    let mut groups = Vec::new();
    let mut group_names = BTreeSet::new();
    for g in &raw.co_partitioned {
        let at = format!("co-partition group `{}`", g.name);
        if !group_names.insert(g.name.as_str()) {
            problems.push(format!("{at} is listed twice"));
        }
        if g.topics.len() < 2 {
            problems.push(format!("{at} needs at least two topics"));
        }
        let mut counts = Vec::new();
        for name in &g.topics {
            match topics.iter_mut().find(|t| &t.name == name) {
                None if names.contains(name.as_str()) => {} // Already reported above.
                None => problems.push(format!(
                    "{at} names `{name}`, which the catalogue does not list"
                )),
                Some(topic) => {
                    if let Some(other) = &topic.co_partition_group {
                        problems.push(format!(
                            "topic `{name}` is in co-partition groups `{other}` and `{}`",
                            g.name
                        ));
                    }
                    topic.co_partition_group = Some(g.name.clone());
                    if topic.key != g.key {
                        problems.push(format!(
                            "{at} is keyed by `{}` but topic `{name}` is keyed by `{}`",
                            g.key, topic.key
                        ));
                    }
                    counts.push((name.as_str(), topic.partitions));
                }
            }
        }
        let distinct: BTreeSet<u32> = counts.iter().map(|(_, n)| *n).collect();
        if distinct.len() > 1 {
            let listed: Vec<String> = counts.iter().map(|(t, n)| format!("{t} has {n}")).collect();
            problems.push(format!(
                "{at}: co-partitioned topics must have the same partition count in `{env}`, but {}",
                listed.join(", ")
            ));
        }
        groups.push(CoPartitionGroup {
            name: g.name.clone(),
            key: g.key.clone(),
            topics: g.topics.clone(),
            why: g.why.as_ref().map(|w| w.trim().to_owned()),
        });
    }

    if problems.is_empty() {
        Ok(Catalogue {
            env: env.to_owned(),
            topics,
            co_partitioned: groups,
        })
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "\
version: 1
defaults:
  partitions: 3
  replication_factor: 1
  retention: 7d
topics:
  - name: orders
    purpose: order facts
    key: order_id
    records: [ns.OrderPlaced]
    producers: [a]
    consumers: [b]
";

    fn parse(text: &str) -> Result<Catalogue, CatalogueError> {
        Catalogue::parse(text, "cat.yaml", None, "test")
    }

    fn problems(text: &str) -> Vec<String> {
        match parse(text) {
            Err(CatalogueError::Invalid { problems, .. }) => problems,
            other => panic!("expected validation problems, got {other:?}"),
        }
    }

    #[test]
    fn the_repository_catalogue_is_valid_in_every_environment() {
        let path = repo_catalogue();
        assert_eq!(environments(&path), ["local", "production"]);
        let local = Catalogue::load(&path, "local").unwrap();
        let names: Vec<&str> = local.topics.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "booking.commands",
                "orders.events",
                "payments.requests",
                "availability",
                "notifications",
                "dead.letters",
                "booking.progress"
            ]
        );
        let commands = local.topic("booking.commands").unwrap();
        assert_eq!(
            (
                commands.partitions,
                commands.replication_factor,
                commands.key.as_str()
            ),
            (6, 1, "event_id")
        );
        assert_eq!(commands.co_partition_group.as_deref(), Some("event"));
        let availability = local.topic("availability").unwrap();
        assert_eq!(
            availability
                .configs
                .get("cleanup.policy")
                .map(String::as_str),
            Some("compact")
        );
        assert_eq!(availability.retention, None);
        let dead = local.topic("dead.letters").unwrap();
        assert_eq!(
            dead.configs.get("retention.ms").map(String::as_str),
            Some("2592000000")
        );

        let production = Catalogue::load(&path, "production").unwrap();
        for topic in &production.topics {
            assert_eq!(topic.replication_factor, 3, "{}", topic.name);
            assert_eq!(
                topic.configs.get("min.insync.replicas").map(String::as_str),
                Some("2"),
                "{}",
                topic.name
            );
            assert_eq!(
                topic
                    .configs
                    .get("unclean.leader.election.enable")
                    .map(String::as_str),
                Some("false"),
                "{}",
                topic.name
            );
        }
        assert_eq!(production.topic("booking.commands").unwrap().partitions, 24);
        assert_eq!(production.topic("availability").unwrap().partitions, 24);
        assert_eq!(production.topic("booking.progress").unwrap().partitions, 24);
    }

    #[test]
    fn malformed_yaml_names_file_line_and_column() {
        let err = parse("version: 1\ntopics:\n  - name: [unclosed\n").unwrap_err();
        let CatalogueError::Yaml { file, line, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(file, "cat.yaml");
        assert!(*line >= 3, "{err}");
        assert!(
            err.to_string().starts_with(&format!("cat.yaml:{line}:")),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_key_is_rejected_with_its_line() {
        let text = MINIMAL.replace(
            "    key: order_id\n",
            "    key: order_id\n    partitons: 4\n",
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("cat.yaml:10:5: "), "{err}");
        assert!(err.contains("unknown field `partitons`"), "{err}");
        let err = parse(&format!("{MINIMAL}colour: blue\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `colour`"), "{err}");
    }

    #[test]
    fn zero_partitions_and_unknown_cleanup_policies_are_refused_with_their_line() {
        let err = parse(&format!("{MINIMAL}    partitions: 0\n"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cat.yaml:13:"), "{err}");
        assert!(err.contains("nonzero"), "{err}");
        let err = parse(&format!("{MINIMAL}    cleanup_policy: shred\n"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cat.yaml:13:"), "{err}");
        assert!(err.contains("unknown variant `shred`"), "{err}");
        let err = parse(&format!("{MINIMAL}    retention: soon\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`soon` is not a duration"), "{err}");
    }

    #[test]
    fn every_semantic_problem_is_reported_at_once() {
        let text = "\
version: 1
defaults: { partitions: 3, replication_factor: 1 }
topics:
  - { name: a, purpose: p, key: k, records: [ns.A], producers: [x], consumers: [y], min_insync_replicas: 2 }
  - { name: a, purpose: p, key: k, records: [NoNamespace], producers: [], consumers: [y] }
  - { name: 'bad name', purpose: '', key: k, records: [ns.B], producers: [x], consumers: [y], configs: { retention.ms: 5, segment.mss: 1 } }
  - { name: s, purpose: p, key: k, records: [ns.S], producers: [x], consumers: [y], cleanup_policy: compact, retention: 1d }
co_partitioned:
  - { name: g, key: k, topics: [a, missing] }
";
        let problems = problems(text);
        let all = problems.join("\n");
        for expected in [
            "min_insync_replicas 2 is above replication_factor 1",
            "topic `a` is listed twice",
            "record `NoNamespace` is not an Avro full name",
            "`producers` is empty",
            "`bad name` contains ` `",
            "`purpose` is empty",
            "set `retention.ms` through the `retention` field",
            "`segment.mss` is not a topic-level Kafka config",
            "retention 1day has no effect with cleanup_policy `compact`",
            "names `missing`, which the catalogue does not list",
        ] {
            assert!(all.contains(expected), "missing `{expected}` in:\n{all}");
        }
    }

    #[test]
    fn co_partitioned_topics_with_different_counts_or_keys_are_refused() {
        let text = "\
version: 1
defaults: { partitions: 3, replication_factor: 1 }
topics:
  - { name: a, purpose: p, key: event_id, records: [ns.A], producers: [x], consumers: [y], partitions: 6 }
  - { name: b, purpose: p, key: order_id, records: [ns.B], producers: [x], consumers: [y] }
co_partitioned:
  - { name: event, key: event_id, topics: [a, b] }
";
        let all = problems(text).join("\n");
        assert!(
            all.contains("must have the same partition count in `test`, but a has 6, b has 3"),
            "{all}"
        );
        assert!(
            all.contains("keyed by `event_id` but topic `b` is keyed by `order_id`"),
            "{all}"
        );
    }

    #[test]
    fn an_overlay_overrides_defaults_and_topics_and_cannot_invent_topics() {
        let overlay = "\
defaults: { replication_factor: 3, min_insync_replicas: 2, configs: { unclean.leader.election.enable: false } }
topics:
  orders: { partitions: 12, retention: 30d }
";
        let c = Catalogue::parse(
            MINIMAL,
            "cat.yaml",
            Some((overlay, "prod.yaml")),
            "production",
        )
        .unwrap();
        let orders = &c.topics[0];
        assert_eq!(
            (
                orders.partitions,
                orders.replication_factor,
                orders.min_insync_replicas
            ),
            (12, 3, 2)
        );
        assert_eq!(
            orders.configs.get("retention.ms").map(String::as_str),
            Some("2592000000")
        );
        assert_eq!(
            orders
                .configs
                .get("unclean.leader.election.enable")
                .map(String::as_str),
            Some("false")
        );

        let err = Catalogue::parse(
            MINIMAL,
            "cat.yaml",
            Some(("topics: { nope: { partitions: 2 } }", "o.yaml")),
            "x",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("the `x` overlay sets topic `nope`"), "{err}");
        let err = Catalogue::parse(
            MINIMAL,
            "cat.yaml",
            Some(("defaults: { partitions: 0 }", "o.yaml")),
            "x",
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("o.yaml:1:"), "{err}");
    }

    #[test]
    fn a_topic_setting_beats_an_overlay_default() {
        let text = MINIMAL.replace(
            "    key: order_id\n",
            "    key: order_id\n    retention: 30d\n",
        );
        let c = Catalogue::parse(
            &text,
            "cat.yaml",
            Some(("defaults: { retention: 1d }", "o.yaml")),
            "x",
        )
        .unwrap();
        assert_eq!(
            c.topics[0].retention,
            Some(Retention::Finite(Duration::from_secs(30 * 86_400)))
        );
    }

    #[test]
    fn a_prefix_renames_topics_and_groups() {
        let c = Catalogue::load(&repo_catalogue(), "local")
            .unwrap()
            .with_prefix("t1.");
        assert!(c.topic("t1.booking.commands").is_some());
        assert_eq!(
            c.co_partitioned[0].topics,
            [
                "t1.booking.commands",
                "t1.availability",
                "t1.booking.progress"
            ]
        );
    }

    #[test]
    fn retention_accepts_durations_and_infinite() {
        assert_eq!(parse_retention("7d").unwrap().as_kafka_ms(), "604800000");
        assert_eq!(parse_retention("infinite").unwrap().as_kafka_ms(), "-1");
        assert!(parse_retention("0s").is_err());
    }

    #[test]
    fn config_values_may_be_numbers_or_booleans() {
        let text = MINIMAL.replace(
            "    key: order_id\n",
            "    key: order_id\n    configs: { segment.ms: 3600000, preallocate: true }\n",
        );
        let c = parse(&text).unwrap();
        assert_eq!(
            c.topics[0].configs.get("segment.ms").map(String::as_str),
            Some("3600000")
        );
        assert_eq!(
            c.topics[0].configs.get("preallocate").map(String::as_str),
            Some("true")
        );
    }
}
