//! Encryption at rest and corruption detection.
//!
//! - Canaries written through every path (puts, deletes, transactions,
//!   snapshots, WAL, flushed and compacted SST files) never appear in any
//!   byte of any file under the data directory.
//! - A damaged file (flipped or truncated SST, flipped keyring, wrong or
//!   truncated KEK) is reported as an error naming the file: never a panic,
//!   never wrong data.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use coffer_store::crypto::SecretKey;
use coffer_store::engine::db::{Db, CF_EVENTS, CF_KV, CF_LEASES, CF_LOG, CF_META};
use coffer_store::engine::keys;
use coffer_store::{
    Check, CmpOp, Compare, Config, Consistency, Encryption, Op, OpenError, Store, Txn, Value,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::files_under;

const ALL_CFS: [&str; 5] = [CF_META, CF_LOG, CF_KV, CF_EVENTS, CF_LEASES];
/// Fragments every canary contains: if none of these is on disk, no canary is.
const FRAGMENTS: [&str; 7] = [
    "CANARY",
    "xyzzy",
    "plugh",
    "KEY-xyzzy",
    "VALUE-plugh",
    "canary",
    "TXN-plugh",
];
const SIZES: [usize; 5] = [24, 700, 4 * 1024, 33 * 1024, 100 * 1024];
const SNAPSHOT_WAIT: Duration = Duration::from_secs(30);

/// Names of threads that panicked, in any test of this binary.
static PANICKED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Records panics on every thread (openraft tasks included), so that a
/// panic swallowed by a spawned task still fails the test.
fn record_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let name = std::thread::current()
                .name()
                .unwrap_or("<unnamed>")
                .to_string();
            PANICKED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(name);
            default(info);
        }));
    });
}

/// A runtime whose threads are named after the test, so that panics on
/// them can be told apart from those of other tests running in parallel.
fn runtime(test: &str) -> tokio::runtime::Runtime {
    record_panics();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(format!("rt-{test}"))
        .enable_all()
        .build()
        .unwrap()
}

/// Fails if a thread of `test`'s runtime, or one of the store's own
/// threads, panicked.
fn assert_no_panics(test: &str) {
    let prefix = format!("rt-{test}");
    let panicked = PANICKED.lock().unwrap_or_else(|e| e.into_inner());
    let ours: Vec<&String> = panicked
        .iter()
        .filter(|n| **n == prefix || n.starts_with("coffer-"))
        .collect();
    assert!(ours.is_empty(), "threads panicked: {ours:?}");
}

fn seed() -> u64 {
    let seed = std::env::var("COFFER_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed: {seed} (rerun with COFFER_TEST_SEED={seed})");
    seed
}

fn canary_key(n: usize) -> Vec<u8> {
    format!("CANARY-KEY-xyzzy-{n:03}").into_bytes()
}

/// A value of exactly `size` bytes made of repeated canary text.
fn canary_value(tag: &str, n: usize, size: usize) -> Vec<u8> {
    let unit = format!("CANARY-VALUE-plugh-{tag}{n:03};");
    unit.bytes().cycle().take(size).collect()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let last_start = haystack.len() - needle.len();
    let mut i = 0;
    while i <= last_start {
        match haystack[i..=last_start].iter().position(|b| *b == first) {
            None => return None,
            Some(p) => {
                let at = i + p;
                if &haystack[at..at + needle.len()] == needle {
                    return Some(at);
                }
                i = at + 1;
            }
        }
    }
    None
}

/// A few whole canaries checked verbatim (the fragments cover the rest).
fn full_canaries() -> Vec<Vec<u8>> {
    vec![
        canary_key(0),
        canary_key(7),
        canary_value("", 1, 24),
        // Written by the transaction on key 3 (24 bytes: SIZES[(3 + 2) % 5]).
        canary_value("TXN-", 3, 24),
    ]
}

/// One canary (or fragment) found in plaintext.
#[derive(Debug)]
struct Hit {
    needle: String,
    file: PathBuf,
    offset: usize,
}

