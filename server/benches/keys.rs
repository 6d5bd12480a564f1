//! Issue 9's figures (keys, certificates and recovery), measured on this
//! machine:
//!
//! - the argon2id cost of opening an autolocked data directory's keys
//!   (`LocalKeys::open_with`: one derivation of the KEK, 64 MiB, 3
//!   passes), in process;
//! - the time to unlock a real `coffer server --autolock` restarted after
//!   SIGKILL: the `coffer unlock` command (a new process, the key on its
//!   standard input, checked by the server) and, from the same start,
//!   until the server logs that it serves again;
//! - `coffer snapshot save` and `coffer snapshot restore` of a store of
//!   1 GiB (1 MiB values written through a server's socket): MiB/s of
//!   the file, end to end (argon2id, the Raft snapshot built on the node,
//!   the stream, the sealing; the check, the opening, the install).
//!
//! - data-key rotation, in process on a store of 200,000 keys: the
//!   re-encryption rate (records/s) without a bound and without writers,
//!   and the put rate of 64 concurrent writers before and while a
//!   re-encryption runs (unbounded, and at the default bound).
//!
//! - `coffer ca rotate` on three managers and a worker: from the command
//!   until every node holds a certificate from the new root and the
//!   cluster trusts it alone.
//!
//! `cargo bench -p coffer-server --bench keys` (`-- --quick` for a short
//! run; `-- unlock`, `-- rekey`, `-- ca` or `-- snapshot` for one part).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use coffer_server::client::{Connection, Target};
use coffer_server::pb;
use coffer_store::{LocalKeys, UnlockKey};
use common::Sample;
use support::{coffer, coffer_with_input, ok, read, Server, DEADLINE};

/// Opens the keys of an autolocked directory `rounds` times, each with a
/// key parsed anew (nothing remembered from the round before).
fn derive(rounds: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let key = UnlockKey::generate();
    let text = key.to_text();
    LocalKeys::open_with(tmp.path(), Some(&key)).unwrap();
    let mut took = Vec::new();
    for _ in 0..rounds {
        let fresh = UnlockKey::parse(&text).unwrap();
        let start = Instant::now();
        LocalKeys::open_with(tmp.path(), Some(&fresh)).unwrap();
        took.push(start.elapsed());
    }
    println!("open the keys (argon2id)      {}", Sample(took).line());
}

/// Kills and unlocks an autolocked server `rounds` times.
fn unlock(rounds: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut server = Server::start_in(root, "n1", "127.0.0.1:0", &["--autolock"]);
    let key = ok(server.coffer(&["unlock-key", "-q"]));
    for i in 0..100 {
        ok(server.coffer(&["kv", "put", &format!("k{i}"), "v"]));
    }
    let (mut calls, mut serving) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        server.stop("KILL");
        let (dir, log, addr) = (server.dir.clone(), server.log.clone(), server.addr.clone());
        drop(server);
        server = Server::spawn(&dir, &log, &addr, &[]);
        server.wait_for_socket();
        server.addr = addr;
        let start = Instant::now();
        ok(coffer_with_input(&dir, &["unlock"], Some(key.as_bytes())));
        calls.push(start.elapsed());
        // Polled every millisecond, bounded like every wait.
        while !read(&log).contains("coffer server is up") {
            assert!(start.elapsed() < DEADLINE, "the server did not come up");
            std::thread::sleep(Duration::from_millis(1));
        }
        serving.push(start.elapsed());
        assert_eq!(ok(server.coffer(&["kv", "get", "k99"])), "v");
    }
    println!("coffer unlock (the command)   {}", Sample(calls).line());
    println!("unlock until serving          {}", Sample(serving).line());
    server.stop("TERM");
}

/// Writes `mib` values of 1 MiB into the server on `socket`.
async fn fill(socket: &Path, mib: usize) {
    let mut c = Connection::open(&Target::Socket(socket.to_path_buf()))
        .await
        .unwrap();
    for i in 0..mib {
        // A value of its own per key (sealed on disk anyway).
        let seed = format!("value {i:06} ");
        let value: Vec<u8> = seed.bytes().cycle().take(1 << 20).collect();
        c.kv.put(pb::PutRequest {
            key: format!("big/{i:06}").into_bytes(),
            value,
            ..Default::default()
        })
        .await
        .unwrap();
    }
}

