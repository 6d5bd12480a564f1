//! The public API's edges: watches (history, live, lag, compaction), limits
//! and quota, validation, and stale versus linearizable reads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use coffer_store::{
    Check, CmpOp, Compare, Config, Consistency, Error, EventKind, Op, OpResult, Store, Txn, Value,
    MAX_REQUEST_BYTES,
};

async fn open(dir: &std::path::Path) -> Store {
    Store::open(Config::new(dir)).await.unwrap()
}

async fn next_event(w: &mut coffer_store::Watch) -> coffer_store::Event {
    tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("watch stalled")
        .unwrap()
}

#[tokio::test]
async fn watch_replays_history_then_follows_live_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    store.put(b"app/a", b"1").await.unwrap(); // rev 1
    store.put(b"other", b"x").await.unwrap(); // rev 2
    store.put(b"app/b", b"2").await.unwrap(); // rev 3
    store.delete(b"app/a").await.unwrap(); // rev 4

    let mut w = store.watch(b"app/", 1).unwrap();
    let e = next_event(&mut w).await;
    assert_eq!(
        (
            e.revision,
            e.kind,
            e.kv.key.as_slice(),
            e.kv.value.as_slice()
        ),
        (1, EventKind::Put, &b"app/a"[..], &b"1"[..])
    );
    assert_eq!(next_event(&mut w).await.revision, 3);
    let e = next_event(&mut w).await;
    assert_eq!((e.revision, e.kind), (4, EventKind::Delete));

    // Live: a transaction's writes arrive together, at one revision.
    store
        .txn(Txn {
            compares: vec![],
            success: vec![
                Op::Put {
                    key: b"app/c".to_vec(),
                    value: Value(b"3".to_vec()),
                    lease: 0,
                },
                Op::Put {
                    key: b"app/d".to_vec(),
                    value: Value(b"4".to_vec()),
                    lease: 0,
                },
            ],
            failure: vec![],
        })
        .await
        .unwrap();
    let (c, d) = (next_event(&mut w).await, next_event(&mut w).await);
    assert_eq!((c.revision, d.revision), (5, 5));
    assert_eq!(
        (c.kv.key.as_slice(), d.kv.key.as_slice()),
        (&b"app/c"[..], &b"app/d"[..])
    );
    assert_eq!(c.kv.meta.create_revision, 5);

    // From 0: only what happens after the watch starts.
    let mut fresh = store.watch(b"", 0).unwrap();
    store.put(b"z", b"z").await.unwrap();
    assert_eq!(next_event(&mut fresh).await.revision, 6);
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_lagging_watch_recovers_from_history_without_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let mut w = store.watch(b"k", 1).unwrap();
    // More changes than the live channel buffers (1,024 notices) while the
    // watch is not polled: it must fall back to history and still deliver
    // every revision exactly once, in order.
    for i in 0..1500u32 {
        store
            .put(format!("k{}", i % 7).as_bytes(), &i.to_be_bytes())
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    while seen.last() != Some(&1500) {
        let e = next_event(&mut w).await;
        assert_eq!(
            e.kv.value,
            u32::try_from(e.revision - 1).unwrap().to_be_bytes()
        );
        seen.push(e.revision);
    }
    assert_eq!(seen, (1..=1500).collect::<Vec<u64>>());
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn compacted_history_is_reported_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(dir.path());
    cfg.watch_history_revisions = 100;
    let store = Store::open(cfg).await.unwrap();
    let mut lagging = store.watch(b"k", 1).unwrap();
    for i in 0..1500u32 {
        store
            .put(format!("k{}", i % 7).as_bytes(), &i.to_be_bytes())
            .await
            .unwrap();
    }
    // History is trimmed in steps of 1,024 revisions past the last 100.
    match store.watch(b"k", 1) {
        Err(Error::Compacted {
            requested: 1,
            oldest,
        }) => assert_eq!(oldest, 1025),
        other => panic!("expected Compacted, got {other:?}"),
    }
    // The watch that fell behind is told, rather than silently skipping.
    match tokio::time::timeout(Duration::from_secs(10), lagging.next())
        .await
        .unwrap()
    {
        Err(Error::Compacted { oldest, .. }) => assert_eq!(oldest, 1025),
        other => panic!("expected Compacted, got {other:?}"),
    }
    // Recent history is still there, and survives a restart.
    let mut recent = store.watch(b"k", 1490).unwrap();
    assert_eq!(next_event(&mut recent).await.revision, 1490);
    drop(recent);
    drop(lagging);
    store.shutdown().await.unwrap();
    let store = open(dir.path()).await;
    let mut recent = store.watch(b"k", 1495).unwrap();
    assert_eq!(next_event(&mut recent).await.revision, 1495);
    assert!(matches!(
        store.watch(b"k", 1000),
        Err(Error::Compacted { .. })
    ));
    drop(recent);
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn limits_fail_cleanly_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(Config::new(dir.path()).quota_bytes(64 * 1024))
        .await
        .unwrap();
    store.put(b"small", b"v").await.unwrap();

    let huge = vec![7u8; MAX_REQUEST_BYTES + 1];
    match store.put(b"big", &huge).await {
        Err(Error::RequestTooLarge { limit, .. }) => assert_eq!(limit, MAX_REQUEST_BYTES),
        other => panic!("expected RequestTooLarge, got {other:?}"),
    }
    let chunk = vec![1u8; 40 * 1024];
    store.put(b"a", &chunk).await.unwrap();
    match store.put(b"b", &chunk).await {
        Err(e @ Error::QuotaExceeded { .. }) => {
            assert!(!e.is_retryable());
            assert!(e.to_string().contains("quota"));
        }
        other => panic!("expected QuotaExceeded, got {other:?}"),
    }
    assert_eq!(store.get(b"b").await.unwrap(), None);
    assert_eq!(
        store.revision().unwrap(),
        2,
        "a rejected write takes no revision"
    );
    // Deletes always pass; then the write fits.
    assert!(store.delete(b"a").await.unwrap().deleted);
    store.put(b"b", &chunk).await.unwrap();

    for bad in [&b""[..], &vec![b'k'; 9 * 1024][..]] {
        assert!(matches!(
            store.put(bad, b"v").await,
            Err(Error::InvalidArgument(_))
        ));
    }
    let too_many = Txn {
        compares: vec![],
        success: vec![Op::Get { key: b"k".to_vec() }; 1025],
        failure: vec![],
    };
    assert!(matches!(
        store.txn(too_many).await,
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(
        store.get(b"small").await.unwrap().as_deref(),
        Some(&b"v"[..])
    );
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn txn_compares_on_revision_version_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let rev = store.put(b"cfg", b"v1").await.unwrap();
    let kv = store
        .get_kv(b"cfg", Consistency::Stale)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            kv.meta.create_revision,
            kv.meta.mod_revision,
            kv.meta.version
        ),
        (rev, rev, 1)
    );

    let swap = |check: Check| Txn {
        compares: vec![Compare {
            key: b"cfg".to_vec(),
            check,
        }],
        success: vec![
            Op::Put {
                key: b"cfg".to_vec(),
                value: Value(b"v2".to_vec()),
                lease: 0,
            },
            Op::Get {
                key: b"cfg".to_vec(),
            },
        ],
        failure: vec![Op::Get {
            key: b"cfg".to_vec(),
        }],
    };
    let stale = store
        .txn(swap(Check::ModRevision(CmpOp::Equal, rev + 100)))
        .await
        .unwrap();
    assert!(!stale.succeeded);
    assert_eq!(stale.revision, rev);
    let won = store
        .txn(swap(Check::ModRevision(CmpOp::Equal, rev)))
        .await
        .unwrap();
    assert!(won.succeeded);
    assert_eq!(won.revision, rev + 1);
    match &won.results[1] {
        OpResult::Get(Some(kv)) => {
            assert_eq!(kv.value, b"v2");
            assert_eq!(kv.meta.version, 2);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        store
            .txn(swap(Check::Version(CmpOp::Equal, 2)))
            .await
            .unwrap()
            .succeeded
    );
    assert!(
        store
            .txn(swap(Check::Value(CmpOp::Equal, Value(b"v2".to_vec()))))
            .await
            .unwrap()
            .succeeded
    );
    assert!(!store.txn(swap(Check::Absent)).await.unwrap().succeeded);
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let second = Store::open(Config::new(dir.path())).await;
    let err = second.expect_err("two stores on one directory");
    assert!(
        err.to_string().to_lowercase().contains("lock"),
        "unclear error: {err}"
    );
    store.shutdown().await.unwrap();
    // Released on shutdown: it opens again.
    open(dir.path()).await.shutdown().await.unwrap();
}

/// Group commit: concurrent writers share Raft entries (one fsync each),
/// and every writer still gets its own revision and answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_share_log_entries() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let before = settled_log_index(&store).await;
    let writers = 256u32;
    let mut tasks = Vec::new();
    for i in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .put(format!("w{i}").as_bytes(), &i.to_be_bytes())
                .await
                .unwrap()
        }));
    }
    let mut revisions = Vec::new();
    for t in tasks {
        revisions.push(t.await.unwrap());
    }
    revisions.sort_unstable();
    assert_eq!(revisions, (1..=u64::from(writers)).collect::<Vec<_>>());
    let entries = settled_log_index(&store).await - before;
    assert!(
        entries <= u64::from(writers) / 2,
        "{writers} concurrent puts took {entries} log entries: writes are not being batched"
    );
    for i in 0..writers {
        let v = store.get(format!("w{i}").as_bytes()).await.unwrap();
        assert_eq!(v.as_deref(), Some(&i.to_be_bytes()[..]));
    }
    store.shutdown().await.unwrap();
}

