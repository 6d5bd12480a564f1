//! The lifecycle of snapshot files in `snapshots/`.
//!
//! openraft 0.9 builds a snapshot on a task of its own while the state
//! machine worker goes on applying and installing (`core/sm/worker.rs`), and
//! a transport receives a snapshot while both happen. Several operations
//! therefore hold files in one directory at once. One rule keeps them apart:
//!
//! ```text
//!   writer() ──► <id>.snap.tmp ──finish──► <id>.snap ──publish / install──► current
//!   (owned by the operation that asked for it)          (owned by Snapshots)
//! ```
//!
//! - A file belongs to the operation that created it until it is published
//!   or installed; nothing else deletes it. An operation that gives up
//!   removes its own file ([`SnapshotWriter`] does so on drop; a finished
//!   file that never became current goes through [`Snapshots::discard`]).
//! - The current snapshot only ever moves forward: a file whose
//!   `last_log_id` is not newer than the current one's is discarded, not
//!   published. Only the file it replaces is deleted, by name.
//! - Nothing scans the directory except [`Snapshots::open`], before any
//!   operation can run: it removes what a crash left behind.
//!
//! An install writes a synced `installing` marker naming its file before it
//! touches the state, and clears it in the same synced write that records
//! the new state and the new current snapshot; [`Snapshots::open`] hands an
//! interrupted install back to the caller to finish.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::{BasicNode, SnapshotMeta};
use rocksdb::WriteBatch;

use crate::crypto::Cipher;
use crate::engine::db::{Db, CF_META};
use crate::error::Error;
use crate::snapshot::{SnapshotError, SnapshotFile, SnapshotWriter};
use crate::types::NodeId;

const META_SNAPSHOT: &[u8] = b"snapshot";
const META_INSTALLING: &[u8] = b"installing";
/// Format of the `snapshot` and `installing` rows: version, then the file
/// id (ASCII).
const ID_ROW_VERSION: u8 = 1;
/// Longest snapshot file id accepted from the `meta` rows.
const ID_BYTES_MAX: usize = 64;

pub type Meta = SnapshotMeta<NodeId, BasicNode>;

/// The published snapshot: what openraft sends to a follower that needs it.
#[derive(Debug, Clone)]
pub struct Current {
    pub meta: Meta,
    pub file: SnapshotFile,
}

/// The snapshot files of one member.
#[derive(Debug)]
pub struct Snapshots {
    dir: PathBuf,
    /// The member's record cipher (its files are sealed under it). The
    /// database is passed to each call that writes rows, so that this
    /// module holds no reference that would keep it open.
    cipher: Arc<Cipher>,
    current: Mutex<Option<Current>>,
    /// The files of [`Snapshots::writer`] not yet published, installed or
    /// discarded, with the cipher's key generation when each began: a file
    /// begun before a key rotation may hold frames under the old key.
    writers: Mutex<BTreeMap<String, u64>>,
}

