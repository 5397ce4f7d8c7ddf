//! The book's scenarios (`../shared/book/scenarios.md` §3), each with its expected output and a negative case.
//! A scenario returns what it observed: `Ok` when the expectation held, `Err` otherwise.

use crate::cluster::wait_until;
use crate::mesh::{GATEWAY_NS, Mesh, Pod, Reply};
use std::time::Duration;

const NS: &str = "micro-shake-factory";
const FRUITS: &str = "fruits.istio-succinctly.io";
const JUICE: &str = "juice-shop.istio-succinctly.io";

/// A scenario: name, and the function running it against the mesh.
pub type Scenario = (&'static str, fn(&mut Mesh) -> Result<String, String>);

/// Every scenario in the order they run (later ones build on the state earlier ones leave).
pub const ALL: &[Scenario] = &[
    ("S1 control plane and ingress gateway up", s1),
    ("S2 sidecar injection", s2),
    ("S3 gateway + VirtualService", s3),
    ("S6 juice-shop gateway", s6),
    ("S8 in-mesh service-to-service call", s8),
    ("S7 REGISTRY_ONLY egress and ServiceEntry", s7),
    ("S9 header-based routing", s9),
    ("CL50 prefix rewrite to v2", cl50),
    ("S11 canary 90/10", s11),
    ("S13 mirroring", s13),
    ("S10 fault injection", s10),
    ("S12 resilience", s12),
    ("S4 pod without sidecar via kube-proxy", s4),
    ("S22 delete the namespace", s22),
    (
        "S15 MeshPolicy STRICT and ISTIO_MUTUAL DestinationRule",
        s15,
    ),
    (
        "mTLS PERMISSIVE accepts plaintext and mTLS",
        mtls_permissive,
    ),
    ("mTLS STRICT with auto-mTLS", mtls_strict),
    ("mTLS DISABLE on a port", mtls_port_disable),
    ("mTLS certificate rotation under traffic", mtls_rotation),
];

fn short(r: &Result<Reply, String>) -> String {
    match r {
        Ok(r) => format!(
            "{} {}",
            r.status,
            r.body.chars().take(120).collect::<String>()
        ),
        Err(e) => format!("error {e}"),
    }
}

/// Polls the gateway until the reply matches (config may still be on its way to Envoy), up to 15 s.
fn expect(
    mesh: &Mesh,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    want: impl Fn(&Reply) -> bool,
) -> Result<String, String> {
    expect_within(
        Duration::from_secs(15),
        mesh,
        method,
        host,
        path,
        headers,
        body,
        want,
    )
}

/// [`expect`] with its own deadline.
#[allow(clippy::too_many_arguments)]
fn expect_within(
    deadline: Duration,
    mesh: &Mesh,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    want: impl Fn(&Reply) -> bool,
) -> Result<String, String> {
    let mut last = String::new();
    let got = wait_until(deadline, || {
        let r = mesh.gateway_request(method, host, path, headers, body);
        last = short(&r);
        r.ok().filter(&want)
    });
    match got {
        Some(r) => Ok(format!("{} {}", r.status, r.body)),
        None => Err(last),
    }
}

fn s1(mesh: &mut Mesh) -> Result<String, String> {
    mesh.nacks()?;
    let connected = mesh.connected();
    if !connected
        .iter()
        .any(|p| p == "istio-ingressgateway-0.istio-system")
    {
        return Err(format!(
            "gateway not connected to rudder (connected: {connected:?})"
        ));
    }
    // With identity the gateway authenticated with its token on the TLS server and holds an SDS certificate.
    let mut identity = String::from("plaintext ADS (identity off)");
    if crate::mesh::identity_enabled() {
        let tls = mesh.connected_tls();
        if !tls
            .iter()
            .any(|p| p == "istio-ingressgateway-0.istio-system")
        {
            return Err(format!(
                "gateway not on the TLS xDS server (TLS connections: {tls:?})"
            ));
        }
        identity = "TLS ADS, token-authenticated".into();
    }
    // Negative: with no Gateway config nothing routes yet.
    let r = mesh.gateway_request("GET", FRUITS, "/api/fruits/special", &[], None);
    if matches!(&r, Ok(r) if r.status == 200) {
        return Err(format!(
            "gateway routed before any Gateway existed: {}",
            short(&r)
        ));
    }
    Ok(format!(
        "gateway ready and connected ({identity}), no NACKs; unconfigured request → {}",
        short(&r)
    ))
}

fn s2(mesh: &mut Mesh) -> Result<String, String> {
    mesh.apply_book("chapter-3/fruits-api.yml")?;
    let pods = mesh.pods_of(NS, "fruits-api-deployment-v1");
    let names: Vec<String> = pods.iter().flat_map(|p| p.containers.clone()).collect();
    let listing = names.join(" ");
    if listing != "fruits-api istio-proxy fruits-api istio-proxy" {
        return Err(format!("containers: {listing}"));
    }
    let connected = mesh.connected();
    for p in &pods {
        let key = format!("{}.{}", p.name, p.namespace);
        if !connected.contains(&key) {
            return Err(format!("{key} not connected to rudder"));
        }
    }
    // The capture is real: a request to the app's port from outside the pod passes its sidecar (inbound 15006).
    let ip = pods[0].net.ip;
    let r = mesh.request(
        "GET",
        &format!("http://{ip}:3000/api/fruits/special"),
        None,
        &[],
        None,
    )?;
    let via_envoy = r.headers.contains_key("x-envoy-upstream-service-time")
        || r.headers.get("server").is_some_and(|s| s == "istio-envoy");
    if r.status != 200 || !via_envoy {
        return Err(format!(
            "direct call to {ip}:3000 → {} {} headers {:?} (not through the sidecar)",
            r.status, r.body, r.headers
        ));
    }
    Ok(format!("{listing}; {ip}:3000 answered through the sidecar"))
}

fn s3(mesh: &mut Mesh) -> Result<String, String> {
    mesh.apply_book("chapter-3/fruits-api-vs-gw.yml")?;
    let ok = expect(mesh, "GET", FRUITS, "/api/fruits/special", &[], None, |r| {
        r.status == 200 && r.body == r#"{"ver":"1","fruit":"Mango"}"#
    })?;
    let neg = mesh.gateway_request(
        "GET",
        "other.istio-succinctly.io",
        "/api/fruits/special",
        &[],
        None,
    );
    match &neg {
        Ok(r) if r.status == 404 => Ok(format!("{ok}; wrong Host → 404")),
        _ => Err(format!("{ok}; but wrong Host → {}", short(&neg))),
    }
}

fn s6(mesh: &mut Mesh) -> Result<String, String> {
    mesh.apply_book("chapter-4-5/juice-shop-api.yml")?;
    mesh.apply_book("chapter-4-5/juice-shop-api-vs-gw.yml")?;
    let ok = expect(
        mesh,
        "GET",
        JUICE,
        "/api/juice-shop/hello",
        &[],
        None,
        |r| r.status == 200 && r.body == "Welcome to the Juice Shop!",
    )?;
    let neg = mesh.gateway_request(
        "GET",
        "juice-shop.example.com",
        "/api/juice-shop/hello",
        &[],
        None,
    );
    match &neg {
        Ok(r) if r.status == 404 => Ok(format!("{ok}; wrong Host → 404")),
        _ => Err(format!("{ok}; but wrong Host → {}", short(&neg))),
    }
}

fn s8(mesh: &mut Mesh) -> Result<String, String> {
    mesh.apply_book("chapter-4-5/fruits-api-vs.yml")?;
    let headers = [("content-type", "application/json"), ("country", "au")];
    let ok = expect(
        mesh,
        "POST",
        JUICE,
        "/api/juice-shop/blender",
        &headers,
        Some(r#"{"fruits":["kiwi","mandarin"]}"#),
        |r| r.status == 200 && r.body == r#"{"juice":"kiwi-mandarin juice","price":4.9}"#,
    )?;
    // Negative (CL 143): mango is not sold in au → fruits-api 404 → juice-shop 409.
    let neg = mesh.gateway_request(
        "POST",
        JUICE,
        "/api/juice-shop/blender",
        &headers,
        Some(r#"{"fruits":["kiwi","mango"]}"#),
    );
    match &neg {
        Ok(r)
            if r.status == 409
                && r.body
                    .contains("please only select fruits available in your region") =>
        {
            Ok(format!("{ok}; kiwi+mango → 409"))
        }
        _ => Err(format!("{ok}; but kiwi+mango → {}", short(&neg))),
    }
}

/// Counts `ver` values of fruits replies.
fn versions(replies: &[Result<Reply, String>]) -> (usize, usize, usize) {
    let (mut v1, mut v2, mut other) = (0, 0, 0);
    for r in replies {
        match r {
            Ok(r) if r.status == 200 && r.body == r#"{"ver":"1","fruit":"Mango"}"# => v1 += 1,
            Ok(r) if r.status == 200 && r.body == r#"{"ver":"2","fruit":"Orange"}"# => v2 += 1,
            _ => other += 1,
        }
    }
    (v1, v2, other)
}

fn s9(mesh: &mut Mesh) -> Result<String, String> {
    mesh.apply_book("chapter-4-5/fruits-api-versioned.yml")?;
    mesh.apply_book("chapter-4-5/fruits-api-dr-vs-gw.yml")?;
    expect(
        mesh,
        "GET",
        FRUITS,
        "/api/fruits/special",
        &[("version", "2")],
        None,
        |r| r.body == r#"{"ver":"2","fruit":"Orange"}"#,
    )?;
    let plain = versions(&mesh.gateway_burst(FRUITS, "/api/fruits/special", &[], 20, 5));
    let v2 =
        versions(&mesh.gateway_burst(FRUITS, "/api/fruits/special", &[("version", "2")], 20, 5));
    // Negative: a header value that matches nothing takes the default (v1).
    let v3 =
        versions(&mesh.gateway_burst(FRUITS, "/api/fruits/special", &[("version", "3")], 10, 5));
    let obs = format!("no header v1/v2/other={plain:?}; version:2 → {v2:?}; version:3 → {v3:?}");
    if plain == (20, 0, 0) && v2 == (0, 20, 0) && v3 == (10, 0, 0) {
        Ok(obs)
    } else {
        Err(obs)
    }
}

fn cl50(mesh: &mut Mesh) -> Result<String, String> {
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: fruits-api-vservice
  namespace: {NS}
spec:
  hosts: [{FRUITS}]
  gateways: [fruits-api-gateway]
  http:
  - match:
    - uri:
        prefix: /api/v2/fruits/
    rewrite:
      uri: /api/fruits/
    route:
    - destination: {{host: fruits-api-service, port: {{number: 80}}, subset: v2}}
  - route:
    - destination: {{host: fruits-api-service, port: {{number: 80}}, subset: v1}}
"#
    );
    mesh.apply_yaml(&yaml)?;
    let ok = expect(
        mesh,
        "GET",
        FRUITS,
        "/api/v2/fruits/special",
        &[],
        None,
        |r| r.body == r#"{"ver":"2","fruit":"Orange"}"#,
    )?;
    // Negative: without the prefix the default route (v1) answers, and the unrewritten path is not the app's.
    let neg = mesh.gateway_request("GET", FRUITS, "/api/fruits/special", &[], None);
    match &neg {
        Ok(r) if r.body == r#"{"ver":"1","fruit":"Mango"}"# => Ok(format!(
            "/api/v2/fruits/special → {ok}; /api/fruits/special → v1"
        )),
        _ => Err(format!("{ok}; but /api/fruits/special → {}", short(&neg))),
    }
}

