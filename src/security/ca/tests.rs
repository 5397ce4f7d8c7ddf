use std::path::Path;

use rcgen::{CertificateParams, KeyPair};
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;
use x509_parser::prelude::X509Certificate;

use super::*;

const RSA_ROOT_KEY: &str = include_str!("../testdata/rsa-root-key.pem");
const RSA_INTERMEDIATE_KEY: &str = include_str!("../testdata/rsa-intermediate-key.pem");
const EC_INTERMEDIATE_KEY: &str = include_str!("../testdata/ec-intermediate-key.pem");

/// The DER blocks of a PEM chain.
fn ders(pem: &str) -> Vec<Vec<u8>> {
    Pem::iter_from_buffer(pem.as_bytes())
        .map(|p| p.unwrap().contents)
        .collect()
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    x509_parser::parse_x509_certificate(der).unwrap().1
}

fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    cert.subject_alternative_name()
        .unwrap()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .map(|n| match n {
                    GeneralName::URI(u) => format!("URI:{u}"),
                    GeneralName::DNSName(d) => format!("DNS:{d}"),
                    other => format!("{other:?}"),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Verifies every link of `chain` (leaf first) and that it ends at `root`.
fn assert_chains_to(chain_pem: &str, root_pem: &str) -> usize {
    let chain = ders(chain_pem);
    let root = ders(root_pem).remove(0);
    assert!(chain.len() >= 2, "leaf plus at least the root");
    for pair in chain.windows(2) {
        let (child, parent) = (parse(&pair[0]), parse(&pair[1]));
        child
            .verify_signature(Some(parent.public_key()))
            .expect("each certificate is signed by the next");
        assert_eq!(child.issuer(), parent.subject());
    }
    let last = chain.last().unwrap();
    assert_eq!(last, &root, "the chain ends with the root");
    parse(&root)
        .verify_signature(None)
        .expect("root is self-signed");
    chain.len()
}

fn write(dir: &Path, name: &str, contents: &str) {
    fs::write(dir.join(name), contents).unwrap();
}

/// A CA certificate for `key`, signed by `issuer` (or self-signed).
fn ca_cert(cn: &str, key: &KeyPair, issuer: Option<(&str, &KeyPair)>) -> String {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    match issuer {
        None => params.self_signed(key).unwrap().pem(),
        Some((issuer_pem, issuer_key)) => {
            let issuer = Issuer::from_ca_cert_pem(issuer_pem, issuer_key).unwrap();
            params.signed_by(key, &issuer).unwrap().pem()
        }
    }
}

fn key_from(dir: &Path, name: &str, pem: &str) -> KeyPair {
    write(dir, name, pem);
    load_key(&dir.join(name)).unwrap()
}

#[test]
fn self_signed_root_is_created_private_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let ca = Ca::self_signed(&state, "cluster.local", DEFAULT_WORKLOAD_TTL).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(state.join(CA_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "CA key file is owner-only");
    }
    let root_der = ders(ca.root_pem()).remove(0);
    let root = parse(&root_der);
    assert!(root.is_ca());
    assert_eq!(
        root.tbs_certificate
            .subject_pki
            .algorithm
            .algorithm
            .to_id_string(),
        "1.2.840.10045.2.1",
        "ECDSA root"
    );
    let again = Ca::self_signed(&state, "cluster.local", DEFAULT_WORKLOAD_TTL).unwrap();
    assert_eq!(
        again.root_pem(),
        ca.root_pem(),
        "second start reuses the root"
    );
}

#[test]
fn workload_certificate_has_one_spiffe_san_and_chains_to_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::self_signed(dir.path(), "example.org", Duration::from_secs(3600)).unwrap();
    let issued = ca.issue_workload("bookinfo", "reviews").unwrap();
    assert_eq!(assert_chains_to(&issued.chain_pem, ca.root_pem()), 2);
    let chain = ders(&issued.chain_pem);
    let leaf = parse(&chain[0]);
    assert_eq!(
        uri_sans(&leaf),
        ["URI:spiffe://example.org/ns/bookinfo/sa/reviews"]
    );
    assert!(!leaf.is_ca());
    let life = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert_eq!(life, 3600 + BACKDATE.as_secs() as i64, "TTL plus backdate");
    assert_eq!(
        issued
            .not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64,
        leaf.validity().not_after.timestamp()
    );
    // The key matches the certificate.
    let key = KeyPair::from_pem(&issued.key_pem).unwrap();
    assert_eq!(
        leaf.public_key().raw,
        key.subject_public_key_info().as_slice()
    );
    // Serials are random.
    let other = ca.issue_workload("bookinfo", "reviews").unwrap();
    assert_ne!(
        parse(&ders(&other.chain_pem)[0]).serial,
        leaf.serial,
        "fresh serial per certificate"
    );
    assert!(
        !format!("{issued:?}").contains("PRIVATE"),
        "Debug never shows the key"
    );
}

