//! The replica's own metrics, added to the one Prometheus registry every part shares.
//!
//! Raft state is read from [`Replica::metrics`] at scrape time (a collector), so the
//! exported values are never stale and nothing has to poll. The data plane's request
//! counters are read the same way, from the proxy's atomic counters.
//!
//! [`openmetrics`] answers `/metrics` from a registry, for the admin listener and the
//! certificate issuer alike.

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, header};
use http_body_util::Full;
use portico_proxy::MetricsHandle;
use portico_raft::Replica;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::state::ReplicaState;

/// The content type of [`openmetrics`]' answer.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `registry` encoded as an OpenMetrics text answer (200); the error of a collector that
/// failed to encode, for the caller to answer in its own format.
pub fn openmetrics(registry: &Registry) -> Result<Response<Full<Bytes>>, std::fmt::Error> {
    let mut body = String::new();
    prometheus_client::encoding::text::encode(&mut body, registry)?;
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts"))
}

struct ReplicaCollector {
    replica: Replica,
    state: Arc<ReplicaState>,
}

impl std::fmt::Debug for ReplicaCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaCollector").finish_non_exhaustive()
    }
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> std::fmt::Result {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(metric)
}

impl prometheus_client::collector::Collector for ReplicaCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = self.replica.metrics();
        let e = &mut encoder;
        gauge(
            e,
            "portico_ready",
            "1 when /readyz answers 200",
            self.state.ready() as i64,
        )?;
        gauge(
            e,
            "portico_draining",
            "1 once shutdown has begun",
            self.state.draining() as i64,
        )?;
        gauge(
            e,
            "portico_table_version",
            "Version (Raft log index) of the served routing table",
            m.table_version as i64,
        )?;
        gauge(e, "portico_raft_term", "Current Raft term", m.term as i64)?;
        gauge(
            e,
            "portico_raft_is_leader",
            "1 when this replica is the Raft leader",
            m.is_leader as i64,
        )?;
        gauge(
            e,
            "portico_raft_fatal",
            "1 when Raft stopped on a fatal error",
            m.fatal.is_some() as i64,
        )?;
        gauge(
            e,
            "portico_raft_stale_volume",
            "1 when this replica found its Raft volume to be a stale copy (restored or cloned): wipe it",
            m.stale_volume.is_some() as i64,
        )?;
        gauge(
            e,
            "portico_raft_committed_index",
            "Highest committed log index known",
            m.committed_index.unwrap_or(0) as i64,
        )?;
        gauge(
            e,
            "portico_raft_applied_index",
            "Highest applied log index",
            m.applied_index.unwrap_or(0) as i64,
        )?;
        gauge(
            e,
            "portico_raft_voters",
            "Voting members in the current membership",
            m.voters.len() as i64,
        )?;
        gauge(
            e,
            "portico_raft_learners",
            "Learners in the current membership",
            m.learners.len() as i64,
        )?;
        gauge(
            e,
            "portico_raft_highest_epoch",
            "Highest fencing epoch applied",
            m.highest_epoch as i64,
        )?;
        gauge(
            e,
            "portico_raft_max_replication_lag",
            "Leader only: the largest number of entries a follower is behind",
            m.replication_lag.values().copied().max().unwrap_or(0) as i64,
        )?;
        counter(
            e,
            "portico_raft_snapshot_installs",
            "Snapshots installed from the leader",
            m.snapshot_installs,
        )?;
        counter(
            e,
            "portico_raft_snapshots_built",
            "Snapshots built locally",
            m.snapshots_built,
        )?;
        counter(
            e,
            "portico_raft_refused_stale_entries",
            "Entries refused for a stale fencing epoch",
            m.refused_stale_entries,
        )?;
        counter(
            e,
            "portico_raft_refused_incarnations",
            "Peer RPCs and answers refused for a stale or not yet taken incarnation",
            m.refused_incarnations,
        )?;
        Ok(())
    }
}

pub fn register(registry: &mut Registry, replica: Replica, state: Arc<ReplicaState>) {
    registry.register_collector(Box::new(ReplicaCollector { replica, state }));
}

/// The data plane's counters, read from the proxy at scrape time.
#[derive(Debug)]
struct ProxyCollector(MetricsHandle);

