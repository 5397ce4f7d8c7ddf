//! The checked-in `crds/` is exactly what `rudder crds` generates, every CRD is structural, and every property
//! path of Istio's published CRDs (`../shared/istio/crd-all.gen.yaml`) exists in ours with the same group,
//! versions, kind, short names and scope.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use rudder::config::Kind;
use rudder::config::parse::yaml_value;
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every non-empty document of a multi-document YAML file.
fn docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines().chain(std::iter::once("---")) {
        if line.trim_end() == "---" {
            if !cur.trim().is_empty() {
                let v = yaml_value(&cur).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                if !v.is_null() {
                    out.push(v);
                }
            }
            cur.clear();
        } else {
            cur.push_str(line);
            cur.push('\n');
        }
    }
    out
}

fn ours() -> BTreeMap<String, Value> {
    let dir = repo().join("crds");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        for d in docs(&path) {
            out.insert(d["metadata"]["name"].as_str().unwrap().to_string(), d);
        }
    }
    out
}

#[test]
fn checked_in_crds_are_current() {
    let tmp = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_rudder"))
        .args(["crds", "--out-dir"])
        .arg(tmp.path())
        .status()
        .unwrap();
    assert!(status.success());
    let list = |d: &Path| -> BTreeSet<String> {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let (want, have) = (list(tmp.path()), list(&repo().join("crds")));
    assert_eq!(
        want, have,
        "crds/ files differ: run `rudder crds --out-dir crds`"
    );
    for f in &want {
        let a = std::fs::read_to_string(tmp.path().join(f)).unwrap();
        let b = std::fs::read_to_string(repo().join("crds").join(f)).unwrap();
        assert!(
            a == b,
            "crds/{f} is stale: run `rudder crds --out-dir crds`"
        );
    }
    // Stdout carries the same CRDs.
    let out = Command::new(env!("CARGO_BIN_EXE_rudder"))
        .arg("crds")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.matches("kind: CustomResourceDefinition").count(),
        want.len()
    );
}

/// Structural-schema rules the API server enforces that schemars output would break.
fn check_structural(v: &Value, path: &str, errors: &mut Vec<String>) {
    let Value::Object(m) = v else {
        errors.push(format!("{path}: not an object schema"));
        return;
    };
    for banned in [
        "$ref", "$defs", "anyOf", "oneOf", "allOf", "const", "default", "$schema", "title",
    ] {
        if m.contains_key(banned) {
            errors.push(format!("{path}: {banned}"));
        }
    }
    let typed = m.contains_key("type")
        || m.contains_key("x-kubernetes-preserve-unknown-fields")
        || m.contains_key("x-kubernetes-int-or-string");
    if !typed {
        errors.push(format!("{path}: no type"));
    }
    if m.contains_key("properties") && m.contains_key("additionalProperties") {
        errors.push(format!("{path}: properties and additionalProperties"));
    }
    if let Some(Value::Object(props)) = m.get("properties") {
        for (k, p) in props {
            check_structural(p, &format!("{path}.{k}"), errors);
        }
    }
    if let Some(i) = m.get("items") {
        check_structural(i, &format!("{path}[]"), errors);
    }
    if let Some(a @ Value::Object(_)) = m.get("additionalProperties") {
        check_structural(a, &format!("{path}{{}}"), errors);
    }
}

