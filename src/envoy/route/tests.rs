//! Table tests for the route generator: YAML in, RouteConfiguration protos out.

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, Route, RouteAction, RouteConfiguration, VirtualHost, header_matcher,
    query_parameter_matcher, redirect_action, route, route_action, route_match,
    virtual_host::TlsRequirementType,
};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{HttpFault, fault_abort};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use envoy_types::pb::google::protobuf::BoolValue;
use prost::Message;

use super::{CORS_FILTER, FAULT_FILTER, route_configs, virtual_service_conflicts};
use crate::model::Snapshot;
use crate::test_helpers::mesh::{router, sidecar, snapshot_from_yaml};
use crate::test_helpers::named::find as config;

/// Namespace `shop` with the sidecar pod `app-1` (labels app=app, version=v1), HTTP services `reviews` (9080,
/// VIP 10.96.0.10), `ratings` (9080) and `app` (80), a TCP service sharing port 9080, a service `catalog` in
/// namespace `store`, and an HTTP ServiceEntry `api.example.com:80`.
const MESH: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: app-1, namespace: shop, labels: {app: app, version: v1}}
spec:
  containers:
  - name: app
    ports:
    - {name: http-web, containerPort: 8080}
status: {phase: Running, podIP: 10.0.0.5}
---
apiVersion: v1
kind: Service
metadata: {name: app, namespace: shop}
spec:
  clusterIP: 10.96.0.5
  selector: {app: app}
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: reviews}
  ports:
  - {name: http, port: 9080}
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: shop}
spec:
  clusterIP: 10.96.0.11
  selector: {app: ratings}
  ports:
  - {name: http-api, port: 9080}
  - {name: http-admin, port: 9090}
---
apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: shop}
spec:
  clusterIP: 10.96.0.30
  selector: {app: legacy}
  ports:
  - {name: tcp-legacy, port: 5000}
---
apiVersion: v1
kind: Service
metadata: {name: catalog, namespace: store}
spec:
  clusterIP: 10.96.1.1
  selector: {app: catalog}
  ports:
  - {name: http, port: 9080}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: example-api, namespace: shop}
spec:
  hosts: [api.example.com]
  addresses: [240.0.0.1]
  location: MESH_EXTERNAL
  ports:
  - {number: 80, name: http, protocol: HTTP}
  resolution: DNS
"#;

const REVIEWS: &str = "reviews.shop.svc.cluster.local";

fn with(extra: &str) -> Snapshot {
    snapshot_from_yaml(&format!("{MESH}\n---\n{extra}"))
}

fn sidecar_routes(snap: &Snapshot) -> Vec<RouteConfiguration> {
    route_configs(&sidecar(snap, "shop", "app-1"))
}

fn vhost<'a>(rc: &'a RouteConfiguration, name: &str) -> &'a VirtualHost {
    rc.virtual_hosts
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| {
            panic!(
                "no vhost {name} in {}; have {:?}",
                rc.name,
                rc.virtual_hosts.iter().map(|v| &v.name).collect::<Vec<_>>()
            )
        })
}

/// The routes of `host`'s vhost on sidecar route `port`.
fn routes_of(snap: &Snapshot, port: u16, host: &str) -> Vec<Route> {
    let rcs = sidecar_routes(snap);
    vhost(config(&rcs, &port.to_string()), &format!("{host}:{port}"))
        .routes
        .clone()
}

fn action(r: &Route) -> &RouteAction {
    match &r.action {
        Some(route::Action::Route(a)) => a,
        other => panic!("route {} is not a route action: {other:?}", r.name),
    }
}

fn cluster(r: &Route) -> &str {
    match &action(r).cluster_specifier {
        Some(route_action::ClusterSpecifier::Cluster(c)) => c,
        other => panic!("route {} has no single cluster: {other:?}", r.name),
    }
}

fn weights(r: &Route) -> Vec<(String, u32)> {
    match &action(r).cluster_specifier {
        Some(route_action::ClusterSpecifier::WeightedClusters(w)) => w
            .clusters
            .iter()
            .map(|c| (c.name.clone(), c.weight.unwrap().value))
            .collect(),
        other => panic!("route {} is not weighted: {other:?}", r.name),
    }
}

fn path(r: &Route) -> route_match::PathSpecifier {
    r.r#match.clone().unwrap().path_specifier.unwrap()
}

fn headers(r: &Route) -> Vec<HeaderMatcher> {
    r.r#match.clone().unwrap().headers
}

fn string_match(h: &HeaderMatcher) -> MatchPattern {
    match &h.header_match_specifier {
        Some(header_matcher::HeaderMatchSpecifier::StringMatch(s)) => {
            s.match_pattern.clone().unwrap()
        }
        other => panic!("header {} has no string match: {other:?}", h.name),
    }
}

fn vs(name: &str, body: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n{body}"
    )
}

// ---- sidecar basics -----------------------------------------------------------------------------------------

