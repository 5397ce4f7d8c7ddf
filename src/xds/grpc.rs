//! gRPC at the wire level for ADS: length-prefixed messages read from and written to one HTTP/2 stream, in
//! place of tonic's generated server and codec.
//!
//! Why: tonic's codec keeps one encode and one decode buffer per stream, each as large as the largest message
//! the stream ever carried (a full CDS/EDS/RDS response is hundreds of KB). At thousands of proxies those idle
//! buffers were most of the server's memory. Here every response is encoded into an exactly-sized buffer that
//! is freed once HTTP/2 has written it, and request bytes are buffered only while a message is incomplete.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse};
use http::{HeaderMap, HeaderValue};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len, string};
use tonic::Status;
use tracing::warn;

use super::XdsResource;

/// Length of the gRPC message prefix: compressed flag and big-endian length.
const PREFIX: usize = 5;

/// A message as it goes on the wire.
pub(crate) trait Wire: Send + Sync + 'static {
    /// Encoded length, without the gRPC prefix.
    fn wire_len(&self) -> usize;
    /// Of that, the bytes [`Parts::body`] will reference rather than copy.
    fn shared_len(&self) -> usize {
        0
    }
    /// Appends the encoding (without the gRPC prefix).
    fn wire_encode(&self, out: &mut Parts);
}

/// Resource bodies at least this long are referenced by the message, not copied into it: a route table
/// of a thousand services (~600 KB) would otherwise be copied once per proxy, and held until written.
const SHARE_MIN: usize = 4096;

/// An encoded message under construction: bytes written so far, cut into parts where a shared body goes.
pub(crate) struct Parts {
    cur: BytesMut,
    done: VecDeque<Bytes>,
}

impl Parts {
    /// Room for `copied` bytes, the message but its shared bodies, in one buffer.
    fn with_capacity(copied: usize) -> Self {
        Parts {
            cur: BytesMut::with_capacity(copied),
            done: VecDeque::new(),
        }
    }

    /// Where the next bytes go.
    pub fn buf(&mut self) -> &mut BytesMut {
        &mut self.cur
    }

    /// Appends `body`: copied when short, else referenced.
    fn body(&mut self, body: &Bytes) {
        if body.len() < SHARE_MIN {
            self.cur.extend_from_slice(body);
            return;
        }
        if !self.cur.is_empty() {
            // `split` keeps the rest of the buffer's room for what follows.
            self.done.push_back(self.cur.split().freeze());
        }
        self.done.push_back(body.clone());
    }

    fn finish(mut self) -> Encoded {
        if !self.cur.is_empty() {
            self.done.push_back(self.cur.freeze());
        }
        let remaining = self.done.iter().map(Bytes::len).sum();
        Encoded {
            parts: self.done,
            remaining,
        }
    }
}

/// One encoded message as HTTP/2 writes it: its parts in turn (vectored where the socket can).
#[derive(Debug, Default)]
pub(crate) struct Encoded {
    parts: VecDeque<Bytes>,
    remaining: usize,
}

impl Buf for Encoded {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.parts.front().map_or(&[], |b| b.as_ref())
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advance past the end of a message");
        self.remaining -= cnt;
        while cnt > 0 {
            let front = self.parts.front_mut().expect("counted bytes are there");
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.parts.pop_front();
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [std::io::IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, part) in dst.iter_mut().zip(&self.parts) {
            *slot = std::io::IoSlice::new(part);
            n += 1;
        }
        n
    }
}

/// A discovery response whose resources are appended to the encoded message straight from their shared,
/// already-encoded bytes, instead of being copied into an `Any` first (a copy per resource per proxy).
///
/// Protobuf allows a message's fields in any order and repeated fields in several runs, so the response is
/// `head` (every other field, encoded by prost) followed by one `resources` field per resource.
#[derive(Debug)]
pub(crate) struct WireResponse<H> {
    pub head: H,
    pub resources: Vec<Arc<XdsResource>>,
}

/// `resources` is field 2 of both `DiscoveryResponse` (`repeated Any`) and `DeltaDiscoveryResponse`
/// (`repeated Resource`).
const RESOURCES_FIELD: u32 = 2;

/// The `Any` of a resource: `type_url` (1) and `value` (2).
fn any_len(r: &XdsResource) -> usize {
    string::encoded_len(1, &r.type_url) + bytes_field_len(2, r.bytes.len())
}

