//! Prometheus metrics of the gateway, all under the `ds_gateway_` prefix.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The gateway's metrics and the registry that exports them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Open agent Watch streams.
    pub watch_streams: Gauge,
    /// Events (snapshots, upserts, removals, heartbeats) sent on Watch streams.
    pub watch_events: Counter,
    /// Watch streams ended because the agent fell too far behind.
    pub watch_lagged: Counter,
    /// Requests refused for a missing, wrong, revoked or expired credential.
    pub auth_failures: Counter,
    /// Deployment changes committed (create, update, delete).
    pub deployment_changes: Counter,
    /// Status reports received from agents.
    pub status_reports: Counter,
    /// Hooks running now (at most `--hook-slots`).
    pub hooks_running: Gauge,
    /// Hook runs waiting for a free slot.
    pub hooks_waiting: Gauge,
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ds_gateway");
        let m = Self {
            watch_streams: Gauge::default(),
            watch_events: Counter::default(),
            watch_lagged: Counter::default(),
            auth_failures: Counter::default(),
            deployment_changes: Counter::default(),
            status_reports: Counter::default(),
            hooks_running: Gauge::default(),
            hooks_waiting: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "watch_streams",
            "Open agent Watch streams",
            m.watch_streams.clone(),
        );
        registry.register(
            "watch_events",
            "Events sent on Watch streams",
            m.watch_events.clone(),
        );
        registry.register(
            "watch_lagged",
            "Watch streams ended because the agent fell behind",
            m.watch_lagged.clone(),
        );
        registry.register(
            "auth_failures",
            "Requests refused for a bad, revoked or expired credential",
            m.auth_failures.clone(),
        );
        registry.register(
            "deployment_changes",
            "Deployment creates, updates and deletes committed",
            m.deployment_changes.clone(),
        );
        registry.register(
            "status_reports",
            "Status reports received from agents",
            m.status_reports.clone(),
        );
        registry.register(
            "hooks_running",
            "Deployment hooks running now",
            m.hooks_running.clone(),
        );
        registry.register(
            "hooks_waiting",
            "Deployment hook runs waiting for a free slot",
            m.hooks_waiting.clone(),
        );
        Self { registry, ..m }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
