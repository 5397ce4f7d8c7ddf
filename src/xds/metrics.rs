//! Counters of the ADS server, plain atomics read at scrape time (names follow istiod's `pilot_*` family).

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use super::type_url;

/// Index of a type URL in the per-type counters: `cds, eds, lds, rds, sds, other`.
fn type_index(type_url: &str) -> usize {
    type_url::push_rank(type_url)
}

/// Label values of the per-type counters, in index order.
pub const TYPE_LABELS: [&str; 6] = ["cds", "eds", "lds", "rds", "sds", "other"];

/// Count, sum and max of a duration series (microseconds), in a few shards of a cache line each: every push
/// and every ACK records one, from every worker, and one shared line went back and forth between the cores.
#[derive(Debug, Default)]
pub struct Timing {
    shards: [TimingShard; SHARDS],
}

/// Shards per series: a thread keeps to one (see [`shard`]).
const SHARDS: usize = 4;

#[derive(Debug, Default)]
#[repr(align(64))]
struct TimingShard {
    count: AtomicU64,
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

/// The shard of the calling thread: threads are numbered as they first record, round robin over the shards.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

impl Timing {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let s = &self.shards[shard()];
        s.count.fetch_add(1, Relaxed);
        s.sum_us.fetch_add(us, Relaxed);
        // Read first: a new maximum is rare, and the read leaves the line shared.
        if us > s.max_us.load(Relaxed) {
            s.max_us.fetch_max(us, Relaxed);
        }
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.shards.iter().map(|s| s.count.load(Relaxed)).sum()
    }

    /// Sum of the observations.
    pub fn sum(&self) -> Duration {
        Duration::from_micros(self.shards.iter().map(|s| s.sum_us.load(Relaxed)).sum())
    }

    /// Largest observation.
    pub fn max(&self) -> Duration {
        let max = self.shards.iter().map(|s| s.max_us.load(Relaxed)).max();
        Duration::from_micros(max.unwrap_or(0))
    }
}

/// ADS server metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// `pilot_xds`: connected proxies (live streams).
    pub connected: AtomicI64,
    /// `pilot_xds_pushes` by type (index as [`TYPE_LABELS`]).
    pub pushes: [AtomicU64; 6],
    /// `pilot_total_xds_rejects` by type.
    pub nacks: [AtomicU64; 6],
    /// Requests carrying a nonce other than the last one sent (ignored).
    pub stale_nonces: AtomicU64,
    /// Time to compute and enqueue one connection's push for one generation (`pilot_xds_push_time`).
    pub push_time: Timing,
    /// Time from a generation's publication to the client's ACK of it (`pilot_proxy_convergence_time`).
    pub convergence: Timing,
}

impl Metrics {
    /// Responses sent for `type_url`.
    pub fn pushes(&self, type_url: &str) -> u64 {
        self.pushes[type_index(type_url)].load(Relaxed)
    }

    /// NACKs received for `type_url`.
    pub fn nacks(&self, type_url: &str) -> u64 {
        self.nacks[type_index(type_url)].load(Relaxed)
    }

    pub(crate) fn count_push(&self, type_url: &str) {
        self.pushes[type_index(type_url)].fetch_add(1, Relaxed);
    }

    pub(crate) fn count_nack(&self, type_url: &str) {
        self.nacks[type_index(type_url)].fetch_add(1, Relaxed);
    }

    /// Renders the counters in Prometheus text format (for the debug/metrics endpoint).
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# TYPE pilot_xds gauge\npilot_xds {}",
            self.connected.load(Relaxed)
        );
        let _ = writeln!(out, "# TYPE pilot_xds_pushes counter");
        for (i, l) in TYPE_LABELS.iter().enumerate() {
            let _ = writeln!(
                out,
                "pilot_xds_pushes{{type=\"{l}\"}} {}",
                self.pushes[i].load(Relaxed)
            );
        }
        let _ = writeln!(out, "# TYPE pilot_total_xds_rejects counter");
        for (i, l) in TYPE_LABELS.iter().enumerate() {
            let _ = writeln!(
                out,
                "pilot_total_xds_rejects{{type=\"{l}\"}} {}",
                self.nacks[i].load(Relaxed)
            );
        }
        let _ = writeln!(out, "# TYPE pilot_xds_expired_nonce counter");
        let _ = writeln!(
            out,
            "pilot_xds_expired_nonce {}",
            self.stale_nonces.load(Relaxed)
        );
        for (name, t) in [
            ("pilot_xds_push_time", &self.push_time),
            ("pilot_proxy_convergence_time", &self.convergence),
        ] {
            let _ = writeln!(out, "# TYPE {name} summary");
            let _ = writeln!(out, "{name}_count {}", t.count());
            let _ = writeln!(out, "{name}_sum {}", t.sum().as_secs_f64());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timing_recorded_from_many_threads_adds_up_over_its_shards() {
        let t = Timing::default();
        std::thread::scope(|scope| {
            for i in 1..=6u64 {
                let t = &t;
                scope.spawn(move || {
                    for _ in 0..10 {
                        t.observe(Duration::from_micros(i));
                    }
                });
            }
        });
        assert_eq!(t.count(), 60);
        assert_eq!(t.sum(), Duration::from_micros(10 * (1 + 2 + 3 + 4 + 5 + 6)));
        assert_eq!(t.max(), Duration::from_micros(6));
    }
}
