//! State-of-the-world ADS (`StreamAggregatedResources`): every response carries the full subscribed set.
//!
//! Rules (Envoy xDS protocol, "ACK/NACK and resource type instance version", "How the client specifies what
//! resources to return", "Resource updates"):
//! - a request whose `response_nonce` is not the last nonce sent for its type is stale and ignored entirely
//!   (the client's next ACK carries its current names);
//! - an empty name list on the first CDS/LDS request is the legacy wildcard, `*` is the explicit one; for
//!   other types an empty list unsubscribes from everything;
//! - the server answers the first request of a type, and requests that add names; an ACK, a NACK or a removal
//!   gets no response.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use tonic::Status;

use super::connection::{ConnState, Flavor, NonceCheck, control_plane, diff};
use super::grpc::WireResponse;
use super::registry::{Held, Protocol};
use super::{PushContext, type_url};

/// The SotW flavour.
pub(crate) struct Sotw;

impl Flavor for Sotw {
    type Request = DiscoveryRequest;
    type Response = WireResponse<DiscoveryResponse>;
    const PROTOCOL: Protocol = Protocol::Sotw;

    fn node(req: &DiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }

    fn apply(conn: &mut ConnState<'_>, req: DiscoveryRequest) -> Result<(String, bool), Status> {
        if req.type_url.is_empty() {
            return Err(Status::invalid_argument("ADS request without type_url"));
        }
        let shared = conn.shared;
        let (ts, is_new) = conn.type_state(&req.type_url);
        let check = ts.check_nonce(
            is_new,
            &req.type_url,
            &req.response_nonce,
            Some(&req.version_info),
            req.error_detail.as_ref(),
            &shared.metrics,
        );
        if check == NonceCheck::Stale {
            return Ok((req.type_url, false));
        }

        let mut names: BTreeSet<String> = req.resource_names.into_iter().collect();
        let star = names.remove("*");
        let (wildcard, legacy) = if star {
            (true, false)
        } else if type_url::is_wildcard_type(&req.type_url)
            && names.is_empty()
            && (is_new || ts.legacy_wildcard)
        {
            (true, true)
        } else {
            (false, false)
        };
        let added =
            (wildcard && !ts.status.wildcard) || names.iter().any(|n| !ts.status.names.contains(n));
        // Only touch the shared maps when the subscription changed: most requests are plain ACKs.
        if wildcard != ts.status.wildcard || *ts.status.names != names {
            if !wildcard {
                // Names dropped from the list are forgotten by the client.
                ts.status.sent.retain(|n| names.contains(n));
            }
            ts.status.wildcard = wildcard;
            ts.status.names = Arc::new(names);
            shared.share_names(&mut ts.status.names);
            ts.subscription_changed();
        }
        ts.legacy_wildcard = legacy;
        if is_new || added {
            ts.must_respond = true;
        }
        Ok((req.type_url, ts.must_respond))
    }

    fn build(
        conn: &mut ConnState<'_>,
        type_url: &str,
        ctx: &PushContext,
        push: Option<Instant>,
    ) -> Option<WireResponse<DiscoveryResponse>> {
        let ConnState {
            live,
            proxy,
            shared,
        } = conn;
        let types = &mut live.types;
        let ts = types.get_mut(type_url)?;
        let chosen = ts.select(&ctx.generator.generate(proxy, type_url))?;
        let changes = diff(&ts.status.sent, &chosen);
        // A changed (not new) cluster is what Envoy re-warms; see below.
        let rewarms = type_url == type_url::CLUSTER
            && changes
                .changed
                .iter()
                .any(|r| ts.status.sent.contains_key(&r.name));
        if !ts.must_respond && changes.is_empty() {
            // Same content: hold the new (shareable) selection instead.
            ts.status.sent = Held::exactly(chosen);
            return None;
        }
        let nonce = shared.next_nonce();
        let version = ctx.version.to_string();
        ts.record_sent(&nonce, &version, (chosen.clone(), Vec::new()), push);
        let resp = WireResponse {
            head: DiscoveryResponse {
                version_info: version,
                type_url: type_url.to_owned(),
                nonce,
                control_plane: control_plane(),
                ..Default::default()
            },
            resources: chosen.as_slice().to_vec(),
        };
        ts.status.sent = Held::exactly(chosen);
        // Envoy keeps a changed EDS cluster warming until it receives its endpoints again, and asks for nothing
        // new (the names did not change): after a changed cluster, endpoints are owed even when unchanged (as
        // istiod's full push sends them). A new cluster needs nothing: Envoy asks for its endpoints by name.
        // CDS is built before EDS within a push.
        if rewarms && let Some(eds) = types.get_mut(type_url::ENDPOINT) {
            eds.must_respond = true;
        }
        shared.metrics.count_push(type_url);
        Some(resp)
    }
}
