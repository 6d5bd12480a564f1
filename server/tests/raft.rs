//! The Raft transport over the managers' mTLS ports: three stores, each
//! behind its own port, replicate through gRPC; a late member is brought in
//! by a snapshot streamed frame by frame; the others elect a new leader
//! when the first is gone; and no member may speak for another.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_server::pb;
use coffer_server::pb::raft_client::RaftClient;
use coffer_server::raft::GrpcTransport;
use coffer_server::{client, server, tls};
use coffer_store::raft::{Vote, VoteRequest};
use coffer_store::{wire, Bootstrap, Config, Consistency, Range, Store};
use coffer_vault::ca::{NodeKey, Role, RootCa, NODE_CERT_VALIDITY};
use tokio::sync::watch;

const DEADLINE: Duration = Duration::from_secs(60);
/// How often a wait looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

struct Node {
    id: u64,
    store: Store,
    addr: String,
    stop: watch::Sender<bool>,
    served: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    _dir: tempfile::TempDir,
}

fn identity(ca: &RootCa, id: u64) -> (Vec<u8>, NodeKey) {
    let key = NodeKey::generate().unwrap();
    let cert = ca
        .issue(
            &key.public_key_der().unwrap(),
            id,
            Role::Manager,
            NODE_CERT_VALIDITY,
        )
        .unwrap();
    (cert, key)
}

async fn node(id: u64, ca: &RootCa, bootstrap: Bootstrap) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap().to_string();
    let transport = GrpcTransport::new();
    let mut config = Config::new(dir.path())
        .node_id(id)
        .advertise_addr(addr.clone())
        .bootstrap(bootstrap);
    // Snapshots early and a short log, so that a late member needs one.
    config.snapshot_after_logs = 50;
    config.logs_kept_after_snapshot = 5;
    let store = Store::open_with_transport(config, Arc::new(transport.clone()))
        .await
        .unwrap();
    let (cert, key) = identity(ca, id);
    let trust = tls::Trust::of(ca.cert_der());
    transport.set_client_config(tls::client_config(&trust, Some((&cert, &key))).unwrap());
    let resolver = tls::NodeCertResolver::new(&cert, &key, &trust).unwrap();
    let verifier = tls::ClientVerifier::new(&trust).unwrap();
    let server_tls = tls::server_config(verifier, resolver).unwrap();
    let (stop, stopping) = watch::channel(false);
    let served = server::serve_port(
        &store,
        ca.cluster_id(),
        server_tls,
        tcp,
        stopping,
        Some(transport),
    )
    .await
    .unwrap();
    Node {
        id,
        store,
        addr,
        stop,
        served: tokio::spawn(served),
        _dir: dir,
    }
}

impl Node {
    async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(DEADLINE, self.served).await;
        self.store.shutdown().await.unwrap();
    }
}

async fn until<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + DEADLINE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn stale_value(store: &Store, key: &[u8]) -> Option<Vec<u8>> {
    store
        .get_kv(key, Consistency::Stale)
        .await
        .ok()
        .flatten()
        .map(|kv| kv.value.into_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn managers_replicate_over_mtls_and_a_late_member_gets_a_snapshot() {
    let ca = RootCa::generate("raft-test").unwrap();
    let n1 = node(1, &ca, Bootstrap::SingleNode).await;
    until("node 1 to lead", || async { n1.store.leader() == Some(1) }).await;
    for i in 0..300u32 {
        n1.store
            .put(format!("k/{i:04}").as_bytes(), &[7u8; 512])
            .await
            .unwrap();
    }
    until("node 1 to snapshot and purge its log", || async {
        n1.store.metrics().purged.is_some()
    })
    .await;

    let n2 = node(2, &ca, Bootstrap::Join).await;
    let n3 = node(3, &ca, Bootstrap::Join).await;
    n1.store.add_learner(2, &n2.addr).await.unwrap();
    n1.store.add_learner(3, &n3.addr).await.unwrap();
    n1.store
        .change_membership(BTreeSet::from([1, 2, 3]))
        .await
        .unwrap();
    // The log they needed was purged: they were sent a snapshot, and
    // hold every key once they have applied it.
    for n in [&n2, &n3] {
        until("the member to apply its snapshot", || async {
            let count = n
                .store
                .range(Range::prefix(b"k/").count_only(), Consistency::Stale)
                .await
                .map(|r| r.count);
            n.store.metrics().snapshot.is_some() && count.ok() == Some(300)
        })
        .await;
    }
    n1.store.put(b"after", b"joined").await.unwrap();
    for n in [&n2, &n3] {
        until("the put to reach every member", || async {
            stale_value(&n.store, b"after").await.as_deref() == Some(&b"joined"[..])
        })
        .await;
    }

    // No member speaks for another: node 3's certificate asking for
    // votes as node 2 is refused.
    let (cert, key) = identity(&ca, 3);
    let config = tls::client_config(&tls::Trust::of(ca.cert_der()), Some((&cert, &key))).unwrap();
    let mut raft = RaftClient::new(client::connect_tls(&n1.addr, config).await.unwrap());
    let impostor = VoteRequest {
        vote: Vote::new(99, 2),
        last_log_id: None,
    };
    let refused = raft
        .vote(pb::RaftMessage {
            payload: wire::encode_vote_request(&impostor).unwrap(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let garbage = raft
        .append_entries(pb::RaftMessage {
            payload: vec![1, 2, 3],
        })
        .await
        .unwrap_err();
    assert_eq!(garbage.code(), tonic::Code::InvalidArgument);

    // The first leader goes away: the other two elect one over gRPC and
    // go on committing.
    n1.shutdown().await;
    let started = Instant::now();
    until("a new leader", || async {
        matches!(n2.store.leader(), Some(2 | 3)) && n2.store.leader() == n3.store.leader()
    })
    .await;
    let leader = if n2.store.leader() == Some(2) {
        &n2
    } else {
        &n3
    };
    let follower = if leader.id == 2 { &n3 } else { &n2 };
    leader.store.put(b"later", b"still").await.unwrap();
    eprintln!(
        "new leader {} committing {:?} after the old one stopped",
        leader.id,
        started.elapsed()
    );
    until("the new leader's put on the follower", || async {
        stale_value(&follower.store, b"later").await.as_deref() == Some(&b"still"[..])
    })
    .await;
    n2.shutdown().await;
    n3.shutdown().await;
}
