//! The topics the booking processor reads and writes. Production names by default; tests and
//! side-by-side deployments add a prefix.

use boxoffice_avro::records::topic;

use super::render::Output;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub commands: String,
    pub orders: String,
    pub payments: String,
    pub availability: String,
    pub notifications: String,
    pub dead_letters: String,
    pub progress: String,
}

impl Topics {
    pub fn with_prefix(prefix: &str) -> Self {
        Topics {
            commands: format!("{prefix}{}", topic::BOOKING_COMMANDS),
            orders: format!("{prefix}{}", topic::ORDERS_EVENTS),
            payments: format!("{prefix}{}", topic::PAYMENTS_REQUESTS),
            availability: format!("{prefix}{}", topic::AVAILABILITY),
            notifications: format!("{prefix}{}", topic::NOTIFICATIONS),
            dead_letters: format!("{prefix}{}", topic::DEAD_LETTERS),
            progress: format!("{prefix}{}", topic::BOOKING_PROGRESS),
        }
    }

    pub fn for_output(&self, output: &Output) -> &str {
        match output {
            Output::Order(_) => &self.orders,
            Output::Payment(_) => &self.payments,
            Output::Availability(_) => &self.availability,
            Output::Notification(_) => &self.notifications,
        }
    }
}
