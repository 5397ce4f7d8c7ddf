//! One client connection: its HTTP/2 session and the ADS streams on it, all driven by the connection's own
//! task.
//!
//! Why not tonic's server: hyper runs each stream in a task of its own and pipes a boxed body between that
//! task and the connection's, so every push and every ACK crossed two or three tasks and several body layers
//! on its way between the socket and the stream's state machine. Here a push is built, framed and written in
//! one poll of one task, as in the bare HTTP/2 floor the scale bench measures against. ADS is the only
//! service on rudder's xDS ports, so routing is a match on the path.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::task::{Context, Poll};

use futures::task::{ArcWake, AtomicWaker};
use h2::RecvStream;
use h2::server::SendResponse;
use http::{HeaderValue, Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::Status;
use tonic::metadata::MetadataMap;
use tracing::debug;

use super::connection::{self, Flavor, Shared};
use super::delta::Delta;
use super::fanout::Mark;
use super::grpc::{Encoded, RequestStream, ResponseSink, trailers};
use super::sotw::Sotw;
use super::watch_gate::drained;

/// The gRPC service name of ADS.
pub(crate) const ADS_SERVICE: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";

/// HTTP/2 receive windows (stream and connection): hyper's defaults, which tonic served with. Requests are
/// small; a window only has to hold a burst of them.
const WINDOW: u32 = 1 << 20;

/// Response bytes HTTP/2 may hold for a stream before [`ResponseSink::send`] waits (hyper's default).
const MAX_SEND_BUFFER: usize = 400 << 10;

/// Largest request header block accepted (hyper's default).
const MAX_HEADER_LIST: u32 = 16 << 10;

/// Streams a client may open on one connection: Envoy opens one ADS stream; a few more cost nothing.
const MAX_STREAMS: u32 = 100;

/// Turns of a connection's poll loop before it yields to other tasks.
const MAX_TURNS: usize = 4;

/// The waker of a connection's streams and HTTP/2 session. A wake that comes while the connection is being
/// polled (a stream's data handed to HTTP/2, a request handed to its stream) only sets a flag, and the poll
/// goes round again; otherwise every push and every ACK would have the task scheduled and polled twice.
#[derive(Default)]
struct InPoll {
    polling: AtomicBool,
    woken: AtomicBool,
    task: AtomicWaker,
}

impl InPoll {
    fn start(&self) {
        self.woken.store(false, SeqCst);
        self.polling.store(true, SeqCst);
    }

    /// Ends a turn; `true` if something was woken during it.
    fn stop(&self) -> bool {
        // SeqCst on both sides: a wake either sees `polling` cleared and wakes the task, or is seen here.
        self.polling.store(false, SeqCst);
        self.woken.swap(false, SeqCst)
    }
}

impl ArcWake for InPoll {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.woken.store(true, SeqCst);
        if !arc_self.polling.load(SeqCst) {
            arc_self.task.wake();
        }
    }
}

/// The waker HTTP/2 gets for the socket: an [`InPoll`] wake, except while the connection holds off reading
/// for a fan-out. A client's ACK arriving then would only have the task polled to hold again; the data waits
/// in the socket, and the fan-out's end wakes the task.
struct SocketWake {
    wake: Arc<InPoll>,
    muted: AtomicBool,
}

impl ArcWake for SocketWake {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        if !arc_self.muted.load(SeqCst) {
            ArcWake::wake_by_ref(&arc_self.wake);
        }
    }
}

/// A running ADS stream.
type StreamTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What every connection of a server shares.
pub(crate) struct Ads {
    pub shared: Arc<Shared>,
    /// Largest request message accepted.
    pub max_message: usize,
}

