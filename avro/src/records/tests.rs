//! Drift and round-trip tests for every record: the Rust type and its `.avsc` must describe the
//! same record, and any value the schema allows must survive Rust and the wire unchanged.

use apache_avro::AvroSchema;
use apache_avro::types::Value;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value as Json;

use super::*;
use crate::codec::{decode_body, encode_frame};
use crate::schemas;

/// Calls `$check::<T>()` for every record type.
macro_rules! each_record {
    ($check:ident) => {
        vec![
            $check::<BookingRequested>(),
            $check::<CancelRequested>(),
            $check::<PaymentSucceeded>(),
            $check::<PaymentFailed>(),
            $check::<HoldExpired>(),
            $check::<EventUpserted>(),
            $check::<OrderReserved>(),
            $check::<OrderRejected>(),
            $check::<OrderConfirmed>(),
            $check::<OrderCancelled>(),
            $check::<OrderExpired>(),
            $check::<TicketsIssued>(),
            $check::<PaymentRequested>(),
            $check::<PaymentSubmitted>(),
            $check::<RefundRequested>(),
            $check::<PaymentProviderEvent>(),
            $check::<AvailabilityChanged>(),
            $check::<NotificationRequested>(),
            $check::<DeadLetter>(),
            $check::<EventProgress>(),
        ]
    };
}

// ---------------------------------------------------------------------------------------------
// Drift

/// A schema as JSON without `doc` attributes: names, types, logical types, defaults, symbols,
/// aliases and field order all count; prose does not.
fn shape(schema: &Schema) -> Json {
    fn strip(json: Json) -> Json {
        match json {
            Json::Object(map) => Json::Object(
                map.into_iter()
                    .filter(|(k, _)| k != "doc")
                    .map(|(k, v)| (k, strip(v)))
                    .collect(),
            ),
            Json::Array(items) => Json::Array(items.into_iter().map(strip).collect()),
            other => other,
        }
    }
    strip(serde_json::to_value(schema).unwrap())
}

fn drift<R: Record + AvroSchema>() -> Option<String> {
    let derived = shape(&R::get_schema());
    let file = shape(R::schema());
    (derived != file).then(|| {
        format!(
            "{} drifted from its .avsc\n  rust: {}\n  avsc: {}",
            R::FULL_NAME,
            serde_json::to_string(&derived).unwrap(),
            serde_json::to_string(&file).unwrap()
        )
    })
}

#[test]
fn no_rust_type_drifts_from_its_avsc() {
    let drifted: Vec<String> = each_record!(drift).into_iter().flatten().collect();
    assert!(drifted.is_empty(), "{}", drifted.join("\n"));
}

