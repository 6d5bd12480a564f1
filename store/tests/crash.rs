//! Crash test with real processes: a child process writes with concurrent
//! writers and prints `ACK n` after each put returns; the parent SIGKILLs it
//! at a random moment, reopens the store and checks that every acknowledged
//! write survived. Rounds reuse one data directory, so recovery after a kill
//! (also one that lands during open or recovery) is itself crashed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use coffer_store::{Config, Consistency, Store};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DIR_ENV: &str = "COFFER_CRASH_DIR";
const START_ENV: &str = "COFFER_CRASH_START";
const WRITERS: u64 = 8;
const ROUNDS: u64 = 12;
/// Each round's child numbers its writes from `round * ROUND_STRIDE`.
const ROUND_STRIDE: u64 = 1_000_000;
/// A child left alone (its parent gone) stops by itself after this long.
const CHILD_LIFETIME: Duration = Duration::from_secs(60);
/// How long the parent waits for the ACKs it decided to kill after.
const ACK_WAIT: Duration = Duration::from_secs(30);

fn key(n: u64) -> Vec<u8> {
    format!("k{n}").into_bytes()
}

/// Values of a few sizes, each naming its write.
fn value(n: u64) -> Vec<u8> {
    let unit = format!("value-{n};");
    let size = [unit.len(), 200, 1500, 9000][(n % 4) as usize];
    unit.bytes().cycle().take(size).collect()
}

/// The child: when `COFFER_CRASH_DIR` is set, writes until killed. In a
/// normal test run it returns at once; the assertions are in the parent.
#[test]
fn crash_child_entry() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let start: u64 = std::env::var(START_ENV).unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = Store::open(Config::new(&dir)).await.unwrap();
        say("READY");
        let stop_at = tokio::time::Instant::now() + CHILD_LIFETIME;
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = start + w;
                while tokio::time::Instant::now() < stop_at {
                    store.put(&key(n), &value(n)).await.unwrap();
                    say(&format!("ACK {n}"));
                    n += WRITERS;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

/// Writes a line to stdout and flushes it; exits if the parent is gone.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(0);
    }
}

enum Kill {
    /// After this many ACKs of the round.
    AfterAcks(usize),
    /// This long after the child was spawned (possibly during open).
    AfterMs(u64),
}

struct Round {
    acked: Vec<u64>,
    ready: bool,
}

