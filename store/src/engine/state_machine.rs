//! The key/value state machine on RocksDB.
//!
//! Decisions come from [`crate::machine::apply`]; this module persists them:
//! each applied batch is one RocksDB write (kv rows, watch events, and the
//! `sm` pointer row with the last applied log id, membership and revision),
//! so the state on disk is always a prefix of the log. The write is not
//! synced on its own; see ARCHITECTURE.md, "Durability".
//!
//! Snapshot files and their lifecycle (who may delete what, the current
//! snapshot only moving forward, the crash-safe install) belong to
//! [`crate::engine::snapshots`]; this module builds snapshots from a
//! RocksDB point-in-time view and replaces the state from one.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use rocksdb::WriteBatch;
use tokio::sync::{broadcast, oneshot};

use crate::codec::{Reader, Writer};
use crate::command::{KeyMeta, KeyValue, Response, Value};
use crate::engine::db::{Db, CF_EVENTS, CF_KV, CF_LEASES, CF_META};
use crate::engine::snapshots::{Meta, Snapshots};
use crate::engine::watch::{HISTORY_PAGE_BYTES, HISTORY_PAGE_EVENTS};
use crate::error::Error;
use crate::event::{decode_events, encode_events, Event, EventKind};
use crate::machine::{self, Index, IndexEntry, Mutation, Values};
use crate::range::{Range, RangeResult};
use crate::rows::{
    decode_kv_row, decode_lease_row as decode_lease_row_plain, decode_legacy_kv_row,
    decode_reads_from, encode_lease_row, encode_live_row, encode_reads_from, encode_tombstone_row,
    KvRow as Row,
};
use crate::snapshot::{
    Frame, SnapshotError, SnapshotFile, SnapshotHeader, SnapshotWriter, LEASES_PER_FRAME,
};
use crate::types::{self, NodeId, TypeConfig};

const META_SM: &[u8] = b"sm";
/// The `meta` row of [`SmState::reads_from`].
const META_READS_FROM: &[u8] = b"reads_from";
/// Format of the `sm` pointer row.
const SM_POINTER_VERSION: u8 = 1;
/// Event history is trimmed in steps of this many revisions, so that range
/// deletions stay rare.
const EVENT_TRIM_STEP: u64 = 1024;
/// An events record is sealed once it holds about this much.
const EVENT_RECORD_BYTES: usize = 1 << 20;
/// Rows a list reads per RocksDB multi-get.
pub const LIST_PAGE_KEYS: usize = 256;
/// Live notices kept for watchers that have not read them yet. Each holds
/// one events record (about [`EVENT_RECORD_BYTES`], plus at most one
/// request), so this bounds what stalled watchers pin in memory; a watcher
/// that falls further behind reads the history from disk.
pub const NOTICES_MAX: usize = 64;

type SErr = StorageError<NodeId>;

/// What the state machine tells live watches.
#[derive(Debug, Clone)]
pub enum Notice {
    Events(Arc<Vec<Event>>),
    /// A snapshot replaced the state; history before it is gone.
    Reset,
    /// The store was shut down: watches end.
    Stopped,
}

/// The state machine's in-memory view.
#[derive(Debug, Default)]
pub struct SmState {
    pub index: Index,
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, BasicNode>,
    /// Events at or below this revision are no longer kept.
    pub compacted: u64,
    /// `kv` rows that a later change replaced, with the revision of that
    /// change, oldest first. They serve reads at past revisions and the
    /// previous versions of watch events until the history is compacted
    /// past the change, when they are deleted.
    pub superseded: std::collections::VecDeque<(u64, [u8; 40])>,
    /// Reads at revisions before this one are refused: the versions they
    /// need were not kept (the directory was migrated from a format that
    /// kept only the newest version, at this revision).
    pub reads_from: u64,
}

/// State shared by the state machine (owned by openraft) and the `Store`
/// handle that reads from it.
#[derive(Debug)]
pub struct Shared {
    pub db: Arc<Db>,
    pub state: RwLock<SmState>,
    pub notices: broadcast::Sender<Notice>,
    pub snapshots: Snapshots,
    pub watch_history: u64,
    /// Set by `Store::shutdown`: watches end even while another handle
    /// keeps this state alive.
    pub stopped: std::sync::atomic::AtomicBool,
    /// When each lease runs out, as this member counts: from the last
    /// grant or keep-alive it applied, or from when it loaded the lease
    /// (after a restart or a snapshot install, a lease gets its full
    /// time-to-live again, as in etcd). Only the leader acts on it.
    pub lease_due: Mutex<HashMap<u64, Instant>>,
}

/// A lease as [`crate::Store::leases`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    pub id: u64,
    /// The time-to-live it was granted with.
    pub ttl: Duration,
    /// Time left before it expires, as this member counts it (the
    /// leader's count is the one that acts).
    pub remaining: Duration,
    /// Keys attached to it.
    pub keys: u64,
}

/// When a lease granted or kept alive now runs out (`None`: past any
/// clock's range, never).
fn due_after(ttl_secs: u64) -> Option<Instant> {
    Instant::now().checked_add(Duration::from_secs(ttl_secs))
}

fn lock_poisoned() -> Error {
    Error::Internal("state lock poisoned by a panic".into())
}

/// Row key of an event record: the last revision it holds. One record
/// holds the events of one applied batch, so it is sealed once per batch.
fn event_key(last_revision: u64) -> [u8; 8] {
    last_revision.to_be_bytes()
}

struct SmPointer {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    revision: u64,
    compacted: u64,
}

fn encode_pointer(p: &SmPointer) -> Result<Vec<u8>, crate::codec::EncodeError> {
    let mut w = Writer::with_capacity(128);
    w.u8(SM_POINTER_VERSION);
    types::encode_opt_log_id(&mut w, &p.last_applied);
    types::encode_stored_membership(&mut w, &p.membership);
    w.u64(p.revision).u64(p.compacted);
    w.finish()
}

fn decode_pointer(bytes: &[u8]) -> Result<SmPointer, crate::codec::DecodeError> {
    let mut r = Reader::new(bytes);
    r.version(SM_POINTER_VERSION, "sm pointer version")?;
    let p = SmPointer {
        last_applied: types::decode_opt_log_id(&mut r)?,
        membership: types::decode_stored_membership(&mut r)?,
        revision: r.u64("revision")?,
        compacted: r.u64("compacted")?,
    };
    r.finish("sm pointer")?;
    Ok(p)
}

/// Row key of one version of a key in `kv`: the name's keyed hash, then
/// the revision that wrote the version (so a key's versions sort oldest
/// first, and `seek_for_prev(hash ‖ R)` finds the version live at R).
pub fn row_key(hash: &[u8; 32], revision: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(hash);
    k[32..].copy_from_slice(&revision.to_be_bytes());
    k
}

