//! The replicated state machine: Portico's routing table, in memory.
//!
//! Applying the entry at log index `i` runs `table.apply(i, &change)`, so the table's
//! version is the index of the last change it applied. A proposal whose fencing epoch is
//! lower than the highest epoch already applied is refused (and counted) on every replica
//! alike, because the decision depends only on the log. After each applied batch the new
//! table is published through a `watch` channel (cloning the table is cheap: its parts are
//! structurally shared).
//!
//! A snapshot is the table's own encoding (`RoutingTable::to_bytes`) plus the highest epoch,
//! stored in redb next to the log so a restart starts from it.

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder};
use portico_model::RoutingTable;
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Db, KEY_SNAPSHOT_DATA, KEY_SNAPSHOT_META, META, StoreError, encode, io_error};
use crate::metrics::Counters;
use crate::types::{
    ApplyOutcome, Entry, LogId, MAX_EPOCH, Proposal, Snapshot, SnapshotMeta, StorageError,
    StoredMembership, TypeConfig,
};

/// Version tag of the snapshot encoding, so a future format can be told apart.
const SNAPSHOT_FORMAT: u8 = 1;

/// The bytes of a snapshot as they are stored and sent to lagging replicas. The digest
/// lets a replica check a received snapshot as it streams in (see [`SnapshotCheck`]).
#[derive(Serialize)]
struct SnapshotPayload {
    format: u8,
    highest_epoch: u64,
    table_sha256: [u8; 32],
    table: Vec<u8>,
}

/// [`SnapshotPayload`] read in place: the table is a slice of the snapshot's bytes, not a
/// second copy of them (postcard encodes bytes and a `Vec<u8>` alike).
#[derive(Deserialize)]
struct SnapshotPayloadRef<'a> {
    format: u8,
    highest_epoch: u64,
    _table_sha256: [u8; 32],
    #[serde(borrow)]
    table: &'a [u8],
}

/// Everything of a [`SnapshotPayload`] before the table's bytes.
#[derive(Deserialize)]
struct SnapshotHeader {
    format: u8,
    _highest_epoch: u64,
    table_sha256: [u8; 32],
    table_len: u64,
}

/// Postcard's bound on an encoded header: a byte, two 10-byte varints and the digest.
const MAX_HEADER_BYTES: usize = 1 + 10 + 32 + 10;

fn sha256(bytes: &[u8]) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .try_into()
        .expect("SHA-256 digests are 32 bytes")
}

/// Checks a snapshot's bytes as they arrive, chunk by chunk, keeping none of them: the
/// header, then a running SHA-256 of the table, then at the end that exactly the announced
/// length came and the digest matches. A snapshot that fails to install is fatal to
/// openraft, so a garbled one is refused at the RPC layer; streaming the digest means that
/// check costs no copy of the snapshot (openraft keeps the one copy it installs from).
pub(crate) struct SnapshotCheck {
    /// The header's bytes until it can be decoded.
    header: Vec<u8>,
    table: Option<TableDigest>,
    received: u64,
}

struct TableDigest {
    expected: [u8; 32],
    remaining: u64,
    digest: ring::digest::Context,
}

impl SnapshotCheck {
    pub(crate) fn new() -> Self {
        Self {
            header: Vec::new(),
            table: None,
            received: 0,
        }
    }

    /// The bytes fed so far (the offset the next chunk must start at).
    pub(crate) fn received(&self) -> u64 {
        self.received
    }

    /// Takes the next chunk.
    pub(crate) fn feed(&mut self, mut chunk: &[u8]) -> Result<(), &'static str> {
        self.received += chunk.len() as u64;
        if self.table.is_none() {
            let take = chunk.len().min(MAX_HEADER_BYTES - self.header.len());
            self.header.extend_from_slice(&chunk[..take]);
            let (header, rest) = match postcard::take_from_bytes::<SnapshotHeader>(&self.header) {
                Ok(decoded) => decoded,
                Err(postcard::Error::DeserializeUnexpectedEnd)
                    if self.header.len() < MAX_HEADER_BYTES =>
                {
                    return Ok(());
                }
                Err(_) => return Err("undecodable snapshot"),
            };
            if header.format != SNAPSHOT_FORMAT {
                return Err("unknown snapshot format");
            }
            // Bytes of this chunk past the header: those the header buffer took beyond it,
            // then those it did not take.
            let consumed_here = take - rest.len();
            let mut table = TableDigest {
                expected: header.table_sha256,
                remaining: header.table_len,
                digest: ring::digest::Context::new(&ring::digest::SHA256),
            };
            table.take(&chunk[consumed_here..take])?;
            chunk = &chunk[take..];
            self.table = Some(table);
            self.header = Vec::new();
        }
        self.table.as_mut().expect("set above").take(chunk)
    }

    /// The snapshot is complete: whole and unaltered, or why not.
    pub(crate) fn finish(self) -> Result<(), &'static str> {
        let table = self.table.ok_or("truncated snapshot")?;
        if table.remaining != 0 {
            return Err("truncated snapshot");
        }
        if table.digest.finish().as_ref() != table.expected {
            return Err("snapshot digest mismatch");
        }
        Ok(())
    }
}

