//! Changes to the routing table: what the leader proposes and every replica applies.

use serde::{Deserialize, Serialize};

use crate::key::ObjectKey;
use crate::settings::Settings;
use crate::source::{Resource, ResourceKind};

/// One change to the inputs of the routing table. Applying the same sequence of changes to
/// the same table gives the same table on every replica: compilation is deterministic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// Create or replace one object.
    Upsert(Resource),
    /// Remove one object (absent objects are ignored).
    Delete { kind: ResourceKind, key: ObjectKey },
    /// Replace every input at once (a new leader's full resync). Certificates that were good
    /// before and are broken or missing now are kept, as after any other change.
    Resync {
        settings: Settings,
        resources: Vec<Resource>,
    },
    /// Replace the controller's settings.
    Settings(Settings),
    /// Several changes applied in order as one log entry (the controller's debounced burst).
    Batch(Vec<Change>),
}

impl Change {
    /// Encodes the change compactly, for the Raft log.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("serializing a Change to memory cannot fail")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, crate::DecodeError> {
        postcard::from_bytes(bytes).map_err(crate::DecodeError)
    }
}