#[test]
fn crds_are_structural_and_cover_the_kind_table() {
    let crds = ours();
    let mut errors = Vec::new();
    for (name, crd) in &crds {
        assert_eq!(crd["apiVersion"], "apiextensions.k8s.io/v1");
        for v in crd["spec"]["versions"].as_array().unwrap() {
            check_structural(
                &v["schema"]["openAPIV3Schema"],
                &format!("{name} {}", v["name"]),
                &mut errors,
            );
        }
    }
    assert!(errors.is_empty(), "not structural:\n{}", errors.join("\n"));
    for &kind in Kind::ALL {
        if kind.group().is_empty() || kind.group() == "apps" || kind.group() == "discovery.k8s.io" {
            continue;
        }
        let name = format!("{}.{}", kind.plural(), kind.group());
        let crd = crds.get(&name).unwrap_or_else(|| panic!("no CRD {name}"));
        let versions: Vec<&str> = crd["spec"]["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert_eq!(versions, kind.versions(), "{name}");
    }
}

/// Every property path under `spec` (`a.b[].c{}`), with `[]` for list items and `{}` for map values.
fn paths(schema: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    if let Some(Value::Object(props)) = schema.get("properties") {
        for (k, v) in props {
            let p = format!("{prefix}.{k}");
            out.insert(p.clone());
            paths(v, &p, out);
        }
    }
    if let Some(items) = schema.get("items") {
        paths(items, &format!("{prefix}[]"), out);
    }
    if let Some(a @ Value::Object(_)) = schema.get("additionalProperties") {
        paths(a, &format!("{prefix}{{}}"), out);
    }
}

/// Whether `path` (as produced by `paths`) exists in `schema`, or falls under a free-form part of it.
fn has_path(schema: &Value, path: &str) -> bool {
    let mut cur = schema;
    let mut rest = path;
    while !rest.is_empty() {
        if cur.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
            && cur.get("properties").is_none()
        {
            return true;
        }
        if let Some(r) = rest.strip_prefix("[]") {
            let Some(i) = cur.get("items") else {
                return false;
            };
            cur = i;
            rest = r;
        } else if let Some(r) = rest.strip_prefix("{}") {
            let Some(a) = cur.get("additionalProperties") else {
                return false;
            };
            cur = a;
            rest = r;
        } else if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[', '{']).unwrap_or(r.len());
            let (name, r) = r.split_at(end);
            match cur.get("properties").and_then(|p| p.get(name)) {
                Some(p) => cur = p,
                None => {
                    return cur.get("x-kubernetes-preserve-unknown-fields")
                        == Some(&Value::Bool(true));
                }
            }
            rest = r;
        } else {
            return false;
        }
    }
    true
}

#[test]
fn every_istio_property_path_exists_in_ours() {
    let ours = ours();
    let istio = docs(&repo().join("../shared/istio/crd-all.gen.yaml"));
    let mut missing = Vec::new();
    let mut compared = 0;
    for crd in istio
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
    {
        let name = crd["metadata"]["name"].as_str().unwrap();
        let spec = &crd["spec"];
        let group = spec["group"].as_str().unwrap();
        let kind = spec["names"]["kind"].as_str().unwrap();
        let first = spec["versions"][0]["name"].as_str().unwrap();
        if Kind::from_api(&format!("{group}/{first}"), kind).is_none() {
            // Kinds rudder does not serve (WasmPlugin, ProxyConfig, TrafficExtension).
            continue;
        }
        let mine = ours
            .get(name)
            .unwrap_or_else(|| panic!("Istio serves {name}; we have no CRD"));
        let ms = &mine["spec"];
        assert_eq!(ms["group"], spec["group"], "{name} group");
        assert_eq!(ms["scope"], spec["scope"], "{name} scope");
        assert_eq!(ms["names"]["kind"], spec["names"]["kind"], "{name} kind");
        assert_eq!(
            ms["names"]["plural"], spec["names"]["plural"],
            "{name} plural"
        );
        assert_eq!(
            ms["names"]["shortNames"], spec["names"]["shortNames"],
            "{name} shortNames"
        );
        let version_set = |s: &Value| -> BTreeSet<String> {
            s["versions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["name"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(version_set(ms), version_set(spec), "{name} versions");
        for v in spec["versions"].as_array().unwrap() {
            let vname = v["name"].as_str().unwrap();
            let theirs = &v["schema"]["openAPIV3Schema"]["properties"]["spec"];
            let mine_v = ms["versions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["name"] == vname)
                .unwrap();
            let mine_spec = &mine_v["schema"]["openAPIV3Schema"]["properties"]["spec"];
            let mut ps = BTreeSet::new();
            paths(theirs, "spec", &mut ps);
            for p in ps {
                compared += 1;
                if !has_path(mine_spec, p.strip_prefix("spec").unwrap()) {
                    missing.push(format!("{name} {vname}: {p}"));
                }
            }
        }
    }
    assert!(compared > 1000, "only {compared} paths compared");
    assert!(
        missing.is_empty(),
        "{} paths missing:\n{}",
        missing.len(),
        missing.join("\n")
    );
}
