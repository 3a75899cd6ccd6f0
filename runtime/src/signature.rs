//! The one HMAC signature boxoffice uses on both sides of a webhook: HMAC-SHA256 keyed with a
//! shared secret over `"<timestamp>.<body>"`, sent as lower-case hex. The notifier signs what
//! it sends organisers; ingest verifies what the payment provider sends. Tags are compared in
//! constant time (`Mac::verify_slice`).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes in a tag (SHA-256).
pub const TAG_LEN: usize = 32;

/// HMAC-SHA256 keyed with `secret` over `"<timestamp>.<body>"`. `timestamp` is the text as
/// sent, so a verifier signs exactly what it received.
pub fn timestamped_mac(secret: &[u8], timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length: `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The tag for `body` signed at `timestamp`, as 64 lower-case hex digits.
pub fn tag_hex(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    hex::encode(
        timestamped_mac(secret, &timestamp.to_string(), body)
            .finalize()
            .into_bytes(),
    )
}

/// 64 lower-case hex digits as a tag; anything else (upper case, wrong length) is `None`.
pub fn decode_tag(text: &str) -> Option<[u8; TAG_LEN]> {
    if !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut tag = [0u8; TAG_LEN];
    hex::decode_to_slice(text, &mut tag).ok()?;
    Some(tag)
}

/// Whether `tag` is the signature of `body` at `timestamp` (as sent), in constant time.
pub fn verify_tag(secret: &[u8], timestamp: &str, body: &[u8], tag: &[u8]) -> bool {
    timestamped_mac(secret, timestamp, body)
        .verify_slice(tag)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_verifies_and_tampering_does_not() {
        let tag = tag_hex(b"secret", 1_700_000_000, b"{}");
        assert_eq!(tag.len(), 2 * TAG_LEN);
        let bytes = decode_tag(&tag).expect("tag_hex writes 64 lower-case hex digits");
        assert!(verify_tag(b"secret", "1700000000", b"{}", &bytes));
        assert!(!verify_tag(b"secret", "1700000001", b"{}", &bytes));
        assert!(!verify_tag(b"other", "1700000000", b"{}", &bytes));
        assert!(!verify_tag(b"secret", "1700000000", b"{ }", &bytes));
    }

    #[test]
    fn only_lower_case_hex_of_the_right_length_decodes() {
        let tag = tag_hex(b"k", 1, b"x");
        assert!(decode_tag(&tag.to_uppercase()).is_none());
        assert!(decode_tag(&tag[..62]).is_none());
        assert!(decode_tag(&format!("{tag}00")).is_none());
        assert!(decode_tag(&"g".repeat(64)).is_none());
    }
}
