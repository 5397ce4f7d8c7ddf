//! The local mesh conformance run: pods as network namespaces on a bridge, stock Envoy sidecars with rudder's
//! bootstrap and iptables capture, an ingress gateway reached from the host, and the book's scenarios with
//! their expected outputs (`../shared/book/scenarios.md` §3).
//!
//! Run with `cargo test --test conformance` as root. Prints `scenario <name>: pass|fail (observed …)` per
//! scenario and `N passed, N failed`; exits non-zero when one failed. Without root or iproute2/iptables it
//! prints why and passes. `RUDDER_CONFORMANCE_KEEP=1` keeps the run directory (logs, bootstraps, config).

mod cluster;
mod mesh;
mod scenarios;

use std::panic::AssertUnwindSafe;
use std::process::ExitCode;

fn main() -> ExitCode {
    if let Some(why) = cluster::skip_reason() {
        println!("conformance: skipped ({why}); the local mesh needs root, iproute2 and iptables");
        return ExitCode::SUCCESS;
    }
    // `cargo test -- <filter>`: run only scenarios whose name contains one of the filters.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let id = std::process::id();
    // Ctrl-C: `Drop` does not run, so remove the run's namespaces and bridge by name. The pods' processes share
    // the terminal's process group and get the signal themselves.
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        if rt.block_on(tokio::signal::ctrl_c()).is_ok() {
            eprintln!("conformance: interrupted, cleaning up");
            cluster::remove_run(id);
            std::process::exit(130);
        }
    });
    let mut results: Vec<(String, bool, String)> = Vec::new();
    let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut mesh = match mesh::Mesh::start() {
            Ok(m) => m,
            Err(e) => {
                results.push(("setup".into(), false, e));
                return;
            }
        };
        for (name, f) in scenarios::ALL {
            if !filters.is_empty()
                && !filters.iter().any(|f| name.contains(f.as_str()))
                && !name.starts_with("S1 ")
            {
                continue;
            }
            let started = std::time::Instant::now();
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| f(&mut mesh)))
                .unwrap_or_else(|p| Err(format!("panicked: {}", panic_text(&p))));
            let (pass, observed) = match outcome {
                Ok(o) => (true, o),
                Err(e) => (false, e),
            };
            let observed = match mesh.cluster.dead_process() {
                Some(dead) if !pass => format!("{observed}; {dead}"),
                _ => observed,
            };
            println!(
                "scenario {name}: {} (observed {observed}) [{:.1}s]",
                if pass { "pass" } else { "fail" },
                started.elapsed().as_secs_f64()
            );
            results.push((name.to_string(), pass, observed));
        }
        mesh.shutdown();
        // `mesh` drops here: processes, namespaces, veths, the bridge and /etc/netns entries go.
    }));
    if let Err(p) = run {
        results.push((
            "harness".into(),
            false,
            format!("panicked: {}", panic_text(&p)),
        ));
    }
    // Cleanup check: nothing of this run may remain on the host.
    let left = cluster::Cluster::leftovers(id);
    let clean = left.is_empty();
    println!(
        "scenario cleanup: {} (observed {})",
        if clean { "pass" } else { "fail" },
        if clean {
            "no namespaces, veths, bridge, /etc/netns entries or iptables rules left".to_string()
        } else {
            format!("{left:?}")
        }
    );
    results.push(("cleanup".into(), clean, String::new()));
    for (name, pass, observed) in &results {
        if !pass && (name == "setup" || name == "harness") {
            println!("scenario {name}: fail (observed {observed})");
        }
    }
    let passed = results.iter().filter(|r| r.1).count();
    let failed = results.len() - passed;
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}
