//! What a backend reports about one sync of one IP family, in terms every mode shares.

use std::time::Duration;

use crate::plan::IpFamily;

/// What one family's sync did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// The proxy mode (`iptables`, `nftables`, ...).
    pub mode: &'static str,
    /// The family.
    pub family: IpFamily,
    /// Whether this was a full sync.
    pub full: bool,
    /// Kernel objects created or rewritten (iptables: chains; nftables: chains, sets, maps
    /// and elements).
    pub objects_written: usize,
    /// Kernel objects deleted.
    pub objects_deleted: usize,
    /// Lines of the transaction sent to the kernel (rules and elements).
    pub lines_written: usize,
    /// Rules (and map elements) the family has after the sync.
    pub rules_total: usize,
    /// Wall time of render + diff + apply.
    pub took: Duration,
}

impl SyncReport {
    /// Logs the report as one structured line (`synced rules`).
    pub fn log(&self) {
        tracing::info!(
            mode = self.mode,
            family = %self.family,
            full = self.full,
            objects_written = self.objects_written,
            objects_deleted = self.objects_deleted,
            lines_written = self.lines_written,
            rules_total = self.rules_total,
            took_ms = format!("{:.3}", self.took.as_secs_f64() * 1e3),
            "synced rules"
        );
    }
}
