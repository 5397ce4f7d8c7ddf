//! Incremental ADS (`DeltaAggregatedResources`): responses carry only added/changed resources and the names
//! removed, each resource versioned by its content hash.
//!
//! Rules (Envoy xDS protocol, "Incremental xDS"):
//! - subscribe/unsubscribe changes apply whatever the nonce (they are deltas: dropping one would lose it);
//!   only the ACK/NACK meaning of a stale nonce is ignored;
//! - the first request of CDS/LDS with no names is the legacy wildcard; `*` subscribes to everything and
//!   unsubscribing `*` ends it;
//! - `initial_resource_versions` on a stream's first request says what the client kept from an earlier
//!   stream: only resources with another version are sent, and names that no longer exist are removed;
//! - a newly subscribed name that does not exist is reported in `removed_resources` so the client stops
//!   waiting for it.

use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use tonic::Status;

use super::connection::{ConnState, Diff, Flavor, contains, control_plane, diff};
use super::grpc::WireResponse;
use super::registry::{Chosen, Held, Protocol, SentResource};
use super::{PushContext, type_url};

/// The delta flavour.
pub(crate) struct Delta;

impl Flavor for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = WireResponse<DeltaDiscoveryResponse>;
    const PROTOCOL: Protocol = Protocol::Delta;

    fn node(req: &DeltaDiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }

    fn apply(
        conn: &mut ConnState<'_>,
        req: DeltaDiscoveryRequest,
    ) -> Result<(String, bool), Status> {
        if req.type_url.is_empty() {
            return Err(Status::invalid_argument("ADS request without type_url"));
        }
        let shared = conn.shared;
        let (ts, is_new) = conn.type_state(&req.type_url);
        ts.check_nonce(
            is_new,
            &req.type_url,
            &req.response_nonce,
            None,
            req.error_detail.as_ref(),
            &shared.metrics,
        );

        if is_new && !req.initial_resource_versions.is_empty() {
            let sent = ts.status.sent.make_map();
            for (name, version) in req.initial_resource_versions {
                sent.insert(name, SentResource::Claimed { version });
            }
        }
        let was_wildcard = ts.status.wildcard;
        let mut wildcard = was_wildcard
            || (is_new
                && req.resource_names_subscribe.is_empty()
                && type_url::is_wildcard_type(&req.type_url));
        // Held names can only fall out of the subscription on the first request (claimed versions), by an
        // unsubscribe, or when the wildcard ends; a plain ACK leaves them alone (this runs for every ACK).
        let may_drop = is_new || !req.resource_names_unsubscribe.is_empty();
        // Only touch the shared maps when the subscription changes: most requests are plain ACKs.
        if !req.resource_names_subscribe.is_empty() || !req.resource_names_unsubscribe.is_empty() {
            for name in &req.resource_names_subscribe {
                if name == "*" {
                    wildcard = true;
                } else if !ts.status.names.contains(name) {
                    ts.newly_subscribed.insert(name.clone());
                }
            }
            for name in &req.resource_names_unsubscribe {
                if name == "*" {
                    wildcard = false;
                } else {
                    ts.newly_subscribed.remove(name);
                }
            }
            ts.status.names = shared.change_names(
                &ts.status.names,
                &req.resource_names_subscribe,
                &req.resource_names_unsubscribe,
            );
            ts.subscription_changed();
        }
        if wildcard != was_wildcard {
            ts.subscription_changed();
        }
        let names = &ts.status.names;
        if !wildcard && (may_drop || was_wildcard) {
            // The client drops what it no longer subscribes to.
            ts.status.sent.retain(|n| names.contains(n));
        }
        ts.status.wildcard = wildcard;
        if is_new || !ts.newly_subscribed.is_empty() || (wildcard && !was_wildcard) {
            ts.must_respond = true;
        }
        Ok((req.type_url, ts.must_respond))
    }

    fn build(
        conn: &mut ConnState<'_>,
        type_url: &str,
        ctx: &PushContext,
        push: Option<Instant>,
    ) -> Option<WireResponse<DeltaDiscoveryResponse>> {
        let ConnState {
            live,
            proxy,
            shared,
        } = conn;
        let types = &mut live.types;
        let ts = types.get_mut(type_url)?;
        let chosen = ts.select(&ctx.generator.generate(proxy, type_url))?;
        let Diff {
            changed,
            mut removed,
        } = diff(&ts.status.sent, &chosen);
        removed.extend(
            ts.newly_subscribed
                .iter()
                .filter(|n| !contains(chosen.as_slice(), n) && !ts.status.sent.contains_key(n))
                .cloned(),
        );
        ts.newly_subscribed.clear();
        // Envoy re-warms a changed (not new) cluster and waits for its endpoints without subscribing again:
        // forget that the client holds them, so the EDS build in this push (after CDS) sends them again.
        let rewarmed: Vec<String> = match type_url == type_url::CLUSTER {
            true => changed
                .iter()
                .filter(|r| ts.status.sent.contains_key(&r.name))
                .map(|r| r.name.clone())
                .collect(),
            false => Vec::new(),
        };
        // After this response (or with none owed) the client holds exactly what was chosen; sharing the
        // generation's set instead of a map per connection is most of what keeps many proxies cheap.
        ts.status.sent = Held::exactly(chosen);
        if !ts.must_respond && changed.is_empty() && removed.is_empty() {
            return None;
        }
        let nonce = shared.next_nonce();
        let version = ctx.version.to_string();
        let carried = (Chosen::Some(changed.as_slice().into()), removed.clone());
        ts.record_sent(&nonce, &version, carried, push);
        let resp = WireResponse {
            head: DeltaDiscoveryResponse {
                system_version_info: version,
                type_url: type_url.to_owned(),
                removed_resources: removed,
                nonce,
                control_plane: control_plane(),
                ..Default::default()
            },
            resources: changed,
        };
        if !rewarmed.is_empty()
            && let Some(eds) = types.get_mut(type_url::ENDPOINT)
        {
            eds.status
                .sent
                .retain(|n| rewarmed.binary_search_by(|r| r.as_str().cmp(n)).is_err());
            eds.must_respond = true;
        }
        shared.metrics.count_push(type_url);
        Some(resp)
    }
}
