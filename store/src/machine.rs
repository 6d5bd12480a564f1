//! The key/value state machine's decisions, as plain functions over an
//! in-memory index: what a command changes, at which revision, and what it
//! answers. The engine turns the returned [`Mutation`]s into sealed RocksDB
//! writes; the property tests run this against a `BTreeMap` model.
//!
//! Revisions are cluster-wide: every command that changes at least one key
//! takes the next revision, shared by all of its changes (a transaction is
//! one revision). Commands that change nothing leave it where it is.

use std::collections::{BTreeMap, BTreeSet};

use crate::command::{
    Check, KeyMeta, KeyValue, Op, OpResult, Rejection, Request, Response, MAX_DELETE_RANGE_KEYS,
};

/// What the index keeps for a live key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub meta: KeyMeta,
    pub value_len: u64,
}

/// A lease as every member keeps it. When it runs out is not part of the
/// replicated state (clocks differ): the engine counts it down from each
/// grant and keep-alive it applies, and only the leader acts on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lease {
    pub ttl_secs: u64,
    /// The live keys attached to it.
    pub keys: BTreeSet<Vec<u8>>,
}

/// The plaintext in-memory index over the live keys (names are hashed on
/// disk, so ordering and prefix scans need this).
#[derive(Debug, Clone, Default)]
pub struct Index {
    pub keys: BTreeMap<Vec<u8>, IndexEntry>,
    /// The leases, by id.
    pub leases: BTreeMap<u64, Lease>,
    /// The revision of the last change.
    pub revision: u64,
    /// Sum of key and value lengths over live keys: what the quota limits.
    pub used_bytes: u64,
}

/// A change to persist. `superseded` is the revision of the key's version
/// the change replaces (0: the key was absent), whose row the engine keeps
/// for reads at past revisions until the history is compacted past this
/// change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    Put {
        key: Vec<u8>,
        value: crate::command::Value,
        meta: KeyMeta,
        superseded: u64,
    },
    Delete {
        key: Vec<u8>,
        superseded: u64,
    },
    PutLease {
        id: u64,
        ttl_secs: u64,
    },
    DeleteLease {
        id: u64,
    },
}

/// Reads the current value of a live key, whose last change was at
/// `revision` (from disk, or from changes of the same batch not yet
/// written).
pub trait Values {
    type Error;
    fn value(
        &self,
        key: &[u8],
        revision: u64,
    ) -> Result<Option<crate::command::Value>, Self::Error>;
}

fn entry_bytes(key: &[u8], value_len: u64) -> u64 {
    (key.len() as u64).saturating_add(value_len)
}

/// Records that `key` is attached to `lease`; false if no such lease.
fn attach(leases: &mut BTreeMap<u64, Lease>, key: &[u8], lease: u64) -> bool {
    if lease == 0 {
        return true;
    }
    match leases.get_mut(&lease) {
        Some(l) => {
            l.keys.insert(key.to_vec());
            true
        }
        None => false,
    }
}

fn detach(leases: &mut BTreeMap<u64, Lease>, key: &[u8], lease: u64) {
    if let Some(l) = leases.get_mut(&lease) {
        l.keys.remove(key);
    }
}

impl Index {
    pub fn get(&self, key: &[u8]) -> Option<&IndexEntry> {
        self.keys.get(key)
    }

    /// Adds or replaces a live key, keeping `used_bytes` and the leases'
    /// key sets right; revisions are not touched. Every change to the
    /// index's keys but a delete goes through here: loading from disk or a
    /// snapshot, puts, and undoing a rejected transaction. Returns false if
    /// the key names a lease the index does not hold (the key is added all
    /// the same; a loader reports the damage, and a put checks first).
    pub fn insert_live(&mut self, key: Vec<u8>, meta: KeyMeta, value_len: u64) -> bool {
        let bytes = entry_bytes(&key, value_len);
        let entry = IndexEntry { meta, value_len };
        let (known, old_bytes) = match self.keys.entry(key) {
            std::collections::btree_map::Entry::Occupied(mut o) => {
                let old = o.insert(entry);
                let old_bytes = entry_bytes(o.key(), old.value_len);
                let known = if old.meta.lease == meta.lease {
                    true
                } else {
                    detach(&mut self.leases, o.key(), old.meta.lease);
                    attach(&mut self.leases, o.key(), meta.lease)
                };
                (known, old_bytes)
            }
            std::collections::btree_map::Entry::Vacant(v) => {
                let known = attach(&mut self.leases, v.key(), meta.lease);
                v.insert(entry);
                (known, 0)
            }
        };
        self.used_bytes = self.used_bytes.saturating_sub(old_bytes).saturating_add(bytes);
        known
    }

