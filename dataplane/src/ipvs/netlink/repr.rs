//! Typed values of IPVS objects (smoltcp's "Repr" side): a [`Service`] and a
//! [`Destination`], converted to and from the wire attributes in [`super::attrs`].
//!
//! Decoding checks that every attribute the kernel must send is there and names the
//! missing one; read-only attributes (connection counters) are decoded into
//! [`DestConns`] and never encoded.

use std::fmt;
use std::net::IpAddr;

use netlink_packet_core::DecodeError;

use super::attrs::{DestAttr, SvcAttr, emit_inet_addr, parse_inet_addr};
use super::consts::*;

/// The address family number of an address.
pub fn af_of(addr: &IpAddr) -> u16 {
    match addr {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

/// The persistence netmask ipvsadm uses by default: a full mask (IPv4) or /128 (IPv6).
pub fn default_netmask(af: u16) -> u32 {
    if af == AF_INET6 { 128 } else { 0xffff_ffff }
}

/// What identifies a virtual service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServiceKey {
    /// A `protocol addr:port` service (what kube-proxy programs).
    Addr {
        /// IP protocol number (`IPPROTO_TCP`, ...).
        protocol: u16,
        /// Virtual IP.
        addr: IpAddr,
        /// Virtual port.
        port: u16,
    },
    /// A firewall-mark service.
    Fwmark {
        /// Address family.
        af: u16,
        /// The mark.
        mark: u32,
    },
}

impl ServiceKey {
    /// The address family of the service.
    pub fn af(&self) -> u16 {
        match self {
            ServiceKey::Addr { addr, .. } => af_of(addr),
            ServiceKey::Fwmark { af, .. } => *af,
        }
    }

    /// The attributes that identify the service (what `DEL_SERVICE`, `GET_SERVICE` and the
    /// destination commands carry), in ipvsadm's order.
    pub fn to_attrs(&self) -> Vec<SvcAttr> {
        match self {
            ServiceKey::Addr {
                protocol,
                addr,
                port,
            } => vec![
                SvcAttr::Af(af_of(addr)),
                SvcAttr::Protocol(*protocol),
                SvcAttr::Addr(emit_inet_addr(addr)),
                SvcAttr::Port(*port),
            ],
            ServiceKey::Fwmark { af, mark } => vec![SvcAttr::Af(*af), SvcAttr::Fwmark(*mark)],
        }
    }

    /// Decodes the identifying attributes.
    pub fn from_attrs(attrs: &[SvcAttr]) -> Result<ServiceKey, DecodeError> {
        let mut af = None;
        let (mut protocol, mut addr, mut port, mut fwmark) = (None, None, None, None);
        for a in attrs {
            match a {
                SvcAttr::Af(v) => af = Some(*v),
                SvcAttr::Protocol(v) => protocol = Some(*v),
                SvcAttr::Addr(v) => addr = Some(*v),
                SvcAttr::Port(v) => port = Some(*v),
                SvcAttr::Fwmark(v) => fwmark = Some(*v),
                _ => {}
            }
        }
        let af = af.ok_or("IPVS service without IPVS_SVC_ATTR_AF")?;
        match (fwmark, protocol, addr, port) {
            (Some(mark), _, _, _) if mark != 0 => Ok(ServiceKey::Fwmark { af, mark }),
            (_, Some(protocol), Some(raw), Some(port)) => Ok(ServiceKey::Addr {
                protocol,
                addr: parse_inet_addr(af, &raw)?,
                port,
            }),
            _ => Err("IPVS service without fwmark nor protocol/addr/port".into()),
        }
    }
}

impl fmt::Display for ServiceKey {
    /// ipvsadm's notation: `TCP 10.96.0.10:80`, `UDP [fd00::1]:53`, `FWM 7`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceKey::Addr {
                protocol,
                addr,
                port,
            } => {
                let proto = match *protocol {
                    IPPROTO_TCP => "TCP".to_string(),
                    IPPROTO_UDP => "UDP".to_string(),
                    IPPROTO_SCTP => "SCTP".to_string(),
                    other => format!("proto{other}"),
                };
                write!(f, "{proto} {}", std::net::SocketAddr::new(*addr, *port))
            }
            ServiceKey::Fwmark { mark, .. } => write!(f, "FWM {mark}"),
        }
    }
}

