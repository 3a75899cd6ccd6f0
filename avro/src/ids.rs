//! Deterministic ids. Every record carries a `record_id` that is a UUID v5 over the record's
//! kind and the inputs that caused it, so a processor that replays its input after a crash emits
//! byte-for-byte the same ids, and every consumer deduplicates on them. The same scheme names
//! things the flow creates (orders from an idempotency key, tickets, payments, refunds), so a
//! retry names the same thing instead of creating a second one.
//!
//! The name hashed is injective: each part is length-prefixed, so `("ab", "c")` and
//! `("a", "bc")` can never collide.

use uuid::Uuid;

/// Namespace of every boxoffice v5 id: itself the v5 id of `boxoffice` in the URL namespace,
/// written out so it can never change by accident (a test recomputes it).
pub const NAMESPACE: Uuid = Uuid::from_u128(0xa36cb4b3_ef97_5517_af66_eaa30685d8ac);

/// The id of `kind` caused by `parts`: the same inputs always give the same id, different
/// inputs (or the same inputs under another kind) give different ids.
pub fn derive(kind: &str, parts: &[&str]) -> Uuid {
    let mut name =
        Vec::with_capacity(kind.len() + parts.iter().map(|p| p.len() + 8).sum::<usize>() + 8);
    push_part(&mut name, kind);
    for part in parts {
        push_part(&mut name, part);
    }
    Uuid::new_v5(&NAMESPACE, &name)
}

fn push_part(name: &mut Vec<u8>, part: &str) {
    name.extend_from_slice(&(part.len() as u64).to_be_bytes());
    name.extend_from_slice(part.as_bytes());
}

/// [`derive`] as hyphenated lower-case text, the form ids take in the records.
pub fn record_id(kind: &str, parts: &[&str]) -> String {
    derive(kind, parts).hyphenated().to_string()
}

/// The record id of a record of type `R` caused by `parts` (the kind is `R`'s full name).
pub fn record_id_for<R: crate::records::Record>(parts: &[&str]) -> String {
    record_id(R::FULL_NAME, parts)
}

/// Bytes of an order id that tag its owner (the last six: 48 bits).
const OWNER_TAG: std::ops::Range<usize> = 10..16;

/// The owner tag of `user_id`: six bytes of a v5 id over it.
fn owner_tag(user_id: &str) -> [u8; 6] {
    let digest = derive("order-owner", &[user_id]);
    let mut tag = [0u8; 6];
    tag.copy_from_slice(&digest.as_bytes()[OWNER_TAG]);
    tag
}

