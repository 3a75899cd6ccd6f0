//! Decoding one command of `booking.commands` with the registry retried within the budget; a
//! record that cannot be read is dead-lettered, never skipped silently.

use super::batch::BatchJob;
use super::*;

impl BatchJob {
    /// Decodes a command and checks it belongs here.
    pub(super) async fn decode_command(
        &self,
        message: &OwnedMessage,
    ) -> Result<BookingCommand, DecodeFailure> {
        let Some(payload) = message.payload() else {
            return Err(DecodeFailure::Record(
                DeadLetterErrorKind::InvalidRecord,
                "record has no value".to_owned(),
            ));
        };
        let mut retries = self.retry_policy().start(Instant::now());
        let command = loop {
            // Bounded: `retries` gives up after the retry budget.
            match self
                .deps
                .codec
                .decode_group::<BookingCommand>(payload)
                .await
            {
                Ok(command) => break command,
                Err(e) if e.is_retryable() => {
                    let Some(delay) = retries.next_delay(Instant::now()) else {
                        return Err(DecodeFailure::Registry(
                            boxoffice_avro::CodecError::Registry(e.to_string()),
                        ));
                    };
                    let attempt = retries.attempts();
                    warn!(offset = message.offset(), attempt, error = %e, "registry unavailable while decoding; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(DecodeFailure::Record(e.dead_letter_kind(), e.to_string())),
            }
        };
        let key = message.key().unwrap_or_default();
        if key != command.key().as_bytes() {
            return Err(DecodeFailure::Record(
                DeadLetterErrorKind::InvalidRecord,
                format!("record key does not match its event_id {}", command.key()),
            ));
        }
        if let Some(reason) = crate::booking::core::refusal(&command) {
            return Err(DecodeFailure::Record(
                DeadLetterErrorKind::InvalidRecord,
                reason,
            ));
        }
        let expected = partition_for(key, self.partition_count);
        if expected != message.partition() {
            // Another partition owns this event: deciding it here would make two writers.
            return Err(DecodeFailure::Record(
                DeadLetterErrorKind::InvalidRecord,
                format!(
                    "event {} belongs to partition {expected}, not {}",
                    command.key(),
                    message.partition()
                ),
            ));
        }
        Ok(command)
    }
}

/// Why a command could not be decoded.
pub(super) enum DecodeFailure {
    /// The registry stayed unavailable for the whole budget (the bytes may be fine).
    Registry(boxoffice_avro::CodecError),
    /// The record itself is wrong: dead-letter it.
    Record(DeadLetterErrorKind, String),
}