#[test]
fn one_route_config_per_http_port_with_istio_domains() {
    let snap = with("");
    let rcs = sidecar_routes(&snap);
    let names: Vec<&str> = rcs.iter().map(|r| r.name.as_str()).collect();
    // 5000 is TCP: no route config.
    assert_eq!(names, ["80", "9080", "9090"]);

    let rc = config(&rcs, "9080");
    assert_eq!(rc.validate_clusters, Some(BoolValue { value: false }));
    let vnames: Vec<&str> = rc.virtual_hosts.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(
        vnames,
        [
            "catalog.store.svc.cluster.local:9080",
            "ratings.shop.svc.cluster.local:9080",
            "reviews.shop.svc.cluster.local:9080",
            "allow_any",
        ]
    );
    let reviews = vhost(rc, "reviews.shop.svc.cluster.local:9080");
    assert_eq!(
        reviews.domains,
        [
            "reviews",
            "reviews:9080",
            "reviews.shop",
            "reviews.shop:9080",
            "reviews.shop.svc",
            "reviews.shop.svc:9080",
            "reviews.shop.svc.cluster",
            "reviews.shop.svc.cluster:9080",
            "reviews.shop.svc.cluster.local",
            "reviews.shop.svc.cluster.local:9080",
            "10.96.0.10",
            "10.96.0.10:9080",
        ]
    );
    // Another namespace's short name would mean a different service: not offered.
    let catalog = vhost(rc, "catalog.store.svc.cluster.local:9080");
    assert!(
        !catalog
            .domains
            .iter()
            .any(|d| d == "catalog" || d == "catalog:9080")
    );
    assert!(catalog.domains.contains(&"catalog.store".to_string()));

    let se = vhost(config(&rcs, "80"), "api.example.com:80");
    assert_eq!(
        se.domains,
        [
            "api.example.com",
            "api.example.com:80",
            "240.0.0.1",
            "240.0.0.1:80"
        ]
    );
}

#[test]
fn default_route_has_istio_retry_policy_and_no_timeout() {
    let snap = with("");
    let routes = routes_of(&snap, 9080, REVIEWS);
    assert_eq!(routes.len(), 1);
    let r = &routes[0];
    assert_eq!(r.name, "default");
    assert_eq!(path(r), route_match::PathSpecifier::Prefix("/".into()));
    assert_eq!(cluster(r), "outbound|9080||reviews.shop.svc.cluster.local");
    let a = action(r);
    assert_eq!(a.timeout.unwrap().seconds, 0);
    let retry = a.retry_policy.as_ref().unwrap();
    assert_eq!(
        retry.retry_on,
        "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
    );
    assert_eq!(retry.num_retries.unwrap().value, 2);
    assert_eq!(retry.host_selection_retry_max_attempts, 5);
    assert_eq!(retry.retriable_status_codes, [503]);
    assert_eq!(
        retry.retry_host_predicate[0].name,
        "envoy.retry_host_predicates.previous_hosts"
    );
}

#[test]
fn catch_all_vhost_follows_the_outbound_policy() {
    let snap = with("");
    let rc = sidecar_routes(&snap);
    let last = config(&rc, "9080").virtual_hosts.last().unwrap().clone();
    assert_eq!(last.name, "allow_any");
    assert_eq!(last.domains, ["*"]);
    assert_eq!(cluster(&last.routes[0]), "PassthroughCluster");

    let snap = with(
        r#"apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: shop}
spec:
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"#,
    );
    let rc = sidecar_routes(&snap);
    let last = config(&rc, "9080").virtual_hosts.last().unwrap().clone();
    assert_eq!(last.name, "block_all");
    match &last.routes[0].action {
        Some(route::Action::DirectResponse(d)) => assert_eq!(d.status, 502),
        other => panic!("block_all must answer 502: {other:?}"),
    }
}

// ---- VirtualService matches -----------------------------------------------------------------------------------

#[test]
fn matches_translate_in_order() {
    let snap = with(&vs(
        "reviews",
        r#"  hosts: [reviews]
  http:
  - name: exact
    match:
    - {name: m1, uri: {exact: /a}, method: {exact: GET}, scheme: {exact: https}, authority: {prefix: rev}}
    route: [{destination: {host: reviews, subset: v1}}]
  - name: headers
    match:
    - uri: {regex: "/b/[0-9]+"}
      headers: {x-version: {exact: "2"}, x-present: {}, end-user: {regex: "j.*"}}
      withoutHeaders: {x-debug: {}}
      queryParams: {q: {exact: v}, p: {}}
      ignoreUriCase: true
    route: [{destination: {host: reviews, subset: v2}}]
  - name: other-port
    match: [{port: 7000}]
    route: [{destination: {host: reviews, subset: v3}}]
  - name: labels
    match: [{sourceLabels: {app: app}, uri: {prefix: /mine}}, {sourceLabels: {app: other}, uri: {prefix: /theirs}}]
    route: [{destination: {host: reviews, subset: v4}}]
  - name: gw-only
    match: [{gateways: [some-gateway]}]
    route: [{destination: {host: reviews, subset: v5}}]
  - name: rest
    route: [{destination: {host: reviews, subset: v1}}]
  - name: unreachable
    route: [{destination: {host: reviews, subset: v9}}]
"#,
    ));
    let routes = routes_of(&snap, 9080, REVIEWS);
    let names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
    // port 7000, the other workload's labels and the gateway-only rule do not apply; nothing follows a catch-all.
    assert_eq!(names, ["exact.m1", "headers", "labels", "rest"]);

    let r = &routes[0];
    assert_eq!(path(r), route_match::PathSpecifier::Path("/a".into()));
    let hs = headers(r);
    let names: Vec<&str> = hs.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, [":scheme", ":method", ":authority"]);
    assert_eq!(string_match(&hs[1]), MatchPattern::Exact("GET".into()));
    assert_eq!(string_match(&hs[2]), MatchPattern::Prefix("rev".into()));
    assert_eq!(
        cluster(r),
        "outbound|9080|v1|reviews.shop.svc.cluster.local"
    );

    let r = &routes[1];
    match path(r) {
        route_match::PathSpecifier::SafeRegex(re) => assert_eq!(re.regex, "/b/[0-9]+"),
        other => panic!("{other:?}"),
    }
    let m = r.r#match.clone().unwrap();
    assert_eq!(m.case_sensitive, Some(BoolValue { value: false }));
    let hs = headers(r);
    let by = |n: &str| hs.iter().find(|h| h.name == n).unwrap().clone();
    match string_match(&by("end-user")) {
        MatchPattern::SafeRegex(re) => assert_eq!(re.regex, "j.*"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        string_match(&by("x-version")),
        MatchPattern::Exact("2".into())
    );
    assert_eq!(
        by("x-present").header_match_specifier,
        Some(header_matcher::HeaderMatchSpecifier::PresentMatch(true))
    );
    let debug = by("x-debug");
    assert!(debug.invert_match);
    assert_eq!(
        debug.header_match_specifier,
        Some(header_matcher::HeaderMatchSpecifier::PresentMatch(true))
    );
    let qp: Vec<_> = m
        .query_parameters
        .iter()
        .map(|q| {
            (
                q.name.as_str(),
                q.query_parameter_match_specifier.clone().unwrap(),
            )
        })
        .collect();
    assert_eq!(qp[0].0, "p");
    assert_eq!(
        qp[0].1,
        query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(true)
    );
    assert_eq!(qp[1].0, "q");

    // Only the match for this workload's labels survives.
    assert_eq!(
        path(&routes[2]),
        route_match::PathSpecifier::Prefix("/mine".into())
    );
}

