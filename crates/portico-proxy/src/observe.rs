//! The per-request observation point: counters every request updates, and an optional
//! access-log event.
//!
//! [`handler::handle`](crate::handler) calls [`Shared::observe`] once the response head is
//! decided, for HTTP/1.1, HTTP/2 and HTTP/3 alike. The counters are relaxed atomics (no locks,
//! no allocation); the access log is one `tracing` event with target `portico::access`, and
//! everything it needs beyond the counters is gathered only when it is on. The path is logged
//! without its query string: queries may carry tokens.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use http::{Method, StatusCode, Uri};
use portico_model::ObjectKey;

/// The HTTP version a client spoke to us.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http1,
    Http2,
    Http3,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Http1, Protocol::Http2, Protocol::Http3];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::Http2 => "HTTP/2",
            Protocol::Http3 => "HTTP/3",
        }
    }
}

/// `1xx` … `5xx`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StatusClass(u8);

impl StatusClass {
    pub const ALL: [StatusClass; 5] = [
        StatusClass(1),
        StatusClass(2),
        StatusClass(3),
        StatusClass(4),
        StatusClass(5),
    ];

    pub fn of(status: StatusCode) -> Self {
        Self((status.as_u16() / 100).clamp(1, 5) as u8)
    }

    pub fn as_str(self) -> &'static str {
        ["1xx", "2xx", "3xx", "4xx", "5xx"][usize::from(self.0 - 1)]
    }

    fn index(self) -> usize {
        usize::from(self.0 - 1)
    }
}

/// Upper bounds (seconds) of the time-to-response-head histogram; a last `+Inf` bucket follows.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// The data plane's counters, updated by every request.
#[derive(Debug, Default)]
pub(crate) struct ProxyMetrics {
    requests: [[AtomicU64; 5]; 3],
    upstream_errors: AtomicU64,
    /// Per-bucket (not cumulative) counts; the last one is `+Inf`.
    latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_sum_nanos: AtomicU64,
    /// Connection limits, idle closes and send timeouts (`limits`).
    pub(crate) connections: std::sync::Arc<crate::limits::ConnCounters>,
    pub(crate) refused_bodies: RefusedBodies,
}

/// Bodies of refused requests read and thrown away in the background (see
/// `handler::discard_body`): at most [`RefusedBodies::MAX_DRAINING`] at once, so a client
/// refused on many HTTP/2 streams cannot make the proxy hold a task per stream.
#[derive(Debug, Default)]
pub(crate) struct RefusedBodies {
    draining: AtomicU64,
    drained: AtomicU64,
    dropped: AtomicU64,
}

impl RefusedBodies {
    pub(crate) const MAX_DRAINING: u64 = 1024;

    /// Takes a drain slot, or counts the body as dropped (the connection then closes with
    /// it unread, as before draining existed) when all are taken.
    pub(crate) fn start(&self) -> bool {
        let taken = self
            .draining
            .fetch_update(Relaxed, Relaxed, |n| {
                (n < Self::MAX_DRAINING).then_some(n + 1)
            })
            .is_ok();
        if !taken {
            self.dropped.fetch_add(1, Relaxed);
        }
        taken
    }

    pub(crate) fn finish(&self) {
        self.draining.fetch_sub(1, Relaxed);
        self.drained.fetch_add(1, Relaxed);
    }

    fn snapshot(&self) -> RefusedBodiesSnapshot {
        RefusedBodiesSnapshot {
            draining: self.draining.load(Relaxed),
            drained: self.drained.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
        }
    }
}

impl ProxyMetrics {
    fn record(&self, protocol: Protocol, status: StatusCode, elapsed: Duration) {
        self.requests[protocol as usize][StatusClass::of(status).index()].fetch_add(1, Relaxed);
        let secs = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&upper| secs <= upper)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency[bucket].fetch_add(1, Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.latency_sum_nanos.fetch_add(nanos, Relaxed);
    }

