//! The errors of the public API.

use crate::identity::IdentityError;
use crate::incarnation::IncarnationError;
use crate::store::StoreError;
use crate::tls::TlsError;

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
    /// Invalid Raft settings (for example an election timeout not above the heartbeat).
    #[error("Raft settings: {0}")]
    Settings(String),
    #[error("starting Raft: {0}")]
    Raft(String),
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
    #[error("no leader could take the write in time: {0}")]
    Unavailable(String),
    /// The change does not fit in one replication RPC (`max_body_bytes`, with room for
    /// the envelope); split it (for example into several `Batch` entries).
    #[error("the change is {size} bytes encoded; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("the replica is shutting down")]
    ShuttingDown,
}

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("no leader could make the change in time: {0}")]
    Unavailable(String),
    #[error("membership change refused: {0}")]
    Refused(String),
    #[error("the replica is shutting down")]
    ShuttingDown,
}
