//! Equal config must encode to equal bytes: the xDS version of a resource is a hash of its bytes, so any
//! nondeterminism (e.g. protobuf maps iterating in random order) would re-push unchanged config to every proxy.

use std::collections::BTreeMap;
use std::path::Path;

use rudder::config::source::file::config_files;
use rudder::envoy::Generator;
use rudder::model::proxy::{ProxyKind, ProxyMeta};
use rudder::test_helpers::mesh::snapshot_from_yaml;
use rudder::xds::type_url;

fn example_yaml() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/micro-shake-factory");
    config_files(&dir)
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

fn versions(meta: &ProxyMeta) -> BTreeMap<(String, String), String> {
    // A fresh snapshot and generator each time, as after a rebuild with no change.
    let generator = Generator::new(std::sync::Arc::new(snapshot_from_yaml(&example_yaml())));
    let mut out = BTreeMap::new();
    for t in type_url::PUSH_ORDER {
        for r in generator.generate_for(meta.clone(), t) {
            out.insert((t.to_string(), r.name.clone()), r.version.clone());
        }
    }
    out
}

#[test]
fn regenerating_the_same_config_gives_the_same_versions() {
    let proxies = [
        ProxyMeta {
            kind: ProxyKind::Sidecar,
            ip: "10.44.0.11".into(),
            pod: "fruits-api-deployment-v1-7d9c8b6f5-abcde".into(),
            namespace: "micro-shake-factory".into(),
            labels: BTreeMap::new(),
            mtls: false,
        },
        ProxyMeta {
            kind: ProxyKind::Router,
            ip: "10.44.0.2".into(),
            pod: "istio-ingressgateway-5d8d9b9c7-x2x4p".into(),
            namespace: "istio-system".into(),
            labels: BTreeMap::new(),
            mtls: false,
        },
    ];
    for meta in &proxies {
        let first = versions(meta);
        assert!(
            first.len() > 5,
            "expected a full config for {}: {first:?}",
            meta.pod
        );
        for _ in 0..5 {
            let again = versions(meta);
            let changed: Vec<_> = first
                .iter()
                .filter(|(k, v)| again.get(*k) != Some(*v))
                .map(|(k, _)| k)
                .collect();
            assert!(
                changed.is_empty(),
                "{}: versions changed without a config change: {changed:?}",
                meta.pod
            );
        }
    }
}
