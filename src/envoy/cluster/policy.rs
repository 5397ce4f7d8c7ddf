//! DestinationRule traffic policy on a cluster: which policy applies to a port and subset (port-level settings and
//! subset policies override the host-level one field by field, as istiod merges them), then connection pool
//! (circuit breakers, timeouts, keepalive, HTTP options), outlier detection and the load balancer.

use std::time::Duration as StdDuration;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    CommonLbConfig, DiscoveryType, LbConfig, LbPolicy, LeastRequestLbConfig, MaglevLbConfig,
    RingHashLbConfig, RoundRobinLbConfig, SlowStartConfig,
    common_lb_config::{LocalityConfigSpecifier, LocalityWeightedLbConfig},
};
use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection as EnvoyOutlier, UpstreamConnectionOptions,
    circuit_breakers::Thresholds, circuit_breakers::thresholds::RetryBudget as EnvoyRetryBudget,
};
use envoy_types::pb::envoy::config::core::v3::{
    Http1ProtocolOptions, Http2ProtocolOptions, HttpProtocolOptions as CoreHttpOptions,
    RuntimeDouble, TcpKeepalive,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions, UseDownstreamHttpConfig,
    explicit_http_config::ProtocolConfig,
};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{Duration, UInt32Value, UInt64Value};

use crate::config::istio::networking::{
    ClientTlsSettings, ConnectionPoolSettings, H2UpgradePolicy, LoadBalancerSettings,
    LocalityLbSetting, OutlierDetection, ProxyProtocol, RetryBudget, SimpleLb, TrafficPolicy,
};

/// The policy components that apply to one cluster (one port, maybe one subset).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EffectivePolicy {
    pub connection_pool: Option<ConnectionPoolSettings>,
    pub outlier_detection: Option<OutlierDetection>,
    pub load_balancer: Option<LoadBalancerSettings>,
    pub tls: Option<ClientTlsSettings>,
    /// Host-level or subset only (no port-level form).
    pub retry_budget: Option<RetryBudget>,
    pub proxy_protocol: Option<ProxyProtocol>,
}

impl EffectivePolicy {
    /// The host-level policy with `port`'s `portLevelSettings` entry laid over it: every component the port entry
    /// sets replaces the host-level one, the others are kept (istiod's `GetPortLevelTrafficPolicy`).
    pub fn for_port(policy: Option<&TrafficPolicy>, port: u16) -> EffectivePolicy {
        let Some(policy) = policy else {
            return EffectivePolicy::default();
        };
        let mut out = EffectivePolicy {
            connection_pool: policy.connection_pool.clone(),
            outlier_detection: policy.outlier_detection.clone(),
            load_balancer: policy.load_balancer.clone(),
            tls: policy.tls.clone(),
            retry_budget: policy.retry_budget.clone(),
            proxy_protocol: policy.proxy_protocol.clone(),
        };
        let port_level = policy
            .port_level_settings
            .iter()
            .find(|p| p.port.is_some_and(|sel| sel.number == u32::from(port)));
        if let Some(p) = port_level {
            out.overlay(EffectivePolicy {
                connection_pool: p.connection_pool.clone(),
                outlier_detection: p.outlier_detection.clone(),
                load_balancer: p.load_balancer.clone(),
                tls: p.tls.clone(),
                ..Default::default()
            });
        }
        out
    }

    /// This (host-level, port-merged) policy with a subset's own policy laid over it; the subset's port-level
    /// settings are resolved first (istiod's `MergeSubsetTrafficPolicy`).
    pub fn with_subset(&self, subset_policy: Option<&TrafficPolicy>, port: u16) -> EffectivePolicy {
        let mut out = self.clone();
        if subset_policy.is_some() {
            out.overlay(EffectivePolicy::for_port(subset_policy, port));
        }
        out
    }

