//! Tests of the metrics registry and server, with a small OpenMetrics text checker.

use std::collections::BTreeMap;
use std::time::UNIX_EPOCH;

use super::*;
use crate::servers::clock::FakeClock;
use crate::servers::exposition::{OPENMETRICS_CONTENT_TYPE, PROMETHEUS_TEXT_CONTENT_TYPE};
use crate::servers::http::{serve, testing};

/// Every name the issue lists (sample names as they appear in the exposition).
const LISTED: &[&str] = &[
    "kubeproxy_sync_proxy_rules_duration_seconds_bucket",
    "kubeproxy_sync_full_proxy_rules_duration_seconds_bucket",
    "kubeproxy_sync_partial_proxy_rules_duration_seconds_bucket",
    "kubeproxy_network_programming_duration_seconds_bucket",
    "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
    "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
    "kubeproxy_sync_proxy_rules_endpoint_changes_total",
    "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
    "kubeproxy_sync_proxy_rules_service_changes_total",
    "kubeproxy_sync_proxy_rules_service_changes_pending",
    "kubeproxy_sync_proxy_rules_iptables_total",
    "kubeproxy_sync_proxy_rules_iptables_last",
    "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
    "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total",
    "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
    "kubeproxy_proxy_healthz_total",
    "kubeproxy_proxy_livez_total",
    "kubeproxy_conntrack_reconciler_sync_duration_seconds_bucket",
    "kubeproxy_conntrack_reconciler_deleted_entries_total",
    "kubernetes_build_info",
];

/// One sample: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Families (name → type) and samples of an exposition.
type Parsed = (BTreeMap<String, String>, Vec<Sample>);

/// Checks `text` as OpenMetrics text: see [`check`].
fn parse(text: &str) -> Result<Parsed, String> {
    check(text, true)
}

/// Checks `text` as Prometheus text 0.0.4: see [`check`].
fn parse_prometheus(text: &str) -> Result<Parsed, String> {
    check(text, false)
}

/// Checks an exposition: HELP/TYPE lines before their samples, sample names matching
/// their family and type (OpenMetrics counters `<family>_total`, Prometheus counters
/// named `..._total` themselves), well-formed labels and values, histograms with
/// ascending `le`, cumulative counts and a `+Inf` bucket equal to `_count`, and a final
/// `# EOF` in OpenMetrics only.
fn check(text: &str, openmetrics: bool) -> Result<Parsed, String> {
    let body = if openmetrics {
        text.strip_suffix("# EOF\n")
            .ok_or("the exposition must end with `# EOF`")?
    } else if text.contains("# EOF") {
        return Err("`# EOF` in Prometheus text".into());
    } else {
        text
    };
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    let mut current: Option<(String, String)> = None;
    for (n, line) in body.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line}", n + 1);
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            check_name(name).map_err(at)?;
            match kind {
                "HELP" | "UNIT" => {}
                "TYPE" => {
                    let ty = parts.next().unwrap_or("");
                    if ![
                        "counter",
                        "gauge",
                        "histogram",
                        "info",
                        "stateset",
                        "unknown",
                    ]
                    .contains(&ty)
                    {
                        return Err(at(format!("unknown type {ty:?}")));
                    }
                    if types.insert(name.to_owned(), ty.to_owned()).is_some() {
                        return Err(at("family declared twice".into()));
                    }
                    current = Some((name.to_owned(), ty.to_owned()));
                }
                other => return Err(at(format!("unknown descriptor {other:?}"))),
            }
            continue;
        }
        let (name, labels, value) = parse_sample(line).map_err(at)?;
        let (family, ty) = current
            .as_ref()
            .ok_or_else(|| at("sample before TYPE".into()))?;
        let suffix = name
            .strip_prefix(family.as_str())
            .ok_or_else(|| at(format!("sample outside family {family}")))?;
        if !openmetrics && ty == "counter" && !family.ends_with("_total") {
            return Err(at(format!("counter {family} not named _total")));
        }
        let allowed: &[&str] = match ty.as_str() {
            "counter" if openmetrics => &["_total", "_created"],
            "histogram" => &["_bucket", "_count", "_sum", "_created"],
            _ => &[""],
        };
        if !allowed.contains(&suffix) {
            return Err(at(format!("suffix {suffix:?} not allowed for a {ty}")));
        }
        if suffix == "_bucket" && !labels.contains_key("le") {
            return Err(at("bucket without le".into()));
        }
        samples.push((name, labels, value));
    }
    check_histograms(&types, &samples)?;
    Ok((types, samples))
}

fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!("bad metric name {name:?}"))
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("a sample needs a value")?;
    let name = &line[..name_end];
    check_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(mut l) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = l.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = l.find("=\"").ok_or("label without =\"")?;
            let key = &l[..eq];
            check_name(key)?;
            let mut value = String::new();
            let mut chars = l[eq + 2..].char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => break eq + 2 + i + 1,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => value.push(c),
                        _ => return Err("bad escape in label value".into()),
                    },
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value".into()),
                }
            };
            if labels.insert(key.to_owned(), value).is_some() {
                return Err(format!("label {key} twice"));
            }
            l = &l[end..];
            l = l.strip_prefix(',').unwrap_or(l);
        }
    }
    let mut fields = rest
        .strip_prefix(' ')
        .ok_or("a space must precede the value")?
        .split(' ');
    let value = parse_value(fields.next().unwrap_or(""))?;
    if let Some(ts) = fields.next() {
        parse_value(ts)?;
    }
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok((name.to_owned(), labels, value))
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().map_err(|_| format!("bad value {s:?}")),
    }
}

fn check_histograms(types: &BTreeMap<String, String>, samples: &[Sample]) -> Result<(), String> {
    for (family, _) in types.iter().filter(|(_, t)| *t == "histogram") {
        // Group the series by their labels other than `le`.
        let mut buckets: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
        let mut counts = BTreeMap::new();
        for (name, labels, value) in samples {
            let mut series = labels.clone();
            if *name == format!("{family}_bucket") {
                let le = series.remove("le").unwrap_or_default();
                buckets
                    .entry(series)
                    .or_default()
                    .push((parse_value(&le)?, *value));
            } else if *name == format!("{family}_count") {
                counts.insert(series, *value);
            }
        }
        for (series, list) in &buckets {
            let ascending = list.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1);
            let last = list.last().copied().unwrap_or((0.0, 0.0));
            if !ascending || last.0 != f64::INFINITY || counts.get(series) != Some(&last.1) {
                return Err(format!("{family}{series:?}: bad buckets {list:?}"));
            }
        }
    }
    Ok(())
}

fn report(family: IpFamily, full: bool, millis: u64) -> SyncReport {
    SyncReport {
        mode: "iptables",
        family,
        full,
        objects_written: 3,
        objects_deleted: 0,
        lines_written: 10,
        rules_total: 42,
        took: Duration::from_millis(millis),
    }
}

/// A dual-stack plan without services.
fn plan() -> ProxyPlan {
    kproxy_dataplane::fixtures::plan(vec![])
}