/// The last log index once everything in the log has been applied.
async fn settled_log_index(store: &Store) -> u64 {
    let m = store
        .raft()
        .wait(Some(Duration::from_secs(10)))
        .metrics(
            |m| m.last_log_index.is_some() && m.last_applied.map(|l| l.index) == m.last_log_index,
            "log applied",
        )
        .await
        .unwrap();
    m.last_log_index.unwrap()
}

fn keys_of(kvs: &[coffer_store::KeyValue]) -> Vec<&[u8]> {
    kvs.iter().map(|kv| kv.key.as_slice()).collect()
}

/// Ranges as etcd serves them: bounds or a prefix, a limit with a
/// continuation that pages through every key exactly once, keys-only and
/// count-only modes, and the revision the read was served at.
#[tokio::test]
async fn ranges_page_with_limits_and_report_their_revision() {
    use coffer_store::Range;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let all: [&[u8]; 7] = [b"a", b"ab", b"abc", b"a\xff", b"b", b"ba", b"c"];
    for (i, k) in all.iter().enumerate() {
        store.put(k, format!("v{i}").as_bytes()).await.unwrap();
    }
    let lin = Consistency::Linearizable;
    let whole = store.range(Range::all(), lin).await.unwrap();
    assert_eq!(keys_of(&whole.kvs), all.to_vec());
    assert_eq!(
        (whole.count, whole.more, whole.next.clone()),
        (7, false, None)
    );
    assert_eq!(whole.revision, store.revision().unwrap());

    let a = store.range(Range::prefix(b"a"), lin).await.unwrap();
    assert_eq!(keys_of(&a.kvs), vec![&b"a"[..], b"ab", b"abc", b"a\xff"]);
    let between = store.range(Range::between(b"ab", b"b"), lin).await.unwrap();
    assert_eq!(keys_of(&between.kvs), vec![&b"ab"[..], b"abc", b"a\xff"]);

    // Pages of 3 through everything: each key once, in order.
    let mut paged = Vec::new();
    let mut range = Range::all().limit(3);
    loop {
        let page = store.range(range.clone(), lin).await.unwrap();
        assert!(page.kvs.len() <= 3);
        assert_eq!(page.more, page.next.is_some());
        paged.extend(page.kvs.iter().map(|kv| kv.key.clone()));
        match page.next {
            Some(next) => range = range.from_key(&next),
            None => break,
        }
    }
    assert_eq!(paged, all.iter().map(|k| k.to_vec()).collect::<Vec<_>>());
    let first = store.range(Range::all().limit(3), lin).await.unwrap();
    assert_eq!((first.count, first.more), (7, true));
    assert_eq!(first.next.as_deref(), Some(&b"a\xff"[..]));

    let keys = store
        .range(Range::prefix(b"b").keys_only(), lin)
        .await
        .unwrap();
    assert_eq!(keys_of(&keys.kvs), vec![&b"b"[..], b"ba"]);
    assert!(keys.kvs.iter().all(|kv| kv.value.is_empty()));
    let full = store.range(Range::prefix(b"b"), lin).await.unwrap();
    let metas: Vec<_> = full.kvs.iter().map(|kv| kv.meta).collect();
    assert_eq!(keys.kvs.iter().map(|kv| kv.meta).collect::<Vec<_>>(), metas);
    assert_eq!(full.kvs[1].value, b"v5");

    let count = store
        .range(Range::prefix(b"a").count_only(), lin)
        .await
        .unwrap();
    assert!(count.kvs.is_empty());
    assert_eq!((count.count, count.more), (4, false));

    // List, then watch from the next revision: the informer pattern.
    let listed = store.range(Range::prefix(b"a"), lin).await.unwrap();
    store.put(b"zz", b"elsewhere").await.unwrap();
    store.put(b"ab", b"changed").await.unwrap();
    let mut watch = store.watch(b"a", listed.revision + 1).unwrap();
    let e = next_event(&mut watch).await;
    assert_eq!(
        (e.kv.key.as_slice(), e.revision),
        (&b"ab"[..], listed.revision + 2)
    );

    for bad in [Range::between(b"b", b"a"), Range::between(b"a", b"a")] {
        assert!(matches!(
            store.range(bad, lin).await,
            Err(Error::InvalidArgument(_))
        ));
    }
    store.shutdown().await.unwrap();
}

