//! Table tests for the networking rules, run through `check_file` exactly as the loader and `validate` command
//! see documents. Each invalid document breaks one rule and must produce exactly the expected line.

use crate::config::validate::check_file;

/// A networking document named `shop/reviews` with a flow-style `spec`.
fn doc(kind: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1alpha3\nkind: {kind}\nmetadata: {{name: reviews, namespace: shop}}\nspec: {spec}\n"
    )
}

/// Every problem (errors and warnings) of every document, as printed.
fn problems(text: &str) -> Vec<String> {
    check_file("test.yaml", text.as_bytes(), "default", false)
        .iter()
        .flat_map(|c| c.problems.iter().map(|p| p.to_string()))
        .collect()
}

const ROUTE: &str = "route: [{destination: {host: reviews}}]";

/// (kind, spec, the one expected line).
fn invalid_cases() -> Vec<(&'static str, String, &'static str)> {
    let vs = |rule: &str| format!("{{hosts: [reviews], http: [{{{rule}}}]}}");
    let gw =
        |server: &str| format!("{{selector: {{istio: ingressgateway}}, servers: [{{{server}}}]}}");
    let https = "port: {number: 443, name: https, protocol: HTTPS}, hosts: [shop.example.com]";
    let dr = |tp: &str| format!("{{host: reviews, trafficPolicy: {{{tp}}}}}");
    let se_ports = "ports: [{number: 443, name: https, protocol: TLS}]";
    vec![
        // ---- VirtualService ----
        (
            "VirtualService",
            vs("route: [{destination: {host: a}, weight: 50}, {destination: {host: b}, weight: 40}]"),
            "VirtualService shop/reviews: spec.http[0].route: weights must sum to 100 (found 90)",
        ),
        (
            "VirtualService",
            "{http: []}".into(),
            "VirtualService shop/reviews: spec.hosts: at least one host is required",
        ),
        (
            "VirtualService",
            format!("{{gateways: [edge], http: [{{{ROUTE}}}]}}"),
            "VirtualService shop/reviews: spec.gateways: a delegate VirtualService (no hosts) must not set gateways: it is bound through its root",
        ),
        (
            "VirtualService",
            "{tcp: [{route: [{destination: {host: db}}]}]}".into(),
            "VirtualService shop/reviews: spec.hosts: at least one host is required for tls and tcp routes (only a delegate, with http routes only, may omit hosts)",
        ),
        (
            "VirtualService",
            "{http: [{delegate: {name: other}}]}".into(),
            "VirtualService shop/reviews: spec.http[0].delegate: a delegate VirtualService (no hosts) cannot delegate again",
        ),
        (
            "VirtualService",
            format!("{{hosts: [\"a.*.example.com\"], http: [{{{ROUTE}}}]}}"),
            "VirtualService shop/reviews: spec.hosts[0]: host \"a.*.example.com\": a wildcard is only allowed as the first label (\"*.example.com\")",
        ),
        (
            "VirtualService",
            format!("{{hosts: [\"*\"], http: [{{{ROUTE}}}]}}"),
            "VirtualService shop/reviews: spec.hosts[0]: host \"*\" is only allowed when the VirtualService is bound to gateways (not to mesh)",
        ),
        (
            "VirtualService",
            format!("{{hosts: [reviews], gateways: [a/b/c], http: [{{{ROUTE}}}]}}"),
            "VirtualService shop/reviews: spec.gateways[0]: gateway \"a/b/c\" must be \"mesh\", a Gateway name or namespace/name",
        ),
        (
            "VirtualService",
            vs("route: [{destination: {subset: v1}}]"),
            "VirtualService shop/reviews: spec.http[0].route[0].destination.host: required",
        ),
        (
            "VirtualService",
            vs("redirect: {uri: /new}, route: [{destination: {host: reviews}}]"),
            "VirtualService shop/reviews: spec.http[0]: only one of route, redirect, directResponse or delegate may be set (found route and redirect)",
        ),
        (
            "VirtualService",
            vs("timeout: 5s"),
            "VirtualService shop/reviews: spec.http[0]: one of route, redirect, directResponse or delegate is required",
        ),
        (
            "VirtualService",
            vs(&format!("match: [{{uri: {{exact: /a, prefix: /b}}}}], {ROUTE}")),
            "VirtualService shop/reviews: spec.http[0].match[0].uri: exactly one of exact, prefix or regex must be set (found 2)",
        ),
        (
            "VirtualService",
            vs(&format!("match: [{{uri: {{regex: \"(?=api)\"}}}}], {ROUTE}")),
            "VirtualService shop/reviews: spec.http[0].match[0].uri.regex: invalid RE2 regex \"(?=api)\": look-around, including look-ahead and look-behind, is not supported",
        ),
        (
            "VirtualService",
            vs(&format!("fault: {{abort: {{httpStatus: 500, percentage: {{value: 120}}}}}}, {ROUTE}")),
            "VirtualService shop/reviews: spec.http[0].fault.abort.percentage.value: percentage 120 must be in the range 0..100",
        ),
        (
            "VirtualService",
            vs(&format!("fault: {{abort: {{httpStatus: 700}}}}, {ROUTE}")),
            "VirtualService shop/reviews: spec.http[0].fault.abort.httpStatus: HTTP status must be in the range 200..599 (found 700)",
        ),
        (
            "VirtualService",
            vs(&format!("retries: {{attempts: -1}}, {ROUTE}")),
            "VirtualService shop/reviews: spec.http[0].retries.attempts: attempts must not be negative (found -1)",
        ),
        (
            "VirtualService",
            vs(&format!("retries: {{attempts: 3, retryOn: \"5xx,sometimes\"}}, {ROUTE}")),
            "VirtualService shop/reviews: spec.http[0].retries.retryOn: unknown retry condition \"sometimes\" (expected Envoy conditions such as 5xx, connect-failure, refused-stream, or an HTTP status code)",
        ),
        (
            "VirtualService",
            vs(&format!("timeout: 0s, {ROUTE}")),
            "VirtualService shop/reviews: spec.http[0].timeout: duration must be at least 1ms (found 0s)",
        ),
        (
            "VirtualService",
            vs(&format!("mirror: {{host: reviews-shadow}}, mirrorPercentage: {{value: 150}}, {ROUTE}")),
            "VirtualService shop/reviews: spec.http[0].mirrorPercentage.value: percentage 150 must be in the range 0..100",
        ),
        (
            "VirtualService",
            vs("redirect: {uri: /new}, rewrite: {uri: /old}"),
            "VirtualService shop/reviews: spec.http[0].rewrite: cannot be used with redirect (a redirect rewrites through its own fields)",
        ),
        (
            "VirtualService",
            vs("directResponse: {status: 99}"),
            "VirtualService shop/reviews: spec.http[0].directResponse.status: status must be in the range 200..599 (found 99)",
        ),
        (
            "VirtualService",
            vs("route: [{destination: {host: reviews, port: {number: 70000}}}]"),
            "VirtualService shop/reviews: spec.http[0].route[0].destination.port.number: port number 70000 must be in the range 1..65535",
        ),
        (
            "VirtualService",
            "{hosts: [shop.example.com], tls: [{match: [{sniHosts: [other.example.com]}], route: [{destination: {host: shop}}]}]}".into(),
            "VirtualService shop/reviews: spec.tls[0].match[0].sniHosts[0]: SNI host \"other.example.com\" does not match any of the VirtualService hosts",
        ),
        (
            "VirtualService",
            "{hosts: [db], tcp: [{match: [{destinationSubnets: [10.0.0.0/33]}], route: [{destination: {host: db}}]}]}".into(),
            "VirtualService shop/reviews: spec.tcp[0].match[0].destinationSubnets[0]: \"10.0.0.0/33\" is not an IP address or CIDR",
        ),
        // ---- Gateway ----
        (
            "Gateway",
            "{selector: {istio: ingressgateway}}".into(),
            "Gateway shop/reviews: spec.servers: at least one server is required",
        ),
        (
            "Gateway",
            gw("port: {number: 21, name: ftp, protocol: FTP}, hosts: [\"*\"]"),
            "Gateway shop/reviews: spec.servers[0].port.protocol: unsupported protocol \"FTP\" (expected one of HTTP, HTTPS, GRPC, GRPC-WEB, HTTP2, MONGO, TCP, TLS)",
        ),
        (
            "Gateway",
            gw("hosts: [shop.example.com]"),
            "Gateway shop/reviews: spec.servers[0].port: required",
        ),
        (
            "Gateway",
            gw("port: {number: 80, name: http, protocol: HTTP}, hosts: [a/b/c]"),
            "Gateway shop/reviews: spec.servers[0].hosts[0]: host \"a/b/c\" must be in the form namespace/dnsName",
        ),
        (
            "Gateway",
            gw(&format!("{https}, tls: {{mode: SIMPLE, privateKey: /etc/certs/tls.key}}")),
            "Gateway shop/reviews: spec.servers[0].tls.serverCertificate: required for SIMPLE TLS unless credentialName is set",
        ),
        (
            "Gateway",
            gw(&format!("{https}, tls: {{mode: MUTUAL, serverCertificate: /c.crt, privateKey: /c.key}}")),
            "Gateway shop/reviews: spec.servers[0].tls.caCertificates: required for MUTUAL TLS unless credentialName is set",
        ),
        (
            "Gateway",
            gw(https),
            "Gateway shop/reviews: spec.servers[0].tls: required for HTTPS servers (set mode and certificates)",
        ),
        (
            "Gateway",
            gw("port: {number: 80, name: http, protocol: HTTP}, hosts: [\"*\"], tls: {mode: SIMPLE, credentialName: shop-cert}"),
            "Gateway shop/reviews: spec.servers[0].tls: HTTP servers cannot terminate TLS: set tls.httpsRedirect: true to redirect to HTTPS, or use an HTTPS or TLS port",
        ),
        (
            "Gateway",
            gw("port: {number: 80, name: http, protocol: HTTP}, hosts: [\"*\"], name: web}, {port: {number: 81, name: http2, protocol: HTTP}, hosts: [\"*\"], name: web"),
            "Gateway shop/reviews: spec.servers[1].name: server name \"web\" is already used by spec.servers[0]",
        ),
        // ---- DestinationRule ----
        (
            "DestinationRule",
            "{subsets: [{name: v1, labels: {version: v1}}]}".into(),
            "DestinationRule shop/reviews: spec.host: required",
        ),
        (
            "DestinationRule",
            "{host: reviews, subsets: [{name: v1, labels: {version: v1}}, {name: v1, labels: {version: v2}}]}".into(),
            "DestinationRule shop/reviews: spec.subsets[1].name: duplicate subset name \"v1\"",
        ),
        (
            "DestinationRule",
            "{host: reviews, subsets: [{labels: {version: v1}}]}".into(),
            "DestinationRule shop/reviews: spec.subsets[0].name: required",
        ),
        (
            "DestinationRule",
            "{host: reviews, subsets: [{name: v1, labels: {version: \"v 1\"}}]}".into(),
            "DestinationRule shop/reviews: spec.subsets[0].labels.version: invalid label value \"v 1\" (at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)",
        ),
        (
            "DestinationRule",
            dr("loadBalancer: {simple: ROUND_ROBIN, consistentHash: {useSourceIp: true}}"),
            "DestinationRule shop/reviews: spec.trafficPolicy.loadBalancer: only one of simple, consistentHash or backendUtilization may be set",
        ),
        (
            "DestinationRule",
            dr("loadBalancer: {consistentHash: {httpHeaderName: x-user, useSourceIp: true}}"),
            "DestinationRule shop/reviews: spec.trafficPolicy.loadBalancer.consistentHash: exactly one hash key (httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName) must be set (found 2)",
        ),
        (
            "DestinationRule",
            dr("outlierDetection: {consecutiveErrors: 5, maxEjectionPercent: 120}"),
            "DestinationRule shop/reviews: spec.trafficPolicy.outlierDetection.maxEjectionPercent: percentage 120 must be in the range 0..100",
        ),
        (
            "DestinationRule",
            dr("tls: {mode: MUTUAL, privateKey: /etc/certs/key.pem}"),
            "DestinationRule shop/reviews: spec.trafficPolicy.tls.clientCertificate: required for MUTUAL TLS unless credentialName is set",
        ),
        (
            "DestinationRule",
            dr("connectionPool: {tcp: {connectTimeout: 0s}}"),
            "DestinationRule shop/reviews: spec.trafficPolicy.connectionPool.tcp.connectTimeout: duration must be at least 1ms (found 0s)",
        ),
        // ---- ServiceEntry ----
        (
            "ServiceEntry",
            format!("{{{se_ports}, resolution: DNS}}"),
            "ServiceEntry shop/reviews: spec.hosts: at least one host is required",
        ),
        (
            "ServiceEntry",
            format!("{{hosts: [\"*.example.com\"], {se_ports}, resolution: DNS}}"),
            "ServiceEntry shop/reviews: spec.hosts[0]: wildcard host \"*.example.com\" cannot be resolved with DNS resolution (list endpoints or use NONE)",
        ),
        (
            "ServiceEntry",
            format!("{{hosts: [api.example.com], {se_ports}, resolution: STATIC}}"),
            "ServiceEntry shop/reviews: spec.endpoints: STATIC resolution needs endpoints or a workloadSelector",
        ),
        (
            "ServiceEntry",
            format!("{{hosts: [api.example.com], {se_ports}, resolution: STATIC, endpoints: [{{address: backend.example.com}}]}}"),
            "ServiceEntry shop/reviews: spec.endpoints[0].address: \"backend.example.com\" must be an IP address or a unix:// socket with STATIC resolution",
        ),
        (
            "ServiceEntry",
            "{hosts: [api.example.com], ports: [{number: 80, name: http}, {number: 8080, name: http}], resolution: DNS}".into(),
            "ServiceEntry shop/reviews: spec.ports[1].name: duplicate port name \"http\"",
        ),
        (
            "ServiceEntry",
            format!("{{hosts: [api.example.com], addresses: [1.2.3.400], {se_ports}}}"),
            "ServiceEntry shop/reviews: spec.addresses[0]: \"1.2.3.400\" is not an IP address or CIDR",
        ),
        (
            "ServiceEntry",
            format!("{{hosts: [api.example.com], {se_ports}, resolution: NONE, endpoints: [{{address: 1.2.3.4}}]}}"),
            "ServiceEntry shop/reviews: spec.endpoints: endpoints cannot be set with NONE resolution (use STATIC or DNS)",
        ),
        // ---- Sidecar ----
        (
            "Sidecar",
            "{egress: [{hosts: [api.example.com]}]}".into(),
            "Sidecar shop/reviews: spec.egress[0].hosts[0]: host \"api.example.com\" must be in the form namespace/dnsName (e.g. \"./*\" or \"istio-system/*\")",
        ),
        (
            "Sidecar",
            "{egress: [{hosts: [\"./*\"]}, {hosts: [\"istio-system/*\"]}]}".into(),
            "Sidecar shop/reviews: spec.egress: at most one egress listener may omit the port (found 2)",
        ),
        // ---- WorkloadEntry, WorkloadGroup ----
        (
            "WorkloadEntry",
            "{labels: {app: vm}}".into(),
            "WorkloadEntry shop/reviews: spec.address: required unless network is set",
        ),
        (
            "WorkloadEntry",
            "{address: 10.0.0.1, ports: {http: 0}}".into(),
            "WorkloadEntry shop/reviews: spec.ports.http: port number 0 must be in the range 1..65535",
        ),
        (
            "WorkloadGroup",
            "{template: {labels: {app: vm}}, probe: {periodSeconds: 5}}".into(),
            "WorkloadGroup shop/reviews: spec.probe: one of httpGet, tcpSocket, exec or grpc is required",
        ),
        // ---- EnvoyFilter ----
        (
            "EnvoyFilter",
            "{configPatches: [{applyTo: HTTP_FILTER}]}".into(),
            "EnvoyFilter shop/reviews: spec.configPatches[0].patch: required",
        ),
        (
            "EnvoyFilter",
            "{configPatches: [{applyTo: HTTP_FILTER, patch: {value: {name: x}}}]}".into(),
            "EnvoyFilter shop/reviews: spec.configPatches[0].patch.operation: required",
        ),
        (
            "EnvoyFilter",
            "{configPatches: [{applyTo: CLUSTER, patch: {operation: INSERT_BEFORE, value: {name: x}}}]}".into(),
            "EnvoyFilter shop/reviews: spec.configPatches[0].patch.operation: INSERT_BEFORE applies only to NETWORK_FILTER, HTTP_FILTER, HTTP_ROUTE or LISTENER_FILTER, not CLUSTER",
        ),
        // ---- More rules, one per document ----
        ("VirtualService", vs("mirror: {host: a}, mirrors: [{destination: {host: b}}], route: [{destination: {host: reviews}}]"), "VirtualService shop/reviews: spec.http[0]: only one of mirror or mirrors may be set"),
        ("VirtualService", vs(&format!("rewrite: {{uri: /a, uriRegexRewrite: {{match: \"^/b\", rewrite: /c}}}}, {ROUTE}")), "VirtualService shop/reviews: spec.http[0].rewrite: only one of uri or uriRegexRewrite may be set"),
        ("VirtualService", vs(&format!("fault: {{abort: {{grpcStatus: SOMETIMES}}}}, {ROUTE}")), "VirtualService shop/reviews: spec.http[0].fault.abort.grpcStatus: unknown gRPC status \"SOMETIMES\" (expected a name such as UNAVAILABLE, or 0..16)"),
        ("VirtualService", vs(&format!("fault: {{abort: {{http2Error: PROTOCOL_ERROR}}}}, {ROUTE}")), "VirtualService shop/reviews: spec.http[0].fault.abort.http2Error: HTTP/2 error aborts are not supported; use httpStatus or grpcStatus"),
        ("VirtualService", vs(&format!("corsPolicy: {{allowMethods: [GET, FETCH]}}, {ROUTE}")), "VirtualService shop/reviews: spec.http[0].corsPolicy.allowMethods[1]: unknown HTTP method \"FETCH\" (expected one of GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH)"),
        ("VirtualService", vs(&format!("headers: {{request: {{set: {{\":path\": /x}}}}}}, {ROUTE}")), "VirtualService shop/reviews: spec.http[0].headers.request.set.:path: pseudo-header \":path\" cannot be changed (use rewrite for the path and authority)"),
        ("VirtualService", vs(&format!("fault: {{delay: {{exponentialDelay: 1s}}}}, {ROUTE}")), "VirtualService shop/reviews: spec.http[0].fault.delay.exponentialDelay: exponentialDelay is not supported (istiod rejects it too); no delay is injected"),
        ("VirtualService", vs("delegate: {namespace: shop}"), "VirtualService shop/reviews: spec.http[0].delegate.name: required"),
        ("VirtualService", vs("redirect: {uri: /new, redirectCode: 200}"), "VirtualService shop/reviews: spec.http[0].redirect.redirectCode: redirect code must be one of 301, 302, 303, 307 or 308 (found 200)"),
        ("VirtualService", vs("redirect: {}"), "VirtualService shop/reviews: spec.http[0].redirect: redirect must set at least one of uri, authority, scheme, port, derivePort, prefixRewrite or redirectCode"),
        ("VirtualService", format!("{{hosts: [reviews], exportTo: [\"*\", shop], http: [{{{ROUTE}}}]}}"), "VirtualService shop/reviews: spec.exportTo: \"*\" already exports everywhere; list no other namespaces with it"),
        ("VirtualService", "{hosts: [reviews]}".into(), "VirtualService shop/reviews: spec: at least one http, tls or tcp route is required"),
        ("VirtualService", "{hosts: [db], tcp: [{match: [{port: 3306}]}]}".into(), "VirtualService shop/reviews: spec.tcp[0].route: at least one destination is required"),
        ("VirtualService", vs(&format!("match: [{{sourceLabels: {{\"app/x/y\": a}}}}], {ROUTE}")), "VirtualService shop/reviews: spec.http[0].match[0].sourceLabels.app/x/y: invalid label key \"app/x/y\": the prefix must be a DNS subdomain"),
        ("Gateway", gw(&format!("{https}, tls: {{mode: ISTIO_MUTUAL, credentialName: shop-cert}}")), "Gateway shop/reviews: spec.servers[0].tls: ISTIO_MUTUAL uses the proxy's Istio certificates: serverCertificate, privateKey, caCertificates and credentialName must not be set"),
        ("Gateway", gw(&format!("{https}, tls: {{mode: SIMPLE, credentialName: c, minProtocolVersion: TLSV1_3, maxProtocolVersion: TLSV1_2}}")), "Gateway shop/reviews: spec.servers[0].tls.minProtocolVersion: TLSV1_3 is above maxProtocolVersion TLSV1_2"),
        ("Gateway", gw("port: {number: 80, name: http, protocol: HTTP}, hosts: [\"Shop_NS/*\"]"), "Gateway shop/reviews: spec.servers[0].hosts[0]: namespace \"Shop_NS\" of host \"Shop_NS/*\" must be \"*\", \".\" or a namespace name"),
        ("Gateway", gw("port: {number: 80, name: http, protocol: HTTP}, hosts: [\"*\"], bind: localhost"), "Gateway shop/reviews: spec.servers[0].bind: \"localhost\" must be an IP address or a unix:// socket"),
        ("Gateway", gw("port: {number: 80, protocol: HTTP}, hosts: [\"*\"]"), "Gateway shop/reviews: spec.servers[0].port.name: required"),
        ("DestinationRule", dr("loadBalancer: {localityLbSetting: {distribute: [{from: \"us/*\", to: {\"us/a/*\": 70, \"us/b/*\": 20}}]}}"), "DestinationRule shop/reviews: spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to: weights must sum to 100 (found 90)"),
        ("DestinationRule", dr("tunnel: {protocol: GET, targetHost: proxy, targetPort: 3128}"), "DestinationRule shop/reviews: spec.trafficPolicy.tunnel.protocol: tunnel protocol must be CONNECT or POST (found \"GET\")"),
        ("DestinationRule", dr("tls: {mode: ISTIO_MUTUAL, clientCertificate: /c.pem}"), "DestinationRule shop/reviews: spec.trafficPolicy.tls: ISTIO_MUTUAL uses the proxy's Istio certificates: clientCertificate, privateKey, caCertificates, caCrl and credentialName must not be set"),
        ("DestinationRule", dr("tls: {mode: SIMPLE, credentialName: c, caCertificates: /ca.pem}"), "DestinationRule shop/reviews: spec.trafficPolicy.tls: credentialName cannot be combined with clientCertificate, privateKey or caCertificates"),
        ("DestinationRule", dr("portLevelSettings: [{port: {number: 80}}, {port: {number: 80}}]"), "DestinationRule shop/reviews: spec.trafficPolicy.portLevelSettings[1].port.number: port 80 already has port-level settings"),
        ("DestinationRule", dr("loadBalancer: {consistentHash: {useSourceIp: true, ringHash: {minimumRingSize: 1024}, maglev: {tableSize: 65537}}}"), "DestinationRule shop/reviews: spec.trafficPolicy.loadBalancer.consistentHash: only one of ringHash or maglev may be set"),
        ("DestinationRule", dr("outlierDetection: {outlierDetectionHttpErrorCodes: [503, 600]}"), "DestinationRule shop/reviews: spec.trafficPolicy.outlierDetection.outlierDetectionHttpErrorCodes[1]: HTTP status must be in the range 100..599 (found 600)"),
        ("DestinationRule", dr("loadBalancer: {warmup: {minimumPercent: 10}}"), "DestinationRule shop/reviews: spec.trafficPolicy.loadBalancer.warmup.duration: required"),
        ("ServiceEntry", format!("{{hosts: [api.example.com], addresses: [10.0.0.0/24], {se_ports}, resolution: DNS}}"), "ServiceEntry shop/reviews: spec.addresses[0]: CIDR addresses are only allowed with NONE or STATIC resolution (resolution is DNS)"),
        ("ServiceEntry", format!("{{hosts: [api.example.com], {se_ports}, resolution: DNS_ROUND_ROBIN, endpoints: [{{address: a.example.com}}, {{address: b.example.com}}]}}"), "ServiceEntry shop/reviews: spec.endpoints: DNS_ROUND_ROBIN resolution allows at most one endpoint (found 2)"),
        ("ServiceEntry", format!("{{hosts: [api.example.com], {se_ports}, resolution: STATIC, workloadSelector: {{labels: {{app: vm}}}}, endpoints: [{{address: 1.2.3.4}}]}}"), "ServiceEntry shop/reviews: spec: only one of workloadSelector or endpoints may be set"),
        ("ServiceEntry", format!("{{hosts: [api.example.com], {se_ports}, resolution: STATIC, endpoints: [{{address: 1.2.3.4, ports: {{http: 8080}}}}]}}"), "ServiceEntry shop/reviews: spec.endpoints[0].ports.http: port \"http\" is not one of the ServiceEntry's spec.ports names"),
        ("ServiceEntry", format!("{{hosts: [\"*\"], {se_ports}}}"), "ServiceEntry shop/reviews: spec.hosts[0]: host \"*\" is not allowed in a ServiceEntry (name the hosts, e.g. \"*.example.com\")"),
        ("ServiceEntry", "{hosts: [api.example.com], ports: [{number: 80, name: http, protocol: FTP}]}".into(), "ServiceEntry shop/reviews: spec.ports[0].protocol: unsupported protocol \"FTP\" (expected one of HTTP, HTTPS, GRPC, GRPC-WEB, HTTP2, HTTP_PROXY, MONGO, MYSQL, REDIS, TCP, TLS, UDP, THRIFT)"),
        ("Sidecar", "{egress: [{hosts: [\"./*\"]}], outboundTrafficPolicy: {mode: REGISTRY_ONLY, egressProxy: {host: egress.example.com}}}".into(), "Sidecar shop/reviews: spec.outboundTrafficPolicy.egressProxy: egressProxy needs mode ALLOW_ANY"),
        ("Sidecar", "{ingress: [{defaultEndpoint: \"127.0.0.1:8080\"}]}".into(), "Sidecar shop/reviews: spec.ingress[0].port: required"),
        ("Sidecar", "{ingress: [{port: {number: 9080, protocol: HTTP, name: http}, defaultEndpoint: \"localhost:8080\"}]}".into(), "Sidecar shop/reviews: spec.ingress[0].defaultEndpoint: \"localhost:8080\" must be IP:port (e.g. 127.0.0.1:8080) or unix:///path"),
        ("Sidecar", "{}".into(), "Sidecar shop/reviews: spec: empty Sidecar: set at least one of egress, ingress, outboundTrafficPolicy or inboundConnectionPool"),
        ("Sidecar", "{egress: [{port: {number: 80, protocol: HTTP, name: a}, hosts: [\"./*\"]}, {port: {number: 80, protocol: HTTP, name: b}, hosts: [\"db/*\"]}]}".into(), "Sidecar shop/reviews: spec.egress[1].port.number: port 80 is already used by another listener"),
        ("WorkloadEntry", "{address: \"unix://var/run/app.sock\"}".into(), "WorkloadEntry shop/reviews: spec.address: \"unix://var/run/app.sock\": a unix socket must be an absolute path or an abstract name (@name)"),
        ("WorkloadEntry", "{address: \"unix:///var/run/app.sock\", ports: {http: 8080}}".into(), "WorkloadEntry shop/reviews: spec.ports: a unix:// address cannot have ports"),
        ("WorkloadGroup", "{template: {}, probe: {httpGet: {port: 8080}, tcpSocket: {port: 8080}}}".into(), "WorkloadGroup shop/reviews: spec.probe: only one of httpGet, tcpSocket, exec or grpc may be set"),
        ("EnvoyFilter", "{configPatches: [{applyTo: HTTP_FILTER, match: {context: GATEWAY, waypoint: {portNumber: 80}}, patch: {operation: MERGE, value: {}}}]}".into(), "EnvoyFilter shop/reviews: spec.configPatches[0].match.waypoint: only allowed when context is WAYPOINT"),
        ("EnvoyFilter", "{configPatches: [{applyTo: CLUSTER, match: {listener: {portNumber: 80}}, patch: {operation: MERGE, value: {}}}]}".into(), "EnvoyFilter shop/reviews: spec.configPatches[0].match.listener: applyTo CLUSTER needs a cluster match, not a listener match"),
        ("EnvoyFilter", "{configPatches: [{applyTo: CLUSTER, patch: {operation: REPLACE, value: {}}}]}".into(), "EnvoyFilter shop/reviews: spec.configPatches[0].patch.operation: REPLACE applies only to NETWORK_FILTER or HTTP_FILTER, not CLUSTER"),
        ("EnvoyFilter", "{configPatches: [{applyTo: LISTENER, patch: {operation: ADD}}]}".into(), "EnvoyFilter shop/reviews: spec.configPatches[0].patch.value: required for operation ADD"),
        ("EnvoyFilter", "{workloadSelector: {labels: {app: a}}, targetRefs: [{kind: Gateway, name: gw}]}".into(), "EnvoyFilter shop/reviews: spec: only one of workloadSelector or targetRefs may be set"),
        ("EnvoyFilter", "{configPatches: [{patch: {operation: MERGE, value: {}}}]}".into(), "EnvoyFilter shop/reviews: spec.configPatches[0].applyTo: required"),
        ("EnvoyFilter", "{configPatches: [{applyTo: LISTENER, match: {proxy: {proxyVersion: \"^1\\\\.(\"}}, patch: {operation: MERGE, value: {}}}]}".into(), "EnvoyFilter shop/reviews: spec.configPatches[0].match.proxy.proxyVersion: invalid RE2 regex \"^1\\\\.(\": unclosed group"),
        // ---- Decoding (the loader, before the rules) ----
        (
            "ServiceEntry",
            format!("{{hosts: [api.example.com], {se_ports}, resolution: DNSS}}"),
            "ServiceEntry shop/reviews: spec.resolution: unknown variant `DNSS`, expected one of `NONE`, `STATIC`, `DNS`, `DNS_ROUND_ROBIN`, `DYNAMIC_DNS`",
        ),
        (
            "VirtualService",
            vs(&format!("timeout: 5, {ROUTE}")),
            "VirtualService shop/reviews: spec.http[0].timeout: invalid type: integer `5`, expected a string",
        ),
    ]
}

