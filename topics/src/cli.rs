//! The `topics` command line: argument parsing (clap) and one function per command, writing
//! results to `out` and progress and errors to `err`. [`run`] never panics on user input and
//! never exits the process; it returns the exit code (0 ok or no change, 2 drift or an
//! incompatible schema, 1 error), so tests drive the CLI in-process exactly as a user would.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use boxoffice_avro::registry::RegistryArgs;
use clap::{Args, Parser, Subcommand};

use crate::catalogue::{Catalogue, CatalogueError, DEFAULT_CATALOGUE};
use crate::cluster::{Cluster, ClusterError, MetadataView, Source};
use crate::kafka::KafkaArgs;
use crate::names::TopicPrefix;
use crate::plan::{self, Change, Permissions, Plan, Scope};
use crate::render::{self, Output, Table};
use crate::schemas::{self, Registry, SchemaError, Status};
use crate::{docs, lag};

/// The process exit code of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Success; for `plan`, the cluster matches the catalogue.
    Ok,
    /// Something went wrong, or the plan cannot be applied; nothing was left half-done
    /// without saying so.
    Error,
    /// `plan`: the cluster differs from the catalogue. `schemas check|register`: a schema is
    /// incompatible with its registered version.
    Drift,
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Error => 1,
            Exit::Drift => 2,
        }
    }
}

const ABOUT: &str =
    "Manage boxoffice's Kafka topics and record schemas from the catalogue (topics/topics.yaml).";

const LONG_ABOUT: &str = "Manage boxoffice's Kafka topics and record schemas from the catalogue (topics/topics.yaml).

The catalogue lists every topic (partitions, replication, cleanup policy, retention, min ISR, key, record types, co-partitioning); env/<env>.yaml overlays it per environment.

Exit codes: 0 ok / no change, 2 drift (plan) or incompatible schema (schemas), 1 error.";

#[derive(Debug, Parser)]
#[command(name = "topics", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Which topics a command looks at on the cluster.
#[derive(Debug, Clone, Args)]
pub struct ScopeArgs {
    /// Prefix put in front of every catalogue topic name (and so every subject). Only cluster
    /// topics starting with it are in scope, so side-by-side copies of the catalogue (tests,
    /// shared development clusters) never see each other.
    #[command(flatten)]
    pub topic_prefix: TopicPrefix,
}

/// Where the catalogue is and which environment overlay to use.
#[derive(Debug, Clone, Args)]
pub struct CatalogueArgs {
    /// The catalogue file; overlays are read from env/<env>.yaml beside it.
    #[arg(long, env = "BOXOFFICE_TOPICS_CATALOGUE", default_value = DEFAULT_CATALOGUE)]
    pub catalogue: PathBuf,

    /// The environment overlay to apply (e.g. local, production).
    #[arg(long, env = "BOXOFFICE_ENV", default_value = "local")]
    pub env: String,

    #[command(flatten)]
    pub scope: ScopeArgs,
}

impl CatalogueArgs {
    fn load(&self) -> Result<Catalogue, CatalogueError> {
        Ok(Catalogue::load(&self.catalogue, &self.env)?
            .with_prefix(self.scope.topic_prefix.as_str()))
    }
}

