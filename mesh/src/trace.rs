//! Distributed traces: one W3C trace per storefront request, across every
//! hop, exported over OTLP/gRPC.
//!
//! - The edge opens the root span (or continues a storefront's
//!   `traceparent`) and sends the trace on upstream;
//! - `serve` opens each component's server span as a child of the
//!   `traceparent` it receives;
//! - the mesh client sends the current span's `traceparent` on every call
//!   (`client::propagate`), so a gRPC hop nests under its caller;
//! - work done later for a request (settlement) carries the request's
//!   `traceparent` with it and links back to it (`link`).
//!
//! Spans are `tracing` spans with the fields `otel.name`, `otel.kind` and
//! `request_id`; `tracing-opentelemetry` turns those of flashmall's crates
//! into OpenTelemetry spans once `install` ran. Without an endpoint
//! nothing is installed and every function here is cheap and inert.

use std::sync::{Arc, OnceLock};

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter,
};
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// The W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";

/// The answer's header naming the request's trace (W3C Trace Context
/// Level 2), set by the edge.
pub const TRACERESPONSE: &str = "traceresponse";

/// The standard OpenTelemetry variables, read when the config leaves the
/// endpoint or the service name empty.
pub const OTEL_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const OTEL_SERVICE_NAME_ENV: &str = "OTEL_SERVICE_NAME";

/// Where and how spans are exported.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// OTLP/gRPC endpoint, e.g. `http://127.0.0.1:4317`.
    pub endpoint: String,
    /// `service.name` of every span this process exports.
    pub service_name: String,
    /// Share of new traces kept, 0.0..=1.0; a trace the caller started
    /// keeps the caller's decision (the `sampled` flag of its
    /// `traceparent`).
    pub sample_ratio: f64,
}

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The layer that turns flashmall's spans into OpenTelemetry spans and
/// exports them; installs the process-wide provider on first call (later
/// calls, several components in one process, return `None`: one exporter
/// per process). Must be called inside a Tokio runtime.
pub fn layer<S>(settings: &TraceSettings) -> Result<Option<impl Layer<S> + use<S>>, String>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    if PROVIDER.get().is_some() {
        return Ok(None);
    }
    if !(0.0..=1.0).contains(&settings.sample_ratio) {
        return Err(format!(
            "log.trace_sample_ratio must be within 0.0..=1.0, not {}",
            settings.sample_ratio
        ));
    }
    if !settings.endpoint.starts_with("http://") {
        return Err(format!(
            "the OTLP endpoint must be an http:// URL of an OTLP/gRPC receiver \
             (e.g. http://otel-collector:4317), not {:?}",
            settings.endpoint
        ));
    }
    let runtime = export_runtime()?;
    let exporter = {
        // tonic's channel spawns its connection task on the runtime it is
        // built in: the export runtime, which outlives every request.
        let _entered = runtime.enter();
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(settings.endpoint.clone())
            .with_timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|e| format!("log.otlp_endpoint {:?}: {e}", settings.endpoint))?
    };
    let provider = SdkTracerProvider::builder()
        .with_span_processor(
            BatchSpanProcessor::builder(OnExportRuntime {
                inner: Arc::new(exporter),
                runtime: runtime.handle().clone(),
            })
            .build(),
        )
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            settings.sample_ratio,
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name(settings.service_name.clone())
                .build(),
        )
        .build();
    let tracer = provider.tracer("flashmall");
    if PROVIDER.set(provider).is_err() {
        return Ok(None);
    }
    let only_flashmall = tracing_subscriber::filter::filter_fn(|meta| {
        meta.target().starts_with("flashmall")
            && (meta.is_span() || *meta.level() <= tracing::Level::WARN)
            && *meta.level() <= tracing::Level::INFO
    });
    Ok(Some(
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_filter(only_flashmall),
    ))
}

/// Exports every finished span now (a test reading its traces back, a
/// process about to exit). A no-op without an exporter.
pub fn flush() -> Result<(), String> {
    match PROVIDER.get() {
        Some(provider) => provider
            .force_flush()
            .map_err(|e| format!("exporting spans: {e}")),
        None => Ok(()),
    }
}

/// Whether spans are exported in this process.
pub fn enabled() -> bool {
    PROVIDER.get().is_some()
}

/// The batch processor exports from a thread of its own, without a Tokio
/// runtime, while tonic needs one: every export runs on this runtime
/// (one worker, never dropped: dropping a runtime inside another panics).
fn export_runtime() -> Result<&'static tokio::runtime::Runtime, String> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the span export runtime: {e}"))?;
    Ok(RUNTIME.get_or_init(|| runtime))
}

#[derive(Debug)]
struct OnExportRuntime {
    inner: Arc<opentelemetry_otlp::SpanExporter>,
    runtime: tokio::runtime::Handle,
}

impl SpanExporter for OnExportRuntime {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let inner = Arc::clone(&self.inner);
        self.runtime
            .spawn(async move { inner.export(batch).await })
            .await
            .map_err(|e| OTelSdkError::InternalFailure(format!("span export task: {e}")))?
    }

    fn set_resource(&mut self, resource: &Resource) {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

/// Makes `span` a child of the trace in `headers`' `traceparent`, if any
/// and valid; a span without one starts a trace of its own.
pub fn continue_from(span: &tracing::Span, headers: &HeaderMap) {
    if !enabled() {
        return;
    }
    let Some(value) = headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()) else {
        return;
    };
    if let Some(parent) = parse(value) {
        let _ = span.set_parent(Context::new().with_remote_span_context(parent));
    }
}

/// The `traceparent` value naming `span` as the parent of a call.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let cx = span.context();
    let parent = cx.span();
    let context = parent.span_context();
    context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            context.trace_id(),
            context.span_id(),
            context.trace_flags().to_u8()
        )
    })
}

/// Sets `traceparent` in `headers` to name the current span as the parent.
pub fn inject_current(headers: &mut HeaderMap) {
    if let Some(value) =
        traceparent(&tracing::Span::current()).and_then(|v| HeaderValue::from_str(&v).ok())
    {
        headers.insert(HeaderName::from_static(TRACEPARENT), value);
    }
}

/// Links `span` to the trace a `traceparent` value names: work done for a
/// request after it was answered (a settlement batch serves many
/// requests, so it cannot be a child of each).
pub fn link(span: &tracing::Span, traceparent: &str, key: &'static str, value: String) {
    if let Some(context) = parse(traceparent) {
        span.add_link_with_attributes(context, vec![KeyValue::new(key, value)]);
    }
}

/// The span context a `traceparent` value names, if well-formed (W3C
/// Trace Context: `version-trace_id-parent_id-flags`, lowercase hex of 2,
/// 32, 16 and 2 digits, version not `ff`, ids not all zero).
pub fn parse(traceparent: &str) -> Option<SpanContext> {
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let mut parts = traceparent.split('-');
    let (version, trace_id, parent_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    // Version 00 has exactly four fields; later versions may add more.
    let well_formed = hex(version, 2)
        && version != "ff"
        && (version != "00" || parts.next().is_none())
        && hex(trace_id, 32)
        && hex(parent_id, 16)
        && hex(flags, 2);
    if !well_formed {
        return None;
    }
    let context = SpanContext::new(
        TraceId::from_hex(trace_id).ok()?,
        SpanId::from_hex(parent_id).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_names_its_trace_and_parent() {
        let context = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(
            context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(context.span_id().to_string(), "00f067aa0ba902b7");
        assert!(context.is_sampled());
    }

    #[test]
    fn malformed_traceparents_name_nothing() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(parse(bad).is_none(), "{bad:?} accepted");
        }
    }
}
