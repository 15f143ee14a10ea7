//! nftables mode: one table per family that kproxy owns outright (`ip kproxy`,
//! `ip6 kproxy`), programmed with one `nft -f -` transaction per sync.
//!
//! - [`names`]: object names and nft's family-specific words.
//! - [`table`]: the [`table::NftTable`] value (chains, sets, maps, elements) a sync wants.
//! - [`render`]: `ProxyPlan` → `NftTable`, pure.
//! - [`transaction`]: the `nft -f -` text that moves the kernel from the last written table
//!   to the wanted one (recreate, rewrite in place, or partial update); pure.
//! - [`apply`]: the only code that runs `nft`.
//! - [`proxier`]: per-family sync state tying the above together.
//!
//! # The shape, and why it is not upstream's
//!
//! Upstream's nftables proxier writes a chain per service port and per endpoint, reached
//! from verdict-map elements. The kernel's cost of loading such a table grows with the
//! number of chains that map elements jump to, super-linearly (67 s at 10k services, 310 s
//! at 20k on our machines). kproxy keeps upstream's dispatch (verdict maps keyed by
//! `daddr . l4proto . dport` and `l4proto . dport`) but makes every chain *shared*: a
//! service's data lives only in map and set elements, and its verdict-map element jumps to
//! a chain named after its **shape** (traffic kind, policy, endpoint count, affinity
//! timeout), of which a cluster has a handful. The packet's own destination stays the key
//! all the way down, so no register or packet mark carries per-service data:
//!
//! - `services` looks up `service-ips` / `service-nodeports` → an *entry* chain
//!   (`cluster-ip-…`, `external-…`, `external-local-…`) that applies the masquerade and
//!   eTP-Local short-circuit rules of the shape, then
//! - a *pick* chain `pick-<set>-<kind>-<n>` that takes the slot session affinity remembers
//!   or draws one with `numgen random mod n`, then
//! - a *slot* chain `slot-<set>-<kind>-<i>` that DNATs to `ep-<set>-<kind>-<i>[key]`.
//!
//! A one-endpoint change is a one-element change of an `ep-…` map; endpoints keep their
//! slots across syncs (see `render::layout`). Example, one ClusterIP service with two
//! endpoints and pod-CIDR detection (abridged):
//!
//! ```text
//! table ip kproxy {
//!   map service-ips { type ipv4_addr . inet_proto . inet_service : verdict
//!     elements = { 172.30.0.41 . tcp . 80 : goto cluster-ip-cluster-2 } }
//!   map ep-cluster-vip-0 { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service
//!     elements = { 172.30.0.41 . tcp . 80 : 10.180.0.1 . 8080 } }
//!   map ep-cluster-vip-1 { … elements = { 172.30.0.41 . tcp . 80 : 10.180.1.1 . 8080 } }
//!   set hairpin { type ipv4_addr . ipv4_addr
//!     elements = { 10.180.0.1 . 10.180.0.1, 10.180.1.1 . 10.180.1.1 } }
//!   chain nat-prerouting { type nat hook prerouting priority dstnat; jump services }
//!   chain services { ip daddr . meta l4proto . th dport vmap @service-ips }
//!   chain cluster-ip-cluster-2 {
//!     ip saddr != 10.0.0.0/8 jump mark-for-masquerade
//!     goto pick-cluster-vip-2 }
//!   chain pick-cluster-vip-2 {
//!     numgen random mod 2 vmap { 0 : goto slot-cluster-vip-0, 1 : goto slot-cluster-vip-1 } }
//!   chain slot-cluster-vip-0 {
//!     meta l4proto { tcp, udp, sctp } dnat ip to ip daddr . meta l4proto . th dport map @ep-cluster-vip-0 }
//!   chain masquerading {
//!     ct status dnat ip saddr . ip daddr @hairpin jump mark-for-masquerade
//!     meta mark & 0x4000 == 0 return
//!     meta mark set meta mark ^ 0x4000
//!     masquerade fully-random }
//! }
//! ```
//!
//! 10 000 more services with two endpoints add 10 000 `service-ips` elements and 20 000
//! `ep-…` and `hairpin` elements each, and no chain. Session affinity adds per-slot dynamic
//! sets `aff-<set>-<kind>-<i>` of `client . key`, checked in the pick chain and refreshed
//! (`update … timeout Ns`) in the slot chain. Services without endpoints are elements of
//! `no-endpoint-services` / `no-endpoint-nodeports` (`goto reject-chain` or `drop`), looked
//! up by `endpoints-check` from the filter hooks after DNAT; `loadBalancerSourceRanges` are
//! elements of `firewall-ips` and the interval set `firewall-allow`, checked by
//! `firewall-check` before DNAT.

pub mod apply;
pub mod live;
pub mod names;
pub mod proxier;
pub mod render;
pub mod table;
pub mod transaction;
