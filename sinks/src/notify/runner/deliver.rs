//! One record on one channel, carried to its targets: decoding (or dead-lettering), the store
//! calls of each channel, delivery to each target until its row is final, and the bounded retry
//! every store call and channel outage gets.

use super::*;

impl ChannelRunner {
    /// Sleeps `pause` unless asked to stop first.
    pub(super) async fn pause(
        &self,
        stop: &mut watch::Receiver<bool>,
        pause: Duration,
    ) -> Result<(), Interrupted> {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => Err(Interrupted::Stopped),
            _ = tokio::time::sleep(pause) => Ok(()),
        }
    }

    /// Runs a store call until it succeeds or the retry budget is spent (`GaveUp`: the
    /// partition is given up, the record is never skipped).
    pub(super) async fn store_retry<T, F, Fut>(
        &self,
        stop: &mut watch::Receiver<bool>,
        what: &str,
        mut call: F,
    ) -> Result<T, Interrupted>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, crate::notify::store::NotifyStoreError>>,
    {
        let mut retries = self.deps.settings.retry_policy().start(Instant::now());
        loop {
            // Bounded: `retries` gives up after the retry budget (or on stop).
            let e = match call().await {
                Ok(value) => return Ok(value),
                Err(e) => e,
            };
            let delay = self.next_retry(&mut retries, what, &e)?;
            self.pause(stop, delay).await?;
        }
    }

    /// The delay before the next retry of `what`, or `GaveUp` (counted) once the budget is
    /// spent.
    pub(super) fn next_retry(
        &self,
        retries: &mut Retries,
        what: &str,
        error: &dyn std::fmt::Display,
    ) -> Result<Duration, Interrupted> {
        let channel = self.channel.name();
        match retries.next_delay(Instant::now()) {
            Some(delay) => {
                let attempt = retries.attempts();
                warn!(channel, attempt, error = %error, "{what} failed; retrying");
                Ok(delay)
            }
            None => {
                self.deps.metrics.retries_exhausted.inc_by(1);
                Err(Interrupted::GaveUp(format!(
                    "{what} failed for longer than the retry budget: {error}"
                )))
            }
        }
    }

    pub(super) async fn handle(
        self: &Arc<Self>,
        message: &OwnedMessage,
        reports: &Reports,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Handled, Interrupted> {
        let Some(payload) = message.payload() else {
            self.dead_letter(
                message,
                "",
                DeadLetterErrorKind::InvalidRecord,
                "record has no value",
                stop,
            )
            .await?;
            return Ok(Handled::Done);
        };
        let mut retries = self.deps.settings.retry_policy().start(Instant::now());
        let notification = loop {
            // Bounded: `retries` gives up after the retry budget.
            match self
                .deps
                .codec
                .decode_as::<NotificationRequested>(payload)
                .await
            {
                Ok(n) => break n,
                Err(e) if e.is_retryable() => {
                    let delay =
                        self.next_retry(&mut retries, "decoding (registry unavailable)", &e)?;
                    self.pause(stop, delay).await?;
                }
                Err(e) => {
                    let reason = e.to_string();
                    self.dead_letter(message, "", e.dead_letter_kind(), &reason, stop)
                        .await?;
                    return Ok(Handled::Done);
                }
            }
        };
        let store = &self.deps.store;
        // The payment processor's notices (refunds) name the event by id only: the texts read
        // better with its name, which the catalogue has.
        let mut notification = notification;
        if !notification.params.contains_key("event_name")
            && let Some(event_id) = notification.event_id.clone()
            && let Some(name) = self
                .store_retry(stop, "reading the event name", || {
                    store.event_name(&event_id)
                })
                .await?
        {
            notification.params.insert("event_name".to_owned(), name);
        }
        let metrics = &self.deps.metrics;
        if notification.kind.is_account_notice() {
            // Account notices (verification and reset links) go by email only, to the address
            // ingest put in `to`: never stored in-app or posted to a webhook.
            if self.channel == Channel::Email {
                match account_notice_address(&notification) {
                    Some(address) => {
                        let target = Target::Email(address);
                        self.deliver(message, &notification, target, None, stop)
                            .await?;
                    }
                    None => {
                        let reason = "an account notice without a valid `to` address";
                        self.dead_letter(
                            message,
                            "",
                            DeadLetterErrorKind::InvalidRecord,
                            reason,
                            stop,
                        )
                        .await?;
                    }
                }
            }
            return Ok(Handled::Done);
        }
        match self.channel {
            Channel::Inapp => {
                self.store_retry(stop, "storing the in-app notification", || {
                    store.store_in_app(&notification)
                })
                .await?;
                metrics.in_app_stored.inc_by(1);
            }
            Channel::Email => {
                let address = self
                    .store_retry(stop, "reading the email address", || {
                        store.email_address(&notification.user_id)
                    })
                    .await?;
                match address {
                    Some(address) => {
                        let target = Target::Email(address);
                        self.deliver(message, &notification, target, None, stop)
                            .await?;
                    }
                    None => {
                        let id = notification.notification_id();
                        let existing = self
                            .store_retry(stop, "reading the delivery", || {
                                store.delivery(id, "email", "email")
                            })
                            .await?;
                        if existing.is_none() {
                            metrics.skipped_no_address.inc_by(1);
                            let skipped = Delivery {
                                state: DeliveryState::Skipped,
                                attempts: 0,
                                detail: "the user has no email address".to_owned(),
                            };
                            self.store_retry(stop, "recording the skipped email", || {
                                store.set_delivery(id, "email", "email", &skipped)
                            })
                            .await?;
                        }
                    }
                }
            }
            Channel::Webhook => {
                let endpoints = self
                    .store_retry(stop, "reading webhook endpoints", || {
                        store.webhook_endpoints(&notification.user_id)
                    })
                    .await?;
                let endpoints: Vec<WebhookEndpoint> =
                    endpoints.into_iter().filter(|e| !e.disabled).collect();
                if !endpoints.is_empty() {
                    let record = endpoints::RecordProgress::new(
                        message,
                        reports.epoch,
                        endpoints.len(),
                        reports.done.clone(),
                        reports.gave_up.clone(),
                    );
                    self.dispatch_webhooks(message, notification, endpoints, record, stop)
                        .await;
                    return Ok(Handled::Dispatched);
                }
            }
        }
        Ok(Handled::Done)
    }

    pub(super) async fn send(
        &self,
        n: &NotificationRequested,
        target: &Target,
    ) -> Result<(), SendError> {
        match (target, &self.email, &self.webhook) {
            (Target::Email(address), Some(sender), _) => sender.send(address, n).await,
            (Target::Webhook(endpoint), _, Some(sender)) => {
                sender.send(endpoint, n, now_millis() / 1000).await
            }
            _ => Err(SendError::Permanent("channel has no sender".to_owned())),
        }
    }

    /// Delivers to one target until its row is final. A webhook endpoint's `health` parks the
    /// delivery while the endpoint is suspended, and learns from each attempt.
    pub(super) async fn deliver(
        &self,
        message: &OwnedMessage,
        n: &NotificationRequested,
        target: Target,
        health: Option<(&std::sync::Mutex<EndpointHealth>, &HealthLimits)>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), Interrupted> {
        let store = &self.deps.store;
        let metrics = &self.deps.metrics;
        let settings = &self.deps.settings;
        let channel = self.channel.name();
        let id = n.notification_id();
        let key = target.key().to_owned();
        let max_attempts = i32::try_from(settings.max_attempts).unwrap_or(i32::MAX);
        // Started at the first outage of the channel (e.g. the SMTP relay is down).
        let mut outage: Option<Retries> = None;
        let mut first = true;
        loop {
            // Bounded: --max-attempts per target; an outage by `outage`'s budget.
            let current = self
                .store_retry(stop, "reading the delivery", || {
                    store.delivery(id, channel, &key)
                })
                .await?;
            let attempts = match &current {
                Some(d) if d.state.is_final() => {
                    if first {
                        metrics.already_delivered.inc_by(1);
                    }
                    return Ok(());
                }
                Some(d) => {
                    if first {
                        // A send may have happened before a crash: this one repeats it, with
                        // the same id.
                        metrics.resent_pending.inc_by(1);
                    }
                    d.attempts
                }
                None => 0,
            };
            first = false;
            if attempts >= max_attempts {
                let reason = format!(
                    "{channel} delivery to {key} failed {attempts} times: {}",
                    current.map(|d| d.detail).unwrap_or_default()
                );
                return self.give_up(message, n, &key, attempts, reason, stop).await;
            }
            match self.admission(health) {
                Admission::Send => {}
                // Disabled (410) after this was queued: as if it had not been listed.
                Admission::Skip => return Ok(()),
                Admission::Park { until } => {
                    let seconds = until.saturating_duration_since(Instant::now()).as_secs();
                    let reason = format!(
                        "webhook delivery to {key} parked: the endpoint is suspended after \
                         failing repeatedly (for {seconds} s more)"
                    );
                    return self.park_delivery(message, n, &key, reason, stop).await;
                }
            }
            let pending = Delivery {
                state: DeliveryState::Pending,
                attempts: attempts + 1,
                detail: String::new(),
            };
            self.record(stop, "recording the attempt", id, &key, &pending)
                .await?;
            self.note_attempt(health, true);
            let result = self.send(n, &target).await;
            match &result {
                Ok(()) => self.note_health(health, &key, true),
                Err(SendError::Retryable(_)) => self.note_health(health, &key, false),
                Err(_) => self.note_attempt(health, false),
            }
            let (state, detail) = match result {
                Ok(()) => {
                    self.count_sent(message);
                    (DeliveryState::Sent, String::new())
                }
                Err(SendError::Unavailable(detail)) => {
                    // Not this target's fault: give the attempt back and wait, within the
                    // retry budget (then the partition is given up, the row stays pending).
                    let retries =
                        outage.get_or_insert_with(|| settings.retry_policy().start(Instant::now()));
                    let delay = self.next_retry(retries, "the channel is unavailable", &detail)?;
                    let restored = Delivery {
                        state: DeliveryState::Pending,
                        attempts,
                        detail: detail.clone(),
                    };
                    self.record(stop, "recording the outage", id, &key, &restored)
                        .await?;
                    metrics.retries.inc_by(1);
                    self.pause(stop, delay).await?;
                    continue;
                }
                Err(SendError::Retryable(detail)) => {
                    let failed = Delivery {
                        state: DeliveryState::Pending,
                        attempts: attempts + 1,
                        detail: detail.clone(),
                    };
                    self.record(stop, "recording the failure", id, &key, &failed)
                        .await?;
                    if attempts + 1 >= max_attempts {
                        continue; // the loop gives up at the top
                    }
                    metrics.retries.inc_by(1);
                    let pause = settings.backoff(u32::try_from(attempts + 1).unwrap_or(1));
                    debug!(channel, notification_id = id, target = %key, attempt = attempts + 1,
                           ?pause, detail = %detail, "delivery failed; retrying");
                    self.pause(stop, pause).await?;
                    continue;
                }
                Err(SendError::Permanent(detail)) => {
                    let reason = format!("{channel} delivery to {key} refused: {detail}");
                    return self
                        .give_up(message, n, &key, attempts + 1, reason, stop)
                        .await;
                }
                Err(SendError::Gone(detail)) => {
                    if let Target::Webhook(endpoint) = &target {
                        self.disable(endpoint, &detail, stop).await?;
                        self.note_gone(health);
                    }
                    (DeliveryState::Disabled, detail)
                }
            };
            let done = Delivery {
                state,
                attempts: attempts + 1,
                detail,
            };
            self.record(stop, "recording the delivery", id, &key, &done)
                .await?;
            return Ok(());
        }
    }

    /// Writes a target's delivery row (retried within the budget).
    async fn record(
        &self,
        stop: &mut watch::Receiver<bool>,
        what: &str,
        notification_id: &str,
        key: &str,
        delivery: &Delivery,
    ) -> Result<(), Interrupted> {
        let (store, channel) = (&self.deps.store, self.channel.name());
        self.store_retry(stop, what, || {
            store.set_delivery(notification_id, channel, key, delivery)
        })
        .await
    }

    /// Counts a send and how long after the decision it went out.
    fn count_sent(&self, message: &OwnedMessage) {
        let metrics = &self.deps.metrics;
        let since_decision = message
            .timestamp()
            .to_millis()
            .map_or(0, |at| (now_millis() - at).max(0));
        if self.channel == Channel::Email {
            metrics.emails_sent.inc_by(1);
            metrics.email_latency_ms.observe(since_decision as f64);
        } else {
            metrics.webhooks_sent.inc_by(1);
            metrics.webhook_latency_ms.observe(since_decision as f64);
        }
    }

    /// Disables a webhook endpoint that answered 410 Gone.
    async fn disable(
        &self,
        endpoint: &WebhookEndpoint,
        detail: &str,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), Interrupted> {
        let store = &self.deps.store;
        self.store_retry(stop, "disabling the endpoint", || {
            store.disable_endpoint(&endpoint.user_id, &endpoint.endpoint_id, detail)
        })
        .await?;
        self.deps.metrics.endpoints_disabled.inc_by(1);
        // Never the URL: users put tokens in their webhook URLs, and logs are widely read.
        info!(endpoint_id = %endpoint.endpoint_id, user_id = %endpoint.user_id,
              "webhook endpoint answered 410 Gone; disabled");
        Ok(())
    }

    /// Dead-letters the record for one target, then marks the target `DEAD`.
    pub(super) async fn give_up(
        &self,
        message: &OwnedMessage,
        n: &NotificationRequested,
        key: &str,
        attempts: i32,
        reason: String,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), Interrupted> {
        warn!(channel = self.channel.name(), notification_id = n.notification_id(), target = key,
              reason = %reason, "dead-lettering the notification");
        self.dead_letter(message, key, DeadLetterErrorKind::Other, &reason, stop)
            .await?;
        let dead = Delivery {
            state: DeliveryState::Dead,
            attempts,
            detail: reason,
        };
        let store = &self.deps.store;
        let channel = self.channel.name();
        self.store_retry(stop, "recording the dead letter", || {
            store.set_delivery(n.notification_id(), channel, key, &dead)
        })
        .await
    }

    /// Produces the dead letter for `message` (one per target: the target is part of the
    /// consumer name, so the id is deterministic per record and target).
    pub(super) async fn dead_letter(
        &self,
        message: &OwnedMessage,
        target: &str,
        kind: DeadLetterErrorKind,
        reason: &str,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), Interrupted> {
        let consumer = if target.is_empty() {
            self.group_id.clone()
        } else {
            format!("{}/{target}", self.group_id)
        };
        let record = dead_letter::dead_letter(&consumer, message, kind, reason, now_millis());
        let topic = self.deps.settings.dead_letters_topic();
        let mut retries = self.deps.settings.retry_policy().start(Instant::now());
        loop {
            // Bounded: `retries` gives up after the retry budget (or on stop).
            let payload = match self.deps.codec.encode(&topic, &record).await {
                Ok(payload) => payload,
                Err(e) => {
                    let delay = self.next_retry(&mut retries, "encoding a dead letter", &e)?;
                    self.pause(stop, delay).await?;
                    continue;
                }
            };
            let headers = dead_letter::headers(&record);
            let mut out = FutureRecord::to(&topic).payload(&payload).headers(headers);
            if let Some(key) = dead_letter::key(&record) {
                out = out.key(key);
            }
            match self.dead_letters.send(out, Duration::from_secs(30)).await {
                Ok(_) => {
                    self.deps.metrics.dead_lettered.inc_by(1);
                    return Ok(());
                }
                Err((e, _)) => {
                    let delay = self.next_retry(&mut retries, "producing a dead letter", &e)?;
                    self.pause(stop, delay).await?;
                }
            }
        }
    }
}

