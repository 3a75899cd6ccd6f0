//! One record, and one decision step, carried out: decoding (or dead-lettering), the payment's
//! load, the core's effects in the order the module docs of [`super`] give, the writes, the
//! produces and the gateway calls.

use super::*;

impl Runtime {
    /// Applies one record fully (or dead-letters it). `Err`: a fault outlasted the retry budget
    /// (`GaveUp`), or nothing a retry fixes (`Fatal`).
    pub(super) async fn process_record(&self, message: &OwnedMessage) -> Result<(), StepError> {
        let metrics = &self.deps.metrics;
        let (partition, offset) = (message.partition(), message.offset());
        let started = Instant::now();
        let request = match self.decode(message).await {
            Ok(request) => request,
            Err(DecodeFailure::Record(kind, reason)) => {
                warn!(partition, offset, ?kind, reason = %reason, "dead-lettering a record");
                self.dead_letter(message, kind, &reason).await?;
                metrics.dead_letters.inc_by(1);
                return Ok(());
            }
            Err(DecodeFailure::GaveUp(reason)) => return Err(StepError::GaveUp(reason)),
        };
        let payment_id = payment_id_of(&request).to_owned();
        let order_id = request.key().to_owned();
        let mut retries = self.policy().start(Instant::now());
        loop {
            // Bounded: `retries` gives up after the retry budget.
            let applied = {
                let _lock = self.locks.lock(&payment_id).await;
                self.apply_record(partition, &payment_id, &request, offset)
                    .await
            };
            match applied {
                Ok(Applied::Skipped) => {
                    metrics.records_skipped.inc_by(1);
                    return Ok(());
                }
                Ok(Applied::Done) => {
                    metrics.records_processed.inc_by(1);
                    metrics
                        .apply_ms
                        .observe(started.elapsed().as_secs_f64() * 1000.0);
                    if let Some(at) = message.timestamp().to_millis() {
                        metrics
                            .record_age_ms
                            .observe((now_millis() - at).max(0) as f64);
                    }
                    return Ok(());
                }
                Ok(Applied::Refused(mismatch)) => {
                    metrics.records_processed.inc_by(1);
                    metrics.provider_events_refused.inc_by(1);
                    let reason = mismatch.to_string();
                    warn!(payment_id, order_id, partition, offset, reason = %reason, "provider event refused; dead-lettering it");
                    let kind = DeadLetterErrorKind::ProviderEventMismatch;
                    self.dead_letter(message, kind, &reason).await?;
                    metrics.dead_letters.inc_by(1);
                    return Ok(());
                }
                Err(StepError::Conflict(reason)) => {
                    metrics.conflicts.inc_by(1);
                    let Some(delay) = retries.next_delay(Instant::now()) else {
                        metrics.retries_exhausted.inc_by(1);
                        return Err(StepError::GaveUp(format!(
                            "payment {payment_id} kept being written by another processor: {reason}"
                        )));
                    };
                    let attempt = retries.attempts();
                    warn!(payment_id, order_id, partition, offset, attempt, reason = %reason, "payment written by another processor; reloading");
                    tokio::time::sleep(delay).await;
                }
                Err(StepError::Fatal(reason)) => {
                    error!(payment_id, order_id, partition, offset, reason = %reason, "record cannot be applied; stopping");
                    return Err(StepError::Fatal(reason));
                }
                Err(gave_up @ StepError::GaveUp(_)) => return Err(gave_up),
            }
        }
    }