/// Writes as etcd has them: `prev_kv` on put and delete, a range delete at
/// one revision (with its watch events and its limit), and compares with
/// `!=`, `<`, `>` on version, create and mod revision and value.
#[tokio::test]
async fn prev_kv_range_deletes_and_ordered_compares() {
    use coffer_store::{DeleteOptions, PutOptions, Range, MAX_DELETE_RANGE_KEYS};
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let prev = PutOptions {
        prev_kv: true,
        ..PutOptions::default()
    };
    let first = store.put_with(b"cfg", b"v1", prev).await.unwrap();
    assert_eq!(first.prev_kv, None);
    let second = store.put_with(b"cfg", b"v2", prev).await.unwrap();
    let was = second.prev_kv.unwrap();
    assert_eq!((was.value.as_slice(), was.meta.version), (&b"v1"[..], 1));
    let gone = store
        .delete_with(b"cfg", DeleteOptions { prev_kv: true })
        .await
        .unwrap();
    assert!(gone.deleted);
    assert_eq!(gone.prev_kv.unwrap().value, b"v2");

    for i in 0..5 {
        store
            .put(format!("job/{i}").as_bytes(), b"x")
            .await
            .unwrap();
    }
    store.put(b"jobz", b"outside the prefix").await.unwrap();
    let mut watch = store.watch(b"job/", 0).unwrap();
    let deleted = store
        .delete_range(Range::prefix(b"job/"), DeleteOptions { prev_kv: true })
        .await
        .unwrap();
    assert_eq!((deleted.deleted, deleted.prev_kvs.len()), (5, 5));
    assert_eq!(deleted.revision, store.revision().unwrap());
    for i in 0..5 {
        let e = next_event(&mut watch).await;
        assert_eq!(e.kind, EventKind::Delete);
        assert_eq!(
            e.revision, deleted.revision,
            "one revision for the whole range"
        );
        assert_eq!(e.kv.key, format!("job/{i}").as_bytes());
    }
    assert!(store.get(b"jobz").await.unwrap().is_some());
    let empty = store
        .delete_range(Range::prefix(b"job/"), DeleteOptions::default())
        .await
        .unwrap();
    assert_eq!((empty.deleted, empty.revision), (0, deleted.revision));
    assert!(matches!(
        store
            .delete_range(Range::prefix(b"j").limit(1), DeleteOptions::default())
            .await,
        Err(Error::InvalidArgument(_))
    ));

    // More keys than one delete removes: refused, nothing deleted.
    for chunk in 0..(MAX_DELETE_RANGE_KEYS / 256 + 1) {
        let txn = Txn {
            success: (chunk * 256..(chunk + 1) * 256)
                .map(|i| Op::Put {
                    key: format!("many/{i:05}").into_bytes(),
                    value: Value(b"m".to_vec()),
                    lease: 0,
                })
                .collect(),
            ..Txn::default()
        };
        store.txn(txn).await.unwrap();
    }
    let before = store.revision().unwrap();
    let refused = store
        .delete_range(Range::prefix(b"many/"), DeleteOptions::default())
        .await;
    assert!(
        matches!(&refused, Err(Error::InvalidArgument(m)) if m.contains("smaller ranges")),
        "{refused:?}"
    );
    assert_eq!(store.revision().unwrap(), before);
    let left = store
        .range(
            Range::prefix(b"many/").count_only(),
            Consistency::Linearizable,
        )
        .await
        .unwrap();
    assert_eq!(left.count, (MAX_DELETE_RANGE_KEYS / 256 + 1) as u64 * 256);

    // Ordered compares.
    let rev = store.put(b"n", b"5").await.unwrap();
    store.put(b"n", b"6").await.unwrap();
    let check = |check: Check| Txn {
        compares: vec![Compare {
            key: b"n".to_vec(),
            check,
        }],
        ..Txn::default()
    };
    let holds = [
        Check::Version(CmpOp::Greater, 1),
        Check::Version(CmpOp::NotEqual, 1),
        Check::CreateRevision(CmpOp::Equal, rev),
        Check::ModRevision(CmpOp::Greater, rev),
        Check::Value(CmpOp::Less, Value(b"7".to_vec())),
        Check::Value(CmpOp::Greater, Value(b"5".to_vec())),
    ];
    for c in holds {
        assert!(
            store.txn(check(c.clone())).await.unwrap().succeeded,
            "{c:?}"
        );
    }
    let fails = [
        Check::Version(CmpOp::Less, 2),
        Check::CreateRevision(CmpOp::Less, rev),
        Check::Value(CmpOp::NotEqual, Value(b"6".to_vec())),
    ];
    for c in fails {
        assert!(
            !store.txn(check(c.clone())).await.unwrap().succeeded,
            "{c:?}"
        );
    }
    // On an absent key the numbers read 0 and a value compare fails.
    let absent = |check: Check| Txn {
        compares: vec![Compare {
            key: b"absent".to_vec(),
            check,
        }],
        ..Txn::default()
    };
    assert!(
        store
            .txn(absent(Check::Version(CmpOp::Equal, 0)))
            .await
            .unwrap()
            .succeeded
    );
    assert!(
        !store
            .txn(absent(Check::Value(CmpOp::NotEqual, Value(b"x".to_vec()))))
            .await
            .unwrap()
            .succeeded
    );
    store.shutdown().await.unwrap();
}