/// A virtual service as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// What identifies it.
    pub key: ServiceKey,
    /// Scheduler name (`rr`, `wrr`, `lc`, `wlc`, `sh`, `dh`, `sed`, `nq`, `mh`).
    pub scheduler: String,
    /// `IP_VS_SVC_F_*` flags, without the kernel-internal `HASHED` bit.
    pub flags: u32,
    /// Persistence timeout in seconds (meaningful with `SVC_F_PERSISTENT`).
    pub timeout: u32,
    /// Persistence netmask.
    pub netmask: u32,
}

impl Service {
    /// A service with no persistence and the default netmask.
    pub fn new(key: ServiceKey, scheduler: impl Into<String>) -> Service {
        Service {
            key,
            scheduler: scheduler.into(),
            flags: 0,
            timeout: 0,
            netmask: default_netmask(key.af()),
        }
    }

    /// Makes the service persistent for `timeout` seconds (ClientIP session affinity).
    pub fn with_persistence(mut self, timeout: u32) -> Service {
        self.flags |= SVC_F_PERSISTENT;
        self.timeout = timeout;
        self
    }

    /// The full attribute set `NEW_SERVICE` and `SET_SERVICE` need, in ipvsadm's order.
    pub fn to_attrs(&self) -> Vec<SvcAttr> {
        let mut attrs = self.key.to_attrs();
        attrs.push(SvcAttr::SchedName(self.scheduler.clone()));
        attrs.push(SvcAttr::Flags {
            flags: self.flags,
            mask: u32::MAX,
        });
        attrs.push(SvcAttr::Timeout(self.timeout));
        attrs.push(SvcAttr::Netmask(self.netmask));
        attrs
    }

    /// Decodes a service the kernel sent.
    pub fn from_attrs(attrs: &[SvcAttr]) -> Result<Service, DecodeError> {
        let key = ServiceKey::from_attrs(attrs)?;
        let mut service = Service::new(key, "");
        let mut sched = None;
        for a in attrs {
            match a {
                SvcAttr::SchedName(s) => sched = Some(s.clone()),
                SvcAttr::Flags { flags, .. } => service.flags = flags & !SVC_F_HASHED,
                SvcAttr::Timeout(t) => service.timeout = *t,
                SvcAttr::Netmask(m) => service.netmask = *m,
                _ => {}
            }
        }
        service.scheduler = sched.ok_or_else(|| {
            DecodeError::from(format!(
                "IPVS service {key} without IPVS_SVC_ATTR_SCHED_NAME"
            ))
        })?;
        Ok(service)
    }
}

/// Connection counters of a destination (read-only, never sent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DestConns {
    /// Established connections.
    pub active: u32,
    /// Other connections (e.g. TIME_WAIT, UDP).
    pub inactive: u32,
    /// Persistence templates.
    pub persistent: u32,
}

impl DestConns {
    /// Every connection the destination still has.
    pub fn total(&self) -> u64 {
        u64::from(self.active) + u64::from(self.inactive)
    }
}

/// A destination (real server) of a virtual service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// Real server address.
    pub addr: IpAddr,
    /// Real server port.
    pub port: u16,
    /// Forwarding method (`CONN_F_MASQ` for kube-proxy).
    pub fwd_method: u32,
    /// Weight; 0 stops new connections (graceful termination).
    pub weight: u32,
    /// Upper connection threshold.
    pub u_thresh: u32,
    /// Lower connection threshold.
    pub l_thresh: u32,
    /// Connection counters (decoded only).
    pub conns: DestConns,
}

impl Destination {
    /// A masquerading (NAT) destination of weight 1.
    pub fn masq(addr: IpAddr, port: u16) -> Destination {
        Destination {
            addr,
            port,
            fwd_method: CONN_F_MASQ,
            weight: 1,
            u_thresh: 0,
            l_thresh: 0,
            conns: DestConns::default(),
        }
    }

    /// The attributes that identify the destination (for `DEL_DEST`).
    pub fn key_attrs(&self) -> Vec<DestAttr> {
        vec![
            DestAttr::Addr(emit_inet_addr(&self.addr)),
            DestAttr::Port(self.port),
        ]
    }

