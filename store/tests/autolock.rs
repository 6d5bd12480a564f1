//! Autolock at the store: a data directory sealed under a cluster unlock
//! key opens only with it, holds no key-encryption key and no trace of the
//! unlock key on disk, and can be sealed anew (autolock on, a new unlock
//! key, autolock off) while its data and its local sealed files stay
//! readable.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;

use support::files_under;

use coffer_store::{is_autolocked, reseal_keyring, Config, LocalKeys, OpenError, Store, UnlockKey};

fn config(dir: &Path, key: Option<&UnlockKey>) -> Config {
    let mut c = Config::new(dir);
    c.unlock_key = key.cloned();
    c
}

async fn open(dir: &Path, key: Option<&UnlockKey>) -> Result<Store, OpenError> {
    Store::open(config(dir, key)).await
}

/// Neither the unlock key's text nor its hex digits nor its raw bytes
/// are in any file under `dir`.
fn assert_key_nowhere(dir: &Path, key: &UnlockKey) {
    let text = key.to_text();
    let hex = &text[8..];
    let raw: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    for file in files_under(dir) {
        let bytes = std::fs::read(&file).unwrap();
        for needle in [hex.as_bytes(), &raw[..]] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} holds the unlock key",
                file.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_autolocked_store_opens_only_with_its_unlock_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let key = UnlockKey::generate();

    let store = open(dir, Some(&key)).await.unwrap();
    store
        .put(b"app/db-password", b"CANARY-autolock")
        .await
        .unwrap();
    let sealed = store.local_keys().seal("node-key", b"TLS-KEY").unwrap();
    store.shutdown().await.unwrap();
    assert!(is_autolocked(dir).unwrap());
    assert!(
        !dir.join("keys/kek").exists(),
        "an autolocked directory keeps a KEK"
    );
    assert_key_nowhere(dir, &key);

    match open(dir, None).await {
        Err(e @ OpenError::Locked { .. }) => {
            assert!(e.to_string().contains("coffer unlock"), "{e}")
        }
        other => panic!("opened without the unlock key: {other:?}"),
    }
    let wrong = UnlockKey::generate();
    match open(dir, Some(&wrong)).await {
        Err(e @ OpenError::WrongUnlockKey { .. }) => {
            assert!(!e.to_string().contains(&wrong.to_text()[8..]), "{e}");
        }
        other => panic!("opened with a wrong unlock key: {other:?}"),
    }
    assert!(matches!(
        LocalKeys::open(dir),
        Err(OpenError::Locked { .. })
    ));

    let store = open(dir, Some(&key)).await.unwrap();
    assert_eq!(
        store.get(b"app/db-password").await.unwrap().as_deref(),
        Some(&b"CANARY-autolock"[..])
    );
    store.shutdown().await.unwrap();
    let local = LocalKeys::open_with(dir, Some(&key)).unwrap();
    assert_eq!(
        &local.open_sealed("node-key", &sealed).unwrap()[..],
        b"TLS-KEY"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_is_sealed_anew_on_and_off_and_under_a_new_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let store = open(dir, None).await.unwrap();
    store.put(b"k", b"v1").await.unwrap();
    let sealed = store.local_keys().seal("node-key", b"TLS-KEY").unwrap();

    // Autolock on while the store runs: it keeps serving (same data keys).
    let first = UnlockKey::generate();
    reseal_keyring(dir, None, Some(&first)).unwrap();
    assert!(is_autolocked(dir).unwrap());
    assert!(!dir.join("keys/kek").exists());
    store.put(b"k", b"v2").await.unwrap();
    store.shutdown().await.unwrap();
    assert!(matches!(
        open(dir, None).await,
        Err(OpenError::Locked { .. })
    ));

    // A new unlock key: the old one no longer opens it.
    let second = UnlockKey::generate();
    assert!(matches!(
        reseal_keyring(dir, Some(&second), Some(&first)),
        Err(OpenError::WrongUnlockKey { .. })
    ));
    reseal_keyring(dir, Some(&first), Some(&second)).unwrap();
    assert!(matches!(
        open(dir, Some(&first)).await,
        Err(OpenError::WrongUnlockKey { .. })
    ));
    let store = open(dir, Some(&second)).await.unwrap();
    assert_eq!(store.get(b"k").await.unwrap().as_deref(), Some(&b"v2"[..]));
    store.shutdown().await.unwrap();
    assert_key_nowhere(dir, &first);
    assert_key_nowhere(dir, &second);

    // Autolock off: a KEK in keys/ again, and no key needed.
    reseal_keyring(dir, Some(&second), None).unwrap();
    assert!(!is_autolocked(dir).unwrap());
    assert!(dir.join("keys/kek").exists());
    let store = open(dir, None).await.unwrap();
    assert_eq!(store.get(b"k").await.unwrap().as_deref(), Some(&b"v2"[..]));
    store.shutdown().await.unwrap();
    let local = LocalKeys::open(dir).unwrap();
    assert_eq!(
        &local.open_sealed("node-key", &sealed).unwrap()[..],
        b"TLS-KEY"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kek_left_by_an_interrupted_autolock_is_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let store = open(dir, None).await.unwrap();
    store.shutdown().await.unwrap();
    let kek = std::fs::read(dir.join("keys/kek")).unwrap();
    let key = UnlockKey::generate();
    reseal_keyring(dir, None, Some(&key)).unwrap();
    // As if the process died between the keyring's rewrite and the KEK's
    // removal.
    std::fs::write(dir.join("keys/kek"), &kek).unwrap();
    let store = open(dir, Some(&key)).await.unwrap();
    store.shutdown().await.unwrap();
    assert!(!dir.join("keys/kek").exists());
}
