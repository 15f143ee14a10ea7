//! iptables mode's side of `kproxy explain --live`: for one service port, every rule the
//! renderer writes for it (its own `KUBE-SVC-`/`SVL-`/`EXT-`/`FW-`/`SEP-` chains, and its
//! commented rules in the shared chains) checked against the kernel with `iptables -C`,
//! which compares rules as the kernel holds them, and its own chains holding more rules
//! than the renderer writes.

use crate::live::{LiveObject, Presence, split_args};
use crate::plan::ServicePortPlan;
use crate::tool::ToolError;

use super::apply::IptablesTool;
use super::names::{ServiceChains, endpoint_chain};
use super::ruleset::{Ruleset, Table};

/// The rules of `svc` in `expected` (the family's rendered ruleset), each with what the
/// kernel behind `tool` has of it, and its own chains that hold more rules in the kernel.
pub async fn inspect(
    tool: &IptablesTool,
    expected: &Ruleset,
    svc: &ServicePortPlan,
) -> Result<Vec<LiveObject>, ToolError> {
    let own = own_chains(svc);
    let comment = svc.name.to_string();
    let mentions = |rule: &str| {
        rule.contains(&format!("--comment \"{comment} "))
            || rule.contains(&format!("--comment \"{comment}\""))
            || rule.contains(&format!("--comment {comment} "))
    };
    let mut objects = Vec::new();
    for table in Table::ALL {
        for (chain, rules) in expected.table(table) {
            let is_own = own.contains(chain);
            for rule in rules.iter().filter(|r| is_own || mentions(r)) {
                let presence = check(tool, table, chain, rule).await?;
                objects.push(LiveObject::new(
                    format!("-t {table} -A {chain} {rule}"),
                    presence,
                ));
            }
            if is_own
                && let Some(count) = live_count(tool, table, chain).await?
                && count > rules.len()
            {
                objects.push(LiveObject::new(
                    format!("-t {table} chain {chain}: {} rules", rules.len()),
                    Presence::Differs(format!("{count} rules")),
                ));
            }
        }
    }
    Ok(objects)
}

/// The chains only `svc` uses.
fn own_chains(svc: &ServicePortPlan) -> Vec<String> {
    let chains = ServiceChains::of(&svc.name);
    let mut own = vec![
        chains.cluster,
        chains.local,
        chains.external,
        chains.firewall,
    ];
    own.extend(
        svc.reachable_endpoints()
            .into_iter()
            .map(|ep| endpoint_chain(&svc.name, ep)),
    );
    own
}

/// `iptables -C`: whether the kernel has the rule.
pub(crate) async fn check(
    tool: &IptablesTool,
    table: Table,
    chain: &str,
    rule: &str,
) -> Result<Presence, ToolError> {
    let args = split_args(rule);
    let mut command = vec!["-w", "5", "-t", table.name(), "-C", chain];
    command.extend(args.iter().map(String::as_str));
    match tool.run(&command).await {
        Ok(_) => Ok(Presence::Present),
        // 1: no such rule (or chain); 2: the kernel cannot parse it here (a missing match
        // module), which is no rule either.
        Err(e) if matches!(e.exit_code(), Some(1 | 2)) => Ok(Presence::Missing),
        Err(e) => Err(e),
    }
}

/// How many rules the kernel has in `chain` (`None` when the chain is gone).
async fn live_count(
    tool: &IptablesTool,
    table: Table,
    chain: &str,
) -> Result<Option<usize>, ToolError> {
    if !tool.chain_exists(table.name(), chain).await? {
        return Ok(None);
    }
    let listed = tool
        .run(&["-w", "5", "-t", table.name(), "-S", chain])
        .await?;
    Ok(Some(
        listed.lines().filter(|l| l.starts_with("-A ")).count(),
    ))
}