/// The drift check is sensitive to every field: removing, retyping or renaming any single
/// field of any .avsc, or dropping a default, makes it differ from the Rust type.
fn drift_check_catches_every_field_change<R: Record + AvroSchema>() -> Vec<String> {
    let derived = shape(&R::get_schema());
    let original: Json = serde_json::from_str(R::avsc()).unwrap();
    let field_count = original["fields"].as_array().unwrap().len();
    let mut missed = Vec::new();
    for index in 0..field_count {
        let name = original["fields"][index]["name"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut mutations: Vec<(&str, Json)> = Vec::new();

        let mut removed = original.clone();
        removed["fields"].as_array_mut().unwrap().remove(index);
        mutations.push(("removed", removed));

        let mut retyped = original.clone();
        let new_type = if original["fields"][index]["type"] == "boolean" {
            "string"
        } else {
            "boolean"
        };
        retyped["fields"][index]["type"] = Json::from(new_type);
        retyped["fields"][index]
            .as_object_mut()
            .unwrap()
            .remove("default");
        mutations.push(("retyped", retyped));

        let mut renamed = original.clone();
        renamed["fields"][index]["name"] = Json::from(format!("{name}_x"));
        mutations.push(("renamed", renamed));

        if original["fields"][index].get("default").is_some() {
            let mut no_default = original.clone();
            no_default["fields"][index]
                .as_object_mut()
                .unwrap()
                .remove("default");
            mutations.push(("default dropped", no_default));
        }
        if original["fields"][index]["type"]["logicalType"].is_string() {
            let mut plain = original.clone();
            plain["fields"][index]["type"] = Json::from("long");
            mutations.push(("logical type dropped", plain));
        }

        for (what, mutated) in mutations {
            let schema = Schema::parse_str(&mutated.to_string()).unwrap();
            if shape(&schema) == derived {
                missed.push(format!("{}.{name} {what}", R::FULL_NAME));
            }
        }
    }
    let mut added = original.clone();
    added["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "extra", "type": "int"}));
    if shape(&Schema::parse_str(&added.to_string()).unwrap()) == derived {
        missed.push(format!("{} field added", R::FULL_NAME));
    }
    missed
}

#[test]
fn the_drift_check_fails_when_a_field_changes_on_one_side() {
    let missed: Vec<String> = each_record!(drift_check_catches_every_field_change)
        .into_iter()
        .flatten()
        .collect();
    assert!(
        missed.is_empty(),
        "changes the drift check did not see: {missed:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Catalogue

fn identity<R: Record>() -> (&'static str, &'static str) {
    (R::FULL_NAME, R::TOPIC)
}

#[test]
fn every_schema_file_has_exactly_one_record_type_with_the_same_text() {
    let types = each_record!(identity);
    let names: Vec<&str> = types.iter().map(|(name, _)| *name).collect();
    let files: Vec<&str> = schemas::all().iter().map(|f| f.full_name).collect();
    assert_eq!(names, files);
    fn same_text<R: Record>() -> bool {
        schemas::by_full_name(R::FULL_NAME).is_some_and(|f| f.avsc == R::avsc())
            && matches!(R::schema(), Schema::Record(r) if r.name.fullname(None) == R::FULL_NAME)
    }
    assert!(each_record!(same_text).into_iter().all(|same| same));
}

#[test]
fn records_are_on_the_agreed_topics() {
    let expected = [
        ("boxoffice.BookingRequested", "booking.commands"),
        ("boxoffice.CancelRequested", "booking.commands"),
        ("boxoffice.PaymentSucceeded", "booking.commands"),
        ("boxoffice.PaymentFailed", "booking.commands"),
        ("boxoffice.HoldExpired", "booking.commands"),
        ("boxoffice.EventUpserted", "booking.commands"),
        ("boxoffice.OrderReserved", "orders.events"),
        ("boxoffice.OrderRejected", "orders.events"),
        ("boxoffice.OrderConfirmed", "orders.events"),
        ("boxoffice.OrderCancelled", "orders.events"),
        ("boxoffice.OrderExpired", "orders.events"),
        ("boxoffice.TicketsIssued", "orders.events"),
        ("boxoffice.PaymentRequested", "payments.requests"),
        ("boxoffice.PaymentSubmitted", "payments.requests"),
        ("boxoffice.RefundRequested", "payments.requests"),
        ("boxoffice.PaymentProviderEvent", "payments.requests"),
        ("boxoffice.AvailabilityChanged", "availability"),
        ("boxoffice.NotificationRequested", "notifications"),
        ("boxoffice.DeadLetter", "dead.letters"),
        ("boxoffice.EventProgress", "booking.progress"),
    ];
    assert_eq!(each_record!(identity), expected);
    assert_eq!(
        BookingCommand::MEMBERS,
        &expected[0..6].iter().map(|(n, _)| *n).collect::<Vec<_>>()[..]
    );
    assert_eq!(
        OrderEvent::MEMBERS,
        &expected[6..12].iter().map(|(n, _)| *n).collect::<Vec<_>>()[..]
    );
    assert_eq!(
        PaymentRequest::MEMBERS,
        &expected[12..16].iter().map(|(n, _)| *n).collect::<Vec<_>>()[..]
    );
    assert_eq!(BookingCommand::TOPIC, "booking.commands");
    assert_eq!(OrderEvent::TOPIC, "orders.events");
    assert_eq!(PaymentRequest::TOPIC, "payments.requests");
}

// ---------------------------------------------------------------------------------------------
// Values from the schema

/// Any value the schema allows: the generator reads the .avsc, not the Rust type, so a Rust
/// type narrower than its schema fails the round trip.
pub(crate) fn value_for(schema: &Schema) -> BoxedStrategy<Value> {
    match schema {
        Schema::Null => Just(Value::Null).boxed(),
        Schema::Boolean => any::<bool>().prop_map(Value::Boolean).boxed(),
        Schema::Int => any::<i32>().prop_map(Value::Int).boxed(),
        Schema::Long => any::<i64>().prop_map(Value::Long).boxed(),
        Schema::TimestampMillis => any::<i64>().prop_map(Value::TimestampMillis).boxed(),
        Schema::String => any::<String>().prop_map(Value::String).boxed(),
        Schema::Bytes => proptest::collection::vec(any::<u8>(), 0..64)
            .prop_map(Value::Bytes)
            .boxed(),
        Schema::Enum(e) => {
            let symbols = e.symbols.clone();
            (0..symbols.len())
                .prop_map(move |i| Value::Enum(i as u32, symbols[i].clone()))
                .boxed()
        }
        Schema::Array(a) => proptest::collection::vec(value_for(&a.items), 0..5)
            .prop_map(Value::Array)
            .boxed(),
        Schema::Map(m) => {
            proptest::collection::hash_map(any::<String>(), value_for(&m.types), 0..5)
                .prop_map(Value::Map)
                .boxed()
        }
        Schema::Union(u) => {
            let branches: Vec<BoxedStrategy<Value>> = u
                .variants()
                .iter()
                .enumerate()
                .map(|(i, branch)| {
                    value_for(branch)
                        .prop_map(move |v| Value::Union(i as u32, Box::new(v)))
                        .boxed()
                })
                .collect();
            proptest::strategy::Union::new(branches).boxed()
        }
        Schema::Record(r) => {
            let names: Vec<String> = r.fields.iter().map(|f| f.name.clone()).collect();
            let fields: Vec<BoxedStrategy<Value>> =
                r.fields.iter().map(|f| value_for(&f.schema)).collect();
            fields
                .prop_map(move |values| Value::Record(names.iter().cloned().zip(values).collect()))
                .boxed()
        }
        other => panic!("no generator for {other:?}: extend value_for"),
    }
}

/// A record of type `R` drawn from its schema, deterministic per `seed`.
pub(crate) fn sample<R: Record>(seed: u8) -> R {
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        proptest::test_runner::TestRng::from_seed(
            proptest::test_runner::RngAlgorithm::ChaCha,
            &[seed; 32],
        ),
    );
    let value = value_for(R::schema())
        .new_tree(&mut runner)
        .unwrap()
        .current();
    R::from_writer_value(value).unwrap()
}

fn field<'v>(value: &'v Value, name: &str) -> Option<&'v Value> {
    match value {
        Value::Record(fields) => fields.iter().find(|(n, _)| n == name).map(|(_, v)| v),
        _ => None,
    }
}

/// The key field of each topic, as agreed.
fn key_field(topic: &str) -> &'static str {
    match topic {
        "booking.commands" | "availability" | "booking.progress" => "event_id",
        "orders.events" | "payments.requests" => "order_id",
        "notifications" => "user_id",
        other => panic!("no key agreed for {other}"),
    }
}