#[test]
fn each_invalid_document_reports_exactly_the_broken_rule() {
    let cases = invalid_cases();
    assert!(cases.len() >= 30);
    let mut failures = Vec::new();
    for (kind, spec, expected) in &cases {
        let got = problems(&doc(kind, spec));
        if got != [expected.to_string()] {
            failures.push(format!(
                "spec: {spec}\n  expected: {expected}\n  got:      {}",
                got.join("\n            ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn every_problem_of_an_object_is_reported() {
    let spec = "{hosts: [\"a.*.b\"], http: [{route: [{destination: {host: a}, weight: 30}, {destination: {host: b}, weight: 30}], timeout: 0s, retries: {attempts: -2}}]}";
    assert_eq!(
        problems(&doc("VirtualService", spec)),
        [
            "VirtualService shop/reviews: spec.hosts[0]: host \"a.*.b\": a wildcard is only allowed as the first label (\"*.example.com\")",
            "VirtualService shop/reviews: spec.http[0].route: weights must sum to 100 (found 60)",
            "VirtualService shop/reviews: spec.http[0].timeout: duration must be at least 1ms (found 0s)",
            "VirtualService shop/reviews: spec.http[0].retries.attempts: attempts must not be negative (found -2)",
        ]
    );
}

const VALID: &[(&str, &str)] = &[
    // A single destination may omit its weight; "*" is fine on a gateway-bound VirtualService.
    (
        "VirtualService",
        "{hosts: [\"*\"], gateways: [istio-system/ingress, mesh-gw], http: [{route: [{destination: {host: reviews}}]}]}",
    ),
    (
        "VirtualService",
        r#"
  hosts: [reviews, "*.shop.example.com", 10.0.0.7]
  exportTo: ["."]
  http:
  - name: canary
    match:
    - uri: {prefix: /api/}
      headers: {x-user: {exact: jason}, x-present: {}}
      ignoreUriCase: true
      sourceNamespace: shop
      withoutHeaders: {x-debug: {regex: "^on$"}}
      queryParams: {v: {exact: "2"}}
    route:
    - destination: {host: reviews, subset: v1, port: {number: 9080}}
      weight: 90
      headers: {request: {set: {x-canary: "no"}}, response: {remove: [x-internal]}}
    - destination: {host: reviews, subset: v2}
      weight: 10
    rewrite: {uriRegexRewrite: {match: "^/api/(.*)", rewrite: "/\\1"}}
    timeout: 30s
    retries: {attempts: 3, perTryTimeout: 2s, retryOn: "5xx,connect-failure,refused-stream,503", retryRemoteLocalities: true}
    fault: {delay: {fixedDelay: 5s, percentage: {value: 40}}, abort: {grpcStatus: UNAVAILABLE, percentage: {value: 1.5}}}
    mirrors: [{destination: {host: shadow}, percentage: {value: 5}}]
    corsPolicy: {allowOrigin: ["https://shop.example.com"], allowOrigins: [{prefix: "https://"}], allowMethods: [GET, POST], maxAge: 24h, allowCredentials: true}
  - redirect: {uri: /v2, redirectCode: 308}
  - directResponse: {status: 503, body: {string: unavailable}}
  tcp:
  - match: [{port: 3306, destinationSubnets: [10.0.0.0/8]}]
    route: [{destination: {host: db}}]
"#,
    ),
    // A delegate (no hosts, no gateways, http only), and a header match in any case (istiod accepts Knative's
    // `K-Network-Hash`).
    (
        "VirtualService",
        "{http: [{match: [{uri: {prefix: /team}, headers: {K-Network-Hash: {exact: override}}}], route: [{destination: {host: reviews}}]}, {redirect: {uri: /}}]}",
    ),
    (
        "VirtualService",
        "{hosts: [shop.example.com], gateways: [gw], tls: [{match: [{port: 443, sniHosts: [shop.example.com]}], route: [{destination: {host: shop, port: {number: 443}}}]}]}",
    ),
    (
        "Gateway",
        r#"
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: http}
    hosts: ["shop/*.example.com", "./api.example.com"]
    tls: {httpsRedirect: true}
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: SIMPLE, credentialName: shop-cert, minProtocolVersion: TLSV1_2, maxProtocolVersion: TLSV1_3}
  - port: {number: 8443, name: mtls, protocol: HTTPS}
    hosts: [secure.example.com]
    tls: {mode: MUTUAL, serverCertificate: /c.crt, privateKey: /c.key, caCertificates: /ca.crt}
  - port: {number: 15443, name: tls, protocol: TLS}
    hosts: ["*.local"]
    tls: {mode: AUTO_PASSTHROUGH}
"#,
    ),
    (
        "DestinationRule",
        r#"
  host: "*.local"
  trafficPolicy:
    loadBalancer: {consistentHash: {httpCookie: {name: session, ttl: 0s}}, localityLbSetting: {distribute: [{from: "us/*", to: {"us/a/*": 80, "us/b/*": 20}}]}}
    connectionPool: {tcp: {maxConnections: 100, connectTimeout: 30ms, tcpKeepalive: {time: 7200s, interval: 75s}}, http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1, h2UpgradePolicy: UPGRADE}}
    outlierDetection: {consecutiveErrors: 1, interval: 1s, baseEjectionTime: 3m, maxEjectionPercent: 100}
    tls: {mode: ISTIO_MUTUAL}
    portLevelSettings: [{port: {number: 80}, loadBalancer: {simple: LEAST_REQUEST}}]
  subsets:
  - {name: v1, labels: {version: "1"}}
  - {name: v2, labels: {version: "2"}, trafficPolicy: {tls: {mode: MUTUAL, credentialName: client-cert}}}
"#,
    ),
    (
        "ServiceEntry",
        "{hosts: [api.example.com], addresses: [240.0.0.1, 10.1.0.0/16], ports: [{number: 80, name: http, protocol: http}, {number: 443, name: https, protocol: TLS}], location: MESH_EXTERNAL, resolution: STATIC, endpoints: [{address: 1.2.3.4, ports: {http: 8080}}, {address: \"unix:///var/run/api.sock\"}]}",
    ),
    (
        "ServiceEntry",
        "{hosts: [\"*.example.com\"], ports: [{number: 443, name: https, protocol: TLS}], resolution: DNS, endpoints: [{address: proxy.example.com}]}",
    ),
    (
        "Sidecar",
        "{workloadSelector: {labels: {app: reviews}}, egress: [{port: {number: 3306, protocol: MYSQL, name: db}, hosts: [\"db/*\"]}, {hosts: [\"./*\", \"istio-system/*\", \"~/*\"]}], ingress: [{port: {number: 9080, protocol: HTTP, name: http}, defaultEndpoint: \"127.0.0.1:8080\"}], outboundTrafficPolicy: {mode: REGISTRY_ONLY}}",
    ),
    (
        "WorkloadEntry",
        "{network: remote-network, labels: {app: vm}, serviceAccount: vm-sa}",
    ),
    (
        "WorkloadGroup",
        "{metadata: {labels: {app: vm}}, template: {serviceAccount: vm-sa, ports: {http: 8080}}, probe: {periodSeconds: 5, httpGet: {path: /ready, port: 8080}}}",
    ),
    (
        "EnvoyFilter",
        "{workloadSelector: {labels: {app: reviews}}, configPatches: [{applyTo: HTTP_FILTER, match: {context: SIDECAR_INBOUND, listener: {portNumber: 9080, filterChain: {filter: {name: envoy.filters.network.http_connection_manager}}}}, patch: {operation: INSERT_BEFORE, value: {name: envoy.filters.http.lua}}}, {applyTo: CLUSTER, match: {cluster: {service: reviews.shop.svc.cluster.local}}, patch: {operation: REMOVE}}]}",
    ),
];

#[test]
fn valid_documents_have_no_problems() {
    for (kind, spec) in VALID {
        let text = if spec.starts_with('\n') {
            format!(
                "apiVersion: networking.istio.io/v1alpha3\nkind: {kind}\nmetadata: {{name: reviews, namespace: shop}}\nspec:{spec}"
            )
        } else {
            doc(kind, spec)
        };
        assert_eq!(problems(&text), Vec::<String>::new(), "{kind}: {spec}");
    }
}

/// The book's manifests (chapters 3–8): every networking object decodes and validates, unknown fields included.
#[test]
fn book_manifests_networking_objects_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/book/manifests");
    let Ok(chapters) = std::fs::read_dir(&dir) else {
        panic!("the book's manifests are missing at {}", dir.display());
    };
    let mut checked = 0;
    let mut failures = Vec::new();
    let mut files: Vec<_> = chapters
        .flatten()
        .filter(|c| c.file_name().to_string_lossy().starts_with("chapter-"))
        .flat_map(|c| std::fs::read_dir(c.path()).into_iter().flatten().flatten())
        .map(|f| f.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read(&file).unwrap();
        for c in check_file(&file.display().to_string(), &text, "default", true) {
            let Some(key) = &c.key else { continue };
            if key.kind.group() != "networking.istio.io" {
                continue;
            }
            checked += 1;
            failures.extend(
                c.problems
                    .iter()
                    .map(|p| format!("{}: {p}", file.display())),
            );
        }
    }
    assert!(checked >= 30, "only {checked} networking objects found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
