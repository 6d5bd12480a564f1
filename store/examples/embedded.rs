#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The embedding contract: one call opens a single-node, encrypted store.
//!
//! `cargo run -p coffer-store --example embedded [DIR]` (default: a fresh
//! temporary directory).

use std::time::Duration;

use coffer_store::{
    Check, Compare, Config, Consistency, Op, PutOptions, Range, Store, Txn, WatchOptions,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp;
    let dir = match std::env::args().nth(1) {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };

    let store = Store::open(Config::new(&dir)).await?; // empty dir: bootstraps a single-node cluster
    store.put(b"k", b"v").await?; // returns once committed and durable
    assert_eq!(store.get(b"k").await?.as_deref(), Some(&b"v"[..])); // linearizable

    // Compare-and-swap: set `lock` only if nobody holds it, on a lease, so
    // the lock goes by itself if its holder stops keeping the lease alive.
    let lease = store.lease_grant(Duration::from_secs(10)).await?;
    let mut watch = store.watch(b"lock", 0)?;
    let cas = store
        .txn(Txn {
            compares: vec![Compare {
                key: b"lock".to_vec(),
                check: Check::Absent,
            }],
            success: vec![Op::Put {
                key: b"lock".to_vec(),
                value: b"me".to_vec().into(),
                lease: lease.id,
            }],
            failure: vec![],
        })
        .await?;
    println!("lock taken: {} at revision {}", cas.succeeded, cas.revision);
    let event = watch.next().await?;
    println!(
        "watch saw {:?} of {:?} at revision {}",
        event.kind,
        String::from_utf8_lossy(&event.kv.key),
        event.revision
    );

    store.lease_keep_alive(lease.id).await?; // a holder does this every ttl/3
    let released = store.lease_revoke(lease.id).await?; // or lets it run out
    println!("lease revoked: {} key deleted", released.deleted);

    let first = store.put(b"config/a", b"1").await?;
    store.put(b"config/b", b"2").await?;
    store
        .put_with(b"config/a", b"1b", PutOptions::default())
        .await?;
    let listed = store.list(b"config/", Consistency::Linearizable).await?;
    println!("{} keys under config/", listed.len());
    // The same prefix as it was at an earlier revision.
    let then = store
        .range(
            Range::prefix(b"config/").at_revision(first),
            Consistency::Linearizable,
        )
        .await?;
    println!("{} key under config/ at revision {first}", then.kvs.len());
    // Every change from there on, with the version each one replaced.
    let mut history = store.watch_with(
        b"config/",
        WatchOptions {
            from: first,
            prev_kv: true,
            ..WatchOptions::default()
        },
    )?;
    for _ in 0..3 {
        let e = history.next().await?;
        println!(
            "revision {}: {:?} {} (was {:?})",
            e.revision,
            e.kind,
            String::from_utf8_lossy(&e.kv.key),
            e.prev_kv
                .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
        );
    }

    store.shutdown().await?; // reopen with the same call
    let store = Store::open(Config::new(&dir)).await?;
    assert_eq!(store.get(b"k").await?.as_deref(), Some(&b"v"[..]));
    println!("reopened {}: revision {}", dir.display(), store.revision()?);
    store.shutdown().await?;
    Ok(())
}
