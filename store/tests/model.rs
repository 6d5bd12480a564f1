//! Model tests.
//!
//! - Sequential: random operations against a single-node `Store` and against
//!   a `BTreeMap`; after every operation the two must agree on values,
//!   metadata, listing order and the revision, across close-and-reopen.
//! - Concurrent: several clients at once (so the proposer packs their
//!   requests into shared log entries), and the history of calls and replies
//!   checked for linearizability against the same model.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{ensure, Context};
use coffer_store::{
    Check, CmpOp, Compare, Config, Consistency, DeleteOptions, KeyMeta, KeyValue, Op, OpResult,
    PutOptions, Range, Store, Txn, Value,
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
    Value(usize, usize, usize),
    /// The key's current mod revision plus `off` (0: holds, 1: does not).
    ModRevCurrent(usize, u64),
    ModRevLiteral(usize, usize, u64),
    CreateRevLiteral(usize, usize, u64),
    Absent(usize),
    Exists(usize),
    Version(usize, usize, u64),
}

const OPS: [CmpOp; 4] = [CmpOp::Equal, CmpOp::NotEqual, CmpOp::Less, CmpOp::Greater];

/// The model's own reading of an operator (not the store's `CmpOp::holds`).
fn relates<T: Ord + ?Sized>(op: CmpOp, current: &T, given: &T) -> bool {
    use std::cmp::Ordering::*;
    matches!(
        (op, current.cmp(given)),
        (CmpOp::Equal, Equal)
            | (CmpOp::NotEqual, Less | Greater)
            | (CmpOp::Less, Less)
            | (CmpOp::Greater, Greater)
    )
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
    /// A prefix range with a limit (0: none), keys-only or not.
    Range(usize, usize, bool),
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
        (key_idx(), 0..OPS.len(), val_idx()).prop_map(|(k, o, v)| Cmp::Value(k, o, v)),
        (key_idx(), 0u64..2).prop_map(|(k, o)| Cmp::ModRevCurrent(k, o)),
        (key_idx(), 0..OPS.len(), 0u64..6).prop_map(|(k, o, r)| Cmp::ModRevLiteral(k, o, r)),
        (key_idx(), 0..OPS.len(), 0u64..6).prop_map(|(k, o, r)| Cmp::CreateRevLiteral(k, o, r)),
        key_idx().prop_map(Cmp::Absent),
        key_idx().prop_map(Cmp::Exists),
        (key_idx(), 0..OPS.len(), 0u64..3).prop_map(|(k, o, v)| Cmp::Version(k, o, v)),
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
        2 => (0..PREFIXES.len(), 0usize..4, any::<bool>())
            .prop_map(|(p, l, k)| Action::Range(p, l, k)),
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
                lease: 0,
            },
            None => KeyMeta {
                create_revision: revision,
                mod_revision: revision,
                version: 1,
                lease: 0,
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
            Cmp::Value(k, o, v) => (*k, Check::Value(OPS[*o], Value(value_bytes(*v)))),
            Cmp::ModRevCurrent(k, off) => {
                let cur = self.keys.get(&key(*k)).map_or(0, |(_, m)| m.mod_revision);
                (*k, Check::ModRevision(CmpOp::Equal, cur + off))
            }
            Cmp::ModRevLiteral(k, o, r) => (*k, Check::ModRevision(OPS[*o], *r)),
            Cmp::CreateRevLiteral(k, o, r) => (*k, Check::CreateRevision(OPS[*o], *r)),
            Cmp::Absent(k) => (*k, Check::Absent),
            Cmp::Exists(k) => (*k, Check::Exists),
            Cmp::Version(k, o, v) => (*k, Check::Version(OPS[*o], *v)),
        };
        Compare { key: key(k), check }
    }

    fn holds(&self, c: &Compare) -> bool {
        let cur = self.keys.get(&c.key);
        match &c.check {
            Check::Absent => cur.is_none(),
            Check::Exists => cur.is_some(),
            // A value compare on an absent key fails (etcd's rule).
            Check::Value(op, v) => cur.is_some_and(|(val, _)| relates(*op, val.as_slice(), &v.0)),
            Check::ModRevision(op, r) => relates(*op, &cur.map_or(0, |(_, m)| m.mod_revision), r),
            Check::CreateRevision(op, r) => {
                relates(*op, &cur.map_or(0, |(_, m)| m.create_revision), r)
            }
            Check::Version(op, n) => relates(*op, &cur.map_or(0, |(_, m)| m.version), n),
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
                Op::Put { key, value, .. } => {
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
            lease: 0,
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

/// Every past revision reads back as the model was then: the whole range,
/// and a keys-only page of it.
async fn check_history(store: &Store, states: &BTreeMap<u64, Model>) -> anyhow::Result<()> {
    for (revision, then) in states.iter().filter(|(r, _)| **r > 0) {
        let got = store
            .range(
                Range::all().at_revision(*revision),
                Consistency::Linearizable,
            )
            .await?;
        let want = then.list(b"");
        ensure!(
            got.kvs == want && got.revision == *revision,
            "at revision {revision}:\n store {:?}\n model {want:?}",
            got.kvs
        );
        let page = store
            .range(
                Range::all().at_revision(*revision).limit(1).keys_only(),
                Consistency::Stale,
            )
            .await?;
        ensure!(
            page.count == want.len() as u64
                && page.kvs.first().map(|kv| (&kv.key, kv.meta))
                    == want.first().map(|kv| (&kv.key, kv.meta))
                && page.next == want.get(1).map(|kv| kv.key.clone()),
            "keys-only page at revision {revision}: {page:?}"
        );
    }
    Ok(())
}

async fn run(dir: &Path, actions: &[Action]) -> anyhow::Result<()> {
    let mut store = Store::open(Config::new(dir)).await?;
    let mut model = Model::default();
    // The model as it was at each revision.
    let mut states = BTreeMap::new();
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
                let deleted = store.delete(&key(*k)).await.with_context(ctx)?.deleted;
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
            Action::Range(p, limit, keys_only) => {
                let mut range = coffer_store::Range::prefix(PREFIXES[*p].as_bytes()).limit(*limit);
                range.keys_only = *keys_only;
                let got = store
                    .range(range, Consistency::Linearizable)
                    .await
                    .with_context(ctx)?;
                let all = model.list(PREFIXES[*p].as_bytes());
                let shown = if *limit == 0 {
                    all.len()
                } else {
                    all.len().min(*limit)
                };
                let mut want: Vec<KeyValue> = all[..shown].to_vec();
                if *keys_only {
                    for kv in &mut want {
                        kv.value = Value::default();
                    }
                }
                ensure!(
                    got.kvs == want,
                    "{}: range\n store {:?}\n model {want:?}",
                    ctx(),
                    got.kvs
                );
                ensure!(
                    got.count == all.len() as u64,
                    "{}: count {}",
                    ctx(),
                    got.count
                );
                ensure!(
                    got.next == all.get(shown).map(|kv| kv.key.clone()),
                    "{}: next {:?}",
                    ctx(),
                    got.next
                );
                ensure!(
                    got.revision == model.revision,
                    "{}: revision {}",
                    ctx(),
                    got.revision
                );
            }
            Action::Reopen => {
                store.shutdown().await.with_context(ctx)?;
                store = Store::open(Config::new(dir)).await.with_context(ctx)?;
            }
        }
        states.insert(model.revision, model.clone());
        check_all(&store, &model).await.with_context(ctx)?;
    }
    check_history(&store, &states)
        .await
        .context("past revisions")?;
    // Whatever the sequence, the final state survives a restart.
    store.shutdown().await?;
    let store = Store::open(Config::new(dir)).await?;
    check_all(&store, &model)
        .await
        .context("after the final reopen")?;
    check_history(&store, &states)
        .await
        .context("past revisions after the final reopen")?;
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

// ---------------------------------------------------------------------------
// Concurrent clients, checked for linearizability
// ---------------------------------------------------------------------------

/// What a client asked for.
#[derive(Debug, Clone)]
enum Call {
    /// Key, value, and whether to ask for the previous key.
    Put(Vec<u8>, Vec<u8>, bool),
    Delete(Vec<u8>, bool),
    /// Every key under a prefix.
    DeleteRange(Vec<u8>, bool),
    Txn(Txn),
    Get(Vec<u8>),
}

/// What it got back.
#[derive(Debug, Clone, PartialEq)]
enum Reply {
    Put {
        revision: u64,
        prev_kv: Option<KeyValue>,
    },
    Delete {
        deleted: bool,
        revision: u64,
        prev_kv: Option<KeyValue>,
    },
    DeleteRange {
        revision: u64,
        deleted: u64,
        prev_kvs: Vec<KeyValue>,
    },
    Txn {
        succeeded: bool,
        revision: u64,
        results: Vec<OpResult>,
    },
    Get(Option<KeyValue>),
}

/// One completed call, with logical times from one shared clock: a call
/// that returned before another was invoked has a smaller `returned` than
/// the other's `invoked`.
#[derive(Debug, Clone)]
struct Record {
    client: usize,
    invoked: u64,
    returned: u64,
    call: Call,
    reply: Reply,
}

/// A random call over the shared keys. Compares name literal revisions and
/// versions, so that concurrent clients make them hold sometimes.
fn random_call(rng: &mut rand::rngs::StdRng) -> Call {
    use rand::Rng;
    let k = |rng: &mut rand::rngs::StdRng| key(rng.gen_range(0..KEYS.len()));
    let v = |rng: &mut rand::rngs::StdRng| value_bytes(rng.gen_range(0..4));
    match rng.gen_range(0..11) {
        0..=3 => Call::Put(k(rng), v(rng), rng.gen_bool(0.3)),
        4 => Call::Delete(k(rng), rng.gen_bool(0.3)),
        10 => Call::DeleteRange(
            PREFIXES[rng.gen_range(1..PREFIXES.len())]
                .as_bytes()
                .to_vec(),
            rng.gen_bool(0.5),
        ),
        5..=7 => {
            let mut compares = Vec::new();
            for _ in 0..rng.gen_range(0..3) {
                let op = OPS[rng.gen_range(0..OPS.len())];
                let check = match rng.gen_range(0..6) {
                    0 => Check::Value(op, Value(v(rng))),
                    1 => Check::ModRevision(op, rng.gen_range(0..40)),
                    2 => Check::CreateRevision(op, rng.gen_range(0..40)),
                    3 => Check::Absent,
                    4 => Check::Exists,
                    _ => Check::Version(op, rng.gen_range(0..4)),
                };
                compares.push(Compare { key: k(rng), check });
            }
            let ops = |rng: &mut rand::rngs::StdRng| -> Vec<Op> {
                (0..rng.gen_range(0..4))
                    .map(|_| match rng.gen_range(0..3) {
                        0 => Op::Put {
                            key: k(rng),
                            value: Value(v(rng)),
                            lease: 0,
                        },
                        1 => Op::Delete { key: k(rng) },
                        _ => Op::Get { key: k(rng) },
                    })
                    .collect()
            };
            let success = ops(rng);
            let failure = ops(rng);
            Call::Txn(Txn {
                compares,
                success,
                failure,
            })
        }
        _ => Call::Get(k(rng)),
    }
}

async fn perform(store: &Store, call: &Call) -> anyhow::Result<Reply> {
    Ok(match call {
        Call::Put(k, v, prev_kv) => {
            let p = store
                .put_with(
                    k,
                    v,
                    PutOptions {
                        prev_kv: *prev_kv,
                        ..PutOptions::default()
                    },
                )
                .await?;
            Reply::Put {
                revision: p.revision,
                prev_kv: p.prev_kv,
            }
        }
        Call::Delete(k, prev_kv) => {
            let d = store
                .delete_with(k, DeleteOptions { prev_kv: *prev_kv })
                .await?;
            Reply::Delete {
                deleted: d.deleted,
                revision: d.revision,
                prev_kv: d.prev_kv,
            }
        }
        Call::DeleteRange(prefix, prev_kv) => {
            let d = store
                .delete_range(Range::prefix(prefix), DeleteOptions { prev_kv: *prev_kv })
                .await?;
            Reply::DeleteRange {
                revision: d.revision,
                deleted: d.deleted,
                prev_kvs: d.prev_kvs,
            }
        }
        Call::Txn(t) => {
            let r = store.txn(t.clone()).await?;
            Reply::Txn {
                succeeded: r.succeeded,
                revision: r.revision,
                results: r.results,
            }
        }
        Call::Get(k) => Reply::Get(store.get_kv(k, Consistency::Linearizable).await?),
    })
}

/// Runs `call` on a copy of `model`: the reply it would give and the model
/// after it.
fn model_step(model: &Model, call: &Call) -> (Reply, Model) {
    let mut m = model.clone();
    let reply = match call {
        Call::Put(k, v, prev) => {
            let prev_kv = m.kv(k).filter(|_| *prev);
            m.revision += 1;
            let rev = m.revision;
            m.put_at(k.clone(), v.clone(), rev);
            Reply::Put {
                revision: rev,
                prev_kv,
            }
        }
        Call::Delete(k, prev) => {
            let prev_kv = m.kv(k).filter(|_| *prev);
            let deleted = m.keys.remove(k).is_some();
            if deleted {
                m.revision += 1;
            }
            Reply::Delete {
                deleted,
                revision: m.revision,
                prev_kv,
            }
        }
        Call::DeleteRange(prefix, prev) => {
            let gone = m.list(prefix);
            for kv in &gone {
                m.keys.remove(&kv.key);
            }
            if !gone.is_empty() {
                m.revision += 1;
            }
            Reply::DeleteRange {
                revision: m.revision,
                deleted: gone.len() as u64,
                prev_kvs: if *prev { gone } else { Vec::new() },
            }
        }
        Call::Txn(t) => {
            let (succeeded, revision, results) = m.txn(t);
            Reply::Txn {
                succeeded,
                revision,
                results,
            }
        }
        Call::Get(k) => Reply::Get(m.kv(k)),
    };
    (reply, m)
}

/// Checks a concurrent history for linearizability, using the revisions
/// the store reports as the order of the calls (as etcd's robustness tests
/// do). Each revision from `start + 1` to `end` must have exactly one call
/// that made it; replaying those calls in revision order through the model
/// must give exactly the replies the clients got; a call that changed
/// nothing must match the model at the revision it reports; and every
/// call's revision must lie within its real-time window. Reads (which
/// report no revision) must match the model at some revision within their
/// window. `start` and `end` are the store's revisions before and after.
fn check_linearizable(start: u64, end: u64, history: &[Record]) -> Result<(), String> {
    let reported = |r: &Record| match &r.reply {
        Reply::Put { revision, .. }
        | Reply::Delete { revision, .. }
        | Reply::DeleteRange { revision, .. }
        | Reply::Txn { revision, .. } => Some(*revision),
        Reply::Get(_) => None,
    };
    let mut by_revision: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, r) in history.iter().enumerate() {
        if let Some(rev) = reported(r) {
            if rev < start || rev > end {
                return Err(format!(
                    "{:?} reports revision {rev}, outside {start}..={end}",
                    r.call
                ));
            }
            by_revision.entry(rev).or_default().push(i);
        }
    }
    let mut model = Model {
        revision: start,
        ..Model::default()
    };
    let mut states: BTreeMap<u64, Model> = BTreeMap::new();
    states.insert(start, model.clone());
    // The call that made each revision.
    let mut owner: BTreeMap<u64, usize> = BTreeMap::new();
    let matches_unchanged = |m: &Model, i: usize| {
        let (reply, next) = model_step(m, &history[i].call);
        reply == history[i].reply && next.revision == m.revision
    };
    for i in by_revision.get(&start).into_iter().flatten() {
        if !matches_unchanged(&model, *i) {
            return Err(format!(
                "{:?} -> {:?} does not match the starting state",
                history[*i].call, history[*i].reply
            ));
        }
    }
    for rev in start + 1..=end {
        let group = by_revision.get(&rev).cloned().unwrap_or_default();
        // Puts and deletes that deleted always change the state; otherwise
        // one of the transactions reporting this revision did.
        let forced: Vec<usize> = group
            .iter()
            .copied()
            .filter(|&i| match history[i].reply {
                Reply::Put { .. } | Reply::Delete { deleted: true, .. } => true,
                Reply::DeleteRange { deleted, .. } => deleted > 0,
                _ => false,
            })
            .collect();
        if forced.len() > 1 {
            return Err(format!(
                "{} calls claim to have made revision {rev}",
                forced.len()
            ));
        }
        let candidates = if forced.is_empty() {
            group.clone()
        } else {
            forced
        };
        let found = candidates.iter().copied().find_map(|c| {
            let (reply, next) = model_step(&model, &history[c].call);
            let fits = reply == history[c].reply
                && next.revision == rev
                && group.iter().all(|&g| g == c || matches_unchanged(&next, g));
            fits.then_some((c, next))
        });
        let Some((c, next)) = found else {
            return Err(format!(
                "no order of the calls reporting revision {rev} fits the model: {:?}",
                group
                    .iter()
                    .map(|&i| (&history[i].call, &history[i].reply))
                    .collect::<Vec<_>>()
            ));
        };
        model = next;
        states.insert(rev, model.clone());
        owner.insert(rev, c);
    }
    // Real time: the revisions made by calls that returned before a call
    // was invoked bound it below; those made by calls invoked before it
    // returned bound it above.
    let window = |r: &Record| -> (u64, u64) {
        let lo = owner
            .iter()
            .filter(|(_, &o)| history[o].returned < r.invoked)
            .map(|(rev, _)| *rev)
            .max()
            .unwrap_or(start);
        let hi = owner
            .iter()
            .filter(|(_, &o)| history[o].invoked < r.returned)
            .map(|(rev, _)| *rev)
            .max()
            .unwrap_or(start);
        (lo, hi)
    };
    for (i, r) in history.iter().enumerate() {
        let (lo, hi) = window(r);
        let ok = match reported(r) {
            Some(rev) if owner.get(&rev) == Some(&i) => rev > lo && rev <= hi,
            Some(rev) => rev >= lo && rev <= hi,
            None => (lo..=hi).any(|rev| matches_unchanged(&states[&rev], i)),
        };
        if !ok {
            return Err(format!(
                "client {}'s {:?} -> {:?} fits no revision of its real-time window [{lo}, {hi}]",
                r.client, r.call, r.reply
            ));
        }
    }
    Ok(())
}

const CLIENTS: usize = 4;
const CALLS_PER_CLIENT: usize = 40;
const ROUNDS: u64 = 8;

/// Concurrent clients against one store, several seeded rounds: every
/// history must be linearizable, and together the rounds must have packed
/// several requests into one log entry (so that multi-request batches are
/// model-checked, which the sequential test above cannot do).
#[test]
fn concurrent_clients_are_linearizable() {
    let seed: u64 = std::env::var("COFFER_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed: {seed} (rerun with COFFER_TEST_SEED={seed})");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (mut proposals, mut entries) = (0u64, 0u64);
    for round in 0..ROUNDS {
        let dir = tempfile::tempdir().unwrap();
        let (history, start, end, log_entries) = rt.block_on(async {
            let store = Store::open(Config::new(dir.path())).await.unwrap();
            let start = store.revision().unwrap();
            let first_index = store.metrics().last_log_index.unwrap_or(0);
            let clock = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let mut tasks = Vec::new();
            for client in 0..CLIENTS {
                let store = store.clone();
                let clock = clock.clone();
                let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(
                    seed ^ (round << 8) ^ client as u64,
                );
                tasks.push(tokio::spawn(async move {
                    let mut out = Vec::new();
                    for _ in 0..CALLS_PER_CLIENT {
                        let call = random_call(&mut rng);
                        let invoked = clock.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let reply = perform(&store, &call).await.unwrap();
                        let returned = clock.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        out.push(Record {
                            client,
                            invoked,
                            returned,
                            call,
                            reply,
                        });
                    }
                    out
                }));
            }
            let mut history = Vec::new();
            for t in tasks {
                history.extend(t.await.unwrap());
            }
            let log_entries = store.metrics().last_log_index.unwrap_or(0) - first_index;
            let end = store.revision().unwrap();
            store.shutdown().await.unwrap();
            (history, start, end, log_entries)
        });
        proposals += history
            .iter()
            .filter(|r| !matches!(r.call, Call::Get(_)))
            .count() as u64;
        entries += log_entries;
        if let Err(e) = check_linearizable(start, end, &history) {
            panic!("seed {seed}, round {round}: not linearizable: {e}");
        }
    }
    eprintln!("{proposals} writes in {entries} log entries over {ROUNDS} rounds");
    assert!(
        entries < proposals,
        "seed {seed}: no two concurrent requests ever shared a log entry ({proposals} writes, {entries} entries)"
    );
}

/// The checker rejects histories that are not linearizable: a read that
/// missed a write which had returned before it began, and a write whose
/// reply does not follow from the writes before it.
#[test]
fn the_linearizability_check_rejects_stale_and_impossible_histories() {
    let put = |client, invoked, returned, v: &str, revision| Record {
        client,
        invoked,
        returned,
        call: Call::Put(b"a".to_vec(), v.as_bytes().to_vec(), false),
        reply: Reply::Put {
            revision,
            prev_kv: None,
        },
    };
    let get = |invoked, returned, v: Option<(&str, u64, u64)>| Record {
        client: 9,
        invoked,
        returned,
        call: Call::Get(b"a".to_vec()),
        reply: Reply::Get(v.map(|(v, create, modr)| KeyValue {
            key: b"a".to_vec(),
            value: Value(v.as_bytes().to_vec()),
            meta: KeyMeta {
                create_revision: create,
                mod_revision: modr,
                version: modr - create + 1,
                lease: 0,
            },
        })),
    };
    // Fine: the read overlaps the second write and sees the first.
    let ok = vec![
        put(0, 0, 1, "x", 1),
        put(1, 2, 5, "y", 2),
        get(3, 4, Some(("x", 1, 1))),
    ];
    assert_eq!(check_linearizable(0, 2, &ok), Ok(()));
    // Stale: the read began after the second write returned.
    let stale = vec![
        put(0, 0, 1, "x", 1),
        put(1, 2, 3, "y", 2),
        get(4, 5, Some(("x", 1, 1))),
    ];
    assert!(check_linearizable(0, 2, &stale).is_err());
    // Real time broken: the write that returned first has the later revision.
    let reordered = vec![put(0, 0, 1, "x", 2), put(1, 2, 3, "y", 1)];
    assert!(check_linearizable(0, 2, &reordered).is_err());
    // A delete that reports success on a key nobody wrote.
    let phantom = vec![Record {
        client: 0,
        invoked: 0,
        returned: 1,
        call: Call::Delete(b"a".to_vec(), false),
        reply: Reply::Delete {
            deleted: true,
            revision: 1,
            prev_kv: None,
        },
    }];
    assert!(check_linearizable(0, 1, &phantom).is_err());
}
