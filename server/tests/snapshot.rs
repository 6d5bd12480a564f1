//! A manager that joins a cluster whose log was purged long ago catches up
//! from a snapshot of more than 100 MiB streamed frame by frame over the
//! mTLS port, between real processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use coffer_server::pb;
use coffer_server::pb::kv_client::KvClient;
use support::{ok, read, wait_for, Server};
use tonic::transport::Endpoint;

/// A member snapshots every 10,000 log entries and purges the log behind.
/// Written one after another (so none share an entry), 20,100 values of
/// 5,400 bytes put more than 100 MiB in the snapshot taken at entry 20,000.
const VALUE_BYTES: usize = 5_400;
const KEYS: usize = 20_100;
const SNAPSHOT_BYTES_MIN: u64 = 100 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_manager_catches_up_from_a_100_mib_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let n1 = {
        let root = root.clone();
        tokio::task::spawn_blocking(move || Server::start_in(&root, "n1", "127.0.0.1:0", &[]))
            .await
            .unwrap()
    };
    let channel = Endpoint::from_shared(format!("unix://{}", n1.socket().display()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut kv = KvClient::new(channel);
    for i in 0..KEYS {
        let mut value = vec![0u8; VALUE_BYTES];
        value[..8].copy_from_slice(&(i as u64).to_be_bytes());
        kv.put(pb::PutRequest {
            key: format!("big/{i:05}").into_bytes(),
            value,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    // The leader has built a snapshot that holds it all (`<id>.snap`, once
    // finished).
    let snapshots = n1.dir.join("snapshots");
    let n1_log = n1.log.clone();
    tokio::task::spawn_blocking(move || {
        wait_for("the leader's 100 MiB snapshot", &n1_log, || {
            std::fs::read_dir(&snapshots).unwrap().any(|f| {
                let f = f.unwrap();
                f.file_name().to_string_lossy().ends_with(".snap")
                    && f.metadata().unwrap().len() >= SNAPSHOT_BYTES_MIN
            })
        })
    })
    .await
    .unwrap();
    let token = ok(n1.coffer(&["join-token", "-q", "manager"]));
    let n2 = {
        let (root, addr) = (root.clone(), n1.addr.clone());
        tokio::task::spawn_blocking(move || {
            Server::start_in(
                &root,
                "n2",
                "127.0.0.1:0",
                &["--join", &addr, "--token", &token],
            )
        })
        .await
        .unwrap()
    };
    let n2 = tokio::task::spawn_blocking(move || {
        n2.wait_until_voting();
        n2
    })
    .await
    .unwrap();
    let log = read(&n2.log);
    let line = log
        .lines()
        .find(|l| l.contains("installed a snapshot"))
        .unwrap_or_else(|| panic!("no snapshot was installed:\n{log}"));
    let bytes: u64 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("bytes="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(bytes >= SNAPSHOT_BYTES_MIN, "{line}");
    eprintln!("{line}");
    let listed = tokio::task::spawn_blocking(move || {
        ok(n2.coffer(&["kv", "ls", "--keys-only", "--stale", "big/"]))
    })
    .await
    .unwrap();
    assert_eq!(listed.lines().count(), KEYS);
    drop(n1);
}
