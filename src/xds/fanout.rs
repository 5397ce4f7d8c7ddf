//! The fan-out of a generation to the server's streams, so that connections whose streams have had their push
//! hold off reading their sockets (ACKs, mostly) until every stream has had it.
//!
//! Why: a generation that changes every proxy's view (an endpoint change, in a mesh without `Sidecar` scoping)
//! is one push per stream, and the ACKs come back while the pushes are still going out. On a busy control plane,
//! reading an ACK (the read, the kernel's TCP work, HTTP/2, decoding, the registry record) costs about as much as
//! a push, so handling ACKs as they come delays the last proxies' pushes by the ACKs of the first. Reading them
//! once every push is out gets the change to every proxy sooner; the registry learns of the ACKs a fan-out later.
//!
//! A stream is a member while it is in its steady loop and not waiting for its client's flow control (a client
//! that stops reading must not hold up every other connection's reads). A fan-out starts when the first member
//! takes a newer generation and ends when every member has taken it, or after [`MAX_HOLD`] whatever happens.

use std::sync::Arc;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::task::Waker;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Longest a connection holds off reading for a fan-out, whatever the members do.
pub(crate) const MAX_HOLD: Duration = Duration::from_millis(500);

/// A member's mark when it is not in the fan-out (before it joins, after it leaves): never behind.
const OUT: u64 = u64::MAX;

/// The fan-out state of one server.
#[derive(Default)]
pub(crate) struct Fanout {
    state: parking_lot::Mutex<State>,
    /// The generation of the current (or last) fan-out; read without the lock by [`Fanout::holds`].
    epoch: AtomicU64,
    /// Members that have not taken the current fan-out's generation; 0 when no fan-out is on.
    remaining: AtomicUsize,
    /// Tells [`Fanout::enforce_deadline`] that a fan-out started.
    started: Notify,
}

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout")
            .field("epoch", &self.epoch.load(Acquire))
            .field("remaining", &self.remaining.load(Acquire))
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    epoch: u64,
    members: usize,
    remaining: usize,
    started_at: Option<Instant>,
    /// Connections holding off until the fan-out ends.
    held: Vec<Waker>,
}

impl State {
    fn take_one(&mut self) -> Vec<Waker> {
        self.remaining = self.remaining.saturating_sub(1);
        match self.remaining {
            0 => std::mem::take(&mut self.held),
            _ => Vec::new(),
        }
    }
}

/// A stream's mark: the generation of the last fan-out it counted in. Its connection reads it to know
/// whether the stream is done with the current fan-out.
#[derive(Debug)]
pub(crate) struct Mark(AtomicU64);

impl Default for Mark {
    fn default() -> Self {
        Mark(AtomicU64::new(OUT))
    }
}

impl Mark {
    fn get(&self) -> u64 {
        self.0.load(Acquire)
    }
}

impl Fanout {
    /// A stream becomes a member: it counts in fan-outs that start from now on.
    pub fn join(&self, mark: &Mark) {
        let mut s = self.state.lock();
        s.members += 1;
        mark.0.store(s.epoch, Release);
    }

    /// A member leaves (it ends, or waits for its client's flow control). If it was still owed the current
    /// fan-out's generation, the fan-out no longer waits for it. `false` if it was not a member.
    pub fn leave(&self, mark: &Mark) -> bool {
        let mut s = self.state.lock();
        let was = mark.0.swap(OUT, Release);
        if was == OUT {
            return false;
        }
        s.members -= 1;
        let owed = was < s.epoch && s.remaining > 0;
        self.count(s, owed);
        true
    }

    /// A member took generation `version` (pushed it, or found nothing in it for its proxy). The first member
    /// to take a newer generation starts its fan-out.
    pub fn took(&self, mark: &Mark, version: u64) {
        let mut s = self.state.lock();
        let was = mark.get();
        if was == OUT {
            return;
        }
        if version > s.epoch {
            s.epoch = version;
            s.remaining = s.members;
            s.started_at = Some(Instant::now());
            self.epoch.store(version, Release);
            self.started.notify_one();
        }
        let owed = was < s.epoch && version == s.epoch;
        if owed {
            mark.0.store(version, Release);
        }
        self.count(s, owed);
    }

    /// Counts one member done with the fan-out if `done`, publishes what remains, and (with the lock let go)
    /// wakes the held connections if that ended it.
    fn count(&self, mut s: parking_lot::MutexGuard<'_, State>, done: bool) {
        let wake = match done {
            true => s.take_one(),
            false => Vec::new(),
        };
        self.remaining.store(s.remaining, Release);
        drop(s);
        wake.into_iter().for_each(Waker::wake);
    }

