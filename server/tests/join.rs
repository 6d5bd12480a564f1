//! Three `coffer server` processes form a cluster from join tokens over
//! mTLS; writes reach every member; bad, tampered, rotated and foreign
//! tokens are refused with a clear error and join nothing; the cluster
//! survives its first leader's stop and takes it back. Every wait polls
//! observable state (log lines, command output) under a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::Instant;

use support::{ok, read, wait_for, Server};

/// A linearizability-free read of `key` on `node` (`--stale`), if there.
fn stale_get(node: &Server, key: &str) -> Option<String> {
    let out = node.coffer(&["kv", "get", "--stale", key]);
    out.status
        .success()
        .then(|| String::from_utf8(out.stdout).unwrap())
}

/// A server that must refuse to join: exits 2 quickly, says `expect`,
/// and leaves no identity behind.
fn refused_join(root: &Path, name: &str, join: &str, token: &str, expect: &str) {
    let dir = root.join(name);
    let log = root.join(format!("{name}.log"));
    let mut server = Server::spawn(
        &dir,
        &log,
        "127.0.0.1:0",
        &["--join", join, "--token", token],
    );
    let status = server.wait();
    let text = read(&log);
    assert_eq!(status.code(), Some(2), "{name}: {text}");
    assert!(
        text.contains(expect),
        "{name}: expected {expect:?} in:\n{text}"
    );
    assert!(
        !dir.join("identity/node.crt").exists(),
        "{name} kept a certificate"
    );
}

#[test]
fn three_servers_form_a_cluster_from_tokens_and_survive_a_leader_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut n1 = Server::start_in(root, "n1", "127.0.0.1:0", &[]);
    let token = ok(n1.coffer(&["join-token", "-q", "manager"]));
    assert!(token.starts_with("CFTKN-1-"), "{token}");
    let shown = ok(n1.coffer(&["join-token", "manager"]));
    assert!(
        shown.contains(&format!("--join {} --token {token}", n1.addr)),
        "{shown}"
    );

    let n2 = Server::join_in(root, "n2", &n1, &token);
    let n3 = Server::join_in(root, "n3", &n1, &token);
    for n in [&n2, &n3] {
        n.wait_until_voting();
    }

    ok(n1.coffer(&["kv", "put", "app/a", "one"]));
    for n in [&n2, &n3] {
        wait_for("the put on every member", &n.log, || {
            stale_get(n, "app/a").as_deref() == Some("one")
        });
    }

    // Every member shows the same nodes: the leader's view.
    let views: Vec<serde_json::Value> = [&n1, &n2, &n3]
        .iter()
        .map(|n| serde_json::from_str(&ok(n.coffer(&["node", "ls", "--format", "json"]))).unwrap())
        .collect();
    assert_eq!(views[0], views[1]);
    assert_eq!(views[0], views[2]);
    let nodes = views[0].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    for node in nodes {
        assert_eq!(node["membership"], "voter", "{node}");
        assert_eq!(node["reachable"], true, "{node}");
        assert_eq!(node["role"], "manager", "{node}");
    }
    let leaders: Vec<_> = nodes.iter().filter(|n| n["leader"] == true).collect();
    assert_eq!(leaders.len(), 1);
    assert_eq!(leaders[0]["id"], "0000000000000001");
    assert_eq!(leaders[0]["address"], n1.addr.as_str());
    let table = ok(n2.coffer(&["node", "ls"]));
    assert!(table.starts_with("ID"), "{table}");
    assert_eq!(table.lines().count(), 4, "{table}");

    // A follower forwards writes and linearizable reads to the leader.
    let leader_rev: u64 = ok(n2.coffer(&["kv", "put", "app/f", "through n2"]))
        .parse()
        .unwrap();
    assert!(leader_rev > 0);
    assert_eq!(ok(n3.coffer(&["kv", "get", "app/f"])), "through n2");
    assert_eq!(
        ok(n3.coffer(&["kv", "ls", "--keys-only", "app/"])),
        "app/a\napp/f"
    );

    // Tokens that must not admit anyone.
    let digest_len = 64;
    let secret_start = "CFTKN-1-".len() + digest_len + 1;
    let mut tampered = token.clone();
    let last = if tampered.ends_with('0') { "1" } else { "0" };
    tampered.replace_range(tampered.len() - 1.., last);
    refused_join(root, "tampered", &n1.addr, &tampered, "invalid join token");
    let foreign = format!(
        "CFTKN-1-{}-{}",
        "0".repeat(digest_len),
        &token[secret_start..]
    );
    refused_join(root, "foreign", &n1.addr, &foreign, "refusing to trust it");
    refused_join(
        root,
        "garbage",
        &n1.addr,
        "SWMTKN-1-xyz",
        "not a Coffer join token",
    );
    let worker = ok(n1.coffer(&["join-token", "-q", "worker"]));
    let rotated_worker = ok(n1.coffer(&["join-token", "--rotate", "-q", "worker"]));
    assert_ne!(rotated_worker, worker);
    refused_join(root, "worker", &n1.addr, &worker, "invalid join token");
    let rotated = ok(n1.coffer(&["join-token", "--rotate", "-q", "manager"]));
    assert_ne!(rotated, token);
    refused_join(root, "rotated", &n1.addr, &token, "invalid join token");

    // The first leader stops: the other two elect a leader and commit.
    let n1_addr = n1.addr.clone();
    assert!(n1.stop("TERM").success());
    let started = Instant::now();
    let mut committed_on = None;
    wait_for("a write through a new leader", &n2.log, || {
        for n in [&n2, &n3] {
            if n.coffer(&["kv", "put", "app/b", "two"]).status.success() {
                committed_on = Some(n.dir.clone());
                return true;
            }
        }
        false
    });
    eprintln!(
        "a write committed {:?} after the leader stopped (through {})",
        started.elapsed(),
        committed_on.unwrap().display()
    );
    // The stopped node shows as unreachable, and no longer leads.
    let after: serde_json::Value =
        serde_json::from_str(&ok(n2.coffer(&["node", "ls", "--format", "json"]))).unwrap();
    let first = after
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "0000000000000001")
        .unwrap();
    assert_eq!(first["reachable"], false, "{after}");
    assert_eq!(first["leader"], false, "{after}");

    // It comes back at its address and catches up.
    let n1 = Server::start_in(root, "n1", &n1_addr, &[]);
    wait_for("the restarted node to catch up", &n1.log, || {
        stale_get(&n1, "app/b").as_deref() == Some("two")
    });
    assert_eq!(stale_get(&n1, "app/a").as_deref(), Some("one"));
}

