//! Istio's traffic-capture rules (what `istio-iptables` installs in REDIRECT mode) as data, and their
//! installation with `iptables-restore`.
//!
//! The rules live in the `nat` table of the pod's network namespace:
//!
//! ```text
//! PREROUTING ─tcp─▶ ISTIO_INBOUND ─(not excluded port)─▶ ISTIO_IN_REDIRECT ─▶ REDIRECT :15006  (virtualInbound)
//! OUTPUT ─────tcp─▶ ISTIO_OUTPUT ──(not the proxy, not loopback)─▶ ISTIO_REDIRECT ─▶ REDIRECT :15001  (virtualOutbound)
//! ```
//!
//! The proxy runs as UID/GID 1337 and its own connections are never captured again, except when it calls back
//! into its own pod through a service address (then they enter the inbound path, as with Istio). Connections the
//! proxy makes from 127.0.0.6 (inbound passthrough) are skipped too. Only IPv4 is captured.

use std::io::Write;
use std::process::{Command, Stdio};
use std::str::FromStr;

use ipnet::Ipv4Net;

/// UID and GID the proxy runs as; its traffic is not captured.
pub const PROXY_UID: u32 = 1337;
/// Where outbound connections are redirected (listener `virtualOutbound`).
pub const OUTBOUND_CAPTURE_PORT: u16 = 15001;
/// Where inbound connections are redirected (listener `virtualInbound`).
pub const INBOUND_CAPTURE_PORT: u16 = 15006;
/// Ports of the proxy itself that inbound capture always skips: admin, the capture ports, HBONE, the agent,
/// readiness and Prometheus.
pub const PROXY_PORTS: [u16; 7] = [15000, 15001, 15006, 15008, 15020, 15021, 15090];
/// Source address of the proxy's inbound passthrough connections (istiod's `InboundPassthroughBindIpv4`).
pub const INBOUND_PASSTHROUGH_SOURCE: &str = "127.0.0.6/32";

const TABLE: &str = "nat";
const IPTABLES: &str = "iptables";
const IPTABLES_RESTORE: &str = "iptables-restore";

/// Failures installing or removing the rules.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The iptables program could not be started (not installed, or not on `PATH`).
    #[error("cannot run {program}: {source} (is iptables installed?)")]
    Spawn {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The program ran and reported an error.
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: &'static str,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// The chains of the `nat` table the rules use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Chain {
    Prerouting,
    Output,
    IstioInbound,
    IstioInRedirect,
    IstioOutput,
    IstioRedirect,
}

impl Chain {
    /// The chains rudder creates, in declaration order.
    pub const OWN: [Chain; 4] = [
        Chain::IstioInbound,
        Chain::IstioRedirect,
        Chain::IstioInRedirect,
        Chain::IstioOutput,
    ];

    /// The iptables chain name.
    pub fn name(self) -> &'static str {
        match self {
            Chain::Prerouting => "PREROUTING",
            Chain::Output => "OUTPUT",
            Chain::IstioInbound => "ISTIO_INBOUND",
            Chain::IstioInRedirect => "ISTIO_IN_REDIRECT",
            Chain::IstioOutput => "ISTIO_OUTPUT",
            Chain::IstioRedirect => "ISTIO_REDIRECT",
        }
    }
}

/// Outbound destinations to capture (`--include-outbound-ip-ranges`): `*` for all, or a list of CIDRs (empty:
/// capture no outbound traffic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpRanges {
    All,
    Only(Vec<Ipv4Net>),
}

impl FromStr for IpRanges {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim() == "*" {
            return Ok(IpRanges::All);
        }
        parse_list(s, |item| {
            item.parse::<Ipv4Net>()
                .or_else(|_| item.parse::<std::net::Ipv4Addr>().map(Ipv4Net::from))
                .map_err(|_| format!("{item:?} is not an IPv4 CIDR"))
        })
        .map(IpRanges::Only)
    }
}