/// A version 8 (custom) UUID: `body`'s first ten bytes, then `user_id`'s owner tag.
fn tagged_order_id(body: &[u8; 16], user_id: &str) -> String {
    let mut bytes = *body;
    bytes[OWNER_TAG].copy_from_slice(&owner_tag(user_id));
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// The order id of a booking request with an `Idempotency-Key`. It names the request: the same
/// user, key, event and slot count always give the same id, so a retried POST names the same
/// order and the booking processor decides it once; the key reused with another body names
/// another order (which the booking processor rejects as `IDEMPOTENCY_KEY_REUSED`). The id
/// carries its owner ([`order_id_owned_by`]), so ingest can tell whose it is before the
/// booking processor has stored it.
pub fn order_id_for_request(
    user_id: &str,
    idempotency_key: &str,
    event_id: &str,
    number_slot: i32,
) -> String {
    let body = derive(
        "order",
        &[user_id, idempotency_key, event_id, &number_slot.to_string()],
    );
    tagged_order_id(body.as_bytes(), user_id)
}

/// The order id of a booking request without a key: random, carrying its owner.
pub fn new_order_id(user_id: &str) -> String {
    tagged_order_id(Uuid::new_v4().as_bytes(), user_id)
}

/// Whether `order_id` was made for `user_id` by [`order_id_for_request`] or [`new_order_id`].
/// Not a secret: anyone can make ids tagged with their own user id; it only tells ingest, for
/// an order it has no row of yet, that the caller may be the one who placed it.
pub fn order_id_owned_by(order_id: &str, user_id: &str) -> bool {
    Uuid::parse_str(order_id)
        .is_ok_and(|id| id.get_version_num() == 8 && id.as_bytes()[OWNER_TAG] == owner_tag(user_id))
}

/// The id of the `index`-th ticket (0-based) of an order.
pub fn ticket_id(order_id: &str, index: u32) -> String {
    record_id("ticket", &[order_id, &index.to_string()])
}

/// The ids of all tickets of an order of `number_slot` slots.
pub fn ticket_ids(order_id: &str, number_slot: u32) -> Vec<String> {
    (0..number_slot)
        .map(|index| ticket_id(order_id, index))
        .collect()
}

/// The payment id of an order: one payment per order, so a replayed reservation asks for the
/// same payment and the payment processor charges at most once.
pub fn payment_id(order_id: &str) -> String {
    record_id("payment", &[order_id])
}

/// The refund id of a payment: at most one refund per charge.
pub fn refund_id(payment_id: &str) -> String {
    record_id("refund", &[payment_id])
}

/// Parses id text (any UUID form) into a UUID; ids from clients go through this before use.
pub fn parse(id: &str) -> Result<Uuid, uuid::Error> {
    Uuid::parse_str(id)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::records::{BookingRequested, Record};

    #[test]
    fn the_namespace_is_the_v5_id_of_boxoffice() {
        assert_eq!(NAMESPACE, Uuid::new_v5(&Uuid::NAMESPACE_URL, b"boxoffice"));
    }

    #[test]
    fn known_inputs_give_known_ids() {
        // Pinned (computed independently with Python's uuid5 over the same length-prefixed
        // name): changing the scheme would break deduplication across a deploy.
        let id = record_id("boxoffice.BookingRequested", &["order-1"]);
        assert_eq!(id, "992d40a4-3e20-5f48-8b27-2cdf42231fac");
        assert_eq!(id.len(), 36);
        assert_eq!(parse(&id).unwrap().get_version_num(), 5);
        assert_eq!(record_id_for::<BookingRequested>(&["order-1"]), id);
        assert_eq!(BookingRequested::FULL_NAME, "boxoffice.BookingRequested");
    }

    #[test]
    fn parts_are_length_prefixed_so_boundaries_matter() {
        assert_ne!(record_id("k", &["ab", "c"]), record_id("k", &["a", "bc"]));
        assert_ne!(record_id("k", &["a"]), record_id("k", &["a", ""]));
        assert_ne!(record_id("k", &[]), record_id("", &["k"]));
        assert_ne!(record_id("order", &["x"]), record_id("payment", &["x"]));
    }

    #[test]
    fn order_ids_name_the_request_and_carry_their_owner() {
        let order = order_id_for_request("user-1", "key-1", "event-1", 2);
        assert_eq!(order, order_id_for_request("user-1", "key-1", "event-1", 2));
        // Another body with the same key is another order.
        assert_ne!(order, order_id_for_request("user-1", "key-1", "event-1", 3));
        assert_ne!(order, order_id_for_request("user-1", "key-1", "event-2", 2));
        assert_ne!(order, order_id_for_request("user-2", "key-1", "event-1", 2));
        assert_eq!(parse(&order).unwrap().get_version_num(), 8);
        assert!(order_id_owned_by(&order, "user-1"));
        assert!(!order_id_owned_by(&order, "user-2"));
        let random = new_order_id("user-1");
        assert_ne!(random, new_order_id("user-1"));
        assert!(order_id_owned_by(&random, "user-1"));
        assert!(!order_id_owned_by(&random, "user-2"));
        // Ids of another shape never pass.
        assert!(!order_id_owned_by(
            &record_id("order", &["user-1"]),
            "user-1"
        ));
        assert!(!order_id_owned_by("not-a-uuid", "user-1"));
    }

    #[test]
    fn named_helpers_are_stable_and_distinct() {
        let order = order_id_for_request("user-1", "key-1", "event-1", 1);
        let tickets = ticket_ids(&order, 3);
        assert_eq!(tickets.len(), 3);
        assert_eq!(tickets[1], ticket_id(&order, 1));
        assert_eq!(
            tickets
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            3
        );
        assert_ne!(payment_id(&order), refund_id(&payment_id(&order)));
        assert!(parse("not-a-uuid").is_err());
    }

    proptest! {
        #[test]
        fn same_input_same_id_different_input_different_id(
            kind in ".{0,12}",
            a in proptest::collection::vec(".{0,8}", 0..4),
            b in proptest::collection::vec(".{0,8}", 0..4),
        ) {
            let parts_a: Vec<&str> = a.iter().map(String::as_str).collect();
            let parts_b: Vec<&str> = b.iter().map(String::as_str).collect();
            prop_assert_eq!(record_id(&kind, &parts_a), record_id(&kind, &parts_a));
            prop_assert_eq!(record_id(&kind, &parts_a) == record_id(&kind, &parts_b), a == b);
        }
    }
}
