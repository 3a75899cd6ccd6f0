//! Refresh tokens: 32 random bytes, base64url, opaque to clients. Only their SHA-256 is
//! stored, so a leaked table grants nothing. Each use rotates the token; a used token presented
//! again (reuse: it was stolen, or a client raced itself) revokes its whole family (the login
//! session) and every access token of that session.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// A new random refresh token.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The stored form of a token: SHA-256, hex.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whether `token` has the shape of one we issue (43 base64url characters); anything else is
/// refused without a store lookup.
pub fn well_formed(token: &str) -> bool {
    token.len() == 43
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_well_formed_and_hashed() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert!(well_formed(&a), "{a}");
        assert!(!well_formed("short"));
        assert_eq!(hash(&a).len(), 64);
        assert_eq!(hash(&a), hash(&a));
    }
}
