//! The one dead-letter builder every consumer uses. A record that cannot be decoded or applied
//! goes to `dead.letters` as a `DeadLetter` (the raw key and payload, the reason, the error
//! kind and where it came from), keyed by the failed record's key, with headers an operator
//! can read without the schema registry:
//!
//! | header           | value                                              |
//! |------------------|----------------------------------------------------|
//! | `dlq.reason`     | the reason, as in the record                       |
//! | `dlq.error_kind` | the kind's wire name (`UNDECODABLE_BODY`)          |
//! | `dlq.source`     | `<topic>/<partition>/<offset>` of the failed record |
//! | `record_id`      | the dead letter's deterministic record id          |
//!
//! Building is pure; encoding and producing stay with the caller (whose delivery semantics
//! differ: inside a transaction, or acknowledged on its own).

use boxoffice_avro::records::{DeadLetter, DeadLetterErrorKind};
use rdkafka::Message;
use rdkafka::message::{Header, OwnedHeaders};

/// The dead letter `consumer` writes for `message`. `now` is the failure time (ms); the record
/// id is deterministic per consumer and source record, so a retry after a crash writes the same
/// id.
pub fn dead_letter(
    consumer: &str,
    message: &impl Message,
    kind: DeadLetterErrorKind,
    reason: &str,
    now: i64,
) -> DeadLetter {
    DeadLetter {
        record_id: DeadLetter::record_id_for(
            consumer,
            message.topic(),
            message.partition(),
            message.offset(),
        ),
        source_topic: message.topic().to_owned(),
        source_partition: message.partition(),
        source_offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec),
        reason: reason.to_owned(),
        error_kind: kind,
        consumer: consumer.to_owned(),
        failed_at: now,
        occurred_at: message.timestamp().to_millis().unwrap_or(now),
    }
}

/// The headers of a dead letter (see the module's table).
pub fn headers(record: &DeadLetter) -> OwnedHeaders {
    let source = format!(
        "{}/{}/{}",
        record.source_topic, record.source_partition, record.source_offset
    );
    OwnedHeaders::new()
        .insert(Header {
            key: "dlq.reason",
            value: Some(record.reason.as_str()),
        })
        .insert(Header {
            key: "dlq.error_kind",
            value: Some(record.error_kind.wire_name()),
        })
        .insert(Header {
            key: "dlq.source",
            value: Some(source.as_str()),
        })
        .insert(Header {
            key: "record_id",
            value: Some(record.record_id.as_str()),
        })
}

/// The Kafka key of a dead letter: the failed record's key, if it had one.
pub fn key(record: &DeadLetter) -> Option<&[u8]> {
    record.key.as_deref()
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{Headers, OwnedMessage, Timestamp};

    use super::*;

    #[test]
    fn a_dead_letter_carries_the_source_and_one_header_set() {
        let message = OwnedMessage::new(
            Some(b"payload".to_vec()),
            Some(b"event-1".to_vec()),
            "booking.commands".to_owned(),
            Timestamp::CreateTime(1_000),
            3,
            42,
            None,
        );
        let record = dead_letter(
            "boxoffice-booking",
            &message,
            DeadLetterErrorKind::UndecodableBody,
            "bad body",
            2_000,
        );
        assert_eq!(record.source_topic, "booking.commands");
        assert_eq!((record.source_partition, record.source_offset), (3, 42));
        assert_eq!((record.occurred_at, record.failed_at), (1_000, 2_000));
        assert_eq!(key(&record), Some(&b"event-1"[..]));
        let again = dead_letter(
            "boxoffice-booking",
            &message,
            DeadLetterErrorKind::UndecodableBody,
            "bad body",
            9_000,
        );
        assert_eq!(
            record.record_id, again.record_id,
            "deterministic per source record"
        );

        let headers = headers(&record);
        let pairs: Vec<(String, String)> = headers
            .iter()
            .map(|h| {
                let value = String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned();
                (h.key.to_owned(), value)
            })
            .collect();
        let expected = [
            ("dlq.reason", "bad body"),
            ("dlq.error_kind", "UNDECODABLE_BODY"),
            ("dlq.source", "booking.commands/3/42"),
            ("record_id", record.record_id.as_str()),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(pairs, expected);
    }
}