/// All three members stopped, then started again from their data
/// directories: the same members, the same data, a leader, and writes.
#[test]
fn a_whole_cluster_restarts_from_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let [mut n1, mut n2, mut n3] = support::three_managers(root);
    ok(n2.coffer(&["kv", "put", "kept", "across restarts"]));
    let before = ok(n1.coffer(&["node", "ls", "--format", "json"]));

    for n in [&mut n1, &mut n2, &mut n3] {
        assert!(n.stop("TERM").success());
    }
    // Each restarts alone first: none may need the others to start.
    for n in [&mut n1, &mut n2, &mut n3] {
        n.restart();
    }
    wait_for("a write after the restart", &n1.log, || {
        n3.coffer(&["kv", "put", "after", "restart"])
            .status
            .success()
    });
    for n in [&n1, &n2, &n3] {
        wait_for("the data on every member", &n.log, || {
            stale_get(n, "kept").as_deref() == Some("across restarts")
                && stale_get(n, "after").as_deref() == Some("restart")
        });
    }
    let members = |listing: &str| -> Vec<(String, String)> {
        let nodes: serde_json::Value = serde_json::from_str(listing).unwrap();
        nodes
            .as_array()
            .unwrap()
            .iter()
            .map(|n| (n["id"].to_string(), n["address"].to_string()))
            .collect()
    };
    let mut after = String::new();
    wait_for("every member reachable again", &n1.log, || {
        let out = n2.coffer(&["node", "ls", "--format", "json"]);
        after = String::from_utf8_lossy(&out.stdout).to_string();
        out.status.success() && !after.contains("\"reachable\":false")
    });
    assert_eq!(members(&before), members(&after));
}

/// A member restarted on another port tells the leader its new address
/// (`AddMember` at every start); the others reach it there and it keeps
/// replicating.
#[test]
fn a_member_restarted_on_a_new_port_is_reached_there() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let [n1, _n2, mut n3] = support::three_managers(root);
    let old_addr = n3.addr.clone();
    assert!(n3.stop("TERM").success());
    let (dir, log) = (n3.dir.clone(), n3.log.clone());
    n3 = Server::start(&dir, &log, "127.0.0.1:0", &[]);
    assert_ne!(n3.addr, old_addr);
    let new_addr = serde_json::Value::String(n3.addr.clone());
    wait_for("the new address in the membership", &n1.log, || {
        let out = n1.coffer(&["node", "ls", "--format", "json"]);
        let nodes: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        nodes.as_array().is_some_and(|all| {
            all.iter()
                .any(|n| n["address"] == new_addr && n["reachable"] == true)
        })
    });
    ok(n1.coffer(&["kv", "put", "moved", "yes"]));
    wait_for("the write on the moved member", &n3.log, || {
        stale_get(&n3, "moved").as_deref() == Some("yes")
    });
}