#[test]
fn port_match_selects_the_route_config() {
    let snap = with(&vs(
        "ratings",
        r#"  hosts: [ratings]
  http:
  - match: [{port: 9090}]
    route: [{destination: {host: ratings, port: {number: 9090}, subset: admin}}]
  - route: [{destination: {host: ratings}}]
"#,
    ));
    let on_9090 = routes_of(&snap, 9090, "ratings.shop.svc.cluster.local");
    assert_eq!(
        cluster(&on_9090[0]),
        "outbound|9090|admin|ratings.shop.svc.cluster.local"
    );
    let on_9080 = routes_of(&snap, 9080, "ratings.shop.svc.cluster.local");
    assert_eq!(on_9080.len(), 1);
    // No port given and two service ports: the listener's port.
    assert_eq!(
        cluster(&on_9080[0]),
        "outbound|9080||ratings.shop.svc.cluster.local"
    );
}

// ---- destinations, rewrites, redirects ----------------------------------------------------------------------

#[test]
fn weighted_destinations_and_subsets() {
    let snap = with(&vs(
        "reviews",
        r#"  hosts: [reviews]
  http:
  - name: canary
    match: [{headers: {canary: {exact: "1"}}}]
    route:
    - {destination: {host: reviews, subset: v1}, weight: 90}
    - {destination: {host: reviews, subset: v2}, weight: 10}
  - name: zero
    route:
    - {destination: {host: reviews, subset: v1}, weight: 0}
    - {destination: {host: catalog.store.svc.cluster.local}, weight: 100}
"#,
    ));
    let routes = routes_of(&snap, 9080, REVIEWS);
    assert_eq!(
        weights(&routes[0]),
        [
            ("outbound|9080|v1|reviews.shop.svc.cluster.local".into(), 90),
            ("outbound|9080|v2|reviews.shop.svc.cluster.local".into(), 10),
        ]
    );
    // A zero-weight destination is dropped; the one left is a plain cluster (its only port).
    assert_eq!(
        cluster(&routes[1]),
        "outbound|9080||catalog.store.svc.cluster.local"
    );
}

#[test]
fn rewrites() {
    let snap = with(&vs(
        "reviews",
        r#"  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /api/v2/fruits/}}]
    rewrite: {uri: /api/fruits/, authority: fruits.internal}
    route: [{destination: {host: reviews}}]
  - match: [{uri: {exact: /old}}]
    rewrite: {uri: /new%path}
    route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /rx}}]
    rewrite: {uriRegexRewrite: {match: "^/rx/(.*)$", rewrite: "/\\1"}}
    route: [{destination: {host: reviews}}]
"#,
    ));
    let routes = routes_of(&snap, 9080, REVIEWS);
    let a = action(&routes[0]);
    assert_eq!(a.prefix_rewrite, "/api/fruits/");
    assert_eq!(
        a.host_rewrite_specifier,
        Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(
            "fruits.internal".into()
        ))
    );
    let a = action(&routes[1]);
    assert_eq!(a.prefix_rewrite, "");
    assert_eq!(a.path_rewrite, "/new%%path");
    let a = action(&routes[2]);
    let rx = a.regex_rewrite.as_ref().unwrap();
    assert_eq!(rx.pattern.as_ref().unwrap().regex, "^/rx/(.*)$");
    assert_eq!(rx.substitution, "/\\1");
}

#[test]
fn redirects_and_direct_responses() {
    let snap = with(&vs(
        "reviews",
        r#"  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, authority: new.example.com, scheme: https, port: 8443, redirectCode: 302}
  - match: [{uri: {prefix: /moved}}]
    redirect: {uri: /here}
  - match: [{uri: {prefix: /teapot}}]
    directResponse: {status: 418, body: {string: "short and stout"}}
  - match: [{uri: {prefix: /bytes}}]
    directResponse: {status: 200, body: {bytes: aGVsbG8=}}
"#,
    ));
    let routes = routes_of(&snap, 9080, REVIEWS);
    let Some(route::Action::Redirect(r)) = &routes[0].action else {
        panic!("not a redirect")
    };
    assert_eq!(r.host_redirect, "new.example.com");
    assert_eq!(r.port_redirect, 8443);
    assert_eq!(
        r.response_code,
        redirect_action::RedirectResponseCode::Found as i32
    );
    assert_eq!(
        r.scheme_rewrite_specifier,
        Some(redirect_action::SchemeRewriteSpecifier::SchemeRedirect(
            "https".into()
        ))
    );
    assert_eq!(
        r.path_rewrite_specifier,
        Some(redirect_action::PathRewriteSpecifier::PathRedirect(
            "/new".into()
        ))
    );
    let Some(route::Action::Redirect(r)) = &routes[1].action else {
        panic!("not a redirect")
    };
    assert_eq!(
        r.response_code,
        redirect_action::RedirectResponseCode::MovedPermanently as i32
    );
    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
    let Some(route::Action::DirectResponse(d)) = &routes[2].action else {
        panic!("not a direct response")
    };
    assert_eq!(d.status, 418);
    assert_eq!(
        d.body.as_ref().unwrap().specifier,
        Some(Specifier::InlineString("short and stout".into()))
    );
    let Some(route::Action::DirectResponse(d)) = &routes[3].action else {
        panic!("not a direct response")
    };
    assert_eq!(
        d.body.as_ref().unwrap().specifier,
        Some(Specifier::InlineBytes(b"hello".to_vec()))
    );
}