    /// Loads the payment, resolves anything in flight, applies the record, stores the offset.
    /// The caller holds the payment's lock.
    pub(super) async fn apply_record(
        &self,
        partition: i32,
        payment_id: &str,
        request: &PaymentRequest,
        offset: i64,
    ) -> Result<Applied, StepError> {
        let (mut state, mut stored) = self.load(payment_id).await?;
        if stored
            .applied_offset
            .is_some_and(|applied| offset <= applied)
        {
            return Ok(Applied::Skipped);
        }
        let input = match request {
            PaymentRequest::PaymentRequested(r) => Input::Requested(r.clone()),
            PaymentRequest::PaymentSubmitted(s) => Input::Submitted(s.clone()),
            PaymentRequest::RefundRequested(r) => Input::RefundRequested(r.clone()),
            PaymentRequest::PaymentProviderEvent(e) => {
                info!(
                    payment_id,
                    order_id = %e.order_id,
                    partition,
                    offset,
                    provider_event_id = %e.provider_event_id,
                    outcome = ?e.outcome,
                    "provider event"
                );
                Input::ProviderEvent(provider_report(e))
            }
        };
        // The provider's event is itself the answer; anything else first learns what a call
        // in flight did (a crash may have lost its answer).
        if state.status.is_in_flight() && !matches!(input, Input::ProviderEvent(_)) {
            info!(
                payment_id,
                partition,
                offset,
                status = state.status.name(),
                "payment in flight; asking the provider first"
            );
            self.run_input(partition, &mut state, &mut stored, Input::Recover)
                .await?;
        }
        let refused = self
            .run_input(partition, &mut state, &mut stored, input)
            .await?;
        stored.applied_offset = Some(offset);
        self.persist(&state, &mut stored, &[]).await?;
        Ok(refused.map_or(Applied::Done, Applied::Refused))
    }

    pub(super) async fn load(&self, payment_id: &str) -> Result<(PaymentState, Stored), StepError> {
        let store = &self.deps.store;
        let row = self
            .retrying(
                self.policy(),
                "loading a payment",
                Some(&self.deps.metrics.store_retries),
                PaymentStoreError::is_retryable,
                |_| store.load(payment_id),
            )
            .await
            .map_err(|f| f.into_step("loading a payment"))?;
        match row {
            None => Ok((
                PaymentState::new(payment_id),
                Stored {
                    applied_offset: None,
                    revision: 0,
                },
            )),
            Some(row) => store::restore(row).map_err(StepError::Fatal),
        }
    }

