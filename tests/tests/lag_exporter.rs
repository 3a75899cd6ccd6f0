//! The lag exporter against the real broker, on a transactional topic: a caught-up
//! `read_committed` group has an effective lag of 0 while the high-watermark figure (what
//! kafka-lag-exporter and kafka_exporter show) stays at 1 for the commit marker; an open
//! transaction is lag only for a `read_uncommitted` group; aborted records and markers are never
//! lag; the time lag is the age of the first unconsumed record.

use std::sync::Arc;
use std::time::Duration;

use boxoffice_lag_exporter::{ExporterSettings, Published, run};
use boxoffice_tests::{names, services, wait};
use boxoffice_topics::kafka::KafkaArgs;
use boxoffice_topics::names::TopicPrefix;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::util::Timeout;
use rdkafka::{Message, Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(30);

/// The value of the series `name` whose labels include every one of `labels`.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

struct Fixture {
    kafka: KafkaArgs,
    topic: String,
    producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
}

impl Fixture {
    async fn new() -> Fixture {
        let kafka = services().await.kafka();
        let topic = names::unique("lagx");
        let admin: AdminClient<DefaultClientContext> =
            kafka.client_config().create().expect("Kafka client call");
        let created = admin
            .create_topics(
                &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .expect("Kafka client call");
        assert!(created.iter().all(Result::is_ok), "{created:?}");
        let producer: ThreadedProducer<_> = kafka
            .durable_producer_config()
            .set("transactional.id", names::unique("lagx-tx"))
            .create()
            .expect("Kafka client call");
        producer
            .init_transactions(Timeout::After(TIMEOUT))
            .expect("Kafka client call");
        Fixture {
            kafka,
            topic,
            producer,
        }
    }

    /// Writes `n` records in one transaction, committed or (when `commit` is false) left open.
    fn transaction(&self, n: usize, commit: bool) {
        self.producer
            .begin_transaction()
            .expect("Kafka client call");
        for i in 0..n {
            let payload = format!("record-{i}");
            self.producer
                .send(BaseRecord::to(&self.topic).key("k").payload(&payload))
                .map_err(|(e, _)| e)
                .expect("Kafka client call");
        }
        self.producer
            .flush(Timeout::After(TIMEOUT))
            .expect("Kafka client call");
        if commit {
            self.producer
                .commit_transaction(Timeout::After(TIMEOUT))
                .expect("Kafka client call");
        }
    }

    /// A `read_committed` client of `group` (never joins it: assigns and commits only).
    fn group_client(&self, group: &str) -> BaseConsumer {
        self.kafka
            .client_config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .expect("Kafka client call")
    }

    /// A group that reads every committed record there is now and commits its position.
    fn consume_all(&self, group: &str, expected: usize) {
        let consumer = self.group_client(group);
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&self.topic, 0, Offset::Beginning)
            .expect("Kafka client call");
        consumer.assign(&list).expect("Kafka client call");
        let mut read = 0;
        let mut last = None;
        let deadline = std::time::Instant::now() + TIMEOUT;
        while read < expected && std::time::Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                read += 1;
                last = Some(m.offset());
            }
        }
        assert_eq!(read, expected, "records {group} read");
        self.commit(group, last.expect("read at least one record") + 1);
    }

    /// Commits `offset` for `group`.
    fn commit(&self, group: &str, offset: i64) {
        let mut commit = TopicPartitionList::new();
        commit
            .add_partition_offset(&self.topic, 0, Offset::Offset(offset))
            .expect("Kafka client call");
        self.group_client(group)
            .commit(&commit, CommitMode::Sync)
            .expect("Kafka client call");
    }
}

fn settings(topic_prefix: &str, read_committed_group: &str) -> ExporterSettings {
    ExporterSettings {
        cluster_name: "test".into(),
        interval: Duration::from_millis(300),
        status_window: Duration::from_secs(60),
        probe_timeout: Duration::from_secs(3),
        read_committed_groups: vec![read_committed_group.to_owned()],
        kafka_exporter_metrics: true,
        owner_labels: false,
        topic_prefix: TopicPrefix::new(topic_prefix).expect("a topic name is a valid prefix"),
    }
}