    /// Adds a lease as stored (on disk or in a snapshot), without keys.
    pub fn insert_lease(&mut self, id: u64, ttl_secs: u64) {
        self.leases.entry(id).or_default().ttl_secs = ttl_secs;
    }

    /// Puts a key of `value_len` bytes attached to `lease` (which the
    /// caller checked exists).
    fn put(&mut self, key: &[u8], value_len: u64, revision: u64, lease: u64) -> KeyMeta {
        let meta = match self.keys.get(key) {
            Some(old) => KeyMeta {
                create_revision: old.meta.create_revision,
                mod_revision: revision,
                version: old.meta.version.saturating_add(1),
                lease,
            },
            None => KeyMeta {
                create_revision: revision,
                mod_revision: revision,
                version: 1,
                lease,
            },
        };
        self.insert_live(key.to_vec(), meta, value_len);
        meta
    }

    /// Moves to the next revision if a request changed something; returns
    /// the revision the request ran at.
    fn advance(&mut self, changed: bool) -> u64 {
        if changed {
            self.revision = self.revision.saturating_add(1);
        }
        self.revision
    }

    /// Deletes a key; returns the revision of the version it removed.
    fn delete(&mut self, key: &[u8]) -> Option<u64> {
        let old = self.keys.remove(key)?;
        self.used_bytes = self
            .used_bytes
            .saturating_sub(entry_bytes(key, old.value_len));
        detach(&mut self.leases, key, old.meta.lease);
        Some(old.meta.mod_revision)
    }

    /// The revision of a key's current version (0: absent).
    fn mod_revision(&self, key: &[u8]) -> u64 {
        self.keys.get(key).map_or(0, |e| e.meta.mod_revision)
    }

    /// Restores `key` to `prior` (undo of a rejected transaction).
    fn restore(&mut self, key: Vec<u8>, prior: Option<IndexEntry>) {
        match prior {
            Some(p) => {
                self.insert_live(key, p.meta, p.value_len);
            }
            None => {
                self.delete(&key);
            }
        }
    }

    fn lacks_lease(&self, lease: u64) -> bool {
        lease != 0 && !self.leases.contains_key(&lease)
    }
}

