//! Authentication: Argon2id password hashes (`password`), HS256 access tokens (`jwt`), account
//! links for email verification and password reset (`action_token`), opaque
//! rotating refresh tokens (`refresh`), the login rate limiter (`limiter`) and the request
//! extractors that turn a bearer token into a caller (`extract`).

pub mod action_token;
pub mod extract;
pub mod jwt;
pub mod limiter;
pub mod password;
pub mod refresh;

pub use extract::{AdminUser, AuthUser, UncheckedUser};
