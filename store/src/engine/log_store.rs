//! Raft log and vote storage on RocksDB.
//!
//! `append` seals the entries and writes them as one synced RocksDB write
//! batch, then completes openraft's callback. openraft 0.9 awaits that
//! callback before it does anything else, so nothing is gained by flushing
//! on another thread; concurrent writers share an fsync because the
//! proposer (`engine::proposer`) puts them in one entry.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use std::collections::{BTreeMap, BTreeSet};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Membership, OptionalSend,
    RaftLogReader, StorageError, StorageIOError, StoredMembership, Vote,
};
use rocksdb::{IteratorMode, WriteBatch};

use crate::codec::{Reader, Writer};
use crate::engine::db::{location, Db, CF_LOG, CF_META};
use crate::error::Error;
use crate::types::{self, NodeId, TypeConfig};

pub const META_VOTE: &[u8] = b"vote";
pub const META_COMMITTED: &[u8] = b"committed";
pub const META_PURGED: &[u8] = b"purged";
/// Format of the `vote` row: version, then the vote.
const VOTE_ROW_VERSION: u8 = 1;
/// Format of the `committed` and `purged` rows: version, then an optional
/// log id.
const LOG_ID_ROW_VERSION: u8 = 1;

type SErr = StorageError<NodeId>;

fn read_err(e: impl std::error::Error + 'static) -> SErr {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> SErr {
    StorageIOError::write_logs(&e).into()
}

/// Reads log entries; cloned into every replication task.
#[derive(Debug, Clone)]
pub struct LogReader {
    db: Arc<Db>,
}

/// The log store handed to openraft.
#[derive(Debug)]
pub struct LogStore {
    db: Arc<Db>,
    last_purged: Option<LogId<NodeId>>,
    last_log: Option<LogId<NodeId>>,
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl LogReader {
    fn read_range(&self, start: u64, end: Bound<u64>) -> Result<Vec<Entry<TypeConfig>>, Error> {
        let cf = self.db.cf(CF_LOG)?;
        let _keys = self.db.key_readers();
        let mut out = Vec::new();
        let it = self.db.db.iterator_cf(
            cf,
            IteratorMode::From(&index_key(start), rocksdb::Direction::Forward),
        );
        for item in it {
            let (k, v) = item.map_err(|e| self.db.engine_err(e))?;
            let index = u64::from_be_bytes(
                k.as_ref()
                    .try_into()
                    .map_err(|_| self.db.corruption(CF_LOG, "log key is not 8 bytes"))?,
            );
            let past_end = match end {
                Bound::Included(e) => index > e,
                Bound::Excluded(e) => index >= e,
                Bound::Unbounded => false,
            };
            if past_end {
                break;
            }
            let plain = self
                .db
                .cipher
                .open(&location(CF_LOG, &k), &v)
                .map_err(|e| self.db.corruption(CF_LOG, format!("entry {index}: {e}")))?;
            let entry = types::decode_entry(&plain)
                .map_err(|e| self.db.corruption(CF_LOG, format!("entry {index}: {e}")))?;
            if entry.log_id.index != index {
                return Err(self.db.corruption(
                    CF_LOG,
                    format!("entry at {index} claims index {}", entry.log_id.index),
                ));
            }
            out.push(entry);
        }
        Ok(out)
    }
}

fn range_start(range: &impl RangeBounds<u64>) -> u64 {
    match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        self.read_range(range_start(&range), range.end_bound().cloned())
            .map_err(read_err)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        LogReader {
            db: self.db.clone(),
        }
        .try_get_log_entries(range)
        .await
    }
}

fn read_log_id(db: &Db, key: &[u8]) -> Result<Option<LogId<NodeId>>, Error> {
    match db.get_sealed(CF_META, key)? {
        None => Ok(None),
        Some(plain) => {
            let mut r = Reader::new(&plain);
            r.version(LOG_ID_ROW_VERSION, "log id row version")
                .map_err(|e| db.corruption(CF_META, e))?;
            let id = types::decode_opt_log_id(&mut r).map_err(|e| db.corruption(CF_META, e))?;
            r.finish("log id").map_err(|e| db.corruption(CF_META, e))?;
            Ok(id)
        }
    }
}

fn read_vote_row(db: &Db) -> Result<Option<Vote<NodeId>>, Error> {
    match db.get_sealed(CF_META, META_VOTE)? {
        None => Ok(None),
        Some(plain) => {
            let mut r = Reader::new(&plain);
            r.version(VOTE_ROW_VERSION, "vote row version")
                .map_err(|e| db.corruption(CF_META, e))?;
            let v = types::decode_vote(&mut r).map_err(|e| db.corruption(CF_META, e))?;
            r.finish("vote").map_err(|e| db.corruption(CF_META, e))?;
            Ok(Some(v))
        }
    }
}

