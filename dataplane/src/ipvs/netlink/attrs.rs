//! The wire level of IPVS attributes: one enum variant per netlink attribute of a service
//! (`IPVS_SVC_ATTR_*`) or destination (`IPVS_DEST_ATTR_*`), with exact encoding and
//! decoding. Unknown and read-only attributes (statistics) are kept as raw [`DefaultNla`]s
//! so a decode → encode round trip is lossless.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, Nla, NlaBuffer, NlasIterator, Parseable, emit_u16,
    emit_u16_be, emit_u32, parse_string, parse_u16, parse_u16_be, parse_u32,
};

use super::consts::*;

/// Length of an address attribute on the wire (`union nf_inet_addr`).
pub const INET_ADDR_LEN: usize = 16;

/// Encodes an address as `union nf_inet_addr` (IPv4 in the first 4 bytes, zero padded).
pub fn emit_inet_addr(addr: &IpAddr) -> [u8; INET_ADDR_LEN] {
    let mut out = [0u8; INET_ADDR_LEN];
    match addr {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out.copy_from_slice(&v6.octets()),
    }
    out
}

/// Decodes a `union nf_inet_addr` of address family `af`.
pub fn parse_inet_addr(af: u16, raw: &[u8]) -> Result<IpAddr, DecodeError> {
    match af {
        AF_INET if raw.len() >= 4 => Ok(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
        AF_INET6 if raw.len() >= 16 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&raw[..16]);
            Ok(IpAddr::V6(Ipv6Addr::from(octets)))
        }
        AF_INET | AF_INET6 => Err(DecodeError::invalid_ip_address(raw.len())),
        other => Err(format!("unknown address family {other}").into()),
    }
}

fn nla_string_len(s: &str) -> usize {
    s.len() + 1
}

fn emit_nla_string(buf: &mut [u8], s: &str) {
    buf[..s.len()].copy_from_slice(s.as_bytes());
    buf[s.len()] = 0;
}

fn parse_u32_at(raw: &[u8], at: usize) -> Result<u32, DecodeError> {
    raw.get(at..at + 4)
        .ok_or_else(|| DecodeError::invalid_number(4, raw.len().saturating_sub(at)))
        .and_then(parse_u32)
}

/// Parses every attribute of a nested attribute set with `parse`.
pub fn parse_nested<A>(
    raw: &[u8],
    parse: impl Fn(&NlaBuffer<&[u8]>) -> Result<A, DecodeError>,
) -> Result<Vec<A>, DecodeError> {
    NlasIterator::new(raw)
        .map(|nla| nla.and_then(|nla| parse(&nla)))
        .collect()
}

/// One attribute of an IPVS service (`IPVS_SVC_ATTR_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SvcAttr {
    /// Address family (`AF_INET`, `AF_INET6`).
    Af(u16),
    /// IP protocol number.
    Protocol(u16),
    /// Virtual address, 16 raw bytes (`union nf_inet_addr`).
    Addr([u8; INET_ADDR_LEN]),
    /// Virtual port (host order here, network order on the wire).
    Port(u16),
    /// Firewall mark of a fwmark service.
    Fwmark(u32),
    /// Scheduler name (`rr`, `wrr`, ...).
    SchedName(String),
    /// Service flags and the mask of flags the message sets.
    Flags {
        /// `IP_VS_SVC_F_*` bits.
        flags: u32,
        /// Which bits of `flags` are meaningful.
        mask: u32,
    },
    /// Persistence timeout in seconds.
    Timeout(u32),
    /// Persistence netmask (IPv4 mask or IPv6 prefix length).
    Netmask(u32),
    /// Persistence engine name.
    PeName(String),
    /// Anything else (statistics, attributes newer than this code).
    Other(DefaultNla),
}

