//! The `[telemetry]` rules: an OTLP endpoint only where the binary can
//! export (the `otel` feature), a service name, a sample ratio in [0, 1].
//!
//! The endpoint is never echoed in a problem: it may carry credentials.

use url::Url;

use super::Checker;
use crate::config::raw::{RawTelemetry, Scalar};
use crate::config::{DEFAULT_SAMPLE_RATIO, DEFAULT_SERVICE_NAME, TelemetryConfig};

/// Whether this binary was built with the `otel` feature.
const OTEL_BUILT_IN: bool = cfg!(feature = "otel");

impl Checker {
    pub(super) fn telemetry(&mut self, raw: &RawTelemetry) -> TelemetryConfig {
        let otlp_endpoint = raw
            .otlp_endpoint
            .as_deref()
            .map(str::trim)
            .filter(|text| !text.is_empty())
            .and_then(|text| self.otlp_endpoint(text));
        let service_name = match raw.service_name.as_deref().map(str::trim) {
            None => DEFAULT_SERVICE_NAME.to_owned(),
            Some("") => {
                self.problem("telemetry.service_name", "is empty");
                DEFAULT_SERVICE_NAME.to_owned()
            }
            Some(name) => name.to_owned(),
        };
        let sample_ratio = self.sample_ratio(raw.sample_ratio.as_ref());
        TelemetryConfig {
            otlp_endpoint,
            service_name,
            sample_ratio,
        }
    }

    fn otlp_endpoint(&mut self, text: &str) -> Option<Url> {
        let key = "telemetry.otlp_endpoint";
        let url = match Url::parse(text) {
            Ok(url)
                if matches!(url.scheme(), "http" | "https")
                    && url.host().is_some()
                    && url.query().is_none()
                    && url.fragment().is_none() =>
            {
                url
            }
            _ => {
                self.problem(
                    key,
                    "expected the http:// or https:// base URL of an OTLP/HTTP collector, \
                     like http://127.0.0.1:4318 (no query or fragment)",
                );
                return None;
            }
        };
        if !OTEL_BUILT_IN {
            self.problem(
                key,
                "this thermos was built without OpenTelemetry support: build it with \
                 `--features otel` (cargo build --release --features otel), or remove the key",
            );
            return None;
        }
        Some(url)
    }

    /// A share in [0, 1].
    fn sample_ratio(&mut self, raw: Option<&Scalar>) -> f64 {
        let value = match raw {
            None => return DEFAULT_SAMPLE_RATIO,
            Some(Scalar::Int(i)) => Some(*i as f64),
            Some(Scalar::Float(x)) => Some(*x),
            Some(Scalar::Str(text)) => text.trim().parse::<f64>().ok(),
            Some(Scalar::Bool(_)) => None,
        };
        match value {
            Some(x) if (0.0..=1.0).contains(&x) => x,
            _ => {
                let got = raw.map(ToString::to_string).unwrap_or_default();
                self.problem(
                    "telemetry.sample_ratio",
                    format!("expected a share in [0, 1], e.g. 0.25 to keep a quarter of the traces (got {got})"),
                );
                DEFAULT_SAMPLE_RATIO
            }
        }
    }
}
