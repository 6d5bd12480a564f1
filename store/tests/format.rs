//! Format stability: a data directory written by each format version is
//! checked in (`tests/fixtures/format-N/`) and must open and read back, key
//! for key, revision for revision and event for event, in every later
//! version. A later build that changes the format migrates these
//! directories or fails this test.
//!
//! The fixture of the current format is regenerated (only when the format
//! version changes, into a new `format-N` directory beside the old ones,
//! which stay) with
//! `COFFER_WRITE_FIXTURE=1 cargo test -p coffer-store --test format`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use coffer_store::engine::db::{Db, CF_EVENTS, CF_KV, CF_LEASES, CF_META, FORMAT_VERSION};
use coffer_store::engine::keys;
use coffer_store::event::EventKind;
use coffer_store::{Config, Consistency, Op, OpenError, PutOptions, Store, Txn, Value};

fn fixture_dir(version: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/format-{version}"))
}

/// The leases format 2 fixtures hold: one with a key, one without.
const LEASE_WITH_KEY: u64 = 0x00c0_ffee;
const LEASE_EMPTY: u64 = 0x0bad_cafe;
/// Ten years: the leases never run out while a test runs.
const LEASE_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

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
fn fixture_copy(version: u32, to: &Path) {
    copy_tree(&fixture_dir(version), to);
    let keys = to.join(keys::KEYS_DIR);
    fs::set_permissions(&keys, fs::Permissions::from_mode(0o700)).unwrap();
    for f in [keys::KEK_FILE, keys::KEYRING_FILE] {
        fs::set_permissions(keys.join(f), fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// What the fixture holds, written through every write path: puts,
/// overwrites, a delete, a transaction, a large value, leases (format 2)
/// and a key attached to one, a snapshot and writes after it.
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
                lease: 0,
            },
            Op::Put {
                key: b"app/txn-b".to_vec(),
                value: Value(b"b".to_vec()),
                lease: 0,
            },
        ],
        ..Txn::default()
    };
    assert!(store.txn(txn).await.unwrap().succeeded);
    store.put(b"big", &big_value()).await.unwrap();
    for id in [LEASE_WITH_KEY, LEASE_EMPTY] {
        store.lease_grant_with_id(id, LEASE_TTL).await.unwrap();
    }
    let leased = PutOptions {
        lease: LEASE_WITH_KEY,
        ..PutOptions::default()
    };
    store.put_with(b"leased", b"l", leased).await.unwrap();
    snapshot_now(store, dir).await;
    store.put(b"after/snapshot", b"s").await.unwrap();
    store.put(b"app/one", b"1b").await.unwrap();
}

fn big_value() -> Vec<u8> {
    (0..20_000u32).map(|i| (i % 251) as u8).collect()
}

/// (key, value, create revision, mod revision, version, lease).
type Row<'a> = (&'a [u8], Vec<u8>, u64, u64, u64, u64);

/// The revision of the last write in a fixture of format `version`
/// (format 2 has one more: the leased key).
fn last_revision(version: u32) -> u64 {
    if version >= 2 {
        10
    } else {
        9
    }
}

/// Every live key of a fixture of format `version`, in key order.
fn expected_keys(version: u32) -> Vec<Row<'static>> {
    let last = last_revision(version);
    let mut keys = vec![
        (
            b"after/snapshot".as_slice(),
            b"s".to_vec(),
            last - 1,
            last - 1,
            1,
            0,
        ),
        (b"app/one", b"1b".to_vec(), 1, last, 2, 0),
        (b"app/two", b"2b".to_vec(), 2, 3, 2, 0),
        (b"app/txn-a", b"a".to_vec(), 6, 6, 1, 0),
        (b"app/txn-b", b"b".to_vec(), 6, 6, 1, 0),
        (b"big", big_value(), 7, 7, 1, 0),
    ];
    if version >= 2 {
        keys.push((b"leased", b"l".to_vec(), 8, 8, 1, LEASE_WITH_KEY));
    }
    keys
}