fn s11(mesh: &mut Mesh) -> Result<String, String> {
    // The book's weights (CL 79: v1 90, v2 10); the repository file has them reversed.
    let text = std::fs::read_to_string(
        crate::mesh::book_dir().join("chapter-4-5/fruits-api-dr-vs-gw-canary.yml"),
    )
    .map_err(|e| e.to_string())?;
    let fixed = text
        .replacen(
            "subset: v1\n          weight: 10",
            "subset: v1\n          weight: 90",
            1,
        )
        .replacen(
            "subset: v2\n          weight: 90",
            "subset: v2\n          weight: 10",
            1,
        );
    if fixed == text {
        return Err("canary manifest did not have the expected weights to swap".into());
    }
    mesh.apply_yaml(&fixed)?;
    let replies = mesh.gateway_burst(FRUITS, "/api/fruits/special", &[], 200, 20);
    let (v1, v2, other) = versions(&replies);
    let obs = format!("N=200: v1={v1} v2={v2} other={other} (gate v2 in [6,34])");
    if other == 0 && (6..=34).contains(&v2) {
        Ok(obs)
    } else {
        Err(obs)
    }
}

fn s13(mesh: &mut Mesh) -> Result<String, String> {
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: fruits-api-vservice
  namespace: {NS}
spec:
  hosts: [{FRUITS}]
  gateways: [fruits-api-gateway]
  http:
  - route:
    - destination: {{host: fruits-api-service, port: {{number: 80}}, subset: v1}}
    mirror: {{host: fruits-api-service, port: {{number: 80}}, subset: v2}}
"#
    );
    mesh.apply_yaml(&yaml)?;
    let marker = format!("/api/fruits/special?mirror-probe={}", std::process::id());
    expect(mesh, "GET", FRUITS, "/api/fruits/special", &[], None, |r| {
        r.body == r#"{"ver":"1","fruit":"Mango"}"#
    })?;
    let replies = mesh.gateway_burst(FRUITS, &marker, &[], 20, 5);
    let (v1, v2, other) = versions(&replies);
    // The v2 pods log each request: the copies arrive with the `-shadow` authority.
    let shadow = format!("{FRUITS}-shadow");
    let seen = wait_until(Duration::from_secs(10), || {
        let n: usize = mesh
            .pods_of(NS, "fruits-api-deployment-v2")
            .iter()
            .map(|p| {
                mesh.cluster
                    .log_tail(&format!("{}-app", p.name), 500)
                    .lines()
                    .filter(|l| l.contains(&shadow) && l.contains("mirror-probe"))
                    .count()
            })
            .sum();
        (n >= 20).then_some(n)
    });
    let obs = format!(
        "client saw v1={v1} v2={v2} other={other}; v2 pods got {seen:?} copies with Host {shadow}"
    );
    if v1 == 20 && seen.is_some() {
        Ok(obs)
    } else {
        Err(obs)
    }
}

