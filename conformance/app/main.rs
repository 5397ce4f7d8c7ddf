//! `mesh-app`: stand-in workloads for the local mesh (scenarios.md §3.Z).
//!
//! - `fruits-api` (port 3000, env `app_version`): `/api/fruits/special`, `/api/fruits/:country`,
//!   `/api/fruits/:country/:name/price`.
//! - `juice-shop-api` (port 3001, env `FRUITS_API`, `EXOTIC_FRUITS_API`): `hello`, `testMyLuck`, `blender` (calls
//!   fruits-api, forwarding trace headers), `exoticFruits`.
//! - `echo`: answers any request with its method, path, host, headers, pod name and version as JSON.
//! - `tcp-id`: accepts TCP on several ports and answers `<name>:<port>` (proves where iptables sent a connection).
//! - `exotic-fruits`: HTTPS (cert and key from `TLS_CERT`/`TLS_KEY`) answering the ExoticFruits JSON, standing in
//!   for raw.githubusercontent.com. juice-shop trusts the CA in `EXOTIC_FRUITS_CA` (the image's CA bundle).
//!
//! The mode comes from `--mode` or from the Deployment's image name (`--image istiosuccinctly/fruits-api:1.0.0`).
//! The app never resolves names at startup (no reverse DNS); outbound calls resolve through `/etc/hosts`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::io::AsyncWriteExt;

/// Headers Istio asks applications to propagate so traces join up.
const TRACE_HEADERS: [&str; 9] = [
    "x-request-id",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-ot-span-context",
    "traceparent",
    "tracestate",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Fruits,
    JuiceShop,
    Echo,
    TcpId,
    ExoticFruits,
}

impl Mode {
    fn parse(s: &str) -> Option<Mode> {
        // An image reference (`repo/fruits-api:1.0.0`) or a plain mode name.
        let name = s.rsplit('/').next().unwrap_or(s);
        let name = name.split(':').next().unwrap_or(name);
        match name {
            "fruits-api" => Some(Mode::Fruits),
            "juice-shop-api" => Some(Mode::JuiceShop),
            "echo" => Some(Mode::Echo),
            "tcp-id" => Some(Mode::TcpId),
            "exotic-fruits" => Some(Mode::ExoticFruits),
            _ => None,
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Mode::Fruits => 3000,
            Mode::JuiceShop => 3001,
            Mode::Echo | Mode::TcpId => 8080,
            Mode::ExoticFruits => 443,
        }
    }
}

struct Args {
    mode: Mode,
    ports: Vec<u16>,
    name: String,
    ready_file: Option<String>,
}

fn usage() -> ! {
    eprintln!(
        "usage: mesh-app (--mode fruits-api|juice-shop-api|echo|tcp-id | --image IMAGE) [--port P[,P…]] \
         [--name NAME] [--ready-file PATH]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut mode = None;
    let mut ports = Vec::new();
    let mut name = std::env::var("POD_NAME").unwrap_or_else(|_| "mesh-app".into());
    let mut ready_file = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--mode" | "--image" => mode = Some(Mode::parse(&value).unwrap_or_else(|| usage())),
            "--port" => {
                for p in value.split(',') {
                    ports.push(p.trim().parse().unwrap_or_else(|_| usage()));
                }
            }
            "--name" => name = value,
            "--ready-file" => ready_file = Some(value),
            _ => usage(),
        }
    }
    let mode = mode.unwrap_or_else(|| usage());
    if ports.is_empty() {
        ports.push(mode.default_port());
    }
    Args {
        mode,
        ports,
        name,
        ready_file,
    }
}

