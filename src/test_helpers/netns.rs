//! A private network namespace for one integration test: the test binary re-executes itself under `unshare -n`
//! running only that test, so it may bind well-known ports (15001, 15006) and install iptables rules (istio-init's
//! REDIRECT) without touching the machine's own network. Needs root and the tools the test names; without them
//! the test passes with a `skipped:` message.

use std::process::Command;

/// Set (to the test's name) in the re-executed test process that runs inside the namespace.
const IN_NETNS: &str = "RUDDER_TEST_NETNS";

/// Runs `inside` in a private network namespace: called from the `#[test] fn test`, it either is the
/// re-executed process (then runs `inside`, typically building a Tokio runtime and blocking on the scenario),
/// or re-executes the binary as `unshare -n -- <exe> <test> --exact` and asserts the inner run passed. `tools`
/// must all be installed (probed with `--version`, `ip` with `-V`) and the process must be root, else the test
/// is skipped with a message.
pub fn run_isolated(test: &str, tools: &[&str], inside: impl FnOnce()) {
    if std::env::var(IN_NETNS).as_deref() == Ok(test) {
        inside();
        return;
    }
    if let Some(why) = skip_reason(tools) {
        eprintln!("skipped: {why}");
        return;
    }
    let out = Command::new("unshare")
        .args(["-n", "--"])
        .arg(std::env::current_exe().expect("the test binary"))
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(IN_NETNS, test)
        .output()
        .expect("run unshare");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "in the network namespace:\n{stdout}\n{stderr}"
    );
}

/// Why the namespace cannot be made here (not root, or `unshare` or one of `tools` missing), if so.
fn skip_reason(tools: &[&str]) -> Option<String> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        return Some("not root".into());
    }
    let installed = |program: &str| {
        let flag = if program == "ip" { "-V" } else { "--version" };
        Command::new(program)
            .arg(flag)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let missing: Vec<&str> = std::iter::once("unshare")
        .chain(tools.iter().copied())
        .filter(|t| !installed(t))
        .collect();
    (!missing.is_empty()).then(|| format!("{} not installed", missing.join("/")))
}

/// Runs a command (`ip link set lo up`, an iptables rule, …) and returns its stdout; panics with its output if it
/// fails.
pub fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// istio-init's capture for one destination: `iptables -t nat -A OUTPUT -p tcp -d <ip> [--dport <port>] -j
/// REDIRECT --to-ports <to>`, after bringing loopback up (a fresh namespace has it down).
pub fn redirect(ip: &str, dport: Option<u16>, to: u16) {
    run(&["ip", "link", "set", "lo", "up"]);
    let dport = dport.map(|p| p.to_string());
    let to = to.to_string();
    let mut args = vec![
        "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", ip,
    ];
    if let Some(p) = &dport {
        args.extend(["--dport", p]);
    }
    args.extend(["-j", "REDIRECT", "--to-ports", &to]);
    run(&args);
}