/// Reads every byte of every file under `dir`; returns every canary and
/// fragment found (the first place in each file), and the bytes read.
fn scan_for_canaries(dir: &Path, full: &[Vec<u8>]) -> (Vec<Hit>, usize) {
    let mut hits = Vec::new();
    let mut total = 0;
    for f in files_under(dir) {
        let bytes = fs::read(&f).unwrap();
        total += bytes.len();
        for needle in FRAGMENTS
            .iter()
            .map(|s| s.as_bytes())
            .chain(full.iter().map(Vec::as_slice))
        {
            if let Some(offset) = find(&bytes, needle) {
                hits.push(Hit {
                    needle: String::from_utf8_lossy(needle).into_owned(),
                    file: f.clone(),
                    offset,
                });
            }
        }
    }
    (hits, total)
}

/// Fails on any canary under `dir`; returns the bytes read.
fn assert_no_canaries(dir: &Path, stage: &str, full: &[Vec<u8>]) -> usize {
    let (hits, total) = scan_for_canaries(dir, full);
    if let Some(h) = hits.first() {
        panic!(
            "{stage}: {:?} found in plaintext in {} at offset {}",
            h.needle,
            h.file.display(),
            h.offset
        );
    }
    eprintln!("{stage}: {total} bytes, no canary");
    total
}

fn snapshot_files(dir: &Path) -> Vec<PathBuf> {
    files_under(&dir.join("snapshots"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "snap"))
        .collect()
}

