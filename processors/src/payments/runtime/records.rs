//! The payment processor's records in and out: encoding and producing outputs (outages waited
//! out within the retry budget), decoding inputs through the registry, and dead-lettering what
//! cannot be read.

use super::steps::payment_id_of;
use super::*;

impl Runtime {
    /// Produces one output, waiting out outages (the same record again is deduplicated by id).
    pub(super) async fn produce(&self, output: &Output) -> Result<(), StepError> {
        let (topic, payload) = self.encode(output).await?;
        let headers = OwnedHeaders::new().insert(Header {
            key: "record_id",
            value: Some(output.record_id()),
        });
        let (producer, topic) = (&self.producer, topic.as_str());
        self.retrying(
            self.policy(),
            "producing an outcome",
            None,
            |_: &KafkaError| true,
            |_| {
                let record = FutureRecord::to(topic)
                    .key(output.key())
                    .payload(&payload)
                    .headers(headers.clone());
                async move {
                    producer
                        .send(record, PRODUCE_TIMEOUT)
                        .await
                        .map_err(|(e, _)| e)
                }
            },
        )
        .await
        .map_err(|f| f.into_step("producing an outcome"))?;
        self.deps.metrics.outputs_produced.inc_by(1);
        Ok(())
    }

    pub(super) async fn encode(&self, output: &Output) -> Result<(String, Vec<u8>), StepError> {
        let (codec, topics) = (&self.deps.codec, &self.topics);
        self.retrying(
            self.policy(),
            "encoding an output",
            None,
            CodecError::is_retryable,
            |_| async move {
                match output {
                    Output::Command(r) => codec
                        .encode_group(&topics.commands, r)
                        .await
                        .map(|p| (topics.commands.clone(), p)),
                    Output::Notification(r) => codec
                        .encode(&topics.notifications, r)
                        .await
                        .map(|p| (topics.notifications.clone(), p)),
                }
            },
        )
        .await
        .map_err(|f| f.into_step("encoding an output"))
    }

    /// Decodes a request and checks it is consistent. Registry outages are waited out.
    pub(super) async fn decode(
        &self,
        message: &OwnedMessage,
    ) -> Result<PaymentRequest, DecodeFailure> {
        let Some(payload) = message.payload() else {
            return Err(DecodeFailure::Record(
                DeadLetterErrorKind::InvalidRecord,
                "record has no value".to_owned(),
            ));
        };
        let codec = &self.deps.codec;
        let decoded = self
            .retrying(
                self.policy(),
                "decoding a request (registry unavailable)",
                None,
                DecodeError::is_retryable,
                |_| codec.decode_group::<PaymentRequest>(payload),
            )
            .await;
        let request = match decoded {
            Ok(request) => request,
            Err(Failed::Permanent(e)) => {
                return Err(DecodeFailure::Record(e.dead_letter_kind(), e.to_string()));
            }
            Err(Failed::GaveUp(e)) => {
                return Err(DecodeFailure::GaveUp(format!(
                    "decoding a request: registry unavailable: {e}"
                )));
            }
        };
        let order_id = request.key();
        if message.key().unwrap_or_default() != order_id.as_bytes() {
            return Err(DecodeFailure::Record(
                DeadLetterErrorKind::InvalidRecord,
                format!("record key does not match its order_id {order_id}"),
            ));
        }
        // One payment per order: a request naming another payment id is not ours to act on.
        if payment_id_of(&request) != ids::payment_id(order_id) {
            return Err(DecodeFailure::Record(
                DeadLetterErrorKind::InvalidRecord,
                format!(
                    "payment id {} is not the payment of order {order_id}",
                    payment_id_of(&request)
                ),
            ));
        }
        Ok(request)
    }

    pub(super) async fn dead_letter(
        &self,
        message: &OwnedMessage,
        kind: DeadLetterErrorKind,
        reason: &str,
    ) -> Result<(), StepError> {
        let record = dead_letter::dead_letter(
            &self.deps.settings.group_id,
            message,
            kind,
            reason,
            now_millis(),
        );
        let (codec, topic) = (&self.deps.codec, self.topics.dead_letters.as_str());
        let payload = self
            .retrying(
                self.policy(),
                "encoding a dead letter",
                None,
                CodecError::is_retryable,
                |_| codec.encode(topic, &record),
            )
            .await
            .map_err(|f| f.into_step("encoding a dead letter"))?;
        let headers = dead_letter::headers(&record);
        let key = dead_letter::key(&record).unwrap_or_default();
        let producer = &self.producer;
        self.retrying(
            self.policy(),
            "producing a dead letter",
            None,
            |_: &KafkaError| true,
            |_| {
                let out = FutureRecord::to(topic)
                    .key(key)
                    .payload(&payload)
                    .headers(headers.clone());
                async move {
                    producer
                        .send(out, PRODUCE_TIMEOUT)
                        .await
                        .map_err(|(e, _)| e)
                }
            },
        )
        .await
        .map_err(|f| f.into_step("producing a dead letter"))?;
        Ok(())
    }
}
