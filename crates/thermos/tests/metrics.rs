//! `/metrics` after a scripted mix of refreshes, failures and 401 reports:
//! exact counter values, parsed from the Prometheus exposition.
//!
//! The recorder is global to the process, so this binary holds a single
//! test and compares before/after deltas.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{AppOptions, PROVIDER, TestApp, spawn_app_with};
use serde_json::json;
use thermos::metrics as m;
use thermos_testprovider::Fault;

/// One sample: metric name and its labels, sorted.
type Key = (String, BTreeMap<String, String>);

/// Parses the text exposition into samples (comments skipped).
fn parse(text: &str) -> BTreeMap<Key, f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = value.parse().expect("numeric value");
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => (
                name.to_owned(),
                parse_labels(rest.strip_suffix('}').expect("closing brace")),
            ),
        };
        samples.insert((name, labels), value);
    }
    samples
}

/// `k="v",k2="v2"` (values may hold `,`, `{`, `}` and escaped quotes).
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").expect("label key");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => value.push(chars.next().expect("escaped char").1),
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        rest = after[end..].trim_start_matches(',');
    }
    labels
}

struct Scrape {
    text: String,
    samples: BTreeMap<Key, f64>,
}

impl Scrape {
    async fn take(app: &TestApp) -> Self {
        let response = app.http.get(app.url("/metrics")).send().await.expect("scrape");
        assert_eq!(response.status(), 200);
        let text = response.text().await.expect("body");
        let samples = parse(&text);
        Self { text, samples }
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let labels = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        self.samples.get(&(name.to_owned(), labels)).copied().unwrap_or(0.0)
    }
}

