//! The stock-Envoy side of authenticated ADS: a bootstrap `grpc_services` entry that reaches the TLS xDS
//! server (15012) through Envoy's `google_grpc` client, trusting rudder's root, and sends the projected
//! service-account token as `authorization: Bearer <token>` with the `file_based_metadata` call credentials.
//!
//! Why this mechanism: Envoy re-reads the token file on every (re)connect, so kubelet's rotating projected token
//! works with no agent; call credentials only flow over TLS, which is what 15012 is. Two Envoy quirks (checked
//! with Envoy 1.40): `credentials_factory_name` must name the plugin or it is ignored, and the token file must
//! not end with a newline (the header becomes invalid). The bootstrap renderer calls [`use_tls_ads`].

use std::path::Path;

use serde_json::{Value, json};

/// Where the injected pod mounts rudder's root certificate (a ConfigMap, like istio-ca-root-cert).
pub const ROOT_CERT_PATH: &str = "/var/run/secrets/rudder/root-cert.pem";
/// Where the kubelet projects the `istio-ca` audience service-account token.
pub const TOKEN_PATH: &str = "/var/run/secrets/tokens/istio-token";
/// The TLS xDS address proxies use by default.
pub const DEFAULT_TLS_XDS_ADDRESS: &str = "istiod.istio-system.svc:15012";

const FILE_METADATA: &str = "envoy.grpc_credentials.file_based_metadata";

/// The ADS `grpc_services` entry for `target_uri` (`host:port`). `authority` overrides the name checked
/// against the serving certificate (for an IP target such as `127.0.0.1:15012`).
pub fn tls_ads_grpc_service(
    target_uri: &str,
    root_cert: &Path,
    token: &Path,
    authority: Option<&str>,
) -> Value {
    let mut google = json!({
        "target_uri": target_uri,
        "stat_prefix": "xds",
        "credentials_factory_name": FILE_METADATA,
        "channel_credentials": {"ssl_credentials": {"root_certs": {"filename": root_cert}}},
        "call_credentials": [{"from_plugin": {
            "name": FILE_METADATA,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.grpc_credential.v3.FileBasedMetadataConfig",
                "secret_data": {"filename": token},
                "header_key": "authorization",
                "header_prefix": "Bearer "
            }
        }}]
    });
    if let Some(name) = authority {
        google["channel_args"] =
            json!({"args": {"grpc.ssl_target_name_override": {"string_value": name}}});
    }
    json!({"google_grpc": google})
}

/// Points a rendered bootstrap's ADS at the TLS server with token credentials (replacing
/// `dynamic_resources.ads_config.grpc_services`). The static `xds-grpc` cluster, if any, is left alone.
pub fn use_tls_ads(bootstrap: &mut Value, grpc_service: Value) {
    bootstrap["dynamic_resources"]["ads_config"]["grpc_services"] = json!([grpc_service]);
}

/// An SDS reference to `name` fetched over ADS (as the generators and static resources spell it).
pub fn sds_over_ads(name: &str) -> Value {
    json!({"name": name, "sds_config": {"ads": {}, "resource_api_version": "V3"}})
}
