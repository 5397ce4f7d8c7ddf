//! Publishes the root certificate into the cluster, as istiod does:
//!
//! - ConfigMap `istio-ca-root-cert` (key `root-cert.pem`) in every namespace, which injected pods mount to
//!   verify the control plane; created when a namespace appears, updated when the root changes;
//! - `caBundle` of the injection and validation webhook configurations, so the API server trusts the webhook
//!   serving certificate rudder issues from the same CA.
//!
//! It never fights another writer: an object is written only when its content differs, and a failed or
//! conflicting write is retried after [`RETRY`]. A missing webhook configuration is logged (once per root),
//! not fatal; it is looked for again after [`RETRY`]. Everything is re-checked every [`RESYNC`], so a deleted
//! ConfigMap comes back.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::watch;

/// Name of the per-namespace root certificate ConfigMap.
pub const ROOT_CONFIGMAP: &str = "istio-ca-root-cert";
/// Its key.
pub const ROOT_KEY: &str = "root-cert.pem";
/// istiod's injector webhook configuration.
pub const INJECTOR_WEBHOOK: &str = "istio-sidecar-injector";
/// Retry delay after a failed write or a missing webhook configuration.
pub const RETRY: Duration = Duration::from_secs(10);
/// Full re-check period.
pub const RESYNC: Duration = Duration::from_secs(300);

/// istiod's validation webhook configuration for the default revision in `root_namespace`.
pub fn validator_webhook(root_namespace: &str) -> String {
    format!("istio-validator-{root_namespace}")
}

/// What to publish where.
#[derive(Clone, Debug)]
pub struct Targets {
    /// MutatingWebhookConfigurations to patch.
    pub mutating: Vec<String>,
    /// ValidatingWebhookConfigurations to patch.
    pub validating: Vec<String>,
}

impl Targets {
    /// istiod's names for `root_namespace` (see `deploy/webhooks.yaml`).
    pub fn istio(root_namespace: &str) -> Self {
        Targets {
            mutating: vec![INJECTOR_WEBHOOK.to_owned()],
            validating: vec![validator_webhook(root_namespace)],
        }
    }
}

/// Outcome of one publishing step.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// The object holds the root now (written or already so).
    Done,
    /// The object does not exist (webhook configurations only).
    Missing,
    /// A write failed; try again later.
    Retry,
}

/// Keeps every namespace's ConfigMap and the webhook configurations' `caBundle` equal to the latest root on
/// `roots`, for the namespaces on `namespaces`. Runs until `roots` closes.
pub async fn run(
    client: kube::Client,
    targets: Targets,
    mut roots: watch::Receiver<String>,
    mut namespaces: watch::Receiver<BTreeSet<String>>,
) {
    // Which root each namespace's ConfigMap and each webhook configuration is known to hold.
    let mut cms: BTreeMap<String, String> = BTreeMap::new();
    let mut hooks: BTreeMap<String, String> = BTreeMap::new();
    let mut resync = tokio::time::Instant::now() + RESYNC;
    loop {
        let root = roots.borrow_and_update().clone();
        let nss = namespaces.borrow_and_update().clone();
        let mut retry = false;
        if tokio::time::Instant::now() >= resync {
            cms.clear();
            hooks.clear();
            resync = tokio::time::Instant::now() + RESYNC;
        }
        cms.retain(|ns, _| nss.contains(ns));
        for ns in &nss {
            if cms.get(ns) == Some(&root) {
                continue;
            }
            match ensure_configmap(&client, ns, &root).await {
                Step::Done => {
                    cms.insert(ns.clone(), root.clone());
                }
                _ => retry = true,
            }
        }
        let all = targets
            .mutating
            .iter()
            .map(|n| (true, n))
            .chain(targets.validating.iter().map(|n| (false, n)));
        for (mutating, name) in all {
            let key = format!("{mutating}/{name}");
            if hooks.get(&key) == Some(&root) {
                continue;
            }
            let step = if mutating {
                patch_ca_bundle::<MutatingWebhookConfiguration>(&client, name, &root).await
            } else {
                patch_ca_bundle::<ValidatingWebhookConfiguration>(&client, name, &root).await
            };
            match step {
                Step::Done => {
                    hooks.insert(key, root.clone());
                }
                Step::Missing => {
                    // Logged once per root: the configuration may be installed after rudder.
                    if hooks.insert(key.clone(), format!("missing:{root}"))
                        != Some(format!("missing:{root}"))
                    {
                        tracing::warn!(webhook = %name, "webhook configuration not found; caBundle not patched (will keep looking)");
                    }
                    retry = true;
                }
                Step::Retry => retry = true,
            }
        }
        let wait = if retry { RETRY } else { RESYNC };
        tokio::select! {
            r = roots.changed() => if r.is_err() { return },
            r = namespaces.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Creates or updates `istio-ca-root-cert` in `namespace` to hold `root`; no write when it already does.
async fn ensure_configmap(client: &kube::Client, namespace: &str, root: &str) -> Step {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let current = match api.get_opt(ROOT_CONFIGMAP).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(%namespace, error = %e, "reading ConfigMap {ROOT_CONFIGMAP} failed");
            return Step::Retry;
        }
    };
    let result = match current {
        Some(cm)
            if cm
                .data
                .as_ref()
                .and_then(|d| d.get(ROOT_KEY))
                .map(String::as_str)
                == Some(root) =>
        {
            return Step::Done;
        }
        Some(mut cm) => {
            // Replace with the read resourceVersion: a concurrent writer makes this a 409, retried later.
            cm.data
                .get_or_insert_with(Default::default)
                .insert(ROOT_KEY.to_owned(), root.to_owned());
            api.replace(ROOT_CONFIGMAP, &PostParams::default(), &cm)
                .await
                .map(|_| "updated")
        }
        None => api
            .create(&PostParams::default(), &root_configmap(namespace, root))
            .await
            .map(|_| "created"),
    };
    match result {
        Ok(what) => {
            tracing::info!(%namespace, "{what} ConfigMap {ROOT_CONFIGMAP}");
            Step::Done
        }
        Err(e) => {
            tracing::warn!(%namespace, error = %e, "writing ConfigMap {ROOT_CONFIGMAP} failed; will retry");
            Step::Retry
        }
    }
}

/// The ConfigMap istiod writes in every namespace.
pub fn root_configmap(namespace: &str, root: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(ROOT_CONFIGMAP.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some([("istio.io/config".to_owned(), "true".to_owned())].into()),
            ..Default::default()
        },
        data: Some([(ROOT_KEY.to_owned(), root.to_owned())].into()),
        ..Default::default()
    }
}