fn run_round(exe: &Path, dir: &Path, round: u64, kill: &Kill, log: &Path) -> Round {
    let stderr = std::fs::File::create(log).unwrap();
    let mut child = Command::new(exe)
        .args([
            "crash_child_entry",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_ENV, dir)
        .env(START_ENV, (round * ROUND_STRIDE).to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .spawn()
        .unwrap();
    let spawned = Instant::now();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut result = Round {
        acked: Vec::new(),
        ready: false,
    };
    let take = |line: String, result: &mut Round| {
        // libtest may print "test crash_child_entry ... " on the same line.
        if line.ends_with("READY") {
            result.ready = true;
        } else if let Some(n) = line.strip_prefix("ACK ") {
            result.acked.push(n.trim().parse().unwrap());
        }
    };
    match kill {
        Kill::AfterAcks(k) => {
            let deadline = Instant::now() + ACK_WAIT;
            while result.acked.len() < *k {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(line) => take(line, &mut result),
                    Err(_) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        panic!(
                            "round {round}: child gave {} of {k} ACKs within {ACK_WAIT:?}; its stderr:\n{}",
                            result.acked.len(),
                            std::fs::read_to_string(log).unwrap_or_default()
                        );
                    }
                }
            }
        }
        Kill::AfterMs(ms) => {
            let at = spawned + Duration::from_millis(*ms);
            loop {
                let left = at.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match rx.recv_timeout(left) {
                    Ok(line) => take(line, &mut result),
                    Err(mpsc::RecvTimeoutError::Timeout) => break,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        panic!(
                            "round {round}: child exited before it was killed; its stderr:\n{}",
                            std::fs::read_to_string(log).unwrap_or_default()
                        );
                    }
                }
            }
        }
    }
    // SIGKILL: no destructors, no flushes.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "round {round}: child exited on its own ({status}); stderr:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    // ACKs already in the pipe were printed before the kill: they count.
    reader.join().unwrap();
    for line in rx.try_iter() {
        take(line, &mut result);
    }
    result
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let seed: u64 = std::env::var("COFFER_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed: {seed} (rerun with COFFER_TEST_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let exe = std::env::current_exe().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let log = tmp.path().join("child-stderr.log");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    // Every acknowledged write so far, across rounds.
    let mut acked: BTreeMap<u64, u64> = BTreeMap::new();
    for round in 0..ROUNDS {
        // The last round always writes a fair amount, so the test never
        // checks too little by chance.
        let kill = if round == ROUNDS - 1 {
            Kill::AfterAcks(rng.gen_range(100..400))
        } else if rng.gen_bool(0.7) {
            Kill::AfterAcks(rng.gen_range(1..400))
        } else {
            Kill::AfterMs(rng.gen_range(0..800))
        };
        let what = match &kill {
            Kill::AfterAcks(k) => format!("after {k} ACKs"),
            Kill::AfterMs(ms) => format!("{ms} ms after spawn"),
        };
        let child_start = Instant::now();
        let r = run_round(&exe, &dir, round, &kill, &log);
        eprintln!(
            "round {round}: killed {what} (ready: {}, {} ACKs, child ran {:?})",
            r.ready,
            r.acked.len(),
            child_start.elapsed()
        );
        for n in r.acked {
            acked.insert(n, round);
        }
        let t0 = Instant::now();
        rt.block_on(async {
            let store = match Store::open(Config::new(&dir)).await {
                Ok(s) => s,
                Err(e) => panic!("seed {seed}, round {round} (killed {what}): reopen failed: {e}"),
            };
            let opened = Instant::now();
            let reopen = opened - t0;
            // One linearizable listing holds every key; each must be an
            // acknowledged or in-flight write with its own value.
            let listed: BTreeMap<u64, Vec<u8>> = store
                .list(b"k", Consistency::Linearizable)
                .await
                .unwrap()
                .into_iter()
                .map(|kv| {
                    let n = std::str::from_utf8(&kv.key[1..]).unwrap().parse().unwrap();
                    (n, kv.value.into_vec())
                })
                .collect();
            for (&n, v) in &listed {
                assert!(*v == value(n), "seed {seed}: k{n} holds another value");
            }
            for (&n, &from) in &acked {
                assert!(
                    listed.contains_key(&n),
                    "seed {seed}, round {round} (killed {what}): acknowledged write {n} (round {from}) is lost"
                );
            }
            // The latest round's writes, also one by one through `get`.
            for (&n, _) in acked.range(round * ROUND_STRIDE..) {
                assert_eq!(
                    store.get(&key(n)).await.unwrap().map(|v| v.into_vec()),
                    Some(value(n)),
                    "seed {seed}, round {round}: get of acknowledged write {n}"
                );
            }
            eprintln!(
                "round {round}: reopened in {reopen:?}, checked in {:?}",
                opened.elapsed()
            );
            // The store keeps working after recovery.
            let probe = format!("probe-{round}").into_bytes();
            store.put(&probe, b"alive").await.unwrap();
            assert_eq!(store.get(&probe).await.unwrap().as_deref(), Some(&b"alive"[..]));
            store.shutdown().await.unwrap();
        });
    }
    eprintln!(
        "{} acknowledged writes checked over {ROUNDS} rounds in {:?}",
        acked.len(),
        started.elapsed()
    );
    assert!(
        acked.len() >= 100,
        "seed {seed}: only {} writes acknowledged in all rounds: the test checked too little",
        acked.len()
    );
}