fn s10(mesh: &mut Mesh) -> Result<String, String> {
    mesh.apply_book("chapter-4-5/fruits-api-dr-vs-gw-test-fault.yml")?;
    // Wait until the fault is active (a 500 with Envoy's abort body shows up). Once it is, 16% of the
    // requests are delayed 5 s and not aborted: three of those before the first abort (about 1 in 100)
    // fill 15 s, so this wait gets 45 s (six in a row: about 1 in 10,000).
    let fault_abort = |r: &Reply| r.status == 500 && r.body == "fault filter abort";
    let path = "/api/fruits/special";
    expect_within(
        Duration::from_secs(45),
        mesh,
        "GET",
        FRUITS,
        path,
        &[],
        None,
        fault_abort,
    )?;
    // All 200 at once: 40% of them wait 5 s, so in parallel the burst takes about 5 s.
    let replies = mesh.gateway_burst(FRUITS, "/api/fruits/special", &[], 200, 200);
    let aborted = replies
        .iter()
        .filter(|r| matches!(r, Ok(r) if r.status == 500 && r.body == "fault filter abort"))
        .count();
    let ok = replies
        .iter()
        .filter(|r| matches!(r, Ok(r) if r.status == 200))
        .count();
    let delayed = replies
        .iter()
        .filter(|r| matches!(r, Ok(r) if r.elapsed >= Duration::from_millis(4500)))
        .count();
    let obs = format!(
        "N=200: 500s={aborted} (gate [97,143]), 200s={ok}, delayed≥4.5s={delayed} (gate [57,103])"
    );
    if (97..=143).contains(&aborted) && (57..=103).contains(&delayed) && aborted + ok == 200 {
        return Ok(obs);
    }
    // Show what the gateway was configured with.
    let fault = mesh
        .gateway
        .as_ref()
        .map(|gw| mesh.envoy_admin(gw, "/config_dump?resource=dynamic_route_configs"))
        .unwrap_or_default();
    let fault: String = fault
        .find("fault")
        .map(|i| {
            fault[i.saturating_sub(200)..(i + 800).min(fault.len())]
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    Err(format!("{obs}; gateway fault config: {fault}"))
}

fn s12(mesh: &mut Mesh) -> Result<String, String> {
    mesh.apply_book("chapter-4-5/juice-shop-api-vs-gw.yml")?;
    let lucky = |replies: &[Result<Reply, String>]| {
        replies
            .iter()
            .filter(|r| matches!(r, Ok(r) if r.status == 200 && r.body == "Lucky"))
            .count()
    };
    let before = lucky(&mesh.gateway_burst(JUICE, "/api/juice-shop/testMyLuck", &[], 50, 1));
    mesh.apply_book("chapter-4-5/juice-shop-api-dr-vs-gw-resilience.yml")?;
    let after = lucky(&mesh.gateway_burst(JUICE, "/api/juice-shop/testMyLuck", &[], 50, 1));
    let obs = format!("Lucky before={before}/50 (gate ≤20), after retries={after}/50 (gate ≥38)");
    if before <= 20 && after >= 38 {
        Ok(obs)
    } else {
        Err(obs)
    }
}

fn s7(mesh: &mut Mesh) -> Result<String, String> {
    const URL: &str =
        "https://raw.githubusercontent.com/Istio-Succinctly/ExoticFruits/master/fruits.json";
    const FRUITS_JSON: &str =
        r#"{"fruits":["Chom Chom","Mangosteen","Longan","Persimmon","Sapodilla"]}"#;
    let path = "/api/juice-shop/exoticFruits";
    // ALLOW_ANY (the default): the unknown host passes through.
    let open = expect(mesh, "GET", JUICE, path, &[], None, |r| {
        r.status == 200 && r.body == FRUITS_JSON
    })
    .map_err(|e| format!("under ALLOW_ANY: {e}"))?;
    // CL 33: REGISTRY_ONLY. The sidecar sends the unknown destination to the BlackHole cluster.
    mesh.set_outbound_policy("REGISTRY_ONLY")?;
    let want_err = format!(
        r#"{{"code":"Internal","message":"Error: FetchError: request to {URL} failed, reason: "#
    );
    let blocked = expect(mesh, "GET", JUICE, path, &[], None, |r| {
        r.status == 500 && r.body.starts_with(&want_err)
    });
    let result = (|| {
        let blocked =
            blocked.map_err(|e| format!("under REGISTRY_ONLY expected 500 FetchError, got {e}"))?;
        // In-mesh calls keep working under REGISTRY_ONLY: the Service is in the registry (S8).
        let headers = [("content-type", "application/json"), ("country", "au")];
        expect(
            mesh,
            "POST",
            JUICE,
            "/api/juice-shop/blender",
            &headers,
            Some(r#"{"fruits":["kiwi","mandarin"]}"#),
            |r| r.body == r#"{"juice":"kiwi-mandarin juice","price":4.9}"#,
        )
        .map_err(|e| format!("blender under REGISTRY_ONLY: {e}"))?;
        // CL 35: the ServiceEntry registers the host; the call works again (CL 36).
        mesh.apply_book("chapter-4-5/exotic-fruits-se.yml")?;
        let fixed = expect(mesh, "GET", JUICE, path, &[], None, |r| {
            r.status == 200 && r.body == FRUITS_JSON
        })
        .map_err(|e| format!("with the ServiceEntry: {e}"))?;
        Ok(format!(
            "ALLOW_ANY → {open}; REGISTRY_ONLY → {}; + ServiceEntry → {fixed}",
            blocked.chars().take(90).collect::<String>()
        ))
    })();
    // Leave the mesh as later scenarios expect it.
    mesh.delete("ServiceEntry", NS, "exotic-fruits-service-entry")?;
    mesh.set_outbound_policy("ALLOW_ANY")?;
    result
}

fn s22(mesh: &mut Mesh) -> Result<String, String> {
    let before = mesh.connected().len();
    mesh.delete_namespace(NS)?;
    // The pods' proxies are gone from rudder; the gateway stays.
    let gone = wait_until(Duration::from_secs(15), || {
        let c = mesh.connected();
        (!c.iter().any(|p| p.ends_with(&format!(".{NS}")))).then_some(c)
    });
    let Some(left) = gone else {
        return Err(format!(
            "proxies of {NS} still connected: {:?}",
            mesh.connected()
        ));
    };
    if !left.iter().any(|p| p.starts_with("istio-ingressgateway")) {
        return Err(format!("the gateway disconnected too: {left:?}"));
    }
    // Negative: the hosts no longer route (no Gateway, no VirtualService): 404, or no listener at all.
    let mut last = String::new();
    let r = wait_until(Duration::from_secs(15), || {
        let r = mesh.gateway_request("GET", FRUITS, "/api/fruits/special", &[], None);
        last = short(&r);
        match r {
            Ok(r) if r.status == 404 => Some("404".to_string()),
            Err(_) => Some(format!("no listener ({last})")),
            Ok(_) => None,
        }
    })
    .ok_or_else(|| format!("fruits host still answers: {last}"))?;
    Ok(format!(
        "{before} proxies → {} ({left:?}); fruits host → {r}",
        left.len()
    ))
}

/// A namespace without `istio-injection`: its pods get no sidecar and reach mesh services through the harness's
/// kube-proxy DNAT (ClusterIP → pod IPs), landing on the destination's sidecar inbound.
fn s4(mesh: &mut Mesh) -> Result<String, String> {
    let yaml = format!(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: legacy
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: juice-shop-api-deployment
  namespace: legacy
spec:
  selector: {{matchLabels: {{app: juice-shop-api}}}}
  replicas: 1
  template:
    metadata:
      labels: {{app: juice-shop-api}}
    spec:
      containers:
      - name: juice-shop-api
        image: istiosuccinctly/juice-shop-api:1.0.0
        ports: [{{name: http-js-api, containerPort: 3001}}]
        env: [{{name: FRUITS_API, value: "http://fruits-api-service.{NS}"}}]
---
apiVersion: v1
kind: Service
metadata:
  name: juice-shop-api-service
  namespace: legacy
spec:
  selector: {{app: juice-shop-api}}
  ports: [{{name: http-js-api-service, port: 80, targetPort: http-js-api}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: legacy-gateway
  namespace: legacy
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http-legacy, protocol: HTTP}}
    hosts: [legacy.istio-succinctly.io]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: legacy-vservice
  namespace: legacy
spec:
  hosts: [legacy.istio-succinctly.io]
  gateways: [legacy-gateway]
  http:
  - route:
    - destination: {{host: juice-shop-api-service, port: {{number: 80}}}}
"#
    );
    mesh.apply_yaml(&yaml)?;
    let containers: Vec<String> = mesh
        .pods_of("legacy", "juice-shop-api-deployment")
        .iter()
        .flat_map(|p| p.containers.clone())
        .collect();
    if containers != ["juice-shop-api"] {
        return Err(format!("containers: {containers:?}"));
    }
    let headers = [("content-type", "application/json"), ("country", "au")];
    let ok = expect(
        mesh,
        "POST",
        "legacy.istio-succinctly.io",
        "/api/juice-shop/blender",
        &headers,
        Some(r#"{"fruits":["kiwi","mandarin"]}"#),
        |r| r.status == 200 && r.body == r#"{"juice":"kiwi-mandarin juice","price":4.9}"#,
    )?;
    let result = Ok(format!(
        "containers {containers:?}; blender via ClusterIP DNAT → {ok}"
    ));
    mesh.delete_namespace("legacy")?;
    result
}

/// S15 (CL 98–102): a mesh-wide MeshPolicy requiring mTLS breaks the gateway's plaintext call (503), the
/// book's `*.local` ISTIO_MUTUAL DestinationRule mends it. The book is Istio 1.3, which had no auto-mTLS: with
/// it (today's default) the gateway would already speak mTLS and the 503 would never show, so this scenario
/// runs with `enableAutoMtls: false` in the `istio` ConfigMap and restores it afterwards.
fn s15(mesh: &mut Mesh) -> Result<String, String> {
    mesh.apply_book("chapter-7/fruits-api.yml")?;
    mesh.apply_book("chapter-7/fruits-api-vs-gw.yml")?;
    mesh.set_auto_mtls(false)?;
    let result = (|| {
        let mango = |r: &Reply| r.status == 200 && r.body == r#"{"ver":"1","fruit":"Mango"}"#;
        let before = expect(mesh, "GET", FRUITS, "/api/fruits/special", &[], None, mango)
            .map_err(|e| format!("before the MeshPolicy: {e}"))?;
        mesh.apply_book("chapter-7/default-mesh-policy.yml")?;
        let refused = expect(mesh, "GET", FRUITS, "/api/fruits/special", &[], None, |r| {
            r.status == 503
                && r.body
                    .starts_with("upstream connect error or disconnect/reset before headers")
        })
        .map_err(|e| format!("with MeshPolicy STRICT expected 503, got {e}"))?;
        mesh.apply_book("chapter-7/default-dr.yml")?;
        let mended = expect(mesh, "GET", FRUITS, "/api/fruits/special", &[], None, mango)
            .map_err(|e| format!("with the ISTIO_MUTUAL DestinationRule: {e}"))?;
        Ok(format!(
            "{before}; + MeshPolicy → {}; + DR *.local ISTIO_MUTUAL → {mended}",
            refused.chars().take(70).collect::<String>()
        ))
    })();
    // Leave the mesh as later scenarios expect it: no mesh-wide policy or DR, auto-mTLS on.
    mesh.delete("MeshPolicy", "_", "default")?;
    mesh.delete("DestinationRule", GATEWAY_NS, "default-destination-rule")?;
    mesh.set_auto_mtls(true)?;
    mesh.delete_namespace(NS)?;
    result
}

/// The mTLS scenarios' workloads: in the injected `mtls-demo`, an `echo` server (SA `echo`, ports 8080 and
/// 8081 behind Service ports 80 and 81) and a `sleep` client with a sidecar (SA `sleep`); in `mtls-legacy`
/// (not injected) a client without sidecar reaching the ClusterIP through kube-proxy DNAT.
const MTLS_NS: &str = "mtls-demo";
const MTLS_FIXTURES: &str = r#"apiVersion: v1
kind: Namespace
metadata: {name: mtls-demo, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: mtls-legacy}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo-mtls, namespace: mtls-demo}
spec:
  selector: {matchLabels: {app: echo-mtls}}
  replicas: 1
  template:
    metadata: {labels: {app: echo-mtls}}
    spec:
      serviceAccountName: echo
      containers:
      - name: echo
        image: echo
        ports: [{name: http-echo, containerPort: 8080}, {name: http-plain, containerPort: 8081}]
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: mtls-demo}
spec:
  selector: {app: echo-mtls}
  ports:
  - {name: http-echo, port: 80, targetPort: 8080}
  - {name: http-plain, port: 81, targetPort: 8081}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: sleep-mtls, namespace: mtls-demo}
spec:
  selector: {matchLabels: {app: sleep-mtls}}
  replicas: 1
  template:
    metadata: {labels: {app: sleep-mtls}}
    spec:
      serviceAccountName: sleep
      containers:
      - name: sleep
        image: echo
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: legacy-client, namespace: mtls-legacy}
spec:
  selector: {matchLabels: {app: legacy-client}}
  replicas: 1
  template:
    metadata: {labels: {app: legacy-client}}
    spec:
      containers:
      - name: legacy
        image: echo
        ports: [{name: http, containerPort: 8080}]
