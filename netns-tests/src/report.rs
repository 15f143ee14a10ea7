//! The `run-netns` report: per service, which backends answered how often, the chi-square
//! verdict, whether DNAT happened on the source node, and how long kproxy took to sync —
//! as a text table for the terminal and as an SVG bar chart. Pure: results in, text out.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::stats::{ChiSquare, P_FLOOR};

/// What was measured for one service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceResult {
    /// Service name.
    pub name: String,
    /// How it was reached, e.g. `ClusterIP 10.96.0.10:80 from pod-1-0`.
    pub path: String,
    /// The backends it should reach (pod names), in display order.
    pub endpoints: Vec<String>,
    /// Hits per backend.
    pub hits: BTreeMap<String, usize>,
    /// Failed requests.
    pub failures: usize,
    /// Chi-square against equal shares (when shares should be equal).
    pub chi_square: Option<ChiSquare>,
    /// Whether a probe left the source node already DNATed (None: not checked).
    pub dnat_on_source: Option<bool>,
    /// From writing the Service's manifest until every node's kproxy had synced it (ms).
    pub programmed_ms: Option<f64>,
}

impl ServiceResult {
    /// Every backend to show: the expected ones in order, then any other that answered
    /// (a stray backend, which makes the result fail).
    pub fn backends(&self) -> Vec<(&str, bool)> {
        let expected = self.endpoints.iter().map(|e| (e.as_str(), true));
        let strays = self
            .hits
            .keys()
            .filter(|k| !self.endpoints.contains(k))
            .map(|k| (k.as_str(), false));
        expected.chain(strays).collect()
    }

    /// Whether this result is what kproxy promises.
    pub fn ok(&self) -> bool {
        self.failures == 0
            && self.dnat_on_source != Some(false)
            && self
                .chi_square
                .as_ref()
                .is_none_or(|c| c.p_value >= P_FLOOR)
            && self.hits.keys().all(|k| self.endpoints.contains(k))
    }
}

fn mark(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "✓",
        Some(false) => "✗",
        None => "-",
    }
}

/// The terminal table.
pub fn text_table(mode: &str, results: &[ServiceResult], sync_ms: &[f64]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "kproxy {mode} mode: {} services", results.len());
    let _ = writeln!(
        out,
        "{:<10} {:<44} {:<28} {:>9} {:>5} {:>9}  ok",
        "service", "path", "hits per backend", "chi² p", "DNAT", "live in"
    );
    for r in results {
        let hits: Vec<String> = r
            .backends()
            .into_iter()
            .map(|(e, expected)| {
                let short = e.strip_prefix("pod-").unwrap_or(e);
                let stray = if expected { "" } else { "!" };
                format!("{stray}{short}={}", r.hits.get(e).copied().unwrap_or(0))
            })
            .collect();
        let p = r
            .chi_square
            .as_ref()
            .map_or("-".to_owned(), |c| format!("{:.3}", c.p_value));
        let _ = writeln!(
            out,
            "{:<10} {:<44} {:<28} {:>9} {:>5} {:>9}  {}{}",
            r.name,
            r.path,
            hits.join(" "),
            p,
            mark(r.dnat_on_source),
            r.programmed_ms
                .map_or("-".to_owned(), |ms| format!("{ms:.0} ms")),
            mark(Some(r.ok())),
            if r.failures > 0 {
                format!(" ({} failed)", r.failures)
            } else {
                String::new()
            }
        );
    }
    for line in LEGEND {
        let _ = writeln!(out, "{line}");
    }
    if !sync_ms.is_empty() {
        let max = sync_ms.iter().copied().fold(0.0, f64::max);
        let mean = sync_ms.iter().sum::<f64>() / sync_ms.len() as f64;
        let _ = writeln!(
            out,
            "syncs: {} (mean {mean:.1} ms, max {max:.1} ms)",
            sync_ms.len()
        );
    }
    out
}

/// What the columns mean, printed once under the table and in the chart.
pub const LEGEND: [&str; 4] = [
    "hits per backend: answers per pod (node-pod), from the pods that should answer; !name: a pod that should not",
    "chi² p: how likely equal shares give hits this uneven (below 0.001 fails); - when shares need not be equal",
    "DNAT: a probe left the client's node already translated (as kube-proxy does: on the source node); - not checked",
    "live in: from writing the Service's manifest to every node's kproxy having synced it",
];

const COLORS: [&str; 6] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948",
];