    fn overlay(&mut self, other: EffectivePolicy) {
        if other.connection_pool.is_some() {
            self.connection_pool = other.connection_pool;
        }
        if other.outlier_detection.is_some() {
            self.outlier_detection = other.outlier_detection;
        }
        if other.load_balancer.is_some() {
            self.load_balancer = other.load_balancer;
        }
        if other.tls.is_some() {
            self.tls = other.tls;
        }
        if other.retry_budget.is_some() {
            self.retry_budget = other.retry_budget;
        }
        if other.proxy_protocol.is_some() {
            self.proxy_protocol = other.proxy_protocol;
        }
    }

    /// Whether the load balancer asks for `PASSTHROUGH` (the cluster becomes ORIGINAL_DST).
    pub fn is_passthrough(&self) -> bool {
        self.load_balancer
            .as_ref()
            .and_then(|lb| lb.simple)
            .is_some_and(|s| s == SimpleLb::Passthrough)
    }
}

/// A protobuf duration from a std one.
pub fn duration(d: StdDuration) -> Duration {
    Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

pub(crate) fn u32v(value: u32) -> UInt32Value {
    UInt32Value { value }
}

/// Positive `i32` config values as `u32` (Istio treats 0 and negatives as unset).
fn positive(v: Option<i32>) -> Option<u32> {
    v.filter(|n| *n > 0).and_then(|n| u32::try_from(n).ok())
}

/// Istio's circuit-breaker defaults: every limit at u32::MAX, because Envoy's defaults (1024, and 3 retries)
/// cause 503s during pod churn; `track_remaining` exposes the remaining budget as stats.
pub fn default_thresholds() -> Thresholds {
    Thresholds {
        max_connections: Some(u32v(u32::MAX)),
        max_pending_requests: Some(u32v(u32::MAX)),
        max_requests: Some(u32v(u32::MAX)),
        max_retries: Some(u32v(u32::MAX)),
        track_remaining: true,
        ..Default::default()
    }
}

/// Protocol options for the cluster, gathered while the policy is applied and encoded once at the end.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProtocolOptions {
    pub common: Option<CoreHttpOptions>,
    pub upstream: Option<UpstreamProtocolOptions>,
}

impl ProtocolOptions {
    /// Upstream HTTP/2 (`explicit_http_config.http2_protocol_options`).
    pub fn set_h2(&mut self) {
        if self.is_h2() {
            return;
        }
        self.upstream = Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                    Http2ProtocolOptions::default(),
                )),
            },
        ));
    }

    /// Whether the upstream is explicitly HTTP/2.
    pub fn is_h2(&self) -> bool {
        matches!(
            &self.upstream,
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(_)),
                }
            ))
        )
    }

    /// Upstream protocol follows the downstream one (unnamed ports, `useClientProtocol`).
    pub fn set_use_downstream(&mut self) {
        self.upstream = Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(
            UseDownstreamHttpConfig {
                http_protocol_options: Some(Http1ProtocolOptions::default()),
                http2_protocol_options: Some(Http2ProtocolOptions::default()),
                ..Default::default()
            },
        ));
    }

    fn common_mut(&mut self) -> &mut CoreHttpOptions {
        self.common.get_or_insert_with(CoreHttpOptions::default)
    }

    /// The extension message, or `None` when nothing was set. Envoy requires an upstream protocol once the
    /// message exists, so HTTP/1.1 is filled in when only common options were set (as istiod does).
    pub fn build(self) -> Option<HttpProtocolOptions> {
        if self.common.is_none() && self.upstream.is_none() {
            return None;
        }
        let upstream = self.upstream.unwrap_or_else(|| {
            UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::HttpProtocolOptions(
                    Http1ProtocolOptions::default(),
                )),
            })
        });
        Some(HttpProtocolOptions {
            common_http_protocol_options: self.common,
            upstream_protocol_options: Some(upstream),
            ..Default::default()
        })
    }
}