fn encode_any(r: &XdsResource, out: &mut Parts) {
    let buf = out.buf();
    string::encode(1, &r.type_url, buf);
    encode_key(2, WireType::LengthDelimited, buf);
    encode_varint(r.bytes.len() as u64, buf);
    out.body(&r.bytes);
}

/// The bytes of `resources` a message references instead of copying.
fn shared_len(resources: &[Arc<XdsResource>]) -> usize {
    resources
        .iter()
        .map(|r| r.bytes.len())
        .filter(|&n| n >= SHARE_MIN)
        .sum()
}

fn bytes_field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// A delta `Resource`: `version` (1), `resource` (2, the `Any`), `name` (3).
fn resource_len(r: &XdsResource) -> usize {
    string::encoded_len(1, &r.version)
        + bytes_field_len(2, any_len(r))
        + string::encoded_len(3, &r.name)
}

impl Wire for WireResponse<DiscoveryResponse> {
    fn wire_len(&self) -> usize {
        self.head.encoded_len()
            + self
                .resources
                .iter()
                .map(|r| bytes_field_len(RESOURCES_FIELD, any_len(r)))
                .sum::<usize>()
    }

    fn shared_len(&self) -> usize {
        shared_len(&self.resources)
    }

    fn wire_encode(&self, out: &mut Parts) {
        // A BytesMut grows as needed, so encoding cannot run out of room.
        let _ = self.head.encode(out.buf());
        for r in &self.resources {
            encode_key(RESOURCES_FIELD, WireType::LengthDelimited, out.buf());
            encode_varint(any_len(r) as u64, out.buf());
            encode_any(r, out);
        }
    }
}

impl Wire for WireResponse<DeltaDiscoveryResponse> {
    fn wire_len(&self) -> usize {
        self.head.encoded_len()
            + self
                .resources
                .iter()
                .map(|r| bytes_field_len(RESOURCES_FIELD, resource_len(r)))
                .sum::<usize>()
    }

    fn shared_len(&self) -> usize {
        shared_len(&self.resources)
    }

    fn wire_encode(&self, out: &mut Parts) {
        let _ = self.head.encode(out.buf());
        for r in &self.resources {
            let buf = out.buf();
            encode_key(RESOURCES_FIELD, WireType::LengthDelimited, buf);
            encode_varint(resource_len(r) as u64, buf);
            string::encode(1, &r.version, buf);
            encode_key(2, WireType::LengthDelimited, buf);
            encode_varint(any_len(r) as u64, buf);
            encode_any(r, out);
            string::encode(3, &r.name, out.buf());
        }
    }
}

/// Where a request stream's bytes come from: an HTTP/2 stream's DATA frames (tests: a list of chunks).
pub(crate) trait Chunks: Send {
    /// The next chunk of the body; `None` once the client half-closed the stream.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Status>>>;
}

impl Chunks for h2::RecvStream {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Status>>> {
        self.poll_data(cx).map(|chunk| {
            chunk.map(|data| {
                let data = data.map_err(|e| Status::unavailable(format!("HTTP/2: {e}")))?;
                // The bytes are ours now: let the client send as much again.
                let _ = self.flow_control().release_capacity(data.len());
                Ok(data)
            })
        })
    }
}

#[cfg(test)]
impl Chunks for std::collections::VecDeque<Bytes> {
    fn poll_chunk(&mut self, _: &mut Context<'_>) -> Poll<Option<Result<Bytes, Status>>> {
        Poll::Ready(self.pop_front().map(Ok))
    }
}

/// The requests of one stream, decoded one message at a time.
///
/// A request usually arrives whole in one HTTP/2 frame (an ACK is ~100 bytes) and is decoded straight from
/// that frame; only a message split across frames is gathered into a buffer, which is let go afterwards.
pub(crate) struct RequestStream<M, C = h2::RecvStream> {
    body: C,
    /// The unread rest of the last frame, while `partial` is empty.
    frame: Bytes,
    /// A message split across frames, gathered.
    partial: BytesMut,
    max_message: usize,
    ended: bool,
    _message: PhantomData<fn() -> M>,
}

impl<M: prost::Message + Default, C: Chunks> RequestStream<M, C> {
    pub fn new(body: C, max_message: usize) -> Self {
        RequestStream {
            body,
            frame: Bytes::new(),
            partial: BytesMut::new(),
            max_message,
            ended: false,
            _message: PhantomData,
        }
    }

