//! `rudder bootstrap`: prints the Envoy bootstrap for a sidecar or gateway pod (what istio-agent would write),
//! to start stock Envoy with `envoy -c <file>`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::envoy::bootstrap::{self, AdsApi, Format, Options};
use crate::model::proxy::ProxyKind;

/// Arguments of `rudder bootstrap`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Proxy type: `sidecar`, or `router` for gateways.
    #[arg(long = "type", value_enum, default_value = "sidecar")]
    kind: KindArg,
    /// Pod IP.
    #[arg(long, env = "INSTANCE_IP")]
    ip: IpAddr,
    /// Pod name.
    #[arg(long, env = "POD_NAME")]
    pod: String,
    /// Pod namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: String,
    /// Pod label `key=value`; repeat or comma-separate.
    #[arg(long = "label", value_delimiter = ',', value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Service account of the pod.
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "default")]
    service_account: String,
    /// Node cluster (default `<app label or pod>.<namespace>`).
    #[arg(long)]
    cluster: Option<String>,
    /// rudder's ADS address, `host:port`.
    #[arg(long, default_value = bootstrap::DEFAULT_XDS_ADDRESS)]
    xds_address: String,
    /// Use incremental (delta) xDS.
    #[arg(long)]
    delta: bool,
    /// Kubernetes DNS domain suffix.
    #[arg(long, default_value = "cluster.local")]
    domain_suffix: String,
    #[arg(long, default_value_t = bootstrap::ADMIN_PORT)]
    admin_port: u16,
    #[arg(long, default_value_t = bootstrap::STATS_PORT)]
    stats_port: u16,
    #[arg(long, default_value_t = bootstrap::READINESS_PORT)]
    readiness_port: u16,
    /// Output format.
    #[arg(long, value_enum, default_value = "json")]
    format: FormatArg,
    /// Write to this file instead of stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum KindArg {
    Sidecar,
    Router,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum FormatArg {
    Json,
    Yaml,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("label {s:?} must be key=value")),
    }
}

/// Renders and prints (or writes) the bootstrap: 0 on success, 1 on a bad address or unwritable file.
pub fn run(args: Args) -> ExitCode {
    let Args {
        kind,
        ip,
        pod,
        namespace,
        labels,
        service_account,
        cluster,
        xds_address,
        delta,
        domain_suffix,
        admin_port,
        stats_port,
        readiness_port,
        format,
        output,
    } = args;
    let kind = match kind {
        KindArg::Sidecar => ProxyKind::Sidecar,
        KindArg::Router => ProxyKind::Router,
    };
    let opts = Options {
        labels: labels.into_iter().collect::<BTreeMap<_, _>>(),
        service_account,
        cluster,
        xds_address,
        ads_api: if delta {
            AdsApi::DeltaGrpc
        } else {
            AdsApi::Grpc
        },
        domain_suffix,
        admin_port,
        stats_port,
        readiness_port,
        ..Options::new(kind, ip, &pod, &namespace)
    };
    let rendered = match bootstrap::render(&opts) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("rudder bootstrap: {e}");
            return ExitCode::FAILURE;
        }
    };
    let format = match format {
        FormatArg::Json => Format::Json,
        FormatArg::Yaml => Format::Yaml,
    };
    let text = bootstrap::to_text(&rendered, format);
    match output {
        None => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Some(path) => match std::fs::write(&path, text) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rudder bootstrap: writing {}: {e}", path.display());
                ExitCode::FAILURE
            }
        },
    }
}