/// Connection pool settings (or Istio's defaults when `settings` is `None`): circuit breakers, connect timeout,
/// keepalive and the HTTP common options.
pub fn apply_connection_pool(
    cluster: &mut Cluster,
    options: &mut ProtocolOptions,
    settings: Option<&ConnectionPoolSettings>,
) {
    let mut threshold = default_thresholds();
    let mut idle_timeout = None;
    if let Some(http) = settings.and_then(|s| s.http.as_ref()) {
        // Envoy applies max_requests to HTTP/2 and max_pending_requests to HTTP/1.1 pools.
        if let Some(n) = positive(http.http2_max_requests) {
            threshold.max_requests = Some(u32v(n));
        }
        if let Some(n) = positive(http.http1_max_pending_requests) {
            threshold.max_pending_requests = Some(u32v(n));
        }
        if let Some(n) = positive(http.max_retries) {
            threshold.max_retries = Some(u32v(n));
        }
        idle_timeout = http.idle_timeout;
        if let Some(n) = positive(http.max_requests_per_connection) {
            options.common_mut().max_requests_per_connection = Some(u32v(n));
        }
        if let Some(n) = positive(http.max_concurrent_streams)
            && let Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(h2)),
            })) = options.upstream.as_mut()
        {
            h2.max_concurrent_streams = Some(u32v(n));
        }
        if http.use_client_protocol == Some(true) {
            options.set_use_downstream();
        }
    }
    if let Some(tcp) = settings.and_then(|s| s.tcp.as_ref()) {
        if let Some(t) = tcp.connect_timeout {
            cluster.connect_timeout = Some(duration(t.get()));
        }
        if let Some(n) = positive(tcp.max_connections) {
            threshold.max_connections = Some(u32v(n));
        }
        if let Some(d) = tcp.max_connection_duration {
            options.common_mut().max_connection_duration = Some(duration(d.get()));
        }
        if idle_timeout.is_none() {
            idle_timeout = tcp.idle_timeout;
        }
        if let Some(ka) = &tcp.tcp_keepalive {
            // Envoy takes whole seconds here.
            let secs = |d: Option<crate::config::istio::common::Duration>| {
                d.map(|d| u32v(u32::try_from(d.get().as_secs()).unwrap_or(u32::MAX)))
            };
            cluster.upstream_connection_options = Some(UpstreamConnectionOptions {
                tcp_keepalive: Some(TcpKeepalive {
                    keepalive_probes: ka.probes.map(u32v),
                    keepalive_time: secs(ka.time),
                    keepalive_interval: secs(ka.interval),
                }),
                ..Default::default()
            });
        }
    }
    if let Some(t) = idle_timeout {
        options.common_mut().idle_timeout = Some(duration(t.get()));
    }
    cluster.circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![threshold],
        ..Default::default()
    });
}

/// Whether the DestinationRule forces an HTTP/2 upgrade (`h2UpgradePolicy: UPGRADE`). The mesh default is
/// DO_NOT_UPGRADE, so only an explicit UPGRADE upgrades.
pub fn wants_h2_upgrade(settings: Option<&ConnectionPoolSettings>) -> bool {
    settings
        .and_then(|s| s.http.as_ref())
        .and_then(|h| h.h2_upgrade_policy)
        == Some(H2UpgradePolicy::Upgrade)
}

