//! `/metrics` in Prometheus text format with istiod's names: the ADS server's counters (`pilot_xds`,
//! `pilot_xds_pushes`, `pilot_total_xds_rejects`, `pilot_xds_expired_nonce`, `pilot_xds_push_time`,
//! `pilot_proxy_convergence_time`), gauges read from state at scrape time (`pilot_xds_cds_reject` … proxies whose
//! last response of a type is rejected, `pilot_services`, `rudder_config_rejected{kind}`), the snapshot
//! builder's timings (`pilot_pushcontext_init_seconds`, `pilot_debounce_time`) and process metrics from `/proc`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::sync::Arc;

use tokio::sync::watch;

use super::State;
use crate::config::Severity;
use crate::model::builder::Built;
use crate::xds::metrics::Timing;

/// Snapshot builder timings, observed once per published snapshot.
#[derive(Debug, Default)]
pub struct BuildMetrics {
    /// `pilot_pushcontext_init_seconds`.
    pub build: Timing,
    /// `pilot_debounce_time`.
    pub debounce: Timing,
}

impl BuildMetrics {
    /// Observes every snapshot published on `rx` (the current one first) until the sender is gone.
    pub async fn observe(self: Arc<Self>, mut rx: watch::Receiver<Arc<Built>>) {
        loop {
            {
                let built = rx.borrow_and_update();
                self.build.observe(built.build_time);
                self.debounce.observe(built.debounce_time);
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

/// The full scrape.
pub fn render(s: &State) -> String {
    let mut out = String::new();
    if let Some(m) = &s.xds_metrics {
        out.push_str(&m.render());
    }
    let conns = s.connections();
    for (short, url) in super::sync::TYPES {
        let rejecting = conns
            .iter()
            .filter(|c| c.types.get(url).is_some_and(|t| t.last_nack.is_some()))
            .count();
        let name = format!("pilot_xds_{short}_reject");
        let _ = writeln!(out, "# TYPE {name} gauge\n{name} {rejecting}");
    }
    let built = s.built();
    let _ = writeln!(
        out,
        "# TYPE pilot_services gauge\npilot_services {}",
        built.snapshot.registry.services().len()
    );
    // Objects (not problems) refused by validation, by kind: one object with three errors counts once.
    let mut rejected: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for p in s.store.problems() {
        if p.severity != Severity::Error {
            continue;
        }
        let kind = match &p.key {
            Some(k) => k.kind.name().to_owned(),
            None => "unknown".to_owned(),
        };
        rejected.entry(kind).or_default().insert(p.subject.clone());
    }
    let _ = writeln!(out, "# TYPE rudder_config_rejected gauge");
    for (kind, objects) in &rejected {
        let n = objects.len();
        let _ = writeln!(out, "rudder_config_rejected{{kind=\"{kind}\"}} {n}");
    }
    for (name, t) in [
        ("pilot_pushcontext_init_seconds", &s.build_metrics.build),
        ("pilot_debounce_time", &s.build_metrics.debounce),
    ] {
        let _ = writeln!(out, "# TYPE {name} summary");
        let _ = writeln!(out, "{name}_count {}", t.count());
        let _ = writeln!(out, "{name}_sum {}", t.sum().as_secs_f64());
    }
    process(&mut out);
    out
}

/// Resident memory, open file descriptors and CPU time from `/proc/self` (absent off Linux).
fn process(out: &mut String) {
    // statm's second field is resident pages; 4 KiB pages on every platform rudder ships for.
    if let Some(rss) = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
    {
        let _ = writeln!(
            out,
            "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}",
            rss * 4096
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        let _ = writeln!(
            out,
            "# TYPE process_open_fds gauge\nprocess_open_fds {}",
            fds.count()
        );
    }
    // stat fields 14 and 15 (utime, stime) in clock ticks (USER_HZ = 100); the command name may hold spaces,
    // so count from the closing parenthesis.
    if let Some(ticks) = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
    {
        let _ = writeln!(
            out,
            "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {}",
            ticks as f64 / 100.0
        );
    }
}
