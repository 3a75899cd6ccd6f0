//! The wall clock every record's timestamps (`occurred_at`, `failed_at`, ...) are read from:
//! milliseconds since the Unix epoch, UTC. Decision cores never call it; their runtimes pass
//! the time in.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in milliseconds since the Unix epoch; 0 for a clock set before 1970, `i64::MAX` past
/// the year 292 million.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    #[test]
    fn now_is_after_2020() {
        assert!(super::now_millis() > 1_577_836_800_000);
    }
}