    /// Feeds `input` to the core and carries out every effect, feeding the gateway's answers
    /// back until nothing is left to do now (what is left waits for the payment's timer).
    /// `Some`: the input was a provider event the core refused.
    pub(super) async fn run_input(
        &self,
        partition: i32,
        state: &mut PaymentState,
        stored: &mut Stored,
        input: Input,
    ) -> Result<Option<ProviderMismatch>, StepError> {
        let metrics = &self.deps.metrics;
        let gateway = &self.deps.gateway;
        let mut refused = None;
        let mut queue = VecDeque::from([input]);
        let mut steps = 0u32;
        while let Some(input) = queue.pop_front() {
            steps += 1;
            if steps > MAX_STEPS {
                error!(payment_id = %state.payment_id, partition, steps, "too many steps for one input; the payment's timer resumes it");
                break;
            }
            let now = now_millis();
            let first_seq = state.history_seq;
            let effects = core::apply_with(&self.deps.policy, state, input, now);
            // 1. Outcomes first: a crash after them replays the step, which produces them again.
            for effect in &effects {
                if let Effect::Emit(outcome) = effect {
                    self.produce(&render(state, outcome, now)).await?;
                }
            }
            // 2. The timer, the history, then the row: the intent is stored before any gateway
            //    call, and a state that needs a timer is never stored without one.
            let mut history = Vec::new();
            let mut unschedule = false;
            for effect in &effects {
                match effect {
                    Effect::History { status, detail } => {
                        history.push(HistoryEntry {
                            at: now,
                            seq: first_seq + i32::try_from(history.len()).unwrap_or(i32::MAX),
                            status: (*status).to_owned(),
                            detail: detail.clone(),
                        });
                    }
                    Effect::Schedule { at } => self.schedule(partition, state, *at).await?,
                    Effect::Unschedule => unschedule = true,
                    Effect::Ignored { reason } => {
                        debug!(payment_id = %state.payment_id, partition, reason = %reason, "input changed nothing");
                    }
                    Effect::ProviderEventRefused(mismatch) => refused = Some(mismatch.clone()),
                    _ => {}
                }
            }
            if !history.is_empty() {
                self.persist(state, stored, &history).await?;
            }
            if unschedule {
                self.unschedule(partition, &state.payment_id).await?;
            }
            // 3. The gateway.
            for effect in effects {
                match effect {
                    Effect::Charge {
                        payment_id,
                        order_id,
                        amount_minor,
                        currency,
                        token,
                    } => {
                        metrics.charges.inc_by(1);
                        let request = ChargeRequest {
                            idempotency_key: payment_id,
                            order_id,
                            amount_minor,
                            currency,
                            token,
                        };
                        let outcome = gateway.charge(&request).await;
                        info!(payment_id = %state.payment_id, order_id = %state.order_id, partition, outcome = outcome_name(&outcome), "charge answered");
                        queue.push_back(Input::ChargeResult(outcome));
                    }
                    Effect::Query { payment_id } => {
                        metrics.queries.inc_by(1);
                        let outcome = gateway.query(&payment_id).await;
                        info!(payment_id = %state.payment_id, order_id = %state.order_id, partition, outcome = outcome_name(&outcome), "charge queried");
                        queue.push_back(Input::QueryResult(outcome));
                    }
                    Effect::Refund {
                        refund_id,
                        charge_reference,
                        amount_minor,
                        currency,
                    } => {
                        metrics.refunds.inc_by(1);
                        let request = RefundRequest {
                            idempotency_key: refund_id,
                            charge_reference,
                            amount_minor,
                            currency,
                        };
                        queue.push_back(Input::RefundResult(gateway.refund(&request).await));
                    }
                    Effect::QueryRefund { refund_id } => {
                        metrics.queries.inc_by(1);
                        queue.push_back(Input::RefundQueryResult(
                            gateway.query_refund(&refund_id).await,
                        ));
                    }
                    Effect::Emit(core::Outcome::Succeeded { .. }) => {
                        metrics.captured.inc_by(1);
                    }
                    Effect::Emit(core::Outcome::Failed { .. }) => {
                        metrics.failed.inc_by(1);
                    }
                    Effect::Emit(_)
                    | Effect::History { .. }
                    | Effect::Schedule { .. }
                    | Effect::Unschedule
                    | Effect::ProviderEventRefused(_)
                    | Effect::Ignored { .. } => {}
                }
            }
        }
        Ok(refused)
    }

    /// Writes the payment's timer (retrying outages), then puts it in the wheel.
    pub(super) async fn schedule(
        &self,
        partition: i32,
        state: &PaymentState,
        at: Millis,
    ) -> Result<(), StepError> {
        let payment_id = &state.payment_id;
        let (store, topic) = (&self.deps.store, &self.topics.payments);
        self.retrying(
            self.policy(),
            "writing a payment timer",
            Some(&self.deps.metrics.store_retries),
            PaymentStoreError::is_retryable,
            |_| store.schedule(topic, partition, payment_id, at),
        )
        .await
        .map_err(|f| f.into_step("writing a payment timer"))?;
        debug!(payment_id, order_id = %state.order_id, partition, due_in_ms = at - now_millis(), status = state.status.name(), "payment timer set");
        self.wheel().set(partition, payment_id, at);
        self.timer_set.notify_one();
        self.update_timer_gauge();
        Ok(())
    }

    /// Deletes the payment's timer (retrying outages) and takes it out of the wheel.
    pub(super) async fn unschedule(
        &self,
        partition: i32,
        payment_id: &str,
    ) -> Result<(), StepError> {
        let (store, topic) = (&self.deps.store, &self.topics.payments);
        self.retrying(
            self.policy(),
            "deleting a payment timer",
            Some(&self.deps.metrics.store_retries),
            PaymentStoreError::is_retryable,
            |_| store.unschedule(topic, partition, payment_id),
        )
        .await
        .map_err(|f| f.into_step("deleting a payment timer"))?;
        self.wheel().cancel(payment_id);
        self.update_timer_gauge();
        Ok(())
    }

