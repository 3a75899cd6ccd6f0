//! Which topic each of the booking processor's outputs goes to. The names themselves (and the
//! `--topic-prefix` setting) are `boxoffice_topics::names`, shared by every service.

pub use boxoffice_topics::names::Topics;

use super::render::Output;

/// The topic `output` is produced to.
pub fn topic_for<'a>(topics: &'a Topics, output: &Output) -> &'a str {
    match output {
        Output::Order(_) => &topics.orders,
        Output::Payment(_) => &topics.payments,
        Output::Availability(_) => &topics.availability,
        Output::Notification(_) => &topics.notifications,
    }
}
