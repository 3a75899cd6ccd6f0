//! The registry-aware codec: records in the Confluent wire format (magic byte `0`, the schema's
//! 4-byte big-endian registry id, the Avro binary body), through schema_registry_converter
//! against a real registry.
//!
//! Subjects follow the **TopicRecordNameStrategy**: `<topic>-<record full name>`, for example
//! `booking.commands-boxoffice.BookingRequested`. Several record types share one topic (so
//! everything that touches an event stays in one ordered partition), and each type evolves on
//! its own subject with its own compatibility history. Encoding registers the record's `.avsc`
//! under its subject on first use (idempotent: the same schema gets the same id) and caches the
//! id; decoding fetches the writer's schema by id on first sight and caches it (the converter's
//! caches). Failed lookups are never cached, so a registry that comes back is used at once.
//!
//! Decoding never panics. The frame is checked here before the converter sees it, and every
//! failure is a typed [`DecodeError`]: the retryable ones (registry unreachable) apart from the
//! ones that belong on the dead-letter topic (short frame, bad magic byte, unknown schema id,
//! schema mismatch, undecodable body).

use std::hash::{Hash, Hasher};
use std::io::Cursor;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::{SrSettings, is_compatible_schema};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    RawError, SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use serde::Serialize;

use crate::records::{DeadLetterErrorKind, Record, RecordGroup};
use crate::registry::{RegistryArgs, RegistryError};

/// First byte of every Confluent wire-format frame.
pub const MAGIC_BYTE: u8 = 0;
/// Magic byte plus the 4-byte schema id.
pub const HEADER_LEN: usize = 5;

/// The registry subject of `full_name` on `topic` (TopicRecordNameStrategy).
pub fn subject(topic: &str, full_name: &str) -> String {
    format!("{topic}-{full_name}")
}

/// A record could not be decoded. Only [`DecodeError::Registry`] is worth retrying; every other
/// variant is a property of the bytes and belongs on the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame of {len} bytes is shorter than the 5-byte Confluent header")]
    ShortFrame { len: usize },
    #[error("first byte is {found:#04x}, not the Confluent magic byte 0x00")]
    BadMagicByte { found: u8 },
    #[error("schema id {id} is not known to the schema registry")]
    UnknownSchemaId { id: u32 },
    #[error("expected {expected}, the writer wrote {found}: {reason}")]
    SchemaMismatch {
        expected: String,
        found: String,
        reason: String,
    },
    #[error("schema id {id} cannot be used to decode: {reason}")]
    UnusableSchema { id: u32, reason: String },
    #[error("schema registry unavailable (retry later): {0}")]
    Registry(String),
    #[error("Avro body does not decode with the writer's schema: {0}")]
    Body(String),
}

impl DecodeError {
    /// True when the same bytes may decode later (the registry was unreachable or failing);
    /// false when the bytes themselves are the problem.
    pub fn is_retryable(&self) -> bool {
        matches!(self, DecodeError::Registry(_))
    }

    /// The dead-letter class of this failure.
    pub fn dead_letter_kind(&self) -> DeadLetterErrorKind {
        match self {
            DecodeError::ShortFrame { .. } => DeadLetterErrorKind::ShortFrame,
            DecodeError::BadMagicByte { .. } => DeadLetterErrorKind::BadMagicByte,
            DecodeError::UnknownSchemaId { .. } => DeadLetterErrorKind::UnknownSchemaId,
            DecodeError::SchemaMismatch { .. } | DecodeError::UnusableSchema { .. } => {
                DeadLetterErrorKind::SchemaMismatch
            }
            DecodeError::Body(_) => DeadLetterErrorKind::UndecodableBody,
            DecodeError::Registry(_) => DeadLetterErrorKind::Other,
        }
    }
}

/// A record could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("schema registry unavailable (retry later): {0}")]
    Registry(String),
    #[error("schema registry refused the schema for subject {subject}: {reason}")]
    Rejected { subject: String, reason: String },
    #[error("{full_name} does not serialize with its schema: {reason}")]
    Serialize { full_name: String, reason: String },
}

impl CodecError {
    /// True when retrying the same call may succeed (the registry was unreachable or failing).
    pub fn is_retryable(&self) -> bool {
        matches!(self, CodecError::Registry(_))
    }
}

/// A decoded record: what the writer wrote, in the writer's schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// Registry id of the writer's schema.
    pub schema_id: u32,
    /// Full name of the writer's record (`boxoffice.OrderReserved`).
    pub full_name: String,
    /// The record, as the writer's schema reads it.
    pub value: Value,
}

/// What the registry says about a candidate schema for a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compatibility {
    /// The subject has no version yet: anything may be registered.
    NewSubject,
    Compatible,
    Incompatible,
}

