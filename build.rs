//! Builds a protobuf descriptor set of Envoy's v3 API for the debug API, which renders what rudder sends as
//! proto3 JSON (the shape of Envoy's admin `/config_dump`) with `prost-reflect`.
//!
//! The `.proto` sources ship inside the `envoy-types` crate package (`proto/`), so the descriptors always match the
//! generated Rust types. The package directory is found with `cargo metadata` (it works for registry, vendored
//! and git sources alike); `RUDDER_ENVOY_PROTO_DIR` overrides it. `protox` compiles in pure Rust (no `protoc`).

use std::path::{Path, PathBuf};
use std::{env, fs};

/// Include roots inside `envoy-types/proto/`.
const INCLUDES: [&str; 8] = [
    "data-plane-api",
    "xds",
    "googleapis",
    "protoc-gen-validate",
    "cel-spec",
    "opentelemetry-proto",
    "client_model",
    "ratelimit",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RUDDER_ENVOY_PROTO_DIR");
    let proto_dir = match env::var_os("RUDDER_ENVOY_PROTO_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => envoy_types_dir().join("proto"),
    };
    let api = proto_dir.join("data-plane-api");
    if !api.is_dir() {
        panic!(
            "Envoy protos not found at {} (set RUDDER_ENVOY_PROTO_DIR to envoy-types' proto/ directory)",
            api.display()
        );
    }
    // Every Envoy v3 file: the Any-typed extension configs a resource may carry must all resolve.
    let mut files = Vec::new();
    collect_protos(&api, &api.join("envoy"), &mut files);
    files.sort();
    let includes: Vec<PathBuf> = INCLUDES
        .iter()
        .map(|i| proto_dir.join(i))
        .filter(|p| p.is_dir())
        .collect();
    // protox resolves relative type names against every file opened in one compiler, unlike protoc (imports
    // only): `common.dynamic_forward_proxy.v3.X` inside `envoy.extensions.clusters.dynamic_forward_proxy.v3`
    // would bind to the unrelated `envoy.extensions.clusters.common` package once that file is open. Files that
    // fail that way go to the next compiler, and the sets are merged below.
    let mut compilers: Vec<protox::Compiler> = Vec::new();
    let mut skipped = Vec::new();
    for file in &files {
        let mut last_err = None;
        let mut placed = false;
        for c in compilers.iter_mut() {
            match c.open_file(file) {
                Ok(_) => {
                    placed = true;
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        if placed {
            continue;
        }
        let mut c = protox::Compiler::new(&includes).expect("protox compiler");
        c.include_imports(true).include_source_info(false);
        if let Err(e) = c.open_file(file) {
            // A few files hit the same lookup bug even alone (their transitive imports open the clashing
            // package). They are exotic extensions rudder never sends; leave them out rather than fail the build.
            skipped.push(format!("{file}: {e}"));
            let _ = last_err;
            continue;
        }
        compilers.push(c);
    }
    // One set with each file once: the same import compiled by two compilers may differ in detail, and a
    // descriptor pool refuses two different files of one name.
    let mut seen = std::collections::BTreeSet::new();
    let mut set = compilers[0].file_descriptor_set();
    set.file.retain(|f| seen.insert(f.name().to_owned()));
    for c in &compilers[1..] {
        let more = c.file_descriptor_set();
        set.file.extend(
            more.file
                .into_iter()
                .filter(|f| seen.insert(f.name().to_owned())),
        );
    }
    let bytes = prost::Message::encode_to_vec(&set);
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("envoy_descriptors.bin");
    fs::write(&out, bytes).expect("write descriptor set");
    let skipped_out = out.with_file_name("envoy_descriptors_skipped.txt");
    fs::write(&skipped_out, skipped.join("\n")).expect("write skipped list");
}

/// Relative paths (from `root`) of the `.proto` files under `dir`.
fn collect_protos(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_protos(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "proto") {
            let rel = path.strip_prefix(root).expect("under root");
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}

/// The directory of the `envoy-types` package this build resolves to.
fn envoy_types_dir() -> PathBuf {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"))
        .join("Cargo.toml");
    println!("cargo:rerun-if-changed=Cargo.lock");
    let target = env::var("TARGET").expect("TARGET");
    // Offline and for the build target only: exactly the packages this build downloaded (other platforms'
    // dependencies may be missing from the cache).
    let output = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline"])
        .arg("--filter-platform")
        .arg(&target)
        .arg("--manifest-path")
        .arg(&manifest)
        .output()
        .expect("run cargo metadata");
    if !output.status.success() {
        panic!(
            "cargo metadata failed (set RUDDER_ENVOY_PROTO_DIR): {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata JSON");
    let packages = meta["packages"].as_array().expect("packages");
    let pkg = packages
        .iter()
        .find(|p| p["name"] == "envoy-types")
        .expect("envoy-types in cargo metadata");
    let manifest_path = pkg["manifest_path"].as_str().expect("manifest_path");
    Path::new(manifest_path)
        .parent()
        .expect("package dir")
        .to_path_buf()
}