"#;
/// The sleep client's SPIFFE id, as the server's sidecar forwards it in `x-forwarded-client-cert`.
const SLEEP_SPIFFE: &str = "spiffe://cluster.local/ns/mtls-demo/sa/sleep";

/// Applies the mTLS workloads (a no-op when they run) and a `PeerAuthentication` YAML (or none), then returns
/// the sidecar client and the plaintext client.
fn mtls_setup(mesh: &mut Mesh, policy: Option<&str>) -> Result<(Pod, Pod), String> {
    mesh.apply_yaml(MTLS_FIXTURES)?;
    for name in ["mtls-default", "echo-ports"] {
        mesh.delete("PeerAuthentication", MTLS_NS, name)?;
    }
    if let Some(p) = policy {
        mesh.apply_yaml(p)?;
    }
    let one = |ns: &str, d: &str| {
        mesh.pods_of(ns, d)
            .first()
            .map(|p| (*p).clone())
            .ok_or(format!("no pod of {ns}/{d}"))
    };
    Ok((
        one(MTLS_NS, "sleep-mtls")?,
        one("mtls-legacy", "legacy-client")?,
    ))
}

/// Removes the mTLS scenarios' policies.
fn mtls_teardown(mesh: &mut Mesh) -> Result<(), String> {
    for name in ["mtls-default", "echo-ports"] {
        mesh.delete("PeerAuthentication", MTLS_NS, name)?;
    }
    Ok(())
}

