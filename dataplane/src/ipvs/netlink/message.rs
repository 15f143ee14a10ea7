//! An IPVS generic-netlink message: a command plus its top-level attributes (a nested
//! service, a nested destination, the connection timeouts of `SET_CONFIG`/`GET_CONFIG`,
//! or the info attributes of a `GET_INFO` reply). This is
//! the payload type `F` of `netlink_packet_generic::GenlMessage<F>`.

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, NLA_F_NESTED, Nla, NlaBuffer, Parseable,
    ParseableParametrized, emit_u32, parse_u32,
};
use netlink_packet_generic::{GenlFamily, GenlHeader};

use super::attrs::{DestAttr, SvcAttr, attrs_len, parse_nested};
use super::consts::*;

/// The IPVS commands kproxy uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpvsCmd {
    /// Add a virtual service.
    NewService,
    /// Change a virtual service's scheduler, flags or timeout.
    SetService,
    /// Delete a virtual service (and its destinations).
    DelService,
    /// Get one service, or dump all (also the command of dump replies: `NewService`).
    GetService,
    /// Add a destination to a service.
    NewDest,
    /// Change a destination's weight, thresholds or forwarding method.
    SetDest,
    /// Delete a destination.
    DelDest,
    /// Dump the destinations of a service.
    GetDest,
    /// Set the connection timeouts (also the command of the reply to `GetConfig`).
    SetConfig,
    /// Read the connection timeouts.
    GetConfig,
    /// Reply to `GetInfo`.
    SetInfo,
    /// Ask for the IPVS version and connection table size.
    GetInfo,
    /// Delete every service.
    Flush,
    /// A command this code does not model.
    Other(u8),
}

impl From<IpvsCmd> for u8 {
    fn from(cmd: IpvsCmd) -> u8 {
        match cmd {
            IpvsCmd::NewService => CMD_NEW_SERVICE,
            IpvsCmd::SetService => CMD_SET_SERVICE,
            IpvsCmd::DelService => CMD_DEL_SERVICE,
            IpvsCmd::GetService => CMD_GET_SERVICE,
            IpvsCmd::NewDest => CMD_NEW_DEST,
            IpvsCmd::SetDest => CMD_SET_DEST,
            IpvsCmd::DelDest => CMD_DEL_DEST,
            IpvsCmd::GetDest => CMD_GET_DEST,
            IpvsCmd::SetConfig => CMD_SET_CONFIG,
            IpvsCmd::GetConfig => CMD_GET_CONFIG,
            IpvsCmd::SetInfo => CMD_SET_INFO,
            IpvsCmd::GetInfo => CMD_GET_INFO,
            IpvsCmd::Flush => CMD_FLUSH,
            IpvsCmd::Other(c) => c,
        }
    }
}

impl From<u8> for IpvsCmd {
    fn from(c: u8) -> IpvsCmd {
        match c {
            CMD_NEW_SERVICE => IpvsCmd::NewService,
            CMD_SET_SERVICE => IpvsCmd::SetService,
            CMD_DEL_SERVICE => IpvsCmd::DelService,
            CMD_GET_SERVICE => IpvsCmd::GetService,
            CMD_NEW_DEST => IpvsCmd::NewDest,
            CMD_SET_DEST => IpvsCmd::SetDest,
            CMD_DEL_DEST => IpvsCmd::DelDest,
            CMD_GET_DEST => IpvsCmd::GetDest,
            CMD_SET_CONFIG => IpvsCmd::SetConfig,
            CMD_GET_CONFIG => IpvsCmd::GetConfig,
            CMD_SET_INFO => IpvsCmd::SetInfo,
            CMD_GET_INFO => IpvsCmd::GetInfo,
            CMD_FLUSH => IpvsCmd::Flush,
            other => IpvsCmd::Other(other),
        }
    }
}

/// A top-level attribute of an IPVS message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpvsAttr {
    /// `IPVS_CMD_ATTR_SERVICE`: the nested attributes of a service.
    Service(Vec<SvcAttr>),
    /// `IPVS_CMD_ATTR_DEST`: the nested attributes of a destination.
    Dest(Vec<DestAttr>),
    /// `IPVS_CMD_ATTR_TIMEOUT_TCP`: seconds (config messages).
    TimeoutTcp(u32),
    /// `IPVS_CMD_ATTR_TIMEOUT_TCP_FIN`: seconds (config messages).
    TimeoutTcpFin(u32),
    /// `IPVS_CMD_ATTR_TIMEOUT_UDP`: seconds (config messages).
    TimeoutUdp(u32),
    /// `IPVS_INFO_ATTR_VERSION` (only in info messages).
    InfoVersion(u32),
    /// `IPVS_INFO_ATTR_CONN_TAB_SIZE` (only in info messages).
    InfoConnTabSize(u32),
    /// Anything else.
    Other(DefaultNla),
}

