//! One partition's worth of events: routes each command to its event's state, decides, and
//! renders. Still pure; the runtime feeds it records in log order and carries out the result.

use std::collections::HashMap;

use boxoffice_avro::records::{BookingCommand, RecordGroup};

use super::core::{Allocator, Effect, ExactAllocator, apply_with};
use super::render::{Output, render};
use super::state::{EventState, Millis};

/// What the hold-expiry timer must change after a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimerChange {
    Schedule {
        event_id: String,
        order_id: String,
        user_id: String,
        at: Millis,
    },
    Clear {
        event_id: String,
        order_id: String,
    },
}

/// Everything one command caused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    pub outputs: Vec<Output>,
    pub timers: Vec<TimerChange>,
    /// Why the command changed nothing, when it did not (for logs and metrics).
    pub ignored: Vec<String>,
}

/// The events of one partition, each folded independently.
#[derive(Debug, Default)]
pub struct Partition<A: Allocator = ExactAllocator> {
    pub events: HashMap<String, EventState>,
    allocator: A,
    effects: Vec<Effect>,
}

impl Partition<ExactAllocator> {
    pub fn new() -> Self {
        Self::with_allocator(ExactAllocator)
    }
}

impl<A: Allocator> Partition<A> {
    pub fn with_allocator(allocator: A) -> Self {
        Partition {
            events: HashMap::new(),
            allocator,
            effects: Vec::new(),
        }
    }

    /// Decides one command and renders what it caused.
    pub fn decide(&mut self, command: &BookingCommand) -> Decision {
        let event_id = command.key();
        let state = self
            .events
            .entry(event_id.to_owned())
            .or_insert_with(|| EventState::new(event_id));
        self.effects.clear();
        apply_with(&self.allocator, state, command, &mut self.effects);
        let mut decision = Decision::default();
        for effect in &self.effects {
            render(state, command, effect, &mut decision.outputs);
            match effect {
                Effect::HoldScheduled { order_id, at } => {
                    let user_id = state
                        .orders
                        .get(order_id)
                        .map(|o| o.user_id.clone())
                        .unwrap_or_default();
                    decision.timers.push(TimerChange::Schedule {
                        event_id: state.event_id.clone(),
                        order_id: order_id.clone(),
                        user_id,
                        at: *at,
                    });
                }
                Effect::HoldCleared { order_id } => decision.timers.push(TimerChange::Clear {
                    event_id: state.event_id.clone(),
                    order_id: order_id.clone(),
                }),
                Effect::Ignored { reason } => decision.ignored.push(reason.clone()),
                _ => {}
            }
        }
        if let Some(digest) = state.digest.as_mut() {
            for output in &decision.outputs {
                if let Output::Order(fact) = output {
                    digest.add(fact.record_id());
                }
            }
        }
        // Invariant: every decision leaves the event consistent. A violation is a bug in the
        // core, and carrying on would sell what does not exist.
        debug_assert_eq!(state.check_invariant(), Ok(()));
        assert!(
            state.held + state.sold <= state.capacity(),
            "invariant broken for event {}: held {} + sold {} > capacity {}",
            state.event_id,
            state.held,
            state.sold,
            state.capacity()
        );
        decision
    }

    /// Decides only (no rendering): what the core benchmark measures.
    pub fn apply_only(&mut self, command: &BookingCommand) -> usize {
        let state = self
            .events
            .entry(command.key().to_owned())
            .or_insert_with(|| EventState::new(command.key()));
        self.effects.clear();
        apply_with(&self.allocator, state, command, &mut self.effects);
        self.effects.len()
    }
}
