//! One rate limit for all of a transcriber's requests: a 429 seen by one lane pauses every lane
//! (until its Retry-After has passed), instead of each request hammering the limit on its own.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Default)]
pub struct RateGate {
    not_before: Mutex<Option<Instant>>,
}

impl RateGate {
    /// Waits until the gate is open.
    pub async fn wait(&self) {
        loop {
            let until = *self.not_before.lock().expect("not poisoned");
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t).await,
                _ => return,
            }
        }
    }

    /// Closes the gate for `pause` from now (never shortens a longer pause already set).
    pub fn hold(&self, pause: Duration) {
        let t = Instant::now() + pause;
        let mut g = self.not_before.lock().expect("not poisoned");
        if g.is_none_or(|old| old < t) {
            *g = Some(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_hold_pauses_every_waiter_and_never_shortens() {
        let gate = std::sync::Arc::new(RateGate::default());
        let start = Instant::now();
        gate.hold(Duration::from_secs(5));
        gate.hold(Duration::from_secs(2));
        let (a, b) = (gate.clone(), gate.clone());
        let (ta, tb) = tokio::join!(
            async move {
                a.wait().await;
                Instant::now()
            },
            async move {
                b.wait().await;
                Instant::now()
            }
        );
        assert_eq!(ta - start, Duration::from_secs(5));
        assert_eq!(tb - start, Duration::from_secs(5));
        gate.wait().await;
        assert_eq!(Instant::now() - start, Duration::from_secs(5));
    }
}
