//! `--host https://HOST:PORT`: CLI commands sent to a node's port over
//! mTLS, presenting the certificate of the node in `--identity`. A
//! manager's identity reaches the store and the nodes; a worker's is
//! refused the store; a directory with no identity, a malformed URL and
//! another cluster's identity fail with one clear line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use support::{ok, refused, Server};

/// `coffer --host https://ADDR --identity DIR ARGS...`.
fn remote(addr: &str, identity: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coffer"))
        .arg("--host")
        .arg(format!("https://{addr}"))
        .arg("--identity")
        .arg(identity)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn remote_commands_go_over_mtls_with_a_nodes_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let m1 = Server::start_in(root, "m1", "127.0.0.1:0", &[]);
    let manager = ok(m1.coffer(&["join-token", "-q", "manager"]));
    let worker = ok(m1.coffer(&["join-token", "-q", "worker"]));
    let m2 = Server::join_in(root, "m2", &m1, &manager);
    m2.wait_until_voting();
    let w = Server::join_in(root, "w", &m1, &worker);

    // A manager's identity: the store and the nodes, on any member.
    ok(remote(&m1.addr, &m2.dir, &["kv", "put", "remote/k", "v"]));
    assert_eq!(
        ok(remote(&m2.addr, &m2.dir, &["kv", "get", "remote/k"])),
        "v"
    );
    let listed = ok(remote(
        &m1.addr,
        &m2.dir,
        &["node", "ls", "--format", "json"],
    ));
    let nodes: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(nodes.as_array().unwrap().len(), 3);
    assert!(ok(remote(&m1.addr, &m2.dir, &["ca"])).contains("BEGIN CERTIFICATE"));

    // A worker's identity: not the store.
    refused(
        remote(&m1.addr, &w.dir, &["kv", "get", "remote/k"]),
        "this call is for managers",
    );
    refused(
        remote(&m1.addr, &w.dir, &["join-token", "manager"]),
        "this call is for managers",
    );
    // Nor Raft: a worker cannot speak for the store's members.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let denied = runtime.block_on(async {
        let keys = coffer_store::LocalKeys::open(&w.dir).unwrap();
        let me = coffer_server::identity::load(&w.dir, &keys).unwrap();
        let (_, ca) = coffer_server::identity::on_disk(&w.dir).unwrap().unwrap();
        let config = coffer_server::tls::client_config(&ca, Some((&me.cert_der, &me.key))).unwrap();
        let channel = coffer_server::client::connect_tls(&m1.addr, config)
            .await
            .unwrap();
        coffer_server::pb::raft_client::RaftClient::new(channel)
            .vote(coffer_server::pb::RaftMessage { payload: vec![1] })
            .await
            .unwrap_err()
    });
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    // No identity, a malformed URL.
    let empty = root.join("empty");
    std::fs::create_dir(&empty).unwrap();
    refused(
        remote(&m1.addr, &empty, &["kv", "get", "remote/k"]),
        "holds no node identity",
    );
    assert!(!empty.join("keys").exists(), "a client created keys");
    refused(
        remote("no-port", &m2.dir, &["kv", "get", "remote/k"]),
        "an https URL names a node's port",
    );
    // Another cluster's manager does not trust this one's port.
    let other = Server::start_in(root, "other", "127.0.0.1:0", &[]);
    refused(
        remote(&m1.addr, &other.dir, &["kv", "get", "remote/k"]),
        "connecting to",
    );
}
