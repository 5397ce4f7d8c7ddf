//! The snapshot builder task: waits for store changes, debounces them, builds a new `Snapshot` and publishes it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::Snapshot;
use crate::config::store::{Changes, Store};

/// Debounce settings (istiod's `PILOT_DEBOUNCE_AFTER` / `PILOT_DEBOUNCE_MAX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Debounce {
    /// Build once the store has been quiet this long.
    pub quiet: Duration,
    /// Build at the latest this long after the first unbuilt change, even if changes keep coming.
    pub max_delay: Duration,
}

impl Default for Debounce {
    fn default() -> Self {
        Debounce {
            quiet: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        }
    }
}

/// A published snapshot with what changed since the previous one.
#[derive(Debug, Default)]
pub struct Built {
    pub snapshot: Arc<Snapshot>,
    pub changes: Changes,
    /// How long the build itself took (istiod's `pilot_pushcontext_init_seconds`).
    pub build_time: Duration,
    /// How long the first change waited in the debounce (istiod's `pilot_debounce_time`).
    pub debounce_time: Duration,
}

/// Builds a snapshot of the store now; `earlier` is the snapshot built before (its services whose endpoints
/// did not change are reused).
pub fn build_now(store: &Store, version: u64, earlier: Option<&Snapshot>) -> Built {
    let start = Instant::now();
    let (changes, objects) = store.take_changes_and_objects();
    let snapshot = Snapshot::build_after(
        earlier.map(|s| (s, &changes)),
        version,
        &objects,
        store.problems(),
    );
    Built {
        snapshot: Arc::new(snapshot),
        changes,
        build_time: start.elapsed(),
        debounce_time: Duration::ZERO,
    }
}

/// Rebuilds on every (debounced) store change until the store's sender is gone. Endpoint-only changes skip the
/// quiet period (the fast path: a scaled deployment should not wait behind the debounce floor).
pub async fn run(store: Arc<Store>, debounce: Debounce, tx: watch::Sender<Arc<Built>>) {
    let mut rx = store.subscribe();
    let mut version = tx.borrow().snapshot.version;
    loop {
        if rx.changed().await.is_err() {
            return;
        }
        let first = Instant::now();
        if !store.peek_changes().endpoints_only() {
            // Wait for quiet, bounded by max_delay.
            loop {
                let remaining = debounce.max_delay.saturating_sub(first.elapsed());
                if remaining.is_zero() {
                    break;
                }
                rx.borrow_and_update();
                match tokio::time::timeout(debounce.quiet.min(remaining), rx.changed()).await {
                    Err(_) => break,      // quiet long enough
                    Ok(Err(_)) => return, // store gone
                    Ok(Ok(())) => continue,
                }
            }
        }
        rx.borrow_and_update();
        let debounce_time = first.elapsed();
        version += 1;
        let earlier = tx.borrow().snapshot.clone();
        let mut built = build_now(&store, version, Some(&earlier));
        built.debounce_time = debounce_time;
        tracing::info!(
            build_ms = built.build_time.as_millis() as u64,
            debounce_ms = debounce_time.as_millis() as u64,
            "{}",
            built.snapshot.summary()
        );
        if tx.send(Arc::new(built)).is_err() {
            return;
        }
    }
}
