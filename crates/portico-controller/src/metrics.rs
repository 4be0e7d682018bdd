//! The controller's Prometheus metrics (prometheus-client), registered under `portico_controller_`.

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::LeaseValidity;

/// A gauge that reads 0 whenever this replica's lease is not valid at the moment of the
/// scrape: a leader frozen (SIGSTOP) past its renew deadline reports 0 from its first scrape
/// after waking, before its loop has noticed and stepped down.
#[derive(Clone, Debug)]
pub struct WhileLeaseValid {
    gauge: Gauge,
    lease: LeaseValidity,
}

impl WhileLeaseValid {
    fn new(lease: LeaseValidity) -> Self {
        Self {
            gauge: Gauge::default(),
            lease,
        }
    }

    pub fn set(&self, value: i64) {
        self.gauge.set(value);
    }
}

impl TypedMetric for WhileLeaseValid {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for WhileLeaseValid {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let value = if self.lease.is_valid() {
            self.gauge.get()
        } else {
            0
        };
        ConstGauge::new(value).encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `delta` or `resync`.
    pub kind: String,
}

/// Every metric of the controller. Cloning shares the same series.
#[derive(Clone)]
pub struct Metrics {
    pub is_leader: WhileLeaseValid,
    pub epoch: WhileLeaseValid,
    pub lease_transitions: Counter,
    pub renew_failures: Counter,
    pub reconciles: Counter,
    pub reconcile_errors: Counter,
    pub proposals: Family<KindLabel, Counter>,
    pub proposal_errors: Counter,
    pub commit_latency: Histogram,
    pub invalid_ingresses: Family<ReasonLabel, Gauge>,
    pub status_writes: Counter,
    pub status_write_errors: Counter,
    pub events_emitted: Counter,
}

impl Metrics {
    /// `lease`: leadership gauges read 0 whenever it is not valid.
    pub fn new(registry: &mut Registry, lease: LeaseValidity) -> Self {
        let metrics = Self {
            is_leader: WhileLeaseValid::new(lease.clone()),
            epoch: WhileLeaseValid::new(lease),
            lease_transitions: Counter::default(),
            renew_failures: Counter::default(),
            reconciles: Counter::default(),
            reconcile_errors: Counter::default(),
            proposals: Family::default(),
            proposal_errors: Counter::default(),
            commit_latency: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            invalid_ingresses: Family::default(),
            status_writes: Counter::default(),
            status_write_errors: Counter::default(),
            events_emitted: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("portico_controller");
        r.register(
            "is_leader",
            "1 while this replica holds the Lease and does leader work",
            metrics.is_leader.clone(),
        );
        r.register(
            "epoch",
            "The fencing epoch of this replica's current leadership (0 when not leader)",
            metrics.epoch.clone(),
        );
        r.register(
            "lease_transitions",
            "Times this replica acquired the Lease",
            metrics.lease_transitions.clone(),
        );
        r.register(
            "lease_renew_failures",
            "Failed attempts to renew a held Lease",
            metrics.renew_failures.clone(),
        );
        r.register(
            "reconciles",
            "Debounced bursts of changes (and resyncs) reconciled into proposals",
            metrics.reconciles.clone(),
        );
        r.register(
            "reconcile_errors",
            "Reconciles whose proposal failed (retried) or that ended leader work",
            metrics.reconcile_errors.clone(),
        );
        r.register(
            "proposals",
            "Changes proposed through Raft, by kind (delta, resync)",
            metrics.proposals.clone(),
        );
        r.register(
            "proposal_errors",
            "Proposals that were refused or did not commit",
            metrics.proposal_errors.clone(),
        );
        r.register(
            "proposal_commit_seconds",
            "Time from proposing a change to its commit",
            metrics.commit_latency.clone(),
        );
        r.register(
            "invalid_ingresses",
            "Ingresses of ours with problems, by the reason of their first problem",
            metrics.invalid_ingresses.clone(),
        );
        r.register(
            "status_writes",
            "Ingress status updates written",
            metrics.status_writes.clone(),
        );
        r.register(
            "status_write_errors",
            "Ingress status updates that failed (retried)",
            metrics.status_write_errors.clone(),
        );
        r.register(
            "events",
            "Kubernetes Events recorded for Ingress problems",
            metrics.events_emitted.clone(),
        );
        metrics
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn scrape(lease: &LeaseValidity, value: i64) -> String {
        let mut registry = Registry::default();
        let gauge = WhileLeaseValid::new(lease.clone());
        gauge.set(value);
        registry.register("leader_gauge", "test", gauge);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn leadership_gauges_read_zero_once_the_lease_has_run_out() {
        let lease = LeaseValidity::default();
        lease.set(Some(Instant::now() + Duration::from_secs(60)));
        assert!(scrape(&lease, 7).contains("leader_gauge 7\n"));
        // As after SIGCONT: the loop has not run yet, the value is still set, the lease is over.
        lease.set(Some(Instant::now() - Duration::from_millis(1)));
        assert!(scrape(&lease, 7).contains("leader_gauge 0\n"));
        lease.set(None);
        assert!(scrape(&lease, 7).contains("leader_gauge 0\n"));
    }
}
