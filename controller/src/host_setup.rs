//! The privileged set-up at start, as upstream's `platformSetup`: the conntrack sysctls
//! (`conntrack.*`, upstream's `pkg/proxy/conntrack/sysctls.go`) and the process's OOM
//! score (`oomScoreAdj`).
//!
//! What to write is computed by pure functions; [`apply_conntrack`] only reads and writes
//! the files, in directories given to it (the real ones are [`PROC_NETFILTER`] and
//! [`HASHSIZE`]), so tests can point it at a scratch directory.

use std::path::Path;
use std::time::Duration;

use crate::cli::ConntrackSettings;

/// Where the netfilter sysctls live.
pub const PROC_NETFILTER: &str = "/proc/sys/net/netfilter";
/// The conntrack hash table size (global to the host).
pub const HASHSIZE: &str = "/sys/module/nf_conntrack/parameters/hashsize";
/// The largest `nf_conntrack_max` upstream sets (1.36+).
pub const MAX_CONNTRACK: u64 = 1_048_576;

/// Upstream's `getConntrackMax`: `maxPerCore × CPUs`, at most [`MAX_CONNTRACK`], at least
/// `min`; 0 (leave the limit alone) when `maxPerCore` is 0.
pub fn conntrack_max(settings: &ConntrackSettings, cpus: u64) -> u64 {
    if settings.max_per_core == 0 {
        return 0;
    }
    let scaled = (u64::from(settings.max_per_core) * cpus).min(MAX_CONNTRACK);
    scaled.max(u64::from(settings.min))
}

/// The netfilter sysctls to set, with their values, in upstream's order; a zero setting is
/// left out (it means "leave the kernel's value").
pub fn conntrack_sysctls(settings: &ConntrackSettings, cpus: u64) -> Vec<(&'static str, u64)> {
    let seconds = |d: Duration| d.as_secs();
    let wanted = [
        ("nf_conntrack_max", conntrack_max(settings, cpus)),
        (
            "nf_conntrack_tcp_timeout_established",
            seconds(settings.tcp_established_timeout),
        ),
        (
            "nf_conntrack_tcp_timeout_close_wait",
            seconds(settings.tcp_close_wait_timeout),
        ),
        (
            "nf_conntrack_tcp_be_liberal",
            u64::from(settings.tcp_be_liberal),
        ),
        ("nf_conntrack_udp_timeout", seconds(settings.udp_timeout)),
        (
            "nf_conntrack_udp_timeout_stream",
            seconds(settings.udp_stream_timeout),
        ),
    ];
    wanted.into_iter().filter(|(_, value)| *value > 0).collect()
}

/// Sets the conntrack sysctls under `netfilter` whose value differs from the wanted one
/// (upstream writes them down as well as up), then raises `hashsize` to a quarter of
/// `nf_conntrack_max` if it is smaller. Returns what was changed. A sysctl that cannot be
/// written is an error (as upstream: in a network namespace other than the host's,
/// `nf_conntrack_max` is read-only; set `conntrack.maxPerCore: 0` there, as kind does);
/// a `hashsize` that cannot be raised (read-only /sys) is only reported.
pub fn apply_conntrack(
    settings: &ConntrackSettings,
    cpus: u64,
    netfilter: &Path,
    hashsize: &Path,
) -> anyhow::Result<Vec<String>> {
    let mut changed = Vec::new();
    let wanted = conntrack_sysctls(settings, cpus);
    for (name, value) in &wanted {
        let path = netfilter.join(name);
        if read_number(&path).ok() == Some(*value) {
            continue;
        }
        std::fs::write(&path, value.to_string()).map_err(|e| {
            anyhow::anyhow!(
                "could not set {} to {value} (conntrack settings of the configuration): {e}{}",
                path.display(),
                if *name == "nf_conntrack_max" {
                    "; outside the host's network namespace set conntrack.maxPerCore: 0 \
                     (--conntrack-max-per-core=0) to leave it alone"
                } else {
                    ""
                }
            )
        })?;
        changed.push(format!("{name}={value}"));
    }
    let max = conntrack_max(settings, cpus);
    if max > 0 {
        match read_number(hashsize) {
            Ok(current) if current >= max / 4 => {}
            Ok(_) => match std::fs::write(hashsize, (max / 4).to_string()) {
                Ok(()) => changed.push(format!("hashsize={}", max / 4)),
                Err(e) => tracing::warn!(
                    path = %hashsize.display(),
                    error = %e,
                    "cannot raise the conntrack hash size (is /sys read-only?): problems may arise later"
                ),
            },
            Err(e) => {
                tracing::warn!(path = %hashsize.display(), error = %e, "cannot read the conntrack hash size")
            }
        }
    }
    Ok(changed)
}

