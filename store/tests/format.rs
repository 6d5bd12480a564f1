//! Format stability: a data directory written by this format version is
//! checked in (`tests/fixtures/format-1/`) and must open and read back, key
//! for key, revision for revision and event for event, in every later
//! version. A later build that changes the format migrates this directory
//! or fails this test.
//!
//! The fixture is regenerated (only when the format version changes, into
//! a new `format-N` directory beside the old ones, which stay) with
//! `COFFER_WRITE_FIXTURE=1 cargo test -p coffer-store --test format`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use coffer_store::engine::db::{Db, CF_EVENTS, CF_KV, CF_META, FORMAT_VERSION};
use coffer_store::engine::keys;
use coffer_store::event::EventKind;
use coffer_store::{Config, Consistency, Op, OpenError, Store, Txn, Value};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-1")
}

/// RocksDB's own files that a copy leaves out: the lock, and its
/// human-readable info logs (options and statistics, no data).
fn is_transient(name: &str) -> bool {
    name == "LOCK" || name.starts_with("LOG")
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let target = to.join(&name);
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else if !is_transient(&name) {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A copy of the checked-in fixture with the modes an operator restoring a
/// data directory would set (git keeps none of them).
fn fixture_copy(to: &Path) {
    copy_tree(&fixture_dir(), to);
    let keys = to.join(keys::KEYS_DIR);
    fs::set_permissions(&keys, fs::Permissions::from_mode(0o700)).unwrap();
    for f in [keys::KEK_FILE, keys::KEYRING_FILE] {
        fs::set_permissions(keys.join(f), fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// What the fixture holds, written through every write path: puts,
/// overwrites, a delete, a transaction, a large value, a snapshot and
/// writes after it.
async fn write_contents(store: &Store, dir: &Path) {
    store.put(b"app/one", b"1").await.unwrap();
    store.put(b"app/two", b"2").await.unwrap();
    store.put(b"app/two", b"2b").await.unwrap();
    store.put(b"app/gone", b"x").await.unwrap();
    assert!(store.delete(b"app/gone").await.unwrap().deleted);
    let txn = Txn {
        success: vec![
            Op::Put {
                key: b"app/txn-a".to_vec(),
                value: Value(b"a".to_vec()),
            },
            Op::Put {
                key: b"app/txn-b".to_vec(),
                value: Value(b"b".to_vec()),
            },
        ],
        ..Txn::default()
    };
    assert!(store.txn(txn).await.unwrap().succeeded);
    store.put(b"big", &big_value()).await.unwrap();
    snapshot_now(store, dir).await;
    store.put(b"after/snapshot", b"s").await.unwrap();
    store.put(b"app/one", b"1b").await.unwrap();
}

fn big_value() -> Vec<u8> {
    (0..20_000u32).map(|i| (i % 251) as u8).collect()
}

/// (key, value, create revision, mod revision, version).
type Row<'a> = (&'a [u8], Vec<u8>, u64, u64, u64);

/// Every live key, in key order.
fn expected_keys() -> Vec<Row<'static>> {
    vec![
        (b"after/snapshot", b"s".to_vec(), 8, 8, 1),
        (b"app/one", b"1b".to_vec(), 1, 9, 2),
        (b"app/two", b"2b".to_vec(), 2, 3, 2),
        (b"app/txn-a", b"a".to_vec(), 6, 6, 1),
        (b"app/txn-b", b"b".to_vec(), 6, 6, 1),
        (b"big", big_value(), 7, 7, 1),
    ]
}

/// Every change, in order: (revision, kind, key).
fn expected_events() -> Vec<(u64, EventKind, &'static [u8])> {
    vec![
        (1, EventKind::Put, b"app/one"),
        (2, EventKind::Put, b"app/two"),
        (3, EventKind::Put, b"app/two"),
        (4, EventKind::Put, b"app/gone"),
        (5, EventKind::Delete, b"app/gone"),
        (6, EventKind::Put, b"app/txn-a"),
        (6, EventKind::Put, b"app/txn-b"),
        (7, EventKind::Put, b"big"),
        (8, EventKind::Put, b"after/snapshot"),
        (9, EventKind::Put, b"app/one"),
    ]
}

fn snapshot_files(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "snap"))
        .collect()
}

/// Builds a snapshot of everything applied so far and waits (Raft's own
/// metrics, under a deadline) until it is published.
async fn snapshot_now(store: &Store, dir: &Path) {
    let applied = store.metrics().last_applied;
    store.trigger_snapshot().await.unwrap();
    store
        .raft()
        .wait(Some(Duration::from_secs(30)))
        .metrics(
            move |m| m.snapshot >= applied,
            "a snapshot of everything applied",
        )
        .await
        .unwrap();
    assert!(!snapshot_files(dir).is_empty());
}

/// Opens `dir` and checks that it holds exactly what `write_contents`
/// wrote, then that it still takes writes.
async fn check_contents(dir: &Path) {
    let store = Store::open(Config::new(dir)).await.unwrap();
    assert_eq!(store.revision().unwrap(), 9);
    let all = store.list(b"", Consistency::Linearizable).await.unwrap();
    let got: Vec<_> = all
        .iter()
        .map(|kv| {
            (
                kv.key.as_slice(),
                kv.value.to_vec(),
                kv.meta.create_revision,
                kv.meta.mod_revision,
                kv.meta.version,
            )
        })
        .collect();
    assert_eq!(got, expected_keys());
    assert_eq!(store.get(b"app/gone").await.unwrap(), None);
    let mut watch = store.watch(b"", 1).unwrap();
    for (revision, kind, key) in expected_events() {
        let e = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("history ends early")
            .unwrap();
        assert_eq!(
            (e.revision, e.kind, e.kv.key.as_slice()),
            (revision, kind, key)
        );
    }
    assert_eq!(store.put(b"new", b"n").await.unwrap(), 10);
    assert_eq!(store.get(b"new").await.unwrap().as_deref(), Some(&b"n"[..]));
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checked_in_format_1_directory_opens_and_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    fixture_copy(&dir);
    check_contents(&dir).await;
    // And again after that restart, now with this build's own writes.
    let store = Store::open(Config::new(&dir)).await.unwrap();
    assert_eq!(store.get(b"new").await.unwrap().as_deref(), Some(&b"n"[..]));
    store.shutdown().await.unwrap();
}

/// Writes the fixture's contents with this build and checks them with the
/// same function, so the writer and the checked-in directory cannot drift
/// apart. With `COFFER_WRITE_FIXTURE=1` it also replaces the fixture.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_written_now_reads_back_the_same() {
    assert_eq!(
        FORMAT_VERSION, 1,
        "a new format version needs a new fixture"
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let store = Store::open(Config::new(&dir)).await.unwrap();
    write_contents(&store, &dir).await;
    store.shutdown().await.unwrap();
    // Some column families in SST files, the rest only in the WAL, so the
    // fixture covers both of RocksDB's read paths.
    {
        let cipher = Arc::new(keys::open_keyring(&dir, false).unwrap().cipher().unwrap());
        let db = Db::open(&dir.join("db"), cipher).unwrap();
        for cf in [CF_KV, CF_EVENTS] {
            db.db.flush_cf(db.cf(cf).unwrap()).unwrap();
        }
    }
    if std::env::var_os("COFFER_WRITE_FIXTURE").is_some() {
        let target = fixture_dir();
        let _ = fs::remove_dir_all(&target);
        copy_tree(&dir, &target);
        eprintln!("wrote {}", target.display());
    }
    check_contents(&dir).await;
}

/// A directory whose format row says another version, or that has data
/// but no format row (written before versions), is refused with a clear
/// error instead of being misread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_format_versions_are_refused_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    fixture_copy(&dir);
    let cipher = Arc::new(keys::open_keyring(&dir, false).unwrap().cipher().unwrap());
    let set_format = |row: Option<u32>| {
        let db = Db::open(&dir.join("db"), cipher.clone()).unwrap();
        let mut batch = rocksdb::WriteBatch::default();
        match row {
            Some(v) => db
                .put_sealed(&mut batch, CF_META, b"format", &v.to_be_bytes())
                .unwrap(),
            None => batch.delete_cf(db.cf(CF_META).unwrap(), b"format"),
        }
        db.write(batch, true).unwrap();
    };
    set_format(Some(2));
    let err = Store::open(Config::new(&dir))
        .await
        .map(|_| ())
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("format 2") && msg.contains("newer"),
        "unclear error: {msg}"
    );
    set_format(None);
    let err = Store::open(Config::new(&dir))
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(&err, OpenError::Corruption { detail, .. } if detail.contains("no format version")),
        "{err:?}"
    );
    set_format(Some(FORMAT_VERSION));
    check_contents(&dir).await;
}
