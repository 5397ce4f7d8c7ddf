//! `rudder proxy-config clusters|listeners|routes|endpoints|secrets PROXY [-o table|json|yaml]`: what rudder
//! sent a proxy, from `/debug/config_dump`, as istioctl-like tables. Key material is redacted by the server.

use std::process::ExitCode;

use serde_json::Value;

use super::debug_client::{Client, DebugAddr, table};
use crate::debug::protojson::{describe_ref, istio_config_refs};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum What {
    Clusters,
    Listeners,
    Routes,
    Endpoints,
    Secrets,
}

#[derive(Debug, Clone, Copy, Default, clap::ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
    Yaml,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which resources.
    what: What,
    /// The proxy, `<pod>.<namespace>`.
    proxy: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Output,
    #[command(flatten)]
    addr: DebugAddr,
}

pub fn run(args: Args) -> ExitCode {
    match show(&args) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rudder proxy-config: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn show(args: &Args) -> anyhow::Result<String> {
    let (short, field, inner) = match args.what {
        What::Clusters => ("cds", "dynamic_active_clusters", "/cluster"),
        What::Listeners => ("lds", "dynamic_listeners", "/active_state/listener"),
        What::Routes => ("rds", "dynamic_route_configs", "/route_config"),
        What::Endpoints => ("eds", "dynamic_endpoint_configs", "/endpoint_config"),
        What::Secrets => ("sds", "dynamic_active_secrets", "/secret"),
    };
    let client = Client::new(&args.addr)?;
    let proxy = urlencode(&args.proxy);
    let dump = client.get(&format!("/debug/config_dump?proxyID={proxy}&types={short}"))?;
    let items: Vec<Value> = dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c[field].as_array().cloned().unwrap_or_default())
        .filter_map(|i| i.pointer(inner).cloned())
        .collect();
    Ok(match args.output {
        Output::Json => serde_json::to_string_pretty(&items)? + "\n",
        Output::Yaml => serde_saphyr::to_string(&items)?,
        Output::Table => render(args.what, &items),
    })
}

/// The istioctl-like table of `items` (resources as proto3 JSON).
pub fn render(what: What, items: &[Value]) -> String {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    match what {
        What::Clusters => {
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|c| {
                    let name = s(&c["name"]);
                    let parts: Vec<&str> = name.split('|').collect();
                    let (fqdn, port, subset, dir) = match parts[..] {
                        [dir, port, subset, fqdn] => (fqdn, port, subset, dir),
                        _ => (name.as_str(), "-", "-", "-"),
                    };
                    let kind = c["type"]
                        .as_str()
                        .unwrap_or(if c["cluster_type"].is_null() {
                            "STATIC"
                        } else {
                            "CUSTOM"
                        });
                    let rules: Vec<String> = istio_config_refs(c)
                        .iter()
                        .map(|r| describe_ref(r))
                        .collect();
                    vec![
                        fqdn.to_owned(),
                        port.to_owned(),
                        or_dash(subset),
                        or_dash(dir),
                        kind.to_owned(),
                        or_dash(&rules.join(",")),
                    ]
                })
                .collect();
            table(
                &[
                    "SERVICE FQDN",
                    "PORT",
                    "SUBSET",
                    "DIRECTION",
                    "TYPE",
                    "DESTINATION RULE",
                ],
                &rows,
            )
        }
        What::Listeners => {
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|l| {
                    let sa = &l["address"]["socket_address"];
                    let port = sa["port_value"].to_string();
                    let chains = l["filter_chains"].as_array().map_or(0, Vec::len);
                    let refs: Vec<String> = istio_config_refs(l)
                        .iter()
                        .map(|r| describe_ref(r))
                        .collect();
                    vec![
                        s(&l["name"]),
                        s(&sa["address"]),
                        port,
                        chains.to_string(),
                        or_dash(&refs.join(",")),
                    ]
                })
                .collect();
            table(&["NAME", "ADDRESS", "PORT", "CHAINS", "CONFIG"], &rows)
        }
        What::Routes => {
            let mut rows = Vec::new();
            for r in items {
                for vh in r["virtual_hosts"].as_array().into_iter().flatten() {
                    let domains: Vec<String> = vh["domains"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(&s)
                        .collect();
                    let routes = vh["routes"].as_array().map_or(0, Vec::len);
                    rows.push(vec![
                        s(&r["name"]),
                        s(&vh["name"]),
                        domains.join(","),
                        routes.to_string(),
                    ]);
                }
            }
            table(&["NAME", "VHOST NAME", "DOMAINS", "ROUTES"], &rows)
        }
        What::Endpoints => {
            let mut rows = Vec::new();
            for e in items {
                for group in e["endpoints"].as_array().into_iter().flatten() {
                    for lb in group["lb_endpoints"].as_array().into_iter().flatten() {
                        let sa = &lb["endpoint"]["address"]["socket_address"];
                        rows.push(vec![
                            format!("{}:{}", s(&sa["address"]), sa["port_value"]),
                            lb["health_status"].as_str().unwrap_or("UNKNOWN").to_owned(),
                            s(&e["cluster_name"]),
                        ]);
                    }
                }
            }
            table(&["ENDPOINT", "STATUS", "CLUSTER"], &rows)
        }
        What::Secrets => {
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|sec| {
                    let kind = if !sec["tls_certificate"].is_null() {
                        "Cert Chain"
                    } else if !sec["validation_context"].is_null() {
                        "CA"
                    } else {
                        "Other"
                    };
                    vec![s(&sec["name"]), kind.to_owned()]
                })
                .collect();
            table(&["RESOURCE NAME", "TYPE"], &rows)
        }
    }
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s.to_owned()
    }
}

/// Percent-encodes a query value (proxy ids are plain, but `~` node ids and odd input should survive).
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
