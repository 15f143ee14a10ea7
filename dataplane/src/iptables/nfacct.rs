//! nfacct counters (netfilter's extended accounting, `NFNL_SUBSYS_ACCT`), which upstream's
//! iptables mode counts two kinds of packets with: INVALID packets its forward chain
//! drops, and packets accepted for NodePorts on 127.0.0.0/8. Rules name a counter with
//! `-m nfacct --nfacct-name NAME`; the counter is a kernel object of the network namespace,
//! created here over netlink and read when metrics are scraped.
//!
//! Encoding and decoding are pure functions over bytes; [`NfacctSocket`] only sends and
//! receives, over the shared [`NetlinkSocket`] (so every wait is bounded).

use std::time::Instant;

use netlink_sys::protocols::NETLINK_NETFILTER;

use crate::netlink::{NetlinkError, NetlinkSocket, REPLY_TIMEOUT};

/// Counts the INVALID packets `KUBE-FORWARD` drops (upstream's name).
pub const CT_STATE_INVALID_DROPPED: &str = "ct_state_invalid_dropped_pkts";
/// Counts the packets accepted for NodePorts on 127.0.0.0/8 (upstream's name).
pub const LOCALHOST_NODEPORTS_ACCEPTED: &str = "localhost_nps_accepted_pkts";
/// Both counters.
pub const COUNTERS: [&str; 2] = [CT_STATE_INVALID_DROPPED, LOCALHOST_NODEPORTS_ACCEPTED];

const NFNL_SUBSYS_ACCT: u16 = 7;
const NFNL_MSG_ACCT_NEW: u16 = 0;
const NFNL_MSG_ACCT_GET: u16 = 1;
const NFACCT_NAME: u16 = 1;
const NFACCT_PKTS: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const EEXIST: i32 = 17;

/// A request: nlmsghdr, nfgenmsg (AF_UNSPEC, version 0, resource 0), the name attribute.
fn encode(msg: u16, flags: u16, name: &str, seq: u32) -> Vec<u8> {
    let mut attr_value = name.as_bytes().to_vec();
    attr_value.push(0);
    let attr_len = 4 + attr_value.len();
    let padded = attr_len.div_ceil(4) * 4;
    let total = 16 + 4 + padded;
    let mut buf = Vec::with_capacity(total);
    buf.extend_from_slice(&u32::try_from(total).unwrap_or(u32::MAX).to_ne_bytes());
    buf.extend_from_slice(&((NFNL_SUBSYS_ACCT << 8) | msg).to_ne_bytes());
    buf.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&[0, 0, 0, 0]);
    buf.extend_from_slice(&u16::try_from(attr_len).unwrap_or(u16::MAX).to_ne_bytes());
    buf.extend_from_slice(&NFACCT_NAME.to_ne_bytes());
    buf.extend_from_slice(&attr_value);
    buf.resize(total, 0);
    buf
}

/// Creates counter `name` (fails with `EEXIST` when it exists).
pub fn encode_new(name: &str, seq: u32) -> Vec<u8> {
    encode(
        NFNL_MSG_ACCT_NEW,
        NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK,
        name,
        seq,
    )
}

/// Asks for counter `name` (answered by the counter, or by an error; no acknowledgement
/// follows, so the next request's answer is the next message).
pub fn encode_get(name: &str, seq: u32) -> Vec<u8> {
    encode(NFNL_MSG_ACCT_GET, 0, name, seq)
}

/// One message of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A counter: its name and packet count.
    Counter {
        /// The counter's name.
        name: String,
        /// Packets counted.
        packets: u64,
    },
    /// An acknowledgement (`errno` 0) or an error (a negative errno).
    Ack(i32),
    /// The end of a dump.
    Done,
}

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buf.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

/// Decodes every message of a received buffer; `None` when it is malformed.
pub fn decode(buf: &[u8]) -> Option<Vec<Reply>> {
    let mut replies = Vec::new();
    let mut at = 0;
    while at + 16 <= buf.len() {
        let len = usize::try_from(u32_at(buf, at)?).ok()?;
        let kind = u16_at(buf, at + 4)?;
        if len < 16 || at + len > buf.len() {
            return None;
        }
        let body = &buf[at + 16..at + len];
        replies.push(match kind {
            NLMSG_ERROR => Reply::Ack(i32::from_ne_bytes(body.get(..4)?.try_into().ok()?)),
            NLMSG_DONE => Reply::Done,
            _ => counter(body.get(4..)?)?,
        });
        at += len.div_ceil(4) * 4;
    }
    Some(replies)
}

/// The attributes of a counter message (after its nfgenmsg).
fn counter(mut attrs: &[u8]) -> Option<Reply> {
    let (mut name, mut packets) = (None, None);
    while attrs.len() >= 4 {
        let len = usize::from(u16_at(attrs, 0)?);
        let kind = u16_at(attrs, 2)? & 0x3fff;
        let value = attrs.get(4..len)?;
        match kind {
            NFACCT_NAME => {
                let text = value.split(|b| *b == 0).next().unwrap_or_default();
                name = Some(String::from_utf8_lossy(text).into_owned());
            }
            NFACCT_PKTS => packets = Some(u64::from_be_bytes(value.get(..8)?.try_into().ok()?)),
            _ => {}
        }
        attrs = attrs.get(len.div_ceil(4) * 4..).unwrap_or_default();
    }
    Some(Reply::Counter {
        name: name?,
        packets: packets?,
    })
}

/// A netlink socket to the nfacct subsystem of the current network namespace.
pub struct NfacctSocket {
    socket: NetlinkSocket,
}

