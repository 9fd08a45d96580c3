//! The one retry delay of the agent: exponential with full jitter, capped,
//! optionally limited in attempts. Every loop that retries (the engine on a
//! conflict, the DynamoDB table, the dispatchers, the EventBridge sink, the
//! SQS source) takes its delays from here, and waits on the agent's
//! [`CancellationToken`] so no retry outlives a shutdown.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    attempt: u32,
    limit: Option<u32>,
}

impl Backoff {
    /// Delays from about `first`, doubling up to `max`, with no limit.
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            attempt: 0,
            limit: None,
        }
    }

    /// Gives up (no next delay) after `attempts` delays.
    pub fn limited(mut self, attempts: u32) -> Backoff {
        self.limit = Some(attempts);
        self
    }

    /// How many delays were handed out.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Starts over (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The next delay, or `None` once the limit is reached. Jittered
    /// between half and all of the exponential step, so agents contending
    /// for one thing fall out of step.
    pub fn next_delay(&mut self) -> Option<Duration> {
        if self.limit.is_some_and(|l| self.attempt >= l) {
            return None;
        }
        let step = self
            .first
            .saturating_mul(1 << self.attempt.min(16))
            .min(self.max);
        self.attempt += 1;
        let half = step / 2;
        Some(half + half.mul_f64(rand::random::<f64>()))
    }

    /// Sleeps the next delay. False when the limit is reached or `cancel`
    /// fires first: stop retrying.
    pub async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        let Some(delay) = self.next_delay() else {
            return false;
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = cancel.cancelled() => false,
        }
    }

    /// [`Backoff::wait`] for a thread that is not async (the engine).
    pub fn wait_blocking(&mut self) -> bool {
        match self.next_delay() {
            Some(delay) => {
                std::thread::sleep(delay);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_within_jitter_and_stop_at_the_limit() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400)).limited(5);
        let delays: Vec<Duration> = std::iter::from_fn(|| b.next_delay()).collect();
        assert_eq!(delays.len(), 5);
        for (d, step) in delays.iter().zip([100u64, 200, 400, 400, 400]) {
            let step = Duration::from_millis(step);
            assert!(*d >= step / 2 && *d <= step, "{d:?} for a step of {step:?}");
        }
        b.reset();
        assert!(b.next_delay().is_some());
    }

    #[tokio::test]
    async fn a_cancelled_wait_ends_at_once() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let mut b = Backoff::new(Duration::from_secs(3600), Duration::from_secs(3600));
        assert!(!b.wait(&cancel).await);
    }
}
