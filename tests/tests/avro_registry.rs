//! The record codec against the real schema registry: every record type goes out in the
//! Confluent wire format and comes back, bad frames give typed errors, schemas are cached after
//! first use (the registry can go away and cached types keep working), an older writer is read
//! by a newer reader, and a change that is not BACKWARD compatible is refused both by the
//! registry and by the local check, which names the field.

// The helpers below are test code too: a failed unwrap in them is a failed test.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::Duration;

use apache_avro::Schema;
use boxoffice_avro::codec::{self, Codec, CodecError, Compatibility, DecodeError};
use boxoffice_avro::compat;
use boxoffice_avro::ids;
use boxoffice_avro::records::*;
use boxoffice_avro::registry::RegistryArgs;
use boxoffice_tests::{names, services};
use schema_registry_converter::async_impl::schema_registry::get_all_versions;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// 2026-09-21T12:00:00Z in milliseconds: a fixed time keeps the examples deterministic.
const AT: i64 = 1_790_000_000_000;

struct Ids {
    event: String,
    order: String,
    user: String,
    payment: String,
    refund: String,
}

fn new_ids() -> Ids {
    let event = uuid::Uuid::new_v4().to_string();
    let user = uuid::Uuid::new_v4().to_string();
    let order = ids::order_id_for_request(&user, "key-1", &event, 1);
    let payment = ids::payment_id(&order);
    let refund = ids::refund_id(&payment);
    Ids {
        event,
        order,
        user,
        payment,
        refund,
    }
}

fn booking_commands(i: &Ids) -> Vec<BookingCommand> {
    vec![
        BookingRequested {
            record_id: ids::record_id_for::<BookingRequested>(&[&i.order]),
            order_id: i.order.clone(),
            event_id: i.event.clone(),
            user_id: i.user.clone(),
            number_slot: 2,
            idempotency_key: Some("key-1".into()),
            occurred_at: AT,
        }
        .into(),
        CancelRequested {
            record_id: ids::record_id_for::<CancelRequested>(&[&i.order]),
            order_id: i.order.clone(),
            event_id: i.event.clone(),
            user_id: i.user.clone(),
            occurred_at: AT + 1,
        }
        .into(),
        PaymentSucceeded {
            record_id: ids::record_id_for::<PaymentSucceeded>(&[&i.payment]),
            payment_id: i.payment.clone(),
            order_id: i.order.clone(),
            event_id: i.event.clone(),
            user_id: i.user.clone(),
            amount_minor: 9_000,
            currency: "EUR".into(),
            provider_reference: "ch_123".into(),
            occurred_at: AT + 2,
        }
        .into(),
        PaymentFailed {
            record_id: ids::record_id_for::<PaymentFailed>(&[&i.payment]),
            payment_id: i.payment.clone(),
            order_id: i.order.clone(),
            event_id: i.event.clone(),
            user_id: i.user.clone(),
            amount_minor: 9_000,
            currency: "EUR".into(),
            reason: PaymentFailureReason::InsufficientFunds,
            detail: None,
            occurred_at: AT + 3,
        }
        .into(),
        HoldExpired {
            record_id: ids::record_id_for::<HoldExpired>(&[&i.order, &AT.to_string()]),
            order_id: i.order.clone(),
            event_id: i.event.clone(),
            user_id: i.user.clone(),
            hold_expires_at: AT,
            occurred_at: AT + 4,
        }
        .into(),
        EventUpserted {
            record_id: ids::record_id_for::<EventUpserted>(&[&i.event, "1"]),
            event_id: i.event.clone(),
            name: "Flash sale: Les Misérables".into(),
            category_id: None,
            capacity: 3_000,
            price_minor: 4_500,
            currency: "EUR".into(),
            sale_starts_at: AT,
            sale_ends_at: AT + 86_400_000,
            hold_seconds: EventUpserted::DEFAULT_HOLD_SECONDS,
            max_per_order: 4,
            max_per_user: 6,
            occurred_at: AT - 1,
        }
        .into(),
    ]
}

