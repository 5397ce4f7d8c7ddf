//! The transport floor: a bare HTTP/2 server (the `h2` crate, one task per connection, no xDS logic) that
//! pushes one endpoint message to every stream and reads the ACKs. The bench drives the same clients against
//! it, so rudder's endpoint push can be reported as a ratio to what HTTP/2 alone costs on this machine in the
//! same run: on a shared 2-core VM the absolute numbers move by tens of percent from one minute to the next.

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
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(connection(tcp, rx.clone()));
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
async fn connection(tcp: TcpStream, mut pushes: watch::Receiver<Bytes>) {
    let _ = tcp.set_nodelay(true);
    let Ok(mut conn) = h2::server::handshake(tcp).await else {
        return;
    };
    let Some(Ok((request, mut respond))) = conn.accept().await else {
        return;
    };
    let mut acks = request.into_body();
    let head = http::Response::builder()
        .header("content-type", "application/grpc")
        .body(())
        .expect("response head");
    let Ok(mut send) = respond.send_response(head, false) else {
        return;
    };
    let first = pushes.borrow_and_update().clone();
    if send.send_data(first, false).is_err() {
        return;
    }
    let mut changes = WatchStream::from_changes(pushes);
    loop {
        tokio::select! {
            // Polling the connection moves its I/O; a second stream is not expected.
            more = conn.accept() => if more.is_none() { return },
            ack = acks.data() => match ack {
                Some(Ok(data)) => {
                    let _ = acks.flow_control().release_capacity(data.len());
                }
                _ => return,
            },
            next = changes.next() => {
                let Some(msg) = next else { return };
                if send.send_data(msg, false).is_err() {
                    return;
                }
            }
        }
    }
}
