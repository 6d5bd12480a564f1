//! SIGKILL the leader of a three-process cluster, round after round, while
//! a client per node writes continuously: a new leader commits within
//! seconds, the killed node restarts and catches up, and every write that
//! was acknowledged is on every member at the end. Every wait polls
//! observable state under a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use support::{coffer_at, wait_for, Server};

const ROUNDS: usize = 10;

/// The leader's address as `node ls` on `via` reports it.
fn leader_addr(via: &Server) -> Option<String> {
    let out = via.coffer_at(&["node", "ls", "--format", "json"]);
    if !out.status.success() {
        return None;
    }
    let nodes: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let all = nodes.as_array()?;
    if all.iter().any(|n| n["reachable"] != true) {
        return None;
    }
    all.iter()
        .find(|n| n["leader"] == true)
        .and_then(|n| n["address"].as_str().map(str::to_string))
}

#[test]
fn acknowledged_writes_survive_leader_kills() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let [n1, n2, n3] = support::three_managers(root);
    // Where a failed wait shows the story: the other nodes' logs are
    // beside it.
    let log = n2.log.clone();
    let nodes = Arc::new(Mutex::new(vec![n1, n2, n3]));
    let sockets: Vec<PathBuf> = nodes.lock().unwrap().iter().map(Server::socket).collect();

    // One client per node, each through that node's socket.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let clients: Vec<_> = sockets
        .iter()
        .enumerate()
        .map(|(c, socket)| {
            let (socket, stop, acked) = (socket.clone(), stop.clone(), acked.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("c{c}/{i:06}");
                    if coffer_at(&socket, &["kv", "put", &key, "v"])
                        .status
                        .success()
                    {
                        acked.lock().unwrap().insert(key);
                    }
                    i += 1;
                }
            })
        })
        .collect();

    let mut failovers = Vec::new();
    for round in 0..ROUNDS {
        // The clients make progress between kills.
        let progress = acked.lock().unwrap().len() + 20;
        wait_for("writes between kills", &log, || {
            acked.lock().unwrap().len() >= progress
        });
        // Find the leader (every node reachable: the last restart caught up).
        let mut leader = String::new();
        wait_for("a leader with every node reachable", &log, || {
            let nodes = nodes.lock().unwrap();
            match leader_addr(&nodes[round % 3]) {
                Some(addr) => {
                    leader = addr;
                    true
                }
                None => false,
            }
        });
        let before = acked.lock().unwrap().len();
        let victim = {
            let mut nodes = nodes.lock().unwrap();
            let victim = nodes.iter().position(|n| n.addr == leader).unwrap();
            nodes[victim].stop("KILL");
            victim
        };
        let killed = Instant::now();
        // A new leader commits: a write through a survivor succeeds.
        let survivor = sockets[(victim + 1) % 3].clone();
        wait_for("a write through a new leader", &log, || {
            coffer_at(&survivor, &["kv", "put", &format!("probe/{round}"), "x"])
                .status
                .success()
        });
        failovers.push(killed.elapsed());
        nodes.lock().unwrap()[victim].restart();
        let after = acked.lock().unwrap().len();
        assert!(after >= before, "acknowledgements went backwards");
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }

    // Every acknowledged write is on every member.
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > ROUNDS * 10,
        "only {} writes were acknowledged",
        acked.len()
    );
    let nodes = nodes.lock().unwrap();
    for node in nodes.iter() {
        wait_for(
            "every acknowledged write on every member",
            &node.log,
            || {
                let listed = node.coffer_at(&["kv", "ls", "--keys-only", "--stale", "c"]);
                if !listed.status.success() {
                    return false;
                }
                let present: BTreeSet<String> = String::from_utf8_lossy(&listed.stdout)
                    .lines()
                    .map(str::to_string)
                    .collect();
                acked.is_subset(&present)
            },
        );
    }
    failovers.sort();
    eprintln!(
        "{ROUNDS} leader kills, {} acknowledged writes all present; a write through a survivor committed after: min {:?}, median {:?}, max {:?}",
        acked.len(),
        failovers[0],
        failovers[failovers.len() / 2],
        failovers[failovers.len() - 1]
    );
}
