//! What an alert says: its title, summary and data (`build_alert`, from an
//! episode of the book), and the body posted to the operators' channel
//! ([`render`], Slack or JSON).
//!
//! It never decides whether an alert is due (`book.rs` does) and never puts
//! a token, secret or provider message into one: codes, counts, client ids
//! and times only.
//!
//! Read next: `book.rs`, `../dispatch.rs` (which posts what `render` gives).

use std::collections::HashMap;

use serde_json::{Value, json};
use thermos_store::outbox::{ALERT_KIND, NewEvent};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::AlertSettings;
use super::book::{AFFECTED_KINDS, Cause, ESCALATED, Episode, FAILED, REAUTH, RECOVERED, RECOVERING, Transition};
use crate::config::AlertFormat;

/// Client ids named in one alert at most.
const LISTED_MAX: usize = 5;

/// The most frequent cause (ties: the smallest, for determinism).
fn dominant(causes: &HashMap<Cause, u64>) -> Option<&Cause> {
    causes
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
        .map(|(cause, _)| cause)
}

/// The alert event for `transition` of the episode of provider `key`.
pub(super) fn build_alert(
    key: &Option<String>,
    ep: &Episode,
    transition: Transition,
    now: OffsetDateTime,
    failing_now: u64,
    through_seq: i64,
    settings: &AlertSettings,
) -> NewEvent {
    let signals = ep.signals();
    let severity = match transition {
        Transition::AllClear | Transition::Transient => "resolved",
        _ if signals.iter().any(|s| s.is_critical()) => "critical",
        _ => "warning",
    };
    let cause = dominant(&ep.causes).or_else(|| dominant(&ep.reauth_causes));
    let text = Text {
        key,
        ep,
        now,
        cause,
        settings,
    };
    let (title, summary) = match transition {
        Transition::Trouble | Transition::Notice => (text.headline(), text.trouble()),
        Transition::Escalation => (format!("{} (escalated)", text.headline()), text.trouble()),
        Transition::AllClear => (format!("{}: all clear", text.name()), text.all_clear()),
        Transition::Transient => (
            format!("{}: transient failures, recovered", text.name()),
            text.transient(),
        ),
    };
    let mut by_kind = serde_json::Map::new();
    for kind in [FAILED, ESCALATED, RECOVERING, REAUTH, RECOVERED] {
        by_kind.insert(kind.into(), json!(ep.count(kind)));
    }
    let ended = transition.ends_episode().then(|| rfc3339(now));
    let data = json!({
        "severity": severity,
        "title": title,
        "summary": summary,
        "alert": transition.as_str(),
        "provider": key,
        "connections_affected": ep.distinct(&AFFECTED_KINDS),
        "by_kind": by_kind,
        "cause": cause.map(|c| json!({"error_code": c.code, "http_status": c.http_status})),
        "since": rfc3339(ep.since),
        "until": ended,
        "circuit": if ep.circuits.is_empty() { "closed" } else { "open" },
        "clients": {
            "circuit_open": ep.circuits.keys().take(LISTED_MAX).collect::<Vec<_>>(),
            "invalid": ep.invalid_clients.keys().take(LISTED_MAX).collect::<Vec<_>>(),
        },
        "failing_now": failing_now,
        "runs_failed": ep.runs_failed,
        "signals": signals.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        "through_seq": through_seq,
        "window_seconds": settings.window.as_secs(),
    });
    NewEvent {
        id: format!("evt_{}", uuid::Uuid::now_v7().simple()),
        kind: ALERT_KIND.to_owned(),
        project: None,
        connection_id: None,
        provider: key.clone(),
        data,
        at: now,
    }
}

/// The words of one alert.
struct Text<'a> {
    key: &'a Option<String>,
    ep: &'a Episode,
    now: OffsetDateTime,
    cause: Option<&'a Cause>,
    settings: &'a AlertSettings,
}

