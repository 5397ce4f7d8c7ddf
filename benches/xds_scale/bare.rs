//! The transport floor: a bare HTTP/2 server (the `h2` crate, one task per connection, no xDS logic) that
//! pushes one endpoint message to every stream and reads the ACKs. The bench drives as many of the same clients
//! against it, its rounds alternating with rudder's, so rudder's endpoint push can be reported as a ratio to
//! what HTTP/2 alone costs on this machine at the same moments: on a shared 2-core VM the absolute numbers move
//! by tens of percent from one minute to the next.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, Resource};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use rudder::xds::XdsResource;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::WatchStream;

/// Message `v`: a delta EDS response carrying `resource`, gRPC-framed, as rudder would send it.
fn message(resource: &XdsResource, v: u64) -> Bytes {
    let resp = DeltaDiscoveryResponse {
        system_version_info: v.to_string(),
        type_url: resource.type_url.clone(),
        nonce: format!("{v:x}"),
        resources: vec![Resource {
            name: resource.name.clone(),
            version: resource.version.clone(),
            resource: Some(Any {
                type_url: resource.type_url.clone(),
                value: resource.bytes.to_vec(),
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut buf = BytesMut::with_capacity(5 + resp.encoded_len());
    buf.put_u8(0);
    buf.put_u32(resp.encoded_len() as u32);
    resp.encode(&mut buf).expect("sized buffer");
    buf.freeze()
}

/// Serves until stdin closes; `eds …` pushes the next message to every stream and answers `v <version>`.
pub async fn serve(resource: Arc<XdsResource>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (pushes, rx) = watch::channel(message(&resource, 1));
    let mut version = 1;
    println!(
        "addr {} {version} -",
        listener.local_addr().expect("address")
    );
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((tcp, _)) => {
                    tokio::spawn(connection(tcp, rx.clone()));
                }
                // A connection reset before it was accepted, or a momentary shortage: keep accepting.
                Err(e) => {
                    eprintln!("bare server: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    });
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.starts_with("stats") {
            println!("stats -");
            continue;
        }
        version += 1;
        pushes.send_replace(message(&resource, version));
        println!("v {version}");
    }
}

/// One client: its stream gets the current message at once (its initial sync), then every new one.
async fn connection(tcp: TcpStream, pushes: watch::Receiver<Bytes>) {
    if let Err(e) = serve_stream(tcp, pushes).await {
        eprintln!("bare server: connection ended: {e}");
    }
}

async fn serve_stream(tcp: TcpStream, mut pushes: watch::Receiver<Bytes>) -> Result<(), String> {
    let _ = tcp.set_nodelay(true);
    let mut conn = h2::server::handshake(tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (request, mut respond) = match conn.accept().await {
        Some(stream) => stream.map_err(|e| format!("first stream: {e}"))?,
        None => return Err("closed before a stream".into()),
    };
    let mut acks = request.into_body();
    let head = http::Response::builder()
        .header("content-type", "application/grpc")
        .body(())
        .expect("response head");
    let mut send = respond
        .send_response(head, false)
        .map_err(|e| format!("response: {e}"))?;
    let first = pushes.borrow_and_update().clone();
    send.send_data(first, false)
        .map_err(|e| format!("first message: {e}"))?;
    let mut changes = WatchStream::from_changes(pushes);
    loop {
        tokio::select! {
            // Polling the connection moves its I/O; a second stream is not expected.
            more = conn.accept() => match more {
                None => return Ok(()),
                Some(Err(e)) => return Err(format!("connection: {e}")),
                Some(Ok(_)) => {}
            },
            ack = acks.data() => match ack {
                Some(Ok(data)) => {
                    let _ = acks.flow_control().release_capacity(data.len());
                }
                Some(Err(e)) => return Err(format!("request stream: {e}")),
                None => return Ok(()),
            },
            next = changes.next() => {
                let Some(msg) = next else { return Ok(()) };
                send.send_data(msg, false).map_err(|e| format!("push: {e}"))?;
            }
        }
    }
}
