//! The routing table.

use serde::{Deserialize, Serialize};

use crate::change::Change;

/// The compiled routing table. Cheap to clone: its parts are shared.
#[derive(Clone, Debug, Default)]
pub struct RoutingTable {
    version: u64,
}

impl RoutingTable {
    /// The version of the last change applied (the Raft log index, as the replicator sets it).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Applies one change and sets the table's version.
    pub fn apply(&mut self, version: u64, change: &Change) {
        let _ = change;
        self.version = version;
    }

    /// Encodes the table's inputs compactly, for Raft snapshots. Two tables with the same
    /// inputs encode to the same bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(&Snapshot { version: self.version }).expect("in-memory encoding")
    }

    /// Decodes a snapshot and recompiles the table from it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, crate::DecodeError> {
        let snapshot: Snapshot = postcard::from_bytes(bytes).map_err(crate::DecodeError)?;
        Ok(Self { version: snapshot.version })
    }
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u64,
}