/// The revision in a `kv` row key.
fn revision_of(row_key: &[u8; 40]) -> u64 {
    let mut r = [0u8; 8];
    r.copy_from_slice(&row_key[32..]);
    u64::from_be_bytes(r)
}

/// Adds the sealed `kv` row of `kv`'s version (at its mod revision) to
/// `batch`.
fn put_kv_row(db: &Db, batch: &mut WriteBatch, kv: &KeyValue) -> Result<[u8; 40], Error> {
    let key = row_key(&db.cipher.name_hash(&kv.key), kv.meta.mod_revision);
    db.put_sealed(batch, CF_KV, &key, &encode_live_row(kv)?)?;
    Ok(key)
}

/// Adds the tombstone of `key`'s delete at `revision` to `batch`.
fn put_tombstone(
    db: &Db,
    batch: &mut WriteBatch,
    key: &[u8],
    revision: u64,
) -> Result<[u8; 40], Error> {
    let row = row_key(&db.cipher.name_hash(key), revision);
    let plain = encode_tombstone_row(key)?;
    db.put_sealed(batch, CF_KV, &row, &plain)?;
    Ok(row)
}

/// Decodes a `kv` row and checks that it sits under its own name's hash
/// and revision; returns the row key with the row.
fn decode_row(db: &Db, row_key: &[u8], plain: &[u8]) -> Result<([u8; 40], Row), Error> {
    let Ok(full) = <[u8; 40]>::try_from(row_key) else {
        return Err(db.corruption(CF_KV, "a row key is not a hash and a revision"));
    };
    let (hash, revision) = (&full[..32], revision_of(&full));
    let row = decode_kv_row(plain).map_err(|e| db.corruption(CF_KV, e))?;
    let stamped = match &row {
        Row::Live(kv) => kv.meta.mod_revision,
        Row::Tombstone { .. } => revision,
    };
    if db.cipher.name_hash(row.key()) != hash || stamped != revision {
        return Err(db.corruption(CF_KV, "row is not stored under its key's hash and revision"));
    }
    Ok((full, row))
}

/// Walks opened `kv` rows in key order, one key at a time: `superseded`
/// gets each row that a later version of its key replaced, with that
/// version's revision; `newest` gets each key's newest row. Only one row is
/// held at a time.
fn walk_versions(
    db: &Db,
    rows: impl Iterator<Item = Result<crate::engine::db::OpenedRow, Error>>,
    mut superseded: impl FnMut(u64, [u8; 40]),
    mut newest: impl FnMut([u8; 40], Row) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut held: Option<([u8; 40], Row)> = None;
    for row in rows {
        let (k, plain) = row?;
        let (key, row) = decode_row(db, &k, &plain)?;
        if let Some((held_key, held_row)) = held.take() {
            if held_key[..32] == key[..32] {
                superseded(revision_of(&key), held_key);
            } else {
                newest(held_key, held_row)?;
            }
        }
        held = Some((key, row));
    }
    match held {
        Some((key, row)) => newest(key, row),
        None => Ok(()),
    }
}

/// The newest row of the key whose name hash is `hash` at or before
/// `revision`, read with `it` (an iterator over `kv` in prefix mode). A
/// key's versions are few (those the history covers), and walking them
/// forward is what the hash memtable serves within one key (it does not
/// seek backwards).
fn newest_version(
    db: &Db,
    it: &mut rocksdb::DBRawIteratorWithThreadMode<'_, rocksdb::DB>,
    hash: &[u8; 32],
    revision: u64,
) -> Result<Option<Row>, Error> {
    let upto = row_key(hash, revision);
    it.seek(row_key(hash, 0));
    let mut found: Option<(Vec<u8>, Vec<u8>)> = None;
    while let Some((row, raw)) = it.item() {
        if !row.starts_with(hash) || row > upto.as_slice() {
            break;
        }
        found = Some((row.to_vec(), raw.to_vec()));
        it.next();
    }
    it.status().map_err(|e| db.engine_err(e))?;
    let Some((row, raw)) = found else {
        return Ok(None);
    };
    let plain = db.open_row(CF_KV, &row, &raw)?;
    Ok(Some(decode_row(db, &row, &plain)?.1))
}

/// Rewrites format 1 and 2 `kv` rows (one per live key, under the name's
/// hash alone) as format 3 rows (under the hash and the version's
/// revision). Idempotent: a migration cut short is finished by the next
/// open, which runs it again before the format row moves on.
pub fn migrate_kv_rows(db: &Db) -> Result<(), Error> {
    const BATCH_ROWS: usize = 1024;
    let cf = db.cf(CF_KV)?;
    let mut batch = WriteBatch::default();
    let mut rows = 0;
    for row in db.scan_sealed(CF_KV, &[])? {
        let (k, plain) = row?;
        if k.len() != 32 {
            continue;
        }
        let kv = decode_legacy_kv_row(&plain).map_err(|e| db.corruption(CF_KV, e))?;
        if db.cipher.name_hash(&kv.key).as_slice() != &*k {
            return Err(db.corruption(CF_KV, "row is not stored under its key's hash"));
        }
        put_kv_row(db, &mut batch, &kv)?;
        batch.delete_cf(cf, &k);
        rows += 1;
        if rows % BATCH_ROWS == 0 {
            db.write(std::mem::take(&mut batch), false)?;
        }
    }
    // Only the newest versions exist: no read before now can be served.
    let revision = match db.get_sealed(CF_META, META_SM)? {
        Some(plain) => {
            decode_pointer(&plain)
                .map_err(|e| db.corruption(CF_META, e))?
                .revision
        }
        None => 0,
    };
    db.put_sealed(
        &mut batch,
        CF_META,
        META_READS_FROM,
        &encode_reads_from(revision)?,
    )?;
    db.write(batch, false)
}

/// Adds the sealed `leases` row of lease `id` to `batch`.
fn put_lease_row(db: &Db, batch: &mut WriteBatch, id: u64, ttl_secs: u64) -> Result<(), Error> {
    db.put_sealed(
        batch,
        CF_LEASES,
        &id.to_be_bytes(),
        &encode_lease_row(ttl_secs)?,
    )
}

/// Decodes a `leases` row into `(id, ttl_secs)`.
fn decode_lease_row(db: &Db, row_key: &[u8], plain: &[u8]) -> Result<(u64, u64), Error> {
    let id = <[u8; 8]>::try_from(row_key)
        .map(u64::from_be_bytes)
        .map_err(|_| db.corruption(CF_LEASES, "a lease row key is not 8 bytes"))?;
    let ttl = decode_lease_row_plain(plain).map_err(|e| db.corruption(CF_LEASES, e))?;
    if id == 0 {
        return Err(db.corruption(CF_LEASES, "lease id 0"));
    }
    Ok((id, ttl))
}

