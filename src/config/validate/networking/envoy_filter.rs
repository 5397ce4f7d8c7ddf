//! EnvoyFilter rules: every patch needs a target, an operation that fits it, and a value.

use super::*;

/// EnvoyFilter: one way of selecting workloads, and for each patch a target, an operation and a value.
pub(in crate::config::validate) fn envoy_filter(spec: &EnvoyFilterSpec, r: &mut Report) {
    if spec.workload_selector.is_some() && !spec.target_refs.is_empty() {
        r.err(
            "spec",
            "only one of workloadSelector or targetRefs may be set",
        );
    }
    if let Some(ws) = &spec.workload_selector {
        selector_labels(&ws.labels, "spec.workloadSelector.labels", r);
    }
    for (i, t) in spec.target_refs.iter().enumerate() {
        let path = format!("spec.targetRefs[{i}]");
        if t.kind.is_empty() {
            r.err(format!("{path}.kind"), "required");
        }
        if t.name.is_empty() {
            r.err(format!("{path}.name"), "required");
        }
        if !t.namespace.is_empty() {
            r.err(
                format!("{path}.namespace"),
                "cross-namespace references are not supported; leave namespace empty",
            );
        }
    }
    for (i, cp) in spec.config_patches.iter().enumerate() {
        config_patch(cp, &format!("spec.configPatches[{i}]"), r);
    }
}

fn config_patch(cp: &EnvoyConfigObjectPatch, path: &str, r: &mut Report) {
    let apply_to = cp.apply_to.filter(|a| *a != ApplyTo::Invalid);
    if apply_to.is_none() {
        r.err(format!("{path}.applyTo"), "required");
    }
    match &cp.patch {
        None => r.err(format!("{path}.patch"), "required"),
        Some(patch) => match patch.operation.filter(|o| *o != PatchOperation::Invalid) {
            None => r.err(format!("{path}.patch.operation"), "required"),
            Some(op) => {
                if op != PatchOperation::Remove && patch.value.is_none() {
                    r.err(
                        format!("{path}.patch.value"),
                        format!("required for operation {}", enum_name(&op)),
                    );
                }
                if let Some(apply_to) = apply_to {
                    patch_target(op, apply_to, &format!("{path}.patch.operation"), r);
                }
            }
        },
    }
    if let Some(m) = &cp.r#match {
        let p = format!("{path}.match");
        if m.waypoint.is_some() && m.context != Some(PatchContext::Waypoint) {
            r.err(
                format!("{p}.waypoint"),
                "only allowed when context is WAYPOINT",
            );
        }
        if let Some(v) = m.proxy.as_ref().and_then(|px| px.proxy_version.as_ref())
            && let Err(e) = check_regex(v)
        {
            r.err(format!("{p}.proxy.proxyVersion"), e);
        }
        let objects: Vec<&str> = [
            (m.listener.is_some(), "listener"),
            (m.route_configuration.is_some(), "routeConfiguration"),
            (m.cluster.is_some(), "cluster"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        if objects.len() > 1 {
            r.err(
                &p,
                format!(
                    "only one of listener, routeConfiguration or cluster may be set (found {})",
                    objects.join(" and ")
                ),
            );
        } else if let (Some(apply_to), Some(object)) = (apply_to, objects.first()) {
            let expected = match apply_to {
                ApplyTo::Listener
                | ApplyTo::FilterChain
                | ApplyTo::NetworkFilter
                | ApplyTo::HttpFilter
                | ApplyTo::ListenerFilter => Some("listener"),
                ApplyTo::RouteConfiguration | ApplyTo::VirtualHost | ApplyTo::HttpRoute => {
                    Some("routeConfiguration")
                }
                ApplyTo::Cluster => Some("cluster"),
                _ => None,
            };
            if let Some(expected) = expected.filter(|e| e != object) {
                r.err(
                    format!("{p}.{object}"),
                    format!(
                        "applyTo {} needs a {expected} match, not a {object} match",
                        enum_name(&apply_to)
                    ),
                );
            }
        }
        if let Some(l) = &m.listener {
            optional_port(l.port_number, &format!("{p}.listener.portNumber"), r);
            if let Some(fc) = &l.filter_chain {
                optional_port(
                    fc.destination_port,
                    &format!("{p}.listener.filterChain.destinationPort"),
                    r,
                );
            }
        }
        if let Some(rc) = &m.route_configuration {
            optional_port(
                rc.port_number,
                &format!("{p}.routeConfiguration.portNumber"),
                r,
            );
        }
        if let Some(c) = &m.cluster {
            optional_port(c.port_number, &format!("{p}.cluster.portNumber"), r);
        }
        if let Some(w) = &m.waypoint {
            optional_port(w.port_number, &format!("{p}.waypoint.portNumber"), r);
        }
    }
}

/// Which operations make sense for which objects: inserting positions only exists in ordered lists.
fn patch_target(op: PatchOperation, apply_to: ApplyTo, path: &str, r: &mut Report) {
    use ApplyTo::*;
    use PatchOperation::*;
    let ok = match op {
        InsertBefore | InsertAfter | InsertFirst => matches!(
            apply_to,
            NetworkFilter | HttpFilter | HttpRoute | ListenerFilter
        ),
        Replace => matches!(apply_to, NetworkFilter | HttpFilter),
        _ => true,
    };
    if !ok {
        let targets = if op == Replace {
            "NETWORK_FILTER or HTTP_FILTER"
        } else {
            "NETWORK_FILTER, HTTP_FILTER, HTTP_ROUTE or LISTENER_FILTER"
        };
        r.err(
            path,
            format!(
                "{} applies only to {targets}, not {}",
                enum_name(&op),
                enum_name(&apply_to)
            ),
        );
    }
}
