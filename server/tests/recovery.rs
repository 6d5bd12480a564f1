//! Recovery from a lone survivor across processes: two of three managers
//! are lost for good (SIGKILL, never restarted); the third, restarted with
//! `--force-new-cluster`, keeps its data and identity as the only member;
//! two fresh managers join it with a manager token and the cluster commits
//! again, with a quorum of three (it survives losing the survivor). A lost
//! manager that comes back is refused as removed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Instant;

use support::{coffer_with_input, ok, read, wait_for, Server, DEADLINE, POLL_INTERVAL};

#[test]
fn a_lone_survivor_becomes_the_cluster_and_new_managers_join_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let [mut n1, mut n2, mut n3] = support::three_managers(root);
    let (id2, id3) = (n2.id(), n3.id());
    for i in 0..20 {
        ok(n2.coffer(&["kv", "put", &format!("k{i:02}"), &format!("v{i}")]));
    }
    ok(coffer_with_input(
        &n1.dir,
        &["secret", "create", "db_password", "-"],
        Some(b"CANARY-recovery"),
    ));
    // The last write is on every member before two of them are lost.
    wait_for("n3 to hold every write", &n3.log, || {
        String::from_utf8_lossy(&n3.coffer(&["kv", "get", "--stale", "k19"]).stdout).trim() == "v19"
    });
    n2.stop("KILL");
    n3.stop("KILL");

    // The survivor, stopped and started forced.
    n1.stop("TERM");
    let (dir, log, addr) = (n1.dir.clone(), n1.log.clone(), n1.addr.clone());
    drop(n1);
    let n1 = Server::start(&dir, &log, &addr, &["--force-new-cluster"]);
    assert!(n1.log().contains("forced a new cluster"), "{}", n1.log());
    for i in 0..20 {
        assert_eq!(
            ok(n1.coffer(&["kv", "get", &format!("k{i:02}")])),
            format!("v{i}")
        );
    }
    assert_eq!(ok(n1.coffer(&["secret", "ls", "-q"])).lines().count(), 1);
    let nodes = n1.nodes();
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!(nodes[0]["leader"], true);
    ok(n1.coffer(&["kv", "put", "after/recovery", "yes"]));

    // Two fresh managers join the recovered cluster.
    let token = ok(n1.coffer(&["join-token", "-q", "manager"]));
    let n4 = Server::join_in(root, "n4", &n1, &token);
    let n5 = Server::join_in(root, "n5", &n1, &token);
    for n in [&n4, &n5] {
        n.wait_until_voting();
    }
    assert_eq!(ok(n5.coffer(&["kv", "get", "after/recovery"])), "yes");
    assert_eq!(ok(n4.coffer(&["kv", "get", "k07"])), "v7");

    // A lost manager that comes back is refused: it was removed.
    let mut back = Server::spawn(&n2.dir, &n2.log, &n2.addr, &[]);
    let status = back.wait();
    assert!(!status.success());
    assert!(
        read(&n2.log).contains("was removed from the cluster"),
        "{}",
        read(&n2.log)
    );
    let all = n4.nodes();
    for lost in [&id2, &id3] {
        assert!(all.iter().all(|n| n["id"] != lost.as_str()), "{all:?}");
    }

    // Three voters: the cluster commits without the survivor.
    let mut n1 = n1;
    n1.stop("KILL");
    let start = Instant::now();
    loop {
        let out = n4.coffer(&["kv", "put", "after/survivor", "gone"]);
        if out.status.success() {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no commit without the survivor: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(POLL_INTERVAL);
    }
    assert_eq!(ok(n5.coffer(&["kv", "get", "after/survivor"])), "gone");
}

#[test]
fn only_a_managers_data_directory_can_be_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let refused = |dir: &std::path::Path, name: &str, why: &str| {
        let log = root.join(format!("{name}.log"));
        let mut server = Server::spawn(dir, &log, "127.0.0.1:0", &["--force-new-cluster"]);
        assert!(!server.wait().success());
        assert!(read(&log).contains(why), "{}", read(&log));
    };
    refused(&root.join("empty"), "empty", "holds no cluster");

    let m = Server::start_in(root, "m", "127.0.0.1:0", &[]);
    let token = ok(m.coffer(&["join-token", "-q", "worker"]));
    let mut w = Server::join_in(root, "w", &m, &token);
    w.stop("TERM");
    refused(&w.dir, "w-forced", "is a worker's");
    assert!(!w.dir.join("db").exists());
}