impl Shared {
    /// Loads the state machine from `db`, finishing an interrupted snapshot
    /// install first.
    pub fn open(
        db: Arc<Db>,
        snapshot_dir: PathBuf,
        watch_history: u64,
    ) -> Result<Arc<Self>, Error> {
        let (notices, _) = broadcast::channel(NOTICES_MAX);
        let (snapshots, interrupted) = Snapshots::open(&db, snapshot_dir)?;
        let shared = Arc::new(Shared {
            db,
            state: RwLock::new(SmState::default()),
            notices,
            snapshots,
            watch_history: watch_history.max(1),
            stopped: std::sync::atomic::AtomicBool::new(false),
            lease_due: Mutex::new(HashMap::new()),
        });
        if let Some(file) = interrupted {
            let header = file.header().map_err(Error::from)?;
            shared.install_file(header.meta, file)?;
        }
        shared.load()?;
        Ok(shared)
    }

    /// The membership of the applied state.
    pub fn applied_membership(&self) -> Result<StoredMembership<NodeId, BasicNode>, Error> {
        let st = self.state.read().map_err(|_| lock_poisoned())?;
        Ok(st.membership.clone())
    }

    fn load(&self) -> Result<(), Error> {
        let mut st = SmState::default();
        if let Some(plain) = self.db.get_sealed(CF_META, META_SM)? {
            let p = decode_pointer(&plain).map_err(|e| self.db.corruption(CF_META, e))?;
            st.last_applied = p.last_applied;
            st.membership = p.membership;
            st.index.revision = p.revision;
            st.compacted = p.compacted;
        }
        if let Some(plain) = self.db.get_sealed(CF_META, META_READS_FROM)? {
            st.reads_from =
                decode_reads_from(&plain).map_err(|e| self.db.corruption(CF_META, e))?;
        }
        for row in self.db.scan_sealed(CF_LEASES, &[])? {
            let (k, plain) = row?;
            let (id, ttl) = decode_lease_row(&self.db, &k, &plain)?;
            st.index.insert_lease(id, ttl);
        }
        let mut superseded = Vec::new();
        let mut tombstones = Vec::new();
        let index = &mut st.index;
        walk_versions(
            &self.db,
            self.db.scan_sealed(CF_KV, &[])?,
            |revision, row| superseded.push((revision, row)),
            |row_key, row| match row {
                Row::Live(kv) => {
                    if index.insert_live(kv.key, kv.meta, kv.value.len() as u64) {
                        Ok(())
                    } else {
                        Err(self
                            .db
                            .corruption(CF_KV, "a key names a lease that does not exist"))
                    }
                }
                // A tombstone goes when the history passes its own revision.
                Row::Tombstone { .. } => {
                    tombstones.push((revision_of(&row_key), row_key));
                    Ok(())
                }
            },
        )?;
        superseded.extend(tombstones);
        superseded.sort_unstable();
        st.superseded = superseded.into();
        self.restart_lease_countdowns(&st.index)?;
        *self.state.write().map_err(|_| lock_poisoned())? = st;
        Ok(())
    }

    /// Every lease in `index` gets its full time-to-live from now.
    fn restart_lease_countdowns(&self, index: &Index) -> Result<(), Error> {
        let mut due = self.lease_due.lock().map_err(|_| lock_poisoned())?;
        due.clear();
        for (id, lease) in &index.leases {
            if let Some(at) = due_after(lease.ttl_secs) {
                due.insert(*id, at);
            }
        }
        Ok(())
    }

    /// The leases whose time ran out by `now`, as this member counts; each
    /// is given `retry` more before it is reported again (its revocation
    /// may still be in flight).
    pub fn take_expired_leases(&self, now: Instant, retry: Duration) -> Result<Vec<u64>, Error> {
        let mut due = self.lease_due.lock().map_err(|_| lock_poisoned())?;
        let mut expired = Vec::new();
        for (id, at) in due.iter_mut().filter(|(_, at)| **at <= now) {
            expired.push(*id);
            *at = now + retry;
        }
        Ok(expired)
    }

    /// Every lease this member holds, in id order.
    pub fn leases(&self) -> Result<Vec<LeaseInfo>, Error> {
        let st = self.state.read().map_err(|_| lock_poisoned())?;
        let due = self.lease_due.lock().map_err(|_| lock_poisoned())?;
        let now = Instant::now();
        Ok(st
            .index
            .leases
            .iter()
            .map(|(id, lease)| LeaseInfo {
                id: *id,
                ttl: Duration::from_secs(lease.ttl_secs),
                remaining: due
                    .get(id)
                    .map_or(Duration::MAX, |at| at.saturating_duration_since(now)),
                keys: lease.keys.len() as u64,
            })
            .collect())
    }

    /// The keys attached to lease `id`, in key order.
    pub fn lease_keys(&self, id: u64) -> Result<Vec<Vec<u8>>, Error> {
        let st = self.state.read().map_err(|_| lock_poisoned())?;
        st.index
            .leases
            .get(&id)
            .map(|l| l.keys.iter().cloned().collect())
            .ok_or(Error::LeaseNotFound { id })
    }

