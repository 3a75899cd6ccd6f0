//! The CQL schema and the booking processor's inventory store against a real CQL store
//! (Cassandra 5 locally, ScyllaDB under testcontainers). Each test has its own keyspace.

use std::sync::Arc;
use std::time::Instant;

use boxoffice_store::inventory::{
    InventoryStore, MAX_SAVE_BYTES, SaveOutcome, StoredConfig, StoredEvent, StoredEventUpdate,
    StoredIndexEntry, StoredOrder, StoredStatus,
};
use boxoffice_store::schema::{Keyspace, SchemaSettings, TABLES, ensure_schema};
use boxoffice_tests::{names, services};
use scylla::client::session::Session;

struct Fixture {
    session: Arc<Session>,
    keyspace: Keyspace,
    store: InventoryStore,
}

impl Fixture {
    async fn new(prefix: &str) -> Self {
        let session = Arc::new(
            services()
                .await
                .scylla()
                .connect()
                .await
                .expect("CQL store reachable"),
        );
        let keyspace =
            Keyspace::new(&names::unique(prefix)).expect("unique names are valid keyspaces");
        ensure_schema(&session, &SchemaSettings::local(keyspace.clone()))
            .await
            .expect("schema created");
        let store = InventoryStore::new(Arc::clone(&session), &keyspace)
            .await
            .expect("statements prepared");
        Fixture {
            session,
            keyspace,
            store,
        }
    }

    /// Every row a query returns.
    async fn select_all<R>(&self, cql: String) -> Vec<R>
    where
        R: for<'frame, 'metadata> scylla::deserialize::row::DeserializeRow<'frame, 'metadata>,
    {
        self.session
            .query_unpaged(cql, &[])
            .await
            .expect("query runs")
            .into_rows_result()
            .expect("a query that returns rows")
            .rows::<R>()
            .expect("rows of the asked-for types")
            .map(|row| row.expect("row decodes"))
            .collect()
    }

    async fn drop(self) {
        self.session
            .query_unpaged(format!("DROP KEYSPACE {}", self.keyspace.cql()), &[])
            .await
            .expect("test keyspace dropped");
    }
}

fn config(capacity: i32) -> StoredConfig {
    StoredConfig {
        name: "Flash sale gig".into(),
        category_id: Some("cat-music".into()),
        capacity,
        price_minor: 4_500,
        currency: "EUR".into(),
        sale_starts_at: 1_700_000_000_000,
        sale_ends_at: 1_700_086_400_000,
        hold_ms: 600_000,
        max_per_order: 4,
        max_per_user: 8,
        updated_at: 1_699_999_000_000,
        updated_by_record: "cms-record-1".into(),
    }
}

