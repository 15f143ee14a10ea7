//! The only code that talks to the kernel's conntrack table: ctnetlink
//! (`NFNL_SUBSYS_CTNETLINK`) over one `NETLINK_NETFILTER` socket.
//!
//! - A dump is `IPCTNL_MSG_CT_GET` with `NLM_F_DUMP` for one L3 family, narrowed in the
//!   kernel to one L4 protocol with a `CTA_FILTER` (Linux 5.10+; an older kernel that
//!   refuses the filter gets an unfiltered dump, and the result is filtered here anyway).
//! - A delete is `IPCTNL_MSG_CT_DELETE` with the entry's original tuple (and zone),
//!   `NLM_F_ACK`, sent [`DELETE_BATCH`] messages to one `sendmsg`; each message is answered
//!   with its own ack, matched back to its flow by sequence number.
//!
//! The socket is the shared non-blocking [`NetlinkSocket`]: waiting is bounded by
//! [`REPLY_TIMEOUT`].

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use netlink_packet_core::{
    DecodeError, DefaultNla, NLA_F_NESTED, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload, Nla as _,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::protocols::NETLINK_NETFILTER;

use super::filter::FlowToDelete;
use super::flow::{Flow, FlowTuple, ipproto, protocol_of};
use crate::netlink::{NetlinkError, NetlinkSocket, REPLY_TIMEOUT, align};
use crate::plan::{IpFamily, Protocol};

/// Deletes sent in one `sendmsg` (their acks must fit the socket's receive buffer).
pub const DELETE_BATCH: usize = 128;

const ENOENT: i32 = 2;
const EINVAL: i32 = 22;
const EOPNOTSUPP: i32 = 95;
/// `CTA_ZONE` (u16, network order).
const CTA_ZONE: u16 = 18;
/// `CTA_FILTER` (nested: `CTA_FILTER_ORIG_FLAGS`, `CTA_FILTER_REPLY_FLAGS`).
const CTA_FILTER: u16 = 25;
const CTA_FILTER_ORIG_FLAGS: u16 = 1;
/// `CTA_FILTER_FLAG(CTA_PROTO_NUM)`: match the original tuple's L4 protocol only.
const CTA_FILTER_FLAG_PROTO_NUM: u32 = 1 << 3;

/// A conntrack netlink failure, naming the request or the flow it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// A request failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// Deleting stale entries failed for some flows (the others were deleted).
    #[error(
        "cannot delete stale conntrack entry {flow}: {source} \
         ({others} more deletes failed, {deleted} succeeded)"
    )]
    Delete {
        /// The first flow whose delete failed.
        flow: Box<Flow>,
        /// Why.
        source: io::Error,
        /// How many other deletes failed.
        others: usize,
        /// How many deletes succeeded.
        deleted: usize,
    },
}

fn nf_family(family: IpFamily) -> NetfilterProtoFamily {
    match family {
        IpFamily::V4 => NetfilterProtoFamily::IPv4,
        IpFamily::V6 => NetfilterProtoFamily::IPv6,
    }
}

fn serialize(family: IpFamily, msg: ConntrackMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut packet = NetlinkMessage::from(NetfilterMessage::new(
        NetfilterHeader::new(nf_family(family), 0, 0),
        msg,
    ));
    packet.header.flags = flags;
    packet.header.sequence_number = seq;
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    buf
}

fn tuple_attrs(protocol: Protocol, tuple: &FlowTuple) -> Vec<Tuple> {
    vec![
        Tuple::Ip(vec![
            IPTuple::SourceAddress(tuple.src.ip()),
            IPTuple::DestinationAddress(tuple.dst.ip()),
        ]),
        Tuple::Proto(vec![
            ProtoTuple::Protocol(ipproto(protocol).into()),
            ProtoTuple::SourcePort(tuple.src.port()),
            ProtoTuple::DestinationPort(tuple.dst.port()),
        ]),
    ]
}

/// Serializes a dump request for one family, narrowed in the kernel to `protocol` when given.
pub fn encode_dump_request(family: IpFamily, protocol: Option<Protocol>, seq: u32) -> Vec<u8> {
    let attrs = match protocol {
        None => vec![],
        Some(p) => {
            let mut flags = Vec::with_capacity(8);
            flags.extend_from_slice(&8u16.to_ne_bytes());
            flags.extend_from_slice(&CTA_FILTER_ORIG_FLAGS.to_ne_bytes());
            flags.extend_from_slice(&CTA_FILTER_FLAG_PROTO_NUM.to_ne_bytes());
            vec![
                ConntrackAttribute::CtaTupleOrig(vec![Tuple::Proto(vec![ProtoTuple::Protocol(
                    ipproto(p).into(),
                )])]),
                ConntrackAttribute::Other(DefaultNla::new(CTA_FILTER | NLA_F_NESTED, flags)),
            ]
        }
    };
    let filtered = !attrs.is_empty();
    let mut request = serialize(
        family,
        ConntrackMessage::Get(attrs),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
    );
    if filtered {
        // `ConntrackAttribute::Other` drops NLA_F_NESTED from its kind when emitting; set it
        // on CTA_FILTER (the last, 12-byte attribute) as the kernel's own tools do.
        let at = request.len() - 12 + 2;
        request[at..at + 2].copy_from_slice(&(CTA_FILTER | NLA_F_NESTED).to_ne_bytes());
    }
    request
}