struct App {
    mode: Mode,
    pod: String,
    version: String,
    fruits_api: String,
    exotic_fruits_api: String,
    http: reqwest::Client,
    seed: AtomicU64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = parse_args();
    let mut listeners = Vec::new();
    for &port in &args.ports {
        let addr = SocketAddr::from(([0, 0, 0, 0], port));
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => listeners.push((port, l)),
            Err(e) => {
                eprintln!("mesh-app: bind {addr}: {e}");
                std::process::exit(1);
            }
        }
    }
    if let Some(f) = &args.ready_file
        && let Err(e) = std::fs::write(f, "ready")
    {
        eprintln!("mesh-app: writing {f}: {e}");
    }
    if args.mode == Mode::ExoticFruits {
        let acceptor = match tls_acceptor() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("mesh-app: TLS setup: {e}");
                std::process::exit(1);
            }
        };
        let mut tasks = tokio::task::JoinSet::new();
        for (_, l) in listeners {
            tasks.spawn(exotic_fruits(l, acceptor.clone()));
        }
        while tasks.join_next().await.is_some() {}
        return;
    }
    if args.mode == Mode::TcpId {
        let mut tasks = tokio::task::JoinSet::new();
        for (port, l) in listeners {
            let name = args.name.clone();
            tasks.spawn(tcp_id(l, format!("{name}:{port}\n")));
        }
        while tasks.join_next().await.is_some() {}
        return;
    }
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let app = Arc::new(App {
        mode: args.mode,
        pod: args.name.clone(),
        version: std::env::var("app_version").unwrap_or_else(|_| "1".into()),
        fruits_api: env("FRUITS_API"),
        exotic_fruits_api: env("EXOTIC_FRUITS_API"),
        http: http_client(),
        seed: AtomicU64::new(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                ^ u64::from(std::process::id()) << 32,
        ),
    });
    let router = axum::Router::new().fallback(handle).with_state(app);
    let mut tasks = tokio::task::JoinSet::new();
    for (_, l) in listeners {
        let router = router.clone();
        tasks.spawn(async move { axum::serve(l, router).await });
    }
    while let Some(r) = tasks.join_next().await {
        if let Ok(Err(e)) = r {
            eprintln!("mesh-app: serve: {e}");
        }
    }
}

/// The outbound HTTP client, trusting the extra CA in `EXOTIC_FRUITS_CA` if set.
fn http_client() -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20));
    if let Ok(path) = std::env::var("EXOTIC_FRUITS_CA")
        && let Ok(pem) = std::fs::read(&path)
        && let Ok(cert) = reqwest::Certificate::from_pem(&pem)
    {
        b = b.add_root_certificate(cert);
    }
    b.build().expect("HTTP client")
}

/// The body raw.githubusercontent.com serves for the book's ExoticFruits file.
const EXOTIC_FRUITS: &str =
    r#"{"fruits":["Chom Chom","Mangosteen","Longan","Persimmon","Sapodilla"]}"#;

fn tls_acceptor() -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let cert_path = std::env::var("TLS_CERT").map_err(|_| "TLS_CERT not set")?;
    let key_path = std::env::var("TLS_KEY").map_err(|_| "TLS_KEY not set")?;
    let certs = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| format!("{cert_path}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{cert_path}: {e}"))?;
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| format!("{key_path}: {e}"))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| e.to_string())?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// A minimal HTTPS/1.1 server: every request gets the ExoticFruits JSON, then the connection closes.
async fn exotic_fruits(listener: tokio::net::TcpListener, acceptor: tokio_rustls::TlsAcceptor) {
    use tokio::io::AsyncReadExt;
    loop {
        let Ok((s, peer)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(mut tls) = acceptor.accept(s).await else {
                println!("TLS handshake from {peer} failed");
                return;
            };
            let mut req = Vec::new();
            let mut buf = [0u8; 2048];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 65536 {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&req);
            println!(
                "{} (TLS from {peer})",
                line.lines().next().unwrap_or_default()
            );
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{EXOTIC_FRUITS}",
                EXOTIC_FRUITS.len()
            );
            let _ = tls.write_all(resp.as_bytes()).await;
            let _ = tls.shutdown().await;
        });
    }
}

