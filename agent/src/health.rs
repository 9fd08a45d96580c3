//! What `GET /healthz` reports. Each part of the agent sets or clears its
//! own problem; the engine's progress is kept as timestamps so a wedged
//! engine shows up even though it cannot report anything itself.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::notification::time::now_ms;

/// How long one engine batch may run before the agent reports itself stuck.
pub const BATCH_STALL: Duration = Duration::from_secs(30);

#[derive(Clone, Default)]
pub struct Health {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("reasons", &self.reasons())
            .finish()
    }
}

#[derive(Default)]
struct Inner {
    problems: Mutex<BTreeMap<&'static str, String>>,
    /// When the engine started the batch it is in (0: idle).
    batch_started_ms: AtomicI64,
    /// When the engine last finished a re-check, and how often it should.
    last_recheck_ms: AtomicI64,
    recheck_every_ms: AtomicI64,
}

impl Health {
    /// Records (or replaces) the problem of one part of the agent.
    pub fn set(&self, part: &'static str, problem: impl Into<String>) {
        self.problems().insert(part, problem.into());
    }

    pub fn clear(&self, part: &'static str) {
        self.problems().remove(part);
    }

    fn problems(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, String>> {
        self.inner
            .problems
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The engine expects a re-check every `every`.
    pub fn expect_rechecks(&self, every: Duration) {
        self.inner
            .recheck_every_ms
            .store(every.as_millis() as i64, Ordering::Relaxed);
        self.inner
            .last_recheck_ms
            .store(now_ms(), Ordering::Relaxed);
    }

    pub fn batch_started(&self) {
        self.inner
            .batch_started_ms
            .store(now_ms(), Ordering::Relaxed);
    }

    pub fn batch_finished(&self, had_recheck: bool) {
        self.inner.batch_started_ms.store(0, Ordering::Relaxed);
        if had_recheck {
            self.inner
                .last_recheck_ms
                .store(now_ms(), Ordering::Relaxed);
        }
    }

    /// Every current problem, one line each; empty when healthy.
    pub fn reasons(&self) -> Vec<String> {
        let now = now_ms();
        let mut reasons: Vec<String> = self
            .problems()
            .iter()
            .map(|(part, p)| format!("{part}: {p}"))
            .collect();
        let started = self.inner.batch_started_ms.load(Ordering::Relaxed);
        if started > 0 && now - started > BATCH_STALL.as_millis() as i64 {
            reasons.push(format!(
                "engine: one batch has been running for {} s (a plugin or the store is stuck)",
                (now - started) / 1000
            ));
        }
        let every = self.inner.recheck_every_ms.load(Ordering::Relaxed);
        let last = self.inner.last_recheck_ms.load(Ordering::Relaxed);
        // Two missed periods plus slack for a long batch.
        let allowed = every.saturating_mul(2) + BATCH_STALL.as_millis() as i64;
        if every > 0 && now - last > allowed {
            reasons.push(format!(
                "engine: no re-check finished for {} s (expected every {} s)",
                (now - last) / 1000,
                every / 1000
            ));
        }
        reasons
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_set_cleared_and_listed() {
        let h = Health::default();
        assert!(h.reasons().is_empty());
        h.set("share", "not mounted");
        h.set("store", "database replaced");
        assert_eq!(
            h.reasons(),
            ["share: not mounted", "store: database replaced"]
        );
        h.clear("share");
        assert_eq!(h.reasons(), ["store: database replaced"]);
    }

    #[test]
    fn a_long_batch_is_a_problem() {
        let h = Health::default();
        h.batch_started();
        assert!(h.reasons().is_empty());
        h.inner
            .batch_started_ms
            .store(now_ms() - 31_000, Ordering::Relaxed);
        assert!(h.reasons()[0].contains("one batch has been running"));
        h.batch_finished(true);
        assert!(h.reasons().is_empty());
    }
}
