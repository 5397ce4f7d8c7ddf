//! `rudder wait KIND/NAMESPACE/NAME [--timeout 30s]`: returns once every proxy the object affects has ACKed a
//! version containing it (`/debug/config_status`); after the timeout, exits 1 naming the laggards.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::debug_client::{Client, DebugAddr};
use crate::debug::sync::ConfigStatus;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The object: `Kind/namespace/name` (e.g. `VirtualService/shop/reviews`).
    object: String,
    /// Give up after this long.
    #[arg(long, default_value = "30s", value_parser = super::parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    addr: DebugAddr,
}

pub fn run(args: Args) -> ExitCode {
    match wait(&args) {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rudder wait: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn wait(args: &Args) -> anyhow::Result<String> {
    let parts: Vec<&str> = args.object.split('/').collect();
    let (kind, ns, name) = match parts[..] {
        [kind, ns, name] => (kind, ns, name),
        [kind, name] => (kind, "", name),
        _ => anyhow::bail!(
            "expected KIND/NAMESPACE/NAME (e.g. VirtualService/shop/reviews), got {:?}",
            args.object
        ),
    };
    let client = Client::new(&args.addr)?;
    let path = format!("/debug/config_status?kind={kind}&namespace={ns}&name={name}");
    let deadline = Instant::now() + args.timeout;
    loop {
        let status: ConfigStatus = serde_json::from_value(client.get(&path)?)?;
        if status.synced {
            return Ok(format!(
                "{}: ACKed by {} affected prox{}",
                status.object,
                status.proxies.len(),
                if status.proxies.len() == 1 {
                    "y"
                } else {
                    "ies"
                }
            ));
        }
        if Instant::now() >= deadline {
            let mut lines = vec![format!(
                "{}: not ACKed by every affected proxy after {:?}:",
                status.object, args.timeout
            )];
            for p in status.proxies.iter().filter(|p| !p.acked) {
                let pending: Vec<String> = p
                    .resources
                    .iter()
                    .filter(|r| r.state != "ACKED")
                    .map(|r| format!("{} {} {}", r.type_short, r.name, r.state))
                    .collect();
                let nack = p
                    .nack
                    .as_deref()
                    .map(|n| format!(" — NACK: {n}"))
                    .unwrap_or_default();
                lines.push(format!("  {}: {}{nack}", p.proxy, pending.join(", ")));
            }
            anyhow::bail!("{}", lines.join("\n"));
        }
        // Polling a remote API: each answer is a fresh computation on the server.
        std::thread::sleep(Duration::from_millis(200));
    }
}
