//! The payment provider's events in CQL (`payment_provider_events`, by provider event id):
//! claimed with `INSERT ... IF NOT EXISTS`, marked forwarded once their record is on Kafka.

use async_trait::async_trait;
use scylla::value::CqlTimestamp;

use super::{CqlStores, applied};
use crate::stores::{ProviderEventClaim, ProviderEventRecord, ProviderEventStore, StoreResult};

type ProviderEventRow = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<CqlTimestamp>,
    Option<bool>,
);

fn provider_event(row: ProviderEventRow) -> ProviderEventRecord {
    let (provider_event_id, payment_id, order_id, event_type, received_at, forwarded) = row;
    ProviderEventRecord {
        provider_event_id,
        payment_id: payment_id.unwrap_or_default(),
        order_id: order_id.unwrap_or_default(),
        event_type: event_type.unwrap_or_default(),
        received_at: received_at.map_or(0, |t| t.0),
        forwarded: forwarded.unwrap_or(false),
    }
}

#[async_trait]
impl ProviderEventStore for CqlStores {
    async fn claim_provider_event(
        &self,
        e: &ProviderEventRecord,
    ) -> StoreResult<ProviderEventClaim> {
        let operation = "claim provider event";
        let result = self
            .run(
                &self.s.claim_provider_event,
                (
                    &e.provider_event_id,
                    &e.payment_id,
                    &e.order_id,
                    &e.event_type,
                    CqlTimestamp(e.received_at),
                ),
                operation,
            )
            .await?;
        if applied(result, operation)? {
            return Ok(ProviderEventClaim::New);
        }
        // A serial read: sees the row the failed condition saw, and any `forwarded = true`
        // written by a transaction since.
        let existing: Option<ProviderEventRow> = self
            .one(
                &self.s.read_provider_event_serial,
                (&e.provider_event_id,),
                "read provider event",
            )
            .await?;
        Ok(match existing {
            Some(row) => ProviderEventClaim::Existing(provider_event(row)),
            // Cannot be (the insert said it exists, and rows are never deleted): treat the
            // delivery as new; producing again is harmless (same record id).
            None => ProviderEventClaim::New,
        })
    }

    async fn mark_provider_event_forwarded(&self, provider_event_id: &str) -> StoreResult<()> {
        self.run(
            &self.s.mark_provider_event_forwarded,
            (provider_event_id,),
            "mark provider event forwarded",
        )
        .await?;
        Ok(())
    }
}
