//! Online rotation of the data keys (`coffer key rotate`).
//!
//! A rotation adds a data key to the keyring file (written and synced
//! first) and makes it the active key of the live cipher: every record
//! sealed from then on is under it. A background thread then re-encrypts,
//! at a bounded rate, every record still under an older key, and deletes
//! the older keys once nothing refers to them:
//!
//! 1. **Barrier.** The thread takes, once, each lock under which records
//!    are sealed and written: the state machine's (its rows), the log
//!    store's gate (log entries, vote), the snapshots' (their rows). Any
//!    write sealed before the new key became active has then landed.
//! 2. **Rows.** Each column family is scanned in a point-in-time view for
//!    rows under an old key (their headers say; nothing is opened). In
//!    chunks of 256, under the lock of the rows' writer, each is read
//!    again, opened and sealed again for the same location if it still is
//!    under an old key, and the chunk is written in one batch. A writer
//!    never interleaves with a chunk, so no row is brought back after a
//!    delete or overwritten with an older value; the lock is held for
//!    point reads and one batch, about a millisecond.
//! 3. **Snapshots.** Once no snapshot file begun before the rotation is
//!    still being written or waiting to be published, the current
//!    snapshot is sealed again into a new file if any frame is under an
//!    old key ([`super::snapshots::Snapshots::reseal_current`]).
//! 4. **Local files.** The store's owner seals its own files again
//!    ([`crate::Config::local_resealer`]).
//! 5. **Check.** A census of every row's and frame's key id must find
//!    nothing under an old key; the column families are flushed and
//!    compacted so that no old version of a row stays in a file.
//! 6. **Delete.** The keyring file is written with the active key alone,
//!    then the old keys leave the live cipher.
//!
//! A crash anywhere leaves a keyring that still holds the old keys; the
//! next open finds more than one key and runs the thread again, which
//! skips what is already under the active key.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rocksdb::{IteratorMode, WriteBatch};

use crate::config::LocalResealer;
use crate::crypto::{record_key_id, KeyId};
use crate::engine::db::{location, Db, ALL_CFS, CF_EVENTS, CF_KV, CF_LEASES, CF_LOG, CF_META};
use crate::engine::keys::{self, LocalKeys};
use crate::engine::state_machine::Shared;
use crate::error::Error;

/// Rows scanned between two looks at the stop flag and the progress.
const CHUNK_SCAN: usize = 4096;
/// Rows read again and sealed again under one hold of their writer's lock.
const CHUNK_RESEAL: usize = 256;
/// How often the thread looks again for a snapshot file begun before the
/// rotation.
const SNAPSHOT_RETRY: Duration = Duration::from_millis(50);
/// Full passes before the thread gives up (each normally finds the rows
/// clean after the first).
const PASSES_MAX: usize = 3;

/// Where a rotation's re-encryption stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RekeyPhase {
    /// Nothing to do: one key.
    #[default]
    Idle,
    /// Rows are being sealed again.
    Rows,
    /// Waiting for snapshot files begun before the rotation, or sealing
    /// the current snapshot again.
    Snapshots,
    /// The owner's local files are being sealed again.
    LocalFiles,
    /// Checking and compacting.
    Compacting,
    /// Stopped on an error (see [`KeyStatus::error`]); the old keys stay
    /// until a new attempt (the next rotation or open) succeeds.
    Failed,
}

impl std::fmt::Display for RekeyPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RekeyPhase::Idle => "idle",
            RekeyPhase::Rows => "re-encrypting rows",
            RekeyPhase::Snapshots => "re-encrypting snapshots",
            RekeyPhase::LocalFiles => "re-encrypting local files",
            RekeyPhase::Compacting => "compacting",
            RekeyPhase::Failed => "failed",
        })
    }
}

/// What [`crate::Store::key_status`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStatus {
    /// The key new records are sealed under (`None`: encryption off).
    pub active: Option<KeyId>,
    /// Every data key the keyring holds; more than one while old ones are
    /// being retired.
    pub keys: Vec<KeyId>,
    /// When the active key was made (Unix seconds), if known.
    pub active_created: Option<u64>,
    /// Records sealed under the active key since it became active, as this
    /// process counts.
    pub sealed_under_active: u64,
    pub phase: RekeyPhase,
    /// Rows examined and rows sealed again by the current (or last) run.
    pub scanned: u64,
    pub resealed: u64,
    /// About how many rows the store holds (RocksDB's estimate).
    pub rows_estimate: u64,
    /// The last run's error, if it failed.
    pub error: Option<String>,
}

/// The rotation state of one open store.
#[derive(Debug)]
pub struct Rekey {
    running: AtomicBool,
    progress: Mutex<Progress>,
}

