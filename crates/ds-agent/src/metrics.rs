//! The agent's Prometheus metrics, all under the `ds_agent_` prefix.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label set of per-kind and per-verb families.
pub type Labels = Vec<(String, String)>;

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    /// Reconcile passes run (`ds_agent_reconcile_runs_total`).
    pub reconcile_runs: Counter,
    /// Passes with at least one failed deployment (`ds_agent_reconcile_failures_total`).
    pub reconcile_failures: Counter,
    /// Duration of one pass over all deployments.
    pub reconcile_duration: Histogram,
    /// 1 while a Watch stream to the gateway is open.
    pub gateway_connected: Gauge,
    /// Desired deployments known from the gateway.
    pub desired: Gauge,
    /// Owned objects in the cluster, by kind.
    pub owned: Family<Labels, Gauge>,
    /// Write calls to the API server, by verb and kind.
    pub writes: Family<Labels, Counter>,
    /// 1 while this replica may write (always 1 without `--leader-elect`).
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("ds_agent");
        let m = Self {
            registry: Registry::default(),
            reconcile_runs: Counter::default(),
            reconcile_failures: Counter::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            gateway_connected: Gauge::default(),
            desired: Gauge::default(),
            owned: Family::default(),
            writes: Family::default(),
            leader: Gauge::default(),
        };
        registry.register(
            "reconcile_runs",
            "Reconcile passes run",
            m.reconcile_runs.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Reconcile passes in which a deployment failed",
            m.reconcile_failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile pass",
            m.reconcile_duration.clone(),
        );
        registry.register(
            "gateway_connected",
            "1 while the watch stream to the gateway is open",
            m.gateway_connected.clone(),
        );
        registry.register(
            "desired_deployments",
            "Desired deployments",
            m.desired.clone(),
        );
        registry.register("owned_objects", "Owned objects by kind", m.owned.clone());
        registry.register("writes", "Write calls to the API server", m.writes.clone());
        registry.register(
            "leader",
            "1 while this replica is the writer",
            m.leader.clone(),
        );
        Self {
            registry: root,
            ..m
        }
    }

    /// Counts one write call.
    pub fn write(&self, verb: &str, kind: &str) {
        self.writes
            .get_or_create(&vec![
                ("verb".into(), verb.into()),
                ("kind".into(), kind.into()),
            ])
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix() {
        let m = Metrics::new();
        m.reconcile_runs.inc();
        m.write("apply", "Deployment");
        let text = m.encode();
        assert!(text.contains("ds_agent_reconcile_runs_total 1"), "{text}");
        assert!(text.contains("ds_agent_gateway_connected 0"), "{text}");
        assert!(
            text.contains("ds_agent_writes_total{verb=\"apply\",kind=\"Deployment\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ds_agent_reconcile_duration_seconds_bucket"),
            "{text}"
        );
    }
}
