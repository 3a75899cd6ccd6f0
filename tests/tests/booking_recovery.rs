//! The booking processor when the CQL store loses writes it had acknowledged (a store crash
//! with periodic commit-log sync, a restore from an older backup), against real Kafka, a real
//! CQL store and a real registry. The store is rolled back here by hand, exactly: an event's
//! rows replaced by an older snapshot of them, or removed with its registration. Every test
//! first proves the fault happened (the stored offset went backwards, or the state is gone).
//!
//! - a live processor whose save finds the store behind rebuilds from the log, and the sale
//!   ends with exactly the capacity sold, without new traffic to wake it;
//! - a restarted processor re-folds an event the store lost entirely;
//! - negative control: trusting the store (the old behaviour) oversells in the same scenario;
//! - a re-fold whose decisions differ from what was published stops the partition, loudly;
//! - an event whose commands are below the log start is named and its commands dead-lettered.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap fails the test"
)]

use std::collections::HashSet;
use std::time::Duration;

use boxoffice_avro::ids;
use boxoffice_avro::records::{
    BookingCommand, BookingRequested, DeadLetter, DeadLetterErrorKind, EventProgress, OrderEvent,
};
use boxoffice_processors::booking::audit::verify_event;
use boxoffice_processors::booking::recovery::RecoverySource;
use boxoffice_store::inventory::{SaveOutcome, StoredEvent, StoredEventUpdate};
use boxoffice_tests::load::{event_on_sale, now_ms};
use boxoffice_tests::pipeline::{Pipeline, RunningProcessor, TopicReader};
use boxoffice_tests::{services, wait};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};

const CAPACITY: i32 = 100;
/// Bookings in the rollback scenario: 30, 30 more, the rollback, 60 more, the restore, 60 more.
const TOTAL: usize = 180;
const DECIDED_WITHIN: Duration = Duration::from_secs(90);

fn booking(event_id: &str, i: usize) -> BookingCommand {
    let order_id = format!("{event_id}-order-{i:04}");
    BookingCommand::BookingRequested(BookingRequested {
        record_id: ids::record_id_for::<BookingRequested>(&[&order_id]),
        order_id,
        event_id: event_id.into(),
        user_id: format!("user-{i}"),
        number_slot: 1,
        idempotency_key: None,
        occurred_at: now_ms(),
    })
}

fn bookings(event_id: &str, range: std::ops::Range<usize>) -> Vec<BookingCommand> {
    range.map(|i| booking(event_id, i)).collect()
}

/// What fans of the event were told so far, by reading `orders.events`.
#[derive(Debug, Default)]
struct Told {
    reserved: HashSet<String>,
    rejected: HashSet<String>,
}

impl Told {
    fn told_both(&self) -> usize {
        self.reserved.intersection(&self.rejected).count()
    }
}

/// Reads `orders.events` until `orders` orders have a decision.
async fn told(reader: &mut TopicReader, told: &mut Told, orders: usize) {
    let facts = reader
        .read_group_until::<OrderEvent>(DECIDED_WITHIN, |facts| {
            let mut decided = told
                .reserved
                .union(&told.rejected)
                .cloned()
                .collect::<HashSet<_>>();
            for fact in facts {
                if matches!(
                    fact,
                    OrderEvent::OrderReserved(_) | OrderEvent::OrderRejected(_)
                ) {
                    decided.insert(fact.order_id().to_owned());
                }
            }
            decided.len() >= orders
        })
        .await
        .unwrap();
    for fact in facts {
        match &fact {
            OrderEvent::OrderReserved(r) => {
                told.reserved.insert(r.order_id.clone());
            }
            OrderEvent::OrderRejected(r) => {
                told.rejected.insert(r.order_id.clone());
            }
            _ => {}
        }
    }
}