#[test]
fn header_operations_at_route_and_destination_level() {
    let snap = with(&vs(
        "reviews",
        r#"  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /single}}]
    headers:
      request: {set: {x-set: "1"}, add: {x-add: "2"}, remove: [x-drop]}
      response: {set: {x-resp: "3"}, remove: [server-timing]}
    route:
    - destination: {host: reviews}
      headers: {request: {set: {host: rewritten.example}, add: {x-dest: "4"}}}
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 50
      headers: {request: {add: {x-v: "1"}}, response: {remove: [x-internal]}}
    - destination: {host: reviews, subset: v2}
      weight: 50
"#,
    ));
    let routes = routes_of(&snap, 9080, REVIEWS);
    let r = &routes[0];
    let added: Vec<(String, String, i32)> = r
        .request_headers_to_add
        .iter()
        .map(|h| {
            let hv = h.header.clone().unwrap();
            (hv.key, hv.value, h.append_action)
        })
        .collect();
    assert_eq!(
        added,
        [
            (
                "x-set".into(),
                "1".into(),
                HeaderAppendAction::OverwriteIfExistsOrAdd as i32
            ),
            (
                "x-add".into(),
                "2".into(),
                HeaderAppendAction::AppendIfExistsOrAdd as i32
            ),
            (
                "x-dest".into(),
                "4".into(),
                HeaderAppendAction::AppendIfExistsOrAdd as i32
            ),
        ]
    );
    assert_eq!(r.request_headers_to_remove, ["x-drop"]);
    assert_eq!(
        r.response_headers_to_add[0].header.as_ref().unwrap().key,
        "x-resp"
    );
    assert_eq!(r.response_headers_to_remove, ["server-timing"]);
    // `host` cannot be set as a header in Envoy: it becomes a host rewrite.
    assert_eq!(
        action(r).host_rewrite_specifier,
        Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(
            "rewritten.example".into()
        ))
    );

    let Some(route_action::ClusterSpecifier::WeightedClusters(w)) =
        &action(&routes[1]).cluster_specifier
    else {
        panic!("weighted")
    };
    assert_eq!(
        w.clusters[0].request_headers_to_add[0]
            .header
            .as_ref()
            .unwrap()
            .key,
        "x-v"
    );
    assert_eq!(w.clusters[0].response_headers_to_remove, ["x-internal"]);
    assert!(w.clusters[1].request_headers_to_add.is_empty());
}

// ---- fault, retries, timeout, mirror, CORS ------------------------------------------------------------------

#[test]
fn fault_injection_goes_to_the_fault_filter() {
    let snap = with(&vs(
        "reviews",
        r#"  hosts: [reviews]
  http:
  - fault:
      delay: {fixedDelay: 5s, percentage: {value: 40}}
      abort: {httpStatus: 500, percentage: {value: 60.5}}
    route: [{destination: {host: reviews, subset: v1}}]
"#,
    ));
    let r = &routes_of(&snap, 9080, REVIEWS)[0];
    let any = r
        .typed_per_filter_config
        .get(FAULT_FILTER)
        .expect("fault config");
    assert_eq!(
        any.type_url,
        "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
    );
    let f = HttpFault::decode(any.value.as_slice()).unwrap();
    let delay = f.delay.unwrap();
    let pct = delay.percentage.unwrap();
    assert_eq!(
        (pct.numerator, pct.denominator),
        (400_000, DenominatorType::Million as i32)
    );
    let abort = f.abort.unwrap();
    assert_eq!(
        abort.error_type,
        Some(fault_abort::ErrorType::HttpStatus(500))
    );
    assert_eq!(abort.percentage.unwrap().numerator, 605_000);
}

#[test]
fn retries_and_timeouts() {
    let snap = with(&vs(
        "reviews",
        r#"  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /book}}]
    timeout: 30s
    retries: {attempts: 10, perTryTimeout: 3s, retryOn: "5xx,connect-failure,refused-stream,503"}
    route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /none}}]
    retries: {attempts: 0}
    route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /remote}}]
    retries: {attempts: 3, retryRemoteLocalities: true, retryOn: gateway-error}
    route: [{destination: {host: reviews}}]
"#,
    ));
    let routes = routes_of(&snap, 9080, REVIEWS);
    let a = action(&routes[0]);
    assert_eq!(a.timeout.unwrap().seconds, 30);
    let rp = a.retry_policy.as_ref().unwrap();
    assert_eq!(rp.num_retries.unwrap().value, 10);
    assert_eq!(rp.per_try_timeout.unwrap().seconds, 3);
    assert_eq!(
        rp.retry_on,
        "5xx,connect-failure,refused-stream,retriable-status-codes"
    );
    assert_eq!(rp.retriable_status_codes, [503]);
    assert_eq!(rp.retry_host_predicate.len(), 1);
    assert!(action(&routes[1]).retry_policy.is_none());
    let rp = action(&routes[2]).retry_policy.clone().unwrap();
    assert_eq!(rp.retry_on, "gateway-error");
    assert!(rp.retriable_status_codes.is_empty());
    assert_eq!(
        rp.retry_priority.unwrap().name,
        "envoy.retry_priorities.previous_priorities"
    );
}

