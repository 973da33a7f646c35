//! OpenTelemetry traces, in builds with the cargo feature `otel`: the span of each request
//! (`request`, with the route, method and status) and the spans inside it go over OTLP/HTTP
//! (protobuf) to `[traces] endpoint`; a request that arrives with a W3C `traceparent` joins
//! its caller's trace. Without the feature, or without an endpoint, nothing here does any
//! work: the subscriber is the plain one, and the request span has only its id.
//!
//! The subscriber is made once the configuration is read (the advice found while reading
//! it is logged when the gateway starts).

#[cfg(feature = "otel")]
mod enabled {
    use std::sync::atomic::{AtomicBool, Ordering};

    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
    use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};
    use tracing_subscriber::Registry;

    use crate::config::TracesConfig;

    /// The layer that makes OpenTelemetry spans, right on the registry.
    pub type TraceLayer = OpenTelemetryLayer<Registry, SdkTracer>;

    /// Whether spans are exported: the `traceparent` of requests is read only then.
    static EXPORTING: AtomicBool = AtomicBool::new(false);

    /// The running exporter; dropping it sends what is buffered (a bounded wait).
    pub struct Exporter(SdkTracerProvider);

    impl Drop for Exporter {
        fn drop(&mut self) {
            EXPORTING.store(false, Ordering::Relaxed);
            if let Err(e) = self
                .0
                .shutdown_with_timeout(std::time::Duration::from_secs(5))
            {
                eprintln!("traces: the last spans could not be sent: {e}");
            }
        }
    }

    /// The layer that turns spans into OpenTelemetry spans, and the exporter behind it; the
    /// layer sits right on the registry (the span extension that sets a parent finds it
    /// only there, not through a reloadable or boxed layer).
    pub fn layer(config: &TracesConfig) -> Result<Option<(TraceLayer, Exporter)>, String> {
        let Some(endpoint) = config.endpoint.as_deref() else {
            return Ok(None);
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .with_timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| format!("traces.endpoint: {e}"))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("mcp-oauth-gateway");
        EXPORTING.store(true, Ordering::Relaxed);
        Ok(Some((
            tracing_opentelemetry::layer().with_tracer(tracer),
            Exporter(provider),
        )))
    }

    /// Makes `span` a child of the trace a `traceparent` header names, when spans are
    /// exported and the sender is `trusted`. A malformed or oversized header is ignored (the
    /// request starts a trace of its own).
    pub fn adopt_parent(span: &tracing::Span, headers: &http::HeaderMap, trusted: bool) {
        if !trusted || !EXPORTING.load(Ordering::Relaxed) {
            return;
        }
        // 55 characters in version 00; room for a later version's few more, no more.
        match headers.get("traceparent") {
            Some(v) if v.len() <= 128 => {}
            _ => return,
        }
        if headers.get("tracestate").is_some_and(|v| v.len() > 512) {
            return;
        }
        let parent =
            TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
        let _ = span.set_parent(parent);
    }
}

#[cfg(feature = "otel")]
pub use enabled::{Exporter, adopt_parent, layer};

/// A request's method as a span names it: the standard ones, anything else `_OTHER`
/// (OpenTelemetry's HTTP conventions; a client's invented method must not become a name).
pub fn method_name(m: &http::Method) -> &'static str {
    use http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}
