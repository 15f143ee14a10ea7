//! The IPVS generic-netlink message layer, written on `netlink-packet-core`,
//! `netlink-packet-generic` and `netlink-sys` (no maintained IPVS crate fits).
//!
//! - [`consts`]: the numbers of `include/uapi/linux/ip_vs.h`.
//! - [`attrs`]: the wire level, one enum variant per attribute, lossless both ways.
//! - [`repr`]: typed [`Service`] / [`Destination`] / [`Timeouts`] values and their
//!   attribute sets.
//! - [`message`]: [`IpvsMessage`], the generic-netlink payload (command + attributes).
//! - [`socket`]: [`IpvsSocket`], the only code here that talks to the kernel.

pub mod attrs;
pub mod consts;
pub mod message;
pub mod repr;
pub mod socket;

pub use message::{IpvsAttr, IpvsCmd, IpvsMessage};
pub use repr::{DestConns, Destination, Service, ServiceKey, Timeouts};
pub use socket::{IpvsNetlinkError, IpvsSocket, encode_request};
#[cfg(test)]
mod tests;
