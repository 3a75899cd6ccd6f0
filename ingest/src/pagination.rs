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

    /// The position a list request asks for: `None` for the first page, else the direction
    /// and cursor of the one token it passed (see [`PageTokens`]).
    pub fn position<C: DeserializeOwned>(
        &self,
        list: &str,
        tokens: &PageTokens<'_>,
    ) -> Result<Option<(Direction, C)>, ApiError> {
        let given: Vec<(&str, &str, Option<Direction>)> = [
            ("page_token", tokens.page_token, None),
            ("next_token", tokens.next_token, Some(Direction::Next)),
            (
                "previous_token",
                tokens.previous_token,
                Some(Direction::Previous),
            ),
        ]
        .into_iter()
        .filter_map(|(name, token, named)| token.map(|t| (name, t, named)))
        .collect();
        let (name, token, named) = match given.as_slice() {
            [] => return Ok(None),
            [one] => *one,
            [_, (second, _, _), ..] => {
                return Err(ApiError::parameter(
                    second,
                    "pass one page token: page_token, next_token or previous_token",
                ));
            }
        };
        let (direction, cursor) = self.verify(list, token)?;
        match named {
            Some(expected) if expected != direction => Err(ApiError::parameter(
                name,
                "this token goes the other way; pass a next_token as next_token and a \
                 previous_token as previous_token",
            )),
            _ => Ok(Some((direction, cursor))),
        }
    }
}

/// The page token of a list request, under any of its names: the seed's `next_token` and
/// `previous_token` (each answer's tokens passed back under their own names) or `page_token`
/// (either of them). At most one may be given.
#[derive(Debug, Clone, Copy, Default)]
pub struct PageTokens<'a> {
    pub page_token: Option<&'a str>,
    pub next_token: Option<&'a str>,
    pub previous_token: Option<&'a str>,
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

    #[test]
    fn a_token_is_taken_under_its_own_name_or_page_token_and_only_one() {
        let p = pager();
        let cursor = TimeCursor {
            at: 7,
            id: "o".into(),
        };
        let next = p.sign("l", Direction::Next, &cursor);
        let previous = p.sign("l", Direction::Previous, &cursor);
        let at = |tokens: PageTokens<'_>| p.position::<TimeCursor>("l", &tokens);
        assert!(at(PageTokens::default()).unwrap().is_none(), "first page");
        for tokens in [
            PageTokens {
                next_token: Some(&next),
                ..Default::default()
            },
            PageTokens {
                page_token: Some(&next),
                ..Default::default()
            },
        ] {
            assert_eq!(at(tokens).unwrap().unwrap().0, Direction::Next);
        }
        let back = PageTokens {
            previous_token: Some(&previous),
            ..Default::default()
        };
        assert_eq!(at(back).unwrap().unwrap().0, Direction::Previous);
        let swapped = PageTokens {
            next_token: Some(&previous),
            ..Default::default()
        };
        assert_eq!(
            at(swapped).unwrap_err().problem().errors[0].field,
            "next_token"
        );
        let both = PageTokens {
            next_token: Some(&next),
            previous_token: Some(&previous),
            ..Default::default()
        };
        assert_eq!(at(both).unwrap_err().status().as_u16(), 400);
    }
}
