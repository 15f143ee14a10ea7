//! Running the real `kproxy` binary inside a node namespace.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

use anyhow::{Context, bail};

use crate::netns::Netns;

/// The kproxy binary: `$KPROXY_BIN`, else `target/<profile>/kproxy` next to this program.
pub fn kproxy_bin() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("KPROXY_BIN") {
        return Ok(path.into());
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/run-netns → target/<profile>/kproxy;
    // target/<profile>/deps/<test>-<hash> → target/<profile>/kproxy.
    let dir = exe.parent().context("locating the target directory")?;
    let candidates = [
        dir.join("kproxy"),
        dir.parent().unwrap_or(dir).join("kproxy"),
    ];
    match candidates.iter().find(|c| c.is_file()) {
        Some(found) => Ok(found.clone()),
        None => bail!(
            "{} not found: build it first (`cargo build -p kproxy`, or run `cargo test --workspace`), or set KPROXY_BIN",
            candidates[1].display()
        ),
    }
}

/// Runs `kproxy ARGS` to completion inside `node`.
pub fn run(node: &Netns, args: &[&str]) -> anyhow::Result<Output> {
    let bin = kproxy_bin()?;
    Command::new("ip")
        .args(["netns", "exec", node.name()])
        .arg(&bin)
        .args(args)
        .output()
        .with_context(|| format!("running {}", bin.display()))
}

/// Runs `kproxy ARGS` and fails unless it exits 0; returns its stderr (the log).
pub fn run_ok(node: &Netns, args: &[&str]) -> anyhow::Result<String> {
    let out = run(node, args)?;
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!("kproxy {args:?} failed ({}):\n{log}", out.status);
    }
    Ok(log)
}

/// A long-running kproxy; killed when dropped. Its log goes to a file.
pub struct KproxyProcess {
    child: Child,
    log: PathBuf,
}

impl KproxyProcess {
    /// Starts `kproxy ARGS` inside `node`, logging to `log`.
    pub fn start(node: &Netns, args: &[&str], log: PathBuf) -> anyhow::Result<Self> {
        let bin = kproxy_bin()?;
        let file = std::fs::File::create(&log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", node.name()])
            .arg(&bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(KproxyProcess { child, log })
    }

    /// Its process id (`ip netns exec` runs kproxy in its own process).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (at most `timeout`) until the log has `needle` `count` times.
    pub fn wait_for_log(
        &self,
        needle: &str,
        count: usize,
        timeout: std::time::Duration,
    ) -> anyhow::Result<()> {
        let start = std::time::Instant::now();
        while start.elapsed() < timeout {
            if self.log().matches(needle).count() >= count {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        bail!(
            "kproxy did not log {needle:?} {count} times within {timeout:?}:\n{}",
            self.log()
        )
    }
}

impl KproxyProcess {
    /// Waits (at most `timeout`) for the process to exit on its own; its exit status.
    pub fn wait_exit(
        &mut self,
        timeout: std::time::Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        while start.elapsed() < timeout {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        bail!("kproxy still runs after {timeout:?}:\n{}", self.log())
    }
}

impl Drop for KproxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