fn order_events(i: &Ids) -> Vec<OrderEvent> {
    vec![
        OrderReserved {
            record_id: ids::record_id_for::<OrderReserved>(&[&i.order]),
            order_id: i.order.clone(),
            event_id: i.event.clone(),
            user_id: i.user.clone(),
            number_slot: 2,
            amount_minor: 9_000,
            currency: "EUR".into(),
            hold_expires_at: AT + 600_000,
            payment_id: Some(i.payment.clone()),
            occurred_at: AT,
        }
        .into(),
        OrderRejected {
            record_id: ids::record_id_for::<OrderRejected>(&[&i.order]),
            order_id: i.order.clone(),
            event_id: i.event.clone(),
            user_id: i.user.clone(),
            number_slot: 9,
            reason: RejectReason::LimitExceeded,
            detail: Some("at most 4 per order".into()),
            occurred_at: AT,
        }
        .into(),
        OrderConfirmed {
            record_id: ids::record_id_for::<OrderConfirmed>(&[&i.order]),
            order_id: i.order.clone(),
            event_id: i.event.clone(),
            user_id: i.user.clone(),
            payment_id: Some(i.payment.clone()),
            number_slot: 2,
            amount_minor: 9_000,
            currency: "EUR".into(),
            late_payment: true,
            occurred_at: AT,
        }
        .into(),
        OrderCancelled {
            record_id: ids::record_id_for::<OrderCancelled>(&[&i.order]),
            order_id: i.order.clone(),
            event_id: i.event.clone(),
            user_id: i.user.clone(),
            number_slot: 2,
            reason: CancelReason::UserRequested,
            refund_id: Some(i.refund.clone()),
            occurred_at: AT,
        }
        .into(),
        OrderExpired {
            record_id: ids::record_id_for::<OrderExpired>(&[&i.order]),
            order_id: i.order.clone(),
            event_id: i.event.clone(),
            user_id: i.user.clone(),
            number_slot: 2,
            occurred_at: AT,
        }
        .into(),
        TicketsIssued {
            record_id: ids::record_id_for::<TicketsIssued>(&[&i.order]),
            order_id: i.order.clone(),
            event_id: i.event.clone(),
            user_id: i.user.clone(),
            ticket_ids: ids::ticket_ids(&i.order, 2),
            occurred_at: AT,
        }
        .into(),
    ]
}

fn payment_requests(i: &Ids) -> Vec<PaymentRequest> {
    vec![
        PaymentRequested {
            record_id: ids::record_id_for::<PaymentRequested>(&[&i.payment]),
            payment_id: i.payment.clone(),
            order_id: i.order.clone(),
            event_id: i.event.clone(),
            user_id: i.user.clone(),
            amount_minor: 9_000,
            currency: "EUR".into(),
            hold_expires_at: AT + 600_000,
            occurred_at: AT,
        }
        .into(),
        PaymentSubmitted {
            record_id: ids::record_id_for::<PaymentSubmitted>(&[&i.payment]),
            payment_id: i.payment.clone(),
            order_id: i.order.clone(),
            event_id: i.event.clone(),
            user_id: i.user.clone(),
            amount_minor: 9_000,
            currency: "EUR".into(),
            payment_method_token: "tok_visa".into(),
            occurred_at: AT,
        }
        .into(),
        RefundRequested {
            record_id: ids::record_id_for::<RefundRequested>(&[&i.refund]),
            refund_id: i.refund.clone(),
            payment_id: i.payment.clone(),
            order_id: i.order.clone(),
            event_id: i.event.clone(),
            user_id: i.user.clone(),
            amount_minor: 9_000,
            currency: "EUR".into(),
            reason: RefundReason::LatePaymentSoldOut,
            occurred_at: AT,
        }
        .into(),
        PaymentProviderEvent {
            record_id: ids::record_id_for::<PaymentProviderEvent>(&["evt_1"]),
            provider_event_id: "evt_1".into(),
            payment_id: i.payment.clone(),
            order_id: i.order.clone(),
            amount_minor: 9000,
            currency: "EUR".into(),
            outcome: ProviderChargeOutcome::Declined,
            provider_reference: "ch_1".into(),
            failure_reason: Some(PaymentFailureReason::InsufficientFunds),
            detail: Some("insufficient funds".into()),
            occurred_at: AT,
        }
        .into(),
    ]
}

