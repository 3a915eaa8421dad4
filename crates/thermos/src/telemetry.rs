//! Logs: JSON lines on stdout with `ts`, `level`, `msg`, the fields of the
//! enclosing spans (`request_id`, `connection_id`, …) and the event's own.
//! With the `otel` feature and `[telemetry] otlp_endpoint`, also traces:
//! Thermos's own spans (HTTP requests, refresh attempts) exported in batches
//! over OTLP/HTTP (`otel.rs`).
//!
//! Nothing here redacts: secrets are kept out of logs and spans by their
//! types (`SecretString` prints `[REDACTED]`), and no code puts a token in a
//! log line or a span field. Span fields named `otel.*` steer the exported
//! span (its name, kind, status) and are left out of log lines.

#[cfg(feature = "otel")]
mod otel;

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::TelemetryConfig;

/// Default filter when `RUST_LOG` is not set.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn,hyper=warn,reqwest=warn";

/// Installs the JSON logger writing to `writer` (stdout in production).
/// Returns false if a global logger was already set (tests).
pub fn init<W>(writer: W) -> bool
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    matches!(install(writer, &TelemetryConfig::default()), Ok(Some(_)))
}

/// Installs the JSON logger writing to `writer` and, when `config` names an
/// OTLP endpoint, the trace exporter. `Ok(None)` if a global subscriber was
/// already set (tests); nothing is exported then. Keep the returned
/// [`Telemetry`] and [`Telemetry::shutdown`] it when the process stops, so
/// the last spans are sent.
pub fn install<W>(writer: W, config: &TelemetryConfig) -> Result<Option<Telemetry>, TelemetryError>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let logs = tracing_subscriber::fmt::layer()
        .fmt_fields(JsonFields::new())
        .event_format(JsonLines)
        .with_writer(writer)
        .with_filter(filter);
    #[cfg(feature = "otel")]
    let (traces, exporter) = match &config.otlp_endpoint {
        Some(endpoint) => {
            let (layer, exporter) = otel::layer(endpoint, config)?;
            (Some(layer), Some(exporter))
        }
        None => (None, None),
    };
    #[cfg(not(feature = "otel"))]
    let traces = match &config.otlp_endpoint {
        Some(_) => return Err(TelemetryError::NotBuiltIn),
        None => None::<tracing_subscriber::layer::Identity>,
    };
    if tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .is_err()
    {
        return Ok(None);
    }
    if let Some(endpoint) = &config.otlp_endpoint {
        tracing::info!(
            otlp_endpoint = %endpoint.origin().ascii_serialization(),
            service_name = %config.service_name,
            sample_ratio = config.sample_ratio,
            "exporting traces over OTLP/HTTP"
        );
    }
    Ok(Some(Telemetry {
        #[cfg(feature = "otel")]
        exporter,
    }))
}

/// What [`install`] set up beyond the logger: the trace exporter, if any.
#[derive(Debug)]
#[must_use = "shut it down when the process stops, or the last spans are lost"]
pub struct Telemetry {
    #[cfg(feature = "otel")]
    exporter: Option<otel::Exporter>,
}

impl Telemetry {
    /// Sends the spans still buffered and stops the exporter (bounded by the
    /// export timeout). Spans ended afterwards are dropped.
    pub async fn shutdown(self) {
        #[cfg(feature = "otel")]
        if let Some(exporter) = self.exporter {
            exporter.shutdown().await;
        }
    }
}

/// Why the telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `telemetry.otlp_endpoint` is set in a build without the `otel` feature
    /// (the configuration refuses that first).
    #[error("telemetry.otlp_endpoint is set but this thermos was built without `--features otel`")]
    NotBuiltIn,
    /// The OTLP exporter could not be built.
    #[cfg(feature = "otel")]
    #[error("build the OTLP trace exporter: {0}")]
    Exporter(String),
}

/// The line format: one JSON object per event.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut line = Map::new();
        let ts = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        line.insert("ts".into(), Value::String(ts));
        line.insert(
            "level".into(),
            Value::String(event.metadata().level().as_str().to_ascii_lowercase()),
        );
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>()
                    && let Ok(Value::Object(map)) = serde_json::from_str::<Value>(fields.as_str())
                {
                    line.extend(map.into_iter().filter(|(key, _)| !key.starts_with("otel.")));
                }
            }
        }
        let mut visitor = FieldVisitor(&mut line);
        event.record(&mut visitor);
        line.insert("target".into(), Value::String(event.metadata().target().to_owned()));
        let text = serde_json::to_string(&Value::Object(line)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

struct FieldVisitor<'a>(&'a mut Map<String, Value>);

impl FieldVisitor<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        let name = match field.name() {
            "message" => "msg",
            other => other,
        };
        self.0.insert(name.to_owned(), value);
    }
}

impl Visit for FieldVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(crate::engine::error_chain(value)));
    }
}