#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what `apply` would change: creates, partition increases, config sets, overrides to
    /// remove, topics on the cluster missing from the catalogue. Exit 0 no change, 2 drift, 1
    /// error or a change that cannot be applied.
    Plan {
        #[command(flatten)]
        catalogue: CatalogueArgs,
        #[command(flatten)]
        output: OutputArgs,
        #[command(flatten, next_help_heading = "Kafka")]
        kafka: KafkaArgs,
    },
    /// Show the plan, then carry it out. Refuses everything if any part is refused or needs a
    /// flag that was not given.
    Apply(ApplyArgs),
    /// List the topics in scope and whether the catalogue knows them.
    List {
        #[command(flatten)]
        catalogue: CatalogueArgs,
        #[command(flatten)]
        output: OutputArgs,
        #[command(flatten, next_help_heading = "Kafka")]
        kafka: KafkaArgs,
    },
    /// Partitions (leader, replicas, ISR, watermarks) and configs (with their source) of
    /// topics; by default every catalogue topic that exists.
    Describe(DescribeArgs),
    /// Delete topics. Needs --yes.
    Delete(DeleteArgs),
    /// Consumer lag per group, topic and partition: committed offset, end offset, lag.
    Lag(LagArgs),
    /// Check or register the record schemas of every catalogue topic.
    #[command(subcommand)]
    Schemas(SchemasCommand),
    /// Print the README's Topics section (markdown), generated from the catalogue.
    Docs {
        /// The catalogue file; every overlay in env/ beside it gets a column.
        #[arg(long, env = "BOXOFFICE_TOPICS_CATALOGUE", default_value = DEFAULT_CATALOGUE)]
        catalogue: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub catalogue: CatalogueArgs,
    /// Show the plan and the checks, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Allow adding partitions to keyed topics. Keys then map to other partitions: records of
    /// one key written before and after the change are no longer in one ordered partition.
    #[arg(long)]
    pub allow_key_remap: bool,
    /// Delete topics in scope that the catalogue does not list.
    #[arg(long)]
    pub delete_unmanaged: bool,
    #[command(flatten, next_help_heading = "Kafka")]
    pub kafka: KafkaArgs,
}

#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// Topics to describe (cluster names); default: every catalogue topic on the cluster.
    pub topics: Vec<String>,
    /// Show every config, not only overrides, broker settings and the ones the catalogue manages.
    #[arg(long)]
    pub all_configs: bool,
    #[command(flatten)]
    pub catalogue: CatalogueArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten, next_help_heading = "Kafka")]
    pub kafka: KafkaArgs,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Topics to delete (cluster names).
    #[arg(required = true)]
    pub topics: Vec<String>,
    /// Confirm the deletion (records in these topics are lost).
    #[arg(long)]
    pub yes: bool,
    #[command(flatten, next_help_heading = "Kafka")]
    pub kafka: KafkaArgs,
}

#[derive(Debug, Args)]
pub struct LagArgs {
    /// Consumer groups to report (repeatable); default: every group on the cluster.
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// Topics to report (repeatable); default: every topic in scope.
    #[arg(long = "topic")]
    pub topics: Vec<String>,
    #[command(flatten)]
    pub scope: ScopeArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten, next_help_heading = "Kafka")]
    pub kafka: KafkaArgs,
}

#[derive(Debug, Subcommand)]
pub enum SchemasCommand {
    /// Compare each record schema with its subject's latest version (BACKWARD). Exit 0 all
    /// compatible or new, 2 an incompatible change (the breaking fields are named), 1 error.
    Check(SchemasArgs),
    /// Check, then register every new or changed schema. Registers nothing if any is
    /// incompatible.
    Register(SchemasArgs),
}

#[derive(Debug, Args)]
pub struct SchemasArgs {
    /// Read the .avsc files of this directory instead of the schemas built into boxoffice-avro
    /// (to vet a change before it is merged).
    #[arg(long)]
    pub schemas_dir: Option<PathBuf>,
    #[command(flatten)]
    pub catalogue: CatalogueArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten, next_help_heading = "Schema registry")]
    pub registry: RegistryArgs,
}

/// Everything that ends a command with exit code 1.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Catalogue(#[from] CatalogueError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    #[error("cannot encode JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Refused(String),
}

type Out<'a> = &'a mut (dyn Write + Send);

/// Parses `args` (the first is the program name) and runs the command.
pub async fn run<I, T>(args: I, out: Out<'_>, err: Out<'_>) -> Exit
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            // Help and version are answers, not errors; clap's own exit code 2 for a usage
            // error would read as "drift", so every other parse failure is 1.
            return if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = write!(out, "{}", e.render());
                Exit::Ok
            } else {
                let _ = write!(err, "{}", e.render());
                Exit::Error
            };
        }
    };
    match execute(cli.command, out, err).await {
        Ok(exit) => exit,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            Exit::Error
        }
    }
}