impl Nla for IpvsAttr {
    fn value_len(&self) -> usize {
        match self {
            IpvsAttr::Service(a) => attrs_len(a),
            IpvsAttr::Dest(a) => attrs_len(a),
            IpvsAttr::TimeoutTcp(_)
            | IpvsAttr::TimeoutTcpFin(_)
            | IpvsAttr::TimeoutUdp(_)
            | IpvsAttr::InfoVersion(_)
            | IpvsAttr::InfoConnTabSize(_) => 4,
            IpvsAttr::Other(nla) => nla.value_len(),
        }
    }

    /// The nested attributes are sent with `NLA_F_NESTED`, as ipvsadm (libnl) sends them;
    /// the kernel's replies leave the flag out and decoding accepts both.
    fn kind(&self) -> u16 {
        match self {
            IpvsAttr::Service(_) => CMD_ATTR_SERVICE | NLA_F_NESTED,
            IpvsAttr::Dest(_) => CMD_ATTR_DEST | NLA_F_NESTED,
            IpvsAttr::TimeoutTcp(_) => CMD_ATTR_TIMEOUT_TCP,
            IpvsAttr::TimeoutTcpFin(_) => CMD_ATTR_TIMEOUT_TCP_FIN,
            IpvsAttr::TimeoutUdp(_) => CMD_ATTR_TIMEOUT_UDP,
            IpvsAttr::InfoVersion(_) => INFO_ATTR_VERSION,
            IpvsAttr::InfoConnTabSize(_) => INFO_ATTR_CONN_TAB_SIZE,
            IpvsAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buf: &mut [u8]) {
        match self {
            IpvsAttr::Service(a) => a.as_slice().emit(buf),
            IpvsAttr::Dest(a) => a.as_slice().emit(buf),
            IpvsAttr::TimeoutTcp(v)
            | IpvsAttr::TimeoutTcpFin(v)
            | IpvsAttr::TimeoutUdp(v)
            | IpvsAttr::InfoVersion(v)
            | IpvsAttr::InfoConnTabSize(v) => {
                let _ = emit_u32(buf, *v);
            }
            IpvsAttr::Other(nla) => nla.emit_value(buf),
        }
    }
}

impl IpvsAttr {
    fn parse(nla: &NlaBuffer<&[u8]>, cmd: IpvsCmd) -> Result<Self, DecodeError> {
        let info = matches!(cmd, IpvsCmd::SetInfo | IpvsCmd::GetInfo);
        let v = nla.value();
        Ok(match (info, nla.kind()) {
            (true, INFO_ATTR_VERSION) => IpvsAttr::InfoVersion(parse_u32(v)?),
            (true, INFO_ATTR_CONN_TAB_SIZE) => IpvsAttr::InfoConnTabSize(parse_u32(v)?),
            (false, CMD_ATTR_SERVICE) => IpvsAttr::Service(parse_nested(v, |n| SvcAttr::parse(n))?),
            (false, CMD_ATTR_DEST) => IpvsAttr::Dest(parse_nested(v, |n| DestAttr::parse(n))?),
            (false, CMD_ATTR_TIMEOUT_TCP) => IpvsAttr::TimeoutTcp(parse_u32(v)?),
            (false, CMD_ATTR_TIMEOUT_TCP_FIN) => IpvsAttr::TimeoutTcpFin(parse_u32(v)?),
            (false, CMD_ATTR_TIMEOUT_UDP) => IpvsAttr::TimeoutUdp(parse_u32(v)?),
            _ => IpvsAttr::Other(DefaultNla::parse(nla)?),
        })
    }
}

/// One IPVS generic-netlink message (the part after the genl header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsMessage {
    /// The command.
    pub cmd: IpvsCmd,
    /// The top-level attributes.
    pub attrs: Vec<IpvsAttr>,
}

impl IpvsMessage {
    /// A message with a command and attributes.
    pub fn new(cmd: IpvsCmd, attrs: Vec<IpvsAttr>) -> Self {
        IpvsMessage { cmd, attrs }
    }

    /// The nested service attributes, if the message has them.
    pub fn service_attrs(&self) -> Option<&[SvcAttr]> {
        self.attrs.iter().find_map(|a| match a {
            IpvsAttr::Service(s) => Some(s.as_slice()),
            _ => None,
        })
    }

    /// The nested destination attributes, if the message has them.
    pub fn dest_attrs(&self) -> Option<&[DestAttr]> {
        self.attrs.iter().find_map(|a| match a {
            IpvsAttr::Dest(d) => Some(d.as_slice()),
            _ => None,
        })
    }
}

impl GenlFamily for IpvsMessage {
    fn family_name() -> &'static str {
        IPVS_GENL_NAME
    }

    fn command(&self) -> u8 {
        self.cmd.into()
    }

    fn version(&self) -> u8 {
        IPVS_GENL_VERSION
    }
}

impl Emitable for IpvsMessage {
    fn buffer_len(&self) -> usize {
        attrs_len(&self.attrs)
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let cmd = IpvsCmd::from(header.cmd);
        Ok(IpvsMessage {
            cmd,
            attrs: parse_nested(buf, |n| IpvsAttr::parse(n, cmd))?,
        })
    }
}
