//! Rate-limited logging of per-frame failures: counted, logged at most once per interval, skipped.

use std::time::{Duration, Instant};

/// Logs a per-frame failure at most once per interval, with the count since the last line.
pub struct RateLimitedLog {
    what: &'static str,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            last: None,
            suppressed: 0,
        }
    }
    /// `Some(lines suppressed since the last one)` when a line may be written at `now` (one per 5 s).
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(5))
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }

    pub fn warn(&mut self, err: &dyn std::fmt::Display) {
        match self.admit(Instant::now()) {
            None => {}
            Some(0) => log::warn!("{}: {err}", self.what),
            Some(n) => log::warn!("{}: {err} (and {n} more since the last report)", self.what),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_one_line_per_5_s_and_counts_the_rest() {
        let mut log = RateLimitedLog::new("x");
        let t0 = Instant::now();
        assert_eq!(log.admit(t0), Some(0));
        assert_eq!(log.admit(t0 + Duration::from_secs(1)), None);
        assert_eq!(log.admit(t0 + Duration::from_millis(4999)), None);
        assert_eq!(log.admit(t0 + Duration::from_secs(5)), Some(2));
        assert_eq!(log.admit(t0 + Duration::from_secs(6)), None);
    }
}
