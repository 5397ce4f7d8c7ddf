//! rudder with identity on, in process, for tests with real Envoys: the TLS ADS server (istiod's 15012) on a
//! free loopback port with a self-signed CA, a [`TestIssuer`] whose JWKS rudder trusts, the CA root written to a
//! file, and stock-Envoy bootstraps that authenticate with a minted service-account token over that server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use prost::Message;
use serde_json::{Value, json};

use crate::app::{self, Bound};
use crate::security::bootstrap::{tls_ads_grpc_service, use_tls_ads};
use crate::security::testing::{TestIssuer, TokenSpec};
use crate::security::{self};
use crate::test_helpers::envoy::{AdsApi, bootstrap};

/// The DNS name rudder's TLS ADS certificate is issued for (istiod's), which Envoy verifies.
pub const SERVING_NAME: &str = "istiod.istio-system.svc";

/// A running rudder with identity on, and the files its Envoys need, all under one directory.
pub struct IdentityMesh {
    /// The directory holding `config/`, `ca/`, `jwks.json`, `root-cert.pem` and token files.
    pub dir: PathBuf,
    /// The config directory rudder's file source watches.
    pub config: PathBuf,
    /// The running control plane.
    pub bound: Bound,
    /// Mints the service-account tokens rudder accepts.
    pub tokens: TestIssuer,
    /// The CA root (PEM file) Envoys verify rudder's TLS server with.
    pub root_cert: PathBuf,
}

impl IdentityMesh {
    /// Starts rudder under `dir` (the caller owns and removes it): `files` (name, YAML) are written into
    /// `dir/config`, plaintext ADS and TLS ADS listen on free loopback ports, and `tune` may adjust the identity
    /// config (workload TTL, …) before the start.
    pub async fn start(
        dir: &Path,
        files: &[(&str, &str)],
        tune: impl FnOnce(&mut security::Config),
    ) -> IdentityMesh {
        let config = dir.join("config");
        std::fs::create_dir_all(&config).expect("create config dir");
        for (name, yaml) in files {
            std::fs::write(config.join(name), yaml).expect("write config file");
        }
        let tokens = TestIssuer::default();
        let jwks = dir.join("jwks.json");
        std::fs::write(&jwks, tokens.jwks().to_string()).expect("write JWKS");
        let mut identity = security::Config::new(dir.join("ca"), jwks);
        identity.tls_addr = "127.0.0.1:0".parse().expect("loopback address");
        tune(&mut identity);
        let bound = app::build(app::Config {
            config_dir: Some(config.clone()),
            xds_addr: Some("127.0.0.1:0".parse().expect("loopback address")),
            identity: Some(identity),
            ..Default::default()
        })
        .await
        .expect("rudder starts");
        let root_cert = dir.join("root-cert.pem");
        let issuer = bound.secret_issuer.as_ref().expect("identity is on");
        std::fs::write(&root_cert, issuer.ca().root_pem()).expect("write root cert");
        IdentityMesh {
            dir: dir.to_path_buf(),
            config,
            bound,
            tokens,
            root_cert,
        }
    }

    /// The bound address of the TLS ADS server.
    pub fn tls_addr(&self) -> SocketAddr {
        self.bound.xds_tls_addr.expect("identity is on")
    }

    /// A token file `name` for `spec`, as the kubelet writes it: no trailing newline.
    pub fn token_file(&self, name: &str, spec: &TokenSpec) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, self.tokens.token(spec)).expect("write token");
        path
    }

    /// A stock-Envoy bootstrap for `node` (cluster `cluster`) whose ADS is the TLS server, authenticated with
    /// the token file `token` and verifying [`SERVING_NAME`]. ADS goes through `google_grpc`, so the static
    /// plaintext `xds-grpc` cluster is dropped.
    pub fn tls_bootstrap(&self, node: &str, cluster: &str, token: &Path) -> Value {
        let tls = self.tls_addr();
        let mut b = bootstrap(node, cluster, tls, AdsApi::Grpc);
        use_tls_ads(
            &mut b,
            tls_ads_grpc_service(&tls.to_string(), &self.root_cert, token, Some(SERVING_NAME)),
        );
        b["static_resources"] = json!({});
        b
    }

    /// The NACKs rudder's TLS server holds right now, as `<pod> <type url>: <nack>`.
    pub fn nacks(&self) -> Vec<String> {
        let registry = self
            .bound
            .xds_tls_registry
            .as_ref()
            .expect("identity is on");
        registry
            .connections()
            .into_iter()
            .flat_map(|c| {
                let pod = c.proxy.id.pod.clone();
                c.types
                    .into_iter()
                    .filter_map(move |(t, s)| s.last_nack.map(|n| format!("{pod} {t}: {n:?}")))
            })
            .collect()
    }
}

/// The names of the SDS secrets in `resp`, sorted.
pub fn secret_names(resp: &DiscoveryResponse) -> Vec<String> {
    let mut names: Vec<String> = resp
        .resources
        .iter()
        .map(|a| Secret::decode(a.value.as_slice()).expect("a Secret").name)
        .collect();
    names.sort();
    names
}

/// The PEM of the root that `bound`'s CA signs with.
pub fn root_pem(bound: &Bound) -> String {
    bound
        .secret_issuer
        .as_ref()
        .expect("identity is on")
        .ca()
        .root_pem()
        .to_owned()
}