fn round_trip<R: Record>() -> Result<(), String> {
    let schema = R::schema();
    let mut runner = TestRunner::new(Config {
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&value_for(schema), |value| {
            prop_assert!(
                value.validate(schema),
                "generator produced an invalid value"
            );
            // Every value the schema allows is a value of the Rust type.
            let record = R::from_writer_value(value.clone()).map_err(TestCaseError::fail)?;

            // The codec's path: serde straight into the schema, the frame, and back.
            let frame = encode_frame(7, schema, &record).map_err(TestCaseError::fail)?;
            let (id, body) = crate::codec::parse_frame(&frame)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(id, 7);
            let decoded =
                decode_body(schema, body).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&decoded, &value);
            let back = R::from_writer_value(decoded).map_err(TestCaseError::fail)?;
            prop_assert_eq!(&back, &record);

            // The generic path (to_value, datum writer, datum reader) agrees. Not compared byte
            // for byte: a generic map is a HashMap, so its entries go out in any order.
            let generic = apache_avro::to_value(&record)
                .and_then(|v| v.resolve(schema))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&generic, &value);
            let datum = apache_avro::writer::datum::GenericDatumWriter::builder(schema)
                .build()
                .and_then(|w| w.write_value_to_vec(generic))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let generic_back =
                decode_body(schema, &datum).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&generic_back, &value);

            // The trait's accessors read the agreed fields.
            prop_assert_eq!(
                Some(&Value::String(record.record_id().to_owned())),
                field(&value, "record_id")
            );
            prop_assert_eq!(
                Some(&Value::TimestampMillis(record.occurred_at())),
                field(&value, "occurred_at")
            );
            if R::TOPIC != topic::DEAD_LETTERS {
                prop_assert_eq!(
                    Some(&Value::String(record.key().to_owned())),
                    field(&value, key_field(R::TOPIC))
                );
                prop_assert_eq!(record.kafka_key(), Some(record.key().as_bytes()));
            }
            Ok(())
        })
        .map_err(|e| format!("{}: {e}", R::FULL_NAME))
}

