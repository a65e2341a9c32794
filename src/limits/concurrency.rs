//! Per-route cap on requests in flight (`max_concurrent_requests`).

use prometheus::IntGauge;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Requests in flight on one route, with an optional cap, mirrored in a gauge.
#[derive(Debug)]
pub struct InFlightCounter {
    /// Shared by the counters of one route name across reloads.
    current: Arc<AtomicU64>,
    max: Option<u64>,
    gauge: IntGauge,
}

/// A request counted in flight until dropped.
#[derive(Debug)]
pub struct InFlightPermit {
    counter: Arc<InFlightCounter>,
}

impl InFlightCounter {
    pub fn new(max: Option<u64>, gauge: IntGauge) -> Self {
        InFlightCounter {
            current: Arc::new(AtomicU64::new(0)),
            max,
            gauge,
        }
    }

    /// Returns a counter with a new cap that shares this one's count, for the same route in
    /// a reloaded config.
    pub fn continued(&self, max: Option<u64>) -> Self {
        InFlightCounter {
            current: self.current.clone(),
            max,
            gauge: self.gauge.clone(),
        }
    }

    pub fn current(&self) -> u64 {
        self.current.load(Ordering::Relaxed)
    }

    /// Counts a request in, or returns None when the cap is reached. The increment and the
    /// check are one atomic step, so the cap applies across all worker threads.
    pub fn try_acquire(self: &Arc<Self>) -> Option<InFlightPermit> {
        let max = self.max.unwrap_or(u64::MAX);
        self.current
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        self.gauge.inc();
        Some(InFlightPermit {
            counter: self.clone(),
        })
    }
}

impl Drop for InFlightPermit {
    fn drop(&mut self) {
        self.counter.current.fetch_sub(1, Ordering::AcqRel);
        self.counter.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_holds_and_releases() {
        let counter = Arc::new(InFlightCounter::new(
            Some(2),
            IntGauge::new("t", "t").unwrap(),
        ));
        let first = counter.try_acquire();
        let second = counter.try_acquire();
        assert!(first.is_some());
        assert!(second.is_some());
        assert!(counter.try_acquire().is_none());
        drop(first);
        assert!(counter.try_acquire().is_some());
    }

    #[test]
    fn continued_counter_shares_count() {
        let old = Arc::new(InFlightCounter::new(
            Some(2),
            IntGauge::new("t", "t").unwrap(),
        ));
        let started_before_reload = old.try_acquire();
        let new = Arc::new(old.continued(Some(1)));
        assert_eq!(new.current(), 1);
        assert!(new.try_acquire().is_none());
        drop(started_before_reload);
        assert_eq!(new.current(), 0);
        assert!(new.try_acquire().is_some());
    }

    #[test]
    fn uncapped_counts() {
        let counter = Arc::new(InFlightCounter::new(None, IntGauge::new("t", "t").unwrap()));
        let permits: Vec<_> = (0..5).map(|_| counter.try_acquire().unwrap()).collect();
        assert_eq!(counter.current(), 5);
        drop(permits);
        assert_eq!(counter.current(), 0);
    }
}
