//! `rudder proxy-status [PROXY]`: per proxy and type SYNCED / NOT SENT / STALE / NACKED (with Envoy's text), from
//! `/debug/syncz` and `/debug/nackz`.

use std::process::ExitCode;

use super::debug_client::{Client, DebugAddr, table};
use crate::debug::diff::{SectionDiff, diff_dumps};
use crate::debug::sync::{Nackz, SyncStatus};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this proxy (`<pod>.<namespace>`); adds each NACK's resources and the Istio objects behind them.
    proxy: Option<String>,
    /// With PROXY: that Envoy's admin address; diffs what rudder sent with Envoy's own `/config_dump`.
    #[arg(long, requires = "proxy")]
    envoy_admin: Option<String>,
    #[command(flatten)]
    addr: DebugAddr,
}

/// Exit codes: 0 all shown proxies synced or in flight, 1 some NACKED, a dump differs, or an error.
pub fn run(args: Args) -> ExitCode {
    match status(&args) {
        Ok((out, nacked)) => {
            print!("{out}");
            if nacked {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("rudder proxy-status: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn status(args: &Args) -> anyhow::Result<(String, bool)> {
    let client = Client::new(&args.addr)?;
    let mut all: Vec<SyncStatus> = serde_json::from_value(client.get("/debug/syncz")?)?;
    if let Some(p) = &args.proxy {
        let known: Vec<String> = all.iter().map(|s| s.proxy_id.clone()).collect();
        all.retain(|s| &s.proxy_id == p || &s.node_id == p);
        if all.is_empty() {
            anyhow::bail!(
                "proxy {p:?} is not connected; connected proxies: {}",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            );
        }
    }
    let nackz: Nackz = serde_json::from_value(client.get("/debug/nackz")?)?;
    let (mut out, mut bad) = render(&all, &nackz, args.proxy.is_some());
    if let (Some(proxy), Some(admin)) = (&args.proxy, &args.envoy_admin) {
        let ours = client.get(&format!("/debug/config_dump?proxyID={proxy}"))?;
        let theirs = client.get_url(&envoy_url(admin))?;
        let (text, differs) = render_diff(&diff_dumps(&ours, &theirs));
        out.push('\n');
        out.push_str(&text);
        bad |= differs;
    }
    Ok((out, bad))
}

fn envoy_url(admin: &str) -> String {
    let base = if admin.starts_with("http://") {
        admin.trim_end_matches('/').to_owned()
    } else {
        format!("http://{admin}")
    };
    format!("{base}/config_dump?include_eds")
}

/// One line per section: in sync, or what differs. Returns whether anything differs.
pub fn render_diff(diffs: &[SectionDiff]) -> (String, bool) {
    let mut out = String::from("rudder vs Envoy /config_dump:\n");
    let mut differs = false;
    for d in diffs {
        if d.is_clean() {
            out.push_str(&format!("  {}: {} in sync\n", d.section, d.in_sync));
            continue;
        }
        differs = true;
        out.push_str(&format!("  {}: {} in sync", d.section, d.in_sync));
        for (what, names) in [
            ("differ", &d.differ),
            ("only sent by rudder", &d.only_rudder),
            ("only in Envoy", &d.only_envoy),
        ] {
            if !names.is_empty() {
                out.push_str(&format!("; {what}: {}", names.join(", ")));
            }
        }
        out.push('\n');
    }
    (out, differs)
}

/// The table, then one line per NACK (with resources and objects when `detail`). Returns whether any is NACKED.
pub fn render(all: &[SyncStatus], nackz: &Nackz, detail: bool) -> (String, bool) {
    let types = ["cds", "lds", "eds", "rds", "sds"];
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|s| {
            let mut row = vec![s.proxy_id.clone(), s.proxy_type.clone()];
            row.extend(types.iter().map(|t| s.state(t).as_str().to_owned()));
            row.push(s.istio_version.clone());
            row
        })
        .collect();
    let mut out = table(
        &["NAME", "TYPE", "CDS", "LDS", "EDS", "RDS", "SDS", "VERSION"],
        &rows,
    );
    let mut nacked = false;
    for s in all {
        for (t, msg) in &s.nacks {
            nacked = true;
            out.push_str(&format!(
                "\n{} {} NACKED: {msg}\n",
                s.proxy_id,
                t.to_uppercase()
            ));
            if !detail {
                continue;
            }
            let info = nackz
                .proxies
                .iter()
                .filter(|p| p.proxy == s.proxy_id)
                .flat_map(|p| &p.nacks)
                .find(|n| &n.type_short == t);
            for r in info.into_iter().flat_map(|n| &n.resources) {
                let by = if r.config.is_empty() {
                    String::new()
                } else {
                    format!(" (from {})", r.config.join(", "))
                };
                out.push_str(&format!("  rejected {}{by}\n", r.name));
            }
        }
    }
    (out, nacked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::debug::sync::{NackInfo, NackedResource, ProxyNacks};

    fn status(proxy: &str) -> SyncStatus {
        SyncStatus {
            proxy_id: proxy.into(),
            proxy_type: "sidecar".into(),
            cluster_sent: "3".into(),
            cluster_acked: "2".into(),
            listener_sent: "4".into(),
            listener_acked: "4".into(),
            route_sent: "5".into(),
            ..Default::default()
        }
    }

    #[test]
    fn table_states_and_nack_details() {
        let mut a = status("a.shop");
        a.nacks.insert("cds".into(), "Invalid path: /x".into());
        let b = status("b.shop");
        let nackz = Nackz {
            proxies: vec![ProxyNacks {
                proxy: "a.shop".into(),
                nacks: vec![NackInfo {
                    type_short: "cds".into(),
                    type_url: String::new(),
                    nonce: "3".into(),
                    version: "v".into(),
                    code: 13,
                    message: "Invalid path: /x".into(),
                    at: String::new(),
                    resources: vec![NackedResource {
                        name: "outbound|80||db".into(),
                        config: vec!["DestinationRule shop/db".into()],
                    }],
                }],
            }],
            rejected_config: Vec::new(),
        };
        let (out, nacked) = render(&[a, b], &nackz, true);
        assert!(nacked);
        let rows: Vec<Vec<&str>> = out
            .lines()
            .take(3)
            .map(|l| {
                l.split("  ")
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .collect()
            })
            .collect();
        assert_eq!(
            rows[0][..7],
            ["NAME", "TYPE", "CDS", "LDS", "EDS", "RDS", "SDS"]
        );
        assert_eq!(
            rows[1][..7],
            [
                "a.shop", "sidecar", "NACKED", "SYNCED", "NOT SENT", "STALE", "NOT SENT"
            ]
        );
        assert_eq!(rows[2][2], "STALE");
        assert!(out.contains("a.shop CDS NACKED: Invalid path: /x"), "{out}");
        assert!(
            out.contains("rejected outbound|80||db (from DestinationRule shop/db)"),
            "{out}"
        );
    }

    #[test]
    fn diff_lines_say_what_differs() {
        let (out, differs) = render_diff(&[
            SectionDiff {
                section: "clusters",
                in_sync: 3,
                ..Default::default()
            },
            SectionDiff {
                section: "routes",
                in_sync: 1,
                only_rudder: vec!["80".into()],
                ..Default::default()
            },
        ]);
        assert!(differs);
        assert!(out.contains("  clusters: 3 in sync\n"), "{out}");
        assert!(
            out.contains("  routes: 1 in sync; only sent by rudder: 80\n"),
            "{out}"
        );
    }
}