/// Puts `snapshot` back as the event's whole state: what a store restored from an older copy,
/// or one that lost its last writes, holds.
async fn roll_back(pipeline: &Pipeline, snapshot: &StoredEvent) {
    forget(pipeline, &snapshot.event_id).await;
    let store = pipeline.store().await.unwrap();
    let update = StoredEventUpdate {
        event_id: snapshot.event_id.clone(),
        previous_offset: None,
        new_offset: snapshot.applied_offset.unwrap(),
        config: snapshot.config.clone(),
        held: snapshot.held,
        sold: snapshot.sold,
        sequence: snapshot.sequence,
        decisions: snapshot.decisions,
        decision_digest: snapshot.decision_digest.clone(),
        changed_orders: snapshot.orders.clone(),
        // The whole state in one save: one index row naming every order.
        index_entries: snapshot.indexed.then(|| {
            snapshot
                .orders
                .iter()
                .map(|row| {
                    let order = boxoffice_processors::booking::store::order_from_row(row).unwrap();
                    boxoffice_processors::booking::store::index_entry(&row.order_id, &order)
                })
                .collect()
        }),
    };
    assert_eq!(store.save(&update).await.unwrap(), SaveOutcome::Applied);
    let back = store.load(&snapshot.event_id).await.unwrap().unwrap();
    assert_eq!(&back, snapshot, "the store holds the older copy");
}

/// Removes every row of the event, and its registration: the store lost it entirely.
async fn forget(pipeline: &Pipeline, event_id: &str) {
    for statement in [
        format!(
            "DELETE FROM \"{}\".event_inventory WHERE event_id = ?",
            pipeline.keyspace
        ),
        format!(
            "DELETE FROM \"{}\".partition_events WHERE topic = ? AND kafka_partition = 0 AND event_id = ?",
            pipeline.keyspace
        ),
    ] {
        let values: Vec<&str> = if statement.contains("partition_events") {
            vec![pipeline.topics.commands.as_str(), event_id]
        } else {
            vec![event_id]
        };
        pipeline
            .session
            .query_unpaged(statement, values)
            .await
            .unwrap();
    }
}

async fn stored(pipeline: &Pipeline, event_id: &str) -> Option<StoredEvent> {
    pipeline
        .store()
        .await
        .unwrap()
        .load(event_id)
        .await
        .unwrap()
}

async fn assert_audit_ok(pipeline: &Pipeline, event_id: &str) {
    let store = pipeline.store().await.unwrap();
    // The processor saves right after it publishes; give it the moment to settle.
    let report = wait::until(
        "the event settled in the store and Kafka",
        DECIDED_WITHIN,
        || async {
            let report = verify_event(
                &pipeline.services.kafka(),
                &pipeline.codec,
                &store,
                &pipeline.topics,
                event_id,
            )
            .await
            .unwrap();
            report.settled().then_some(report)
        },
    )
    .await
    .unwrap();
    assert!(report.ok(), "audit of {event_id}: {:#?}", report.violations);
    assert_eq!(report.sold + report.held, CAPACITY as u32, "{report:?}");
}

async fn start(pipeline: &Pipeline, source: RecoverySource) -> RunningProcessor {
    let mut settings = pipeline.settings();
    settings.recovery_source = source;
    pipeline.start_processor_with(settings).await.unwrap()
}

