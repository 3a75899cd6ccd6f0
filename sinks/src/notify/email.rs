//! Email over SMTP (lettre). Every message carries `Message-ID: <notification id@boxoffice>`,
//! so a message sent twice (a crash between the send and recording it) is recognisable as one.
//! Connections are pooled (one per lane at most): a new connection and greeting per message
//! capped delivery at about 230 emails/s here (BENCHMARKS.md).

use std::time::Duration;

use boxoffice_avro::records::NotificationRequested;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::SendError;
use super::templates;

/// Sends notification emails through one SMTP server (plain SMTP to a relay).
#[derive(Debug)]
pub struct EmailSender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

/// The Message-ID of a notification's email.
pub fn message_id(notification_id: &str) -> String {
    format!("<{notification_id}@boxoffice>")
}

impl EmailSender {
    pub fn new(
        host: &str,
        port: u16,
        timeout: Duration,
        from: &str,
        connections: u32,
    ) -> Result<Self, String> {
        let from: Mailbox = from
            .parse()
            .map_err(|e| format!("--email-from / NOTIFIER_EMAIL_FROM {from:?}: {e}"))?;
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .timeout(Some(timeout))
            .pool_config(PoolConfig::new().max_size(connections.max(1)))
            .build();
        Ok(EmailSender { transport, from })
    }

    /// The message for `n` to `to`.
    pub fn message(&self, to: &str, n: &NotificationRequested) -> Result<Message, SendError> {
        let to: Mailbox = to
            .parse()
            .map_err(|e| SendError::Permanent(format!("address {to:?}: {e}")))?;
        let text = templates::email(n);
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(text.subject)
            .message_id(Some(message_id(n.notification_id())))
            .header(ContentType::TEXT_PLAIN)
            .body(text.body)
            .map_err(|e| SendError::Permanent(format!("building the message: {e}")))
    }

    pub async fn send(&self, to: &str, n: &NotificationRequested) -> Result<(), SendError> {
        let message = self.message(to, n)?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            // 5xx: this message will never be accepted.
            Err(e) if e.is_permanent() => Err(SendError::Permanent(e.to_string())),
            // 4xx: the server asks us to try again later.
            Err(e) if e.is_transient() => Err(SendError::Retryable(e.to_string())),
            // Connection refused, timeout, dropped connection: the server is not there; every
            // email would fail alike, so wait for it without using up attempts.
            Err(e) => Err(SendError::Unavailable(format!("SMTP server: {e}"))),
        }
    }
}
