//! Numeric constants of the IPVS generic-netlink family, from `include/uapi/linux/ip_vs.h`.

/// The generic-netlink family name the kernel registers for IPVS.
pub const IPVS_GENL_NAME: &str = "IPVS";
/// The family version ipvsadm and the kernel speak.
pub const IPVS_GENL_VERSION: u8 = 1;

/// `IPVS_CMD_NEW_SERVICE`.
pub const CMD_NEW_SERVICE: u8 = 1;
/// `IPVS_CMD_SET_SERVICE`.
pub const CMD_SET_SERVICE: u8 = 2;
/// `IPVS_CMD_DEL_SERVICE`.
pub const CMD_DEL_SERVICE: u8 = 3;
/// `IPVS_CMD_GET_SERVICE`.
pub const CMD_GET_SERVICE: u8 = 4;
/// `IPVS_CMD_NEW_DEST`.
pub const CMD_NEW_DEST: u8 = 5;
/// `IPVS_CMD_SET_DEST`.
pub const CMD_SET_DEST: u8 = 6;
/// `IPVS_CMD_DEL_DEST`.
pub const CMD_DEL_DEST: u8 = 7;
/// `IPVS_CMD_GET_DEST`.
pub const CMD_GET_DEST: u8 = 8;
/// `IPVS_CMD_SET_CONFIG` (set the connection timeouts; also the command of the kernel's
/// reply to `GET_CONFIG`).
pub const CMD_SET_CONFIG: u8 = 12;
/// `IPVS_CMD_GET_CONFIG` (read the connection timeouts).
pub const CMD_GET_CONFIG: u8 = 13;
/// `IPVS_CMD_SET_INFO` (the command of the kernel's reply to `GET_INFO`).
pub const CMD_SET_INFO: u8 = 14;
/// `IPVS_CMD_GET_INFO`.
pub const CMD_GET_INFO: u8 = 15;
/// `IPVS_CMD_FLUSH`.
pub const CMD_FLUSH: u8 = 17;

/// `IPVS_CMD_ATTR_SERVICE` (nested service attributes).
pub const CMD_ATTR_SERVICE: u16 = 1;
/// `IPVS_CMD_ATTR_DEST` (nested destination attributes).
pub const CMD_ATTR_DEST: u16 = 2;

/// `IPVS_CMD_ATTR_TIMEOUT_TCP` (u32 seconds: established TCP connections).
pub const CMD_ATTR_TIMEOUT_TCP: u16 = 4;
/// `IPVS_CMD_ATTR_TIMEOUT_TCP_FIN` (u32 seconds: TCP connections after FIN).
pub const CMD_ATTR_TIMEOUT_TCP_FIN: u16 = 5;
/// `IPVS_CMD_ATTR_TIMEOUT_UDP` (u32 seconds: UDP flows).
pub const CMD_ATTR_TIMEOUT_UDP: u16 = 6;

/// `IPVS_SVC_ATTR_AF` (u16).
pub const SVC_ATTR_AF: u16 = 1;
/// `IPVS_SVC_ATTR_PROTOCOL` (u16).
pub const SVC_ATTR_PROTOCOL: u16 = 2;
/// `IPVS_SVC_ATTR_ADDR` (16 bytes, `union nf_inet_addr`).
pub const SVC_ATTR_ADDR: u16 = 3;
/// `IPVS_SVC_ATTR_PORT` (u16, network order).
pub const SVC_ATTR_PORT: u16 = 4;
/// `IPVS_SVC_ATTR_FWMARK` (u32).
pub const SVC_ATTR_FWMARK: u16 = 5;
/// `IPVS_SVC_ATTR_SCHED_NAME` (NUL-terminated string).
pub const SVC_ATTR_SCHED_NAME: u16 = 6;
/// `IPVS_SVC_ATTR_FLAGS` (`struct ip_vs_flags { u32 flags; u32 mask; }`).
pub const SVC_ATTR_FLAGS: u16 = 7;
/// `IPVS_SVC_ATTR_TIMEOUT` (u32 seconds of persistence).
pub const SVC_ATTR_TIMEOUT: u16 = 8;
/// `IPVS_SVC_ATTR_NETMASK` (u32; a mask for IPv4, a prefix length for IPv6).
pub const SVC_ATTR_NETMASK: u16 = 9;
/// `IPVS_SVC_ATTR_STATS` (nested; read-only).
pub const SVC_ATTR_STATS: u16 = 10;
/// `IPVS_SVC_ATTR_PE_NAME` (string).
pub const SVC_ATTR_PE_NAME: u16 = 11;
/// `IPVS_SVC_ATTR_STATS64` (nested; read-only).
pub const SVC_ATTR_STATS64: u16 = 12;

