//! A lean fake Envoy for the scale bench: one delta ADS stream over its own HTTP/2 connection, spoken by hand
//! over a `TcpStream` (RFC 9113 frames, a fixed HPACK request head) and driven only by the client's own task.
//!
//! The 2,000 fake clients share the 2 cores with the server under test, and the server is what the bench
//! measures: every cycle a client spends is taken from it. With the `h2` crate, about half of a client's CPU
//! per push went to stream bookkeeping, tracing spans and wakeups; this client costs one `write` (the
//! previous ACK, with any frame replies) and one `read` per push, and little else in userland (most of what
//! is left is the kernel's loopback TCP). It does only what one gRPC stream needs: SETTINGS, PING, flow
//! control both ways, DATA; it never decodes the server's headers (their END_STREAM flag is all that matters).

use std::net::SocketAddr;

use bytes::{Buf, BufMut, BytesMut};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// Envoy's HTTP/2 receive windows for its xDS cluster (256 MiB, stream and connection): large responses are
/// never held up waiting for a WINDOW_UPDATE.
const WINDOW: u32 = 256 << 20;
/// Every window starts at this until SETTINGS or WINDOW_UPDATE say otherwise (RFC 9113 §6.9.2).
const DEFAULT_WINDOW: i64 = 65_535;
const MAX_WINDOW: i64 = (1 << 31) - 1;
/// The largest frame the client accepts: HTTP/2's default (not advertised), which Envoy keeps.
const MAX_FRAME: usize = 16_384;
/// The read buffer: a large response comes several frames per syscall.
const READ_BUF: usize = 64 << 10;
/// What the write buffer keeps between writes (a larger one, after the first EDS subscription, is let go).
const WRITE_BUF: usize = 4 << 10;

/// The only stream: the ADS call.
const STREAM: u32 = 1;

// Frame types (RFC 9113 §6); CONTINUATION, PRIORITY and unknown types are ignored.
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
// Flags.
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
// Settings (§6.5.2).
const ENABLE_PUSH: u16 = 0x2;
const INITIAL_WINDOW_SIZE: u16 = 0x4;
const MAX_FRAME_SIZE: u16 = 0x5;

/// A delta ADS client whose connection is driven inside [`LeanDelta::recv`].
pub struct LeanDelta {
    tcp: TcpStream,
    /// Bytes read and not yet handled as frames.
    rbuf: BytesMut,
    h2: Conn,
    node: Option<Node>,
}

/// The connection's state apart from the socket and the read buffer, so frames can be handled in place.
struct Conn {
    /// Frames to write before the next read.
    wbuf: BytesMut,
    /// gRPC-framed requests not yet sent as DATA: larger than a frame, or waiting for send window.
    pending: BytesMut,
    /// The stream's DATA not yet decoded, when a response spans frames (a whole one is decoded in place).
    msg: BytesMut,
    /// Send windows: the connection's, and the stream's (which may go below zero, §6.9.2).
    conn_send: i64,
    stream_send: i64,
    /// The server's SETTINGS_INITIAL_WINDOW_SIZE: a change moves the stream's send window by the difference.
    peer_initial_window: i64,
    /// The server's SETTINGS_MAX_FRAME_SIZE, which bounds the DATA frames sent.
    peer_max_frame: usize,
    /// DATA received and not yet given back by WINDOW_UPDATE: the connection's, the stream's.
    conn_unacked: u32,
    stream_unacked: u32,
    /// Why the stream or the connection ended, once it has (responses already received are still returned).
    closed: Option<String>,
}

