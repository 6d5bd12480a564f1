//! Nodes and roles across real processes: a worker joins with the worker
//! token and holds no replica; `node rm`, `node demote` and `node promote`
//! follow SwarmKit's safety rules (never the last manager, never a change
//! that leaves the voters without a reachable quorum, a manager demoted
//! before removal, a live node removed only with --force). Every wait polls
//! observable state under a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::Value;
use support::{files_under, ok, read, refused, wait_for, Server};

fn node_with<'a>(nodes: &'a [Value], id: &str) -> Option<&'a Value> {
    nodes.iter().find(|n| n["id"] == id)
}

#[test]
fn a_worker_holds_no_replica_and_is_removed_for_good() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let manager = Server::start_in(root, "m1", "127.0.0.1:0", &[]);
    let token = ok(manager.coffer(&["join-token", "-q", "worker"]));
    let mut worker = Server::join_in(root, "w1", &manager, &token);
    let wid = worker.id();
    assert!(worker.log().contains("role=worker"), "{}", worker.log());

    // Its identity and nothing else: no store, the key sealed.
    assert!(worker.dir.join("identity/node.crt").exists());
    assert!(worker.dir.join("keys").exists());
    assert!(!worker.dir.join("db").exists(), "a worker holds a store");
    for file in files_under(&worker.dir) {
        if let Ok(bytes) = std::fs::read(&file) {
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                !text.contains("PRIVATE KEY"),
                "{} holds a key",
                file.display()
            );
        }
    }

    // The managers list it, and see it answer.
    wait_for("the worker to answer", &manager.log, || {
        let all = manager.nodes();
        node_with(&all, &wid).is_some_and(|w| w["reachable"] == true)
    });
    let all = manager.nodes();
    let w = node_with(&all, &wid).unwrap();
    assert_eq!(w["role"], "worker");
    assert_eq!(w["membership"], "none");
    assert_eq!(w["address"], worker.addr.as_str());

    // A worker serves no store, and says so.
    refused(worker.coffer(&["kv", "get", "x"]), "this node is a worker");
    refused(worker.coffer(&["node", "ls"]), "this node is a worker");

    // SwarmKit's rules.
    refused(
        manager.coffer(&["node", "rm", &wid]),
        "stop it first, or remove it anyway with --force",
    );
    refused(manager.coffer(&["node", "demote", "1"]), "the last manager");
    refused(manager.coffer(&["node", "rm", "1"]), "demote it first");
    refused(manager.coffer(&["node", "rm", "ffff0000"]), "no node");
    refused(
        manager.coffer(&["node", "rm", "not-hex"]),
        "is not a node id",
    );

    // A restarted worker is the same worker.
    worker.stop("TERM");
    let addr = worker.addr.clone();
    worker = Server::start(&worker.dir, &worker.log, &addr, &[]);
    assert_eq!(worker.id(), wid);

    // Stopped, it goes without --force; by a prefix of its id.
    assert!(worker.stop("TERM").success());
    wait_for("the worker to be seen down", &manager.log, || {
        node_with(&manager.nodes(), &wid).is_some_and(|w| w["reachable"] == false)
    });
    assert_eq!(ok(manager.coffer(&["node", "rm", &wid[..6]])), wid);
    assert!(node_with(&manager.nodes(), &wid).is_none());
    refused(manager.coffer(&["node", "rm", &wid]), "no node");
    refused(manager.coffer(&["node", "promote", &wid]), "no node");
    let _ = read(&manager.log);
}

#[test]
fn demotion_keeps_a_reachable_quorum_and_the_cluster_commits() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let [n1, n2, mut n3] = support::three_managers(root);
    let (id2, id3) = (n2.id(), n3.id());

    // With n3 down, demoting n2 would leave n1 and n3 with one answering.
    assert!(n3.stop("TERM").success());
    refused(
        n1.coffer(&["node", "demote", &id2]),
        "fewer than the 2 a quorum needs",
    );
    let all = n1.nodes();
    assert_eq!(node_with(&all, &id2).unwrap()["membership"], "voter");

    // Back up, the demotion goes through (asked through a follower).
    n3.restart();
    wait_for("n3 to answer", &n1.log, || {
        node_with(&n1.nodes(), &id3).is_some_and(|n| n["reachable"] == true)
    });
    let said = ok(n3.coffer(&["node", "demote", &id2]));
    assert!(said.contains("is now a worker"), "{said}");
    let all = n1.nodes();
    let demoted = node_with(&all, &id2).unwrap();
    assert_eq!(demoted["role"], "worker");
    assert_eq!(demoted["membership"], "none");
    assert_eq!(
        ok(n1.coffer(&["node", "demote", &id2])),
        format!("node {id2} is already a worker")
    );

    // Two voters left: both must answer for a demotion, and the last
    // manager never goes; the two commit.
    ok(n1.coffer(&["kv", "put", "after/demotion", "yes"]));
    assert_eq!(ok(n3.coffer(&["kv", "get", "after/demotion"])), "yes");
    refused(n1.coffer(&["node", "rm", &id3]), "demote it first");
}

#[test]
fn nodes_follow_promotion_demotion_and_removal_on_their_own() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut m1 = Server::start_in(root, "m1", "127.0.0.1:0", &[]);
    let token = ok(m1.coffer(&["join-token", "-q", "worker"]));
    let w = Server::join_in(root, "w", &m1, &token);
    let wid = w.id();
    ok(m1.coffer(&["kv", "put", "before", "promotion"]));

    // Promoted, the worker takes a manager certificate and a replica,
    // and votes.
    assert!(ok(m1.coffer(&["node", "promote", &wid])).contains("is now a manager"));
    wait_for("the promoted worker to vote", &w.log, || {
        node_with(&m1.nodes(), &wid).is_some_and(|n| n["membership"] == "voter")
    });
    assert!(w.dir.join("db").exists());
    wait_for("the replica to catch up", &w.log, || {
        String::from_utf8_lossy(&w.coffer(&["kv", "get", "--stale", "before"]).stdout).trim()
            == "promotion"
    });

    // The leader demotes itself: it leaves the membership, the other
    // leads, and the old leader drops its replica and serves as a worker.
    assert!(ok(w.coffer(&["node", "demote", "1"])).contains("is now a worker"));
    wait_for("the demoted leader to serve as a worker", &m1.log, || {
        m1.log().contains("serving as a worker from now on")
    });
    assert!(
        !m1.dir.join("db").exists(),
        "a demoted manager kept its replica"
    );
    let all = w.nodes();
    assert_eq!(
        node_with(&all, "0000000000000001").unwrap()["membership"],
        "none"
    );
    assert_eq!(node_with(&all, &wid).unwrap()["leader"], true);
    ok(w.coffer(&["kv", "put", "after", "demotion"]));
    refused(m1.coffer(&["kv", "get", "after"]), "this node is a worker");

    // Removed, it stops with a clear error; started again, it is refused
    // again and stops: removed ids never come back.
    ok(w.coffer(&["node", "rm", "--force", "1"]));
    let status = m1.wait();
    assert!(!status.success());
    assert!(
        m1.log().contains("was removed from the cluster"),
        "{}",
        m1.log()
    );
    let (dir, log, addr) = (m1.dir.clone(), m1.log.clone(), m1.addr.clone());
    m1 = Server::start(&dir, &log, &addr, &[]);
    assert!(!m1.wait().success());
    assert!(
        m1.log().contains("was removed from the cluster"),
        "{}",
        m1.log()
    );
}
