//! Runs `iptables-save` and `iptables-restore` (the only kernel I/O of iptables mode), picks
//! the legacy or nft backend, and probes what the installed tools support.
//!
//! One sync is at most one `iptables-restore` per family (plus one `iptables-save` per table
//! on full syncs); kproxy never runs one `iptables` command per rule.

use std::fmt;
use std::io;
use std::str::FromStr;

use crate::plan::IpFamily;
use crate::tool::{Tool, ToolError};

use super::restore::RestoreInput;
use super::ruleset::Table;

/// Which iptables implementation to program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IptablesBackend {
    /// `iptables-legacy` (x_tables).
    Legacy,
    /// `iptables-nft` (x_tables rules on nf_tables).
    Nft,
}

impl fmt::Display for IptablesBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IptablesBackend::Legacy => "legacy",
            IptablesBackend::Nft => "nft",
        })
    }
}

/// `--iptables-backend`: a backend, or `auto` to use the one the node already uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// Always legacy.
    Legacy,
    /// Always nft.
    Nft,
    /// The backend that already holds Kubernetes chains, else the one with more rules,
    /// else nft.
    #[default]
    Auto,
}

impl FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "legacy" => Ok(BackendChoice::Legacy),
            "nft" => Ok(BackendChoice::Nft),
            "auto" => Ok(BackendChoice::Auto),
            other => Err(format!(
                "unknown iptables backend {other:?} (expected legacy, nft or auto)"
            )),
        }
    }
}

/// One iptables binary family (`iptables`/`ip6tables`) of one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IptablesTool {
    /// The IP family it programs.
    pub family: IpFamily,
    /// The backend.
    pub backend: IptablesBackend,
}

impl IptablesTool {
    /// The binary for `verb` (`save`, `restore` or `` for plain iptables).
    pub fn binary(&self, verb: &str) -> String {
        let base = match self.family {
            IpFamily::V4 => "iptables",
            IpFamily::V6 => "ip6tables",
        };
        let mut name = format!("{base}-{}", self.backend);
        if !verb.is_empty() {
            name = format!("{name}-{verb}");
        }
        name
    }

    /// `iptables-save` of kproxy's tables (filter and nat).
    pub async fn save(&self) -> Result<String, ToolError> {
        let mut out = String::new();
        for table in Table::ALL {
            out.push_str(&self.save_table(table).await?);
        }
        Ok(out)
    }

    /// `iptables-save -t TABLE`.
    pub async fn save_table(&self, table: Table) -> Result<String, ToolError> {
        let binary = self.binary("save");
        iptables_tool(&binary)
            .run(&["-t", table.name()], None)
            .await
    }

    /// `iptables-restore --noflush` of `input` (no-op when empty).
    pub async fn restore(&self, input: &RestoreInput) -> Result<(), ToolError> {
        if input.is_empty() {
            return Ok(());
        }
        let binary = self.binary("restore");
        iptables_tool(&binary)
            .run(&["--noflush", "-w", "5"], Some(&input.text))
            .await
            .map(drop)
    }

