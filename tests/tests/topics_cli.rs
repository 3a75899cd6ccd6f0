//! The `topics` CLI against the real Kafka and schema registry, driven in-process through
//! `boxoffice_topics::run` with the same arguments a user types. Every test works under its own
//! topic prefix or its own temporary catalogue, so tests run side by side on the shared stack,
//! and deletes only the topics it created.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use boxoffice_tests::{names, services};
use boxoffice_topics::Exit;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

/// The outcome of one CLI run.
#[derive(Debug)]
struct Run {
    exit: Exit,
    out: String,
    err: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.out).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.out, self.err
            )
        })
    }

    #[track_caller]
    fn expect(&self, exit: Exit) -> &Run {
        assert_eq!(
            self.exit, exit,
            "stdout:\n{}\nstderr:\n{}",
            self.out, self.err
        );
        self
    }
}

async fn topics(args: &[&str]) -> Run {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let exit = boxoffice_topics::run(
        std::iter::once("topics").chain(args.iter().copied()),
        &mut out,
        &mut err,
    )
    .await;
    Run {
        exit,
        out: String::from_utf8_lossy(&out).into_owned(),
        err: String::from_utf8_lossy(&err).into_owned(),
    }
}

/// Runs a Kafka command against the test stack.
async fn kafka(args: &[&str]) -> Run {
    let services = services().await;
    let mut all = args.to_vec();
    all.extend([
        "--bootstrap-servers",
        &services.kafka_bootstrap,
        "--kafka-timeout",
        "15s",
    ]);
    topics(&all).await
}

/// Runs a registry command against the test stack.
async fn registry(args: &[&str]) -> Run {
    let services = services().await;
    let mut all = args.to_vec();
    all.extend([
        "--schema-registry-url",
        &services.registry_url,
        "--schema-registry-timeout",
        "15s",
    ]);
    topics(&all).await
}

fn repo_catalogue() -> String {
    boxoffice_topics::catalogue::repo_catalogue()
        .display()
        .to_string()
}

/// A catalogue written to a temporary directory (with an empty `local` overlay, removed on
/// drop), applied under a prefix of its own so no other topic on the shared cluster is in scope.
struct Fixture {
    dir: PathBuf,
    prefix: String,
}

impl Fixture {
    fn new(label: &str, yaml: &str) -> Fixture {
        let dir = std::env::temp_dir().join(names::unique("topics_cli"));
        std::fs::create_dir_all(dir.join("env")).expect("temporary catalogue directory");
        std::fs::write(dir.join("env/local.yaml"), "description: test\n").expect("overlay written");
        let fixture = Fixture {
            dir,
            prefix: format!("{}.", names::unique(label)),
        };
        fixture.write(yaml);
        fixture
    }

    fn write(&self, yaml: &str) {
        std::fs::write(self.dir.join("topics.yaml"), yaml).expect("catalogue written");
    }

    fn path(&self) -> String {
        self.dir.join("topics.yaml").display().to_string()
    }

    fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cluster name of a catalogue topic.
    fn topic(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// `args` followed by this fixture's `--catalogue` and `--topic-prefix`.
    fn args<'a>(&'a self, args: &[&'a str]) -> Vec<String> {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend([
            "--catalogue".to_owned(),
            self.path(),
            "--topic-prefix".to_owned(),
            self.prefix.clone(),
        ]);
        all
    }

    /// Runs a Kafka command on this fixture's catalogue.
    async fn kafka(&self, args: &[&str]) -> Run {
        let all = self.args(args);
        kafka(&all.iter().map(String::as_str).collect::<Vec<_>>()).await
    }

    /// Runs a registry command on this fixture's catalogue.
    async fn registry(&self, args: &[&str]) -> Run {
        let all = self.args(args);
        registry(&all.iter().map(String::as_str).collect::<Vec<_>>()).await
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A catalogue of keyed topics with the given partition counts and extra settings.
fn catalogue_yaml(topics: &[(&str, u32, &str)]) -> String {
    let mut yaml =
        String::from("version: 1\ndefaults: { replication_factor: 1, retention: 7d }\ntopics:\n");
    for (name, partitions, extra) in topics {
        yaml.push_str(&format!(
            "  - {{ name: {name}, purpose: test, key: event_id, records: [test.Probe], producers: [t], consumers: [t], partitions: {partitions}{extra} }}\n"
        ));
    }
    yaml
}

async fn admin() -> AdminClient<DefaultClientContext> {
    services()
        .await
        .kafka()
        .client_config()
        .create()
        .expect("admin client")
}

/// Partition counts of the named topics that exist.
async fn partition_counts(names: &[&str]) -> BTreeMap<String, usize> {
    let consumer: BaseConsumer = services()
        .await
        .kafka()
        .client_config()
        .create()
        .expect("metadata consumer");
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(15))
        .expect("cluster metadata");
    metadata
        .topics()
        .iter()
        .filter(|t| names.contains(&t.name()) && t.error().is_none())
        .map(|t| (t.name().to_owned(), t.partitions().len()))
        .collect()
}

