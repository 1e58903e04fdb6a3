//! Time as CRI reports it and deadlines that never overflow.

use std::time::{Duration, Instant};

/// Now, in nanoseconds since the Unix epoch (CRI's timestamps).
pub fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

/// The instant `timeout` from now, or None when that lies beyond what
/// `Instant` can hold (a client's "wait for ever", such as a grace period
/// of `i64::MAX` seconds).
pub fn deadline(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// True once `deadline` has passed (never for no deadline).
pub fn passed(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_timeouts_mean_no_deadline() {
        assert!(deadline(Duration::from_secs(u64::MAX)).is_none());
        assert!(!passed(deadline(Duration::from_secs(i64::MAX as u64))));
        assert!(passed(deadline(Duration::ZERO)));
        assert!(now_ns() > 1_600_000_000_000_000_000);
    }
}
