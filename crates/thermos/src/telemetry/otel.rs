//! OpenTelemetry traces (the `otel` feature): a `tracing-opentelemetry`
//! layer whose spans are exported in batches to an OTLP/HTTP collector
//! (JSON over reqwest, rustls; no gRPC).
//!
//! Only Thermos's own spans are exported (target `thermos`, info and
//! above): `request` (one per HTTP request, named `{method} {route}`) and
//! `refresh` (one per refresh attempt, named `refresh {provider}`), with the
//! log events inside them as span events. Their fields are the log
//! vocabulary (ids, provider, trigger, codes, statuses), never a token.
//!
//! The batch processor runs on a thread of its own and posts with a
//! blocking client, so exporting never holds up the async runtime; a
//! collector that is down costs dropped spans (the queue is bounded), not
//! requests.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;
use url::Url;

use super::TelemetryError;
use crate::config::TelemetryConfig;

/// The OTLP path of traces under the collector's base URL.
const TRACES_PATH: &str = "v1/traces";
/// Timeout of one export request.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The crate whose spans are exported.
const EXPORTED_TARGET: &str = "thermos";

/// The running exporter; shut it down to send what is still buffered.
#[derive(Debug)]
pub(super) struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Flushes and stops the batch processor. It blocks on its thread, so
    /// it runs on a blocking task.
    pub(super) async fn shutdown(self) {
        let provider = self.provider;
        let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        match done {
            Ok(Ok(())) => tracing::info!("trace exporter flushed and stopped"),
            Ok(Err(e)) => {
                tracing::warn!(error.message = %e, "stopping the trace exporter failed; the last spans may be lost")
            }
            Err(e) => {
                tracing::warn!(error.message = %e, "stopping the trace exporter failed; the last spans may be lost")
            }
        }
    }
}

/// The layer exporting Thermos's spans to `endpoint`, and its exporter.
pub(super) fn layer<S>(endpoint: &Url, config: &TelemetryConfig) -> Result<(impl Layer<S>, Exporter), TelemetryError>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(traces_url(endpoint).as_str())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sample_ratio,
        ))))
        .with_resource(resource)
        .build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(EXPORTED_TARGET))
        .with_threads(false)
        .with_filter(Targets::new().with_target(EXPORTED_TARGET, tracing::Level::INFO));
    Ok((layer, Exporter { provider }))
}

/// `{endpoint}/v1/traces`, keeping any path prefix; an endpoint that
/// already ends in `/v1/traces` is taken as it is.
fn traces_url(endpoint: &Url) -> Url {
    if endpoint.path().trim_end_matches('/').ends_with(TRACES_PATH) {
        return endpoint.clone();
    }
    let mut base = endpoint.clone();
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    // A relative path without a scheme always joins onto an http(s) URL.
    base.join(TRACES_PATH).unwrap_or(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traces(endpoint: &str) -> String {
        traces_url(&Url::parse(endpoint).unwrap()).to_string()
    }

    #[test]
    fn spans_go_to_v1_traces_under_the_collector_base_url() {
        assert_eq!(traces("http://127.0.0.1:4318"), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(
            traces("https://otel.example.com/otlp/"),
            "https://otel.example.com/otlp/v1/traces"
        );
        assert_eq!(
            traces("https://otel.example.com/otlp"),
            "https://otel.example.com/otlp/v1/traces"
        );
        assert_eq!(
            traces("http://collector:4318/v1/traces"),
            "http://collector:4318/v1/traces"
        );
    }
}
