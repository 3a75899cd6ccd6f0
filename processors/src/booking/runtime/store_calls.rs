//! The booking processor's store calls with the one bounded retry policy: registering an
//! event for its partition and the fenced save; a fault that outlasts the budget rebuilds the
//! partition through the recovery path.

use boxoffice_runtime::retry::Retries;
use boxoffice_store::inventory::StoreError;

use super::batch::BatchJob;
use super::*;

impl BatchJob {
    pub(super) async fn register_event(
        &self,
        partition: i32,
        event_id: &str,
    ) -> Result<(), BatchOutcome> {
        let mut retries = self.retry_policy().start(Instant::now());
        loop {
            // Bounded: `retries` gives up after the retry budget.
            let e = match self
                .deps
                .store
                .register_event(&self.topics.commands, partition, event_id)
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            self.wait_to_retry(&mut retries, "registering an event", &e)
                .await?;
        }
    }

    /// Writes the read-model rows of the batch's new orders (idempotent), retrying while the
    /// store is unavailable, within the budget.
    pub(super) async fn write_order_rows(&self, orders: &[NewOrder]) -> Result<(), BatchOutcome> {
        if orders.is_empty() {
            return Ok(());
        }
        let mut retries = self.retry_policy().start(Instant::now());
        loop {
            // Bounded: `retries` gives up after the retry budget.
            let e = match self.deps.order_rows.write(orders).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            self.wait_to_retry(&mut retries, "writing order rows", &e)
                .await?;
        }
    }

    /// Reads an order the event decided but does not keep in memory, and keeps it, before a
    /// command about it is decided. Its row is final: an order leaves memory only once the
    /// batch that last changed it is saved (`Worker::evict_ended`), or was never loaded. A
    /// missing or unusable row stops the partition: the store disagrees with its own index.
    pub(super) async fn load_order(
        &self,
        worker: &mut Worker,
        event_id: &str,
        order_id: &str,
    ) -> Result<(), BatchOutcome> {
        let ids = [order_id.to_owned()];
        let mut retries = self.retry_policy().start(Instant::now());
        let rows = loop {
            // Bounded: `retries` gives up after the retry budget.
            let e = match self.deps.store.read_some_orders(event_id, &ids).await {
                Ok(rows) => break rows,
                Err(e) => e,
            };
            self.wait_to_retry(&mut retries, "reading an order", &e)
                .await?;
        };
        self.deps.metrics.orders_read.inc_by(1);
        let broken = |reason: String| {
            BatchOutcome::Stop(format!("event {event_id}, order {order_id}: {reason}"))
        };
        let Some(row) = rows.into_iter().find(|r| r.order_id == order_id) else {
            return Err(broken(
                "the order index names it but the store has no row (the store lost a write)"
                    .to_owned(),
            ));
        };
        let order = store::order_from_row(&row).map_err(broken)?;
        let state = worker
            .core
            .events
            .get_mut(event_id)
            .ok_or_else(|| broken("its event is not loaded".to_owned()))?;
        state
            .insert_loaded(order_id.to_owned(), order)
            .map_err(broken)
    }

    /// Writes an event's state, retrying while the store is unavailable, within the budget.
    pub(super) async fn save_with_retry(
        &self,
        update: &StoredEventUpdate,
    ) -> Result<SaveOutcome, BatchOutcome> {
        let mut retries = self.retry_policy().start(Instant::now());
        loop {
            // Bounded: `retries` gives up after the retry budget.
            let e = match self.deps.store.save(update).await {
                // A retried save whose first attempt landed (it timed out, but was applied).
                Ok(SaveOutcome::Conflict {
                    current_offset: Some(current),
                }) if retries.attempts() > 0 && current == update.new_offset => {
                    return Ok(SaveOutcome::Applied);
                }
                Ok(outcome) => return Ok(outcome),
                Err(e) => e,
            };
            self.wait_to_retry(&mut retries, "saving event state", &e)
                .await?;
        }
    }
    /// Waits before the next attempt of a failed store call; `Err` when the error is not
    /// transient or the retry budget is spent (the partition is then rebuilt).
    async fn wait_to_retry(
        &self,
        retries: &mut Retries,
        what: &str,
        e: &StoreError,
    ) -> Result<(), BatchOutcome> {
        let delay = e
            .is_retryable()
            .then(|| retries.next_delay(Instant::now()))
            .flatten();
        let Some(delay) = delay else {
            return Err(self.store_failure(what, e));
        };
        self.deps.metrics.store_retries.inc_by(1);
        let attempt = retries.attempts();
        warn!(what, attempt, error = %e, "store call failed; retrying");
        tokio::time::sleep(delay).await;
        Ok(())
    }

    pub(super) fn store_failure(
        &self,
        what: &str,
        e: &boxoffice_store::inventory::StoreError,
    ) -> BatchOutcome {
        if e.is_retryable() {
            self.deps.metrics.retries_exhausted.inc_by(1);
            BatchOutcome::Rebuild {
                reason: format!(
                    "{what}: the store was unavailable for longer than the retry budget: {e}"
                ),
                after: Duration::ZERO,
            }
        } else {
            BatchOutcome::Failed(format!("{what}: {e}"))
        }
    }
}