/// Inbound ports to capture (`--include-inbound-ports`): `*` for all, or a list (empty: no inbound capture).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ports {
    All,
    Only(Vec<u16>),
}

impl FromStr for Ports {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim() == "*" {
            return Ok(Ports::All);
        }
        parse_port_list(s).map(Ports::Only)
    }
}

/// A comma-separated port list (`15090,15021`); empty means none.
pub fn parse_port_list(s: &str) -> Result<Vec<u16>, String> {
    parse_list(s, |item| match item.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{item:?} is not a port (1-65535)")),
    })
}

/// A comma-separated CIDR list; empty means none.
pub fn parse_cidr_list(s: &str) -> Result<Vec<Ipv4Net>, String> {
    match s.parse::<IpRanges>()? {
        IpRanges::All => Err("\"*\" is not allowed here".into()),
        IpRanges::Only(v) => Ok(v),
    }
}

fn parse_list<T>(s: &str, item: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .map(item)
        .collect()
}

/// What to capture; `Default` is what the injector uses (everything, the proxy's ports excluded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    pub proxy_uid: u32,
    pub proxy_gid: u32,
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub include_outbound_ip_ranges: IpRanges,
    pub exclude_outbound_ip_ranges: Vec<Ipv4Net>,
    pub exclude_outbound_ports: Vec<u16>,
    pub include_inbound_ports: Ports,
    /// Skipped by inbound capture in addition to `PROXY_PORTS`.
    pub exclude_inbound_ports: Vec<u16>,
}

impl Default for Capture {
    fn default() -> Self {
        Capture {
            proxy_uid: PROXY_UID,
            proxy_gid: PROXY_UID,
            outbound_port: OUTBOUND_CAPTURE_PORT,
            inbound_port: INBOUND_CAPTURE_PORT,
            include_outbound_ip_ranges: IpRanges::All,
            exclude_outbound_ip_ranges: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            include_inbound_ports: Ports::All,
            exclude_inbound_ports: Vec::new(),
        }
    }
}

/// One `-A <chain> <spec…>` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub chain: Chain,
    pub spec: Vec<String>,
}