    /// Appends `history` and writes the payment as the next revision, retrying outages.
    pub(super) async fn persist(
        &self,
        state: &PaymentState,
        stored: &mut Stored,
        history: &[HistoryEntry],
    ) -> Result<(), StepError> {
        let store = &self.deps.store;
        let counter = Some(&self.deps.metrics.store_retries);
        self.retrying(
            self.policy(),
            "appending payment history",
            counter,
            PaymentStoreError::is_retryable,
            |_| store.append_history(&state.payment_id, history),
        )
        .await
        .map_err(|f| f.into_step("appending payment history"))?;
        let next = stored.revision + 1;
        let row = store::to_stored(state, stored.applied_offset, next);
        let expected = (stored.revision > 0).then_some(stored.revision);
        let saved = self
            .retrying(
                self.policy(),
                "saving the payment",
                counter,
                PaymentStoreError::is_retryable,
                |retried| {
                    let row = &row;
                    async move {
                        match store.save(row, expected).await {
                            // A retried save whose first attempt landed.
                            Ok(PaymentSaveOutcome::Conflict {
                                current_revision: Some(current),
                            }) if retried > 0 && current == next => Ok(PaymentSaveOutcome::Applied),
                            other => other,
                        }
                    }
                },
            )
            .await
            .map_err(|f| f.into_step("saving the payment"))?;
        if let PaymentSaveOutcome::Conflict { current_revision } = saved {
            return Err(StepError::Conflict(format!(
                "stored revision {current_revision:?}, expected {expected:?}"
            )));
        }
        stored.revision = next;
        Ok(())
    }
}

pub(super) fn payment_id_of(request: &PaymentRequest) -> &str {
    match request {
        PaymentRequest::PaymentRequested(r) => &r.payment_id,
        PaymentRequest::PaymentSubmitted(r) => &r.payment_id,
        PaymentRequest::RefundRequested(r) => &r.payment_id,
        PaymentRequest::PaymentProviderEvent(r) => &r.payment_id,
    }
}

/// A provider's asynchronous event as what the core checks and applies.
pub(super) fn provider_report(event: &PaymentProviderEvent) -> ProviderReport {
    ProviderReport {
        outcome: provider_outcome(event),
        order_id: event.order_id.clone(),
        amount_minor: event.amount_minor,
        currency: event.currency.clone(),
    }
}

/// A provider's asynchronous event as the charge outcome it reports.
fn provider_outcome(event: &PaymentProviderEvent) -> ChargeOutcome {
    match event.outcome {
        ProviderChargeOutcome::Captured => ChargeOutcome::Captured {
            provider_reference: event.provider_reference.clone(),
        },
        ProviderChargeOutcome::Declined => ChargeOutcome::Declined {
            reason: match event.failure_reason {
                Some(PaymentFailureReason::InsufficientFunds) => DeclineReason::InsufficientFunds,
                Some(PaymentFailureReason::ProviderError | PaymentFailureReason::Timeout) => {
                    DeclineReason::ProviderError
                }
                Some(PaymentFailureReason::Declined) | None => DeclineReason::Declined,
            },
            message: event.detail.clone().unwrap_or_default(),
        },
    }
}

/// For logs: the outcome's kind only (never a token; references are not secret but not needed).
pub(super) fn outcome_name(outcome: &crate::payments::gateway::ChargeOutcome) -> &'static str {
    use crate::payments::gateway::ChargeOutcome as C;
    match outcome {
        C::Captured { .. } => "captured",
        C::Declined { .. } => "declined",
        C::Pending { .. } => "pending",
        C::Unknown { .. } => "unknown",
        C::NotFound => "not_found",
    }
}
