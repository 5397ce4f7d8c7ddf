//! Locality-aware load balancing on a load assignment, relative to the proxy's own locality, as istiod applies a
//! DestinationRule's `localityLbSetting`: `distribute` rewrites locality weights, failover (default or `failover`
//! rules) assigns priorities by proximity, and `failoverPriority` ranks endpoints by matching labels.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::Locality;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;

use super::policy::u32v;
use crate::config::istio::networking::{LocalityDistribute, LocalityFailover, LocalityLbSetting};

/// `region/zone/subzone` → `Locality` (missing parts empty).
pub fn parse_locality(s: &str) -> Locality {
    let mut parts = s.splitn(3, '/');
    Locality {
        region: parts.next().unwrap_or_default().to_string(),
        zone: parts.next().unwrap_or_default().to_string(),
        sub_zone: parts.next().unwrap_or_default().to_string(),
    }
}

/// Whether `locality` matches a rule locality (`region/zone/subzone`, each part may be `*`; missing parts match
/// anything).
pub fn locality_match(locality: &Locality, rule: &str) -> bool {
    let r = parse_locality(rule);
    let part = |rule: &str, actual: &str, optional: bool| {
        rule == "*" || (optional && rule.is_empty()) || rule == actual
    };
    part(&r.region, &locality.region, false)
        && part(&r.zone, &locality.zone, true)
        && part(&r.sub_zone, &locality.sub_zone, true)
}

/// Proximity of an endpoint locality to the proxy: 0 same subzone, 1 same zone, 2 same region, 3 elsewhere.
pub fn lb_priority(proxy: &Locality, endpoint: &Locality) -> u32 {
    if proxy.region != endpoint.region {
        3
    } else if proxy.zone != endpoint.zone {
        2
    } else if proxy.sub_zone != endpoint.sub_zone {
        1
    } else {
        0
    }
}

/// Applies the setting to `cla`. Does nothing when the proxy has no locality. `enable_failover` is whether the
/// cluster has outlier detection (failover without it would never trigger).
pub fn apply(
    cla: &mut ClusterLoadAssignment,
    proxy: &Locality,
    setting: &LocalityLbSetting,
    enable_failover: bool,
) {
    if proxy.region.is_empty() {
        return;
    }
    if !setting.distribute.is_empty() {
        apply_distribute(cla, proxy, &setting.distribute);
    } else if enable_failover {
        apply_failover(cla, proxy, &setting.failover);
    }
}

/// The first `distribute` rule whose `from` matches the proxy sets each destination locality's share; localities
/// no `to` entry matches get no endpoints.
fn apply_distribute(
    cla: &mut ClusterLoadAssignment,
    proxy: &Locality,
    rules: &[LocalityDistribute],
) {
    let Some(rule) = rules
        .iter()
        .find(|r| locality_match(proxy, r.from.as_deref().unwrap_or("*")))
    else {
        return;
    };
    let mut unmatched: Vec<bool> = vec![true; cla.endpoints.len()];
    for (to, weight) in &rule.to {
        // index → original weight, for the groups this `to` entry claims
        let mut claimed: BTreeMap<usize, u32> = BTreeMap::new();
        for (i, group) in cla.endpoints.iter().enumerate() {
            let loc = group.locality.clone().unwrap_or_default();
            if unmatched[i] && locality_match(&loc, to) {
                unmatched[i] = false;
                claimed.insert(i, group.load_balancing_weight.map(|w| w.value).unwrap_or(1));
            }
        }
        // A wildcard `to` matching several localities splits its share by their own weights.
        let total: u32 = claimed.values().sum();
        for (i, original) in claimed {
            let share = f64::from(original) * f64::from(*weight) / f64::from(total.max(1));
            if share > 0.0 {
                cla.endpoints[i].load_balancing_weight = Some(u32v(share.ceil() as u32));
            }
        }
    }
    for (i, unmatched) in unmatched.into_iter().enumerate() {
        if unmatched {
            cla.endpoints[i].lb_endpoints.clear();
        }
    }
}

/// Priorities by proximity; a region failing over elsewhere only reaches the `to` region of its `failover` rule
/// (other regions drop one level further). Existing priorities (from `failoverPriority`) stay more significant.
/// Priorities are then renumbered densely from 0, as Envoy requires.
fn apply_failover(
    cla: &mut ClusterLoadAssignment,
    proxy: &Locality,
    failover: &[LocalityFailover],
) {
    let mut used = std::collections::BTreeSet::new();
    for group in &mut cla.endpoints {
        let loc = group.locality.clone().unwrap_or_default();
        let mut p = lb_priority(proxy, &loc);
        if p == 3
            && let Some(rule) = failover
                .iter()
                .find(|f| f.from.as_deref() == Some(proxy.region.as_str()))
            && rule.to.as_deref() != Some(loc.region.as_str())
        {
            p = 4;
        }
        group.priority = group.priority * 5 + p;
        used.insert(group.priority);
    }
    let dense: BTreeMap<u32, u32> = used
        .into_iter()
        .enumerate()
        .map(|(i, p)| (p, i as u32))
        .collect();
    for group in &mut cla.endpoints {
        group.priority = dense[&group.priority];
    }
}

