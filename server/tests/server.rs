//! `coffer server` as a real process: the CLI and gRPC clients through its
//! socket, a second server refused, clean stops on SIGTERM and SIGINT, a
//! SIGKILL that leaves nothing behind that blocks the next start. Every
//! wait polls observable state under a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use coffer_server::pb;
use coffer_server::pb::kv_client::KvClient;
use support::{coffer, ok, Server, DEADLINE};
use tonic::transport::{Channel, Endpoint};

/// A server on `root/data`, on any free port.
fn server(root: &Path) -> Server {
    Server::start_in(root, "data", "127.0.0.1:0", &[])
}

fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> tonic::Code {
    result.unwrap_err().code()
}

async fn client(socket: &Path) -> KvClient<Channel> {
    let channel = Endpoint::from_shared(format!("unix://{}", socket.display()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    KvClient::new(channel)
}

#[test]
fn the_cli_goes_through_the_socket_and_sigterm_stops_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut server = server(tmp.path());
    let mode = std::fs::metadata(server.socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    // The server holds the directory's lock: a command could not open the
    // directory itself, so its answers come through the socket.
    let holder = std::fs::read_to_string(dir.join("coffer.lock")).unwrap();
    assert_eq!(holder.trim(), server.pid().to_string());

    // The server's own cluster record took the first revision.
    let first: u64 = ok(coffer(&dir, &["kv", "put", "app/a", "one"]))
        .parse()
        .unwrap();
    let second: u64 = ok(coffer(&dir, &["kv", "put", "app/b", "two"]))
        .parse()
        .unwrap();
    assert_eq!(second, first + 1);
    assert_eq!(ok(coffer(&dir, &["kv", "get", "app/a"])), "one");
    assert_eq!(
        ok(coffer(&dir, &["kv", "ls", "app/"])),
        "app/a\tone\napp/b\ttwo"
    );
    assert_eq!(ok(server.coffer_at(&["kv", "get", "app/b"])), "two");

    let status = server.stop("TERM");
    assert!(status.success(), "exit {status:?}");
    assert!(
        !dir.join("coffer.sock").exists(),
        "the socket outlived the server"
    );
    // With no server, commands open the directory themselves.
    assert_eq!(
        ok(coffer(&dir, &["kv", "ls", "--keys-only", "app/"])),
        "app/a\napp/b"
    );
}

#[test]
fn a_second_server_on_the_same_data_dir_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut first = server(tmp.path());
    ok(coffer(&dir, &["kv", "put", "k", "v"]));
    let mut second = Server::spawn(&dir, &tmp.path().join("second.log"), "127.0.0.1:0", &[]);
    let status = second.wait();
    assert_eq!(status.code(), Some(2));
    let log = second.log();
    assert!(
        log.contains(&format!(
            "in use by another coffer process (pid {})",
            first.pid()
        )),
        "{log}"
    );
    // The first is untouched, socket and all.
    assert_eq!(ok(coffer(&dir, &["kv", "get", "k"])), "v");
    assert!(first.stop("INT").success());
}

#[test]
fn a_killed_server_leaves_nothing_that_blocks_the_next_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut server = server(tmp.path());
    let before: u64 = ok(coffer(&dir, &["kv", "put", "k", "before"]))
        .parse()
        .unwrap();
    let status = server.stop("KILL");
    assert!(!status.success());
    assert!(
        dir.join("coffer.sock").exists(),
        "SIGKILL leaves the socket file"
    );
    // The stale socket answers nobody: the command opens the directory.
    assert_eq!(ok(coffer(&dir, &["kv", "get", "k"])), "before");
    let mut again = Server::start_in(tmp.path(), "data", "127.0.0.1:0", &[]);
    // Later than the first (the restarted node may record its new
    // address in between).
    let after: u64 = ok(coffer(&dir, &["kv", "put", "k", "after"]))
        .parse()
        .unwrap();
    assert!(after > before, "{after} after {before}");
    assert!(again.stop("TERM").success());
    assert_eq!(ok(coffer(&dir, &["kv", "get", "k"])), "after");
}

/// A gRPC client on the socket: a watch sees the CLI's writes, errors come
/// with the codes the proto documents, and SIGTERM ends an open watch
/// instead of waiting for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_on_the_socket_watches_and_maps_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut server = server(tmp.path());
    let mut kv = client(&server.socket()).await;
    // From the first revision, with no prefix: the server's own cluster
    // record (the first revision) is not shown, only the keys put here.
    let mut watch = kv
        .watch(pb::WatchRequest {
            prefix: Vec::new(),
            from_revision: 1,
            prev_kv: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let cli_dir = dir.clone();
    tokio::task::spawn_blocking(move || {
        ok(coffer(&cli_dir, &["kv", "put", "w/a", "1"]));
        ok(coffer(&cli_dir, &["kv", "put", "w/a", "2"]));
        ok(coffer(&cli_dir, &["kv", "del", "w/a"]));
    })
    .await
    .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let next = tokio::time::timeout(DEADLINE, watch.message()).await;
        let item = next.expect("no watch event in time").unwrap().unwrap();
        if let Some(pb::watch_response::Item::Event(e)) = item.item {
            let kv = e.kv.unwrap();
            let prev = e.prev_kv.map(|p| p.value);
            seen.push((e.revision, e.kind, kv.value, prev));
        }
    }
    use pb::watch_event::Kind;
    // The server's own objects took the first revisions; the watch showed
    // none of them.
    let first = seen[0].0;
    assert!(first > 1, "the watch showed the server's own objects");
    assert_eq!(
        seen,
        vec![
            (first, Kind::Put as i32, b"1".to_vec(), None),
            (
                first + 1,
                Kind::Put as i32,
                b"2".to_vec(),
                Some(b"1".to_vec())
            ),
            (first + 2, Kind::Delete as i32, vec![], Some(b"2".to_vec())),
        ]
    );

    let future = kv
        .range(pb::RangeRequest {
            revision: 99,
            ..Default::default()
        })
        .await;
    assert_eq!(code(future), tonic::Code::InvalidArgument);
    let missing = kv.lease_revoke(pb::LeaseRevokeRequest { id: 42 }).await;
    assert_eq!(code(missing), tonic::Code::NotFound);
    let too_big = kv
        .put(pb::PutRequest {
            key: b"big".to_vec(),
            value: vec![0; 2 << 20],
            ..Default::default()
        })
        .await;
    assert_eq!(code(too_big), tonic::Code::ResourceExhausted);
    let empty_key = kv.put(pb::PutRequest::default()).await;
    assert_eq!(code(empty_key), tonic::Code::InvalidArgument);
    let granted = kv
        .lease_grant(pb::LeaseGrantRequest {
            ttl_seconds: 60,
            id: 7,
        })
        .await
        .unwrap();
    assert_eq!(granted.into_inner().id, 7);
    let taken = kv
        .lease_grant(pb::LeaseGrantRequest {
            ttl_seconds: 60,
            id: 7,
        })
        .await;
    assert_eq!(code(taken), tonic::Code::AlreadyExists);

    // The watch is still open when the server is told to stop.
    let status = tokio::task::spawn_blocking(move || server.stop("TERM"))
        .await
        .unwrap();
    assert!(status.success(), "exit {status:?}");
    let end = tokio::time::timeout(DEADLINE, watch.message())
        .await
        .expect("the watch stayed open after the server stopped");
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");
}
