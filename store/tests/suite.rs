//! openraft's storage conformance suite against the real RocksDB log store
//! and state machine (sealed under a fresh keyring, as in production).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use coffer_store::engine::db::Db;
use coffer_store::engine::log_store::LogStore;
use coffer_store::engine::state_machine::{Shared, StateMachine};
use coffer_store::keyring::Keyring;
use coffer_store::{NodeId, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{StorageError, StorageIOError};
use tempfile::TempDir;

/// Watch history kept by the state machine under test (irrelevant to the suite).
const WATCH_HISTORY_REVISIONS: u64 = 1_000;

/// Builds a log store and state machine over one RocksDB instance in a fresh
/// temporary directory; the directory lives as long as the guard.
struct RocksBuilder;

fn io_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write(&e).into()
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().map_err(io_err)?;
        let cipher = Keyring::generate().cipher().map_err(io_err)?;
        let db = Db::open(&dir.path().join("db"), Arc::new(cipher))
            .map_err(|e| io_err(std::io::Error::other(e.to_string())))?;
        let db = Arc::new(db);
        let snapshot_dir = dir.path().join("snapshots");
        std::fs::create_dir_all(&snapshot_dir).map_err(io_err)?;
        let shared =
            Shared::open(db.clone(), snapshot_dir, WATCH_HISTORY_REVISIONS).map_err(io_err)?;
        let log_store = LogStore::open(db).map_err(io_err)?;
        Ok((dir, log_store, StateMachine { shared }))
    }
}

#[test]
fn openraft_storage_suite_on_rocksdb() {
    if let Err(e) = Suite::test_all(RocksBuilder) {
        panic!("openraft storage suite failed: {e}");
    }
}
