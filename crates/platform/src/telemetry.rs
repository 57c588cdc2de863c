//! Logs and traces: `tracing` with an OpenTelemetry layer, and W3C trace-context propagation.
//!
//! A tracer provider is always installed, so every span has a real trace id that travels in gRPC
//! metadata, in outbox rows and in Kafka headers; spans are *exported* only when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set (OTLP over gRPC).
//!
//! A meter provider is installed too, with the pipeline's instruments ([`crate::metrics`]); with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` set they are exported over OTLP/gRPC every
//! `OTEL_METRIC_EXPORT_INTERVAL` milliseconds (60000 by default, the OpenTelemetry SDK's variable).

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{env_opt, env_or};
use crate::error::{Error, Result};

/// Keeps the tracer and meter providers alive; dropping it flushes pending spans and metrics.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    meters: Option<SdkMeterProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
        if let Some(meters) = self.meters.take() {
            let _ = meters.shutdown();
        }
    }
}

/// The meter provider: the pipeline's instruments, exported over OTLP/gRPC to `otlp_endpoint`.
fn meter_provider(resource: opentelemetry_sdk::Resource, otlp_endpoint: Option<&str>) -> Result<SdkMeterProvider> {
    let mut builder = SdkMeterProvider::builder().with_resource(resource);
    if let Some(endpoint) = otlp_endpoint {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.to_owned())
            .build()
            .map_err(|error| Error::Telemetry(format!("OTEL_EXPORTER_OTLP_ENDPOINT: {error}")))?;
        builder = builder.with_periodic_exporter(exporter);
    }
    Ok(builder.build())
}

/// Installs the global subscriber (log filter from `RUST_LOG`, `LOG_FORMAT=json` for JSON lines),
/// the OpenTelemetry layer and the W3C propagator, exporting spans over OTLP/gRPC when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Calling it twice in one process is harmless: the second
/// call keeps the first subscriber (tests start several services in one process).
pub fn init(service_name: &str) -> Result<TelemetryGuard> {
    init_with_endpoint(service_name, env_opt("OTEL_EXPORTER_OTLP_ENDPOINT").as_deref())
}

/// [`init`] with an explicit OTLP endpoint (`None`: no export).
pub fn init_with_endpoint(service_name: &str, otlp_endpoint: Option<&str>) -> Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name.to_owned())
        .build();
    let meters = meter_provider(resource.clone(), otlp_endpoint)?;
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = otlp_endpoint {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.to_owned())
            .build()
            .map_err(|error| Error::Telemetry(format!("OTEL_EXPORTER_OTLP_ENDPOINT: {error}")))?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    let tracer = provider.tracer(service_name.to_owned());

    let filter = EnvFilter::try_new(env_or("RUST_LOG", "info")).map_err(|error| Error::Config {
        variable: "RUST_LOG".to_owned(),
        reason: error.to_string(),
    })?;
    let format = env_or("LOG_FORMAT", "text");
    let fmt_layer = match format.as_str() {
        "json" => tracing_subscriber::fmt::layer().json().with_current_span(true).boxed(),
        "text" => tracing_subscriber::fmt::layer().with_target(true).boxed(),
        other => {
            return Err(Error::Config {
                variable: "LOG_FORMAT".to_owned(),
                reason: format!("must be text or json, got {other:?}"),
            });
        }
    };
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init()
        .is_ok();
    if installed {
        opentelemetry::global::set_tracer_provider(provider.clone());
        opentelemetry::global::set_meter_provider(meters.clone());
        // The instruments only where something reads them: without an exporter the SDK has no
        // reader and refuses observable instruments with an error per instrument at start-up.
        // The values are recorded in `metrics`' registry either way.
        if otlp_endpoint.is_some() {
            crate::metrics::register(&opentelemetry::metrics::MeterProvider::meter(
                &meters,
                "fintech-platform",
            ));
        }
        Ok(TelemetryGuard {
            provider: Some(provider),
            meters: Some(meters),
        })
    } else {
        // Another subscriber (an earlier init in this process) stays in charge.
        let _ = provider.shutdown();
        let _ = meters.shutdown();
        Ok(TelemetryGuard {
            provider: None,
            meters: None,
        })
    }
}

/// W3C `traceparent` / `tracestate` of a span, for storing with an outbox row or sending on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceHeaders {
    /// `traceparent`, when the span belongs to a sampled or remote trace.
    pub traceparent: Option<String>,
    /// `tracestate`, when not empty.
    pub tracestate: Option<String>,
}

