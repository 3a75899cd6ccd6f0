//! The `.avsc` files in `avro/schemas/`, compiled into the crate. They are the source of truth
//! for every record on every topic: the Rust types in `records` mirror them (a test fails when
//! the two drift apart), the codec registers them with the schema registry as they are, and the
//! topics CLI checks them for BACKWARD compatibility before they are deployed.

use apache_avro::Schema;

/// Namespace of every boxoffice record (`boxoffice.BookingRequested`, ...).
pub const NAMESPACE: &str = "boxoffice";

/// Where the `.avsc` files live in the source tree (for tools that list or watch the directory;
/// running code uses the embedded copies in [`all`]).
pub const SCHEMA_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas");

/// One `.avsc` file as compiled into the crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaFile {
    /// Avro full name, `boxoffice.<RecordName>`.
    pub full_name: &'static str,
    /// File name inside `avro/schemas/`, `<RecordName>.avsc`.
    pub file_name: &'static str,
    /// The file's text, exactly as written (docs included: the registry shows them).
    pub avsc: &'static str,
}

impl SchemaFile {
    /// Parses the schema text.
    pub fn parse(&self) -> Result<Schema, apache_avro::Error> {
        Schema::parse_str(self.avsc)
    }

    /// The record name without its namespace.
    pub fn name(&self) -> &'static str {
        self.file_name.trim_end_matches(".avsc")
    }
}

macro_rules! schema_files {
    ($($name:literal),+ $(,)?) => {
        [$(SchemaFile {
            full_name: concat!("boxoffice.", $name),
            file_name: concat!($name, ".avsc"),
            avsc: include_str!(concat!("../schemas/", $name, ".avsc")),
        }),+]
    };
}

/// Grouped by topic, in flow order.
static ALL: [SchemaFile; 20] = schema_files![
    // booking.commands
    "BookingRequested",
    "CancelRequested",
    "PaymentSucceeded",
    "PaymentFailed",
    "HoldExpired",
    "EventUpserted",
    // orders.events
    "OrderReserved",
    "OrderRejected",
    "OrderConfirmed",
    "OrderCancelled",
    "OrderExpired",
    "TicketsIssued",
    // payments.requests
    "PaymentRequested",
    "PaymentSubmitted",
    "RefundRequested",
    "PaymentProviderEvent",
    // availability
    "AvailabilityChanged",
    // notifications
    "NotificationRequested",
    // dead.letters
    "DeadLetter",
    // booking.progress
    "EventProgress",
];

/// Every schema file, grouped by topic in flow order.
pub fn all() -> &'static [SchemaFile] {
    &ALL
}

