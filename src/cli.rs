//! Command-line interface: argument parsing and the subcommands (`discovery`, `validate`, `bootstrap`, `iptables`,
//! `version`).

mod bootstrap;
mod crds;
mod debug_client;
mod iptables;
mod kube_inject;
mod proxy_config;
mod proxy_status;
mod validate;
mod wait;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::app;
use crate::config::source::kube as kube_source;
use crate::model::builder::Debounce;

/// An Istio-compatible service-mesh control plane serving stock Envoy over ADS.
#[derive(Debug, Parser)]
#[command(name = "rudder", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info,rudder::xds=debug`.
    #[arg(long, global = true, env = "RUST_LOG", default_value = "info")]
    log: String,
    /// Log as JSON lines.
    #[arg(long, global = true, env = "RUDDER_LOG_JSON")]
    log_json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane (istiod's `pilot-discovery discovery`).
    Discovery(DiscoveryArgs),
    /// Validate config files: exit 0 when valid, 1 when invalid, 2 when unreadable.
    Validate(validate::Args),
    /// Render the Envoy bootstrap for a sidecar or gateway pod.
    Bootstrap(bootstrap::Args),
    /// Print, install or remove the sidecar's traffic-capture iptables rules.
    Iptables(iptables::Args),
    /// Sync state of every proxy (or one): SYNCED / NOT SENT / STALE / NACKED per type, with Envoy's error.
    ProxyStatus(proxy_status::Args),
    /// What rudder sent a proxy: clusters, listeners, routes, endpoints or secrets.
    ProxyConfig(proxy_config::Args),
    /// Wait until every proxy a config object affects has ACKed it.
    Wait(wait::Args),
    /// Print the CustomResourceDefinitions of every Istio kind rudder serves (or write them to a directory).
    Crds(crds::Args),
    /// Inject the sidecar into the workloads of a manifest (`-f FILE` or `-f -`), like `istioctl kube-inject`.
    KubeInject(kube_inject::Args),
    /// Print the version.
    Version,
}

#[derive(Debug, clap::Args)]
struct DiscoveryArgs {
    /// Directory of YAML config (Namespaces, Services, Pods, Istio config, the `istio` ConfigMap), watched.
    #[arg(long, env = "RUDDER_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    /// Kubernetes config file; without it `KUBECONFIG`, `~/.kube/config` or the in-cluster account is used when
    /// present. Kubernetes and a config directory may be used together.
    #[arg(long, env = "RUDDER_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Do not watch Kubernetes even when a kubeconfig is found.
    #[arg(long)]
    no_kube: bool,
    /// Serve the injection and validation webhooks over HTTPS here (istiod's 15017), with the certificate of
    /// --webhook-cert/-key, or, with --identity, one issued by rudder's CA.
    #[arg(long, env = "RUDDER_WEBHOOK_ADDR")]
    webhook_addr: Option<std::net::SocketAddr>,
    /// PEM serving certificate chain of the webhooks (for `istiod.istio-system.svc`).
    #[arg(long, env = "RUDDER_WEBHOOK_CERT", requires = "webhook_key")]
    webhook_cert: Option<PathBuf>,
    /// PEM private key of that certificate.
    #[arg(long, env = "RUDDER_WEBHOOK_KEY", requires = "webhook_cert")]
    webhook_key: Option<PathBuf>,
    /// Rebuild once config has been quiet this long (istiod's PILOT_DEBOUNCE_AFTER).
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    debounce_quiet: Duration,
    /// Rebuild at most this long after the first change (istiod's PILOT_DEBOUNCE_MAX).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    debounce_max: Duration,
    /// Load, print the summary and exit (no serving, no watching).
    #[arg(long)]
    once: bool,
    /// Plaintext ADS address (istiod's port 15010).
    #[arg(long, default_value = "0.0.0.0:15010", env = "RUDDER_GRPC_ADDR")]
    grpc_addr: std::net::SocketAddr,
    /// How many proxies may compute a push at once.
    #[arg(long, default_value_t = 100)]
    push_concurrency: usize,
    /// Debug REST API and metrics (istiod's port 15014).
    #[arg(long, default_value = "0.0.0.0:15014", env = "RUDDER_DEBUG_ADDR")]
    debug_addr: std::net::SocketAddr,
    /// The debug API again on istiod's 8080 (skipped with a warning when the port is taken).
    #[arg(long, default_value = "0.0.0.0:8080", env = "RUDDER_DEBUG_ALT_ADDR")]
    debug_alt_addr: std::net::SocketAddr,
    #[command(flatten)]
    identity: IdentityArgs,
}

