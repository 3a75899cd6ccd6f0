//! Each rule of the BACKWARD check on a small record, and the check against Avro's own
//! resolution: whatever it calls safe, apache-avro can read.

use apache_avro::schema_compatibility::SchemaCompatibility;
use serde_json::{Value as Json, json};

use super::*;
use crate::schemas;

/// A record `boxoffice.T` with these fields.
fn record(fields: Json) -> String {
    json!({"type": "record", "name": "T", "namespace": "boxoffice", "fields": fields}).to_string()
}

fn fields_of(violations: &[Violation]) -> Vec<&str> {
    violations.iter().map(|v| v.field.as_str()).collect()
}

/// Checks `old -> new` and also that a clean verdict agrees with apache-avro's resolution.
fn backward(old: &str, new: &str) -> Vec<Violation> {
    let violations = backward_violations(old, new).unwrap();
    if violations.is_empty() {
        let (old, new) = (
            Schema::parse_str(old).unwrap(),
            Schema::parse_str(new).unwrap(),
        );
        assert!(
            SchemaCompatibility::can_read(&old, &new).is_ok(),
            "called safe but apache-avro cannot read old with new: {:?}",
            SchemaCompatibility::can_read(&old, &new)
        );
    }
    violations
}

const BASE: &str = r#"[{"name": "id", "type": "string"}, {"name": "n", "type": "int"}]"#;

fn base() -> Json {
    serde_json::from_str(BASE).unwrap()
}

fn with(extra: Json) -> String {
    let mut fields = base();
    fields.as_array_mut().unwrap().push(extra);
    record(fields)
}

#[test]
fn the_same_schema_is_compatible() {
    assert!(backward(&record(base()), &record(base())).is_empty());
    for file in schemas::all() {
        assert!(
            backward(file.avsc, file.avsc).is_empty(),
            "{}",
            file.full_name
        );
        assert!(
            forward_violations(file.avsc, file.avsc).unwrap().is_empty(),
            "{}",
            file.full_name
        );
    }
}

#[test]
fn adding_a_field_needs_a_default() {
    let old = record(base());
    assert!(
        backward(
            &old,
            &with(json!({"name": "note", "type": ["null", "string"], "default": null}))
        )
        .is_empty()
    );
    assert!(
        backward(
            &old,
            &with(json!({"name": "count", "type": "int", "default": 0}))
        )
        .is_empty()
    );
    let violations = backward(&old, &with(json!({"name": "count", "type": "int"})));
    assert_eq!(fields_of(&violations), ["count"]);
    assert!(
        violations[0].reason.contains("without a default"),
        "{}",
        violations[0]
    );
    assert_eq!(
        violations[0].to_string(),
        format!("count: {}", violations[0].reason)
    );
}

#[test]
fn removing_a_field_is_backward_but_not_forward() {
    let old = record(base());
    let new = record(json!([{"name": "id", "type": "string"}]));
    assert!(backward(&old, &new).is_empty());
    // Old readers would miss `n`, which has no default.
    assert_eq!(fields_of(&forward_violations(&old, &new).unwrap()), ["n"]);
}

#[test]
fn promotions_are_allowed_and_narrowing_is_not() {
    let int_to_long =
        record(json!([{"name": "id", "type": "string"}, {"name": "n", "type": "long"}]));
    assert!(backward(&record(base()), &int_to_long).is_empty());
    let to_double =
        record(json!([{"name": "id", "type": "string"}, {"name": "n", "type": "double"}]));
    assert!(backward(&int_to_long, &to_double).is_empty());
    let string_to_bytes =
        record(json!([{"name": "id", "type": "bytes"}, {"name": "n", "type": "int"}]));
    assert!(backward(&record(base()), &string_to_bytes).is_empty());

    let violations = backward(&int_to_long, &record(base()));
    assert_eq!(fields_of(&violations), ["n"]);
    assert!(
        violations[0].reason.contains("long") && violations[0].reason.contains("int"),
        "{}",
        violations[0]
    );
    let to_string =
        record(json!([{"name": "id", "type": "string"}, {"name": "n", "type": "string"}]));
    assert_eq!(fields_of(&backward(&record(base()), &to_string)), ["n"]);
}

#[test]
fn enum_symbols_may_be_added_but_removed_only_with_a_default() {
    let e = |symbols: Json, default: Option<&str>| {
        let mut schema = json!({"type": "enum", "name": "Kind", "symbols": symbols});
        if let Some(default) = default {
            schema["default"] = json!(default);
        }
        with(json!({"name": "kind", "type": schema}))
    };
    let old = e(json!(["A", "B"]), None);
    assert!(backward(&old, &e(json!(["A", "B", "C"]), None)).is_empty());
    let violations = backward(&old, &e(json!(["A"]), None));
    assert_eq!(fields_of(&violations), ["kind"]);
    assert!(violations[0].reason.contains('B'), "{}", violations[0]);
    assert!(backward(&old, &e(json!(["A", "OTHER"]), Some("OTHER"))).is_empty());
}