/// Rank of an endpoint under `failoverPriority`: the number of leading labels that differ from the proxy's
/// (0 = all match). A label counts as matching only while every label before it matched.
pub fn failover_priority_rank(
    priority_labels: &[String],
    proxy_labels: &BTreeMap<String, String>,
    endpoint_labels: &BTreeMap<String, String>,
) -> u32 {
    let matched = priority_labels
        .iter()
        .take_while(|key| {
            // `key=value` pins the value instead of comparing with the proxy's.
            match key.split_once('=') {
                Some((k, v)) => endpoint_labels.get(k).map(String::as_str) == Some(v),
                None => {
                    proxy_labels.get(key.as_str()).is_some()
                        && proxy_labels.get(key.as_str()) == endpoint_labels.get(key.as_str())
                }
            }
        })
        .count();
    (priority_labels.len() - matched) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::endpoint::v3::{LbEndpoint, LocalityLbEndpoints};

    fn group(loc: &str) -> LocalityLbEndpoints {
        LocalityLbEndpoints {
            locality: Some(parse_locality(loc)),
            lb_endpoints: vec![LbEndpoint::default()],
            load_balancing_weight: Some(u32v(1)),
            ..Default::default()
        }
    }

    fn cla(locs: &[&str]) -> ClusterLoadAssignment {
        ClusterLoadAssignment {
            cluster_name: "c".into(),
            endpoints: locs.iter().map(|l| group(l)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn matching_and_proximity() {
        let l = parse_locality("us-east/zone1/sz");
        assert!(locality_match(&l, "us-east/*"));
        assert!(locality_match(&l, "us-east"));
        assert!(locality_match(&l, "*"));
        assert!(!locality_match(&l, "us-west/*"));
        assert!(!locality_match(&l, "us-east/zone2/*"));
        assert_eq!(lb_priority(&l, &parse_locality("us-east/zone1/sz")), 0);
        assert_eq!(lb_priority(&l, &parse_locality("us-east/zone1/other")), 1);
        assert_eq!(lb_priority(&l, &parse_locality("us-east/zone2")), 2);
        assert_eq!(lb_priority(&l, &parse_locality("eu/zone1")), 3);
    }

    #[test]
    fn default_failover_orders_by_proximity_densely() {
        let mut c = cla(&["us-east/z1", "us-east/z2", "eu/z1", "ap/z1"]);
        let setting = LocalityLbSetting::default();
        apply(&mut c, &parse_locality("us-east/z1"), &setting, true);
        let prios: Vec<u32> = c.endpoints.iter().map(|g| g.priority).collect();
        // 0 (same zone), 2 (same region) → 1, 3 (elsewhere) → 2
        assert_eq!(prios, vec![0, 1, 2, 2]);
        // Without outlier detection nothing changes.
        let mut c = cla(&["us-east/z1", "eu/z1"]);
        apply(&mut c, &parse_locality("us-east/z1"), &setting, false);
        assert!(c.endpoints.iter().all(|g| g.priority == 0));
    }

    #[test]
    fn failover_rule_prefers_its_target_region() {
        let mut c = cla(&["us-east/z1", "eu/z1", "ap/z1"]);
        let setting = LocalityLbSetting {
            failover: vec![LocalityFailover {
                from: Some("us-east".into()),
                to: Some("ap".into()),
            }],
            ..Default::default()
        };
        apply(&mut c, &parse_locality("us-east/z1"), &setting, true);
        let prios: Vec<u32> = c.endpoints.iter().map(|g| g.priority).collect();
        assert_eq!(prios, vec![0, 2, 1], "ap (the failover target) before eu");
    }

    #[test]
    fn distribute_rewrites_weights_and_drops_unlisted() {
        let mut c = cla(&["us-east/z1", "us-east/z2", "eu/z1"]);
        let setting = LocalityLbSetting {
            distribute: vec![LocalityDistribute {
                from: Some("us-east/z1/*".into()),
                to: [
                    ("us-east/z1/*".to_string(), 80),
                    ("us-east/z2/*".to_string(), 20),
                ]
                .into_iter()
                .collect(),
            }],
            ..Default::default()
        };
        apply(&mut c, &parse_locality("us-east/z1"), &setting, false);
        let w: Vec<Option<u32>> = c
            .endpoints
            .iter()
            .map(|g| g.load_balancing_weight.map(|w| w.value))
            .collect();
        assert_eq!(w, vec![Some(80), Some(20), Some(1)]);
        assert!(c.endpoints[2].lb_endpoints.is_empty(), "eu gets nothing");
    }

    #[test]
    fn failover_priority_ranks_by_leading_labels() {
        let keys = vec!["topology.istio.io/network".to_string(), "zone".to_string()];
        let proxy: BTreeMap<String, String> = [
            ("topology.istio.io/network".to_string(), "n1".to_string()),
            ("zone".to_string(), "a".to_string()),
        ]
        .into();
        assert_eq!(failover_priority_rank(&keys, &proxy, &proxy), 0);
        let mut ep = proxy.clone();
        ep.insert("zone".into(), "b".into());
        assert_eq!(failover_priority_rank(&keys, &proxy, &ep), 1);
        ep.insert("topology.istio.io/network".into(), "n2".into());
        ep.insert("zone".into(), "a".into());
        assert_eq!(failover_priority_rank(&keys, &proxy, &ep), 2);
    }
}
