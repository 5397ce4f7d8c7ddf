//! Per type URL state of one ADS stream: the subscription, the nonces sent and ACKed, the last NACK, and what
//! the last response carried; kept in the stream's registry entry, changed only by the stream
//! ([`super::connection`]).

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Instant, SystemTime};

use envoy_types::pb::google::rpc::Status as RpcStatus;
use tracing::{debug, warn};

use super::registry::{Chosen, Nack, TypeStatus};
use super::{Metrics, ResourceSet, type_url};

/// What the `response_nonce` of a request says about the previous response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NonceCheck {
    /// First request for the type on this stream, or a request that acknowledges nothing.
    Initial,
    /// Refers to a response that is no longer the latest: ignored (SotW) or its ACK/NACK ignored (delta).
    Stale,
    /// The latest response was accepted.
    Ack,
    /// The latest response was rejected.
    Nack,
}

/// Per type URL state of one stream.
#[derive(Debug, Default)]
pub(crate) struct TypeState {
    /// The part the debug API shows ([`super::registry::ConnectionStatus`]).
    pub status: TypeStatus,
    /// SotW: the wildcard came from an empty name list (legacy), so it ends with the first non-empty list.
    pub legacy_wildcard: bool,
    /// A response is owed whatever the content (first request, new names).
    pub must_respond: bool,
    /// Delta: names subscribed since the last response; reported in `removed_resources` when absent.
    pub newly_subscribed: BTreeSet<String>,
    /// What the last response carried (its resources, shared, and the names it removed), to name them in
    /// a NACK: copying every name into each response's record cost a string per resource per proxy.
    pub last_sent: Option<(Chosen, Vec<String>)>,
    /// Publication time of the generation that caused the last response, if it was a push.
    pub push_published: Option<Instant>,
    /// Bumped on every subscription change.
    pub sub_epoch: u64,
    /// (set digest, `sub_epoch`) of the last build.
    pub built_from: Option<(u64, u64)>,
}

impl TypeState {
    /// Interprets `response_nonce` (+ `error_detail`) and records ACK/NACK.
    pub fn check_nonce(
        &mut self,
        is_new: bool,
        type_url: &str,
        nonce: &str,
        version: Option<&str>,
        error: Option<&RpcStatus>,
        metrics: &Metrics,
    ) -> NonceCheck {
        if is_new || nonce.is_empty() {
            // A nonce on the first request belongs to an earlier stream (reconnect): nothing to acknowledge.
            return NonceCheck::Initial;
        }
        if self.status.nonce_sent.as_deref() != Some(nonce) {
            metrics.stale_nonces.fetch_add(1, Relaxed);
            debug!(type_url, nonce, "stale nonce");
            return NonceCheck::Stale;
        }
        match error {
            Some(err) => {
                metrics.count_nack(type_url);
                let names: Vec<String> = match &self.last_sent {
                    Some((resources, removed)) => resources
                        .as_slice()
                        .iter()
                        .map(|r| r.name.clone())
                        .chain(removed.iter().cloned())
                        .collect(),
                    None => Vec::new(),
                };
                warn!(type_url, nonce, code = err.code, error = %err.message, ?names, "NACK");
                self.status.last_nack = Some(Nack {
                    nonce: nonce.to_owned(),
                    version: self.status.version_sent.clone().unwrap_or_default(),
                    code: err.code,
                    message: err.message.clone(),
                    names,
                    at: SystemTime::now(),
                });
                self.push_published = None;
                NonceCheck::Nack
            }
            None => {
                set(&mut self.status.acked_nonce, nonce);
                let version = version.or(self.status.version_sent.as_deref());
                set(&mut self.status.acked_version, version.unwrap_or_default());
                self.status.last_nack = None;
                // Only kept to explain a NACK.
                self.last_sent = None;
                if let Some(published) = self.push_published.take() {
                    metrics.convergence.observe(published.elapsed());
                }
                debug!(type_url, nonce, "ACK");
                NonceCheck::Ack
            }
        }
    }

    /// The resources of `set` this subscription asks for (sorted by name), or `None` when neither the set
    /// (by digest) nor the subscription changed since the last build and no response is owed: the O(1) path
    /// for the many proxies a generation does not concern.
    pub fn select(&mut self, set: &ResourceSet) -> Option<Chosen> {
        let input = (set.digest(), self.sub_epoch);
        if !self.must_respond && self.built_from == Some(input) {
            return None;
        }
        self.built_from = Some(input);
        if self.status.wildcard {
            return Some(Chosen::All(set.clone()));
        }
        Some(match set.select(&self.status.names) {
            // Subscribed to every resource of the set (the usual EDS case): share the set.
            None => Chosen::All(set.clone()),
            Some(list) => Chosen::Some(list),
        })
    }