/// The parts of the two webhook configuration types the patch needs.
trait WebhookConfiguration:
    kube::Resource<Scope = kube::core::ClusterResourceScope, DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + serde::Serialize
{
    /// The `caBundle` of every webhook.
    fn bundles(&mut self) -> Vec<&mut Option<ByteString>>;
    /// The `webhooks` list as JSON.
    fn webhooks_json(&self) -> serde_json::Value;
}

impl WebhookConfiguration for MutatingWebhookConfiguration {
    fn bundles(&mut self) -> Vec<&mut Option<ByteString>> {
        self.webhooks
            .iter_mut()
            .flatten()
            .map(|w| &mut w.client_config.ca_bundle)
            .collect()
    }
    fn webhooks_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.webhooks).unwrap_or_default()
    }
}

impl WebhookConfiguration for ValidatingWebhookConfiguration {
    fn bundles(&mut self) -> Vec<&mut Option<ByteString>> {
        self.webhooks
            .iter_mut()
            .flatten()
            .map(|w| &mut w.client_config.ca_bundle)
            .collect()
    }
    fn webhooks_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.webhooks).unwrap_or_default()
    }
}

/// Sets `caBundle` of every webhook of configuration `name` to `root`, with one merge patch carrying the read
/// `resourceVersion` (so a concurrent edit of the webhooks makes it fail instead of being overwritten).
async fn patch_ca_bundle<W: WebhookConfiguration>(
    client: &kube::Client,
    name: &str,
    root: &str,
) -> Step {
    let api: Api<W> = Api::all(client.clone());
    let mut cfg = match api.get_opt(name).await {
        Ok(Some(c)) => c,
        Ok(None) => return Step::Missing,
        Err(e) => {
            tracing::warn!(webhook = %name, error = %e, "reading webhook configuration failed");
            return Step::Retry;
        }
    };
    let want = ByteString(root.as_bytes().to_vec());
    let mut changed = false;
    for bundle in cfg.bundles() {
        if bundle.as_ref() != Some(&want) {
            *bundle = Some(want.clone());
            changed = true;
        }
    }
    if !changed {
        return Step::Done;
    }
    let patch = json!({
        "metadata": {"resourceVersion": cfg.meta().resource_version},
        "webhooks": cfg.webhooks_json(),
    });
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            tracing::info!(webhook = %name, "patched caBundle");
            Step::Done
        }
        Err(e) => {
            tracing::warn!(webhook = %name, error = %e, "patching caBundle failed; will retry");
            Step::Retry
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_helpers::kube::{Fake, admission, core};

    const ROOT_A: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    const ROOT_B: &str = "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n";

    fn b64(s: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn fake() -> Fake {
        let fake = Fake::new(&[
            core("configmaps"),
            admission("mutatingwebhookconfigurations"),
            admission("validatingwebhookconfigurations"),
        ]);
        fake.put(
            &admission("mutatingwebhookconfigurations"),
            json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": INJECTOR_WEBHOOK},
                "webhooks": [
                  {"name": "namespace.sidecar-injector.istio.io", "sideEffects": "None",
                   "admissionReviewVersions": ["v1"],
                   "clientConfig": {"service": {"name": "istiod", "namespace": "istio-system", "path": "/inject"}}},
                  {"name": "rev.namespace.sidecar-injector.istio.io", "sideEffects": "None",
                   "admissionReviewVersions": ["v1"],
                   "clientConfig": {"service": {"name": "istiod", "namespace": "istio-system", "path": "/inject"}}}]}),
        );
        fake
    }

    fn cm_root(fake: &Fake, ns: &str) -> Option<String> {
        fake.get(&core("configmaps"), ns, ROOT_CONFIGMAP)
            .and_then(|c| c["data"][ROOT_KEY].as_str().map(str::to_owned))
    }

    fn bundles(fake: &Fake) -> Vec<String> {
        let w = fake
            .get(
                &admission("mutatingwebhookconfigurations"),
                "",
                INJECTOR_WEBHOOK,
            )
            .unwrap();
        w["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                h["clientConfig"]["caBundle"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned()
            })
            .collect()
    }

    const WAIT: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn configmaps_and_ca_bundle_follow_namespaces_and_the_root() {
        let fake = fake();
        // A namespace whose ConfigMap already holds the root, with a key of its own: left untouched.
        fake.put(
            &core("configmaps"),
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": ROOT_CONFIGMAP, "namespace": "ready"},
                   "data": {ROOT_KEY: ROOT_A, "extra": "kept"}}),
        );
        let (roots_tx, roots) = watch::channel(ROOT_A.to_owned());
        let (ns_tx, nss) =
            watch::channel(BTreeSet::from(["default".to_owned(), "ready".to_owned()]));
        let task = tokio::spawn(run(
            fake.client(),
            Targets::istio("istio-system"),
            roots,
            nss,
        ));

        assert!(
            fake.wait_for(WAIT, |f| cm_root(f, "default").as_deref() == Some(ROOT_A)
                && bundles(f) == [b64(ROOT_A), b64(ROOT_A)])
                .await,
            "writes: {:?}",
            fake.writes()
        );
        let cm = fake
            .get(&core("configmaps"), "default", ROOT_CONFIGMAP)
            .unwrap();
        assert_eq!(cm["metadata"]["labels"]["istio.io/config"], "true");
        // Nothing written where the content was already right.
        assert!(
            !fake
                .writes()
                .iter()
                .any(|w| w.contains("/namespaces/ready/")),
            "{:?}",
            fake.writes()
        );

        // A new namespace gets its ConfigMap.
        ns_tx.send_modify(|s| {
            s.insert("shop".to_owned());
        });
        assert!(
            fake.wait_for(WAIT, |f| cm_root(f, "shop").as_deref() == Some(ROOT_A))
                .await
        );

        // A new root replaces every copy, keeping other keys.
        roots_tx.send_replace(ROOT_B.to_owned());
        assert!(
            fake.wait_for(WAIT, |f| ["default", "ready", "shop"]
                .iter()
                .all(|ns| cm_root(f, ns).as_deref() == Some(ROOT_B))
                && bundles(f) == [b64(ROOT_B), b64(ROOT_B)])
                .await,
            "writes: {:?}",
            fake.writes()
        );
        let ready = fake
            .get(&core("configmaps"), "ready", ROOT_CONFIGMAP)
            .unwrap();
        assert_eq!(ready["data"]["extra"], "kept");
        let writes = fake.writes();
        assert_eq!(
            writes
                .iter()
                .filter(|w| w.starts_with("PATCH") && w.contains(INJECTOR_WEBHOOK))
                .count(),
            2,
            "one patch per root: {writes:?}"
        );
        // The validating configuration is missing: looked for, never written, and nothing failed because of it.
        assert!(
            !writes
                .iter()
                .any(|w| w.contains("validatingwebhookconfigurations"))
        );
        assert!(fake.requests().iter().any(|r| r.contains(
            "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/istio-validator-istio-system"
        )));
        assert!(!task.is_finished());
        task.abort();
    }
}
