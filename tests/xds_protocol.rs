//! ADS protocol acceptance: a fake Envoy (tonic client) against the real server, SotW and delta.

use std::net::SocketAddr;
use std::time::Duration;

use prost::Message;
use rudder::test_helpers::ads::{DeltaClient, QUIET, SotwClient, TestServer, connection, node_id};
use rudder::test_helpers::xds_fixtures::{
    Publisher, StaticGenerator, cluster, delta_names, endpoints, listener, route, sotw_names,
};
use rudder::xds::type_url::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use rudder::xds::{ConnectionStatus, TypeStatus, XdsResource};

const WAIT: Duration = Duration::from_secs(10);

fn ep(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Clusters a, b with endpoints, a listener and its route.
fn base() -> StaticGenerator {
    StaticGenerator::default()
        .with(cluster("a"))
        .with(cluster("b"))
        .with(endpoints("a", &[ep(1001)]))
        .with(endpoints("b", &[ep(1002)]))
        .with(listener("l", ep(8000), "r"))
        .with(route("r", "a", "/", "v1"))
}

/// A server that has published `base()`, and the publisher for later generations (keep it: dropping it ends the
/// server's generation feed).
async fn serving_base() -> (Publisher, TestServer) {
    let (mut publisher, rx) = Publisher::new();
    publisher.publish(base());
    (publisher, TestServer::start(rx).await)
}

/// [`serving_base`] on a server with settings `cfg` (on 127.0.0.1, any port).
async fn serving_base_with(cfg: rudder::xds::Config) -> (Publisher, TestServer) {
    let (mut publisher, rx) = Publisher::new();
    publisher.publish(base());
    let cfg = rudder::xds::Config { addr: ep(0), ..cfg };
    (publisher, TestServer::start_with(cfg, rx).await)
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The one connection's state for `type_url`, once `cond` holds.
async fn wait_type(
    server: &TestServer,
    type_url: &str,
    cond: impl Fn(&TypeStatus) -> bool,
) -> TypeStatus {
    let found = server
        .registry
        .wait_for(WAIT, |c: &[ConnectionStatus]| {
            c.iter().any(|c| c.types.get(type_url).is_some_and(&cond))
        })
        .await
        .unwrap_or_else(|last| panic!("condition on {type_url} not met; registry: {last:#?}"));
    found
        .iter()
        .find_map(|c| c.types.get(type_url).filter(|t| cond(t)).cloned())
        .unwrap()
}

#[tokio::test]
async fn sotw_initial_fetch_then_ack_gets_nothing_more() {
    let (_publisher, server) = serving_base().await;
    let mut c = SotwClient::connect(server.addr, &node_id("p1", "ns")).await;

    c.request(CLUSTER, &[], "", "").await;
    let r = c.recv().await;
    assert_eq!(r.type_url, CLUSTER);
    assert_eq!(r.version_info, "1");
    assert_eq!(sorted(sotw_names(&r)), ["a", "b"]);
    assert_eq!(r.control_plane.as_ref().unwrap().identifier, "rudder");
    c.ack(&r, &[]).await;
    c.expect_none(QUIET).await;

    let st = wait_type(&server, CLUSTER, |t| t.is_acked()).await;
    assert!(st.wildcard);
    assert_eq!(st.acked_version.as_deref(), Some("1"));
    assert_eq!(server.metrics.pushes(CLUSTER), 1);
    assert_eq!(
        server
            .metrics
            .connected
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // The registry knows the proxy by <pod>.<ns>.
    let conns = server.registry.by_pod("p1.ns");
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0].proxy.id.to_string(), node_id("p1", "ns"));
}

#[tokio::test]
async fn first_request_without_node_is_invalid_argument() {
    let (_publisher, server) = serving_base().await;
    let mut c = SotwClient::connect_with(server.addr, None).await;
    c.request(CLUSTER, &[], "", "").await;
    let status = c.recv_status().await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("node"), "{status}");

    let mut bad = SotwClient::connect(server.addr, "not-a-node-id").await;
    bad.request(CLUSTER, &[], "", "").await;
    let status = bad.recv_status().await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("invalid node id"), "{status}");
}

