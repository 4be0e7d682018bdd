//! How to run one replica, and openraft's `Config` made from it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::SnapshotPolicy;

use super::StartError;
use crate::tls::TlsMaterial;
use crate::transport::TransportSettings;

/// Raft timing and log-compaction settings.
#[derive(Clone, Debug)]
pub struct RaftSettings {
    pub heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Build a snapshot (and compact the log) after this many entries since the last one.
    pub snapshot_after_entries: u64,
    /// Entries kept in the log behind a snapshot, so briefly lagging peers catch up by log.
    pub entries_kept_after_snapshot: u64,
    /// Largest number of entries in one append RPC.
    pub max_entries_per_append: u64,
    /// Snapshot chunk size on the wire.
    pub snapshot_chunk_bytes: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(150),
            election_timeout_min: Duration::from_millis(750),
            election_timeout_max: Duration::from_millis(1500),
            // The log holds at most 1,500 entries of at most 128 KiB (the controller's
            // entry bound): 188 MiB, whatever a tenant rewrites (C2).
            snapshot_after_entries: 1_000,
            entries_kept_after_snapshot: 500,
            max_entries_per_append: 256,
            snapshot_chunk_bytes: 1 << 20,
        }
    }
}

/// How to run one replica.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// The replica's own directory (a StatefulSet volume): the Raft store lives here.
    pub data_dir: PathBuf,
    /// `host:port` at which the other replicas reach this one; must match a SAN of its
    /// certificate (DNS name or IP address).
    pub advertise: String,
    /// The advertised addresses of the initial members, in ordinal order (`portico-0`
    /// first). The first one bootstraps the cluster on first boot; every replica also uses
    /// them as contact points to join an existing cluster.
    pub initial_members: Vec<String>,
    /// Hosts, besides the initial members', of replicas that may join (scale-up): exact
    /// names or IP addresses, or `name-*.rest` for any ordinal (a StatefulSet's Pods:
    /// `portico-*.portico-peers.portico-system.svc.cluster.local`). A peer is trusted only
    /// when its certificate names one of these hosts or a current member's host.
    pub peer_hosts: Vec<String>,
    pub tls: TlsMaterial,
    pub raft: RaftSettings,
    pub transport: TransportSettings,
}

pub(super) fn raft_config(settings: &RaftSettings) -> Result<Arc<openraft::Config>, StartError> {
    let millis = |d: Duration| d.as_millis().try_into().unwrap_or(u64::MAX);
    let config = openraft::Config {
        cluster_name: "portico".into(),
        heartbeat_interval: millis(settings.heartbeat_interval),
        election_timeout_min: millis(settings.election_timeout_min),
        election_timeout_max: millis(settings.election_timeout_max),
        install_snapshot_timeout: 10_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_after_entries),
        max_in_snapshot_log_to_keep: settings.entries_kept_after_snapshot,
        max_payload_entries: settings.max_entries_per_append,
        snapshot_max_chunk_size: settings.snapshot_chunk_bytes,
        ..Default::default()
    };
    let config = config
        .validate()
        .map_err(|e| StartError::Settings(Box::new(e)))?;
    Ok(Arc::new(config))
}
