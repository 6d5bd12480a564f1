//! Engine tests that need to see inside a running store: what a stalled
//! watcher pins, how history is paged, and what a damaged row reads as.

use crate::config::Config;
use crate::engine::db::CF_KV;
use crate::engine::state_machine::NOTICES_MAX;
use crate::engine::watch::HISTORY_PAGE_EVENTS;
use crate::error::Error;
use crate::event::EventKind;
use crate::Store;

async fn open(dir: &std::path::Path) -> Store {
    Store::open(Config::new(dir)).await.unwrap()
}

/// Regression (issue 5, fault 2): a watcher that stops polling pins at
/// most `NOTICES_MAX` live notices (it used to be 1024 batches' worth),
/// and when it polls again it gets every change, in order, from disk.
#[tokio::test]
async fn a_stalled_watcher_pins_a_bounded_backlog_and_misses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let mut watch = store.watch(b"k/", 0).unwrap();
    let start = store.revision().unwrap();
    let writes = NOTICES_MAX * 4;
    for i in 0..writes {
        store
            .put(format!("k/{i:04}").as_bytes(), b"v")
            .await
            .unwrap();
    }
    let queued = store.shared().notices.len();
    assert!(
        queued <= NOTICES_MAX,
        "{queued} notices pinned by a stalled watcher"
    );
    for i in 0..writes {
        let e = watch.next().await.unwrap();
        assert_eq!(e.revision, start + 1 + i as u64);
        assert_eq!(e.kind, EventKind::Put);
        assert_eq!(e.kv.key, format!("k/{i:04}").as_bytes());
    }
    store.shutdown().await.unwrap();
}

/// Regression (issue 5, fault 2): history is read from disk in bounded
/// pages (it used to be read whole, into one `Vec`, under the state lock),
/// and a watch from the start of a long history still sees all of it.
#[tokio::test]
async fn history_is_read_in_bounded_pages() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let first = store.revision().unwrap() + 1;
    let writes = HISTORY_PAGE_EVENTS * 2 + 10;
    for chunk in 0..writes / 100 + 1 {
        let mut txn = crate::Txn::default();
        for i in chunk * 100..((chunk + 1) * 100).min(writes) {
            txn.success.push(crate::Op::Put {
                key: format!("h/{i:05}").into_bytes(),
                value: crate::Value(b"v".to_vec()),
                lease: 0,
            });
        }
        store.txn(txn).await.unwrap();
    }
    let last = store.revision().unwrap();
    let shared = store.shared().clone();
    let page = tokio::task::spawn_blocking(move || shared.history_page(first, last, b"h/"))
        .await
        .unwrap()
        .unwrap();
    assert!(
        page.events.len() <= HISTORY_PAGE_EVENTS + 100,
        "{} events",
        page.events.len()
    );
    assert!(
        page.covered_upto < last,
        "one page covered the whole history"
    );
    let mut watch = store.watch(b"h/", first).unwrap();
    for i in 0..writes {
        let e = watch.next().await.unwrap();
        assert_eq!(e.kv.key, format!("h/{i:05}").as_bytes(), "event {i}");
    }
    store.shutdown().await.unwrap();
}

/// Regression (issue 5, fault 3): a key the index holds whose row is
/// missing is reported as corruption by `get_kv` and `list` (they used to
/// answer "absent" and skip it).
#[tokio::test]
async fn a_missing_row_is_corruption_not_an_absent_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    store.put(b"a", b"1").await.unwrap();
    store.put(b"b", b"2").await.unwrap();
    let db = &store.shared().db;
    let row = crate::engine::state_machine::row_key(&db.cipher.name_hash(b"a"), 1);
    db.db.delete_cf(db.cf(CF_KV).unwrap(), row).unwrap();
    let got = store.get_kv(b"a", crate::Consistency::Stale).await;
    assert!(matches!(got, Err(Error::Corruption { .. })), "{got:?}");
    let listed = store.list(b"", crate::Consistency::Stale).await;
    assert!(
        matches!(listed, Err(Error::Corruption { .. })),
        "{listed:?}"
    );
    // An intact key still reads.
    let b = store.get_kv(b"b", crate::Consistency::Stale).await.unwrap();
    assert_eq!(b.unwrap().value, b"2");
    store.shutdown().await.unwrap();
}