fn availability(i: &Ids) -> AvailabilityChanged {
    AvailabilityChanged {
        record_id: ids::record_id_for::<AvailabilityChanged>(&[&i.event, "7"]),
        event_id: i.event.clone(),
        sequence: 7,
        total: 3_000,
        available: 2_990,
        held: 8,
        sold: 2,
        occurred_at: AT,
    }
}

fn notification(i: &Ids) -> NotificationRequested {
    NotificationRequested {
        record_id: ids::record_id_for::<NotificationRequested>(&[&i.order, "reserved"]),
        user_id: i.user.clone(),
        order_id: Some(i.order.clone()),
        event_id: None,
        kind: NotificationKind::OrderReserved,
        params: [("number_slot".to_owned(), "2".to_owned())]
            .into_iter()
            .collect(),
        occurred_at: AT,
    }
}

fn progress(i: &Ids) -> EventProgress {
    EventProgress {
        record_id: ids::record_id_for::<EventProgress>(&[&i.event, "41"]),
        event_id: i.event.clone(),
        applied_offset: 41,
        first_offset: 3,
        decisions: 12,
        decision_digest: "0123456789abcdef0123456789abcdef".into(),
        capacity: 100,
        held: 4,
        sold: 6,
        sequence: 10,
        occurred_at: 1_767_225_600_000,
    }
}

fn dead_letter() -> DeadLetter {
    DeadLetter {
        record_id: DeadLetter::record_id_for("booking-processor", "booking.commands", 0, 17),
        source_topic: "booking.commands".into(),
        source_partition: 0,
        source_offset: 17,
        key: Some(b"event-1".to_vec()),
        payload: Some(vec![1, 2, 3, 0xff]),
        reason: "first byte is 0x01, not the Confluent magic byte 0x00".into(),
        error_kind: DeadLetterErrorKind::BadMagicByte,
        consumer: "booking-processor".into(),
        failed_at: AT + 5,
        occurred_at: AT,
    }
}

fn codec_for(url: &str) -> Codec {
    Codec::new(&RegistryArgs {
        url: url.to_owned(),
        timeout: Duration::from_secs(5),
    })
    .unwrap()
}

async fn registry_codec() -> Codec {
    Codec::new(&services().await.registry()).unwrap()
}

/// Encodes `record` on `topic`, checks the frame, and decodes it back as its type.
async fn round_trip<R: Record>(codec: &Codec, topic: &str, record: &R) -> u32 {
    let frame = codec.encode(topic, record).await.unwrap();
    assert_eq!(frame[0], codec::MAGIC_BYTE);
    let id = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]);
    let decoded = codec.decode(&frame).await.unwrap();
    assert_eq!(
        (decoded.schema_id, decoded.full_name.as_str()),
        (id, R::FULL_NAME)
    );
    assert_eq!(&codec.decode_as::<R>(&frame).await.unwrap(), record);
    // Same record, same bytes: encoding is deterministic.
    assert_eq!(codec.encode(topic, record).await.unwrap(), frame);
    id
}

