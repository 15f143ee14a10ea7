//! UDP echo backends: each datagram is answered with `<pod name> <peer address>\n`, the
//! same line the TCP [`EchoServer`](crate::echo::EchoServer) sends.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::echo::Reply;
use crate::netns::Netns;

/// How long a backend lives at most, whatever the test does.
const MAX_LIFETIME: Duration = Duration::from_secs(300);
/// How often a server looks at its stop flag.
const POLL: Duration = Duration::from_millis(10);
/// How long a client waits for one answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);
/// How many datagrams a client sends before giving up.
const ATTEMPTS: usize = 2;

/// A UDP echo server inside a namespace; stops when dropped.
pub struct UdpEchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl UdpEchoServer {
    /// Starts answering on `addr` in `ns` as `pod`.
    pub fn start(ns: &Netns, addr: SocketAddr, pod: &str) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let pod = pod.to_owned();
        let flag = stop.clone();
        let thread = ns.spawn(move || {
            let socket = UdpSocket::bind(addr)
                .with_context(|| format!("bind udp {addr}"))
                .and_then(|s| {
                    s.set_read_timeout(Some(POLL))?;
                    Ok(s)
                });
            match socket {
                Ok(socket) => {
                    let _ = ready_tx.send(Ok(()));
                    serve(&socket, &pod, &flag)
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("{e:#}")));
                    Err(e)
                }
            }
        })?;
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("udp echo server {addr}: {e}"),
            Err(_) => bail!("udp echo server {addr} did not start"),
        }
        Ok(UdpEchoServer {
            stop,
            thread: Some(thread),
        })
    }

    /// Asks the server to stop without waiting (drop waits): stopping many at once is
    /// faster than one after the other.
    pub fn signal_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Answers datagrams as they are read, until stopped or [`MAX_LIFETIME`] is over.
fn serve(socket: &UdpSocket, pod: &str, stop: &AtomicBool) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) && started.elapsed() < MAX_LIFETIME {
        match socket.recv_from(&mut buf) {
            Ok((_, peer)) => {
                let answer = format!("{pod} {}\n", peer.ip());
                let _ = socket.send_to(answer.as_bytes(), peer);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            // An ICMP error from an earlier answer's peer: not the server's problem.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

impl Drop for UdpEchoServer {
    fn drop(&mut self) {
        self.signal_stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends one datagram from `ns` to `addr` and reads the echo line (one retry; at most
/// about 2 s). A reply from another source than `addr` is an error: it means a
/// translated reply was not translated back.
pub fn udp_ask(ns: &Netns, addr: SocketAddr) -> anyhow::Result<Reply> {
    ns.run_in(move || udp_ask_here(addr))
}

/// [`udp_ask`] from a fixed local port, so that every ask is the same flow (one conntrack
/// entry) as long as that lives.
pub fn udp_ask_from(ns: &Netns, local_port: u16, addr: SocketAddr) -> anyhow::Result<Reply> {
    ns.run_in(move || ask(local_port, addr))
}

/// [`udp_ask`] from the current thread's namespace.
pub fn udp_ask_here(addr: SocketAddr) -> anyhow::Result<Reply> {
    ask(0, addr)
}

/// Binds the client socket. A fixed port may still be held for a moment by a socket the
/// namespace's stack has not released (a bind failed once with EADDRINUSE between two asks
/// that had both returned): try again, at most 20 times over 1 s.
fn bind_client(local: SocketAddr) -> anyhow::Result<UdpSocket> {
    let mut tries = 0;
    loop {
        match UdpSocket::bind(local) {
            Ok(socket) => return Ok(socket),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 20 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => return Err(e).with_context(|| format!("bind udp client {local}")),
        }
    }
}

fn ask(local_port: u16, addr: SocketAddr) -> anyhow::Result<Reply> {
    let local: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, local_port).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, local_port).into(),
    };
    let socket = bind_client(local)?;
    let mut buf = [0u8; 2048];
    socket.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    for _ in 0..ATTEMPTS {
        socket
            .send_to(b"hello\n", addr)
            .with_context(|| format!("send to {addr}"))?;
        match socket.recv_from(&mut buf) {
            Ok((n, from)) if from == addr => return parse(&buf[..n], addr),
            Ok((n, from)) => bail!(
                "udp reply for {addr} came from {from}: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e).with_context(|| format!("receive from {addr}")),
        }
    }
    bail!("no udp reply from {addr} to {ATTEMPTS} datagrams ({ANSWER_TIMEOUT:?} each)")
}

fn parse(bytes: &[u8], addr: SocketAddr) -> anyhow::Result<Reply> {
    let line = String::from_utf8_lossy(bytes);
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(pod), Some(peer)) => Ok(Reply {
            pod: pod.into(),
            peer: peer.into(),
        }),
        _ => bail!("unexpected udp reply from {addr}: {line:?}"),
    }
}
