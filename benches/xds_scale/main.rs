//! Scale bench for the ADS server: 1,000 services, N delta clients on loopback.
//!
//! Measures, per change, the time from publishing a generation to each affected client having received and
//! ACKed it (p50/p99/max over clients), for a config change (one cluster + the route table) and an
//! endpoint-only change, plus the initial sync and the server's peak RSS.
//!
//! The server runs in a child process (this binary with `--serve`), so its peak RSS is the server's alone and
//! not the fake clients'; the parent drives it over stdin (`config <epoch>`, `eds <service> <epoch>`), and the
//! child answers each with the published generation. Latency counts from the moment the parent asks.
//!
//! `cargo bench --bench xds_scale -- --clients 100 --rounds 5` (defaults: 100 clients, 5 rounds).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action,
    route_match,
};
mod bare;
mod client;
mod real;

use client::LeanDelta;
use rudder::test_helpers::ads::{TestServer, node_id};
use rudder::test_helpers::xds_fixtures::{
    Publisher, StaticGenerator, cluster, endpoints, listener,
};
use rudder::xds::XdsResource;
use rudder::xds::type_url::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::mpsc;

const SERVICES: usize = 1_000;

/// The pause after an endpoint round: clients have received the change, but their ACKs may still be on their
/// way and being processed.
const SETTLE: Duration = Duration::from_millis(50);

/// An endpoint round starts once its server has used less than this in a [`QUIET_WINDOW`]: after a config
/// change, the server reads thousands of ACKs for a hundred milliseconds or more after its clients had the
/// change, and an endpoint round started in that tail measured the two changes together.
const QUIET_CPU: Duration = Duration::from_millis(1);
const QUIET_WINDOW: Duration = Duration::from_millis(20);

/// The CPU the threads of `pid` have run, in nanoseconds (`schedstat`, unlike `stat`, is not in 10 ms ticks).
fn run_time(pid: u32) -> Duration {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten();
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

/// Waits until the server `pid` is idle (see [`QUIET_CPU`]), for at most 10 s.
async fn quiesce(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let before = run_time(pid);
        tokio::time::sleep(QUIET_WINDOW).await;
        if run_time(pid) - before < QUIET_CPU {
            return;
        }
    }
}

fn svc(i: usize) -> String {
    format!("outbound|80||svc-{i}.ns-{}.svc.cluster.local", i % 20)
}

fn eps(i: usize, epoch: u16) -> Vec<SocketAddr> {
    (0..3u16)
        .map(|k| {
            SocketAddr::from((
                [10, (i / 250) as u8, (i % 250) as u8, 1 + k as u8],
                8000 + epoch,
            ))
        })
        .collect()
}