#[tokio::test]
async fn every_record_type_round_trips_through_the_registry() {
    let codec = registry_codec().await;
    let prefix = names::unique("avro_every_record");
    let topic = |name: &str| format!("{prefix}.{name}");
    let i = new_ids();
    let mut subjects = Vec::new();

    for command in booking_commands(&i) {
        let topic = topic(BookingCommand::TOPIC);
        let frame = codec.encode_group(&topic, &command).await.unwrap();
        assert_eq!(
            codec.decode_group::<BookingCommand>(&frame).await.unwrap(),
            command
        );
        subjects.push(codec::subject(&topic, command.full_name()));
    }
    for event in order_events(&i) {
        let topic = topic(OrderEvent::TOPIC);
        let frame = codec.encode_group(&topic, &event).await.unwrap();
        assert_eq!(
            codec.decode_group::<OrderEvent>(&frame).await.unwrap(),
            event
        );
        subjects.push(codec::subject(&topic, event.full_name()));
    }
    for request in payment_requests(&i) {
        let topic = topic(PaymentRequest::TOPIC);
        let frame = codec.encode_group(&topic, &request).await.unwrap();
        assert_eq!(
            codec.decode_group::<PaymentRequest>(&frame).await.unwrap(),
            request
        );
        subjects.push(codec::subject(&topic, request.full_name()));
    }

    // Each type also through its own type (decode_as), including the single-type topics.
    let mut ids = Vec::new();
    for command in booking_commands(&i) {
        let topic = topic(BookingCommand::TOPIC);
        ids.push(match &command {
            BookingCommand::BookingRequested(r) => round_trip(&codec, &topic, r).await,
            BookingCommand::CancelRequested(r) => round_trip(&codec, &topic, r).await,
            BookingCommand::PaymentSucceeded(r) => round_trip(&codec, &topic, r).await,
            BookingCommand::PaymentFailed(r) => round_trip(&codec, &topic, r).await,
            BookingCommand::HoldExpired(r) => round_trip(&codec, &topic, r).await,
            BookingCommand::EventUpserted(r) => round_trip(&codec, &topic, r).await,
        });
    }
    for event in order_events(&i) {
        let topic = topic(OrderEvent::TOPIC);
        ids.push(match &event {
            OrderEvent::OrderReserved(r) => round_trip(&codec, &topic, r).await,
            OrderEvent::OrderRejected(r) => round_trip(&codec, &topic, r).await,
            OrderEvent::OrderConfirmed(r) => round_trip(&codec, &topic, r).await,
            OrderEvent::OrderCancelled(r) => round_trip(&codec, &topic, r).await,
            OrderEvent::OrderExpired(r) => round_trip(&codec, &topic, r).await,
            OrderEvent::TicketsIssued(r) => round_trip(&codec, &topic, r).await,
        });
    }
    for request in payment_requests(&i) {
        let topic = topic(PaymentRequest::TOPIC);
        ids.push(match &request {
            PaymentRequest::PaymentRequested(r) => round_trip(&codec, &topic, r).await,
            PaymentRequest::PaymentSubmitted(r) => round_trip(&codec, &topic, r).await,
            PaymentRequest::RefundRequested(r) => round_trip(&codec, &topic, r).await,
            PaymentRequest::PaymentProviderEvent(r) => round_trip(&codec, &topic, r).await,
        });
    }
    ids.push(
        round_trip(
            &codec,
            &topic(AvailabilityChanged::TOPIC),
            &availability(&i),
        )
        .await,
    );
    ids.push(
        round_trip(
            &codec,
            &topic(NotificationRequested::TOPIC),
            &notification(&i),
        )
        .await,
    );
    ids.push(round_trip(&codec, &topic(DeadLetter::TOPIC), &dead_letter()).await);
    ids.push(round_trip(&codec, &topic(EventProgress::TOPIC), &progress(&i)).await);
    subjects.push(codec::subject(
        &topic(EventProgress::TOPIC),
        EventProgress::FULL_NAME,
    ));
    subjects.push(codec::subject(
        &topic(AvailabilityChanged::TOPIC),
        AvailabilityChanged::FULL_NAME,
    ));
    subjects.push(codec::subject(
        &topic(NotificationRequested::TOPIC),
        NotificationRequested::FULL_NAME,
    ));
    subjects.push(codec::subject(
        &topic(DeadLetter::TOPIC),
        DeadLetter::FULL_NAME,
    ));

    assert_eq!(
        ids.len(),
        boxoffice_avro::schemas::all().len(),
        "every record type went through"
    );
    let distinct: std::collections::BTreeSet<u32> = ids.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        ids.len(),
        "each record type has its own schema id"
    );

    // TopicRecordNameStrategy: one subject per (topic, record type), all registered. Asked
    // one by one: a registry that outlived many runs lists more subjects than one page holds.
    let settings = services().await.registry().settings().unwrap();
    for subject in &subjects {
        let versions = get_all_versions(&settings, subject.clone()).await;
        assert!(
            versions.is_ok_and(|v| !v.is_empty()),
            "{subject} not registered"
        );
    }
    assert_eq!(subjects.len(), 20);
}