#[test]
fn mirrors() {
    let snap = with(&vs(
        "reviews",
        r#"  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /a}}]
    mirror: {host: reviews, subset: v2}
    mirrorPercentage: {value: 50}
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{uri: {prefix: /b}}]
    mirror: {host: catalog.store.svc.cluster.local}
    mirror_percent: 5
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{uri: {prefix: /c}}]
    mirrors:
    - {destination: {host: reviews, subset: v2}}
    - {destination: {host: reviews, subset: v3}, percentage: {value: 0}}
    route: [{destination: {host: reviews, subset: v1}}]
"#,
    ));
    let routes = routes_of(&snap, 9080, REVIEWS);
    let m = &action(&routes[0]).request_mirror_policies;
    assert_eq!(m.len(), 1);
    assert_eq!(
        m[0].cluster,
        "outbound|9080|v2|reviews.shop.svc.cluster.local"
    );
    let f = m[0]
        .runtime_fraction
        .clone()
        .unwrap()
        .default_value
        .unwrap();
    assert_eq!(
        (f.numerator, f.denominator),
        (500_000, DenominatorType::Million as i32)
    );
    let m = &action(&routes[1]).request_mirror_policies;
    assert_eq!(
        m[0].cluster,
        "outbound|9080||catalog.store.svc.cluster.local"
    );
    let f = m[0]
        .runtime_fraction
        .clone()
        .unwrap()
        .default_value
        .unwrap();
    assert_eq!(
        (f.numerator, f.denominator),
        (5, DenominatorType::Hundred as i32)
    );
    // A 0% mirror is no mirror; an unset percentage mirrors everything.
    let m = &action(&routes[2]).request_mirror_policies;
    assert_eq!(m.len(), 1);
    assert_eq!(
        m[0].runtime_fraction
            .clone()
            .unwrap()
            .default_value
            .unwrap()
            .numerator,
        100
    );
}

#[test]
fn cors_policy_goes_to_the_cors_filter() {
    let snap = with(&vs(
        "reviews",
        r#"  hosts: [reviews]
  http:
  - corsPolicy:
      allowOrigin: ["https://book.example"]
      allowOrigins: [{prefix: "https://app."}, {regex: "https://.*\\.dev"}]
      allowMethods: [GET, POST]
      allowHeaders: [x-a, x-b]
      exposeHeaders: [x-c]
      maxAge: 24h
      allowCredentials: true
    route: [{destination: {host: reviews}}]
"#,
    ));
    let r = &routes_of(&snap, 9080, REVIEWS)[0];
    let any = r
        .typed_per_filter_config
        .get(CORS_FILTER)
        .expect("cors config");
    assert_eq!(
        any.type_url,
        "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
    );
    let c = CorsPolicy::decode(any.value.as_slice()).unwrap();
    let origins: Vec<MatchPattern> = c
        .allow_origin_string_match
        .iter()
        .map(|s| s.match_pattern.clone().unwrap())
        .collect();
    assert_eq!(origins[0], MatchPattern::Prefix("https://app.".into()));
    assert!(matches!(&origins[1], MatchPattern::SafeRegex(r) if r.regex == "https://.*\\.dev"));
    assert_eq!(
        origins[2],
        MatchPattern::Exact("https://book.example".into())
    );
    assert_eq!(c.allow_methods, "GET,POST");
    assert_eq!(c.allow_headers, "x-a,x-b");
    assert_eq!(c.expose_headers, "x-c");
    assert_eq!(c.max_age, "86400");
    assert!(c.allow_credentials.unwrap().value);
    assert_eq!(
        c.filter_enabled.unwrap().default_value.unwrap().numerator,
        100
    );
}

// ---- delegation, merging, conflicts -------------------------------------------------------------------------

/// A snapshot without validation (the fixtures below include rules istiod's validation would refuse, to show the
/// generator still skips them safely).
fn unvalidated(extra: &str) -> Snapshot {
    use crate::config::parse::{Document, parse_documents};
    let yaml = format!("{MESH}\n---\n{extra}");
    let objects: Vec<_> = parse_documents("fixture.yaml", yaml.as_bytes(), "default")
        .into_iter()
        .filter_map(|d| match d {
            Document::Object { object, .. } => Some(object),
            _ => None,
        })
        .collect();
    Snapshot::build(1, &objects, Vec::new())
}

#[test]
fn delegate_rules_are_pulled_in_with_merged_matches() {
    let snap = unvalidated(&format!(
        "{}\n---\n{}",
        vs(
            "root",
            r#"  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /api}, headers: {x-team: {exact: a}}}]
    delegate: {name: child, namespace: shop}
  - route: [{destination: {host: reviews, subset: fallback}}]
"#
        ),
        vs(
            "child",
            r#"  http:
  - name: v1
    match: [{uri: {prefix: /api/v1}}]
    route: [{destination: {host: reviews, subset: v1}}]
  - name: elsewhere
    match: [{uri: {prefix: /other}}]
    route: [{destination: {host: reviews, subset: v9}}]
  - name: all
    route: [{destination: {host: reviews, subset: v2}}]
"#
        )
    ));
    let routes = routes_of(&snap, 9080, REVIEWS);
    let names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
    // `/other` is outside the root's `/api`: dropped.
    assert_eq!(names, ["v1", "all", ""]);
    assert_eq!(
        path(&routes[0]),
        route_match::PathSpecifier::Prefix("/api/v1".into())
    );
    assert_eq!(headers(&routes[0])[0].name, "x-team");
    // A delegate rule without match takes the root's.
    assert_eq!(
        path(&routes[1]),
        route_match::PathSpecifier::Prefix("/api".into())
    );
    assert_eq!(
        cluster(&routes[1]),
        "outbound|9080|v2|reviews.shop.svc.cluster.local"
    );
    assert_eq!(
        cluster(&routes[2]),
        "outbound|9080|fallback|reviews.shop.svc.cluster.local"
    );
}