/// Applies one request to `index`, returning the answer and the changes to
/// persist. On `Err` from `values` the index may be partly changed; the
/// caller treats that as fatal for the state machine.
pub fn apply<V: Values>(
    index: &mut Index,
    values: &V,
    quota: u64,
    request: Request,
) -> Result<(Response, Vec<Mutation>), V::Error> {
    let next = index.revision.saturating_add(1);
    match request {
        // The hot path takes the value over instead of copying it.
        Request::Put {
            key,
            value,
            prev_kv,
            lease,
        } => {
            if index.lacks_lease(lease) {
                return Ok((lease_not_found(lease), vec![]));
            }
            let len = value.0.len() as u64;
            let old = index
                .get(&key)
                .map_or(0, |e| entry_bytes(&key, e.value_len));
            let new = entry_bytes(&key, len);
            if new > old && index.used_bytes.saturating_sub(old).saturating_add(new) > quota {
                return Ok((
                    Response::Rejected(over_quota(index, new - old, quota)),
                    vec![],
                ));
            }
            let prev_kv = previous(index, values, &key, prev_kv)?;
            let superseded = index.mod_revision(&key);
            let meta = index.put(&key, len, next, lease);
            index.revision = next;
            Ok((
                Response::Put {
                    revision: next,
                    prev_kv,
                },
                vec![Mutation::Put {
                    key,
                    value,
                    meta,
                    superseded,
                }],
            ))
        }
        // The others read their fields in place.
        Request::Delete {
            ref key,
            ref prev_kv,
        } => {
            let prev_kv = previous(index, values, key, *prev_kv)?;
            if let Some(superseded) = index.delete(key) {
                index.revision = next;
                Ok((
                    Response::Delete {
                        revision: next,
                        deleted: true,
                        prev_kv,
                    },
                    vec![Mutation::Delete {
                        key: key.clone(),
                        superseded,
                    }],
                ))
            } else {
                Ok((
                    Response::Delete {
                        revision: index.revision,
                        deleted: false,
                        prev_kv: None,
                    },
                    vec![],
                ))
            }
        }
        Request::DeleteRange {
            ref start,
            ref end,
            ref prev_kv,
        } => {
            let keys: Vec<Vec<u8>> = index
                .keys
                .range(start.clone()..)
                .map(|(k, _)| k)
                .take_while(|k| end.as_ref().is_none_or(|end| k.as_slice() < end.as_slice()))
                .take(MAX_DELETE_RANGE_KEYS + 1)
                .cloned()
                .collect();
            if keys.len() > MAX_DELETE_RANGE_KEYS {
                let total = index
                    .keys
                    .range(start.clone()..)
                    .take_while(|(k, _)| {
                        end.as_ref().is_none_or(|end| k.as_slice() < end.as_slice())
                    })
                    .count();
                return Ok((
                    Response::Rejected(Rejection::TooManyKeys {
                        keys: total as u64,
                        limit: MAX_DELETE_RANGE_KEYS as u64,
                    }),
                    vec![],
                ));
            }
            let mut prev_kvs = Vec::new();
            let mut mutations = Vec::with_capacity(keys.len());
            for key in keys {
                if let Some(kv) = previous(index, values, &key, *prev_kv)? {
                    prev_kvs.push(kv);
                }
                if let Some(superseded) = index.delete(&key) {
                    mutations.push(Mutation::Delete { key, superseded });
                }
            }
            let revision = index.advance(!mutations.is_empty());
            Ok((
                Response::DeleteRange {
                    revision,
                    deleted: mutations.len() as u64,
                    prev_kvs,
                },
                mutations,
            ))
        }
        Request::Compact { ref revision } => {
            if *revision > index.revision {
                return Ok((
                    Response::Rejected(Rejection::FutureRevision {
                        requested: *revision,
                        current: index.revision,
                    }),
                    vec![],
                ));
            }
            Ok((
                Response::Compact {
                    revision: index.revision,
                    compacted: *revision,
                },
                vec![],
            ))
        }
        Request::LeaseGrant {
            ref id,
            ref ttl_secs,
        } => {
            if index.leases.contains_key(id) {
                return Ok((
                    Response::Rejected(Rejection::LeaseExists { id: *id }),
                    vec![],
                ));
            }
            index.insert_lease(*id, *ttl_secs);
            Ok((
                Response::LeaseGrant {
                    id: *id,
                    ttl_secs: *ttl_secs,
                },
                vec![Mutation::PutLease {
                    id: *id,
                    ttl_secs: *ttl_secs,
                }],
            ))
        }
        Request::LeaseRevoke { ref id } => {
            let Some(lease) = index.leases.remove(id) else {
                return Ok((lease_not_found(*id), vec![]));
            };
            let mut mutations = Vec::with_capacity(lease.keys.len() + 1);
            for key in lease.keys {
                if let Some(superseded) = index.delete(&key) {
                    mutations.push(Mutation::Delete { key, superseded });
                }
            }
            let deleted = mutations.len() as u64;
            let revision = index.advance(deleted > 0);
            mutations.push(Mutation::DeleteLease { id: *id });
            Ok((Response::LeaseRevoke { revision, deleted }, mutations))
        }
        Request::LeaseKeepAlive { ref id } => match index.leases.get(id) {
            None => Ok((lease_not_found(*id), vec![])),
            Some(lease) => Ok((
                Response::LeaseKeepAlive {
                    id: *id,
                    ttl_secs: lease.ttl_secs,
                },
                vec![],
            )),
        },
        Request::Txn(ref txn) => {
            let mut succeeded = true;
            for c in &txn.compares {
                if !holds(index, values, &c.key, &c.check)? {
                    succeeded = false;
                    break;
                }
            }
            let ops = if succeeded {
                &txn.success
            } else {
                &txn.failure
            };
            for op in ops {
                if let Op::Put { lease, .. } = op {
                    if index.lacks_lease(*lease) {
                        return Ok((lease_not_found(*lease), vec![]));
                    }
                }
            }
            let used_before = index.used_bytes;
            let mut undo: Vec<(Vec<u8>, Option<IndexEntry>)> = Vec::new();
            // Values written earlier in this transaction, visible to its later gets.
            let mut written: BTreeMap<&[u8], Option<&[u8]>> = BTreeMap::new();
            let mut mutations = Vec::new();
            let mut results = Vec::with_capacity(ops.len());
            for op in ops {
                match op {
                    Op::Put { key, value, lease } => {
                        undo.push((key.clone(), index.get(key).copied()));
                        let superseded = index.mod_revision(key);
                        let meta = index.put(key, value.0.len() as u64, next, *lease);
                        written.insert(key, Some(&value.0));
                        mutations.push(Mutation::Put {
                            key: key.clone(),
                            value: value.clone(),
                            meta,
                            superseded,
                        });
                        results.push(OpResult::Put);
                    }
                    Op::Delete { key } => {
                        undo.push((key.clone(), index.get(key).copied()));
                        let deleted = index.delete(key);
                        if let Some(superseded) = deleted {
                            written.insert(key, None);
                            mutations.push(Mutation::Delete {
                                key: key.clone(),
                                superseded,
                            });
                        }
                        results.push(OpResult::Delete {
                            deleted: deleted.is_some(),
                        });
                    }
                    Op::Get { key } => {
                        let kv = match index.get(key) {
                            None => None,
                            Some(e) => {
                                let value = match written.get(key.as_slice()) {
                                    Some(Some(v)) => Some(crate::command::Value(v.to_vec())),
                                    Some(None) => None,
                                    None => values.value(key, e.meta.mod_revision)?,
                                };
                                value.map(|value| KeyValue {
                                    key: key.clone(),
                                    value,
                                    meta: e.meta,
                                })
                            }
                        };
                        results.push(OpResult::Get(kv));
                    }
                }
            }
            if index.used_bytes > used_before && index.used_bytes > quota {
                let requested = index.used_bytes - used_before;
                for (key, prior) in undo.into_iter().rev() {
                    index.restore(key, prior);
                }
                return Ok((
                    Response::Rejected(over_quota(index, requested, quota)),
                    vec![],
                ));
            }
            let revision = index.advance(!mutations.is_empty());
            Ok((
                Response::Txn {
                    revision,
                    succeeded,
                    results,
                },
                mutations,
            ))
        }
    }
}

