//! `rudder iptables print|apply|clean`: the sidecar's traffic-capture rules (what istio-init runs). Flags keep
//! `istio-iptables`' names and short letters.

use std::process::ExitCode;

use crate::inject::iptables::{self, Capture, IpRanges, Ports, parse_cidr_list, parse_port_list};

/// Arguments of `rudder iptables`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
    #[command(flatten)]
    capture: CaptureArgs,
}

#[derive(Debug, Clone, Copy, clap::Subcommand)]
enum Action {
    /// Print the rules in iptables-restore format.
    Print,
    /// Install the rules in the current network namespace (replacing earlier ones).
    Apply,
    /// Remove the rules from the current network namespace.
    Clean,
}

#[derive(Debug, clap::Args)]
struct CaptureArgs {
    /// Port outbound TCP is redirected to (virtualOutbound).
    #[arg(short = 'p', long, global = true, default_value_t = iptables::OUTBOUND_CAPTURE_PORT)]
    envoy_port: u16,
    /// Port inbound TCP is redirected to (virtualInbound).
    #[arg(short = 'z', long, global = true, default_value_t = iptables::INBOUND_CAPTURE_PORT)]
    inbound_capture_port: u16,
    /// UID the proxy runs as; its traffic is not captured.
    #[arg(short = 'u', long, global = true, default_value_t = iptables::PROXY_UID)]
    proxy_uid: u32,
    /// GID the proxy runs as; its traffic is not captured.
    #[arg(short = 'g', long, global = true, default_value_t = iptables::PROXY_UID)]
    proxy_gid: u32,
    /// Outbound destinations to capture: `*` or comma-separated CIDRs.
    #[arg(short = 'i', long, global = true, default_value = "*", value_parser = parse_ranges)]
    include_outbound_ip_ranges: IpRanges,
    /// Outbound destinations never captured: comma-separated CIDRs.
    #[arg(short = 'x', long, global = true, default_value = "", value_parser = parse_cidrs)]
    exclude_outbound_ip_ranges: CidrList,
    /// Outbound destination ports never captured: comma-separated.
    #[arg(short = 'o', long, global = true, default_value = "", value_parser = parse_ports)]
    exclude_outbound_ports: PortList,
    /// Inbound ports to capture: `*` or comma-separated.
    #[arg(short = 'b', long, global = true, default_value = "*", value_parser = parse_inbound)]
    include_inbound_ports: Ports,
    /// Inbound ports never captured, besides the proxy's own (15000, 15001, 15006, 15008, 15020, 15021, 15090).
    #[arg(short = 'd', long, global = true, default_value = "", value_parser = parse_ports)]
    exclude_inbound_ports: PortList,
}

/// Newtypes so clap treats a comma list as one value rather than a repeated argument.
#[derive(Debug, Clone)]
struct PortList(Vec<u16>);
#[derive(Debug, Clone)]
struct CidrList(Vec<ipnet::Ipv4Net>);

fn parse_ranges(s: &str) -> Result<IpRanges, String> {
    s.parse()
}
fn parse_inbound(s: &str) -> Result<Ports, String> {
    s.parse()
}
fn parse_ports(s: &str) -> Result<PortList, String> {
    parse_port_list(s).map(PortList)
}
fn parse_cidrs(s: &str) -> Result<CidrList, String> {
    parse_cidr_list(s).map(CidrList)
}

impl CaptureArgs {
    fn capture(self) -> Capture {
        let CaptureArgs {
            envoy_port,
            inbound_capture_port,
            proxy_uid,
            proxy_gid,
            include_outbound_ip_ranges,
            exclude_outbound_ip_ranges,
            exclude_outbound_ports,
            include_inbound_ports,
            exclude_inbound_ports,
        } = self;
        Capture {
            proxy_uid,
            proxy_gid,
            outbound_port: envoy_port,
            inbound_port: inbound_capture_port,
            include_outbound_ip_ranges,
            exclude_outbound_ip_ranges: exclude_outbound_ip_ranges.0,
            exclude_outbound_ports: exclude_outbound_ports.0,
            include_inbound_ports,
            exclude_inbound_ports: exclude_inbound_ports.0,
        }
    }
}

/// Runs the subcommand: 0 on success, 1 when iptables failed.
pub fn run(args: Args) -> ExitCode {
    let Args { action, capture } = args;
    let rules = capture.capture().rules();
    let result = match action {
        Action::Print => {
            print!("{}", rules.restore_text());
            Ok(())
        }
        Action::Apply => iptables::apply(&rules),
        Action::Clean => iptables::clean(&rules),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rudder iptables: {e}");
            ExitCode::FAILURE
        }
    }
}
