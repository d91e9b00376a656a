//! One retry policy for every remote adapter (OpenAI, Gemini, PostgREST, S3): which replies are
//! worth another attempt, how long to wait (exponential backoff with full jitter, never shorter
//! than the server's `retry-after-ms` / `Retry-After`), and the loop that does it.
//!
//! Each adapter only classifies one attempt ([`Attempt`]) and names its final error; the rest
//! is here, so a 408 or a Retry-After means the same to every dependency. S3 goes through
//! aws-sdk-s3's own retry loop, configured from the same policy ([`RetryPolicy::sdk_config`]).

use std::future::Future;
use std::time::Duration;

use crate::error::{Error, Result};

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

impl RetryPolicy {
    /// Runs `attempt` until it is done, fails for good, or the attempts are spent; between
    /// attempts it counts a retry of `dependency` (`audio_worker_retries_total`), calls
    /// `on_pause` with the pause (OpenAI holds its shared rate gate for it) and sleeps.
    /// `give_up` names the error once the attempts are spent.
    pub async fn run<T, F, Fut>(
        &self,
        dependency: &'static str,
        mut attempt: F,
        mut on_pause: impl FnMut(&Transient, Duration),
        give_up: impl FnOnce(u32, Transient) -> Error,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Attempt<T>>,
    {
        let attempts = self.max_attempts.max(1);
        let mut n = 1;
        loop {
            let transient = match attempt().await {
                Attempt::Done(value) => return Ok(value),
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry(t) => t,
            };
            if n >= attempts {
                return Err(give_up(n, transient));
            }
            crate::telemetry::count_retry(dependency);
            let pause = self.backoff(n, transient.retry_after);
            on_pause(&transient, pause);
            tokio::time::sleep(pause).await;
            n += 1;
        }
    }

    /// The same policy for aws-sdk-s3's standard retry loop (which already retries throttling,
    /// 5xx and transport errors and never a 403 or 404).
    pub fn sdk_config(&self) -> aws_sdk_s3::config::retry::RetryConfig {
        aws_sdk_s3::config::retry::RetryConfig::standard()
            .with_max_attempts(self.max_attempts.max(1))
            .with_initial_backoff(self.base)
            .with_max_backoff(self.cap)
    }
}

/// How one attempt ended.
#[derive(Debug)]
pub enum Attempt<T> {
    Done(T),
    /// Retrying cannot help (a 4xx that will not heal, a safety block, a bad key).
    Fail(Error),
    /// Worth another attempt.
    Retry(Transient),
}

/// Why an attempt is worth repeating.
#[derive(Debug, Clone, Default)]
pub struct Transient {
    /// For the log and the final error (already cut and redacted by the adapter).
    pub reason: String,
    /// The server's own wait, if it named one.
    pub retry_after: Option<Duration>,
    /// A 429 rate limit (OpenAI reports an exhausted budget of these as its own code).
    pub rate_limited: bool,
}

impl Transient {
    pub fn new(reason: impl Into<String>) -> Transient {
        Transient {
            reason: reason.into(),
            ..Transient::default()
        }
    }
}

/// Whether an HTTP status is worth another attempt: 408 (the server timed out waiting), 429 (a
/// rate limit) and 5xx (an outage). Every other status is the request itself, and permanent.
pub fn transient_status(status: u16) -> bool {
    status == 408 || status == 429 || (500..=599).contains(&status)
}

/// The server's wait from a reply's headers: `retry-after-ms` (milliseconds, OpenAI) first, else
/// `Retry-After` in seconds (HTTP-dates are rare from APIs and ignored).
pub fn retry_after_of(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    retry_after_from(|name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    })
}

/// [`retry_after_of`] over any header lookup (postgrest brings an older `http` crate).
pub fn retry_after_from(header: impl Fn(&str) -> Option<String>) -> Option<Duration> {
    let ms = header("retry-after-ms")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
        .map(|ms| Duration::from_secs_f64(ms.min(3_600_000.0) / 1000.0));
    ms.or_else(|| header("retry-after").and_then(|v| parse_retry_after(&v)))
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
    fn transient_statuses_are_408_429_and_5xx() {
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert!(transient_status(s), "{s}");
        }
        for s in [200, 400, 401, 403, 404, 409, 413, 422] {
            assert!(!transient_status(s), "{s}");
        }
    }

    #[test]
    fn retry_after_ms_comes_first() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after_of(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", "350".parse().unwrap());
        assert_eq!(retry_after_of(&h), Some(Duration::from_millis(350)));
        h.insert("retry-after-ms", "soon".parse().unwrap());
        assert_eq!(retry_after_of(&h), Some(Duration::from_secs(2)));
    }

    #[tokio::test]
    async fn run_retries_transients_then_gives_up_with_the_last_reason() {
        let p = RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(2),
        };
        let mut calls = 0;
        let mut pauses = 0;
        let err = p
            .run(
                "test",
                || {
                    calls += 1;
                    let n = calls;
                    async move { Attempt::<()>::Retry(Transient::new(format!("try {n}"))) }
                },
                |_, _| pauses += 1,
                |n, last| Error::new(crate::ErrorCode::Internal, format!("{n}: {}", last.reason)),
            )
            .await
            .unwrap_err();
        assert_eq!((calls, pauses, err.message.as_str()), (3, 2, "3: try 3"));
        let done = p
            .run(
                "test",
                || async { Attempt::Done(7) },
                |_, _| {},
                |_, _| unreachable!(),
            )
            .await;
        assert_eq!(done, Ok(7));
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