#[test]
fn delegate_rules_inherit_what_they_leave_unset_from_the_root() {
    let snap = with(&format!(
        "{}\n---\n{}",
        vs(
            "root",
            r#"  hosts: [reviews]
  http:
  - name: team
    match: [{uri: {prefix: /team}}]
    rewrite: {authority: team.internal}
    timeout: 7s
    retries: {attempts: 2, retryOn: connect-failure}
    headers: {request: {set: {x-root: "1"}}}
    delegate: {name: child, namespace: shop}
"#
        ),
        vs(
            "child",
            r#"  http:
  - name: a
    match: [{uri: {prefix: /team/a}}]
    timeout: 2s
    route: [{destination: {host: reviews, subset: a}}]
  - route: [{destination: {host: reviews, subset: rest}}]
"#
        )
    ));
    let routes = routes_of(&snap, 9080, REVIEWS);
    let names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
    // istiod chains the names: `root-delegate`, or the root's alone.
    assert_eq!(names, ["team-a", "team"]);
    // The delegate's own timeout wins; the rest comes from the root rule.
    assert_eq!(action(&routes[0]).timeout.unwrap().seconds, 2);
    assert_eq!(action(&routes[1]).timeout.unwrap().seconds, 7);
    for r in &routes {
        let a = action(r);
        assert_eq!(
            a.host_rewrite_specifier,
            Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(
                "team.internal".into()
            )),
            "{}",
            r.name
        );
        let rp = a.retry_policy.as_ref().unwrap();
        assert_eq!(rp.num_retries.unwrap().value, 2);
        assert_eq!(rp.retry_on, "connect-failure");
        assert!(
            r.request_headers_to_add
                .iter()
                .any(|h| h.header.as_ref().unwrap().key == "x-root"),
            "{}",
            r.name
        );
    }
}

#[test]
fn a_delegate_must_be_exported_to_the_root_namespace() {
    let root = |name: &str, delegate_ns: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  hosts: [reviews]\n  http:\n  - delegate: {{name: child, namespace: {delegate_ns}}}\n"
        )
    };
    let child = |ns: &str, export: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: child, namespace: {ns}}}\nspec:\n  exportTo: [{export}]\n  http:\n  - route: [{{destination: {{host: reviews.shop.svc.cluster.local, subset: {ns}}}}}]\n"
        )
    };
    // Exported to "." of another namespace: not usable from shop; exported to shop: used.
    for (export, used) in [("\".\"", false), ("shop", true), ("\"*\"", true)] {
        let snap = with(&format!(
            "{}\n---\n{}",
            root("root", "teams"),
            child("teams", export)
        ));
        let routes = routes_of(&snap, 9080, REVIEWS);
        let clusters: Vec<&str> = routes.iter().map(cluster).collect();
        assert_eq!(
            clusters.contains(&"outbound|9080|teams|reviews.shop.svc.cluster.local"),
            used,
            "exportTo {export}: {clusters:?}"
        );
    }
}

#[test]
fn delegate_rules_conflicting_with_the_root_are_dropped_as_istiod_does() {
    let snap = unvalidated(&format!(
        "{}\n---\n{}",
        vs(
            "root",
            r#"  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /api}, method: {exact: GET}}, {uri: {exact: /health}}]
    delegate: {name: child, namespace: shop}
"#
        ),
        vs(
            "child",
            r#"  http:
  - name: one-match-outside
    match: [{uri: {prefix: /api/v1}}, {uri: {prefix: /other}}]
    route: [{destination: {host: reviews, subset: x}}]
  - name: other-method
    match: [{uri: {prefix: /api/v2}, method: {exact: POST}}]
    route: [{destination: {host: reviews, subset: x}}]
  - name: regex-under-prefix
    match: [{uri: {regex: "/api/.*"}}]
    route: [{destination: {host: reviews, subset: x}}]
  - name: ok
    match: [{uri: {prefix: /api/v3}}, {uri: {exact: /health}}]
    route: [{destination: {host: reviews, subset: ok}}]
"#
        )
    ));
    let routes = routes_of(&snap, 9080, REVIEWS);
    let names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
    // A delegate rule is dropped when any of its matches fits no root match; `ok`'s two matches each fit one.
    assert_eq!(names, ["ok", "ok"]);
    assert_eq!(
        path(&routes[0]),
        route_match::PathSpecifier::Prefix("/api/v3".into())
    );
    // The root's method carries over to the merged match.
    assert_eq!(headers(&routes[0])[0].name, ":method");
    assert_eq!(
        path(&routes[1]),
        route_match::PathSpecifier::Path("/health".into())
    );
}

#[test]
fn virtual_services_for_one_host_merge_and_conflicts_are_reported() {
    let snap = with(&format!(
        "{}\n---\n{}\n---\n{}\n---\n{}",
        vs(
            "a-first",
            "  hosts: [reviews]\n  http:\n  - match: [{uri: {prefix: /a}}]\n    route: [{destination: {host: reviews, subset: a}}]\n"
        ),
        vs(
            "b-second",
            "  hosts: [reviews.shop.svc.cluster.local]\n  http:\n  - route: [{destination: {host: reviews, subset: b}}]\n"
        ),
        vs(
            "c-shadowed",
            "  hosts: [reviews]\n  http:\n  - match: [{uri: {prefix: /c}}]\n    route: [{destination: {host: reviews, subset: c}}]\n"
        ),
        vs(
            "d-wildcard",
            "  hosts: ['*.shop.svc.cluster.local']\n  http:\n  - route: [{destination: {host: reviews, subset: d}}]\n"
        ),
    ));
    let routes = routes_of(&snap, 9080, REVIEWS);
    let clusters: Vec<&str> = routes.iter().map(cluster).collect();
    assert_eq!(
        clusters,
        [
            "outbound|9080|a|reviews.shop.svc.cluster.local",
            "outbound|9080|b|reviews.shop.svc.cluster.local",
        ]
    );
    // The wildcard VirtualService still routes the other services of the namespace.
    let ratings = routes_of(&snap, 9080, "ratings.shop.svc.cluster.local");
    assert_eq!(
        cluster(&ratings[0]),
        "outbound|9080|d|reviews.shop.svc.cluster.local"
    );

    let conflicts = virtual_service_conflicts(&sidecar(&snap, "shop", "app-1"));
    let text: Vec<String> = conflicts.iter().map(|c| c.to_string()).collect();
    assert!(
        text.iter()
            .any(|t| t.contains("VirtualService shop/c-shadowed")
                && t.contains("catch-all")
                && t.contains("shop/b-second wins")),
        "{text:#?}"
    );
    assert!(
        text.iter()
            .any(|t| t.contains("shop/d-wildcard") && t.contains("less specific")),
        "{text:#?}"
    );
}