fn pod_short(r: &Result<Reply, String>) -> String {
    match r {
        Ok(r) => format!(
            "{} {}",
            r.status,
            r.body.chars().take(160).collect::<String>()
        ),
        Err(e) => format!("refused ({})", e.lines().last().unwrap_or_default()),
    }
}

/// Polls a request from inside `pod` until `want` holds (policy may still be on its way), up to 15 s.
fn expect_from(
    mesh: &Mesh,
    pod: &Pod,
    url: &str,
    want: impl Fn(&Result<Reply, String>) -> bool,
) -> Result<String, String> {
    let mut last = String::new();
    wait_until(Duration::from_secs(15), || {
        let r = mesh.pod_request(pod, url, &[]);
        last = pod_short(&r);
        want(&r).then(|| last.clone())
    })
    .ok_or(last)
}

/// The caller identity the echo app saw: the `URI=` of `x-forwarded-client-cert`, if any.
fn peer_uri(r: &Reply) -> Option<String> {
    let body: serde_json::Value = serde_json::from_str(&r.body).ok()?;
    let xfcc = body["headers"]["x-forwarded-client-cert"].as_str()?;
    xfcc.split(';')
        .find_map(|kv| kv.strip_prefix("URI="))
        .map(str::to_owned)
}

fn ok_plain(r: &Result<Reply, String>) -> bool {
    matches!(r, Ok(r) if r.status == 200)
}