/// One route table with a virtual host per service (like Istio's "80" route).
fn route_table(tag: &str) -> Arc<XdsResource> {
    let rc = RouteConfiguration {
        name: "80".to_owned(),
        virtual_hosts: (0..SERVICES)
            .map(|i| VirtualHost {
                name: format!("svc-{i}.ns-{}.svc.cluster.local:80", i % 20),
                domains: vec![
                    format!("svc-{i}.ns-{}.svc.cluster.local", i % 20),
                    format!("svc-{i}"),
                ],
                routes: vec![Route {
                    r#match: Some(RouteMatch {
                        path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_owned())),
                        ..Default::default()
                    }),
                    action: Some(route::Action::Route(RouteAction {
                        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(svc(i))),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
        response_headers_to_add: vec![HeaderValueOption {
            header: Some(HeaderValue {
                key: "x-tag".to_owned(),
                value: tag.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    Arc::new(XdsResource::encode("80", &rc))
}

fn mesh(epoch: u16) -> StaticGenerator {
    let mut g = StaticGenerator::default();
    for i in 0..SERVICES {
        g.set(cluster(&svc(i)));
        g.set(endpoints(&svc(i), &eps(i, 0)));
    }
    g.set(listener(
        "0.0.0.0_80",
        SocketAddr::from(([0, 0, 0, 0], 80)),
        "80",
    ));
    g.set(route_table(&format!("epoch-{epoch}")));
    g
}

/// (client, type_url, system_version_info, when received)
type Event = (usize, String, u64, Instant);

/// A fake Envoy: wildcard CDS/LDS, EDS for every cluster it learns, RDS "80"; ACKs everything at once.
/// Like Envoy, it reconnects when its stream breaks before the first response (a few of 2,000 connections
/// made at once are reset); it ends quietly when its stream breaks later (the server is gone).
async fn client(
    idx: usize,
    addr: SocketAddr,
    events: mpsc::Sender<Event>,
    connecting: Arc<tokio::sync::Semaphore>,
) {
    let node = node_id(&format!("bench-{idx}"), "bench");
    for attempt in 1.. {
        // Connect a few hundred at a time, as a fleet of Envoys would: the listen backlog is 1,024.
        let permit = connecting.clone().acquire_owned().await.unwrap();
        let connected = LeanDelta::connect(addr, &node).await;
        drop(permit);
        let error = match connected {
            Ok(mut c) => match serve_client(idx, &mut c, &events).await {
                Ok(()) => return,
                Err((heard, _)) if heard => return,
                Err((_, e)) => e,
            },
            Err(e) => e,
        };
        assert!(
            attempt < 5,
            "client {idx}: no response after {attempt} attempts: {error}"
        );
        tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
    }
}

/// Runs one stream until it breaks (`Err` with whether any response came) or the bench stops listening.
async fn serve_client(
    idx: usize,
    c: &mut LeanDelta,
    events: &mpsc::Sender<Event>,
) -> Result<(), (bool, String)> {
    c.subscribe(CLUSTER, &[]);
    c.subscribe(LISTENER, &[]);
    let (mut rds, mut heard) = (false, false);
    loop {
        // A client that never hears again stalls `collect`, which gives up after 60 s.
        let resp = c.recv().await.map_err(|e| (heard, e))?;
        heard = true;
        let at = Instant::now();
        c.ack(&resp);
        if resp.type_url == CLUSTER && !resp.resources.is_empty() {
            let names: Vec<&str> = resp.resources.iter().map(|r| r.name.as_str()).collect();
            c.subscribe(ENDPOINT, &names);
        }
        if resp.type_url == LISTENER && !rds {
            rds = true;
            c.subscribe(ROUTE, &["80"]);
        }
        let v = resp.system_version_info.parse().unwrap_or(0);
        if events.send((idx, resp.type_url, v, at)).await.is_err() {
            return Ok(());
        }
    }
}

/// Waits until every client reported every type in `types` at version `v`; per-client latency from `t0`.
async fn collect(
    rx: &mut mpsc::Receiver<Event>,
    clients: usize,
    types: &[&str],
    v: u64,
    t0: Instant,
) -> Vec<Duration> {
    let mut seen: HashMap<usize, (usize, Instant)> = HashMap::new();
    let mut done = 0;
    while done < clients {
        let (idx, t, ver, at) = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("only {done} of {clients} clients had version {v} of {types:?} within 60 s")
            })
            .expect("clients alive");
        if ver != v || !types.contains(&t.as_str()) {
            continue;
        }
        let e = seen.entry(idx).or_insert((0, at));
        e.0 += 1;
        e.1 = e.1.max(at);
        if e.0 == types.len() {
            done += 1;
        }
    }
    let mut lat: Vec<Duration> = seen.values().map(|(_, at)| *at - t0).collect();
    lat.sort();
    lat
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Every per-client latency of `rounds`, sorted.
fn all_sorted(rounds: &[Vec<Duration>]) -> Vec<Duration> {
    let mut all: Vec<Duration> = rounds.iter().flatten().copied().collect();
    all.sort();
    all
}

fn report(name: &str, rounds: &[Vec<Duration>]) {
    let all = all_sorted(rounds);
    let max = rounds.iter().map(|r| *r.last().unwrap()).max().unwrap();
    // The first client of a round: the fixed cost of a change (the command, the publication) before any push.
    let mut first: Vec<Duration> = rounds.iter().map(|r| r[0]).collect();
    first.sort();
    println!(
        "{name:<28} p50 {:>9.2?}  p99 {:>9.2?}  all-clients(max) {:>9.2?}  first client (median) {:.2?}  ({} samples)",
        pct(&all, 0.5),
        pct(&all, 0.99),
        max,
        pct(&first, 0.5),
        all.len()
    );
}

fn peak_rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmHWM:")
}

/// A memory figure of `/proc/<pid>/status` (e.g. `VmHWM:` peak, `VmRSS:` now), in MiB.
fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

/// CPU time (user + system) used so far by process `pid`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) : utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
    let ticks: u64 = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the server pushes: pre-encoded resources (the ADS server alone), or the mesh's objects through
/// rudder's snapshot build and generator.
enum Mesh {
    Static(StaticGenerator),
    Real(real::RealMesh),
}

impl Mesh {
    fn new(real: bool) -> Self {
        match real {
            true => Mesh::Real(real::RealMesh::new()),
            false => Mesh::Static(mesh(0)),
        }
    }

    /// Publishes the mesh as it is now.
    fn publish(&mut self, publisher: &mut Publisher) -> u64 {
        match self {
            Mesh::Static(g) => publisher.publish(g.clone()),
            Mesh::Real(m) => publisher.publish(m.generator(publisher.next_version())),
        }
    }

    /// Config change: one new cluster and the route table.
    fn config(&mut self, epoch: usize) {
        match self {
            Mesh::Static(g) => {
                g.set(cluster(&format!("{}-x{epoch}", svc(0))));
                g.set(route_table(&format!("epoch-{epoch}")));
            }
            Mesh::Real(m) => m.add_service(epoch),
        }
    }

    /// Endpoint change of service `i`.
    fn endpoints(&mut self, i: usize, epoch: u16) {
        match self {
            Mesh::Static(g) => g.set(endpoints(&svc(i), &eps(i, epoch))),
            Mesh::Real(m) => m.set_endpoints(i, epoch),
        }
    }
}

/// The server side: publishes the mesh, serves ADS, and applies the parent's changes.
async fn serve(real: bool) {
    let (mut publisher, rx) = Publisher::new();
    let t_build = Instant::now();
    let mut g = Mesh::new(real);
    let v = g.publish(&mut publisher);
    let server = TestServer::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), rx, 64).await;
    println!("addr {} {v} {:?}", server.addr, t_build.elapsed());
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let words: Vec<usize> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|w| w.parse().ok())
            .collect();
        let v = match (line.split_whitespace().next(), words.as_slice()) {
            (Some("config"), [epoch]) => {
                g.config(*epoch);
                g.publish(&mut publisher)
            }
            (Some("eds"), [i, epoch]) => {
                g.endpoints(*i, *epoch as u16);
                g.publish(&mut publisher)
            }
            (Some("stats"), []) => {
                let m = &server.metrics;
                println!(
                    "stats push_time mean {:.2?} max {:.2?} ({} pushes); convergence mean {:.2?} max {:.2?}",
                    m.push_time.sum() / m.push_time.count().max(1) as u32,
                    m.push_time.max(),
                    m.push_time.count(),
                    m.convergence.sum() / m.convergence.count().max(1) as u32,
                    m.convergence.max(),
                );
                continue;
            }
            _ => panic!("bad command {line:?}"),
        };
        println!("v {v}");
    }
}

/// The parent's handle on a server process.
struct ServerProc {
    child: Child,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
    pid: u32,
}

impl ServerProc {
    /// Starts this binary as a server (`--serve`: rudder, `--serve-bare`: the HTTP/2 floor). Returns it, its
    /// address, the generation it starts at, and how long it took to build its config.
    async fn spawn(args: &[&str], wrap: Option<String>) -> (Self, SocketAddr, u64, String) {
        let exe = std::env::current_exe().unwrap();
        let mut command = match wrap {
            Some(wrap) => {
                let mut c = Command::new(wrap);
                c.arg(exe);
                c
            }
            None => Command::new(exe),
        };
        let mut child = command
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the server process");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        // A profiler wrapping the server may print first.
        let hello = loop {
            let line = stdout.next_line().await.unwrap().expect("server starts");
            if line.starts_with("addr ") {
                break line;
            }
        };
        let mut words = hello.split_whitespace().skip(1);
        let addr: SocketAddr = words.next().unwrap().parse().unwrap();
        let v: u64 = words.next().unwrap().parse().unwrap();
        let built = words.next().unwrap_or("?").to_owned();
        let pid = child.id().unwrap();
        let server = ServerProc {
            child,
            stdin,
            stdout,
            pid,
        };
        (server, addr, v, built)
    }

    async fn send(&mut self, command: &str) -> String {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
        loop {
            let line = self
                .stdout
                .next_line()
                .await
                .unwrap()
                .expect("server answers");
            if line.starts_with("v ") || line.starts_with("stats ") {
                return line;
            }
        }
    }

    async fn publish(&mut self, command: &str) -> u64 {
        let line = self.send(command).await;
        line.strip_prefix("v ")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("bad answer {line:?}"))
    }

    /// Closing stdin ends the server (letting a wrapping profiler write its data); killed if it lingers.
    /// Its clients' streams then break, and those clients end.
    async fn stop(self) {
        let ServerProc {
            mut child, stdin, ..
        } = self;
        drop(stdin);
        if tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
}

/// Starts `clients` fake Envoys against `addr`; their events come on the returned channel.
fn connect_clients(addr: SocketAddr, clients: usize) -> mpsc::Receiver<Event> {
    let (tx, events) = mpsc::channel(clients * 8);
    let connecting = Arc::new(tokio::sync::Semaphore::new(200));
    for i in 0..clients {
        tokio::spawn(client(i, addr, tx.clone(), connecting.clone()));
    }
    events
}

/// Endpoint rounds: per-client latencies of each round, plus the wall time and the CPU the server and the
/// clients used during them.
#[derive(Default)]
struct EdsRounds {
    rounds: Vec<Vec<Duration>>,
    wall: Duration,
    /// The server's CPU from each change to a settle after its last client had it, so work the server does
    /// after that (its ACKs) is counted too.
    server_cpu: Duration,
    client_cpu: Duration,
}

impl EdsRounds {
    /// Runs one round: an endpoint change, until every client received it. It starts once its server is idle
    /// (the ACKs of the last change, endpoint or config, are through), so a change meets an idle machine, and
    /// its server CPU counts until its own ACKs are through.
    async fn round(
        &mut self,
        server: &mut ServerProc,
        events: &mut mpsc::Receiver<Event>,
        clients: usize,
        r: usize,
    ) {
        quiesce(server.pid).await;
        let me = std::process::id();
        let cpu0 = (cpu_time(server.pid), cpu_time(me));
        let t0 = Instant::now();
        let v = server
            .publish(&format!("eds {} {}", r % SERVICES, r + 1))
            .await;
        self.rounds
            .push(collect(events, clients, &[ENDPOINT], v, t0).await);
        self.wall += t0.elapsed();
        self.client_cpu += cpu_time(me) - cpu0.1;
        tokio::time::sleep(SETTLE).await;
        self.server_cpu += cpu_time(server.pid) - cpu0.0;
    }

    fn report(&self, name: &str, clients: usize) {
        report(name, &self.rounds);
        // `--per-round 1`: each round's slowest client, to tell a slow tail from a few slow rounds.
        if arg("--per-round", 0) == 1 {
            let maxes: Vec<String> = self
                .rounds
                .iter()
                .map(|r| format!("{:.0}", r.last().unwrap().as_secs_f64() * 1e3))
                .collect();
            println!(
                "{:<28} slowest client per round (ms): {}",
                "",
                maxes.join(" ")
            );
        }
        let n = self.rounds.len() as u32;
        println!(
            "{:<28} per round {:.2?} wall, server CPU {:.2?} ({:.1?} per client), client CPU {:.2?}",
            "",
            self.wall / n,
            self.server_cpu / n,
            self.server_cpu / n / clients as u32,
            self.client_cpu / n,
        );
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // `--generator static|real` (default static): see `real.rs`.
    let generator: &'static str = match std::env::args().skip_while(|a| a != "--generator").nth(1) {
        Some(g) if g == "real" => "real",
        _ => "static",
    };
    // A server publishes from a task on the runtime's workers, as the app's `publish_push_contexts` does: from
    // the main thread (outside the workers), every stream's wake went through the runtime's shared queue.
    if std::env::args().any(|a| a == "--serve") {
        rt.block_on(rt.spawn(serve(generator == "real"))).unwrap();
        return;
    }
    if std::env::args().any(|a| a == "--serve-bare") {
        let resource = endpoints(&svc(0), &eps(0, 1));
        rt.block_on(rt.spawn(bare::serve(resource))).unwrap();
        return;
    }
    let clients = arg("--clients", 100);
    let rounds = arg("--rounds", 5);
    // Profiling one kind of change: `--config-rounds 0 --eds-rounds 50`.
    let config_rounds_n = arg("--config-rounds", rounds);
    let eds_rounds_n = arg("--eds-rounds", rounds);
    // The driver (and its event collector) runs as a task on the workers: on the main thread, every event a
    // client sends would wake that thread through a futex (12% of the clients' CPU).
    let driver = rt.spawn(async move {
        // XDS_SCALE_WRAP runs the server under a profiler, e.g. `XDS_SCALE_WRAP=heaptrack`.
        let wrap = std::env::var("XDS_SCALE_WRAP").ok();
        let (mut server, addr, mut v, built) = ServerProc::spawn(&["--serve", "--generator", generator], wrap).await;
        let pid = server.pid;
        println!("xds_scale: {SERVICES} services, {clients} delta clients, {rounds} rounds, {generator} generator (server pid {pid}, built in {built})");
        let t0 = Instant::now();
        let mut events = connect_clients(addr, clients);
        let initial = collect(&mut events, clients, &[CLUSTER, ENDPOINT, LISTENER, ROUTE], v, t0).await;
        report("initial sync (connect→all)", &[initial]);
        let rss_initial = peak_rss_mib(pid);

        // The floor: as many clients against a bare HTTP/2 server, whose endpoint rounds alternate with
        // rudder's, so both see the machine as it is at that moment (a shared VM's speed drifts by tens of
        // percent within a minute, so a floor measured after rudder's rounds made a noisy ratio).
        let mut floor = match eds_rounds_n > 0 && arg("--floor", 1) == 1 {
            true => {
                let (bare, addr, v, _) = ServerProc::spawn(&["--serve-bare"], None).await;
                let mut events = connect_clients(addr, clients);
                collect(&mut events, clients, &[ENDPOINT], v, Instant::now()).await;
                Some((bare, events, EdsRounds::default()))
            }
            false => None,
        };
        let mut config_rounds = Vec::new();
        let mut eds = EdsRounds::default();
        for r in 0..config_rounds_n.max(eds_rounds_n) {
            if r < config_rounds_n {
                let t0 = Instant::now();
                v = server.publish(&format!("config {}", r + 1)).await;
                config_rounds.push(collect(&mut events, clients, &[CLUSTER, ROUTE], v, t0).await);
            }
            if r < eds_rounds_n {
                eds.round(&mut server, &mut events, clients, r).await;
                if let Some((bare, events, rounds)) = floor.as_mut() {
                    rounds.round(bare, events, clients, r).await;
                }
            }
        }
        if !config_rounds.is_empty() {
            report("config change → all ACKed", &config_rounds);
        }
        if !eds.rounds.is_empty() {
            eds.report("endpoint change → all ACKed", clients);
        }
        println!("server {}", server.send("stats").await.trim_start_matches("stats "));
        println!(
            "server peak RSS (VmHWM): {:.1} MiB after initial sync, {:.1} MiB at the end (VmRSS now {:.1} MiB); bench client process (both sets of clients) {:.1} MiB",
            rss_initial,
            peak_rss_mib(pid),
            status_mib(pid, "VmRSS:"),
            peak_rss_mib(std::process::id())
        );
        server.stop().await;

        if let Some((bare, _events, floor)) = floor {
            floor.report("floor: bare HTTP/2 push", clients);
            // What HTTP/2 alone holds for as many connections (h2's read and write buffers, the streams).
            println!("{:<28} peak RSS (VmHWM) {:.1} MiB", "", peak_rss_mib(bare.pid));
            let (ours, base) = (all_sorted(&eds.rounds), all_sorted(&floor.rounds));
            println!(
                "endpoint change / bare HTTP/2 floor: p50 {:.2}x, p99 {:.2}x, server CPU {:.2}x",
                pct(&ours, 0.5).as_secs_f64() / pct(&base, 0.5).as_secs_f64(),
                pct(&ours, 0.99).as_secs_f64() / pct(&base, 0.99).as_secs_f64(),
                eds.server_cpu.as_secs_f64() / floor.server_cpu.as_secs_f64().max(1e-9),
            );
            bare.stop().await;
        }
        // Leave without waiting for the broken clients.
        std::process::exit(0);
    });
    rt.block_on(driver).unwrap();
}