impl LeanDelta {
    /// Opens the stream as node `node_id`. Only the TCP connection is made here: the HTTP/2 preface and the
    /// request head go out with the first requests, in the first [`LeanDelta::recv`]'s write.
    pub async fn connect(addr: SocketAddr, node_id: &str) -> Result<Self, String> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true)
            .map_err(|e| format!("TCP_NODELAY: {e}"))?;
        let mut wbuf = BytesMut::with_capacity(WRITE_BUF);
        wbuf.put_slice(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        put_head(&mut wbuf, 12, SETTINGS, 0, 0);
        wbuf.put_u16(ENABLE_PUSH);
        wbuf.put_u32(0);
        wbuf.put_u16(INITIAL_WINDOW_SIZE);
        wbuf.put_u32(WINDOW);
        // The connection's receive window is not a setting: only WINDOW_UPDATE raises it.
        put_head(&mut wbuf, 4, WINDOW_UPDATE, 0, 0);
        wbuf.put_u32(WINDOW - DEFAULT_WINDOW as u32);
        let block = request_head(&addr.to_string());
        put_head(&mut wbuf, block.len(), HEADERS, END_HEADERS, STREAM);
        wbuf.put_slice(&block);
        Ok(LeanDelta {
            tcp,
            rbuf: BytesMut::with_capacity(READ_BUF),
            h2: Conn {
                wbuf,
                pending: BytesMut::new(),
                msg: BytesMut::new(),
                conn_send: DEFAULT_WINDOW,
                stream_send: DEFAULT_WINDOW,
                peer_initial_window: DEFAULT_WINDOW,
                peer_max_frame: MAX_FRAME,
                conn_unacked: 0,
                stream_unacked: 0,
                closed: None,
            },
            node: Some(Node {
                id: node_id.to_owned(),
                cluster: "bench".to_owned(),
                ..Default::default()
            }),
        })
    }

    /// Sends one request (the node goes with the first). It is written out by the next [`LeanDelta::recv`]
    /// (later if the server's windows are full); a broken stream shows there.
    pub fn send(&mut self, mut req: DeltaDiscoveryRequest) {
        if let Some(node) = self.node.take() {
            req.node = Some(node);
        }
        let h2 = &mut self.h2;
        let len = 5 + req.encoded_len();
        // Usually the request fits the windows and a frame: encoded straight into its DATA frame.
        if h2.pending.is_empty() && len as i64 <= h2.send_room() {
            put_head(&mut h2.wbuf, len, DATA, 0, STREAM);
            put_grpc(&mut h2.wbuf, &req);
            h2.conn_send -= len as i64;
            h2.stream_send -= len as i64;
        } else {
            put_grpc(&mut h2.pending, &req);
            h2.flush_pending();
        }
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
    pub fn ack(&mut self, resp: &Response) {
        self.send(DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        });
    }

    /// The next response, or why the stream or the connection ended. Writes what was sent (and the replies
    /// to the server's frames) first, then handles the frames already read, and reads only if they hold no
    /// response.
    pub async fn recv(&mut self) -> Result<Response, String> {
        let h2 = &mut self.h2;
        loop {
            if !h2.wbuf.is_empty() && h2.closed.is_none() {
                self.tcp
                    .write_all(&h2.wbuf)
                    .await
                    .map_err(|e| format!("xDS connection: write: {e}"))?;
                h2.wbuf.clear();
                if h2.wbuf.capacity() > WRITE_BUF {
                    h2.wbuf = BytesMut::with_capacity(WRITE_BUF);
                }
            }
            if let Some(message) = h2.decode()? {
                return Ok(message);
            }
            let (used, message) = h2.on_frames(&self.rbuf);
            self.rbuf.advance(used);
            if let Some(message) = message {
                return Ok(message);
            }
            if let Some(why) = &h2.closed {
                return Err(why.clone());
            }
            // Room for a whole frame. The buffer never grows: with less room than that left, what is left
            // is less than a frame, and `reserve` moves it to the front.
            self.rbuf.reserve(9 + MAX_FRAME);
            match self.tcp.read_buf(&mut self.rbuf).await {
                Ok(0) => h2.closed = Some("xDS connection closed by the server".to_owned()),
                Ok(_) => {}
                Err(e) => return Err(format!("xDS connection: read: {e}")),
            }
        }
    }
}

impl Conn {
    /// Handles the complete frames at the front of `buf`, up to the first that completes a response; returns
    /// how many bytes they took, and that response.
    fn on_frames(&mut self, buf: &[u8]) -> (usize, Option<Response>) {
        let mut at = 0;
        while self.closed.is_none() {
            let Some(head) = buf.get(at..at + 9) else {
                break;
            };
            let (len, kind, flags, stream) = parse_head(head.try_into().expect("9 bytes"));
            if len > MAX_FRAME {
                self.closed = Some(format!(
                    "xDS connection: a frame of {len} bytes (type {kind}) exceeds {MAX_FRAME}"
                ));
                break;
            }
            let Some(payload) = buf.get(at + 9..at + 9 + len) else {
                break;
            };
            at += 9 + len;
            match self.on_frame(kind, flags, stream, payload) {
                Ok(None) => {}
                Ok(Some(message)) => return (at, Some(message)),
                Err(why) => self.closed = Some(why),
            }
        }
        (at, None)
    }

