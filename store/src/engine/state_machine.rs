//! The key/value state machine on RocksDB.
//!
//! Decisions come from [`crate::machine::apply`]; this module persists them:
//! each applied batch is one RocksDB write (kv rows, watch events, and the
//! `sm` pointer row with the last applied log id, membership and revision),
//! so the state on disk is always a prefix of the log. The write is not
//! synced on its own; see ARCHITECTURE.md, "Durability".
//!
//! Snapshot install is made crash-safe by an `installing` marker: the
//! received file is complete and synced before the marker is written, and
//! [`Shared::open`] finishes an install the marker says was interrupted.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use rocksdb::WriteBatch;
use tokio::sync::{broadcast, oneshot};

use crate::codec::{Reader, Writer};
use crate::command::{KeyMeta, KeyValue, Response};
use crate::engine::db::{location, Db, CF_EVENTS, CF_KV, CF_META};
use crate::error::Error;
use crate::event::{decode_events, encode_events, Event, EventKind};
use crate::machine::{self, Index, Mutation, Values};
use crate::snapshot::{Frame, SnapshotError, SnapshotFile, SnapshotHeader, SnapshotWriter};
use crate::types::{self, NodeId, TypeConfig};

const META_SM: &[u8] = b"sm";
const META_SNAPSHOT: &[u8] = b"snapshot";
const META_INSTALLING: &[u8] = b"installing";
/// Event history is trimmed in steps of this many revisions, so that range
/// deletions stay rare.
const EVENT_TRIM_STEP: u64 = 1024;
/// An events record is sealed once it holds about this much.
const EVENT_RECORD_BYTES: usize = 1 << 20;

type SErr = StorageError<NodeId>;

/// What the state machine tells live watches.
#[derive(Debug, Clone)]
pub enum Notice {
    Events(Arc<Vec<Event>>),
    /// A snapshot replaced the state; history before it is gone.
    Reset,
}

/// The state machine's in-memory view.
#[derive(Debug, Default)]
pub struct SmState {
    pub index: Index,
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, BasicNode>,
    /// Events at or below this revision are no longer kept.
    pub compacted: u64,
}

/// State shared by the state machine (owned by openraft) and the `Store`
/// handle that reads from it.
#[derive(Debug)]
pub struct Shared {
    pub db: Arc<Db>,
    pub state: RwLock<SmState>,
    pub notices: broadcast::Sender<Notice>,
    pub snapshot_dir: PathBuf,
    current: Mutex<Option<(SnapshotMeta<NodeId, BasicNode>, SnapshotFile)>>,
    pub watch_history: u64,
}

fn lock_poisoned() -> Error {
    Error::Shutdown("state lock poisoned by a panic".into())
}

