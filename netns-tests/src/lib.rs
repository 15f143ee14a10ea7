//! Test helpers that build small clusters out of network namespaces and run the real
//! `kproxy` binary in them. Every test that uses them needs root.
//!
//! - [`netns`]: a namespace that deletes itself on drop, commands and threads inside it.
//! - [`echo`]: TCP echo backends that answer with their pod name and the peer they saw.
//! - [`node`]: a one-node cluster (bridge of pods, a client pod, an external client).
//! - [`kproxy`]: running the kproxy binary inside a node namespace.

pub mod echo;
pub mod kproxy;
pub mod netns;
pub mod node;
