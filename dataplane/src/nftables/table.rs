//! The value a sync wants in the kernel: kproxy's table of one family, with its chains (and
//! their rules), sets and maps (and their elements).
//!
//! An [`NftTable`] is plain data. The renderer builds one from a plan, the transaction
//! builder diffs two of them, and `kproxy render` prints one. Rules and elements are stored
//! as the nft text that follows `add rule ip kproxy CHAIN ` / goes between `{ }` of
//! `add element`, so that comparing two tables is comparing strings.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::plan::IpFamily;

/// A chain attached to a netfilter hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseChain {
    /// `filter` or `nat`.
    pub kind: &'static str,
    /// The hook (`prerouting`, `input`, ...).
    pub hook: &'static str,
    /// The priority, as nft spells it (`dstnat - 10`).
    pub priority: &'static str,
}

/// One chain: a base chain's hook (if any) and its rules in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chain {
    /// `Some` for a base chain.
    pub base: Option<BaseChain>,
    /// The rules, each as the text after `add rule FAMILY kproxy CHAIN `.
    pub rules: Vec<String>,
}

/// The text of an element's key or value, shared between the table and the fragment of
/// every service port that contributes it (a 100k-endpoint table holds ~400k of them).
pub type Text = Arc<str>;

/// One element and every contribution to it.
///
/// Several services may contribute the same key (two services with the same pod add the
/// same hairpin pair; two services may claim the same external IP and port). The element
/// exists while any contribution does, and its value is the smallest contributed value, so
/// the result does not depend on the order services were added or removed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// The value kproxy writes (empty for a set element).
    pub value: Text,
    /// The other contributions, sorted.
    others: Vec<Text>,
}

impl Default for Element {
    fn default() -> Self {
        Element {
            value: Text::from(""),
            others: Vec::new(),
        }
    }
}

impl Element {
    fn add(&mut self, value: Text) {
        let displaced = if value < self.value {
            std::mem::replace(&mut self.value, value)
        } else {
            value
        };
        let at = self.others.partition_point(|v| *v < displaced);
        self.others.insert(at, displaced);
    }

    /// Removes one contribution of `value`; `false` when none is left.
    fn remove(&mut self, value: &str) -> bool {
        if *self.value == *value {
            if self.others.is_empty() {
                return false;
            }
            self.value = self.others.remove(0);
        } else if let Ok(at) = self.others.binary_search_by(|v| (**v).cmp(value)) {
            self.others.remove(at);
        }
        true
    }
}

/// Elements of a set or map by key (their nft text).
pub type Elements = BTreeMap<Text, Element>;

/// A set or map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    /// `set` or `map`.
    pub keyword: &'static str,
    /// The declaration between `{ }`: type, flags, size.
    pub spec: String,
    /// The elements kproxy manages; `None` for a dynamic set whose elements the packet path
    /// adds (session affinity), which syncs never flush or diff.
    pub elements: Option<Elements>,
}

impl Set {
    /// A set or map with managed elements, initially empty.
    pub fn managed(keyword: &'static str, spec: String) -> Self {
        Set {
            keyword,
            spec,
            elements: Some(Elements::new()),
        }
    }

    /// A dynamic set filled from the packet path.
    pub fn dynamic(spec: String) -> Self {
        Set {
            keyword: "set",
            spec,
            elements: None,
        }
    }

    /// Number of managed elements.
    pub fn len(&self) -> usize {
        self.elements.as_ref().map_or(0, Elements::len)
    }

    /// No managed elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// kproxy's table of one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftTable {
    /// The family (`ip` or `ip6` table).
    pub family: IpFamily,
    /// Chains by name.
    pub chains: BTreeMap<String, Chain>,
    /// Sets and maps by name.
    pub sets: BTreeMap<String, Set>,
}

impl NftTable {
    /// An empty table.
    pub fn new(family: IpFamily) -> Self {
        NftTable {
            family,
            chains: BTreeMap::new(),
            sets: BTreeMap::new(),
        }
    }

    /// Declares a regular chain (empty if new) and returns its rules for appending.
    pub fn chain(&mut self, name: &str) -> &mut Vec<String> {
        &mut self.chains.entry(name.to_owned()).or_default().rules
    }