/// An order id like the pipeline's (a UUID), sortable by `i`.
fn order_id(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

fn reserved(i: usize) -> StoredOrder {
    StoredOrder {
        order_id: order_id(i),
        user_id: format!("11111111-0000-4000-8000-{:012}", i % 997),
        slots: 2,
        amount_minor: 9_000,
        currency: "EUR".into(),
        payment_id: Some(format!("22222222-0000-4000-8000-{i:012}")),
        status: StoredStatus::Reserved,
        hold_expires_at: Some(1_700_000_600_000 + i as i64),
        reject_reason: None,
        cancel_reason: None,
        late: false,
        refunded: false,
        // One length for all, so every order's estimated size is the same.
        idempotency_key: Some(format!("key-{i:08}")),
    }
}

fn rejected(i: usize) -> StoredOrder {
    StoredOrder {
        payment_id: None,
        status: StoredStatus::Rejected,
        hold_expires_at: None,
        reject_reason: Some("SOLD_OUT".into()),
        amount_minor: 0,
        ..reserved(i)
    }
}

fn first_save(event_id: &str, orders: Vec<StoredOrder>) -> StoredEventUpdate {
    let held = orders
        .iter()
        .filter(|o| o.status == StoredStatus::Reserved)
        .map(|o| o.slots)
        .sum();
    StoredEventUpdate {
        event_id: event_id.into(),
        previous_offset: None,
        new_offset: 41,
        config: Some(config(100_000)),
        held,
        sold: 0,
        sequence: 7,
        decisions: 12,
        decision_digest: "000000000000000000000000000000ff".into(),
        changed_orders: orders,
        index_entries: None,
    }
}

/// What `load` must return after `update` was applied to an event that held `earlier` orders.
fn expected(update: &StoredEventUpdate, mut orders: Vec<StoredOrder>) -> StoredEvent {
    orders.retain(|o| {
        !update
            .changed_orders
            .iter()
            .any(|c| c.order_id == o.order_id)
    });
    orders.extend(update.changed_orders.iter().cloned());
    orders.sort_by(|a, b| a.order_id.cmp(&b.order_id));
    StoredEvent {
        event_id: update.event_id.clone(),
        applied_offset: Some(update.new_offset),
        config: update.config.clone(),
        held: update.held,
        sold: update.sold,
        sequence: update.sequence,
        decisions: update.decisions,
        decision_digest: update.decision_digest.clone(),
        indexed: update.index_entries.is_some(),
        index: None,
        orders,
    }
}

#[tokio::test]
async fn ensure_schema_twice_is_harmless_and_creates_every_table() {
    let fixture = Fixture::new("schema").await;
    let settings = SchemaSettings::local(fixture.keyspace.clone());
    // Fixture::new ran it once; again, and concurrently twice more, changes nothing.
    ensure_schema(&fixture.session, &settings).await.unwrap();
    let (a, b) = tokio::join!(
        ensure_schema(&fixture.session, &settings),
        ensure_schema(&fixture.session, &settings)
    );
    a.unwrap();
    b.unwrap();

    let mut tables: Vec<String> = fixture
        .session
        .query_unpaged(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?",
            (fixture.keyspace.as_str(),),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(String,)>()
        .unwrap()
        .map(|r| r.unwrap().0)
        .collect();
    tables.sort();
    let mut wanted: Vec<String> = TABLES.iter().map(|t| t.to_string()).collect();
    wanted.sort();
    assert_eq!(tables, wanted);
    fixture.drop().await;
}

#[tokio::test]
async fn a_new_event_saves_loads_back_equal_and_is_fenced_by_its_offset() {
    let fixture = Fixture::new("inventory_fence").await;
    let store = &fixture.store;
    assert_eq!(store.load("event-never-saved").await.unwrap(), None);

    // First save of a new event: the condition is "no applied offset yet".
    let mut orders: Vec<StoredOrder> = (0..5).map(reserved).collect();
    orders.push(rejected(5));
    let first = first_save("event-1", orders);
    assert_eq!(store.save(&first).await.unwrap(), SaveOutcome::Applied);
    let loaded = store.load("event-1").await.unwrap().unwrap();
    assert_eq!(loaded, expected(&first, vec![]));

    // A second "first save" (another owner that also saw no state) is refused.
    let mut again = first.clone();
    again.new_offset = 50;
    assert_eq!(
        store.save(&again).await.unwrap(),
        SaveOutcome::Conflict {
            current_offset: Some(41)
        }
    );

    // The next step with the right previous offset: one order confirmed, one expired (its
    // hold deadline cleared), one cancelled and refunded, one new; configuration unchanged
    // (None leaves it as stored).
    let mut confirmed = reserved(0);
    confirmed.status = StoredStatus::Confirmed;
    confirmed.hold_expires_at = None;
    confirmed.late = true;
    let mut expired = reserved(1);
    expired.status = StoredStatus::Expired;
    expired.hold_expires_at = None;
    let mut cancelled = reserved(2);
    cancelled.status = StoredStatus::Cancelled;
    cancelled.hold_expires_at = None;
    cancelled.cancel_reason = Some("PAYMENT_FAILED".into());
    cancelled.refunded = true;
    let second = StoredEventUpdate {
        event_id: "event-1".into(),
        previous_offset: Some(41),
        new_offset: 57,
        config: None,
        held: 6,
        sold: 2,
        sequence: 9,
        decisions: 20,
        decision_digest: "0000000000000000000000000000010f".into(),
        changed_orders: vec![confirmed, expired, cancelled, reserved(6)],
        index_entries: None,
    };
    assert_eq!(store.save(&second).await.unwrap(), SaveOutcome::Applied);
    let mut want = expected(&second, loaded.orders.clone());
    want.config = first.config.clone();
    let after_second = store.load("event-1").await.unwrap().unwrap();
    assert_eq!(after_second, want);

    // A zombie still at offset 41 is fenced: nothing of its batch lands.
    let mut stale = second.clone();
    stale.new_offset = 60;
    stale.held = 0;
    stale.config = Some(config(1));
    stale.changed_orders = vec![rejected(0), rejected(99)];
    assert_eq!(
        store.save(&stale).await.unwrap(),
        SaveOutcome::Conflict {
            current_offset: Some(57)
        }
    );
    assert_eq!(store.load("event-1").await.unwrap().unwrap(), after_second);
    fixture.drop().await;
}

#[tokio::test]
async fn two_owners_saving_from_the_same_offset_exactly_one_wins() {
    let fixture = Fixture::new("inventory_race").await;
    let store = &fixture.store;
    let base = first_save("event-race", (0..10).map(reserved).collect());
    assert_eq!(store.save(&base).await.unwrap(), SaveOutcome::Applied);

    let step = |new_offset: i64, order: usize| StoredEventUpdate {
        previous_offset: Some(41),
        new_offset,
        held: 22,
        changed_orders: vec![reserved(order)],
        index_entries: None,
        ..base.clone()
    };
    let (a, b) = (step(50, 100), step(51, 101));
    let (ra, rb) = tokio::join!(store.save(&a), store.save(&b));
    let outcomes = [ra.unwrap(), rb.unwrap()];
    let winners = outcomes
        .iter()
        .filter(|o| **o == SaveOutcome::Applied)
        .count();
    assert_eq!(winners, 1, "{outcomes:?}");
    let loaded = store.load("event-race").await.unwrap().unwrap();
    let winner = if outcomes[0] == SaveOutcome::Applied {
        &a
    } else {
        &b
    };
    assert_eq!(loaded, expected(winner, base.changed_orders.clone()));
    fixture.drop().await;
}

#[tokio::test]
async fn an_unconfigured_event_saves_without_config() {
    let fixture = Fixture::new("inventory_unconfigured").await;
    let update = StoredEventUpdate {
        config: None,
        held: 0,
        changed_orders: vec![rejected(1)],
        index_entries: None,
        ..first_save("event-unknown", vec![])
    };
    assert_eq!(
        fixture.store.save(&update).await.unwrap(),
        SaveOutcome::Applied
    );
    let loaded = fixture.store.load("event-unknown").await.unwrap().unwrap();
    assert_eq!(loaded, expected(&update, vec![]));
    assert_eq!(loaded.config, None);
    fixture.drop().await;
}

#[tokio::test]
async fn an_event_with_5000_orders_saves_in_one_batch_and_loads_back() {
    let fixture = Fixture::new("inventory_5000").await;
    let store = &fixture.store;
    let orders: Vec<StoredOrder> = (0..5_000)
        .map(|i| {
            if i % 10 == 9 {
                rejected(i)
            } else {
                reserved(i)
            }
        })
        .collect();
    let update = first_save("event-big", orders);
    println!(
        "5,000 orders: estimated request {} KiB",
        update.estimated_bytes() / 1024
    );

    let started = Instant::now();
    assert_eq!(store.save(&update).await.unwrap(), SaveOutcome::Applied);
    println!(
        "save of 5,000 orders (one conditional batch): {:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let loaded = store.load("event-big").await.unwrap().unwrap();
    println!("load of 5,000 orders (paged): {:?}", started.elapsed());
    assert_eq!(loaded, expected(&update, vec![]));

    // The next step changes 1,000 of them.
    let changed: Vec<StoredOrder> = (0..1_000)
        .map(|i| {
            let mut o = reserved(i * 5);
            o.status = StoredStatus::Confirmed;
            o.hold_expires_at = None;
            o
        })
        .collect();
    let next = StoredEventUpdate {
        previous_offset: Some(update.new_offset),
        new_offset: update.new_offset + 1_000,
        changed_orders: changed,
        index_entries: None,
        ..update.clone()
    };
    let started = Instant::now();
    assert_eq!(store.save(&next).await.unwrap(), SaveOutcome::Applied);
    println!("save of 1,000 changed orders: {:?}", started.elapsed());
    let loaded = store.load("event-big").await.unwrap().unwrap();
    assert_eq!(loaded, expected(&next, update.changed_orders.clone()));
    fixture.drop().await;
}

#[tokio::test]
async fn a_save_at_the_size_limit_is_accepted_by_the_store() {
    let fixture = Fixture::new("inventory_limit").await;
    let mut update = first_save("event-limit", vec![]);
    let per_order = {
        let one = first_save("event-limit", vec![reserved(0)]);
        one.estimated_bytes() - update.estimated_bytes()
    };
    let count = (MAX_SAVE_BYTES - update.estimated_bytes()) / per_order;
    update.changed_orders = (0..count).map(reserved).collect();
    update.held = 2 * count as i32;
    assert!(update.estimated_bytes() <= MAX_SAVE_BYTES);

    let started = Instant::now();
    assert_eq!(
        fixture.store.save(&update).await.unwrap(),
        SaveOutcome::Applied
    );
    println!(
        "save at the limit: {count} orders, {} KiB estimated, {:?}",
        update.estimated_bytes() / 1024,
        started.elapsed()
    );
    let started = Instant::now();
    let loaded = fixture.store.load("event-limit").await.unwrap().unwrap();
    println!("load of {count} orders: {:?}", started.elapsed());
    assert_eq!(loaded.orders.len(), count);
    assert_eq!(loaded, expected(&update, vec![]));

    // One order more than fits is refused before anything is sent.
    update.changed_orders.push(reserved(count));
    update.changed_orders.push(reserved(count + 1));
    let err = fixture.store.save(&update).await.unwrap_err();
    assert!(err.to_string().contains("save more often"), "{err}");
    fixture.drop().await;
}

#[tokio::test]
async fn partition_events_register_idempotently_and_list() {
    let fixture = Fixture::new("partition_events").await;
    let store = &fixture.store;
    assert!(
        store
            .events_of_partition("booking.commands", 3)
            .await
            .unwrap()
            .is_empty()
    );
    let registrations = (0..50).map(|i| {
        let event_id = format!("event-{i:03}");
        async move {
            store
                .register_event("booking.commands", 3, &event_id)
                .await?;
            // Again: idempotent.
            store.register_event("booking.commands", 3, &event_id).await
        }
    });
    futures::future::try_join_all(registrations).await.unwrap();
    store
        .register_event("booking.commands", 4, "event-elsewhere")
        .await
        .unwrap();
    store
        .register_event("other.topic", 3, "event-other-topic")
        .await
        .unwrap();

    let listed = store
        .events_of_partition("booking.commands", 3)
        .await
        .unwrap();
    assert_eq!(
        listed,
        (0..50).map(|i| format!("event-{i:03}")).collect::<Vec<_>>()
    );
    assert_eq!(
        store
            .events_of_partition("booking.commands", 4)
            .await
            .unwrap(),
        vec!["event-elsewhere".to_string()]
    );
    fixture.drop().await;
}

/// The index entry a processor would write for order `i` as `order` leaves it (digests here are
/// plain numbers: the store keeps what it is given).
fn index_entry(i: usize, order: &StoredOrder) -> StoredIndexEntry {
    let live = matches!(
        order.status,
        StoredStatus::Reserved | StoredStatus::Confirmed
    );
    StoredIndexEntry {
        order: i as u128,
        key: order
            .idempotency_key
            .as_ref()
            .map(|_| (1u128 << 100) + i as u128),
        live_order_id: live.then(|| order.order_id.clone()),
    }
}

#[tokio::test]
async fn an_indexed_event_is_loaded_for_an_assignment_from_its_index_rows_and_live_orders() {
    let fixture = Fixture::new("inventory_indexed").await;
    let store = &fixture.store;
    // 450 live orders (more than one read of live rows) and 100 rejected ones.
    let orders: Vec<StoredOrder> = (0..450)
        .map(reserved)
        .chain((450..550).map(rejected))
        .collect();
    let mut first = first_save("event-idx", orders.clone());
    first.index_entries = Some(
        orders
            .iter()
            .enumerate()
            .map(|(i, o)| index_entry(i, o))
            .collect(),
    );
    assert_eq!(store.save(&first).await.unwrap(), SaveOutcome::Applied);
    // The next save expires the first 10 holds.
    let expired: Vec<StoredOrder> = (0..10)
        .map(|i| StoredOrder {
            status: StoredStatus::Expired,
            hold_expires_at: None,
            ..reserved(i)
        })
        .collect();
    let second = StoredEventUpdate {
        previous_offset: Some(41),
        new_offset: 50,
        held: 880,
        changed_orders: expired.clone(),
        index_entries: Some(
            expired
                .iter()
                .enumerate()
                .map(|(i, o)| index_entry(i, o))
                .collect(),
        ),
        ..first.clone()
    };
    assert_eq!(store.save(&second).await.unwrap(), SaveOutcome::Applied);

    let lean = store
        .load_for_assignment("event-idx")
        .await
        .unwrap()
        .unwrap();
    assert!(lean.indexed);
    let mut index = first.index_entries.clone().unwrap();
    index.extend(second.index_entries.clone().unwrap());
    assert_eq!(
        lean.index.as_ref(),
        Some(&index),
        "every entry, in save order"
    );
    let live: Vec<StoredOrder> = (10..450).map(reserved).collect();
    let mut loaded_live = lean.orders.clone();
    loaded_live.sort_by(|a, b| a.order_id.cmp(&b.order_id));
    assert_eq!(loaded_live, live, "only the live orders, as last saved");
    assert_eq!((lean.held, lean.applied_offset), (880, Some(50)));

    // Loaded in full, the index rows are not orders.
    let full = store.load("event-idx").await.unwrap().unwrap();
    assert!(full.indexed && full.index.is_none());
    assert_eq!(full.orders.len(), 550);
    assert_eq!(full, expected(&second, orders.clone()));

    // An order id where index rows live is refused before anything is sent.
    let mut sneaky = second.clone();
    sneaky.previous_offset = Some(50);
    sneaky.new_offset = 60;
    sneaky.changed_orders = vec![StoredOrder {
        order_id: "\0index/00000000000000000070".into(),
        ..reserved(1)
    }];
    assert!(store.save(&sneaky).await.is_err());
    fixture.drop().await;
}

#[tokio::test]
async fn order_rows_are_written_in_batches_and_again_without_change() {
    use boxoffice_store::orders::{NewOrder, OrderRows};
    use scylla::value::CqlTimestamp;

    let fixture = Fixture::new("order_rows").await;
    let rows = OrderRows::new(Arc::clone(&fixture.session), &fixture.keyspace)
        .await
        .expect("statements prepared");
    // Seven orders: a full batch of five and a short one of two.
    let orders: Vec<NewOrder> = (0..7)
        .map(|i| NewOrder {
            order_id: order_id(i),
            event_id: "evt-rows".to_owned(),
            user_id: format!("user-{}", i % 3),
            number_slot: i as i32 + 1,
            created_at: 1_800_000_000_000 + i as i64,
            idempotency_key: (i % 2 == 0).then(|| format!("key-{i}")),
        })
        .collect();
    rows.write(&orders).await.expect("rows written");
    // A replay writes the same cells.
    rows.write(&orders).await.expect("rows written again");
    rows.write(&[]).await.expect("nothing to write");

    let ks = fixture.keyspace.cql();
    type OrderRow = (String, String, String, i32, String, CqlTimestamp, String);
    let mut stored: Vec<OrderRow> = fixture
        .select_all(format!(
            "SELECT id, event_id, user_id, number_slot, status, created_at, idempotency_key \
             FROM {ks}.orders"
        ))
        .await;
    stored.sort_by(|a, b| a.0.cmp(&b.0));
    let wanted: Vec<OrderRow> = orders
        .iter()
        .map(|o| {
            (
                o.order_id.clone(),
                o.event_id.clone(),
                o.user_id.clone(),
                o.number_slot,
                "PENDING".to_owned(),
                CqlTimestamp(o.created_at),
                o.idempotency_key.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(stored, wanted);

    type ListingRow = (String, CqlTimestamp, String, String, i32, String);
    let mut listed: Vec<ListingRow> = fixture
        .select_all(format!(
            "SELECT user_id, created_at, order_id, event_id, number_slot, status \
             FROM {ks}.orders_by_user"
        ))
        .await;
    listed.sort_by(|a, b| a.2.cmp(&b.2));
    let wanted: Vec<ListingRow> = orders
        .iter()
        .map(|o| {
            (
                o.user_id.clone(),
                CqlTimestamp(o.created_at),
                o.order_id.clone(),
                o.event_id.clone(),
                o.number_slot,
                "PENDING".to_owned(),
            )
        })
        .collect();
    assert_eq!(listed, wanted);
    fixture.drop().await;
}