    /// A live key with its value, as this member has applied it. The row
    /// is read under the state lock (one bounded read), so the index and
    /// the row agree; a key the index holds whose row is missing is
    /// corruption, never an absent key.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, Error> {
        let st = self.state.read().map_err(|_| lock_poisoned())?;
        match st.index.get(key) {
            None => Ok(None),
            Some(e) => self.read_live(key, e.meta.mod_revision).map(Some),
        }
    }

    /// The live keys in `range`, in key order, as of one point in time.
    /// Under the state lock, only memory is touched: the range is walked in
    /// the index (count, keys and metadata need nothing else) and a
    /// RocksDB view matching it is taken. Values are then read from the
    /// view in pages of [`LIST_PAGE_KEYS`] with no lock held. Call on a
    /// blocking thread.
    pub fn range(&self, range: &Range) -> Result<RangeResult, Error> {
        let st = self.state.read().map_err(|_| lock_poisoned())?;
        if range.revision != 0 && range.revision != st.index.revision {
            return self.range_at(range, st);
        }
        let view = self.db.db.snapshot();
        let mut result = RangeResult {
            revision: st.index.revision,
            ..RangeResult::default()
        };
        let limit = if range.limit == 0 {
            usize::MAX
        } else {
            range.limit
        };
        let mut chosen: Vec<(Vec<u8>, IndexEntry)> = Vec::new();
        for (key, entry) in st.index.keys.range(range.start.clone()..) {
            if !range.contains(key) {
                break;
            }
            result.count += 1;
            if range.count_only {
                continue;
            }
            if chosen.len() < limit {
                chosen.push((key.clone(), *entry));
            } else if result.next.is_none() {
                result.more = true;
                result.next = Some(key.clone());
            }
        }
        drop(st);
        if range.keys_only {
            result.kvs = chosen
                .into_iter()
                .map(|(key, entry)| KeyValue {
                    key,
                    value: Value::default(),
                    meta: entry.meta,
                })
                .collect();
            return Ok(result);
        }
        let cf = self.db.cf(CF_KV)?;
        let mut out = Vec::with_capacity(chosen.len());
        for page in chosen.chunks(LIST_PAGE_KEYS) {
            let rows: Vec<[u8; 40]> = page
                .iter()
                .map(|(k, e)| row_key(&self.db.cipher.name_hash(k), e.meta.mod_revision))
                .collect();
            let found = view.multi_get_cf(rows.iter().map(|r| (cf, r.as_slice())));
            for (row, raw) in rows.iter().zip(found) {
                let raw = raw
                    .map_err(|e| self.db.engine_err(e))?
                    .ok_or_else(|| self.db.corruption(CF_KV, "a live key's row is missing"))?;
                let plain = self.db.open_row(CF_KV, row, &raw)?;
                out.push(self.live(row, &plain)?);
            }
        }
        result.kvs = out;
        Ok(result)
    }

    /// [`Shared::range`] at a past revision R: the keys in the range now,
    /// and those the history after R names, each read as of R (its newest
    /// version at or before R, unless that is a tombstone). Under the lock
    /// only the index is walked and a view taken.
    fn range_at(
        &self,
        range: &Range,
        st: std::sync::RwLockReadGuard<'_, SmState>,
    ) -> Result<RangeResult, Error> {
        let at = range.revision;
        let current = st.index.revision;
        if at > current {
            return Err(Error::InvalidArgument(format!(
                "revision {at} is in the future: the store is at revision {current}"
            )));
        }
        let oldest = self.oldest_readable(&st);
        if at < oldest {
            return Err(Error::Compacted {
                requested: at,
                oldest,
            });
        }
        let view = self.db.db.snapshot();
        let mut keys: std::collections::BTreeSet<Vec<u8>> = st
            .index
            .keys
            .range(range.start.clone()..)
            .map(|(k, _)| k)
            .take_while(|k| range.contains(k))
            .cloned()
            .collect();
        drop(st);
        // Keys changed after `at`, deleted ones included.
        let events = view.iterator_cf(
            self.db.cf(CF_EVENTS)?,
            rocksdb::IteratorMode::From(&event_key(at + 1), rocksdb::Direction::Forward),
        );
        for item in events {
            let (k, v) = item.map_err(|e| self.db.engine_err(e))?;
            let plain = self.db.open_row(CF_EVENTS, &k, &v)?;
            for e in decode_events(&plain).map_err(|e| self.db.corruption(CF_EVENTS, e))? {
                if e.revision > at && e.revision <= current && range.contains(&e.kv.key) {
                    keys.insert(e.kv.key);
                }
            }
        }
        let limit = if range.limit == 0 {
            usize::MAX
        } else {
            range.limit
        };
        let mut result = RangeResult {
            revision: at,
            ..RangeResult::default()
        };
        let mut it = view.raw_iterator_cf_opt(self.db.cf(CF_KV)?, Db::same_key());
        for key in keys {
            let hash = self.db.cipher.name_hash(&key);
            let Some(Row::Live(mut kv)) = newest_version(&self.db, &mut it, &hash, at)? else {
                continue;
            };
            result.count += 1;
            if range.count_only {
                continue;
            }
            if result.kvs.len() < limit {
                if range.keys_only {
                    kv.value = Value::default();
                }
                result.kvs.push(kv);
            } else if result.next.is_none() {
                result.more = true;
                result.next = Some(key);
            }
        }
        Ok(result)
    }

    /// Fills in each event's `prev_kv`: its key's newest version before
    /// the event, from the `kv` rows (as of one view). The version an
    /// event replaced is kept until the oldest readable revision passes
    /// the event; an event at or below it is `Compacted`.
    pub fn fill_previous(&self, events: &mut [Event]) -> Result<(), Error> {
        let st = self.state.read().map_err(|_| lock_poisoned())?;
        let floor = self.oldest_readable(&st);
        let view = self.db.db.snapshot();
        drop(st);
        let mut it = view.raw_iterator_cf_opt(self.db.cf(CF_KV)?, Db::same_key());
        for e in events {
            if e.revision <= floor {
                return Err(Error::Compacted {
                    requested: e.revision,
                    oldest: floor + 1,
                });
            }
            let hash = self.db.cipher.name_hash(&e.kv.key);
            e.prev_kv = match newest_version(&self.db, &mut it, &hash, e.revision - 1)? {
                Some(Row::Live(kv)) => Some(kv),
                Some(Row::Tombstone { .. }) | None => None,
            };
        }
        Ok(())
    }

    /// The oldest revision a read may ask for: the history's, and no more
    /// than [`Shared::watch_history`] revisions back (past that, the rows
    /// of replaced versions are deleted).
    fn oldest_readable(&self, st: &SmState) -> u64 {
        st.compacted
            .max(st.reads_from)
            .max(st.index.revision.saturating_sub(self.watch_history))
    }

    /// Decodes a row that must hold a live version.
    fn live(&self, row: &[u8], plain: &[u8]) -> Result<KeyValue, Error> {
        match decode_row(&self.db, row, plain)?.1 {
            Row::Live(kv) => Ok(kv),
            Row::Tombstone { .. } => Err(self
                .db
                .corruption(CF_KV, "a live key's version is a tombstone")),
        }
    }

    /// Reads the version of live `key` written at `revision`: a missing
    /// row is corruption.
    pub fn read_live(&self, key: &[u8], revision: u64) -> Result<KeyValue, Error> {
        let row = row_key(&self.db.cipher.name_hash(key), revision);
        let plain = self
            .db
            .get_sealed(CF_KV, &row)?
            .ok_or_else(|| self.db.corruption(CF_KV, "a live key's row is missing"))?;
        self.live(&row, &plain)
    }

    /// Replaces the state with the contents of a complete snapshot file of
    /// this member's own, through [`Snapshots::install`].
    pub(crate) fn install_file(&self, meta: Meta, file: SnapshotFile) -> Result<(), Error> {
        self.snapshots.install(&self.db, meta, file, |file, last| {
            self.replace_state(file, last)
        })?;
        // Watches re-check what history is left.
        let _ = self.notices.send(Notice::Reset);
        Ok(())
    }

    /// Rewrites the state from `file`; the new pointer row goes into
    /// `last`, which the caller commits (synced) with the snapshot rows.
    fn replace_state(&self, file: &SnapshotFile, last: &mut WriteBatch) -> Result<(), Error> {
        let mut st = self.state.write().map_err(|_| lock_poisoned())?;
        let kv_cf = self.db.cf(CF_KV)?;
        let ev_cf = self.db.cf(CF_EVENTS)?;
        let lease_cf = self.db.cf(CF_LEASES)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(kv_cf, [0u8].as_slice(), [0xffu8; 41].as_slice());
        batch.delete_range_cf(ev_cf, [0u8].as_slice(), [0xffu8; 13].as_slice());
        batch.delete_range_cf(lease_cf, [0u8].as_slice(), [0xffu8; 9].as_slice());
        self.db.write(batch, false)?;
        let mut index = Index::default();
        let mut reader = file.reader().map_err(Error::from)?;
        let mut header = None;
        while let Some((frame, _)) = reader.next_frame().map_err(Error::from)? {
            match frame {
                Frame::Header(h) => header = Some(h),
                Frame::Leases(leases) => {
                    let mut batch = WriteBatch::default();
                    for (id, ttl) in leases {
                        if id == 0 {
                            return Err(SnapshotError::Sequence("lease id 0 in a snapshot").into());
                        }
                        put_lease_row(&self.db, &mut batch, id, ttl)?;
                        index.insert_lease(id, ttl);
                    }
                    self.db.write(batch, false)?;
                }
                Frame::Records(kvs) => {
                    let mut batch = WriteBatch::default();
                    for kv in kvs {
                        put_kv_row(&self.db, &mut batch, &kv)?;
                        if !index.insert_live(kv.key, kv.meta, kv.value.len() as u64) {
                            return Err(SnapshotError::Sequence(
                                "a record names a lease the snapshot does not hold",
                            )
                            .into());
                        }
                    }
                    self.db.write(batch, false)?;
                }
                Frame::End { .. } => {}
            }
        }
        let header = header.ok_or_else(|| Error::from(SnapshotError::Sequence("no header")))?;
        index.revision = header.revision;
        let pointer = SmPointer {
            last_applied: header.meta.last_log_id,
            membership: header.meta.last_membership.clone(),
            revision: header.revision,
            compacted: header.revision,
        };
        self.db
            .put_sealed(last, CF_META, META_SM, &encode_pointer(&pointer)?)?;
        self.restart_lease_countdowns(&index)?;
        *st = SmState {
            index,
            last_applied: pointer.last_applied,
            membership: pointer.membership,
            compacted: pointer.compacted,
            superseded: Default::default(),
            reads_from: 0,
        };
        Ok(())
    }

    /// Writes a snapshot of the state as of a RocksDB point-in-time view.
    /// Returns once the view is taken; the file is written on its own thread.
    async fn start_snapshot(
        self: &Arc<Self>,
    ) -> Result<oneshot::Receiver<Result<Snapshot<TypeConfig>, Error>>, Error> {
        let (taken_tx, taken_rx) = oneshot::channel::<()>();
        let (done_tx, done_rx) = oneshot::channel();
        let shared = self.clone();
        std::thread::Builder::new()
            .name("coffer-snapshot".into())
            .spawn(move || {
                let result = shared.build_snapshot(taken_tx);
                let _ = done_tx.send(result);
            })
            .map_err(|e| Error::Engine(format!("cannot start the snapshot thread: {e}")))?;
        // An error before the view was taken arrives through `done_rx`.
        let _ = taken_rx.await;
        Ok(done_rx)
    }

    fn build_snapshot(
        self: &Arc<Self>,
        taken: oneshot::Sender<()>,
    ) -> Result<Snapshot<TypeConfig>, Error> {
        // Registered before the view is taken, and the keys held while it
        // is read: a key rotation keeps the keys the view's rows are
        // sealed under until the build is done.
        let _keys = self.db.key_readers();
        let mut w = self.snapshots.writer()?;
        let view = self.db.db.snapshot();
        let _ = taken.send(());
        let meta_cf = self.db.cf(CF_META)?;
        let pointer = match view
            .get_cf(meta_cf, META_SM)
            .map_err(|e| self.db.engine_err(e))?
        {
            None => SmPointer {
                last_applied: None,
                membership: StoredMembership::default(),
                revision: 0,
                compacted: 0,
            },
            Some(raw) => {
                let plain = self.db.open_row(CF_META, META_SM, &raw)?;
                decode_pointer(&plain).map_err(|e| self.db.corruption(CF_META, e))?
            }
        };
        let meta = SnapshotMeta {
            last_log_id: pointer.last_applied,
            last_membership: pointer.membership,
            snapshot_id: format!(
                "{}-{}-{}",
                pointer.last_applied.map_or(0, |l| l.leader_id.term),
                pointer.last_applied.map_or(0, |l| l.index),
                w.id()
            ),
        };
        w.header(SnapshotHeader {
            meta: meta.clone(),
            revision: pointer.revision,
        })
        .map_err(Error::from)?;
        let lease_cf = self.db.cf(CF_LEASES)?;
        let mut leases = Vec::new();
        for item in view.iterator_cf(lease_cf, rocksdb::IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.db.engine_err(e))?;
            let plain = self.db.open_row(CF_LEASES, &k, &v)?;
            leases.push(decode_lease_row(&self.db, &k, &plain)?);
            if leases.len() == LEASES_PER_FRAME {
                w.leases(&std::mem::take(&mut leases))
                    .map_err(Error::from)?;
            }
        }
        w.leases(&leases).map_err(Error::from)?;
        let kv_cf = self.db.cf(CF_KV)?;
        let rows = view
            .iterator_cf_opt(kv_cf, Db::total_order(), rocksdb::IteratorMode::Start)
            .map(|item| {
                let (k, v) = item.map_err(|e| self.db.engine_err(e))?;
                let plain = self.db.open_row(CF_KV, &k, &v)?;
                Ok((k, plain))
            });
        // The newest version of each key, unless the key is deleted.
        walk_versions(
            &self.db,
            rows,
            |_, _| {},
            |_, row| match row {
                Row::Live(kv) => w.push(kv).map_err(Error::from),
                Row::Tombstone { .. } => Ok(()),
            },
        )?;
        drop(view);
        let file = w.finish().map_err(Error::from)?;
        // A build that an install overtook is discarded here; openraft
        // ignores the meta of a snapshot older than the one it holds.
        self.snapshots
            .publish(&self.db, meta.clone(), file.clone())?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }

    pub(crate) fn current_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, Error> {
        Ok(self.snapshots.current()?.map(|c| Snapshot {
            meta: c.meta,
            snapshot: Box::new(c.file),
        }))
    }

    /// Copies `incoming` into a file of our own (sealed under our keys)
    /// unless it already is one.
    fn adopt_snapshot(&self, incoming: &SnapshotFile) -> Result<SnapshotFile, Error> {
        if self.snapshots.owns(incoming) {
            return Ok(incoming.clone());
        }
        let mut reader = incoming.reader().map_err(Error::from)?;
        let mut w = self.snapshots.writer()?;
        while let Some((_, plain)) = reader.next_frame().map_err(Error::from)? {
            w.write_frame(&plain).map_err(Error::from)?;
        }
        w.finish().map_err(Error::from)
    }

    /// Starts receiving a snapshot streamed from another member.
    pub fn receive_snapshot(&self) -> Result<SnapshotWriter, Error> {
        self.snapshots.writer()
    }

    fn install(
        &self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        incoming: &SnapshotFile,
    ) -> Result<(), Error> {
        let file = self.adopt_snapshot(incoming)?;
        let header = file.header().map_err(Error::from)?;
        if header.meta != *meta {
            return Err(Error::from(SnapshotError::Sequence(
                "snapshot header does not match its metadata",
            )));
        }
        self.install_file(header.meta, file)
    }

    /// One bounded page of the events at revisions `from..=upto` whose key
    /// starts with `prefix`, read from disk. The state lock is held only to
    /// check that the history is kept and to open the iterator (a
    /// point-in-time view), never across the reads.
    pub fn history_page(&self, from: u64, upto: u64, prefix: &[u8]) -> Result<HistoryPage, Error> {
        let cf = CF_EVENTS;
        let it = {
            let st = self.state.read().map_err(|_| lock_poisoned())?;
            if from <= st.compacted {
                return Err(Error::Compacted {
                    requested: from,
                    oldest: st.compacted + 1,
                });
            }
            // The first record whose last revision is at or past `from`.
            self.db.scan_sealed(cf, &event_key(from))?
        };
        let mut page = HistoryPage {
            events: Vec::new(),
            covered_upto: upto,
        };
        let mut bytes = 0usize;
        for row in it {
            let (_, plain) = row?;
            let events = decode_events(&plain).map_err(|e| self.db.corruption(cf, e))?;
            let Some(last) = events.last().map(|e| e.revision) else {
                return Err(self.db.corruption(cf, "empty events record"));
            };
            for e in events {
                if e.revision >= from && e.revision <= upto && e.kv.key.starts_with(prefix) {
                    bytes += e.kv.key.len() + e.kv.value.len();
                    page.events.push(e);
                }
            }
            if last >= upto {
                break;
            }
            if page.events.len() >= HISTORY_PAGE_EVENTS || bytes >= HISTORY_PAGE_BYTES {
                // Records hold consecutive revisions: everything up to this
                // record's last one has been read.
                page.covered_upto = last;
                break;
            }
        }
        Ok(page)
    }
}

