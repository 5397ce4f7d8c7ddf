//! Fixtures for generator tests: a snapshot from YAML text, and the scope of a sidecar or gateway in it.

use std::collections::BTreeMap;

use crate::config::parse::{Document, parse_documents};
use crate::config::validate::validate;
use crate::config::{Object, Severity};
use crate::model::Snapshot;
use crate::model::proxy::{ProxyKind, ProxyMeta, ProxyScope};

/// Parses multi-document YAML into objects; panics on anything that would not load cleanly (a fixture bug).
pub fn objects_from_yaml(yaml: &str) -> Vec<Object> {
    let mut objects = Vec::new();
    for doc in parse_documents("fixture.yaml", yaml.as_bytes(), "default") {
        match doc {
            Document::Object { object, warnings } => {
                assert!(
                    warnings.is_empty(),
                    "fixture has unknown fields: {warnings:?}"
                );
                let errors: Vec<_> = validate(&object)
                    .into_iter()
                    .filter(|e| e.severity == Severity::Error)
                    .collect();
                assert!(errors.is_empty(), "fixture is invalid: {errors:?}");
                objects.push(object);
            }
            Document::Skipped { .. } => {}
            Document::Invalid { errors, .. } => panic!("fixture does not parse: {errors:?}"),
        }
    }
    objects
}

/// A snapshot of the objects in `yaml`.
pub fn snapshot_from_yaml(yaml: &str) -> Snapshot {
    Snapshot::build(1, &objects_from_yaml(yaml), Vec::new())
}

/// The scope of the sidecar of pod `namespace/pod` (its IP and labels come from the Pod in the snapshot, if any).
pub fn sidecar<'a>(snapshot: &'a Snapshot, namespace: &str, pod: &str) -> ProxyScope<'a> {
    let ip = snapshot
        .workload(namespace, pod)
        .map(|w| w.ip.clone())
        .unwrap_or_else(|| "10.0.0.1".into());
    ProxyScope::new(
        snapshot,
        ProxyMeta {
            kind: ProxyKind::Sidecar,
            ip,
            pod: pod.into(),
            namespace: namespace.into(),
            labels: BTreeMap::new(),
            mtls: false,
        },
    )
}

/// The scope of a gateway pod `namespace/pod` (labels from the Pod in the snapshot, else `labels`).
pub fn router<'a>(
    snapshot: &'a Snapshot,
    namespace: &str,
    pod: &str,
    labels: &[(&str, &str)],
) -> ProxyScope<'a> {
    let ip = snapshot
        .workload(namespace, pod)
        .map(|w| w.ip.clone())
        .unwrap_or_else(|| "10.0.0.2".into());
    ProxyScope::new(
        snapshot,
        ProxyMeta {
            kind: ProxyKind::Router,
            ip,
            pod: pod.into(),
            namespace: namespace.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            mtls: false,
        },
    )
}

/// The whole control plane in process on loopback: the file source on `dir`, plaintext ADS on a free port.
pub async fn start_rudder(dir: &std::path::Path) -> crate::app::Bound {
    crate::app::build(crate::app::Config {
        config_dir: Some(dir.to_path_buf()),
        xds_addr: Some("127.0.0.1:0".parse().expect("loopback address")),
        ..Default::default()
    })
    .await
    .expect("rudder starts")
}

/// A TCP port free on every interface right now, for Envoy listeners the test points traffic at.
///
/// Ports come from below the kernel's ephemeral range (32768+), walked from a per-process start: a port
/// taken from the ephemeral range can be handed to some outgoing connection between this probe and
/// Envoy's bind, which made listener updates fail with "Address already in use".
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id() * 97) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        // Envoy listeners bind 0.0.0.0, so probe the wildcard address, not only loopback.
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
    panic!("no free TCP port in {LOW}..{}", LOW + SPAN)
}

/// Waits until the proxy of pod `pod` has ACKed every type URL in `types` and `also` holds on its connection
/// (names sent, …); returns that connection. Panics at once with Envoy's text when one of those types is
/// NACKed, and with the last registry state when [`ADMIN_TIMEOUT`](crate::test_helpers::envoy::ADMIN_TIMEOUT)
/// passes first.
pub async fn wait_acked(
    registry: &crate::xds::Registry,
    pod: &str,
    types: &[&str],
    also: impl Fn(&crate::xds::ConnectionStatus) -> bool,
) -> crate::xds::ConnectionStatus {
    let ready = |c: &crate::xds::ConnectionStatus| {
        c.proxy.id.pod == pod
            && types.iter().all(|ty| {
                c.types.get(*ty).is_some_and(|t| {
                    assert!(
                        t.last_nack.is_none(),
                        "{pod} rejected {ty}: {:#?}",
                        t.last_nack
                    );
                    t.is_acked()
                })
            })
            && also(c)
    };
    let conns = registry
        .wait_for(crate::test_helpers::envoy::ADMIN_TIMEOUT, |cs| {
            cs.iter().any(ready)
        })
        .await
        .unwrap_or_else(|last| panic!("{pod} never ACKed {types:?}: {last:#?}"));
    conns
        .into_iter()
        .find(|c| ready(c))
        .expect("the proxy's connection")
}
