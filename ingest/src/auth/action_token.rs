//! Account links: signed, expiring tokens that verify an email address or reset a password.
//! HS256 under the access-token secret, each purpose with an audience of its own, so none is
//! ever accepted as an access token, nor one purpose as the other. A reset token carries a
//! fingerprint of the password hash it was issued for: it works once (the reset changes the
//! hash) and never after the password changed another way. Time is passed in.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::JwtSecret;

/// How long a verification link works.
pub const VERIFY_EMAIL_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a password reset link works.
pub const RESET_PASSWORD_TTL: Duration = Duration::from_secs(3600);

/// What a link may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    VerifyEmail,
    ResetPassword,
}

impl Purpose {
    fn audience_suffix(self) -> &'static str {
        match self {
            Purpose::VerifyEmail => "verify-email",
            Purpose::ResetPassword => "reset-password",
        }
    }

    pub fn ttl(self) -> Duration {
        match self {
            Purpose::VerifyEmail => VERIFY_EMAIL_TTL,
            Purpose::ResetPassword => RESET_PASSWORD_TTL,
        }
    }
}

/// What an account link says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionClaims {
    pub iss: String,
    pub aud: String,
    /// The account (user id).
    pub sub: String,
    /// The address the link was sent to: a verification counts only while it is the account's.
    pub email: String,
    /// Reset links: [`password_fingerprint`] of the hash the link was issued for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pwf: Option<String>,
    pub iat: u64,
    pub exp: u64,
}

/// Why a link was refused (all answer the same 400: the reason goes to the log).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionTokenError {
    #[error("the link is malformed, forged or for another purpose: {0}")]
    Invalid(String),
    #[error("the link has expired")]
    Expired,
}

/// Signs and checks account links.
#[derive(Clone)]
pub struct ActionKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    issuer: String,
    audience: String,
}

impl std::fmt::Debug for ActionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActionKeys")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// A short digest of a password hash (the hash itself never leaves the store).
pub fn password_fingerprint(password_hash: &str) -> String {
    hex::encode(&Sha256::digest(password_hash.as_bytes())[..12])
}

impl ActionKeys {
    pub fn new(secret: &JwtSecret, issuer: &str, audience: &str) -> Self {
        ActionKeys {
            encoding: EncodingKey::from_secret(secret.bytes()),
            decoding: DecodingKey::from_secret(secret.bytes()),
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        }
    }

    fn audience_for(&self, purpose: Purpose) -> String {
        format!("{}:{}", self.audience, purpose.audience_suffix())
    }

    /// A link token for `purpose`, issued at `now_secs`.
    pub fn issue(
        &self,
        purpose: Purpose,
        user_id: &str,
        email: &str,
        pwf: Option<String>,
        now_secs: u64,
    ) -> Result<String, ActionTokenError> {
        let claims = ActionClaims {
            iss: self.issuer.clone(),
            aud: self.audience_for(purpose),
            sub: user_id.to_owned(),
            email: email.to_owned(),
            pwf,
            iat: now_secs,
            exp: now_secs + purpose.ttl().as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| ActionTokenError::Invalid(e.to_string()))
    }

    /// Checks signature (HS256 only), issuer, the purpose's audience and expiry at `now_secs`.
    pub fn verify(
        &self,
        purpose: Purpose,
        token: &str,
        now_secs: u64,
    ) -> Result<ActionClaims, ActionTokenError> {
        if token.len() > 2048 {
            return Err(ActionTokenError::Invalid("too long".to_owned()));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[self.audience_for(purpose)]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // Expiry is checked below against the time passed in.
        validation.validate_exp = false;
        let claims = jsonwebtoken::decode::<ActionClaims>(token, &self.decoding, &validation)
            .map_err(|e| ActionTokenError::Invalid(e.to_string()))?
            .claims;
        if claims.exp <= now_secs {
            return Err(ActionTokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn keys(secret: &str) -> ActionKeys {
        ActionKeys::new(
            &JwtSecret::new(secret.as_bytes().to_vec()).unwrap(),
            "iss",
            "api",
        )
    }

    #[test]
    fn a_link_works_for_its_purpose_until_it_expires() {
        let k = keys("0123456789abcdef0123456789abcdef-action");
        let token = k
            .issue(Purpose::VerifyEmail, "u-1", "ann@example.com", None, NOW)
            .unwrap();
        let claims = k.verify(Purpose::VerifyEmail, &token, NOW + 60).unwrap();
        assert_eq!(
            (claims.sub.as_str(), claims.email.as_str()),
            ("u-1", "ann@example.com")
        );
        assert_eq!(
            k.verify(
                Purpose::VerifyEmail,
                &token,
                NOW + VERIFY_EMAIL_TTL.as_secs()
            ),
            Err(ActionTokenError::Expired)
        );
        assert!(matches!(
            k.verify(Purpose::ResetPassword, &token, NOW),
            Err(ActionTokenError::Invalid(_))
        ));
        let other = keys("another-secret-of-at-least-32-bytes-long");
        assert!(matches!(
            other.verify(Purpose::VerifyEmail, &token, NOW),
            Err(ActionTokenError::Invalid(_))
        ));
        let reset = k
            .issue(
                Purpose::ResetPassword,
                "u-1",
                "ann@example.com",
                Some(password_fingerprint("$argon2id$old")),
                NOW,
            )
            .unwrap();
        let claims = k.verify(Purpose::ResetPassword, &reset, NOW).unwrap();
        assert_eq!(claims.pwf, Some(password_fingerprint("$argon2id$old")));
        assert_ne!(
            password_fingerprint("$argon2id$old"),
            password_fingerprint("$argon2id$new")
        );
        assert_eq!(
            k.verify(
                Purpose::ResetPassword,
                &reset,
                NOW + RESET_PASSWORD_TTL.as_secs()
            ),
            Err(ActionTokenError::Expired)
        );
    }
}