#[test]
fn virtual_service_hosts_without_a_service_get_their_own_vhost() {
    let snap = with(&vs(
        "external",
        "  hosts: [fruits.example.io]\n  http:\n  - route: [{destination: {host: reviews, port: {number: 9080}}}]\n",
    ));
    let rcs = sidecar_routes(&snap);
    for port in ["80", "9080", "9090"] {
        let v = vhost(config(&rcs, port), &format!("fruits.example.io:{port}"));
        assert_eq!(
            v.domains,
            [
                "fruits.example.io".to_string(),
                format!("fruits.example.io:{port}")
            ]
        );
        assert_eq!(
            cluster(&v.routes[0]),
            "outbound|9080||reviews.shop.svc.cluster.local"
        );
    }
}

#[test]
fn virtual_services_not_bound_to_mesh_do_not_route_sidecars() {
    let snap = with(&vs(
        "gw-only",
        "  hosts: [reviews]\n  gateways: [edge]\n  http:\n  - route: [{destination: {host: reviews, subset: x}}]\n",
    ));
    assert_eq!(routes_of(&snap, 9080, REVIEWS)[0].name, "default");
}

// ---- hash policies --------------------------------------------------------------------------------------------

#[test]
fn consistent_hash_destination_rules_set_route_hash_policies() {
    use route_action::hash_policy::PolicySpecifier;
    let snap = with(
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {consistentHash: {httpHeaderName: x-user}}
  subsets:
  - name: sticky
    labels: {version: v2}
    trafficPolicy:
      loadBalancer: {consistentHash: {httpCookie: {name: session, ttl: 60s, path: /}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: shop}
spec:
  host: ratings
  trafficPolicy:
    loadBalancer: {consistentHash: {useSourceIp: true}}
    portLevelSettings:
    - port: {number: 9090}
      loadBalancer: {consistentHash: {httpQueryParameterName: user}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /sticky}}]
    route: [{destination: {host: reviews, subset: sticky}}]
"#,
    );
    let spec = |r: &Route| action(r).hash_policy[0].policy_specifier.clone().unwrap();
    let reviews = routes_of(&snap, 9080, REVIEWS);
    match spec(&reviews[0]) {
        PolicySpecifier::Cookie(c) => {
            assert_eq!(
                (c.name.as_str(), c.path.as_str(), c.ttl.unwrap().seconds),
                ("session", "/", 60)
            )
        }
        other => panic!("{other:?}"),
    }
    let ratings = routes_of(&snap, 9080, "ratings.shop.svc.cluster.local");
    assert!(matches!(spec(&ratings[0]), PolicySpecifier::ConnectionProperties(c) if c.source_ip));
    let admin = routes_of(&snap, 9090, "ratings.shop.svc.cluster.local");
    assert!(matches!(spec(&admin[0]), PolicySpecifier::QueryParameter(q) if q.name == "user"));
    // No DR, no hash.
    let catalog = routes_of(&snap, 9080, "catalog.store.svc.cluster.local");
    assert!(action(&catalog[0]).hash_policy.is_empty());
}

// ---- TrafficSplit ---------------------------------------------------------------------------------------------

const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.2.1
  ports: [{name: http, port: 8000}]
---
apiVersion: v1
kind: Service
metadata: {name: web-v1, namespace: shop}
spec:
  clusterIP: 10.96.2.2
  selector: {app: web, version: v1}
  ports: [{name: http, port: 8000}]
---
apiVersion: v1
kind: Service
metadata: {name: web-v2, namespace: shop}
spec:
  clusterIP: 10.96.2.3
  selector: {app: web, version: v2}
  ports: [{name: http, port: 8000}]
---
apiVersion: split.smi-spec.io/v1alpha1
kind: TrafficSplit
metadata: {name: split-sample, namespace: shop}
spec:
  service: web
  backends:
  - {service: web-v1, weight: 100}
  - {service: web-v2, weight: 900}
"#;

#[test]
fn traffic_split_weights_are_normalised() {
    let snap = with(WEB);
    let routes = routes_of(&snap, 8000, "web.shop.svc.cluster.local");
    assert_eq!(routes.len(), 1);
    assert_eq!(
        weights(&routes[0]),
        [
            ("outbound|8000||web-v1.shop.svc.cluster.local".into(), 10),
            ("outbound|8000||web-v2.shop.svc.cluster.local".into(), 90),
        ]
    );
    // The backends themselves keep their default routes.
    let v1 = routes_of(&snap, 8000, "web-v1.shop.svc.cluster.local");
    assert_eq!(
        cluster(&v1[0]),
        "outbound|8000||web-v1.shop.svc.cluster.local"
    );
}

#[test]
fn a_virtual_service_overrides_a_traffic_split() {
    let snap = with(&format!(
        "{WEB}\n---\n{}",
        vs(
            "web",
            "  hosts: [web]\n  http:\n  - route: [{destination: {host: web-v2}}]\n"
        )
    ));
    let routes = routes_of(&snap, 8000, "web.shop.svc.cluster.local");
    assert_eq!(
        cluster(&routes[0]),
        "outbound|8000||web-v2.shop.svc.cluster.local"
    );
}