    /// Declares a base chain.
    pub fn base_chain(&mut self, name: &str, base: BaseChain) -> &mut Vec<String> {
        let chain = self.chains.entry(name.to_owned()).or_default();
        chain.base = Some(base);
        &mut chain.rules
    }

    /// Appends a rule to a chain, declaring the chain if needed.
    pub fn rule(&mut self, chain: &str, rule: impl Into<String>) {
        self.chain(chain).push(rule.into());
    }

    /// Declares a set or map (keeping it if it already exists).
    pub fn declare(&mut self, name: &str, set: impl FnOnce() -> Set) -> &mut Set {
        self.sets.entry(name.to_owned()).or_insert_with(set)
    }

    /// Adds one contribution to an element of a declared set or map (ignored if the set is
    /// not declared or not managed).
    pub fn add_element(&mut self, set: &str, key: Text, value: Text) {
        if let Some(elements) = self.sets.get_mut(set).and_then(|s| s.elements.as_mut()) {
            match elements.get_mut(&key) {
                Some(element) => element.add(value),
                None => {
                    elements.insert(
                        key,
                        Element {
                            value,
                            others: Vec::new(),
                        },
                    );
                }
            }
        }
    }

    /// Removes one contribution from an element; the element goes when none is left.
    pub fn remove_element(&mut self, set: &str, key: &str, value: &str) {
        if let Some(elements) = self.sets.get_mut(set).and_then(|s| s.elements.as_mut())
            && let Some(element) = elements.get_mut(key)
            && !element.remove(value)
        {
            elements.remove(key);
        }
    }

    /// The value of an element, if it exists.
    pub fn element_value(&self, set: &str, key: &str) -> Option<&str> {
        self.sets
            .get(set)?
            .elements
            .as_ref()?
            .get(key)
            .map(|e| &*e.value)
    }

    /// Number of rules in all chains.
    pub fn rule_count(&self) -> usize {
        self.chains.values().map(|c| c.rules.len()).sum()
    }

    /// Number of managed elements in all sets and maps.
    pub fn element_count(&self) -> usize {
        self.sets.values().map(Set::len).sum()
    }

    /// The table without its elements.
    pub fn shape(&self) -> Shape {
        Shape {
            chains: self.chains.clone(),
            sets: self
                .sets
                .iter()
                .map(|(name, set)| {
                    let decl = SetDecl {
                        keyword: set.keyword,
                        spec: set.spec.clone(),
                        managed: set.elements.is_some(),
                    };
                    (name.clone(), decl)
                })
                .collect(),
        }
    }
}

/// A set's declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetDecl {
    /// `set` or `map`.
    pub keyword: &'static str,
    /// The declaration between `{ }`.
    pub spec: String,
    /// kproxy manages the elements (not a dynamic affinity set).
    pub managed: bool,
}

/// A table without its elements: its chains (with rules) and set declarations. Small
/// (kproxy's chains are shared), so cheap to keep as "what the kernel had before".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// Chains by name.
    pub chains: BTreeMap<String, Chain>,
    /// Set and map declarations by name.
    pub sets: BTreeMap<String, SetDecl>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_value_is_the_smallest_contribution_in_any_order() {
        let mut a = NftTable::new(IpFamily::V4);
        a.declare("m", || Set::managed("map", String::new()));
        let mut b = a.clone();
        for v in ["y", "x", "y"] {
            a.add_element("m", "k".into(), v.into());
        }
        for v in ["y", "y", "x"] {
            b.add_element("m", "k".into(), v.into());
        }
        assert_eq!(a, b);
        assert_eq!(a.element_value("m", "k"), Some("x"));
        a.remove_element("m", "k", "x");
        assert_eq!(a.element_value("m", "k"), Some("y"));
        a.remove_element("m", "k", "y");
        assert_eq!(a.element_value("m", "k"), Some("y"));
        a.remove_element("m", "k", "y");
        assert_eq!(a.element_value("m", "k"), None);
        assert_eq!(a.element_count(), 0);
    }
}
