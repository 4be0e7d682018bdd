//! The Raft log and vote, on disk.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, RaftLogReader};
use redb::{ReadableDatabase, ReadableTable};

use super::{
    Db, KEY_COMMITTED, KEY_LAST_PURGED, KEY_VOTE, LOG, META, StoreError, encode, io_error,
};
use crate::metrics::Counters;
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// The log store handed to openraft. Cheap to clone (openraft takes a second copy as its
/// log reader for replication).
#[derive(Clone)]
pub(crate) struct LogStore {
    db: Db,
    counters: Arc<Counters>,
}

impl LogStore {
    pub(crate) fn new(db: Db, counters: Arc<Counters>) -> Self {
        Self { db, counters }
    }
}

fn logs_error(verb: ErrorVerb) -> impl FnOnce(StoreError) -> StorageError {
    move |e| io_error(ErrorSubject::Logs, verb, e)
}

fn read_range(
    db: &redb::Database,
    start: Bound<u64>,
    end: Bound<u64>,
) -> Result<Vec<Entry>, StoreError> {
    let tx = db.begin_read().map_err(redb::Error::from)?;
    let table = tx.open_table(LOG).map_err(redb::Error::from)?;
    let mut entries = Vec::new();
    for item in table
        .range::<u64>((start, end))
        .map_err(redb::Error::from)?
    {
        let (_, value) = item.map_err(redb::Error::from)?;
        let entry = postcard::from_bytes(value.value())
            .map_err(|source| StoreError::Corrupt { key: "log", source })?;
        entries.push(entry);
    }
    Ok(entries)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = range.start_bound().cloned();
        let end = range.end_bound().cloned();
        self.db
            .blocking(move |db| read_range(db, start, end))
            .await
            .map_err(logs_error(ErrorVerb::Read))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        self.db
            .blocking(|db| {
                let last_purged: Option<LogId> = Db::read_meta(db, KEY_LAST_PURGED)?;
                let tx = db.begin_read().map_err(redb::Error::from)?;
                let table = tx.open_table(LOG).map_err(redb::Error::from)?;
                let last = match table.last().map_err(redb::Error::from)? {
                    Some((_, value)) => {
                        let entry: Entry = postcard::from_bytes(value.value())
                            .map_err(|source| StoreError::Corrupt { key: "log", source })?;
                        Some(entry.log_id)
                    }
                    None => last_purged,
                };
                Ok(LogState {
                    last_purged_log_id: last_purged,
                    last_log_id: last,
                })
            })
            .await
            .map_err(logs_error(ErrorVerb::Read))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let vote = *vote;
        self.db
            .blocking(move |db| Db::write_meta(db, KEY_VOTE, &vote))
            .await
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.db
            .blocking(|db| Db::read_meta(db, KEY_VOTE))
            .await
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Read, e))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        if let Some(log_id) = committed {
            self.counters.set_committed(log_id.index);
        }
        // Raft itself does not need this durable (a leader re-establishes it), but a replica
        // restarted after a crash rebuilds its table from its own log up to this index and
        // serves it at once: were it not on disk, the replica would briefly serve an older
        // version than it served before the crash. An applied version never goes backwards,
        // so the index is fsynced (the chaos harness found the lost-update window).
        self.db
            .blocking(move |db| {
                Db::write_meta_with(db, KEY_COMMITTED, &committed, redb::Durability::Immediate)
            })
            .await
            .map_err(logs_error(ErrorVerb::Write))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed: Option<LogId> = self
            .db
            .blocking(|db| Ok(Db::read_meta::<Option<LogId>>(db, KEY_COMMITTED)?.flatten()))
            .await
            .map_err(logs_error(ErrorVerb::Read))?;
        if let Some(log_id) = committed {
            self.counters.set_committed(log_id.index);
        }
        Ok(committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|entry| (entry.log_id.index, encode(&entry)))
            .collect();
        let result = self
            .db
            .blocking(move |db| {
                let tx = db.begin_write().map_err(redb::Error::from)?;
                {
                    let mut table = tx.open_table(LOG).map_err(redb::Error::from)?;
                    for (index, bytes) in &encoded {
                        table
                            .insert(*index, bytes.as_slice())
                            .map_err(redb::Error::from)?;
                    }
                }
                // Durability::Immediate (the default): fsynced when commit returns.
                tx.commit().map_err(redb::Error::from)?;
                Ok(())
            })
            .await;
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(logs_error(ErrorVerb::Write)(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.db
            .blocking(move |db| {
                let tx = db.begin_write().map_err(redb::Error::from)?;
                {
                    let mut table = tx.open_table(LOG).map_err(redb::Error::from)?;
                    table
                        .retain_in::<u64, _>(log_id.index.., |_, _| false)
                        .map_err(redb::Error::from)?;
                }
                tx.commit().map_err(redb::Error::from)?;
                Ok(())
            })
            .await
            .map_err(logs_error(ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.db
            .blocking(move |db| {
                let tx = db.begin_write().map_err(redb::Error::from)?;
                {
                    // Record the purge point first, in the same transaction: the log state
                    // never claims entries that are gone.
                    let mut meta = tx.open_table(META).map_err(redb::Error::from)?;
                    let bytes = encode(&log_id);
                    meta.insert(KEY_LAST_PURGED, bytes.as_slice())
                        .map_err(redb::Error::from)?;
                    let mut table = tx.open_table(LOG).map_err(redb::Error::from)?;
                    table
                        .retain_in::<u64, _>(..=log_id.index, |_, _| false)
                        .map_err(redb::Error::from)?;
                }
                tx.commit().map_err(redb::Error::from)?;
                Ok(())
            })
            .await
            .map_err(logs_error(ErrorVerb::Delete))
    }
}