#[tokio::test]
async fn streams_wait_for_the_first_generation() {
    let (mut publisher, rx) = Publisher::new();
    let server = TestServer::start(rx).await;
    let mut c = SotwClient::connect(server.addr, &node_id("p1", "ns")).await;
    c.request(CLUSTER, &[], "", "").await;
    c.expect_none(QUIET).await;
    publisher.publish(base());
    let r = c.recv().await;
    assert_eq!(sorted(sotw_names(&r)), ["a", "b"]);
    c.ack(&r, &[]).await;
    c.expect_none(QUIET).await;
}

#[tokio::test]
async fn sotw_nack_is_recorded_and_cleared_by_the_next_ack() {
    let (mut publisher, server) = serving_base().await;
    let mut c = SotwClient::connect(server.addr, &node_id("p1", "ns")).await;

    c.request(CLUSTER, &[], "", "").await;
    let r1 = c.recv().await;
    c.ack(&r1, &[]).await;
    // Publish only once the ACK is in: otherwise it would cross the push and be stale.
    wait_type(&server, CLUSTER, |t| t.is_acked()).await;

    let mut g = base();
    g.set(cluster("c"));
    publisher.publish(g.clone());
    let r2 = c.recv().await;
    assert_eq!(sorted(sotw_names(&r2)), ["a", "b", "c"]);
    c.nack(&r2, &[], &r1.version_info, "cluster c: bad config")
        .await;
    c.expect_none(QUIET).await;

    let st = wait_type(&server, CLUSTER, |t| t.last_nack.is_some()).await;
    let nack = st.last_nack.unwrap();
    assert_eq!(nack.message, "cluster c: bad config");
    assert_eq!(sorted(nack.names), ["a", "b", "c"]);
    assert_eq!(nack.version, "2");
    assert_eq!(st.acked_version.as_deref(), Some("1"));
    assert_eq!(server.metrics.nacks(CLUSTER), 1);

    // Republishing the same content sends nothing; a fix is pushed and its ACK clears the NACK.
    publisher.publish(g);
    c.expect_none(QUIET).await;
    publisher.publish(base());
    let r3 = c.recv().await;
    assert_eq!(r3.version_info, "4");
    c.ack(&r3, &[]).await;
    let st = wait_type(&server, CLUSTER, |t| {
        t.is_acked() && t.acked_version.as_deref() == Some("4")
    })
    .await;
    assert!(st.last_nack.is_none());
}

