//! Opaque pagination tokens: the cursor, the direction and the list they belong to, as
//! base64url JSON followed by an HMAC-SHA256 tag (keyed from the JWT secret). A token that was
//! altered, truncated or made for another list is refused with 400.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::config::JwtSecret;
use crate::error::ApiError;
use crate::stores::Direction;

type HmacSha256 = Hmac<Sha256>;

/// Longest token accepted before any work is done.
const MAX_TOKEN_LEN: usize = 2048;

#[derive(Debug, Serialize, Deserialize)]
struct Envelope<C> {
    /// Which list (and for whom / with which filters) the token belongs to.
    l: String,
    d: Direction,
    c: C,
}

/// Signs and checks pagination tokens.
#[derive(Clone)]
pub struct Pager {
    key: Vec<u8>,
}

impl std::fmt::Debug for Pager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pager(..)")
    }
}

impl Pager {
    /// A key derived from the JWT secret, so one secret configures both.
    pub fn new(secret: &JwtSecret) -> Self {
        let mut mac = HmacSha256::new_from_slice(secret.bytes()).unwrap_or_else(|_| {
            // HMAC takes keys of any length; this cannot fail.
            HmacSha256::new_from_slice(b"boxoffice").unwrap_or_else(|_| unreachable!())
        });
        mac.update(b"boxoffice pagination v1");
        Pager {
            key: mac.finalize().into_bytes().to_vec(),
        }
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!("any key length"))
    }

    /// A token for `cursor` on list `list` going `direction`.
    pub fn sign<C: Serialize>(&self, list: &str, direction: Direction, cursor: &C) -> String {
        let envelope = Envelope {
            l: list.to_owned(),
            d: direction,
            c: cursor,
        };
        let body = serde_json::to_vec(&envelope).unwrap_or_default();
        let mut mac = self.mac();
        mac.update(&body);
        let tag = mac.finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&body),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// The cursor and direction of a token made by [`Pager::sign`] for `list`.
    pub fn verify<C: DeserializeOwned>(
        &self,
        list: &str,
        token: &str,
    ) -> Result<(Direction, C), ApiError> {
        let invalid = || {
            ApiError::InvalidPageToken(
                "the page token is invalid; use one returned by this list".to_owned(),
            )
        };
        if token.len() > MAX_TOKEN_LEN {
            return Err(invalid());
        }
        let (body, tag) = token.split_once('.').ok_or_else(invalid)?;
        let body = URL_SAFE_NO_PAD.decode(body).map_err(|_| invalid())?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| invalid())?;
        let mut mac = self.mac();
        mac.update(&body);
        mac.verify_slice(&tag).map_err(|_| invalid())?;
        let envelope: Envelope<C> = serde_json::from_slice(&body).map_err(|_| invalid())?;
        if envelope.l != list {
            return Err(invalid());
        }
        Ok((envelope.d, envelope.c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stores::TimeCursor;

    fn pager() -> Pager {
        Pager::new(&JwtSecret::new(vec![7u8; 32]).unwrap())
    }

    #[test]
    fn tokens_round_trip_and_tampering_is_refused() {
        let p = pager();
        let cursor = TimeCursor {
            at: 42,
            id: "x".into(),
        };
        let token = p.sign("orders:u1", Direction::Next, &cursor);
        let (d, c): (Direction, TimeCursor) = p.verify("orders:u1", &token).unwrap();
        assert_eq!((d, c), (Direction::Next, cursor.clone()));
        assert!(
            p.verify::<TimeCursor>("orders:u2", &token).is_err(),
            "another list"
        );
        let mut bytes = token.clone().into_bytes();
        bytes[3] = if bytes[3] == b'A' { b'B' } else { b'A' };
        assert!(
            p.verify::<TimeCursor>("orders:u1", &String::from_utf8(bytes).unwrap())
                .is_err()
        );
        assert!(p.verify::<TimeCursor>("orders:u1", "garbage").is_err());
        let other = Pager::new(&JwtSecret::new(vec![8u8; 32]).unwrap());
        assert!(
            other.verify::<TimeCursor>("orders:u1", &token).is_err(),
            "another key"
        );
    }
}
