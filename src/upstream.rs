//! Upstreams and target selection: weighted round robin, weighted random, least requests and
//! consistent hashing. Selection is lock-free: counters are atomics and every table is built
//! once at load.

use crate::config::file::Balance;
use pingora_ketama::{Bucket, Continuum};
use rand::Rng;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One backend server of an upstream.
#[derive(Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// The address as written in the config, used in logs.
    pub text: String,
    pub weight: u32,
    pub zone: Option<String>,
    /// Shared with the same target in the previous config across a reload.
    pub state: Arc<TargetState>,
}

/// The live state of a target, kept across reloads while the target stays in its upstream.
#[derive(Debug)]
pub struct TargetState {
    /// Requests currently sent to this target, for `least_requests`.
    pub in_flight: AtomicUsize,
    /// Cleared by the health checker after `unhealthy` failed checks in a row, set again after
    /// `healthy` passed ones. Targets start healthy; without a health check they stay so.
    healthy: AtomicBool,
}

impl TargetState {
    pub fn new() -> Self {
        TargetState {
            in_flight: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }
}

impl Default for TargetState {
    fn default() -> Self {
        Self::new()
    }
}

/// TLS settings for connections to an upstream.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub sni: String,
    pub verify: bool,
    /// Certificate authorities to trust instead of the system's.
    pub ca: Option<Arc<pingora_core::protocols::tls::CaType>>,
}

/// Source of the consistent-hash key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    Path,
    Header(http::HeaderName),
    Cookie(String),
}

/// A compiled upstream from the `upstreams` list.
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub targets: Vec<Target>,
    pub balance: Balance,
    pub hash_key: Option<HashKey>,
    pub tls: Option<UpstreamTls>,
    /// How many more targets a request may try after a connect failure.
    pub retry_attempts: u32,
    /// How long an idle pooled connection to a target is kept.
    pub keepalive_idle_timeout: Duration,
    pub keepalive_max_idle: usize,
    pub health_check: Option<crate::health::HealthCheck>,
    balancer: Balancer,
}

#[derive(Debug)]
enum Balancer {
    /// Smooth weighted round robin, precomputed as a schedule of target indexes.
    RoundRobin {
        schedule: Vec<usize>,
        next: AtomicUsize,
    },
    /// Weighted random: cumulative weights searched with a uniform draw.
    Random {
        cumulative: Vec<u64>,
    },
    LeastRequests {
        next: AtomicUsize,
    },
    ConsistentHash(Box<ContinuumDebug>),
}

struct ContinuumDebug(Continuum);

impl std::fmt::Debug for ContinuumDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Continuum")
    }
}

/// Maximum length of a round-robin schedule. Weights whose sum exceeds it are scaled down and
/// rounded, and each target keeps at least one slot.
const MAX_SCHEDULE: u64 = 10_000;