    /// The subscription (names or wildcard) changed: the next build must look at the content.
    pub fn subscription_changed(&mut self) {
        self.sub_epoch += 1;
    }

    /// Records a response about to be sent: its nonce and version, and what it carries.
    pub fn record_sent(
        &mut self,
        nonce: &str,
        version: &str,
        carried: (Chosen, Vec<String>),
        push: Option<Instant>,
    ) {
        set(&mut self.status.nonce_sent, nonce);
        set(&mut self.status.version_sent, version);
        self.status.responses += 1;
        self.last_sent = Some(carried);
        self.must_respond = false;
        self.push_published = push;
    }
}

/// Sets `slot` to `value`, reusing its buffer: nonces and versions change on every response and ACK.
fn set(slot: &mut Option<String>, value: &str) {
    match slot {
        Some(s) => {
            s.clear();
            s.push_str(value);
        }
        None => *slot = Some(value.to_owned()),
    }
}

/// A stream's per type URL state, in push order ([`type_url::PUSH_ORDER`], then other types in the order they
/// were first requested), with each type's rank in it. A stream has at most a handful of types: a list is
/// cheaper to search than a map ordered by the whole string, and smaller than a map node. Known type URLs are
/// kept as their constants, so lookups with the constants compare addresses ([`type_url::same`]).
#[derive(Debug, Default)]
pub(crate) struct TypeStates(Vec<(Cow<'static, str>, usize, TypeState)>);

impl TypeStates {
    pub fn get_mut(&mut self, type_url: &str) -> Option<&mut TypeState> {
        let found = self
            .0
            .iter_mut()
            .find(|(t, _, _)| type_url::same(t, type_url));
        found.map(|(_, _, s)| s)
    }

    /// The state of `type_url`, created on first use; `true` if it was just created.
    pub fn get_or_insert(&mut self, type_url: &str) -> (&mut TypeState, bool) {
        if let Some(i) = self
            .0
            .iter()
            .position(|(t, _, _)| type_url::same(t, type_url))
        {
            return (&mut self.0[i].2, false);
        }
        let rank = type_url::push_rank(type_url);
        let at = self.0.partition_point(|(_, r, _)| *r <= rank);
        let url = type_url::intern(type_url);
        self.0.insert(at, (url, rank, TypeState::default()));
        (&mut self.0[at].2, true)
    }

    /// Every type, in push order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &TypeState)> {
        self.0.iter().map(|(t, _, s)| (&**t, s))
    }

    /// The types a push asks the generator for, in push order: every known type subscribed, and another
    /// type only when a response is owed for it (its first request came before the first generation).
    pub fn to_push(&self) -> Vec<Cow<'static, str>> {
        let due = |(_, rank, s): &&(Cow<'static, str>, usize, TypeState)| {
            *rank < type_url::PUSH_ORDER.len() || s.must_respond
        };
        self.0
            .iter()
            .filter(due)
            .map(|(t, _, _)| t.clone())
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_kept_in_push_order_and_other_types_are_pushed_only_when_owed() {
        let mut types = TypeStates::default();
        let other = "type.googleapis.com/example.Other";
        for t in [
            type_url::ROUTE,
            other,
            type_url::CLUSTER,
            type_url::LISTENER,
        ] {
            assert!(types.get_or_insert(t).1, "{t} is new");
        }
        // A copy of the URL (as a request carries it) finds the entry kept under the constant.
        let copy = String::from(type_url::CLUSTER);
        assert!(!types.get_or_insert(&copy).1);
        let order: Vec<&str> = types.iter().map(|(t, _)| t).collect();
        assert_eq!(
            order,
            [
                type_url::CLUSTER,
                type_url::LISTENER,
                type_url::ROUTE,
                other
            ]
        );
        assert_eq!(
            types.to_push(),
            [type_url::CLUSTER, type_url::LISTENER, type_url::ROUTE]
        );
        types.get_mut(other).unwrap().must_respond = true;
        assert_eq!(types.to_push().len(), 4);
        let copy = String::from(type_url::ROUTE);
        assert!(types.get_mut(&copy).is_some());
        assert!(types.get_mut(type_url::ENDPOINT).is_none());
    }
}
