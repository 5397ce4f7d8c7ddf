//! The mesh: rudder (in process, ADS on the bridge), the ingress gateway, and a harness acting as Kubernetes —
//! it reads the book's manifests, starts `replicas` pods per Deployment (app + stock Envoy sidecar + rudder's
//! iptables rules in injected namespaces), assigns ClusterIPs, and writes Pods, Services and Istio config into
//! rudder's config directory, as kubelet, the endpoints controller and `kubectl apply` would.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use rudder::security::bootstrap::{tls_ads_grpc_service, use_tls_ads};
use rudder::security::testing::{TestIssuer, TokenSpec};
use rudder::xds::Registry;
use std::sync::Arc;

use crate::cluster::{Cluster, PodNet, sh, wait_until};

const RUDDER: &str = env!("CARGO_BIN_EXE_rudder");
const MESH_APP: &str = env!("CARGO_BIN_EXE_mesh-app");
/// The namespace the gateway runs in.
pub const GATEWAY_NS: &str = "istio-system";
/// Workload certificate lifetime: short, so every run sees renewals (at half-life, 30 s) under traffic.
pub const WORKLOAD_TTL: Duration = Duration::from_secs(60);
/// The name on rudder's serving certificate the proxies check (istiod's Service), as the pods dial an IP.
const XDS_SERVING_NAME: &str = "istiod.istio-system.svc";
/// UID/GID of the proxy (Envoy runs as it; its token must be readable by it).
const PROXY_UID: u32 = 1337;

/// A started pod.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub deployment: String,
    pub labels: BTreeMap<String, String>,
    pub net: PodNet,
    pub sidecar: bool,
    /// Container names as `kubectl get pods -o jsonpath={..containers[*].name}` lists them.
    pub containers: Vec<String>,
    /// The app container's ports: name (if any) and number.
    pub ports: Vec<(Option<String>, u16)>,
}

/// A Service with its assigned ClusterIP.
#[derive(Debug, Clone)]
struct Svc {
    namespace: String,
    name: String,
    ip: Ipv4Addr,
    selector: BTreeMap<String, String>,
    /// Service port and its `targetPort` (a number or a container port name).
    ports: Vec<(u16, Value)>,
}

/// An HTTP response as the scenarios look at it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub headers: reqwest::header::HeaderMap,
    pub elapsed: Duration,
}

pub struct Mesh {
    pub rt: tokio::runtime::Runtime,
    /// Declared before `cluster` so rudder is gone before the namespaces are.
    bound: Option<rudder::app::Bound>,
    pub cluster: Cluster,
    pub config_dir: PathBuf,
    envoy: PathBuf,
    pub http: reqwest::Client,
    namespaces: BTreeMap<String, bool>,
    services: Vec<Svc>,
    pub pods: Vec<Pod>,
    pub gateway: Option<Pod>,
    xds_port: u16,
    book: PathBuf,
    /// `/etc/hosts` lines for names outside the cluster (the internet's DNS).
    external_hosts: String,
    /// The cluster's service-account token issuer (rudder trusts its JWKS); `None` when identity is off.
    tokens: Option<TestIssuer>,
    /// rudder's root certificate as pods mount it (the `istio-ca-root-cert` ConfigMap).
    root_cert: PathBuf,
    /// The mesh config the `istio` ConfigMap carries.
    mesh_config: MeshSettings,
}

/// The parts of MeshConfig scenarios change.
#[derive(Debug, Clone)]
struct MeshSettings {
    outbound_policy: String,
    auto_mtls: bool,
}

/// Whether the run uses identity: TLS ADS with service-account tokens, SDS certificates (and so mTLS between
/// sidecars). `RUDDER_CONFORMANCE_IDENTITY=off` runs everything over plaintext ADS instead, for comparison: the
/// mTLS scenarios must then fail.
pub fn identity_enabled() -> bool {
    std::env::var("RUDDER_CONFORMANCE_IDENTITY").as_deref() != Ok("off")
}

/// The book's manifests (`../shared/book/manifests` next to the repository).
pub fn book_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("RUDDER_BOOK_MANIFESTS") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/book/manifests")
}

