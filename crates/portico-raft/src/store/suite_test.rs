//! openraft's own storage test suite, against the redb store.

use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};

use super::Db;
use super::log::LogStore;
use super::state_machine::StateMachine;
use crate::metrics::Counters;
use crate::types::{StorageError, TypeConfig};

struct TempStore;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for TempStore {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let db = Db::open(dir.path()).expect("open the store");
        let counters = Arc::new(Counters::default());
        let log = LogStore::new(db.clone(), counters.clone());
        let (state_machine, _table) = StateMachine::open(db, counters)
            .await
            .expect("open the state machine");
        Ok((dir, log, state_machine))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(TempStore).expect("openraft storage suite");
}
