//! Argon2id password hashing (PHC strings with the salt and parameters inside). Hashing is CPU
//! work of tens of milliseconds and 19 MiB of memory, so it runs on the blocking pool, never
//! on an async worker, and under [`PasswordWork`]'s bound: a flood of registrations or logins
//! waits in a bounded queue or is told to come back (429), never grows memory without end.
//!
//! The 19 MiB of working memory are allocated once per hash that may run at once and reused
//! ([`Memory`]): allocated per hash, glibc kept the freed blocks in the arenas of the blocking
//! pool's changing threads, and 300 registrations and 300 logins left ingest at 352–465 MiB
//! resident (`flash-sale --ingest-binary`, BENCHMARKS.md).

use std::cell::RefCell;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{
    Decimal, Ident, Output, ParamsString, PasswordHash, PasswordHasher, PasswordVerifier, Salt,
    SaltString,
};
use argon2::{Algorithm, Argon2, Block, Params, Version};

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
    memory: Arc<Memory>,
}

impl PasswordWork {
    pub fn new(concurrency: usize, queue: usize) -> Self {
        let concurrency = concurrency.max(1);
        PasswordWork {
            running: Arc::new(Semaphore::new(concurrency)),
            admitted: Arc::new(Semaphore::new(concurrency.saturating_add(queue))),
            memory: Arc::new(Memory::new(concurrency)),
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

    /// The PHC string of `password` under a fresh random salt, within the bound.
    pub async fn hash(&self, password: String) -> Result<Result<String, HashError>, Busy> {
        let _turn = self.turn().await?;
        let memory = Arc::clone(&self.memory);
        Ok(tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut OsRng);
            memory
                .hasher()
                .hash_password_customized(password.as_bytes(), None, None, params(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| HashError(e.to_string()))
        })
        .await
        .unwrap_or_else(|e| Err(HashError(e.to_string()))))
    }

    /// Whether `password` matches the stored PHC string, within the bound. A malformed stored
    /// hash never matches.
    pub async fn verify(&self, password: String, stored: String) -> Result<bool, Busy> {
        let _turn = self.turn().await?;
        let memory = Arc::clone(&self.memory);
        Ok(tokio::task::spawn_blocking(move || {
            PasswordHash::new(&stored).is_ok_and(|parsed| {
                memory
                    .hasher()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false))
    }
}

/// OWASP's minimum for Argon2id: m = 19 MiB, t = 2, p = 1.
fn params() -> Params {
    Params::new(19 * 1024, 2, 1, None).unwrap_or_default()
}

fn hasher() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params())
}

/// Argon2's working memory, kept for reuse: at most one block set per hash that may run at
/// once (more are never taken at the same time, so the pool never grows past that).
#[derive(Debug)]
struct Memory {
    free: Mutex<Vec<Vec<Block>>>,
    most: usize,
}

impl Memory {
    fn new(most: usize) -> Memory {
        Memory {
            free: Mutex::new(Vec::with_capacity(most)),
            most,
        }
    }

    /// A hasher holding a block set of this service's cost (reused, or new when none is free)
    /// until it is dropped.
    fn hasher(&self) -> ReusingHasher<'_> {
        // A poisoned lock only costs reuse: a fresh set is allocated.
        let reused = self.free.lock().ok().and_then(|mut free| free.pop());
        ReusingHasher {
            blocks: RefCell::new(
                reused.unwrap_or_else(|| vec![Block::default(); params().block_count()]),
            ),
            home: self,
        }
    }
}

/// Argon2 on a reused block set: the crate's own hashing and PHC encoding, and through
/// [`PasswordVerifier`]'s blanket implementation its own constant-time comparison; only the
/// working memory is ours.
struct ReusingHasher<'m> {
    blocks: RefCell<Vec<Block>>,
    home: &'m Memory,
}

impl Drop for ReusingHasher<'_> {
    fn drop(&mut self) {
        let blocks = std::mem::take(self.blocks.get_mut());
        if let Ok(mut free) = self.home.free.lock()
            && free.len() < self.home.most
        {
            free.push(blocks);
        }
    }
}

