//! The blocking facade, from plain threads with no async runtime in sight.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use coffer_store::blocking::Store;
use coffer_store::{Config, Consistency, DeleteOptions, Error, EventKind, OpenError, Range};

#[test]
fn the_blocking_store_does_what_the_async_one_does() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(Config::new(dir.path())).unwrap();
    let rev = store.put(b"app/a", b"1").unwrap();
    assert_eq!(store.get(b"app/a").unwrap().as_deref(), Some(&b"1"[..]));
    let mut watch = store.watch(b"app/", rev + 1).unwrap();

    // Writers on other threads, each with its own clone.
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..10 {
                    store.put(format!("app/{t}-{i}").as_bytes(), b"x").unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let seen: Vec<_> = watch.by_ref().take(40).map(|e| e.unwrap()).collect();
    assert!(seen.iter().all(|e| e.kind == EventKind::Put));
    assert!(seen.windows(2).all(|w| w[0].revision < w[1].revision));

    let listed = store
        .range(
            Range::prefix(b"app/").count_only(),
            Consistency::Linearizable,
        )
        .unwrap();
    assert_eq!(listed.count, 41);
    let deleted = store
        .delete_range(Range::prefix(b"app/"), DeleteOptions::default())
        .unwrap();
    assert_eq!(deleted.deleted, 41);
    assert_eq!(watch.next_event().unwrap().revision, deleted.revision);
    store.shutdown().unwrap();
    // What was committed before the shutdown is still delivered (all 41
    // deletes share one revision), then the watch ends with its store.
    for _ in 0..40 {
        assert_eq!(watch.next().unwrap().unwrap().kind, EventKind::Delete);
    }
    assert!(matches!(watch.next(), Some(Err(Error::Stopped))));
    assert!(watch.next().is_none());

    let again = Store::open(Config::new(dir.path())).unwrap();
    assert!(again
        .list(b"app/", Consistency::Linearizable)
        .unwrap()
        .is_empty());
    again.shutdown().unwrap();
}

#[test]
fn inside_an_async_runtime_it_refuses_instead_of_blocking_a_worker() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(Config::new(dir.path())).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        match store.put(b"k", b"v") {
            Err(Error::InvalidArgument(m)) => assert!(m.contains("coffer_store::Store")),
            other => panic!("{other:?}"),
        }
        let other = tempfile::tempdir().unwrap();
        assert!(matches!(
            Store::open(Config::new(other.path())),
            Err(OpenError::Config(_))
        ));
        // The async store underneath works there.
        let put = tokio::time::timeout(Duration::from_secs(10), store.as_async().put(b"k", b"v"));
        put.await.unwrap().unwrap();
    });
    assert_eq!(store.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    store.shutdown().unwrap();
}

/// Leases from plain threads: a key on a lease nobody keeps alive goes on
/// its own (the facade's runtime counts it down), a kept key and a past
/// revision read back.
#[test]
fn leases_and_past_reads_without_a_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(Config::new(dir.path())).unwrap();
    let short = store.lease_grant(Duration::from_secs(1)).unwrap();
    let kept = store.lease_grant(Duration::from_secs(3600)).unwrap();
    let on = |lease: u64| coffer_store::PutOptions {
        lease,
        ..Default::default()
    };
    let mut gone = store.watch(b"short", 0).unwrap();
    let first = store
        .put_with(b"short", b"v", on(short.id))
        .unwrap()
        .revision;
    store.put_with(b"kept", b"v", on(kept.id)).unwrap();
    assert_eq!(store.lease_keep_alive(kept.id).unwrap(), kept.ttl);
    assert_eq!(
        store.lease_keys(kept.id, Consistency::Stale).unwrap(),
        vec![b"kept".to_vec()]
    );
    // The put, then (a second later) the expiry's delete, under a deadline.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let kinds = [gone.next_event(), gone.next_event()].map(|e| e.map(|e| e.kind));
        let _ = tx.send(kinds);
    });
    let kinds = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the lease never expired");
    assert!(matches!(kinds, [Ok(EventKind::Put), Ok(EventKind::Delete)]));
    let then = store
        .range(
            Range::prefix(b"short").at_revision(first),
            Consistency::Linearizable,
        )
        .unwrap();
    assert_eq!(then.kvs.len(), 1);
    let leases = store.leases(Consistency::Linearizable).unwrap();
    assert_eq!(
        leases.iter().map(|l| l.id).collect::<Vec<_>>(),
        vec![kept.id]
    );
    assert_eq!(store.lease_revoke(kept.id).unwrap().deleted, 1);
    store.shutdown().unwrap();
}