impl Mesh {
    /// Creates the bridge, starts rudder and the ingress gateway.
    pub fn start() -> Result<Mesh, String> {
        let book = book_dir();
        if !book.is_dir() {
            return Err(format!("book manifests not found at {}", book.display()));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let cluster = Cluster::new()?;
        let config_dir = cluster.dir.join("config");
        std::fs::create_dir_all(&config_dir).map_err(|e| e.to_string())?;
        let envoy = envoy_for_proxy_user(&cluster.dir)?;
        // A new connection per request, as the book's `curl` makes: a pooled connection would keep using a
        // listener Envoy is draining after a config change.
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(20))
            .build()
            .map_err(|e| e.to_string())?;
        let mut mesh = Mesh {
            rt,
            bound: None,
            cluster,
            config_dir,
            envoy,
            http,
            namespaces: BTreeMap::new(),
            services: Vec::new(),
            pods: Vec::new(),
            gateway: None,
            xds_port: 0,
            book,
            external_hosts: String::new(),
            tokens: identity_enabled().then(TestIssuer::default),
            root_cert: PathBuf::new(),
            mesh_config: MeshSettings {
                outbound_policy: "ALLOW_ANY".into(),
                auto_mtls: true,
            },
        };
        mesh.write_object(
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": GATEWAY_NS}}),
        )?;
        mesh.write_mesh_config()?;
        let identity = match &mesh.tokens {
            Some(tokens) => {
                // rudder checks the proxies' tokens against the cluster's JWKS, as istiod against the
                // apiserver's; the CA is self-signed and kept in the run directory.
                let jwks = mesh.cluster.dir.join("jwks.json");
                std::fs::write(&jwks, tokens.jwks().to_string()).map_err(|e| e.to_string())?;
                let mut id = rudder::security::Config::new(mesh.cluster.dir.join("ca"), jwks);
                id.tls_addr = SocketAddr::from(([0, 0, 0, 0], 0));
                id.workload_ttl = WORKLOAD_TTL;
                Some(id)
            }
            None => None,
        };
        let cfg = rudder::app::Config {
            config_dir: Some(mesh.config_dir.clone()),
            xds_addr: Some(SocketAddr::from(([0, 0, 0, 0], 0))),
            identity,
            ..Default::default()
        };
        let bound = mesh
            .rt
            .block_on(rudder::app::build(cfg))
            .map_err(|e| format!("rudder: {e:#}"))?;
        // With identity the proxies dial the TLS server only (istiod's 15012); the plaintext one stays unused.
        mesh.xds_port = bound
            .xds_tls_addr
            .or(bound.xds_addr)
            .map(|a| a.port())
            .unwrap_or_default();
        if let Some(issuer) = &bound.secret_issuer {
            mesh.root_cert = mesh.cluster.dir.join("root-cert.pem");
            std::fs::write(&mesh.root_cert, issuer.ca().root_pem()).map_err(|e| e.to_string())?;
        }
        mesh.bound = Some(bound);
        mesh.start_gateway()?;
        mesh.start_external()?;
        Ok(mesh)
    }

    /// rudder's ADS address as pods see it.
    fn xds_address(&self) -> String {
        format!("{}:{}", self.cluster.host_ip, self.xds_port)
    }

    /// Writes `obj` into the config directory; `false` when the file already had exactly this content
    /// (`kubectl apply` reporting "unchanged").
    fn write_object(&self, obj: &Value) -> Result<bool, String> {
        let kind = obj["kind"].as_str().unwrap_or("Unknown").to_lowercase();
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or("_");
        let name = obj["metadata"]["name"].as_str().unwrap_or("_");
        let path = self.config_dir.join(format!("{kind}.{ns}.{name}.yaml"));
        let bytes = serde_json::to_vec_pretty(obj).unwrap_or_default();
        if std::fs::read(&path).ok().as_deref() == Some(&bytes[..]) {
            return Ok(false);
        }
        // JSON is YAML; write to a temp name and rename so the watcher never reads half a file.
        let tmp = self.config_dir.join(format!(".{kind}.{ns}.{name}.tmp"));
        std::fs::write(&tmp, bytes).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
        Ok(true)
    }

    /// Removes an object's file; `false` when there was none.
    fn delete_object(&self, kind: &str, ns: &str, name: &str) -> bool {
        std::fs::remove_file(
            self.config_dir
                .join(format!("{}.{ns}.{name}.yaml", kind.to_lowercase())),
        )
        .is_ok()
    }

    /// Sets the mesh's `outboundTrafficPolicy.mode` (ConfigMap `istio-system/istio`, as CL 33 edits it).
    pub fn set_outbound_policy(&mut self, mode: &str) -> Result<(), String> {
        self.mesh_config.outbound_policy = mode.to_string();
        self.write_mesh_config()
    }

    /// Sets the mesh's `enableAutoMtls` (same ConfigMap).
    pub fn set_auto_mtls(&mut self, on: bool) -> Result<(), String> {
        self.mesh_config.auto_mtls = on;
        self.write_mesh_config()
    }

