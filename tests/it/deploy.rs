//! The shipped monitoring files name only metrics TARS exports: every `tars_*` series in
//! the alert rules and the Grafana dashboard is one the metrics registry defines
//! (histograms through their `_bucket`, `_sum` and `_count` series), so a renamed metric
//! cannot leave an alert or a panel silently empty. (`make test-deploy` checks that the
//! queries parse and runs the alerts' unit tests.)

use std::collections::BTreeSet;

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The `tars_…` words of a text.
fn names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("tars_") {
        let word: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + word.len().max(1)..];
        out.insert(word);
    }
    out
}

/// The metric families the registry defines, from the one place they are named.
fn defined() -> BTreeSet<String> {
    let src = std::fs::read_to_string(root().join("common/observability/src/metrics.rs")).unwrap();
    names(&src)
        .into_iter()
        .filter(|n| src.contains(&format!("\"{n}\"")))
        .collect()
}

fn family(series: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| series.strip_suffix(s))
        .unwrap_or(series)
}

#[test]
fn alerts_and_the_dashboard_use_only_metrics_tars_exports() {
    let defined = defined();
    assert!(defined.contains("tars_http_requests_total"), "{defined:?}");
    for file in [
        "deploy/prometheus/alerts.yaml",
        "deploy/prometheus/alerts.test.yaml",
        "deploy/grafana/tars.json",
    ] {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        let used: BTreeSet<String> = names(&text)
            .into_iter()
            // Recording-rule names the dashboard check makes up are not metrics.
            .filter(|n| !n.starts_with("tars_dashboard_"))
            .collect();
        assert!(!used.is_empty(), "{file} names no TARS metric");
        for series in &used {
            assert!(
                defined.contains(family(series)),
                "{file} uses {series}, which TARS does not export"
            );
        }
    }
}
