//! The gateway's Prometheus series. One [`Metrics`] per gateway, handed to the parts that
//! count (injected, never global: two gateways in one process keep their own figures).
//!
//! Labels name routes, upstreams, login sources, grant types and reasons — never a user, a
//! client id or anything a stranger chooses, so the number of series stays bounded.
//! Figures that already live elsewhere (cache hit counts, pool sizes, connection states)
//! are read at scrape time by [`Metrics::read_at_scrape`] collectors instead of being copied.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Every series' name starts with this.
pub const PREFIX: &str = "mcp_gateway";

/// Latency buckets, in seconds: 0.5 ms to 30 s.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteOnly {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamStatus {
    pub upstream: Arc<str>,
    /// The upstream's status class (`2xx`, `4xx`, …) or `error` when none came.
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrantTypeLabels {
    pub grant_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoginLabels {
    pub source: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BrokerLabels {
    pub upstream: String,
    pub outcome: &'static str,
}

/// The counters and histograms the request paths write.
pub struct Metrics {
    registry: std::sync::Mutex<Registry>,
    /// Every family registered, with its kind (a family shows in the exposition only once
    /// it has a sample).
    families: Vec<(String, &'static str)>,
    pub http_requests: Family<RouteLabels, Counter>,
    pub http_duration: HistogramFamily<RouteOnly>,
    pub proxy_duration: HistogramFamily<UpstreamLabels>,
    pub proxy_responses: Family<UpstreamStatus, Counter>,
    pub proxy_in_flight: Family<UpstreamLabels, Gauge>,
    pub sse_streams: Family<UpstreamLabels, Gauge>,
    pub tokens_issued: Family<GrantTypeLabels, Counter>,
    pub token_errors: Family<ReasonLabels, Counter>,
    pub refresh_reuse: Counter,
    pub denials: Family<ReasonLabels, Counter>,
    pub logins: Family<LoginLabels, Counter>,
    pub store_duration: HistogramFamily<OperationLabels>,
    pub store_errors: Family<OperationLabels, Counter>,
    pub upstream_refreshes: Family<BrokerLabels, Counter>,
    pub security_events: Family<ActionLabels, Counter>,
    pub audit_dropped: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn name(s: &str) -> String {
    format!("{PREFIX}_{s}")
}

fn reg(
    r: &mut Registry,
    families: &mut Vec<(String, &'static str)>,
    n: &str,
    help: &str,
    metric: impl prometheus_client::registry::Metric,
    kind: &'static str,
) {
    r.register(name(n), help, metric);
    families.push((name(n), kind));
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let mut families = Vec::new();
        let http_requests = Family::<RouteLabels, Counter>::default();
        reg(
            &mut r,
            &mut families,
            "http_requests",
            "HTTP requests answered, by route (the path pattern) and status",
            http_requests.clone(),
            "counter",
        );
        let http_duration = HistogramFamily::<RouteOnly>::new_with_constructor(latency_histogram);
        reg(
            &mut r,
            &mut families,
            "http_request_duration_seconds",
            "Time to the response's headers, by route",
            http_duration.clone(),
            "histogram",
        );
        let proxy_duration =
            HistogramFamily::<UpstreamLabels>::new_with_constructor(latency_histogram);
        reg(
            &mut r,
            &mut families,
            "proxy_upstream_duration_seconds",
            "Time from sending a request upstream to its response's headers, by upstream",
            proxy_duration.clone(),
            "histogram",
        );
        let proxy_responses = Family::<UpstreamStatus, Counter>::default();
        reg(
            &mut r,
            &mut families,
            "proxy_upstream_responses",
            "Upstream answers by status class (`error`: none came)",
            proxy_responses.clone(),
            "counter",
        );
        let proxy_in_flight = Family::<UpstreamLabels, Gauge>::default();
        reg(
            &mut r,
            &mut families,
            "proxy_in_flight_requests",
            "Requests being forwarded to each upstream now",
            proxy_in_flight.clone(),
            "gauge",
        );
        let sse_streams = Family::<UpstreamLabels, Gauge>::default();
        reg(
            &mut r,
            &mut families,
            "proxy_open_sse_streams",
            "Server-sent event streams open to clients, by upstream",
            sse_streams.clone(),
            "gauge",
        );
        let tokens_issued = Family::<GrantTypeLabels, Counter>::default();
        reg(
            &mut r,
            &mut families,
            "tokens_issued",
            "Access tokens issued, by grant type",
            tokens_issued.clone(),
            "counter",
        );
        let token_errors = Family::<ReasonLabels, Counter>::default();
        reg(
            &mut r,
            &mut families,
            "token_errors",
            "Token endpoint refusals, by OAuth error code",
            token_errors.clone(),
            "counter",
        );
        let refresh_reuse = Counter::default();
        reg(
            &mut r,
            &mut families,
            "refresh_token_reuse_detected",
            "Refresh tokens presented again after rotation (their grants were revoked)",
            refresh_reuse.clone(),
            "counter",
        );
        let denials = Family::<ReasonLabels, Counter>::default();
        reg(
            &mut r,
            &mut families,
            "denials",
            "Requests to protected resources refused, by reason",
            denials.clone(),
            "counter",
        );
        let logins = Family::<LoginLabels, Counter>::default();
        reg(
            &mut r,
            &mut families,
            "logins",
            "Sign-in attempts, by login source and outcome",
            logins.clone(),
            "counter",
        );
        let store_duration =
            HistogramFamily::<OperationLabels>::new_with_constructor(latency_histogram);
        reg(
            &mut r,
            &mut families,
            "store_operation_duration_seconds",
            "Store operations timed on the request paths, by operation",
            store_duration.clone(),
            "histogram",
        );
        let store_errors = Family::<OperationLabels, Counter>::default();
        reg(
            &mut r,
            &mut families,
            "store_errors",
            "Store operations that failed, by where they failed",
            store_errors.clone(),
            "counter",
        );
        let upstream_refreshes = Family::<BrokerLabels, Counter>::default();
        reg(
            &mut r,
            &mut families,
            "upstream_token_refreshes",
            "Refreshes of people's upstream OAuth tokens, by upstream and outcome",
            upstream_refreshes.clone(),
            "counter",
        );
        let security_events = Family::<ActionLabels, Counter>::default();
        reg(
            &mut r,
            &mut families,
            "security_events",
            "Security events (the audit log's records), by action",
            security_events.clone(),
            "counter",
        );
        let audit_dropped = Counter::default();
        reg(
            &mut r,
            &mut families,
            "audit_dropped",
            "Audit records dropped because the destination could not keep up",
            audit_dropped.clone(),
            "counter",
        );
        for (n, k) in [
            ("cache_requests", "counter"),
            ("database_pools_open", "gauge"),
            ("database_connections_open", "gauge"),
            ("upstream_connections", "gauge"),
        ] {
            families.push((name(n), k));
        }
        Self {
            families,
            registry: std::sync::Mutex::new(r),
            http_requests,
            http_duration,
            proxy_duration,
            proxy_responses,
            proxy_in_flight,
            sse_streams,
            tokens_issued,
            token_errors,
            refresh_reuse,
            denials,
            logins,
            store_duration,
            store_errors,
            upstream_refreshes,
            security_events,
            audit_dropped,
        }
    }

    /// The sample names the exposition can hold: a counter's `_total`, a histogram's
    /// `_bucket`, `_sum` and `_count`, a gauge's own name.
    pub fn series_names(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (n, kind) in &self.families {
            match *kind {
                "counter" => out.push(format!("{n}_total")),
                "histogram" => {
                    for s in ["_bucket", "_sum", "_count"] {
                        out.push(format!("{n}{s}"));
                    }
                }
                _ => out.push(n.clone()),
            }
        }
        out
    }

    /// Adds series read when scraped (figures kept elsewhere: caches, pools, states).
    pub fn read_at_scrape(&self, collector: impl Collector) {
        if let Ok(mut r) = self.registry.lock() {
            r.register_collector(Box::new(collector));
        }
    }

    /// The text exposition (OpenMetrics 1.0, which Prometheus reads).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(r) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        }
        out
    }

    pub fn store_timed(&self, operation: &'static str, took: Duration, ok: bool) {
        let l = OperationLabels { operation };
        self.store_duration
            .get_or_create(&l)
            .observe(took.as_secs_f64());
        if !ok {
            self.store_errors.get_or_create(&l).inc();
        }
    }

    pub fn denied(&self, reason: &'static str) {
        self.denials.get_or_create(&ReasonLabels { reason }).inc();
    }
}

/// One upstream's series, looked up once (at start) instead of on every request.
#[derive(Debug, Clone)]
pub struct UpstreamMeters {
    pub in_flight: Gauge,
    pub sse: Gauge,
    pub duration: Histogram,
    /// `1xx`…`5xx`, then `error`.
    pub responses: [Counter; 6],
}

impl Metrics {
    pub fn upstream(&self, name: &str) -> UpstreamMeters {
        let u = UpstreamLabels {
            upstream: name.into(),
        };
        let class = |status: &'static str| {
            self.proxy_responses
                .get_or_create(&UpstreamStatus {
                    upstream: u.upstream.clone(),
                    status,
                })
                .clone()
        };
        UpstreamMeters {
            in_flight: self.proxy_in_flight.get_or_create(&u).clone(),
            sse: self.sse_streams.get_or_create(&u).clone(),
            duration: self.proxy_duration.get_or_create(&u).clone(),
            responses: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
                class("error"),
            ],
        }
    }
}

/// The content type of [`Metrics::encode`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Hits and misses of one cache, counted where it is read.
#[derive(Debug, Default)]
pub struct CacheStats {
    hits: std::sync::atomic::AtomicU64,
    misses: std::sync::atomic::AtomicU64,
}

impl CacheStats {
    pub fn hit(&self) {
        self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    pub fn miss(&self) {
        self.misses
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    pub fn counts(&self) -> (u64, u64) {
        (
            self.hits.load(std::sync::atomic::Ordering::Relaxed),
            self.misses.load(std::sync::atomic::Ordering::Relaxed),
        )
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    cache: &'static str,
    result: &'static str,
}

/// `mcp_gateway_cache_requests_total{cache, result}` from the caches' own counts.
#[derive(Debug, Default)]
pub struct CacheCollector(pub Vec<(&'static str, Arc<CacheStats>)>);

impl Collector for CacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let n = name("cache_requests");
        let mut family = encoder.encode_descriptor(
            &n,
            "Cache reads, by cache and whether they hit",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (cache, stats) in &self.0 {
            let (hits, misses) = stats.counts();
            for (result, v) in [("hit", hits), ("miss", misses)] {
                let labels = CacheLabels { cache, result };
                ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// One sample of a [`GaugeCollector`]: its labels and value.
pub type LabelledValue = (Vec<(&'static str, String)>, i64);

/// A gauge family read at scrape time: a name, its help, and a function that lists
/// (labels, value).
pub struct GaugeCollector {
    pub name: &'static str,
    pub help: &'static str,
    pub read: Box<dyn Fn() -> Vec<LabelledValue> + Send + Sync>,
}

impl std::fmt::Debug for GaugeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GaugeCollector")
            .field("name", &self.name)
            .finish()
    }
}

impl Collector for GaugeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let n = name(self.name);
        let mut family = encoder.encode_descriptor(
            &n,
            self.help,
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (labels, v) in (self.read)() {
            ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_prefixed_and_counters_end_in_total() {
        let m = Metrics::new();
        m.tokens_issued
            .get_or_create(&GrantTypeLabels {
                grant_type: "authorization_code",
            })
            .inc();
        m.denied("invalid_token");
        let stats = Arc::new(CacheStats::default());
        stats.hit();
        stats.miss();
        stats.hit();
        m.read_at_scrape(CacheCollector(vec![("tokens", stats)]));
        m.read_at_scrape(GaugeCollector {
            name: "pools_open",
            help: "open pools",
            read: Box::new(|| vec![(vec![("source", "shop".to_string())], 3)]),
        });
        let text = m.encode();
        assert!(
            text.contains("mcp_gateway_tokens_issued_total{grant_type=\"authorization_code\"} 1"),
            "{text}"
        );
        assert!(text.contains("mcp_gateway_denials_total{reason=\"invalid_token\"} 1"));
        assert!(
            text.contains("mcp_gateway_cache_requests_total{cache=\"tokens\",result=\"hit\"} 2")
        );
        assert!(
            text.contains("mcp_gateway_pools_open{source=\"shop\"} 3"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