/// The SVG bar chart: one group of bars per service, one bar per backend.
pub fn svg(mode: &str, results: &[ServiceResult]) -> String {
    let group_w = 200.0;
    let (top, chart_h, left) = (60.0, 220.0, 50.0);
    let width = left + group_w * results.len().max(1) as f64 + 20.0;
    let height = top + chart_h + 80.0 + 16.0 * LEGEND.len() as f64;
    let max = results
        .iter()
        .flat_map(|r| r.hits.values())
        .copied()
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{left}" y="24" font-size="16" font-weight="bold">kproxy {mode} mode: hits per backend</text>"#
    );
    let base = top + chart_h;
    let _ = writeln!(
        out,
        r#"<line x1="{left}" y1="{base}" x2="{}" y2="{base}" stroke="black"/>"#,
        width - 10.0
    );
    for (g, r) in results.iter().enumerate() {
        let x0 = left + g as f64 * group_w + 10.0;
        let backends = r.backends();
        let n = backends.len().max(1) as f64;
        let bar_w = ((group_w - 30.0) / n).min(40.0);
        for (i, (e, expected)) in backends.into_iter().enumerate() {
            let hits = r.hits.get(e).copied().unwrap_or(0) as f64;
            let h = chart_h * hits / max;
            let x = x0 + i as f64 * bar_w;
            let color = if expected {
                COLORS[i % COLORS.len()]
            } else {
                "#b00020"
            };
            let _ = writeln!(
                out,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{color}"><title>{e}: {hits}</title></rect>"#,
                base - h,
                bar_w - 2.0
            );
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{hits}</text>"#,
                x + bar_w / 2.0,
                base - h - 3.0
            );
            let short = e.strip_prefix("pod-").unwrap_or(e);
            let short = if expected {
                short.to_owned()
            } else {
                format!("!{short}")
            };
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="9">{short}</text>"#,
                x + bar_w / 2.0,
                base + 12.0
            );
        }
        let label_x = x0 + (group_w - 30.0) / 2.0;
        let verdict = if r.ok() { "✓" } else { "✗" };
        let p = r
            .chi_square
            .as_ref()
            .map_or(String::new(), |c| format!("p={:.3} ", c.p_value));
        let _ = writeln!(
            out,
            r#"<text x="{label_x:.1}" y="{:.1}" text-anchor="middle" font-weight="bold">{} {verdict}</text>"#,
            base + 30.0,
            r.name
        );
        let _ = writeln!(
            out,
            r#"<text x="{label_x:.1}" y="{:.1}" text-anchor="middle">{p}DNAT on source {}</text>"#,
            base + 45.0,
            mark(r.dnat_on_source)
        );
        let _ = writeln!(
            out,
            r#"<text x="{label_x:.1}" y="{:.1}" text-anchor="middle" font-size="9" fill="dimgray">{}</text>"#,
            base + 59.0,
            r.path
        );
    }
    for (i, line) in LEGEND.iter().enumerate() {
        let _ = writeln!(
            out,
            r#"<text x="{left}" y="{:.1}" font-size="10" fill="dimgray">{}</text>"#,
            base + 80.0 + 16.0 * i as f64,
            line.replace('&', "&amp;").replace('<', "&lt;")
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::chi_square_uniform;

    fn result(hits: &[(&str, usize)], dnat: Option<bool>) -> ServiceResult {
        let endpoints: Vec<String> = hits.iter().map(|(n, _)| n.to_string()).collect();
        let counts: Vec<usize> = hits.iter().map(|(_, c)| *c).collect();
        ServiceResult {
            name: "web".into(),
            path: "ClusterIP 10.96.0.10:80 from pod-1-0".into(),
            hits: hits.iter().map(|(n, c)| (n.to_string(), *c)).collect(),
            chi_square: Some(chi_square_uniform(&counts, endpoints.len())),
            endpoints,
            failures: 0,
            dnat_on_source: dnat,
            programmed_ms: Some(250.0),
        }
    }

    #[test]
    fn table_and_svg_show_every_backend_and_verdict() {
        let good = result(
            &[("pod-0-0", 100), ("pod-1-0", 98), ("pod-2-0", 102)],
            Some(true),
        );
        let bad = ServiceResult {
            name: "skewed".into(),
            ..result(&[("pod-0-0", 200), ("pod-1-0", 50)], Some(false))
        };
        assert!(good.ok());
        assert!(!bad.ok());
        let table = text_table("iptables", &[good.clone(), bad.clone()], &[1.5, 2.5]);
        assert!(table.contains("0-0=100"), "{table}");
        assert!(table.contains("mean 2.0 ms"), "{table}");
        assert!(table.contains("250 ms"), "{table}");
        let svg = svg("iptables", &[good, bad]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<rect x=").count(), 5, "one bar per backend");
        assert!(svg.contains("skewed ✗"));
        assert!(
            table.contains("chi² p: "),
            "the columns are explained: {table}"
        );
    }

    #[test]
    fn a_backend_that_should_not_answer_is_shown_by_name() {
        let mut stray = result(&[("pod-0-0", 100), ("pod-1-0", 98)], Some(true));
        stray.hits.insert("pod-2-1".into(), 3);
        assert!(!stray.ok());
        let table = text_table("nftables", std::slice::from_ref(&stray), &[]);
        assert!(table.contains("!2-1=3"), "{table}");
        let svg = svg("nftables", &[stray]);
        assert_eq!(svg.matches("<rect x=").count(), 3);
        assert!(svg.contains(">!2-1<"), "{svg}");
    }
}