/// Waits until a collection shows `figure` of `group` equal to `expected`.
async fn expect(published: &Published, name: &str, group: &str, expected: f64) -> String {
    let what = format!("{name} of {group} = {expected}");
    wait::until(&what, TIMEOUT, || {
        let text = published.text();
        let got = value(&text, name, &[("group", group), ("partition", "0")]);
        async move { (got == Some(expected)).then_some(text) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", published.text()))
}

#[tokio::test]
async fn lag_is_measured_against_the_last_stable_offset_and_markers_are_not_lag() {
    let fx = Fixture::new().await;
    let committed_group = names::unique("lagrc");
    let uncommitted_group = names::unique("lagru");
    let published = Arc::new(Published::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let exporter = tokio::spawn(run(
        fx.kafka.clone(),
        settings(&fx.topic, &committed_group),
        Arc::clone(&published),
        async move {
            let _ = stopped.await;
        },
    ));

    // 10 records and their commit marker (offset 10); both groups read them all.
    fx.transaction(10, true);
    fx.consume_all(&committed_group, 10);
    fx.consume_all(&uncommitted_group, 10);
    let text = expect(
        &published,
        "boxoffice_consumergroup_lag_effective",
        &committed_group,
        0.0,
    )
    .await;
    // The negative control: the families measured against the high watermark count the marker.
    let g = [("group", committed_group.as_str()), ("partition", "0")];
    assert_eq!(
        value(&text, "kafka_consumergroup_group_lag", &g),
        Some(1.0),
        "{text}"
    );
    let ke = [
        ("consumergroup", committed_group.as_str()),
        ("partition", "0"),
    ];
    assert_eq!(
        value(&text, "kafka_consumergroup_lag", &ke),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "kafka_consumergroup_group_lag_seconds", &g),
        Some(0.0)
    );
    assert_eq!(
        value(&text, "boxoffice_consumergroup_partition_unowned", &g),
        Some(1.0)
    );
    let ok = [
        ("group", committed_group.as_str()),
        ("partition", "0"),
        ("status", "OK"),
    ];
    assert_eq!(
        value(&text, "boxoffice_consumergroup_partition_status", &ok),
        Some(1.0)
    );

    // 5 more (offsets 11..=15, marker 16): the lag is counted from the first of them, and its
    // age is the time lag.
    let before = std::time::Instant::now();
    fx.transaction(5, true);
    expect(
        &published,
        "boxoffice_consumergroup_lag_effective",
        &committed_group,
        6.0,
    )
    .await;
    // The age grows with each collection while nobody consumes: wait for one past a second.
    let text = wait::until("a time lag past 1 s", TIMEOUT, || {
        let text = published.text();
        let aged =
            value(&text, "kafka_consumergroup_group_lag_seconds", &g).is_some_and(|s| s >= 1.0);
        async move { aged.then_some(text) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", published.text()));
    let seconds = value(&text, "kafka_consumergroup_group_lag_seconds", &g).expect("time lag");
    assert!(
        seconds <= before.elapsed().as_secs_f64(),
        "the age of offset 11 ({seconds} s) is at most the time since it was written\n{text}"
    );
    assert_eq!(
        value(&text, "boxoffice_consumergroup_lag_effective", &g),
        Some(6.0)
    );
    assert_eq!(value(&text, "kafka_consumergroup_group_lag", &g), Some(7.0));

    // An open transaction (17..=19): no lag yet for read_committed, lag for read_uncommitted.
    fx.transaction(3, false);
    let text = expect(
        &published,
        "kafka_consumergroup_group_lag",
        &committed_group,
        10.0,
    )
    .await;
    assert_eq!(
        value(&text, "boxoffice_consumergroup_lag_effective", &g),
        Some(6.0),
        "{text}"
    );
    let u = [("group", uncommitted_group.as_str()), ("partition", "0")];
    assert_eq!(
        value(&text, "boxoffice_consumergroup_lag_effective", &u),
        Some(9.0),
        "{text}"
    );
    let uncommitted_rc = [("group", uncommitted_group.as_str())];
    assert_eq!(
        value(
            &text,
            "boxoffice_consumergroup_read_committed",
            &uncommitted_rc
        ),
        Some(0.0)
    );

    // Aborted: offsets 16 (marker), 17..=19 (aborted), 20 (marker) are no lag once the group
    // read 11..=15, although the high watermark is 5 past its commit.
    fx.producer
        .abort_transaction(Timeout::After(TIMEOUT))
        .unwrap();
    fx.consume_all(&committed_group, 15);
    let text = expect(
        &published,
        "boxoffice_consumergroup_lag_effective",
        &committed_group,
        0.0,
    )
    .await;
    assert_eq!(
        value(&text, "kafka_consumergroup_group_lag", &g),
        Some(5.0),
        "{text}"
    );

    // A commit below the log start would need retention to run; a commit past the end is 0.
    fx.commit(&uncommitted_group, 1_000);
    expect(
        &published,
        "kafka_consumergroup_group_lag",
        &uncommitted_group,
        0.0,
    )
    .await;

    let _ = stop.send(());
    exporter.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_stopped_consumer_is_stop_with_a_growing_time_lag_and_retention_skips_are_counted() {
    let fx = Fixture::new().await;
    let group = names::unique("lagrc");
    let published = Arc::new(Published::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut exporter_settings = settings(&fx.topic, &group);
    exporter_settings.status_window = Duration::from_secs(3);
    let exporter = tokio::spawn(run(
        fx.kafka.clone(),
        exporter_settings,
        Arc::clone(&published),
        async move {
            let _ = stopped.await;
        },
    ));
    let g = [("group", group.as_str()), ("partition", "0")];

    // The group read 10 records and stopped; 10 more arrive (offsets 11..=20, marker 21).
    fx.transaction(10, true);
    fx.consume_all(&group, 10);
    fx.transaction(10, true);
    let stop_status = [
        ("group", group.as_str()),
        ("partition", "0"),
        ("status", "STOP"),
    ];
    let text = wait::until("STOP after a full window", TIMEOUT, || {
        let text = published.text();
        let stopped = value(
            &text,
            "boxoffice_consumergroup_partition_status",
            &stop_status,
        );
        async move { (stopped == Some(1.0)).then_some(text) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", published.text()));
    assert_eq!(
        value(&text, "boxoffice_consumergroup_lag_effective", &g),
        Some(11.0)
    );
    let err = [("group", group.as_str()), ("status", "ERR")];
    assert_eq!(
        value(&text, "boxoffice_consumergroup_status", &err),
        Some(1.0)
    );
    let before = value(&text, "kafka_consumergroup_group_lag_seconds", &g).expect("time lag");
    let text = wait::until("the time lag growing", TIMEOUT, || {
        let text = published.text();
        let now = value(&text, "kafka_consumergroup_group_lag_seconds", &g);
        async move { now.is_some_and(|s| s >= before + 1.0).then_some(text) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", published.text()));
    assert!(
        value(&text, "boxoffice_consumergroup_catch_up_seconds", &g).is_some_and(f64::is_infinite),
        "a consumer that does not move never catches up\n{text}"
    );

    // Retention deletes the first 15 offsets: 5 records the group never read are gone.
    let admin: AdminClient<DefaultClientContext> = fx
        .kafka
        .client_config()
        .create()
        .expect("Kafka client call");
    let mut below = TopicPartitionList::new();
    below
        .add_partition_offset(&fx.topic, 0, Offset::Offset(15))
        .expect("a valid offset");
    admin
        .delete_records(&below, &AdminOptions::new())
        .await
        .expect("records deleted");
    let text = expect(
        &published,
        "boxoffice_consumergroup_commit_behind_log_start",
        &group,
        5.0,
    )
    .await;
    assert_eq!(
        value(
            &text,
            "boxoffice_consumergroup_retention_skipped_records_total",
            &g
        ),
        Some(5.0),
        "{text}"
    );
    // Counted from the log start: 15..=20 and the marker.
    assert_eq!(
        value(&text, "boxoffice_consumergroup_lag_effective", &g),
        Some(7.0),
        "{text}"
    );

    let _ = stop.send(());
    exporter
        .await
        .expect("the exporter task")
        .expect("the exporter");
}
