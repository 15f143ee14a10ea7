//! The Kubernetes side of a [`Rig`]: Node manifests, the manifest directory, and one real
//! kproxy per node.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::{CLUSTER_CIDR, Rig};
use crate::kproxy::KproxyProcess;

/// The messages kproxy logs once per IP family per sync: `synced rules` (every mode, since
/// the dataplane's mode-neutral `SyncReport`) and the older `synced iptables rules`.
pub const SYNC_LINES: [&str; 2] = ["synced rules", "synced iptables rules"];
/// How long [`Rig::wait_synced`] waits on a real machine; see [`sync_timeout`].
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`Rig::wait_synced`] waits: [`SYNC_TIMEOUT`], times `$KPROXY_TEST_TIME_SCALE`
/// when that is set (the IPVS guest runs under qemu's instruction emulator, where a first
/// sync of three kproxies takes tens of seconds).
pub fn sync_timeout() -> Duration {
    SYNC_TIMEOUT * crate::time_scale()
}

impl Rig {
    /// The v1 Node objects of every node (name, `InternalIP`, hostname and zone labels,
    /// pod CIDR), as one multi-document YAML text.
    pub fn node_manifests(&self) -> String {
        let mut text = String::new();
        for node in &self.nodes {
            let (net, len) = node.pod_cidr;
            let _ = write!(
                text,
                "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    kubernetes.io/hostname: {name}\n    topology.kubernetes.io/zone: {zone}\nspec:\n  podCIDR: {net}/{len}\n  podCIDRs: [\"{net}/{len}\"]\nstatus:\n  addresses:\n    - type: InternalIP\n      address: {ip}\n    - type: Hostname\n      address: {name}\n",
                name = node.name,
                zone = node.zone,
                ip = node.ip,
            );
        }
        text
    }

    /// The directory every kproxy of this rig reads (`--manifests`); [`Rig::new`] put
    /// `nodes.yaml` ([`Rig::node_manifests`]) in it.
    pub fn manifests_dir(&self) -> PathBuf {
        self.dir.join("manifests")
    }

    /// Writes `file` in the manifest directory atomically (a temporary file outside it,
    /// then a rename), so a watching kproxy never reads half a file.
    pub fn write_manifest(&self, file: &str, text: &str) -> anyhow::Result<()> {
        let tmp = self.dir.join(format!(".{file}.tmp"));
        let target = self.manifests_dir().join(file);
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &target).with_context(|| format!("renaming to {}", target.display()))
    }

    /// Removes `file` from the manifest directory (missing is fine).
    pub fn remove_manifest(&self, file: &str) -> anyhow::Result<()> {
        match std::fs::remove_file(self.manifests_dir().join(file)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Node `i`'s kproxy log file.
    pub fn kproxy_log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("kproxy-node-{i}.log"))
    }

    /// What node `i`'s kproxy logged so far (empty if none ran).
    pub fn kproxy_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.kproxy_log_path(i)).unwrap_or_default()
    }

    /// Starts the real kproxy in every node namespace (stopping any earlier ones) with
    /// `--manifests <manifests_dir> --hostname-override node-<i> --cluster-cidr
    /// 10.244.0.0/16 --min-sync-period 50ms --conntrack-max-per-core=0` and `extra_args`,
    /// logging to
    /// [`Rig::kproxy_log_path`].
    pub fn start_kproxy(&mut self, extra_args: &[&str]) -> anyhow::Result<()> {
        self.stop_kproxy();
        self.kproxy_args.clear();
        let manifests = self.manifests_dir().display().to_string();
        for (i, node) in self.nodes.iter().enumerate() {
            let mut args = vec![
                "--manifests",
                &manifests,
                "--hostname-override",
                &node.name,
                "--cluster-cidr",
                CLUSTER_CIDR,
                "--min-sync-period",
                "50ms",
                // nf_conntrack_max belongs to the host: leave it alone, as kind does.
                "--conntrack-max-per-core=0",
            ];
            args.extend_from_slice(extra_args);
            self.kproxy_args
                .push(args.iter().map(|a| a.to_string()).collect());
            let log = self.kproxy_log_path(i);
            let process = KproxyProcess::start(&node.ns, &args, log)
                .with_context(|| format!("starting kproxy on {}", node.name))?;
            self.kproxies.push(process);
        }
        Ok(())
    }

    /// `kproxy explain --output json` on node `node`, with the flags its kproxy runs with:
    /// what its rules do to a connection from `from` to `to` (`IP:PORT[/PROTO]`).
    pub fn explain(
        &self,
        node: usize,
        from: IpAddr,
        to: &str,
    ) -> anyhow::Result<serde_json::Value> {
        let (status, json) = self.explain_with(node, from, to, &[])?;
        anyhow::ensure!(status == 0, "kproxy explain exited with {status}: {json}");
        Ok(json)
    }

    /// `kproxy explain --output json EXTRA` on node `node` (as [`Rig::explain`]): its exit
    /// status and its answer.
    pub fn explain_with(
        &self,
        node: usize,
        from: IpAddr,
        to: &str,
        extra: &[&str],
    ) -> anyhow::Result<(i32, serde_json::Value)> {
        let run_args = self
            .kproxy_args
            .get(node)
            .with_context(|| format!("no kproxy started on node {node}"))?;
        let from = from.to_string();
        let mut args: Vec<&str> = vec!["explain", "--from", &from, "--to", to, "--output", "json"];
        args.extend_from_slice(extra);
        args.extend(run_args.iter().map(String::as_str));
        let out = crate::kproxy::run(&self.nodes[node].ns, &args)?;
        let json = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "kproxy {args:?} ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        Ok((out.status.code().unwrap_or(-1), json))
    }

    /// Stops every kproxy of the rig (their rules stay in place).
    pub fn stop_kproxy(&mut self) {
        self.kproxies.clear();
    }

    /// How many sync lines ([`SYNC_LINES`]) each node's kproxy has logged.
    pub fn sync_counts(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .map(|i| {
                self.kproxy_log(i)
                    .lines()
                    .filter(|l| SYNC_LINES.iter().any(|m| l.contains(m)))
                    .count()
            })
            .collect()
    }

    /// Waits (at most [`sync_timeout`]) until every node logged more syncs than `since`
    /// (an earlier [`Rig::sync_counts`]; pass zeros to wait for the first sync) and returns
    /// the new counts. Take `since` before writing the manifest being waited for.
    pub fn wait_synced(&self, since: &[usize]) -> anyhow::Result<Vec<usize>> {
        if since.len() != self.nodes.len() {
            bail!("{} sync counts for {} nodes", since.len(), self.nodes.len());
        }
        let started = Instant::now();
        let timeout = sync_timeout();
        loop {
            let now = self.sync_counts();
            if now.iter().zip(since).all(|(n, s)| n > s) {
                return Ok(now);
            }
            if started.elapsed() > timeout {
                let mut logs = String::new();
                for (i, (n, s)) in now.iter().zip(since).enumerate() {
                    if n <= s {
                        let log = self.kproxy_log(i);
                        let tail: Vec<_> = log.lines().rev().take(20).collect();
                        let tail: Vec<_> = tail.into_iter().rev().collect();
                        let _ = write!(logs, "\n--- node-{i} ({n} syncs) ---\n{}", tail.join("\n"));
                    }
                }
                bail!("kproxy did not sync past {since:?} within {timeout:?} (now {now:?}):{logs}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