/// The CA, SDS and the TLS xDS server; on with `--identity` or `--jwks`.
#[derive(Debug, clap::Args)]
struct IdentityArgs {
    /// Turn on identity: TLS ADS with SDS certificates for proxies presenting a service-account token. In
    /// Kubernetes the CA lives in Secrets and the token keys come from the API server (`/openid/v1/jwks`,
    /// refreshed); outside it --jwks is needed.
    #[arg(long, env = "RUDDER_IDENTITY")]
    identity: bool,
    /// The cluster token issuer's JWKS (JSON file) instead of the API server's; implies --identity.
    #[arg(long, env = "RUDDER_JWKS")]
    jwks: Option<PathBuf>,
    /// TLS ADS address (istiod's port 15012).
    #[arg(long, default_value = "0.0.0.0:15012", env = "RUDDER_SECURE_GRPC_ADDR")]
    secure_grpc_addr: std::net::SocketAddr,
    /// State directory of the self-signed root CA (created on first start, key mode 0600). Default
    /// `/var/lib/rudder/ca`; in Kubernetes mode without this or --cacerts the CA lives in Secrets
    /// (`cacerts` if present, else `istio-ca-secret`, in --root-namespace), as istiod keeps it.
    #[arg(long, env = "RUDDER_CA_DIR")]
    ca_dir: Option<PathBuf>,
    /// Plugged-in CA directory (Istio's `cacerts`: ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem).
    #[arg(long, env = "RUDDER_CACERTS")]
    cacerts: Option<PathBuf>,
    /// Trust domain of the issued SPIFFE ids. Default: the mesh config's `trustDomain` (ConfigMap `istio`),
    /// which the proxies' SAN checks use; a different value is warned about.
    #[arg(long, env = "RUDDER_TRUST_DOMAIN")]
    trust_domain: Option<String>,
    /// Workload certificate lifetime (renewed at half-life).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    workload_cert_ttl: Duration,
    /// Accepted token audience.
    #[arg(long, default_value = crate::security::auth::DEFAULT_AUDIENCE)]
    token_audience: Vec<String>,
    /// Required token issuer (`iss`). In Kubernetes without --jwks: the API server's discovery document's.
    #[arg(long)]
    token_issuer: Option<String>,
    /// Namespace of the serving certificate's names (`istiod.<ns>.svc`, `rudder.<ns>.svc`).
    #[arg(long, default_value = "istio-system")]
    root_namespace: String,
}

impl IdentityArgs {
    fn config(self, kube: bool) -> anyhow::Result<Option<crate::security::Config>> {
        if !self.identity && self.jwks.is_none() {
            return Ok(None);
        }
        if self.jwks.is_none() && !kube {
            anyhow::bail!(
                "--identity outside Kubernetes needs --jwks (the token issuer's keys); in a cluster they are \
                 fetched from the API server"
            );
        }
        let jwks = self.jwks;
        let explicit_dir = self.ca_dir.is_some();
        let state_dir = self
            .ca_dir
            .unwrap_or_else(|| PathBuf::from("/var/lib/rudder/ca"));
        let mut cfg = crate::security::Config::new(state_dir, jwks);
        cfg.ca = ca_source(
            &cfg.ca,
            self.cacerts,
            explicit_dir,
            kube,
            &self.root_namespace,
        );
        cfg.tls_addr = self.secure_grpc_addr;
        cfg.trust_domain = self.trust_domain;
        cfg.workload_ttl = self.workload_cert_ttl;
        cfg.audiences = self.token_audience;
        cfg.issuer = self.token_issuer;
        cfg.root_namespace = self.root_namespace;
        Ok(Some(cfg))
    }
}