impl Rule {
    fn new(chain: Chain, spec: &[&str]) -> Rule {
        Rule {
            chain,
            spec: spec.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The rule as an `iptables-restore` line.
    pub fn line(&self) -> String {
        let mut line = format!("-A {}", self.chain.name());
        for s in &self.spec {
            line.push(' ');
            line.push_str(s);
        }
        line
    }

    /// Whether the rule hooks one of rudder's chains into a built-in chain (removed one by one on clean).
    fn is_hook(&self) -> bool {
        matches!(self.chain, Chain::Prerouting | Chain::Output)
    }
}

/// The complete rule set for the `nat` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
}

impl Capture {
    /// Istio's rules for this capture configuration, in the order they are appended.
    pub fn rules(&self) -> RuleSet {
        let mut rules = Vec::new();
        let outbound_port = self.outbound_port.to_string();
        let inbound_port = self.inbound_port.to_string();
        let inbound = !matches!(&self.include_inbound_ports, Ports::Only(p) if p.is_empty());

        rules.push(Rule::new(
            Chain::IstioRedirect,
            &["-p", "tcp", "-j", "REDIRECT", "--to-ports", &outbound_port],
        ));
        rules.push(Rule::new(
            Chain::IstioInRedirect,
            &["-p", "tcp", "-j", "REDIRECT", "--to-ports", &inbound_port],
        ));

        if inbound {
            rules.push(Rule::new(
                Chain::Prerouting,
                &["-p", "tcp", "-j", Chain::IstioInbound.name()],
            ));
            match &self.include_inbound_ports {
                Ports::All => {
                    let mut excluded: Vec<u16> = PROXY_PORTS.to_vec();
                    excluded.extend(&self.exclude_inbound_ports);
                    dedup_keep_order(&mut excluded);
                    for p in excluded {
                        rules.push(Rule::new(
                            Chain::IstioInbound,
                            &["-p", "tcp", "--dport", &p.to_string(), "-j", "RETURN"],
                        ));
                    }
                    rules.push(Rule::new(
                        Chain::IstioInbound,
                        &["-p", "tcp", "-j", Chain::IstioInRedirect.name()],
                    ));
                }
                Ports::Only(ports) => {
                    let mut ports = ports.clone();
                    dedup_keep_order(&mut ports);
                    for p in ports
                        .iter()
                        .filter(|p| !self.exclude_inbound_ports.contains(p))
                    {
                        rules.push(Rule::new(
                            Chain::IstioInbound,
                            &[
                                "-p",
                                "tcp",
                                "--dport",
                                &p.to_string(),
                                "-j",
                                Chain::IstioInRedirect.name(),
                            ],
                        ));
                    }
                }
            }
        }

        rules.push(Rule::new(
            Chain::Output,
            &["-p", "tcp", "-j", Chain::IstioOutput.name()],
        ));
        // Port exclusions come first: they must win over the redirect of the proxy's calls back to its own pod.
        let mut excluded_ports = self.exclude_outbound_ports.clone();
        dedup_keep_order(&mut excluded_ports);
        for p in excluded_ports {
            rules.push(Rule::new(
                Chain::IstioOutput,
                &["-p", "tcp", "--dport", &p.to_string(), "-j", "RETURN"],
            ));
        }
        // The proxy's inbound passthrough connections to the application.
        rules.push(Rule::new(
            Chain::IstioOutput,
            &["-s", INBOUND_PASSTHROUGH_SOURCE, "-o", "lo", "-j", "RETURN"],
        ));
        for (flag, id) in [
            ("--uid-owner", self.proxy_uid),
            ("--gid-owner", self.proxy_gid),
        ] {
            let id = id.to_string();
            if inbound {
                // The proxy calling a service whose endpoint is this very pod: the packet loops back over `lo`
                // and must enter the inbound path, as it would from another pod.
                rules.push(Rule::new(
                    Chain::IstioOutput,
                    &[
                        "!",
                        "-d",
                        "127.0.0.1/32",
                        "-o",
                        "lo",
                        "-p",
                        "tcp",
                        "-m",
                        "owner",
                        flag,
                        &id,
                        "-j",
                        Chain::IstioInRedirect.name(),
                    ],
                ));
            }
            // The application calling its own pod by address stays local.
            rules.push(Rule::new(
                Chain::IstioOutput,
                &["-o", "lo", "-m", "owner", "!", flag, &id, "-j", "RETURN"],
            ));
            // Everything else the proxy sends leaves as is; capturing it again would loop.
            rules.push(Rule::new(
                Chain::IstioOutput,
                &["-m", "owner", flag, &id, "-j", "RETURN"],
            ));
        }
        // Applications that talk to localhost explicitly (and container-to-container traffic).
        rules.push(Rule::new(
            Chain::IstioOutput,
            &["-d", "127.0.0.1/32", "-j", "RETURN"],
        ));
        for net in &self.exclude_outbound_ip_ranges {
            rules.push(Rule::new(
                Chain::IstioOutput,
                &["-d", &net.to_string(), "-j", "RETURN"],
            ));
        }
        match &self.include_outbound_ip_ranges {
            IpRanges::All => rules.push(Rule::new(
                Chain::IstioOutput,
                &["-j", Chain::IstioRedirect.name()],
            )),
            IpRanges::Only(nets) => {
                for net in nets {
                    rules.push(Rule::new(
                        Chain::IstioOutput,
                        &["-d", &net.to_string(), "-j", Chain::IstioRedirect.name()],
                    ));
                }
            }
        }
        RuleSet { rules }
    }
}

fn dedup_keep_order(v: &mut Vec<u16>) {
    let mut seen = std::collections::BTreeSet::new();
    v.retain(|p| seen.insert(*p));
}

impl RuleSet {
    /// The rules in `iptables-restore` format (applied with `--noflush`, so other rules of the table stay).
    pub fn restore_text(&self) -> String {
        let mut out = format!("*{TABLE}\n");
        for chain in Chain::OWN {
            out.push_str(&format!(":{} - [0:0]\n", chain.name()));
        }
        // Built-in hooks last, so the chains they jump to are complete when traffic first enters them.
        let (hooks, own): (Vec<&Rule>, Vec<&Rule>) = self.rules.iter().partition(|r| r.is_hook());
        for r in own.into_iter().chain(hooks) {
            out.push_str(&r.line());
            out.push('\n');
        }
        out.push_str("COMMIT\n");
        out
    }

