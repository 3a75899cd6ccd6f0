//! The booking processor against real Kafka, a real CQL store and a real registry: a flash
//! sale, a SIGKILL mid-stream, a second instance joining, hold expiry, an order read back
//! after it left memory, and a poison record.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap fails the test"
)]

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use boxoffice_avro::ids;
use boxoffice_avro::records::{
    BookingCommand, BookingRequested, DeadLetter, EventUpserted, OrderEvent, PaymentSucceeded,
    RejectReason,
};
use boxoffice_processors::booking::audit::{AuditReport, verify_event};
use boxoffice_processors::booking::store::restore;
use boxoffice_tests::pipeline::{Pipeline, TopicReader, processor_binary};
use boxoffice_tests::services;

const PRICE: i64 = 4500;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn event(event_id: &str, capacity: i32, hold_seconds: i32) -> BookingCommand {
    let at = now_ms() - 60_000;
    BookingCommand::EventUpserted(EventUpserted {
        record_id: ids::record_id("test-upsert", &[event_id]),
        event_id: event_id.into(),
        name: format!("Event {event_id}"),
        category_id: None,
        capacity,
        price_minor: PRICE,
        currency: "EUR".into(),
        sale_starts_at: at,
        sale_ends_at: at + 24 * 3_600_000,
        hold_seconds,
        max_per_order: 4,
        max_per_user: 0,
        occurred_at: at,
    })
}

fn booking(event_id: &str, order_id: &str, user_id: &str) -> BookingCommand {
    BookingCommand::BookingRequested(BookingRequested {
        record_id: ids::record_id_for::<BookingRequested>(&[order_id]),
        order_id: order_id.into(),
        event_id: event_id.into(),
        user_id: user_id.into(),
        number_slot: 1,
        idempotency_key: None,
        occurred_at: now_ms(),
    })
}

fn payment_for(reserved: &boxoffice_avro::records::OrderReserved) -> BookingCommand {
    let payment_id = reserved
        .payment_id
        .clone()
        .expect("paid events carry a payment id");
    BookingCommand::PaymentSucceeded(PaymentSucceeded {
        record_id: ids::record_id_for::<PaymentSucceeded>(&[&payment_id]),
        payment_id,
        order_id: reserved.order_id.clone(),
        event_id: reserved.event_id.clone(),
        user_id: reserved.user_id.clone(),
        amount_minor: reserved.amount_minor,
        currency: reserved.currency.clone(),
        provider_reference: "sandbox".into(),
        occurred_at: now_ms(),
    })
}

/// Reads order facts until `n` of them are of the kind `kind` tells (within 60 s).
async fn read_until_n(
    orders: &mut TopicReader,
    n: usize,
    kind: impl Fn(&OrderEvent) -> bool,
) -> Vec<OrderEvent> {
    orders
        .read_group_until(Duration::from_secs(60), |f: &[OrderEvent]| {
            f.iter().filter(|f| kind(f)).count() >= n
        })
        .await
        .unwrap()
}

fn is_decision(fact: &OrderEvent) -> bool {
    matches!(
        fact,
        OrderEvent::OrderReserved(_) | OrderEvent::OrderRejected(_)
    )
}

/// Every order got exactly one decision; returns the reserved ones per event.
fn decisions_by_event(
    facts: &[OrderEvent],
) -> HashMap<String, Vec<boxoffice_avro::records::OrderReserved>> {
    let mut decided: HashSet<&str> = HashSet::new();
    let mut reserved: HashMap<String, Vec<_>> = HashMap::new();
    for fact in facts.iter().filter(|f| is_decision(f)) {
        assert!(
            decided.insert(fact.order_id()),
            "order {} decided twice",
            fact.order_id()
        );
        if let OrderEvent::OrderReserved(r) = fact {
            reserved
                .entry(r.event_id.clone())
                .or_default()
                .push(r.clone());
        }
    }
    reserved
}