// ---- gateways -------------------------------------------------------------------------------------------------

const GATEWAY: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: ingress-1, namespace: istio-system, labels: {istio: ingressgateway}}
spec:
  containers: [{name: istio-proxy}]
status: {phase: Running, podIP: 10.0.9.1}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: shop-gateway, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [fruits.example.io, "*.juice.example.io", "./local.example.io", "other/foreign.example.io"]
  - port: {number: 8080, name: http-redirect, protocol: HTTP}
    hosts: ["*"]
    tls: {httpsRedirect: true}
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [fruits.example.io]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: fruits, namespace: shop}
spec:
  hosts: [fruits.example.io, local.example.io, foreign.example.io]
  gateways: [shop-gateway]
  http:
  - match: [{uri: {prefix: /api}}]
    route: [{destination: {host: reviews}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: juice, namespace: store}
spec:
  hosts: ["*"]
  gateways: [shop/shop-gateway]
  http:
  - route: [{destination: {host: catalog}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: mesh-only, namespace: shop}
spec:
  hosts: [fruits.example.io]
  http:
  - route: [{destination: {host: ratings}}]
"#;

#[test]
fn gateway_servers_become_http_port_route_configs() {
    let snap = with(GATEWAY);
    let rcs = route_configs(&router(&snap, "istio-system", "ingress-1", &[]));
    let names: Vec<&str> = rcs.iter().map(|r| r.name.as_str()).collect();
    // The PASSTHROUGH HTTPS server is not HTTP-routed.
    assert_eq!(names, ["http.80", "http.8080"]);

    let rc = config(&rcs, "http.80");
    let vnames: Vec<&str> = rc.virtual_hosts.iter().map(|v| v.name.as_str()).collect();
    // `*` in store intersects `*.juice.example.io` (and the exact hosts, already taken by shop/fruits);
    // `other/foreign.example.io` admits only VirtualServices from `other`.
    assert_eq!(
        vnames,
        [
            "*.juice.example.io:80",
            "fruits.example.io:80",
            "local.example.io:80"
        ]
    );
    let fruits = vhost(rc, "fruits.example.io:80");
    // istiod's gateway domains: any port in the Host header, except on wildcard hosts.
    assert_eq!(fruits.domains, ["fruits.example.io", "fruits.example.io:*"]);
    assert_eq!(
        vhost(rc, "*.juice.example.io:80").domains,
        ["*.juice.example.io", "*.juice.example.io:80"]
    );
    assert_eq!(fruits.require_tls, TlsRequirementType::None as i32);
    // Destinations resolve in the VirtualService's namespace; the mesh-only VS is ignored.
    assert_eq!(fruits.routes.len(), 1);
    assert_eq!(
        cluster(&fruits.routes[0]),
        "outbound|9080||reviews.shop.svc.cluster.local"
    );
    let juice = vhost(rc, "*.juice.example.io:80");
    assert_eq!(
        cluster(&juice.routes[0]),
        "outbound|9080||catalog.store.svc.cluster.local"
    );

    let redirect = vhost(config(&rcs, "http.8080"), "*:8080");
    assert_eq!(redirect.domains, ["*"]);
    assert_eq!(redirect.require_tls, TlsRequirementType::All as i32);
}

#[test]
fn gateway_without_virtual_service_has_no_vhost() {
    let snap = with(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: bare, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [nothing.example.io]
"#,
    );
    let rcs = route_configs(&router(
        &snap,
        "istio-system",
        "gw",
        &[("istio", "ingressgateway")],
    ));
    assert_eq!(rcs.len(), 1);
    assert_eq!(rcs[0].name, "http.80");
    assert!(rcs[0].virtual_hosts.is_empty());
    // A sidecar sees no gateway routes, a router no sidecar routes.
    assert!(
        sidecar_routes(&snap)
            .iter()
            .all(|r| !r.name.starts_with("http."))
    );
}

/// istiod's gateway port translation: a Gateway server on 80 is served on the target port of the router's own
/// Service (the stock `istio-ingressgateway` maps 80 → 8080, and its container listens on 8080): listener
/// `0.0.0.0_8080`, routes `http.8080`, while vhosts keep the port clients address (`:80`). A server port without
/// such a Service port binds as written.
#[test]
fn gateway_servers_bind_the_target_port_of_the_gateway_service() {
    let snap = snapshot_from_yaml(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: gw-1, namespace: istio-system, labels: {istio: ingressgateway}}
spec:
  containers: [{name: istio-proxy, ports: [{name: http2, containerPort: 8080}]}]
status: {phase: Running, podIP: 10.0.0.9}
---
apiVersion: v1
kind: Service
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec:
  clusterIP: 10.96.0.99
  selector: {istio: ingressgateway}
  ports: [{name: http2, port: 80, targetPort: 8080}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [shop.example.io]
  - port: {number: 9000, name: http-admin, protocol: HTTP}
    hosts: [admin.example.io]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge, namespace: shop}
spec:
  hosts: [shop.example.io, admin.example.io]
  gateways: [edge]
  http:
  - directResponse: {status: 200}
"#,
    );
    let scope = router(&snap, "istio-system", "gw-1", &[]);
    assert_eq!(scope.gateway_ports(80), [8080]);
    assert_eq!(scope.gateway_ports(9000), [9000]);
    let listeners: Vec<String> = crate::envoy::listener::listeners(&scope)
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert_eq!(listeners, ["0.0.0.0_8080", "0.0.0.0_9000"]);
    let rcs = route_configs(&scope);
    let names: Vec<&str> = rcs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["http.8080", "http.9000"]);
    let vh = vhost(config(&rcs, "http.8080"), "shop.example.io:80");
    assert_eq!(vh.domains, ["shop.example.io", "shop.example.io:*"]);
}
