//! Argon2id password hashing (PHC strings with the salt and parameters inside). Hashing is CPU
//! work of tens of milliseconds and 19 MiB of memory, so it runs on the blocking pool, never
//! on an async worker, and under [`PasswordWork`]'s bound: a flood of registrations or logins
//! waits in a bounded queue or is told to come back (429), never grows memory without end.

use std::sync::Arc;

use tokio::sync::Semaphore;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Hashing failed (never for a valid input; the blocking pool could also be gone).
#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

/// The hashing capacity is taken: the caller answers 429 and the client retries later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many password checks in progress")]
pub struct Busy;

/// At most `concurrency` hashes at once and `queue` more waiting for their turn; a request
/// beyond that is refused at once with [`Busy`].
#[derive(Debug)]
pub struct PasswordWork {
    running: Arc<Semaphore>,
    admitted: Arc<Semaphore>,
}

impl PasswordWork {
    pub fn new(concurrency: usize, queue: usize) -> Self {
        let concurrency = concurrency.max(1);
        PasswordWork {
            running: Arc::new(Semaphore::new(concurrency)),
            admitted: Arc::new(Semaphore::new(concurrency.saturating_add(queue))),
        }
    }

    /// Holds a place in the queue, then a turn to run.
    async fn turn(&self) -> Result<[tokio::sync::OwnedSemaphorePermit; 2], Busy> {
        let place = Arc::clone(&self.admitted)
            .try_acquire_owned()
            .map_err(|_| Busy)?;
        // Never closed: the semaphores live as long as `self`.
        let turn = Arc::clone(&self.running)
            .acquire_owned()
            .await
            .map_err(|_| Busy)?;
        Ok([place, turn])
    }

    /// [`hash`] within the bound.
    pub async fn hash(&self, password: String) -> Result<Result<String, HashError>, Busy> {
        let _turn = self.turn().await?;
        Ok(hash(password).await)
    }

    /// [`verify`] within the bound.
    pub async fn verify(&self, password: String, stored: String) -> Result<bool, Busy> {
        let _turn = self.turn().await?;
        Ok(verify(password, stored).await)
    }
}

fn hasher() -> Argon2<'static> {
    // OWASP's minimum for Argon2id: m = 19 MiB, t = 2, p = 1.
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// The PHC string of `password` under a fresh random salt.
pub async fn hash(password: String) -> Result<String, HashError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        hasher()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| HashError(e.to_string()))
    })
    .await
    .map_err(|e| HashError(e.to_string()))?
}

/// Whether `password` matches the stored PHC string. A malformed stored hash never matches.
pub async fn verify(password: String, stored: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&stored)
            .map(|parsed| {
                hasher()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

/// A valid hash of a random password, verified against when the account does not exist, so
/// a login takes as long for an unknown user as for a wrong password.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        hasher()
            .hash_password(uuid::Uuid::new_v4().to_string().as_bytes(), &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_and_verify() {
        let stored = hash("correct horse battery".into()).await.unwrap();
        assert!(stored.starts_with("$argon2id$"), "{stored}");
        assert!(verify("correct horse battery".into(), stored.clone()).await);
        assert!(!verify("wrong".into(), stored).await);
        assert!(!verify("x".into(), "not a hash".into()).await);
        assert!(dummy_hash().starts_with("$argon2id$"));
    }

    /// One running, one waiting: a third caller is refused at once, and a place frees up when
    /// a hash ends.
    #[tokio::test]
    async fn the_work_is_bounded_and_the_overflow_refused() {
        let work = Arc::new(PasswordWork::new(1, 1));
        let [place, turn] = work.turn().await.unwrap();
        let waiting = {
            let work = Arc::clone(&work);
            tokio::spawn(async move { work.hash("a long password".into()).await })
        };
        // Let the second caller take its place in the queue.
        while work.admitted.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            work.verify("x".into(), dummy_hash().into()).await,
            Err(Busy)
        );
        drop((place, turn));
        let hashed = waiting.await.unwrap().unwrap().unwrap();
        assert!(hashed.starts_with("$argon2id$"));
        assert_eq!(work.verify("x".into(), hashed).await, Ok(false));
    }
}
