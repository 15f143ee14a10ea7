//! Link, address, route and sysctl work inside one namespace, over rtnetlink.
//!
//! Each job runs on its own OS thread that has entered the namespace (`setns` changes only
//! the calling thread) and drives a current-thread tokio runtime with its own netlink
//! socket: a netlink socket belongs to the namespace it was created in, and `setns` inside
//! a multi-thread runtime would move whichever worker happened to run the task.

use std::fs::File;
use std::future::Future;
use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};

use crate::netns::Netns;

/// How long one namespace's whole job may take.
const JOB_TIMEOUT: Duration = Duration::from_secs(10);

/// A running job; [`join_all`] collects its result.
pub(crate) struct Job {
    ns: String,
    thread: JoinHandle<anyhow::Result<()>>,
}

/// Starts `job` on a new thread inside `ns`, with a netlink handle bound to `ns`.
pub(crate) fn spawn<F, Fut>(ns: &Netns, job: F) -> anyhow::Result<Job>
where
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let name = ns.name().to_owned();
    let thread = ns.spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building a current-thread runtime")?;
        rt.block_on(async move {
            let (conn, handle, _) = rtnetlink::new_connection().context("netlink socket")?;
            tokio::spawn(conn);
            match tokio::time::timeout(JOB_TIMEOUT, job(handle)).await {
                Ok(result) => result,
                Err(_) => bail!("timed out after {JOB_TIMEOUT:?}"),
            }
        })
    })?;
    Ok(Job { ns: name, thread })
}

/// Waits for every job; the first failure (naming its namespace) wins.
pub(crate) fn join_all(jobs: Vec<Job>) -> anyhow::Result<()> {
    let mut first = None;
    for job in jobs {
        let result = match job.thread.join() {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!("thread panicked")),
        };
        if let Err(e) = result
            && first.is_none()
        {
            first = Some(e.context(format!("configuring namespace {}", job.ns)));
        }
    }
    first.map_or(Ok(()), Err)
}

/// Runs one job inside `ns` and waits for it.
pub(crate) fn run<F, Fut>(ns: &Netns, job: F) -> anyhow::Result<()>
where
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>>,
{
    join_all(vec![spawn(ns, job)?])
}

/// Opens a namespace's handle (for moving a veth end into it).
pub(crate) fn ns_file(ns: &Netns) -> anyhow::Result<File> {
    File::open(format!("/run/netns/{}", ns.name()))
        .with_context(|| format!("opening namespace {}", ns.name()))
}

/// Writes a sysctl of the current thread's namespace (`net/ipv4/ip_forward`). `/proc/sys/net`
/// resolves against the calling thread's namespace, unlike `/proc/self/net`.
pub(crate) fn sysctl(key: &str, value: &str) -> anyhow::Result<()> {
    let path = format!("/proc/sys/{key}");
    std::fs::write(&path, value).with_context(|| format!("writing {value} to {path}"))
}

/// The index of link `name`.
pub(crate) async fn index(h: &Handle, name: &str) -> anyhow::Result<u32> {
    let mut links = h.link().get().match_name(name.to_owned()).execute();
    match links
        .try_next()
        .await
        .with_context(|| format!("link {name}"))?
    {
        Some(link) => Ok(link.header.index),
        None => bail!("no link {name}"),
    }
}

/// Adds an up bridge `name` with a fixed MAC (so adding ports never changes it) and
/// returns its index.
pub(crate) async fn add_bridge(h: &Handle, name: &str, mac: [u8; 6]) -> anyhow::Result<u32> {
    let msg = LinkBridge::new(name).address(mac.to_vec()).build();
    h.link()
        .add(msg)
        .execute()
        .await
        .with_context(|| format!("adding bridge {name}"))?;
    index(h, name).await
}

/// Adds an up veth `name` here, enslaved to `controller`, whose peer `peer` is created
/// directly in the namespace `peer_ns` (down, unconfigured). Returns the local index.
pub(crate) async fn add_veth_to(
    h: &Handle,
    name: &str,
    peer: &str,
    peer_ns: RawFd,
    controller: u32,
) -> anyhow::Result<u32> {
    let peer_msg = LinkUnspec::new_with_name(peer).setns_by_fd(peer_ns).build();
    let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(name.to_owned())
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
        .controller(controller)
        .up()
        .build();
    h.link()
        .add(msg)
        .execute()
        .await
        .with_context(|| format!("adding veth {name} (peer {peer})"))?;
    index(h, name).await
}

/// Turns on hairpin mode on bridge port `port` (a pod reaching itself through a Service
/// is sent back out of the port it came in on).
pub(crate) async fn hairpin(h: &Handle, port: u32) -> anyhow::Result<()> {
    let msg = LinkBridgePort::new(port).hairpin(true).build();
    h.link()
        .set_port(msg)
        .execute()
        .await
        .with_context(|| format!("hairpin on port {port}"))
}

/// Gives link `name` the address `ip/len` and brings it up; returns its index.
pub(crate) async fn configure(
    h: &Handle,
    name: &str,
    ip: Ipv4Addr,
    len: u8,
) -> anyhow::Result<u32> {
    let idx = index(h, name).await?;
    h.address()
        .add(idx, ip.into(), len)
        .execute()
        .await
        .with_context(|| format!("adding {ip}/{len} to {name}"))?;
    h.link()
        .set(LinkUnspec::new_with_index(idx).up().build())
        .execute()
        .await
        .with_context(|| format!("setting {name} up"))?;
    Ok(idx)
}

/// Adds (or with `replace`, replaces) the route `dst/len via gw`.
pub(crate) async fn route(
    h: &Handle,
    dst: Ipv4Addr,
    len: u8,
    gw: Ipv4Addr,
    replace: bool,
) -> anyhow::Result<()> {
    let msg = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst, len)
        .gateway(gw)
        .build();
    let req = h.route().add(msg);
    let req = if replace { req.replace() } else { req };
    req.execute()
        .await
        .with_context(|| format!("route {dst}/{len} via {gw}"))
}