    /// The next request; `Ok(None)` when the client half-closed the stream.
    pub async fn message(&mut self) -> Result<Option<M>, Status> {
        loop {
            if let Some(msg) = self.parse()? {
                return Ok(Some(msg));
            }
            if self.ended {
                return match self.partial.is_empty() {
                    true => Ok(None),
                    false => Err(Status::internal(
                        "request stream ended in the middle of a message",
                    )),
                };
            }
            match poll_fn(|cx| self.body.poll_chunk(cx)).await {
                Some(Ok(data)) => {
                    if self.partial.is_empty() {
                        self.frame = data;
                    } else {
                        self.partial.extend_from_slice(&data);
                    }
                }
                Some(Err(status)) => return Err(status),
                None => self.ended = true,
            }
        }
    }

    /// Takes one complete message off the frame or the gathered bytes, if there is one.
    fn parse(&mut self) -> Result<Option<M>, Status> {
        if self.partial.is_empty() {
            let Some(len) = self.complete(&self.frame)? else {
                // Incomplete: gather it with what follows.
                self.partial.extend_from_slice(&self.frame);
                self.frame = Bytes::new();
                return Ok(None);
            };
            let msg = decode(&self.frame[PREFIX..PREFIX + len])?;
            self.frame.advance(PREFIX + len);
            return Ok(Some(msg));
        }
        let Some(len) = self.complete(&self.partial)? else {
            if self.partial.len() >= PREFIX {
                let len = u32::from_be_bytes([
                    self.partial[1],
                    self.partial[2],
                    self.partial[3],
                    self.partial[4],
                ]) as usize;
                self.partial.reserve(PREFIX + len - self.partial.len());
            }
            return Ok(None);
        };
        let msg = decode(&self.partial[PREFIX..PREFIX + len])?;
        self.partial.advance(PREFIX + len);
        // The buffer is not kept for the stream's lifetime; what follows the message is parsed as a frame.
        let rest = std::mem::take(&mut self.partial);
        if !rest.is_empty() {
            self.frame = rest.freeze();
        }
        Ok(Some(msg))
    }

    /// The length of the message at the start of `buf` if all of it is there (`None` when empty or
    /// incomplete); errors for a compressed or oversized message.
    fn complete(&self, buf: &[u8]) -> Result<Option<usize>, Status> {
        if buf.len() < PREFIX {
            return Ok(None);
        }
        if buf[0] != 0 {
            return Err(Status::unimplemented(
                "compressed requests are not supported",
            ));
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if len > self.max_message {
            return Err(Status::resource_exhausted(format!(
                "request of {len} bytes is over the limit of {}",
                self.max_message
            )));
        }
        Ok((buf.len() >= PREFIX + len).then_some(len))
    }
}

fn decode<M: prost::Message + Default>(bytes: &[u8]) -> Result<M, Status> {
    M::decode(bytes).map_err(|e| Status::invalid_argument(format!("undecodable request: {e}")))
}

/// A stream's responses: one HTTP/2 DATA frame per message, then the gRPC status trailers (`OK` when dropped
/// without [`ResponseSink::close`]).
pub(crate) struct ResponseSink<M> {
    send: h2::SendStream<Encoded>,
    done: bool,
    /// Set whenever this sink hands HTTP/2 something to write: the connection then writes it even while it
    /// holds off reading ([`super::fanout`]).
    wrote: Arc<AtomicBool>,
    _message: PhantomData<fn(M)>,
}

impl<M: Wire> ResponseSink<M> {
    pub fn new(send: h2::SendStream<Encoded>, wrote: Arc<AtomicBool>) -> Self {
        ResponseSink {
            send,
            done: false,
            wrote,
            _message: PhantomData,
        }
    }

    /// Whether [`ResponseSink::send`] will wait for the client's flow control before it sends.
    pub fn must_wait(&self) -> bool {
        self.send.capacity() == 0
    }

