//! Smoke tests: each real service works from Rust, through the same crates the pipeline uses.

use std::time::Duration;

use apache_avro::types::Value;
use boxoffice_tests::{names, services};
use futures::StreamExt;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::{
    get_all_versions, get_schema_by_subject,
};
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};

const RECORDS: usize = 200;

#[tokio::test]
async fn kafka_idempotent_producer_records_come_back_in_order() {
    let services = services().await;
    let kafka = services.kafka();
    let topic = names::unique("smoke_kafka");

    let admin: AdminClient<DefaultClientContext> = kafka.client_config().create().unwrap();
    let created = admin
        .create_topics(
            &[NewTopic::new(&topic, 3, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");

    let producer: FutureProducer = kafka.durable_producer_config().create().unwrap();
    // All records share a key, so they land in one partition and their order is defined.
    let payloads: Vec<String> = (0..RECORDS).map(|i| format!("record-{i}")).collect();
    let deliveries = payloads.iter().map(|payload| {
        producer.send(
            FutureRecord::to(&topic).key("event-1").payload(payload),
            Duration::from_secs(10),
        )
    });
    let acked = futures::future::join_all(deliveries).await;
    let partitions: Vec<i32> = acked
        .into_iter()
        .map(|r| {
            r.map_err(|(e, _)| e)
                .expect("broker acknowledged the record")
                .partition
        })
        .collect();
    assert!(
        partitions.windows(2).all(|w| w[0] == w[1]),
        "one key, one partition"
    );

    let consumer: StreamConsumer = kafka
        .client_config()
        .set("group.id", names::unique("smoke_group"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut stream = consumer.stream();
    let mut seen = Vec::with_capacity(RECORDS);
    let read_all = async {
        while seen.len() < RECORDS {
            let message = stream
                .next()
                .await
                .expect("stream open")
                .expect("record readable");
            assert_eq!(message.key(), Some(&b"event-1"[..]));
            seen.push((
                message.offset(),
                String::from_utf8(message.payload().unwrap().to_vec()).unwrap(),
            ));
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read_all)
        .await
        .expect("all records read within 30 s");

    let read_payloads: Vec<&String> = seen.iter().map(|(_, p)| p).collect();
    assert_eq!(read_payloads, payloads.iter().collect::<Vec<_>>());
    assert!(
        seen.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "offsets consecutive: no duplicates"
    );

    admin
        .delete_topics(&[&topic], &AdminOptions::new())
        .await
        .unwrap();
}

#[tokio::test]
async fn cql_rows_round_trip_and_a_lightweight_transaction_applies_once() {
    let services = services().await;
    let session = services.scylla().connect().await.unwrap();
    let keyspace = names::unique("smoke_cql");

    session
        .query_unpaged(
            format!(
                "CREATE KEYSPACE {keyspace} WITH replication = \
                 {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
            ),
            &[],
        )
        .await
        .unwrap();
    session
        .query_unpaged(
            format!("CREATE TABLE {keyspace}.seats (event_id text, seat int, holder text, PRIMARY KEY (event_id, seat))"),
            &[],
        )
        .await
        .unwrap();

    let insert = session
        .prepare(format!(
            "INSERT INTO {keyspace}.seats (event_id, seat, holder) VALUES (?, ?, ?)"
        ))
        .await
        .unwrap();
    for seat in 0..10_i32 {
        session
            .execute_unpaged(&insert, ("event-1", seat, format!("fan-{seat}")))
            .await
            .unwrap();
    }
    let rows: Vec<(i32, String)> = session
        .query_unpaged(
            format!("SELECT seat, holder FROM {keyspace}.seats WHERE event_id = ?"),
            ("event-1",),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(i32, String)>()
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        rows,
        (0..10).map(|s| (s, format!("fan-{s}"))).collect::<Vec<_>>()
    );

    // The same seat claimed twice: the first claim is applied, the second refused.
    let claim = session
        .prepare(format!(
            "INSERT INTO {keyspace}.seats (event_id, seat, holder) VALUES (?, ?, ?) IF NOT EXISTS"
        ))
        .await
        .unwrap();
    let applied = |holder: &'static str| {
        let session = &session;
        let claim = &claim;
        async move {
            let result = session
                .execute_unpaged(claim, ("event-1", 100_i32, holder))
                .await
                .unwrap();
            let rows = result.into_rows_result().unwrap();
            // A refused LWT returns `[applied]` followed by the current row: read column 0 only.
            let row = rows
                .rows::<scylla::value::Row>()
                .unwrap()
                .next()
                .unwrap()
                .unwrap();
            match row.columns.first() {
                Some(Some(scylla::value::CqlValue::Boolean(applied))) => *applied,
                other => panic!("unexpected [applied] column: {other:?}"),
            }
        }
    };
    assert!(applied("first-fan").await, "first claim applies");
    assert!(!applied("second-fan").await, "second claim is refused");
    let (holder,): (String,) = session
        .query_unpaged(
            format!("SELECT holder FROM {keyspace}.seats WHERE event_id = ? AND seat = ?"),
            ("event-1", 100_i32),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .single_row::<(String,)>()
        .unwrap();
    assert_eq!(holder, "first-fan");

    session
        .query_unpaged(format!("DROP KEYSPACE {keyspace}"), &[])
        .await
        .unwrap();
}

#[tokio::test]
async fn registry_registers_a_schema_and_the_wire_format_round_trips() {
    let services = services().await;
    let registry = services.registry();
    registry.check().await.unwrap();

    let namespace = names::unique("smoke");
    let schema = format!(
        r#"{{"type":"record","name":"Heartbeat","namespace":"{namespace}",
            "fields":[{{"name":"event_id","type":"string"}},{{"name":"beat","type":"long"}}]}}"#
    );
    let full_name = format!("{namespace}.Heartbeat");
    let topic = names::unique("smoke_topic");
    let strategy = SubjectNameStrategy::TopicRecordNameStrategyWithSchema(
        topic.clone(),
        SuppliedSchema::new(Some(full_name.clone()), SchemaType::Avro, schema),
    );

    let encoder = AvroEncoder::new(registry.settings().unwrap());
    let bytes = encoder
        .encode(
            vec![
                ("event_id", Value::String("event-1".into())),
                ("beat", Value::Long(7)),
            ],
            strategy,
        )
        .await
        .unwrap();
    assert_eq!(bytes[0], 0, "Confluent magic byte");
    let schema_id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);

    let decoder = AvroDecoder::new(registry.settings().unwrap());
    let decoded = decoder.decode(Some(&bytes)).await.unwrap();
    assert_eq!(
        decoded.value,
        Value::Record(vec![
            ("event_id".into(), Value::String("event-1".into())),
            ("beat".into(), Value::Long(7))
        ])
    );
    assert_eq!(
        decoded.name.map(|n| n.fullname(None)),
        Some(full_name.clone())
    );

    // The subject exists under the topic-record name, and its latest version is the schema id
    // the frame carries.
    let subject = format!("{topic}-{full_name}");
    let settings = registry.settings().unwrap();
    // Asked by name: a registry that outlived many runs lists more subjects than one page holds.
    let versions = get_all_versions(&settings, subject.clone()).await.unwrap();
    assert!(!versions.is_empty(), "{subject} has no versions");
    let registered = get_schema_by_subject(
        &settings,
        &SubjectNameStrategy::TopicRecordNameStrategy(topic.clone(), full_name.clone()),
    )
    .await
    .unwrap();
    assert_eq!(registered.id, schema_id);
}