/// Serves one connection until the client closes it, it fails, or the server drains (then a GOAWAY lets
/// the open streams finish and sends Envoy to reconnect, to another replica if there is one).
pub(crate) async fn serve<IO>(io: IO, ads: Arc<Ads>)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = h2::server::Builder::new()
        .initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_concurrent_streams(MAX_STREAMS)
        .handshake::<_, Encoded>(io)
        .await;
    let mut conn = match handshake {
        Ok(conn) => conn,
        Err(e) => {
            debug!(error = %e, "HTTP/2 handshake failed");
            return;
        }
    };
    // Every stream is polled on every turn of the connection: Envoy opens one ADS stream per connection, and
    // for one stream, telling which stream woke (a waker per stream, as `FuturesUnordered` keeps) cost more
    // than it saves. `MAX_STREAMS` bounds the turn. With each stream, its fan-out mark: see `super::fanout`.
    let mut streams: Vec<(StreamTask, Arc<Mark>)> = Vec::new();
    // Polled on every turn, so gated (`super::watch_gate`).
    let mut draining = drained(ads.shared.drain.clone());
    let mut closing = false;
    // Whether a stream wrote since the socket was last written: see `super::fanout`.
    let wrote = Arc::new(AtomicBool::new(false));
    let fanout = &ads.shared.fanout;
    let wake = Arc::new(InPoll::default());
    let waker = futures::task::waker(wake.clone());
    let socket_wake = Arc::new(SocketWake {
        wake: wake.clone(),
        muted: AtomicBool::new(false),
    });
    let socket_waker = futures::task::waker(socket_wake.clone());
    let ended = poll_fn(|cx| {
        wake.task.register(cx.waker());
        socket_wake.muted.store(false, SeqCst);
        let mut inner = Context::from_waker(&waker);
        let mut socket = Context::from_waker(&socket_waker);
        for _ in 0..MAX_TURNS {
            wake.start();
            if !closing && Pin::new(&mut draining).poll(&mut inner).is_ready() {
                closing = true;
                conn.graceful_shutdown();
            }
            // Streams first: what they send is then written by `poll_accept` in this same turn.
            streams.retain_mut(|(stream, _)| stream.as_mut().poll(&mut inner).is_pending());
            // While a fan-out is on, a connection whose streams have had their push and have nothing to
            // write leaves its socket unread (`poll_accept` reads before it writes) until the fan-out ends.
            if !closing
                && !wrote.swap(false, Relaxed)
                && fanout.holds(streams.iter().map(|(_, m)| &**m))
                && fanout.hold(cx.waker())
            {
                socket_wake.muted.store(true, SeqCst);
                if !wake.stop() {
                    return Poll::Pending;
                }
                continue;
            }
            match conn.poll_accept(&mut socket) {
                Poll::Ready(Some(Ok((req, respond)))) => {
                    if let Some(stream) = ads.open(req, respond, &wrote) {
                        streams.push(stream);
                    }
                    wake.stop();
                    continue;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => {}
            }
            if !wake.stop() {
                return Poll::Pending;
            }
        }
        // Still woken after a few turns: yield to the other connections and come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
    if let Err(e) = ended {
        debug!(error = %e, "HTTP/2 connection ended");
    }
}

impl Ads {
    /// Starts the stream `req` asks for, or answers it at once with the gRPC status that refuses it.
    fn open(
        &self,
        req: Request<RecvStream>,
        mut respond: SendResponse<Encoded>,
        wrote: &Arc<AtomicBool>,
    ) -> Option<(StreamTask, Arc<Mark>)> {
        let method = req
            .uri()
            .path()
            .strip_prefix("/")
            .and_then(|p| p.strip_prefix(ADS_SERVICE))
            .and_then(|p| p.strip_prefix("/"));
        // New streams are refused once draining (or once the serving future is gone), so Envoy goes elsewhere.
        let drain = &self.shared.drain;
        let refused = if *drain.borrow() || drain.has_changed().is_err() {
            Status::unavailable("xDS server is draining")
        } else {
            match method {
                Some("StreamAggregatedResources") => return self.run::<Sotw>(req, respond, wrote),
                Some("DeltaAggregatedResources") => return self.run::<Delta>(req, respond, wrote),
                _ => Status::unimplemented(format!("no method {}", req.uri().path())),
            }
        };
        // A trailers-only response: the status goes in the headers, which end the stream.
        let mut head = grpc_head();
        head.headers_mut().extend(trailers(&refused));
        let _ = respond.send_response(head, true);
        None
    }

    fn run<F: Flavor>(
        &self,
        req: Request<RecvStream>,
        mut respond: SendResponse<Encoded>,
        wrote: &Arc<AtomicBool>,
    ) -> Option<(StreamTask, Arc<Mark>)> {
        let (parts, body) = req.into_parts();
        // The client may have reset the stream already: then there is nothing to run.
        let send = respond.send_response(grpc_head(), false).ok()?;
        let mark = Arc::new(Mark::default());
        let task = connection::run::<F>(
            self.shared.clone(),
            MetadataMap::from_headers(parts.headers),
            RequestStream::new(body, self.max_message),
            ResponseSink::new(send, wrote.clone()),
            mark.clone(),
        );
        // Logged within the connection's span (its peer); the stream adds its own once the proxy is known.
        Some((Box::pin(task), mark))
    }
}

/// The response head of a gRPC stream.
fn grpc_head() -> Response<()> {
    let mut head = Response::new(());
    head.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    head
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// A waker that counts its wakes.
    #[derive(Default)]
    pub(crate) struct Count(pub AtomicUsize);

    impl ArcWake for Count {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.fetch_add(1, SeqCst);
        }
    }

    #[test]
    fn wakes_during_a_turn_mean_another_turn_and_later_ones_wake_the_task() {
        let task = Arc::new(Count::default());
        let wake = Arc::new(InPoll::default());
        let waker = futures::task::waker(wake.clone());
        wake.task.register(&futures::task::waker(task.clone()));

        wake.start();
        waker.wake_by_ref();
        assert!(wake.stop(), "woken during the turn");
        assert_eq!(task.0.load(SeqCst), 0, "the task is not scheduled for it");

        wake.start();
        assert!(!wake.stop(), "a quiet turn ends the poll");
        waker.wake_by_ref();
        assert_eq!(
            task.0.load(SeqCst),
            1,
            "a wake between polls wakes the task"
        );
    }
}
