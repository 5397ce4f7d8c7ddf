//! `rudder iptables` for real: the rules are applied inside a test network namespace ("pod") wired to a second
//! one ("peer") by a veth pair, and small TCP listeners that answer with their own name and port show where each
//! connection landed. Needs root and iproute2/iptables; skips (passes with a message) otherwise.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rudder::test_helpers::netns::run;

const RUDDER: &str = env!("CARGO_BIN_EXE_rudder");
const MESH_APP: &str = env!("CARGO_BIN_EXE_mesh-app");

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Why this machine cannot run the test, if it cannot.
fn skip_reason() -> Option<&'static str> {
    if !is_root() {
        return Some("not root");
    }
    if !have("ip") || !have("iptables") || !have("iptables-restore") {
        return Some("ip/iptables not installed");
    }
    if !have("setpriv") {
        return Some("setpriv not installed");
    }
    None
}

/// Two namespaces and their listeners; everything is removed on drop, also when an assertion fails.
struct Net {
    pod: String,
    peer: String,
    dir: PathBuf,
    children: Vec<Child>,
}

impl Drop for Net {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Deleting a namespace deletes the veth end inside it, and with it the peer end.
        for ns in [&self.pod, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Net {
    fn new() -> Net {
        let id = std::process::id();
        let net = Net {
            pod: format!("rudder-ipt-{id}-pod"),
            peer: format!("rudder-ipt-{id}-peer"),
            dir: std::env::temp_dir().join(format!("rudder-ipt-{id}")),
            children: Vec::new(),
        };
        std::fs::create_dir_all(&net.dir).unwrap();
        let (a, b) = (format!("ript{id}a"), format!("ript{id}b"));
        run(&["ip", "netns", "add", &net.pod]);
        run(&["ip", "netns", "add", &net.peer]);
        run(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b]);
        run(&["ip", "link", "set", &a, "netns", &net.pod]);
        run(&["ip", "link", "set", &b, "netns", &net.peer]);
        for (ns, dev, ip) in [(&net.pod, &a, POD_IP), (&net.peer, &b, PEER_IP)] {
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                dev,
            ]);
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        net
    }

    /// Starts `tcp-id` listeners in `ns` answering `<name>:<port>`, and waits until they are bound.
    fn listen(&mut self, ns: &str, name: &str, ports: &str) {
        let ready = self.dir.join(format!("{name}.ready"));
        let child = Command::new("ip")
            .args([
                "netns", "exec", ns, MESH_APP, "--mode", "tcp-id", "--name", name,
            ])
            .args(["--port", ports, "--ready-file"])
            .arg(&ready)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.children.push(child);
        wait_for_file(&ready);
    }

    /// Connects from `ns` (as root, or as the proxy's UID 1337) and returns what the listener said, or `None`
    /// when nothing answered.
    fn connect(&self, ns: &str, as_proxy: bool, ip: &str, port: u16) -> Option<String> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]);
        if as_proxy {
            cmd.args([
                "setpriv",
                "--reuid",
                "1337",
                "--regid",
                "1337",
                "--clear-groups",
            ]);
        }
        // bash's /dev/tcp: no client tool needed in the namespace; `timeout` bounds a silent peer.
        cmd.args([
            "timeout",
            "5",
            "bash",
            "-c",
            "exec 3<>/dev/tcp/$0/$1 && cat <&3",
            ip,
            &port.to_string(),
        ]);
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !text.is_empty()).then_some(text)
    }

    fn rudder_iptables(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "netns", "exec", &self.pod, RUDDER, "iptables"];
        all.extend_from_slice(args);
        run(&all)
    }

    fn nat_rules(&self) -> String {
        run(&[
            "ip",
            "netns",
            "exec",
            &self.pod,
            "iptables-save",
            "-t",
            "nat",
        ])
    }
}

const POD_IP: &str = "10.251.7.1";
const PEER_IP: &str = "10.251.7.2";

fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn print_shows_istio_chains_and_flags() {
    let out = Command::new(RUDDER)
        .args(["iptables", "print", "-o", "5432", "-d", "22"])
        .args(["--include-outbound-ip-ranges", "10.96.0.0/12"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        ":ISTIO_INBOUND - [0:0]",
        ":ISTIO_REDIRECT - [0:0]",
        ":ISTIO_IN_REDIRECT - [0:0]",
        ":ISTIO_OUTPUT - [0:0]",
        "-A ISTIO_OUTPUT -p tcp --dport 5432 -j RETURN",
        "-A ISTIO_INBOUND -p tcp --dport 22 -j RETURN",
        "-A ISTIO_OUTPUT -d 10.96.0.0/12 -j ISTIO_REDIRECT",
        "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    let bad = Command::new(RUDDER)
        .args(["iptables", "print", "--exclude-outbound-ports", "http"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a port"));
}

#[test]
fn capture_in_a_network_namespace() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping iptables capture test: {why}");
        return;
    }
    let mut net = Net::new();
    let (pod, peer) = (net.pod.clone(), net.peer.clone());
    // The pod's "proxy" (15001, 15006, 15021) and application ports; the peer's services.
    net.listen(&pod, "pod", "15001,15006,15021,9090,9091");
    net.listen(&peer, "peer", "8080,8081");

    // Before capture, everything reaches its real destination.
    assert_eq!(
        net.connect(&pod, false, PEER_IP, 8080).as_deref(),
        Some("peer:8080")
    );
    assert_eq!(
        net.connect(&peer, false, POD_IP, 9090).as_deref(),
        Some("pod:9090")
    );

    net.rudder_iptables(&[
        "apply",
        "--exclude-outbound-ports",
        "8081",
        "--exclude-inbound-ports",
        "9091",
    ]);
    // Applying twice replaces rather than duplicates.
    net.rudder_iptables(&[
        "apply",
        "--exclude-outbound-ports",
        "8081",
        "--exclude-inbound-ports",
        "9091",
    ]);
    let rules = net.nat_rules();
    assert_eq!(
        rules
            .lines()
            .filter(|l| *l == "-A OUTPUT -p tcp -j ISTIO_OUTPUT")
            .count(),
        1,
        "{rules}"
    );

    let cases: &[(&str, &str, bool, &str, u16, &str)] = &[
        (
            "app → outside is captured to 15001",
            &pod,
            false,
            PEER_IP,
            8080,
            "pod:15001",
        ),
        (
            "proxy UID 1337 → outside passes",
            &pod,
            true,
            PEER_IP,
            8080,
            "peer:8080",
        ),
        (
            "app → excluded outbound port passes",
            &pod,
            false,
            PEER_IP,
            8081,
            "peer:8081",
        ),
        (
            "app → 127.0.0.1 is not captured",
            &pod,
            false,
            "127.0.0.1",
            9090,
            "pod:9090",
        ),
        (
            "inbound to the app port is captured to 15006",
            &peer,
            false,
            POD_IP,
            9090,
            "pod:15006",
        ),
        (
            "inbound to readiness 15021 is not captured",
            &peer,
            false,
            POD_IP,
            15021,
            "pod:15021",
        ),
        (
            "inbound to an excluded port passes",
            &peer,
            false,
            POD_IP,
            9091,
            "pod:9091",
        ),
    ];
    let mut failures = Vec::new();
    for (what, ns, as_proxy, ip, port, want) in cases {
        let got = net.connect(ns, *as_proxy, ip, *port);
        if got.as_deref() != Some(*want) {
            failures.push(format!("{what}: want {want}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}\nrules:\n{rules}");

    net.rudder_iptables(&["clean"]);
    let rules = net.nat_rules();
    assert!(!rules.contains("ISTIO"), "clean left rules:\n{rules}");
    assert_eq!(
        net.connect(&pod, false, PEER_IP, 8080).as_deref(),
        Some("peer:8080")
    );
    assert_eq!(
        net.connect(&peer, false, POD_IP, 9090).as_deref(),
        Some("pod:9090")
    );
    // Cleaning again is harmless.
    net.rudder_iptables(&["clean"]);
}
