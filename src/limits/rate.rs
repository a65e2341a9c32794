//! Per-route rate limits: fixed windows counted in a count-min sketch.
//!
//! Algorithm. Time is cut into fixed windows of `per`, counted from the moment the limiter was
//! built (config load). A request is admitted while the number of requests its key made in the
//! current window, this one included, is at most `requests`. Counts live in
//! pingora-limits' [`Estimator`], a count-min sketch of fixed size, so memory does not grow
//! with the number of keys.
//!
//! Error bounds:
//! - Within one window, a key is never admitted more than `requests` times. The sketch never
//!   under-counts, and increments of one key are serialized by a striped lock, so each request
//!   of a key gets a distinct, increasing count.
//! - Across a window edge, a client can send `requests` at the end of one window and
//!   `requests` again at the start of the next: up to twice the limit within a span shorter
//!   than `per`. Averaged over any two whole windows, it gets at most the limit per window.
//! - NOTE: the sketch has a fixed size, so a client that sends many distinct keys in one
//!   window (many `header:` values, or many IPv6 source addresses) raises every counter and
//!   gets other keys rejected early for the rest of that window; see docs/limits.md.
//! - The sketch can over-count a key whose counters are shared with other keys in every row,
//!   so such a key can be rejected early (never admitted late). Its over-count is the smallest,
//!   over the rows, of the other keys' requests in its counter. With K keys active in a window,
//!   a counter is shared with about K / SLOTS other keys. For 1,000 keys the chance that all
//!   four rows are shared is about 1e-5. For 100,000 keys nearly every key shares, each of its
//!   counters with about six other keys, and the least-shared counter sets its count.
//!
//! pingora-limits' own `Rate` is not used because its window switch resets the previous
//! window's counters while other threads may still increment them, which loses counts, and
//! its consistency check (`assert!(new >= now - 1000)` in `Rate::maybe_reset`, version 0.9.1)
//! underflows and panics when two threads switch a window shorter than 1 s during the first
//! second after the limiter is built.

use pingora_limits::estimator::Estimator;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Rows of the sketch (independent hash functions).
const HASHES: usize = 4;
/// Counters per row. 4 rows of 16,384 counters of 8 bytes are 512 KiB per window slot.
const SLOTS: usize = 16_384;
/// Locks that serialize increments of keys hashing to the same stripe.
const STRIPES: usize = 256;

/// The outcome of one rate-limit check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    pub allowed: bool,
    /// Requests this key may still make in the current window.
    pub remaining: u64,
    /// Time until the current window ends.
    pub reset_after: Duration,
}

pub struct RateLimiter {
    limit: u64,
    window: Duration,
    origin: Instant,
    /// Window w counts in slot w % 3, so the slot of the next window can be cleared ahead of
    /// time while the current and the previous windows' stragglers still use theirs.
    slots: [Estimator; 3],
    /// Index of the latest window whose slot has been cleared for it.
    cleared_for: AtomicU64,
    /// Index of the latest window whose clearing has finished.
    ready_for: AtomicU64,
    stripes: Box<[Mutex<()>]>,
    /// Hashes keys to stripes; aHash, as pingora-limits uses for the sketch itself.
    stripe_hasher: ahash::RandomState,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("limit", &self.limit)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// Builds a limiter admitting `limit` requests per key per `window`.
    pub fn new(limit: u64, window: Duration) -> Self {
        RateLimiter {
            limit,
            window,
            origin: Instant::now(),
            slots: std::array::from_fn(|_| Estimator::new(HASHES, SLOTS)),
            cleared_for: AtomicU64::new(1),
            ready_for: AtomicU64::new(1),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            stripe_hasher: ahash::RandomState::new(),
        }
    }

