//! The replica's Raft node ID.
//!
//! A node ID is a random non-zero 64-bit number drawn once and stored in the same redb file
//! as the log and the vote. They live and die together: a replica whose data directory was
//! wiped has no ID any more, draws a fresh one, and joins as a new member. It can never come
//! back under its old ID with an empty log, which would let it vote as if it still held
//! entries it had acknowledged (the classic way to lose committed data in Raft).

use redb::{ReadableDatabase, ReadableTableMetadata};
use ring::rand::{SecureRandom, SystemRandom};

use crate::store::{Db, KEY_NODE_ID, KEY_VOTE, LOG, StoreError};
use crate::types::NodeId;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the Raft store holds a log or vote but no node ID; refusing to guess one")]
    MissingId,
    #[error("the system random number generator failed")]
    Random,
}

/// Loads this replica's node ID, or draws and stores a fresh one if the store is new.
/// Returns the ID and whether it is fresh.
pub(crate) async fn load_or_create(db: &Db) -> Result<(NodeId, bool), IdentityError> {
    db.blocking(|db| {
        if let Some(id) = Db::read_meta::<NodeId>(db, KEY_NODE_ID)? {
            return Ok(Ok((id, false)));
        }
        let has_vote = Db::read_meta::<crate::types::Vote>(db, KEY_VOTE)?.is_some();
        let tx = db.begin_read().map_err(redb::Error::from)?;
        let has_log = tx
            .open_table(LOG)
            .map_err(redb::Error::from)?
            .len()
            .map_err(redb::Error::from)?
            > 0;
        if has_vote || has_log {
            return Ok(Err(IdentityError::MissingId));
        }
        let id = loop {
            let mut bytes = [0u8; 8];
            if SystemRandom::new().fill(&mut bytes).is_err() {
                return Ok(Err(IdentityError::Random));
            }
            // Keep IDs below 2^63 so they print the same in every signed/unsigned exporter.
            let id = u64::from_le_bytes(bytes) >> 1;
            if id != 0 {
                break id;
            }
        };
        Db::write_meta(db, KEY_NODE_ID, &id)?;
        Ok(Ok((id, true)))
    })
    .await?
}
