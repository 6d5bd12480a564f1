#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The embedding contract: one call opens a single-node, encrypted store.
//!
//! `cargo run -p coffer-store --example embedded [DIR]` (default: a fresh
//! temporary directory).

use coffer_store::{Check, Compare, Config, Consistency, Op, Store, Txn, Value};

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

    // Compare-and-swap: set `lock` only if nobody holds it.
    let mut watch = store.watch(b"lock", 0)?;
    let cas = store
        .txn(Txn {
            compares: vec![Compare {
                key: b"lock".to_vec(),
                check: Check::Absent,
            }],
            success: vec![Op::Put {
                key: b"lock".to_vec(),
                value: Value(b"me".to_vec()),
                lease: 0,
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

    store.put(b"config/a", b"1").await?;
    store.put(b"config/b", b"2").await?;
    let listed = store.list(b"config/", Consistency::Linearizable).await?;
    println!("{} keys under config/", listed.len());

    store.shutdown().await?; // reopen with the same call
    let store = Store::open(Config::new(&dir)).await?;
    assert_eq!(store.get(b"k").await?.as_deref(), Some(&b"v"[..]));
    println!("reopened {}: revision {}", dir.display(), store.revision()?);
    store.shutdown().await?;
    Ok(())
}
