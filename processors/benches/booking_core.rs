//! The pure booking core, single thread: decisions per second (criterion).
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
                order_id: format!("order-{i:08}"),
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

criterion_group!(benches, bench);
criterion_main!(benches);