#[tokio::test]
async fn a_record_of_another_type_is_a_schema_mismatch() {
    let codec = registry_codec().await;
    let topic = names::unique("avro_mismatch");
    let i = new_ids();
    let OrderEvent::OrderReserved(reserved) = order_events(&i).remove(0) else {
        unreachable!()
    };
    let frame = codec.encode(&topic, &reserved).await.unwrap();

    let err = codec.decode_as::<OrderExpired>(&frame).await.unwrap_err();
    assert_eq!(
        err,
        DecodeError::SchemaMismatch {
            expected: OrderExpired::FULL_NAME.into(),
            found: OrderReserved::FULL_NAME.into(),
            reason: "the writer wrote another record type".into(),
        }
    );
    assert!(!err.is_retryable());
    let err = codec
        .decode_group::<BookingCommand>(&frame)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DecodeError::SchemaMismatch { found, .. } if found == OrderReserved::FULL_NAME)
    );

    // The right schema id with a body cut short: the body is the problem, not the registry.
    let cut = &frame[..frame.len() - 3];
    assert!(matches!(codec.decode(cut).await, Err(DecodeError::Body(_))));
}

#[tokio::test]
async fn an_unknown_schema_id_is_a_typed_error_not_a_registry_outage() {
    let codec = registry_codec().await;
    let id = 0x7fff_fff0_u32;
    let mut frame = vec![codec::MAGIC_BYTE];
    frame.extend_from_slice(&id.to_be_bytes());
    frame.extend_from_slice(&[2, b'x']);
    for _ in 0..2 {
        let err = codec.decode(&frame).await.unwrap_err();
        assert_eq!(err, DecodeError::UnknownSchemaId { id });
        assert!(!err.is_retryable());
        assert_eq!(err.dead_letter_kind(), DeadLetterErrorKind::UnknownSchemaId);
    }
}

