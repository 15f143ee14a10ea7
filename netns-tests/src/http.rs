//! A minimal HTTP/1.1 GET from inside a namespace, for the servers kproxy runs (health,
//! metrics, health-check NodePorts).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::netns::Netns;

/// `GET path` on `addr` from inside `ns` (bounded: 3 s to connect, 3 s per read): the
/// status code (0 if none) and the body.
pub fn http_get(ns: &Netns, addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let path = path.to_owned();
    ns.run_in(move || {
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        conn.set_read_timeout(Some(Duration::from_secs(3)))?;
        write!(
            conn,
            "GET {path} HTTP/1.1\r\nHost: kproxy\r\nConnection: close\r\n\r\n"
        )?;
        let mut text = String::new();
        conn.read_to_string(&mut text)?;
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
        Ok((status, body))
    })
}
