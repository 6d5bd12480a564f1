//! Issue 9's figures (keys, certificates and recovery), measured on this
//! machine:
//!
//! - the argon2id cost of opening an autolocked data directory's keys
//!   (`LocalKeys::open_with`: one derivation of the KEK, 64 MiB, 3
//!   passes), in process;
//! - the time to unlock a real `coffer server --autolock` restarted after
//!   SIGKILL: the `coffer unlock` command (a new process, the key on its
//!   standard input, checked by the server) and, from the same start,
//!   until the server logs that it serves again.
//!
//! `cargo bench -p coffer-server --bench keys` (`-- --quick` for a short
//! run).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use coffer_store::{LocalKeys, UnlockKey};
use common::Sample;
use support::{coffer_with_input, ok, read, Server, DEADLINE};

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

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 3 } else { 10 };
    println!("== unlock (autolock)");
    derive(rounds);
    unlock(rounds);
}
