//! Runs `nft` (the only kernel I/O of nftables mode): one `nft -f -` per transaction, with
//! the transaction on stdin, plus an availability probe and the deletion of kproxy's tables.

use thiserror::Error;

use crate::plan::IpFamily;
use crate::tool::{Tool, ToolError};

use super::names::{CANARY_TABLE, FIREWALL_IPS, TABLE, UPSTREAM_TABLE, family_keyword};

/// `nft`, whose errors blame a line of the transaction.
const NFT: Tool<'static> = Tool::new("nft", "nftables").blaming(failing_line);

/// An error of nftables mode.
#[derive(Debug, Error)]
pub enum NftError {
    /// `nft` runs but cannot program nf_tables here.
    #[error(
        "nftables does not work here (needs nf_tables with nat support and CAP_NET_ADMIN): {detail}"
    )]
    Unusable {
        /// What the probe printed.
        detail: String,
    },
    /// `nft` could not run, or failed, on a table.
    #[error("table {table}: {source}")]
    Tool {
        /// The table (`ip kproxy`).
        table: String,
        /// What went wrong.
        source: ToolError,
    },
}

impl NftError {
    /// Whether nft failed because what it was asked about does not exist.
    fn is_no_such_object(&self) -> bool {
        matches!(self, NftError::Tool { source, .. }
            if source.stderr().is_some_and(|e| e.contains("No such file or directory")))
    }
}

/// `ip kproxy` / `ip6 kproxy`.
pub fn table_name(family: IpFamily) -> String {
    format!("{} {TABLE}", family_keyword(family))
}

/// Checks that `nft` is installed and can create kproxy's tables and nat chains, without
/// changing anything (`nft --check`).
pub async fn check_available(families: &[IpFamily]) -> Result<(), NftError> {
    let unusable = |e: ToolError| NftError::Unusable {
        detail: match e {
            ToolError::Failed { stderr, .. } => stderr,
            other => other.to_string(),
        },
    };
    NFT.run(&["--version"], None).await.map_err(unusable)?;
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
    NFT.run(&["--check", "-f", "-"], Some(&probe))
        .await
        .map(drop)
        .map_err(unusable)
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
        Err(e) if e.is_no_such_object() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Runs a deletion transaction: `false` if the object did not exist.
async fn delete(table: &str, text: &str) -> Result<bool, NftError> {
    match run(table, &["-f", "-"], Some(text)).await {
        Ok(_) => Ok(true),
        Err(e) if e.is_no_such_object() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Runs `nft args` with `stdin`, on behalf of `table` (named in errors).
async fn run(table: &str, args: &[&str], stdin: Option<&str>) -> Result<String, NftError> {
    NFT.run(args, stdin).await.map_err(|source| NftError::Tool {
        table: table.to_owned(),
        source,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_failing_line() {
        let stderr = "/dev/stdin:2:28-28: Error: syntax error, unexpected newline\n\
                      add rule ip6 kproxy x bogus\n                           ^";
        assert_eq!(failing_line(stderr), Some(2));
        assert_eq!(failing_line("Error: Could not process rule"), None);
    }

    #[test]
    fn table_names() {
        assert_eq!(table_name(IpFamily::V4), "ip kproxy");
        assert_eq!(table_name(IpFamily::V6), "ip6 kproxy");
    }
}