    /// Sends `msg` once HTTP/2 takes more of this stream's data: at most ~one send buffer is queued per
    /// stream, so a client that stops reading holds up only its own stream. `false` if the stream is gone.
    pub async fn send(&mut self, msg: &M) -> bool {
        if self.send.capacity() == 0 {
            self.send.reserve_capacity(1);
            loop {
                match poll_fn(|cx| self.send.poll_capacity(cx)).await {
                    Some(Ok(0)) => continue,
                    Some(Ok(_)) => break,
                    Some(Err(_)) | None => return false,
                }
            }
        }
        self.wrote.store(true, Relaxed);
        self.send.send_data(encode(msg), false).is_ok()
    }

    /// Ends the stream with `status`.
    pub fn close(&mut self, status: &Status) {
        if !std::mem::replace(&mut self.done, true) {
            // A stream the client already reset cannot take trailers; nothing is left to tell it.
            self.wrote.store(true, Relaxed);
            let _ = self.send.send_trailers(trailers(status));
        }
    }
}

impl<M> Drop for ResponseSink<M> {
    fn drop(&mut self) {
        if !self.done {
            self.wrote.store(true, Relaxed);
            let _ = self.send.send_trailers(trailers(&Status::ok("")));
        }
    }
}

/// One length-prefixed gRPC message: its copied bytes in a buffer of exactly their size, and its long
/// resource bodies shared.
fn encode<M: Wire>(msg: &M) -> Encoded {
    let len = msg.wire_len();
    let mut out = Parts::with_capacity(PREFIX + len - msg.shared_len());
    out.buf().put_u8(0);
    out.buf().put_u32(len as u32);
    msg.wire_encode(&mut out);
    let message = out.finish();
    debug_assert_eq!(
        message.remaining(),
        PREFIX + len,
        "wire_len agrees with wire_encode"
    );
    message
}

/// `grpc-status` (and `grpc-message`) trailers for `status`.
pub(crate) fn trailers(status: &Status) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Err(e) = status.add_header(&mut headers) {
        warn!(error = %e, "cannot encode a gRPC status; sending INTERNAL");
        headers.insert("grpc-status", HeaderValue::from_static("13"));
    }
    headers
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, Resource};
    use envoy_types::pb::google::protobuf::Any;

    use super::*;

    /// Requests go on the wire as plain prost messages.
    impl Wire for DiscoveryRequest {
        fn wire_len(&self) -> usize {
            self.encoded_len()
        }
        fn wire_encode(&self, out: &mut Parts) {
            let _ = self.encode(out.buf());
        }
    }

    /// The message's bytes, in one piece.
    fn encode(msg: &impl Wire) -> Bytes {
        let mut m = super::encode(msg);
        m.copy_to_bytes(m.remaining())
    }

    fn resource(name: &str, body: &'static [u8]) -> Arc<XdsResource> {
        Arc::new(XdsResource::from_bytes(
            name,
            "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            Bytes::from_static(body),
        ))
    }

    fn any(r: &XdsResource) -> Any {
        Any {
            type_url: r.type_url.clone(),
            value: r.bytes.to_vec(),
        }
    }

    #[test]
    fn responses_decode_as_if_prost_had_encoded_the_resources() {
        let leak = |n: usize, b: u8| -> &'static [u8] { Box::leak(vec![b; n].into_boxed_slice()) };
        let rs = vec![
            resource("a", b"\x08\x01"),
            resource("b", leak(300, 7)),
            resource("c", leak(SHARE_MIN, 8)),
            resource("", b""),
            resource("d", leak(SHARE_MIN * 3, 9)),
        ];
        // The long bodies go out as the resources' own bytes, between copied parts.
        let sotw_parts =
            |m: &Encoded| -> Vec<*const u8> { m.parts.iter().map(|p| p.as_ptr()).collect() };
        let wire = super::encode(&WireResponse {
            head: DiscoveryResponse::default(),
            resources: rs.clone(),
        });
        let shared = [rs[2].bytes.as_ptr(), rs[4].bytes.as_ptr()];
        let parts = sotw_parts(&wire);
        assert_eq!(parts.len(), 4, "copied, c, copied, d (the last field)");
        assert_eq!([parts[1], parts[3]], shared);
        let mut slices = [std::io::IoSlice::new(&[]); 8];
        assert_eq!(wire.chunks_vectored(&mut slices), 4);
        assert_eq!(
            slices[..4].iter().map(|s| s.len()).sum::<usize>(),
            wire.remaining()
        );
        let sotw = WireResponse {
            head: DiscoveryResponse {
                version_info: "7".into(),
                type_url: "t".into(),
                nonce: "n".into(),
                ..Default::default()
            },
            resources: rs.clone(),
        };
        let wire = encode(&sotw);
        let mut expected = sotw.head.clone();
        expected.resources = rs.iter().map(|r| any(r)).collect();
        assert_eq!(
            DiscoveryResponse::decode(&wire[PREFIX..]).unwrap(),
            expected
        );

        let delta = WireResponse {
            head: DeltaDiscoveryResponse {
                system_version_info: "7".into(),
                removed_resources: vec!["gone".into()],
                nonce: "n".into(),
                ..Default::default()
            },
            resources: rs.clone(),
        };
        let wire = encode(&delta);
        let mut expected = delta.head.clone();
        expected.resources = rs
            .iter()
            .map(|r| Resource {
                name: r.name.clone(),
                version: r.version.clone(),
                resource: Some(any(r)),
                ..Default::default()
            })
            .collect();
        assert_eq!(
            DeltaDiscoveryResponse::decode(&wire[PREFIX..]).unwrap(),
            expected
        );
    }

    fn body_of(chunks: Vec<Vec<u8>>) -> std::collections::VecDeque<Bytes> {
        chunks.into_iter().map(Bytes::from).collect()
    }

    fn req(type_url: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: type_url.to_owned(),
            resource_names: vec!["a".repeat(100); 50],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn requests_split_and_joined_across_frames_decode() {
        let mut wire = encode(&req("one")).to_vec();
        wire.extend_from_slice(&encode(&req("two")));
        // Three chunks cutting through the first message's prefix and the second message's body.
        let chunks = vec![
            wire[..3].to_vec(),
            wire[3..4000].to_vec(),
            wire[4000..].to_vec(),
        ];
        let mut s = RequestStream::<DiscoveryRequest, _>::new(body_of(chunks), 1 << 20);
        assert_eq!(s.message().await.unwrap().unwrap(), req("one"));
        assert_eq!(s.message().await.unwrap().unwrap(), req("two"));
        assert_eq!(s.message().await.unwrap(), None);
        assert_eq!(s.partial.capacity(), 0, "no buffer kept between messages");
    }

    #[tokio::test]
    async fn whole_requests_decode_from_their_frame_without_gathering() {
        let mut wire = encode(&req("one")).to_vec();
        wire.extend_from_slice(&encode(&req("two")));
        let mut s = RequestStream::<DiscoveryRequest, _>::new(body_of(vec![wire]), 1 << 20);
        assert_eq!(s.message().await.unwrap().unwrap(), req("one"));
        assert_eq!(s.partial.capacity(), 0);
        assert_eq!(s.message().await.unwrap().unwrap(), req("two"));
        assert_eq!(s.message().await.unwrap(), None);
        assert_eq!(s.partial.capacity(), 0);
    }

    #[tokio::test]
    async fn oversized_truncated_and_compressed_requests_are_errors() {
        let wire = encode(&req("one")).to_vec();
        let mut s = RequestStream::<DiscoveryRequest, _>::new(body_of(vec![wire.clone()]), 100);
        assert_eq!(
            s.message().await.unwrap_err().code(),
            tonic::Code::ResourceExhausted
        );
        let cut = wire[..wire.len() - 1].to_vec();
        let mut s = RequestStream::<DiscoveryRequest, _>::new(body_of(vec![cut]), 1 << 20);
        assert_eq!(s.message().await.unwrap_err().code(), tonic::Code::Internal);
        let mut zipped = wire;
        zipped[0] = 1;
        let mut s = RequestStream::<DiscoveryRequest, _>::new(body_of(vec![zipped]), 1 << 20);
        assert_eq!(
            s.message().await.unwrap_err().code(),
            tonic::Code::Unimplemented
        );
    }

    #[test]
    fn responses_are_length_prefixed_messages() {
        let msg = req("x");
        let wire = encode(&msg);
        assert_eq!(wire[0], 0);
        assert_eq!(
            u32::from_be_bytes([wire[1], wire[2], wire[3], wire[4]]) as usize,
            wire.len() - 5
        );
        assert_eq!(DiscoveryRequest::decode(&wire[5..]).unwrap(), msg);
        assert_eq!(trailers(&Status::ok(""))["grpc-status"], "0");
        assert_eq!(trailers(&Status::unavailable("x"))["grpc-status"], "14");
    }
}