impl Text<'_> {
    fn name(&self) -> &str {
        self.key.as_deref().unwrap_or("thermos")
    }

    fn failing(&self) -> usize {
        self.ep.distinct(&[FAILED, ESCALATED, RECOVERING])
    }

    fn headline(&self) -> String {
        let ep = self.ep;
        let what = if !ep.invalid_clients.is_empty() {
            "app misconfigured, the provider rejects its client".to_owned()
        } else if self.failing() > 0 {
            let open = if ep.circuits.is_empty() { "" } else { ", circuit open" };
            format!("{} failing{open}", connections(self.failing()))
        } else if !ep.circuits.is_empty() {
            "provider failing, circuit open".to_owned()
        } else if ep.count(REAUTH) > 0 {
            format!("{} need reauthorization", connections(ep.count(REAUTH)))
        } else {
            plural(ep.runs_failed, "refresh run failed", "refresh runs failed")
        };
        format!("{}: {what}", self.name())
    }

    fn cause_text(&self) -> String {
        self.cause.map_or_else(String::new, |c| match c.http_status {
            Some(status) => format!(", cause {} (HTTP {status})", c.code),
            None => format!(", cause {}", c.code),
        })
    }

    fn trouble(&self) -> String {
        let ep = self.ep;
        let (name, since, cause) = (self.name(), clock_time(ep.since, self.now), self.cause_text());
        let reauth = ep.count(REAUTH);
        let mut parts = vec![if self.failing() > 0 {
            format!(
                "{} of `{name}` failing since {since}{cause}",
                connections(self.failing())
            )
        } else if !ep.circuits.is_empty() || !ep.invalid_clients.is_empty() {
            format!("`{name}` failing since {since}{cause}")
        } else if reauth > 0 {
            format!(
                "{} of `{name}` need reauthorization since {since}{cause}",
                connections(reauth)
            )
        } else {
            format!(
                "{} since {since}",
                plural(ep.runs_failed, "refresh run failed", "refresh runs failed")
            )
        }];
        if ep.count(ESCALATED) > 0 {
            let n = ep.count(ESCALATED);
            let after = self.settings.escalate_after;
            parts.push(format!("{n} reached {after} consecutive failures"));
        }
        if ep.count(RECOVERING) > 0 {
            parts.push(format!("{} in active recovery", ep.count(RECOVERING)));
        }
        if !ep.circuits.is_empty() {
            parts.push("circuit open".to_owned());
        }
        for (client, code) in ep.invalid_clients.iter().take(LISTED_MAX) {
            parts.push(format!(
                "client `{client}` rejected ({code}): fix the app's credentials, then reload (SIGHUP)"
            ));
        }
        if reauth > 0 && (self.failing() > 0 || !ep.circuits.is_empty()) {
            parts.push(format!("{reauth} need reauthorization (users must reconnect)"));
        }
        if ep.runs_failed > 0 && (self.failing() > 0 || reauth > 0 || !ep.circuits.is_empty()) {
            parts.push(plural(ep.runs_failed, "refresh run failed", "refresh runs failed"));
        }
        parts.join("; ")
    }

    fn all_clear(&self) -> String {
        let ep = self.ep;
        let mut text = format!(
            "`{}` is healthy again after failures since {} ({})",
            self.name(),
            clock_time(ep.since, self.now),
            span(self.now - ep.since)
        );
        if ep.count(RECOVERED) > 0 {
            text.push_str(&format!(": {} refreshed again", connections(ep.count(RECOVERED))));
        }
        text.push_str("; circuit closed");
        if ep.count(REAUTH) > 0 {
            let n = connections(ep.count(REAUTH));
            text.push_str(&format!(
                "; {n} lost their grant and need reauthorization (users must reconnect)"
            ));
        }
        text
    }

    fn transient(&self) -> String {
        let ep = self.ep;
        let mut text = format!(
            "{} of `{}` failed between {} and {}{}, and recovered",
            connections(self.failing()),
            self.name(),
            clock_time(ep.since, self.now),
            clock_time(self.now, self.now),
            self.cause_text()
        );
        if ep.count(REAUTH) > 0 {
            text.push_str(&format!(
                "; {} need reauthorization (users must reconnect)",
                ep.count(REAUTH)
            ));
        }
        text
    }
}

fn connections(n: usize) -> String {
    plural(n as u64, "connection", "connections")
}

fn plural(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

fn rfc3339(at: OffsetDateTime) -> String {
    // An OffsetDateTime in years 0..=9999 always formats; UTC event times are.
    at.format(&Rfc3339).unwrap_or_default()
}

/// `10:02 UTC`, with the date when it is not `now`'s day.
fn clock_time(at: OffsetDateTime, now: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    if at.date() == now.to_offset(time::UtcOffset::UTC).date() {
        format!("{:02}:{:02} UTC", at.hour(), at.minute())
    } else {
        format!("{} {:02}:{:02} UTC", at.date(), at.hour(), at.minute())
    }
}

/// `45 s`, `38 min`, `2 h 5 min`.
fn span(d: time::Duration) -> String {
    let secs = d.whole_seconds().max(0);
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        _ => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
    }
}

/// The body posted to the operators' webhook for an alert event: a Slack
/// incoming-webhook message (`text` + Block Kit `blocks`) or the generic
/// JSON shape `{type: "thermos.alert", id, at, severity, title, summary,
/// provider, data}`.
pub fn render(event: &NewEvent, format: AlertFormat) -> Value {
    let data = &event.data;
    let severity = data["severity"].as_str().unwrap_or("warning");
    let title = data["title"].as_str().unwrap_or(&event.kind);
    let summary = data["summary"].as_str().unwrap_or_default();
    match format {
        AlertFormat::Json => json!({
            "type": "thermos.alert",
            "id": event.id,
            "at": rfc3339(event.at),
            "severity": severity,
            "title": title,
            "summary": summary,
            "provider": event.provider,
            "data": data,
        }),
        AlertFormat::Slack => {
            let emoji = match severity {
                "critical" => ":rotating_light:",
                "resolved" => ":white_check_mark:",
                _ => ":warning:",
            };
            let mut context = format!("severity *{severity}*");
            if let Some(provider) = &event.provider {
                context.push_str(&format!(" · provider `{}`", slack_escape(provider)));
            }
            context.push_str(&format!(" · {} · `{}`", rfc3339(event.at), event.id));
            json!({
                "text": format!("{emoji} {} — {}", slack_escape(title), slack_escape(summary)),
                "blocks": [
                    {"type": "header", "text": {"type": "plain_text", "text": cut(&format!("{emoji} {title}"), 150), "emoji": true}},
                    {"type": "section", "text": {"type": "mrkdwn", "text": cut(&slack_escape(summary), 3000)}},
                    {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
                ],
            })
        }
    }
}

/// Slack's mrkdwn control characters.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// At most `max` characters (Slack's block limits).
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max - 1).collect();
    out.push('…');
    out
}