fn ok_mtls_from_sleep(r: &Result<Reply, String>) -> bool {
    matches!(r, Ok(r) if r.status == 200 && peer_uri(r).as_deref() == Some(SLEEP_SPIFFE))
}

const ECHO_80: &str = "http://echo.mtls-demo/whoami";
const ECHO_81: &str = "http://echo.mtls-demo:81/whoami";

fn mtls_permissive(mesh: &mut Mesh) -> Result<String, String> {
    let policy = r#"apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: mtls-default, namespace: mtls-demo}
spec:
  mtls: {mode: PERMISSIVE}
"#;
    let (sleep, legacy) = mtls_setup(mesh, Some(policy))?;
    let result = (|| {
        let plain = expect_from(mesh, &legacy, ECHO_80, ok_plain)
            .map_err(|e| format!("plaintext client (no sidecar) → {e}"))?;
        let mtls = expect_from(mesh, &sleep, ECHO_80, ok_mtls_from_sleep).map_err(|e| {
            format!("sidecar client: want 200 with XFCC URI={SLEEP_SPIFFE}, got {e}")
        })?;
        Ok(format!(
            "no-sidecar client → {}; sidecar client → {} (peer {SLEEP_SPIFFE})",
            &plain[..3.min(plain.len())],
            &mtls[..3.min(mtls.len())]
        ))
    })();
    mtls_teardown(mesh)?;
    result
}