impl NfacctSocket {
    /// Opens the socket.
    pub fn open() -> Result<Self, NetlinkError> {
        Ok(NfacctSocket {
            socket: NetlinkSocket::open(NETLINK_NETFILTER, "nfacct")?,
        })
    }

    /// Sends one request and decodes the one buffer that answers it.
    fn request(
        &mut self,
        what: &str,
        encode: impl Fn(u32) -> Vec<u8>,
    ) -> Result<Vec<Reply>, NetlinkError> {
        let seq = self.socket.next_seq();
        self.socket.send(&encode(seq), what)?;
        let incomplete = || NetlinkError::Incomplete {
            what: what.to_owned(),
        };
        let buf = self
            .socket
            .recv(Instant::now() + REPLY_TIMEOUT, what)?
            .ok_or_else(incomplete)?;
        decode(buf).ok_or_else(|| NetlinkError::Decode {
            what: what.to_owned(),
            source: "malformed nfacct reply".into(),
        })
    }

    /// Creates counter `name` unless it exists.
    pub fn ensure(&mut self, name: &str) -> Result<(), NetlinkError> {
        let what = format!("creating nfacct counter {name}");
        match self.request(&what, |seq| encode_new(name, seq))?.first() {
            Some(Reply::Ack(0)) => Ok(()),
            Some(Reply::Ack(e)) if -e == EEXIST => Ok(()),
            Some(Reply::Ack(e)) => Err(NetlinkError::kernel(what, -e)),
            _ => Err(NetlinkError::Incomplete { what }),
        }
    }

    /// The packets counter `name` counted.
    pub fn packets(&mut self, name: &str) -> Result<u64, NetlinkError> {
        let what = format!("reading nfacct counter {name}");
        for reply in self.request(&what, |seq| encode_get(name, seq))? {
            match reply {
                Reply::Counter { packets, .. } => return Ok(packets),
                Reply::Ack(e) if e < 0 => return Err(NetlinkError::kernel(what, -e)),
                _ => {}
            }
        }
        Err(NetlinkError::Incomplete { what })
    }
}

/// Creates both counters; `false` when the kernel has no nfacct (the rules then do without
/// the `nfacct` match, and the metrics stay at zero, as upstream).
pub fn ensure_counters() -> bool {
    let created = NfacctSocket::open()
        .and_then(|mut socket| COUNTERS.iter().try_for_each(|name| socket.ensure(name)));
    match created {
        Ok(()) => true,
        Err(e) => {
            tracing::info!(error = %e, "no nfacct counters: the two iptables packet metrics stay at zero");
            false
        }
    }
}

/// Whether both counters exist (created by [`ensure_counters`]): rules may use them.
pub fn counters_exist() -> bool {
    read_counters().iter().all(Option::is_some)
}

/// Reads both counters (`None` for one that cannot be read).
pub fn read_counters() -> [Option<u64>; 2] {
    let Ok(mut socket) = NfacctSocket::open() else {
        return [None, None];
    };
    COUNTERS.map(|name| socket.packets(name).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_nfnetlink_acct_messages() {
        let buf = encode_new("ab", 7);
        assert_eq!(buf.len(), 28, "16 header + 4 nfgenmsg + 8 padded attribute");
        assert_eq!(u32_at(&buf, 0), Some(28));
        assert_eq!(u16_at(&buf, 4), Some(NFNL_SUBSYS_ACCT << 8));
        assert_eq!(
            u16_at(&buf, 6),
            Some(NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK)
        );
        assert_eq!(u32_at(&buf, 8), Some(7));
        assert_eq!(u16_at(&buf, 20), Some(7), "attribute length: 4 + \"ab\\0\"");
        assert_eq!(u16_at(&buf, 22), Some(NFACCT_NAME));
        assert_eq!(&buf[24..27], b"ab\0");
        assert_eq!(
            u16_at(&encode_get("ab", 1), 4),
            Some((NFNL_SUBSYS_ACCT << 8) | 1)
        );
    }

    #[test]
    fn decodes_counters_acks_and_errors() {
        // A counter message: header, nfgenmsg, NAME "x\0", PKTS 5 (big-endian), BYTES.
        let mut msg = Vec::new();
        let body: Vec<u8> = [
            vec![0, 0, 0, 0],
            vec![6, 0, 1, 0, b'x', 0, 0, 0],
            [vec![12, 0, 2, 0], 5u64.to_be_bytes().to_vec()].concat(),
            [vec![12, 0, 3, 0], 300u64.to_be_bytes().to_vec()].concat(),
        ]
        .concat();
        let len = u32::try_from(16 + body.len()).expect("small");
        msg.extend_from_slice(&len.to_ne_bytes());
        msg.extend_from_slice(&(NFNL_SUBSYS_ACCT << 8).to_ne_bytes());
        msg.extend_from_slice(&[0; 10]);
        msg.extend_from_slice(&body);
        let mut ack = Vec::new();
        ack.extend_from_slice(&36u32.to_ne_bytes());
        ack.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        ack.extend_from_slice(&[0; 10]);
        ack.extend_from_slice(&(-EEXIST).to_ne_bytes());
        ack.extend_from_slice(&[0; 16]);
        let replies = decode(&[msg, ack].concat()).expect("well formed");
        assert_eq!(
            replies,
            [
                Reply::Counter {
                    name: "x".into(),
                    packets: 5
                },
                Reply::Ack(-EEXIST)
            ]
        );
        assert_eq!(decode(&[1, 2, 3]), Some(vec![]));
        assert_eq!(
            decode(&[200, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            None
        );
    }
}
