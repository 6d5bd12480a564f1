//! Delivery across processes: three managers and a worker. A task on the
//! worker gets its mount from the managers, and a follower manager from
//! its replica (through the leader's read index); the worker holds no replica
//! and no secret; another node's identity is refused the task's secrets;
//! rotations reach the worker's file, also after the leader is killed,
//! and no secret or assignment is lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use coffer_server::client::{Connection, Target};
use coffer_server::pb;
use serde_json::Value;
use support::{
    assert_in_none, coffer_with_input, files_under, ok, refused, three_managers, wait_for, Server,
    Unmount,
};

/// `FetchSecrets` for `task` on `addr`'s port, with the certificate of
/// the node whose data directory is `identity`.
fn fetch(addr: &str, identity: &Path, task: &str) -> Result<pb::FetchResponse, tonic::Status> {
    fetch_waiting(addr, identity, task, "", 0)
}

/// `FetchSecrets` holding `held`, waiting up to `wait` seconds for a
/// change.
fn fetch_waiting(
    addr: &str,
    identity: &Path,
    task: &str,
    held: &str,
    wait: u32,
) -> Result<pb::FetchResponse, tonic::Status> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let target = Target::host(&format!("https://{addr}"), identity.to_path_buf()).unwrap();
        let mut c = Connection::open(&target).await.unwrap();
        let answer = c
            .tasks
            .fetch_secrets(pb::FetchRequest {
                task: task.to_string(),
                held_digest: held.to_string(),
                wait_seconds: wait,
            })
            .await;
        c.close().await.unwrap();
        answer.map(tonic::Response::into_inner)
    })
}

/// Waits until `file` reads `want`; how long that took.
fn until_reads(file: &Path, want: &[u8], log: &Path) -> Duration {
    let start = Instant::now();
    wait_for(
        &format!(
            "{} to read {:?}",
            file.display(),
            String::from_utf8_lossy(want)
        ),
        log,
        || std::fs::read(file).is_ok_and(|got| got == want),
    );
    start.elapsed()
}

