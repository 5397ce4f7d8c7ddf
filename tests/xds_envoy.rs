//! Real Envoy 1.40 against rudder's ADS server: config arrives (SotW and delta), changes propagate, traffic
//! flows, a rejected resource is recorded as a NACK while Envoy keeps its last good config, and a control
//! plane restart does not disturb traffic.

use std::net::SocketAddr;

use std::time::Duration;

use rudder::test_helpers::ads::TestServer;
use rudder::test_helpers::envoy::{ADMIN_TIMEOUT, AdsApi, Envoy, bootstrap, version_of};
use rudder::test_helpers::loopback::{http_client, http_server};
use rudder::test_helpers::xds_fixtures::{
    Publisher, StaticGenerator, cluster, endpoints, listener, route, route_regex,
};
use rudder::xds::type_url::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use rudder::xds::{ConnectionStatus, Registry};

const NODE: &str = "sidecar~127.0.0.1~app-1.default~default.svc.cluster.local";

/// A port free right now, for Envoy's listener.
fn free_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], rudder::test_helpers::mesh::free_port()))
}

fn config(up: SocketAddr, listen: SocketAddr, tag: &str) -> StaticGenerator {
    StaticGenerator::default()
        .with(cluster("backend"))
        .with(endpoints("backend", &[up]))
        .with(listener("http", listen, "http-routes"))
        .with(route("http-routes", "backend", "/", tag))
}