    /// The full attribute set `NEW_DEST` and `SET_DEST` need, in ipvsadm's order.
    pub fn to_attrs(&self) -> Vec<DestAttr> {
        vec![
            DestAttr::AddrFamily(af_of(&self.addr)),
            DestAttr::Addr(emit_inet_addr(&self.addr)),
            DestAttr::Port(self.port),
            DestAttr::FwdMethod(self.fwd_method & CONN_F_FWD_MASK),
            DestAttr::Weight(self.weight),
            DestAttr::UThresh(self.u_thresh),
            DestAttr::LThresh(self.l_thresh),
        ]
    }

    /// Decodes a destination the kernel sent for a service of address family `svc_af`.
    pub fn from_attrs(svc_af: u16, attrs: &[DestAttr]) -> Result<Destination, DecodeError> {
        let (mut af, mut raw, mut port) = (svc_af, None, None);
        let mut d = Destination::masq(IpAddr::from([0, 0, 0, 0]), 0);
        for a in attrs {
            match a {
                DestAttr::AddrFamily(v) => af = *v,
                DestAttr::Addr(v) => raw = Some(*v),
                DestAttr::Port(v) => port = Some(*v),
                DestAttr::FwdMethod(v) => d.fwd_method = v & CONN_F_FWD_MASK,
                DestAttr::Weight(v) => d.weight = *v,
                DestAttr::UThresh(v) => d.u_thresh = *v,
                DestAttr::LThresh(v) => d.l_thresh = *v,
                DestAttr::ActiveConns(v) => d.conns.active = *v,
                DestAttr::InactConns(v) => d.conns.inactive = *v,
                DestAttr::PersistConns(v) => d.conns.persistent = *v,
                DestAttr::Other(_) => {}
            }
        }
        let raw = raw.ok_or("IPVS destination without IPVS_DEST_ATTR_ADDR")?;
        d.addr = parse_inet_addr(af, &raw)?;
        d.port = port.ok_or_else(|| {
            DecodeError::from(format!(
                "IPVS destination {} without IPVS_DEST_ATTR_PORT",
                d.addr
            ))
        })?;
        Ok(d)
    }

    /// `addr:port` of the destination.
    pub fn socket_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.addr, self.port)
    }
}

/// The kernel's IPVS connection timeouts, in seconds (`ipvsadm --set tcp tcpfin udp`).
/// When setting, 0 leaves a timeout unchanged (the kernel ignores zeros too).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Timeouts {
    /// Established TCP connections (`IPVS_CMD_ATTR_TIMEOUT_TCP`).
    pub tcp: u32,
    /// TCP connections after a FIN (`IPVS_CMD_ATTR_TIMEOUT_TCP_FIN`).
    pub tcp_fin: u32,
    /// UDP flows (`IPVS_CMD_ATTR_TIMEOUT_UDP`).
    pub udp: u32,
}

impl Timeouts {
    /// Whether every timeout is 0 (nothing to set).
    pub fn is_unchanged(&self) -> bool {
        *self == Timeouts::default()
    }

    /// The top-level attributes of a `SET_CONFIG` request: only the non-zero timeouts.
    pub fn to_attrs(&self) -> Vec<super::message::IpvsAttr> {
        use super::message::IpvsAttr;
        let mut attrs = Vec::new();
        if self.tcp > 0 {
            attrs.push(IpvsAttr::TimeoutTcp(self.tcp));
        }
        if self.tcp_fin > 0 {
            attrs.push(IpvsAttr::TimeoutTcpFin(self.tcp_fin));
        }
        if self.udp > 0 {
            attrs.push(IpvsAttr::TimeoutUdp(self.udp));
        }
        attrs
    }

    /// The timeouts in the attributes of a `GET_CONFIG` reply (a missing one reads as 0:
    /// the kernel leaves out the protocols it was built without).
    pub fn from_attrs(attrs: &[super::message::IpvsAttr]) -> Timeouts {
        use super::message::IpvsAttr;
        let mut t = Timeouts::default();
        for attr in attrs {
            match attr {
                IpvsAttr::TimeoutTcp(v) => t.tcp = *v,
                IpvsAttr::TimeoutTcpFin(v) => t.tcp_fin = *v,
                IpvsAttr::TimeoutUdp(v) => t.udp = *v,
                _ => {}
            }
        }
        t
    }
}

impl fmt::Display for Timeouts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tcp {}s, tcpfin {}s, udp {}s",
            self.tcp, self.tcp_fin, self.udp
        )
    }
}