async fn execute(command: Command, out: Out<'_>, err: Out<'_>) -> Result<Exit, Error> {
    match command {
        Command::Plan {
            catalogue,
            kafka,
            output,
        } => plan_command(&catalogue, &kafka, output.output, out, err).await,
        Command::Apply(args) => apply_command(&args, out, err).await,
        Command::List {
            catalogue,
            kafka,
            output,
        } => list_command(&catalogue, &kafka, output.output, out, err).await,
        Command::Describe(args) => describe_command(&args, out, err).await,
        Command::Delete(args) => delete_command(&args, out, err).await,
        Command::Lag(args) => lag_command(&args, out, err).await,
        Command::Schemas(SchemasCommand::Check(args)) => {
            schemas_command(&args, false, out, err).await
        }
        Command::Schemas(SchemasCommand::Register(args)) => {
            schemas_command(&args, true, out, err).await
        }
        Command::Docs { catalogue } => {
            write!(out, "{}", docs::markdown(&catalogue)?)?;
            Ok(Exit::Ok)
        }
    }
}

fn progress(err: Out<'_>, line: &str) {
    let _ = writeln!(err, "topics: {line}");
}

async fn connect(kafka: &KafkaArgs, err: Out<'_>) -> Result<(Cluster, MetadataView), Error> {
    progress(
        err,
        &format!("connecting to Kafka at {} …", kafka.bootstrap_servers),
    );
    Ok(Cluster::connect(kafka).await?)
}

