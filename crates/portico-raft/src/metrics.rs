//! What the replica reports about itself, as plain data for the Prometheus exporter.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::types::NodeId;

/// A point-in-time view of one replica's replication state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaMetrics {
    /// This replica's Raft node ID.
    pub node_id: NodeId,
    /// Set when Raft stopped on a fatal error (storage failure, panic): the replica no
    /// longer replicates and should be restarted (a liveness probe's signal).
    pub fatal: Option<String>,
    /// The current Raft term.
    pub term: u64,
    /// The leader this replica currently follows (or itself), if known.
    pub leader: Option<NodeId>,
    /// Whether this replica is the leader.
    pub is_leader: bool,
    /// The highest log index known to be committed by a quorum.
    pub committed_index: Option<u64>,
    /// The highest log index applied to the routing table.
    pub applied_index: Option<u64>,
    /// The routing table's version (the index of the last change it applied).
    pub table_version: u64,
    /// The index of the last log entry on this replica.
    pub last_log_index: Option<u64>,
    /// The highest fencing epoch applied.
    pub highest_epoch: u64,
    /// On the leader: how many entries each other member lags behind the leader's log.
    pub replication_lag: BTreeMap<NodeId, u64>,
    /// Snapshots installed from a leader since this process started.
    pub snapshot_installs: u64,
    /// Snapshots built locally since this process started.
    pub snapshots_built: u64,
    /// Entries refused because their fencing epoch was stale, since this process started.
    pub refused_stale_entries: u64,
    /// Set when this replica found that its own Raft volume is a stale copy (restored
    /// from a backup or cloned): why, and what to do. It then takes no part in Raft.
    pub stale_volume: Option<String>,
    /// RPCs and answers from other nodes refused for their incarnation (a stale copy of a
    /// volume, or a restart not taken yet), and Raft RPCs declined by a node that found its
    /// own volume stale, since this process started.
    pub refused_incarnations: u64,
    /// This start's incarnation (one more at every start of the volume).
    pub incarnation: u64,
    /// Voting members of the cluster, by ID, with their advertised addresses.
    pub voters: BTreeMap<NodeId, String>,
    /// Non-voting members (learners catching up).
    pub learners: BTreeMap<NodeId, String>,
}

/// Leadership as the controller's Lease coupling needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leadership {
    /// Whether this replica is the Raft leader now.
    pub is_leader: bool,
    /// When this replica became leader (in the current term), if it is the leader.
    pub since: Option<Instant>,
    /// The last time a quorum acknowledged this leader, if it is the leader.
    pub last_quorum_ack: Option<Instant>,
    /// The current term: leadership in two terms is two different leaderships.
    pub term: u64,
}

const NONE: u64 = u64::MAX;

/// Counters the storage layer updates as it works (lock-free).
#[derive(Debug)]
pub(crate) struct Counters {
    committed: AtomicU64,
    applied: AtomicU64,
    table_version: AtomicU64,
    highest_epoch: AtomicU64,
    snapshot_installs: AtomicU64,
    snapshots_built: AtomicU64,
    refused_stale_entries: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            committed: AtomicU64::new(NONE),
            applied: AtomicU64::new(NONE),
            table_version: AtomicU64::new(0),
            highest_epoch: AtomicU64::new(0),
            snapshot_installs: AtomicU64::new(0),
            snapshots_built: AtomicU64::new(0),
            refused_stale_entries: AtomicU64::new(0),
        }
    }
}

fn optional(value: u64) -> Option<u64> {
    (value != NONE).then_some(value)
}

impl Counters {
    pub(crate) fn set_committed(&self, index: u64) {
        self.committed.fetch_max(index, Ordering::Relaxed);
        // fetch_max from NONE would stay NONE: handle the first value explicitly.
        let _ = self
            .committed
            .compare_exchange(NONE, index, Ordering::Relaxed, Ordering::Relaxed);
    }

    pub(crate) fn set_applied(&self, index: Option<u64>, table_version: u64) {
        self.applied.store(index.unwrap_or(NONE), Ordering::Relaxed);
        self.table_version.store(table_version, Ordering::Relaxed);
    }

    pub(crate) fn set_highest_epoch(&self, epoch: u64) {
        self.highest_epoch.store(epoch, Ordering::Relaxed);
    }

    pub(crate) fn snapshot_installed(&self) {
        self.snapshot_installs.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot_built(&self) {
        self.snapshots_built.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn refused_stale_entry(&self) {
        self.refused_stale_entries.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn committed(&self) -> Option<u64> {
        optional(self.committed.load(Ordering::Relaxed))
    }

    pub(crate) fn applied(&self) -> Option<u64> {
        optional(self.applied.load(Ordering::Relaxed))
    }

    pub(crate) fn table_version(&self) -> u64 {
        self.table_version.load(Ordering::Relaxed)
    }

    pub(crate) fn highest_epoch(&self) -> u64 {
        self.highest_epoch.load(Ordering::Relaxed)
    }

    pub(crate) fn snapshot_installs(&self) -> u64 {
        self.snapshot_installs.load(Ordering::Relaxed)
    }

    pub(crate) fn snapshots_built(&self) -> u64 {
        self.snapshots_built.load(Ordering::Relaxed)
    }

    pub(crate) fn refused_stale_entries(&self) -> u64 {
        self.refused_stale_entries.load(Ordering::Relaxed)
    }
}