impl PasswordHasher for ReusingHasher<'_> {
    type Params = Params;

    fn hash_password_customized<'a>(
        &self,
        password: &[u8],
        algorithm: Option<Ident<'a>>,
        version: Option<Decimal>,
        params: Params,
        salt: impl Into<Salt<'a>>,
    ) -> argon2::password_hash::Result<PasswordHash<'a>> {
        // As `Argon2::hash_password_customized` does, with `hash_password_into_with_memory`.
        let algorithm = algorithm
            .map(Algorithm::try_from)
            .transpose()?
            .unwrap_or_default();
        let version = version
            .map(Version::try_from)
            .transpose()?
            .unwrap_or_default();
        let salt = salt.into();
        let mut salt_buffer = [0u8; 64];
        let salt_bytes = salt.decode_b64(&mut salt_buffer)?;
        let output_len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
        let argon2 = Argon2::new(algorithm, version, params.clone());
        let mut reused = self.blocks.borrow_mut();
        // A stored hash of a higher cost (never written here) gets memory for its check alone;
        // a lower cost uses the start of the set.
        let mut larger = Vec::new();
        let blocks = if reused.len() >= params.block_count() {
            reused.as_mut_slice()
        } else {
            larger.resize(params.block_count(), Block::default());
            larger.as_mut_slice()
        };
        let output = Output::init_with(output_len, |out| {
            Ok(argon2.hash_password_into_with_memory(password, salt_bytes, out, &mut *blocks)?)
        })?;
        Ok(PasswordHash {
            algorithm: algorithm.ident(),
            version: Some(version.into()),
            params: ParamsString::try_from(&params)?,
            salt: Some(salt),
            hash: Some(output),
        })
    }
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
        let work = PasswordWork::new(2, 0);
        let stored = work
            .hash("correct horse battery".into())
            .await
            .unwrap()
            .unwrap();
        assert!(
            stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{stored}"
        );
        assert!(
            work.verify("correct horse battery".into(), stored.clone())
                .await
                .unwrap()
        );
        assert!(!work.verify("wrong".into(), stored).await.unwrap());
        assert!(!work.verify("x".into(), "not a hash".into()).await.unwrap());
        assert!(dummy_hash().starts_with("$argon2id$"));
    }

    /// The reused memory changes nothing: hashes made with it verify with the crate's own
    /// hasher and the other way round, under the service's and under lower and higher costs
    /// (other algorithms and versions too); a wrong password fails either way, and the set
    /// kept keeps its size.
    #[test]
    fn reused_memory_hashes_as_the_crate_does() {
        let memory = Memory::new(1);
        let salt = SaltString::generate(&mut OsRng);
        let ours = memory
            .hasher()
            .hash_password_customized(b"pw", None, None, params(), &salt)
            .unwrap();
        let theirs = hasher().hash_password(b"pw", &salt).unwrap();
        assert_eq!(ours.to_string(), theirs.to_string());
        assert_eq!(memory.free.lock().unwrap().len(), 1, "the set went back");

        let cheap = Params::new(1024, 1, 1, None).unwrap();
        let argon2i = Argon2::new(Algorithm::Argon2i, Version::V0x10, cheap.clone());
        let stored = argon2i.hash_password(b"other", &salt).unwrap().to_string();
        let parsed = PasswordHash::new(&stored).unwrap();
        assert!(memory.hasher().verify_password(b"other", &parsed).is_ok());
        assert!(memory.hasher().verify_password(b"wrong", &parsed).is_err());
        let costly = Params::new(40 * 1024, 1, 1, None).unwrap();
        let argon2d = Argon2::new(Algorithm::Argon2d, Version::V0x13, costly);
        let stored = argon2d.hash_password(b"costly", &salt).unwrap().to_string();
        let parsed = PasswordHash::new(&stored).unwrap();
        assert!(memory.hasher().verify_password(b"costly", &parsed).is_ok());
        assert!(memory.hasher().verify_password(b"wrong", &parsed).is_err());
        let reused = memory.free.lock().unwrap();
        assert_eq!(reused.len(), 1);
        assert_eq!(
            reused[0].len(),
            params().block_count(),
            "the set kept its size"
        );
        drop(reused);

        let theirs = theirs.to_string();
        let parsed = PasswordHash::new(&theirs).unwrap();
        assert!(memory.hasher().verify_password(b"pw", &parsed).is_ok());
        let mine = ours.to_string();
        assert!(
            hasher()
                .verify_password(b"pw", &PasswordHash::new(&mine).unwrap())
                .is_ok()
        );
        assert!(
            hasher()
                .verify_password(b"pW", &PasswordHash::new(&mine).unwrap())
                .is_err()
        );
    }

    /// At most one set per hash that may run at once is kept.
    #[test]
    fn the_pool_keeps_at_most_one_set_per_running_hash() {
        let memory = Memory::new(1);
        let (a, b) = (memory.hasher(), memory.hasher());
        let salt = SaltString::generate(&mut OsRng);
        for h in [&a, &b] {
            h.hash_password_customized(b"pw", None, None, params(), &salt)
                .unwrap();
        }
        drop((a, b));
        assert_eq!(memory.free.lock().unwrap().len(), 1);
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