/// Triggers a snapshot and polls until a new finished snapshot file exists.
async fn snapshot_now(store: &Store, dir: &Path) {
    let before = snapshot_files(dir);
    store.trigger_snapshot().await.unwrap();
    let deadline = Instant::now() + SNAPSHOT_WAIT;
    loop {
        let now = snapshot_files(dir);
        if now.iter().any(|p| !before.contains(p)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no new snapshot file in {} within {SNAPSHOT_WAIT:?} (have {now:?})",
            dir.join("snapshots").display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Opens the RocksDB database of a closed store directly, flushes every
/// column family to SST files and compacts them.
fn flush_and_compact(dir: &Path) {
    let cipher = keys::open_keyring(dir, false, None)
        .unwrap()
        .cipher()
        .unwrap();
    let db = Db::open(&dir.join("db"), Arc::new(cipher)).unwrap();
    for cf in ALL_CFS {
        db.db.flush_cf(db.cf(cf).unwrap()).unwrap();
    }
    for cf in ALL_CFS {
        db.db
            .compact_range_cf::<&[u8], &[u8]>(db.cf(cf).unwrap(), None, None);
    }
    db.db.flush_wal(true).unwrap();
}

fn ssts(dir: &Path) -> Vec<PathBuf> {
    files_under(&dir.join("db"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "sst"))
        .collect()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

async fn assert_contents(store: &Store, expected: &BTreeMap<Vec<u8>, Vec<u8>>) {
    let all = store.list(b"", Consistency::Linearizable).await.unwrap();
    let got: BTreeMap<Vec<u8>, Vec<u8>> = all
        .into_iter()
        .map(|kv| (kv.key, kv.value.into_vec()))
        .collect();
    assert_eq!(got.len(), expected.len(), "number of keys differs");
    for (k, v) in expected {
        assert!(
            got.get(k) == Some(v),
            "key {} has the wrong value",
            String::from_utf8_lossy(k)
        );
        assert_eq!(store.get(k).await.unwrap().as_deref(), Some(v.as_slice()));
    }
}

/// Writes canaries through puts, deletes and transactions; returns what
/// the store holds afterwards.
async fn write_canaries(store: &Store) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut expected: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for n in 0..40 {
        let v = canary_value("", n, SIZES[n % SIZES.len()]);
        store.put(&canary_key(n), &v).await.unwrap();
        expected.insert(canary_key(n), v);
    }
    for n in (0..40).step_by(5) {
        assert!(store.delete(&canary_key(n)).await.unwrap().deleted);
        expected.remove(&canary_key(n));
    }
    for n in 1..10 {
        // Compare on a canary value and write another one if it holds.
        let old = expected.get(&canary_key(n)).cloned();
        let new = canary_value("TXN-", n, SIZES[(n + 2) % SIZES.len()]);
        let r = store
            .txn(Txn {
                compares: vec![Compare {
                    key: canary_key(n),
                    check: Check::Value(
                        CmpOp::Equal,
                        Value(old.clone().unwrap_or_else(|| canary_value("", n, 24))),
                    ),
                }],
                success: vec![
                    Op::Put {
                        key: canary_key(n),
                        value: Value(new.clone()),
                        lease: 0,
                    },
                    Op::Put {
                        key: canary_key(100 + n),
                        value: Value(new.clone()),
                        lease: 0,
                    },
                ],
                failure: vec![Op::Get { key: canary_key(n) }],
            })
            .await
            .unwrap();
        assert_eq!(r.succeeded, old.is_some(), "txn {n}");
        if r.succeeded {
            expected.insert(canary_key(n), new.clone());
            expected.insert(canary_key(100 + n), new);
        }
        let r = store
            .txn(Txn {
                compares: vec![Compare {
                    key: canary_key(200 + n),
                    check: Check::Absent,
                }],
                success: vec![Op::Put {
                    key: canary_key(200 + n),
                    value: Value(canary_value("TXN-", 200 + n, 64)),
                    lease: 0,
                }],
                failure: vec![],
            })
            .await
            .unwrap();
        assert!(r.succeeded);
        expected.insert(canary_key(200 + n), canary_value("TXN-", 200 + n, 64));
    }
    expected
}

#[test]
fn canaries_never_reach_the_disk() {
    let rt = runtime("canaries_never_reach_the_disk");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut expected: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let full = full_canaries();
    rt.block_on(async {
        let store = Store::open(Config::new(&dir)).await.unwrap();
        expected = write_canaries(&store).await;
        snapshot_now(&store, &dir).await;
        assert_contents(&store, &expected).await;
        store.shutdown().await.unwrap();
    });
    // Everything so far is in the WAL and the snapshot file.
    assert!(!snapshot_files(&dir).is_empty());
    assert_no_canaries(&dir, "after the first shutdown", &full);

    rt.block_on(async {
        // Recovery flushes the WAL into SST files on open.
        let store = Store::open(Config::new(&dir)).await.unwrap();
        assert_contents(&store, &expected).await;
        for n in 300..320 {
            let v = canary_value("", n, SIZES[n % SIZES.len()]);
            store.put(&canary_key(n), &v).await.unwrap();
            expected.insert(canary_key(n), v);
        }
        for n in 300..305 {
            assert!(store.delete(&canary_key(n)).await.unwrap().deleted);
            expected.remove(&canary_key(n));
        }
        snapshot_now(&store, &dir).await;
        store.shutdown().await.unwrap();
    });
    assert_no_canaries(&dir, "after the second shutdown", &full);

    flush_and_compact(&dir);
    let sst = ssts(&dir);
    assert!(!sst.is_empty(), "flush left no SST file");
    assert_no_canaries(&dir, "after flush and compaction", &full);

    rt.block_on(async {
        let store = Store::open(Config::new(&dir)).await.unwrap();
        assert_contents(&store, &expected).await;
        store.shutdown().await.unwrap();
    });
    let bytes = assert_no_canaries(&dir, "after the final reopen", &full);
    let canary_bytes: usize = expected.iter().map(|(k, v)| k.len() + v.len()).sum();
    assert!(
        bytes > canary_bytes,
        "the data directory ({bytes} bytes) cannot hold the {canary_bytes} bytes written"
    );

    let keys_dir = dir.join(keys::KEYS_DIR);
    assert_eq!(mode(&keys_dir.join(keys::KEK_FILE)), 0o600, "keys/kek");
    assert_eq!(
        mode(&keys_dir.join(keys::KEYRING_FILE)),
        0o600,
        "keys/keyring"
    );
    assert_eq!(mode(&keys_dir), 0o700, "keys/");
    assert_eq!(mode(&dir), 0o700, "data directory");
    assert_no_panics("canaries_never_reach_the_disk");
}

/// Positive control for `canaries_never_reach_the_disk` (issue 5, fault 6):
/// the same writes with encryption switched off, and the same scan finds
/// every whole canary, in each kind of file it claims to cover (the WAL,
/// the snapshot file, SST files). A scan that could not see plaintext
/// would fail here.
#[test]
fn the_canary_scan_finds_the_canaries_when_encryption_is_off() {
    let rt = runtime("the_canary_scan_finds_the_canaries");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut config = Config::new(&dir);
    config.encryption = Encryption::DangerOffForBenchmarks;
    let full = full_canaries();
    rt.block_on(async {
        let store = Store::open(config.clone()).await.unwrap();
        let expected = write_canaries(&store).await;
        snapshot_now(&store, &dir).await;
        assert_contents(&store, &expected).await;
        store.shutdown().await.unwrap();
    });
    let in_kind = |hits: &[Hit], ext: &str| {
        hits.iter()
            .any(|h| h.file.extension().is_some_and(|e| e == ext))
    };
    let (hits, _) = scan_for_canaries(&dir, &full);
    assert!(
        in_kind(&hits, "log"),
        "no canary found in the WAL: {hits:?}"
    );
    assert!(
        in_kind(&hits, "snap"),
        "no canary found in the snapshot: {hits:?}"
    );
    flush_and_compact(&dir);
    let (hits, _) = scan_for_canaries(&dir, &full);
    assert!(
        in_kind(&hits, "sst"),
        "no canary found in SST files: {hits:?}"
    );
    for canary in &full {
        let shown = String::from_utf8_lossy(canary);
        assert!(
            hits.iter().any(|h| h.needle == shown),
            "{shown:?} not found anywhere"
        );
    }
    assert_no_panics("the_canary_scan_finds_the_canaries");
}

// ---------------------------------------------------------------------------
// Corruption
// ---------------------------------------------------------------------------

/// A closed store with data flushed to SST files, and what it holds.
struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    expected: BTreeMap<Vec<u8>, Vec<u8>>,
}

fn fixture(rt: &tokio::runtime::Runtime) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut expected = BTreeMap::new();
    rt.block_on(async {
        let store = Store::open(Config::new(&dir)).await.unwrap();
        for n in 0..60usize {
            let key = format!("key-{n:03}").into_bytes();
            let value = format!("value-{n}-")
                .bytes()
                .cycle()
                .take(SIZES[n % 4])
                .collect::<Vec<u8>>();
            store.put(&key, &value).await.unwrap();
            expected.insert(key, value);
        }
        for n in (0..60usize).step_by(7) {
            let key = format!("key-{n:03}").into_bytes();
            store.delete(&key).await.unwrap();
            expected.remove(&key);
        }
        store.shutdown().await.unwrap();
    });
    flush_and_compact(&dir);
    assert!(!ssts(&dir).is_empty());
    Fixture {
        _tmp: tmp,
        dir,
        expected,
    }
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
    fs::set_permissions(to, fs::metadata(from).unwrap().permissions()).unwrap();
}

fn flip(path: &Path, offset: usize, mask: u8) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset] ^= mask;
    fs::write(path, bytes).unwrap();
}