/// The watch as etcd's: a `Stream`, filters, progress notifications, an
/// explicit compaction through Raft, and a `next` that loses nothing when
/// it is cancelled.
#[tokio::test]
async fn watch_streams_filters_reports_progress_and_compacts() {
    use coffer_store::{WatchFilter, WatchItem, WatchOptions};
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    store.put(b"w/a", b"1").await.unwrap(); // 1
    store.put(b"w/b", b"2").await.unwrap(); // 2
    store.delete(b"w/a").await.unwrap(); // 3
    store.put(b"w/c", b"3").await.unwrap(); // 4
    store.delete(b"w/b").await.unwrap(); // 5

    // As a Stream.
    let watch = store.watch(b"w/", 1).unwrap();
    let items: Vec<_> = watch.take(5).collect().await;
    let revisions: Vec<u64> = items
        .into_iter()
        .map(|i| match i.unwrap() {
            WatchItem::Event(e) => e.revision,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(revisions, vec![1, 2, 3, 4, 5]);

    // Filters, over history and live changes alike.
    let only = |filter| WatchOptions {
        from: 1,
        filter,
        ..WatchOptions::default()
    };
    let mut puts = store
        .watch_with(b"w/", only(WatchFilter::PutsOnly))
        .unwrap();
    let mut deletes = store
        .watch_with(b"w/", only(WatchFilter::DeletesOnly))
        .unwrap();
    store.put(b"w/d", b"4").await.unwrap(); // 6
    store.delete(b"w/c").await.unwrap(); // 7
    for want in [1, 2, 4, 6] {
        let e = next_event(&mut puts).await;
        assert_eq!((e.revision, e.kind), (want, EventKind::Put));
    }
    for want in [3, 5, 7] {
        let e = next_event(&mut deletes).await;
        assert_eq!((e.revision, e.kind), (want, EventKind::Delete));
    }

    // Progress: changes elsewhere advance what an idle watch reports.
    let mut idle = store
        .watch_with(
            b"w/",
            WatchOptions {
                progress_interval: Some(Duration::from_millis(20)),
                ..WatchOptions::default()
            },
        )
        .unwrap();
    store.put(b"elsewhere", b"x").await.unwrap(); // 8
    let target = store.revision().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let item = tokio::time::timeout(Duration::from_secs(10), idle.next_item())
            .await
            .expect("no progress notification")
            .unwrap();
        match item {
            WatchItem::Progress { revision } if revision == target => break,
            WatchItem::Progress { revision } => assert!(revision < target),
            WatchItem::Event(e) => panic!("an idle watch delivered {e:?}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "progress stuck");
    }

    // Cancel-safety: a `next` cut short by a timeout loses nothing.
    let mut w = store.watch(b"w/", 0).unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(20), w.next())
        .await
        .is_err());
    let rev = store.put(b"w/e", b"5").await.unwrap();
    assert_eq!(next_event(&mut w).await.revision, rev);

    // Compaction through Raft.
    store.compact(4).await.unwrap();
    match store.watch(b"w/", 4) {
        Err(Error::Compacted { requested, oldest }) => assert_eq!((requested, oldest), (4, 5)),
        other => panic!("{other:?}"),
    }
    let mut after = store.watch(b"w/", 5).unwrap();
    assert_eq!(next_event(&mut after).await.revision, 5);
    store.compact(2).await.unwrap(); // already compacted: nothing changes
    assert!(store.watch(b"w/", 5).is_ok());
    let future = store.revision().unwrap() + 1;
    assert!(matches!(
        store.compact(future).await,
        Err(Error::InvalidArgument(_))
    ));
    store.shutdown().await.unwrap();
}

/// After `shutdown`, another handle's calls say the store is shut down
/// (they used to report any openraft failure as a catch-all `Shutdown`
/// with openraft's text).
#[tokio::test]
async fn calls_after_shutdown_say_the_store_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    store.put(b"k", b"v").await.unwrap();
    let other = store.clone();
    let mut watch = store.watch(b"k", 0).unwrap();
    store.shutdown().await.unwrap();
    assert!(matches!(other.put(b"k", b"w").await, Err(Error::Stopped)));
    assert!(matches!(other.get(b"k").await, Err(Error::Stopped)));
    assert!(matches!(watch.next().await, Err(Error::Stopped)));
    assert_eq!(Error::Stopped.to_string(), "the store is shut down");
    assert!(!Error::Stopped.is_retryable());
}