/// The recipient of an account notice: its `to` parameter, when it looks like an address
/// (ingest validated it; a record is still outside input here).
fn account_notice_address(n: &NotificationRequested) -> Option<String> {
    let to = n.params.get("to")?.trim();
    let (local, domain) = to.split_once('@')?;
    let plausible = !local.is_empty()
        && domain.contains('.')
        && to.len() <= 254
        && !to
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ',');
    plausible.then(|| to.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_notice_goes_only_to_a_plausible_address() {
        let notice = |to: Option<&str>| NotificationRequested {
            record_id: "n".into(),
            user_id: "u".into(),
            order_id: None,
            event_id: None,
            kind: boxoffice_avro::records::NotificationKind::EmailVerification,
            params: to
                .map(|t| [("to".to_owned(), t.to_owned())].into_iter().collect())
                .unwrap_or_default(),
            occurred_at: 0,
        };
        assert_eq!(
            account_notice_address(&notice(Some("ann@example.com"))).as_deref(),
            Some("ann@example.com")
        );
        for bad in [
            None,
            Some(""),
            Some("ann"),
            Some("a@b"),
            Some("a@b.c, x@y.z"),
            Some("a b@c.d"),
        ] {
            assert_eq!(account_notice_address(&notice(bad)), None, "{bad:?}");
        }
    }
}
