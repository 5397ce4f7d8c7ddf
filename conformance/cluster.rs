//! The local "cluster": a Linux bridge with one network namespace per pod, and the processes running in them.
//!
//! Every name carries the run's process id (`rudder-<pid>-…` namespaces, `rbr<pid>` bridge, `rv<pid>x<n>`
//! veths), so parallel runs never collide and leftovers of a killed run can be recognised and swept. `Drop`
//! kills the processes and removes namespaces, veths, the bridge and `/etc/netns/…` files, also on panic;
//! `leftovers()` checks that nothing of the run remains.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why this machine cannot run the local mesh, if it cannot.
pub fn skip_reason() -> Option<String> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !root {
        return Some("not root".into());
    }
    for tool in ["ip", "iptables", "iptables-restore", "setpriv", "sysctl"] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Some(format!("{tool} not installed"));
        }
    }
    if !Path::new("/var/run/netns").exists()
        && Command::new("ip").args(["netns", "list"]).status().is_err()
    {
        return Some("network namespaces unavailable".into());
    }
    None
}

/// Runs a command, failing with its output when it fails.
pub fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One pod's network namespace.
#[derive(Debug, Clone)]
pub struct PodNet {
    /// The namespace name (`rudder-<pid>-<n>`).
    pub netns: String,
    pub ip: Ipv4Addr,
}

/// The bridge, its namespaces and processes.
pub struct Cluster {
    pub id: u32,
    /// Third octet of the run's pod (10.244.X.0/24) and service (10.96.X.0/24) networks.
    pub subnet: u8,
    pub bridge: String,
    /// The host's address on the bridge: where pods reach rudder.
    pub host_ip: Ipv4Addr,
    pub dir: PathBuf,
    netns: Vec<String>,
    children: Vec<(String, Child)>,
    next_pod: u8,
}

impl Cluster {
    /// Creates the bridge and the run directory; sweeps leftovers of dead runs first.
    pub fn new() -> Result<Cluster, String> {
        sweep_dead_runs();
        let id = std::process::id();
        let subnet = free_subnet()?;
        let bridge = format!("rbr{id}");
        let host_ip = Ipv4Addr::new(10, 244, subnet, 1);
        let dir = std::env::temp_dir().join(format!("rudder-conformance-{id}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let cluster = Cluster {
            id,
            subnet,
            bridge: bridge.clone(),
            host_ip,
            dir,
            netns: Vec::new(),
            children: Vec::new(),
            next_pod: 10,
        };
        sh(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{host_ip}/24"),
            "dev",
            &bridge,
        ])?;
        sh(&["ip", "link", "set", &bridge, "up"])?;
        Ok(cluster)
    }

    /// A new pod namespace on the bridge with the next free address, loopback up and a default route via the
    /// host (so ClusterIPs route, and iptables in the pod can capture them).
    pub fn add_pod(&mut self) -> Result<PodNet, String> {
        let n = self.next_pod;
        self.next_pod = self.next_pod.checked_add(1).ok_or("pod network full")?;
        let netns = format!("rudder-{}-{n}", self.id);
        let ip = Ipv4Addr::new(10, 244, self.subnet, n);
        let (host_end, pod_end) = (format!("rv{}x{n}", self.id), format!("rp{}x{n}", self.id));
        sh(&["ip", "netns", "add", &netns])?;
        self.netns.push(netns.clone());
        sh(&[
            "ip", "link", "add", &host_end, "type", "veth", "peer", "name", &pod_end,
        ])?;
        sh(&["ip", "link", "set", &host_end, "master", &self.bridge, "up"])?;
        sh(&["ip", "link", "set", &pod_end, "netns", &netns])?;
        sh(&["ip", "-n", &netns, "link", "set", &pod_end, "name", "eth0"])?;
        sh(&[
            "ip",
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth0",
        ])?;
        sh(&["ip", "-n", &netns, "link", "set", "eth0", "up"])?;
        sh(&["ip", "-n", &netns, "link", "set", "lo", "up"])?;
        sh(&[
            "ip",
            "-n",
            &netns,
            "route",
            "add",
            "default",
            "via",
            &self.host_ip.to_string(),
        ])?;
        // Gateways bind 80/443 without root, as Kubernetes lets them with this sysctl.
        sh(&[
            "ip",
            "netns",
            "exec",
            &netns,
            "sysctl",
            "-qw",
            "net.ipv4.ip_unprivileged_port_start=0",
        ])?;
        fs::create_dir_all(format!("/etc/netns/{netns}")).map_err(|e| e.to_string())?;
        Ok(PodNet { netns, ip })
    }

    /// Writes the pod's `/etc/hosts` (bind-mounted by `ip netns exec`). Written in place, so processes already
    /// running see updates.
    pub fn write_hosts(&self, pod: &PodNet, entries: &str) -> Result<(), String> {
        let text = format!("127.0.0.1 localhost\n{} {}\n{entries}", pod.ip, pod.netns);
        fs::write(format!("/etc/netns/{}/hosts", pod.netns), text).map_err(|e| e.to_string())
    }