fn truncate(path: &Path, len: u64) {
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(len).unwrap();
    f.sync_all().unwrap();
}

fn is_corruption_message(msg: &str) -> bool {
    let m = msg.to_lowercase();
    m.contains("corrupt") || m.contains("checksum")
}

/// What reading a damaged store gave.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// Open or some read failed with a corruption error (message given).
    Detected(String),
    /// Everything opened and every byte read back right.
    Undetected,
}

/// A store error from reading damaged data must be `Corruption`.
fn corruption_from_read(what: &str, e: coffer_store::Error) -> String {
    assert!(
        matches!(e, coffer_store::Error::Corruption { .. }),
        "{what}: not a corruption error: {e:?}"
    );
    e.to_string()
}

/// An open of a damaged directory must fail with `Corruption` naming the
/// database, or (when openraft's startup is what reads the damaged block)
/// with openraft's storage error carrying the same message.
fn corruption_from_open(dir: &Path, e: OpenError) -> String {
    match &e {
        OpenError::Corruption { path, .. } => {
            assert_eq!(path, &dir.join("db"), "corruption names the wrong path")
        }
        OpenError::Raft(msg) if is_corruption_message(msg) => {}
        other => panic!("open: not a corruption error: {other:?}"),
    }
    e.to_string()
}

