//! `rudder kube-inject -f FILE|-`: injects the sidecar into the workloads of a manifest (istioctl kube-inject).
//!
//! Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs and CronJobs get their pod template injected;
//! every other document passes through unchanged. Already-injected and opted-out templates are left alone.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::Value;

use crate::config::parse::yaml_value;
use crate::inject::pod::{self, Template};

/// Arguments of `rudder kube-inject`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Manifest to inject (`-` for stdin).
    #[arg(short = 'f', long = "filename")]
    file: PathBuf,
    /// Sidecar image.
    #[arg(long, default_value = pod::DEFAULT_PROXY_IMAGE)]
    proxy_image: String,
    /// Init container image (runs `rudder iptables apply`).
    #[arg(long, default_value = pod::DEFAULT_INIT_IMAGE)]
    init_image: String,
    /// Where the sidecar finds rudder's xDS server.
    #[arg(long, default_value = crate::envoy::bootstrap::DEFAULT_XDS_ADDRESS)]
    xds_address: String,
}

/// Runs `rudder kube-inject`.
pub fn run(args: Args) -> ExitCode {
    let Args {
        file,
        proxy_image,
        init_image,
        xds_address,
    } = args;
    let mut text = String::new();
    let read = if file.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(&file).map(|t| text = t)
    };
    if let Err(e) = read {
        eprintln!("rudder kube-inject: {}: {e}", file.display());
        return ExitCode::from(2);
    }
    let template = Template {
        proxy_image,
        init_image,
        xds_address,
        ..Template::default()
    };
    match inject_manifest(&text, &template) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rudder kube-inject: {}: {e}", file.display());
            ExitCode::FAILURE
        }
    }
}

/// Injects every workload of a multi-document manifest; the output is multi-document YAML.
pub fn inject_manifest(text: &str, template: &Template) -> Result<String, String> {
    let mut out = Vec::new();
    for (i, doc) in split(text).into_iter().enumerate() {
        let mut value = yaml_value(doc).map_err(|e| format!("document {}: {e}", i + 1))?;
        if value.is_null() {
            continue;
        }
        inject_value(&mut value, template);
        out.push(serde_saphyr::to_string(&value).map_err(|e| e.to_string())?);
    }
    Ok(out.join("---\n"))
}

/// Injects one object in place when it is a workload.
fn inject_value(obj: &mut Value, template: &Template) {
    let namespace = obj["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let kind = obj["kind"].as_str().unwrap_or_default().to_string();
    let template_path: &[&str] = match kind.as_str() {
        "Pod" => {
            match pod::inject_pod(obj, None, template) {
                Ok(injected) => *obj = injected,
                Err(skip) => tracing::info!(kind, reason = %skip, "not injected"),
            }
            return;
        }
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        "List" => {
            if let Some(items) = obj["items"].as_array_mut() {
                for item in items {
                    inject_value(item, template);
                }
            }
            return;
        }
        _ => return,
    };
    let mut t = &mut *obj;
    for p in template_path {
        t = &mut t[*p];
    }
    if !t.is_object() {
        return;
    }
    let mut meta = t
        .get("metadata")
        .cloned()
        .unwrap_or_else(|| serde_json::json!({}));
    let mut spec = t
        .get("spec")
        .cloned()
        .unwrap_or_else(|| serde_json::json!({}));
    match pod::inject_template(&mut meta, &mut spec, &namespace, template) {
        Ok(()) => {
            t["metadata"] = meta;
            t["spec"] = spec;
        }
        Err(skip) => tracing::info!(kind, reason = %skip, "not injected"),
    }
}

/// Splits a YAML stream on `---` lines.
fn split(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim_end();
        if t == "---" || t.starts_with("--- ") {
            docs.push(&text[start..offset]);
            start = offset + line.len();
        }
        offset += line.len();
    }
    docs.push(&text[start..]);
    docs.into_iter()
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_are_injected_other_kinds_pass_through() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80}]}\n---\n\
            apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: c}\nspec:\n  schedule: '* * * * *'\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          containers: [{name: c, image: busybox}]\n";
        let out = inject_manifest(text, &Template::default()).unwrap();
        let docs: Vec<Value> = split(&out)
            .into_iter()
            .map(|d| yaml_value(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 2);
        assert_eq!(
            docs[0]["spec"],
            serde_json::json!({"ports": [{"port": 80}]})
        );
        let c = &docs[1]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"];
        assert_eq!(c[1]["name"], "istio-proxy");
        // Injecting the output again changes nothing.
        assert_eq!(inject_manifest(&out, &Template::default()).unwrap(), out);
    }
}