async fn tcp_id(listener: tokio::net::TcpListener, id: String) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        let id = id.clone();
        tokio::spawn(async move {
            let _ = s.write_all(id.as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}

async fn handle(State(app): State<Arc<App>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let path = parts.uri.path().to_string();
    // One line per request (the harness reads these, e.g. to see mirrored copies and their authority).
    println!(
        "{} {} host={}",
        parts.method,
        parts.uri,
        parts
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    );
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let mut resp = match app.mode {
        Mode::Fruits => fruits(&app, &parts.method, &segs),
        Mode::JuiceShop => juice_shop(&app, &parts.method, &segs, &parts.headers, body).await,
        _ => echo(&app, &parts.method, &parts.uri, &parts.headers),
    };
    // The demo apps' CORS middleware (origins `*`).
    resp.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        header::HeaderValue::from_static("*"),
    );
    resp
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn text(status: StatusCode, body: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain")],
        body.to_string(),
    )
        .into_response()
}

/// Prices per country, in the demo app's order.
fn prices(country: &str) -> Option<&'static [(&'static str, f64)]> {
    match country {
        "usa" => Some(&[
            ("blueberry", 2.5),
            ("grape", 2.0),
            ("watermelon", 3.2),
            ("orange", 1.3),
        ]),
        "au" => Some(&[
            ("nectarine", 2.5),
            ("mandarin", 2.3),
            ("lemon", 1.1),
            ("kiwi", 2.6),
        ]),
        "ind" => Some(&[
            ("mango", 3.0),
            ("banana", 2.3),
            ("lychee", 1.4),
            ("apple", 2.0),
        ]),
        _ => None,
    }
}

/// A number as JavaScript's JSON.stringify prints it (`2` rather than `2.0`).
fn js_number(n: f64) -> String {
    serde_json::Number::from_f64(n)
        .map(|n| {
            let s = n.to_string();
            s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
        })
        .unwrap_or_else(|| "null".into())
}

fn fruits(app: &App, method: &Method, segs: &[&str]) -> Response {
    if method != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    match segs {
        ["api", "fruits", "special"] => {
            let fruit = if app.version == "1" {
                "Mango"
            } else {
                "Orange"
            };
            json(
                StatusCode::OK,
                format!(
                    "{{\"ver\":{},\"fruit\":\"{fruit}\"}}",
                    serde_json::Value::String(app.version.clone())
                ),
            )
        }
        ["api", "fruits", country] => match prices(country) {
            Some(list) => {
                let items: Vec<String> = list
                    .iter()
                    .map(|(f, p)| format!("\"{f}\":{}", js_number(*p)))
                    .collect();
                json(StatusCode::OK, format!("{{{}}}", items.join(",")))
            }
            None => json(StatusCode::NOT_FOUND, "\"country not available\"".into()),
        },
        ["api", "fruits", country, name, "price"] => match prices(country) {
            Some(list) => match list.iter().find(|(f, _)| f == name) {
                Some((_, p)) => json(StatusCode::OK, format!("{{\"price\":{}}}", js_number(*p))),
                None => json(StatusCode::NOT_FOUND, "\"fruit not available\"".into()),
            },
            None => json(StatusCode::NOT_FOUND, "\"country not available\"".into()),
        },
        _ => not_found(segs),
    }
}

fn not_found(segs: &[&str]) -> Response {
    json(
        StatusCode::NOT_FOUND,
        serde_json::json!({"code": "ResourceNotFound", "message": format!("/{} does not exist", segs.join("/"))})
            .to_string(),
    )
}

fn error_body(code: &str, message: &str) -> String {
    // Field order as restify prints errors: code, then message.
    format!(
        "{{\"code\":{},\"message\":{}}}",
        serde_json::Value::String(code.into()),
        serde_json::Value::String(message.into())
    )
}

