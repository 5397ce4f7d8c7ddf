//! Validation rules for the Kubernetes objects the registry reads (the API server checks these in a cluster;
//! the file source has no API server, so rudder checks what it relies on).

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Report, check_port};

pub(super) fn service(svc: &Service, r: &mut Report) {
    let Some(spec) = &svc.spec else { return };
    let ports = spec.ports.as_deref().unwrap_or_default();
    let mut names = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        if let Err(e) = check_port(p.port) {
            r.err(format!("{path}.port"), e);
        }
        match &p.target_port {
            Some(IntOrString::Int(n)) => {
                if let Err(e) = check_port(*n) {
                    r.err(format!("{path}.targetPort"), e);
                }
            }
            Some(IntOrString::String(s)) if s.is_empty() => {
                r.err(format!("{path}.targetPort"), "must not be empty")
            }
            _ => {}
        }
        if let Some(proto) = &p.protocol
            && !matches!(proto.as_str(), "TCP" | "UDP" | "SCTP")
        {
            r.err(
                format!("{path}.protocol"),
                format!("{proto:?} must be one of TCP, UDP, SCTP"),
            );
        }
        let name = p.name.as_deref().unwrap_or_default();
        if ports.len() > 1 && name.is_empty() {
            r.err(
                format!("{path}.name"),
                "required when a Service has more than one port",
            );
        }
        if !name.is_empty() && !names.insert(name) {
            r.err(
                format!("{path}.name"),
                format!("duplicate port name {name:?}"),
            );
        }
    }
    if let Some(ip) = spec.cluster_ip.as_deref()
        && !ip.is_empty()
        && ip != "None"
        && ip.parse::<IpAddr>().is_err()
    {
        r.err(
            "spec.clusterIP",
            format!("{ip:?} is not an IP address, \"None\" or empty"),
        );
    }
}

pub(super) fn endpoints(ep: &Endpoints, r: &mut Report) {
    for (i, subset) in ep.subsets.iter().flatten().enumerate() {
        for (field, addrs) in [
            ("addresses", &subset.addresses),
            ("notReadyAddresses", &subset.not_ready_addresses),
        ] {
            for (j, a) in addrs.iter().flatten().enumerate() {
                if a.ip.parse::<IpAddr>().is_err() {
                    r.err(
                        format!("subsets[{i}].{field}[{j}].ip"),
                        format!("{:?} is not an IP address", a.ip),
                    );
                }
            }
        }
        for (j, p) in subset.ports.iter().flatten().enumerate() {
            if let Err(e) = check_port(p.port) {
                r.err(format!("subsets[{i}].ports[{j}].port"), e);
            }
        }
    }
}

pub(super) fn endpoint_slice(slice: &EndpointSlice, r: &mut Report) {
    if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6" | "FQDN") {
        r.err(
            "addressType",
            format!("{:?} must be one of IPv4, IPv6, FQDN", slice.address_type),
        );
    }
    for (i, ep) in slice.endpoints.iter().flatten().enumerate() {
        if ep.addresses.is_empty() {
            r.err(
                format!("endpoints[{i}].addresses"),
                "at least one address is required",
            );
        }
        if slice.address_type != "FQDN" {
            for (j, a) in ep.addresses.iter().enumerate() {
                if a.parse::<IpAddr>().is_err() {
                    r.err(
                        format!("endpoints[{i}].addresses[{j}]"),
                        format!("{a:?} is not an IP address"),
                    );
                }
            }
        }
    }
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        if let Some(port) = p.port
            && let Err(e) = check_port(port)
        {
            r.err(format!("ports[{i}].port"), e);
        }
    }
}

pub(super) fn pod(pod: &Pod, r: &mut Report) {
    if let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref())
        && !ip.is_empty()
        && ip.parse::<IpAddr>().is_err()
    {
        r.err("status.podIP", format!("{ip:?} is not an IP address"));
    }
    for (i, c) in pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .enumerate()
    {
        for (j, p) in c.ports.iter().flatten().enumerate() {
            if let Err(e) = check_port(p.container_port) {
                r.err(format!("spec.containers[{i}].ports[{j}].containerPort"), e);
            }
        }
    }
}
