//! The `proxy.istio.io/config` pod annotation: a YAML ProxyConfig that overrides the mesh's `defaultConfig` for
//! one workload, as istiod's injector reads it. rudder honours the fields a stock Envoy sidecar can act on
//! without istio-agent:
//!
//! | field                              | injected as                                                         |
//! |------------------------------------|---------------------------------------------------------------------|
//! | `concurrency`                      | Envoy `--concurrency` (0: omitted, Envoy uses every core)           |
//! | `drainDuration`                    | Envoy `--drain-time-s` (with `--drain-strategy immediate`, as Istio) |
//! | `terminationDrainDuration`         | a `preStop` sleep: Envoy keeps serving that long after termination  |
//! | `proxyMetadata`                    | environment of the `istio-proxy` container                          |
//! | `holdApplicationUntilProxyStarts`  | Envoy as a native sidecar (init container, `restartPolicy: Always`) |
//! |                                    | with a startup probe on `/healthz/ready`: apps start once it is ready |
//!
//! Other ProxyConfig fields are accepted and ignored. An annotation that is not valid YAML of this shape is
//! logged and ignored: the pod is injected with the defaults rather than refused.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::pod::Template;
use crate::config::istio::common;

/// The annotation.
pub const ANNOTATION: &str = "proxy.istio.io/config";

/// The fields of the annotation rudder acts on; absent fields keep the template's value.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Overrides {
    /// Envoy worker threads.
    pub concurrency: Option<u32>,
    /// Envoy's drain time on listener changes and shutdown.
    pub drain_duration: Option<common::Duration>,
    /// How long the proxy keeps serving after the pod starts terminating.
    pub termination_drain_duration: Option<common::Duration>,
    /// Extra environment of the proxy container (merged over the mesh's).
    #[serde(default)]
    pub proxy_metadata: BTreeMap<String, String>,
    /// Start the app only once the proxy is ready.
    pub hold_application_until_proxy_starts: Option<bool>,
}

/// The proxy settings of one pod: the template's, with the annotation applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    /// Envoy `--concurrency`; 0 omits the flag.
    pub concurrency: u32,
    /// Envoy `--drain-time-s`.
    pub drain_duration: Duration,
    /// `preStop` sleep of the proxy container.
    pub termination_drain_duration: Duration,
    /// Environment added to the proxy container.
    pub proxy_metadata: BTreeMap<String, String>,
    /// Inject Envoy as a native sidecar that holds the app until ready.
    pub hold_application: bool,
}

/// Parses the annotation's value.
pub fn parse(value: &str) -> Result<Overrides, String> {
    let v = crate::config::parse::yaml_value(value)?;
    if v.is_null() {
        return Ok(Overrides::default());
    }
    serde_json::from_value(v).map_err(|e| e.to_string())
}

/// The effective settings for a pod with `annotations` (a bad annotation is logged, naming `pod`, and ignored).
pub fn effective(
    template: &Template,
    annotations: &BTreeMap<String, String>,
    pod: &str,
) -> Effective {
    let overrides = match annotations.get(ANNOTATION).map(|v| parse(v)) {
        Some(Ok(o)) => o,
        Some(Err(e)) => {
            tracing::warn!(%pod, error = %e, "ignoring invalid {ANNOTATION} annotation");
            Overrides::default()
        }
        None => Overrides::default(),
    };
    let mut proxy_metadata = template.proxy_metadata.clone();
    proxy_metadata.extend(overrides.proxy_metadata);
    Effective {
        concurrency: overrides.concurrency.unwrap_or(template.concurrency),
        drain_duration: overrides
            .drain_duration
            .map_or(template.drain_duration, common::Duration::get),
        termination_drain_duration: overrides
            .termination_drain_duration
            .map_or(template.termination_drain_duration, common::Duration::get),
        proxy_metadata,
        hold_application: overrides
            .hold_application_until_proxy_starts
            .unwrap_or(template.hold_application_until_proxy_starts),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(v: &str) -> BTreeMap<String, String> {
        [(ANNOTATION.to_owned(), v.to_owned())].into()
    }

    #[test]
    fn annotation_overrides_the_template_field_by_field() {
        let t = Template::default();
        let base = effective(&t, &BTreeMap::new(), "shop/web");
        assert_eq!(base.concurrency, 2);
        assert_eq!(base.drain_duration, Duration::from_secs(45));
        assert_eq!(base.termination_drain_duration, Duration::from_secs(5));
        assert!(!base.hold_application);

        let e = effective(
            &t,
            &ann(
                "concurrency: 4\ndrainDuration: 20s\nterminationDrainDuration: 1m\n\
                  proxyMetadata: {ISTIO_META_DNS_CAPTURE: \"true\"}\n\
                  holdApplicationUntilProxyStarts: true\ntracing: {sampling: 10}\n",
            ),
            "shop/web",
        );
        assert_eq!(e.concurrency, 4);
        assert_eq!(e.drain_duration, Duration::from_secs(20));
        assert_eq!(e.termination_drain_duration, Duration::from_secs(60));
        assert_eq!(e.proxy_metadata["ISTIO_META_DNS_CAPTURE"], "true");
        assert!(e.hold_application);

        // Only what is set changes.
        let e = effective(&t, &ann("concurrency: 0"), "shop/web");
        assert_eq!(
            e,
            Effective {
                concurrency: 0,
                ..base.clone()
            }
        );
    }

    #[test]
    fn invalid_annotations_are_reported_and_ignored() {
        assert!(parse("concurrency: many").is_err());
        assert!(parse("drainDuration: -1s").is_err());
        assert!(parse("[1, 2").is_err());
        let t = Template::default();
        assert_eq!(
            effective(&t, &ann("concurrency: many"), "shop/web"),
            effective(&t, &BTreeMap::new(), "shop/web")
        );
        assert_eq!(parse("").unwrap(), Overrides::default());
    }
}
