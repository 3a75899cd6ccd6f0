//! Access tokens: JWT signed with HS256 only (the algorithm is pinned: `none`, RS256 or any
//! other algorithm in the header is refused), carrying `kid`, `iss`, `aud`, `sub`, `role`,
//! `sid` (the login session, so logout revokes its tokens), `ev` (the account's email address is
//! verified: it may book), `iat`, `exp` and `jti`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::JwtSecret;
use crate::stores::Role;

/// What an access token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub role: Role,
    /// The refresh-token family (login session) the token belongs to.
    pub sid: String,
    /// The account's email address was verified when the token was issued (absent: no).
    #[serde(default)]
    pub ev: bool,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
}

/// Why a token was refused (all of them answer 401; the reason goes to the log).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed or its signature, algorithm or claims are invalid: {0}")]
    Invalid(String),
    #[error("the token was signed with another key (kid)")]
    UnknownKey,
    #[error("the token has expired")]
    Expired,
}

/// Signs and checks access tokens.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    kid: String,
    issuer: String,
    audience: String,
    ttl: Duration,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("kid", &self.kid)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TokenKeys {
    pub fn new(secret: &JwtSecret, issuer: &str, audience: &str, ttl: Duration) -> Self {
        // The key id names the secret without revealing it, so rotating the secret is visible.
        let digest = Sha256::digest(secret.bytes());
        let kid = hex::encode(&digest[..8]);
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        validation.validate_exp = true;
        TokenKeys {
            encoding: EncodingKey::from_secret(secret.bytes()),
            decoding: DecodingKey::from_secret(secret.bytes()),
            validation,
            kid,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// A fresh access token for `user_id` in session `sid`.
    pub fn issue(
        &self,
        user_id: &str,
        role: Role,
        sid: &str,
        email_verified: bool,
    ) -> Result<String, TokenError> {
        let now = now_secs();
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: user_id.to_owned(),
            role,
            sid: sid.to_owned(),
            ev: email_verified,
            iat: now,
            exp: now + self.ttl.as_secs(),
            jti: uuid::Uuid::new_v4().to_string(),
        };
        self.sign(&claims)
    }

    /// Signs arbitrary claims (tests make expired tokens with it).
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| TokenError::Invalid(e.to_string()))
    }

    /// Checks signature, algorithm (HS256 only), `kid`, `iss`, `aud` and `exp`.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        if header.alg != Algorithm::HS256 {
            return Err(TokenError::Invalid(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        if header.kid.as_deref() != Some(self.kid.as_str()) {
            return Err(TokenError::UnknownKey);
        }
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid(e.to_string()),
            })
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    fn keys(secret: &str) -> TokenKeys {
        TokenKeys::new(
            &JwtSecret::new(secret.as_bytes().to_vec()).unwrap(),
            "iss-1",
            "aud-1",
            Duration::from_secs(900),
        )
    }

    #[test]
    fn issued_tokens_verify() {
        let k = keys(&"a".repeat(32));
        let token = k.issue("user-1", Role::Admin, "sid-1", true).unwrap();
        let claims = k.verify(&token).unwrap();
        assert_eq!(claims.sub, "user-1");
        assert_eq!(claims.role, Role::Admin);
        assert_eq!(claims.exp - claims.iat, 900);
    }

    #[test]
    fn expired_wrong_key_wrong_audience_and_tampered_tokens_are_refused() {
        let k = keys(&"a".repeat(32));
        let mut claims = k
            .verify(&k.issue("u", Role::User, "s", true).unwrap())
            .unwrap();
        claims.exp = now_secs() - 60;
        assert_eq!(
            k.verify(&k.sign(&claims).unwrap()),
            Err(TokenError::Expired)
        );

        let other = keys(&"b".repeat(32));
        assert_eq!(
            k.verify(&other.issue("u", Role::User, "s", true).unwrap()),
            Err(TokenError::UnknownKey)
        );

        let wrong_aud = TokenKeys::new(
            &JwtSecret::new("a".repeat(32).into_bytes()).unwrap(),
            "iss-1",
            "aud-2",
            Duration::from_secs(900),
        );
        assert!(matches!(
            k.verify(&wrong_aud.issue("u", Role::User, "s", true).unwrap()),
            Err(TokenError::Invalid(_))
        ));

        let token = k.issue("u", Role::User, "s", true).unwrap();
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut claims = k.verify(&token).unwrap();
        claims.role = Role::Admin;
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
        assert!(matches!(
            k.verify(&parts.join(".")),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn alg_none_is_refused() {
        let k = keys(&"a".repeat(32));
        let claims = k
            .verify(&k.issue("u", Role::Admin, "s", true).unwrap())
            .unwrap();
        let header = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"alg":"none","typ":"JWT","kid":"{}"}}"#,
            k.kid()
        ));
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
        assert!(matches!(
            k.verify(&format!("{header}.{body}.")),
            Err(TokenError::Invalid(_))
        ));
    }
}