fn random_id() -> String {
    let k = crate::crypto::SecretKey::random();
    k.expose()[..8].iter().map(|b| format!("{b:02x}")).collect()
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

fn encode_pointer(p: &SmPointer) -> Vec<u8> {
    let mut w = Writer::with_capacity(128);
    w.u8(1);
    types::encode_opt_log_id(&mut w, &p.last_applied);
    types::encode_stored_membership(&mut w, &p.membership);
    w.u64(p.revision).u64(p.compacted);
    w.finish()
}

fn decode_pointer(bytes: &[u8]) -> Result<SmPointer, crate::codec::DecodeError> {
    let mut r = Reader::new(bytes);
    let version = r.u8("sm pointer version")?;
    if version != 1 {
        return Err(crate::codec::DecodeError::UnknownVersion {
            what: "sm pointer",
            version,
        });
    }
    let p = SmPointer {
        last_applied: types::decode_opt_log_id(&mut r)?,
        membership: types::decode_stored_membership(&mut r)?,
        revision: r.u64("revision")?,
        compacted: r.u64("compacted")?,
    };
    r.finish("sm pointer")?;
    Ok(p)
}

/// Adds the sealed `kv` row of `kv`, under its name's hash, to `batch`.
fn put_kv_row(db: &Db, batch: &mut WriteBatch, kv: &KeyValue) -> Result<(), Error> {
    let mut w = Writer::with_capacity(kv.key.len() + kv.value.len() + 40);
    crate::snapshot::encode_kv(&mut w, kv);
    db.put_sealed(batch, CF_KV, &db.cipher.name_hash(&kv.key), &w.finish())
}

/// Decodes a `kv` row and checks that it sits under its own name's hash.
fn decode_kv_row(db: &Db, row_key: &[u8], plain: &[u8]) -> Result<KeyValue, Error> {
    let mut r = Reader::new(plain);
    let kv = crate::snapshot::decode_kv(&mut r).map_err(|e| db.corruption(CF_KV, e))?;
    r.finish("kv row").map_err(|e| db.corruption(CF_KV, e))?;
    if db.cipher.name_hash(&kv.key) != row_key {
        return Err(db.corruption(CF_KV, "row is not stored under its key's hash"));
    }
    Ok(kv)
}

impl Shared {
    /// Loads the state machine from `db`, finishing an interrupted snapshot
    /// install first.
    pub fn open(
        db: Arc<Db>,
        snapshot_dir: PathBuf,
        watch_history: u64,
    ) -> Result<Arc<Self>, Error> {
        let (notices, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            db,
            state: RwLock::new(SmState::default()),
            notices,
            snapshot_dir,
            current: Mutex::new(None),
            watch_history: watch_history.max(1),
        });
        let current_id = match shared.db.get_sealed(CF_META, META_SNAPSHOT)? {
            Some(id) => Some(
                String::from_utf8(id.to_vec())
                    .map_err(|_| shared.db.corruption(CF_META, "snapshot id is not UTF-8"))?,
            ),
            None => None,
        };
        if let Some(id) = &current_id {
            let file = SnapshotFile::new(&shared.snapshot_dir, id, shared.db.cipher.clone());
            let header = file.header().map_err(Error::from)?;
            if shared.db.get_sealed(CF_META, META_INSTALLING)?.is_some() {
                shared.install_from_file(&file)?;
            }
            *shared.current.lock().map_err(|_| lock_poisoned())? = Some((header.meta, file));
        }
        shared.remove_other_snapshots(current_id.as_deref());
        shared.load()?;
        Ok(shared)
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
        for row in self.db.scan_sealed(CF_KV, &[])? {
            let (k, plain) = row?;
            let kv = decode_kv_row(&self.db, &k, &plain)?;
            st.index.insert_live(kv.key, kv.meta, kv.value.len() as u64);
        }
        *self.state.write().map_err(|_| lock_poisoned())? = st;
        Ok(())
    }

    fn remove_other_snapshots(&self, keep: Option<&str>) {
        let Ok(dir) = fs::read_dir(&self.snapshot_dir) else {
            return;
        };
        let keep = keep.map(|id| format!("{id}.snap"));
        for entry in dir.flatten() {
            let name = entry.file_name();
            if Some(name.to_string_lossy().as_ref()) != keep.as_deref() {
                // Leftovers are harmless (sealed); failing to remove one is not an error.
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// Reads a live key's row.
    pub fn read_kv(&self, key: &[u8]) -> Result<Option<KeyValue>, Error> {
        let hash = self.db.cipher.name_hash(key);
        match self.db.get_sealed(CF_KV, &hash)? {
            None => Ok(None),
            Some(plain) => decode_kv_row(&self.db, &hash, &plain).map(Some),
        }
    }

    /// Replaces the state with the contents of a complete snapshot file.
    fn install_from_file(&self, file: &SnapshotFile) -> Result<(), Error> {
        let mut st = self.state.write().map_err(|_| lock_poisoned())?;
        let kv_cf = self.db.cf(CF_KV)?;
        let ev_cf = self.db.cf(CF_EVENTS)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(kv_cf, [0u8].as_slice(), [0xffu8; 33].as_slice());
        batch.delete_range_cf(ev_cf, [0u8].as_slice(), [0xffu8; 13].as_slice());
        self.db.write(batch, false)?;
        let mut index = Index::default();
        let mut reader = file.reader().map_err(Error::from)?;
        let mut header = None;
        while let Some((frame, _)) = reader.next_frame().map_err(Error::from)? {
            match frame {
                Frame::Header(h) => header = Some(h),
                Frame::Records(kvs) => {
                    let mut batch = WriteBatch::default();
                    for kv in kvs {
                        put_kv_row(&self.db, &mut batch, &kv)?;
                        index.insert_live(kv.key, kv.meta, kv.value.len() as u64);
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
        let mut batch = WriteBatch::default();
        self.db
            .put_sealed(&mut batch, CF_META, META_SM, &encode_pointer(&pointer))?;
        batch.delete_cf(self.db.cf(CF_META)?, META_INSTALLING);
        self.db.write(batch, true)?;
        *st = SmState {
            index,
            last_applied: pointer.last_applied,
            membership: pointer.membership,
            compacted: pointer.compacted,
        };
        drop(st);
        let _ = self.notices.send(Notice::Reset);
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
            .map_err(|e| Error::Io {
                path: self.snapshot_dir.clone(),
                source: e,
            })?;
        // An error before the view was taken arrives through `done_rx`.
        let _ = taken_rx.await;
        Ok(done_rx)
    }

    fn build_snapshot(
        self: &Arc<Self>,
        taken: oneshot::Sender<()>,
    ) -> Result<Snapshot<TypeConfig>, Error> {
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
                let plain = self
                    .db
                    .cipher
                    .open(&location(CF_META, META_SM), &raw)
                    .map_err(|e| self.db.corruption(CF_META, e))?;
                decode_pointer(&plain).map_err(|e| self.db.corruption(CF_META, e))?
            }
        };
        let id = random_id();
        let meta = SnapshotMeta {
            last_log_id: pointer.last_applied,
            last_membership: pointer.membership,
            snapshot_id: format!(
                "{}-{}-{id}",
                pointer.last_applied.map_or(0, |l| l.leader_id.term),
                pointer.last_applied.map_or(0, |l| l.index)
            ),
        };
        let mut w = SnapshotWriter::create(&self.snapshot_dir, &id, self.db.cipher.clone())
            .map_err(Error::from)?;
        w.header(SnapshotHeader {
            meta: meta.clone(),
            revision: pointer.revision,
        })
        .map_err(Error::from)?;
        let kv_cf = self.db.cf(CF_KV)?;
        for item in view.iterator_cf(kv_cf, rocksdb::IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.db.engine_err(e))?;
            let plain = self
                .db
                .cipher
                .open(&location(CF_KV, &k), &v)
                .map_err(|e| self.db.corruption(CF_KV, e))?;
            w.push(decode_kv_row(&self.db, &k, &plain)?)
                .map_err(Error::from)?;
        }
        drop(view);
        let file = w.finish().map_err(Error::from)?;
        self.set_current(meta.clone(), file.clone())?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }

    fn set_current(
        &self,
        meta: SnapshotMeta<NodeId, BasicNode>,
        file: SnapshotFile,
    ) -> Result<(), Error> {
        let mut batch = WriteBatch::default();
        self.db
            .put_sealed(&mut batch, CF_META, META_SNAPSHOT, file.id().as_bytes())?;
        self.db.write(batch, true)?;
        let mut cur = self.current.lock().map_err(|_| lock_poisoned())?;
        let keep = file.id().to_string();
        *cur = Some((meta, file));
        drop(cur);
        self.remove_other_snapshots(Some(&keep));
        Ok(())
    }

    fn current_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, Error> {
        let cur = self.current.lock().map_err(|_| lock_poisoned())?;
        Ok(cur.as_ref().map(|(meta, file)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(file.clone()),
        }))
    }

    /// Copies `incoming` into a file of our own (sealed under our keys)
    /// unless it already is one.
    pub fn adopt_snapshot(&self, incoming: &SnapshotFile) -> Result<SnapshotFile, Error> {
        if Arc::ptr_eq(incoming.cipher(), &self.db.cipher)
            && incoming.path().parent() == Some(self.snapshot_dir.as_path())
        {
            return Ok(incoming.clone());
        }
        let mut reader = incoming.reader().map_err(Error::from)?;
        let mut w =
            SnapshotWriter::create(&self.snapshot_dir, &random_id(), self.db.cipher.clone())
                .map_err(Error::from)?;
        while let Some((_, plain)) = reader.next_frame().map_err(Error::from)? {
            w.write_frame(&plain).map_err(Error::from)?;
        }
        w.finish().map_err(Error::from)
    }

    /// Starts receiving a snapshot streamed from another member.
    pub fn receive_snapshot(&self) -> Result<SnapshotWriter, Error> {
        SnapshotWriter::create(&self.snapshot_dir, &random_id(), self.db.cipher.clone())
            .map_err(Error::from)
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
        let mut batch = WriteBatch::default();
        self.db
            .put_sealed(&mut batch, CF_META, META_INSTALLING, file.id().as_bytes())?;
        self.db
            .put_sealed(&mut batch, CF_META, META_SNAPSHOT, file.id().as_bytes())?;
        self.db.write(batch, true)?;
        self.install_from_file(&file)?;
        self.set_current(header.meta, file)
    }

    /// The events at revisions `from..` whose key starts with `prefix`.
    pub fn history(&self, from: u64, prefix: &[u8]) -> Result<Vec<Event>, Error> {
        let mut out = Vec::new();
        // The first record whose last revision is at or past `from`.
        for row in self.db.scan_sealed(CF_EVENTS, &event_key(from))? {
            let (_, plain) = row?;
            let events = decode_events(&plain).map_err(|e| self.db.corruption(CF_EVENTS, e))?;
            out.extend(
                events
                    .into_iter()
                    .filter(|e| e.revision >= from && e.kv.key.starts_with(prefix)),
            );
        }
        Ok(out)
    }
}

/// Values of a batch being applied: its own earlier writes, then disk.
struct BatchValues<'a> {
    shared: &'a Shared,
    pending: &'a HashMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Values for BatchValues<'_> {
    type Error = Error;
    fn value(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        if let Some(v) = self.pending.get(key) {
            return Ok(v.clone());
        }
        Ok(self.shared.read_kv(key)?.map(|kv| kv.value))
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
            Err(_) => Err(fail(&Error::Shutdown(
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
        let mut pending: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
        let mut events = Vec::new();
        let mut sealed_upto = 0;
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
                    for request in &cmd.requests {
                        let values = BatchValues {
                            shared,
                            pending: &pending,
                        };
                        let (resp, mutations) =
                            machine::apply(&mut st.index, &values, cmd.quota_bytes, request)?;
                        let revision = st.index.revision;
                        for m in mutations {
                            let event = match m {
                                Mutation::Put { key, value, meta } => {
                                    let kv = KeyValue {
                                        key,
                                        value: value.0,
                                        meta,
                                    };
                                    put_kv_row(db, &mut batch, &kv)?;
                                    pending.insert(kv.key.clone(), Some(kv.value.clone()));
                                    Event {
                                        revision,
                                        kind: EventKind::Put,
                                        kv,
                                    }
                                }
                                Mutation::Delete { key } => {
                                    batch.delete_cf(db.cf(CF_KV)?, db.cipher.name_hash(&key));
                                    pending.insert(key.clone(), None);
                                    Event {
                                        revision,
                                        kind: EventKind::Delete,
                                        kv: KeyValue {
                                            key,
                                            value: Vec::new(),
                                            meta: KeyMeta::default(),
                                        },
                                    }
                                }
                            };
                            events.push(event);
                        }
                        answers.push(resp);
                        // Between requests, so a transaction's events (one
                        // revision) never straddle two records.
                        let unsealed = &events[sealed_upto..];
                        let unsealed_bytes: usize = unsealed
                            .iter()
                            .map(|e| e.kv.key.len() + e.kv.value.len() + 48)
                            .sum();
                        if unsealed_bytes >= EVENT_RECORD_BYTES {
                            seal_events(db, &mut batch, unsealed)?;
                            sealed_upto = events.len();
                        }
                    }
                    responses.push(answers);
                }
            }
        }
        seal_events(db, &mut batch, &events[sealed_upto..])?;
        let trim_to = st.index.revision.saturating_sub(shared.watch_history) / EVENT_TRIM_STEP
            * EVENT_TRIM_STEP;
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
        let pointer = SmPointer {
            last_applied: st.last_applied,
            membership: st.membership.clone(),
            revision: st.index.revision,
            compacted: st.compacted,
        };
        db.put_sealed(&mut batch, CF_META, META_SM, &encode_pointer(&pointer))?;
        db.write(batch, false)?;
        drop(st);
        if !events.is_empty() {
            // No receivers is not an error: nobody is watching.
            let _ = shared.notices.send(Notice::Events(Arc::new(events)));
        }
        Ok(responses)
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
            &encode_events(events),
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
        Ok(Box::new(SnapshotFile::new(
            &self.shared.snapshot_dir,
            &random_id(),
            self.shared.db.cipher.clone(),
        )))
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
            .map_err(|e| sm_err(Error::Shutdown(e.to_string())))?
            .map_err(|e| StorageIOError::write_snapshot(None, &e).into())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        self.shared
            .current_snapshot()
            .map_err(|e| StorageIOError::read_snapshot(None, &e).into())
    }
}