/// Deletes topics this test created (never others).
async fn cleanup(names: &[String]) {
    let existing = partition_counts(&names.iter().map(String::as_str).collect::<Vec<_>>()).await;
    if existing.is_empty() {
        return;
    }
    let mut args = vec!["delete", "--yes"];
    args.extend(existing.keys().map(String::as_str));
    kafka(&args).await.expect(Exit::Ok);
}

const CATALOGUE_TOPICS: [&str; 7] = [
    "booking.commands",
    "orders.events",
    "payments.requests",
    "availability",
    "notifications",
    "dead.letters",
    "booking.progress",
];

#[tokio::test]
async fn plan_on_an_empty_cluster_lists_every_create_then_apply_leaves_it_clean() {
    let prefix = format!("{}.", names::unique("tcli_cycle"));
    let catalogue = repo_catalogue();
    let base = [
        "--catalogue",
        catalogue.as_str(),
        "--topic-prefix",
        prefix.as_str(),
    ];
    let with = |cmd: &[&'static str]| -> Vec<String> {
        cmd.iter()
            .chain(base.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let run = |args: Vec<String>| async move {
        kafka(&args.iter().map(String::as_str).collect::<Vec<_>>()).await
    };
    let topic_names: Vec<String> = CATALOGUE_TOPICS
        .iter()
        .map(|t| format!("{prefix}{t}"))
        .collect();

    // Empty cluster (for this prefix): every topic is a create, exit 2.
    let plan = run(with(&["plan"])).await;
    plan.expect(Exit::Drift);
    for topic in &topic_names {
        assert!(
            plan.out.contains(&format!("+ create {topic} ")),
            "{topic} missing:\n{}",
            plan.out
        );
    }
    assert!(
        plan.out
            .contains("Plan: 7 to create, 0 to update, 0 unmanaged, 0 refused."),
        "{}",
        plan.out
    );
    let json = run(with(&["plan", "--output", "json"])).await;
    json.expect(Exit::Drift);
    let json = json.json();
    assert_eq!(json["drift"], true);
    assert_eq!(json["summary"]["create"], 7);
    let availability = json["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["topic"] == format!("{prefix}availability"))
        .unwrap();
    assert_eq!(availability["action"], "create");
    assert_eq!(availability["partitions"], 6);
    assert_eq!(availability["configs"]["cleanup.policy"], "compact");

    // A dry run changes nothing.
    run(with(&["apply", "--dry-run"])).await.expect(Exit::Ok);
    assert!(
        partition_counts(&topic_names.iter().map(String::as_str).collect::<Vec<_>>())
            .await
            .is_empty()
    );

    let apply = run(with(&["apply"])).await;
    apply.expect(Exit::Ok);
    assert!(
        apply.out.contains("Apply complete: 7 step(s)"),
        "{}",
        apply.out
    );
    assert!(
        apply.err.contains("[7/7] create"),
        "progress is shown: {}",
        apply.err
    );

    let clean = run(with(&["plan"])).await;
    clean.expect(Exit::Ok);
    assert!(clean.out.contains("No changes."), "{}", clean.out);
    let clean_json = run(with(&["plan", "-o", "json"])).await;
    clean_json.expect(Exit::Ok);
    assert_eq!(clean_json.json()["drift"], false);

    // The read commands, as JSON.
    let list = run(with(&["list", "-o", "json"])).await;
    list.expect(Exit::Ok);
    let listed = list.json();
    let rows = listed["topics"].as_array().unwrap();
    assert_eq!(rows.len(), 7, "{listed}");
    assert!(rows.iter().all(|r| r["status"] == "managed"), "{listed}");

    let mut describe_args = with(&["describe", "-o", "json"]);
    describe_args.insert(1, format!("{prefix}booking.commands"));
    let describe = run(describe_args).await;
    describe.expect(Exit::Ok);
    let described = describe.json();
    let topic = &described["topics"][0];
    assert_eq!(topic["partition_count"], 6);
    assert_eq!(topic["key"], "event_id");
    let partitions = topic["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 6);
    assert_eq!(partitions[0]["high_watermark"], 0);
    assert!(
        partitions
            .iter()
            .all(|p| p["isr"].as_array().is_some_and(|isr| !isr.is_empty()))
    );
    let retention = topic["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "retention.ms")
        .unwrap();
    assert_eq!(retention["value"], "604800000");
    assert_eq!(retention["source"], "override");

    let table = run(with(&["describe"])).await;
    table.expect(Exit::Ok);
    assert!(
        table.out.contains(&format!(
            "Topic {prefix}availability  (6 partitions, replication 1, key event_id)"
        )),
        "{}",
        table.out
    );
    assert!(
        table.out.contains("cleanup.policy       compact  override"),
        "{}",
        table.out
    );

    cleanup(&topic_names).await;
}

#[tokio::test]
async fn a_changed_setting_in_the_file_shows_in_plan_and_is_applied() {
    let f = Fixture::new("tcli_setting", &catalogue_yaml(&[("orders", 2, "")]));
    let topic = f.topic("orders");

    f.kafka(&["apply"]).await.expect(Exit::Ok);
    f.kafka(&["plan"]).await.expect(Exit::Ok);

    f.write(&catalogue_yaml(&[(
        "orders",
        2,
        ", retention: 14d, configs: { segment.ms: 3600000 }",
    )]));
    let plan = f.kafka(&["plan"]).await;
    plan.expect(Exit::Drift);
    assert!(
        plan.out.contains(&format!("~ update {topic}")),
        "{}",
        plan.out
    );
    assert!(
        plan.out
            .contains("~ retention.ms: 604800000 (7days) → 1209600000 (14days)"),
        "{}",
        plan.out
    );
    assert!(
        plan.out
            .contains("~ segment.ms: default 604800000 (7days) → 3600000 (1h)"),
        "{}",
        plan.out
    );

    f.kafka(&["apply"]).await.expect(Exit::Ok);
    f.kafka(&["plan"]).await.expect(Exit::Ok);
    let describe = f.kafka(&["describe", &topic, "-o", "json"]).await;
    describe.expect(Exit::Ok);
    let configs: BTreeMap<String, (String, String)> = describe.json()["topics"][0]["configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let value = c["value"].as_str().unwrap_or_default().to_owned();
            (
                c["name"].as_str().unwrap().to_owned(),
                (value, c["source"].as_str().unwrap().to_owned()),
            )
        })
        .collect();
    assert_eq!(
        configs["retention.ms"],
        ("1209600000".to_owned(), "override".to_owned())
    );
    assert_eq!(
        configs["segment.ms"],
        ("3600000".to_owned(), "override".to_owned())
    );

    cleanup(&[topic]).await;
}

#[tokio::test]
async fn a_change_behind_the_tools_back_is_detected_as_drift_and_repaired() {
    let f = Fixture::new("tcli_drift", &catalogue_yaml(&[("orders", 2, "")]));
    let topic = f.topic("orders");
    f.kafka(&["apply"]).await.expect(Exit::Ok);

    // Through the admin API, as an operator with kafka-configs.sh would: shorter retention and
    // an extra override the catalogue does not know.
    let admin = admin().await;
    let alter = AlterConfig::new(ResourceSpecifier::Topic(&topic))
        .set("cleanup.policy", "delete")
        .set("min.insync.replicas", "1")
        .set("retention.ms", "3600000")
        .set("segment.ms", "600000");
    let results = admin
        .alter_configs(&[alter], &AdminOptions::new())
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    let plan = f.kafka(&["plan"]).await;
    plan.expect(Exit::Drift);
    assert!(
        plan.out
            .contains("~ retention.ms: 3600000 (1h) → 604800000 (7days)"),
        "{}",
        plan.out
    );
    assert!(
        plan.out
            .contains("- segment.ms = 600000 (10m)  (override not in the catalogue"),
        "{}",
        plan.out
    );
    let json = f.kafka(&["plan", "--output", "json"]).await;
    json.expect(Exit::Drift);
    let json = json.json();
    let actions: Vec<&str> = json["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["set_config", "remove_override"]);

    // A topic created by hand under the prefix is unmanaged drift, left alone by default.
    let stray = f.topic("stray");
    let created = admin
        .create_topics(
            &[NewTopic::new(&stray, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    let plan = f.kafka(&["plan"]).await;
    plan.expect(Exit::Drift);
    assert!(
        plan.out.contains(&format!("? unmanaged {stray}")),
        "{}",
        plan.out
    );

    f.kafka(&["apply"]).await.expect(Exit::Ok);
    let after = f.kafka(&["plan"]).await;
    after.expect(Exit::Drift);
    assert!(
        after
            .out
            .contains("Plan: 0 to create, 0 to update, 1 unmanaged, 0 refused."),
        "{}",
        after.out
    );
    assert!(
        partition_counts(&[&stray]).await.contains_key(&stray),
        "left alone without the flag"
    );

    f.kafka(&["apply", "--delete-unmanaged"])
        .await
        .expect(Exit::Ok);
    f.kafka(&["plan"]).await.expect(Exit::Ok);

    cleanup(&[topic, stray]).await;
}

#[tokio::test]
async fn adding_partitions_to_a_keyed_topic_needs_allow_key_remap() {
    let f = Fixture::new("tcli_remap", &catalogue_yaml(&[("commands", 2, "")]));
    let topic = f.topic("commands");
    f.kafka(&["apply"]).await.expect(Exit::Ok);

    f.write(&catalogue_yaml(&[("commands", 3, "")]));
    let plan = f.kafka(&["plan"]).await;
    plan.expect(Exit::Drift);
    assert!(plan.out.contains("~ partitions 2 → 3"), "{}", plan.out);
    assert!(plan.out.contains("re-maps keys"), "{}", plan.out);

    let refused = f.kafka(&["apply"]).await;
    refused.expect(Exit::Error);
    assert!(
        refused.err.contains("--allow-key-remap") && refused.err.contains("nothing was applied"),
        "{}",
        refused.err
    );
    assert_eq!(
        partition_counts(&[&topic]).await[&topic],
        2,
        "refused means unchanged"
    );

    f.kafka(&["apply", "--allow-key-remap"])
        .await
        .expect(Exit::Ok);
    assert_eq!(partition_counts(&[&topic]).await[&topic], 3);
    f.kafka(&["plan"]).await.expect(Exit::Ok);

    cleanup(&[topic]).await;
}

#[tokio::test]
async fn co_partitioned_topics_whose_counts_would_differ_are_refused_before_anything_changes() {
    let mut yaml = catalogue_yaml(&[
        ("commands", 3, ""),
        ("state", 3, ", cleanup_policy: compact"),
    ]);
    yaml.push_str(
        "co_partitioned:\n  - { name: event, key: event_id, topics: [commands, state] }\n",
    );
    let f = Fixture::new("tcli_copart", &yaml);
    let (commands, state) = (f.topic("commands"), f.topic("state"));

    // Someone created the state topic by hand with more partitions.
    let created = admin()
        .await
        .create_topics(
            &[NewTopic::new(&state, 4, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");

    let plan = f.kafka(&["plan"]).await;
    plan.expect(Exit::Error);
    assert!(
        plan.out
            .contains("co-partition group `event` would end with different partition counts"),
        "{}",
        plan.out
    );
    assert!(
        plan.out.contains("Kafka cannot remove partitions"),
        "{}",
        plan.out
    );

    let apply = f.kafka(&["apply", "--allow-key-remap"]).await;
    apply.expect(Exit::Error);
    assert!(apply.err.contains("nothing was applied"), "{}", apply.err);
    assert!(
        !partition_counts(&[&commands]).await.contains_key(&commands),
        "the other topic was not created"
    );

    cleanup(&[commands, state]).await;
}

#[tokio::test]
async fn invalid_catalogues_are_refused_before_anything_changes() {
    let f = Fixture::new(
        "tcli_invalid",
        &catalogue_yaml(&[("good", 1, ""), ("wide", 1, ", replication_factor: 3")]),
    );
    let (good, wide) = (f.topic("good"), f.topic("wide"));
    let path = f.path();

    // Replication above the broker count (the stack has one broker): refused, nothing created.
    let apply = f.kafka(&["apply"]).await;
    apply.expect(Exit::Error);
    assert!(
        apply
            .err
            .contains("replication factor 3 is above the 1 broker(s)"),
        "{}",
        apply.err
    );
    assert!(
        partition_counts(&[&good, &wide]).await.is_empty(),
        "nothing was created"
    );

    // Zero partitions: refused while reading the file, with its line.
    f.write(&catalogue_yaml(&[("good", 0, "")]));
    let apply = f.kafka(&["apply"]).await;
    apply.expect(Exit::Error);
    assert!(apply.err.contains(&format!("{path}:4:")), "{}", apply.err);
    assert!(apply.err.contains("nonzero"), "{}", apply.err);

    // Unknown keys and unknown cleanup policies, likewise.
    f.write(&catalogue_yaml(&[("good", 1, ", colour: blue")]));
    let plan = f.kafka(&["plan"]).await;
    plan.expect(Exit::Error);
    assert!(plan.err.contains("unknown field `colour`"), "{}", plan.err);
    f.write(&catalogue_yaml(&[("good", 1, ", cleanup_policy: shred")]));
    let plan = f.kafka(&["plan"]).await;
    plan.expect(Exit::Error);
    assert!(plan.err.contains("unknown variant `shred`"), "{}", plan.err);

    // Malformed YAML: file, line and reason.
    f.write("version: 1\ntopics:\n  - { name: [unclosed\n");
    let plan = f.kafka(&["plan"]).await;
    plan.expect(Exit::Error);
    assert!(plan.err.contains(&format!("{path}:")), "{}", plan.err);
    assert!(partition_counts(&[&good]).await.is_empty());
}

#[tokio::test]
async fn a_broker_that_does_not_answer_is_an_error_within_the_timeout() {
    // A listener that accepts connections and never says a word: the worst kind of broker.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = silent.local_addr().unwrap().to_string();
    let held = std::thread::spawn(move || {
        let mut connections = Vec::new();
        // Bounded: librdkafka opens a handful of connections before it gives up.
        for stream in silent.incoming().take(8) {
            match stream {
                Ok(s) => connections.push(s),
                Err(_) => break,
            }
        }
        connections
    });
    let catalogue = repo_catalogue();
    for bootstrap in [address.as_str(), "127.0.0.1:1"] {
        let started = Instant::now();
        let run = topics(&[
            "plan",
            "--catalogue",
            &catalogue,
            "--bootstrap-servers",
            bootstrap,
            "--kafka-timeout",
            "2s",
        ])
        .await;
        let took = started.elapsed();
        run.expect(Exit::Error);
        assert!(
            run.err
                .contains(&format!("Kafka is unreachable at {bootstrap}")),
            "{}",
            run.err
        );
        assert!(run.err.contains("--bootstrap-servers"), "{}", run.err);
        assert!(took < Duration::from_secs(10), "{bootstrap}: took {took:?}");
    }
    drop(held);

    let started = Instant::now();
    let run = topics(&[
        "schemas",
        "check",
        "--catalogue",
        &catalogue,
        "--schema-registry-url",
        "http://127.0.0.1:1/apis/ccompat/v7",
        "--schema-registry-timeout",
        "2s",
    ])
    .await;
    run.expect(Exit::Error);
    assert!(
        run.err.contains("schema registry is unreachable"),
        "{}",
        run.err
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn lag_reports_committed_offset_end_offset_and_lag() {
    let f = Fixture::new("tcli_lag", &catalogue_yaml(&[("orders", 1, "")]));
    let topic = f.topic("orders");
    let group = names::unique("tcli_lag_group");
    f.kafka(&["apply"]).await.expect(Exit::Ok);

    let services = services().await;
    let producer: FutureProducer = services.kafka().durable_producer_config().create().unwrap();
    for i in 0..5 {
        let payload = format!("record-{i}");
        producer
            .send(
                FutureRecord::to(&topic).key("event-1").payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let consumer: BaseConsumer = services
        .kafka()
        .client_config()
        .set("group.id", &group)
        .create()
        .unwrap();
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(&topic, 0, Offset::Offset(2))
        .unwrap();
    consumer.commit(&offsets, CommitMode::Sync).unwrap();

    let lag = kafka(&["lag", "--group", &group, "--topic", &topic, "-o", "json"]).await;
    lag.expect(Exit::Ok);
    let rows = lag.json()["lag"].as_array().unwrap().clone();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["group"], group.as_str());
    assert_eq!(
        (
            rows[0]["committed"].as_i64(),
            rows[0]["end"].as_i64(),
            rows[0]["lag"].as_i64()
        ),
        (Some(2), Some(5), Some(3))
    );

    let table = kafka(&["lag", "--group", &group, "--topic", &topic]).await;
    table.expect(Exit::Ok);
    assert!(
        table
            .out
            .contains(&format!("{group}  {topic}  0          2          5    3")),
        "{}",
        table.out
    );

    cleanup(&[topic]).await;
}

/// The registered versions of a subject.
async fn versions(subject: &str) -> Vec<i64> {
    let url = format!(
        "{}/subjects/{subject}/versions",
        services().await.registry_url
    );
    let response = reqwest::get(url).await.expect("registry answers");
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Vec::new();
    }
    response.json().await.expect("a list of versions")
}

#[tokio::test]
async fn an_incompatible_schema_change_is_refused_with_the_field_and_registers_nothing() {
    let namespace = names::unique("tcli_schema");
    let record = format!("{namespace}.Probe");
    let f = Fixture::new(
        "tcli_schema",
        &catalogue_yaml(&[("probes", 1, "")]).replace("test.Probe", &record),
    );
    let subject = format!("{}-{record}", f.topic("probes"));
    let schemas = f.dir().join("schemas");
    std::fs::create_dir_all(&schemas).unwrap();
    let write_schema = |fields: &str| {
        std::fs::write(
            schemas.join("Probe.avsc"),
            format!(r#"{{"type":"record","name":"Probe","namespace":"{namespace}","fields":[{fields}]}}"#),
        )
        .unwrap();
    };
    let dir = schemas.display().to_string();
    let args = |cmd: &'static str| vec!["schemas", cmd, "--schemas-dir", dir.as_str()];

    write_schema(r#"{"name":"event_id","type":"string"},{"name":"seats","type":"int"}"#);
    let check = f.registry(&args("check")).await;
    check.expect(Exit::Ok);
    assert!(
        check.out.contains(&format!("{subject}  new")),
        "{}",
        check.out
    );
    f.registry(&args("register")).await.expect(Exit::Ok);
    assert_eq!(versions(&subject).await, [1]);
    let again = f.registry(&args("check")).await;
    again.expect(Exit::Ok);
    assert!(again.out.contains("unchanged"), "{}", again.out);

    // `seats` becomes a string and `section` is added without a default: records already in
    // the topic could not be read.
    write_schema(
        r#"{"name":"event_id","type":"string"},{"name":"seats","type":"string"},{"name":"section","type":"string"}"#,
    );
    let check = f.registry(&args("check")).await;
    check.expect(Exit::Drift);
    assert!(check.out.contains("INCOMPATIBLE"), "{}", check.out);
    assert!(
        check.out.contains("field `seats`") && check.out.contains("field `section`"),
        "{}",
        check.out
    );
    let mut json_args = args("check");
    json_args.extend(["--output", "json"]);
    let json = f.registry(&json_args).await;
    json.expect(Exit::Drift);
    let json = json.json();
    assert_eq!(json["incompatible"], true);
    assert_eq!(json["subjects"][0]["status"], "incompatible");
    let fields: Vec<&str> = json["subjects"][0]["breaks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["field"].as_str().unwrap())
        .collect();
    assert!(
        fields.iter().any(|f| f.contains("seats")) && fields.iter().any(|f| f.contains("section")),
        "{fields:?}"
    );

    let register = f.registry(&args("register")).await;
    register.expect(Exit::Drift);
    assert!(
        register.err.contains("nothing was registered"),
        "{}",
        register.err
    );
    assert_eq!(
        versions(&subject).await,
        [1],
        "the incompatible schema was not registered"
    );

    // A compatible evolution (a new field with a default) registers as version 2.
    write_schema(
        r#"{"name":"event_id","type":"string"},{"name":"seats","type":"int"},{"name":"section","type":"string","default":""}"#,
    );
    let register = f.registry(&args("register")).await;
    register.expect(Exit::Ok);
    assert!(
        register.out.contains("compatible") && register.out.contains("registered"),
        "{}",
        register.out
    );
    assert_eq!(versions(&subject).await, [1, 2]);
}

#[tokio::test]
async fn the_record_schemas_register_under_their_topic_subjects() {
    let prefix = format!("{}.", names::unique("tcli_subjects"));
    let catalogue = repo_catalogue();
    let args = |cmd: &'static str| {
        vec![
            "schemas",
            cmd,
            "--catalogue",
            catalogue.as_str(),
            "--topic-prefix",
            prefix.as_str(),
            "-o",
            "json",
        ]
    };

    let check = registry(&args("check")).await;
    check.expect(Exit::Ok);
    let subjects = check.json()["subjects"].as_array().unwrap().clone();
    assert_eq!(subjects.len(), boxoffice_avro::schemas::all().len());
    assert!(
        subjects.iter().all(|s| s["status"] == "new"),
        "{subjects:?}"
    );

    let register = registry(&args("register")).await;
    register.expect(Exit::Ok);
    let registered = register.json();
    assert!(
        registered["subjects"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["registered_id"].is_i64()),
        "{registered}"
    );
    assert_eq!(
        versions(&format!(
            "{prefix}booking.commands-boxoffice.BookingRequested"
        ))
        .await,
        [1]
    );
    assert_eq!(
        versions(&format!(
            "{prefix}availability-boxoffice.AvailabilityChanged"
        ))
        .await,
        [1]
    );

    let again = registry(&args("check")).await;
    again.expect(Exit::Ok);
    assert!(
        again.json()["subjects"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "unchanged")
    );
}

#[tokio::test]
async fn delete_needs_confirmation() {
    let f = Fixture::new("tcli_delete", &catalogue_yaml(&[("doomed", 1, "")]));
    let topic = f.topic("doomed");
    f.kafka(&["apply"]).await.expect(Exit::Ok);

    let refused = kafka(&["delete", &topic]).await;
    refused.expect(Exit::Error);
    assert!(refused.err.contains("pass --yes"), "{}", refused.err);
    assert!(partition_counts(&[&topic]).await.contains_key(&topic));

    let deleted = kafka(&["delete", &topic, "--yes"]).await;
    deleted.expect(Exit::Ok);
    let gone =
        boxoffice_tests::wait::until("the topic to disappear", Duration::from_secs(15), || {
            let topic = topic.clone();
            async move { partition_counts(&[&topic]).await.is_empty().then_some(()) }
        })
        .await;
    assert!(gone.is_ok(), "{gone:?}");
}