#[test]
fn nullability_may_widen_but_not_narrow() {
    let nullable = with(json!({"name": "note", "type": ["null", "string"], "default": null}));
    let required = with(json!({"name": "note", "type": "string", "default": ""}));
    assert!(backward(&required, &nullable).is_empty());
    let violations = backward(&nullable, &required);
    assert_eq!(fields_of(&violations), ["note"]);
    assert!(violations[0].reason.contains("null"), "{}", violations[0]);
}

#[test]
fn nested_records_arrays_and_maps_name_the_inner_field() {
    let inner = |fields: Json| json!({"type": "record", "name": "Inner", "fields": fields});
    let old = with(
        json!({"name": "payment", "type": inner(json!([{"name": "amount_minor", "type": "long"}]))}),
    );
    let new = with(json!({"name": "payment", "type": inner(json!([
        {"name": "amount_minor", "type": "long"},
        {"name": "currency", "type": "string"}
    ]))}));
    assert_eq!(fields_of(&backward(&old, &new)), ["payment.currency"]);

    let old = with(json!({"name": "tags", "type": {"type": "array", "items": "long"}}));
    let new = with(json!({"name": "tags", "type": {"type": "array", "items": "int"}}));
    assert_eq!(fields_of(&backward(&old, &new)), ["tags[]"]);

    let old = with(json!({"name": "params", "type": {"type": "map", "values": "string"}}));
    let new = with(json!({"name": "params", "type": {"type": "map", "values": "int"}}));
    assert_eq!(fields_of(&backward(&old, &new)), ["params{}"]);

    let old = with(json!({"name": "tags", "type": {"type": "array", "items": "string"}}));
    let new = with(json!({"name": "tags", "type": {"type": "map", "values": "string"}}));
    assert_eq!(fields_of(&backward(&old, &new)), ["tags"]);
}

#[test]
fn renames_need_aliases() {
    let old = record(base());
    let renamed_field =
        record(json!([{"name": "id", "type": "string"}, {"name": "count", "type": "int"}]));
    assert_eq!(fields_of(&backward(&old, &renamed_field)), ["count"]);
    let aliased_field = record(
        json!([{"name": "id", "type": "string"}, {"name": "count", "type": "int", "aliases": ["n"]}]),
    );
    assert!(backward(&old, &aliased_field).is_empty());

    let renamed_record =
        json!({"type": "record", "name": "U", "namespace": "boxoffice", "fields": base()})
            .to_string();
    let violations = backward(&old, &renamed_record);
    assert_eq!(fields_of(&violations), [""]);
    assert!(
        violations[0].reason.contains("boxoffice.T"),
        "{}",
        violations[0]
    );
    let aliased_record =
        json!({"type": "record", "name": "U", "namespace": "boxoffice", "aliases": ["T"], "fields": base()})
            .to_string();
    // Not through `backward`: the spec lets a reader's alias match the writer's name, while
    // apache-avro's own checker (0.22) insists on equal names.
    assert!(
        backward_violations(&old, &aliased_record)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn logical_type_changes_are_refused_but_adding_one_is_not() {
    let ts = |logical: &str| {
        with(json!({"name": "at", "type": {"type": "long", "logicalType": logical}}))
    };
    let plain = with(json!({"name": "at", "type": "long"}));
    assert!(backward(&plain, &ts("timestamp-millis")).is_empty());
    let violations = backward(&ts("timestamp-millis"), &ts("timestamp-micros"));
    assert_eq!(fields_of(&violations), ["at"]);
    assert!(
        violations[0].reason.contains("timestamp-micros"),
        "{}",
        violations[0]
    );
}

#[test]
fn every_violation_is_reported_not_just_the_first() {
    let old = record(base());
    let new = record(json!([
        {"name": "id", "type": "int"},
        {"name": "n", "type": "int"},
        {"name": "a", "type": "string"},
        {"name": "b", "type": "string"}
    ]));
    assert_eq!(fields_of(&backward(&old, &new)), ["id", "a", "b"]);
}

#[test]
fn recursive_records_terminate() {
    let list = |extra: Json| {
        let mut fields = json!([
            {"name": "value", "type": "int"},
            {"name": "next", "type": ["null", "boxoffice.T"], "default": null}
        ]);
        if !extra.is_null() {
            fields.as_array_mut().unwrap().push(extra);
        }
        record(fields)
    };
    assert!(backward(&list(Json::Null), &list(Json::Null)).is_empty());
    let violations = backward(
        &list(Json::Null),
        &list(json!({"name": "label", "type": "string"})),
    );
    assert_eq!(fields_of(&violations), ["label"]);
}

#[test]
fn a_real_contract_change_is_named() {
    // Adding a required field to a real record: the check names it, as `topics schemas check`
    // will print it.
    let file = schemas::by_full_name("boxoffice.OrderConfirmed").unwrap();
    let mut json: Json = serde_json::from_str(file.avsc).unwrap();
    json["fields"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "seat_map", "type": "string", "doc": "x"}));
    let violations = backward_violations(file.avsc, &json.to_string()).unwrap();
    assert_eq!(fields_of(&violations), ["seat_map"]);
}

#[test]
fn unparsable_schemas_are_errors_naming_the_side() {
    assert!(matches!(
        backward_violations("{", &record(base())),
        Err(CompatError::OldSchema(_))
    ));
    assert!(matches!(
        backward_violations(&record(base()), "nope"),
        Err(CompatError::NewSchema(_))
    ));
}
