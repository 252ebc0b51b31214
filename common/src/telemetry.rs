//! Logging and tracing set-up: human text on a terminal, JSON lines for log pipelines, and
//! spans exported over OTLP/gRPC when an endpoint is configured.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written (`--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Flushes and stops the span exporter when dropped; keep it alive for the process' life.
#[must_use = "dropping the guard stops span export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            // Failing to flush spans at exit is not worth more than a log line.
            if let Err(err) = provider.shutdown() {
                eprintln!("telemetry: flushing spans at exit: {err}");
            }
        }
    }
}

/// Installs the global subscriber. `RUST_LOG` overrides `default_level`. With
/// `otlp_endpoint` (e.g. `http://otel-collector:4317`) spans also go to that collector,
/// labelled `service.name = service`. Must run inside a Tokio runtime when exporting.
/// A second call keeps the first subscriber (tests call it more than once).
pub fn init(
    format: LogFormat,
    default_level: &str,
    service: &'static str,
    otlp_endpoint: Option<&str>,
) -> Result<TelemetryGuard, String> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .boxed(),
    };
    let provider = otlp_endpoint
        .map(|endpoint| otlp_provider(endpoint, service))
        .transpose()?;
    let otel = provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer(service)));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init();
    Ok(TelemetryGuard { provider })
}

fn otlp_provider(endpoint: &str, service: &'static str) -> Result<SdkTracerProvider, String> {
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(format!(
            "OTLP endpoint {endpoint:?}: want http://host:4317 or https://host:4317"
        ));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|err| format!("OTLP endpoint {endpoint}: {err}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}
