//! Helpers for building Envoy protos deterministically.
//!
//! Protobuf map fields are `HashMap`s in the generated types and prost encodes them in iteration order. With the
//! default per-map random seed, equal content encodes to different bytes every time, so a resource's content
//! hash (its xDS version) would change on every generation and unchanged config would be re-pushed. Maps built
//! here share one process-wide seed: equal entries inserted in the same order iterate, and encode, identically.

use std::collections::HashMap;
use std::hash::{Hash, RandomState};
use std::sync::LazyLock;

static SEED: LazyLock<RandomState> = LazyLock::new(RandomState::new);

/// A protobuf map with the process-wide seed. Insert entries in a deterministic order.
pub fn stable_map<K: Hash + Eq, V>(entries: impl IntoIterator<Item = (K, V)>) -> HashMap<K, V> {
    let mut map = HashMap::with_hasher(SEED.clone());
    map.extend(entries);
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_maps_iterate_identically() {
        let entries: Vec<(String, u32)> = (0..50).map(|i| (format!("key-{i}"), i)).collect();
        let a: Vec<_> = stable_map(entries.clone()).into_keys().collect();
        for _ in 0..20 {
            let b: Vec<_> = stable_map(entries.clone()).into_keys().collect();
            assert_eq!(a, b);
        }
    }
}
