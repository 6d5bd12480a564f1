//! `coffer snapshot restore`: a new data directory, offline, holding
//! exactly what a snapshot holds (every key, value, revision and lease),
//! as a single-member cluster of its own, as `etcdutl snapshot restore`
//! makes one.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;

use openraft::{BasicNode, CommittedLeaderId, LogId, Membership, StoredMembership};
use zeroize::Zeroizing;

use crate::config::Config;
use crate::engine::db::Db;
use crate::engine::keys;
use crate::engine::log_store;
use crate::engine::state_machine::Shared;
use crate::error::{Error, OpenError};
use crate::snapshot::{Frame, SnapshotHeader};

/// What a restore wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The store's revision, as it was when the snapshot was taken.
    pub revision: u64,
    /// Keys restored.
    pub records: u64,
}

fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> OpenError + '_ {
    move |source| OpenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Builds a store in `config.dir` (which must not exist, or be empty)
/// from the snapshot frames `next` yields (plaintext, first the header,
/// last the end marker): new keys (under `config.unlock_key` if given), the
/// snapshot's keys, values, revisions and leases, and a Raft state in which
/// `config.node_id` at `config.advertise_addr` is the only member. Opened
/// afterwards with [`crate::Store::open`], it elects itself. On any error
/// the directory is removed again.
pub fn restore_snapshot(
    config: &Config,
    next: impl FnMut() -> Result<Option<Zeroizing<Vec<u8>>>, String>,
) -> Result<Restored, OpenError> {
    let dir = &config.dir;
    if config.node_id == 0 {
        return Err(OpenError::Config("node id 0 is reserved".into()));
    }
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(OpenError::Config(format!(
                    "{} is not empty: a snapshot is restored into a new data directory",
                    dir.display()
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err(dir))?;
        }
        Err(e) => return Err(io_err(dir)(e)),
    }
    let restored = write_store(config, next);
    if restored.is_err() {
        // Nothing half-restored is left behind (the directory was empty).
        clear_restored(dir);
    }
    restored
}

/// Removes everything in `dir`, a directory [`restore_snapshot`] wrote
/// into (empty before): for a caller whose own steps after the restore
/// failed. Best effort.
pub fn clear_restored(dir: &std::path::Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            let _ = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
        }
    }
}

fn write_store(
    config: &Config,
    mut next: impl FnMut() -> Result<Option<Zeroizing<Vec<u8>>>, String>,
) -> Result<Restored, OpenError> {
    let dir = &config.dir;
    let keyring = keys::open_keyring(dir, true, config.unlock_key.as_ref())?;
    let cipher = Arc::new(keyring.cipher().map_err(|e| OpenError::Corruption {
        path: dir.join(keys::KEYS_DIR),
        detail: e.to_string(),
    })?);
    drop(keyring);
    let snapshot_dir = dir.join("snapshots");
    fs::create_dir_all(&snapshot_dir).map_err(io_err(&snapshot_dir))?;
    let open_err = |e: Error| OpenError::Engine(e.to_string());
    let db = Arc::new(Db::open(&dir.join("db"), cipher).map_err(open_err)?);
    db.check_format().map_err(open_err)?;
    let shared =
        Shared::open(db.clone(), snapshot_dir, config.watch_history_revisions).map_err(open_err)?;

    let bad = |detail: String| OpenError::Config(format!("the snapshot: {detail}"));
    let first = next()
        .map_err(bad)?
        .ok_or_else(|| bad("it is empty".into()))?;
    let Frame::Header(header) = Frame::decode(&first).map_err(|e| bad(e.to_string()))? else {
        return Err(bad("its first frame is not a header".into()));
    };
    // This member alone, at the first index of a new term.
    let node = config.node_id;
    let log_id = LogId::new(CommittedLeaderId::new(1, node), 1);
    let membership = Membership::new(
        vec![BTreeSet::from([node])],
        BTreeMap::from([(node, BasicNode::new(&config.advertise_addr))]),
    );
    let mut meta = header.meta.clone();
    meta.last_log_id = Some(log_id);
    meta.last_membership = StoredMembership::new(Some(log_id), membership);
    meta.snapshot_id = format!("restored-{}", header.meta.snapshot_id);
    let revision = header.revision;
    let mut writer = shared.receive_snapshot().map_err(open_err)?;
    let header = Frame::Header(SnapshotHeader {
        meta: meta.clone(),
        revision,
    })
    .encode()
    .map_err(|e| bad(e.to_string()))?;
    writer
        .write_frame(&header)
        .map_err(|e| bad(e.to_string()))?;
    let mut records = 0u64;
    let mut ended = false;
    while let Some(plain) = next().map_err(bad)? {
        if ended {
            return Err(bad("frames after its end marker".into()));
        }
        match Frame::decode(&plain).map_err(|e| bad(e.to_string()))? {
            Frame::Records(kvs) => records += kvs.len() as u64,
            Frame::End { .. } => ended = true,
            _ => {}
        }
        writer.write_frame(&plain).map_err(|e| bad(e.to_string()))?;
    }
    if !ended || !writer.is_complete() {
        return Err(bad("it ends before its end marker".into()));
    }
    let file = writer.finish().map_err(|e| bad(e.to_string()))?;
    shared.install_file(meta, file).map_err(open_err)?;
    log_store::write_restored_state(&db, log_id, node).map_err(open_err)?;
    Ok(Restored { revision, records })
}