fn mtls_strict(mesh: &mut Mesh) -> Result<String, String> {
    let policy = r#"apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: mtls-default, namespace: mtls-demo}
spec:
  mtls: {mode: STRICT}
"#;
    let (sleep, legacy) = mtls_setup(mesh, Some(policy))?;
    let result = (|| {
        // No DestinationRule anywhere: the sidecar client speaks mTLS by auto-mTLS alone.
        let mtls = expect_from(mesh, &sleep, ECHO_80, ok_mtls_from_sleep).map_err(|e| {
            format!("sidecar client via auto-mTLS: want 200 with XFCC URI={SLEEP_SPIFFE}, got {e}")
        })?;
        let refused = expect_from(mesh, &legacy, ECHO_80, |r| r.is_err())
            .map_err(|e| format!("plaintext client was not refused: {e}"))?;
        Ok(format!(
            "sidecar client (no DR) → {} with XFCC URI={SLEEP_SPIFFE}; no-sidecar client → {refused}",
            &mtls[..3.min(mtls.len())]
        ))
    })();
    mtls_teardown(mesh)?;
    result
}

fn mtls_port_disable(mesh: &mut Mesh) -> Result<String, String> {
    let policy = r#"apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: echo-ports, namespace: mtls-demo}
spec:
  selector: {matchLabels: {app: echo-mtls}}
  mtls: {mode: STRICT}
  portLevelMtls:
    8081: {mode: DISABLE}
"#;
    let (sleep, legacy) = mtls_setup(mesh, Some(policy))?;
    let result = (|| {
        let refused = expect_from(mesh, &legacy, ECHO_80, |r| r.is_err())
            .map_err(|e| format!("no-sidecar client on STRICT port 8080 was not refused: {e}"))?;
        let plain = expect_from(mesh, &legacy, ECHO_81, ok_plain)
            .map_err(|e| format!("no-sidecar client on DISABLE port 8081 → {e}"))?;
        // The sidecar client gets through on both: mTLS where required, plaintext where mTLS is off (Istio's
        // auto-mTLS learns the DISABLE port from the endpoint's TLS mode).
        let strict = expect_from(mesh, &sleep, ECHO_80, ok_mtls_from_sleep)
            .map_err(|e| format!("sidecar client on 8080: {e}"))?;
        let disabled = expect_from(
            mesh,
            &sleep,
            ECHO_81,
            |r| matches!(r, Ok(r) if r.status == 200 && peer_uri(r).is_none()),
        )
        .map_err(|e| format!("sidecar client on DISABLE 8081 (want 200 in plaintext): {e}"))?;
        Ok(format!(
            "no-sidecar: 8080 → {refused}, 8081 → {}; sidecar: 8080 → {} (mTLS), 8081 → {} (plaintext)",
            &plain[..3.min(plain.len())],
            &strict[..3.min(strict.len())],
            &disabled[..3.min(disabled.len())]
        ))
    })();
    mtls_teardown(mesh)?;
    result
}

