//! A lean fake Envoy for the scale bench: one delta ADS stream over its own HTTP/2 connection, driven by the
//! client's own task (the `h2` crate directly: no tonic client, no request channel, no body-pipe task).
//!
//! The 2,000 fake clients share the 2 cores with the server they measure; a tonic client costs three task
//! hops per ACK and as much CPU as the server itself. This one costs one task per client, so the bench's
//! numbers are mostly the server's.

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use h2::client::{Connection, ResponseFuture};
use h2::{RecvStream, SendStream};
use prost::Message;
use tokio::net::TcpStream;

const PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

const WINDOW: u32 = 256 << 20;

/// The response side of the stream: headers not yet received, then the body.
enum Inbound {
    Headers(ResponseFuture),
    Body(RecvStream),
}

/// A delta ADS client whose connection is polled inside [`LeanDelta::recv`].
pub struct LeanDelta {
    conn: Pin<Box<Connection<TcpStream, Bytes>>>,
    send: SendStream<Bytes>,
    inbound: Inbound,
    /// Received bytes not yet decoded into a message.
    buf: BytesMut,
    node: Option<Node>,
}

impl LeanDelta {
    /// Opens the stream as node `node_id`.
    pub async fn connect(addr: SocketAddr, node_id: &str) -> Result<Self, String> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true)
            .map_err(|e| format!("TCP_NODELAY: {e}"))?;
        // Envoy's default HTTP/2 windows for its xDS cluster (256 MiB): large responses are never held up
        // waiting for a WINDOW_UPDATE.
        let (mut requests, conn) = h2::client::Builder::new()
            .initial_window_size(WINDOW)
            .initial_connection_window_size(WINDOW)
            .handshake(tcp)
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        let request = http::Request::post(format!("http://{addr}{PATH}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("request head");
        let (response, send) = requests
            .send_request(request, false)
            .map_err(|e| format!("open the ADS stream: {e}"))?;
        Ok(LeanDelta {
            conn: Box::pin(conn),
            send,
            inbound: Inbound::Headers(response),
            buf: BytesMut::new(),
            node: Some(Node {
                id: node_id.to_owned(),
                cluster: "bench".to_owned(),
                ..Default::default()
            }),
        })
    }

    /// Sends one request (the node goes with the first). It is written out while [`LeanDelta::recv`] waits; a
    /// broken stream shows there.
    pub fn send(&mut self, mut req: DeltaDiscoveryRequest) {
        if let Some(node) = self.node.take() {
            req.node = Some(node);
        }
        let len = req.encoded_len();
        let mut frame = BytesMut::with_capacity(5 + len);
        frame.put_u8(0);
        frame.put_u32(len as u32);
        req.encode(&mut frame).expect("sized buffer");
        let _ = self.send.send_data(frame.freeze(), false);
    }

    /// Subscribes to `names` of `type_url` (none on a first CDS/LDS request: wildcard).
    pub fn subscribe(&mut self, type_url: &str, names: &[&str]) {
        self.send(DeltaDiscoveryRequest {
            type_url: type_url.to_owned(),
            resource_names_subscribe: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        });
    }

    /// ACKs `resp`.
    pub fn ack(&mut self, resp: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        });
    }

    /// The next response, or why the stream or the connection ended.
    pub async fn recv(&mut self) -> Result<DeltaDiscoveryResponse, String> {
        loop {
            if let Some(message) = self.decode() {
                return Ok(message);
            }
            let data = poll_fn(|cx| self.poll_data(cx)).await?;
            let n = data.len();
            self.buf.extend_from_slice(&data);
            if let Inbound::Body(body) = &mut self.inbound {
                body.flow_control()
                    .release_capacity(n)
                    .map_err(|e| format!("release window: {e}"))?;
            }
        }
    }

    /// One gRPC message from the front of the buffer, if it is all there.
    fn decode(&mut self) -> Option<DeltaDiscoveryResponse> {
        if self.buf.len() < 5 {
            return None;
        }
        assert_eq!(self.buf[0], 0, "compressed gRPC message");
        let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
        if self.buf.len() < 5 + len {
            return None;
        }
        self.buf.advance(5);
        let message = self.buf.split_to(len);
        Some(DeltaDiscoveryResponse::decode(message).expect("a DeltaDiscoveryResponse"))
    }

    /// Drives the connection (writes what was sent, reads frames) until a DATA frame of the stream arrives.
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Bytes, String>> {
        if let Poll::Ready(result) = self.conn.as_mut().poll(cx) {
            return Poll::Ready(Err(format!("xDS connection ended: {result:?}")));
        }
        loop {
            match &mut self.inbound {
                Inbound::Headers(response) => match Pin::new(response).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(head)) if head.status() == 200 => {
                        self.inbound = Inbound::Body(head.into_body());
                    }
                    Poll::Ready(Ok(head)) => {
                        return Poll::Ready(Err(format!("ADS stream refused: {}", head.status())));
                    }
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(Err(format!("ADS stream refused: {e}")));
                    }
                },
                Inbound::Body(body) => {
                    return body.poll_data(cx).map(|data| match data {
                        Some(Ok(data)) => Ok(data),
                        Some(Err(e)) => Err(format!("ADS stream failed: {e}")),
                        None => Err("ADS stream ended".to_owned()),
                    });
                }
            }
        }
    }
}