fn print_json(out: Out<'_>, value: &impl serde::Serialize) -> Result<(), Error> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Reads the cluster and computes the plan.
async fn read_plan(
    catalogue_args: &CatalogueArgs,
    kafka: &KafkaArgs,
    err: Out<'_>,
) -> Result<(Catalogue, Cluster, Plan, String), Error> {
    // The catalogue is validated before any connection: a bad file never reaches a cluster.
    let catalogue = catalogue_args.load()?;
    let (cluster, _) = connect(kafka, err).await?;
    let scope = Scope::new(catalogue_args.scope.topic_prefix.as_str());
    progress(err, "reading topics and configs …");
    let (snapshot, _) = cluster.snapshot(&scope).await?;
    let plan = plan::plan(&catalogue, &snapshot, &scope);
    let prefix = if scope.prefix.is_empty() {
        String::new()
    } else {
        format!(", prefix `{}`", scope.prefix)
    };
    let header = format!(
        "Plan for `{}` ({}{prefix}) against {} ({} broker(s), {} topic(s) in scope):",
        catalogue.env,
        catalogue_args.catalogue.display(),
        cluster.servers(),
        snapshot.brokers,
        snapshot.topics.len()
    );
    Ok((catalogue, cluster, plan, header))
}

async fn plan_command(
    catalogue_args: &CatalogueArgs,
    kafka: &KafkaArgs,
    output: Output,
    out: Out<'_>,
    err: Out<'_>,
) -> Result<Exit, Error> {
    let (catalogue, cluster, plan, header) = read_plan(catalogue_args, kafka, err).await?;
    match output {
        Output::Table => write!(
            out,
            "{}",
            render::plan_text(&plan, &header, Permissions::default())
        )?,
        Output::Json => print_json(
            out,
            &render::plan_json(&plan, &catalogue.env, cluster.servers()),
        )?,
    }
    Ok(if !plan.refusals.is_empty() {
        Exit::Error
    } else if plan.has_drift() {
        Exit::Drift
    } else {
        Exit::Ok
    })
}

async fn apply_command(args: &ApplyArgs, out: Out<'_>, err: Out<'_>) -> Result<Exit, Error> {
    let permissions = Permissions {
        allow_key_remap: args.allow_key_remap,
        delete_unmanaged: args.delete_unmanaged,
    };
    let (catalogue, cluster, plan, header) = read_plan(&args.catalogue, &args.kafka, err).await?;
    write!(out, "{}", render::plan_text(&plan, &header, permissions))?;

    let blockers = plan.blockers(permissions);
    if !blockers.is_empty() {
        let list: Vec<String> = blockers.iter().map(|b| format!("  - {b}")).collect();
        return Err(Error::Refused(format!(
            "nothing was applied:\n{}",
            list.join("\n")
        )));
    }
    let changes = plan.executable(permissions);
    if changes.is_empty() {
        writeln!(out, "\nNothing to apply.")?;
        return Ok(Exit::Ok);
    }
    if args.dry_run {
        writeln!(out, "\nDry run: the checks passed; nothing was changed.")?;
        return Ok(Exit::Ok);
    }

    // Creates first, then partition increases, then configs (one call per topic, with the
    // topic's full desired set), then deletions.
    let mut steps: Vec<(String, Step<'_>)> = Vec::new();
    let mut config_topics: Vec<&str> = Vec::new();
    for change in &changes {
        match change {
            Change::Create {
                topic,
                partitions,
                replication_factor,
                configs,
            } => steps.push((
                format!("create {topic}"),
                Step::Create {
                    topic,
                    partitions: *partitions,
                    replication: *replication_factor,
                    configs,
                },
            )),
            Change::AddPartitions { topic, to, .. } => steps.push((
                format!("add partitions to {topic} (→ {to})"),
                Step::Partitions { topic, to: *to },
            )),
            Change::SetConfig { topic, .. } | Change::RemoveOverride { topic, .. } => {
                if !config_topics.contains(&topic.as_str()) {
                    config_topics.push(topic);
                }
            }
            Change::Unmanaged { topic, .. } => {
                steps.push((format!("delete {topic}"), Step::Delete { topic }))
            }
            // Blocked above; listed for completeness.
            Change::ChangeReplication { .. } => {}
        }
    }
    for topic in config_topics {
        if let Some(spec) = catalogue.topic(topic) {
            steps.push((
                format!("set configs of {topic}"),
                Step::Configs {
                    topic,
                    configs: &spec.configs,
                },
            ));
        }
    }
    steps.sort_by_key(|(_, step)| step.order());

    let started = Instant::now();
    let total = steps.len();
    for (i, (label, step)) in steps.iter().enumerate() {
        progress(err, &format!("[{}/{total}] {label} …", i + 1));
        let result = match step {
            Step::Create {
                topic,
                partitions,
                replication,
                configs,
            } => {
                cluster
                    .create_topic(topic, *partitions, *replication, configs)
                    .await
            }
            Step::Partitions { topic, to } => cluster.add_partitions(topic, *to).await,
            Step::Configs { topic, configs } => cluster.set_topic_configs(topic, configs).await,
            Step::Delete { topic } => cluster.delete_topics(&[topic]).await,
        };
        if let Err(e) = result {
            return Err(Error::Refused(format!(
                "apply stopped at step {}/{total} ({label}) after {} step(s) succeeded: {e}\nRun `topics plan` to see what remains.",
                i + 1,
                i
            )));
        }
    }

    // The broker acknowledged every step; confirm the cluster now reads as the catalogue says
    // (metadata can lag an acknowledgement by a moment, so poll within the timeout).
    progress(err, "verifying …");
    let scope = Scope::new(args.catalogue.scope.topic_prefix.as_str());
    let deadline = Instant::now() + args.kafka.timeout;
    loop {
        let (snapshot, _) = cluster.snapshot(&scope).await?;
        let after = plan::plan(&catalogue, &snapshot, &scope);
        let remaining: Vec<&Change> = after
            .changes
            .iter()
            .filter(|c| !matches!(c, Change::Unmanaged { .. }) || permissions.delete_unmanaged)
            .collect();
        if remaining.is_empty() && after.refusals.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(Error::Refused(format!(
                "apply finished but the cluster still differs from the catalogue:\n{}",
                render::plan_text(&after, "Remaining:", permissions)
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    writeln!(
        out,
        "\nApply complete: {total} step(s) in {:.1}s.",
        started.elapsed().as_secs_f64()
    )?;
    Ok(Exit::Ok)
}

/// One admin operation of an apply.
#[derive(Debug)]
enum Step<'a> {
    Create {
        topic: &'a str,
        partitions: u32,
        replication: u16,
        configs: &'a BTreeMap<String, String>,
    },
    Partitions {
        topic: &'a str,
        to: u32,
    },
    Configs {
        topic: &'a str,
        configs: &'a BTreeMap<String, String>,
    },
    Delete {
        topic: &'a str,
    },
}

impl Step<'_> {
    fn order(&self) -> u8 {
        match self {
            Step::Create { .. } => 0,
            Step::Partitions { .. } => 1,
            Step::Configs { .. } => 2,
            Step::Delete { .. } => 3,
        }
    }
}

async fn list_command(
    catalogue_args: &CatalogueArgs,
    kafka: &KafkaArgs,
    output: Output,
    out: Out<'_>,
    err: Out<'_>,
) -> Result<Exit, Error> {
    let catalogue = catalogue_args.load()?;
    let (_, metadata) = connect(kafka, err).await?;
    let scope = Scope::new(catalogue_args.scope.topic_prefix.as_str());

    #[derive(serde::Serialize)]
    struct Row<'a> {
        name: &'a str,
        status: &'static str,
        partitions: Option<usize>,
        replication_factor: Option<u16>,
        key: Option<&'a str>,
        records: usize,
    }
    let mut rows: BTreeMap<&str, Row<'_>> = BTreeMap::new();
    for (name, meta) in metadata
        .topics
        .iter()
        .filter(|(name, _)| scope.contains(name))
    {
        let spec = catalogue.topic(name);
        rows.insert(
            name,
            Row {
                name,
                status: if spec.is_some() {
                    "managed"
                } else {
                    "unmanaged"
                },
                partitions: Some(meta.partitions.len()),
                replication_factor: Some(meta.replication_factor()),
                key: spec.map(|s| s.key.as_str()),
                records: spec.map_or(0, |s| s.records.len()),
            },
        );
    }
    for spec in &catalogue.topics {
        rows.entry(&spec.name).or_insert(Row {
            name: &spec.name,
            status: "missing",
            partitions: None,
            replication_factor: None,
            key: Some(&spec.key),
            records: spec.records.len(),
        });
    }
    match output {
        Output::Json => print_json(
            out,
            &serde_json::json!({ "topics": rows.values().collect::<Vec<_>>() }),
        )?,
        Output::Table => {
            let mut table = Table::new([
                "TOPIC",
                "STATUS",
                "PARTITIONS",
                "REPLICAS",
                "KEY",
                "RECORDS",
            ]);
            let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
            for row in rows.values() {
                table.row([
                    row.name.to_owned(),
                    row.status.to_owned(),
                    or_dash(row.partitions.map(|p| p.to_string())),
                    or_dash(row.replication_factor.map(|r| r.to_string())),
                    or_dash(row.key.map(str::to_owned)),
                    row.records.to_string(),
                ]);
            }
            write!(out, "{}", table.render())?;
        }
    }
    Ok(Exit::Ok)
}

async fn describe_command(args: &DescribeArgs, out: Out<'_>, err: Out<'_>) -> Result<Exit, Error> {
    let catalogue = args.catalogue.load()?;
    let (cluster, metadata) = connect(&args.kafka, err).await?;
    let topics: Vec<String> = if args.topics.is_empty() {
        catalogue
            .topics
            .iter()
            .map(|t| t.name.clone())
            .filter(|t| metadata.topics.contains_key(t))
            .collect()
    } else {
        args.topics.clone()
    };
    if topics.is_empty() {
        writeln!(
            out,
            "No catalogue topic exists on {}; `topics plan` shows what to create.",
            cluster.servers()
        )?;
        return Ok(Exit::Ok);
    }
    refuse_missing(&topics, &metadata, &cluster, "")?;
    progress(err, &format!("describing {} topic(s) …", topics.len()));
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let configs = cluster.topic_configs(&names).await?;
    let partitions: Vec<(String, i32)> = topics
        .iter()
        .flat_map(|t| {
            metadata
                .topics
                .get(t)
                .into_iter()
                .flat_map(move |m| m.partitions.iter().map(move |p| (t.clone(), p.id)))
        })
        .collect();
    let watermarks = cluster.watermarks(partitions).await?;

    let mut described = Vec::new();
    for topic in &topics {
        let Some(meta) = metadata.topics.get(topic) else {
            continue;
        };
        let spec = catalogue.topic(topic);
        let parts: Vec<serde_json::Value> = meta
            .partitions
            .iter()
            .map(|p| {
                let w = watermarks.get(&(topic.clone(), p.id));
                serde_json::json!({
                    "partition": p.id, "leader": p.leader, "replicas": p.replicas, "isr": p.isr,
                    "low_watermark": w.map(|w| w.low), "high_watermark": w.map(|w| w.high),
                })
            })
            .collect();
        let entries: Vec<&crate::cluster::ConfigValue> = configs
            .get(topic)
            .into_iter()
            .flatten()
            .filter(|c| {
                args.all_configs
                    || c.source != Source::Default
                    || spec.is_some_and(|s| s.configs.contains_key(&c.name))
            })
            .collect();
        described.push(serde_json::json!({
            "name": topic,
            "managed": spec.is_some(),
            "key": spec.map(|s| &s.key),
            "partition_count": meta.partitions.len(),
            "replication_factor": meta.replication_factor(),
            "partitions": parts,
            "configs": entries,
        }));
    }

    match args.output.output {
        Output::Json => print_json(out, &serde_json::json!({ "topics": described }))?,
        Output::Table => {
            for topic in &described {
                let name = topic["name"].as_str().unwrap_or_default();
                let key = topic["key"]
                    .as_str()
                    .map_or(String::new(), |k| format!(", key {k}"));
                writeln!(
                    out,
                    "Topic {name}  ({} partitions, replication {}{key}{})",
                    topic["partition_count"],
                    topic["replication_factor"],
                    if topic["managed"] == true {
                        ""
                    } else {
                        ", not in the catalogue"
                    }
                )?;
                let mut table =
                    Table::new(["PARTITION", "LEADER", "REPLICAS", "ISR", "LOW", "HIGH"]);
                let ids = |v: &serde_json::Value| {
                    v.as_array()
                        .map(|a| {
                            a.iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default()
                };
                for p in topic["partitions"].as_array().into_iter().flatten() {
                    table.row([
                        p["partition"].to_string(),
                        p["leader"].to_string(),
                        ids(&p["replicas"]),
                        ids(&p["isr"]),
                        p["low_watermark"].to_string(),
                        p["high_watermark"].to_string(),
                    ]);
                }
                write!(out, "{}", indent(&table.render()))?;
                let mut table = Table::new(["CONFIG", "VALUE", "SOURCE"]);
                for c in topic["configs"].as_array().into_iter().flatten() {
                    table.row([
                        c["name"].as_str().unwrap_or_default().to_owned(),
                        c["value"].as_str().unwrap_or("(hidden)").to_owned(),
                        c["source"].as_str().unwrap_or_default().to_owned(),
                    ]);
                }
                writeln!(out)?;
                write!(out, "{}", indent(&table.render()))?;
                writeln!(out)?;
            }
        }
    }
    Ok(Exit::Ok)
}

/// Refuses a command naming topics the cluster does not have, listing all of them at once.
fn refuse_missing(
    topics: &[String],
    metadata: &MetadataView,
    cluster: &Cluster,
    consequence: &str,
) -> Result<(), Error> {
    let missing: Vec<&str> = topics
        .iter()
        .filter(|t| !metadata.topics.contains_key(*t))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::Refused(format!(
        "no such topic on {}: {}{consequence}",
        cluster.servers(),
        missing.join(", ")
    )))
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

async fn delete_command(args: &DeleteArgs, out: Out<'_>, err: Out<'_>) -> Result<Exit, Error> {
    if let Some(internal) = args.topics.iter().find(|t| t.starts_with('_')) {
        return Err(Error::Refused(format!(
            "refusing to delete internal topic {internal}"
        )));
    }
    let (cluster, metadata) = connect(&args.kafka, err).await?;
    refuse_missing(&args.topics, &metadata, &cluster, " (nothing was deleted)")?;
    if !args.yes {
        return Err(Error::Refused(format!(
            "would delete {} and every record in {}; pass --yes to confirm",
            args.topics.join(", "),
            if args.topics.len() == 1 { "it" } else { "them" }
        )));
    }
    progress(err, &format!("deleting {} …", args.topics.join(", ")));
    let names: Vec<&str> = args.topics.iter().map(String::as_str).collect();
    cluster.delete_topics(&names).await?;
    writeln!(out, "Deleted {}.", args.topics.join(", "))?;
    Ok(Exit::Ok)
}

async fn lag_command(args: &LagArgs, out: Out<'_>, err: Out<'_>) -> Result<Exit, Error> {
    let (cluster, metadata) = connect(&args.kafka, err).await?;
    let scope = Scope::new(args.scope.topic_prefix.as_str());
    let topics: Vec<String> = if args.topics.is_empty() {
        metadata
            .topics
            .keys()
            .filter(|t| scope.contains(t))
            .cloned()
            .collect()
    } else {
        args.topics.clone()
    };
    let rows = lag::report(&cluster, &metadata, &args.groups, &topics, |line| {
        progress(err, line)
    })
    .await?;
    match args.output.output {
        Output::Json => print_json(out, &serde_json::json!({ "lag": rows }))?,
        Output::Table => {
            if rows.is_empty() {
                writeln!(
                    out,
                    "No committed offsets for the selected groups and topics."
                )?;
            } else {
                let mut table =
                    Table::new(["GROUP", "TOPIC", "PARTITION", "COMMITTED", "END", "LAG"]);
                for r in &rows {
                    table.row([
                        r.group.clone(),
                        r.topic.clone(),
                        r.partition.to_string(),
                        r.committed.to_string(),
                        r.end.to_string(),
                        r.lag.to_string(),
                    ]);
                }
                write!(out, "{}", table.render())?;
            }
        }
    }
    Ok(Exit::Ok)
}

async fn schemas_command(
    args: &SchemasArgs,
    register: bool,
    out: Out<'_>,
    err: Out<'_>,
) -> Result<Exit, Error> {
    let catalogue = args.catalogue.load()?;
    let local = match &args.schemas_dir {
        Some(dir) => schemas::from_dir(dir)?,
        None => schemas::embedded(),
    };
    let subjects = schemas::subjects(&catalogue, &local)?;
    let registry = Registry::new(&args.registry)?;
    progress(
        err,
        &format!(
            "checking {} subject(s) against {} …",
            subjects.len(),
            args.registry.url
        ),
    );
    let checks = schemas::check(&registry, &subjects, |line| progress(err, line)).await?;
    let incompatible = checks.iter().any(|c| c.is_incompatible());

    let mut registered: BTreeMap<String, i64> = BTreeMap::new();
    if register && !incompatible {
        let to_register: Vec<_> = subjects
            .iter()
            .zip(&checks)
            .filter(|(_, c)| matches!(c.status, Status::New | Status::Compatible { .. }))
            .collect();
        for (i, (subject, _)) in to_register.iter().enumerate() {
            progress(
                err,
                &format!(
                    "[{}/{}] registering {}",
                    i + 1,
                    to_register.len(),
                    subject.subject
                ),
            );
            let id = registry
                .register(&subject.subject, &subject.schema.avsc)
                .await?;
            registered.insert(subject.subject.clone(), id);
        }
    }

    match args.output.output {
        Output::Json => {
            let rows: Vec<serde_json::Value> = checks
                .iter()
                .map(|c| {
                    let mut value = serde_json::to_value(c).unwrap_or_default();
                    if let Some(id) = registered.get(&c.subject) {
                        value["registered_id"] = serde_json::json!(id);
                    }
                    value
                })
                .collect();
            print_json(
                out,
                &serde_json::json!({ "incompatible": incompatible, "subjects": rows }),
            )?;
        }
        Output::Table => {
            let mut table = Table::new(["SUBJECT", "STATUS", "DETAIL"]);
            for c in &checks {
                let (status, detail) = match &c.status {
                    Status::New => ("new", String::new()),
                    Status::Unchanged { version, id } => {
                        ("unchanged", format!("version {version}, id {id}"))
                    }
                    Status::Compatible { latest_version } => {
                        ("compatible", format!("new version after {latest_version}"))
                    }
                    Status::Incompatible {
                        latest_version,
                        breaks,
                    } => (
                        "INCOMPATIBLE",
                        format!(
                            "with version {latest_version}: {}",
                            breaks
                                .iter()
                                .map(|b| format!("field `{}`: {}", b.field, b.reason))
                                .collect::<Vec<_>>()
                                .join("; ")
                        ),
                    ),
                };
                let detail = match registered.get(&c.subject) {
                    Some(id) => format!(
                        "registered, id {id}{}",
                        if detail.is_empty() {
                            String::new()
                        } else {
                            format!("; {detail}")
                        }
                    ),
                    None => detail,
                };
                table.row([c.subject.clone(), status.to_owned(), detail]);
            }
            write!(out, "{}", table.render())?;
        }
    }
    if incompatible {
        let _ = writeln!(
            err,
            "error: incompatible schema change{}: consumers on the new schema could not read records already in the topic",
            if register {
                "; nothing was registered"
            } else {
                ""
            }
        );
        return Ok(Exit::Drift);
    }
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue;
    use crate::names::parse_prefix;

    async fn run_args(args: &[&str]) -> (Exit, String, String) {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let exit = run(
            std::iter::once("topics").chain(args.iter().copied()),
            &mut out,
            &mut err,
        )
        .await;
        (
            exit,
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        )
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[tokio::test]
    async fn help_is_success_and_usage_errors_are_exit_1() {
        let (exit, out, _) = run_args(&["--help"]).await;
        assert_eq!(exit, Exit::Ok);
        assert!(out.contains("plan") && out.contains("schemas"), "{out}");
        let (exit, _, err) = run_args(&["plan", "--no-such-flag"]).await;
        assert_eq!(exit, Exit::Error, "a usage error must not read as drift");
        assert!(err.contains("--no-such-flag"), "{err}");
    }

    #[tokio::test]
    async fn a_bad_catalogue_fails_before_any_connection() {
        let dir = std::env::temp_dir().join(format!("topics-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("env")).unwrap();
        let file = dir.join("topics.yaml");
        std::fs::write(
            &file,
            "version: 1\ntopics:\n  - name: a\n    partitons: 3\n",
        )
        .unwrap();
        std::fs::write(dir.join("env/local.yaml"), "{}\n").unwrap();
        // Port 1 has no broker: if the catalogue were not checked first this would time out.
        let (exit, _, err) = run_args(&[
            "plan",
            "--catalogue",
            file.to_str().unwrap(),
            "--bootstrap-servers",
            "127.0.0.1:1",
            "--kafka-timeout",
            "30s",
        ])
        .await;
        assert_eq!(exit, Exit::Error);
        assert!(err.contains("topics.yaml:4:5"), "{err}");
        assert!(err.contains("unknown field `partitons`"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn an_unknown_environment_names_the_known_ones() {
        let path = catalogue::repo_catalogue();
        let (exit, _, err) = run_args(&[
            "plan",
            "--catalogue",
            path.to_str().unwrap(),
            "--env",
            "staging",
        ])
        .await;
        assert_eq!(exit, Exit::Error);
        assert!(err.contains("local, production"), "{err}");
    }

    #[tokio::test]
    async fn delete_refuses_internal_topics() {
        let (exit, _, err) = run_args(&["delete", "__consumer_offsets", "--yes"]).await;
        assert_eq!(exit, Exit::Error);
        assert!(err.contains("internal"), "{err}");
    }

    #[tokio::test]
    async fn docs_prints_the_markdown_table() {
        let path = catalogue::repo_catalogue();
        let (exit, out, _) = run_args(&["docs", "--catalogue", path.to_str().unwrap()]).await;
        assert_eq!(exit, Exit::Ok);
        assert!(
            out.contains("| Topic | Key | Records | Producers | Consumers | Purpose |"),
            "{out}"
        );
    }

    #[test]
    fn prefixes_are_valid_topic_name_starts() {
        assert_eq!(parse_prefix("t1."), Ok("t1.".to_owned()));
        assert!(parse_prefix("_x").is_err());
        assert!(parse_prefix("a b").is_err());
    }
}