/// Splits a Confluent wire-format frame into the schema id and the Avro body, without I/O.
pub fn parse_frame(bytes: &[u8]) -> Result<(u32, &[u8]), DecodeError> {
    // A wrong first byte is reported even for a short frame: it says more (not ours at all).
    if let Some(&found) = bytes.first()
        && found != MAGIC_BYTE
    {
        return Err(DecodeError::BadMagicByte { found });
    }
    match bytes {
        [_magic, a, b, c, d, body @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), body)),
        _ => Err(DecodeError::ShortFrame { len: bytes.len() }),
    }
}

/// Decodes an Avro body with the writer's schema. The body must be exactly one datum: bytes
/// left over mean the frame was built with another schema than its id says.
pub fn decode_body(writer: &Schema, body: &[u8]) -> Result<Value, DecodeError> {
    let mut cursor = Cursor::new(body);
    let value = GenericDatumReader::builder(writer)
        .build()
        .and_then(|reader| reader.read_value(&mut cursor))
        .map_err(|e| DecodeError::Body(e.to_string()))?;
    let read = usize::try_from(cursor.position()).unwrap_or(usize::MAX);
    if read != body.len() {
        return Err(DecodeError::Body(format!(
            "{} bytes left over after the record ({} of {} read)",
            body.len().saturating_sub(read),
            read,
            body.len()
        )));
    }
    Ok(value)
}