    /// Does `chain` exist in `table` (any table name, e.g. `mangle`)? One
    /// `iptables -w 5 -t TABLE -S CHAIN`, which lists that chain only; for the legacy
    /// backend, a table the kernel does not have is answered from
    /// `/proc/thread-self/net/ip_tables_names` without running anything (listing would create it).
    /// `Err` when the tool could not answer (e.g. the xtables lock stayed busy).
    pub async fn chain_exists(&self, table: &str, chain: &str) -> Result<bool, ToolError> {
        if self.backend == IptablesBackend::Legacy && !legacy_table_exists(self.family, table) {
            return Ok(false);
        }
        let binary = self.binary("");
        match iptables_tool(&binary)
            .run(&["-w", "5", "-t", table, "-S", chain], None)
            .await
        {
            Ok(_) => Ok(true),
            // No such chain (with nft, also: no such table). 4 would be a resource problem.
            Err(e) if e.exit_code() == Some(1) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Runs plain `iptables ARGS` (or `ip6tables`, of this backend) and returns its output.
    pub async fn run(&self, args: &[&str]) -> Result<String, ToolError> {
        let binary = self.binary("");
        iptables_tool(&binary).run(args, None).await
    }

    /// `(major, minor, patch)` of the installed iptables.
    pub async fn version(&self) -> Result<(u32, u32, u32), ToolError> {
        let binary = self.binary("");
        let text = iptables_tool(&binary).run(&["--version"], None).await?;
        Ok(parse_version(&text).unwrap_or((0, 0, 0)))
    }

    /// `MASQUERADE --random-fully` needs iptables 1.6.2 or later.
    pub async fn supports_random_fully(&self) -> bool {
        self.version().await.is_ok_and(|v| v >= (1, 6, 2))
    }
}

/// Parses `iptables v1.8.9 (nf_tables)`.
fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let v = text.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

/// Resolves `--iptables-backend` for one family.
pub async fn resolve_backend(
    choice: BackendChoice,
    family: IpFamily,
) -> Result<IptablesBackend, ToolError> {
    match choice {
        BackendChoice::Legacy => Ok(IptablesBackend::Legacy),
        BackendChoice::Nft => Ok(IptablesBackend::Nft),
        BackendChoice::Auto => {
            let legacy = IptablesTool {
                family,
                backend: IptablesBackend::Legacy,
            };
            let nft = IptablesTool {
                family,
                backend: IptablesBackend::Nft,
            };
            // Listing legacy tables creates them, so list them only if the kernel has some.
            // A backend that cannot be listed does not count; if neither can, report nft's error.
            let legacy_rules = if legacy_tables_exist(family) {
                legacy.save().await.ok()
            } else {
                Some(String::new())
            };
            let nft_rules = match nft.save().await {
                Ok(text) => Some(text),
                Err(err) if legacy_rules.is_none() => return Err(err),
                Err(_) => None,
            };
            Ok(pick_backend(legacy_rules.as_deref(), nft_rules.as_deref()))
        }
    }
}

/// Whether x_tables (legacy) tables exist in this network namespace, read without creating
/// any: `/proc/thread-self/net/ip_tables_names` lists the tables that exist (`thread-self`,
/// not `/proc/net` = `self`: the calling thread may have `setns`'d elsewhere than the process).
fn legacy_tables_exist(family: IpFamily) -> bool {
    let file = match family {
        IpFamily::V4 => "/proc/thread-self/net/ip_tables_names",
        IpFamily::V6 => "/proc/thread-self/net/ip6_tables_names",
    };
    std::fs::read_to_string(file).is_ok_and(|names| !names.trim().is_empty())
}

/// Whether the legacy `table` exists in this network namespace (read without creating it).
fn legacy_table_exists(family: IpFamily, table: &str) -> bool {
    let file = match family {
        IpFamily::V4 => "/proc/thread-self/net/ip_tables_names",
        IpFamily::V6 => "/proc/thread-self/net/ip6_tables_names",
    };
    std::fs::read_to_string(file).is_ok_and(|names| names.lines().any(|n| n.trim() == table))
}

/// The auto choice, from what each backend's `iptables-save` printed.
fn pick_backend(legacy: Option<&str>, nft: Option<&str>) -> IptablesBackend {
    let kube_chains = |t: &str| t.lines().filter(|l| l.starts_with(":KUBE-")).count();
    let rules = |t: &str| t.lines().filter(|l| l.starts_with("-A ")).count();
    match (legacy, nft) {
        (Some(_), None) => IptablesBackend::Legacy,
        (Some(l), Some(n)) if kube_chains(l) > kube_chains(n) => IptablesBackend::Legacy,
        (Some(l), Some(n)) if kube_chains(l) == kube_chains(n) && rules(l) > rules(n) => {
            IptablesBackend::Legacy
        }
        _ => IptablesBackend::Nft,
    }
}

/// `binary` (an `iptables*` tool), whose restore errors blame an input line.
fn iptables_tool(binary: &str) -> Tool<'_> {
    Tool::new(binary, "iptables").blaming(failing_line)
}

/// The line number in `iptables-restore: line 12 failed` or `Error occurred at line: 12`.
fn failing_line(stderr: &str) -> Option<usize> {
    stderr.lines().find_map(|l| {
        let rest = l
            .split_once("line ")
            .map(|(_, r)| r)
            .or_else(|| l.split_once("line: ").map(|(_, r)| r))?;
        rest.trim_start_matches(':')
            .trim()
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    })
}

/// Writes `1` to `net.ipv4.conf.all.route_localnet` (of the current network namespace), as
/// localhost NodePorts need.
pub fn enable_route_localnet() -> io::Result<()> {
    std::fs::write("/proc/sys/net/ipv4/conf/all/route_localnet", "1")
}

/// Whether `net.netfilter.nf_conntrack_tcp_be_liberal` is set (missing sysctl: no).
pub fn conntrack_tcp_be_liberal() -> bool {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal")
        .is_ok_and(|v| v.trim() == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(
            parse_version("iptables v1.8.9 (nf_tables)\n"),
            Some((1, 8, 9))
        );
        assert_eq!(parse_version("ip6tables v1.6 (legacy)"), Some((1, 6, 0)));
        assert_eq!(parse_version("nonsense"), None);
    }

    #[test]
    fn finds_failing_line() {
        assert_eq!(failing_line("iptables-restore: line 4 failed"), Some(4));
        assert_eq!(
            failing_line("Error occurred at line: 7\nTry `iptables-restore -h'"),
            Some(7)
        );
    }

    #[test]
    fn auto_prefers_backend_with_kubernetes_chains_then_more_rules() {
        let kube = "*nat\n:KUBE-SERVICES - [0:0]\nCOMMIT\n";
        let busy = "*filter\n-A INPUT -j ACCEPT\n-A INPUT -j DROP\nCOMMIT\n";
        let empty = "*filter\nCOMMIT\n";
        assert_eq!(
            pick_backend(Some(kube), Some(busy)),
            IptablesBackend::Legacy
        );
        assert_eq!(pick_backend(Some(empty), Some(kube)), IptablesBackend::Nft);
        assert_eq!(
            pick_backend(Some(busy), Some(empty)),
            IptablesBackend::Legacy
        );
        assert_eq!(pick_backend(Some(empty), Some(empty)), IptablesBackend::Nft);
        assert_eq!(pick_backend(Some(empty), None), IptablesBackend::Legacy);
    }

    #[test]
    fn backend_names() {
        let t = IptablesTool {
            family: IpFamily::V6,
            backend: IptablesBackend::Legacy,
        };
        assert_eq!(t.binary("restore"), "ip6tables-legacy-restore");
        assert_eq!(t.binary(""), "ip6tables-legacy");
        assert_eq!("nft".parse::<BackendChoice>(), Ok(BackendChoice::Nft));
        assert!("iptables".parse::<BackendChoice>().is_err());
    }
}
