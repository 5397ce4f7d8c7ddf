//! The CLI side of the debug API: `--debug-addr`, GET with errors that say what to do.

use std::time::Duration;

use serde_json::Value;

/// Where rudder's debug API is.
#[derive(Debug, Clone, clap::Args)]
pub struct DebugAddr {
    /// rudder's debug API (istiod's port 15014).
    #[arg(long, default_value = "127.0.0.1:15014", env = "RUDDER_DEBUG_ADDR")]
    pub debug_addr: String,
}

/// A blocking client for one CLI invocation.
pub struct Client {
    base: String,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

impl Client {
    /// A client for `addr` (`host:port` or a URL).
    pub fn new(addr: &DebugAddr) -> anyhow::Result<Self> {
        let a = addr.debug_addr.trim_end_matches('/');
        let base = if a.starts_with("http://") || a.starts_with("https://") {
            a.to_owned()
        } else {
            format!("http://{a}")
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Client { base, http, rt })
    }

    /// GETs a full URL (an Envoy admin endpoint) as JSON.
    pub fn get_url(&self, url: &str) -> anyhow::Result<Value> {
        self.rt.block_on(async {
            let resp = self.http.get(url).send().await.map_err(|e| {
                anyhow::anyhow!("cannot reach Envoy admin at {url}: {e} (check --envoy-admin)")
            })?;
            if !resp.status().is_success() {
                anyhow::bail!("{url}: {}", resp.status());
            }
            Ok(resp.json().await?)
        })
    }

    /// GETs `path` as JSON. A 404 about a proxy lists the known ones.
    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        self.rt.block_on(async {
            let resp = self.http.get(&url).send().await.map_err(|e| {
                anyhow::anyhow!(
                    "cannot reach rudder at {}: {e} (is rudder running? pass --debug-addr HOST:PORT)",
                    self.base
                )
            })?;
            let status = resp.status();
            let body: Value = resp
                .json()
                .await
                .map_err(|e| anyhow::anyhow!("{url}: not a JSON answer ({e}); is --debug-addr rudder's debug port?"))?;
            if status.is_success() {
                return Ok(body);
            }
            let msg = body["error"].as_str().unwrap_or("request failed").to_owned();
            match body["known_proxies"].as_array() {
                Some(known) if known.is_empty() => {
                    anyhow::bail!("{msg}; no proxy is connected to rudder")
                }
                Some(known) => {
                    let names: Vec<&str> = known.iter().filter_map(Value::as_str).collect();
                    anyhow::bail!("{msg}; connected proxies: {}", names.join(", "))
                }
                None => anyhow::bail!("{msg} ({status})"),
            }
        })
    }
}

/// Renders rows as a left-aligned table with two spaces between columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}