#[derive(Debug, Default, Clone)]
struct Progress {
    phase: RekeyPhase,
    scanned: u64,
    resealed: u64,
    rows_estimate: u64,
    error: Option<String>,
    active_created: Option<u64>,
}

/// What the thread needs besides the state.
#[derive(Debug, Clone)]
pub struct RekeyJob {
    pub dir: PathBuf,
    /// Rows sealed again per second, at most.
    pub rate: u32,
    pub resealer: Option<LocalResealer>,
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Rekey {
    pub fn new(active_created: Option<u64>) -> Arc<Rekey> {
        Arc::new(Rekey {
            running: AtomicBool::new(false),
            progress: Mutex::new(Progress {
                active_created,
                ..Progress::default()
            }),
        })
    }

    fn progress(&self) -> MutexGuard<'_, Progress> {
        // Plain counters: a panic elsewhere leaves them usable.
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    pub fn status(&self, shared: &Shared) -> KeyStatus {
        let p = self.progress().clone();
        let cipher = &shared.db.cipher;
        KeyStatus {
            active: cipher.active_key(),
            keys: cipher.key_ids(),
            active_created: p.active_created,
            sealed_under_active: cipher.sealed_under_active(),
            phase: p.phase,
            scanned: p.scanned,
            resealed: p.resealed,
            rows_estimate: p.rows_estimate,
            error: p.error,
        }
    }

    /// Adds a data key, makes it active and starts retiring the others.
    /// Refused while a rotation's re-encryption still runs.
    pub fn rotate(self: &Arc<Self>, shared: &Arc<Shared>, job: RekeyJob) -> Result<KeyId, Error> {
        if shared.db.cipher.is_plaintext() {
            return Err(Error::InvalidArgument(
                "this store keeps records in the clear (encryption off): it has no keys to rotate"
                    .into(),
            ));
        }
        if self
            .running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            let p = self.progress().clone();
            return Err(Error::KeyRotationInProgress(format!(
                "{}, {} of about {} rows",
                p.phase, p.scanned, p.rows_estimate
            )));
        }
        let rotated = keys::rotate_keyring(&job.dir).map_err(|e| Error::Engine(e.to_string()));
        let (id, key) = match rotated {
            Ok(k) => k,
            Err(e) => {
                self.running.store(false, Ordering::Release);
                return Err(e);
            }
        };
        shared.db.cipher.add_active(id, &key);
        drop(key);
        self.progress().active_created = Some(unix_now());
        tracing::info!(key = %id, "rotated the data key; re-encrypting older records");
        self.spawn(shared.clone(), job);
        Ok(id)
    }