/// Saves a store of `mib` MiB and restores it, `rounds` times.
fn snapshot(mib: usize, rounds: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut server = Server::start_in(root, "n1", "127.0.0.1:0", &[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(fill(&server.socket(), mib));
    let pass = root.join("pass");
    std::fs::write(&pass, "benchmark passphrase\n").unwrap();
    let pass = pass.to_str().unwrap();
    let (mut saves, mut restores) = (Vec::new(), Vec::new());
    let mut bytes = 0;
    for round in 0..rounds {
        let file = root.join(format!("s{round}.cfsnap"));
        let file = file.to_str().unwrap();
        let start = Instant::now();
        ok(server.coffer(&["snapshot", "save", file, "--passphrase-file", pass]));
        saves.push(start.elapsed());
        bytes = std::fs::metadata(file).unwrap().len();
        let new = root.join(format!("restored-{round}"));
        let start = Instant::now();
        ok(coffer(
            &new,
            &["snapshot", "restore", file, "--passphrase-file", pass],
        ));
        restores.push(start.elapsed());
        std::fs::remove_file(file).unwrap();
        std::fs::remove_dir_all(&new).unwrap();
    }
    let mib_of = |d: &Duration| bytes as f64 / (1 << 20) as f64 / d.as_secs_f64();
    let rates = |all: &[Duration]| {
        all.iter()
            .map(|d| format!("{:.0}", mib_of(d)))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    println!(
        "snapshot save, {} MiB file        {} MiB/s   {}",
        bytes >> 20,
        rates(&saves),
        Sample(saves.clone()).line()
    );
    println!(
        "snapshot restore, {} MiB file     {} MiB/s   {}",
        bytes >> 20,
        rates(&restores),
        Sample(restores.clone()).line()
    );
    server.stop("TERM");
}

/// Puts by `writers` concurrent tasks until `until` says stop (checked
/// between puts); returns puts per second.
async fn put_rate(
    store: &coffer_store::Store,
    writers: usize,
    mut until: impl FnMut(Duration) -> bool,
) -> f64 {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (store, stop, done) = (store.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = format!("load/{w:03}/{:06}", i % 1000);
                    store.put(key.as_bytes(), &[7u8; 100]).await.unwrap();
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    while !until(start.elapsed()) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    done.load(std::sync::atomic::Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn rekey_done(store: &coffer_store::Store) -> bool {
    let st = store.key_status();
    assert_ne!(st.phase, coffer_store::RekeyPhase::Failed, "{st:?}");
    st.keys.len() == 1 && st.phase == coffer_store::RekeyPhase::Idle
}

/// Data-key rotation on a store of `keys` keys of 100 bytes.
fn rekey(keys: usize) {
    use coffer_store::{Config, Store};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let open = |rate: u32| {
            let mut cfg = Config::new(tmp.path());
            cfg.rekey_records_per_sec = rate;
            Store::open(cfg)
        };
        let store = open(u32::MAX).await.unwrap();
        let per = keys / 64;
        let fills: Vec<_> = (0..64)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in 0..per {
                        let key = format!("data/{w:02}/{i:07}");
                        store.put(key.as_bytes(), &[1u8; 100]).await.unwrap();
                    }
                })
            })
            .collect();
        for f in fills {
            f.await.unwrap();
        }
        let census = store.key_census().await.unwrap();
        let records: u64 = census.values().sum();
        println!("store: {keys} keys, {records} sealed rows and snapshot frames");
        let base = put_rate(&store, 64, |t| t >= Duration::from_secs(5)).await;
        println!("puts/s, 64 writers, no rotation        {base:>9.0}");

        // Unbounded, alone: the re-encryption rate.
        let start = Instant::now();
        store.rotate_key().await.unwrap();
        while !rekey_done(&store) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = start.elapsed();
        let st = store.key_status();
        println!(
            "re-encryption, unbounded, no writers    {:>9.0} records/s ({} of {} rows sealed again, {:.2} s, compaction included)",
            st.resealed as f64 / took.as_secs_f64(),
            st.resealed,
            st.scanned,
            took.as_secs_f64()
        );

        // Unbounded, with writers.
        store.rotate_key().await.unwrap();
        let during = put_rate(&store, 64, |_| rekey_done(&store)).await;
        println!("puts/s while re-encrypting (unbounded) {during:>9.0}");
        store.shutdown().await.unwrap();

        // The default bound, with writers.
        let store = open(coffer_store::Config::new("x").rekey_records_per_sec)
            .await
            .unwrap();
        store.rotate_key().await.unwrap();
        let start = Instant::now();
        let during = put_rate(&store, 64, |_| rekey_done(&store)).await;
        println!(
            "puts/s while re-encrypting (20,000/s)  {during:>9.0} (the re-encryption took {:.1} s)",
            start.elapsed().as_secs_f64()
        );
        store.shutdown().await.unwrap();
    });
}

/// `coffer ca rotate` on three managers and a worker, `rounds` times in a
/// row: from the command's start until it reports the rotation done.
fn ca_rotation(rounds: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let managers = support::three_managers(root);
    let token = ok(managers[0].coffer(&["join-token", "-q", "worker"]));
    let _worker = Server::join_in(root, "w", &managers[0], &token);
    support::wait_for("the worker in node ls", &managers[0].log, || {
        managers[0].nodes().len() == 4
    });
    let mut took = Vec::new();
    for _ in 0..rounds {
        let start = Instant::now();
        let out = ok(managers[0].coffer(&["ca", "rotate"]));
        assert!(out.contains("rotation is done"), "{out}");
        took.push(start.elapsed());
    }
    println!("ca rotate, 4 nodes            {}", Sample(took).line());
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    // A word names the one part to run: unlock, rekey or snapshot.
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let run = |part: &str| only.as_deref().is_none_or(|o| o == part);
    let rounds = if quick { 3 } else { 10 };
    if run("unlock") {
        println!("== unlock (autolock)");
        derive(rounds);
        unlock(rounds);
    }
    if run("rekey") {
        println!("== data key rotation");
        rekey(if quick { 20_000 } else { 200_000 });
    }
    if run("ca") {
        println!("== root CA rotation");
        ca_rotation(if quick { 2 } else { 5 });
    }
    if run("snapshot") {
        println!("== snapshot save and restore");
        if quick {
            snapshot(64, 2);
        } else {
            snapshot(1024, 3);
        }
    }
}
