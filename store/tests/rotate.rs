//! Online data-key rotation: new writes under the new key at once, older
//! records sealed again in the background while writers go on, the old key
//! deleted once nothing refers to it, and an interrupted rotation resumed
//! by the next open.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_store::{
    key_census, Config, Consistency, Error, KeyId, KeyStatus, LocalKeys, LocalResealer, PutOptions,
    RekeyPhase, Store,
};

fn config(dir: &std::path::Path) -> Config {
    let mut c = Config::new(dir);
    // Snapshots and log purges happen during the test too.
    c.snapshot_after_logs = 500;
    c.logs_kept_after_snapshot = 100;
    c
}

/// How long any wait on a store's key status may take.
const DEADLINE: Duration = Duration::from_secs(120);
/// How often the status is looked at.
const POLL: Duration = Duration::from_millis(20);

/// Polls the key status until `until` holds (a failed rotation, or
/// [`DEADLINE`], fails the test, naming `what`); the status that held.
async fn poll_status(store: &Store, what: &str, until: impl Fn(&KeyStatus) -> bool) -> KeyStatus {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let st = store.key_status();
        assert_ne!(st.phase, RekeyPhase::Failed, "rotation failed: {st:?}");
        if until(&st) {
            return st;
        }
        assert!(Instant::now() < deadline, "{what}: not in time: {st:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// Whether the status is that of a finished rotation: one key, idle.
fn done(st: &KeyStatus) -> bool {
    st.keys.len() == 1 && st.phase == RekeyPhase::Idle
}

fn only(counts: &BTreeMap<KeyId, u64>, key: KeyId) {
    assert!(
        counts.keys().all(|k| *k == key) && counts.get(&key).is_some_and(|n| *n > 0),
        "records under other keys than {key}: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_writers_reseals_everything_and_deletes_the_old_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    let first = store.key_status().active.unwrap();
    let lease = store.lease_grant(Duration::from_secs(3600)).await.unwrap();
    let mut expected = BTreeMap::new();
    for i in 0..2_000u32 {
        let k = format!("key/{i:05}");
        let v = format!("value-{i}");
        let opts = PutOptions {
            lease: if i % 10 == 0 { lease.id } else { 0 },
            ..Default::default()
        };
        store
            .put_with(k.as_bytes(), v.as_bytes(), opts)
            .await
            .unwrap();
        expected.insert(k, v);
    }
    for i in (0..2_000u32).step_by(7) {
        let k = format!("key/{i:05}");
        store.delete(k.as_bytes()).await.unwrap();
        expected.remove(&k);
    }
    store.trigger_snapshot().await.unwrap();
    let local = store.local_keys().seal("test", b"local secret").unwrap();

    // Slow enough that writers overlap the re-encryption.
    let new = store.rotate_key().await.unwrap();
    assert_ne!(new, first);
    assert_eq!(store.key_status().active, Some(new));
    assert!(matches!(
        store.rotate_key().await,
        Err(Error::KeyRotationInProgress(_))
    ));
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut written = BTreeMap::new();
            for i in 0..1_500u32 {
                let k = format!("during/{i:05}");
                let v = format!("v{i}");
                store.put(k.as_bytes(), v.as_bytes()).await.unwrap();
                written.insert(k, v);
            }
            written
        })
    };
    expected.extend(writer.await.unwrap());
    let status = poll_status(&store, "the rotation", done).await;
    assert_eq!(status.keys, vec![new]);
    assert!(status.resealed > 0, "{status:?}");
    only(&store.key_census().await.unwrap(), new);
    // The old key is gone: a record sealed under it no longer opens.
    assert!(store.local_keys().open_sealed("test", &local).is_err());

    let all = store
        .range(coffer_store::Range::all(), Consistency::Linearizable)
        .await
        .unwrap();
    let got: BTreeMap<String, String> = all
        .kvs
        .iter()
        .map(|kv| {
            (
                String::from_utf8(kv.key.clone()).unwrap(),
                String::from_utf8(kv.value.to_vec()).unwrap(),
            )
        })
        .collect();
    assert_eq!(got, expected);
    let leased = store
        .lease_keys(lease.id, Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(
        leased.len(),
        (0..2_000u32).filter(|i| i % 10 == 0 && i % 7 != 0).count()
    );

    // Reopened, the directory holds the new key alone and every record.
    store.shutdown().await.unwrap();
    only(&key_census(dir.path()).unwrap(), new);
    let store = Store::open(config(dir.path())).await.unwrap();
    assert_eq!(store.key_status().keys, vec![new]);
    for (k, v) in &expected {
        assert_eq!(
            store.get(k.as_bytes()).await.unwrap().as_deref(),
            Some(v.as_bytes())
        );
    }
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_rotation_resumes_on_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.rekey_records_per_sec = 200;
    let store = Store::open(cfg.clone()).await.unwrap();
    for i in 0..1_000u32 {
        store
            .put(format!("k{i}").as_bytes(), b"value")
            .await
            .unwrap();
    }
    let old = store.key_status().active.unwrap();
    let new = store.rotate_key().await.unwrap();
    // Stopped part way: both keys stay in the keyring.
    poll_status(&store, "100 rows re-encrypted", |st| st.resealed >= 100).await;
    store.shutdown().await.unwrap();
    let counts = key_census(dir.path()).unwrap();
    assert!(
        counts.contains_key(&old) && counts.contains_key(&new),
        "{counts:?}"
    );

    cfg.rekey_records_per_sec = 1_000_000;
    let store = Store::open(cfg).await.unwrap();
    assert_eq!(store.key_status().keys, vec![old, new]);
    poll_status(&store, "the resumed rotation", done).await;
    for i in 0..1_000u32 {
        assert_eq!(
            store
                .get(format!("k{i}").as_bytes())
                .await
                .unwrap()
                .as_deref(),
            Some(&b"value"[..])
        );
    }
    store.shutdown().await.unwrap();
    only(&key_census(dir.path()).unwrap(), new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_files_are_resealed_before_the_old_key_goes_and_policy_rotates() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("local.sealed");
    let mut cfg = config(&dir.path().join("store"));
    let path = file.clone();
    cfg.local_resealer = Some(LocalResealer(Arc::new(move |keys: &LocalKeys| {
        let record = std::fs::read(&path).unwrap();
        if let Some(again) = keys.reseal("test", &record)? {
            std::fs::write(&path, again).unwrap();
        }
        Ok(())
    })));
    // By policy: after 300 sealed records.
    cfg.rotate_key_after_records = Some(300);
    let store = Store::open(cfg).await.unwrap();
    let first = store.key_status().active.unwrap();
    std::fs::write(&file, store.local_keys().seal("test", b"tls key").unwrap()).unwrap();
    for i in 0..400u32 {
        store.put(format!("k{i}").as_bytes(), b"v").await.unwrap();
    }
    let status = poll_status(&store, "a rotation by policy", |st| {
        st.active != Some(first) && done(st)
    })
    .await;
    let record = std::fs::read(&file).unwrap();
    assert_eq!(
        store
            .local_keys()
            .open_sealed("test", &record)
            .unwrap()
            .as_slice(),
        b"tls key"
    );
    assert_eq!(status.keys, vec![status.active.unwrap()]);
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_older_than_the_policy_allows_is_rotated() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.rotate_key_after = Some(Duration::from_secs(2));
    let store = Store::open(cfg).await.unwrap();
    let first = store.key_status();
    assert!(first.active_created.is_some());
    store.put(b"k", b"v").await.unwrap();
    let st = poll_status(&store, "a rotation by age", |st| {
        st.active != first.active && done(st)
    })
    .await;
    assert!(st.active_created >= first.active_created);
    assert_eq!(store.get(b"k").await.unwrap().as_deref(), Some(&b"v"[..]));
    store.shutdown().await.unwrap();
}