#[test]
fn every_record_round_trips_through_its_schema() {
    let failures: Vec<String> = each_record!(round_trip)
        .into_iter()
        .filter_map(Result::err)
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Whatever another record type's schema allows, reading it as `R` fails with an error (or
/// happens to fit), never a panic: a producer may register anything under a subject.
fn foreign_values_never_panic<R: Record>() -> Result<(), String> {
    let mut runner = TestRunner::new(Config {
        cases: 8,
        failure_persistence: None,
        ..Config::default()
    });
    for file in schemas::all() {
        let writer = file.parse().unwrap();
        runner
            .run(&value_for(&writer), |value| {
                let _ = R::from_writer_value(value);
                Ok(())
            })
            .map_err(|e| format!("{} read as {}: {e}", file.full_name, R::FULL_NAME))?;
    }
    Ok(())
}

#[test]
fn reading_any_record_as_any_type_never_panics() {
    let failures: Vec<String> = each_record!(foreign_values_never_panic)
        .into_iter()
        .filter_map(Result::err)
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // And a foreign record is refused, not silently accepted.
    let reserved: OrderReserved = sample(5);
    let value = apache_avro::to_value(&reserved)
        .unwrap()
        .resolve(OrderReserved::schema())
        .unwrap();
    assert!(TicketsIssued::from_writer_value(value).is_err());
}

#[test]
fn dead_letters_are_keyed_by_the_failed_records_raw_key() {
    let mut letter: DeadLetter = sample(1);
    letter.key = Some(vec![0xff, 0x00, 0x41]);
    assert_eq!(letter.kafka_key(), Some(&[0xff, 0x00, 0x41][..]));
    assert_eq!(
        letter.key(),
        letter.record_id,
        "a non-UTF-8 key falls back to the record id"
    );
    letter.key = Some(b"event-1".to_vec());
    assert_eq!(letter.key(), "event-1");
    letter.key = None;
    assert_eq!(letter.kafka_key(), None);
    let id = DeadLetter::record_id_for("booking-processor", "booking.commands", 3, 42);
    assert_eq!(
        id,
        DeadLetter::record_id_for("booking-processor", "booking.commands", 3, 42)
    );
    assert_ne!(
        id,
        DeadLetter::record_id_for("booking-processor", "booking.commands", 3, 43)
    );
}

#[test]
fn dead_letter_error_kind_defaults_to_other() {
    assert_eq!(DeadLetterErrorKind::default(), DeadLetterErrorKind::Other);
    let Schema::Record(record) = DeadLetter::schema() else {
        panic!("record")
    };
    let kind = record
        .fields
        .iter()
        .find(|f| f.name == "error_kind")
        .unwrap();
    let Schema::Enum(e) = &kind.schema else {
        panic!("enum")
    };
    assert_eq!(e.default.as_deref(), Some("OTHER"));
}

// ---------------------------------------------------------------------------------------------
// Evolution, without a registry

/// `avsc` with one field removed: what an older writer had.
fn without_field(avsc: &str, name: &str) -> Schema {
    let mut json: Json = serde_json::from_str(avsc).unwrap();
    json["fields"]
        .as_array_mut()
        .unwrap()
        .retain(|f| f["name"] != name);
    Schema::parse_str(&json.to_string()).unwrap()
}

#[test]
fn an_older_writer_without_a_defaulted_field_is_read_with_the_default() {
    let old = without_field(OrderConfirmed::avsc(), "late_payment");
    let old_value = value_for(&old)
        .new_tree(&mut TestRunner::deterministic())
        .unwrap()
        .current();
    let bytes = apache_avro::writer::datum::GenericDatumWriter::builder(&old)
        .build()
        .unwrap()
        .write_value_to_vec(old_value.clone())
        .unwrap();
    let written = decode_body(&old, &bytes).unwrap();
    assert_eq!(written, old_value);
    let confirmed = OrderConfirmed::from_writer_value(written).unwrap();
    assert!(!confirmed.late_payment);
    assert!(
        field(&old_value, "late_payment").is_none(),
        "the old writer has no late_payment"
    );

    let old = without_field(EventUpserted::avsc(), "hold_seconds");
    let value = value_for(&old)
        .new_tree(&mut TestRunner::deterministic())
        .unwrap()
        .current();
    let event = EventUpserted::from_writer_value(value).unwrap();
    assert_eq!(event.hold_seconds, EventUpserted::DEFAULT_HOLD_SECONDS);
}

#[test]
fn a_field_without_a_default_cannot_be_conjured_from_old_data() {
    let old = without_field(OrderReserved::avsc(), "hold_expires_at");
    let value = value_for(&old)
        .new_tree(&mut TestRunner::deterministic())
        .unwrap()
        .current();
    let err = OrderReserved::from_writer_value(value).unwrap_err();
    assert!(err.contains("hold_expires_at"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Groups

fn group_round_trip<G: RecordGroup + From<R>, R: Record>() -> Result<(), String> {
    let group: G = sample::<R>(3).into();
    assert_eq!(group.full_name(), R::FULL_NAME);
    assert_eq!(group.avsc(), R::avsc());
    // Serializes as the bare record (untagged), so the member's schema reads it.
    let frame = encode_frame(1, R::schema(), &group)?;
    let value = decode_body(R::schema(), &frame[5..]).map_err(|e| e.to_string())?;
    let back = G::from_named_value(R::FULL_NAME, value).map_err(|e| e.to_string())?;
    if back != group {
        return Err(format!("{} changed through its group", R::FULL_NAME));
    }
    assert_eq!(back.record_id(), group.record_id());
    assert_eq!(back.key(), group.key());
    assert_eq!(back.occurred_at(), group.occurred_at());
    Ok(())
}

#[test]
fn groups_decode_each_member_by_name() {
    let results = vec![
        group_round_trip::<BookingCommand, BookingRequested>(),
        group_round_trip::<BookingCommand, CancelRequested>(),
        group_round_trip::<BookingCommand, PaymentSucceeded>(),
        group_round_trip::<BookingCommand, PaymentFailed>(),
        group_round_trip::<BookingCommand, HoldExpired>(),
        group_round_trip::<BookingCommand, EventUpserted>(),
        group_round_trip::<OrderEvent, OrderReserved>(),
        group_round_trip::<OrderEvent, OrderRejected>(),
        group_round_trip::<OrderEvent, OrderConfirmed>(),
        group_round_trip::<OrderEvent, OrderCancelled>(),
        group_round_trip::<OrderEvent, OrderExpired>(),
        group_round_trip::<OrderEvent, TicketsIssued>(),
        group_round_trip::<PaymentRequest, PaymentRequested>(),
        group_round_trip::<PaymentRequest, PaymentSubmitted>(),
        group_round_trip::<PaymentRequest, RefundRequested>(),
        group_round_trip::<PaymentRequest, PaymentProviderEvent>(),
    ];
    let failures: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
fn a_group_refuses_a_record_from_another_topic() {
    let reserved: OrderReserved = sample(4);
    let value = apache_avro::to_value(&reserved)
        .unwrap()
        .resolve(OrderReserved::schema())
        .unwrap();
    let err = BookingCommand::from_named_value(OrderReserved::FULL_NAME, value).unwrap_err();
    match err {
        DecodeError::SchemaMismatch {
            expected, found, ..
        } => {
            assert!(
                expected.contains("boxoffice.BookingRequested"),
                "{expected}"
            );
            assert_eq!(found, "boxoffice.OrderReserved");
        }
        other => panic!("expected SchemaMismatch, got {other:?}"),
    }
    // A member's name with a value of another shape is a mismatch too, not a panic.
    let err =
        OrderEvent::from_named_value(OrderExpired::FULL_NAME, Value::Record(vec![])).unwrap_err();
    assert!(matches!(err, DecodeError::SchemaMismatch { .. }), "{err:?}");
}

#[test]
fn samples_differ_by_seed() {
    let a: BookingRequested = sample(1);
    let b: BookingRequested = sample(2);
    assert_ne!(a, b);
}

fn wire_names_agree_with_serde<T>()
where
    T: strum::VariantArray + Copy + Serialize + std::str::FromStr + PartialEq + std::fmt::Debug,
    &'static str: From<T>,
{
    for &variant in T::VARIANTS {
        let wire: &'static str = variant.into();
        let json = serde_json::to_value(variant).expect("unit variants serialise");
        assert_eq!(json.as_str(), Some(wire), "{variant:?}");
        assert_eq!(wire.parse::<T>().ok(), Some(variant), "{wire}");
    }
}

#[test]
fn every_enum_has_one_wire_name_table() {
    wire_names_agree_with_serde::<PaymentFailureReason>();
    wire_names_agree_with_serde::<ProviderChargeOutcome>();
    wire_names_agree_with_serde::<RejectReason>();
    wire_names_agree_with_serde::<CancelReason>();
    wire_names_agree_with_serde::<RefundReason>();
    wire_names_agree_with_serde::<NotificationKind>();
    wire_names_agree_with_serde::<DeadLetterErrorKind>();
    assert_eq!(RejectReason::SoldOut.wire_name(), "SOLD_OUT");
}