/// Opens a damaged copy and reads everything: through the store's API, then
/// every sealed row of every column family. Fails the test on wrong data,
/// on silently lost data, or on an error that is not a corruption error.
fn open_and_read_all(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    expected: &BTreeMap<Vec<u8>, Vec<u8>>,
) -> Outcome {
    let opened = rt.block_on(async {
        let store = match Store::open(Config::new(dir)).await {
            Ok(s) => s,
            Err(e) => return Err(corruption_from_open(dir, e)),
        };
        let mut failure = None;
        match store.list(b"", Consistency::Linearizable).await {
            Err(e) => failure = Some(corruption_from_read("list", e)),
            Ok(all) => {
                for kv in &all {
                    assert_eq!(
                        expected.get(&kv.key).map(Vec::as_slice),
                        Some(kv.value.as_slice()),
                        "wrong data for {} after corruption",
                        String::from_utf8_lossy(&kv.key)
                    );
                }
                assert_eq!(
                    all.len(),
                    expected.len(),
                    "silently lost keys after corruption"
                );
            }
        }
        if failure.is_none() {
            // Loads the whole event history.
            if let Err(e) = store.watch(b"", 1) {
                failure = Some(corruption_from_read("watch", e));
            }
        }
        // Whether shutdown succeeds on a damaged store does not matter; it
        // must not hang or panic.
        let _ = store.shutdown().await;
        match failure {
            Some(f) => Err(f),
            None => Ok(()),
        }
    });
    if let Err(msg) = opened {
        return Outcome::Detected(msg);
    }
    // Read every row of every column family through the sealed path.
    let cipher = keys::open_keyring(dir, false, None)
        .unwrap()
        .cipher()
        .unwrap();
    let db = match Db::open(&dir.join("db"), Arc::new(cipher)) {
        Ok(db) => db,
        Err(e) => {
            let msg = e.to_string();
            assert!(is_corruption_message(&msg), "raw open: {msg}");
            return Outcome::Detected(msg);
        }
    };
    for cf in ALL_CFS {
        for row in db.scan_sealed(cf, &[]).unwrap() {
            if let Err(e) = row {
                return Outcome::Detected(corruption_from_read(cf, e));
            }
        }
    }
    Outcome::Undetected
}

#[test]
fn flipped_sst_byte_is_detected() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let rt = runtime("flipped_sst_byte_is_detected");
    let fx = fixture(&rt);
    let flips_per_sst: usize = std::env::var("COFFER_FLIPS_PER_SST")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let db_dir_named =
        |msg: &str, copy: &Path| msg.contains(&copy.join("db").display().to_string());
    let mut undetected = Vec::new();
    for sst in ssts(&fx.dir) {
        let len = usize::try_from(fs::metadata(&sst).unwrap().len()).unwrap();
        for _ in 0..flips_per_sst {
            let offset = rng.gen_range(0..len);
            let mask = rng.gen_range(1..=255u8);
            let tmp = tempfile::tempdir().unwrap();
            let copy = tmp.path().join("data");
            copy_tree(&fx.dir, &copy);
            let target = copy.join("db").join(sst.file_name().unwrap());
            flip(&target, offset, mask);
            let name = sst.file_name().unwrap().to_string_lossy().into_owned();
            match open_and_read_all(&rt, &copy, &fx.expected) {
                Outcome::Detected(msg) => {
                    eprintln!("{name} byte {offset} ^ {mask:#x}: {msg}");
                    // RocksDB names the SST for a checksum mismatch; for damage
                    // found while parsing table properties it names only the
                    // database (and its MANIFEST).
                    assert!(
                        msg.contains(&name) || db_dir_named(&msg, &copy),
                        "seed {seed}: error for {name} byte {offset} names neither the file nor the database: {msg}"
                    );
                }
                Outcome::Undetected => undetected.push(format!("{name} byte {offset} ^ {mask:#x}")),
            }
        }
    }
    assert!(
        undetected.is_empty(),
        "seed {seed}: flipped bytes read back without an error: {undetected:?}"
    );
    assert_no_panics("flipped_sst_byte_is_detected");
}