/// What [`Shared::history_page`] read.
#[derive(Debug)]
pub struct HistoryPage {
    pub events: Vec<Event>,
    /// Every matching event up to this revision is in `events`.
    pub covered_upto: u64,
}

/// Where a batch being applied put a key: the event of its put (record,
/// position), or `None` for a delete.
type Pending = HashMap<Vec<u8>, Option<(usize, usize)>>;

/// Values of a batch being applied: its own earlier writes (found in its
/// events, so the batch keeps no second copy of each value), then disk.
struct BatchValues<'a> {
    shared: &'a Shared,
    pending: &'a Pending,
    sealed: &'a [Arc<Vec<Event>>],
    filling: &'a [Event],
}

impl Values for BatchValues<'_> {
    type Error = Error;
    fn value(&self, key: &[u8], revision: u64) -> Result<Option<Value>, Error> {
        match self.pending.get(key) {
            Some(None) => Ok(None),
            Some(Some((record, position))) => {
                let events = self
                    .sealed
                    .get(*record)
                    .map_or(self.filling, |r| r.as_slice());
                events
                    .get(*position)
                    .map(|e| Some(e.kv.value.clone()))
                    .ok_or_else(|| Error::Internal("a pending write's event is missing".into()))
            }
            None => Ok(Some(self.shared.read_live(key, revision)?.value)),
        }
    }
}

