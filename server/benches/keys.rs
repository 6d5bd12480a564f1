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
//! `cargo bench -p coffer-server --bench keys` (`-- --quick` for a short
//! run).
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

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 3 } else { 10 };
    println!("== unlock (autolock)");
    derive(rounds);
    unlock(rounds);
    println!("== snapshot save and restore");
    if quick {
        snapshot(64, 2);
    } else {
        snapshot(1024, 3);
    }
}