fn on_lease(lease: u64) -> coffer_store::PutOptions {
    coffer_store::PutOptions {
        lease,
        ..coffer_store::PutOptions::default()
    }
}

/// Waits (under a deadline) for `key` to be deleted, watching for it.
async fn wait_deleted(store: &Store, key: &[u8], within: Duration) {
    // Watch first, then look: a delete between the two is still seen.
    let mut watch = store.watch(key, 0).unwrap();
    if store.get(key).await.unwrap().is_none() {
        return;
    }
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let e = tokio::time::timeout_at(deadline, watch.next())
            .await
            .unwrap_or_else(|_| {
                panic!("{} outlived its lease by far", String::from_utf8_lossy(key))
            })
            .unwrap();
        if e.kind == EventKind::Delete && e.kv.key == key {
            return;
        }
    }
}

/// Leases: keys attached to one are deleted together, at one revision,
/// when it is revoked; a put or a transaction naming a missing lease is
/// refused and changes nothing; a put without a lease detaches the key.
#[tokio::test]
async fn revoking_a_lease_deletes_its_keys_at_one_revision() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let hour = Duration::from_secs(3600);
    let lease = store.lease_grant(hour).await.unwrap();
    assert_ne!(lease.id, 0);
    assert_eq!(lease.ttl, hour);
    let before = store.revision().unwrap();
    assert_eq!(before, 0, "a grant takes no revision");
    for k in [&b"svc/a"[..], b"svc/b", b"svc/c"] {
        store.put_with(k, b"up", on_lease(lease.id)).await.unwrap();
    }
    store.put(b"svc/plain", b"p").await.unwrap();
    // A put without the lease detaches the key from it.
    store.put(b"svc/c", b"kept").await.unwrap();
    let kv = store
        .get_kv(b"svc/a", Consistency::Linearizable)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kv.meta.lease, lease.id);
    assert_eq!(
        store
            .lease_keys(lease.id, Consistency::Linearizable)
            .await
            .unwrap(),
        vec![b"svc/a".to_vec(), b"svc/b".to_vec()]
    );
    let infos = store.leases(Consistency::Linearizable).await.unwrap();
    assert_eq!(infos.len(), 1);
    assert_eq!(
        (infos[0].id, infos[0].ttl, infos[0].keys),
        (lease.id, hour, 2)
    );
    assert!(infos[0].remaining > Duration::from_secs(3500));
    assert_eq!(store.lease_keep_alive(lease.id).await.unwrap(), hour);

    // Missing leases: refused, nothing written.
    let rev = store.revision().unwrap();
    assert!(matches!(
        store.put_with(b"svc/x", b"v", on_lease(12345)).await,
        Err(Error::LeaseNotFound { id: 12345 })
    ));
    let txn = Txn {
        success: vec![
            Op::put(b"svc/y".to_vec(), b"v".to_vec()),
            Op::Put {
                key: b"svc/z".to_vec(),
                value: Value(b"v".to_vec()),
                lease: 999,
            },
        ],
        ..Txn::default()
    };
    assert!(matches!(
        store.txn(txn).await,
        Err(Error::LeaseNotFound { id: 999 })
    ));
    assert!(store.get(b"svc/y").await.unwrap().is_none());
    assert_eq!(store.revision().unwrap(), rev);
    assert!(matches!(
        store.lease_grant_with_id(lease.id, hour).await,
        Err(Error::LeaseExists { .. })
    ));
    assert!(matches!(
        store.lease_grant_with_id(0, hour).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        store.lease_grant(Duration::ZERO).await,
        Err(Error::InvalidArgument(_))
    ));

    let mut watch = store.watch(b"svc/", rev + 1).unwrap();
    let revoked = store.lease_revoke(lease.id).await.unwrap();
    assert_eq!((revoked.revision, revoked.deleted), (rev + 1, 2));
    for key in [&b"svc/a"[..], b"svc/b"] {
        let e = next_event(&mut watch).await;
        assert_eq!(
            (e.revision, e.kind, e.kv.key.as_slice()),
            (rev + 1, EventKind::Delete, key)
        );
    }
    let left = store
        .list(b"svc/", Consistency::Linearizable)
        .await
        .unwrap();
    let left: Vec<&[u8]> = left.iter().map(|kv| kv.key.as_slice()).collect();
    assert_eq!(left, vec![&b"svc/c"[..], b"svc/plain"]);
    assert!(matches!(
        store.lease_revoke(lease.id).await,
        Err(Error::LeaseNotFound { .. })
    ));
    assert!(matches!(
        store.lease_keep_alive(lease.id).await,
        Err(Error::LeaseNotFound { .. })
    ));
    assert!(store
        .leases(Consistency::Linearizable)
        .await
        .unwrap()
        .is_empty());
    store.shutdown().await.unwrap();
}

