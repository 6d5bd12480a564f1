//! Certificates renewed while the nodes run: a cluster created with
//! `--cert-expiry 30s` keeps working past the expiry of every certificate
//! it first issued, because each node's agent renews its own and swaps it
//! into its port and its client. Waits poll observable state (logs,
//! command output) under a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use support::{ok, wait_for, Server};

/// The expiry the cluster is created with.
const EXPIRY: Duration = Duration::from_secs(30);

#[test]
fn certificates_renew_live_and_the_cluster_outlives_the_first_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let started = Instant::now();
    let m1 = Server::start_in(root, "m1", "127.0.0.1:0", &["--cert-expiry", "30s"]);
    let manager = ok(m1.coffer(&["join-token", "-q", "manager"]));
    let worker = ok(m1.coffer(&["join-token", "-q", "worker"]));
    let m2 = Server::join_in(root, "m2", &m1, &manager);
    m2.wait_until_voting();
    let w = Server::join_in(root, "w", &m1, &worker);
    let first_cert = std::fs::read(w.dir.join("identity/node.crt")).unwrap();

    for node in [&m1, &m2, &w] {
        wait_for("a live renewal", &node.log, || {
            node.log().contains("renewed this node's certificate")
        });
    }
    assert_ne!(
        std::fs::read(w.dir.join("identity/node.crt")).unwrap(),
        first_cert,
        "the renewed certificate is on disk"
    );
    // Every certificate issued at the start has expired by now.
    wait_for("the first certificates to expire", &m1.log, || {
        started.elapsed() > EXPIRY + Duration::from_secs(3)
    });

    // New mTLS connections both ways: health checks of every node's port
    // (each must present an unexpired certificate of its own), a write
    // forwarded by a follower, and a join through the first node's port.
    wait_for(
        "every node to answer with its renewed certificate",
        &m2.log,
        || {
            let out = m2.coffer(&["node", "ls", "--format", "json"]);
            let nodes: serde_json::Value =
                serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
            nodes
                .as_array()
                .is_some_and(|all| all.len() == 3 && all.iter().all(|n| n["reachable"] == true))
        },
    );
    ok(m2.coffer(&["kv", "put", "after", "expiry"]));
    let w2 = Server::join_in(root, "w2", &m1, &worker);
    assert!(w2.log().contains("role=worker"), "{}", w2.log());
}
