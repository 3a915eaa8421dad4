//! The shipped operations assets refer only to metrics the binary exports:
//! a renamed metric must not silently blank a dashboard panel or an alert.

use std::collections::BTreeSet;

fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("thermos_") {
        let start = i + pos;
        let boundary = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = start
            + text[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(text.len() - start);
        if boundary {
            let name = &text[start..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
            names.insert(base.to_owned());
        }
        i = end;
    }
    names
}

fn deploy_file(path: &str) -> String {
    std::fs::read_to_string(format!("{}/../../deploy/{path}", env!("CARGO_MANIFEST_DIR"))).expect("deploy file")
}

fn assert_only_exported(file: &str, used: &BTreeSet<String>) {
    let exported: BTreeSet<&str> = thermos::metrics::ALL.iter().copied().collect();
    let unknown: Vec<_> = used.iter().filter(|m| !exported.contains(m.as_str())).collect();
    assert!(
        unknown.is_empty(),
        "{file} uses metrics the binary does not export: {unknown:?}"
    );
}

#[test]
fn the_grafana_dashboard_parses_and_uses_only_exported_metrics() {
    let text = deploy_file("grafana/thermos-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8);
    let exprs: String = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap_or_default().to_owned())
        .collect::<Vec<_>>()
        .join("\n");
    let used = metric_names(&exprs);
    assert!(used.len() >= 12, "the dashboard should show most metrics: {used:?}");
    assert_only_exported("the dashboard", &used);
}

#[test]
fn the_prometheus_rules_use_only_exported_metrics() {
    let text = deploy_file("prometheus/thermos-rules.yml");
    let used = metric_names(&text);
    assert!(used.contains("thermos_tokens_served_expired_total") && used.contains("thermos_circuit_open"));
    assert_only_exported("the alert rules", &used);
}
