//! Debounce of store changes before a snapshot rebuild: wait for a quiet period, but never longer than a
//! maximum delay, and skip the quiet period for endpoint-only changes (they are cheap and latency-sensitive).

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

/// Waits for the next change on `changes` (a counter of store change generations) and returns the generation
/// to rebuild from when a rebuild should happen:
/// - once no further change came for `quiet`, or
/// - `max_delay` after the first change, however busy the store is, or
/// - at once if `endpoints_only()` says every pending change only touches endpoints (no quiet-period floor).
///
/// Returns `None` when the sender is gone and nothing is pending. A change pending when the sender goes away
/// is still returned.
pub async fn debounce(
    changes: &mut watch::Receiver<u64>,
    quiet: Duration,
    max_delay: Duration,
    mut endpoints_only: impl FnMut() -> bool,
) -> Option<u64> {
    changes.changed().await.ok()?;
    let deadline = Instant::now() + max_delay;
    loop {
        let generation = *changes.borrow_and_update();
        if endpoints_only() {
            return Some(generation);
        }
        let quiet_end = (Instant::now() + quiet).min(deadline);
        tokio::select! {
            _ = sleep_until(quiet_end) => return Some(generation),
            changed = changes.changed() => {
                if changed.is_err() {
                    return Some(*changes.borrow());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    const QUIET: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn waits_for_quiet_period() {
        let (tx, mut rx) = watch::channel(0);
        let start = Instant::now();
        let task = tokio::spawn(async move {
            (
                debounce(&mut rx, QUIET, MAX, || false).await,
                Instant::now(),
            )
        });
        tx.send(1).unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
        tx.send(2).unwrap();
        let (generation, at) = task.await.unwrap();
        assert_eq!(generation, Some(2));
        // Quiet period restarted at the second change (t=60ms).
        assert_eq!(at - start, Duration::from_millis(160));
    }

    #[tokio::test(start_paused = true)]
    async fn max_delay_bounds_a_busy_store() {
        let (tx, mut rx) = watch::channel(0);
        let start = Instant::now();
        let task = tokio::spawn(async move {
            (
                debounce(&mut rx, QUIET, MAX, || false).await,
                Instant::now(),
            )
        });
        let writer = tokio::spawn(async move {
            for i in 1..=100u64 {
                if tx.send(i).is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let (generation, at) = task.await.unwrap();
        writer.abort();
        assert_eq!(at - start, MAX);
        // Changes at 0, 50, …, 1000 ms: the one sent at the deadline instant may or may not be seen.
        assert!(matches!(generation, Some(20 | 21)), "{generation:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn endpoint_only_change_skips_quiet_period() {
        let (tx, mut rx) = watch::channel(0);
        let eds = Arc::new(AtomicBool::new(true));
        let flag = eds.clone();
        let start = Instant::now();
        let task = tokio::spawn(async move {
            (
                debounce(&mut rx, QUIET, MAX, || flag.load(Ordering::SeqCst)).await,
                Instant::now(),
            )
        });
        tx.send(7).unwrap();
        let (generation, at) = task.await.unwrap();
        assert_eq!(generation, Some(7));
        assert_eq!(at, start);
    }

    #[tokio::test(start_paused = true)]
    async fn closed_sender_flushes_pending_then_ends() {
        let (tx, mut rx) = watch::channel(0);
        tx.send(3).unwrap();
        drop(tx);
        assert_eq!(debounce(&mut rx, QUIET, MAX, || false).await, Some(3));
        assert_eq!(debounce(&mut rx, QUIET, MAX, || false).await, None);
    }
}
