//! The codec's pure parts: framing, body decoding and error classification. The registry round
//! trips are in tests/tests/avro_registry.rs.

use proptest::prelude::*;
use schema_registry_converter::error::SRCError;

use super::*;
use crate::records::{BookingRequested, OrderReserved, Record};

#[test]
fn a_frame_splits_into_id_and_body() {
    assert_eq!(
        parse_frame(&[0, 0, 0, 1, 2, 9, 8]).unwrap(),
        (258, &[9, 8][..])
    );
    assert_eq!(
        parse_frame(&[0, 0xff, 0xff, 0xff, 0xff]).unwrap(),
        (u32::MAX, &[][..])
    );
}

#[test]
fn short_frames_and_bad_magic_bytes_are_typed_errors() {
    assert_eq!(parse_frame(&[]), Err(DecodeError::ShortFrame { len: 0 }));
    assert_eq!(
        parse_frame(&[0, 0, 0, 1]),
        Err(DecodeError::ShortFrame { len: 4 })
    );
    assert_eq!(
        parse_frame(&[1, 0, 0, 0, 1, 2]),
        Err(DecodeError::BadMagicByte { found: 1 })
    );
    // A JSON payload is not ours, whatever its length.
    assert_eq!(
        parse_frame(b"{}"),
        Err(DecodeError::BadMagicByte { found: b'{' })
    );
}

#[test]
fn encode_frame_then_decode_body_gives_the_record_back() {
    let record: BookingRequested = crate::records::tests::sample(9);
    let frame = encode_frame(42, BookingRequested::schema(), &record).unwrap();
    assert_eq!(&frame[..5], &[0, 0, 0, 0, 42]);
    let (id, body) = parse_frame(&frame).unwrap();
    assert_eq!(id, 42);
    let value = decode_body(BookingRequested::schema(), body).unwrap();
    assert_eq!(BookingRequested::from_writer_value(value).unwrap(), record);
}

#[test]
fn a_body_with_bytes_left_over_or_cut_short_is_a_body_error() {
    let record: BookingRequested = crate::records::tests::sample(10);
    let frame = encode_frame(1, BookingRequested::schema(), &record).unwrap();
    let mut longer = frame[5..].to_vec();
    longer.push(0);
    let err = decode_body(BookingRequested::schema(), &longer).unwrap_err();
    assert!(
        matches!(&err, DecodeError::Body(reason) if reason.contains("left over")),
        "{err:?}"
    );
    let cut = &frame[5..frame.len() - 1];
    assert!(matches!(
        decode_body(BookingRequested::schema(), cut),
        Err(DecodeError::Body(_))
    ));
    // Another record's schema does not read it either (or reads it with bytes left over).
    assert!(decode_body(OrderReserved::schema(), &frame[5..]).is_err());
}

#[test]
fn only_registry_trouble_is_retryable() {
    let all = [
        DecodeError::ShortFrame { len: 1 },
        DecodeError::BadMagicByte { found: 1 },
        DecodeError::UnknownSchemaId { id: 1 },
        DecodeError::SchemaMismatch {
            expected: "a".into(),
            found: "b".into(),
            reason: "c".into(),
        },
        DecodeError::UnusableSchema {
            id: 1,
            reason: "x".into(),
        },
        DecodeError::Body("x".into()),
        DecodeError::Registry("down".into()),
    ];
    let retryable: Vec<bool> = all.iter().map(DecodeError::is_retryable).collect();
    assert_eq!(retryable, [false, false, false, false, false, false, true]);
    assert_eq!(all[0].dead_letter_kind(), DeadLetterErrorKind::ShortFrame);
    assert_eq!(all[1].dead_letter_kind(), DeadLetterErrorKind::BadMagicByte);
    assert_eq!(
        all[2].dead_letter_kind(),
        DeadLetterErrorKind::UnknownSchemaId
    );
    assert_eq!(
        all[3].dead_letter_kind(),
        DeadLetterErrorKind::SchemaMismatch
    );
    assert_eq!(
        all[5].dead_letter_kind(),
        DeadLetterErrorKind::UndecodableBody
    );
    assert!(CodecError::Registry("x".into()).is_retryable());
    assert!(
        !CodecError::Rejected {
            subject: "s".into(),
            reason: "r".into()
        }
        .is_retryable()
    );
}

fn http_error(status: &str, retriable: bool) -> SRCError {
    let message = format!("HTTP request to schema registry failed with status {status}");
    SRCError::new(&message, Some("error_code: 0".into()), retriable)
}

