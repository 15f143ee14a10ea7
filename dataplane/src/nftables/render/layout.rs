//! Which slot each endpoint of a service occupies.
//!
//! Slots are positions in the `ep-<set>-<kind>-<slot>` maps. Without a previous table they
//! follow plan order. With one, an endpoint that is still there keeps its slot (when the
//! slot still exists), and new endpoints fill the free slots in plan order. So removing one
//! endpoint of three rewrites at most one element and deletes one, and clients with session
//! affinity to a surviving endpoint keep reaching it.

use std::collections::HashMap;

use super::super::names::{KeyKind, endpoint_map};
use super::super::table::NftTable;
use crate::plan::EndpointSet;

/// Orders `values` (endpoint map values, `addr . port`) by slot for `key`.
pub(super) fn assign_slots(
    previous: Option<&NftTable>,
    set: EndpointSet,
    kind: KeyKind,
    key: &str,
    values: Vec<String>,
) -> Vec<String> {
    let Some(previous) = previous else {
        return values;
    };
    let n = values.len();
    let position: HashMap<&str, usize> = values
        .iter()
        .enumerate()
        .map(|(i, v)| (v.as_str(), i))
        .collect();
    let mut slots: Vec<Option<usize>> = vec![None; n];
    let mut placed = vec![false; n];
    for (slot, taken) in slots.iter_mut().enumerate() {
        let old = previous
            .sets
            .get(&endpoint_map(set, kind, slot))
            .and_then(|m| m.elements.as_ref())
            .and_then(|e| e.get(key));
        if let Some(&i) = old.and_then(|v| position.get(&*v.value))
            && !placed[i]
        {
            *taken = Some(i);
            placed[i] = true;
        }
    }
    let mut free = (0..n).filter(|i| !placed[*i]);
    let order: Vec<usize> = slots
        .into_iter()
        .map(|s| s.or_else(|| free.next()).unwrap_or_default())
        .collect();
    let mut values: Vec<Option<String>> = values.into_iter().map(Some).collect();
    order
        .into_iter()
        .filter_map(|i| values.get_mut(i).and_then(Option::take))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nftables::table::Set;
    use crate::plan::IpFamily;

    fn previous(slots: &[&str]) -> NftTable {
        let mut t = NftTable::new(IpFamily::V4);
        for (i, v) in slots.iter().enumerate() {
            let name = endpoint_map(EndpointSet::Cluster, KeyKind::Vip, i);
            t.declare(&name, || Set::managed("map", String::new()));
            t.add_element(&name, "k".into(), (*v).into());
        }
        t
    }

    fn assign(prev: Option<&NftTable>, values: &[&str]) -> Vec<String> {
        assign_slots(
            prev,
            EndpointSet::Cluster,
            KeyKind::Vip,
            "k",
            values.iter().map(|v| (*v).to_owned()).collect(),
        )
    }

    #[test]
    fn plan_order_without_previous() {
        assert_eq!(assign(None, &["b", "a"]), ["b", "a"]);
    }

    #[test]
    fn survivors_keep_their_slots() {
        let prev = previous(&["a", "b", "c"]);
        // "b" leaves, "d" arrives: "d" fills slot 1.
        assert_eq!(assign(Some(&prev), &["a", "c", "d"]), ["a", "d", "c"]);
        // Reordered plan: slots unchanged.
        assert_eq!(assign(Some(&prev), &["c", "b", "a"]), ["a", "b", "c"]);
        // Grows: new ones appended.
        assert_eq!(
            assign(Some(&prev), &["e", "c", "b", "a"]),
            ["a", "b", "c", "e"]
        );
    }

    #[test]
    fn removal_moves_at_most_one_endpoint() {
        let prev = previous(&["a", "b", "c"]);
        // "a" leaves: "b" keeps slot 1; "c" (slot 2 no longer exists) moves to slot 0.
        assert_eq!(assign(Some(&prev), &["b", "c"]), ["c", "b"]);
        let prev = previous(&["a", "b", "c", "d"]);
        assert_eq!(assign(Some(&prev), &["a", "c", "d"]), ["a", "d", "c"]);
    }
}