impl TableDigest {
    fn take(&mut self, bytes: &[u8]) -> Result<(), &'static str> {
        if bytes.len() as u64 > self.remaining {
            return Err("snapshot longer than its table");
        }
        self.remaining -= bytes.len() as u64;
        self.digest.update(bytes);
        Ok(())
    }
}

/// Whether an entry's epoch lets it apply, given the highest epoch applied so far: a
/// change needs at least that epoch, a claim more; nothing above [`MAX_EPOCH`]. Depends
/// only on the log, so every replica decides alike.
fn judge(proposal: &Proposal, highest_epoch: u64) -> Result<(), ApplyOutcome> {
    let epoch = proposal.epoch;
    if epoch > MAX_EPOCH {
        return Err(ApplyOutcome::RefusedEpochOutOfRange { epoch });
    }
    let fresh = match proposal.change {
        Some(_) => epoch >= highest_epoch,
        None => epoch > highest_epoch,
    };
    if fresh {
        Ok(())
    } else {
        Err(ApplyOutcome::RefusedStaleEpoch {
            epoch,
            highest_epoch,
        })
    }
}

/// Everything the state machine has applied so far.
#[derive(Clone, Default)]
struct Applied {
    table: RoutingTable,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    highest_epoch: u64,
}

impl Applied {
    fn from_snapshot(meta: &SnapshotMeta, data: &[u8]) -> Result<Self, StoreError> {
        let payload: SnapshotPayloadRef<'_> =
            postcard::from_bytes(data).map_err(|source| StoreError::Corrupt {
                key: KEY_SNAPSHOT_DATA,
                source,
            })?;
        if payload.format != SNAPSHOT_FORMAT {
            return Err(StoreError::Corrupt {
                key: KEY_SNAPSHOT_DATA,
                source: postcard::Error::DeserializeBadEncoding,
            });
        }
        let table = RoutingTable::from_bytes(payload.table).map_err(|_| StoreError::Corrupt {
            key: KEY_SNAPSHOT_DATA,
            source: postcard::Error::DeserializeBadEncoding,
        })?;
        Ok(Self {
            table,
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            highest_epoch: payload.highest_epoch,
        })
    }
}

fn read_snapshot(db: &redb::Database) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StoreError> {
    let Some(meta) = Db::read_meta::<SnapshotMeta>(db, KEY_SNAPSHOT_META)? else {
        return Ok(None);
    };
    let tx = db.begin_read().map_err(redb::Error::from)?;
    let table = tx.open_table(META).map_err(redb::Error::from)?;
    let data = table
        .get(KEY_SNAPSHOT_DATA)
        .map_err(redb::Error::from)?
        .map(|v| v.value().to_vec())
        .unwrap_or_default();
    Ok(Some((meta, data)))
}

