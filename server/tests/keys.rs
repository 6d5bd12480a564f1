//! `coffer key rotate` and `coffer key status` across processes: three
//! managers rotate their data keys while a client writes; in each trial one
//! manager is SIGKILLed in the middle of its re-encryption and restarted,
//! and resumes it. Afterwards every acknowledged write reads back, each
//! manager's keyring holds one key, no row or snapshot frame on disk is
//! sealed under an older key id (read from the record headers), and each
//! node's TLS key file is sealed under the new key and still opens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use support::{coffer, ok, wait_for, Server, DEADLINE, POLL_INTERVAL};

/// Slow enough that a SIGKILL lands in the middle of a re-encryption.
const RATE: &str = "150";

/// `key status --local` of the server at `dir`, as (keys, phase, resealed).
fn local_status(dir: &Path) -> Option<(usize, String, u64)> {
    let out = support::coffer_at(&dir.join("coffer.sock"), &["key", "status", "--local"]);
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().nth(1)?.to_string();
    let cols: Vec<&str> = line
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    let keys = cols.get(2)?.split(',').count();
    let phase = cols.get(3)?.to_string();
    let resealed = line
        .split(", ")
        .nth(1)
        .and_then(|p| p.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Some((keys, phase, resealed))
}

fn all_done(via: &Server) -> bool {
    coffer(&via.dir, &["key", "status", "--check-done"])
        .status
        .code()
        == Some(0)
}

fn restart(server: &mut Server) {
    let (dir, log, addr) = (server.dir.clone(), server.log.clone(), server.addr.clone());
    // The old process's log is kept beside the new one.
    let old = std::fs::read(&log).unwrap_or_default();
    let mut kept = log.clone().into_os_string();
    kept.push(".killed");
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&kept)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &old))
        .unwrap();
    *server = Server::start(&dir, &log, &addr, &["--rekey-rate", RATE]);
}

#[test]
fn data_keys_rotate_under_writes_and_sigkill_and_nothing_stays_under_an_old_key() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let n1 = Server::start_in(root, "n1", "127.0.0.1:0", &["--rekey-rate", RATE]);
    let token = ok(n1.coffer(&["join-token", "-q", "manager"]));
    let join = |name: &str| {
        Server::start_in(
            root,
            name,
            "127.0.0.1:0",
            &["--join", &n1.addr, "--token", &token, "--rekey-rate", RATE],
        )
    };
    let (n2, n3) = (join("n2"), join("n3"));
    for n in [&n2, &n3] {
        n.wait_until_voting();
    }
    let mut nodes = [n1, n2, n3];
    let dirs: Vec<_> = nodes.iter().map(|n| n.dir.clone()).collect();

    // Something to re-encrypt: a secret and a few hundred keys.
    ok(support::coffer_with_input(
        &dirs[0],
        &["secret", "create", "db_password", "-"],
        Some(b"CANARY-rotated-secret"),
    ));
    for i in 0..150 {
        ok(coffer(
            &dirs[0],
            &["kv", "put", &format!("pre/{i:04}"), &format!("v{i}")],
        ));
    }
    let before = local_status(&dirs[0]).unwrap();
    assert_eq!(before.0, 1, "one key before any rotation");

    // A client writes all along, through whichever manager answers.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let writer = {
        let (stop, acked, dirs) = (stop.clone(), acked.clone(), dirs.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (k, v) = (format!("w/{i:06}"), format!("value-{i}"));
                // Through the socket: with --data-dir, a command on the
                // directory of a server that is down would open it itself.
                for dir in &dirs {
                    let socket = dir.join("coffer.sock");
                    if support::coffer_at(&socket, &["kv", "put", &k, &v])
                        .status
                        .success()
                    {
                        acked.lock().unwrap().insert(k.clone(), v.clone());
                        break;
                    }
                }
                i += 1;
            }
        })
    };

    // Each trial kills another manager in the middle of its re-encryption.
    for victim in [1usize, 0, 2] {
        let rotated = ok(coffer(&dirs[(victim + 1) % 3], &["key", "rotate"]));
        assert_eq!(rotated.matches("new data key").count(), 3, "{rotated}");
        let node = &nodes[victim];
        wait_for("a re-encryption under way", &node.log, || {
            local_status(&node.dir).is_some_and(|(keys, phase, resealed)| {
                keys == 2 && phase == "re-encrypting rows" && resealed > 0
            })
        });
        nodes[victim].stop("KILL");
        restart(&mut nodes[victim]);
        // It resumes: its keyring still held both keys.
        wait_for(
            "the rotation to finish everywhere",
            &nodes[victim].log,
            || all_done(&nodes[(victim + 1) % 3]),
        );
        assert!(
            nodes[victim].log().contains("resuming the re-encryption"),
            "{}",
            nodes[victim].log()
        );
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 20,
        "the writer got few writes through: {}",
        acked.len()
    );

    // Every acknowledged write reads back from every manager.
    let deadline = Instant::now() + DEADLINE;
    for n in &nodes {
        loop {
            let out = coffer(&n.dir, &["kv", "ls", "--stale", "w/"]);
            let listed: BTreeMap<String, String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split_once('\t'))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let missing: Vec<_> = acked
                .iter()
                .filter(|(k, v)| listed.get(*k) != Some(*v))
                .map(|(k, _)| k.clone())
                .collect();
            if missing.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} lost on {}: {:?}",
                missing.len(),
                n.dir.display(),
                &missing[..missing.len().min(5)]
            );
            std::thread::sleep(POLL_INTERVAL);
        }
    }
    let status = ok(coffer(&dirs[0], &["key", "status"]));
    assert_eq!(status.lines().count(), 4, "{status}");

    // Stopped, each directory holds records under its one key alone, and
    // the node's TLS key file is sealed under it.
    for n in &mut nodes {
        n.stop("TERM");
    }
    for dir in &dirs {
        let counts = coffer_store::key_census(dir).unwrap();
        assert_eq!(counts.len(), 1, "{}: {counts:?}", dir.display());
        let (key, records) = counts.into_iter().next().unwrap();
        assert!(key.0 >= 4, "three rotations from key 1, got {key}");
        assert!(records > 300, "{records}");
        let tls_key = std::fs::read(dir.join("identity").join("node.key")).unwrap();
        assert_eq!(&tls_key[1..5], &key.0.to_be_bytes(), "{}", dir.display());
        support::assert_in_none(&support::files_under(dir), &["CANARY-rotated-secret"]);
    }
    // And each starts again (its TLS key opens under the new data key).
    for n in &mut nodes {
        n.restart();
    }
    assert_eq!(
        ok(coffer(&dirs[2], &["kv", "get", "pre/0007"])).trim(),
        "v7"
    );
}
