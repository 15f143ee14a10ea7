//! TCP echo backends: each connection gets one line, `<pod name> <peer address>`, so a
//! client learns which endpoint served it and whether its source was masqueraded.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::netns::Netns;

/// How long a backend lives at most, whatever the test does.
const MAX_LIFETIME: Duration = Duration::from_secs(300);

/// An echo server inside a namespace; stops when dropped.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl EchoServer {
    /// Starts answering on `addr` in `ns` as `pod`.
    pub fn start(ns: &Netns, addr: SocketAddr, pod: &str) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let pod = pod.to_owned();
        let flag = stop.clone();
        let thread = ns.spawn(move || {
            let listener = TcpListener::bind(addr).with_context(|| format!("bind {addr}"));
            let listener = match listener {
                Ok(l) => {
                    let _ = ready_tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("{e:#}")));
                    return Err(e);
                }
            };
            serve(listener, &pod, &flag)
        })?;
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => anyhow::bail!("echo server {addr}: {e}"),
            Err(_) => anyhow::bail!("echo server {addr} did not start"),
        }
        Ok(EchoServer {
            stop,
            thread: Some(thread),
        })
    }
}

fn serve(listener: TcpListener, pod: &str, stop: &AtomicBool) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < MAX_LIFETIME {
        match listener.accept() {
            Ok((mut conn, peer)) => {
                let _ = conn.set_nonblocking(false);
                let _ = answer(&mut conn, pod, peer);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Writes the line in one segment, half-closes, and drains what the client sent (bounded),
/// so that unread input does not turn the close into a reset that loses the reply.
fn answer(conn: &mut TcpStream, pod: &str, peer: SocketAddr) -> std::io::Result<()> {
    use std::io::Read;
    conn.write_all(format!("{pod} {}\n", peer.ip()).as_bytes())?;
    conn.shutdown(std::net::Shutdown::Write)?;
    conn.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut sink = [0u8; 512];
    for _ in 0..64 {
        if conn.read(&mut sink)? == 0 {
            break;
        }
    }
    Ok(())
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What one connection learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The pod that answered.
    pub pod: String,
    /// The source address the pod saw.
    pub peer: String,
}

/// How long a client waits to connect. Generous on purpose: with br_netfilter, the first
/// SYN of an IPv6 flow that is DNATed back out of the same bridge is lost while the node
/// resolves the pod's neighbour (seen with a hand-written ip6tables DNAT and no kproxy at
/// all), so the first connection succeeds only on the SYN retransmit 1-3 s later.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects from `ns` to `addr` and reads the echo line.
pub fn ask(ns: &Netns, addr: SocketAddr) -> anyhow::Result<Reply> {
    ns.run_in(move || ask_here(addr))
}

/// Connects from the current thread's namespace.
pub fn ask_here(addr: SocketAddr) -> anyhow::Result<Reply> {
    let conn = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .with_context(|| format!("connect {addr}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new(conn)
        .read_line(&mut line)
        .with_context(|| format!("read from {addr}"))?;
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(pod), Some(peer)) => Ok(Reply {
            pod: pod.into(),
            peer: peer.into(),
        }),
        _ => anyhow::bail!("unexpected reply from {addr}: {line:?}"),
    }
}

/// Asks `n` times from `ns` (one thread, so the namespace is entered once).
pub fn ask_many(ns: &Netns, addr: SocketAddr, n: usize) -> anyhow::Result<Vec<Reply>> {
    ns.run_in(move || (0..n).map(|_| ask_here(addr)).collect())
}

/// How a connection attempt ended.
#[derive(Debug)]
pub enum Outcome {
    /// Connected and read the echo line.
    Replied(Reply),
    /// Actively refused (RST or ICMP port unreachable: a REJECT).
    Refused,
    /// Nothing came back within the timeout (a DROP).
    TimedOut,
    /// Anything else.
    Failed(anyhow::Error),
}

/// Connects from `ns` to `addr`, optionally from source address `src`, waiting at most
/// `timeout`, and says how it ended.
pub fn try_ask(
    ns: &Netns,
    src: Option<std::net::IpAddr>,
    addr: SocketAddr,
    timeout: Duration,
) -> Outcome {
    match ns.run_in(move || Ok(try_ask_here(src, addr, timeout))) {
        Ok(outcome) => outcome,
        Err(err) => Outcome::Failed(err),
    }
}

/// [`try_ask`] from the current thread's namespace.
pub fn try_ask_here(src: Option<std::net::IpAddr>, addr: SocketAddr, timeout: Duration) -> Outcome {
    use socket2::{Domain, Protocol, Socket, Type};
    let attempt = || -> std::io::Result<Reply> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        if let Some(src) = src {
            socket.bind(&SocketAddr::new(src, 0).into())?;
        }
        socket.connect_timeout(&addr.into(), timeout)?;
        let conn: TcpStream = socket.into();
        conn.set_read_timeout(Some(timeout))?;
        let mut line = String::new();
        BufReader::new(conn).read_line(&mut line)?;
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some(pod), Some(peer)) => Ok(Reply {
                pod: pod.into(),
                peer: peer.into(),
            }),
            _ => Err(std::io::Error::other(format!("unexpected reply {line:?}"))),
        }
    };
    match attempt() {
        Ok(reply) => Outcome::Replied(reply),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Outcome::Refused,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ) =>
        {
            Outcome::TimedOut
        }
        Err(e) => Outcome::Failed(anyhow::Error::new(e).context(format!("connect {addr}"))),
    }
}
