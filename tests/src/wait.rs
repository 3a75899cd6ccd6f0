//! Bounded waiting: poll a condition until it holds or a deadline passes, then fail loudly with
//! what was awaited. Tests never sleep for a fixed time and hope.

use std::future::Future;
use std::time::{Duration, Instant};

/// Calls `probe` until it returns `Some`, backing off from 20 ms to 500 ms between calls.
/// Returns the value, or an error naming `what` once `timeout` has passed.
pub async fn until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(20);
    loop {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        let now = Instant::now();
        if now >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_value_once_the_condition_holds() {
        let mut calls = 0;
        let value = until("third call", Duration::from_secs(5), || {
            calls += 1;
            let done = calls >= 3;
            async move { done.then_some(42) }
        })
        .await
        .unwrap();
        assert_eq!(value, 42);
        assert_eq!(calls, 3);
    }

    #[tokio::test]
    async fn fails_naming_what_was_awaited() {
        let err = until(
            "a condition that never holds",
            Duration::from_millis(50),
            || async { None::<()> },
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("a condition that never holds"));
    }
}
