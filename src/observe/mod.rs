//! What operators see of a running gateway: Prometheus series ([`metrics`]), the audit log
//! of security events ([`audit`]) and the request context both read ([`request`]).
//!
//! One [`Observer`] per gateway is handed to the parts that record (the authorization
//! server, the proxy, the broker, the administration service). A security event is recorded
//! once, through [`Observer::record`], which writes its audit line and counts it, so the
//! audit log and the series never disagree.

pub mod audit;
pub mod metrics;
pub mod request;
pub mod traces;

use std::sync::Arc;

use crate::clock::SharedClock;
use crate::config::Config;
pub use audit::{Event, SignInOutcome};
pub use metrics::Metrics;
use metrics::{BrokerLabels, GrantTypeLabels, LoginLabels, ReasonLabels};
pub use request::RequestContext;

pub struct Observer {
    metrics: Option<Metrics>,
    audit: audit::AuditLog,
    clock: SharedClock,
}

pub type SharedObserver = Arc<Observer>;

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer")
            .field("metrics", &self.metrics.is_some())
            .field("audit", &self.audit)
            .finish()
    }
}

impl Observer {
    /// Counts nothing and writes no audit lines (commands that serve nothing, tests of parts).
    pub fn off() -> SharedObserver {
        Arc::new(Self {
            metrics: None,
            audit: audit::AuditLog::off(),
            clock: Arc::new(crate::clock::SystemClock),
        })
    }

    /// As `[metrics]` and `[audit]` say; fails when the audit file cannot be opened.
    pub fn from_config(config: &Config, clock: SharedClock) -> Result<SharedObserver, String> {
        let audit = match config.audit.destination() {
            Some(d) => audit::AuditLog::open(&d)?,
            None => audit::AuditLog::off(),
        };
        Self::with_audit(config, clock, audit)
    }

    /// For a command that changes something and exits: audit lines written at once, no
    /// series.
    pub fn for_command(config: &Config, clock: SharedClock) -> Result<SharedObserver, String> {
        let audit = match config.audit.destination() {
            Some(d) => audit::AuditLog::open_direct(&d)?,
            None => audit::AuditLog::off(),
        };
        Ok(Arc::new(Self {
            metrics: None,
            audit,
            clock,
        }))
    }

    fn with_audit(
        config: &Config,
        clock: SharedClock,
        audit: audit::AuditLog,
    ) -> Result<SharedObserver, String> {
        Ok(Arc::new(Self {
            metrics: config.metrics.enabled.then(Metrics::new),
            audit,
            clock,
        }))
    }

    /// The series, when metrics are on.
    pub fn metrics(&self) -> Option<&Metrics> {
        self.metrics.as_ref()
    }

    /// Records a security event: its audit line (when the audit log is on) and its count.
    /// `flow` is the grant it belongs to, when there is one.
    pub fn record(&self, event: Event, flow: Option<&str>) {
        if let Some(m) = &self.metrics {
            count(m, &event);
        }
        if self.audit.is_on() {
            let request = RequestContext::current();
            let written =
                self.audit
                    .write(event.to_line(self.clock.now_millis(), request.as_ref(), flow));
            if !written && let Some(m) = &self.metrics {
                m.audit_dropped.inc();
            }
        }
    }

    /// Writes what the audit log has queued (at shutdown).
    pub fn close(&self) {
        self.audit.close();
    }
}

/// The series an event moves.
fn count(m: &Metrics, event: &Event) {
    m.security_events
        .get_or_create(&metrics::ActionLabels {
            action: event.action(),
        })
        .inc();
    match event {
        Event::TokenIssued { grant_type, .. } => {
            m.tokens_issued
                .get_or_create(&GrantTypeLabels { grant_type })
                .inc();
        }
        Event::TokenRefused { error, .. } => {
            m.token_errors
                .get_or_create(&ReasonLabels { reason: error })
                .inc();
        }
        Event::RefreshReuseDetected { .. } => {
            m.refresh_reuse.inc();
        }
        Event::SignIn {
            source, outcome, ..
        } => {
            m.logins
                .get_or_create(&LoginLabels {
                    source: source.clone(),
                    outcome: outcome.as_str(),
                })
                .inc();
        }
        Event::Upstream {
            action, upstream, ..
        } => {
            let outcome = match *action {
                "upstream_refreshed" => "refreshed",
                "upstream_refresh_failed" => "failed",
                _ => return,
            };
            m.upstream_refreshes
                .get_or_create(&BrokerLabels {
                    upstream: upstream.clone(),
                    outcome,
                })
                .inc();
        }
        _ => {}
    }
}
