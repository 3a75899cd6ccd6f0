//! The pure booking core, single thread: decisions per second, and what the ids computed per
//! record cost (criterion).
//! `cargo bench -p boxoffice-processors --bench booking_core`

use boxoffice_avro::records::{BookingCommand, BookingRequested, EventUpserted};
use boxoffice_processors::booking::partition::Partition;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

const COMMANDS: usize = 10_000;

fn event(capacity: i32) -> BookingCommand {
    BookingCommand::EventUpserted(EventUpserted {
        record_id: "upsert".into(),
        event_id: "hot-event".into(),
        name: "Flash sale".into(),
        category_id: None,
        capacity,
        price_minor: 4500,
        currency: "EUR".into(),
        sale_starts_at: 0,
        sale_ends_at: i64::MAX,
        hold_seconds: 600,
        max_per_order: 4,
        max_per_user: 0,
        occurred_at: 1,
    })
}

/// A flash sale: every request for one hot event, half of them beyond capacity.
fn requests() -> Vec<BookingCommand> {
    (0..COMMANDS)
        .map(|i| {
            BookingCommand::BookingRequested(BookingRequested {
                record_id: format!("r{i}"),
                // Order ids as the pipeline makes them (UUIDs).
                order_id: uuid::Uuid::from_u128(0x4000_8000_0000_0000_0000 | i as u128)
                    .hyphenated()
                    .to_string(),
                event_id: "hot-event".into(),
                user_id: format!("user-{}", i % 2000),
                number_slot: 1,
                idempotency_key: None,
                occurred_at: 1_000 + i as i64,
            })
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let commands = requests();
    let mut group = c.benchmark_group("booking_core");
    group.throughput(Throughput::Elements(COMMANDS as u64));
    group.bench_function("decide_only", |b| {
        b.iter_batched(
            || {
                let mut p = Partition::new();
                p.apply_only(&event((COMMANDS / 2) as i32));
                p
            },
            |mut p| {
                for command in &commands {
                    std::hint::black_box(p.apply_only(command));
                }
                p
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("decide_and_render_records", |b| {
        b.iter_batched(
            || {
                let mut p = Partition::new();
                p.decide(&event((COMMANDS / 2) as i32));
                p
            },
            |mut p| {
                for command in &commands {
                    std::hint::black_box(p.decide(command));
                }
                p
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// The ids one reservation of a keyed request computes: its order id (ingest), the index
/// digests, the payment id, and the record ids of what it publishes (the order fact, the
/// payment request, the notification, the batch's availability record).
fn ids_per_reservation(c: &mut Criterion) {
    use boxoffice_avro::ids;
    use boxoffice_avro::records::{AvailabilityChanged, OrderReserved, PaymentRequested};
    use boxoffice_processors::booking::state::{key_digest, order_digest};
    let user = "5f0c3a52-9d7e-4f7c-8a43-1d2b0c9e7a11";
    let key = "7c1e2a9b-3f4d-4e5a-9b6c-0d1e2f3a4b5c";
    let event = "hot-event";
    let order = ids::order_id_for_request(user, key, event, 1);
    let mut group = c.benchmark_group("ids_per_reservation");
    group.throughput(Throughput::Elements(1));
    group.bench_function("order_id_for_request", |b| {
        b.iter(|| ids::order_id_for_request(user, key, event, std::hint::black_box(1)))
    });
    group.bench_function("index_digests", |b| {
        b.iter(|| {
            (
                order_digest(std::hint::black_box(&order)),
                key_digest(user, key),
            )
        })
    });
    group.bench_function("payment_id", |b| {
        b.iter(|| ids::payment_id(std::hint::black_box(&order)))
    });
    group.bench_function("record_ids_of_outputs", |b| {
        b.iter(|| {
            let order = std::hint::black_box(&order);
            (
                ids::record_id_for::<OrderReserved>(&[order]),
                ids::record_id_for::<PaymentRequested>(&[order]),
                ids::record_id("notification", &[order, "ORDER_RESERVED"]),
                ids::record_id_for::<AvailabilityChanged>(&[event, "12345"]),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, bench, ids_per_reservation);
criterion_main!(benches);