/// A port nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test]
async fn frames_are_checked_before_the_registry_is_asked() {
    // The registry is unreachable: a short frame and a bad magic byte are still told apart,
    // so the frame was checked first; a well-formed frame needs the registry and says it is
    // down (retryable), which is not the same as an unknown id.
    let codec = codec_for(&format!("http://{}/apis/ccompat/v7", closed_port().await));
    assert_eq!(
        codec.decode(&[]).await.unwrap_err(),
        DecodeError::ShortFrame { len: 0 }
    );
    assert_eq!(
        codec.decode(&[0, 0, 0]).await.unwrap_err(),
        DecodeError::ShortFrame { len: 3 }
    );
    assert_eq!(
        codec.decode(br#"{"order_id":"x"}"#).await.unwrap_err(),
        DecodeError::BadMagicByte { found: b'{' }
    );
    let err = codec.decode(&[0, 0, 0, 0, 1, 2, b'x']).await.unwrap_err();
    assert!(matches!(err, DecodeError::Registry(_)), "{err:?}");
    assert!(err.is_retryable());
    let err = codec
        .encode("t", &availability(&new_ids()))
        .await
        .unwrap_err();
    assert!(matches!(err, CodecError::Registry(_)), "{err:?}");
    assert!(err.is_retryable());
}

/// A TCP forwarder in front of the registry that the test can switch off.
struct Proxy {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(registry_url: &str) -> Proxy {
        let mut url = reqwest::Url::parse(registry_url).unwrap();
        let upstream = format!(
            "{}:{}",
            url.host_str().unwrap(),
            url.port_or_known_default().unwrap()
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        url.set_port(Some(listener.local_addr().unwrap().port()))
            .unwrap();
        let task = tokio::spawn(async move {
            // Dropping the set (when the task is aborted) closes every forwarded connection.
            let mut connections = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Proxy {
            url: url.as_str().trim_end_matches('/').to_owned(),
            task,
        }
    }

    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
        // Let the aborted connection tasks be dropped, closing their sockets.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }
}

#[tokio::test]
async fn schemas_are_cached_after_first_use() {
    let registry_url = &services().await.registry_url;
    let direct = codec_for(registry_url);
    let proxy = Proxy::start(registry_url).await;
    let codec = codec_for(&proxy.url);
    let topic = names::unique("avro_cache");
    let i = new_ids();
    let events = order_events(&i);
    let (OrderEvent::OrderReserved(reserved), OrderEvent::OrderExpired(expired)) =
        (&events[0], &events[4])
    else {
        unreachable!()
    };

    let reserved_frame = codec.encode(&topic, reserved).await.unwrap();
    assert_eq!(
        &codec
            .decode_as::<OrderReserved>(&reserved_frame)
            .await
            .unwrap(),
        reserved
    );
    // Registered by another codec: this one has never seen its id.
    let expired_frame = direct.encode(&topic, expired).await.unwrap();

    proxy.stop().await;

    // Seen before: no registry needed.
    let again = codec.encode(&topic, reserved).await.unwrap();
    assert_eq!(again, reserved_frame);
    assert_eq!(
        &codec
            .decode_as::<OrderReserved>(&reserved_frame)
            .await
            .unwrap(),
        reserved
    );
    // Never seen: the registry is needed, and its absence is a retryable error.
    let err = codec.decode(&expired_frame).await.unwrap_err();
    assert!(matches!(err, DecodeError::Registry(_)), "{err:?}");
    let err = codec.encode(&topic, expired).await.unwrap_err();
    assert!(matches!(err, CodecError::Registry(_)), "{err:?}");
    // The registry itself knows the id: the failure was the outage, not the frame.
    assert_eq!(
        &direct
            .decode_as::<OrderExpired>(&expired_frame)
            .await
            .unwrap(),
        expired
    );
}

// ---------------------------------------------------------------------------------------------
// Evolution through the real registry

const EVOLVING: &str = "boxoffice.test.Evolving";

const EVOLVING_V1: &str = r#"{
  "type": "record", "name": "Evolving", "namespace": "boxoffice.test",
  "doc": "Test record, version 1.",
  "fields": [
    {"name": "record_id", "type": "string", "doc": "Id."},
    {"name": "order_id", "type": "string", "doc": "Key."},
    {"name": "occurred_at", "type": {"type": "long", "logicalType": "timestamp-millis"}, "doc": "When."}
  ]
}"#;

/// Version 2 adds a field with a default: BACKWARD compatible.
const EVOLVING_V2: &str = r#"{
  "type": "record", "name": "Evolving", "namespace": "boxoffice.test",
  "doc": "Test record, version 2.",
  "fields": [
    {"name": "record_id", "type": "string", "doc": "Id."},
    {"name": "order_id", "type": "string", "doc": "Key."},
    {"name": "note", "type": "string", "default": "(none)", "doc": "Added in v2."},
    {"name": "occurred_at", "type": {"type": "long", "logicalType": "timestamp-millis"}, "doc": "When."}
  ]
}"#;

/// Version 3 adds a field without a default: not BACKWARD compatible.
const EVOLVING_V3: &str = r#"{
  "type": "record", "name": "Evolving", "namespace": "boxoffice.test",
  "doc": "Test record, version 3.",
  "fields": [
    {"name": "record_id", "type": "string", "doc": "Id."},
    {"name": "order_id", "type": "string", "doc": "Key."},
    {"name": "note", "type": "string", "default": "(none)", "doc": "Added in v2."},
    {"name": "seat", "type": "string", "doc": "Added in v3, without a default."},
    {"name": "occurred_at", "type": {"type": "long", "logicalType": "timestamp-millis"}, "doc": "When."}
  ]
}"#;

macro_rules! test_record {
    ($ty:ident, $avsc:expr, { $($field:ident : $t:ty),* }) => {
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        struct $ty {
            record_id: String,
            order_id: String,
            $($field: $t,)*
            occurred_at: i64,
        }

        impl Record for $ty {
            const FULL_NAME: &'static str = EVOLVING;
            const TOPIC: &'static str = "test.evolving";

            fn avsc() -> &'static str {
                $avsc
            }

            fn schema() -> &'static Schema {
                static SCHEMA: LazyLock<Schema> = LazyLock::new(|| Schema::parse_str($avsc).unwrap());
                &SCHEMA
            }

            fn record_id(&self) -> &str {
                &self.record_id
            }

            fn key(&self) -> &str {
                &self.order_id
            }

            fn occurred_at(&self) -> i64 {
                self.occurred_at
            }
        }
    };
}