    /// Starts retiring the old keys if the keyring holds any (a rotation
    /// a crash or shutdown interrupted).
    pub fn resume(self: &Arc<Self>, shared: &Arc<Shared>, job: RekeyJob) {
        if shared.db.cipher.key_ids().len() > 1
            && self
                .running
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            tracing::info!("resuming the re-encryption of records under older data keys");
            self.spawn(shared.clone(), job);
        }
    }

    fn spawn(self: &Arc<Self>, shared: Arc<Shared>, job: RekeyJob) {
        let me = self.clone();
        let started = std::thread::Builder::new()
            .name("coffer-rekey".into())
            .spawn({
                let shared = shared.clone();
                move || {
                    let result = me.run(&shared, &job);
                    let mut p = me.progress();
                    match result {
                        Ok(()) => {
                            p.phase = RekeyPhase::Idle;
                            p.error = None;
                        }
                        Err(Error::Stopped) => p.phase = RekeyPhase::Idle,
                        Err(e) => {
                            tracing::error!(error = %e, "re-encryption under the new data key failed; the old keys are kept");
                            p.phase = RekeyPhase::Failed;
                            p.error = Some(e.to_string());
                        }
                    }
                    drop(p);
                    me.running.store(false, Ordering::Release);
                }
            });
        if let Err(e) = started {
            let mut p = self.progress();
            p.phase = RekeyPhase::Failed;
            p.error = Some(format!("could not start the re-encryption thread: {e}"));
            drop(p);
            self.running.store(false, Ordering::Release);
        }
    }

    fn set_phase(&self, phase: RekeyPhase) {
        self.progress().phase = phase;
    }

    fn run(&self, shared: &Shared, job: &RekeyJob) -> Result<(), Error> {
        let db = &shared.db;
        let cipher = &db.cipher;
        let Some(active) = cipher.active_key() else {
            return Ok(());
        };
        {
            let mut p = self.progress();
            *p = Progress {
                phase: RekeyPhase::Rows,
                active_created: p.active_created,
                rows_estimate: estimate_rows(db),
                ..Progress::default()
            };
        }
        barrier(shared)?;
        let mut limiter = Limiter::new(job.rate);
        let mut clean = false;
        for _ in 0..PASSES_MAX {
            self.set_phase(RekeyPhase::Rows);
            for cf in [CF_KV, CF_EVENTS, CF_LEASES, CF_LOG, CF_META] {
                self.reseal_family(shared, cf, &mut limiter)?;
            }
            self.set_phase(RekeyPhase::Snapshots);
            // Files begun before now may hold frames under an old key, or
            // read rows that were under one.
            let rows_done = cipher.mark();
            while !shared.snapshots.reseal_current(db, rows_done)? {
                stop_point(shared)?;
                std::thread::sleep(SNAPSHOT_RETRY);
            }
            self.set_phase(RekeyPhase::LocalFiles);
            if let Some(resealer) = &job.resealer {
                (resealer.0)(&LocalKeys {
                    cipher: cipher.clone(),
                })?;
            }
            self.set_phase(RekeyPhase::Compacting);
            let counts = census(shared)?;
            if counts.keys().all(|id| *id == active) {
                clean = true;
                break;
            }
            tracing::warn!(
                ?counts,
                "records under an old data key remain; another pass"
            );
        }
        if !clean {
            return Err(Error::Internal(format!(
                "records under an old data key remain after {PASSES_MAX} passes"
            )));
        }
        compact(db)?;
        stop_point(shared)?;
        // The keyring forgets the old keys first: a crash after this leaves
        // nothing under them, and the live cipher follows.
        let gate = loop {
            if let Some(gate) = db.try_key_gate() {
                break gate;
            }
            stop_point(shared)?;
            std::thread::sleep(Duration::from_millis(5));
        };
        let (_, ring) = keys::change_keyring(&job.dir, |ring| {
            ring.retain_active();
            Ok(())
        })
        .map_err(|e| Error::Engine(e.to_string()))?;
        if ring.active != active {
            return Err(Error::Internal(
                "the keyring's active key changed during re-encryption".into(),
            ));
        }
        cipher.retain_only(&[]);
        drop(gate);
        let p = self.progress().clone();
        tracing::info!(
            key = %active,
            scanned = p.scanned,
            resealed = p.resealed,
            "re-encryption done; older data keys deleted"
        );
        Ok(())
    }

    /// Seals again every row of `cf` under an old key. A scan of a
    /// point-in-time view finds them (read from their headers, without the
    /// writers' locks); then, a chunk at a time under the lock of the rows'
    /// writer, each is read again and sealed again if it still is under an
    /// old key (a row deleted or rewritten since the scan is left as it
    /// is). The lock is held for point reads and one batch only, so
    /// writers wait at most about a millisecond.
    fn reseal_family(
        &self,
        shared: &Shared,
        cf: &'static str,
        limiter: &mut Limiter,
    ) -> Result<(), Error> {
        let db = &shared.db;
        let handle = db.cf(cf)?;
        let Some(active) = db.cipher.active_key() else {
            return Ok(());
        };
        // A scan of a large memtable in key order would sort it first.
        db.db.flush_cf(handle).map_err(|e| db.engine_err(e))?;
        let mut scanned = 0u64;
        let mut old: Vec<Box<[u8]>> = Vec::with_capacity(CHUNK_RESEAL);
        for item in db
            .db
            .iterator_cf_opt(handle, Db::total_order(), IteratorMode::Start)
        {
            let (k, v) = item.map_err(|e| db.engine_err(e))?;
            scanned += 1;
            if record_key_id(&v).is_some_and(|id| id != active) {
                old.push(k);
            }
            if old.len() == CHUNK_RESEAL || scanned >= CHUNK_SCAN as u64 {
                self.reseal_rows(shared, cf, std::mem::take(&mut old), limiter)?;
                self.progress().scanned += std::mem::take(&mut scanned);
            }
        }
        self.reseal_rows(shared, cf, old, limiter)?;
        self.progress().scanned += scanned;
        Ok(())
    }

    /// Reads `rows` of `cf` again under their writer's lock and seals
    /// again those still under an old key, in one batch.
    fn reseal_rows(
        &self,
        shared: &Shared,
        cf: &'static str,
        rows: Vec<Box<[u8]>>,
        limiter: &mut Limiter,
    ) -> Result<(), Error> {
        stop_point(shared)?;
        if rows.is_empty() {
            return Ok(());
        }
        let db = &shared.db;
        let handle = db.cf(cf)?;
        let resealed = {
            let _locks = WriterLocks::take(shared, cf)?;
            let mut batch = WriteBatch::default();
            let mut resealed = 0u64;
            for k in &rows {
                let Some(v) = db
                    .db
                    .get_pinned_cf(handle, k)
                    .map_err(|e| db.engine_err(e))?
                else {
                    continue;
                };
                if let Some(again) = db
                    .cipher
                    .reseal(&location(cf, k), &v)
                    .map_err(|e| db.corruption(cf, e))?
                {
                    batch.put_cf(handle, k, again);
                    resealed += 1;
                }
            }
            if resealed > 0 {
                // Not synced on its own: until a later synced write the
                // old rows stay, still readable under the old key.
                db.write(batch, false)?;
            }
            resealed
        };
        self.progress().resealed += resealed;
        // Writers get the lock before the next chunk.
        std::thread::yield_now();
        limiter.took(resealed, shared)
    }
}

