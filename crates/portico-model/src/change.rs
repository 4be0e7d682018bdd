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
    /// Replace every input at once. Certificates that were good before and are broken or
    /// missing now are kept, as after any other change. [`RoutingTable::compile`] uses it,
    /// and old logs hold it; the controller no longer proposes it (its resync is the
    /// difference from the committed table, in [`chunks`] of ordinary changes), since one
    /// entry holding every object caps the table at one Raft message.
    ///
    /// [`RoutingTable::compile`]: crate::RoutingTable::compile
    Resync {
        settings: Settings,
        resources: Vec<Resource>,
    },
    /// Replace the controller's settings.
    Settings(Settings),
    /// Several changes applied in order as one log entry (the controller's debounced burst,
    /// or one chunk of a resync).
    Batch(Vec<Change>),
}

/// The largest log entry the controller proposes, encoded. openraft gives each
/// AppendEntries the heartbeat interval (150 ms by default) as its whole timeout, sending,
/// the follower's fsync and decoding included; an append that misses it is retried from
/// scratch and, every time it misses, nothing behind it commits (issue 14: a tenant's 1 MiB
/// Secrets did exactly that). 128 KiB keeps one entry's append to a few milliseconds in a
/// release build and within the timeout even in a debug build on a loaded machine, where
/// 1 MiB entries timed out on every try and 256 KiB ones often. A change set larger than this is split by
/// [`chunks`]; no single object may come near it ([`crate::Limits::max_object_bytes`] is
/// capped below), so every chunk fits.
pub const MAX_ENTRY_BYTES: usize = 128 << 10;

impl Change {
    /// Encodes the change compactly, for the Raft log.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("serializing a Change to memory cannot fail")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, crate::DecodeError> {
        postcard::from_bytes(bytes).map_err(crate::DecodeError)
    }

    /// The length of [`Change::to_bytes`], without building it.
    pub fn encoded_len(&self) -> usize {
        postcard::experimental::serialized_size(self)
            .expect("measuring a Change in memory cannot fail")
    }
}

/// Groups `changes`, in order, into as few entries as fit in `max_bytes` each (encoded):
/// a group of several is one [`Change::Batch`], a group of one is that change. Every entry
/// leaves a valid table, since each is just ordinary changes applied in order. A single
/// change larger than `max_bytes` is an entry of its own (the caller's limits keep that
/// from happening).
pub fn chunks(changes: Vec<Change>, max_bytes: usize) -> Vec<Change> {
    // A Batch costs its tag and a length prefix (a varint: at most 5 bytes for a u32).
    const BATCH_OVERHEAD: usize = 1 + 5;
    let mut entries = Vec::new();
    let mut group: Vec<Change> = Vec::new();
    let mut group_bytes = BATCH_OVERHEAD;
    for change in changes {
        let bytes = change.encoded_len();
        if !group.is_empty() && group_bytes + bytes > max_bytes {
            entries.push(one_entry(std::mem::take(&mut group)));
            group_bytes = BATCH_OVERHEAD;
        }
        group_bytes += bytes;
        group.push(change);
    }
    if !group.is_empty() {
        entries.push(one_entry(group));
    }
    entries
}

fn one_entry(mut group: Vec<Change>) -> Change {
    if group.len() == 1 {
        group.pop().expect("one change")
    } else {
        Change::Batch(group)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::source::SecretSource;

    fn secret(name: &str, bytes: usize) -> Change {
        Change::Upsert(Resource::Secret(Arc::new(SecretSource {
            key: ObjectKey::new("ns", name),
            type_: Some(crate::SECRET_TYPE_TLS.into()),
            tls_crt: Some(vec![b'x'; bytes]),
            tls_key: None,
            oversize: None,
        })))
    }

    #[test]
    fn encoded_len_is_the_length_of_the_bytes() {
        let change = Change::Batch(vec![secret("a", 300), secret("b", 70_000)]);
        assert_eq!(change.encoded_len(), change.to_bytes().len());
    }

    #[test]
    fn chunks_keep_the_order_and_each_fits() {
        let changes: Vec<Change> = (0..100).map(|i| secret(&format!("s{i}"), 30_000)).collect();
        let entries = chunks(changes.clone(), 100_000);
        assert!(entries.len() >= 30, "{} entries", entries.len());
        let mut flattened = Vec::new();
        for entry in entries {
            assert!(entry.encoded_len() <= 100_000, "{}", entry.encoded_len());
            match entry {
                Change::Batch(inner) => flattened.extend(inner),
                one => flattened.push(one),
            }
        }
        assert_eq!(flattened, changes);
        assert!(chunks(Vec::new(), 100).is_empty());
        assert_eq!(chunks(vec![secret("big", 500)], 100), [secret("big", 500)]);
    }
}