/// Serializes the deletion of one entry by its original tuple (and zone), asking for an ack.
pub fn encode_delete(flow: &Flow, seq: u32) -> Vec<u8> {
    let mut attrs = vec![ConntrackAttribute::CtaTupleOrig(tuple_attrs(
        flow.protocol,
        &flow.original,
    ))];
    if flow.zone != 0 {
        attrs.push(ConntrackAttribute::Other(DefaultNla::new(
            CTA_ZONE,
            flow.zone.to_be_bytes().to_vec(),
        )));
    }
    serialize(
        flow.family(),
        ConntrackMessage::Delete(attrs),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
    )
}

fn decode_tuple(tuples: &[Tuple]) -> Option<(u8, FlowTuple)> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, None, None);
    for t in tuples {
        match t {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(protos) => {
                for p in protos {
                    match p {
                        ProtoTuple::Protocol(n) => proto = Some(u8::from(*n)),
                        ProtoTuple::SourcePort(p) => sport = Some(*p),
                        ProtoTuple::DestinationPort(p) => dport = Some(*p),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((
        proto?,
        FlowTuple {
            src: SocketAddr::new(src?, sport?),
            dst: SocketAddr::new(dst?, dport?),
        },
    ))
}

/// The flow an entry's attributes describe; `None` for an entry without ports (ICMP, GRE…)
/// or with a protocol kproxy does not serve.
pub fn decode_flow(attrs: &[ConntrackAttribute]) -> Option<Flow> {
    let (mut original, mut reply, mut zone) = (None, None, 0u16);
    for attr in attrs {
        match attr {
            ConntrackAttribute::CtaTupleOrig(t) => original = decode_tuple(t),
            ConntrackAttribute::CtaTupleReply(t) => reply = decode_tuple(t),
            ConntrackAttribute::Other(nla) if nla.kind() == CTA_ZONE => {
                let mut value = [0u8; 2];
                nla.emit_value(&mut value);
                zone = u16::from_be_bytes(value);
            }
            _ => {}
        }
    }
    let (proto, original) = original?;
    let (_, reply) = reply?;
    Some(Flow {
        protocol: protocol_of(proto)?,
        original,
        reply,
        zone,
    })
}

/// One decoded message of a ctnetlink answer.
#[derive(Debug)]
pub enum Reply {
    /// A conntrack entry (of a dump).
    Entry(Option<Flow>),
    /// The end of a dump.
    Done,
    /// An ack (`None`) or an error (`Some(errno)`), for the request with this sequence number.
    Ack(Option<i32>),
    /// Anything else.
    Other,
}

/// Splits a buffer received from the socket into `(sequence number, reply)` pairs. A message
/// that cannot be decoded fails the whole buffer.
pub fn decode_replies(buf: &[u8]) -> Result<Vec<(u32, Reply)>, DecodeError> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[offset..offset + 4].try_into().expect("4 bytes")) as usize;
        if len < 16 || offset + len > buf.len() {
            return Err(DecodeError::from(format!(
                "netlink message of length {len} at offset {offset} in a buffer of {}",
                buf.len()
            )));
        }
        let msg = NetlinkMessage::<NetfilterMessage>::deserialize(&buf[offset..offset + len])?;
        let reply = match msg.payload {
            NetlinkPayload::InnerMessage(NetfilterMessage {
                inner:
                    NetfilterMessageInner::Conntrack(
                        ConntrackMessage::New(attrs) | ConntrackMessage::Get(attrs),
                    ),
                ..
            }) => Reply::Entry(decode_flow(&attrs)),
            NetlinkPayload::Done(_) => Reply::Done,
            NetlinkPayload::Error(err) => Reply::Ack(err.code.map(|c| -c.get())),
            _ => Reply::Other,
        };
        out.push((msg.header.sequence_number, reply));
        offset += align(len);
    }
    Ok(out)
}

/// What a batch of deletes did.
#[derive(Debug, Default)]
pub struct DeleteOutcome {
    /// Entries deleted.
    pub deleted: usize,
    /// Entries that no longer existed.
    pub already_gone: usize,
    /// Entries the kernel refused to delete (or never answered for), with the reason.
    pub errors: Vec<(Flow, io::Error)>,
}

/// A ctnetlink socket in the network namespace of the thread that opened it.
pub struct ConntrackSocket {
    socket: NetlinkSocket,
}

impl ConntrackSocket {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<ConntrackSocket, ConntrackError> {
        Ok(ConntrackSocket {
            socket: NetlinkSocket::open(NETLINK_NETFILTER, "conntrack")?,
        })
    }

    /// Calls `each` with every TCP/UDP/SCTP entry of `family` (of `protocol` only, when
    /// given). Entries of other protocols are skipped.
    pub fn dump_each(
        &mut self,
        family: IpFamily,
        protocol: Option<Protocol>,
        mut each: impl FnMut(Flow),
    ) -> Result<(), ConntrackError> {
        match self.dump_once(family, protocol, &mut each) {
            // A kernel without CTA_FILTER support: dump everything, filter here.
            Err(ConntrackError::Netlink(e))
                if protocol.is_some() && matches!(e.errno(), Some(EINVAL | EOPNOTSUPP)) =>
            {
                tracing::debug!(%family, "kernel refused a filtered conntrack dump: dumping all");
                self.dump_once(family, None, &mut |f: Flow| {
                    if Some(f.protocol) == protocol {
                        each(f)
                    }
                })
            }
            other => other,
        }
    }

    /// The TCP/UDP/SCTP entries of `family` (of `protocol` only, when given).
    pub fn dump(
        &mut self,
        family: IpFamily,
        protocol: Option<Protocol>,
    ) -> Result<Vec<Flow>, ConntrackError> {
        let mut flows = Vec::new();
        self.dump_each(family, protocol, |f| flows.push(f))?;
        Ok(flows)
    }

    fn dump_once(
        &mut self,
        family: IpFamily,
        protocol: Option<Protocol>,
        each: &mut dyn FnMut(Flow),
    ) -> Result<(), ConntrackError> {
        let what = match protocol {
            Some(p) => format!("dumping the {family} {p} conntrack table"),
            None => format!("dumping the {family} conntrack table"),
        };
        let seq = self.socket.next_seq();
        let request = encode_dump_request(family, protocol, seq);
        self.socket.send(&request, &what)?;
        // The deadline moves with every batch received: a large table may take longer in
        // total, but the kernel never pauses between batches.
        let mut deadline = Instant::now() + REPLY_TIMEOUT;
        while let Some(buf) = self.socket.recv(deadline, &what)? {
            deadline = Instant::now() + REPLY_TIMEOUT;
            let replies = decode_replies(buf).map_err(|source| NetlinkError::Decode {
                what: what.clone(),
                source,
            })?;
            for (s, reply) in replies {
                if s != seq {
                    continue;
                }
                match reply {
                    Reply::Entry(Some(flow))
                        if flow.family() == family
                            && protocol.is_none_or(|p| p == flow.protocol) =>
                    {
                        each(flow)
                    }
                    Reply::Done => return Ok(()),
                    Reply::Ack(Some(errno)) => return Err(NetlinkError::kernel(what, errno).into()),
                    _ => {}
                }
            }
        }
        Err(NetlinkError::Incomplete { what }.into())
    }

    /// Deletes `flows` by original tuple, [`DELETE_BATCH`] per `sendmsg`. Every flow is
    /// tried; failures are collected per flow. An entry that is already gone counts apart.
    pub fn delete(&mut self, flows: &[FlowToDelete]) -> DeleteOutcome {
        let mut outcome = DeleteOutcome::default();
        for batch in flows.chunks(DELETE_BATCH) {
            self.delete_batch(batch, &mut outcome);
        }
        outcome
    }

    fn delete_batch(&mut self, batch: &[FlowToDelete], outcome: &mut DeleteOutcome) {
        let mut pending: HashMap<u32, Flow> = HashMap::with_capacity(batch.len());
        let mut request = Vec::new();
        for d in batch {
            let seq = self.socket.next_seq();
            request.extend_from_slice(&encode_delete(&d.flow, seq));
            pending.insert(seq, d.flow);
        }
        let what = format!("deleting {} stale conntrack entries", batch.len());
        if let Err(e) = self.socket.send(&request, &what) {
            for flow in pending.into_values() {
                outcome.errors.push((flow, io::Error::other(e.to_string())));
            }
            return;
        }
        let deadline = Instant::now() + REPLY_TIMEOUT;
        while !pending.is_empty() {
            let buf = match self.socket.recv(deadline, &what) {
                Ok(Some(buf)) => buf,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!("{e}");
                    break;
                }
            };
            let replies = match decode_replies(buf) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("cannot decode the answer to {what}: {e}");
                    continue;
                }
            };
            for (seq, reply) in replies {
                let Reply::Ack(code) = reply else { continue };
                let Some(flow) = pending.remove(&seq) else {
                    continue;
                };
                match code {
                    None => outcome.deleted += 1,
                    Some(ENOENT) => outcome.already_gone += 1,
                    Some(errno) => outcome
                        .errors
                        .push((flow, io::Error::from_raw_os_error(errno))),
                }
            }
        }
        for flow in pending.into_values() {
            outcome.errors.push((
                flow,
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the kernel did not acknowledge the delete",
                ),
            ));
        }
    }
}

#[cfg(test)]
#[path = "netlink_tests.rs"]
mod tests;