fn read_number(path: &Path) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.trim().parse()?)
}

/// The number of CPUs of the machine (upstream counts the machine's, not the cgroup's):
/// `/sys/devices/system/cpu/online`, else what the process may use.
pub fn machine_cpus() -> u64 {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").ok();
    online
        .as_deref()
        .and_then(count_cpu_list)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u64))
}

/// Counts a CPU list (`0-3,8,10-11`).
fn count_cpu_list(text: &str) -> Option<u64> {
    let mut count = 0;
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        count += match part.split_once('-') {
            Some((lo, hi)) => hi.parse::<u64>().ok()?.checked_sub(lo.parse().ok()?)? + 1,
            None => part.parse::<u64>().map(|_| 1).ok()?,
        };
    }
    (count > 0).then_some(count)
}

/// Sets the process's `oom_score_adj`; a failure is only logged, as upstream.
pub fn apply_oom_score_adj(value: Option<i32>) {
    let Some(value) = value else { return };
    match std::fs::write("/proc/self/oom_score_adj", value.to_string()) {
        Ok(()) => tracing::debug!(value, "set oom_score_adj"),
        Err(e) => tracing::debug!(value, error = %e, "cannot set oom_score_adj"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::test_support::TestDir;

    fn defaults() -> ConntrackSettings {
        ConntrackSettings {
            max_per_core: 32768,
            min: 131072,
            tcp_established_timeout: Duration::from_secs(86400),
            tcp_close_wait_timeout: Duration::from_secs(3600),
            ..ConntrackSettings::default()
        }
    }

    #[test]
    fn max_scales_with_cpus_between_min_and_the_cap() {
        assert_eq!(conntrack_max(&defaults(), 2), 131072, "the minimum");
        assert_eq!(conntrack_max(&defaults(), 8), 262144);
        assert_eq!(
            conntrack_max(&defaults(), 64),
            MAX_CONNTRACK,
            "capped (1.36+)"
        );
        let off = ConntrackSettings {
            max_per_core: 0,
            ..defaults()
        };
        assert_eq!(conntrack_max(&off, 8), 0);
    }

    #[test]
    fn zero_settings_are_left_alone() {
        let sysctls = conntrack_sysctls(&defaults(), 2);
        assert_eq!(
            sysctls,
            [
                ("nf_conntrack_max", 131072),
                ("nf_conntrack_tcp_timeout_established", 86400),
                ("nf_conntrack_tcp_timeout_close_wait", 3600),
            ]
        );
        let k3s = ConntrackSettings {
            min: 131072,
            ..ConntrackSettings::default()
        };
        assert_eq!(conntrack_sysctls(&k3s, 2), []);
    }

    #[test]
    fn writes_what_differs_and_raises_the_hash_size() {
        let dir = TestDir::new("conntrack");
        for (name, value) in [
            ("nf_conntrack_max", "262144"),
            ("nf_conntrack_tcp_timeout_established", "432000"),
            ("nf_conntrack_tcp_timeout_close_wait", "3600"),
            ("hashsize", "16384"),
        ] {
            dir.write(name, &format!("{value}\n"));
        }
        let hashsize = dir.path().join("hashsize");
        let changed = apply_conntrack(&defaults(), 2, dir.path(), &hashsize).expect("applied");
        assert_eq!(
            changed,
            [
                "nf_conntrack_max=131072",
                "nf_conntrack_tcp_timeout_established=86400",
                "hashsize=32768",
            ]
        );
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).expect("read");
        assert_eq!(read("nf_conntrack_max"), "131072");
        assert_eq!(read("hashsize"), "32768");
        let again = apply_conntrack(&defaults(), 2, dir.path(), &hashsize).expect("applied");
        assert!(again.is_empty(), "nothing differs: {again:?}");
    }

    #[test]
    fn a_sysctl_that_cannot_be_written_is_an_error_naming_it() {
        let dir = TestDir::new("conntrack-missing");
        let hashsize = dir.path().join("hashsize");
        let missing = dir.path().join("no-such-dir");
        let err = apply_conntrack(&defaults(), 2, &missing, &hashsize).expect_err("cannot write");
        let text = err.to_string();
        assert!(
            text.contains("nf_conntrack_max") && text.contains("maxPerCore: 0"),
            "{text}"
        );
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(count_cpu_list("0-1\n"), Some(2));
        assert_eq!(count_cpu_list("0-3,8,10-11"), Some(7));
        assert_eq!(count_cpu_list("x"), None);
    }
}