    /// Starts `cmd` in the pod's namespace (optionally as UID/GID 1337), logging to `<dir>/<log>.log`.
    pub fn spawn(
        &mut self,
        pod: &PodNet,
        log: &str,
        as_proxy: bool,
        env: &[(String, String)],
        cmd: &[String],
    ) -> Result<(), String> {
        let log_path = self.dir.join(format!("{log}.log"));
        let out = fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &pod.netns]);
        if as_proxy {
            c.args([
                "setpriv",
                "--reuid",
                "1337",
                "--regid",
                "1337",
                "--clear-groups",
            ]);
        }
        c.args(cmd)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = c.spawn().map_err(|e| format!("spawn {cmd:?}: {e}"))?;
        self.children.push((log.to_string(), child));
        Ok(())
    }

    /// Stops the processes whose log name starts with `prefix` and deletes `pod`'s namespace.
    pub fn remove_pod(&mut self, pod: &PodNet, prefix: &str) {
        let mut keep = Vec::new();
        for (name, mut child) in self.children.drain(..) {
            if name.starts_with(prefix) {
                let _ = child.kill();
                let _ = child.wait();
            } else {
                keep.push((name, child));
            }
        }
        self.children = keep;
        let _ = Command::new("ip")
            .args(["netns", "del", &pod.netns])
            .status();
        let _ = fs::remove_dir_all(format!("/etc/netns/{}", pod.netns));
        self.netns.retain(|n| n != &pod.netns);
    }

    /// Whether every process is still running; the name and log tail of one that exited otherwise.
    pub fn dead_process(&mut self) -> Option<String> {
        let mut dead = None;
        for (name, child) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                dead = Some((name.clone(), status));
                break;
            }
        }
        let (name, status) = dead?;
        Some(format!(
            "{name} exited ({status}):\n{}",
            self.log_tail_of(&name, 15)
        ))
    }

    fn log_tail_of(&self, name: &str, lines: usize) -> String {
        let text = fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The last lines of a process log.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        self.log_tail_of(name, lines)
    }

    /// What of this run still exists on the host, waiting up to 10 s for the kernel to finish destroying
    /// namespaces (their veths go asynchronously). Empty when clean.
    pub fn leftovers(id: u32) -> Vec<String> {
        let mut last = Vec::new();
        let clean = wait_until(Duration::from_secs(10), || {
            last = Self::leftovers_now(id);
            last.is_empty().then_some(())
        });
        if clean.is_some() { Vec::new() } else { last }
    }

    fn leftovers_now(id: u32) -> Vec<String> {
        let mut left = Vec::new();
        let prefix = format!("rudder-{id}-");
        if let Ok(list) = sh(&["ip", "netns", "list"]) {
            left.extend(
                list.lines()
                    .filter_map(|l| l.split_whitespace().next())
                    .filter(|n| n.starts_with(&prefix))
                    .map(|n| format!("netns {n}")),
            );
        }
        if let Ok(links) = sh(&["ip", "-o", "link", "show"]) {
            for l in links.lines() {
                let name = l.split(':').nth(1).unwrap_or_default().trim();
                let name = name.split('@').next().unwrap_or_default();
                if name == format!("rbr{id}") || name.starts_with(&format!("rv{id}x")) {
                    left.push(format!("link {name}"));
                }
            }
        }
        if let Ok(entries) = fs::read_dir("/etc/netns") {
            for e in entries.flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                if n.starts_with(&prefix) {
                    left.push(format!("/etc/netns/{n}"));
                }
            }
        }
        if let Ok(rules) = sh(&["iptables-save"])
            && rules.contains(&format!("rbr{id}"))
        {
            left.push("host iptables rules naming the bridge".into());
        }
        left
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
        }
        for (_, child) in &mut self.children {
            let _ = child.wait();
        }
        for ns in &self.netns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
            let _ = fs::remove_dir_all(format!("/etc/netns/{ns}"));
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
        if std::env::var_os("RUDDER_CONFORMANCE_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A 10.244.X.0/24 no interface on the host uses yet.
fn free_subnet() -> Result<u8, String> {
    let routes = sh(&["ip", "-4", "route", "show"])?;
    let start = (std::process::id() % 200) as u8 + 20;
    (0..200u16)
        .map(|i| ((u16::from(start) + i) % 230 + 20) as u8)
        .find(|x| !routes.contains(&format!("10.244.{x}.")))
        .ok_or_else(|| "no free 10.244.X.0/24".into())
}

/// Removes namespaces, links and `/etc/netns` entries of runs whose process is gone (a killed run).
fn sweep_dead_runs() {
    remove_runs(|pid| !Path::new(&format!("/proc/{pid}")).exists());
}

/// Removes everything of run `id` by name (for Ctrl-C, when `Drop` does not run).
pub fn remove_run(id: u32) {
    let id = id.to_string();
    remove_runs(|pid| pid == id);
}

/// Removes the namespaces (`rudder-<pid>-…`), `/etc/netns` entries and bridges (`rbr<pid>`) of the runs whose
/// pid `select` picks.
fn remove_runs(select: impl Fn(&str) -> bool) {
    let run_pid = |name: &str| -> Option<String> {
        let (pid, _) = name.strip_prefix("rudder-")?.split_once('-')?;
        (!pid.is_empty() && pid.chars().all(|c| c.is_ascii_digit())).then(|| pid.to_string())
    };
    if let Ok(list) = sh(&["ip", "netns", "list"]) {
        for n in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if run_pid(n).is_some_and(|p| select(&p)) {
                let _ = Command::new("ip").args(["netns", "del", n]).status();
            }
        }
    }
    if let Ok(entries) = fs::read_dir("/etc/netns") {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if run_pid(&n).is_some_and(|p| select(&p)) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    if let Ok(links) = sh(&["ip", "-o", "link", "show"]) {
        for l in links.lines() {
            let name = l.split(':').nth(1).unwrap_or_default().trim();
            let name = name.split('@').next().unwrap_or_default();
            if let Some(pid) = name.strip_prefix("rbr")
                && !pid.is_empty()
                && pid.chars().all(|c| c.is_ascii_digit())
                && select(pid)
            {
                let _ = Command::new("ip").args(["link", "del", name]).status();
            }
        }
    }
}

/// Polls `cond` every 50 ms until it returns `Some` or `timeout` passes.
pub fn wait_until<T>(timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