#[test]
fn truncated_sst_is_a_clear_error() {
    let rt = runtime("truncated_sst_is_a_clear_error");
    let fx = fixture(&rt);
    for sst in ssts(&fx.dir) {
        let len = fs::metadata(&sst).unwrap().len();
        for new_len in [0, len / 2, len - 1] {
            let tmp = tempfile::tempdir().unwrap();
            let copy = tmp.path().join("data");
            copy_tree(&fx.dir, &copy);
            let target = copy.join("db").join(sst.file_name().unwrap());
            truncate(&target, new_len);
            let err = rt
                .block_on(Store::open(Config::new(&copy)))
                .map(|_| ())
                .expect_err("a truncated SST file opened");
            let msg = err.to_string();
            let name = sst.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                matches!(err, OpenError::Corruption { .. }),
                "truncating {name} to {new_len}: not a corruption error: {err:?}"
            );
            assert!(
                is_corruption_message(&msg) || msg.contains("size mismatch"),
                "{msg}"
            );
            assert!(msg.contains(&name), "error does not name {name}: {msg}");
        }
    }
    assert_no_panics("truncated_sst_is_a_clear_error");
}

#[test]
fn flipped_keyring_byte_is_corruption_naming_the_keyring() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let rt = runtime("flipped_keyring_byte_is_corruption_naming_the_keyring");
    let (_tmp, dir) = store_with_one_key(&rt);
    let ring = dir.join(keys::KEYS_DIR).join(keys::KEYRING_FILE);
    let original = fs::read(&ring).unwrap();
    // Every byte of the file, each with a random non-zero mask.
    for offset in 0..original.len() {
        let mask = rng.gen_range(1..=255u8);
        let mut bad = original.clone();
        bad[offset] ^= mask;
        fs::write(&ring, &bad).unwrap();
        let err = rt
            .block_on(Store::open(Config::new(&dir)))
            .map(|_| ())
            .expect_err("a damaged keyring opened");
        let msg = err.to_string();
        let ctx = format!("seed {seed}: keyring byte {offset} ^ {mask:#x}: {msg}");
        match &err {
            OpenError::Corruption { path, .. } => assert_eq!(path, &ring, "{ctx}"),
            other => panic!("{ctx}: unexpected error {other:?}"),
        }
        assert!(msg.contains(&ring.display().to_string()), "{ctx}");
    }
    // A truncated keyring, too.
    assert_truncations_are_corruption(
        &rt,
        &dir,
        &ring,
        &original,
        &[0, 4, original.len() / 2, original.len() - 1],
    );
    fs::write(&ring, &original).unwrap();
    rt.block_on(async {
        let store = Store::open(Config::new(&dir)).await.unwrap();
        assert_eq!(store.get(b"k").await.unwrap().as_deref(), Some(&b"v"[..]));
        store.shutdown().await.unwrap();
    });
    assert_no_panics("flipped_keyring_byte_is_corruption_naming_the_keyring");
}