/// Certificate rotation under traffic: with the run's 60 s workload TTL rudder renews every certificate at
/// half-life and pushes it over SDS. A bounded request loop (every 250 ms, at most 45 s) over the sidecar →
/// sidecar mTLS hop, with STRICT on the server, must see no failure while both ends' certificates change.
fn mtls_rotation(mesh: &mut Mesh) -> Result<String, String> {
    let policy = r#"apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: mtls-default, namespace: mtls-demo}
spec:
  mtls: {mode: STRICT}
"#;
    let (sleep, _) = mtls_setup(mesh, Some(policy))?;
    let echo = mesh
        .pods_of(MTLS_NS, "echo-mtls")
        .first()
        .map(|p| (*p).clone())
        .ok_or("no echo pod")?;
    let result = (|| {
        expect_from(mesh, &sleep, ECHO_80, ok_mtls_from_sleep)
            .map_err(|e| format!("mTLS hop not working before the loop: {e}"))?;
        let first = (mesh.cert_serials(&sleep), mesh.cert_serials(&echo));
        if first.0.is_empty() || first.1.is_empty() {
            return Err(format!(
                "no certificates in use: sleep {:?}, echo {:?}; echo /certs: {}",
                first.0,
                first.1,
                mesh.envoy_admin(&echo, "/certs")
                    .chars()
                    .take(400)
                    .collect::<String>()
            ));
        }
        let start = std::time::Instant::now();
        let (mut sent, mut failures, mut after) = (0usize, Vec::new(), 0usize);
        let mut rotated = (false, false);
        while start.elapsed() < Duration::from_secs(45) {
            let tick = std::time::Instant::now();
            let r = mesh.pod_request(&sleep, ECHO_80, &[]);
            sent += 1;
            if !ok_mtls_from_sleep(&r) {
                failures.push(format!(
                    "#{sent} at {:.1}s: {}",
                    start.elapsed().as_secs_f64(),
                    pod_short(&r)
                ));
            }
            if sent % 4 == 0 {
                rotated.0 |= mesh.cert_serials(&sleep) != first.0;
                rotated.1 |= mesh.cert_serials(&echo) != first.1;
            }
            if rotated.0 && rotated.1 {
                // A few more requests over the renewed certificates.
                after += 1;
                if after > 8 {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(250).saturating_sub(tick.elapsed()));
        }
        let now = (mesh.cert_serials(&sleep), mesh.cert_serials(&echo));
        let obs = format!(
            "{sent} requests in {:.1}s, {} failed; sleep serial {:?} → {:?}, echo {:?} → {:?}",
            start.elapsed().as_secs_f64(),
            failures.len(),
            first.0,
            now.0,
            first.1,
            now.1
        );
        if failures.is_empty() && rotated.0 && rotated.1 {
            Ok(obs)
        } else {
            Err(format!(
                "{obs}; failures: {:?}",
                failures.iter().take(5).collect::<Vec<_>>()
            ))
        }
    })();
    mtls_teardown(mesh)?;
    result
}