/// Checks ScyllaDB and the audit for `event_id`: the invariant holds and log and store agree.
/// Returns the audit and the stored availability sequence (how many changes the event had).
async fn assert_event_consistent(
    pipeline: &Pipeline,
    event_id: &str,
    sold: u32,
    held: u32,
) -> (AuditReport, i64) {
    let store = pipeline.store().await.unwrap();
    let stored = store
        .load(event_id)
        .await
        .unwrap()
        .expect("event state stored");
    let (state, _) = restore(stored).unwrap();
    state.check_invariant().unwrap();
    assert_eq!(
        (state.sold, state.held),
        (sold, held),
        "event {event_id} in ScyllaDB"
    );
    let report = verify_event(
        &pipeline.services.kafka(),
        &pipeline.codec,
        &store,
        &pipeline.topics,
        event_id,
    )
    .await
    .unwrap();
    assert!(report.ok(), "audit of {event_id}: {:?}", report.violations);
    (report, state.sequence)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flash_sale_sells_exactly_the_capacity_and_nothing_more() {
    let pipeline = Pipeline::create(services().await, "flash").await.unwrap();
    let hot = "hot-event";
    let others = ["event-a", "event-b", "event-c", "event-d"];
    let mut commands = vec![event(hot, 1000, 600)];
    commands.extend(others.iter().map(|e| event(e, 200, 600)));
    // 20,000 requests from 2,000 users: 16,000 for the hot event, 1,000 for each other one.
    for i in 0..20_000 {
        let event_id = if i % 5 == 4 { others[(i / 5) % 4] } else { hot };
        commands.push(booking(
            event_id,
            &format!("order-{i:05}"),
            &format!("user-{}", i % 2000),
        ));
    }
    let processor = pipeline.start_processor().await.unwrap();
    let started = Instant::now();
    pipeline.produce_commands(&commands).await.unwrap();

    let mut orders = pipeline.reader(&pipeline.topics.orders).unwrap();
    let facts: Vec<OrderEvent> = orders
        .read_group_until(Duration::from_secs(180), |facts: &[OrderEvent]| {
            facts.iter().filter(|f| is_decision(f)).count() >= 20_000
        })
        .await
        .unwrap();
    let decided_in = started.elapsed();
    let reserved = decisions_by_event(&facts);
    assert_eq!(
        reserved[hot].len(),
        1000,
        "the hot event reserves exactly its capacity"
    );
    for e in others {
        assert_eq!(reserved[e].len(), 200, "{e} reserves exactly its capacity");
    }
    let rejected_sold_out = facts
        .iter()
        .filter(|f| matches!(f, OrderEvent::OrderRejected(r) if r.reason == RejectReason::SoldOut))
        .count();
    assert_eq!(rejected_sold_out, 20_000 - 1800);
    eprintln!("flash sale: 20,000 requests decided in {decided_in:?}");

    // Pay every reservation: exactly the capacity is sold, one ticket per slot.
    let payments: Vec<BookingCommand> = reserved.values().flatten().map(payment_for).collect();
    pipeline.produce_commands(&payments).await.unwrap();
    let facts = orders
        .read_group_until(Duration::from_secs(120), |facts: &[OrderEvent]| {
            facts
                .iter()
                .filter(|f| matches!(f, OrderEvent::TicketsIssued(_)))
                .count()
                >= 1800
        })
        .await
        .unwrap();
    let confirmed: HashSet<&str> = facts
        .iter()
        .filter(|f| matches!(f, OrderEvent::OrderConfirmed(_)))
        .map(OrderEvent::order_id)
        .collect();
    assert_eq!(confirmed.len(), 1800);
    processor.stop().await.unwrap();

    let (audit, changes) = assert_event_consistent(&pipeline, hot, 1000, 0).await;
    // Availability is published once per event per batch: the audit passed over a topic with
    // gaps in the sequence (2,001 changes: the capacity, 1,000 holds, 1,000 sales).
    assert_eq!(changes, 2001);
    assert!(
        audit.availability_records > 0 && audit.availability_records < changes as u64,
        "{} availability records for {changes} changes: not coalesced per batch",
        audit.availability_records
    );
    eprintln!(
        "flash sale: {} availability records published for {changes} changes",
        audit.availability_records
    );
    for e in others {
        assert_event_consistent(&pipeline, e, 200, 0).await;
    }
}

struct ChildProcessor(Child);

impl ChildProcessor {
    fn start(pipeline: &Pipeline) -> Self {
        let services = &pipeline.services;
        let child = Command::new(processor_binary().unwrap())
            .arg("booking")
            // The local test stack: the sandbox gateway and development secrets are allowed.
            .env("BOXOFFICE_DEV", "1")
            .env("KAFKA_BOOTSTRAP_SERVERS", &services.kafka_bootstrap)
            .env("SCYLLA_URI", &services.scylla_uri)
            .env("SCHEMA_REGISTRY_URL", &services.registry_url)
            .env("SCYLLA_KEYSPACE", &pipeline.keyspace)
            .env("BOXOFFICE_TOPIC_PREFIX", &pipeline.prefix)
            .env("BOOKING_GROUP_ID", format!("{}booking", pipeline.prefix))
            .env("BOOKING_METRICS_ADDR", "127.0.0.1:0")
            .env("BOOKING_MAX_BATCH_RECORDS", "200")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        ChildProcessor(child)
    }

    fn kill(mut self) {
        // SIGKILL: no shutdown path runs.
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for ChildProcessor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_processor_restarts_without_losing_or_repeating_anything() {
    let pipeline = Pipeline::create(services().await, "crash").await.unwrap();
    let events = ["crash-a", "crash-b"];
    let mut commands: Vec<BookingCommand> = events.iter().map(|e| event(e, 1500, 600)).collect();
    for i in 0..5000 {
        commands.push(booking(
            events[i % 2],
            &format!("order-{i:05}"),
            &format!("user-{}", i % 700),
        ));
    }
    let first = ChildProcessor::start(&pipeline);
    pipeline.produce_commands(&commands).await.unwrap();

    // Kill it once it is well into the stream.
    let mut progress = pipeline.reader(&pipeline.topics.orders).unwrap();
    progress
        .read_group_until(Duration::from_secs(120), |facts: &[OrderEvent]| {
            facts.len() >= 800
        })
        .await
        .unwrap();
    first.kill();

    let second = ChildProcessor::start(&pipeline);
    let mut orders = pipeline.reader(&pipeline.topics.orders).unwrap();
    let facts = orders
        .read_group_until(Duration::from_secs(180), |facts: &[OrderEvent]| {
            facts.iter().filter(|f| is_decision(f)).count() >= 5000
        })
        .await
        .unwrap();
    drop(second);
    // Exactly one decision per order (after deduplication by record id), the capacity of
    // each event held exactly once.
    let reserved = decisions_by_event(&facts);
    for e in events {
        assert_eq!(reserved[e].len(), 1500, "{e}: every slot held exactly once");
    }
    eprintln!(
        "crash: {} records delivered again were deduplicated by id",
        orders.duplicates
    );
    for e in events {
        assert_event_consistent(&pipeline, e, 0, 1500).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_joining_mid_stream_never_allocates_a_slot_twice() {
    let pipeline = Pipeline::create(services().await, "rebalance")
        .await
        .unwrap();
    let events: Vec<String> = (0..8).map(|i| format!("rebalance-{i}")).collect();
    let mut first_half: Vec<BookingCommand> = events.iter().map(|e| event(e, 300, 600)).collect();
    let mut second_half = Vec::new();
    for i in 0..4000 {
        let command = booking(
            &events[i % 8],
            &format!("order-{i:05}"),
            &format!("user-{}", i % 500),
        );
        if i < 2000 {
            first_half.push(command)
        } else {
            second_half.push(command)
        }
    }
    let one = pipeline.start_processor().await.unwrap();
    pipeline.produce_commands(&first_half).await.unwrap();
    let mut orders = pipeline.reader(&pipeline.topics.orders).unwrap();
    let mut facts = orders
        .read_group_until(Duration::from_secs(120), |f: &[OrderEvent]| f.len() >= 1000)
        .await
        .unwrap();
    let two = pipeline.start_processor().await.unwrap();
    // The rebalance completes: each instance owns some of the partitions.
    let owned = |p: &boxoffice_tests::pipeline::RunningProcessor| p.metrics.partitions_owned.get();
    boxoffice_tests::wait::until(
        "both instances to own partitions",
        Duration::from_secs(60),
        || {
            let split = owned(&one) > 0 && owned(&two) > 0 && owned(&one) + owned(&two) == 4;
            async move { split.then_some(()) }
        },
    )
    .await
    .unwrap();
    pipeline.produce_commands(&second_half).await.unwrap();
    let mut decided = facts.iter().filter(|f| is_decision(f)).count();
    let more = orders
        .read_group_until(Duration::from_secs(180), |f: &[OrderEvent]| {
            decided + f.iter().filter(|f| is_decision(f)).count() >= 4000
        })
        .await
        .unwrap();
    decided += more.iter().filter(|f| is_decision(f)).count();
    facts.extend(more);
    assert_eq!(decided, 4000);
    let reserved = decisions_by_event(&facts);
    // Partitions moved (the wait above saw them split between the instances); which instance
    // decided the second half's records depends on the assignment, so it is only reported.
    let work = |p: &boxoffice_tests::pipeline::RunningProcessor| p.metrics.records_processed.get();
    eprintln!(
        "rebalance: instance one decided {}, instance two {}",
        work(&one),
        work(&two)
    );
    one.stop().await.unwrap();
    two.stop().await.unwrap();
    for e in &events {
        assert_eq!(reserved[e].len(), 300, "{e}: exactly its capacity reserved");
        assert_event_consistent(&pipeline, e, 0, 300).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaid_holds_expire_on_time_and_the_slots_sell_again() {
    let pipeline = Pipeline::create(services().await, "expiry").await.unwrap();
    let e = "expiry-event";
    // Before the commands are built: a hold ends 2 s after its command's `occurred_at`.
    let booked_at = Instant::now();
    let mut commands = vec![event(e, 10, 2)];
    commands.extend((0..10).map(|i| booking(e, &format!("first-{i}"), &format!("user-{i}"))));
    let processor = pipeline.start_processor().await.unwrap();
    pipeline.produce_commands(&commands).await.unwrap();
    let mut orders = pipeline.reader(&pipeline.topics.orders).unwrap();
    let facts = read_until_n(&mut orders, 10, |f| {
        matches!(f, OrderEvent::OrderExpired(_))
    })
    .await;
    let expired_after = booked_at.elapsed();
    assert_eq!(
        facts
            .iter()
            .filter(|f| matches!(f, OrderEvent::OrderReserved(_)))
            .count(),
        10
    );
    assert!(
        expired_after >= Duration::from_secs(2),
        "not before the 2 s hold ({expired_after:?})"
    );
    assert!(
        expired_after < Duration::from_secs(15),
        "released promptly ({expired_after:?})"
    );

    let again: Vec<BookingCommand> = (0..10)
        .map(|i| booking(e, &format!("second-{i}"), &format!("user-{i}")))
        .collect();
    pipeline.produce_commands(&again).await.unwrap();
    let facts = read_until_n(&mut orders, 10, |f| {
        matches!(f, OrderEvent::OrderReserved(_))
    })
    .await;
    let reserved: Vec<_> = facts
        .iter()
        .filter_map(|f| match f {
            OrderEvent::OrderReserved(r) => Some(r.clone()),
            _ => None,
        })
        .collect();
    pipeline
        .produce_commands(&reserved.iter().map(payment_for).collect::<Vec<_>>())
        .await
        .unwrap();
    read_until_n(&mut orders, 10, |f| {
        matches!(f, OrderEvent::OrderConfirmed(_))
    })
    .await;
    processor.stop().await.unwrap();
    assert_event_consistent(&pipeline, e, 10, 0).await;
}

/// Ended orders leave memory once saved; a late payment for one is decided from its stored
/// row (read on demand) exactly as a processor holding every order would decide it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_that_left_memory_is_read_back_for_a_late_payment() {
    let pipeline = Pipeline::create(services().await, "evicted").await.unwrap();
    let e = "evicted-event";
    let mut commands = vec![event(e, 10, 1)];
    commands.extend((0..3).map(|i| booking(e, &format!("late-{i}"), &format!("user-{i}"))));
    let processor = pipeline.start_processor().await.unwrap();
    pipeline.produce_commands(&commands).await.unwrap();
    let mut orders = pipeline.reader(&pipeline.topics.orders).unwrap();
    let facts = read_until_n(&mut orders, 3, |f| matches!(f, OrderEvent::OrderExpired(_))).await;
    // Every order ended and was saved: none is kept in memory any more.
    let deadline = Instant::now() + Duration::from_secs(30);
    while processor.metrics.orders_in_memory.get() != 0 {
        assert!(
            Instant::now() < deadline,
            "{} orders still in memory",
            processor.metrics.orders_in_memory.get()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(processor.metrics.orders_read.get(), 0);
    let first = facts
        .iter()
        .find_map(|f| match f {
            OrderEvent::OrderReserved(r) if r.order_id == "late-0" => Some(r.clone()),
            _ => None,
        })
        .unwrap();
    pipeline
        .produce_commands(&[payment_for(&first)])
        .await
        .unwrap();
    orders
        .read_group_until(Duration::from_secs(60), |f: &[OrderEvent]| {
            f.iter().any(|f| {
                matches!(f, OrderEvent::OrderConfirmed(c) if c.order_id == "late-0" && c.late_payment)
            })
        })
        .await
        .unwrap();
    assert_eq!(
        processor.metrics.orders_read.get(),
        1,
        "the expired order was read from the store"
    );
    processor.stop().await.unwrap();
    // The audit folds the whole log with every order in memory: same decisions.
    assert_event_consistent(&pipeline, e, 1, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_goes_to_the_dead_letter_topic_and_processing_continues() {
    let pipeline = Pipeline::create(services().await, "poison").await.unwrap();
    let e = "poison-event";
    let processor = pipeline.start_processor().await.unwrap();
    pipeline
        .produce_commands(&[event(e, 5, 600), booking(e, "before", "u1")])
        .await
        .unwrap();
    pipeline
        .produce_raw(e, b"\x00\x00\x00\x00\x01not avro at all")
        .await
        .unwrap();
    pipeline.produce_raw(e, b"plain text").await.unwrap();
    // Well-formed records with order ids the store cannot keep (where its index rows live,
    // longer than any id the pipeline makes).
    pipeline
        .produce_commands(&[
            booking(e, "\0index/00000000000000000001", "u3"),
            booking(e, &"x".repeat(65), "u4"),
            booking(e, "after", "u2"),
        ])
        .await
        .unwrap();

    let mut dead = pipeline.reader(&pipeline.topics.dead_letters).unwrap();
    let letters = dead.read_raw(4, Duration::from_secs(60)).await.unwrap();
    assert_eq!(letters.len(), 4);
    for letter in &letters {
        let reason = letter
            .headers
            .iter()
            .find(|(k, _)| k == "dlq.reason")
            .map(|(_, v)| v.as_str());
        assert!(
            reason.is_some_and(|r| !r.is_empty()),
            "reason header: {:?}",
            letter.headers
        );
        assert_eq!(letter.key.as_deref(), Some(e.as_bytes()));
        let decoded: DeadLetter = pipeline
            .codec
            .decode_as(letter.payload.as_deref().unwrap())
            .await
            .unwrap();
        assert_eq!(decoded.source_topic, pipeline.topics.commands);
    }
    let mut orders = pipeline.reader(&pipeline.topics.orders).unwrap();
    let facts = orders
        .read_group_until(Duration::from_secs(60), |f: &[OrderEvent]| f.len() >= 2)
        .await
        .unwrap();
    let decided: HashSet<&str> = facts.iter().map(OrderEvent::order_id).collect();
    assert_eq!(
        decided,
        HashSet::from(["before", "after"]),
        "processing continued past the poison"
    );
    processor.stop().await.unwrap();
    assert_event_consistent(&pipeline, e, 0, 2).await;
}