/// A lease nobody keeps alive runs out and takes its keys with it; one
/// kept alive past its time-to-live does not.
#[tokio::test]
async fn a_lease_runs_out_unless_kept_alive() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let short = store.lease_grant(Duration::from_secs(1)).await.unwrap();
    let kept = store.lease_grant(Duration::from_secs(2)).await.unwrap();
    store
        .put_with(b"short", b"v", on_lease(short.id))
        .await
        .unwrap();
    store
        .put_with(b"kept", b"v", on_lease(kept.id))
        .await
        .unwrap();
    let granted = tokio::time::Instant::now();
    // Keep `kept` alive at a third of its time-to-live (the cadence a
    // client uses), for well past that time-to-live.
    let mut beat = tokio::time::interval(Duration::from_millis(600));
    while granted.elapsed() < Duration::from_secs(4) {
        beat.tick().await;
        store.lease_keep_alive(kept.id).await.unwrap();
    }
    assert!(store.get(b"kept").await.unwrap().is_some());
    wait_deleted(&store, b"short", Duration::from_secs(10)).await;
    assert!(granted.elapsed() >= Duration::from_secs(1), "expired early");
    assert!(matches!(
        store.lease_keep_alive(short.id).await,
        Err(Error::LeaseNotFound { .. })
    ));
    // Left alone, `kept` runs out too.
    wait_deleted(&store, b"kept", Duration::from_secs(10)).await;
    store.shutdown().await.unwrap();
}

