//! The only code that talks to the kernel's IPVS family: a generic-netlink socket that
//! resolves the `IPVS` family id through `nlctrl` and runs one request at a time, waiting
//! for the kernel's acknowledgement or the end of a dump.
//!
//! The socket is non-blocking: the kernel answers a generic-netlink request (and produces
//! every dump batch) synchronously within `sendmsg`/`recvmsg`, so an empty socket means the
//! answer is complete or lost; waiting for it is bounded by [`REPLY_TIMEOUT`].

use std::fmt::Debug;
use std::io;
use std::thread;
use std::time::{Duration, Instant};

use netlink_packet_core::{
    DecodeError, Emitable, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
    ParseableParametrized,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};

use super::consts::IPVS_GENL_NAME;
use super::message::{IpvsAttr, IpvsCmd, IpvsMessage};
use super::repr::{Destination, Service, ServiceKey, Timeouts};

/// How long one request may wait for its complete answer.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// At most this many messages are accepted in one answer (a dump of 10k services with
/// their destinations fits with room to spare).
pub const MAX_REPLY_MESSAGES: usize = 1 << 20;
const RECV_BUF_LEN: usize = 1 << 18;
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
    /// A socket call failed.
    #[error("netlink socket error during {what}: {source}")]
    Io {
        /// The request.
        what: String,
        /// The cause.
        source: io::Error,
    },
    /// The kernel refused the request.
    #[error("kernel refused {what}: {source}")]
    Kernel {
        /// The request.
        what: String,
        /// The errno the kernel answered, as an I/O error.
        source: io::Error,
    },
    /// An answer could not be decoded.
    #[error("cannot decode the kernel's answer to {what}: {source}")]
    Decode {
        /// The request.
        what: String,
        /// The cause.
        source: DecodeError,
    },
    /// The answer did not complete within [`REPLY_TIMEOUT`] or [`MAX_REPLY_MESSAGES`].
    #[error("no complete answer to {what} within {REPLY_TIMEOUT:?}")]
    Incomplete {
        /// The request.
        what: String,
    },
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
    socket: Socket,
    family_id: u16,
    seq: u32,
    buf: Vec<u8>,
}

impl IpvsSocket {
    /// Opens a socket in the calling thread's network namespace and resolves the IPVS
    /// family. Fails with [`IpvsNetlinkError::FamilyNotFound`] when the kernel lacks IPVS.
    pub fn open() -> Result<IpvsSocket, IpvsNetlinkError> {
        let io = |source| IpvsNetlinkError::Io {
            what: "opening the generic netlink socket".into(),
            source,
        };
        let mut socket = Socket::new(NETLINK_GENERIC).map_err(io)?;
        socket.bind_auto().map_err(io)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(io)?;
        socket.set_non_blocking(true).map_err(io)?;
        let mut this = IpvsSocket {
            socket,
            family_id: 0,
            seq: 0,
            buf: vec![0u8; RECV_BUF_LEN],
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
            Err(IpvsNetlinkError::Kernel { source, .. })
                if source.raw_os_error() == Some(ENOENT) =>
            {
                return Err(IpvsNetlinkError::FamilyNotFound);
            }
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
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let request = encode_request(family_id, seq, payload, dump);
        let io = |source| IpvsNetlinkError::Io {
            what: what.to_string(),
            source,
        };
        self.socket.send(&request, 0).map_err(io)?;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let mut out = Vec::new();
        let mut seen = 0usize;
        while Instant::now() < deadline && seen < MAX_REPLY_MESSAGES {
            let n = match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(1));
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io(e)),
            };
            let mut offset = 0;
            while offset < n && seen < MAX_REPLY_MESSAGES {
                seen += 1;
                let msg = NetlinkMessage::<GenlMessage<F>>::deserialize(&self.buf[offset..n])
                    .map_err(|source| IpvsNetlinkError::Decode {
                        what: what.to_string(),
                        source,
                    })?;
                let len = msg.header.length as usize;
                if len == 0 {
                    break;
                }
                offset += netlink_align(len);
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
                        Some(code) => {
                            return Err(IpvsNetlinkError::Kernel {
                                what: what.to_string(),
                                source: io::Error::from_raw_os_error(-code.get()),
                            });
                        }
                    },
                    _ => {}
                }
            }
        }
        Err(IpvsNetlinkError::Incomplete {
            what: what.to_string(),
        })
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
            .map(|attrs| {
                Service::from_attrs(attrs).map_err(|source| IpvsNetlinkError::Decode {
                    what: what.into(),
                    source,
                })
            })
            .collect()
    }

    /// One virtual service, `None` when the kernel has none with this key (`GET_SERVICE`
    /// without a dump: a single round trip, whatever the number of services).
    pub fn service(&mut self, key: &ServiceKey) -> Result<Option<Service>, IpvsNetlinkError> {
        let what = format!("IPVS GET_SERVICE of {key}");
        let attrs = vec![IpvsAttr::Service(key.to_attrs())];
        let replies = match self.ipvs(IpvsCmd::GetService, attrs, false, || what.clone()) {
            Err(IpvsNetlinkError::Kernel { source, .. })
                if matches!(source.raw_os_error(), Some(ESRCH | ENOENT)) =>
            {
                return Ok(None);
            }
            other => other?,
        };
        replies
            .iter()
            .find_map(IpvsMessage::service_attrs)
            .map(|attrs| {
                Service::from_attrs(attrs).map_err(|source| IpvsNetlinkError::Decode {
                    what: what.clone(),
                    source,
                })
            })
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
                Destination::from_attrs(key.af(), attrs).map_err(|source| {
                    IpvsNetlinkError::Decode {
                        what: what.clone(),
                        source,
                    }
                })
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

fn netlink_align(len: usize) -> usize {
    (len + 3) & !3
}