#[test]
fn another_kek_is_wrong_key_and_a_truncated_kek_is_corruption() {
    let rt = runtime("another_kek_is_wrong_key_and_a_truncated_kek_is_corruption");
    let (_tmp, dir) = store_with_one_key(&rt);
    let keys_dir = dir.join(keys::KEYS_DIR);
    let kek = keys_dir.join(keys::KEK_FILE);
    let ring = keys_dir.join(keys::KEYRING_FILE);
    let original = fs::read(&kek).unwrap();

    let other = coffer_store::keyring::encode_kek_file(&SecretKey::random());
    fs::write(&kek, other.as_slice()).unwrap();
    let err = rt
        .block_on(Store::open(Config::new(&dir)))
        .map(|_| ())
        .expect_err("opened with another KEK");
    match &err {
        OpenError::WrongKey { path } => assert!(
            *path == kek || *path == ring,
            "WrongKey names {}",
            path.display()
        ),
        other => panic!("another KEK: expected WrongKey, got {other:?}"),
    }
    assert!(err.to_string().contains(&keys_dir.display().to_string()));

    assert_truncations_are_corruption(&rt, &dir, &kek, &original, &[0, 3, 5, original.len() - 1]);
    // Missing entirely.
    fs::remove_file(&kek).unwrap();
    let err = rt
        .block_on(Store::open(Config::new(&dir)))
        .map(|_| ())
        .expect_err("opened without a KEK");
    assert!(
        err.to_string().contains(&kek.display().to_string()),
        "missing KEK: {err}"
    );

    fs::write(&kek, &original).unwrap();
    fs::set_permissions(&kek, fs::Permissions::from_mode(0o600)).unwrap();
    rt.block_on(async {
        let store = Store::open(Config::new(&dir)).await.unwrap();
        assert_eq!(store.get(b"k").await.unwrap().as_deref(), Some(&b"v"[..]));
        store.shutdown().await.unwrap();
    });
    assert_no_panics("another_kek_is_wrong_key_and_a_truncated_kek_is_corruption");
}

/// Truncating `file` to each of `lens` makes the store refuse to open with
/// a corruption error naming `file`.
fn assert_truncations_are_corruption(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    file: &Path,
    original: &[u8],
    lens: &[usize],
) {
    for &len in lens {
        fs::write(file, &original[..len]).unwrap();
        let err = rt
            .block_on(Store::open(Config::new(dir)))
            .map(|_| ())
            .expect_err("opened with a truncated key file");
        assert!(
            matches!(&err, OpenError::Corruption { path, .. } if path == file),
            "{} truncated to {len}: {err:?}",
            file.display()
        );
        assert!(err.to_string().contains(&file.display().to_string()));
    }
}

/// A closed store holding one key, in `<tmp>/data`.
fn store_with_one_key(rt: &tokio::runtime::Runtime) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    rt.block_on(async {
        let store = Store::open(Config::new(&dir)).await.unwrap();
        store.put(b"k", b"v").await.unwrap();
        store.shutdown().await.unwrap();
    });
    (tmp, dir)
}

/// Regression (issue 5, fault 4): the keys directory and key files were
/// made private when created but never checked afterwards, and `open`
/// chmodded the directory its caller gave it. Now a key file or `keys/`
/// that others can reach is refused before anything is read from it, with
/// an error that names the path and the `chmod` that fixes it; the
/// caller's own directory keeps its mode.
#[test]
fn key_files_open_to_others_are_refused_and_the_callers_directory_is_left_alone() {
    let rt = runtime("key_files_open_to_others_are_refused");
    let (_tmp, dir) = store_with_one_key(&rt);
    let keys_dir = dir.join(keys::KEYS_DIR);
    for (path, wide, want) in [
        (keys_dir.clone(), 0o755, "chmod 700"),
        (keys_dir.join(keys::KEK_FILE), 0o644, "chmod 600"),
        (keys_dir.join(keys::KEYRING_FILE), 0o640, "chmod 600"),
        (keys_dir.join(keys::KEK_FILE), 0o602, "chmod 600"),
    ] {
        let good = mode(&path);
        fs::set_permissions(&path, fs::Permissions::from_mode(wide)).unwrap();
        let err = rt
            .block_on(Store::open(Config::new(&dir)))
            .map(|_| ())
            .expect_err("opened with key material open to others");
        assert!(
            matches!(&err, OpenError::Permissions { path: p, mode, .. } if *p == path && *mode == wide),
            "{}: {err:?}",
            path.display()
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("{want} {}", path.display())),
            "the error does not say how to fix it: {msg}"
        );
        assert_eq!(mode(&path), wide, "open changed the mode it refused");
        fs::set_permissions(&path, fs::Permissions::from_mode(good)).unwrap();
    }
    rt.block_on(async {
        let store = Store::open(Config::new(&dir)).await.unwrap();
        assert_eq!(store.get(b"k").await.unwrap().as_deref(), Some(&b"v"[..]));
        store.shutdown().await.unwrap();
    });

    // A directory the caller made keeps its mode; one Coffer makes is 0700.
    let tmp = tempfile::tempdir().unwrap();
    let theirs = tmp.path().join("theirs");
    fs::create_dir(&theirs).unwrap();
    fs::set_permissions(&theirs, fs::Permissions::from_mode(0o750)).unwrap();
    let ours = tmp.path().join("ours");
    rt.block_on(async {
        for d in [&theirs, &ours] {
            let store = Store::open(Config::new(d)).await.unwrap();
            store.put(b"k", b"v").await.unwrap();
            store.shutdown().await.unwrap();
        }
    });
    assert_eq!(mode(&theirs), 0o750, "open chmodded the caller's directory");
    assert_eq!(mode(&ours), 0o700);
    assert_eq!(mode(&theirs.join(keys::KEYS_DIR)), 0o700);
    assert_no_panics("key_files_open_to_others_are_refused");
}