/// A fresh random file id: 16 hex digits.
fn random_id() -> String {
    let k = crate::crypto::SecretKey::random();
    k.expose()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn poisoned() -> Error {
    Error::Internal("snapshot lock poisoned by a panic".into())
}

/// Whether `meta` is strictly newer than the current snapshot (if any).
fn is_newer(meta: &Meta, current: Option<&Current>) -> bool {
    current.is_none_or(|c| meta.last_log_id > c.meta.last_log_id)
}

impl Snapshots {
    /// Loads the current snapshot and clears what a crash left behind.
    /// Returns an interrupted install, which the caller must finish with
    /// [`Snapshots::install`] before serving anything.
    pub fn open(db: &Db, dir: PathBuf) -> Result<(Snapshots, Option<SnapshotFile>), Error> {
        let snapshots = Snapshots {
            dir,
            cipher: db.cipher.clone(),
            current: Mutex::new(None),
            writers: Mutex::new(BTreeMap::new()),
        };
        let current_id = id_row(db, META_SNAPSHOT)?;
        let installing_id = id_row(db, META_INSTALLING)?;
        let mut current = None;
        if let Some(id) = &current_id {
            let file = snapshots.file(id);
            let header = file.header().map_err(Error::from)?;
            current = Some(Current {
                meta: header.meta,
                file,
            });
        }
        let installing = installing_id.as_deref().map(|id| snapshots.file(id));
        let keep: Vec<String> = [current_id, installing_id]
            .into_iter()
            .flatten()
            .map(|id| format!("{id}.snap"))
            .collect();
        snapshots.remove_all_but(&keep)?;
        *snapshots.lock()? = current;
        Ok((snapshots, installing))
    }

    fn lock(&self) -> Result<MutexGuard<'_, Option<Current>>, Error> {
        self.current.lock().map_err(|_| poisoned())
    }

    fn file(&self, id: &str) -> SnapshotFile {
        SnapshotFile::new(&self.dir, id, self.cipher.clone())
    }

    /// Removes every file in the directory not named in `keep`. Only for
    /// [`Snapshots::open`], when no other operation can hold a file.
    fn remove_all_but(&self, keep: &[String]) -> Result<(), Error> {
        let io = |source| Error::Io {
            path: self.dir.clone(),
            source,
        };
        for entry in fs::read_dir(&self.dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            if !keep.iter().any(|k| name.to_string_lossy() == k.as_str()) {
                remove(&entry.path());
            }
        }
        Ok(())
    }

    /// A new file, owned by the caller until it is published or installed.
    pub fn writer(&self) -> Result<SnapshotWriter, Error> {
        let mut writers = self.writers();
        let generation = self.cipher.generation();
        let writer = SnapshotWriter::create(&self.dir, &random_id(), self.cipher.clone())
            .map_err(Error::from)?;
        writers.insert(writer.id().to_string(), generation);
        Ok(writer)
    }

    fn writers(&self) -> MutexGuard<'_, BTreeMap<String, u64>> {
        // A map of names: a panic elsewhere leaves it usable.
        self.writers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds the current snapshot still: nothing is published or installed
    /// until the guard is dropped.
    pub(crate) fn hold(&self) -> Result<MutexGuard<'_, Option<Current>>, Error> {
        self.lock()
    }

    /// After a key rotation: seals the current snapshot again under the
    /// active key if any of its frames is under another one. Returns
    /// `false`, changing nothing, while a file begun before the key set
    /// changed to `generation` is still being written or waits to be
    /// published (its frames may be under an old key); the caller asks
    /// again later.
    pub(crate) fn reseal_current(&self, db: &Db, generation: u64) -> Result<bool, Error> {
        let mut cur = self.lock()?;
        {
            let mut writers = self.writers();
            // A writer that gave up removed its file; so did a discard.
            writers.retain(|id, _| {
                self.dir.join(format!("{id}.snap")).exists()
                    || self.dir.join(format!("{id}.snap.tmp")).exists()
            });
            if writers.values().any(|g| *g < generation) {
                return Ok(false);
            }
        }
        let Some(current) = cur.as_mut() else {
            return Ok(true);
        };
        let active = self.cipher.active_key();
        let ids = current.file.key_ids().map_err(Error::from)?;
        if ids.iter().all(|id| Some(*id) == active) {
            return Ok(true);
        }
        let mut reader = current.file.reader().map_err(Error::from)?;
        let mut writer = SnapshotWriter::create(&self.dir, &random_id(), self.cipher.clone())
            .map_err(Error::from)?;
        while let Some((_, plain)) = reader.next_frame().map_err(Error::from)? {
            writer.write_frame(&plain).map_err(Error::from)?;
        }
        let file = writer.finish().map_err(Error::from)?;
        let mut batch = WriteBatch::default();
        db.put_sealed(&mut batch, CF_META, META_SNAPSHOT, &id_row_bytes(file.id()))?;
        db.write(batch, true)?;
        let old = std::mem::replace(&mut current.file, file);
        drop(cur);
        remove(old.path());
        Ok(true)
    }

    /// The key ids of the frames of every snapshot file, with how many
    /// frames each seals.
    pub(crate) fn census(
        &self,
        into: &mut BTreeMap<crate::crypto::KeyId, u64>,
    ) -> Result<(), Error> {
        let _cur = self.lock()?;
        census_dir(&self.dir, into)
    }

    /// A handle on a file that is never created: what openraft's chunked
    /// receive path (unused: snapshots arrive through
    /// [`crate::Store::receive_snapshot`]) is given.
    pub fn placeholder(&self) -> SnapshotFile {
        self.file(&random_id())
    }

    /// The published snapshot.
    pub fn current(&self) -> Result<Option<Current>, Error> {
        Ok(self.lock()?.clone())
    }

    /// Whether `file` is this member's own (in this directory, under its
    /// keys), so that it can be installed without a copy.
    pub fn owns(&self, file: &SnapshotFile) -> bool {
        Arc::ptr_eq(file.cipher(), &self.cipher) && file.path().parent() == Some(&self.dir)
    }

    /// Makes a built snapshot current if it is newer than the current one;
    /// otherwise deletes it. Returns whether it became current.
    pub fn publish(&self, db: &Db, meta: Meta, file: SnapshotFile) -> Result<bool, Error> {
        let mut cur = self.lock()?;
        self.writers().remove(file.id());
        if !is_newer(&meta, cur.as_ref()) {
            drop(cur);
            remove(file.path());
            return Ok(false);
        }
        let mut batch = WriteBatch::default();
        db.put_sealed(&mut batch, CF_META, META_SNAPSHOT, &id_row_bytes(file.id()))?;
        db.write(batch, true)?;
        let old = cur.replace(Current { meta, file });
        drop(cur);
        if let Some(old) = old {
            remove(old.file.path());
        }
        Ok(true)
    }

    /// Installs `file` (this member's own, complete and synced): records the
    /// `installing` marker, lets `replace` rewrite the state from the file
    /// and add its final rows to the batch it is given, then commits that
    /// batch together with the new current snapshot and the cleared marker
    /// in one synced write. Builds that finish meanwhile wait, and are
    /// discarded if they are older.
    pub fn install(
        &self,
        db: &Db,
        meta: Meta,
        file: SnapshotFile,
        replace: impl FnOnce(&SnapshotFile, &mut WriteBatch) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut cur = self.lock()?;
        self.writers().remove(file.id());
        // openraft installs only snapshots newer than what is committed,
        // and every published snapshot was built from applied (so
        // committed) entries: an older one would be a bug, not a race.
        if !is_newer(&meta, cur.as_ref()) {
            return Err(Error::from(SnapshotError::Sequence(
                "snapshot to install is not newer than the current snapshot",
            )));
        }
        let mut marker = WriteBatch::default();
        db.put_sealed(
            &mut marker,
            CF_META,
            META_INSTALLING,
            &id_row_bytes(file.id()),
        )?;
        db.write(marker, true)?;
        let mut batch = WriteBatch::default();
        replace(&file, &mut batch)?;
        db.put_sealed(&mut batch, CF_META, META_SNAPSHOT, &id_row_bytes(file.id()))?;
        batch.delete_cf(db.cf(CF_META)?, META_INSTALLING);
        db.write(batch, true)?;
        let new_path = file.path().to_path_buf();
        let old = cur.replace(Current { meta, file });
        drop(cur);
        if let Some(old) = old.filter(|old| old.file.path() != new_path) {
            remove(old.file.path());
        }
        Ok(())
    }

    /// Deletes a finished file that did not become current (a received
    /// snapshot openraft did not install). A current file is kept.
    pub fn discard(&self, file: &SnapshotFile) -> Result<(), Error> {
        let cur = self.lock()?;
        if cur.as_ref().is_some_and(|c| c.file.path() == file.path()) {
            return Ok(());
        }
        self.writers().remove(file.id());
        drop(cur);
        remove(file.path());
        Ok(())
    }

    #[cfg(test)]
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The plaintext of a `snapshot` or `installing` row naming `id`.
pub(crate) fn id_row_bytes(id: &str) -> Vec<u8> {
    let mut row = Vec::with_capacity(1 + id.len());
    row.push(ID_ROW_VERSION);
    row.extend_from_slice(id.as_bytes());
    row
}