/// Builds the nginx "smooth weighted round robin" order for the given weights, so heavy targets
/// are spread through the cycle instead of served in a run.
fn smooth_schedule(weights: &[u32]) -> Vec<usize> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let scale = if total > MAX_SCHEDULE {
        total as f64 / MAX_SCHEDULE as f64
    } else {
        1.0
    };
    let scaled: Vec<i64> = weights
        .iter()
        .map(|&w| ((f64::from(w) / scale).round() as i64).max(1))
        .collect();
    let cycle: i64 = scaled.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(cycle as usize);
    for _ in 0..cycle {
        let mut best = 0;
        for i in 0..scaled.len() {
            current[i] += scaled[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= cycle;
        schedule.push(best);
    }
    schedule
}

impl Upstream {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        targets: Vec<Target>,
        balance: Balance,
        hash_key: Option<HashKey>,
        tls: Option<UpstreamTls>,
        retry_attempts: u32,
        keepalive_idle_timeout: Duration,
        keepalive_max_idle: usize,
    ) -> Self {
        let weights: Vec<u32> = targets.iter().map(|t| t.weight).collect();
        let balancer = match balance {
            Balance::RoundRobin => Balancer::RoundRobin {
                schedule: smooth_schedule(&weights),
                next: AtomicUsize::new(0),
            },
            Balance::Random => Balancer::Random {
                cumulative: weights
                    .iter()
                    .scan(0u64, |sum, &w| {
                        *sum += u64::from(w);
                        Some(*sum)
                    })
                    .collect(),
            },
            Balance::LeastRequests => Balancer::LeastRequests {
                next: AtomicUsize::new(0),
            },
            Balance::ConsistentHash => {
                let buckets: Vec<Bucket> = targets
                    .iter()
                    .map(|t| Bucket::new(t.addr, t.weight))
                    .collect();
                Balancer::ConsistentHash(Box::new(ContinuumDebug(Continuum::new(&buckets))))
            }
        };
        Upstream {
            name,
            targets,
            balance,
            hash_key,
            tls,
            retry_attempts,
            keepalive_idle_timeout,
            keepalive_max_idle,
            health_check: None,
            balancer,
        }
    }

    /// Checks whether at least one target may receive traffic.
    pub fn has_healthy_target(&self) -> bool {
        self.targets.iter().any(|t| t.state.is_healthy())
    }

    /// Builds the peer for a connection to `target`, with this upstream's TLS settings and
    /// pool idle timeout. Timeouts of the exchange are left to the caller.
    pub fn peer(&self, target: &Target) -> pingora_core::upstreams::peer::HttpPeer {
        let (tls, sni) = match &self.tls {
            Some(tls) => (true, tls.sni.clone()),
            None => (false, String::new()),
        };
        let mut peer = pingora_core::upstreams::peer::HttpPeer::new(target.addr, tls, sni);
        peer.options.idle_timeout = Some(self.keepalive_idle_timeout);
        if let Some(tls) = &self.tls {
            peer.options.verify_cert = tls.verify;
            peer.options.verify_hostname = tls.verify;
            peer.options.ca = tls.ca.clone();
        }
        peer
    }

    /// Picks a target index, or returns `None` when no target is healthy. Bit i of `tried`
    /// marks target i as already tried by this request, so it is skipped while untried healthy
    /// targets remain. Only the first 64 targets are tracked. `hash_key` is used by
    /// `consistent_hash` only.
    pub fn select(&self, hash_key: &[u8], tried: u64) -> Option<usize> {
        let count = self.targets.len();
        let healthy = |i: usize| self.targets[i].state.is_healthy();
        let untried = |i: usize| i >= 64 || tried & (1 << i) == 0;
        let any_fresh = (0..count).any(|i| healthy(i) && untried(i));
        if !any_fresh && !(0..count).any(healthy) {
            return None;
        }
        // Once every healthy target has been tried, any healthy one may be tried again.
        let eligible = |i: usize| healthy(i) && (!any_fresh || untried(i));
        let first_eligible = || (0..count).find(|&i| eligible(i));
        match &self.balancer {
            Balancer::RoundRobin { schedule, next } => {
                let mut chosen = None;
                for _ in 0..schedule.len() {
                    let slot = next.fetch_add(1, Ordering::Relaxed) % schedule.len();
                    if eligible(schedule[slot]) {
                        chosen = Some(schedule[slot]);
                        break;
                    }
                }
                chosen.or_else(first_eligible)
            }
            Balancer::Random { cumulative } => {
                let total = *cumulative.last().unwrap_or(&1);
                let mut rng = rand::thread_rng();
                let mut chosen = None;
                for _ in 0..count * 4 {
                    let draw = rng.gen_range(0..total);
                    let index = cumulative.partition_point(|&sum| sum <= draw);
                    if eligible(index) {
                        chosen = Some(index);
                        break;
                    }
                }
                chosen.or_else(first_eligible)
            }
            Balancer::LeastRequests { next } => {
                // Scan from a rotating start so ties are spread evenly. The load of a target
                // is its in-flight count divided by its weight, compared by cross-multiplying.
                let start = next.fetch_add(1, Ordering::Relaxed);
                let mut best: Option<(usize, u64, u64)> = None;
                for offset in 0..count {
                    let index = (start + offset) % count;
                    if !eligible(index) {
                        continue;
                    }
                    let target = &self.targets[index];
                    let load = target.state.in_flight.load(Ordering::Relaxed) as u64;
                    let weight = u64::from(target.weight);
                    let better = match best {
                        None => true,
                        Some((_, best_load, best_weight)) => {
                            load * best_weight < best_load * weight
                        }
                    };
                    if better {
                        best = Some((index, load, weight));
                    }
                }
                best.map(|(index, _, _)| index)
            }
            Balancer::ConsistentHash(continuum) => {
                // Walking the ring from the key's point gives the same fallback order to every
                // request with that key, so an unhealthy target's keys move to one neighbour.
                let mut chosen = None;
                for addr in continuum.0.node_iter(hash_key).take(count * 4) {
                    if let Some(index) = self.targets.iter().position(|t| t.addr == *addr) {
                        if eligible(index) {
                            chosen = Some(index);
                            break;
                        }
                    }
                }
                chosen.or_else(first_eligible)
            }
        }
    }
}