fn exercised(mode: ProxyMode) -> (Metrics, FakeClock) {
    let clock = FakeClock::new(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let m = Metrics::with_clock(mode, Arc::new(clock.clone()));
    m.record_changes(2, 5);
    m.set_queued_now(IpFamily::V4);
    clock.advance(Duration::from_millis(250));
    m.record_syncs(&[
        report(IpFamily::V4, true, 30),
        report(IpFamily::V6, true, 20),
    ]);
    m.record_sync(&report(IpFamily::V4, false, 3));
    m.record_failure(IpFamily::V4, false);
    m.record_failure(IpFamily::V4, true);
    m.record_nftables_cleanup_failure(IpFamily::V6);
    m.observe_programming_latency(IpFamily::V4, Duration::from_millis(1200));
    m.set_iptables_rules(IpFamily::V4, "nat", 40, 7);
    m.set_iptables_rules(IpFamily::V4, "filter", 2, 0);
    m.record_no_local_endpoints(&plan());
    m.record_conntrack_cleanup(IpFamily::V4, Duration::from_millis(4), 3);
    m.count_healthz(200);
    m.count_livez(503);
    (m, clock)
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && l.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
}

#[test]
fn exposition_parses_and_has_every_listed_name() {
    let (m, _clock) = exercised(ProxyMode::Iptables);
    let text = m.encode();
    let (types, samples) = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    for name in LISTED {
        assert!(
            samples.iter().any(|(n, _, _)| n == name),
            "{name} missing from\n{text}"
        );
    }
    assert_eq!(
        types["kubeproxy_sync_proxy_rules_duration_seconds"],
        "histogram"
    );
    let build = samples
        .iter()
        .find(|(n, _, _)| n == "kubernetes_build_info")
        .expect("build info");
    assert_eq!(build.2, 1.0);
    let version = format!("v{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(build.1.get("git_version"), Some(&version));
    assert_eq!(build.1.get("compiler").map(String::as_str), Some("rustc"));
    assert_eq!(
        types["kubeproxy_sync_proxy_rules_service_changes"],
        "counter"
    );
    assert_eq!(types["kubeproxy_sync_proxy_rules_iptables_total"], "gauge");
    assert_eq!(
        types["kubeproxy_sync_proxy_rules_no_local_endpoints_total"],
        "gauge"
    );
    assert!(
        !types.keys().any(|t| t.contains("nftables")),
        "nftables counters are not registered in iptables mode"
    );
}

#[test]
fn values_follow_the_calls() {
    let (m, _clock) = exercised(ProxyMode::Iptables);
    let (_, s) = parse(&m.encode()).expect("parses");
    let v4 = [("ip_family", "IPv4")];
    assert_eq!(
        value(&s, "kubeproxy_sync_proxy_rules_duration_seconds_count", &v4),
        Some(2.0)
    );
    assert_eq!(
        value(
            &s,
            "kubeproxy_sync_full_proxy_rules_duration_seconds_count",
            &v4
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "kubeproxy_sync_partial_proxy_rules_duration_seconds_count",
            &v4
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            &v4
        ),
        Some(1_700_000_000.0)
    );
    assert_eq!(
        value(&s, "kubeproxy_sync_proxy_rules_last_timestamp_seconds", &v4),
        Some(1_700_000_000.25)
    );
    assert_eq!(
        value(
            &s,
            "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
            &v4
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &s,
            "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total",
            &v4
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&s, "kubeproxy_sync_proxy_rules_service_changes_total", &[]),
        Some(2.0)
    );
    assert_eq!(
        value(&s, "kubeproxy_sync_proxy_rules_endpoint_changes_total", &[]),
        Some(5.0)
    );
    assert_eq!(
        value(
            &s,
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
            &[]
        ),
        Some(0.0),
        "a successful sync of every family clears the pending changes"
    );
    m.record_changes(1, 4);
    let (_, s) = parse(&m.encode()).expect("parses");
    assert_eq!(
        value(
            &s,
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
            &[]
        ),
        Some(4.0)
    );
    assert_eq!(
        value(
            &s,
            "kubeproxy_sync_proxy_rules_iptables_total",
            &[("ip_family", "IPv4"), ("table", "nat")]
        ),
        Some(40.0)
    );
    assert_eq!(
        value(
            &s,
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            &[("ip_family", "IPv6"), ("traffic_policy", "external")]
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            &s,
            "kubeproxy_conntrack_reconciler_deleted_entries_total",
            &v4
        ),
        Some(3.0)
    );
}

#[test]
fn histograms_use_upstream_buckets() {
    let (m, _clock) = exercised(ProxyMode::Iptables);
    let (_, s) = parse(&m.encode()).expect("parses");
    let les = |name: &str| -> Vec<String> {
        s.iter()
            .filter(|(n, l, _)| n == name && l.get("ip_family").map(String::as_str) == Some("IPv4"))
            .filter_map(|(_, l, _)| l.get("le").cloned())
            .collect()
    };
    let sync = les("kubeproxy_sync_proxy_rules_duration_seconds_bucket");
    assert_eq!(sync.len(), 16, "15 buckets and +Inf: {sync:?}");
    assert_eq!(sync.first().map(String::as_str), Some("0.001"));
    assert_eq!(sync.get(14).map(String::as_str), Some("16.384"));
    let programming = les("kubeproxy_network_programming_duration_seconds_bucket");
    assert_eq!(network_programming_buckets().len(), 3 + 59 + 12 + 7);
    assert_eq!(programming.len(), network_programming_buckets().len() + 1);
    assert_eq!(programming.first().map(String::as_str), Some("0.0"));
    assert!(programming.iter().any(|le| le == "115.0"));
    assert_eq!(
        programming.iter().rev().nth(1).map(String::as_str),
        Some("300.0")
    );
    assert_eq!(
        value(
            &s,
            "kubeproxy_network_programming_duration_seconds_bucket",
            &[("ip_family", "IPv4"), ("le", "1.0")]
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            &s,
            "kubeproxy_network_programming_duration_seconds_bucket",
            &[("ip_family", "IPv4"), ("le", "2.0")]
        ),
        Some(1.0)
    );
}

#[test]
fn nftables_mode_registers_its_own_failure_counters() {
    let (m, _clock) = exercised(ProxyMode::Nftables);
    let (types, s) = parse(&m.encode()).expect("parses");
    assert!(types.contains_key("kubeproxy_sync_proxy_rules_nftables_sync_failures"));
    assert!(types.contains_key("kubeproxy_sync_proxy_rules_nftables_cleanup_failures"));
    assert!(!types.keys().any(|t| t.contains("iptables")));
    assert_eq!(
        value(
            &s,
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
            &[("ip_family", "IPv4")]
        ),
        Some(2.0)
    );
}

#[test]
fn the_checker_rejects_broken_text() {
    assert!(parse("# TYPE a gauge\na 1\n").is_err(), "no EOF");
    assert!(parse("a 1\n# EOF\n").is_err(), "no TYPE");
    assert!(parse("# TYPE a gauge\na{x=\"1} 1\n# EOF\n").is_err());
    assert!(parse("# TYPE a gauge\na one\n# EOF\n").is_err());
    assert!(
        parse("# TYPE a counter\na 1\n# EOF\n").is_err(),
        "counter without _total"
    );
    assert!(
        parse(
            "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n# EOF\n"
        )
        .is_err(),
        "decreasing buckets"
    );
    assert!(parse("# TYPE a gauge\na{x=\"q\\\"\"} 1\n# EOF\n").is_ok());
    assert!(
        parse_prometheus("# TYPE a gauge\na 1\n# EOF\n").is_err(),
        "EOF"
    );
    assert!(parse_prometheus("# TYPE a counter\na_total 1\n").is_err());
    assert!(parse_prometheus("# TYPE a_total counter\na_total 1\n").is_ok());
}

#[tokio::test(flavor = "current_thread")]
async fn server_answers_every_route() {
    let (m, _clock) = exercised(ProxyMode::Iptables);
    let config =
        serde_json::json!({ CONFIGZ_KEY: { "Mode": "iptables", "BindAddress": "0.0.0.0" } });
    let server = serve(
        "metrics-bind-address",
        "127.0.0.1:0".parse().expect("addr"),
        router(m, config, None),
    )
    .expect("bind");
    let addr = server.local_addr();

    let mode = testing::get(addr, "/proxyMode").await;
    assert_eq!((mode.status, mode.body.as_str()), (200, "iptables"));
    assert_eq!(
        mode.header("content-type"),
        Some("text/plain; charset=utf-8")
    );

    let prometheus = testing::get(addr, "/metrics").await;
    assert_eq!(prometheus.status, 200);
    assert_eq!(
        prometheus.header("content-type"),
        Some(PROMETHEUS_TEXT_CONTENT_TYPE)
    );
    let (_, samples) = parse_prometheus(&prometheus.body).unwrap_or_else(|e| panic!("{e}"));
    for name in LISTED {
        assert!(samples.iter().any(|(n, _, _)| n == name), "{name}");
    }

    let accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let openmetrics = testing::get_with(addr, "/metrics", &[("Accept", accept)]).await;
    assert_eq!(openmetrics.status, 200);
    assert_eq!(
        openmetrics.header("content-type"),
        Some(OPENMETRICS_CONTENT_TYPE)
    );
    let (_, samples) = parse(&openmetrics.body).unwrap_or_else(|e| panic!("{e}"));
    for name in LISTED {
        assert!(samples.iter().any(|(n, _, _)| n == name), "{name}");
    }

    let configz = testing::get(addr, "/configz").await;
    assert_eq!(configz.status, 200);
    assert_eq!(configz.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_str(&configz.body).expect("json");
    assert_eq!(v[CONFIGZ_KEY]["Mode"], "iptables");

    for path in ["/healthz", "/livez"] {
        let r = testing::get(addr, path).await;
        assert_eq!((r.status, r.body.as_str()), (200, "ok"), "{path}");
    }
    assert_eq!(testing::get(addr, "/nope").await.status, 404);
}
