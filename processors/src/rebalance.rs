//! Consumer-group membership as the processors see it: rdkafka's rebalance callbacks only
//! note which partitions came and went; each processor's record loop acts on the notes
//! between batches (so a revocation never finds a batch half done).

use std::sync::{Arc, Mutex};

use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, TopicPartitionList};

/// A change of the partitions this instance owns.
#[derive(Debug)]
pub enum Membership {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

/// Records rebalance callbacks for the record loop.
#[derive(Debug, Default, Clone)]
pub struct GroupContext {
    changes: Arc<Mutex<Vec<Membership>>>,
}

impl GroupContext {
    /// The changes noted since the last call, oldest first.
    pub fn take(&self) -> Vec<Membership> {
        match self.changes.lock() {
            Ok(mut changes) => changes.drain(..).collect(),
            Err(_) => Vec::new(),
        }
    }

    fn note(&self, change: Membership) {
        if let Ok(mut changes) = self.changes.lock() {
            changes.push(change);
        }
    }
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            self.note(Membership::Revoked(partitions_of(tpl)));
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.note(Membership::Assigned(partitions_of(tpl)));
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}
