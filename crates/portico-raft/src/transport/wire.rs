//! The RPC paths and the messages that are not openraft's own.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::types::{ApplyOutcome, NodeId};

/// The header naming the node a Raft RPC is meant for.
pub(crate) const TARGET_HEADER: &str = "portico-raft-target";
/// The sender's incarnation, on every request and answer (see the `incarnation` module).
pub(crate) const INCARNATION_HEADER: &str = "portico-raft-incarnation";
/// On a Raft RPC: the target's incarnation as the sender has accepted it.
pub(crate) const KNOWN_HEADER: &str = "portico-raft-known";

pub(crate) const APPEND_ENTRIES: &str = "/raft/v1/append-entries";
pub(crate) const VOTE: &str = "/raft/v1/vote";
pub(crate) const INSTALL_SNAPSHOT: &str = "/raft/v1/install-snapshot";
pub(crate) const PROPOSE: &str = "/raft/v1/propose";
pub(crate) const JOIN: &str = "/raft/v1/join";
pub(crate) const REMOVE: &str = "/raft/v1/remove";
pub(crate) const STATUS: &str = "/raft/v1/status";
/// A stepping-down leader asks its successor to start an election now.
pub(crate) const ELECT: &str = "/raft/v1/elect";

/// A replica with a fresh identity asks to become a voting member.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct JoinRequest {
    pub(crate) node_id: NodeId,
    pub(crate) addr: String,
}

/// What a replica tells a peer that is deciding whether to bootstrap or join.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct NodeStatus {
    pub(crate) node_id: NodeId,
    /// Whether this replica belongs to a cluster (has a membership with voters).
    pub(crate) member_of_cluster: bool,
    pub(crate) leader: Option<LeaderHint>,
    /// Set when this replica found its own volume to be a stale copy: why, and what to do.
    pub(crate) stale_volume: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LeaderHint {
    pub(crate) node_id: NodeId,
    pub(crate) addr: String,
}

/// Why a forwarded write or join was not done by the replica that received it.
#[derive(Clone, Debug, Serialize, Deserialize, thiserror::Error)]
pub(crate) enum ForwardError {
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<LeaderHint> },
    #[error("{0}")]
    Failed(String),
}

/// A committed proposal: its log index and what applying it did.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(crate) struct Committed {
    pub(crate) index: u64,
    pub(crate) outcome: ApplyOutcome,
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("encoding an RPC message to memory cannot fail")
}

/// Decodes a whole message: trailing bytes are an error like missing ones.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    match postcard::take_from_bytes(bytes)? {
        (value, []) => Ok(value),
        _ => Err(postcard::Error::DeserializeBadEncoding),
    }
}