/// Where the CA comes from: `--cacerts`, then an explicit `--ca-dir`, then (in Kubernetes mode) the Secrets in
/// the root namespace, else the default state directory.
fn ca_source(
    default: &crate::security::CaSource,
    cacerts: Option<PathBuf>,
    explicit_dir: bool,
    kube: bool,
    root_namespace: &str,
) -> crate::security::CaSource {
    use crate::security::CaSource;
    match cacerts {
        Some(dir) => CaSource::Plugged { dir },
        None if kube && !explicit_dir => CaSource::Kube {
            namespace: root_namespace.to_owned(),
        },
        None => default.clone(),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::config::istio::common::parse_duration(s)
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log, cli.log_json);
    match cli.command {
        Command::Version => {
            println!("rudder {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Validate(args) => validate::run(args),
        Command::Crds(args) => crds::run(args),
        Command::KubeInject(args) => kube_inject::run(args),
        Command::ProxyStatus(args) => proxy_status::run(args),
        Command::ProxyConfig(args) => proxy_config::run(args),
        Command::Wait(args) => wait::run(args),
        Command::Bootstrap(args) => bootstrap::run(args),
        Command::Iptables(args) => iptables::run(args),
        Command::Discovery(args) => match discovery(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rudder: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn discovery(args: DiscoveryArgs) -> anyhow::Result<()> {
    let DiscoveryArgs {
        config_dir,
        kubeconfig,
        no_kube,
        webhook_addr,
        webhook_cert,
        webhook_key,
        debounce_quiet,
        debounce_max,
        once,
        grpc_addr,
        push_concurrency,
        debug_addr,
        debug_alt_addr,
        identity,
    } = args;
    let use_kube = !no_kube && (kubeconfig.is_some() || kube_source::config_available());
    if config_dir.is_none() && !use_kube {
        anyhow::bail!(
            "no config source: pass --config-dir DIR, or give a kubeconfig (--kubeconfig, KUBECONFIG, \
             ~/.kube/config) or run in a cluster"
        );
    }
    let cfg = app::Config {
        config_dir,
        debounce: Debounce {
            quiet: debounce_quiet,
            max_delay: debounce_max,
        },
        xds_addr: (!once).then_some(grpc_addr),
        push_concurrency,
        debug_addr: (!once).then_some(debug_addr),
        debug_alt_addr: (!once).then_some(debug_alt_addr),
        identity: if once {
            None
        } else {
            identity.config(use_kube)?
        },
        ..Default::default()
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let mut cfg = cfg;
        if let (Some(addr), false) = (webhook_addr, once) {
            if webhook_cert.is_none() && cfg.identity.is_none() {
                anyhow::bail!(
                    "--webhook-addr needs --webhook-cert/--webhook-key, or --identity to issue the serving \
                     certificate from the CA"
                );
            }
            cfg.webhook = Some(app::WebhookConfig {
                addr,
                cert: webhook_cert,
                key: webhook_key,
            });
        }
        if use_kube {
            let client = kube_source::client(kubeconfig.as_deref()).await?;
            cfg.kube = Some(kube_source::KubeClient(client));
        }
        let bound = app::build(cfg).await?;
        if once {
            let built = bound.snapshots.borrow().clone();
            println!("{}", built.snapshot.summary());
            for p in &built.snapshot.problems {
                println!("{p}");
            }
            return Ok(());
        }
        bound.run().await
    })
}

fn init_logging(filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::CaSource;

    fn identity_args(extra: &[&str]) -> IdentityArgs {
        let mut argv = vec!["rudder", "discovery", "--config-dir", "/c"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Discovery(d) => d.identity,
            _ => unreachable!(),
        }
    }

    #[test]
    fn identity_is_one_flag_in_kubernetes_and_needs_a_jwks_file_outside() {
        assert!(identity_args(&[]).config(true).unwrap().is_none());
        let id = identity_args(&["--identity"])
            .config(true)
            .unwrap()
            .unwrap();
        assert_eq!(id.jwks, None, "keys from the API server");
        assert_eq!(id.trust_domain, None, "trust domain from the mesh config");
        assert!(matches!(id.ca, CaSource::Kube { .. }));
        assert!(identity_args(&["--identity"]).config(false).is_err());
        let id = identity_args(&["--jwks", "/j.json", "--trust-domain", "example.org"])
            .config(false)
            .unwrap()
            .unwrap();
        assert_eq!(id.jwks, Some(PathBuf::from("/j.json")));
        assert_eq!(id.trust_domain.as_deref(), Some("example.org"));
    }

    #[test]
    fn ca_source_prefers_cacerts_then_an_explicit_dir_then_kubernetes() {
        let default = CaSource::SelfSigned {
            state_dir: "/var/lib/rudder/ca".into(),
        };
        let kube = CaSource::Kube {
            namespace: "istio-system".into(),
        };
        let plugged = CaSource::Plugged {
            dir: "/etc/cacerts".into(),
        };
        let cases = [
            (Some("/etc/cacerts"), false, true, plugged.clone()),
            (Some("/etc/cacerts"), false, false, plugged),
            (None, false, true, kube),
            (None, true, true, default.clone()),
            (None, false, false, default.clone()),
        ];
        for (cacerts, explicit, kube_on, want) in cases {
            assert_eq!(
                ca_source(
                    &default,
                    cacerts.map(PathBuf::from),
                    explicit,
                    kube_on,
                    "istio-system"
                ),
                want,
                "cacerts={cacerts:?} explicit_dir={explicit} kube={kube_on}"
            );
        }
    }
}