/// Outlier detection as istiod translates it. The book's `consecutiveErrors` is mapped as Istio 1.1–1.3 did:
/// it counts gateway errors (502/503/504 and connection failures) only, with 5xx ejection disabled.
pub fn apply_outlier_detection(cluster: &mut Cluster, outlier: Option<&OutlierDetection>) {
    let Some(o) = outlier else {
        return;
    };
    let mut out = EnvoyOutlier {
        // Success-rate ejection needs request volume a mesh rarely has per host; istiod turns it off.
        enforcing_success_rate: Some(u32v(0)),
        ..Default::default()
    };
    if let Some(n) = o.consecutive_errors.filter(|n| *n > 0) {
        out.consecutive_gateway_failure = Some(u32v(n.unsigned_abs()));
        out.enforcing_consecutive_gateway_failure = Some(u32v(100));
        out.enforcing_consecutive_5xx = Some(u32v(0));
    }
    if let Some(n) = o.consecutive_5xx_errors {
        out.consecutive_5xx = Some(u32v(n));
        out.enforcing_consecutive_5xx = Some(u32v(if n > 0 { 100 } else { 0 }));
    }
    if let Some(n) = o.consecutive_gateway_errors {
        out.consecutive_gateway_failure = Some(u32v(n));
        out.enforcing_consecutive_gateway_failure = Some(u32v(if n > 0 { 100 } else { 0 }));
    }
    out.interval = o.interval.map(|d| duration(d.get()));
    out.base_ejection_time = o.base_ejection_time.map(|d| duration(d.get()));
    out.max_ejection_percent = positive(o.max_ejection_percent).map(u32v);
    if o.split_external_local_origin_errors == Some(true) {
        out.split_external_local_origin_errors = true;
        if let Some(n) = o.consecutive_local_origin_failures.filter(|n| *n > 0) {
            out.consecutive_local_origin_failure = Some(u32v(n));
            out.enforcing_consecutive_local_origin_failure = Some(u32v(100));
        }
        out.enforcing_local_origin_success_rate = Some(u32v(0));
    }
    cluster.outlier_detection = Some(out);
    // Envoy's 50% panic threshold would send traffic to ejected hosts in the small pools typical of a mesh;
    // istiod sets it to minHealthPercent (0 when unset) whenever outlier detection is on.
    let min_health = o.min_health_percent.unwrap_or(0).max(0);
    common_lb(cluster).healthy_panic_threshold = Some(Percent {
        value: f64::from(min_health),
    });
}

pub(crate) fn common_lb(cluster: &mut Cluster) -> &mut CommonLbConfig {
    cluster
        .common_lb_config
        .get_or_insert_with(CommonLbConfig::default)
}

/// The load balancer policy. ORIGINAL_DST clusters always use CLUSTER_PROVIDED; PASSTHROUGH turns the cluster into
/// one (the caller has already chosen the discovery type from it).
pub fn apply_load_balancer(cluster: &mut Cluster, lb: Option<&LoadBalancerSettings>) {
    if cluster.cluster_discovery_type
        == Some(
            envoy_types::pb::envoy::config::cluster::v3::cluster::ClusterDiscoveryType::Type(
                DiscoveryType::OriginalDst as i32,
            ),
        )
    {
        cluster.lb_policy = LbPolicy::ClusterProvided as i32;
        return;
    }
    let policy = match lb.and_then(|l| l.simple) {
        Some(SimpleLb::RoundRobin) => LbPolicy::RoundRobin,
        Some(SimpleLb::Random) => LbPolicy::Random,
        Some(SimpleLb::Passthrough) => LbPolicy::ClusterProvided,
        // LEAST_CONN is a deprecated alias; unset means istiod's default, LEAST_REQUEST.
        Some(SimpleLb::LeastConn | SimpleLb::LeastRequest | SimpleLb::Unspecified) | None => {
            LbPolicy::LeastRequest
        }
    };
    cluster.lb_policy = policy as i32;
    if let Some(slow) = lb.and_then(slow_start) {
        cluster.lb_config = match policy {
            LbPolicy::RoundRobin => Some(LbConfig::RoundRobinLbConfig(RoundRobinLbConfig {
                slow_start_config: Some(slow),
            })),
            LbPolicy::LeastRequest => Some(LbConfig::LeastRequestLbConfig(LeastRequestLbConfig {
                slow_start_config: Some(slow),
                ..Default::default()
            })),
            _ => None,
        };
    }
    let Some(hash) = lb.and_then(|l| l.consistent_hash.as_ref()) else {
        return;
    };
    if let Some(maglev) = &hash.maglev {
        cluster.lb_policy = LbPolicy::Maglev as i32;
        cluster.lb_config = maglev.table_size.filter(|n| *n != 0).map(|n| {
            LbConfig::MaglevLbConfig(MaglevLbConfig {
                table_size: Some(UInt64Value { value: n }),
            })
        });
    } else if let Some(ring) = &hash.ring_hash {
        cluster.lb_policy = LbPolicy::RingHash as i32;
        cluster.lb_config = ring.minimum_ring_size.filter(|n| *n != 0).map(|n| {
            LbConfig::RingHashLbConfig(RingHashLbConfig {
                minimum_ring_size: Some(UInt64Value { value: n }),
                ..Default::default()
            })
        });
    } else {
        // The deprecated top-level minimumRingSize (the book's form); 1024 is Envoy's default, set explicitly
        // as istiod does.
        cluster.lb_policy = LbPolicy::RingHash as i32;
        let size = hash.minimum_ring_size.filter(|n| *n != 0).unwrap_or(1024);
        cluster.lb_config = Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
            minimum_ring_size: Some(UInt64Value { value: size }),
            ..Default::default()
        }));
    }
}

