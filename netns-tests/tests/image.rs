//! kproxy's container image (`scripts/build-image.sh`) run with podman (root only), the
//! way the DaemonSet runs it: privileged, in the node's network namespace (hostNetwork),
//! with the configuration mounted. The tools kproxy calls run inside it, and the kproxy
//! inside it programs the node: a pod then reaches a Service with real packets.
//!
//! Ignored by a plain `cargo test` (it needs the image); `scripts/test.sh` builds the image
//! and runs it with `--ignored`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;
use kproxy_netns_tests::echo::ask;
use kproxy_netns_tests::node::*;

const IMAGE: &str = "localhost/kproxy:latest";

/// `podman run` options every run here needs on these machines: runc (crun refuses the
/// hybrid cgroup v1/v2 layout), and resource limits below the current ones (without
/// CAP_SYS_RESOURCE a runtime may only lower them).
const RUN: [&str; 7] = [
    "run",
    "--rm",
    "--runtime=runc",
    "--ulimit",
    "nofile=16384:16384",
    "--ulimit",
    "nproc=16384:16384",
];

/// `podman run` with [`RUN`]'s options and `args`.
fn podman_run(args: &[&str]) -> anyhow::Result<String> {
    let mut all: Vec<&str> = RUN.to_vec();
    all.extend_from_slice(args);
    podman(&all)
}

fn podman(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("podman")
        .args(args)
        .output()
        .context("running podman (scripts/install-deps.sh image)")?;
    anyhow::ensure!(
        out.status.success(),
        "podman {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Loads the image `scripts/build-image.sh` wrote.
fn load_image() -> anyhow::Result<()> {
    let tar = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/image/kproxy-image.tar");
    anyhow::ensure!(
        tar.exists(),
        "{}: build it first with scripts/build-image.sh",
        tar.display()
    );
    podman(&["load", "--quiet", "-i", &tar.display().to_string()])?;
    Ok(())
}

#[test]
#[ignore = "needs the image: scripts/test.sh builds it and runs this with --ignored"]
fn the_image_runs_kproxy_and_its_tools() -> anyhow::Result<()> {
    load_image()?;
    let version = podman_run(&[IMAGE, "--version"])?;
    assert!(version.starts_with("kproxy "), "{version}");
    for (tool, arg) in [
        ("/usr/sbin/iptables-nft", "--version"),
        ("/usr/sbin/iptables-legacy", "--version"),
        ("/usr/sbin/ip6tables-nft", "--version"),
        ("/usr/sbin/nft", "--version"),
        ("/usr/sbin/ipset", "--version"),
        ("/usr/sbin/conntrack", "--version"),
        ("/bin/ip", "-V"),
    ] {
        let out = podman_run(&["--privileged", "--entrypoint", tool, IMAGE, arg])
            .with_context(|| format!("{tool} in the image"))?;
        assert!(!out.is_empty() || tool.ends_with("/ip"), "{tool}: {out}");
    }
    Ok(())
}

#[test]
#[ignore = "needs the image: scripts/test.sh builds it and runs this with --ignored"]
fn the_image_programs_a_node_as_the_daemonset_runs_it() -> anyhow::Result<()> {
    load_image()?;
    let cluster = OneNodeCluster::new(2)?;
    let ips: Vec<_> = cluster.pods.iter().map(|p| p.ip).collect();
    cluster.write_manifest("node.yaml", &node_yaml())?;
    cluster.write_manifest(
        "web.yaml",
        &service_yaml("web", "10.96.0.10", 80, Some(30080)),
    )?;
    cluster.write_manifest("web-slice.yaml", &slice_yaml("web", &ips))?;
    let network = format!("ns:/run/netns/{}", cluster.node.name());
    let volume = format!("{}:/manifests:ro", cluster.manifests().display());
    let out = podman_run(&[
        "--privileged",
        "--network",
        &network,
        "-v",
        &volume,
        IMAGE,
        "--once",
        "--manifests",
        "/manifests",
        "--hostname-override",
        NODE_NAME,
        "--cluster-cidr",
        CLUSTER_CIDR,
        "--conntrack-max-per-core=0",
    ])?;
    assert!(out.contains("rules live"), "{out}");
    let web = SocketAddr::new("10.96.0.10".parse()?, 80);
    let reply = ask(&cluster.client, web)?;
    assert!(reply.pod.starts_with("pod-"), "ClusterIP: {reply:?}");
    let node_port = SocketAddr::new(NODE_IP.parse()?, 30080);
    let reply = ask(&cluster.external, node_port)?;
    assert!(reply.pod.starts_with("pod-"), "NodePort: {reply:?}");
    Ok(())
}