impl App {
    /// Math.random()-like draw in [0, 1) (xorshift; statistical quality is plenty for a 0.8 coin).
    fn random(&self) -> f64 {
        let mut x = self.seed.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.seed.store(x, Ordering::Relaxed);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

async fn juice_shop(
    app: &App,
    method: &Method,
    segs: &[&str],
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    match (method, segs) {
        (&Method::GET, ["api", "juice-shop", "hello"]) => {
            text(StatusCode::OK, "Welcome to the Juice Shop!")
        }
        (&Method::GET, ["api", "juice-shop", "testMyLuck"]) => {
            if app.random() <= 0.8 {
                text(StatusCode::INTERNAL_SERVER_ERROR, "Better luck next time")
            } else {
                text(StatusCode::OK, "Lucky")
            }
        }
        (&Method::POST, ["api", "juice-shop", "blender"]) => blender(app, headers, &body).await,
        (&Method::GET, ["api", "juice-shop", "exoticFruits"]) => exotic(app, headers).await,
        _ => not_found(segs),
    }
}

fn forwarded(headers: &HeaderMap) -> reqwest::header::HeaderMap {
    let mut out = reqwest::header::HeaderMap::new();
    for h in TRACE_HEADERS {
        if let Some(v) = headers.get(h)
            && let (Ok(name), Ok(value)) = (
                reqwest::header::HeaderName::from_bytes(h.as_bytes()),
                reqwest::header::HeaderValue::from_bytes(v.as_bytes()),
            )
        {
            out.insert(name, value);
        }
    }
    out
}

async fn blender(app: &App, headers: &HeaderMap, body: &[u8]) -> Response {
    #[derive(serde::Deserialize)]
    struct Order {
        fruits: Vec<String>,
    }
    let Ok(order) = serde_json::from_slice::<Order>(body) else {
        return json(
            StatusCode::BAD_REQUEST,
            error_body("BadRequest", "body must be {\"fruits\":[...]}"),
        );
    };
    let country = headers
        .get("country")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut total = 0.0;
    for fruit in &order.fruits {
        let url = format!("{}/api/fruits/{country}/{fruit}/price", app.fruits_api);
        let resp = app.http.get(&url).headers(forwarded(headers)).send().await;
        match resp {
            Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => {
                return json(
                    StatusCode::CONFLICT,
                    error_body(
                        "InvalidArgument",
                        "please only select fruits available in your region",
                    ),
                );
            }
            Ok(r) if r.status().is_success() => {
                #[derive(serde::Deserialize)]
                struct Price {
                    price: f64,
                }
                match r.json::<Price>().await {
                    Ok(p) => total += p.price,
                    Err(e) => {
                        return json(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            error_body("Internal", &format!("Error: {e}")),
                        );
                    }
                }
            }
            Ok(r) => {
                return json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    error_body(
                        "Internal",
                        &format!("Error: request to {url} failed with status {}", r.status()),
                    ),
                );
            }
            Err(e) => {
                return json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    error_body(
                        "Internal",
                        &format!("Error: FetchError: request to {url} failed, reason: {e}"),
                    ),
                );
            }
        }
    }
    json(
        StatusCode::OK,
        format!(
            "{{\"juice\":{},\"price\":{}}}",
            serde_json::Value::String(format!("{} juice", order.fruits.join("-"))),
            js_number(total)
        ),
    )
}

async fn exotic(app: &App, headers: &HeaderMap) -> Response {
    let url = &app.exotic_fruits_api;
    let fail = |reason: String| {
        json(
            StatusCode::INTERNAL_SERVER_ERROR,
            error_body(
                "Internal",
                &format!("Error: FetchError: request to {url} failed, reason: {reason}"),
            ),
        )
    };
    match app.http.get(url).headers(forwarded(headers)).send().await {
        Ok(r) => match r.bytes().await {
            Ok(b) => json(StatusCode::OK, String::from_utf8_lossy(&b).into_owned()),
            Err(e) => fail(e.to_string()),
        },
        Err(e) => fail(e.to_string()),
    }
}

fn echo(app: &App, method: &Method, uri: &axum::http::Uri, headers: &HeaderMap) -> Response {
    let hdrs: BTreeMap<String, String> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let body = serde_json::json!({
        "method": method.as_str(),
        "path": uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "host": host,
        "headers": hdrs,
        "pod": app.pod,
        "version": app.version,
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap_or_default()
}