/// Leases and their keys survive a restart, and a lease gets its full
/// time-to-live again from the reopen (it never ends early).
#[tokio::test]
async fn leases_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let lease = store.lease_grant(Duration::from_secs(600)).await.unwrap();
    store
        .put_with(b"node/1", b"alive", on_lease(lease.id))
        .await
        .unwrap();
    store.shutdown().await.unwrap();
    let store = open(dir.path()).await;
    let infos = store.leases(Consistency::Linearizable).await.unwrap();
    assert_eq!(infos.len(), 1);
    assert_eq!((infos[0].id, infos[0].keys), (lease.id, 1));
    assert!(infos[0].remaining > Duration::from_secs(590));
    let revoked = store.lease_revoke(lease.id).await.unwrap();
    assert_eq!(revoked.deleted, 1);
    assert!(store.get(b"node/1").await.unwrap().is_none());
    store.shutdown().await.unwrap();
    let store = open(dir.path()).await;
    assert!(store
        .leases(Consistency::Linearizable)
        .await
        .unwrap()
        .is_empty());
    assert!(store.get(b"node/1").await.unwrap().is_none());
    store.shutdown().await.unwrap();
}

/// Reads at past revisions: each key as it was then (deleted keys
/// included), until the history is compacted past the revision; the rows
/// of replaced versions and tombstones go with the history, after a
/// restart too.
#[tokio::test]
async fn past_revisions_read_until_compacted_and_their_rows_go_with_them() {
    use coffer_store::Range;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    store.put(b"a", b"1").await.unwrap(); // 1
    store.put(b"b", b"1").await.unwrap(); // 2
    store.put(b"a", b"2").await.unwrap(); // 3
    store.delete(b"b").await.unwrap(); // 4
    store.put(b"c", b"1").await.unwrap(); // 5
    let at = |revision: u64| {
        let store = store.clone();
        async move {
            let got = store
                .range(
                    Range::all().at_revision(revision),
                    Consistency::Linearizable,
                )
                .await?;
            assert_eq!(got.revision, revision);
            Ok::<_, Error>(
                got.kvs
                    .into_iter()
                    .map(|kv| (kv.key, kv.value.into_vec(), kv.meta.version))
                    .collect::<Vec<_>>(),
            )
        }
    };
    let kv =
        |k: &str, v: &str, version: u64| (k.as_bytes().to_vec(), v.as_bytes().to_vec(), version);
    assert_eq!(at(1).await.unwrap(), vec![kv("a", "1", 1)]);
    assert_eq!(at(3).await.unwrap(), vec![kv("a", "2", 2), kv("b", "1", 1)]);
    assert_eq!(at(4).await.unwrap(), vec![kv("a", "2", 2)]);
    assert!(matches!(at(6).await, Err(Error::InvalidArgument(_))));
    let count = store
        .range(
            Range::prefix(b"b").at_revision(2).count_only(),
            Consistency::Stale,
        )
        .await
        .unwrap();
    assert_eq!(count.count, 1);
    store.compact(3).await.unwrap();
    assert!(matches!(
        at(2).await,
        Err(Error::Compacted {
            requested: 2,
            oldest: 3
        })
    ));
    assert_eq!(at(3).await.unwrap(), vec![kv("a", "2", 2), kv("b", "1", 1)]);
    store.shutdown().await.unwrap();

    let store = open(dir.path()).await;
    let at = |revision: u64| {
        let store = store.clone();
        async move {
            store
                .range(
                    Range::all().at_revision(revision),
                    Consistency::Linearizable,
                )
                .await
                .map(|r| r.kvs.len())
        }
    };
    assert_eq!(at(3).await.unwrap(), 2);
    store.put(b"a", b"3").await.unwrap(); // 6
    store.compact(6).await.unwrap();
    assert!(matches!(at(5).await, Err(Error::Compacted { .. })));
    store.shutdown().await.unwrap();

    // Only the live versions are left: a at 6 and c at 5.
    let cipher = std::sync::Arc::new(
        coffer_store::engine::keys::open_keyring(dir.path(), false, None)
            .unwrap()
            .cipher()
            .unwrap(),
    );
    let db = coffer_store::engine::db::Db::open(&dir.path().join("db"), cipher).unwrap();
    let rows = db
        .scan_sealed(coffer_store::engine::db::CF_KV, &[])
        .unwrap()
        .count();
    assert_eq!(
        rows, 2,
        "replaced versions and tombstones outlived the history"
    );
}