    /// The hooks into built-in chains, as `iptables` argument lists for deleting them.
    fn hook_deletions(&self) -> Vec<Vec<String>> {
        self.rules
            .iter()
            .filter(|r| r.is_hook())
            .map(|r| {
                let mut args = vec![
                    "-t".to_string(),
                    TABLE.to_string(),
                    "-D".to_string(),
                    r.chain.name().to_string(),
                ];
                args.extend(r.spec.iter().cloned());
                args
            })
            .collect()
    }
}

/// Installs `rules` in the current network namespace, replacing rudder's earlier rules (idempotent).
pub fn apply(rules: &RuleSet) -> Result<(), Error> {
    clean(rules)?;
    let mut child = Command::new(IPTABLES_RESTORE)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            program: IPTABLES_RESTORE,
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(rules.restore_text().as_bytes())
            .map_err(|source| Error::Spawn {
                program: IPTABLES_RESTORE,
                source,
            })?;
    }
    let out = child.wait_with_output().map_err(|source| Error::Spawn {
        program: IPTABLES_RESTORE,
        source,
    })?;
    if !out.status.success() {
        return Err(Error::Failed {
            program: IPTABLES_RESTORE,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Removes rudder's hooks and chains from the current network namespace. Missing rules and chains are fine;
/// only a missing or failing `iptables` binary is an error.
pub fn clean(rules: &RuleSet) -> Result<(), Error> {
    // Delete each hook until none is left (an interrupted earlier apply may have added it twice).
    for args in rules.hook_deletions() {
        for _ in 0..16 {
            if !iptables(&args)? {
                break;
            }
        }
    }
    for chain in Chain::OWN {
        iptables(&["-t", TABLE, "-F", chain.name()])?;
    }
    for chain in Chain::OWN {
        iptables(&["-t", TABLE, "-X", chain.name()])?;
    }
    Ok(())
}

/// The `nat` table of the current namespace (`iptables-save -t nat`), for diagnostics.
pub fn current_nat_rules() -> Result<String, Error> {
    let out = Command::new("iptables-save")
        .args(["-t", TABLE])
        .output()
        .map_err(|source| Error::Spawn {
            program: "iptables-save",
            source,
        })?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `iptables args…`; `Ok(false)` when it ran but refused (e.g. no such rule).
fn iptables<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Result<bool, Error> {
    let out = Command::new(IPTABLES)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            program: IPTABLES,
            source,
        })?;
    Ok(out.status.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(c: &Capture) -> Vec<String> {
        c.rules().rules.iter().map(Rule::line).collect()
    }

    #[test]
    fn default_rules_match_istio() {
        let text = Capture::default().rules().restore_text();
        let expected = "\
*nat
:ISTIO_INBOUND - [0:0]
:ISTIO_REDIRECT - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A ISTIO_INBOUND -p tcp --dport 15000 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15001 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15006 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A OUTPUT -p tcp -j ISTIO_OUTPUT
COMMIT
";
        assert_eq!(text, expected);
    }

    #[test]
    fn outbound_ranges_and_port_exclusions() {
        let c = Capture {
            include_outbound_ip_ranges: "10.96.0.0/12, 10.244.0.0/16".parse().unwrap(),
            exclude_outbound_ip_ranges: parse_cidr_list("10.96.0.1").unwrap(),
            exclude_outbound_ports: parse_port_list("5432,5432,6379").unwrap(),
            exclude_inbound_ports: parse_port_list("22").unwrap(),
            ..Capture::default()
        };
        let l = lines(&c);
        let pos = |s: &str| {
            l.iter()
                .position(|x| x == s)
                .unwrap_or_else(|| panic!("missing {s:?} in {l:#?}"))
        };
        // Excluded ports come before the loopback/owner rules, deduplicated.
        assert!(
            pos("-A ISTIO_OUTPUT -p tcp --dport 5432 -j RETURN")
                < pos("-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN")
        );
        assert_eq!(l.iter().filter(|x| x.contains("--dport 5432")).count(), 1);
        pos("-A ISTIO_OUTPUT -p tcp --dport 6379 -j RETURN");
        // Excluded ranges return before the included ranges redirect; nothing else is redirected.
        assert!(
            pos("-A ISTIO_OUTPUT -d 10.96.0.1/32 -j RETURN")
                < pos("-A ISTIO_OUTPUT -d 10.96.0.0/12 -j ISTIO_REDIRECT")
        );
        pos("-A ISTIO_OUTPUT -d 10.244.0.0/16 -j ISTIO_REDIRECT");
        assert!(!l.contains(&"-A ISTIO_OUTPUT -j ISTIO_REDIRECT".to_string()));
        pos("-A ISTIO_INBOUND -p tcp --dport 22 -j RETURN");
    }

    #[test]
    fn inbound_port_list_and_no_inbound() {
        let c = Capture {
            include_inbound_ports: "3000,8080".parse().unwrap(),
            ..Capture::default()
        };
        let l = lines(&c);
        assert!(
            l.contains(&"-A ISTIO_INBOUND -p tcp --dport 3000 -j ISTIO_IN_REDIRECT".to_string())
        );
        assert!(
            l.contains(&"-A ISTIO_INBOUND -p tcp --dport 8080 -j ISTIO_IN_REDIRECT".to_string())
        );
        assert!(
            !l.iter()
                .any(|x| x.contains("-j RETURN") && x.starts_with("-A ISTIO_INBOUND"))
        );

        let none = Capture {
            include_inbound_ports: "".parse().unwrap(),
            include_outbound_ip_ranges: "".parse().unwrap(),
            ..Capture::default()
        };
        let l = lines(&none);
        assert!(!l.iter().any(|x| x.starts_with("-A PREROUTING")), "{l:#?}");
        assert!(
            !l.iter()
                .any(|x| x.contains("ISTIO_IN_REDIRECT") && x.starts_with("-A ISTIO_OUTPUT"))
        );
        assert!(
            !l.iter().any(|x| x.ends_with("-j ISTIO_REDIRECT")),
            "{l:#?}"
        );
    }

    #[test]
    fn custom_ports_and_ids() {
        let c = Capture {
            proxy_uid: 101,
            proxy_gid: 102,
            outbound_port: 16001,
            inbound_port: 16006,
            ..Capture::default()
        };
        let l = lines(&c);
        assert!(l.contains(&"-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 16001".to_string()));
        assert!(
            l.contains(&"-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006".to_string())
        );
        assert!(l.contains(&"-A ISTIO_OUTPUT -m owner --uid-owner 101 -j RETURN".to_string()));
        assert!(l.contains(&"-A ISTIO_OUTPUT -m owner --gid-owner 102 -j RETURN".to_string()));
    }

    #[test]
    fn list_parsing_errors() {
        assert!("10.0.0.0/33".parse::<IpRanges>().is_err());
        assert!("fe80::/10".parse::<IpRanges>().is_err());
        assert_eq!(parse_port_list(" 1, 2 ,"), Ok(vec![1, 2]));
        assert!(parse_port_list("0").is_err());
        assert!(parse_port_list("70000").is_err());
        assert!(parse_cidr_list("*").is_err());
        assert_eq!("*".parse::<Ports>(), Ok(Ports::All));
    }
}