/// Stores a snapshot unless a newer one is already stored (a slow build can finish after
/// a newer snapshot was installed from the leader).
fn write_snapshot(db: &redb::Database, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StoreError> {
    let tx = db.begin_write().map_err(redb::Error::from)?;
    {
        let mut table = tx.open_table(META).map_err(redb::Error::from)?;
        let existing: Option<SnapshotMeta> = table
            .get(KEY_SNAPSHOT_META)
            .map_err(redb::Error::from)?
            .and_then(|v| postcard::from_bytes(v.value()).ok());
        if existing.is_some_and(|old| old.last_log_id > meta.last_log_id) {
            return Ok(());
        }
        let meta_bytes = encode(meta);
        table
            .insert(KEY_SNAPSHOT_META, meta_bytes.as_slice())
            .map_err(redb::Error::from)?;
        table
            .insert(KEY_SNAPSHOT_DATA, data)
            .map_err(redb::Error::from)?;
    }
    tx.commit().map_err(redb::Error::from)?;
    Ok(())
}

/// The state machine handed to openraft.
pub(crate) struct StateMachine {
    db: Db,
    state: Applied,
    published: watch::Sender<Arc<RoutingTable>>,
    counters: Arc<Counters>,
    snapshots_started: u64,
}

impl StateMachine {
    /// Opens the state machine from the stored snapshot (if any). Openraft then re-applies
    /// the log from there up to the stored committed index.
    pub(crate) async fn open(
        db: Db,
        counters: Arc<Counters>,
    ) -> Result<(Self, watch::Receiver<Arc<RoutingTable>>), StoreError> {
        let stored = db.blocking(read_snapshot).await?;
        let state = match stored {
            Some((meta, data)) => Applied::from_snapshot(&meta, &data)?,
            None => Applied::default(),
        };
        counters.set_highest_epoch(state.highest_epoch);
        counters.set_applied(state.last_applied.map(|id| id.index), state.table.version());
        let (published, receiver) = watch::channel(Arc::new(state.table.clone()));
        Ok((
            Self {
                db,
                state,
                published,
                counters,
                snapshots_started: 0,
            },
            receiver,
        ))
    }

    fn publish(&self) {
        self.counters.set_highest_epoch(self.state.highest_epoch);
        self.counters.set_applied(
            self.state.last_applied.map(|id| id.index),
            self.state.table.version(),
        );
        self.published
            .send_replace(Arc::new(self.state.table.clone()));
    }
}

/// Builds a snapshot from a frozen copy of the state (the table clone is cheap).
pub(crate) struct SnapshotBuilder {
    db: Db,
    state: Applied,
    counters: Arc<Counters>,
    id_suffix: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let state = self.state.clone();
        let snapshot_id = match state.last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, self.id_suffix),
            None => format!("0-0-{}", self.id_suffix),
        };
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership.clone(),
            snapshot_id,
        };
        let stored_meta = meta.clone();
        let data = self
            .db
            .blocking(move |db| {
                let table = state.table.to_bytes();
                let payload = SnapshotPayload {
                    format: SNAPSHOT_FORMAT,
                    highest_epoch: state.highest_epoch,
                    table_sha256: sha256(&table),
                    table,
                };
                let data = encode(&payload);
                write_snapshot(db, &stored_meta, &data)?;
                Ok(data)
            })
            .await
            .map_err(|e| {
                io_error(
                    ErrorSubject::Snapshot(Some(meta.signature())),
                    ErrorVerb::Write,
                    e,
                )
            })?;
        self.counters.snapshot_built();
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.state.last_applied, self.state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyOutcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut outcomes = Vec::new();
        for entry in entries {
            self.state.last_applied = Some(entry.log_id);
            let outcome = match entry.payload {
                EntryPayload::Blank => ApplyOutcome::NotAChange,
                EntryPayload::Membership(membership) => {
                    self.state.membership = StoredMembership::new(Some(entry.log_id), membership);
                    ApplyOutcome::NotAChange
                }
                EntryPayload::Normal(proposal) => {
                    match judge(&proposal, self.state.highest_epoch) {
                        Err(refused) => {
                            self.counters.refused_stale_entry();
                            tracing::warn!(
                                index = entry.log_id.index,
                                epoch = proposal.epoch,
                                highest_epoch = self.state.highest_epoch,
                                claim = proposal.change.is_none(),
                                "refused an entry: its fencing epoch is stale or out of range"
                            );
                            refused
                        }
                        Ok(()) => {
                            self.state.highest_epoch = proposal.epoch;
                            match &proposal.change {
                                Some(change) => {
                                    self.state.table.apply(entry.log_id.index, change);
                                    ApplyOutcome::Applied {
                                        version: entry.log_id.index,
                                    }
                                }
                                None => ApplyOutcome::NotAChange,
                            }
                        }
                    }
                }
            };
            outcomes.push(outcome);
        }
        self.publish();
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshots_started += 1;
        SnapshotBuilder {
            db: self.db.clone(),
            state: self.state.clone(),
            counters: self.counters.clone(),
            id_suffix: self.snapshots_started,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let snapshot_error =
            |verb, e| io_error(ErrorSubject::Snapshot(Some(meta.signature())), verb, e);
        let state =
            Applied::from_snapshot(meta, &data).map_err(|e| snapshot_error(ErrorVerb::Read, e))?;
        let stored_meta = meta.clone();
        self.db
            .blocking(move |db| write_snapshot(db, &stored_meta, &data))
            .await
            .map_err(|e| snapshot_error(ErrorVerb::Write, e))?;
        self.state = state;
        self.counters.snapshot_installed();
        tracing::info!(snapshot = %meta, "installed a snapshot from the leader");
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let stored = self
            .db
            .blocking(read_snapshot)
            .await
            .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        Ok(stored.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(epoch: u64) -> Proposal {
        Proposal {
            epoch,
            change: Some(portico_model::Change::Batch(Vec::new())),
        }
    }

    fn claim(epoch: u64) -> Proposal {
        Proposal {
            epoch,
            change: None,
        }
    }

    /// A snapshot's bytes as `build_snapshot` encodes them, around `table`.
    fn snapshot_bytes(table: Vec<u8>, highest_epoch: u64) -> Vec<u8> {
        postcard::to_stdvec(&SnapshotPayload {
            format: SNAPSHOT_FORMAT,
            highest_epoch,
            table_sha256: sha256(&table),
            table,
        })
        .unwrap()
    }

    fn check_in_chunks(bytes: &[u8], chunk: usize) -> Result<(), &'static str> {
        let mut check = SnapshotCheck::new();
        for piece in bytes.chunks(chunk) {
            check.feed(piece)?;
        }
        assert_eq!(check.received(), bytes.len() as u64);
        check.finish()
    }

    #[test]
    fn a_snapshot_streamed_in_any_chunk_size_checks_whole() {
        let table: Vec<u8> = (0..5_000u32).map(|i| (i * 7) as u8).collect();
        // Epochs of one and of ten varint bytes move where the table starts.
        for epoch in [3, u64::MAX] {
            let bytes = snapshot_bytes(table.clone(), epoch);
            for chunk in [1, 2, 7, 40, 53, 54, 1_000, bytes.len()] {
                assert_eq!(check_in_chunks(&bytes, chunk), Ok(()), "chunks of {chunk}");
            }
            // The borrowed reading sees the same table and epoch as were written.
            let payload: SnapshotPayloadRef<'_> = postcard::from_bytes(&bytes).unwrap();
            assert_eq!((payload.table, payload.highest_epoch), (&table[..], epoch));
        }
        assert_eq!(check_in_chunks(&snapshot_bytes(Vec::new(), 0), 1), Ok(()));
    }

    #[test]
    fn a_garbled_truncated_or_extended_snapshot_is_refused_as_it_streams() {
        let table: Vec<u8> = (0..3_000u32).map(|i| i as u8).collect();
        let bytes = snapshot_bytes(table, 9);
        let mut flipped = bytes.clone();
        let at = flipped.len() - 100;
        flipped[at] ^= 1;
        assert_eq!(
            check_in_chunks(&flipped, 64),
            Err("snapshot digest mismatch")
        );
        let mut digest_flipped = bytes.clone();
        digest_flipped[5] ^= 1;
        assert_eq!(
            check_in_chunks(&digest_flipped, 64),
            Err("snapshot digest mismatch")
        );
        assert_eq!(
            check_in_chunks(&bytes[..bytes.len() - 1], 64),
            Err("truncated snapshot")
        );
        assert_eq!(check_in_chunks(&bytes[..20], 64), Err("truncated snapshot"));
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            check_in_chunks(&longer, 64),
            Err("snapshot longer than its table")
        );
        let mut format = bytes.clone();
        format[0] = SNAPSHOT_FORMAT + 1;
        assert_eq!(check_in_chunks(&format, 64), Err("unknown snapshot format"));
        // A header that never ends (varints of 0xff bytes) is refused, not buffered for ever.
        assert_eq!(
            check_in_chunks(&[0xff; 200], 1),
            Err("undecodable snapshot")
        );
    }

    #[test]
    fn changes_need_the_highest_epoch_and_claims_a_higher_one() {
        assert_eq!(judge(&change(5), 5), Ok(()));
        assert_eq!(judge(&change(6), 5), Ok(()));
        assert!(matches!(
            judge(&change(4), 5),
            Err(ApplyOutcome::RefusedStaleEpoch {
                epoch: 4,
                highest_epoch: 5
            })
        ));
        // A second leadership may not reuse the epoch another one claimed.
        assert!(judge(&claim(5), 5).is_err());
        assert_eq!(judge(&claim(6), 5), Ok(()));
    }

    #[test]
    fn epochs_above_the_maximum_are_refused_without_overflow() {
        for proposal in [change(u64::MAX), claim(u64::MAX), change(MAX_EPOCH + 1)] {
            assert!(matches!(
                judge(&proposal, 0),
                Err(ApplyOutcome::RefusedEpochOutOfRange { .. })
            ));
        }
        assert_eq!(judge(&claim(MAX_EPOCH), MAX_EPOCH - 1), Ok(()));
        assert!(judge(&claim(MAX_EPOCH), MAX_EPOCH).is_err());
    }
}