/// Sells 30, snapshots the store, sells 30 more, rolls the store back to the snapshot while the
/// processor runs, then sends 60 more in one go. Returns what fans were told, the processor,
/// and the offsets (before, after) the rollback.
async fn sale_with_a_store_rollback(
    pipeline: &Pipeline,
    event_id: &str,
    source: RecoverySource,
) -> (Told, RunningProcessor, (i64, i64)) {
    let processor = start(pipeline, source).await;
    let mut reader = pipeline.reader(&pipeline.topics.orders).unwrap();
    let mut fans = Told::default();
    let mut first = vec![event_on_sale(event_id, CAPACITY)];
    first.extend(bookings(event_id, 0..30));
    pipeline.produce_commands(&first).await.unwrap();
    told(&mut reader, &mut fans, 30).await;
    let snapshot = wait::until("the first 30 saved", DECIDED_WITHIN, || async {
        stored(pipeline, event_id)
            .await
            .filter(|s| s.orders.len() == 30)
    })
    .await
    .unwrap();
    pipeline
        .produce_commands(&bookings(event_id, 30..60))
        .await
        .unwrap();
    told(&mut reader, &mut fans, 60).await;
    let before = wait::until("the next 30 saved", DECIDED_WITHIN, || async {
        stored(pipeline, event_id)
            .await
            .filter(|s| s.orders.len() == 60)
    })
    .await
    .unwrap();
    roll_back(pipeline, &snapshot).await;
    let offsets = (
        before.applied_offset.unwrap(),
        snapshot.applied_offset.unwrap(),
    );
    assert!(
        offsets.1 < offsets.0,
        "the fault happened: the stored offset went backwards {offsets:?}"
    );

    // The next batch is decided from the processor's memory (right) and published; its save
    // then finds the store behind, and the partition is restored from the store and the log.
    pipeline
        .produce_commands(&bookings(event_id, 60..120))
        .await
        .unwrap();
    told(&mut reader, &mut fans, 120).await;
    wait::until(
        "the partition restored after the loss",
        DECIDED_WITHIN,
        || async {
            (processor.metrics.restores.get() >= 2 && processor.metrics.partitions_owned.get() == 1)
                .then_some(())
        },
    )
    .await
    .unwrap();
    // What is decided after the restore shows whether it trusted the store.
    pipeline
        .produce_commands(&bookings(event_id, 120..TOTAL))
        .await
        .unwrap();
    told(&mut reader, &mut fans, TOTAL).await;
    (fans, processor, offsets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_processor_whose_store_lost_writes_rebuilds_from_the_log_and_never_oversells() {
    let pipeline = Pipeline::create_with(services().await, "lost_writes", 1)
        .await
        .unwrap();
    let event_id = "lost-writes-event";
    let (fans, processor, _) =
        sale_with_a_store_rollback(&pipeline, event_id, RecoverySource::Log).await;
    assert_eq!(fans.told_both(), 0, "no order told RESERVED and REJECTED");
    assert_eq!(
        fans.reserved.len(),
        CAPACITY as usize,
        "exactly the capacity reserved"
    );
    assert_eq!(fans.rejected.len(), TOTAL - CAPACITY as usize);
    let m = &processor.metrics;
    assert!(m.store_loss_detected.get() >= 1, "the loss was seen");
    // The re-fold counters move after the batch's save, which follows the transaction the
    // fans read from: wait for them rather than race the save.
    let refolded = wait::until("the lost 30 folded again", DECIDED_WITHIN, || async {
        (m.events_refolded.get() >= 1 && m.commands_refolded.get() >= 30).then_some(())
    })
    .await;
    assert!(
        refolded.is_ok(),
        "{refolded:?}: events {}, commands {}",
        m.events_refolded.get(),
        m.commands_refolded.get()
    );
    assert_eq!(m.refold_mismatches.get(), 0);
    assert_audit_ok(&pipeline, event_id).await;
    assert_eq!(m.readiness(), Ok(()), "every partition processed again");
    processor.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_control_trusting_the_store_oversells_when_it_lost_writes() {
    let pipeline = Pipeline::create_with(services().await, "trust_store", 1)
        .await
        .unwrap();
    let event_id = "trust-store-event";
    let (fans, processor, _) =
        sale_with_a_store_rollback(&pipeline, event_id, RecoverySource::TrustStore).await;
    // The old behaviour: it resumes at the group's offset on a state missing 30 reservations
    // (and the 60 decided just before the save failed), so more fans are told RESERVED than
    // there are slots.
    assert!(
        fans.reserved.len() > CAPACITY as usize,
        "trusting the store must oversell here (that is what the log-based restore prevents): {} reserved",
        fans.reserved.len()
    );
    let store = pipeline.store().await.unwrap();
    let report = verify_event(
        &pipeline.services.kafka(),
        &pipeline.codec,
        &store,
        &pipeline.topics,
        event_id,
    )
    .await
    .unwrap();
    assert!(
        !report.ok(),
        "verify-event reports the oversell: {report:?}"
    );
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.contains("fans were told RESERVED but the log gives")),
        "{:#?}",
        report.violations
    );
    processor.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_processor_refolds_an_event_the_store_lost_entirely() {
    let pipeline = Pipeline::create_with(services().await, "lost_event", 1)
        .await
        .unwrap();
    let event_id = "lost-event";
    let processor = start(&pipeline, RecoverySource::Log).await;
    let mut reader = pipeline.reader(&pipeline.topics.orders).unwrap();
    let mut fans = Told::default();
    let mut first = vec![event_on_sale(event_id, CAPACITY)];
    first.extend(bookings(event_id, 0..50));
    pipeline.produce_commands(&first).await.unwrap();
    told(&mut reader, &mut fans, 50).await;
    wait::until("50 saved", DECIDED_WITHIN, || async {
        stored(&pipeline, event_id)
            .await
            .filter(|s| s.orders.len() == 50)
    })
    .await
    .unwrap();
    processor.stop().await.unwrap();
    forget(&pipeline, event_id).await;
    assert_eq!(
        stored(&pipeline, event_id).await,
        None,
        "the fault happened: the store lost the event"
    );

    let processor = start(&pipeline, RecoverySource::Log).await;
    pipeline
        .produce_commands(&bookings(event_id, 50..120))
        .await
        .unwrap();
    told(&mut reader, &mut fans, 120).await;
    assert_eq!(fans.told_both(), 0);
    assert_eq!(fans.reserved.len(), CAPACITY as usize);
    // The counters move after the batch's state is saved, which follows the transaction fans
    // read from: wait for them rather than race the save.
    let refolded = wait::until(
        "the event and its 50 bookings folded again",
        DECIDED_WITHIN,
        || async {
            let metrics = &processor.metrics;
            let events = metrics.events_refolded.get();
            let commands = metrics.commands_refolded.get();
            (events >= 1 && commands >= 51).then_some((events, commands))
        },
    )
    .await;
    assert!(refolded.is_ok(), "{refolded:?}");
    assert_audit_ok(&pipeline, event_id).await;
    processor.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refold_that_disagrees_with_what_was_published_stops_the_partition() {
    let pipeline = Pipeline::create_with(services().await, "refold_differs", 1)
        .await
        .unwrap();
    let event_id = "refold-differs";
    let processor = start(&pipeline, RecoverySource::Log).await;
    let mut reader = pipeline.reader(&pipeline.topics.orders).unwrap();
    let mut fans = Told::default();
    let mut first = vec![event_on_sale(event_id, CAPACITY)];
    first.extend(bookings(event_id, 0..20));
    pipeline.produce_commands(&first).await.unwrap();
    told(&mut reader, &mut fans, 20).await;
    let saved = wait::until("20 saved", DECIDED_WITHIN, || async {
        stored(&pipeline, event_id)
            .await
            .filter(|s| s.orders.len() == 20)
    })
    .await
    .unwrap();
    processor.stop().await.unwrap();
    // Kafka says something else was published than the log gives: a progress record with
    // another digest, newer than the real one. The store is emptied so the event is re-folded.
    let published = saved.applied_offset.unwrap();
    let forged = EventProgress {
        record_id: ids::record_id_for::<EventProgress>(&[event_id, "forged"]),
        event_id: event_id.into(),
        applied_offset: published,
        first_offset: 0,
        decisions: saved.decisions,
        decision_digest: "0123456789abcdef0123456789abcdef".into(),
        capacity: CAPACITY,
        held: saved.held,
        sold: saved.sold,
        sequence: saved.sequence,
        occurred_at: now_ms(),
    };
    let payload = pipeline
        .codec
        .encode(&pipeline.topics.progress, &forged)
        .await
        .unwrap();
    pipeline
        .producer
        .send(
            FutureRecord::to(&pipeline.topics.progress)
                .key(event_id)
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    forget(&pipeline, event_id).await;

    let processor = start(&pipeline, RecoverySource::Log).await;
    // The gauge and the readiness reason are published one after the other: wait for both.
    let stopped = wait::until("the partition stopped", DECIDED_WITHIN, || async {
        let m = &processor.metrics;
        let why = m.readiness().err()?;
        (m.partitions_stopped.get() == 1 && why.contains("STOPPED")).then_some(why)
    })
    .await;
    let why = match stopped {
        Ok(why) => why,
        Err(e) => panic!("{e:?}; readiness: {:?}", processor.metrics.readiness()),
    };
    assert_eq!(processor.metrics.refold_mismatches.get(), 1);
    assert!(why.contains(event_id), "{why}");
    // Stopped means stopped: new commands are not decided.
    pipeline
        .produce_commands(&bookings(event_id, 20..25))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        stored(&pipeline, event_id).await,
        None,
        "nothing saved for the event"
    );
    processor.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_commands_are_below_the_log_start_is_named_and_dead_lettered() {
    let pipeline = Pipeline::create_with(services().await, "below_log_start", 1)
        .await
        .unwrap();
    let lost = "lost-beyond-retention";
    let processor = start(&pipeline, RecoverySource::Log).await;
    let mut reader = pipeline.reader(&pipeline.topics.orders).unwrap();
    let mut fans = Told::default();
    let mut first = vec![event_on_sale(lost, CAPACITY)];
    first.extend(bookings(lost, 0..10));
    pipeline.produce_commands(&first).await.unwrap();
    told(&mut reader, &mut fans, 10).await;
    processor.stop().await.unwrap();

    // Retention took every command so far, and the store lost the event.
    let kafka = pipeline.services.kafka();
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", "watermarks")
        .create()
        .unwrap();
    let (_, end) = consumer
        .fetch_watermarks(&pipeline.topics.commands, 0, Duration::from_secs(10))
        .unwrap();
    let admin: AdminClient<DefaultClientContext> = kafka.client_config().create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&pipeline.topics.commands, 0, Offset::Offset(end))
        .unwrap();
    admin
        .delete_records(&tpl, &AdminOptions::new())
        .await
        .unwrap();
    let (start_now, _) = consumer
        .fetch_watermarks(&pipeline.topics.commands, 0, Duration::from_secs(10))
        .unwrap();
    assert_eq!(
        start_now, end,
        "the fault happened: the log starts after the event's commands"
    );
    forget(&pipeline, lost).await;

    let processor = start(&pipeline, RecoverySource::Log).await;
    let healthy = "healthy-event";
    let mut more = bookings(lost, 10..13);
    more.push(event_on_sale(healthy, CAPACITY));
    more.extend(bookings(healthy, 0..5));
    pipeline.produce_commands(&more).await.unwrap();
    // The other event on the partition goes on.
    told(&mut reader, &mut fans, 15).await;
    assert!((0..5).all(|i| fans.reserved.contains(&format!("{healthy}-order-{i:04}"))));
    // The lost event's new commands wait in the dead-letter topic, named.
    let mut letters = pipeline.reader(&pipeline.topics.dead_letters).unwrap();
    let dead = letters
        .read_until::<DeadLetter>(DECIDED_WITHIN, |d| d.len() >= 3)
        .await
        .unwrap();
    assert!(
        dead.iter()
            .all(|d| d.error_kind == DeadLetterErrorKind::StateLost
                && d.reason.contains(lost)
                && d.reason.contains("below the log start")),
        "{dead:#?}"
    );
    assert!((10..13).all(|i| !fans.reserved.contains(&format!("{lost}-order-{i:04}"))));
    assert_eq!(processor.metrics.events_lost.get(), 1);
    processor.stop().await.unwrap();
}
