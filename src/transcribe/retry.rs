//! Retrying calls to remote APIs: exponential backoff with full jitter, honouring Retry-After.

use std::time::Duration;

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in total, the first included.
    pub max_attempts: u32,
    /// Upper bound of the first backoff; doubles with every attempt.
    pub base: Duration,
    /// No backoff is longer than this (unless the server's Retry-After asks for more).
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The pause before attempt `attempt + 1` (attempt counts from 1): a uniformly random time up
    /// to `min(cap, base * 2^(attempt-1))` ("full jitter", so many workers hitting one rate limit
    /// spread out), but never shorter than the server's Retry-After.
    pub fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.cap);
        let jitter = exp.mul_f64(fastrand::f64());
        retry_after.map_or(jitter, |ra| ra.max(jitter))
    }
}

/// Parses a Retry-After header value: delay-seconds (HTTP-dates are rare from APIs and ignored).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let secs: f64 = value.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_grows() {
        let p = RetryPolicy {
            max_attempts: 10,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        for _ in 0..200 {
            assert!(p.backoff(1, None) <= Duration::from_millis(100));
            assert!(p.backoff(3, None) <= Duration::from_millis(400));
            assert!(p.backoff(30, None) <= Duration::from_secs(1));
        }
        // Full jitter: across many draws, later attempts wait longer on average.
        let mean = |a| {
            (0..500)
                .map(|_| p.backoff(a, None).as_secs_f64())
                .sum::<f64>()
                / 500.0
        };
        assert!(mean(4) > 2.0 * mean(1));
    }

    #[test]
    fn retry_after_is_a_floor() {
        let p = RetryPolicy::default();
        let ra = Some(Duration::from_secs(7));
        for _ in 0..100 {
            assert!(p.backoff(1, ra) >= Duration::from_secs(7));
        }
        assert_eq!(parse_retry_after(" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }
}