/// `prev_kv` on a watch: each event carries the key as it was before it,
/// from history and live alike; a delete's is the deleted version, a
/// creation's is `None`. Versions are kept for the last
/// `watch_history_revisions`: a watch that needs an older one is
/// `Compacted`, while one without `prev_kv` still replays the history.
#[tokio::test]
async fn watch_events_carry_the_previous_version_on_request() {
    use coffer_store::WatchOptions;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.watch_history_revisions = 8;
    let store = Store::open(config).await.unwrap();
    store.put(b"k", b"1").await.unwrap(); // 1
    store.put(b"k", b"2").await.unwrap(); // 2
    store.delete(b"k").await.unwrap(); // 3
    store.put(b"k", b"3").await.unwrap(); // 4
    let options = |from: u64| WatchOptions {
        from,
        prev_kv: true,
        ..WatchOptions::default()
    };
    let mut watch = store.watch_with(b"k", options(1)).unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let e = next_event(&mut watch).await;
        seen.push((
            e.revision,
            e.kind,
            e.prev_kv
                .map(|kv| (kv.value.into_vec(), kv.meta.mod_revision)),
        ));
    }
    assert_eq!(
        seen,
        vec![
            (1, EventKind::Put, None),
            (2, EventKind::Put, Some((b"1".to_vec(), 1))),
            (3, EventKind::Delete, Some((b"2".to_vec(), 2))),
            (4, EventKind::Put, None),
        ]
    );
    // Live, too.
    store.put(b"k", b"4").await.unwrap(); // 5
    let e = next_event(&mut watch).await;
    assert_eq!(e.prev_kv.map(|kv| kv.value.into_vec()), Some(b"3".to_vec()));
    // Past the versions kept: refused with `prev_kv`, replayed without.
    for i in 0..10 {
        store.put(b"k", format!("{i}").as_bytes()).await.unwrap();
    }
    let mut old = store.watch_with(b"k", options(2)).unwrap();
    assert!(matches!(old.next().await, Err(Error::Compacted { .. })));
    let mut plain = store.watch(b"k", 2).unwrap();
    assert_eq!(next_event(&mut plain).await.revision, 2);
    store.shutdown().await.unwrap();
}
