//! The errors of the public API: one variant per case a caller acts on, causes kept as
//! sources (the openraft ones boxed, so no openraft type is public).

use crate::identity::IdentityError;
use crate::incarnation::IncarnationError;
use crate::store::StoreError;
use crate::tls::TlsError;
use crate::types::NodeId;

/// A cause from inside the crate (openraft, the transport, a decoder), kept for its chain.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("opening the Raft store: {0}")]
    Store(#[from] StoreError),
    #[error("node identity: {0}")]
    Identity(#[from] IdentityError),
    #[error("node incarnation: {0}")]
    Incarnation(#[from] IncarnationError),
    #[error("TLS material: {0}")]
    Tls(#[from] TlsError),
    /// A snapshot chunk plus its envelope must fit in one RPC body.
    #[error(
        "snapshot_chunk_bytes ({chunk_bytes}) must be at least 64 KiB below max_body_bytes ({max_body_bytes})"
    )]
    SnapshotChunkTooLarge {
        chunk_bytes: u64,
        max_body_bytes: usize,
    },
    /// Invalid Raft settings (for example an election timeout not above the heartbeat).
    #[error("Raft settings: {0}")]
    Settings(#[source] BoxError),
    #[error("starting Raft: {0}")]
    Raft(#[source] BoxError),
    #[error("the listener: {0}")]
    Listener(#[source] std::io::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// A change's epoch below the highest applied, or a claim's not above it.
    #[error("refused: epoch {epoch} is stale (epoch {highest_epoch} already applied)")]
    StaleEpoch { epoch: u64, highest_epoch: u64 },
    #[error("refused: epoch {epoch} is above the largest allowed, {max}", max = crate::types::MAX_EPOCH)]
    EpochOutOfRange { epoch: u64 },
    /// No leader took the write before the request timeout: retry later.
    #[error("no leader could take the write in time: {0}")]
    Unavailable(#[source] Unavailable),
    /// The leader refused the write outright (not retried). openraft refuses a client write
    /// only for a membership change today; a refusal must still never pass for a failure
    /// worth retrying.
    #[error("the leader refused the write: {0}")]
    Refused(#[source] BoxError),
    /// The change does not fit in one replication RPC (`max_body_bytes`, with room for
    /// the envelope); split it (for example into several `Batch` entries).
    #[error("the change is {size} bytes encoded; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    /// This replica's own volume is a stale copy (see [`crate::ReplicaMetrics::stale_volume`]):
    /// it takes no part in the cluster any more, and its proposals would be refused.
    #[error("this replica's volume is a stale copy; it takes no part in the cluster")]
    StaleVolume,
    #[error("the replica is shutting down")]
    ShuttingDown,
}

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("no leader could make the change in time: {0}")]
    Unavailable(#[source] Unavailable),
    #[error("membership change refused: {0}")]
    Refused(#[source] BoxError),
    #[error("the replica is shutting down")]
    ShuttingDown,
}

/// Why no leader took a leader-only operation before its deadline: the last obstacle met.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// No replica is known to lead (an election under way, or no quorum).
    #[error("no leader known")]
    NoLeader,
    /// The replica named as leader answered that it no longer leads.
    #[error("node {node_id} at {addr} no longer leads")]
    NotLeader { node_id: NodeId, addr: String },
    /// The leader could not be reached, or its answer was not understood.
    #[error("reaching the leader at {addr}: {source}")]
    Transport {
        addr: String,
        #[source]
        source: BoxError,
    },
}