#[tokio::test]
async fn stale_nonce_is_ignored_and_the_next_ack_carries_the_names() {
    let (mut publisher, server) = serving_base().await;
    let mut c = SotwClient::connect(server.addr, &node_id("p1", "ns")).await;

    c.request(ENDPOINT, &["a"], "", "").await;
    let r1 = c.recv().await;
    assert_eq!(sotw_names(&r1), ["a"]);

    let mut g = base();
    g.set(endpoints("a", &[ep(1001), ep(1003)]));
    publisher.publish(g);
    let r2 = c.recv().await;
    assert_eq!(sotw_names(&r2), ["a"]);

    // A request crossing r2 on the wire: its nonce is stale, so it is ignored (no response, no ACK).
    c.request(ENDPOINT, &["a", "b"], &r1.version_info, &r1.nonce)
        .await;
    c.expect_none(QUIET).await;
    assert_eq!(
        server
            .metrics
            .stale_nonces
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let st = wait_type(&server, ENDPOINT, |_| true).await;
    assert_eq!(st.acked_nonce, None);

    // The ACK of r2 carries the new name list: b is added, so the full set is sent.
    c.ack(&r2, &["a", "b"]).await;
    let r3 = c.recv().await;
    assert_eq!(sorted(sotw_names(&r3)), ["a", "b"]);
}

#[tokio::test]
async fn sotw_reconnect_gets_a_full_response() {
    let (_publisher, server) = serving_base().await;
    let mut c = SotwClient::connect(server.addr, &node_id("p1", "ns")).await;
    c.request(LISTENER, &[], "", "").await;
    let r = c.recv().await;
    c.ack(&r, &[]).await;
    drop(c);
    server
        .registry
        .wait_for(WAIT, |c| c.is_empty())
        .await
        .expect("old stream removed");

    // Envoy reconnects with the version (and nonce) it had.
    let mut c = SotwClient::connect(server.addr, &node_id("p1", "ns")).await;
    c.request(LISTENER, &[], &r.version_info, &r.nonce).await;
    let r2 = c.recv().await;
    assert_eq!(sotw_names(&r2), ["l"]);
    c.ack(&r2, &[]).await;
    c.expect_none(QUIET).await;
}

#[tokio::test]
async fn sotw_eds_and_rds_subscribe_and_unsubscribe_by_name() {
    let (mut publisher, server) = serving_base().await;
    let mut c = SotwClient::connect(server.addr, &node_id("p1", "ns")).await;

    c.request(ENDPOINT, &["a"], "", "").await;
    let r = c.recv().await;
    assert_eq!(sotw_names(&r), ["a"]);
    c.ack(&r, &["a", "b"]).await; // subscribe b
    let r = c.recv().await;
    assert_eq!(sorted(sotw_names(&r)), ["a", "b"]);
    c.ack(&r, &["b"]).await; // unsubscribe a: no response
    c.expect_none(QUIET).await;
    let st = wait_type(&server, ENDPOINT, |t| t.names.len() == 1).await;
    assert!(st.names.contains("b") && st.sent.contains_key("b") && !st.sent.contains_key("a"));

    // A change to the unsubscribed a reaches nobody.
    let mut g = base();
    g.set(endpoints("a", &[ep(1009)]));
    publisher.publish(g.clone());
    c.expect_none(QUIET).await;

    c.ack(&r, &[]).await; // empty list: unsubscribe everything (EDS is not a wildcard type)
    c.expect_none(QUIET).await;
    let st = wait_type(&server, ENDPOINT, |t| t.names.is_empty()).await;
    assert!(!st.wildcard);
    g.set(endpoints("b", &[ep(1010)]));
    publisher.publish(g);
    c.expect_none(QUIET).await;

    // RDS by name, including a name that does not exist yet.
    c.request(ROUTE, &["r", "missing"], "", "").await;
    let r = c.recv().await;
    assert_eq!(sotw_names(&r), ["r"]);
    c.ack(&r, &["r", "missing"]).await;
    c.expect_none(QUIET).await;
    let mut g = base();
    g.set(route("missing", "b", "/", "x"));
    publisher.publish(g);
    let r = c.recv().await;
    assert_eq!(r.type_url, ROUTE);
    assert_eq!(sorted(sotw_names(&r)), ["missing", "r"]);
}

#[tokio::test]
async fn pushes_only_what_changed_in_make_before_break_order() {
    let (mut publisher, server) = serving_base().await;
    let mut c = SotwClient::connect(server.addr, &node_id("p1", "ns")).await;
    for (t, names) in [
        (CLUSTER, &[][..]),
        (ENDPOINT, &["a", "b"][..]),
        (LISTENER, &[][..]),
        (ROUTE, &["r"][..]),
    ] {
        c.request(t, names, "", "").await;
        let r = c.recv().await;
        assert_eq!(r.type_url, t);
        c.ack(&r, names).await;
    }
    c.expect_none(QUIET).await;

    // Identical content in a new generation: nothing.
    publisher.publish(base());
    c.expect_none(QUIET).await;

    // Only endpoints changed: only EDS is sent.
    let mut g = base();
    g.set(endpoints("a", &[ep(2001)]));
    publisher.publish(g.clone());
    let r = c.recv().await;
    assert_eq!(
        (r.type_url.as_str(), sorted(sotw_names(&r))),
        (ENDPOINT, vec!["a".into(), "b".into()])
    );
    c.ack(&r, &["a", "b"]).await;
    c.expect_none(QUIET).await;

    // New cluster with endpoints and a route change: CDS, then EDS (without waiting for the CDS ACK), then RDS.
    g.set(cluster("c"));
    g.set(endpoints("c", &[ep(3001)]));
    g.set(route("r", "c", "/", "v2"));
    publisher.publish(g);
    let got: Vec<String> = [c.recv().await, c.recv().await]
        .iter()
        .map(|r| r.type_url.clone())
        .collect();
    assert_eq!(got, [CLUSTER, ROUTE]);
    c.expect_none(QUIET).await;
}

#[tokio::test]
async fn delta_sends_only_added_changed_and_removed() {
    let (mut publisher, server) = serving_base().await;
    let mut c = DeltaClient::connect(server.addr, &node_id("p1", "ns")).await;

    c.subscribe(CLUSTER, &[]).await; // legacy wildcard
    let r = c.recv().await;
    assert_eq!(sorted(delta_names(&r)), ["a", "b"]);
    assert!(r.removed_resources.is_empty());
    assert_eq!(r.system_version_info, "1");
    let va = r
        .resources
        .iter()
        .find(|x| x.name == "a")
        .unwrap()
        .version
        .clone();
    assert_eq!(va, cluster("a").version);
    c.ack(&r).await;
    c.expect_none(QUIET).await;

    // a unchanged, b removed, c added.
    let mut g = base();
    g.remove(CLUSTER, "b");
    g.set(cluster("c"));
    publisher.publish(g.clone());
    let r = c.recv().await;
    assert_eq!(delta_names(&r), ["c"]);
    assert_eq!(r.removed_resources, ["b"]);
    c.ack(&r).await;
    publisher.publish(g);
    c.expect_none(QUIET).await;
    let st = wait_type(&server, CLUSTER, |t| {
        t.is_acked() && t.version_sent.as_deref() == Some("2")
    })
    .await;
    assert_eq!(st.sent.names(), ["a", "c"]);

    // NACK is recorded with the names of the rejected response.
    let mut g = base();
    g.set(cluster("d"));
    publisher.publish(g);
    let r = c.recv().await;
    assert_eq!(sorted(delta_names(&r)), ["b", "d"]);
    assert_eq!(r.removed_resources, ["c"]);
    c.nack(&r, "d is bad").await;
    c.expect_none(QUIET).await;
    let st = wait_type(&server, CLUSTER, |t| t.last_nack.is_some()).await;
    let nack = st.last_nack.unwrap();
    assert_eq!(nack.message, "d is bad");
    assert_eq!(sorted(nack.names), ["b", "c", "d"]);
}

#[tokio::test]
async fn delta_reconnect_honours_initial_resource_versions() {
    let (_publisher, server) = serving_base().await;
    let va = cluster("a").version.clone();

    let mut c = DeltaClient::connect(server.addr, &node_id("p1", "ns")).await;
    c.subscribe_with(
        CLUSTER,
        &["*"],
        &[("a", &va), ("b", "stale-version"), ("gone", "1")],
    )
    .await;
    let r = c.recv().await;
    assert_eq!(delta_names(&r), ["b"]);
    assert_eq!(r.removed_resources, ["gone"]);
    c.ack(&r).await;

    // Everything already current: still one (empty) response so the client finishes initialising.
    let vl = listener("l", ep(8000), "r").version.clone();
    c.subscribe_with(LISTENER, &[], &[("l", &vl)]).await;
    let r = c.recv().await;
    assert!(
        r.resources.is_empty() && r.removed_resources.is_empty(),
        "{r:?}"
    );
    c.ack(&r).await;
    c.expect_none(QUIET).await;
}

#[tokio::test]
async fn delta_explicit_and_wildcard_subscriptions() {
    let (mut publisher, server) = serving_base().await;
    let mut c = DeltaClient::connect(server.addr, &node_id("p1", "ns")).await;

    c.subscribe(ENDPOINT, &["a"]).await;
    let r = c.recv().await;
    assert_eq!(delta_names(&r), ["a"]);
    c.ack(&r).await;
    c.subscribe(ENDPOINT, &["missing"]).await;
    let r = c.recv().await;
    assert!(r.resources.is_empty());
    assert_eq!(
        r.removed_resources,
        ["missing"],
        "a missing resource is reported as removed"
    );
    c.ack(&r).await;
    c.unsubscribe(ENDPOINT, &["a"]).await;
    c.expect_none(QUIET).await;
    let mut g = base();
    g.set(endpoints("a", &[ep(4444)]));
    publisher.publish(g.clone());
    c.expect_none(QUIET).await;
    // missing appears: sent, since it is subscribed.
    g.set(endpoints("missing", &[ep(4445)]));
    publisher.publish(g.clone());
    let r = c.recv().await;
    assert_eq!(delta_names(&r), ["missing"]);
    c.ack(&r).await;

    // Explicit "*" on CDS, then dropping it leaves only explicit names.
    c.subscribe(CLUSTER, &["*", "a"]).await;
    let r = c.recv().await;
    assert_eq!(sorted(delta_names(&r)), ["a", "b"]);
    c.ack(&r).await;
    c.unsubscribe(CLUSTER, &["*"]).await;
    c.expect_none(QUIET).await;
    let st = wait_type(&server, CLUSTER, |t| !t.wildcard).await;
    assert_eq!(st.sent.names(), ["a"]);
    g.set(cluster("z"));
    publisher.publish(g);
    c.expect_none(QUIET).await;
}

/// gRPC clients multiplex streams on one HTTP/2 connection: each stream there is served on its own, and
/// one that ends leaves the others running.
#[tokio::test]
async fn streams_sharing_a_connection_are_served_independently() {
    let (mut publisher, server) = serving_base().await;
    let mut conn = connection(server.addr).await;
    let mut a = SotwClient::on(&mut conn, &node_id("a", "ns")).await;
    let mut b = SotwClient::on(&mut conn, &node_id("b", "ns")).await;
    for c in [&mut a, &mut b] {
        c.request(CLUSTER, &[], "", "").await;
        let r = c.recv().await;
        assert_eq!(sorted(sotw_names(&r)), ["a", "b"]);
        c.ack(&r, &[]).await;
    }
    assert_eq!(server.registry.len(), 2);
    drop(a);
    server
        .registry
        .wait_for(WAIT, |c: &[ConnectionStatus]| c.len() == 1)
        .await
        .expect("the dropped stream leaves the registry");
    let mut g = base();
    g.set(cluster("c"));
    publisher.publish(g);
    let r = b.recv().await;
    assert_eq!(sorted(sotw_names(&r)), ["a", "b", "c"]);
}

/// Anything but ADS gets gRPC's UNIMPLEMENTED, in a trailers-only response.
#[tokio::test]
async fn other_grpc_methods_are_unimplemented() {
    use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_client::ClusterDiscoveryServiceClient;
    let (_publisher, server) = serving_base().await;
    let mut cds = ClusterDiscoveryServiceClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    let status = cds
        .fetch_clusters(envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
    assert!(
        status
            .message()
            .contains("ClusterDiscoveryService/FetchClusters"),
        "{status:?}"
    );
}

#[tokio::test]
async fn drain_closes_streams() {
    let (_publisher, server) = serving_base().await;
    let mut c = SotwClient::connect(server.addr, &node_id("p1", "ns")).await;
    c.request(CLUSTER, &[], "", "").await;
    c.recv().await;
    let registry = server.registry.clone();
    server.stop().await;
    assert!(c.ended().await, "stream closed on drain");
    assert!(registry.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_pushes_once_per_affected_type_and_skips_unaffected_proxies() {
    const CLIENTS: usize = 200;
    let (mut publisher, server) = serving_base().await;

    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let mut c = SotwClient::connect(server.addr, &node_id(&format!("p{i}"), "ns")).await;
        c.request(CLUSTER, &[], "", "").await;
        let r = c.recv().await;
        c.ack(&r, &[]).await;
        c.request(ENDPOINT, &["a"], "", "").await;
        let r = c.recv().await;
        c.ack(&r, &["a"]).await;
        clients.push(c);
    }
    server
        .registry
        .wait_for(WAIT, |c| {
            c.len() == CLIENTS && c.iter().all(|c| c.types.values().all(|t| t.is_acked()))
        })
        .await
        .expect("all clients ACKed");

    // Even-numbered pods get a private cluster: only they see a CDS change; nobody sees an EDS change.
    let mut g = base();
    for i in (0..CLIENTS).step_by(2) {
        g.set_for(&format!("p{i}.ns"), cluster("private"));
    }
    publisher.publish(g.clone());
    for (i, c) in clients.iter_mut().enumerate().step_by(2) {
        let r = c.recv().await;
        assert_eq!(r.type_url, CLUSTER, "client {i}");
        assert_eq!(sorted(sotw_names(&r)), ["a", "b", "private"]);
        c.ack(&r, &[]).await;
    }
    for c in &mut clients {
        c.expect_none(Duration::from_millis(20)).await;
    }

    // A common endpoint change: every client gets exactly one EDS response.
    g.set(endpoints("a", &[ep(5555)]));
    publisher.publish(g);
    for (i, c) in clients.iter_mut().enumerate() {
        let r = c.recv().await;
        assert_eq!(r.type_url, ENDPOINT, "client {i}");
        c.ack(&r, &["a"]).await;
    }
    for c in &mut clients {
        c.expect_none(Duration::from_millis(20)).await;
    }
    assert_eq!(server.metrics.pushes(ENDPOINT), 2 * CLIENTS as u64);
    assert_eq!(
        server.metrics.pushes(CLUSTER),
        (CLIENTS + CLIENTS / 2) as u64
    );
    server
        .registry
        .wait_for(WAIT, |c| {
            c.iter().all(|c| c.types.values().all(|t| t.is_acked()))
        })
        .await
        .expect("all clients ACKed");
    assert!(server.metrics.convergence.count() >= (CLIENTS + CLIENTS / 2) as u64);
}

#[tokio::test]
async fn streams_subscribed_to_the_same_names_share_state() {
    let (_publisher, server) = serving_base().await;
    let mut clients = Vec::new();
    for (pod, names) in [("p1", ["a", "b"]), ("p2", ["b", "a"]), ("p3", ["a", "a"])] {
        let mut c = DeltaClient::connect(server.addr, &node_id(pod, "ns")).await;
        c.subscribe(ENDPOINT, &names).await;
        let r = c.recv().await;
        c.ack(&r).await;
        clients.push(c);
    }
    let conns = server
        .registry
        .wait_for(WAIT, |cs| {
            cs.len() == 3
                && cs
                    .iter()
                    .all(|c| c.types.get(ENDPOINT).is_some_and(|t| t.is_acked()))
        })
        .await
        .expect("three streams ACK their endpoints");
    let names: Vec<_> = conns
        .iter()
        .map(|c| c.types[ENDPOINT].names.clone())
        .collect();
    assert_eq!(*names[0], ["a".to_owned(), "b".to_owned()].into());
    assert!(
        std::sync::Arc::ptr_eq(&names[0], &names[1]),
        "equal subscriptions are one set"
    );
    assert!(!std::sync::Arc::ptr_eq(&names[0], &names[2]));
    assert_eq!(*names[2], ["a".to_owned()].into());
    // The same change to a shared set gives one shared set again (not a copy per stream).
    for c in clients.iter_mut().take(2) {
        c.subscribe(ENDPOINT, &["c"]).await;
        c.unsubscribe(ENDPOINT, &["b"]).await;
    }
    let after = server
        .registry
        .wait_for(WAIT, |cs| {
            cs.iter()
                .filter(|c| c.types[ENDPOINT].names.contains("c"))
                .filter(|c| !c.types[ENDPOINT].names.contains("b"))
                .count()
                == 2
        })
        .await
        .expect("both streams changed their subscription");
    let changed: Vec<_> = after
        .iter()
        .filter(|c| c.types[ENDPOINT].names.contains("c"))
        .map(|c| c.types[ENDPOINT].names.clone())
        .collect();
    assert_eq!(*changed[0], ["a".to_owned(), "c".to_owned()].into());
    assert!(std::sync::Arc::ptr_eq(&changed[0], &changed[1]));
    // Held resources too: both hold the whole endpoint set, shared, not a copy each.
    let held: Vec<Vec<&str>> = conns
        .iter()
        .map(|c| c.types[ENDPOINT].sent.names())
        .collect();
    assert_eq!(held, [vec!["a", "b"], vec!["a", "b"], vec!["a"]]);
}

#[tokio::test]
async fn sotw_changed_cluster_gets_its_endpoints_again() {
    // Envoy re-warms a changed EDS cluster and waits for endpoints without asking again (same names).
    let (mut publisher, server) = serving_base().await;
    let mut c = SotwClient::connect(server.addr, &node_id("p1", "ns")).await;
    for (t, names) in [(CLUSTER, &[][..]), (ENDPOINT, &["a", "b"][..])] {
        c.request(t, names, "", "").await;
        let r = c.recv().await;
        c.ack(&r, names).await;
    }
    c.expect_none(QUIET).await;
    let mut g = base();
    let mut changed =
        envoy_types::pb::envoy::config::cluster::v3::Cluster::decode(&cluster("a").bytes[..])
            .unwrap();
    changed.connect_timeout = Some(envoy_types::pb::google::protobuf::Duration {
        seconds: 7,
        nanos: 0,
    });
    g.set(std::sync::Arc::new(XdsResource::encode("a", &changed)));
    publisher.publish(g);
    let r = c.recv().await;
    assert_eq!(r.type_url, CLUSTER);
    c.ack(&r, &[]).await;
    let r = c.recv().await;
    assert_eq!(
        (r.type_url.as_str(), sorted(sotw_names(&r))),
        (ENDPOINT, vec!["a".into(), "b".into()])
    );
    c.ack(&r, &["a", "b"]).await;
    c.expect_none(QUIET).await;
}

#[tokio::test]
async fn delta_changed_cluster_gets_its_endpoints_again() {
    let (mut publisher, server) = serving_base().await;
    let mut c = DeltaClient::connect(server.addr, &node_id("p1", "ns")).await;
    c.subscribe(CLUSTER, &[]).await;
    let r = c.recv().await;
    c.ack(&r).await;
    c.subscribe(ENDPOINT, &["a", "b"]).await;
    let r = c.recv().await;
    c.ack(&r).await;
    c.expect_none(QUIET).await;
    let mut g = base();
    let mut changed =
        envoy_types::pb::envoy::config::cluster::v3::Cluster::decode(&cluster("a").bytes[..])
            .unwrap();
    changed.connect_timeout = Some(envoy_types::pb::google::protobuf::Duration {
        seconds: 7,
        nanos: 0,
    });
    g.set(std::sync::Arc::new(XdsResource::encode("a", &changed)));
    g.set(cluster("new"));
    publisher.publish(g);
    let r = c.recv().await;
    assert_eq!(
        (r.type_url.as_str(), delta_names(&r)),
        (CLUSTER, vec!["a".into(), "new".into()])
    );
    c.ack(&r).await;
    // Only the changed cluster's endpoints come again, unchanged.
    let r = c.recv().await;
    assert_eq!(
        (r.type_url.as_str(), delta_names(&r)),
        (ENDPOINT, vec!["a".into()])
    );
    assert!(r.removed_resources.is_empty());
    c.ack(&r).await;
    c.expect_none(QUIET).await;
}

#[tokio::test]
async fn initial_syncs_beyond_the_limit_wait_for_an_ack() {
    let (_publisher, server) = serving_base_with(rudder::xds::Config {
        sync_concurrency: 1,
        ..Default::default()
    })
    .await;
    let mut first = DeltaClient::connect(server.addr, &node_id("first", "ns")).await;
    first.subscribe(CLUSTER, &[]).await;
    let resp = first.recv().await;
    // The second stream's initial sync waits while the first one's is un-ACKed…
    let mut second = DeltaClient::connect(server.addr, &node_id("second", "ns")).await;
    second.subscribe(CLUSTER, &[]).await;
    second.expect_none(QUIET).await;
    // …and starts as soon as the first stream ACKs everything it was sent.
    first.ack(&resp).await;
    let got = second.recv().await;
    assert_eq!(sorted(delta_names(&got)), ["a", "b"]);
}

/// A client that stops reading fills its HTTP/2 window and its stream waits for flow control. It must not
/// hold up anyone else's pushes, not even with a single push permit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_holds_up_only_its_own_stream() {
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;

    let (mut publisher, server) = serving_base_with(rudder::xds::Config {
        push_concurrency: 1,
        ..Default::default()
    })
    .await;

    // The stalled client: HTTP/2's default 64 KiB window, one CDS subscription, and it never reads.
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut requests, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let head = http::Request::post(format!(
        "http://{}/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources",
        server.addr
    ))
    .header("content-type", "application/grpc")
    .body(())
    .unwrap();
    let (_response, mut send) = requests.send_request(head, false).unwrap();
    let req = DeltaDiscoveryRequest {
        node: Some(Node {
            id: node_id("stalled", "ns"),
            ..Default::default()
        }),
        type_url: CLUSTER.to_owned(),
        ..Default::default()
    }
    .encode_to_vec();
    let mut frame = vec![0];
    frame.extend_from_slice(&(req.len() as u32).to_be_bytes());
    frame.extend_from_slice(&req);
    send.send_data(frame.into(), false).unwrap();

    let mut live = DeltaClient::connect(server.addr, &node_id("live", "ns")).await;
    live.subscribe(CLUSTER, &[]).await;
    let r = live.recv().await;
    live.ack(&r).await;
    wait_type(&server, CLUSTER, |t| t.responses > 0 && !t.is_acked()).await;

    // Each generation adds a cluster larger than the stalled client's whole window.
    let mut g = base();
    for i in 0..4 {
        g.set(cluster(&format!("{i}{}", "x".repeat(70_000))));
        publisher.publish(g.clone());
        let r = live.recv().await;
        assert_eq!(r.resources.len(), 1, "generation {i}: the new cluster");
        live.ack(&r).await;
    }
}

/// Connections whose streams have had a generation's push leave their ACKs unread until every stream has
/// had it (or the fan-out's deadline): the pushes go out first.
#[tokio::test]
async fn acks_are_read_once_the_fan_out_ends() {
    let (mut publisher, server) = serving_base().await;
    let mut c = DeltaClient::connect(server.addr, &node_id("p1", "ns")).await;
    c.subscribe(CLUSTER, &[]).await;
    let r = c.recv().await;
    c.ack(&r).await;
    c.subscribe(ENDPOINT, &["a"]).await;
    let r = c.recv().await;
    c.ack(&r).await;
    wait_type(&server, ENDPOINT, |t| t.is_acked()).await;
    let acked = |nonce: String| move |t: &TypeStatus| t.acked_nonce.as_deref() == Some(&nonce);

    // A stream that never takes generation 2 holds the fan-out on: the client's ACK waits unread.
    let stalled = server.stall_fanouts();
    let mut g = base();
    g.set(endpoints("a", &[ep(1003)]));
    publisher.publish(g.clone());
    let r = c.recv().await;
    assert_eq!(delta_names(&r), ["a"]);
    c.ack(&r).await;
    let pushed = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let st = server.registry.connections()[0].types[ENDPOINT].clone();
    assert_eq!(st.nonce_sent.as_deref(), Some(r.nonce.as_str()));
    assert_ne!(
        st.acked_nonce.as_deref(),
        Some(r.nonce.as_str()),
        "the ACK is read before the fan-out ends"
    );
    // Once it is gone, the fan-out ends and the ACK is read (well before the deadline).
    drop(stalled);
    wait_type(&server, ENDPOINT, acked(r.nonce.clone())).await;
    assert!(
        pushed.elapsed() < Duration::from_millis(450),
        "{:?}",
        pushed.elapsed()
    );

    // A fan-out that never completes ends at its deadline.
    let _stalled = server.stall_fanouts();
    g.set(endpoints("a", &[ep(1004)]));
    publisher.publish(g);
    let r = c.recv().await;
    c.ack(&r).await;
    let pushed = std::time::Instant::now();
    wait_type(&server, ENDPOINT, acked(r.nonce.clone())).await;
    assert!(
        pushed.elapsed() >= Duration::from_millis(400),
        "{:?}",
        pushed.elapsed()
    );
}