/// The locality setting in force: the DestinationRule's, else the mesh's, else Istio's default (enabled, no
/// rules). `enabled: false` turns it off.
pub fn effective_locality_setting(
    lb: Option<&LoadBalancerSettings>,
    mesh: Option<&serde_json::Value>,
) -> Option<LocalityLbSetting> {
    let setting = lb
        .and_then(|l| l.locality_lb_setting.clone())
        .or_else(|| mesh.and_then(|v| serde_json::from_value(v.clone()).ok()))
        .unwrap_or(LocalityLbSetting {
            enabled: Some(true),
            ..Default::default()
        });
    (setting.enabled != Some(false)).then_some(setting)
}

/// Locality weighting on the cluster: needed when weights are distributed, or when failover applies (it only
/// applies with outlier detection, or Envoy would never fail over).
pub fn apply_locality_config(cluster: &mut Cluster, setting: Option<&LocalityLbSetting>) {
    let Some(s) = setting else {
        return;
    };
    let failover = cluster.outlier_detection.is_some()
        && (!s.failover.is_empty() || !s.failover_priority.is_empty());
    if !s.distribute.is_empty() || failover {
        common_lb(cluster).locality_config_specifier = Some(
            LocalityConfigSpecifier::LocalityWeightedLbConfig(LocalityWeightedLbConfig::default()),
        );
    }
}

/// Slow start for new endpoints (`warmup`, or the older `warmupDurationSecs`), for ROUND_ROBIN and LEAST_REQUEST.
fn slow_start(lb: &LoadBalancerSettings) -> Option<SlowStartConfig> {
    let warmup = lb.warmup.as_ref();
    let window = warmup
        .and_then(|w| w.duration)
        .or(lb.warmup_duration_secs)?;
    Some(SlowStartConfig {
        slow_start_window: Some(duration(window.get())),
        aggression: warmup.and_then(|w| w.aggression).map(|a| RuntimeDouble {
            default_value: a,
            runtime_key: "upstream.slow_start_aggression".into(),
        }),
        min_weight_percent: warmup
            .and_then(|w| w.minimum_percent)
            .map(|value| Percent { value }),
    })
}

/// `retryBudget`: concurrent retries limited to a share of active requests (Istio's defaults: 20%, at least 3).
pub fn apply_retry_budget(cluster: &mut Cluster, budget: Option<&RetryBudget>) {
    let Some(b) = budget else {
        return;
    };
    if let Some(t) = cluster
        .circuit_breakers
        .as_mut()
        .and_then(|cb| cb.thresholds.first_mut())
    {
        t.retry_budget = Some(EnvoyRetryBudget {
            budget_percent: Some(Percent {
                value: b.percent.unwrap_or(20.0),
            }),
            min_retry_concurrency: Some(u32v(b.min_retry_concurrency.unwrap_or(3))),
            budget_interval: b.budget_interval.map(|d| duration(d.get())),
        });
    }
}
