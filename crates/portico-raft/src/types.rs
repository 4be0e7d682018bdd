//! The openraft type configuration and the application data the log carries.
//!
//! Everything here is crate-private except [`Proposal`] and [`ApplyOutcome`]: the rest of
//! Portico never names an openraft type, so a move to openraft 0.10 stays inside this crate.

use std::io::Cursor;

use portico_model::Change;
use serde::{Deserialize, Serialize};

/// A Raft node's identity. Random, 64-bit, never reused (see the `identity` module).
pub type NodeId = u64;

/// The largest fencing epoch a proposal may carry: the largest `leaseTransitions` a
/// Kubernetes Lease can hold (an `int32`). Anything above is refused, so no epoch can fence
/// every later leader for good, and `epoch + 1` never overflows.
pub const MAX_EPOCH: u64 = i32::MAX as u64;

/// One log entry, stamped with the proposer's fencing epoch (for example the controller's
/// Lease generation). A routing change is refused when its epoch is lower than the highest
/// epoch already applied; a claim (no change: a new leader's first entry) only when its
/// epoch is above every epoch applied, so two leaderships never share an epoch. Either is
/// refused above [`MAX_EPOCH`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub epoch: u64,
    /// The routing change; `None` claims `epoch` for a new leadership.
    pub change: Option<Change>,
}

/// What applying one log entry did to the routing table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyOutcome {
    /// The change was applied; the table's version is now `version` (its log index).
    Applied { version: u64 },
    /// The proposal's epoch was lower than `highest_epoch`, already applied (for a claim:
    /// not above it): refused.
    RefusedStaleEpoch { epoch: u64, highest_epoch: u64 },
    /// The proposal's epoch was above [`MAX_EPOCH`]: refused.
    RefusedEpochOutOfRange { epoch: u64 },
    /// A blank or membership entry, or an accepted claim: the table is unchanged.
    NotAChange,
}

openraft::declare_raft_types!(
    /// Portico's Raft type configuration.
    pub(crate) TypeConfig:
        D = Proposal,
        R = ApplyOutcome,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub(crate) type Node = openraft::BasicNode;
pub(crate) type Entry = openraft::Entry<TypeConfig>;
pub(crate) type LogId = openraft::LogId<NodeId>;
pub(crate) type Vote = openraft::Vote<NodeId>;
pub(crate) type StorageError = openraft::StorageError<NodeId>;
pub(crate) type StoredMembership = openraft::StoredMembership<NodeId, Node>;
pub(crate) type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
pub(crate) type Snapshot = openraft::Snapshot<TypeConfig>;
pub(crate) type Raft = openraft::Raft<TypeConfig>;
pub(crate) type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<NodeId, E>;
pub(crate) type ClientWriteError = openraft::error::ClientWriteError<NodeId, Node>;