    /// Handles one frame: the response it completes, or `Err` when it ends the stream or the connection.
    fn on_frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
    ) -> Result<Option<Response>, String> {
        if matches!(kind, SETTINGS | PING | GOAWAY) && stream != 0 {
            return Err(format!(
                "xDS connection: frame type {kind} on stream {stream}"
            ));
        }
        match kind {
            DATA => {
                // Flow control counts the whole payload, padding included (§6.9.1). Half a window is given
                // back at a time, so the server never waits for it.
                let n = payload.len() as u32;
                self.conn_unacked += n;
                if self.conn_unacked >= WINDOW / 2 {
                    let increment = std::mem::take(&mut self.conn_unacked);
                    self.put_window_update(0, increment);
                }
                if stream != STREAM {
                    return Ok(None);
                }
                self.stream_unacked += n;
                if self.stream_unacked >= WINDOW / 2 {
                    let increment = std::mem::take(&mut self.stream_unacked);
                    self.put_window_update(STREAM, increment);
                }
                let data = unpad(flags, payload)?;
                if flags & END_STREAM != 0 {
                    self.closed = Some("ADS stream ended (END_STREAM on DATA)".to_owned());
                }
                // The usual push is a whole response in one frame: decoded in place, not copied. Otherwise
                // the frame may complete one that spans frames. (What follows a response waits in `msg`.)
                if self.msg.is_empty()
                    && let Some(len) = grpc_len(data)?
                {
                    let message = decode_response(&data[5..len])?;
                    self.msg.extend_from_slice(&data[len..]);
                    return Ok(Some(message));
                }
                if self.msg.is_empty()
                    && let Some(len) = grpc_len_prefix(data)
                {
                    // The first frame of a large response: one buffer of its whole size, not a growing one.
                    self.msg.reserve(len);
                }
                self.msg.extend_from_slice(data);
                return self.decode();
            }
            // The response head or the trailers: only whether they end the stream matters.
            HEADERS if stream == STREAM && flags & END_STREAM != 0 => {
                return Err("ADS stream ended (HEADERS with END_STREAM)".to_owned());
            }
            RST_STREAM if stream == STREAM => {
                let code = word(payload, "RST_STREAM")?;
                return Err(format!(
                    "ADS stream reset by the server (error code {code})"
                ));
            }
            SETTINGS if flags & ACK == 0 => self.on_settings(payload)?,
            PUSH_PROMISE => return Err("xDS connection: PUSH_PROMISE, push is disabled".to_owned()),
            PING if flags & ACK == 0 => {
                if payload.len() != 8 {
                    return Err(format!("xDS connection: PING of {} bytes", payload.len()));
                }
                put_head(&mut self.wbuf, 8, PING, ACK, 0);
                self.wbuf.put_slice(payload);
            }
            GOAWAY => {
                // Last stream id, error code, then debug data.
                let (ids, debug) = payload
                    .split_at_checked(8)
                    .ok_or_else(|| format!("xDS connection: GOAWAY of {} bytes", payload.len()))?;
                let code = word(&ids[4..], "GOAWAY")?;
                let debug = String::from_utf8_lossy(debug);
                return Err(format!(
                    "xDS connection: GOAWAY (error code {code}) {debug}"
                ));
            }
            WINDOW_UPDATE => {
                let increment = (word(payload, "WINDOW_UPDATE")? & 0x7fff_ffff) as i64;
                let window = match stream {
                    0 => &mut self.conn_send,
                    STREAM => &mut self.stream_send,
                    _ => return Ok(None),
                };
                if increment == 0 {
                    return Err(format!(
                        "xDS connection: WINDOW_UPDATE of 0 on stream {stream}"
                    ));
                }
                *window += increment;
                if *window > MAX_WINDOW {
                    return Err(format!(
                        "xDS connection: send window of stream {stream} overflows"
                    ));
                }
                self.flush_pending();
            }
            _ => {}
        }
        Ok(None)
    }

    /// The server's SETTINGS (not an ACK): applies the two that bear on what the client sends, and ACKs.
    fn on_settings(&mut self, payload: &[u8]) -> Result<(), String> {
        if !payload.len().is_multiple_of(6) {
            return Err(format!(
                "xDS connection: SETTINGS of {} bytes",
                payload.len()
            ));
        }
        for setting in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([setting[0], setting[1]]);
            let value = u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
            match id {
                INITIAL_WINDOW_SIZE => {
                    let value = value as i64;
                    // The stream is open: its window moves by the change (§6.9.2), possibly below zero.
                    self.stream_send += value - self.peer_initial_window;
                    self.peer_initial_window = value;
                    if value > MAX_WINDOW || self.stream_send > MAX_WINDOW {
                        return Err(format!(
                            "xDS connection: INITIAL_WINDOW_SIZE {value} too large"
                        ));
                    }
                }
                MAX_FRAME_SIZE => {
                    if !(16_384..1 << 24).contains(&value) {
                        return Err(format!(
                            "xDS connection: MAX_FRAME_SIZE {value} out of range"
                        ));
                    }
                    self.peer_max_frame = value as usize;
                }
                _ => {}
            }
        }
        put_head(&mut self.wbuf, 0, SETTINGS, ACK, 0);
        self.flush_pending();
        Ok(())
    }

    /// The most the next DATA frame may carry: the send windows and the server's frame size allow it.
    fn send_room(&self) -> i64 {
        self.conn_send
            .min(self.stream_send)
            .min(self.peer_max_frame as i64)
    }

    /// Moves pending request bytes into DATA frames, as far as the send windows allow.
    fn flush_pending(&mut self) {
        while !self.pending.is_empty() {
            let n = (self.pending.len() as i64).min(self.send_room());
            if n <= 0 {
                return;
            }
            put_head(&mut self.wbuf, n as usize, DATA, 0, STREAM);
            self.wbuf.put_slice(&self.pending[..n as usize]);
            self.pending.advance(n as usize);
            self.conn_send -= n;
            self.stream_send -= n;
        }
        // All sent: let go of a large request's buffer.
        self.pending = BytesMut::new();
    }

    fn put_window_update(&mut self, stream: u32, increment: u32) {
        put_head(&mut self.wbuf, 4, WINDOW_UPDATE, 0, stream);
        self.wbuf.put_u32(increment);
    }

    /// A response from the front of the stream's copied data, if it is all there.
    fn decode(&mut self) -> Result<Option<Response>, String> {
        let Some(len) = grpc_len(&self.msg)? else {
            return Ok(None);
        };
        let message = decode_response(&self.msg[5..len])?;
        self.msg.advance(len);
        if self.msg.is_empty() {
            // Let go of a large response's buffer: whole responses are decoded in place.
            self.msg = BytesMut::new();
        }
        Ok(Some(message))
    }
}