    /// Whether a connection whose streams have these marks should hold off reading: a fan-out is on, the
    /// connection has streams, and every one of them is a member that has taken the fan-out's generation. A
    /// stream still owed it, or not a member (starting, or waiting for a window update), needs the socket read.
    pub fn holds<'a>(&self, marks: impl IntoIterator<Item = &'a Mark>) -> bool {
        if self.remaining.load(Acquire) == 0 {
            return false;
        }
        let epoch = self.epoch.load(Acquire);
        let mut any = false;
        for m in marks {
            let v = m.get();
            if v == OUT || v < epoch {
                return false;
            }
            any = true;
        }
        any
    }

    /// Registers `waker` to be woken when the fan-out ends; `false` (and nothing registered) if it has ended.
    pub fn hold(&self, waker: &Waker) -> bool {
        let mut s = self.state.lock();
        if s.remaining == 0 {
            return false;
        }
        // A connection holds once or twice per fan-out (a readiness wake comes once): a duplicate is a
        // spare wake, cheaper than looking for it among thousands.
        s.held.push(waker.clone());
        true
    }

    /// Ends every fan-out still on [`MAX_HOLD`] after it started. Runs as long as the server.
    pub async fn enforce_deadline(self: Arc<Self>) {
        loop {
            self.started.notified().await;
            let (epoch, deadline) = {
                let s = self.state.lock();
                match s.started_at {
                    Some(at) => (s.epoch, at + MAX_HOLD),
                    None => continue,
                }
            };
            tokio::time::sleep_until(deadline).await;
            self.expire(epoch);
        }
    }

    /// Ends the fan-out of generation `epoch` if it is still on.
    fn expire(&self, epoch: u64) {
        let wake = {
            let mut s = self.state.lock();
            if s.epoch != epoch || s.remaining == 0 {
                return;
            }
            tracing::debug!(
                epoch,
                remaining = s.remaining,
                "fan-out still on after {MAX_HOLD:?}: connections read again"
            );
            s.remaining = 0;
            self.remaining.store(0, Release);
            std::mem::take(&mut s.held)
        };
        wake.into_iter().for_each(Waker::wake);
    }

    #[cfg(test)]
    fn members(&self) -> usize {
        self.state.lock().members
    }

    #[cfg(test)]
    fn remaining(&self) -> usize {
        self.remaining.load(Acquire)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::atomic::Ordering::{Relaxed, SeqCst};

    use futures::task::ArcWake;

    use super::*;

    #[derive(Default)]
    struct Flag(AtomicBool);

    impl ArcWake for Flag {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.store(true, SeqCst);
        }
    }

    fn waker() -> (Arc<Flag>, Waker) {
        let flag = Arc::new(Flag::default());
        (flag.clone(), futures::task::waker(flag))
    }

    #[test]
    fn a_connection_holds_once_its_streams_have_the_push_until_every_member_has() {
        let f = Fanout::default();
        let (a, b) = (Mark::default(), Mark::default());
        f.join(&a);
        f.join(&b);
        assert!(!f.holds([&a]), "no fan-out yet");

        f.took(&a, 1);
        assert_eq!(f.remaining(), 1, "b is still owed generation 1");
        assert!(
            f.holds([&a]),
            "a has had its push: its connection holds off reading"
        );
        assert!(!f.holds([&b]), "b has not: its connection reads");
        assert!(!f.holds([&a, &b]), "a connection with both streams reads");

        let (woken, w) = waker();
        assert!(f.hold(&w));
        f.took(&b, 1);
        assert!(
            woken.0.load(SeqCst),
            "the last member ends the fan-out and wakes held connections"
        );
        assert!(!f.holds([&a]) && !f.hold(&w));
    }

    #[test]
    fn a_newer_generation_restarts_the_fan_out_and_old_ones_do_not_count() {
        let f = Fanout::default();
        let (a, b) = (Mark::default(), Mark::default());
        f.join(&a);
        f.join(&b);
        f.took(&a, 1);
        f.took(&b, 2);
        assert_eq!(f.remaining(), 1, "generation 2: b has it, a is owed it");
        assert!(!f.holds([&a]));
        f.took(&a, 1);
        assert_eq!(
            f.remaining(),
            1,
            "taking an older generation does not count"
        );
        f.took(&a, 2);
        assert_eq!(f.remaining(), 0);
    }

    #[test]
    fn members_that_leave_or_join_during_a_fan_out_do_not_hold_it_up() {
        let f = Fanout::default();
        let (a, b, c) = (Mark::default(), Mark::default(), Mark::default());
        f.join(&a);
        f.join(&b);
        f.took(&a, 1);
        f.join(&c);
        assert_eq!(f.remaining(), 1, "c joined after the fan-out started");
        assert!(f.holds([&c]), "c counts as done with it");

        let (woken, w) = waker();
        assert!(f.hold(&w));
        f.leave(&b);
        assert!(woken.0.load(SeqCst), "b owed it and left: the fan-out ends");
        assert_eq!(f.members(), 2);
        f.leave(&b);
        assert_eq!(f.members(), 2, "leaving twice counts once");
        assert!(
            !f.holds([&a, &b]),
            "a connection with a stream that is not a member reads"
        );
        assert!(!f.holds([]), "so does a connection without streams");
        f.took(&b, 3);
        assert_eq!(
            (f.remaining(), f.epoch.load(Relaxed)),
            (0, 1),
            "a non-member does not start or count in a fan-out"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_fan_out_ends_after_max_hold_whatever_the_members_do() {
        let f = Arc::new(Fanout::default());
        let watchdog = tokio::spawn(f.clone().enforce_deadline());
        let (a, b) = (Mark::default(), Mark::default());
        f.join(&a);
        f.join(&b);
        f.took(&a, 1);
        let (woken, w) = waker();
        assert!(f.hold(&w));
        tokio::time::sleep(MAX_HOLD - Duration::from_millis(1)).await;
        assert!(
            !woken.0.load(SeqCst) && f.holds([&a]),
            "still on before the deadline"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(
            woken.0.load(SeqCst),
            "held connections are woken at the deadline"
        );
        assert!(!f.holds([&a]));

        // The next fan-out gets a deadline of its own.
        f.took(&a, 2);
        assert!(f.holds([&a]));
        tokio::time::sleep(MAX_HOLD + Duration::from_millis(1)).await;
        assert!(!f.holds([&a]));
        watchdog.abort();
    }
}