impl Nla for SvcAttr {
    fn value_len(&self) -> usize {
        match self {
            SvcAttr::Af(_) | SvcAttr::Protocol(_) | SvcAttr::Port(_) => 2,
            SvcAttr::Addr(_) => INET_ADDR_LEN,
            SvcAttr::Fwmark(_) | SvcAttr::Timeout(_) | SvcAttr::Netmask(_) => 4,
            SvcAttr::SchedName(s) | SvcAttr::PeName(s) => nla_string_len(s),
            SvcAttr::Flags { .. } => 8,
            SvcAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            SvcAttr::Af(_) => SVC_ATTR_AF,
            SvcAttr::Protocol(_) => SVC_ATTR_PROTOCOL,
            SvcAttr::Addr(_) => SVC_ATTR_ADDR,
            SvcAttr::Port(_) => SVC_ATTR_PORT,
            SvcAttr::Fwmark(_) => SVC_ATTR_FWMARK,
            SvcAttr::SchedName(_) => SVC_ATTR_SCHED_NAME,
            SvcAttr::Flags { .. } => SVC_ATTR_FLAGS,
            SvcAttr::Timeout(_) => SVC_ATTR_TIMEOUT,
            SvcAttr::Netmask(_) => SVC_ATTR_NETMASK,
            SvcAttr::PeName(_) => SVC_ATTR_PE_NAME,
            SvcAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buf: &mut [u8]) {
        // The buffer is exactly value_len() long (the Nla contract), so these cannot fail.
        let _ = match self {
            SvcAttr::Af(v) | SvcAttr::Protocol(v) => emit_u16(buf, *v),
            SvcAttr::Port(v) => emit_u16_be(buf, *v),
            SvcAttr::Addr(raw) => {
                buf[..INET_ADDR_LEN].copy_from_slice(raw);
                Ok(())
            }
            SvcAttr::Fwmark(v) | SvcAttr::Timeout(v) | SvcAttr::Netmask(v) => emit_u32(buf, *v),
            SvcAttr::SchedName(s) | SvcAttr::PeName(s) => {
                emit_nla_string(buf, s);
                Ok(())
            }
            SvcAttr::Flags { flags, mask } => {
                emit_u32(&mut buf[..4], *flags).and_then(|()| emit_u32(&mut buf[4..8], *mask))
            }
            SvcAttr::Other(nla) => {
                nla.emit_value(buf);
                Ok(())
            }
        };
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for SvcAttr {
    fn parse(nla: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let v = nla.value();
        Ok(match nla.kind() {
            SVC_ATTR_AF => SvcAttr::Af(parse_u16(v)?),
            SVC_ATTR_PROTOCOL => SvcAttr::Protocol(parse_u16(v)?),
            SVC_ATTR_ADDR => {
                let mut raw = [0u8; INET_ADDR_LEN];
                let n = v.len().min(INET_ADDR_LEN);
                raw[..n].copy_from_slice(&v[..n]);
                SvcAttr::Addr(raw)
            }
            SVC_ATTR_PORT => SvcAttr::Port(parse_u16_be(v)?),
            SVC_ATTR_FWMARK => SvcAttr::Fwmark(parse_u32(v)?),
            SVC_ATTR_SCHED_NAME => SvcAttr::SchedName(parse_string(v)?),
            SVC_ATTR_FLAGS => SvcAttr::Flags {
                flags: parse_u32_at(v, 0)?,
                mask: parse_u32_at(v, 4)?,
            },
            SVC_ATTR_TIMEOUT => SvcAttr::Timeout(parse_u32(v)?),
            SVC_ATTR_NETMASK => SvcAttr::Netmask(parse_u32(v)?),
            SVC_ATTR_PE_NAME => SvcAttr::PeName(parse_string(v)?),
            _ => SvcAttr::Other(DefaultNla::parse(nla)?),
        })
    }
}

/// One attribute of an IPVS destination (real server, `IPVS_DEST_ATTR_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestAttr {
    /// Real server address, 16 raw bytes.
    Addr([u8; INET_ADDR_LEN]),
    /// Real server port (host order here).
    Port(u16),
    /// Forwarding method (`IP_VS_CONN_F_MASQ`, ...).
    FwdMethod(u32),
    /// Scheduling weight; 0 takes the server out of scheduling.
    Weight(u32),
    /// Upper connection threshold (0: none).
    UThresh(u32),
    /// Lower connection threshold.
    LThresh(u32),
    /// Active connections (read-only).
    ActiveConns(u32),
    /// Inactive connections (read-only).
    InactConns(u32),
    /// Persistent connection templates (read-only).
    PersistConns(u32),
    /// Address family of the real server.
    AddrFamily(u16),
    /// Anything else (statistics, tunnel attributes).
    Other(DefaultNla),
}

impl Nla for DestAttr {
    fn value_len(&self) -> usize {
        match self {
            DestAttr::Addr(_) => INET_ADDR_LEN,
            DestAttr::Port(_) | DestAttr::AddrFamily(_) => 2,
            DestAttr::FwdMethod(_)
            | DestAttr::Weight(_)
            | DestAttr::UThresh(_)
            | DestAttr::LThresh(_)
            | DestAttr::ActiveConns(_)
            | DestAttr::InactConns(_)
            | DestAttr::PersistConns(_) => 4,
            DestAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            DestAttr::Addr(_) => DEST_ATTR_ADDR,
            DestAttr::Port(_) => DEST_ATTR_PORT,
            DestAttr::FwdMethod(_) => DEST_ATTR_FWD_METHOD,
            DestAttr::Weight(_) => DEST_ATTR_WEIGHT,
            DestAttr::UThresh(_) => DEST_ATTR_U_THRESH,
            DestAttr::LThresh(_) => DEST_ATTR_L_THRESH,
            DestAttr::ActiveConns(_) => DEST_ATTR_ACTIVE_CONNS,
            DestAttr::InactConns(_) => DEST_ATTR_INACT_CONNS,
            DestAttr::PersistConns(_) => DEST_ATTR_PERSIST_CONNS,
            DestAttr::AddrFamily(_) => DEST_ATTR_ADDR_FAMILY,
            DestAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buf: &mut [u8]) {
        let _ = match self {
            DestAttr::Addr(raw) => {
                buf[..INET_ADDR_LEN].copy_from_slice(raw);
                Ok(())
            }
            DestAttr::Port(v) => emit_u16_be(buf, *v),
            DestAttr::AddrFamily(v) => emit_u16(buf, *v),
            DestAttr::FwdMethod(v)
            | DestAttr::Weight(v)
            | DestAttr::UThresh(v)
            | DestAttr::LThresh(v)
            | DestAttr::ActiveConns(v)
            | DestAttr::InactConns(v)
            | DestAttr::PersistConns(v) => emit_u32(buf, *v),
            DestAttr::Other(nla) => {
                nla.emit_value(buf);
                Ok(())
            }
        };
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for DestAttr {
    fn parse(nla: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let v = nla.value();
        Ok(match nla.kind() {
            DEST_ATTR_ADDR => {
                let mut raw = [0u8; INET_ADDR_LEN];
                let n = v.len().min(INET_ADDR_LEN);
                raw[..n].copy_from_slice(&v[..n]);
                DestAttr::Addr(raw)
            }
            DEST_ATTR_PORT => DestAttr::Port(parse_u16_be(v)?),
            DEST_ATTR_FWD_METHOD => DestAttr::FwdMethod(parse_u32(v)?),
            DEST_ATTR_WEIGHT => DestAttr::Weight(parse_u32(v)?),
            DEST_ATTR_U_THRESH => DestAttr::UThresh(parse_u32(v)?),
            DEST_ATTR_L_THRESH => DestAttr::LThresh(parse_u32(v)?),
            DEST_ATTR_ACTIVE_CONNS => DestAttr::ActiveConns(parse_u32(v)?),
            DEST_ATTR_INACT_CONNS => DestAttr::InactConns(parse_u32(v)?),
            DEST_ATTR_PERSIST_CONNS => DestAttr::PersistConns(parse_u32(v)?),
            DEST_ATTR_ADDR_FAMILY => DestAttr::AddrFamily(parse_u16(v)?),
            _ => DestAttr::Other(DefaultNla::parse(nla)?),
        })
    }
}

/// Total encoded length of a list of attributes.
pub fn attrs_len<A: Nla>(attrs: &[A]) -> usize {
    attrs.iter().map(Emitable::buffer_len).sum()
}
