//! A wait that a task polls on every turn (the server's drain signal, the next generation), polled through
//! only after it woke the task.
//!
//! Why: tokio's `Notified` (under every `watch` wait) locks its channel's waiter list each time it is polled
//! while pending. Thousands of streams poll the same two channels on every request and push, from every
//! worker, so that lock's cache line went from core to core on almost every poll. The gate gives the wait a
//! waker of its own, which sets a flag in the gate's own allocation and wakes the task; a poll that finds the
//! flag down returns pending without touching the channel.
//!
//! Not the channel's version: a send bumps it before it notifies, so a poll in between saw the new version,
//! found the wait still pending (it re-checks only once notified), and the notification that came next was
//! gated away. The scale bench lost a few streams' pushes that way.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::SeqCst;
use std::task::{Context, Poll, Waker};

use futures::Stream;
use futures::task::{ArcWake, AtomicWaker};
use tokio::sync::watch;

/// The gate's waker: records that the wait woke, and wakes the task.
#[derive(Default)]
struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl ArcWake for Flag {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.woken.store(true, SeqCst);
        arc_self.task.wake();
    }
}

/// `wait` (a future or a stream), polled only when it woke since its last pending poll.
pub(crate) struct Gated<W> {
    wait: W,
    flag: Arc<Flag>,
    /// `flag` as a waker, made once: `wait` registers it once and keeps it.
    waker: Waker,
    /// `wait`'s last poll was pending: it holds `waker` and wakes it when it is worth polling again.
    armed: bool,
}

impl<W> Gated<W> {
    pub fn new(wait: W) -> Self {
        let flag = Arc::new(Flag::default());
        Gated {
            wait,
            waker: futures::task::waker(flag.clone()),
            flag,
            armed: false,
        }
    }

    /// Polls `wait` with `poll` if it woke since its last pending poll (or never was); pending otherwise.
    fn poll_gated<R>(
        &mut self,
        cx: &Context<'_>,
        poll: impl FnOnce(&mut W, &mut Context<'_>) -> Poll<R>,
    ) -> Poll<R> {
        // Registered first: a wake from here on either shows in the flag below or wakes this task again.
        self.flag.task.register(cx.waker());
        let woken = self.flag.woken.swap(false, SeqCst);
        if self.armed && !woken {
            return Poll::Pending;
        }
        let out = poll(&mut self.wait, &mut Context::from_waker(&self.waker));
        self.armed = out.is_pending();
        out
    }
}

impl<W: Future + Unpin> Future for Gated<W> {
    type Output = W::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<W::Output> {
        (self.get_mut()).poll_gated(cx, |w, cx| Pin::new(w).poll(cx))
    }
}

impl<W: Stream + Unpin> Stream for Gated<W> {
    type Item = W::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<W::Item>> {
        (self.get_mut()).poll_gated(cx, |w, cx| Pin::new(w).poll_next(cx))
    }
}

/// Until `drain` turns true or its sender is gone: the server's drain signal, as every connection and stream
/// waits for it.
pub(crate) fn drained(
    mut drain: watch::Receiver<bool>,
) -> Gated<Pin<Box<dyn Future<Output = ()> + Send>>> {
    Gated::new(Box::pin(async move {
        let _ = drain.wait_for(|d| *d).await;
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio_stream::StreamExt;
    use tokio_stream::wrappers::WatchStream;

    use super::*;
    use crate::xds::http2::tests::Count as Wakes;

    /// A wait that counts its polls.
    struct Counted<S>(S, Arc<AtomicUsize>);

    impl<S: Stream + Unpin> Stream for Counted<S> {
        type Item = S::Item;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
            self.1.fetch_add(1, SeqCst);
            Pin::new(&mut self.0).poll_next(cx)
        }
    }

    #[test]
    fn polls_through_only_after_the_wait_woke() {
        let (tx, rx) = watch::channel(0);
        let polls = Arc::new(AtomicUsize::new(0));
        let mut gated = Gated::new(Counted(WatchStream::from_changes(rx), polls.clone()));
        let wakes = Arc::new(Wakes::default());
        let w = futures::task::waker(wakes.clone());
        let mut cx = Context::from_waker(&w);
        let mut next = || Pin::new(&mut gated).poll_next(&mut cx);

        assert!(next().is_pending());
        assert!(next().is_pending());
        assert!(next().is_pending());
        assert_eq!(polls.load(SeqCst), 1, "registered once, then gated");

        tx.send_replace(1);
        assert_eq!(wakes.0.load(SeqCst), 1, "the task is woken");
        assert_eq!(next(), Poll::Ready(Some(1)));
        assert_eq!(polls.load(SeqCst), 2);
        // After an item, the next poll registers the stream's next wait.
        assert!(next().is_pending());
        assert!(next().is_pending());
        assert_eq!(polls.load(SeqCst), 3);

        tx.send_replace(2);
        tx.send_replace(3);
        assert_eq!(next(), Poll::Ready(Some(3)));
        assert!(next().is_pending());

        drop(tx);
        assert_eq!(
            next(),
            Poll::Ready(None),
            "a closed channel ends the stream"
        );
    }

    #[test]
    fn a_gated_future_completes_when_the_channel_moves() {
        let (tx, rx) = watch::channel(false);
        let mut gated = drained(rx);
        let w = futures::task::waker(Arc::new(Wakes::default()));
        let mut cx = Context::from_waker(&w);
        assert!(Pin::new(&mut gated).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut gated).poll(&mut cx).is_pending());
        tx.send_replace(true);
        assert!(Pin::new(&mut gated).poll(&mut cx).is_ready());
    }

    /// The race the channel-version gate lost (see the module's doc), and tokio's budget: each of 2,000 tasks
    /// on two workers must see the last of 30 sends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_waiter_sees_the_last_send() {
        let (tx, rx) = watch::channel(0u64);
        let (seen_tx, mut seen) = tokio::sync::mpsc::channel(4096);
        for _ in 0..2000 {
            let (rx, seen_tx) = (rx.clone(), seen_tx.clone());
            tokio::spawn(async move {
                let mut gated = Gated::new(WatchStream::from_changes(rx));
                while let Some(v) = gated.next().await {
                    let _ = seen_tx.send(v).await;
                }
            });
        }
        for v in 1..=30u64 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            tx.send_replace(v);
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut last = 0;
        while last < 2000 {
            match tokio::time::timeout_at(deadline, seen.recv()).await {
                Ok(Some(30)) => last += 1,
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        assert_eq!(last, 2000, "tasks that saw the last send");
    }
}