/// The parts of a `DeltaDiscoveryResponse` the bench reads (its field numbers). Resource bodies are skipped,
/// not copied: a proxy parses them on its own cores, and here every client shares the server's two.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Response {
    #[prost(string, tag = "1")]
    pub system_version_info: String,
    #[prost(message, repeated, tag = "2")]
    pub resources: Vec<ResourceName>,
    #[prost(string, tag = "4")]
    pub type_url: String,
    #[prost(string, tag = "5")]
    pub nonce: String,
    #[prost(string, repeated, tag = "6")]
    pub removed_resources: Vec<String>,
}

/// A `Resource`'s name and version, without its body.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResourceName {
    #[prost(string, tag = "1")]
    pub version: String,
    #[prost(string, tag = "3")]
    pub name: String,
}

/// The whole length (prefix included) of the gRPC message starting `data`, once its prefix is there.
fn grpc_len_prefix(data: &[u8]) -> Option<usize> {
    let prefix: [u8; 4] = data.get(1..5)?.try_into().ok()?;
    Some(5 + u32::from_be_bytes(prefix) as usize)
}

/// Appends `req` as a gRPC message: uncompressed flag, 32-bit length, the message.
fn put_grpc(buf: &mut BytesMut, req: &DeltaDiscoveryRequest) {
    let len = req.encoded_len();
    buf.reserve(5 + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    req.encode(buf).expect("reserved buffer");
}

/// The length (prefix included) of the gRPC message at the front of `data`, once it is all there.
fn grpc_len(data: &[u8]) -> Result<Option<usize>, String> {
    let Some(len) = grpc_len_prefix(data) else {
        return Ok(None);
    };
    if data[0] != 0 {
        return Err(format!("compressed gRPC message (flag {})", data[0]));
    }
    Ok((data.len() >= len).then_some(len))
}

fn decode_response(message: &[u8]) -> Result<Response, String> {
    Response::decode(message).map_err(|e| format!("bad DeltaDiscoveryResponse: {e}"))
}

/// Writes a frame header (RFC 9113 §4.1): 24-bit payload length, type, flags, stream id.
fn put_head(buf: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: u32) {
    buf.put_uint(len as u64, 3);
    buf.put_u8(kind);
    buf.put_u8(flags);
    buf.put_u32(stream);
}

/// Reads a frame header: (payload length, type, flags, stream id without the reserved bit).
fn parse_head(head: &[u8; 9]) -> (usize, u8, u8, u32) {
    let len = (head[0] as usize) << 16 | (head[1] as usize) << 8 | head[2] as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    (len, head[3], head[4], stream)
}

/// A payload (or a field) that must be exactly one 32-bit word.
fn word(payload: &[u8], kind: &str) -> Result<u32, String> {
    let bytes: [u8; 4] = payload
        .try_into()
        .map_err(|_| format!("xDS connection: {kind} of {} bytes", payload.len()))?;
    Ok(u32::from_be_bytes(bytes))
}

/// A DATA payload without its padding (§6.1): with PADDED, a pad length byte, the data, then the padding.
fn unpad(flags: u8, payload: &[u8]) -> Result<&[u8], String> {
    if flags & PADDED == 0 {
        return Ok(payload);
    }
    match payload.split_first() {
        Some((&pad, rest)) if pad as usize <= rest.len() => Ok(&rest[..rest.len() - pad as usize]),
        _ => Err("xDS connection: DATA padding longer than the frame".to_owned()),
    }
}

/// The request's header block (RFC 7541): static-table entries where HPACK has the whole field, otherwise
/// literals without indexing (so neither side keeps a dynamic table for them), never Huffman-coded.
fn request_head(authority: &str) -> Vec<u8> {
    let mut block = Vec::with_capacity(256);
    hpack_int(&mut block, 0x80, 7, 3); // :method: POST (§6.1 indexed field)
    hpack_int(&mut block, 0x80, 7, 6); // :scheme: http
    hpack_literal(&mut block, 4, PATH); // name :path
    hpack_literal(&mut block, 1, authority); // name :authority
    hpack_literal(&mut block, 31, "application/grpc"); // name content-type
    block.push(0x00); // a new name: `te` is not in the static table
    hpack_string(&mut block, "te");
    hpack_string(&mut block, "trailers");
    block
}

/// A literal field without indexing whose name is static-table entry `name` (§6.2.2: pattern 0000, 4-bit
/// name index).
fn hpack_literal(block: &mut Vec<u8>, name: usize, value: &str) {
    hpack_int(block, 0x00, 4, name);
    hpack_string(block, value);
}

/// A string literal (§5.2): H = 0 (raw octets) and a 7-bit-prefix length.
fn hpack_string(block: &mut Vec<u8>, s: &str) {
    hpack_int(block, 0x00, 7, s.len());
    block.extend_from_slice(s.as_bytes());
}

/// An integer with an N-bit prefix (§5.1); `pattern` holds the first byte's bits above the prefix. A value
/// that does not fit below 2^N − 1 fills the prefix and continues 7 bits a byte, least significant first.
fn hpack_int(block: &mut Vec<u8>, pattern: u8, prefix_bits: u32, value: usize) {
    let max = (1 << prefix_bits) - 1;
    if value < max {
        block.push(pattern | value as u8);
        return;
    }
    block.push(pattern | max as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        block.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    block.push(rest as u8);
}