/// GET through Envoy's listener: (status, x-rudder-tag, body).
async fn get(
    client: &reqwest::Client,
    listen: SocketAddr,
) -> Result<(u16, String, String), reqwest::Error> {
    let resp = client.get(format!("http://{listen}/hello")).send().await?;
    let status = resp.status().as_u16();
    let tag = resp
        .headers()
        .get("x-rudder-tag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    Ok((status, tag, resp.text().await?))
}

/// Waits until requests through Envoy come back 200 with `tag`.
async fn wait_traffic(envoy: &Envoy, listen: SocketAddr, tag: &str) {
    let client = http_client(Duration::from_secs(2));
    let deadline = tokio::time::Instant::now() + ADMIN_TIMEOUT;
    loop {
        let got = get(&client, listen).await;
        if let Ok((200, t, body)) = &got
            && t == tag
        {
            assert_eq!(body, "hello from upstream");
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "traffic never showed tag {tag}; last {got:?}\n{}",
            envoy.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The single connection once every subscribed type's last response is ACKed and `cond` holds.
async fn wait_synced(
    registry: &Registry,
    cond: impl Fn(&ConnectionStatus) -> bool,
) -> ConnectionStatus {
    let ok = |c: &ConnectionStatus| {
        [CLUSTER, ENDPOINT, LISTENER, ROUTE]
            .iter()
            .all(|t| c.types.get(*t).is_some_and(|s| s.is_acked()))
            && cond(c)
    };
    let conns = registry
        .wait_for(ADMIN_TIMEOUT, |cs| cs.iter().any(ok))
        .await
        .unwrap_or_else(|last| panic!("Envoy never synced: {last:#?}"));
    conns.into_iter().find(ok).unwrap()
}

async fn scenario(api: AdsApi) {
    let up = http_server("127.0.0.1", "hello from upstream").await;
    let listen = free_port();
    let (mut publisher, rx) = Publisher::new();
    let v1 = publisher.publish(config(up, listen, "v1"));
    let server = TestServer::start(rx).await;
    let envoy = Envoy::start(&bootstrap(NODE, "app.default", server.addr, api)).await;

    // Everything arrives and is ACKed; the dump shows rudder's versions.
    let conn = wait_synced(&server.registry, |_| true).await;
    let dumped = envoy
        .wait_config(
            "cluster, endpoints, listener and route",
            ADMIN_TIMEOUT,
            |d| {
                ["cluster", "endpoint", "listener", "route"]
                    .iter()
                    .all(|k| d.iter().any(|x| x.kind == *k))
            },
        )
        .await;
    for (kind, name, t) in [
        ("cluster", "backend", CLUSTER),
        ("listener", "http", LISTENER),
        ("route", "http-routes", ROUTE),
    ] {
        let expected = match api {
            AdsApi::Grpc => v1.to_string(),
            // Delta: each resource carries its content hash.
            AdsApi::DeltaGrpc => conn.types[t].sent.get(name).unwrap().version().to_owned(),
        };
        assert_eq!(
            version_of(&dumped, kind, name),
            Some(expected),
            "{kind} {name}"
        );
    }
    envoy
        .wait_admin("/clusters", ADMIN_TIMEOUT, |b| {
            b.contains(&format!("backend::{up}::"))
        })
        .await;
    wait_traffic(&envoy, listen, "v1").await;

    // A new generation (changed route) reaches Envoy.
    let v2 = publisher.publish(config(up, listen, "v2"));
    wait_synced(&server.registry, |c| {
        c.types[ROUTE].version_sent.as_deref() == Some(&*v2.to_string())
    })
    .await;
    wait_traffic(&envoy, listen, "v2").await;

    // A route Envoy rejects: the NACK is recorded with Envoy's text; Envoy keeps serving v2.
    let mut bad = config(up, listen, "v3");
    bad.set(route_regex("http-routes", "backend", "(", "v3"));
    publisher.publish(bad);
    let conns = server
        .registry
        .wait_for(ADMIN_TIMEOUT, |cs| {
            cs.iter()
                .any(|c| c.types.get(ROUTE).is_some_and(|t| t.last_nack.is_some()))
        })
        .await
        .unwrap_or_else(|last| panic!("no NACK recorded: {last:#?}"));
    let nack = conns[0].types[ROUTE].last_nack.clone().unwrap();
    assert!(!nack.message.is_empty());
    assert!(
        nack.message.contains("regex") || nack.message.contains("missing )"),
        "{}",
        nack.message
    );
    assert_eq!(nack.names, ["http-routes"]);
    assert_eq!(server.metrics.nacks(ROUTE), 1);
    wait_traffic(&envoy, listen, "v2").await;

    // The fix is ACKed and clears the NACK.
    let v4 = publisher.publish(config(up, listen, "v4"));
    let conn = wait_synced(&server.registry, |c| {
        c.types[ROUTE].acked_version.is_some()
            && c.types[ROUTE].version_sent.as_deref() == Some(&*v4.to_string())
    })
    .await;
    assert!(conn.types[ROUTE].last_nack.is_none());
    wait_traffic(&envoy, listen, "v4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_sotw_receives_config_pushes_and_nacks() {
    scenario(AdsApi::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_delta_receives_config_pushes_and_nacks() {
    scenario(AdsApi::DeltaGrpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_survives_control_plane_restart() {
    let up = http_server("127.0.0.1", "hello from upstream").await;
    let listen = free_port();
    let (mut publisher, rx) = Publisher::new();
    publisher.publish(config(up, listen, "v1"));
    let server = TestServer::start(rx).await;
    let xds_addr = server.addr;
    let envoy = Envoy::start(&bootstrap(NODE, "app.default", xds_addr, AdsApi::DeltaGrpc)).await;
    wait_synced(&server.registry, |_| true).await;
    wait_traffic(&envoy, listen, "v1").await;

    // Steady traffic while the control plane goes away and comes back: at most 200 requests in 20 s.
    let traffic = tokio::spawn(async move {
        let client = http_client(Duration::from_secs(2));
        let (mut ok, mut failed) = (0u32, Vec::new());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        for _ in 0..200 {
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tick.tick().await;
            match get(&client, listen).await {
                Ok((200, _, _)) => ok += 1,
                other => failed.push(format!("{other:?}")),
            }
        }
        (ok, failed)
    });

    drop(server);
    envoy
        .wait_admin(
            "/stats?filter=control_plane.connected_state",
            ADMIN_TIMEOUT,
            |b| b.contains("control_plane.connected_state: 0"),
        )
        .await;
    let server = TestServer::start_on(xds_addr, publisher.subscribe(), 16).await;
    envoy
        .wait_admin(
            "/stats?filter=control_plane.connected_state",
            ADMIN_TIMEOUT,
            |b| b.contains("control_plane.connected_state: 1"),
        )
        .await;
    // Resync: the new server serves the reconnected Envoy, which then takes a new generation.
    wait_synced(&server.registry, |_| true).await;
    let v = publisher.publish(config(up, listen, "after-restart"));
    wait_synced(&server.registry, |c| {
        c.types[ROUTE].acked_version.is_some()
            && c.types[ROUTE].version_sent.as_deref() == Some(&*v.to_string())
    })
    .await;
    wait_traffic(&envoy, listen, "after-restart").await;

    let (ok, failed) = traffic.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
    assert!(ok > 0);
}
