//! Runs `nft` (the only kernel I/O of nftables mode): one `nft -f -` per transaction, with
//! the transaction on stdin, plus an availability probe and the deletion of kproxy's tables.

use std::io;
use std::process::Stdio;

use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::plan::IpFamily;

use super::names::{CANARY_TABLE, FIREWALL_IPS, TABLE, UPSTREAM_TABLE, family_keyword};

const NFT: &str = "nft";

/// An error of nftables mode.
#[derive(Debug, Error)]
pub enum NftError {
    /// `nft` is not installed.
    #[error("nft not found: install Debian's `nftables` package")]
    Missing,
    /// `nft` runs but cannot program nf_tables here.
    #[error(
        "nftables does not work here (needs nf_tables with nat support and CAP_NET_ADMIN): {detail}"
    )]
    Unusable {
        /// What the probe printed.
        detail: String,
    },
    /// `nft` could not be run.
    #[error("could not run nft for table {table}: {source}")]
    Exec {
        /// The table (`ip kproxy`).
        table: String,
        /// Why.
        source: io::Error,
    },
    /// `nft` ran and failed.
    #[error("nft failed on table {table} ({status}): {stderr}{context}")]
    Failed {
        /// The table (`ip kproxy`).
        table: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
        /// The transaction lines around the line nft complained about, if any.
        context: String,
    },
}

/// `ip kproxy` / `ip6 kproxy`.
pub fn table_name(family: IpFamily) -> String {
    format!("{} {TABLE}", family_keyword(family))
}

/// Checks that `nft` is installed and can create kproxy's tables and nat chains, without
/// changing anything (`nft --check`).
pub async fn check_available(families: &[IpFamily]) -> Result<(), NftError> {
    run("nft", &["--version"], None)
        .await
        .map_err(|e| match e {
            NftError::Exec { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                NftError::Missing
            }
            other => other,
        })?;
    let mut probe = String::new();
    for family in families {
        let t = table_name(*family);
        probe.push_str(&format!(
            "add table {t}\nadd chain {t} probe {{ type nat hook prerouting priority dstnat; }}\n"
        ));
    }
    if probe.is_empty() {
        return Ok(());
    }
    run("probe", &["--check", "-f", "-"], Some(&probe))
        .await
        .map(|_| ())
        .map_err(|e| match e {
            NftError::Failed { stderr, .. } => NftError::Unusable { detail: stderr },
            other => other,
        })
}

/// Applies one transaction (`nft -f -`); a no-op when `text` is empty.
pub async fn apply(family: IpFamily, text: &str) -> Result<(), NftError> {
    if text.is_empty() {
        return Ok(());
    }
    run(&table_name(family), &["-f", "-"], Some(text))
        .await
        .map(|_| ())
}

/// Deletes kproxy's table of `family`; `false` if there was none.
pub async fn delete_table(family: IpFamily) -> Result<bool, NftError> {
    delete(
        &table_name(family),
        &super::transaction::delete_table(family),
    )
    .await
}

/// Deletes upstream kube-proxy's table of `family`; `false` if there was none.
pub async fn delete_upstream_table(family: IpFamily) -> Result<bool, NftError> {
    let name = format!("{} {UPSTREAM_TABLE}", family_keyword(family));
    delete(&name, &super::transaction::delete_upstream_table(family)).await
}

/// Deletes kproxy's canary table of `family`; `false` if there was none.
pub async fn delete_canary(family: IpFamily) -> Result<bool, NftError> {
    let name = format!("{} {CANARY_TABLE}", family_keyword(family));
    delete(&name, &super::transaction::delete_canary(family)).await
}

/// Whether the canary table of `family` and kproxy's own table both exist. Two cheap
/// `nft list` commands: the canary table is one empty chain, and kproxy's table is probed
/// through its `firewall-ips` set (always declared, elements only for
/// `loadBalancerSourceRanges`), so nft fetches neither kproxy's rules nor its big maps.
/// `Ok(false)` when either is missing.
pub async fn canary_intact(family: IpFamily) -> Result<bool, NftError> {
    let f = family_keyword(family);
    let canary = format!("{f} {CANARY_TABLE}");
    if !exists(&canary, &["list", "table", f, CANARY_TABLE]).await? {
        return Ok(false);
    }
    exists(
        &table_name(family),
        &["list", "set", f, TABLE, FIREWALL_IPS],
    )
    .await
}

/// Runs a `nft list` command: `false` when what it lists does not exist.
async fn exists(table: &str, args: &[&str]) -> Result<bool, NftError> {
    match run(table, args, None).await {
        Ok(_) => Ok(true),
        Err(NftError::Failed { stderr, .. }) if stderr.contains("No such file or directory") => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Runs a deletion transaction: `false` if the object did not exist.
async fn delete(table: &str, text: &str) -> Result<bool, NftError> {
    match run(table, &["-f", "-"], Some(text)).await {
        Ok(_) => Ok(true),
        Err(NftError::Failed { stderr, .. }) if stderr.contains("No such file or directory") => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

async fn run(table: &str, args: &[&str], stdin: Option<&str>) -> Result<String, NftError> {
    let exec = |source| NftError::Exec {
        table: table.to_owned(),
        source,
    };
    let mut child = Command::new(NFT)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(exec)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).await.map_err(exec)?;
        // Dropping the pipe closes nft's stdin.
    }
    let output = child.wait_with_output().await.map_err(exec)?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    let context = stdin
        .and_then(|input| failing_line(&stderr).map(|n| input_context(input, n)))
        .unwrap_or_default();
    Err(NftError::Failed {
        table: table.to_owned(),
        status: output.status.to_string(),
        stderr,
        context,
    })
}

/// The line number in `/dev/stdin:12:5-10: Error: ...`.
fn failing_line(stderr: &str) -> Option<usize> {
    stderr.lines().find_map(|l| {
        let (location, _) = l.split_once(": Error:")?;
        let mut parts = location.rsplit(':');
        let _columns = parts.next()?;
        parts.next()?.parse().ok()
    })
}

/// The input lines `n-2..=n+2` (1-based), each numbered, the failing one marked.
fn input_context(input: &str, n: usize) -> String {
    let mut out = String::from("\n  transaction around the failing line:");
    for (i, line) in input.lines().enumerate().skip(n.saturating_sub(3)).take(5) {
        let marker = if i + 1 == n { ">" } else { " " };
        out.push_str(&format!("\n  {marker}{:>7}: {line}", i + 1));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_failing_line() {
        let stderr = "/dev/stdin:2:28-28: Error: syntax error, unexpected newline\n\
                      add rule ip6 kproxy x bogus\n                           ^";
        assert_eq!(failing_line(stderr), Some(2));
        assert_eq!(failing_line("Error: Could not process rule"), None);
        let ctx = input_context("a\nb\nc\nd\ne\nf\n", 4);
        assert!(ctx.contains(">      4: d"), "{ctx}");
        assert!(ctx.contains("       2: b"), "{ctx}");
        assert!(!ctx.contains(": a"), "{ctx}");
    }

    #[test]
    fn table_names() {
        assert_eq!(table_name(IpFamily::V4), "ip kproxy");
        assert_eq!(table_name(IpFamily::V6), "ip6 kproxy");
    }
}
