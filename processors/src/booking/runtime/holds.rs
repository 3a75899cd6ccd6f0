//! Hold expiry: the due timers of every active worker become `HoldExpired` commands on the
//! event's own partition (the processor decides them like any other command, in log order).

use super::*;

impl Runtime {
    /// Produces `HoldExpired` for every hold whose deadline passed. The decision stays in the
    /// log: the core releases the hold only if the order is still unpaid when it reads it.
    pub(super) async fn fire_due_timers(&mut self) {
        let now = now_millis();
        let mut sends = Vec::new();
        for slot in self.slots.values_mut() {
            let Slot::Active(worker) = slot else {
                continue;
            };
            while let Some(entry) = worker.timers.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let ((deadline, order_id), (event_id, user_id)) = entry.remove_entry();
                worker.hold_index.remove(&order_id);
                let record = HoldExpired {
                    record_id: ids::record_id_for::<HoldExpired>(&[
                        &order_id,
                        &deadline.to_string(),
                    ]),
                    order_id,
                    event_id,
                    user_id,
                    hold_expires_at: deadline,
                    occurred_at: now,
                };
                sends.push((worker.partition, record));
            }
        }
        if sends.is_empty() {
            return;
        }
        let codec = &self.deps.codec;
        let producer = &self.command_producer;
        let topic = &self.topics.commands;
        let results = join_all(sends.into_iter().map(|(partition, record)| async move {
            let group = BookingCommand::HoldExpired(record.clone());
            let sent = async {
                let bytes = codec
                    .encode_group(topic, &group)
                    .await
                    .map_err(|e| e.to_string())?;
                producer
                    .send(
                        FutureRecord::to(topic)
                            .key(record.event_id.as_bytes())
                            .payload(&bytes),
                        Duration::from_secs(10),
                    )
                    .await
                    .map_err(|(e, _)| e.to_string())?;
                Ok::<_, String>(())
            }
            .instrument(info_span!("hold_expired", partition, order_id = %record.order_id))
            .await;
            (partition, record, sent)
        }))
        .await;
        for (partition, record, sent) in results {
            if let Err(e) = sent {
                // Try again shortly; until then the order stays reserved, which never oversells.
                warn!(partition, order_id = %record.order_id, error = %e, "producing a hold expiry failed; retrying");
                if let Some(Slot::Active(worker)) = self.slots.get_mut(&partition) {
                    worker.schedule(now + 1000, record.order_id, record.event_id, record.user_id);
                }
            }
        }
    }
}