#[test]
fn serving_certificate_carries_dns_names() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::self_signed(dir.path(), "cluster.local", DEFAULT_WORKLOAD_TTL).unwrap();
    let names = [
        "istiod.istio-system.svc".to_owned(),
        "rudder.istio-system.svc".to_owned(),
    ];
    let issued = ca.issue_serving(&names).unwrap();
    assert_chains_to(&issued.chain_pem, ca.root_pem());
    let leaf_der = &ders(&issued.chain_pem)[0];
    assert_eq!(
        uri_sans(&parse(leaf_der)),
        ["DNS:istiod.istio-system.svc", "DNS:rudder.istio-system.svc"]
    );
}

/// Istio's `cacerts` layout: root-cert.pem, ca-cert.pem (intermediate), ca-key.pem, cert-chain.pem.
fn plugged_ca(dir: &Path, root_key: &KeyPair, inter_key: &KeyPair, inter_key_pem: &str) -> String {
    let root = ca_cert("Plugged Root", root_key, None);
    let inter = ca_cert("Plugged Intermediate", inter_key, Some((&root, root_key)));
    write(dir, ROOT_CERT, &root);
    write(dir, CA_CERT, &inter);
    write(dir, CA_KEY, inter_key_pem);
    write(dir, CERT_CHAIN, &format!("{inter}{root}"));
    root
}

#[test]
fn plugged_rsa_ca_with_intermediate() {
    let dir = tempfile::tempdir().unwrap();
    // PKCS#1 keys, as Istio's sample cacerts ship them.
    let root_key = key_from(dir.path(), "root.key", RSA_ROOT_KEY);
    let inter_key = key_from(dir.path(), "inter.key", RSA_INTERMEDIATE_KEY);
    let root = plugged_ca(dir.path(), &root_key, &inter_key, RSA_INTERMEDIATE_KEY);
    let ca = Ca::plugged(dir.path(), "cluster.local", DEFAULT_WORKLOAD_TTL).unwrap();
    assert_eq!(ca.root_pem(), root);
    let issued = ca.issue_workload("default", "sleep").unwrap();
    assert_eq!(
        assert_chains_to(&issued.chain_pem, &root),
        3,
        "leaf, intermediate, root"
    );
    let leaf = &ders(&issued.chain_pem)[0];
    assert_eq!(
        uri_sans(&parse(leaf)),
        ["URI:spiffe://cluster.local/ns/default/sa/sleep"]
    );
    assert_eq!(
        parse(leaf).signature_algorithm.algorithm.to_id_string(),
        "1.2.840.113549.1.1.11",
        "sha256WithRSAEncryption by the RSA intermediate"
    );
}

#[test]
fn plugged_ecdsa_ca_with_intermediate_and_no_cert_chain_file() {
    let dir = tempfile::tempdir().unwrap();
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    // SEC1 key, as `openssl ecparam -genkey` writes it.
    let inter_key = key_from(dir.path(), "inter.key", EC_INTERMEDIATE_KEY);
    let root = plugged_ca(dir.path(), &root_key, &inter_key, EC_INTERMEDIATE_KEY);
    fs::remove_file(dir.path().join(CERT_CHAIN)).unwrap();
    let ca = Ca::plugged(dir.path(), "cluster.local", DEFAULT_WORKLOAD_TTL).unwrap();
    let issued = ca.issue_workload("default", "sleep").unwrap();
    assert_eq!(assert_chains_to(&issued.chain_pem, &root), 3);
}

#[test]
fn plugged_ca_rejects_a_key_of_another_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let inter_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    plugged_ca(dir.path(), &root_key, &inter_key, &root_key.serialize_pem());
    let err = Ca::plugged(dir.path(), "cluster.local", DEFAULT_WORKLOAD_TTL).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
}
