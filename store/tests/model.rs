//! Model test: random operations against a single-node `Store` and against a
//! `BTreeMap`; after every operation the two must agree on values, metadata,
//! listing order and the revision, across close-and-reopen of the store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{ensure, Context};
use coffer_store::{
    Check, Compare, Config, Consistency, KeyMeta, KeyValue, Op, OpResult, Store, Txn, Value,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Keys that share prefixes, so that lists and collisions are frequent.
const KEYS: [&str; 6] = ["a", "ab", "abc", "b", "ba", "c"];
const PREFIXES: [&str; 6] = ["", "a", "ab", "b", "c", "d"];

fn value_bytes(i: usize) -> Vec<u8> {
    match i {
        0 => Vec::new(),
        1 => b"v1".to_vec(),
        2 => b"v2".to_vec(),
        _ => vec![b'L'; 300],
    }
}

/// A compare as generated; revision compares are resolved against the model
/// when the transaction runs, so that they hold often enough to matter.
#[derive(Debug, Clone)]
enum Cmp {
    Value(usize, usize),
    /// The key's current mod revision plus `off` (0: holds, 1: does not).
    ModRevCurrent(usize, u64),
    ModRevLiteral(usize, u64),
    Absent(usize),
    Exists(usize),
    Version(usize, u64),
}

#[derive(Debug, Clone)]
enum TOp {
    Put(usize, usize),
    Delete(usize),
    Get(usize),
}

#[derive(Debug, Clone)]
enum Action {
    Put(usize, usize),
    Delete(usize),
    Txn {
        compares: Vec<Cmp>,
        success: Vec<TOp>,
        failure: Vec<TOp>,
    },
    Get(usize),
    List(usize, bool),
    Reopen,
}

fn key_idx() -> impl Strategy<Value = usize> {
    0..KEYS.len()
}

fn val_idx() -> impl Strategy<Value = usize> {
    0usize..4
}

fn cmp() -> impl Strategy<Value = Cmp> {
    prop_oneof![
        (key_idx(), val_idx()).prop_map(|(k, v)| Cmp::Value(k, v)),
        (key_idx(), 0u64..2).prop_map(|(k, o)| Cmp::ModRevCurrent(k, o)),
        (key_idx(), 0u64..6).prop_map(|(k, r)| Cmp::ModRevLiteral(k, r)),
        key_idx().prop_map(Cmp::Absent),
        key_idx().prop_map(Cmp::Exists),
        (key_idx(), 0u64..3).prop_map(|(k, v)| Cmp::Version(k, v)),
    ]
}

fn top() -> impl Strategy<Value = TOp> {
    prop_oneof![
        3 => (key_idx(), val_idx()).prop_map(|(k, v)| TOp::Put(k, v)),
        2 => key_idx().prop_map(TOp::Delete),
        2 => key_idx().prop_map(TOp::Get),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => (key_idx(), val_idx()).prop_map(|(k, v)| Action::Put(k, v)),
        3 => key_idx().prop_map(Action::Delete),
        5 => (
            proptest::collection::vec(cmp(), 0..3),
            proptest::collection::vec(top(), 0..4),
            proptest::collection::vec(top(), 0..4),
        )
            .prop_map(|(compares, success, failure)| Action::Txn {
                compares,
                success,
                failure,
            }),
        3 => key_idx().prop_map(Action::Get),
        2 => (0..PREFIXES.len(), any::<bool>()).prop_map(|(p, s)| Action::List(p, s)),
        1 => Just(Action::Reopen),
    ]
}

fn key(i: usize) -> Vec<u8> {
    KEYS[i].as_bytes().to_vec()
}

/// The reference: live keys with values and metadata, and the revision.
#[derive(Debug, Default, Clone)]
struct Model {
    keys: BTreeMap<Vec<u8>, (Vec<u8>, KeyMeta)>,
    revision: u64,
}

impl Model {
    fn kv(&self, k: &[u8]) -> Option<KeyValue> {
        self.keys.get(k).map(|(v, meta)| KeyValue {
            key: k.to_vec(),
            value: coffer_store::Value(v.clone()),
            meta: *meta,
        })
    }

    fn put_at(&mut self, k: Vec<u8>, v: Vec<u8>, revision: u64) {
        let meta = match self.keys.get(&k) {
            Some((_, old)) => KeyMeta {
                create_revision: old.create_revision,
                mod_revision: revision,
                version: old.version + 1,
            },
            None => KeyMeta {
                create_revision: revision,
                mod_revision: revision,
                version: 1,
            },
        };
        self.keys.insert(k, (v, meta));
    }

    fn list(&self, prefix: &[u8]) -> Vec<KeyValue> {
        self.keys
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, (v, meta))| KeyValue {
                key: k.clone(),
                value: coffer_store::Value(v.clone()),
                meta: *meta,
            })
            .collect()
    }

    fn resolve(&self, c: &Cmp) -> Compare {
        let (k, check) = match c {
            Cmp::Value(k, v) => (*k, Check::ValueEquals(Value(value_bytes(*v)))),
            Cmp::ModRevCurrent(k, off) => {
                let cur = self.keys.get(&key(*k)).map_or(0, |(_, m)| m.mod_revision);
                (*k, Check::ModRevisionEquals(cur + off))
            }
            Cmp::ModRevLiteral(k, r) => (*k, Check::ModRevisionEquals(*r)),
            Cmp::Absent(k) => (*k, Check::Absent),
            Cmp::Exists(k) => (*k, Check::Exists),
            Cmp::Version(k, v) => (*k, Check::VersionEquals(*v)),
        };
        Compare { key: key(k), check }
    }

    fn holds(&self, c: &Compare) -> bool {
        let cur = self.keys.get(&c.key);
        match &c.check {
            Check::Absent => cur.is_none(),
            Check::Exists => cur.is_some(),
            Check::ValueEquals(v) => cur.is_some_and(|(val, _)| *val == v.0),
            Check::ModRevisionEquals(r) => cur.map_or(0, |(_, m)| m.mod_revision) == *r,
            Check::VersionEquals(n) => cur.map_or(0, |(_, m)| m.version) == *n,
        }
    }

    /// Runs a transaction; returns (succeeded, revision, results).
    fn txn(&mut self, t: &Txn) -> (bool, u64, Vec<OpResult>) {
        let succeeded = t.compares.iter().all(|c| self.holds(c));
        let ops = if succeeded { &t.success } else { &t.failure };
        let next = self.revision + 1;
        let mut changed = false;
        let mut results = Vec::new();
        for op in ops {
            match op {
                Op::Put { key, value } => {
                    self.put_at(key.clone(), value.0.clone(), next);
                    changed = true;
                    results.push(OpResult::Put);
                }
                Op::Delete { key } => {
                    let deleted = self.keys.remove(key).is_some();
                    changed |= deleted;
                    results.push(OpResult::Delete { deleted });
                }
                Op::Get { key } => results.push(OpResult::Get(self.kv(key))),
            }
        }
        if changed {
            self.revision = next;
        }
        (succeeded, self.revision, results)
    }
}

