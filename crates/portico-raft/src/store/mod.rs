//! Durable Raft storage in one redb file in the replica's data directory.
//!
//! * `log`: index → postcard-encoded entry. Appends commit with `Durability::Immediate`
//!   (redb fsyncs before `commit` returns), and only then is openraft told the entries are
//!   flushed: an entry acknowledged to the leader survives a crash.
//! * `meta`: the vote (fsynced before it is answered), the last purged log id, the committed
//!   log id (so a restarted replica can re-apply its own log before hearing from a leader),
//!   the node's identity and incarnation, the incarnations accepted from the other nodes,
//!   and the latest snapshot (its metadata and bytes).
//!
//! The state machine itself is the routing table in memory (`state_machine`); after a
//! restart it is rebuilt from the stored snapshot, then openraft re-applies the log from the
//! snapshot up to the stored committed index.

pub(crate) mod log;
pub(crate) mod state_machine;

use std::fs::{OpenOptions, Permissions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

pub(crate) const KEY_VOTE: &str = "vote";
pub(crate) const KEY_COMMITTED: &str = "committed";
pub(crate) const KEY_LAST_PURGED: &str = "last_purged";
pub(crate) const KEY_SNAPSHOT_META: &str = "snapshot_meta";
pub(crate) const KEY_SNAPSHOT_DATA: &str = "snapshot_data";
pub(crate) const KEY_NODE_ID: &str = "node_id";
/// The store's format ([`STORE_FORMAT`]), written when the file is created.
pub(crate) const KEY_FORMAT: &str = "format";

/// How everything in `raft.redb` is encoded: postcard of openraft 0.9's entries carrying
/// `Proposal { epoch, change: portico_model::Change }`, of the vote and of the other records
/// (snapshots also carry their own `SNAPSHOT_FORMAT`). postcard is not self-describing, so a
/// build that changed those types would misread an older file, or read garbage as entries:
/// raise this with any change to their encoding (appending an enum variant keeps old data
/// readable), and a file of another format is refused when opened, with a clear error,
/// instead of being misread. A file from before this key existed is format 1.
pub const STORE_FORMAT: u32 = 1;
/// This volume's incarnation (see the `incarnation` module).
pub(crate) const KEY_INCARNATION: &str = "incarnation";
/// The incarnation accepted from every other node.
pub(crate) const KEY_PEER_INCARNATIONS: &str = "peer_incarnations";

/// The file name of the store inside the data directory.
pub const STORE_FILE: &str = "raft.redb";

/// Errors opening or reading the store outside openraft's own calls.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redb: {0}")]
    Redb(#[from] redb::Error),
    #[error("corrupt record {key:?} in the Raft store: {source}")]
    Corrupt {
        key: &'static str,
        #[source]
        source: postcard::Error,
    },
    #[error(
        "the Raft store is in format {found} and this build reads format {STORE_FORMAT}: run the version that wrote it, or wipe the data directory (the routing table is rebuilt from the API server)"
    )]
    Format { found: u32 },
    #[error("a blocking store task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("data directory {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The shared redb database handle.
#[derive(Clone)]
pub(crate) struct Db(Arc<Database>);

