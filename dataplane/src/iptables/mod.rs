//! iptables mode: upstream kube-proxy's chain layout, applied with `iptables-restore
//! --noflush`.
//!
//! - [`names`]: upstream's chain names and hashes.
//! - [`ruleset`]: the [`ruleset::Ruleset`] value (tables → chains → rules) a sync wants.
//! - [`render`]: `ProxyPlan` → `Ruleset`, pure.
//! - [`restore`]: the `iptables-restore` input that moves the kernel from what it has (or
//!   what the last sync wrote) to a `Ruleset`, touching only kproxy's chains; pure.
//! - [`jumps`]: the rules in built-in chains that lead into kproxy's chains.
//! - [`apply`]: the only code that runs `iptables-save` / `iptables-restore`.
//! - [`proxier`]: per-family sync state (full vs partial) tying the above together.

pub mod apply;
pub mod jumps;
pub mod live;
pub mod names;
pub mod nfacct;
pub mod proxier;
pub mod render;
pub mod restore;
pub mod ruleset;