/// The state machine handed to openraft.
#[derive(Debug)]
pub struct StateMachine {
    pub shared: Arc<Shared>,
}

/// Builds a snapshot from a point-in-time view taken when it was created.
#[derive(Debug)]
pub struct Builder {
    done: Option<oneshot::Receiver<Result<Snapshot<TypeConfig>, Error>>>,
    error: Option<String>,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        let fail = |e: &Error| -> SErr { StorageIOError::write_snapshot(None, e).into() };
        if let Some(e) = self.error.take() {
            return Err(fail(&Error::Engine(e)));
        }
        let Some(done) = self.done.take() else {
            return Err(fail(&Error::Engine("snapshot builder used twice".into())));
        };
        match done.await {
            Ok(Ok(snap)) => Ok(snap),
            Ok(Err(e)) => Err(fail(&e)),
            Err(_) => Err(fail(&Error::Internal(
                "snapshot thread ended without a result".into(),
            ))),
        }
    }
}

impl StateMachine {
    fn apply_batch(&self, entries: Vec<Entry<TypeConfig>>) -> Result<Vec<Vec<Response>>, Error> {
        let shared = &self.shared;
        let db = &shared.db;
        let mut st = shared.state.write().map_err(|_| lock_poisoned())?;
        let mut batch = WriteBatch::default();
        let mut pending = Pending::new();
        // The events of the record being filled, and the sealed records'.
        let mut events = Vec::new();
        let mut events_bytes = 0usize;
        let mut notices = Vec::new();
        // The furthest explicit compaction this batch asked for.
        let mut compact_to = 0u64;
        // Leases whose countdown restarts (`Some`) or ends (`None`).
        let mut lease_countdowns: Vec<(u64, Option<Instant>)> = Vec::new();
        let mut responses = Vec::with_capacity(entries.len());
        for entry in entries {
            st.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => responses.push(Vec::new()),
                EntryPayload::Membership(m) => {
                    st.membership = StoredMembership::new(Some(entry.log_id), m);
                    responses.push(Vec::new());
                }
                EntryPayload::Normal(cmd) => {
                    let mut answers = Vec::with_capacity(cmd.requests.len());
                    for request in cmd.requests {
                        let values = BatchValues {
                            shared,
                            pending: &pending,
                            sealed: &notices,
                            filling: &events,
                        };
                        let (resp, mutations) =
                            machine::apply(&mut st.index, &values, cmd.quota_bytes, request)?;
                        match resp {
                            Response::Compact { compacted, .. } => {
                                compact_to = compact_to.max(compacted);
                            }
                            // A keep-alive changes nothing stored.
                            Response::LeaseKeepAlive { id, ttl_secs } => {
                                lease_countdowns.push((id, due_after(ttl_secs)));
                            }
                            _ => {}
                        }
                        let revision = st.index.revision;
                        // Tombstones this request leaves; a put later in
                        // the same request (a transaction) overwrites one.
                        let mut tombstones: Vec<[u8; 40]> = Vec::new();
                        for m in mutations {
                            let event = match m {
                                Mutation::PutLease { id, ttl_secs } => {
                                    put_lease_row(db, &mut batch, id, ttl_secs)?;
                                    lease_countdowns.push((id, due_after(ttl_secs)));
                                    continue;
                                }
                                Mutation::DeleteLease { id } => {
                                    batch.delete_cf(db.cf(CF_LEASES)?, id.to_be_bytes());
                                    lease_countdowns.push((id, None));
                                    continue;
                                }
                                Mutation::Put {
                                    key,
                                    value,
                                    meta,
                                    superseded,
                                } => {
                                    let kv = KeyValue { key, value, meta };
                                    let row = put_kv_row(db, &mut batch, &kv)?;
                                    tombstones.retain(|t| *t != row);
                                    supersede(&mut st.superseded, &row, superseded, revision);
                                    // Where this event will be: the record
                                    // being filled becomes `notices[len]`.
                                    pending.insert(
                                        kv.key.clone(),
                                        Some((notices.len(), events.len())),
                                    );
                                    Event {
                                        revision,
                                        kind: EventKind::Put,
                                        kv,
                                        prev_kv: None,
                                    }
                                }
                                Mutation::Delete { key, superseded } => {
                                    let row = put_tombstone(db, &mut batch, &key, revision)?;
                                    supersede(&mut st.superseded, &row, superseded, revision);
                                    tombstones.push(row);
                                    pending.insert(key.clone(), None);
                                    Event {
                                        revision,
                                        prev_kv: None,
                                        kind: EventKind::Delete,
                                        kv: KeyValue {
                                            key,
                                            value: Value::default(),
                                            meta: KeyMeta::default(),
                                        },
                                    }
                                }
                            };
                            events_bytes += event.kv.key.len() + event.kv.value.len() + 48;
                            events.push(event);
                        }
                        // A tombstone goes once the history passes its
                        // own revision.
                        st.superseded
                            .extend(tombstones.into_iter().map(|t| (revision, t)));
                        answers.push(resp);
                        // Between requests, so a transaction's events (one
                        // revision) never straddle two records.
                        if events_bytes >= EVENT_RECORD_BYTES {
                            seal_events(db, &mut batch, &events)?;
                            notices.push(Arc::new(std::mem::take(&mut events)));
                            events_bytes = 0;
                        }
                    }
                    responses.push(answers);
                }
            }
        }
        if !events.is_empty() {
            seal_events(db, &mut batch, &events)?;
            notices.push(Arc::new(events));
        }
        let trim_to = (st.index.revision.saturating_sub(shared.watch_history) / EVENT_TRIM_STEP
            * EVENT_TRIM_STEP)
            .max(compact_to);
        if trim_to > st.compacted {
            // Records that end at or before `trim_to`; one that straddles it
            // stays, and `Watch` never asks for what lies before `compacted`.
            batch.delete_range_cf(
                db.cf(CF_EVENTS)?,
                event_key(0),
                event_key(trim_to.saturating_add(1)),
            );
            st.compacted = trim_to;
        }
        // Versions replaced at or before the oldest readable revision: no
        // read may ask for them any more. This floor moves with every
        // batch (the history above moves in steps), so each batch deletes
        // about as many rows as it replaced.
        let floor = shared.oldest_readable(&st);
        let kv_cf = db.cf(CF_KV)?;
        while st.superseded.front().is_some_and(|(r, _)| *r <= floor) {
            if let Some((_, row)) = st.superseded.pop_front() {
                batch.delete_cf(kv_cf, row);
            }
        }
        let pointer = SmPointer {
            last_applied: st.last_applied,
            membership: st.membership.clone(),
            revision: st.index.revision,
            compacted: st.compacted,
        };
        db.put_sealed(&mut batch, CF_META, META_SM, &encode_pointer(&pointer)?)?;
        db.write(batch, false)?;
        if !lease_countdowns.is_empty() {
            let mut due = shared.lease_due.lock().map_err(|_| lock_poisoned())?;
            for (id, at) in lease_countdowns {
                match at {
                    Some(at) => due.insert(id, at),
                    None => due.remove(&id),
                };
            }
        }
        drop(st);
        for events in notices {
            // No receivers is not an error: nobody is watching.
            let _ = shared.notices.send(Notice::Events(events));
        }
        Ok(responses)
    }
}