/// The schema file of a full name (`boxoffice.OrderReserved`), if boxoffice has one.
pub fn by_full_name(full_name: &str) -> Option<&'static SchemaFile> {
    ALL.iter().find(|file| file.full_name == full_name)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use apache_avro::schema::RecordField;
    use serde_json::Value as Json;

    use super::*;

    #[test]
    fn every_file_in_the_directory_is_listed_and_every_listed_file_exists() {
        let on_disk: BTreeSet<String> = std::fs::read_dir(SCHEMA_DIR)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(".avsc"))
            .collect();
        let listed: BTreeSet<String> = all().iter().map(|f| f.file_name.to_owned()).collect();
        assert_eq!(on_disk, listed, "avro/schemas/ and schemas::all() disagree");
        for file in all() {
            let text = std::fs::read_to_string(format!("{SCHEMA_DIR}/{}", file.file_name)).unwrap();
            assert_eq!(text, file.avsc, "{} is stale in the build", file.file_name);
        }
    }

    #[test]
    fn every_file_parses_as_a_record_named_like_the_file() {
        for file in all() {
            let schema = file
                .parse()
                .unwrap_or_else(|e| panic!("{}: {e}", file.file_name));
            let Schema::Record(record) = &schema else {
                panic!("{} is not a record", file.file_name)
            };
            assert_eq!(record.name.fullname(None), file.full_name);
            assert_eq!(record.name.namespace(), Some(NAMESPACE));
            assert_eq!(file.name(), record.name.name());
            assert!(
                record.doc.as_deref().is_some_and(|d| !d.is_empty()),
                "{}",
                file.full_name
            );
        }
        assert_eq!(
            by_full_name("boxoffice.OrderReserved").unwrap().file_name,
            "OrderReserved.avsc"
        );
        assert!(by_full_name("OrderReserved").is_none());
        assert!(by_full_name("boxoffice.Nope").is_none());
    }

    fn fields(file: &SchemaFile) -> Vec<RecordField> {
        match file.parse().unwrap() {
            Schema::Record(record) => record.fields,
            _ => unreachable!("checked by every_file_parses_as_a_record_named_like_the_file"),
        }
    }

    /// The raw JSON of a field, to see attributes (logicalType) exactly as written.
    fn raw_fields(file: &SchemaFile) -> Vec<Json> {
        let json: Json = serde_json::from_str(file.avsc).unwrap();
        json["fields"].as_array().unwrap().clone()
    }

    #[test]
    fn every_field_has_a_doc_and_a_snake_case_name() {
        for file in all() {
            for field in fields(file) {
                assert!(
                    field.doc.as_deref().is_some_and(|d| !d.trim().is_empty()),
                    "{}.{} has no doc",
                    file.full_name,
                    field.name
                );
                assert!(
                    field
                        .name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                    "{}.{} is not snake_case",
                    file.full_name,
                    field.name
                );
            }
        }
    }

    #[test]
    fn every_record_carries_a_record_id_and_an_event_time() {
        for file in all() {
            let fields = fields(file);
            let record_id = fields.iter().find(|f| f.name == "record_id");
            assert!(
                matches!(record_id.map(|f| &f.schema), Some(Schema::String)),
                "{} needs record_id: string",
                file.full_name
            );
            let occurred_at = fields.iter().find(|f| f.name == "occurred_at");
            assert!(
                matches!(
                    occurred_at.map(|f| &f.schema),
                    Some(Schema::TimestampMillis)
                ),
                "{} needs occurred_at: timestamp-millis",
                file.full_name
            );
        }
    }

    #[test]
    fn times_are_timestamp_millis_ids_are_strings_and_money_is_integer_plus_currency() {
        for file in all() {
            let fields = fields(file);
            for (field, raw) in fields.iter().zip(raw_fields(file)) {
                let name = field.name.as_str();
                let nullable_inner = match &field.schema {
                    Schema::Union(u)
                        if u.variants().len() == 2 && u.variants()[0] == Schema::Null =>
                    {
                        Some(&u.variants()[1])
                    }
                    _ => None,
                };
                let inner = nullable_inner.unwrap_or(&field.schema);
                if name.ends_with("_at") {
                    assert_eq!(
                        raw["type"]["logicalType"], "timestamp-millis",
                        "{}.{name}",
                        file.full_name
                    );
                    assert_eq!(*inner, Schema::TimestampMillis, "{}.{name}", file.full_name);
                }
                if name.ends_with("_id") {
                    assert_eq!(
                        *inner,
                        Schema::String,
                        "{}.{name}: ids are UUID text",
                        file.full_name
                    );
                }
                if name.ends_with("_minor") {
                    assert_eq!(
                        field.schema,
                        Schema::Long,
                        "{}.{name}: money is a long",
                        file.full_name
                    );
                    assert!(
                        fields
                            .iter()
                            .any(|f| f.name == "currency" && f.schema == Schema::String),
                        "{}.{name} has no currency beside it",
                        file.full_name
                    );
                }
                assert!(
                    !matches!(inner, Schema::Float | Schema::Double),
                    "{}.{name}: no floats in the contracts",
                    file.full_name
                );
            }
        }
    }

    #[test]
    fn nullable_fields_put_null_first_and_default_to_null() {
        // Null first with a null default lets a later version add such a field BACKWARD
        // compatibly, and keeps `Option<T>` on the Rust side.
        for file in all() {
            for field in fields(file) {
                if let Schema::Union(union) = &field.schema {
                    assert_eq!(
                        union.variants()[0],
                        Schema::Null,
                        "{}.{}",
                        file.full_name,
                        field.name
                    );
                    assert_eq!(
                        field.default,
                        Some(Json::Null),
                        "{}.{}",
                        file.full_name,
                        field.name
                    );
                }
            }
        }
    }
}
