use envoy_types::pb::envoy::config::core::v3::Node;
use prost::Message;

use super::*;
use crate::security::ca::DEFAULT_WORKLOAD_TTL;

fn issuer(dir: &std::path::Path, ttl: Duration) -> SecretIssuer {
    let source = CaSource::SelfSigned {
        state_dir: dir.to_owned(),
    };
    SecretIssuer::new(
        Ca::load(&source, "cluster.local", ttl).unwrap(),
        Some(source),
    )
}

fn proxy(ns: &str, pod: &str, identity: Option<(&str, &str)>, conn_id: u64) -> Proxy {
    let node = Node {
        id: format!("sidecar~127.0.0.1~{pod}.{ns}~{ns}.svc.cluster.local"),
        ..Default::default()
    };
    let mut p = Proxy::from_node(&node, conn_id).unwrap();
    p.identity = identity.map(|(ns, sa)| PeerIdentity {
        namespace: ns.into(),
        service_account: sa.into(),
    });
    p
}

fn decode(r: &XdsResource) -> Secret {
    Secret::decode(r.bytes.as_ref()).unwrap()
}

fn uri_san(chain_pem: &[u8]) -> String {
    let pem = x509_parser::pem::Pem::iter_from_buffer(chain_pem)
        .next()
        .unwrap()
        .unwrap();
    let cert = pem.parse_x509().unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    format!("{:?}", san.value.general_names)
}

#[test]
fn authenticated_proxy_gets_its_own_svid_and_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = issuer(dir.path(), DEFAULT_WORKLOAD_TTL);
    let p = proxy("bookinfo", "reviews-1", Some(("bookinfo", "reviews")), 1);
    let got = issuer.secrets(&p, Some("reviews"));
    let names: Vec<&str> = got.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, [DEFAULT_SECRET, ROOT_SECRET]);
    let Some(secret::Type::TlsCertificate(tls)) = decode(&got[0]).r#type else {
        panic!("default is a TLS certificate")
    };
    let Some(Specifier::InlineBytes(chain)) = tls.certificate_chain.unwrap().specifier else {
        panic!("inline chain")
    };
    assert!(uri_san(&chain).contains("spiffe://cluster.local/ns/bookinfo/sa/reviews"));
    let Some(Specifier::InlineBytes(key)) = tls.private_key.unwrap().specifier else {
        panic!("inline key")
    };
    assert!(String::from_utf8(key).unwrap().contains("PRIVATE KEY"));
    let Some(secret::Type::ValidationContext(vc)) = decode(&got[1]).r#type else {
        panic!("ROOTCA is a validation context")
    };
    let Some(Specifier::InlineBytes(root)) = vc.trusted_ca.unwrap().specifier else {
        panic!("inline root")
    };
    assert_eq!(root, issuer.ca().root_pem().as_bytes());
    // Asked again before half-life: the very same resources (no push).
    let again = issuer.secrets(&p, Some("reviews"));
    assert!(Arc::ptr_eq(&got[0], &again[0]));
}

#[test]
fn refused_proxies_get_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = issuer(dir.path(), DEFAULT_WORKLOAD_TTL);
    // Unauthenticated (plaintext server, or a refused token).
    assert!(issuer.secrets(&proxy("a", "p", None, 1), None).is_empty());
    // Namespace A identity, node id in namespace B.
    assert!(
        issuer
            .secrets(&proxy("b", "p", Some(("a", "sa")), 2), None)
            .is_empty()
    );
    // Token of another service account than the pod's.
    assert!(
        issuer
            .secrets(&proxy("a", "p", Some(("a", "admin")), 3), Some("sleep"))
            .is_empty()
    );
    // The pod's own account works.
    assert_eq!(
        issuer
            .secrets(&proxy("a", "p", Some(("a", "sleep")), 4), Some("sleep"))
            .len(),
        2
    );
}

#[test]
fn certificates_renew_at_half_life() {
    let dir = tempfile::tempdir().unwrap();
    // X.509 validity is whole seconds; 2 s keeps `not_after` in the future while we wait for half-life (1 s).
    let issuer = issuer(dir.path(), Duration::from_secs(2));
    let p = proxy("a", "p", Some(("a", "sa")), 1);
    let first = issuer.secrets(&p, None);
    assert!(
        Arc::ptr_eq(&first[0], &issuer.secrets(&p, None)[0]),
        "kept before half-life"
    );
    let due = issuer.next_refresh().unwrap();
    let until = due.duration_since(SystemTime::now()).unwrap_or_default();
    assert!(until <= Duration::from_secs(1), "half-life after issuance");
    std::thread::sleep(until);
    let second = issuer.secrets(&p, None);
    assert_ne!(first[0].version, second[0].version, "renewed certificate");
    assert_eq!(first[1].version, second[1].version, "same trust bundle");
}

#[test]
fn a_new_root_is_picked_up_by_reload() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = issuer(dir.path(), DEFAULT_WORKLOAD_TTL);
    let p = proxy("a", "p", Some(("a", "sa")), 1);
    let before = issuer.secrets(&p, None);
    assert!(!issuer.reload(), "unchanged files");
    std::fs::remove_file(dir.path().join(crate::security::ca::CA_KEY)).unwrap();
    std::fs::remove_file(dir.path().join(crate::security::ca::CA_CERT)).unwrap();
    assert!(issuer.reload(), "a new self-signed root");
    let after = issuer.secrets(&p, None);
    assert_ne!(before[1].version, after[1].version, "new trust bundle");
    assert_ne!(
        before[0].version, after[0].version,
        "re-issued by the new root"
    );
}