/// Serializes `item` with `schema` into a complete frame for registry id `id`.
pub fn encode_frame<T: Serialize>(id: u32, schema: &Schema, item: &T) -> Result<Vec<u8>, String> {
    let body = GenericDatumWriter::builder(schema)
        .build()
        .and_then(|writer| writer.write_ser_to_vec(item))
        .map_err(|e| e.to_string())?;
    let mut frame = Vec::with_capacity(HEADER_LEN + body.len());
    frame.push(MAGIC_BYTE);
    frame.extend_from_slice(&id.to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Encodes records into frames and decodes frames into records, against one registry.
#[derive(Debug)]
pub struct Codec {
    settings: SrSettings,
    encoder: AvroEncoder,
    decoder: AvroDecoder,
}

impl Codec {
    /// A codec for the registry `args` points at. Talks to the registry only when used.
    pub fn new(args: &RegistryArgs) -> Result<Self, RegistryError> {
        let settings = args.settings()?;
        Ok(Codec {
            encoder: AvroEncoder::new(settings.clone()),
            decoder: AvroDecoder::new(settings.clone()),
            settings,
        })
    }

    /// Encodes `record` for `topic`, registering its schema under
    /// `<topic>-<full name>` on first use.
    pub async fn encode<R: Record>(&self, topic: &str, record: &R) -> Result<Vec<u8>, CodecError> {
        self.encode_named(topic, R::FULL_NAME, R::avsc(), record)
            .await
    }

    /// Encodes whichever record a group value holds, under that record's own subject.
    pub async fn encode_group<G: RecordGroup>(
        &self,
        topic: &str,
        record: &G,
    ) -> Result<Vec<u8>, CodecError> {
        self.encode_named(topic, record.full_name(), record.avsc(), record)
            .await
    }

    async fn encode_named<T: Serialize>(
        &self,
        topic: &str,
        full_name: &str,
        avsc: &str,
        item: &T,
    ) -> Result<Vec<u8>, CodecError> {
        let subject = subject(topic, full_name);
        // The converter caches by this key. The subject alone would hand a second version of a
        // record (same subject, other schema) the first version's id, so the text counts too.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        avsc.hash(&mut hasher);
        let cache_key = format!("{subject}#{:016x}", hasher.finish());
        let strategy = SubjectNameStrategy::TopicRecordNameStrategyWithSchema(
            topic.to_owned(),
            supplied(full_name, avsc),
        );
        let schema = match self.encoder.get_schema_and_id(&cache_key, strategy).await {
            Ok(schema) => schema,
            Err(e) => {
                // The converter caches refusals; a fixed registry must be usable without a restart.
                self.encoder.remove_errors_from_cache();
                return Err(registration_error(&subject, &e));
            }
        };
        encode_frame(schema.id, &schema.parsed, item).map_err(|reason| CodecError::Serialize {
            full_name: full_name.to_owned(),
            reason,
        })
    }

    /// Decodes a frame into the writer's record name and value (in the writer's schema).
    pub async fn decode(&self, bytes: &[u8]) -> Result<Decoded, DecodeError> {
        let (id, body) = parse_frame(bytes)?;
        let schema = match self.decoder.get_schema(id).await {
            Ok(schema) => schema,
            Err(e) => {
                // Unknown ids and failures are not remembered: the converter would otherwise
                // keep one entry per garbage id and replay stale failures forever.
                self.decoder.remove_errors_from_cache();
                return Err(lookup_error(id, &e));
            }
        };
        let Schema::Record(record) = &schema.parsed else {
            return Err(DecodeError::SchemaMismatch {
                expected: "a record".to_owned(),
                found: format!(
                    "{:?}",
                    apache_avro::schema::SchemaKind::from(&schema.parsed)
                ),
                reason: format!("schema id {id} is not a record schema"),
            });
        };
        let full_name = record.name.fullname(None);
        let value = decode_body(&schema.parsed, body)?;
        Ok(Decoded {
            schema_id: id,
            full_name,
            value,
        })
    }

    /// Decodes a frame into `R`. The writer may have used an older or newer schema of `R`: the
    /// value is resolved against `R`'s schema. Another record type is a
    /// [`DecodeError::SchemaMismatch`].
    pub async fn decode_as<R: Record>(&self, bytes: &[u8]) -> Result<R, DecodeError> {
        let decoded = self.decode(bytes).await?;
        if decoded.full_name != R::FULL_NAME {
            return Err(DecodeError::SchemaMismatch {
                expected: R::FULL_NAME.to_owned(),
                found: decoded.full_name,
                reason: "the writer wrote another record type".to_owned(),
            });
        }
        R::from_writer_value(decoded.value).map_err(|reason| DecodeError::SchemaMismatch {
            expected: R::FULL_NAME.to_owned(),
            found: R::FULL_NAME.to_owned(),
            reason,
        })
    }

    /// Decodes a frame into whichever member of `G` the writer wrote.
    pub async fn decode_group<G: RecordGroup>(&self, bytes: &[u8]) -> Result<G, DecodeError> {
        let decoded = self.decode(bytes).await?;
        G::from_named_value(&decoded.full_name, decoded.value)
    }

    /// Registers `avsc` (a record named `full_name`) under `subject` and returns its id. The
    /// registry refuses a schema its compatibility rule rejects ([`CodecError::Rejected`]).
    /// Not cached: meant for tools and tests, not the hot path.
    pub async fn register(
        &self,
        subject: &str,
        full_name: &str,
        avsc: &str,
    ) -> Result<u32, CodecError> {
        schema_registry_converter::async_impl::schema_registry::post_schema(
            &self.settings,
            subject.to_owned(),
            supplied(full_name, avsc),
        )
        .await
        .map(|registered| registered.id)
        .map_err(|e| registration_error(subject, &e))
    }

    /// Asks the registry whether `avsc` may be registered next under `subject`.
    pub async fn check_compatibility(
        &self,
        subject: &str,
        full_name: &str,
        avsc: &str,
    ) -> Result<Compatibility, CodecError> {
        match is_compatible_schema(
            &self.settings,
            subject.to_owned(),
            supplied(full_name, avsc),
        )
        .await
        {
            Ok(true) => Ok(Compatibility::Compatible),
            Ok(false) => Ok(Compatibility::Incompatible),
            Err(e) if status(&e) == Some(404) => Ok(Compatibility::NewSubject),
            Err(e) => Err(registration_error(subject, &e)),
        }
    }
}

fn supplied(full_name: &str, avsc: &str) -> SuppliedSchema {
    SuppliedSchema::new(
        Some(full_name.to_owned()),
        SchemaType::Avro,
        avsc.to_owned(),
    )
}

/// The HTTP status of a failed registry call. The converter puts it only in its message
/// (`... failed with status 404 Not Found`), with the registry's JSON error as the source.
fn status(e: &SRCError) -> Option<u16> {
    let rest = e.error.split("failed with status ").nth(1)?;
    rest.get(..3)?.parse().ok()
}

/// The registry's own error code (`40403` schema not found, `409` incompatible, ...).
fn registry_code(e: &SRCError) -> Option<u32> {
    std::error::Error::source(e)?
        .downcast_ref::<RawError>()
        .map(|raw| raw.error_code)
}

fn describe(e: &SRCError) -> String {
    match &e.cause {
        Some(cause) => format!("{}: {cause}", e.error),
        None => e.error.clone(),
    }
}

/// Server trouble and transport failures are retryable whatever the converter says (it counts
/// only 502 and 503 as retryable).
fn is_unavailable(e: &SRCError) -> bool {
    e.retriable || status(e).is_some_and(|s| s >= 500)
}

fn lookup_error(id: u32, e: &SRCError) -> DecodeError {
    if is_unavailable(e) {
        DecodeError::Registry(describe(e))
    } else if status(e) == Some(404) || registry_code(e) == Some(40403) {
        DecodeError::UnknownSchemaId { id }
    } else {
        DecodeError::UnusableSchema {
            id,
            reason: describe(e),
        }
    }
}

fn registration_error(subject: &str, e: &SRCError) -> CodecError {
    if is_unavailable(e) {
        CodecError::Registry(describe(e))
    } else {
        CodecError::Rejected {
            subject: subject.to_owned(),
            reason: describe(e),
        }
    }
}

#[cfg(test)]
mod tests;