/// A local record (a node's TLS key) opens only for its purpose, on a
/// store with the same keyring, and unchanged; it is not its plaintext.
#[test]
fn local_records_open_only_for_their_purpose_and_keyring() {
    let rt = runtime("local_records");
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let other_dir = tempfile::tempdir().unwrap();
        let store = Store::open(Config::new(dir.path())).await.unwrap();
        let other = Store::open(Config::new(other_dir.path())).await.unwrap();
        let secret = b"-----BEGIN PRIVATE KEY----- CANARY-local".to_vec();
        let sealed = store.seal_local("node-key", &secret).unwrap();
        assert!(find(&sealed, b"CANARY").is_none());
        assert_eq!(
            &*store.open_local("node-key", &sealed).unwrap(),
            &secret[..]
        );
        assert!(store.open_local("other-purpose", &sealed).is_err());
        assert!(other.open_local("node-key", &sealed).is_err());
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(
            store.open_local("node-key", &flipped),
            Err(coffer_store::Error::Corruption { .. })
        ));
        store.shutdown().await.unwrap();
        let store = Store::open(Config::new(dir.path())).await.unwrap();
        assert_eq!(
            &*store.open_local("node-key", &sealed).unwrap(),
            &secret[..]
        );
        store.shutdown().await.unwrap();
        other.shutdown().await.unwrap();
    });
    assert_no_panics("local_records");
}

/// A node with no store (a worker) seals its local records under keys of
/// its own; a store opened later on the same directory uses the same keys
/// and opens them.
#[test]
fn local_keys_without_a_store_are_the_later_stores_keys() {
    let rt = runtime("local_keys_alone");
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let node_dir = dir.path().join("node");
        let keys = coffer_store::LocalKeys::open(&node_dir).unwrap();
        assert_eq!(mode(&node_dir), 0o700);
        assert_eq!(mode(&node_dir.join(keys::KEYS_DIR)), 0o700);
        assert!(
            !node_dir.join("db").exists(),
            "no store without Store::open"
        );
        let secret = b"CANARY-worker-key".to_vec();
        let sealed = keys.seal("node-key", &secret).unwrap();
        assert!(find(&sealed, b"CANARY").is_none());
        let again = coffer_store::LocalKeys::open(&node_dir).unwrap();
        assert_eq!(
            &*again.open_sealed("node-key", &sealed).unwrap(),
            &secret[..]
        );
        assert!(again.open_sealed("other-purpose", &sealed).is_err());
        let store = Store::open(Config::new(&node_dir)).await.unwrap();
        assert_eq!(
            &*store.open_local("node-key", &sealed).unwrap(),
            &secret[..]
        );
        store.shutdown().await.unwrap();
    });
    assert_no_panics("local_keys_alone");
}