    /// Counts a request of `key` and decides whether it is admitted.
    /// Requests admitted per key and window.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    pub fn check<K: Hash + ?Sized>(&self, key: &K) -> RateDecision {
        self.check_at(key, self.origin.elapsed())
    }

    /// Same as [`Self::check`] at `elapsed` time since the limiter was built; tests drive
    /// time with it.
    fn check_at<K: Hash + ?Sized>(&self, key: &K, elapsed: Duration) -> RateDecision {
        let window_nanos = self.window.as_nanos().max(1);
        let index = (elapsed.as_nanos() / window_nanos) as u64;
        self.prepare(index);

        let stripe = self.stripe_hasher.hash_one(key) as usize % STRIPES;
        let count = {
            // A poisoned lock only means another thread panicked while holding it; the
            // counters are atomics and stay consistent, so keep counting.
            let _serialized = self.stripes[stripe]
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            self.slots[(index % 3) as usize].incr(key, 1)
        };
        let count = count.max(0) as u64;
        let window_end = Duration::from_nanos(((index + 1) as u128 * window_nanos) as u64);
        RateDecision {
            allowed: count <= self.limit,
            remaining: self.limit.saturating_sub(count),
            reset_after: window_end.saturating_sub(elapsed),
        }
    }

    /// Makes sure the slots of window `index` and of the next window are cleared.
    ///
    /// Normally the first request of a window clears the next window's slot, which no request
    /// uses yet. After an idle gap the current window's slot may still hold counts from three
    /// windows ago; it is cleared then too, and requests of this window wait for that to
    /// finish (microseconds in a release build) so that none of their counts is wiped.
    fn prepare(&self, index: u64) {
        let cleared = self.cleared_for.load(Ordering::Acquire);
        if cleared > index {
            if self.ready_for.load(Ordering::Acquire) < index {
                self.wait_ready(index);
            }
            return;
        }
        if self
            .cleared_for
            .compare_exchange(cleared, index + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            if cleared < index {
                // Idle gap: the current window's slot was never cleared for it.
                self.slots[(index % 3) as usize].reset();
            }
            self.slots[((index + 1) % 3) as usize].reset();
            self.ready_for.fetch_max(index + 1, Ordering::AcqRel);
        } else {
            self.wait_ready(index);
        }
    }

    fn wait_ready(&self, index: u64) {
        // Clearing two slots takes microseconds in a release build (more in a debug build, or
        // when the clearing thread is descheduled). Counting before it finishes would let the
        // clearing wipe this count, so wait for it: spin briefly, then yield the thread.
        // This happens only on the first requests of a window after an idle gap.
        let mut spins = 0u32;
        while self.ready_for.load(Ordering::Acquire) < index {
            if spins < 1_000 {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn admits_limit_per_window() {
        let limiter = RateLimiter::new(3, Duration::from_secs(60));
        let decisions: Vec<bool> = (0..5).map(|_| limiter.check("a").allowed).collect();
        assert_eq!(decisions, [true, true, true, false, false]);
        assert!(limiter.check("b").allowed, "keys are independent");
    }

    #[test]
    fn remaining_counts_down() {
        let limiter = RateLimiter::new(2, Duration::from_secs(60));
        assert_eq!(limiter.check("a").remaining, 1);
        assert_eq!(limiter.check("a").remaining, 0);
        assert_eq!(limiter.check("a").remaining, 0);
    }

    #[test]
    fn next_window_starts_fresh() {
        let limiter = RateLimiter::new(1, Duration::from_millis(50));
        let at = Duration::from_millis;
        assert!(limiter.check_at("a", at(10)).allowed);
        let refused = limiter.check_at("a", at(20));
        assert!(!refused.allowed);
        assert_eq!(refused.reset_after, at(30));
        assert!(limiter.check_at("a", at(50)).allowed);
        assert!(!limiter.check_at("a", at(99)).allowed);
    }

    #[test]
    fn idle_gap_clears_stale_slot() {
        let limiter = RateLimiter::new(1, Duration::from_millis(10));
        let at = Duration::from_millis;
        assert!(limiter.check_at("a", at(5)).allowed);
        // Window 3 uses the same slot as window 0, with no request in between.
        assert!(limiter.check_at("a", at(35)).allowed);
        assert!(!limiter.check_at("a", at(36)).allowed);
    }

    #[test]
    fn concurrent_checks_never_over_admit() {
        let limiter = Arc::new(RateLimiter::new(1_000, Duration::from_secs(600)));
        let admitted = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let limiter = limiter.clone();
                let admitted = admitted.clone();
                std::thread::spawn(move || {
                    for _ in 0..1_000 {
                        if limiter.check("hot").allowed {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(admitted.load(Ordering::Relaxed), 1_000);
    }
}