fn encode_opt_log_id(id: &Option<LogId<NodeId>>) -> Result<Vec<u8>, Error> {
    let mut w = Writer::with_capacity(32);
    w.u8(LOG_ID_ROW_VERSION);
    types::encode_opt_log_id(&mut w, id);
    Ok(w.finish()?)
}

impl LogStore {
    pub fn open(db: Arc<Db>) -> Result<Self, Error> {
        let last_purged = read_log_id(&db, META_PURGED)?;
        let cf = db.cf(CF_LOG)?;
        let last_log = match db.db.iterator_cf(cf, IteratorMode::End).next() {
            None => last_purged,
            Some(item) => {
                let (k, v) = item.map_err(|e| db.engine_err(e))?;
                let plain = db
                    .cipher
                    .open(&location(CF_LOG, &k), &v)
                    .map_err(|e| db.corruption(CF_LOG, format!("last entry: {e}")))?;
                let entry = types::decode_entry(&plain).map_err(|e| db.corruption(CF_LOG, e))?;
                Some(entry.log_id)
            }
        };
        Ok(LogStore {
            db,
            last_purged,
            last_log,
        })
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        Ok(LogState {
            last_purged_log_id: self.last_purged,
            last_log_id: self.last_log,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader {
            db: self.db.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SErr> {
        let mut w = Writer::with_capacity(24);
        w.u8(VOTE_ROW_VERSION);
        types::encode_vote(&mut w, vote);
        let _gate = self.db.log_gate();
        let mut batch = WriteBatch::default();
        w.finish()
            .map_err(Error::from)
            .and_then(|vote| self.db.put_sealed(&mut batch, CF_META, META_VOTE, &vote))
            .and_then(|()| self.db.write(batch, true))
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SErr> {
        read_vote_row(&self.db).map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SErr> {
        let _gate = self.db.log_gate();
        let mut batch = WriteBatch::default();
        encode_opt_log_id(&committed)
            .and_then(|row| {
                self.db
                    .put_sealed(&mut batch, CF_META, META_COMMITTED, &row)
            })
            .and_then(|()| self.db.write(batch, false))
            .map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SErr> {
        read_log_id(&self.db, META_COMMITTED).map_err(read_err)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let gate = self.db.log_gate();
        let mut batch = WriteBatch::default();
        let mut last = None;
        for entry in entries {
            let key = index_key(entry.log_id.index);
            self.db
                .put_sealed(
                    &mut batch,
                    CF_LOG,
                    &key,
                    &types::encode_entry(&entry).map_err(write_err)?,
                )
                .map_err(write_err)?;
            last = Some(entry.log_id);
        }
        let result = self.db.write(batch, true);
        drop(gate);
        if result.is_ok() && last.is_some() {
            self.last_log = last;
        }
        callback.log_io_completed(
            result
                .as_ref()
                .map_err(|e| std::io::Error::other(e.to_string()))
                .map(|_| ()),
        );
        result.map_err(write_err)
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        let cf = self.db.cf(CF_LOG).map_err(write_err)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf, index_key(log_id.index), index_key(u64::MAX));
        batch.delete_cf(cf, index_key(u64::MAX));
        // Not synced on its own: the next synced append or vote makes it
        // durable, and until then nothing after it has been acknowledged.
        {
            let _gate = self.db.log_gate();
            self.db.write(batch, false).map_err(write_err)?;
        }
        self.last_log = if log_id.index == 0 {
            self.last_purged
        } else {
            let reader = LogReader {
                db: self.db.clone(),
            };
            match reader
                .read_range(log_id.index - 1, Bound::Included(log_id.index - 1))
                .map_err(read_err)?
                .pop()
            {
                Some(e) => Some(e.log_id),
                None => self.last_purged,
            }
        };
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        let cf = self.db.cf(CF_LOG).map_err(write_err)?;
        let gate = self.db.log_gate();
        let mut batch = WriteBatch::default();
        encode_opt_log_id(&Some(log_id))
            .and_then(|row| self.db.put_sealed(&mut batch, CF_META, META_PURGED, &row))
            .map_err(write_err)?;
        batch.delete_range_cf(cf, index_key(0), index_key(log_id.index.saturating_add(1)));
        self.db.write(batch, true).map_err(write_err)?;
        drop(gate);
        self.last_purged = Some(log_id);
        if self.last_log.is_none_or(|l| l.index < log_id.index) {
            self.last_log = Some(log_id);
        }
        Ok(())
    }
}

/// What [`force_sole_member`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forced {
    /// The log now ends with a membership of this member alone, in `term`;
    /// `dropped` were members (voters or learners) before.
    Forced {
        term: u64,
        dropped: BTreeSet<NodeId>,
    },
    /// This member already was the only voter: nothing was written.
    AlreadyAlone,
}

/// Recovery from a lone survivor: appends to the log of `db` a membership
/// entry in which `node` (at `addr`) is the only voter, under a term above
/// any in its vote or log, and votes for itself in that term, in one
/// synced write. Raft, started afterwards, takes the newest membership in
/// the log as the cluster's: `node` elects itself and commits every entry
/// its log holds. `applied` is the membership of the applied state, for a
/// log that holds no membership entry after it.
pub fn force_sole_member(
    db: &Arc<Db>,
    applied: &StoredMembership<NodeId, BasicNode>,
    node: NodeId,
    addr: &str,
) -> Result<Forced, Error> {
    let reader = LogReader { db: db.clone() };
    let last_purged = read_log_id(db, META_PURGED)?;
    let cf = db.cf(CF_LOG)?;
    // The newest membership in the log (newest first), and the last entry.
    let mut last_log = None;
    let mut newest: Option<Membership<NodeId, BasicNode>> = None;
    for item in db.db.iterator_cf(cf, IteratorMode::End) {
        let (k, _) = item.map_err(|e| db.engine_err(e))?;
        let index = u64::from_be_bytes(
            k.as_ref()
                .try_into()
                .map_err(|_| db.corruption(CF_LOG, "log key is not 8 bytes"))?,
        );
        let Some(entry) = reader.read_range(index, Bound::Included(index))?.pop() else {
            continue;
        };
        if last_log.is_none() {
            last_log = Some(entry.log_id);
        }
        if let EntryPayload::Membership(m) = entry.payload {
            newest = Some(m);
            break;
        }
    }
    let last_log = last_log.or(last_purged);
    let Some(last_log) = last_log else {
        return Err(Error::InvalidArgument(
            "this member's log is empty: there is no cluster to recover".into(),
        ));
    };
    let current = newest.unwrap_or_else(|| applied.membership().clone());
    let members: BTreeSet<NodeId> = current.nodes().map(|(id, _)| *id).collect();
    let voters: BTreeSet<NodeId> = current.voter_ids().collect();
    if !members.contains(&node) {
        return Err(Error::InvalidArgument(format!(
            "node {node} is not a member of the cluster this log holds: it cannot be recovered as its only member"
        )));
    }
    if voters == BTreeSet::from([node]) && members.len() == 1 {
        return Ok(Forced::AlreadyAlone);
    }
    let vote = read_vote_row(db)?.unwrap_or_default();
    let term = vote
        .leader_id()
        .get_term()
        .max(last_log.leader_id.term)
        .checked_add(1)
        .ok_or_else(|| Error::InvalidArgument("the Raft term would overflow".into()))?;
    let sole = Membership::new(
        vec![BTreeSet::from([node])],
        BTreeMap::from([(node, BasicNode::new(addr))]),
    );
    let entry = Entry::<TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(term, node), last_log.index + 1),
        payload: EntryPayload::Membership(sole),
    };
    let mut batch = WriteBatch::default();
    db.put_sealed(
        &mut batch,
        CF_LOG,
        &index_key(entry.log_id.index),
        &types::encode_entry(&entry)?,
    )?;
    let mut w = Writer::with_capacity(24);
    w.u8(VOTE_ROW_VERSION);
    types::encode_vote(&mut w, &Vote::new(term, node));
    db.put_sealed(&mut batch, CF_META, META_VOTE, &w.finish()?)?;
    db.write(batch, true)?;
    let dropped = members.into_iter().filter(|id| *id != node).collect();
    Ok(Forced::Forced { term, dropped })
}

/// A restored directory's Raft state: nothing in the log, everything up to
/// `last` (the restored snapshot's log id) purged and committed, and a
/// vote for `node` in `last`'s term, so that it starts as
/// an initialised member of the snapshot's membership (one synced write).
pub fn write_restored_state(db: &Db, last: LogId<NodeId>, node: NodeId) -> Result<(), Error> {
    let mut batch = WriteBatch::default();
    let row = encode_opt_log_id(&Some(last))?;
    db.put_sealed(&mut batch, CF_META, META_PURGED, &row)?;
    db.put_sealed(&mut batch, CF_META, META_COMMITTED, &row)?;
    let mut w = Writer::with_capacity(24);
    w.u8(VOTE_ROW_VERSION);
    types::encode_vote(&mut w, &Vote::new(last.leader_id.term, node));
    db.put_sealed(&mut batch, CF_META, META_VOTE, &w.finish()?)?;
    db.write(batch, true)
}