/// The locks a chunk of `cf` holds, in the order every other holder takes
/// them (snapshots, state, log gate).
struct WriterLocks<'a> {
    _snapshots: Option<MutexGuard<'a, Option<super::snapshots::Current>>>,
    _state: Option<std::sync::RwLockWriteGuard<'a, super::state_machine::SmState>>,
    _log: Option<MutexGuard<'a, ()>>,
}

impl<'a> WriterLocks<'a> {
    fn take(shared: &'a Shared, cf: &str) -> Result<Self, Error> {
        let (snapshots, state, log) = match cf {
            CF_LOG => (false, false, true),
            CF_META => (true, true, true),
            _ => (false, true, false),
        };
        let snapshots = if snapshots {
            Some(shared.snapshots.hold()?)
        } else {
            None
        };
        let state = if state {
            Some(
                shared
                    .state
                    .write()
                    .map_err(|_| Error::Internal("state lock poisoned by a panic".into()))?,
            )
        } else {
            None
        };
        let log = log.then(|| shared.db.log_gate());
        Ok(WriterLocks {
            _snapshots: snapshots,
            _state: state,
            _log: log,
        })
    }
}

/// Waits for every write sealed before the key changed to land.
fn barrier(shared: &Shared) -> Result<(), Error> {
    drop(WriterLocks::take(shared, CF_META)?);
    Ok(())
}

fn stop_point(shared: &Shared) -> Result<(), Error> {
    if shared.stopped.load(Ordering::Acquire) {
        Err(Error::Stopped)
    } else {
        Ok(())
    }
}

/// Keeps the rows sealed again per second under a rate.
struct Limiter {
    rate: u32,
    start: Instant,
    done: u64,
}

impl Limiter {
    fn new(rate: u32) -> Self {
        Limiter {
            rate: rate.max(1),
            start: Instant::now(),
            done: 0,
        }
    }

    fn took(&mut self, n: u64, shared: &Shared) -> Result<(), Error> {
        self.done += n;
        let due = Duration::from_secs_f64(self.done as f64 / f64::from(self.rate));
        while self.start.elapsed() < due {
            stop_point(shared)?;
            let left = due.saturating_sub(self.start.elapsed());
            std::thread::sleep(left.min(Duration::from_millis(20)));
        }
        Ok(())
    }
}

fn estimate_rows(db: &Db) -> u64 {
    ALL_CFS
        .iter()
        .filter_map(|name| db.db.cf_handle(name))
        .filter_map(|cf| {
            db.db
                .property_int_value_cf(cf, "rocksdb.estimate-num-keys")
                .ok()
                .flatten()
        })
        .sum()
}

/// How many rows and snapshot frames are sealed under each key id, read
/// from their headers.
pub fn census(shared: &Shared) -> Result<BTreeMap<KeyId, u64>, Error> {
    let mut counts = BTreeMap::new();
    census_rows(&shared.db.db, &mut counts).map_err(Error::Engine)?;
    shared.snapshots.census(&mut counts)?;
    Ok(counts)
}

/// Counts the rows of every column family of `db` by the key id in their
/// headers.
pub(crate) fn census_rows(
    db: &rocksdb::DB,
    counts: &mut BTreeMap<KeyId, u64>,
) -> Result<(), String> {
    for name in ALL_CFS {
        let handle = db
            .cf_handle(name)
            .ok_or_else(|| format!("column family `{name}` is missing"))?;
        for item in db.iterator_cf_opt(handle, Db::total_order(), IteratorMode::Start) {
            let (_, v) = item.map_err(|e| e.into_string())?;
            if let Some(id) = record_key_id(&v) {
                *counts.entry(id).or_default() += 1;
            }
        }
    }
    Ok(())
}

/// Flushes and compacts every column family, so that the versions of rows
/// that were sealed again leave the files.
fn compact(db: &Db) -> Result<(), Error> {
    let mut opts = rocksdb::CompactOptions::default();
    opts.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
    for name in ALL_CFS {
        let handle = db.cf(name)?;
        db.db.flush_cf(handle).map_err(|e| db.engine_err(e))?;
        db.db
            .compact_range_cf_opt(handle, None::<&[u8]>, None::<&[u8]>, &opts);
    }
    db.db.flush_wal(true).map_err(|e| db.engine_err(e))?;
    Ok(())
}