/// Marks a request as in flight on a target until dropped, for `least_requests`.
pub struct InFlight {
    upstream: Arc<Upstream>,
    index: usize,
}

impl InFlight {
    pub fn start(upstream: Arc<Upstream>, index: usize) -> Self {
        upstream.targets[index]
            .state
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        InFlight { upstream, index }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.upstream.targets[self.index]
            .state
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(port: u16, weight: u32) -> Target {
        Target {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            text: format!("127.0.0.1:{port}"),
            weight,
            zone: None,
            state: Arc::new(TargetState::new()),
        }
    }

    fn upstream(balance: Balance, weights: &[u32]) -> Upstream {
        let targets = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| target(9000 + i as u16, w))
            .collect();
        Upstream::new(
            "u".into(),
            targets,
            balance,
            None,
            None,
            0,
            Duration::from_secs(60),
            128,
        )
    }

    #[test]
    fn smooth_schedule_interleaves() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_schedule(&[1, 1]), vec![0, 1]);
    }

    #[test]
    fn smooth_schedule_scales_large_weights() {
        let schedule = smooth_schedule(&[1_000_000, 1]);
        assert!(schedule.len() as u64 <= MAX_SCHEDULE + 1);
        assert!(schedule.contains(&1));
    }

    #[test]
    fn round_robin_is_exact_over_a_cycle() {
        let up = upstream(Balance::RoundRobin, &[3, 1]);
        let mut counts = [0; 2];
        for _ in 0..400 {
            counts[up.select(b"", 0).unwrap()] += 1;
        }
        assert_eq!(counts, [300, 100]);
    }

    #[test]
    fn selection_skips_tried_targets() {
        for balance in [
            Balance::RoundRobin,
            Balance::Random,
            Balance::LeastRequests,
            Balance::ConsistentHash,
        ] {
            let up = upstream(balance, &[1, 1, 1]);
            for _ in 0..20 {
                let index = up.select(b"key", 0b011);
                assert_eq!(index, Some(2), "{balance:?}");
            }
        }
    }

    #[test]
    fn least_requests_prefers_idle_target() {
        let up = Arc::new(upstream(Balance::LeastRequests, &[1, 1]));
        let _busy = InFlight::start(up.clone(), 0);
        assert_eq!(up.select(b"", 0), Some(1));
        assert_eq!(up.select(b"", 0), Some(1));
    }

    #[test]
    fn selection_skips_unhealthy_targets() {
        for balance in [
            Balance::RoundRobin,
            Balance::Random,
            Balance::LeastRequests,
            Balance::ConsistentHash,
        ] {
            let up = upstream(balance, &[1, 1, 1]);
            up.targets[0].state.set_healthy(false);
            up.targets[2].state.set_healthy(false);
            for _ in 0..20 {
                assert_eq!(up.select(b"key", 0), Some(1), "{balance:?}");
                // The only healthy target was tried: it is chosen again rather than a sick one.
                assert_eq!(up.select(b"key", 0b010), Some(1), "{balance:?}");
            }
            up.targets[1].state.set_healthy(false);
            assert_eq!(up.select(b"key", 0), None, "{balance:?}");
        }
    }

    #[test]
    fn consistent_hash_is_stable() {
        let up = upstream(Balance::ConsistentHash, &[1, 1, 1]);
        let first = up.select(b"client-a", 0);
        for _ in 0..10 {
            assert_eq!(up.select(b"client-a", 0), first);
        }
    }
}