test_record!(EvolvingV1, EVOLVING_V1, {});
test_record!(EvolvingV2, EVOLVING_V2, { note: String });
test_record!(EvolvingV3, EVOLVING_V3, { note: String, seat: String });

/// Pins the subject's compatibility to BACKWARD through the Confluent-compatible API. The local
/// stack's Apicurio already applies a global BACKWARD rule through ccompat (it answers 409),
/// but a registry started by testcontainers has no global rule, so the test sets its own.
async fn require_backward(registry_url: &str, subject: &str) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let response = client
        .put(format!("{registry_url}/config/{subject}"))
        .header("Content-Type", "application/vnd.schemaregistry.v1+json")
        .body(r#"{"compatibility":"BACKWARD"}"#)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "PUT /config/{subject}: {}",
        response.status()
    );
}

#[tokio::test]
async fn an_older_writer_is_read_by_a_newer_reader_and_a_breaking_change_is_refused() {
    let registry_url = &services().await.registry_url;
    let settings = services().await.registry().settings().unwrap();
    let codec = registry_codec().await;
    let topic = names::unique("avro_evolution");
    let subject = codec::subject(&topic, EVOLVING);
    require_backward(registry_url, &subject).await;
    assert_eq!(
        codec
            .check_compatibility(&subject, EVOLVING, EVOLVING_V1)
            .await
            .unwrap(),
        Compatibility::NewSubject
    );

    // v1 writes.
    let v1 = EvolvingV1 {
        record_id: "r-1".into(),
        order_id: "o-1".into(),
        occurred_at: AT,
    };
    let v1_frame = codec.encode(&topic, &v1).await.unwrap();

    // v2 reads v1's record: the added field takes its default.
    assert!(
        compat::backward_violations(EVOLVING_V1, EVOLVING_V2)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        codec
            .check_compatibility(&subject, EVOLVING, EVOLVING_V2)
            .await
            .unwrap(),
        Compatibility::Compatible
    );
    let read = codec.decode_as::<EvolvingV2>(&v1_frame).await.unwrap();
    assert_eq!(
        read,
        EvolvingV2 {
            record_id: "r-1".into(),
            order_id: "o-1".into(),
            note: "(none)".into(),
            occurred_at: AT
        }
    );

    // v2 registers (a compatible change) and writes; a v1 reader still reads it.
    let v2 = EvolvingV2 {
        note: "window seat".into(),
        ..read
    };
    let v2_frame = codec.encode(&topic, &v2).await.unwrap();
    assert_ne!(v2_frame[1..5], v1_frame[1..5], "v2 has its own schema id");
    assert_eq!(codec.decode_as::<EvolvingV1>(&v2_frame).await.unwrap(), v1);
    assert_eq!(codec.decode_as::<EvolvingV2>(&v2_frame).await.unwrap(), v2);

    // v3 adds a field without a default: the local check names it, the registry refuses it.
    let violations = compat::backward_violations(EVOLVING_V2, EVOLVING_V3).unwrap();
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].field, "seat");
    assert_eq!(
        codec
            .check_compatibility(&subject, EVOLVING, EVOLVING_V3)
            .await
            .unwrap(),
        Compatibility::Incompatible
    );
    let err = codec
        .register(&subject, EVOLVING, EVOLVING_V3)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CodecError::Rejected { subject: s, reason } if *s == subject && reason.contains("409")),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    let v3 = EvolvingV3 {
        record_id: "r-3".into(),
        order_id: "o-3".into(),
        note: "n".into(),
        seat: "12A".into(),
        occurred_at: AT,
    };
    assert!(matches!(
        codec.encode(&topic, &v3).await,
        Err(CodecError::Rejected { .. })
    ));

    // Only v1 and v2 made it into the subject.
    assert_eq!(
        get_all_versions(&settings, subject.clone())
            .await
            .unwrap()
            .len(),
        2
    );
}