#[test]
fn a_worker_gets_its_own_tasks_secrets_and_no_other_node_does() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut managers = three_managers(root);
    let token = ok(managers[0].coffer(&["join-token", "-q", "worker"]));
    let w = Server::join_in(root, "w", &managers[0], &token);
    let worker_id = managers[0].worker_id();

    let m = &managers[1];
    ok(coffer_with_input(
        &m.dir,
        &["secret", "create", "payments_key", "-"],
        Some(b"PAYMENTS-v1"),
    ));
    ok(m.coffer(&[
        "task",
        "attach",
        "job",
        "--node",
        &worker_id,
        "--secret",
        "source=payments_key,target=key,uid=1000,mode=0400",
    ]));
    // A task on a manager, which the worker must never get.
    ok(managers[0].coffer(&["task", "attach", "other", "--secret", "payments_key"]));

    let run = root.join("w-run/job");
    let _cleanup = Unmount(run.clone());
    ok(w.coffer(&["mount", "job", run.to_str().unwrap()]));
    let key = run.join("key");
    assert_eq!(std::fs::read(&key).unwrap(), b"PAYMENTS-v1");
    refused(
        w.coffer(&["mount", "other", root.join("w-run/other").to_str().unwrap()]),
        "does not run on node",
    );
    // A follower manager mounts its own task from its replica: its reads
    // take the leader's read index.
    let follower = managers
        .iter()
        .find(|s| {
            let all = managers[0].nodes();
            all.iter()
                .any(|n| n["address"] == s.addr.as_str() && n["leader"] == false)
        })
        .unwrap();
    ok(m.coffer(&[
        "task",
        "attach",
        "near",
        "--node",
        &follower.id(),
        "--secret",
        "source=payments_key,target=key",
    ]));
    let near = root.join("follower-run/near");
    let _cleanup_near = Unmount(near.clone());
    ok(follower.coffer(&["mount", "near", near.to_str().unwrap()]));
    assert_eq!(std::fs::read(near.join("key")).unwrap(), b"PAYMENTS-v1");

    // The worker's socket serves only its mounts.
    refused(w.coffer(&["task", "ls"]), "this node is a worker");

    // Only the task's node gets its secrets over the port.
    let leader_port = &managers[0].addr;
    let got = fetch(leader_port, &w.dir, "job").unwrap();
    assert_eq!(got.files.len(), 1);
    assert_eq!(got.files[0].data, b"PAYMENTS-v1");
    assert!(!format!("{got:?}").contains("PAYMENTS"));
    for (identity, task) in [(&managers[2].dir, "job"), (&w.dir, "other")] {
        let status = fetch(leader_port, identity, task).unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    }

    // A long poll: while the files are the ones held, the answer waits
    // for the time asked, and a rotation ends the wait at once.
    let start = Instant::now();
    let same = fetch_waiting(leader_port, &w.dir, "job", &got.digest, 1).unwrap();
    assert!(same.unchanged && same.files.is_empty(), "{same:?}");
    assert_eq!(same.digest, got.digest);
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    let asking = {
        let (addr, identity, held) = (leader_port.clone(), w.dir.clone(), got.digest.clone());
        std::thread::spawn(move || {
            let start = Instant::now();
            let answer = fetch_waiting(&addr, &identity, "job", &held, 30);
            (answer, start.elapsed())
        })
    };

    // A rotation reaches the worker's file.
    let rotated = coffer_with_input(
        &managers[2].dir,
        &["secret", "rotate", "payments_key", "-"],
        Some(b"PAYMENTS-v2"),
    );
    assert_eq!(ok(rotated), "2");
    let took = until_reads(&key, b"PAYMENTS-v2", &w.log);
    eprintln!("rotation to the worker's file: {took:?}");
    until_reads(&near.join("key"), b"PAYMENTS-v2", &follower.log);
    ok(follower.coffer(&["unmount", near.to_str().unwrap()]));
    let (answer, waited) = asking.join().unwrap();
    let answer = answer.unwrap();
    assert!(
        !answer.unchanged && answer.digest != got.digest,
        "{answer:?}"
    );
    assert_eq!(answer.files[0].data, b"PAYMENTS-v2");
    assert!(waited < Duration::from_secs(30), "{waited:?}");

    // The leader killed: the next rotation still reaches the worker, and
    // nothing is lost.
    let leader = managers[1]
        .nodes()
        .into_iter()
        .find(|n| n["leader"] == true)
        .unwrap();
    let at = managers
        .iter()
        .position(|s| s.addr == leader["address"].as_str().unwrap())
        .unwrap();
    managers[at].signal("KILL");
    managers[at].wait();
    let survivor = &managers[(at + 1) % 3];
    let deadline = Instant::now() + support::DEADLINE;
    loop {
        let out = coffer_with_input(
            &survivor.dir,
            &["secret", "rotate", "payments_key", "-"],
            Some(b"PAYMENTS-v3"),
        );
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3");
            break;
        }
        assert!(Instant::now() < deadline, "no rotation after the kill");
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = until_reads(&key, b"PAYMENTS-v3", &w.log);
    eprintln!("rotation to the worker's file after a leader kill: {took:?}");
    let tasks: Value =
        serde_json::from_str(&ok(survivor.coffer(&["task", "ls", "--format", "json"]))).unwrap();
    let names: Vec<&str> = tasks
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["job", "near", "other"]);
    let shown = ok(survivor.coffer(&["secret", "inspect", "payments_key"]));
    assert!(shown.contains("\"version\": 3"), "{shown}");

    // The worker holds no replica, and no secret on disk or in its log.
    ok(w.coffer(&["unmount", run.to_str().unwrap()]));
    assert!(!w.dir.join("db").exists());
    let mut files = vec![w.log.clone()];
    files.extend(files_under(&w.dir));
    assert_in_none(&files, &["PAYMENTS", "payments_key"]);
}