/// `IPVS_DEST_ATTR_ADDR` (16 bytes).
pub const DEST_ATTR_ADDR: u16 = 1;
/// `IPVS_DEST_ATTR_PORT` (u16, network order).
pub const DEST_ATTR_PORT: u16 = 2;
/// `IPVS_DEST_ATTR_FWD_METHOD` (u32).
pub const DEST_ATTR_FWD_METHOD: u16 = 3;
/// `IPVS_DEST_ATTR_WEIGHT` (u32).
pub const DEST_ATTR_WEIGHT: u16 = 4;
/// `IPVS_DEST_ATTR_U_THRESH` (u32).
pub const DEST_ATTR_U_THRESH: u16 = 5;
/// `IPVS_DEST_ATTR_L_THRESH` (u32).
pub const DEST_ATTR_L_THRESH: u16 = 6;
/// `IPVS_DEST_ATTR_ACTIVE_CONNS` (u32; read-only).
pub const DEST_ATTR_ACTIVE_CONNS: u16 = 7;
/// `IPVS_DEST_ATTR_INACT_CONNS` (u32; read-only).
pub const DEST_ATTR_INACT_CONNS: u16 = 8;
/// `IPVS_DEST_ATTR_PERSIST_CONNS` (u32; read-only).
pub const DEST_ATTR_PERSIST_CONNS: u16 = 9;
/// `IPVS_DEST_ATTR_STATS` (nested; read-only).
pub const DEST_ATTR_STATS: u16 = 10;
/// `IPVS_DEST_ATTR_ADDR_FAMILY` (u16).
pub const DEST_ATTR_ADDR_FAMILY: u16 = 11;
/// `IPVS_DEST_ATTR_STATS64` (nested; read-only).
pub const DEST_ATTR_STATS64: u16 = 12;

/// `IPVS_INFO_ATTR_VERSION` (u32: major << 16 | minor << 8 | patch).
pub const INFO_ATTR_VERSION: u16 = 1;
/// `IPVS_INFO_ATTR_CONN_TAB_SIZE` (u32).
pub const INFO_ATTR_CONN_TAB_SIZE: u16 = 2;

/// `IP_VS_SVC_F_PERSISTENT`: the service is persistent (session affinity).
pub const SVC_F_PERSISTENT: u32 = 0x0001;
/// `IP_VS_SVC_F_HASHED`: set by the kernel on every service in its table.
pub const SVC_F_HASHED: u32 = 0x0002;
/// `IP_VS_SVC_F_ONEPACKET`: schedule every UDP datagram separately.
pub const SVC_F_ONEPACKET: u32 = 0x0004;
/// `IP_VS_SVC_F_SCHED1` (e.g. `sh-fallback`, `mh-fallback`).
pub const SVC_F_SCHED1: u32 = 0x0008;
/// `IP_VS_SVC_F_SCHED2` (e.g. `sh-port`, `mh-port`).
pub const SVC_F_SCHED2: u32 = 0x0010;

/// `IP_VS_CONN_F_MASQ`: NAT forwarding, what kube-proxy uses.
pub const CONN_F_MASQ: u32 = 0;
/// `IP_VS_CONN_F_LOCALNODE`.
pub const CONN_F_LOCALNODE: u32 = 1;
/// `IP_VS_CONN_F_TUNNEL`.
pub const CONN_F_TUNNEL: u32 = 2;
/// `IP_VS_CONN_F_DROUTE`.
pub const CONN_F_DROUTE: u32 = 3;
/// `IP_VS_CONN_F_FWD_MASK`.
pub const CONN_F_FWD_MASK: u32 = 0x7;

/// `AF_INET`.
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 10;
/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u16 = 6;
/// `IPPROTO_UDP`.
pub const IPPROTO_UDP: u16 = 17;
/// `IPPROTO_SCTP`.
pub const IPPROTO_SCTP: u16 = 132;
/// `IP_VS_SCHEDNAME_MAXLEN` (including the NUL).
pub const SCHEDNAME_MAXLEN: usize = 16;
