//! What a run observed, as plain data: request outcomes in 100 ms buckets, samples of each
//! replica's own accounting (leadership, epoch, version), fault windows, API writes by source
//! address, and the writer's changes with when each replica first served them. Everything the
//! checks and the report read is here, and all of it serializes into the JSON report.

use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Width of one request bucket.
pub const BUCKET_MS: u64 = 100;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub ok: u64,
    pub failed: u64,
}

impl Counts {
    pub fn add(&mut self, other: Counts) {
        self.ok += other.ok;
        self.failed += other.failed;
    }
    pub fn total(&self) -> u64 {
        self.ok + self.failed
    }
}

/// The protocols the load generator speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    H1,
    H2,
    H3,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::H1, Protocol::H2, Protocol::H3];
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One sample of a replica's own accounting, read from its metrics.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the run started.
    pub t: f64,
    pub replica: usize,
    /// Which start of this replica's process (0 = first).
    pub incarnation: u32,
    /// Whether this incarnation started with an empty data directory.
    pub wiped: bool,
    pub is_leader: bool,
    pub epoch: u64,
    /// The routing table version it applied.
    pub version: u64,
    /// The highest fencing epoch its state machine applied.
    #[serde(default)]
    pub highest_epoch: u64,
}

/// One fault, from injection to heal.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultWindow {
    pub name: String,
    /// Replicas the fault targets directly (empty for API server faults).
    pub targets: Vec<usize>,
    pub start: f64,
    pub end: f64,
    /// Whether the target was the leader when the fault began.
    pub leader_fault: bool,
    /// Seconds from heal until every replica was up and served one version.
    pub converged_after: Option<f64>,
}

/// One request the API server answered (a write, or a refused call), attributed by the
/// sender's source address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiWrite {
    /// When it arrived at the API server.
    pub t: f64,
    /// The replica it came from, or `None` for the harness's own writer.
    pub replica: Option<usize>,
    pub method: String,
    pub path: String,
    pub status: u16,
}

impl ApiWrite {
    pub fn is_status_write(&self) -> bool {
        self.path.contains("/ingresses/") && self.path.ends_with("/status")
    }
    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// One change the writer made, and when each replica first served it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeRecord {
    pub id: u64,
    pub what: String,
    pub written_at: f64,
    /// Per replica: seconds after `written_at` when it first served the change.
    pub seen_after: Vec<Option<f64>>,
    /// A later change undid this one (an Ingress deleted after its creation), so a replica
    /// may legitimately never have served it.
    #[serde(default)]
    pub superseded: bool,
}

/// Everything observed during a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Observations {
    pub replicas: usize,
    /// `requests[bucket][replica]`: attempts sent to that replica.
    pub requests: Vec<Vec<Counts>>,
    /// `client[bucket]`: what the load balancer's clients saw after moving on from a dead
    /// replica (a request fails only if no replica answered).
    pub client: Vec<Counts>,
    /// Attempts per protocol: h1, h2, h3.
    pub by_protocol: [Counts; 3],
    pub samples: Vec<Sample>,
    pub faults: Vec<FaultWindow>,
    pub api_writes: Vec<ApiWrite>,
    /// Requests of any method the API server refused with 403 (the real server's RBAC).
    #[serde(default)]
    pub api_forbidden: Vec<ApiWrite>,
    pub changes: Vec<ChangeRecord>,
    /// Failed attempts by replica, protocol and error, with the first time each was seen.
    #[serde(default)]
    pub errors: std::collections::BTreeMap<String, ErrorCount>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorCount {
    pub count: u64,
    pub first: f64,
    pub last: f64,
}

impl Observations {
    pub fn new(replicas: usize) -> Self {
        Observations {
            replicas,
            ..Default::default()
        }
    }

    fn bucket_mut(&mut self, t: f64) -> usize {
        let b = (t * 1000.0 / BUCKET_MS as f64) as usize;
        while self.requests.len() <= b {
            self.requests.push(vec![Counts::default(); self.replicas]);
            self.client.push(Counts::default());
        }
        b
    }

    /// One attempt against one replica.
    pub fn attempt(&mut self, t: f64, replica: usize, protocol: Protocol, ok: bool) {
        let b = self.bucket_mut(t);
        let c = &mut self.requests[b][replica];
        let p = &mut self.by_protocol[protocol.index()];
        if ok {
            c.ok += 1;
            p.ok += 1;
        } else {
            c.failed += 1;
            p.failed += 1;
        }
    }

    /// Why an attempt failed (aggregated: the first 100 characters of the error).
    pub fn error(&mut self, t: f64, replica: usize, protocol: Protocol, error: &str) {
        let cut: String = error.chars().take(100).collect();
        let e = self
            .errors
            .entry(format!("replica {replica} {protocol:?}: {cut}"))
            .or_insert(ErrorCount {
                count: 0,
                first: t,
                last: t,
            });
        e.count += 1;
        e.last = t;
    }

    /// One client request's final outcome (after failover).
    pub fn client_outcome(&mut self, t: f64, ok: bool) {
        let b = self.bucket_mut(t);
        if ok {
            self.client[b].ok += 1;
        } else {
            self.client[b].failed += 1;
        }
    }

    pub fn duration(&self) -> f64 {
        self.requests.len() as f64 * BUCKET_MS as f64 / 1000.0
    }
}

/// The shared recorder the harness's tasks write into.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    data: Mutex<Observations>,
}

impl Recorder {
    pub fn new(replicas: usize) -> Self {
        Recorder {
            start: Instant::now(),
            data: Mutex::new(Observations::new(replicas)),
        }
    }

    /// Seconds since the run started.
    pub fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut Observations) -> R) -> R {
        f(&mut self.data.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn snapshot(&self) -> Observations {
        self.with(|o| o.clone())
    }
}
