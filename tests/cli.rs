//! The `rudder` binary: `validate` exit codes and output, `discovery` on the example mesh and its reaction to edits.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rudder::test_helpers::process::output_with_stdin;

fn rudder() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rudder"));
    c.env("RUST_LOG", "info").env_remove("RUDDER_CONFIG_DIR");
    c
}

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn book_yaml_files() -> Vec<PathBuf> {
    let root = repo("../shared/book/manifests");
    assert!(
        root.is_dir(),
        "the book's manifests are expected at {}",
        root.display()
    );
    let mut files: Vec<PathBuf> = rudder::config::source::file::config_files(&root)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_book_manifest_validates_strictly() {
    let files = book_yaml_files();
    assert!(
        files.len() >= 30,
        "found only {} manifest files",
        files.len()
    );
    let mut cmd = rudder();
    cmd.arg("validate");
    for f in &files {
        cmd.arg("-f").arg(f);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let last = stdout.lines().last().unwrap();
    assert!(last.ends_with("valid, 0 invalid, 0 skipped"), "{last}");
    assert!(
        !stdout.contains("warning:"),
        "unknown fields in the book's YAML: {stdout}"
    );
}

#[test]
fn validate_reports_exact_lines_and_exit_codes() {
    let bad = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: shop}\nspec:\n  hosts: [r]\n  http:\n  - route:\n    - destination: {host: a}\n      weight: 60\n    - destination: {host: b}\n      weight: 30\n  colour: red\n";
    let out = output_with_stdin(rudder().args(["validate", "-f", "-"]), bad);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("error: VirtualService shop/r: spec.colour: unknown field\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("error: VirtualService shop/r: spec.http[0].route: "),
        "{stdout}"
    );
    assert!(
        stdout.ends_with("1 documents: 0 valid, 1 invalid, 0 skipped\n"),
        "{stdout}"
    );

    // Lenient: unknown fields are warnings; the weights still make it invalid.
    let out = output_with_stdin(rudder().args(["validate", "--lenient", "-f", "-"]), bad);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("warning: VirtualService shop/r: spec.colour: unknown field")
    );

    let out = rudder()
        .args(["validate", "-f", "/nonexistent/rudder.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/rudder.yaml: cannot read"));

    let out = rudder()
        .args(["validate", "-f"])
        .arg(repo("examples/micro-shake-factory"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn discovery_once_summarises_the_example() {
    let out = rudder()
        .args(["discovery", "--once", "--config-dir"])
        .arg(repo("examples/micro-shake-factory"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().next().unwrap(),
        "snapshot 1: 4 services, 9 endpoints, 7 workloads, config: DestinationRule=1 Gateway=2 ServiceEntry=1 VirtualService=2, 0 errors, 0 warnings"
    );
}

#[test]
fn discovery_reacts_to_edits() {
    let dir = tempfile::tempdir().unwrap();
    for f in rudder::config::source::file::config_files(&repo("examples/micro-shake-factory")) {
        std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
    }
    let mut child = rudder()
        .args([
            "discovery",
            "--grpc-addr",
            "127.0.0.1:0",
            "--debug-addr",
            "127.0.0.1:0",
            "--debug-alt-addr",
            "127.0.0.1:0",
            "--debounce-quiet",
            "10ms",
            "--config-dir",
        ])
        .arg(dir.path())
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Lines already read are kept, so the order in which rudder's tasks log does not matter.
    let seen = std::cell::RefCell::new(Vec::<String>::new());
    let wait_for = |needle: &str| -> String {
        if let Some(line) = seen.borrow().iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(line) => {
                    seen.borrow_mut().push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("rudder never logged {needle:?}");
    };
    // The debug API is also served on the alternate (istiod's 8080) address.
    let line = wait_for("serving debug API (alternate port)");
    let alt = line
        .split("addr=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let alt = alt.trim_matches(|c: char| !c.is_ascii_digit() && c != '.' && c != ':');
    let mut conn = std::net::TcpStream::connect(alt).unwrap();
    conn.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut conn, &mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    wait_for("watching config directory");
    std::fs::write(
        dir.path().join("50-new.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: extra, namespace: micro-shake-factory}\nspec:\n  ports: [{name: http, port: 8000}]\n",
    )
    .unwrap();
    let line = wait_for("snapshot 2:");
    assert!(line.contains("5 services"), "{line}");
    child.kill().unwrap();
    child.wait().unwrap();
}
