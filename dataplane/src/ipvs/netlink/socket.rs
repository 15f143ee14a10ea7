//! The only code that talks to the kernel's IPVS family: a generic-netlink socket that
//! resolves the `IPVS` family id through `nlctrl` and runs one request at a time, waiting
//! for the kernel's acknowledgement or the end of a dump.
//!
//! The socket is the shared non-blocking [`NetlinkSocket`]: waiting for an answer is
//! bounded by [`REPLY_TIMEOUT`] and [`MAX_REPLY_MESSAGES`].

use std::fmt::Debug;
use std::time::Instant;

use netlink_packet_core::{
    DecodeError, Emitable, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
    ParseableParametrized,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};
use netlink_sys::protocols::NETLINK_GENERIC;

use crate::netlink::{NetlinkError, NetlinkSocket, REPLY_TIMEOUT, align};

use super::consts::IPVS_GENL_NAME;
use super::message::{IpvsAttr, IpvsCmd, IpvsMessage};
use super::repr::{Destination, Service, ServiceKey, Timeouts};

/// At most this many messages are accepted in one answer (a dump of 10k services with
/// their destinations fits with room to spare).
pub const MAX_REPLY_MESSAGES: usize = 1 << 20;
const ENOENT: i32 = 2;
const ESRCH: i32 = 3;

/// An IPVS netlink failure, naming the request it concerns.
#[derive(Debug, thiserror::Error)]
pub enum IpvsNetlinkError {
    /// The kernel has no `IPVS` generic-netlink family (no ip_vs module).
    #[error(
        "the kernel has no IPVS generic-netlink family (ip_vs not loaded or not built): \
         IPVS mode cannot run here"
    )]
    FamilyNotFound,
    /// A request failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

impl IpvsNetlinkError {
    /// The errno the kernel refused a request with.
    pub fn errno(&self) -> Option<i32> {
        match self {
            IpvsNetlinkError::Netlink(e) => e.errno(),
            IpvsNetlinkError::FamilyNotFound => None,
        }
    }
}

/// An answer to `what` that did not decode.
fn undecodable(what: &str, source: DecodeError) -> IpvsNetlinkError {
    NetlinkError::Decode {
        what: what.to_owned(),
        source,
    }
    .into()
}