/// Queues the version of `row`'s key written at `superseded` (0: none), which
/// the change at `revision` replaced, for deletion once the history passes
/// `revision`. A version written at `revision` itself was overwritten in
/// this very batch: its row is gone already.
fn supersede(
    queue: &mut std::collections::VecDeque<(u64, [u8; 40])>,
    row: &[u8; 40],
    superseded: u64,
    revision: u64,
) {
    if superseded != 0 && superseded != revision {
        let mut old = *row;
        old[32..].copy_from_slice(&superseded.to_be_bytes());
        queue.push_back((revision, old));
    }
}

/// Adds one sealed `events` row holding `events` (none if empty).
fn seal_events(db: &Db, batch: &mut WriteBatch, events: &[Event]) -> Result<(), Error> {
    match events.last() {
        None => Ok(()),
        Some(last) => db.put_sealed(
            batch,
            CF_EVENTS,
            &event_key(last.revision),
            &encode_events(events)?,
        ),
    }
}

fn sm_err(e: Error) -> SErr {
    StorageIOError::write_state_machine(&e).into()
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Builder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), SErr> {
        let st = self
            .shared
            .state
            .read()
            .map_err(|_| sm_err(lock_poisoned()))?;
        Ok((st.last_applied, st.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Response>>, SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.apply_batch(entries.into_iter().collect())
            .map_err(sm_err)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        match self.shared.start_snapshot().await {
            Ok(done) => Builder {
                done: Some(done),
                error: None,
            },
            Err(e) => Builder {
                done: None,
                error: Some(e.to_string()),
            },
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, SErr> {
        // Coffer's transport streams frames through `Store::receive_snapshot`;
        // this handle only names where such a file would go.
        Ok(Box::new(self.shared.snapshots.placeholder()))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<SnapshotFile>,
    ) -> Result<(), SErr> {
        let shared = self.shared.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || shared.install(&meta, &snapshot))
            .await
            .map_err(|e| sm_err(Error::from(e)))?
            .map_err(|e| StorageIOError::write_snapshot(None, &e).into())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        self.shared
            .current_snapshot()
            .map_err(|e| StorageIOError::read_snapshot(None, &e).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Cipher, KeyId, SecretKey};
    use std::fs;

    fn open(dir: &std::path::Path) -> Arc<Shared> {
        // Fixed keys, so a test can reopen what it wrote.
        let k = SecretKey::from_bytes([7; 32]);
        let cipher = Arc::new(
            Cipher::new(KeyId(1), [(KeyId(1), &k)], SecretKey::from_bytes([9; 32])).unwrap(),
        );
        let db = Arc::new(Db::open(&dir.join("db"), cipher).unwrap());
        fs::create_dir_all(dir.join("snapshots")).unwrap();
        Shared::open(db, dir.join("snapshots"), 100).unwrap()
    }

    /// Regression (issue 5, fault 1): a snapshot build that finishes while
    /// a snapshot is being received must not delete the receiver's file.
    #[tokio::test]
    async fn a_build_leaves_a_receivers_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let shared = open(dir.path());
        let mut incoming = shared.receive_snapshot().unwrap();
        incoming
            .header(SnapshotHeader {
                meta: SnapshotMeta::default(),
                revision: 0,
            })
            .unwrap();
        let built = shared.start_snapshot().await.unwrap().await.unwrap();
        assert!(built.is_ok(), "build failed: {built:?}");
        let received = incoming.finish();
        assert!(
            received.is_ok(),
            "the build deleted the receiver's file: {received:?}"
        );
    }

    fn meta_at(index: u64) -> Meta {
        SnapshotMeta {
            last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), index)),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("test-{index}"),
        }
    }

    fn kv(key: &str, revision: u64) -> KeyValue {
        KeyValue {
            key: key.as_bytes().to_vec(),
            value: Value(b"value".to_vec()),
            meta: KeyMeta {
                create_revision: revision,
                mod_revision: revision,
                version: 1,
                lease: 0,
            },
        }
    }

    /// A finished snapshot at `index` holding `keys`.
    fn snapshot_at(shared: &Shared, index: u64, keys: &[&str]) -> SnapshotFile {
        let mut w = shared.receive_snapshot().unwrap();
        w.header(SnapshotHeader {
            meta: meta_at(index),
            revision: index,
        })
        .unwrap();
        for (i, k) in keys.iter().enumerate() {
            w.push(kv(k, i as u64 + 1)).unwrap();
        }
        w.finish().unwrap()
    }

    fn snapshot_files(shared: &Shared) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(shared.snapshots.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Regression (issue 5, fault 1): a build and an install interleaved on
    /// one member. The install must not delete the build's temporary file,
    /// and the build, older than what was installed, must not become
    /// current afterwards; the next open finds the installed snapshot.
    #[test]
    fn an_install_overtaking_a_build_stays_current() {
        let dir = tempfile::tempdir().unwrap();
        let shared = open(dir.path());
        // The build has taken its view (index 5) and is writing its file.
        let mut build = shared.snapshots.writer().unwrap();
        build
            .header(SnapshotHeader {
                meta: meta_at(5),
                revision: 5,
            })
            .unwrap();
        build.push(kv("old", 1)).unwrap();
        // Meanwhile the leader's snapshot at index 10 arrives and installs.
        let installed = snapshot_at(&shared, 10, &["a", "b"]);
        shared.install(&meta_at(10), &installed).unwrap();
        // The build finishes and tries to publish.
        let built = build
            .finish()
            .expect("the install deleted the build's file");
        assert!(!shared
            .snapshots
            .publish(&shared.db, meta_at(5), built.clone())
            .unwrap());
        assert!(!built.path().exists(), "a superseded build is removed");
        let cur = shared.snapshots.current().unwrap().unwrap();
        assert_eq!(cur.meta, meta_at(10));
        assert_eq!(
            snapshot_files(&shared),
            vec![format!("{}.snap", installed.id())]
        );
        drop(cur);
        drop(shared);
        let shared = open(dir.path());
        let cur = shared.snapshots.current().unwrap().unwrap();
        assert_eq!(cur.meta, meta_at(10));
        assert!(shared.get(b"a").unwrap().is_some());
        assert!(shared.get(b"old").unwrap().is_none());
    }

    /// The current snapshot only moves forward: an older build is
    /// discarded, an older install refused with nothing changed, and a
    /// newer build replaces (and removes) the current file.
    #[test]
    fn the_current_snapshot_only_moves_forward() {
        let dir = tempfile::tempdir().unwrap();
        let shared = open(dir.path());
        let ten = snapshot_at(&shared, 10, &["a"]);
        shared.install(&meta_at(10), &ten).unwrap();
        let older = snapshot_at(&shared, 7, &["z"]);
        assert!(shared.install(&meta_at(7), &older).is_err());
        assert!(shared.get(b"z").unwrap().is_none());
        assert!(shared.get(b"a").unwrap().is_some());
        assert_eq!(
            shared.snapshots.current().unwrap().unwrap().meta,
            meta_at(10)
        );
        let same = snapshot_at(&shared, 10, &["a"]);
        assert!(!shared
            .snapshots
            .publish(&shared.db, meta_at(10), same.clone())
            .unwrap());
        assert!(!same.path().exists());
        let newer = snapshot_at(&shared, 12, &["a"]);
        assert!(shared
            .snapshots
            .publish(&shared.db, meta_at(12), newer.clone())
            .unwrap());
        assert!(!ten.path().exists(), "the replaced current file is removed");
        // `older` was refused but is still its caller's to remove.
        shared.snapshots.discard(&older).unwrap();
        assert_eq!(
            snapshot_files(&shared),
            vec![format!("{}.snap", newer.id())]
        );
    }

    /// An install interrupted after its marker is finished by the next open,
    /// and files a crash left behind are removed then (and only then).
    #[test]
    fn open_finishes_an_interrupted_install_and_clears_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let shared = open(dir.path());
        let file = snapshot_at(&shared, 10, &["a", "b"]);
        let mut marker = WriteBatch::default();
        shared
            .db
            .put_sealed(
                &mut marker,
                CF_META,
                b"installing",
                &crate::engine::snapshots::id_row_bytes(file.id()),
            )
            .unwrap();
        shared.db.write(marker, true).unwrap();
        let leftover = snapshot_at(&shared, 3, &["x"]);
        let tmp = shared.snapshots.dir().join("feedfeedfeedfeed.snap.tmp");
        fs::write(&tmp, b"partial").unwrap();
        drop(shared);
        let shared = open(dir.path());
        assert_eq!(
            shared.snapshots.current().unwrap().unwrap().meta,
            meta_at(10)
        );
        assert!(shared.get(b"b").unwrap().is_some());
        assert!(!leftover.path().exists() && !tmp.exists());
        assert_eq!(snapshot_files(&shared), vec![format!("{}.snap", file.id())]);
    }
}