impl TraceHeaders {
    /// The trace context of the current `tracing` span.
    pub fn current() -> Self {
        Self::of_context(&tracing::Span::current().context())
    }

    /// The trace context of an OpenTelemetry context.
    pub fn of_context(context: &opentelemetry::Context) -> Self {
        let mut carrier: HashMap<String, String> = HashMap::new();
        TraceContextPropagator::new().inject_context(context, &mut carrier);
        Self {
            traceparent: carrier.remove("traceparent"),
            tracestate: carrier.remove("tracestate").filter(|state| !state.is_empty()),
        }
    }

    /// The OpenTelemetry context these headers describe (empty when there is no valid
    /// `traceparent`, [`is_valid_traceparent`]).
    pub fn to_context(&self) -> opentelemetry::Context {
        let mut carrier: HashMap<String, String> = HashMap::new();
        match &self.traceparent {
            Some(traceparent) if is_valid_traceparent(traceparent) => {
                carrier.insert("traceparent".to_owned(), traceparent.clone());
            }
            _ => return opentelemetry::Context::new(),
        }
        if let Some(tracestate) = &self.tracestate {
            carrier.insert("tracestate".to_owned(), tracestate.clone());
        }
        TraceContextPropagator::new().extract(&carrier)
    }

    /// The 32-hex-digit trace id of `traceparent`, if any.
    pub fn trace_id(&self) -> Option<&str> {
        trace_id_of(self.traceparent.as_deref()?)
    }
}

/// Whether `traceparent` has the W3C shape: `<version>-<trace id>-<span id>-<flags>` in lower-case
/// hex of 2, 32, 16 and 2 digits, neither id all zeros, version not `ff`, nothing more after
/// version `00`. The propagator alone also takes shorter ids (padding them with zeros), which
/// would continue a trace under an id that is not the caller's.
pub fn is_valid_traceparent(traceparent: &str) -> bool {
    let hex = |part: &str, len: usize| {
        part.len() == len && part.bytes().all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
    };
    let parts: Vec<&str> = traceparent.split('-').collect();
    let [version, trace_id, span_id, flags, rest @ ..] = parts.as_slice() else {
        return false;
    };
    hex(version, 2)
        && *version != "ff"
        && (rest.is_empty() || *version != "00")
        && hex(trace_id, 32)
        && trace_id.bytes().any(|byte| byte != b'0')
        && hex(span_id, 16)
        && span_id.bytes().any(|byte| byte != b'0')
        && hex(flags, 2)
}

/// The trace id field of a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let _version = parts.next()?;
    let trace_id = parts.next()?;
    (trace_id.len() == 32 && trace_id.bytes().all(|byte| byte.is_ascii_hexdigit())).then_some(trace_id)
}

/// Makes `span` a child of the remote context described by `headers` (no-op without one).
pub fn set_remote_parent(span: &tracing::Span, headers: &TraceHeaders) {
    let context = headers.to_context();
    if context.span().span_context().is_valid() {
        let _ = span.set_parent(context);
    }
}

/// The trace id of the current span, as 32 hex digits, when it has a valid one.
pub fn current_trace_id() -> Option<String> {
    let context = tracing::Span::current().context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| span_context.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `trace_headers` fuzz target: a `traceparent` with a 21-digit trace id was
    /// accepted by the propagator (zero-padded), so the span continued a trace nobody sent and
    /// `trace_id_of` disagreed with it.
    #[test]
    fn only_well_formed_traceparents_make_a_parent() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(is_valid_traceparent(valid));
        assert!(is_valid_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"
        ));
        for bad in [
            "00-4bf92f3577b3577b340e6-00f067aa0ba902b7-00",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "",
        ] {
            assert!(!is_valid_traceparent(bad), "{bad}");
            let headers = TraceHeaders {
                traceparent: Some(bad.to_owned()),
                tracestate: None,
            };
            assert!(!headers.to_context().span().span_context().is_valid(), "{bad}");
        }
    }

    #[test]
    fn trace_id_is_read_from_a_traceparent() {
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id_of(traceparent), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(trace_id_of("garbage"), None);
        assert_eq!(trace_id_of("00-xyz-00f067aa0ba902b7-01"), None);
    }

    #[test]
    fn headers_round_trip_through_a_context() {
        let headers = TraceHeaders {
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()),
            tracestate: Some("vendor=value".to_owned()),
        };
        let again = TraceHeaders::of_context(&headers.to_context());
        assert_eq!(again, headers);
    }
}