fn to_op(o: &TOp) -> Op {
    match o {
        TOp::Put(k, v) => Op::Put {
            key: key(*k),
            value: Value(value_bytes(*v)),
        },
        TOp::Delete(k) => Op::Delete { key: key(*k) },
        TOp::Get(k) => Op::Get { key: key(*k) },
    }
}

async fn check_all(store: &Store, model: &Model) -> anyhow::Result<()> {
    ensure!(
        store.revision()? == model.revision,
        "revision: store {} model {}",
        store.revision()?,
        model.revision
    );
    let all = store.list(b"", Consistency::Linearizable).await?;
    ensure!(
        all == model.list(b""),
        "full listing differs:\n store {all:?}\n model {:?}",
        model.list(b"")
    );
    for kv in &all {
        ensure!(
            model.keys.get(&kv.key).map(|(v, _)| v.as_slice()) == Some(kv.value.as_slice()),
            "value of {:?} differs",
            String::from_utf8_lossy(&kv.key)
        );
    }
    Ok(())
}

async fn run(dir: &Path, actions: &[Action]) -> anyhow::Result<()> {
    let mut store = Store::open(Config::new(dir)).await?;
    let mut model = Model::default();
    for (i, action) in actions.iter().enumerate() {
        let ctx = || format!("action #{i}: {action:?}");
        match action {
            Action::Put(k, v) => {
                let rev = store
                    .put(&key(*k), &value_bytes(*v))
                    .await
                    .with_context(ctx)?;
                model.revision += 1;
                model.put_at(key(*k), value_bytes(*v), model.revision);
                ensure!(
                    rev == model.revision,
                    "{}: put returned revision {rev}, expected {}",
                    ctx(),
                    model.revision
                );
            }
            Action::Delete(k) => {
                let deleted = store.delete(&key(*k)).await.with_context(ctx)?;
                let expected = model.keys.remove(&key(*k)).is_some();
                if expected {
                    model.revision += 1;
                }
                ensure!(
                    deleted == expected,
                    "{}: deleted {deleted}, expected {expected}",
                    ctx()
                );
            }
            Action::Txn {
                compares,
                success,
                failure,
            } => {
                let txn = Txn {
                    compares: compares.iter().map(|c| model.resolve(c)).collect(),
                    success: success.iter().map(to_op).collect(),
                    failure: failure.iter().map(to_op).collect(),
                };
                let got = store.txn(txn.clone()).await.with_context(ctx)?;
                let (succeeded, revision, results) = model.txn(&txn);
                ensure!(
                    got.succeeded == succeeded,
                    "{}: txn {txn:?} succeeded {} expected {succeeded}",
                    ctx(),
                    got.succeeded
                );
                ensure!(
                    got.revision == revision,
                    "{}: txn revision {} expected {revision}",
                    ctx(),
                    got.revision
                );
                ensure!(
                    got.results == results,
                    "{}: txn results\n store {:?}\n model {results:?}",
                    ctx(),
                    got.results
                );
            }
            Action::Get(k) => {
                let got = store
                    .get_kv(&key(*k), Consistency::Linearizable)
                    .await
                    .with_context(ctx)?;
                ensure!(
                    got == model.kv(&key(*k)),
                    "{}: get {got:?} expected {:?}",
                    ctx(),
                    model.kv(&key(*k))
                );
                let value = store.get(&key(*k)).await.with_context(ctx)?;
                ensure!(
                    value == model.kv(&key(*k)).map(|kv| kv.value),
                    "{}: get (value only) differs",
                    ctx()
                );
            }
            Action::List(p, stale) => {
                let consistency = if *stale {
                    Consistency::Stale
                } else {
                    Consistency::Linearizable
                };
                let got = store
                    .list(PREFIXES[*p].as_bytes(), consistency)
                    .await
                    .with_context(ctx)?;
                let want = model.list(PREFIXES[*p].as_bytes());
                ensure!(
                    got == want,
                    "{}: list\n store {got:?}\n model {want:?}",
                    ctx()
                );
            }
            Action::Reopen => {
                store.shutdown().await.with_context(ctx)?;
                store = Store::open(Config::new(dir)).await.with_context(ctx)?;
            }
        }
        check_all(&store, &model).await.with_context(ctx)?;
    }
    // Whatever the sequence, the final state survives a restart.
    store.shutdown().await?;
    let store = Store::open(Config::new(dir)).await?;
    check_all(&store, &model)
        .await
        .context("after the final reopen")?;
    store.shutdown().await?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        max_shrink_iters: 64,
        ..ProptestConfig::default()
    })]

    #[test]
    fn store_matches_btreemap_model(actions in proptest::collection::vec(action(), 1..40)) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        rt.block_on(run(dir.path(), &actions))
            .map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
    }
}
