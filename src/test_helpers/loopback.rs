//! Stand-ins for applications behind real Envoys, and the client that calls them, all on loopback: tests send
//! traffic nowhere else.

use std::net::SocketAddr;
use std::time::Duration;

/// An HTTP client for loopback Envoys: no proxy from the environment, each request bounded by `timeout`.
pub fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
        .expect("HTTP client")
}

/// An HTTP server on a free port of `ip` answering every request with `body`.
pub async fn http_server(ip: &str, body: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind((ip, 0))
        .await
        .unwrap_or_else(|e| panic!("bind {ip}: {e}"));
    let addr = listener.local_addr().expect("bound address");
    let app = axum::Router::new().fallback(move || async move { body });
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// An HTTP server on a free port of `ip` answering `<name> <path>`: which backend served a request, and what
/// path it saw. Returns the port.
pub async fn http_named(ip: &str, name: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind((ip, 0))
        .await
        .unwrap_or_else(|e| panic!("bind {ip}: {e}"));
    let port = listener.local_addr().expect("bound address").port();
    let app = axum::Router::new()
        .fallback(move |uri: axum::http::Uri| async move { format!("{name} {}", uri.path()) });
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// A TCP server on a free port of `ip` that answers every connection with `name` and closes: which backend a
/// connection reached. Returns the port.
pub async fn tcp_named(ip: &str, name: &'static str) -> u16 {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind((ip, 0))
        .await
        .unwrap_or_else(|e| panic!("bind {ip}: {e}"));
    let port = listener.local_addr().expect("bound address").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(name.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    port
}

/// Retries `attempt` every 100 ms until it succeeds (config changes take a moment to reach the Envoys on the
/// path) and returns its value; `Err` with the last failure once `timeout` has passed.
pub async fn until_ok<T, F>(timeout: Duration, attempt: impl Fn() -> F) -> Result<T, String>
where
    F: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match attempt().await {
            Ok(found) => return Ok(found),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