    pub(crate) fn upstream_error(&self) {
        self.upstream_errors.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> MetricsSnapshot {
        let mut requests = Vec::with_capacity(15);
        for protocol in Protocol::ALL {
            for class in StatusClass::ALL {
                let count = self.requests[protocol as usize][class.index()].load(Relaxed);
                requests.push((protocol, class, count));
            }
        }
        let mut buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .zip(&self.latency)
            .map(|(&upper, n)| (upper, n.load(Relaxed)))
            .collect();
        buckets.push((
            f64::INFINITY,
            self.latency[LATENCY_BUCKETS.len()].load(Relaxed),
        ));
        MetricsSnapshot {
            requests,
            upstream_errors: self.upstream_errors.load(Relaxed),
            connections: self.connections.snapshot(),
            refused_bodies: self.refused_bodies.snapshot(),
            latency: LatencySnapshot {
                count: buckets.iter().map(|&(_, n)| n).sum(),
                sum_seconds: self.latency_sum_nanos.load(Relaxed) as f64 / 1e9,
                buckets,
            },
        }
    }
}

/// The counters at one moment (each read on its own: a snapshot taken under load may be off
/// by the requests in flight).
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsSnapshot {
    /// Requests answered, by protocol and status class (every combination, zeros included).
    pub requests: Vec<(Protocol, StatusClass, u64)>,
    /// Upstream attempts that failed (connect error, reset, timeout).
    pub upstream_errors: u64,
    pub latency: LatencySnapshot,
    pub connections: crate::limits::ConnectionsSnapshot,
    pub refused_bodies: RefusedBodiesSnapshot,
}

/// Bodies of refused requests read and discarded after the refusal was answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefusedBodiesSnapshot {
    /// Being read now.
    pub draining: u64,
    /// Read to their end, or to the 64 KiB / 5 s bound.
    pub drained: u64,
    /// Dropped unread because `MAX_DRAINING` were already being read.
    pub dropped: u64,
}

impl MetricsSnapshot {
    pub fn requests(&self, protocol: Protocol, class: StatusClass) -> u64 {
        self.requests
            .iter()
            .find(|&&(p, c, _)| p == protocol && c == class)
            .map_or(0, |&(_, _, n)| n)
    }
}

/// Time to response head, as a histogram.
#[derive(Clone, Debug, PartialEq)]
pub struct LatencySnapshot {
    pub count: u64,
    pub sum_seconds: f64,
    /// `(upper bound in seconds, count in this bucket alone)`; the last bound is `+Inf`.
    pub buckets: Vec<(f64, u64)>,
}

/// What the handler learned about one request while answering it; filled only when the
/// access log is on.
#[derive(Default)]
pub(crate) struct Trace {
    pub enabled: bool,
    pub ingress: Option<ObjectKey>,
    pub upstream: Option<SocketAddr>,
}

/// The request-line facts the access log needs, taken before the request is consumed.
pub(crate) struct RequestFacts {
    pub method: Method,
    pub host: String,
    pub uri: Uri,
}

pub(crate) struct Observation<'a> {
    pub protocol: Protocol,
    pub status: StatusCode,
    pub elapsed: Duration,
    pub client: SocketAddr,
    pub facts: Option<&'a RequestFacts>,
    pub trace: &'a Trace,
}

pub(crate) fn observe(metrics: &ProxyMetrics, o: Observation<'_>) {
    metrics.record(o.protocol, o.status, o.elapsed);
    let Some(facts) = o.facts else { return };
    let ingress = o
        .trace
        .ingress
        .as_ref()
        .map(|k| k as &dyn std::fmt::Display);
    let upstream = o
        .trace
        .upstream
        .as_ref()
        .map(|a| a as &dyn std::fmt::Display);
    tracing::info!(
        target: "portico::access",
        protocol = o.protocol.as_str(),
        method = %facts.method,
        host = %facts.host,
        path = %facts.uri.path(),
        status = o.status.as_u16(),
        ingress = ingress.map(tracing::field::display),
        upstream = upstream.map(tracing::field::display),
        duration_ms = o.elapsed.as_secs_f64() * 1e3,
        client = %o.client.ip(),
        "request"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drains_past_the_cap_are_dropped_and_counted_and_a_finished_drain_frees_a_slot() {
        let bodies = RefusedBodies::default();
        for _ in 0..RefusedBodies::MAX_DRAINING {
            assert!(bodies.start());
        }
        assert!(!bodies.start());
        let full = bodies.snapshot();
        assert_eq!(
            (full.draining, full.drained, full.dropped),
            (RefusedBodies::MAX_DRAINING, 0, 1)
        );
        bodies.finish();
        assert!(bodies.start());
        let after = bodies.snapshot();
        assert_eq!(
            (after.draining, after.drained, after.dropped),
            (RefusedBodies::MAX_DRAINING, 1, 1)
        );
    }
}