/// Serializes one generic-netlink request (header, genl header, attributes).
pub fn encode_request<F>(family_id: u16, seq: u32, payload: F, dump: bool) -> Vec<u8>
where
    F: GenlFamily + Emitable + Debug,
{
    let mut genl = GenlMessage::from_payload(payload);
    genl.set_resolved_family_id(family_id);
    let mut msg = NetlinkMessage::from(genl);
    msg.header.flags = NLM_F_REQUEST | NLM_F_ACK | if dump { NLM_F_DUMP } else { 0 };
    msg.header.sequence_number = seq;
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// A generic-netlink socket speaking to the kernel's IPVS family.
pub struct IpvsSocket {
    socket: NetlinkSocket,
    family_id: u16,
}

impl IpvsSocket {
    /// Opens a socket in the calling thread's network namespace and resolves the IPVS
    /// family. Fails with [`IpvsNetlinkError::FamilyNotFound`] when the kernel lacks IPVS.
    pub fn open() -> Result<IpvsSocket, IpvsNetlinkError> {
        let mut this = IpvsSocket {
            socket: NetlinkSocket::open(NETLINK_GENERIC, "generic")?,
            family_id: 0,
        };
        this.family_id = this.resolve_family()?;
        Ok(this)
    }

    /// The generic-netlink family id the kernel assigned to IPVS.
    pub fn family_id(&self) -> u16 {
        self.family_id
    }

    fn resolve_family(&mut self) -> Result<u16, IpvsNetlinkError> {
        let request = GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(IPVS_GENL_NAME.to_string())],
        };
        let what = "resolving the IPVS generic netlink family";
        let replies = match self.exchange(GenlCtrl::family_id(&request), request, false, what) {
            Err(e) if e.errno() == Some(ENOENT) => return Err(IpvsNetlinkError::FamilyNotFound),
            other => other?,
        };
        replies
            .iter()
            .flat_map(|r| &r.nlas)
            .find_map(|a| match a {
                GenlCtrlAttrs::FamilyId(id) => Some(*id),
                _ => None,
            })
            .ok_or(IpvsNetlinkError::FamilyNotFound)
    }

    /// Sends one request and collects the payloads of the answer (none for a plain ack).
    fn exchange<F>(
        &mut self,
        family_id: u16,
        payload: F,
        dump: bool,
        what: &str,
    ) -> Result<Vec<F>, IpvsNetlinkError>
    where
        F: GenlFamily + Emitable + Debug + ParseableParametrized<[u8], GenlHeader>,
    {
        let seq = self.socket.next_seq();
        let request = encode_request(family_id, seq, payload, dump);
        self.socket.send(&request, what)?;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let mut out = Vec::new();
        let mut seen = 0usize;
        while seen < MAX_REPLY_MESSAGES {
            let Some(buf) = self.socket.recv(deadline, what)? else {
                break;
            };
            let mut offset = 0;
            while offset < buf.len() && seen < MAX_REPLY_MESSAGES {
                seen += 1;
                let msg = NetlinkMessage::<GenlMessage<F>>::deserialize(&buf[offset..]).map_err(
                    |source| NetlinkError::Decode {
                        what: what.to_string(),
                        source,
                    },
                )?;
                let len = msg.header.length as usize;
                if len == 0 {
                    break;
                }
                offset += align(len);
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    // A reply to a plain request is followed by its ack: keep reading.
                    NetlinkPayload::InnerMessage(genl) => out.push(genl.payload),
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(err) => match err.code {
                        None if !dump => return Ok(out),
                        None => {}
                        Some(code) => return Err(NetlinkError::kernel(what, -code.get()).into()),
                    },
                    _ => {}
                }
            }
        }
        Err(NetlinkError::Incomplete {
            what: what.to_string(),
        }
        .into())
    }

    fn ipvs(
        &mut self,
        cmd: IpvsCmd,
        attrs: Vec<IpvsAttr>,
        dump: bool,
        what: impl FnOnce() -> String,
    ) -> Result<Vec<IpvsMessage>, IpvsNetlinkError> {
        let family = self.family_id;
        let what = what();
        self.exchange(family, IpvsMessage::new(cmd, attrs), dump, &what)
    }

    /// The kernel's IPVS version (`major << 16 | minor << 8 | patch`) and connection table
    /// size.
    pub fn info(&mut self) -> Result<(u32, u32), IpvsNetlinkError> {
        let replies = self.ipvs(IpvsCmd::GetInfo, vec![], false, || "IPVS GET_INFO".into())?;
        let (mut version, mut size) = (0, 0);
        for attr in replies.iter().flat_map(|m| &m.attrs) {
            match attr {
                IpvsAttr::InfoVersion(v) => version = *v,
                IpvsAttr::InfoConnTabSize(s) => size = *s,
                _ => {}
            }
        }
        Ok((version, size))
    }

    /// The connection timeouts of this network namespace (`GET_CONFIG`).
    pub fn timeouts(&mut self) -> Result<Timeouts, IpvsNetlinkError> {
        let replies = self.ipvs(IpvsCmd::GetConfig, vec![], false, || {
            "IPVS GET_CONFIG (connection timeouts)".into()
        })?;
        let attrs: Vec<IpvsAttr> = replies.into_iter().flat_map(|m| m.attrs).collect();
        Ok(Timeouts::from_attrs(&attrs))
    }

    /// Sets the non-zero connection timeouts of `timeouts` (`SET_CONFIG`, as
    /// `ipvsadm --set`); zeros leave the kernel's value unchanged. Nothing is sent when
    /// every timeout is 0.
    pub fn set_timeouts(&mut self, timeouts: &Timeouts) -> Result<(), IpvsNetlinkError> {
        if timeouts.is_unchanged() {
            return Ok(());
        }
        self.ipvs(IpvsCmd::SetConfig, timeouts.to_attrs(), false, || {
            format!("IPVS SET_CONFIG (connection timeouts: {timeouts})")
        })
        .map(drop)
    }

    /// Every virtual service in this network namespace.
    pub fn services(&mut self) -> Result<Vec<Service>, IpvsNetlinkError> {
        let what = "IPVS GET_SERVICE dump";
        let replies = self.ipvs(IpvsCmd::GetService, vec![], true, || what.into())?;
        replies
            .iter()
            .filter_map(IpvsMessage::service_attrs)
            .map(|attrs| Service::from_attrs(attrs).map_err(|source| undecodable(what, source)))
            .collect()
    }

    /// One virtual service, `None` when the kernel has none with this key (`GET_SERVICE`
    /// without a dump: a single round trip, whatever the number of services).
    pub fn service(&mut self, key: &ServiceKey) -> Result<Option<Service>, IpvsNetlinkError> {
        let what = format!("IPVS GET_SERVICE of {key}");
        let attrs = vec![IpvsAttr::Service(key.to_attrs())];
        let replies = match self.ipvs(IpvsCmd::GetService, attrs, false, || what.clone()) {
            Err(e) if matches!(e.errno(), Some(ESRCH | ENOENT)) => return Ok(None),
            other => other?,
        };
        replies
            .iter()
            .find_map(IpvsMessage::service_attrs)
            .map(|attrs| Service::from_attrs(attrs).map_err(|source| undecodable(&what, source)))
            .transpose()
    }

    /// Adds a virtual service.
    pub fn new_service(&mut self, service: &Service) -> Result<(), IpvsNetlinkError> {
        let attrs = vec![IpvsAttr::Service(service.to_attrs())];
        self.ipvs(IpvsCmd::NewService, attrs, false, || {
            format!("adding IPVS service {}", service.key)
        })
        .map(drop)
    }

    /// Changes a virtual service's scheduler, flags, timeout or netmask.
    pub fn set_service(&mut self, service: &Service) -> Result<(), IpvsNetlinkError> {
        let attrs = vec![IpvsAttr::Service(service.to_attrs())];
        self.ipvs(IpvsCmd::SetService, attrs, false, || {
            format!("updating IPVS service {}", service.key)
        })
        .map(drop)
    }

    /// Deletes a virtual service and its destinations.
    pub fn del_service(&mut self, key: &ServiceKey) -> Result<(), IpvsNetlinkError> {
        let attrs = vec![IpvsAttr::Service(key.to_attrs())];
        self.ipvs(IpvsCmd::DelService, attrs, false, || {
            format!("deleting IPVS service {key}")
        })
        .map(drop)
    }

    /// The destinations of a virtual service.
    pub fn destinations(&mut self, key: &ServiceKey) -> Result<Vec<Destination>, IpvsNetlinkError> {
        let what = format!("IPVS GET_DEST dump of {key}");
        let attrs = vec![IpvsAttr::Service(key.to_attrs())];
        let replies = self.ipvs(IpvsCmd::GetDest, attrs, true, || what.clone())?;
        replies
            .iter()
            .filter_map(IpvsMessage::dest_attrs)
            .map(|attrs| {
                Destination::from_attrs(key.af(), attrs)
                    .map_err(|source| undecodable(&what, source))
            })
            .collect()
    }

    /// Adds a destination to a virtual service.
    pub fn new_dest(
        &mut self,
        key: &ServiceKey,
        dest: &Destination,
    ) -> Result<(), IpvsNetlinkError> {
        let attrs = vec![
            IpvsAttr::Service(key.to_attrs()),
            IpvsAttr::Dest(dest.to_attrs()),
        ];
        self.ipvs(IpvsCmd::NewDest, attrs, false, || {
            format!(
                "adding real server {} to IPVS service {key}",
                dest.socket_addr()
            )
        })
        .map(drop)
    }

    /// Changes a destination's weight, thresholds or forwarding method.
    pub fn set_dest(
        &mut self,
        key: &ServiceKey,
        dest: &Destination,
    ) -> Result<(), IpvsNetlinkError> {
        let attrs = vec![
            IpvsAttr::Service(key.to_attrs()),
            IpvsAttr::Dest(dest.to_attrs()),
        ];
        self.ipvs(IpvsCmd::SetDest, attrs, false, || {
            format!(
                "updating real server {} of IPVS service {key}",
                dest.socket_addr()
            )
        })
        .map(drop)
    }

    /// Deletes a destination from a virtual service.
    pub fn del_dest(
        &mut self,
        key: &ServiceKey,
        dest: &Destination,
    ) -> Result<(), IpvsNetlinkError> {
        let attrs = vec![
            IpvsAttr::Service(key.to_attrs()),
            IpvsAttr::Dest(dest.key_attrs()),
        ];
        self.ipvs(IpvsCmd::DelDest, attrs, false, || {
            format!(
                "deleting real server {} of IPVS service {key}",
                dest.socket_addr()
            )
        })
        .map(drop)
    }

    /// Deletes every virtual service in this network namespace.
    pub fn flush(&mut self) -> Result<(), IpvsNetlinkError> {
        self.ipvs(IpvsCmd::Flush, vec![], false, || "IPVS FLUSH".into())
            .map(drop)
    }
}