#[test]
fn registry_failures_are_told_apart() {
    assert_eq!(
        lookup_error(5, &http_error("404 Not Found", false)),
        DecodeError::UnknownSchemaId { id: 5 }
    );
    assert!(matches!(
        lookup_error(5, &http_error("500 Internal Server Error", false)),
        DecodeError::Registry(_)
    ));
    assert!(matches!(
        lookup_error(5, &http_error("503 Service Unavailable", true)),
        DecodeError::Registry(_)
    ));
    let transport = SRCError::new(
        "http call to schema registry failed",
        Some("connection refused".into()),
        true,
    );
    assert!(
        matches!(lookup_error(5, &transport), DecodeError::Registry(r) if r.contains("connection refused"))
    );
    assert!(matches!(
        lookup_error(
            5,
            &SRCError::new("type Protobuf, is not correct", None, false)
        ),
        DecodeError::UnusableSchema { id: 5, .. }
    ));
    assert!(matches!(
        registration_error("s", &http_error("409 Conflict", false)),
        CodecError::Rejected { subject, .. } if subject == "s"
    ));
    assert!(matches!(
        registration_error("s", &transport),
        CodecError::Registry(_)
    ));
    assert_eq!(
        status(&http_error("422 Unprocessable Entity", false)),
        Some(422)
    );
    assert_eq!(status(&transport), None);
}

#[test]
fn subjects_follow_the_topic_record_name_strategy() {
    assert_eq!(
        subject("booking.commands", BookingRequested::FULL_NAME),
        "booking.commands-boxoffice.BookingRequested"
    );
    let converter = SubjectNameStrategy::TopicRecordNameStrategy(
        "booking.commands".into(),
        BookingRequested::FULL_NAME.into(),
    );
    assert_eq!(
        converter.get_subject().unwrap(),
        subject("booking.commands", BookingRequested::FULL_NAME)
    );
}

/// Every record schema, for decoding arbitrary bodies.
fn all_schemas() -> Vec<Schema> {
    crate::schemas::all()
        .iter()
        .map(|f| f.parse().unwrap())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_frame_parser(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        match parse_frame(&bytes) {
            Ok((id, body)) => {
                prop_assert_eq!(bytes[0], MAGIC_BYTE);
                prop_assert_eq!(id.to_be_bytes(), [bytes[1], bytes[2], bytes[3], bytes[4]]);
                prop_assert_eq!(body, &bytes[5..]);
            }
            Err(DecodeError::ShortFrame { len }) => prop_assert!(len < HEADER_LEN && len == bytes.len()),
            Err(DecodeError::BadMagicByte { found }) => prop_assert!(found != MAGIC_BYTE && found == bytes[0]),
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
    }

    #[test]
    fn arbitrary_bodies_never_panic_any_schema(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        for schema in all_schemas() {
            match decode_body(&schema, &body) {
                Ok(value) => prop_assert!(value.validate(&schema)),
                Err(DecodeError::Body(_)) => {}
                Err(other) => prop_assert!(false, "unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn corrupted_real_frames_never_panic(seed in any::<u8>(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
        let record: OrderReserved = crate::records::tests::sample(seed);
        let mut frame = encode_frame(3, OrderReserved::schema(), &record).unwrap();
        for (at, byte) in flips {
            let len = frame.len();
            frame[at % len] = byte;
        }
        if let Ok((_, body)) = parse_frame(&frame)
            && let Ok(value) = decode_body(OrderReserved::schema(), body)
        {
            // Whatever decodes is a valid value; turning it into the Rust type may fail, but
            // with an error.
            prop_assert!(value.validate(OrderReserved::schema()));
            let _ = OrderReserved::from_writer_value(value);
        }
    }
}

#[test]
fn the_codec_can_be_shared_across_tasks() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: T) {}
    let args = RegistryArgs {
        url: "http://127.0.0.1:9/apis/ccompat/v7".into(),
        timeout: std::time::Duration::from_secs(1),
    };
    let codec = Codec::new(&args).unwrap();
    send_sync(&codec);
    // Futures are only built, never polled: no I/O happens.
    let record: BookingRequested = crate::records::tests::sample(11);
    send(codec.encode("t", &record));
    send(codec.decode(&[]));
    send(codec.decode_as::<BookingRequested>(&[]));
    send(codec.decode_group::<crate::records::BookingCommand>(&[]));
}