/// Every change of a fixture of format `version`, in order: (revision,
/// kind, key).
fn expected_events(version: u32) -> Vec<(u64, EventKind, &'static [u8])> {
    let last = last_revision(version);
    let mut events: Vec<(u64, EventKind, &'static [u8])> = vec![
        (1, EventKind::Put, b"app/one"),
        (2, EventKind::Put, b"app/two"),
        (3, EventKind::Put, b"app/two"),
        (4, EventKind::Put, b"app/gone"),
        (5, EventKind::Delete, b"app/gone"),
        (6, EventKind::Put, b"app/txn-a"),
        (6, EventKind::Put, b"app/txn-b"),
        (7, EventKind::Put, b"big"),
    ];
    if version >= 2 {
        events.push((8, EventKind::Put, b"leased"));
    }
    events.push((last - 1, EventKind::Put, b"after/snapshot"));
    events.push((last, EventKind::Put, b"app/one"));
    events
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

/// Opens `dir`, written in format `version`, and checks that it holds
/// exactly what `write_contents` wrote then, and that it takes writes (a
/// key on a lease included) now.
async fn check_contents(dir: &Path, version: u32) {
    let store = Store::open(Config::new(dir)).await.unwrap();
    let last = last_revision(version);
    assert_eq!(store.revision().unwrap(), last);
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
                kv.meta.lease,
            )
        })
        .collect();
    assert_eq!(got, expected_keys(version));
    assert_eq!(store.get(b"app/gone").await.unwrap(), None);
    let leases: Vec<(u64, Duration, u64)> = store
        .leases(Consistency::Linearizable)
        .await
        .unwrap()
        .iter()
        .map(|l| (l.id, l.ttl, l.keys))
        .collect();
    if version >= 2 {
        assert_eq!(
            leases,
            vec![(LEASE_WITH_KEY, LEASE_TTL, 1), (LEASE_EMPTY, LEASE_TTL, 0)]
        );
    } else {
        assert_eq!(leases, vec![]);
    }
    // Format 3 keeps replaced versions for reads at past revisions; a
    // migrated directory had only the newest, so it reads from `last` on.
    let past = store
        .range(
            coffer_store::Range::all().at_revision(4),
            Consistency::Linearizable,
        )
        .await;
    if version >= 3 {
        let keys: Vec<(Vec<u8>, Vec<u8>)> = past
            .unwrap()
            .kvs
            .into_iter()
            .map(|kv| (kv.key, kv.value.into_vec()))
            .collect();
        let want: Vec<(Vec<u8>, Vec<u8>)> =
            [("app/gone", "x"), ("app/one", "1"), ("app/two", "2b")]
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect();
        assert_eq!(keys, want);
    } else {
        assert!(
            matches!(past, Err(coffer_store::Error::Compacted { oldest, .. }) if oldest == last),
            "{past:?}"
        );
    }
    let mut watch = store.watch(b"", 1).unwrap();
    for (revision, kind, key) in expected_events(version) {
        let e = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("history ends early")
            .unwrap();
        assert_eq!(
            (e.revision, e.kind, e.kv.key.as_slice()),
            (revision, kind, key)
        );
    }
    assert_eq!(store.put(b"new", b"n").await.unwrap(), last + 1);
    assert_eq!(store.get(b"new").await.unwrap().as_deref(), Some(&b"n"[..]));
    let lease = store.lease_grant(LEASE_TTL).await.unwrap();
    let on_lease = PutOptions {
        lease: lease.id,
        ..PutOptions::default()
    };
    store.put_with(b"new/leased", b"x", on_lease).await.unwrap();
    store.shutdown().await.unwrap();
}

/// Every checked-in fixture opens (migrated to the current format), reads
/// back, and reads back again after a restart with this build's writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checked_in_directories_open_and_read_back() {
    for version in 1..=FORMAT_VERSION {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        fixture_copy(version, &dir);
        check_contents(&dir, version).await;
        let store = Store::open(Config::new(&dir)).await.unwrap();
        assert_eq!(store.get(b"new").await.unwrap().as_deref(), Some(&b"n"[..]));
        let kv = store
            .get_kv(b"new/leased", Consistency::Linearizable)
            .await
            .unwrap()
            .unwrap();
        assert_ne!(kv.meta.lease, 0, "format {version}: the lease was lost");
        store.shutdown().await.unwrap();
    }
}

/// Writes the fixture's contents with this build and checks them with the
/// same function, so the writer and the checked-in directory cannot drift
/// apart. With `COFFER_WRITE_FIXTURE=1` it also replaces the fixture.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_written_now_reads_back_the_same() {
    assert_eq!(
        FORMAT_VERSION, 3,
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
        let cipher = Arc::new(
            keys::open_keyring(&dir, false, None)
                .unwrap()
                .cipher()
                .unwrap(),
        );
        let db = Db::open(&dir.join("db"), cipher).unwrap();
        for cf in [CF_KV, CF_EVENTS, CF_LEASES] {
            db.db.flush_cf(db.cf(cf).unwrap()).unwrap();
        }
    }
    if std::env::var_os("COFFER_WRITE_FIXTURE").is_some() {
        let target = fixture_dir(FORMAT_VERSION);
        let _ = fs::remove_dir_all(&target);
        copy_tree(&dir, &target);
        eprintln!("wrote {}", target.display());
    }
    check_contents(&dir, FORMAT_VERSION).await;
}

/// A directory whose format row says another version, or that has data
/// but no format row (written before versions), is refused with a clear
/// error instead of being misread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_format_versions_are_refused_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    fixture_copy(FORMAT_VERSION, &dir);
    let cipher = Arc::new(
        keys::open_keyring(&dir, false, None)
            .unwrap()
            .cipher()
            .unwrap(),
    );
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
    set_format(Some(FORMAT_VERSION + 1));
    let err = Store::open(Config::new(&dir))
        .await
        .map(|_| ())
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("format {}", FORMAT_VERSION + 1)) && msg.contains("newer"),
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
    check_contents(&dir, FORMAT_VERSION).await;
}