impl Db {
    pub(crate) fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| StoreError::Io { path, source }
        };
        // The log and snapshots hold TLS private keys: the directory 0700, the file 0600.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .map_err(io(data_dir))?;
        // An existing directory (a volume's root we do not own) may refuse; the file's own
        // mode is what keeps the keys private.
        if let Err(error) = std::fs::set_permissions(data_dir, Permissions::from_mode(0o700)) {
            tracing::warn!(dir = %data_dir.display(), %error, "cannot make the data directory private (0700)");
        }
        let path = data_dir.join(STORE_FILE);
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path))?;
        // A file made by an older version (0644) is narrowed too.
        std::fs::set_permissions(&path, Permissions::from_mode(0o600)).map_err(io(&path))?;
        let db = Database::create(&path).map_err(redb::Error::from)?;
        // Create both tables up front so readers never see "table does not exist".
        let tx = db.begin_write().map_err(redb::Error::from)?;
        tx.open_table(LOG).map_err(redb::Error::from)?;
        {
            let mut meta = tx.open_table(META).map_err(redb::Error::from)?;
            let found = match meta.get(KEY_FORMAT).map_err(redb::Error::from)? {
                Some(value) => Some(postcard::from_bytes::<u32>(value.value()).map_err(
                    |source| StoreError::Corrupt {
                        key: KEY_FORMAT,
                        source,
                    },
                )?),
                None => None,
            };
            match found {
                Some(STORE_FORMAT) => {}
                Some(found) => return Err(StoreError::Format { found }),
                None => drop(
                    meta.insert(KEY_FORMAT, encode(&STORE_FORMAT).as_slice())
                        .map_err(redb::Error::from)?,
                ),
            }
        }
        tx.commit().map_err(redb::Error::from)?;
        Ok(Self(Arc::new(db)))
    }

    /// Runs a blocking store operation off the async runtime's worker threads.
    pub(crate) async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.0.clone();
        tokio::task::spawn_blocking(move || f(&db)).await?
    }

    pub(crate) fn read_meta<T: DeserializeOwned>(
        db: &Database,
        key: &'static str,
    ) -> Result<Option<T>, StoreError> {
        let tx = db.begin_read().map_err(redb::Error::from)?;
        let table = tx.open_table(META).map_err(redb::Error::from)?;
        let Some(value) = table.get(key).map_err(redb::Error::from)? else {
            return Ok(None);
        };
        postcard::from_bytes(value.value())
            .map(Some)
            .map_err(|source| StoreError::Corrupt { key, source })
    }

    /// Writes one record durably: fsynced before this returns.
    pub(crate) fn write_meta<T: Serialize>(
        db: &Database,
        key: &'static str,
        value: &T,
    ) -> Result<(), StoreError> {
        Self::write_meta_with(db, key, value, redb::Durability::Immediate)
    }

    /// Writes one record; with `Durability::None` it reaches the disk with the next
    /// durable commit (for hints whose loss Raft tolerates, such as the commit index).
    pub(crate) fn write_meta_with<T: Serialize>(
        db: &Database,
        key: &'static str,
        value: &T,
        durability: redb::Durability,
    ) -> Result<(), StoreError> {
        let bytes = encode(value);
        let mut tx = db.begin_write().map_err(redb::Error::from)?;
        tx.set_durability(durability).map_err(redb::Error::from)?;
        {
            let mut table = tx.open_table(META).map_err(redb::Error::from)?;
            table
                .insert(key, bytes.as_slice())
                .map_err(redb::Error::from)?;
        }
        tx.commit().map_err(redb::Error::from)?;
        Ok(())
    }
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("encoding Raft records to memory cannot fail")
}

/// Maps any error into openraft's storage error (as an I/O failure on `subject`).
pub(crate) fn io_error(
    subject: openraft::ErrorSubject<crate::types::NodeId>,
    verb: openraft::ErrorVerb,
    e: StoreError,
) -> crate::types::StorageError {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::new(&e)).into()
}

#[cfg(test)]
mod suite_test;

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_store_is_private_to_its_owner() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        let db = Db::open(&dir).unwrap();
        drop(db);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(STORE_FILE)), 0o600);
    }

    #[test]
    fn a_store_of_another_format_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        assert_eq!(
            Db::read_meta::<u32>(&db.0, KEY_FORMAT).unwrap(),
            Some(STORE_FORMAT)
        );
        // A newer build's file.
        Db::write_meta(&db.0, KEY_FORMAT, &(STORE_FORMAT + 1)).unwrap();
        drop(db);
        let error = Db::open(dir.path()).err().expect("refused");
        assert!(
            matches!(error, StoreError::Format { found } if found == STORE_FORMAT + 1),
            "{error}"
        );
        assert!(
            error.to_string().contains("wipe the data directory"),
            "{error}"
        );
    }

    #[test]
    fn a_store_from_before_the_format_key_is_format_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let tx = db.0.begin_write().unwrap();
        tx.open_table(META).unwrap().remove(KEY_FORMAT).unwrap();
        tx.commit().unwrap();
        drop(db);
        let db = Db::open(dir.path()).unwrap();
        assert_eq!(Db::read_meta::<u32>(&db.0, KEY_FORMAT).unwrap(), Some(1));
    }

    #[test]
    fn a_store_left_readable_by_an_older_version_is_narrowed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(dir.path(), Permissions::from_mode(0o755)).unwrap();
        drop(Db::open(dir.path()).unwrap());
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(dir.path()), 0o700);
    }
}