fn lease_not_found(id: u64) -> Response {
    Response::Rejected(Rejection::LeaseNotFound { id })
}

fn over_quota(index: &Index, requested_bytes: u64, quota_bytes: u64) -> Rejection {
    Rejection::QuotaExceeded {
        used_bytes: index.used_bytes,
        requested_bytes,
        quota_bytes,
    }
}

/// The key as it is now, when `wanted` (for `prev_kv`).
fn previous<V: Values>(
    index: &Index,
    values: &V,
    key: &[u8],
    wanted: bool,
) -> Result<Option<KeyValue>, V::Error> {
    let Some(entry) = index.get(key).filter(|_| wanted) else {
        return Ok(None);
    };
    Ok(values
        .value(key, entry.meta.mod_revision)?
        .map(|value| KeyValue {
            key: key.to_vec(),
            value,
            meta: entry.meta,
        }))
}

fn holds<V: Values>(
    index: &Index,
    values: &V,
    key: &[u8],
    check: &Check,
) -> Result<bool, V::Error> {
    let entry = index.get(key);
    Ok(match check {
        Check::Absent => entry.is_none(),
        Check::Exists => entry.is_some(),
        Check::Version(op, n) => op.holds(&entry.map_or(0, |e| e.meta.version), n),
        Check::CreateRevision(op, rev) => {
            op.holds(&entry.map_or(0, |e| e.meta.create_revision), rev)
        }
        Check::ModRevision(op, rev) => op.holds(&entry.map_or(0, |e| e.meta.mod_revision), rev),
        // etcd's rule: a value compare on an absent key fails.
        Check::Value(op, want) => match entry {
            None => false,
            Some(e) => match values.value(key, e.meta.mod_revision)? {
                None => false,
                Some(current) => op.holds(current.as_slice(), want.as_slice()),
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{CmpOp, Compare, Txn, Value};
    use std::convert::Infallible;

    /// Values kept beside the index, as the engine keeps them on disk.
    #[derive(Default)]
    struct Model {
        index: Index,
        values: BTreeMap<Vec<u8>, Value>,
    }

    struct View<'a>(&'a BTreeMap<Vec<u8>, Value>);
    impl Values for View<'_> {
        type Error = Infallible;
        fn value(&self, key: &[u8], _revision: u64) -> Result<Option<Value>, Infallible> {
            Ok(self.0.get(key).cloned())
        }
    }

    impl Model {
        fn run(&mut self, request: Request, quota_bytes: u64) -> Response {
            let Ok((resp, muts)) =
                apply(&mut self.index, &View(&self.values), quota_bytes, request);
            for m in muts {
                match m {
                    Mutation::Put { key, value, .. } => {
                        self.values.insert(key, value);
                    }
                    Mutation::Delete { key, .. } => {
                        self.values.remove(&key);
                    }
                    Mutation::PutLease { .. } | Mutation::DeleteLease { .. } => {}
                }
            }
            resp
        }
    }

    fn put(k: &str, v: &str) -> Request {
        Request::Put {
            key: k.into(),
            value: Value(v.into()),
            prev_kv: false,
            lease: 0,
        }
    }

    #[test]
    fn revisions_versions_and_deletes() {
        let mut m = Model::default();
        assert_eq!(
            m.run(put("a", "1"), u64::MAX),
            Response::Put {
                revision: 1,
                prev_kv: None
            }
        );
        assert_eq!(
            m.run(put("a", "2"), u64::MAX),
            Response::Put {
                revision: 2,
                prev_kv: None
            }
        );
        let e = m.index.get(b"a").copied().unwrap();
        assert_eq!(
            e.meta,
            KeyMeta {
                create_revision: 1,
                mod_revision: 2,
                version: 2,
                lease: 0
            }
        );
        assert_eq!(
            m.run(
                Request::Delete {
                    key: b"zz".to_vec(),
                    prev_kv: false,
                },
                u64::MAX
            ),
            Response::Delete {
                revision: 2,
                deleted: false,
                prev_kv: None,
            }
        );
        assert_eq!(
            m.run(
                Request::Delete {
                    key: b"a".to_vec(),
                    prev_kv: false
                },
                u64::MAX
            ),
            Response::Delete {
                revision: 3,
                deleted: true,
                prev_kv: None,
            }
        );
        assert_eq!(m.index.used_bytes, 0);
    }

    #[test]
    fn compare_and_swap() {
        let mut m = Model::default();
        m.run(put("lock", "a"), u64::MAX);
        let cas = |expect: &str, new: &str| {
            Request::Txn(Txn {
                compares: vec![Compare {
                    key: b"lock".to_vec(),
                    check: Check::Value(CmpOp::Equal, Value(expect.into())),
                }],
                success: vec![
                    Op::Put {
                        key: b"lock".to_vec(),
                        value: Value(new.into()),
                        lease: 0,
                    },
                    Op::Get {
                        key: b"lock".to_vec(),
                    },
                ],
                failure: vec![Op::Get {
                    key: b"lock".to_vec(),
                }],
            })
        };
        match m.run(cas("a", "b"), u64::MAX) {
            Response::Txn {
                revision: 2,
                succeeded: true,
                results,
            } => assert!(matches!(&results[1], OpResult::Get(Some(kv)) if kv.value == b"b")),
            other => panic!("{other:?}"),
        }
        match m.run(cas("a", "c"), u64::MAX) {
            Response::Txn {
                revision: 2,
                succeeded: false,
                results,
            } => assert!(matches!(&results[0], OpResult::Get(Some(kv)) if kv.value == b"b")),
            other => panic!("{other:?}"),
        }
        let absent = Request::Txn(Txn {
            compares: vec![Compare {
                key: b"new".to_vec(),
                check: Check::ModRevision(CmpOp::Equal, 0),
            }],
            success: vec![Op::Put {
                key: b"new".to_vec(),
                value: Value(b"x".to_vec()),
                lease: 0,
            }],
            failure: vec![],
        });
        assert!(matches!(
            m.run(absent.clone(), u64::MAX),
            Response::Txn {
                succeeded: true,
                revision: 3,
                ..
            }
        ));
        assert!(matches!(
            m.run(absent, u64::MAX),
            Response::Txn {
                succeeded: false,
                revision: 3,
                ..
            }
        ));
    }

    #[test]
    fn quota_rejects_growth_and_changes_nothing() {
        let mut m = Model::default();
        assert_eq!(
            m.run(put("a", "12345"), 10),
            Response::Put {
                revision: 1,
                prev_kv: None
            }
        );
        assert!(matches!(
            m.run(put("b", "123456789"), 10),
            Response::Rejected(_)
        ));
        assert_eq!(m.index.revision, 1);
        assert_eq!(m.index.used_bytes, 6);
        // Shrinking and deleting are always allowed, even over quota.
        assert_eq!(
            m.run(put("a", "1"), 1),
            Response::Put {
                revision: 2,
                prev_kv: None
            }
        );
        let txn = Request::Txn(Txn {
            compares: vec![],
            success: vec![
                Op::Delete { key: b"a".to_vec() },
                Op::Put {
                    key: b"c".to_vec(),
                    value: Value(vec![0; 100]),
                    lease: 0,
                },
            ],
            failure: vec![],
        });
        assert!(matches!(m.run(txn, 50), Response::Rejected(_)));
        assert!(m.index.get(b"a").is_some(), "rejected txn was rolled back");
        assert_eq!(m.index.used_bytes, 2);
        assert_eq!(m.index.revision, 2);
    }

    /// A lease's key set follows every change: puts onto and off it,
    /// deletes, a transaction rolled back by the quota, and its revocation
    /// (all keys at one revision).
    #[test]
    fn lease_key_sets_follow_every_change() {
        let mut m = Model::default();
        let grant = Request::LeaseGrant { id: 7, ttl_secs: 5 };
        assert_eq!(
            m.run(grant.clone(), u64::MAX),
            Response::LeaseGrant { id: 7, ttl_secs: 5 }
        );
        assert!(matches!(
            m.run(grant, u64::MAX),
            Response::Rejected(Rejection::LeaseExists { id: 7 })
        ));
        let leased = |k: &str| Request::Put {
            key: k.into(),
            value: Value(b"v".to_vec()),
            prev_kv: false,
            lease: 7,
        };
        m.run(leased("a"), u64::MAX);
        m.run(leased("b"), u64::MAX);
        m.run(leased("c"), u64::MAX);
        m.run(put("b", "off"), u64::MAX);
        m.run(
            Request::Delete {
                key: b"c".to_vec(),
                prev_kv: false,
            },
            u64::MAX,
        );
        let keys = |m: &Model| m.index.leases[&7].keys.iter().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&m), vec![b"a".to_vec()]);
        // Rolled back by the quota: `b` stays off the lease.
        let big = Request::Txn(Txn {
            compares: vec![],
            success: vec![
                Op::Put {
                    key: b"b".to_vec(),
                    value: Value(b"v".to_vec()),
                    lease: 7,
                },
                Op::put(b"huge".to_vec(), vec![0; 100]),
            ],
            failure: vec![],
        });
        assert!(matches!(m.run(big, 50), Response::Rejected(_)));
        assert_eq!(keys(&m), vec![b"a".to_vec()]);
        assert_eq!(m.index.get(b"b").unwrap().meta.lease, 0);
        let rev = m.index.revision;
        assert_eq!(
            m.run(Request::LeaseRevoke { id: 7 }, u64::MAX),
            Response::LeaseRevoke {
                revision: rev + 1,
                deleted: 1
            }
        );
        assert!(m.index.get(b"a").is_none() && m.index.leases.is_empty());
        assert!(matches!(
            m.run(Request::LeaseKeepAlive { id: 7 }, u64::MAX),
            Response::Rejected(Rejection::LeaseNotFound { id: 7 })
        ));
        assert!(matches!(
            m.run(leased("d"), u64::MAX),
            Response::Rejected(Rejection::LeaseNotFound { id: 7 })
        ));
        assert_eq!(m.index.revision, rev + 1);
    }
}