fn delta(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.value(name, labels) - before.value(name, labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_exact_counts_after_a_scripted_mix() {
    let app = spawn_app_with(AppOptions {
        manual_clock: true,
        ..Default::default()
    })
    .await;
    let before = Scrape::take(&app).await;

    // 7 connections valid for 10 minutes, 1 that expires in 10 s (refreshed late).
    let connections = app.import_many(7, 600).await;
    let late_grant = app.provider.issue_grant();
    let late = app.import(&late_grant, "late-user", 10).await;

    // First round: two answers are 503s; the other six refresh.
    app.provider.push_faults([Fault::Unavailable, Fault::Unavailable]);
    app.clock().advance(Duration::from_secs(331));
    app.drain().await;
    assert_eq!(app.provider.pending_faults(), 0);
    // Second round: the two failing connections recover after their backoff.
    app.clock().advance(Duration::from_secs(60));
    app.drain().await;
    assert_eq!(app.statuses().await.get("active"), Some(&8));

    // 401 reports on one connection: a stale token (the imported one, long
    // rotated) gets the current one back; the current token gets a refresh.
    let (id, grant) = &connections[0];
    let (status, current) = app.get(&format!("/v1/connections/{id}/token")).await;
    assert_eq!(status, 200, "{current}");
    let report = format!("/v1/connections/{id}/refresh");
    let (status, same) = app.post(&report, json!({"rejected_token": grant.access_token})).await;
    assert_eq!(status, 200, "{same}");
    assert_eq!(same["access_token"], current["access_token"]);
    let (status, renewed) = app
        .post(&report, json!({"rejected_token": current["access_token"]}))
        .await;
    assert_eq!(status, 200, "{renewed}");
    assert_ne!(renewed["access_token"], current["access_token"]);

    let after = Scrape::take(&app).await;
    let d = |name: &str, labels: &[(&str, &str)]| delta(&before, &after, name, labels);
    let provider = (m::LABEL_PROVIDER, PROVIDER);

    // Refresh attempts: 6 + 2 scheduled and 1 forced successes, 2 failures.
    let attempts = |outcome, class| {
        d(
            m::REFRESH_ATTEMPTS_TOTAL,
            &[provider, (m::LABEL_OUTCOME, outcome), (m::LABEL_ERROR_CLASS, class)],
        )
    };
    assert_eq!(
        attempts(m::outcome::SUCCESS, m::outcome::NO_ERROR),
        9.0,
        "{}",
        after.text
    );
    assert_eq!(attempts(m::outcome::FAILED, "server_error"), 2.0, "{}", after.text);
    let all_attempts: f64 = after
        .samples
        .iter()
        .filter(|((name, _), _)| name == m::REFRESH_ATTEMPTS_TOTAL)
        .map(|(key, v)| v - before.samples.get(key).copied().unwrap_or(0.0))
        .sum();
    assert_eq!(all_attempts, 11.0, "no other attempt outcome: {}", after.text);
    assert_eq!(d(&format!("{}_count", m::REFRESH_DURATION_SECONDS), &[provider]), 11.0);
    // Scheduled starts: 8 then 2.
    assert_eq!(d(&format!("{}_count", m::REFRESH_LATENESS_SECONDS), &[]), 10.0);
    // The connection that expired before its refresh.
    assert_eq!(
        d(&format!("{}_count", m::REFRESH_EXPIRED_BEFORE_REFRESH_SECONDS), &[]),
        1.0,
        "late connection {late}"
    );
    // Two connections recovered after failing.
    assert_eq!(d(&format!("{}_count", m::RECOVERY_SECONDS), &[]), 2.0);

    // 401 reports.
    let reports = |outcome| d(m::UNAUTHORIZED_REPORTS_TOTAL, &[provider, (m::LABEL_OUTCOME, outcome)]);
    assert_eq!(reports(m::outcome::CURRENT_RETURNED), 1.0);
    assert_eq!(reports(m::outcome::REFRESHED), 1.0);

    // Tokens served: one GET and two 401 reports; never an expired one.
    assert_eq!(d(m::TOKENS_SERVED_TOTAL, &[provider]), 3.0);
    assert!(
        after.text.contains(m::TOKENS_SERVED_EXPIRED_TOTAL),
        "rendered from the start"
    );
    assert_eq!(after.value(m::TOKENS_SERVED_EXPIRED_TOTAL, &[]), 0.0);

    // Connections by status (refreshed at scrape).
    assert_eq!(
        after.value(m::CONNECTIONS, &[provider, (m::LABEL_STATUS, "active")]),
        8.0
    );

    // HTTP requests by route template, never by raw path.
    let http = |route, method, status| {
        d(
            m::HTTP_REQUESTS_TOTAL,
            &[
                (m::LABEL_ROUTE, route),
                (m::LABEL_METHOD, method),
                (m::LABEL_STATUS, status),
            ],
        )
    };
    assert_eq!(http("/v1/connections/{id}/refresh", "POST", "200"), 2.0);
    assert_eq!(http("/v1/connections/{id}/token", "GET", "200"), 1.0);
    assert_eq!(http("/v1/connections", "POST", "201"), 8.0);
    assert!(after.samples.keys().any(
        |(name, labels)| name == &format!("{}_bucket", m::HTTP_REQUEST_DURATION_SECONDS)
            && labels.get(m::LABEL_ROUTE).map(String::as_str) == Some("/v1/connections/{id}/refresh")
    ));

    // Every histogram renders as a histogram (buckets), not a summary.
    for histogram in m::HISTOGRAMS {
        assert!(
            after.text.contains(&format!("{histogram}_bucket{{")),
            "{histogram} has no buckets:\n{}",
            after.text
        );
        assert!(
            after.text.contains(&format!("# TYPE {histogram} histogram")),
            "{histogram} is not a histogram"
        );
    }

    // No label value is an id or a token.
    let mut secrets: Vec<String> = vec![late_grant.access_token.clone(), late_grant.refresh_token.clone()];
    for (_, grant) in &connections {
        secrets.push(grant.access_token.clone());
        secrets.push(grant.refresh_token.clone());
    }
    for field in [&current, &renewed] {
        secrets.push(field["access_token"].as_str().unwrap().to_owned());
    }
    for (name, labels) in after.samples.keys() {
        for (key, value) in labels {
            assert!(
                !value.contains("con_") && !value.contains("evt_"),
                "{name}: label {key}={value} looks like an id"
            );
            assert!(
                !secrets.iter().any(|s| value.contains(s.as_str())),
                "{name}: label {key} carries a token"
            );
        }
    }
    assert!(!after.text.contains(id.as_str()));

    app.stop().await;
}
