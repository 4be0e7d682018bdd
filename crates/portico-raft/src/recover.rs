//! Recovery from a lost quorum (M6): make one surviving replica the only voter, as etcd's
//! `--force-new-cluster` does.
//!
//! When a majority of the voters is gone for good, nothing commits any more: the survivors
//! keep serving the last table they applied, but no change, and no join of a replacement,
//! can commit. [`force_single_voter`] is run on a survivor's data directory while it is
//! stopped. It appends one membership entry to its log naming this replica as the only
//! voter. On its next start openraft takes the latest membership in the log as effective
//! (committed or not), so the replica elects itself with a quorum of one, commits the
//! entry, and leads; replacements with empty volumes then join it as new members. Entries
//! that only the lost replicas had are gone: the routing table is derived from the API
//! server, and the controller's resync on taking the Lease puts it right.
//!
//! The lost replicas' volumes must be deleted, never started again: they still believe in
//! the old membership.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use openraft::{EntryPayload, Membership};
use redb::{ReadableDatabase, ReadableTable};

use crate::store::{
    Db, KEY_LAST_PURGED, KEY_NODE_ID, KEY_SNAPSHOT_META, LOG, STORE_FILE, StoreError,
};
use crate::types::{Entry, LogId, Node, NodeId, SnapshotMeta};

/// What [`force_single_voter`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// This replica's node ID, now the only voter.
    pub node_id: NodeId,
    /// Its advertised address, as the membership had it.
    pub addr: String,
    /// The members dropped from the membership (ID and address).
    pub dropped: BTreeMap<NodeId, String>,
    /// The log index of the new membership entry.
    pub index: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error("no Raft store at {0}: is this the replica's data directory?")]
    NoStore(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the Raft store has no node ID: nothing to recover")]
    NoIdentity,
    #[error("the Raft store holds no log and no snapshot: nothing to recover")]
    Empty,
    #[error("node {0} is not in its own latest membership; it cannot be made the only voter")]
    NotAMember(NodeId),
}

fn decode_entry(bytes: &[u8]) -> Result<Entry, StoreError> {
    postcard::from_bytes(bytes).map_err(|source| StoreError::Corrupt { key: "log", source })
}

/// Makes the replica whose (stopped) store is in `data_dir` the only voter of its cluster;
/// with `dry_run`, only says what it would do. Fails, changing nothing, if the store is
/// missing, in use, or was never part of a cluster.
pub async fn force_single_voter(data_dir: &Path, dry_run: bool) -> Result<Recovered, RecoverError> {
    let path = data_dir.join(STORE_FILE);
    if !path.is_file() {
        return Err(RecoverError::NoStore(path.display().to_string()));
    }
    // redb locks the file: this fails while the replica is running.
    let db = Db::open(data_dir)?;
    db.blocking(move |db| Ok(append_single_voter(db, dry_run)))
        .await?
}

fn append_single_voter(db: &redb::Database, dry_run: bool) -> Result<Recovered, RecoverError> {
    let node_id: NodeId = Db::read_meta(db, KEY_NODE_ID)?.ok_or(RecoverError::NoIdentity)?;
    let last_purged: Option<LogId> = Db::read_meta(db, KEY_LAST_PURGED)?;
    let snapshot: Option<SnapshotMeta> = Db::read_meta(db, KEY_SNAPSHOT_META)?;
    let redb_error = |e: redb::Error| RecoverError::Store(StoreError::Redb(e));

    // The latest log id and the latest membership: from the log, else the snapshot.
    let tx = db.begin_read().map_err(|e| redb_error(e.into()))?;
    let log = tx.open_table(LOG).map_err(|e| redb_error(e.into()))?;
    let mut last: Option<LogId> = None;
    let mut membership: Option<Membership<NodeId, Node>> = None;
    for item in log.iter().map_err(|e| redb_error(e.into()))?.rev() {
        let (_, value) = item.map_err(|e| redb_error(e.into()))?;
        let entry = decode_entry(value.value())?;
        last.get_or_insert(entry.log_id);
        if let EntryPayload::Membership(m) = entry.payload {
            membership = Some(m);
            break;
        }
    }
    drop(log);
    drop(tx);
    let last = last
        .or(last_purged)
        .or_else(|| snapshot.as_ref().and_then(|s| s.last_log_id))
        .ok_or(RecoverError::Empty)?;
    let membership = membership
        .or_else(|| {
            snapshot
                .as_ref()
                .map(|s| s.last_membership.membership().clone())
        })
        .ok_or(RecoverError::Empty)?;
    let addr = membership
        .get_node(&node_id)
        .ok_or(RecoverError::NotAMember(node_id))?
        .addr
        .clone();
    let dropped = membership
        .nodes()
        .filter(|(id, _)| **id != node_id)
        .map(|(id, node)| (*id, node.addr.clone()))
        .collect();

    // An entry as if the last leader had appended it: it commits once this replica, alone,
    // leads in a later term.
    let index = last.index + 1;
    let entry = Entry {
        log_id: LogId::new(last.leader_id, index),
        payload: EntryPayload::Membership(Membership::new(
            vec![BTreeSet::from([node_id])],
            BTreeMap::from([(node_id, Node { addr: addr.clone() })]),
        )),
    };
    let recovered = Recovered {
        node_id,
        addr,
        dropped,
        index,
    };
    if dry_run {
        return Ok(recovered);
    }
    let bytes = crate::store::encode(&entry);
    let tx = db.begin_write().map_err(|e| redb_error(e.into()))?;
    {
        let mut log = tx.open_table(LOG).map_err(|e| redb_error(e.into()))?;
        log.insert(index, bytes.as_slice())
            .map_err(|e| redb_error(e.into()))?;
    }
    // Durability::Immediate is redb's default: fsynced before commit returns.
    tx.commit().map_err(|e| redb_error(e.into()))?;
    Ok(recovered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_directory_without_a_cluster_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let missing = force_single_voter(dir.path(), false).await;
        assert!(
            matches!(missing, Err(RecoverError::NoStore(_))),
            "{missing:?}"
        );
        assert!(!dir.path().join(STORE_FILE).exists(), "no store created");

        // A store with an ID but no log: never part of a cluster.
        let db = Db::open(dir.path()).unwrap();
        crate::identity::load_or_create(&db).await.unwrap();
        drop(db);
        let empty = force_single_voter(dir.path(), false).await;
        assert!(matches!(empty, Err(RecoverError::Empty)), "{empty:?}");
    }
}
