//! Network namespaces owned by a test: unique names, deleted on drop (also on panic).

use std::fs::File;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail};
use nix::sched::{CloneFlags, setns};

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A unique prefix for one test's namespaces, `kp<pid>x<n>`: the creator's full PID, so
/// `scripts/netns-clean.sh` can tell leftovers (creator gone) from namespaces in use.
pub fn unique_prefix() -> String {
    format!(
        "kp{}x{}",
        std::process::id(),
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    )
}

/// A named network namespace (`ip netns add`), deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace with `lo` up.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        require_root()?;
        run("ip", &["netns", "add", name])?;
        let ns = Netns {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS...`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs a program inside the namespace (`ip netns exec`), failing on non-zero exit.
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = self.exec_output(program, args)?;
        if !out.status.success() {
            bail!(
                "{program} {args:?} in {} failed ({}): {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs a program inside the namespace and returns its whole output.
    pub fn exec_output(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .with_context(|| format!("running {program} in {}", self.name))
    }

    /// Writes a sysctl of this namespace (`net.ipv4.ip_forward=1`).
    pub fn sysctl(&self, setting: &str) -> anyhow::Result<()> {
        self.exec("sysctl", &["-q", "-w", setting]).map(|_| ())
    }

    /// Runs `f` on a new thread that has entered this namespace (a socket keeps the
    /// namespace it was created in, so servers and clients are made there).
    pub fn spawn<T, F>(&self, f: F) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<T>>>
    where
        T: Send + 'static,
        F: FnOnce() -> anyhow::Result<T> + Send + 'static,
    {
        let file = File::open(format!("/run/netns/{}", self.name))
            .with_context(|| format!("opening namespace {}", self.name))?;
        Ok(std::thread::spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).context("setns")?;
            f()
        }))
    }

    /// Runs `f` inside the namespace and waits for it.
    pub fn run_in<T, F>(&self, f: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> anyhow::Result<T> + Send + 'static,
    {
        match self.spawn(f)?.join() {
            Ok(result) => result,
            Err(_) => bail!("thread in namespace {} panicked", self.name),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Connects two namespaces with a veth pair, giving each end an address (CIDR form).
pub fn veth(
    a: &Netns,
    a_if: &str,
    a_addr: &str,
    b: &Netns,
    b_if: &str,
    b_addr: &str,
) -> anyhow::Result<()> {
    a.ip(&[
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ])?;
    for (ns, ifname, addr) in [(a, a_if, a_addr), (b, b_if, b_addr)] {
        if !addr.is_empty() {
            ns.ip(&["addr", "add", addr, "dev", ifname])?;
        }
        ns.ip(&["link", "set", ifname, "up"])?;
    }
    Ok(())
}

/// Runs a host command, failing with its stderr on non-zero exit.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// These tests create namespaces and program netfilter: they need root.
pub fn require_root() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("network-namespace tests need root: run `sudo cargo test --workspace`");
    }
    Ok(())
}