    /// Writes the `istio` ConfigMap from `self.mesh_config`; once rudder runs, waits for the push.
    fn write_mesh_config(&self) -> Result<(), String> {
        let before = self.snapshot_version();
        let m = &self.mesh_config;
        let changed = self.write_object(&json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "istio", "namespace": GATEWAY_NS},
            "data": {"mesh": format!(
                "enableAutoMtls: {}\noutboundTrafficPolicy:\n  mode: {}\n",
                m.auto_mtls, m.outbound_policy
            )}
        }))?;
        if changed && self.bound.is_some() {
            self.converge(before)?;
        }
        Ok(())
    }

    /// `kubectl apply -f <book>/<rel>`.
    pub fn apply_book(&mut self, rel: &str) -> Result<(), String> {
        let text =
            std::fs::read_to_string(self.book.join(rel)).map_err(|e| format!("{rel}: {e}"))?;
        self.apply_yaml(&text)
    }

    /// `kubectl apply -f -` with `text`: Namespaces, Deployments (pods started), Services (ClusterIP assigned)
    /// and Istio config (written as is). Returns once rudder has pushed the result and every proxy ACKed it.
    pub fn apply_yaml(&mut self, text: &str) -> Result<(), String> {
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(text).map_err(|e| format!("manifest: {e}"))?;
        let before = self.snapshot_version();
        let mut changed = false;
        for doc in docs.into_iter().filter(|d| d.is_object()) {
            let kind = doc["kind"].as_str().unwrap_or_default().to_string();
            changed |= match kind.as_str() {
                "Namespace" => {
                    let name = doc["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    let injected =
                        doc["metadata"]["labels"]["istio-injection"].as_str() == Some("enabled");
                    self.namespaces.insert(name, injected);
                    self.write_object(&doc)?
                }
                "Service" => self.apply_service(doc)?,
                "Deployment" => self.apply_deployment(&doc)?,
                _ if doc["apiVersion"]
                    .as_str()
                    .is_some_and(|a| a.contains("istio.io")) =>
                {
                    self.write_object(&doc)?
                }
                _ => false,
            };
        }
        if !changed {
            return Ok(());
        }
        self.sync_kube_proxy()?;
        self.converge(before)
    }

    /// kube-proxy for pods without a sidecar: in each such pod, chain `RUDDER-KUBE` DNATs every ClusterIP:port
    /// to the ready pods selected by the Service (random choice, as kube-proxy's iptables mode). Sidecar pods
    /// need none: their Envoy routes by EDS to pod IPs.
    fn sync_kube_proxy(&self) -> Result<(), String> {
        let mut text = String::from("*nat\n:RUDDER-KUBE - [0:0]\n");
        for svc in &self.services {
            let backends: Vec<&Pod> = self
                .pods
                .iter()
                .filter(|p| p.namespace == svc.namespace && !svc.selector.is_empty())
                .filter(|p| svc.selector.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
                .collect();
            for (port, target) in &svc.ports {
                let dests: Vec<String> = backends
                    .iter()
                    .filter_map(|p| {
                        let t = match target {
                            Value::Number(n) => u16::try_from(n.as_u64()?).ok()?,
                            Value::String(name) => {
                                p.ports.iter().find(|(n, _)| n.as_deref() == Some(name))?.1
                            }
                            _ => return None,
                        };
                        Some(format!("{}:{t}", p.net.ip))
                    })
                    .collect();
                for (i, d) in dests.iter().enumerate() {
                    let left = dests.len() - i;
                    let pick = if left > 1 {
                        format!(
                            "-m statistic --mode random --probability {:.5} ",
                            1.0 / left as f64
                        )
                    } else {
                        String::new()
                    };
                    text.push_str(&format!(
                        "-A RUDDER-KUBE -d {}/32 -p tcp --dport {port} {pick}-j DNAT --to-destination {d}\n",
                        svc.ip
                    ));
                }
            }
        }
        text.push_str("COMMIT\n");
        for p in self.pods.iter().filter(|p| !p.sidecar) {
            sh_stdin(
                &[
                    "ip",
                    "netns",
                    "exec",
                    &p.net.netns,
                    "iptables-restore",
                    "--noflush",
                ],
                &text,
            )?;
            let hooked = sh(&[
                "ip",
                "netns",
                "exec",
                &p.net.netns,
                "iptables",
                "-t",
                "nat",
                "-C",
                "OUTPUT",
                "-j",
                "RUDDER-KUBE",
            ]);
            if hooked.is_err() {
                sh(&[
                    "ip",
                    "netns",
                    "exec",
                    &p.net.netns,
                    "iptables",
                    "-t",
                    "nat",
                    "-A",
                    "OUTPUT",
                    "-j",
                    "RUDDER-KUBE",
                ])?;
            }
        }
        Ok(())
    }

    /// Removes an Istio object (`kubectl delete`).
    pub fn delete(&mut self, kind: &str, ns: &str, name: &str) -> Result<(), String> {
        let before = self.snapshot_version();
        if !self.delete_object(kind, ns, name) {
            return Ok(());
        }
        self.converge(before)
    }

    fn apply_service(&mut self, mut doc: Value) -> Result<bool, String> {
        let ns = doc["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let ip = match self
            .services
            .iter()
            .find(|s| s.namespace == ns && s.name == name)
        {
            Some(s) => s.ip,
            None => {
                let last = self
                    .services
                    .iter()
                    .map(|s| s.ip.octets()[3])
                    .max()
                    .unwrap_or(9);
                let n = last.checked_add(1).ok_or("too many services")?;
                Ipv4Addr::new(10, 96, self.cluster.subnet, n)
            }
        };
        let selector = doc["spec"]["selector"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let ports = doc["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let port = u16::try_from(p["port"].as_u64()?).ok()?;
                let target = if p["targetPort"].is_null() {
                    json!(port)
                } else {
                    p["targetPort"].clone()
                };
                Some((port, target))
            })
            .collect();
        self.services
            .retain(|s| !(s.namespace == ns && s.name == name));
        self.services.push(Svc {
            namespace: ns.clone(),
            name: name.clone(),
            ip,
            selector,
            ports,
        });
        doc["spec"]["clusterIP"] = json!(ip.to_string());
        doc["spec"]["clusterIPs"] = json!([ip.to_string()]);
        let changed = self.write_object(&doc)?;
        self.write_all_hosts()?;
        Ok(changed)
    }

    /// `/etc/hosts` lines for a pod in `ns`: every Service by `name.ns[.svc[.cluster.local]]`, and by `name` in
    /// the pod's own namespace (what the search path gives in Kubernetes).
    fn hosts_for(&self, ns: &str) -> String {
        let mut out = self.external_hosts.clone();
        for s in &self.services {
            let short = if s.namespace == ns {
                s.name.as_str()
            } else {
                ""
            };
            out.push_str(&format!(
                "{} {short} {n}.{ns2} {n}.{ns2}.svc {n}.{ns2}.svc.cluster.local\n",
                s.ip,
                n = s.name,
                ns2 = s.namespace
            ));
        }
        out
    }

    fn write_all_hosts(&self) -> Result<(), String> {
        for p in self.pods.iter().chain(self.gateway.iter()) {
            self.cluster
                .write_hosts(&p.net, &self.hosts_for(&p.namespace))?;
        }
        Ok(())
    }

    fn apply_deployment(&mut self, doc: &Value) -> Result<bool, String> {
        let ns = doc["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let deployment = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let replicas = doc["spec"]["replicas"].as_u64().unwrap_or(1);
        let template = &doc["spec"]["template"];
        let injected = self.namespaces.get(&ns).copied().unwrap_or(false)
            && template["metadata"]["annotations"]["sidecar.istio.io/inject"].as_str()
                != Some("false");
        let existing: Vec<Pod> = self
            .pods
            .iter()
            .filter(|p| p.namespace == ns && p.deployment == deployment)
            .cloned()
            .collect();
        // A changed template (as a rolling update would) replaces the pods; an unchanged one leaves them.
        let labels: BTreeMap<String, String> = template["metadata"]["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        if existing.len() == replicas as usize
            && existing
                .iter()
                .all(|p| p.labels == labels && p.sidecar == injected)
        {
            return Ok(false);
        }
        for p in existing {
            self.remove_pod(&p);
        }
        for i in 0..replicas {
            let name = format!("{deployment}-{i}");
            self.start_pod(&ns, &deployment, &name, template, injected)?;
        }
        Ok(true)
    }

    fn remove_pod(&mut self, p: &Pod) {
        let _ = self.delete_object("Pod", &p.namespace, &p.name);
        self.cluster.remove_pod(&p.net, &p.name);
        self.pods
            .retain(|x| x.name != p.name || x.namespace != p.namespace);
    }

    /// `kubectl delete namespace`: its objects and pods go away.
    pub fn delete_namespace(&mut self, ns: &str) -> Result<(), String> {
        let before = self.snapshot_version();
        for p in self.pods.clone().into_iter().filter(|p| p.namespace == ns) {
            self.remove_pod(&p);
        }
        self.services.retain(|s| s.namespace != ns);
        let suffix = format!(".{ns}.");
        for e in std::fs::read_dir(&self.config_dir)
            .map_err(|e| e.to_string())?
            .flatten()
        {
            let n = e.file_name().to_string_lossy().to_string();
            if n.contains(&suffix) || n == format!("namespace._.{ns}.yaml") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        self.namespaces.remove(ns);
        self.write_all_hosts()?;
        self.converge(before)
    }

    fn start_pod(
        &mut self,
        ns: &str,
        deployment: &str,
        name: &str,
        template: &Value,
        injected: bool,
    ) -> Result<(), String> {
        let spec = &template["spec"];
        let labels: BTreeMap<String, String> = template["metadata"]["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let container = &spec["containers"][0];
        let image = container["image"].as_str().unwrap_or("echo").to_string();
        // The app listens on every container port (`echo` answers on each; the others declare one).
        let ports: Vec<String> = container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["containerPort"].as_u64().map(|n| n.to_string()))
            .collect();
        let port = if ports.is_empty() {
            "8080".to_string()
        } else {
            ports.join(",")
        };
        let sa = spec["serviceAccountName"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let mut env = vec![
            ("POD_NAME".to_string(), name.to_string()),
            ("POD_NAMESPACE".into(), ns.to_string()),
            // The image's CA bundle: trusts the stand-in for raw.githubusercontent.com.
            (
                "EXOTIC_FRUITS_CA".into(),
                self.cluster.dir.join("exotic-ca.pem").display().to_string(),
            ),
        ];
        for e in container["env"].as_array().into_iter().flatten() {
            if let (Some(k), Some(v)) = (e["name"].as_str(), e["value"].as_str()) {
                env.push((k.to_string(), v.to_string()));
            }
        }
        let net = self.cluster.add_pod()?;
        let mut pod = Pod {
            name: name.into(),
            namespace: ns.into(),
            deployment: deployment.into(),
            labels: labels.clone(),
            net: net.clone(),
            sidecar: injected,
            containers: spec["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["name"].as_str().map(str::to_string))
                .collect(),
            ports: container["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| {
                    let n = u16::try_from(p["containerPort"].as_u64()?).ok()?;
                    Some((p["name"].as_str().map(str::to_string), n))
                })
                .collect(),
        };
        self.cluster.write_hosts(&net, &self.hosts_for(ns))?;
        // `RUDDER_CONFORMANCE_BREAK=capture` skips the capture rules: the scenarios that depend on them must
        // then fail, which shows they can.
        let skip_capture = std::env::var("RUDDER_CONFORMANCE_BREAK").as_deref() == Ok("capture");
        if injected {
            // What the istio-init container does, with rudder's rules.
            if !skip_capture {
                sh(&[
                    "ip", "netns", "exec", &net.netns, RUDDER, "iptables", "apply",
                ])?;
            }
            pod.containers.push("istio-proxy".into());
        }
        let ready = self.cluster.dir.join(format!("{name}.ready"));
        let cmd: Vec<String> = vec![
            MESH_APP.into(),
            "--image".into(),
            image.clone(),
            "--port".into(),
            port,
            "--ready-file".into(),
            ready.display().to_string(),
        ];
        self.cluster
            .spawn(&net, &format!("{name}-app"), false, &env, &cmd)?;
        if wait_until(Duration::from_secs(15), || ready.exists().then_some(())).is_none() {
            return Err(format!(
                "pod {ns}/{name}: app never became ready:\n{}",
                self.cluster.log_tail(&format!("{name}-app"), 10)
            ));
        }
        // kubelet reports the pod; with its IP it becomes an endpoint of the Services selecting it.
        let mut containers = vec![
            json!({"name": pod.containers[0], "image": image, "ports": container["ports"].clone()}),
        ];
        let mut annotations = json!({});
        if injected {
            containers.push(json!({"name": "istio-proxy", "image": "envoyproxy/envoy:v1.40"}));
            annotations = json!({"sidecar.istio.io/status": "{\"containers\":[\"istio-proxy\"]}"});
        }
        self.write_object(&json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": annotations},
            "spec": {"serviceAccountName": sa, "containers": containers},
            "status": {"phase": "Running", "podIP": net.ip.to_string(),
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))?;
        if injected {
            self.start_envoy(&pod, "sidecar", &sa, true)?;
        }
        self.pods.push(pod);
        Ok(())
    }

    /// A server outside the mesh standing in for raw.githubusercontent.com (HTTPS, certificate from a test CA).
    /// Only DNS (`/etc/hosts`) knows it; rudder learns of it only through the book's ServiceEntry.
    fn start_external(&mut self) -> Result<(), String> {
        let host = "raw.githubusercontent.com";
        let ca_key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let mut ca_params =
            rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).map_err(|e| e.to_string())?;
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let leaf = rcgen::CertificateParams::new(vec![host.to_string()])
            .and_then(|p| p.signed_by(&key, &ca))
            .map_err(|e| e.to_string())?;
        let dir = self.cluster.dir.clone();
        let write = |name: &str, pem: String| {
            std::fs::write(dir.join(name), pem).map_err(|e| e.to_string())
        };
        write("exotic-ca.pem", ca.pem())?;
        write("exotic-cert.pem", leaf.pem())?;
        write("exotic-key.pem", key.serialize_pem())?;
        let net = self.cluster.add_pod()?;
        let ready = dir.join("exotic.ready");
        let env = vec![
            (
                "TLS_CERT".to_string(),
                dir.join("exotic-cert.pem").display().to_string(),
            ),
            (
                "TLS_KEY".to_string(),
                dir.join("exotic-key.pem").display().to_string(),
            ),
        ];
        let cmd: Vec<String> = vec![
            MESH_APP.into(),
            "--mode".into(),
            "exotic-fruits".into(),
            "--port".into(),
            "443".into(),
            "--ready-file".into(),
            ready.display().to_string(),
        ];
        self.cluster
            .spawn(&net, "exotic-fruits", false, &env, &cmd)?;
        if wait_until(Duration::from_secs(15), || ready.exists().then_some(())).is_none() {
            return Err(format!(
                "exotic-fruits server never became ready:\n{}",
                self.cluster.log_tail("exotic-fruits", 10)
            ));
        }
        self.external_hosts = format!("{} {host}\n", net.ip);
        self.write_all_hosts()
    }

    fn start_gateway(&mut self) -> Result<(), String> {
        let net = self.cluster.add_pod()?;
        let labels: BTreeMap<String, String> =
            [("app", "istio-ingressgateway"), ("istio", "ingressgateway")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let name = "istio-ingressgateway-0";
        self.write_object(&json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "istio-ingressgateway", "namespace": GATEWAY_NS, "labels": labels},
            "spec": {"type": "LoadBalancer", "selector": {"istio": "ingressgateway"}, "clusterIP": net.ip.to_string(),
                     "ports": [{"name": "http2", "port": 80, "targetPort": 80}, {"name": "https", "port": 443, "targetPort": 443}]}
        }))?;
        self.write_object(&json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": GATEWAY_NS, "labels": labels},
            "spec": {"serviceAccountName": "istio-ingressgateway-service-account",
                     "containers": [{"name": "istio-proxy", "image": "envoyproxy/envoy:v1.40",
                                     "ports": [{"containerPort": 80}, {"containerPort": 443}]}]},
            "status": {"phase": "Running", "podIP": net.ip.to_string(), "conditions": [{"type": "Ready", "status": "True"}]}
        }))?;
        let pod = Pod {
            name: name.into(),
            namespace: GATEWAY_NS.into(),
            deployment: "istio-ingressgateway".into(),
            labels,
            net,
            sidecar: false,
            containers: vec!["istio-proxy".into()],
            ports: Vec::new(),
        };
        self.cluster
            .write_hosts(&pod.net, &self.hosts_for(GATEWAY_NS))?;
        self.start_envoy(
            &pod,
            "router",
            "istio-ingressgateway-service-account",
            false,
        )?;
        self.gateway = Some(pod);
        Ok(())
    }

    /// Renders the bootstrap with `rudder bootstrap` and starts stock Envoy in the pod, then waits for its
    /// readiness endpoint (15021) to answer 200 from the host.
    fn start_envoy(
        &mut self,
        pod: &Pod,
        kind: &str,
        sa: &str,
        as_proxy: bool,
    ) -> Result<(), String> {
        let file = self.cluster.dir.join(format!("{}-envoy.json", pod.name));
        let labels: Vec<String> = pod.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut args = vec![
            RUDDER.to_string(),
            "bootstrap".into(),
            "--type".into(),
            kind.into(),
            "--ip".into(),
            pod.net.ip.to_string(),
            "--pod".into(),
            pod.name.clone(),
            "--namespace".into(),
            pod.namespace.clone(),
            "--service-account".into(),
            sa.into(),
            "--xds-address".into(),
            self.xds_address(),
            "-o".into(),
            file.display().to_string(),
        ];
        if kind == "router" {
            args.extend(["--cluster".into(), "istio-ingressgateway".into()]);
        }
        for l in &labels {
            args.extend(["--label".into(), l.clone()]);
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        sh(&argv)?;
        if self.tokens.is_some() {
            self.secure_bootstrap(pod, sa, &file)?;
        }
        let cmd = vec![
            self.envoy.display().to_string(),
            "-c".into(),
            file.display().to_string(),
            "--disable-hot-restart".into(),
            "--concurrency".into(),
            "1".into(),
            "--log-level".into(),
            "warn".into(),
        ];
        let log = format!("{}-envoy", pod.name);
        self.cluster.spawn(&pod.net, &log, as_proxy, &[], &cmd)?;
        let url = format!("http://{}:15021/healthz/ready", pod.net.ip);
        let http = self.http.clone();
        let ok = wait_until(Duration::from_secs(60), || {
            let r = self.rt.block_on(async {
                http.get(&url)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            });
            matches!(r, Ok(200)).then_some(())
        });
        match ok {
            Some(()) => Ok(()),
            None => Err(format!(
                "{kind} {}/{} never became ready:\n{}",
                pod.namespace,
                pod.name,
                self.cluster.log_tail(&log, 20)
            )),
        }
    }

    /// Plays kubelet for the pod's identity: projects a service-account token for `sa` (audience `istio-ca`) into
    /// the pod's directory, readable by the proxy's UID, and points the rendered bootstrap's ADS at rudder's TLS
    /// server with that token as call credentials and rudder's root as the trust anchor (the same entry the
    /// injector's bootstrap uses, `security::bootstrap`).
    fn secure_bootstrap(&self, pod: &Pod, sa: &str, file: &Path) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        let tokens = self.tokens.as_ref().ok_or("identity is off")?;
        let dir = self
            .cluster
            .dir
            .join("pods")
            .join(format!("{}.{}", pod.name, pod.namespace));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let token = dir.join("istio-token");
        // The kubelet writes no trailing newline (Envoy would put it into the header).
        std::fs::write(&token, tokens.token(&TokenSpec::new(&pod.namespace, sa)))
            .map_err(|e| format!("{}: {e}", token.display()))?;
        std::os::unix::fs::chown(&token, Some(PROXY_UID), Some(PROXY_UID))
            .map_err(|e| format!("chown {}: {e}", token.display()))?;
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o400))
            .map_err(|e| e.to_string())?;
        std::fs::set_permissions(&self.root_cert, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| e.to_string())?;
        let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
        let mut bootstrap: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        use_tls_ads(
            &mut bootstrap,
            tls_ads_grpc_service(
                &self.xds_address(),
                &self.root_cert,
                &token,
                Some(XDS_SERVING_NAME),
            ),
        );
        let text = serde_json::to_string_pretty(&bootstrap).map_err(|e| e.to_string())?;
        std::fs::write(file, text).map_err(|e| e.to_string())
    }

    fn snapshot_version(&self) -> u64 {
        self.bound
            .as_ref()
            .map(|b| b.snapshots.borrow().snapshot.version)
            .unwrap_or(0)
    }

    /// Waits until rudder built a snapshot newer than `before` and every connected proxy ACKed the generation
    /// it was pushed (or is at a newer one). Errors on a NACK.
    fn converge(&self, before: u64) -> Result<(), String> {
        let Some(bound) = &self.bound else {
            return Ok(());
        };
        let mut snaps = bound.snapshots.clone();
        let built = self.rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(10),
                snaps.wait_for(|b| b.snapshot.version > before),
            )
            .await
            .map(|r| r.map(|b| b.snapshot.version))
        });
        let Ok(Ok(version)) = built else {
            return Err(format!(
                "rudder built no new snapshot after the change (still {before})"
            ));
        };
        let registries = self.registries();
        if registries.is_empty() {
            return Err("no xDS server".into());
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut res = Ok(Vec::new());
        for registry in registries {
            let left = deadline.saturating_duration_since(Instant::now());
            res = self.rt.block_on(registry.wait_for(left, |conns| {
                conns.iter().all(|c| {
                    c.generation.is_some_and(|g| g >= version)
                        && c.types
                            .values()
                            .all(|t| t.is_acked() || t.nonce_sent.is_none())
                })
            }));
            if res.is_err() {
                break;
            }
        }
        self.nacks()?;
        match res {
            Ok(_) => Ok(()),
            Err(conns) => {
                let lagging: Vec<String> = conns
                    .iter()
                    .filter(|c| {
                        c.generation.is_none_or(|g| g < version)
                            || !c
                                .types
                                .values()
                                .all(|t| t.is_acked() || t.nonce_sent.is_none())
                    })
                    .map(|c| {
                        let unacked: Vec<String> = c
                            .types
                            .iter()
                            .filter(|(_, t)| !(t.is_acked() || t.nonce_sent.is_none()))
                            .map(|(u, t)| {
                                format!(
                                    "{} sent {:?} acked {:?}",
                                    u.rsplit('.').next().unwrap_or(u),
                                    t.nonce_sent,
                                    t.acked_nonce
                                )
                            })
                            .collect();
                        format!(
                            "{} gen {:?} unacked {unacked:?}",
                            c.proxy.id.pod_key(),
                            c.generation
                        )
                    })
                    .collect();
                // For diagnosis: what the lagging proxies hold (warming clusters, secrets) in the run directory.
                for c in &conns {
                    let key = c.proxy.id.pod_key();
                    if let Some(p) = self
                        .pods
                        .iter()
                        .chain(self.gateway.iter())
                        .find(|p| format!("{}.{}", p.name, p.namespace) == key)
                    {
                        let dump = self.envoy_admin(p, "/config_dump");
                        let _ = std::fs::write(
                            self.cluster
                                .dir
                                .join(format!("{key}-config_dump-{version}.json")),
                            dump,
                        );
                    }
                }
                // Not fatal: a proxy the change does not concern may not be pushed; the scenario's own checks decide.
                eprintln!("conformance: proxies not at snapshot {version} after 20s: {lagging:?}");
                Ok(())
            }
        }
    }

    /// Every NACK any proxy has outstanding, as an error.
    pub fn nacks(&self) -> Result<(), String> {
        let conns = self.connections();
        let nacks: Vec<String> = conns
            .iter()
            .flat_map(|c| {
                c.types.iter().filter_map(move |(t, s)| {
                    s.last_nack
                        .as_ref()
                        .map(|n| format!("{} NACKed {t}: {}", c.proxy.id.pod_key(), n.message))
                })
            })
            .collect();
        if nacks.is_empty() {
            Ok(())
        } else {
            Err(nacks.join("; "))
        }
    }

    /// Pods connected to rudder (`pod.ns` keys), over either server.
    pub fn connected(&self) -> Vec<String> {
        self.connections()
            .iter()
            .map(|c| c.proxy.id.pod_key())
            .collect()
    }

    /// Pods connected to rudder's TLS server, i.e. authenticated by their token (`pod.ns` keys).
    pub fn connected_tls(&self) -> Vec<String> {
        self.bound
            .as_ref()
            .and_then(|b| b.xds_tls_registry.clone())
            .map(|r| {
                r.connections()
                    .iter()
                    .map(|c| c.proxy.id.pod_key())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// rudder's xDS servers' connection registries: plaintext, and TLS when identity is on.
    fn registries(&self) -> Vec<Arc<Registry>> {
        self.bound
            .iter()
            .flat_map(|b| [b.xds_registry.clone(), b.xds_tls_registry.clone()])
            .flatten()
            .collect()
    }

    /// Every live ADS stream of both servers.
    fn connections(&self) -> Vec<rudder::xds::ConnectionStatus> {
        self.registries()
            .iter()
            .flat_map(|r| r.connections())
            .collect()
    }

    /// A request to the ingress gateway (the book's `http://localhost`) with `Host: host`.
    pub fn gateway_request(
        &self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Result<Reply, String> {
        let gw = self.gateway.as_ref().ok_or("no gateway")?;
        self.request(
            method,
            &format!("http://{}:80{path}", gw.net.ip),
            Some(host),
            headers,
            body,
        )
    }

    /// An HTTP request from the host.
    pub fn request(
        &self,
        method: &str,
        url: &str,
        host: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Result<Reply, String> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let mut req = self.http.request(method, url);
        if let Some(h) = host {
            req = req.header(reqwest::header::HOST, h);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.body(b.to_string());
        }
        let start = Instant::now();
        self.rt.block_on(async move {
            let r = req.send().await.map_err(|e| format!("{url}: {e}"))?;
            let status = r.status().as_u16();
            let headers = r.headers().clone();
            let body = r.text().await.map_err(|e| e.to_string())?;
            Ok(Reply {
                status,
                body,
                headers,
                elapsed: start.elapsed(),
            })
        })
    }

    /// `n` gateway GETs, at most `parallel` at a time (bounded in count and time).
    pub fn gateway_burst(
        &self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        n: usize,
        parallel: usize,
    ) -> Vec<Result<Reply, String>> {
        let Some(gw) = self.gateway.as_ref() else {
            return Vec::new();
        };
        let url = format!("http://{}:80{path}", gw.net.ip);
        let http = self.http.clone();
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let host = host.to_string();
        self.rt.block_on(async move {
            use futures::StreamExt;
            futures::stream::iter(0..n)
                .map(|_| {
                    let mut req = http.get(&url).header(reqwest::header::HOST, &host);
                    for (k, v) in &headers {
                        req = req.header(k, v);
                    }
                    async move {
                        let start = Instant::now();
                        let r = req.send().await.map_err(|e| e.to_string())?;
                        let status = r.status().as_u16();
                        let headers = r.headers().clone();
                        let body = r.text().await.map_err(|e| e.to_string())?;
                        Ok(Reply {
                            status,
                            body,
                            headers,
                            elapsed: start.elapsed(),
                        })
                    }
                })
                .buffer_unordered(parallel)
                .collect()
                .await
        })
    }

    /// GET `path` from the Envoy admin API of `pod` (127.0.0.1:15000 inside its namespace), for diagnostics.
    pub fn envoy_admin(&self, pod: &Pod, path: &str) -> String {
        // curl as root: loopback traffic is not captured. (Envoy's admin refuses HTTP/1.0.)
        let url = format!("http://127.0.0.1:15000{path}");
        sh(&[
            "ip",
            "netns",
            "exec",
            &pod.net.netns,
            "curl",
            "-sS",
            "--max-time",
            "5",
            &url,
        ])
        .unwrap_or_else(|e| e)
    }

    /// Serial numbers of the certificates `pod`'s Envoy uses in TLS contexts (admin `/certs`), sorted.
    pub fn cert_serials(&self, pod: &Pod) -> Vec<String> {
        let certs: Value =
            serde_json::from_str(&self.envoy_admin(pod, "/certs")).unwrap_or_default();
        rudder::test_helpers::envoy::cert_serials(&certs)
    }

    /// An HTTP request from inside `pod` (`curl` in its network namespace, as root: a sidecar pod's request is
    /// captured by its Envoy like the app's). `Err` when no HTTP response came (refused, reset, timeout).
    pub fn pod_request(
        &self,
        pod: &Pod,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply, String> {
        let mut args: Vec<String> = [
            "ip",
            "netns",
            "exec",
            &pod.net.netns,
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (k, v) in headers {
            args.push("-H".into());
            args.push(format!("{k}: {v}"));
        }
        args.push(url.into());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let start = Instant::now();
        let out = sh(&argv)?;
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", out.as_str()));
        let status: u16 = code
            .trim()
            .parse()
            .map_err(|_| format!("curl printed {out:?}"))?;
        if status == 0 {
            return Err(format!("no response from {url}"));
        }
        Ok(Reply {
            status,
            body: body.to_string(),
            headers: Default::default(),
            elapsed: start.elapsed(),
        })
    }

    /// Pods of a deployment.
    pub fn pods_of(&self, ns: &str, deployment: &str) -> Vec<&Pod> {
        self.pods
            .iter()
            .filter(|p| p.namespace == ns && p.deployment == deployment)
            .collect()
    }

    /// Stops rudder (the mesh's processes and namespaces go when `self` drops).
    pub fn shutdown(&mut self) {
        if let Some(b) = self.bound.take() {
            self.rt.block_on(b.shutdown());
        }
    }
}

/// Runs a command with `input` on stdin.
fn sh_stdin(args: &[&str], input: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = std::process::Command::new(args[0])
        .args(&args[1..])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}\ninput:\n{input}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Envoy must be executable by UID 1337, and the pip package lives under /root (mode 0700): copy it once into a
/// world-readable place.
fn envoy_for_proxy_user(run_dir: &Path) -> Result<PathBuf, String> {
    let src = rudder::test_helpers::envoy::envoy_binary();
    let size = std::fs::metadata(&src).map_err(|e| e.to_string())?.len();
    let shared = std::env::temp_dir().join(format!("rudder-conformance-envoy-{size}"));
    if std::fs::metadata(&shared).map(|m| m.len()).ok() != Some(size) {
        let tmp = run_dir.join("envoy.copy");
        std::fs::copy(&src, &tmp).map_err(|e| format!("copy Envoy: {e}"))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, &shared).map_err(|e| format!("install Envoy copy: {e}"))?;
    }
    Ok(shared)
}