/// The snapshot file id a `meta` row names, checked to be a plain file name.
fn id_row(db: &Db, row: &[u8]) -> Result<Option<String>, Error> {
    let Some(plain) = db.get_sealed(CF_META, row)? else {
        return Ok(None);
    };
    let raw = match plain.split_first() {
        Some((&ID_ROW_VERSION, id)) => id,
        Some((&version, _)) => {
            return Err(db.corruption(
                CF_META,
                crate::codec::DecodeError::UnknownVersion {
                    what: "snapshot id row",
                    version,
                },
            ))
        }
        None => return Err(db.corruption(CF_META, "empty snapshot id row")),
    };
    let valid = !raw.is_empty()
        && raw.len() <= ID_BYTES_MAX
        && raw.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-');
    if !valid {
        return Err(db.corruption(CF_META, "snapshot file id is not a valid file name"));
    }
    Ok(Some(String::from_utf8_lossy(raw).into_owned()))
}

/// Counts the frames of the snapshot files in `dir` by the key id in their
/// headers (nothing is opened). Files being written are counted as far as
/// they go.
pub(crate) fn census_dir(
    dir: &Path,
    into: &mut BTreeMap<crate::crypto::KeyId, u64>,
) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
    };
    for entry in entries {
        let path = entry.map_err(io)?.path();
        for id in crate::snapshot::frame_key_ids(&path).map_err(Error::from)? {
            *into.entry(id).or_default() += 1;
        }
    }
    Ok(())
}

/// Removes a file this module owns. A leftover is harmless (sealed, and
/// [`Snapshots::open`] removes it next time), so failing is not an error.
fn remove(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a snapshot file");
        }
    }
}