impl prometheus_client::collector::Collector for ProxyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = self.0.snapshot();
        {
            let mut family = encoder.encode_descriptor(
                "portico_proxy_requests",
                "Requests answered by the data plane, by protocol and status class",
                None,
                MetricType::Counter,
            )?;
            for (protocol, class, count) in &m.requests {
                let labels = [
                    ("protocol", protocol.as_str()),
                    ("code_class", class.as_str()),
                ];
                let metric = family.encode_family(&labels)?;
                ConstCounter::new(*count).encode(metric)?;
            }
        }
        counter(
            &mut encoder,
            "portico_proxy_upstream_errors",
            "Upstream attempts that failed (connect error, reset or timeout)",
            m.upstream_errors,
        )?;
        let c = &m.connections;
        let e = &mut encoder;
        gauge(
            e,
            "portico_proxy_connections_open",
            "Client connections open (TCP and QUIC, handshakes included)",
            c.open as i64,
        )?;
        {
            let mut family = e.encode_descriptor(
                "portico_proxy_connections_refused",
                "Client connections closed or refused at once by a connection limit",
                None,
                MetricType::Counter,
            )?;
            for (limit, count) in [
                ("total", c.refused_total_limit),
                ("per_ip", c.refused_per_ip_limit),
            ] {
                let labels = [("limit", limit)];
                let metric = family.encode_family(&labels)?;
                ConstCounter::new(count).encode(metric)?;
            }
        }
        counter(
            e,
            "portico_proxy_send_timeouts",
            "Connections closed (HTTP/3: streams reset) for a response the client took nothing of for the send timeout",
            c.send_timeouts,
        )?;
        counter(
            e,
            "portico_proxy_idle_closes",
            "Connections closed after the idle timeout without request activity",
            c.idle_closes,
        )?;
        counter(
            e,
            "portico_proxy_quic_retries",
            "QUIC Retry packets sent to validate client addresses",
            c.quic_retries,
        )?;
        let r = &m.refused_bodies;
        gauge(
            e,
            "portico_proxy_refused_body_drains_in_progress",
            "Bodies of refused requests being read and discarded (64 KiB and 5 s at most each)",
            r.draining as i64,
        )?;
        counter(
            e,
            "portico_proxy_refused_body_drains",
            "Bodies of refused requests read and discarded, to their end or their bound",
            r.drained,
        )?;
        counter(
            e,
            "portico_proxy_refused_bodies_dropped",
            "Bodies of refused requests dropped unread because too many were being discarded",
            r.dropped,
        )?;
        let mut metric = encoder.encode_descriptor(
            "portico_proxy_request_duration_seconds",
            "Time from request to response head",
            None,
            MetricType::Histogram,
        )?;
        metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            m.latency.sum_seconds,
            m.latency.count,
            &m.latency.buckets,
            None,
        )
    }
}

pub fn register_proxy(registry: &mut Registry, metrics: MetricsHandle) {
    registry.register_collector(Box::new(ProxyCollector(metrics)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_connection_counters_are_exported() {
        let table = Arc::new(portico_model::RoutingTable::default());
        let proxy =
            portico_proxy::Proxy::new(portico_proxy::ProxyConfig::default(), table).unwrap();
        let mut registry = Registry::default();
        register_proxy(&mut registry, proxy.metrics_handle());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "portico_proxy_connections_open 0",
            "portico_proxy_connections_refused_total{limit=\"total\"} 0",
            "portico_proxy_connections_refused_total{limit=\"per_ip\"} 0",
            "portico_proxy_send_timeouts_total 0",
            "portico_proxy_idle_closes_total 0",
            "portico_proxy_quic_retries_total 0",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    #[tokio::test]
    async fn a_registry_is_answered_as_openmetrics_text() {
        use http_body_util::BodyExt;
        let mut registry = Registry::default();
        let counter = prometheus_client::metrics::counter::Counter::<u64>::default();
        counter.inc();
        registry.register("portico_test", "A test counter", counter);
        let response = openmetrics(&registry).unwrap();
        assert_eq!(response.status(), http::StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body = std::str::from_utf8(&body).unwrap();
        assert!(
            body.contains("portico_test_total 1\n") && body.ends_with("# EOF\n"),
            "{body}"
        );
    }
}
