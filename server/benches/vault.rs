//! The vault's figures (issue 7), measured on real `coffer server`
//! processes on this machine:
//!
//! - `secret create` rate with 1 and 16 concurrent clients, through a
//!   single-node server's socket (1 KiB secrets, each create a durable
//!   Raft commit);
//! - the time to mount a task with 100 secrets of 1 KiB (`Tasks.Mount`
//!   through the socket: a fresh tmpfs, 100 files, the `..data` swap, the
//!   mount recorded), and to unmount it;
//! - the time from `RotateSecret` on the leader to the new data in the
//!   file on another node: a second manager, and a worker (which has no
//!   replica and long-polls the managers), with the leader's own mount
//!   beside them.
//!
//! `cargo bench -p coffer-server --bench vault` (`-- --quick` for a short
//! run). Run as root, so that mounts get their own tmpfs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use coffer_server::client::{Connection, Target};
use coffer_server::pb;
use common::Sample;
use support::{ok, Server, Unmount};

async fn connect(socket: &Path) -> Connection {
    Connection::open(&Target::Socket(socket.to_path_buf()))
        .await
        .unwrap()
}

fn kib(seed: usize) -> Vec<u8> {
    format!("{seed:08}").repeat(128).into_bytes()
}

async fn create(c: &mut Connection, name: &str, data: Vec<u8>) {
    c.secrets
        .create_secret(pb::CreateSecretRequest {
            name: name.to_string(),
            labels: Default::default(),
            data,
        })
        .await
        .unwrap();
}

/// Secrets created per second by `clients` concurrent clients, each with
/// its own connection, for `seconds` (after a second of warm-up).
async fn create_rate(socket: &Path, clients: usize, seconds: u64, round: usize) {
    let warm_up = Instant::now() + Duration::from_secs(1);
    let end = warm_up + Duration::from_secs(seconds);
    let mut running = Vec::new();
    for client in 0..clients {
        let mut c = connect(socket).await;
        running.push(tokio::spawn(async move {
            let mut took = Vec::new();
            for i in 0.. {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                create(&mut c, &format!("r{round}-c{client}-{i}"), kib(i)).await;
                if now >= warm_up {
                    took.push(now.elapsed());
                }
            }
            took
        }));
    }
    let mut all = Vec::new();
    for r in running {
        all.extend(r.await.unwrap());
    }
    let rate = all.len() as f64 / seconds as f64;
    println!(
        "secret create, {clients:>2} client(s)   {rate:>8.0} /s   {}",
        Sample(all).line()
    );
}

/// Mounts task `big` (100 secrets of 1 KiB) `rounds` times.
async fn mount_100(socket: &Path, root: &Path, rounds: usize) {
    let mut c = connect(socket).await;
    let mut attachments = Vec::new();
    for i in 0..100 {
        let name = format!("m{i:03}");
        create(&mut c, &name, kib(i)).await;
        attachments.push(pb::SecretAttachment {
            source: name,
            ..Default::default()
        });
    }
    c.tasks
        .attach(pb::AttachRequest {
            task: "big".into(),
            node: String::new(),
            secrets: attachments,
        })
        .await
        .unwrap();
    let (mut mounts, mut unmounts) = (Vec::new(), Vec::new());
    let mut medium = false;
    for round in 0..rounds {
        let dir = root.join(format!("run/big-{round}"));
        let _cleanup = Unmount(dir.clone());
        let dir_text = dir.to_str().unwrap().to_string();
        let start = Instant::now();
        let mounted = c
            .tasks
            .mount(pb::MountRequest {
                task: "big".into(),
                dir: dir_text.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        mounts.push(start.elapsed());
        assert_eq!(mounted.files, 100);
        medium = mounted.own_tmpfs;
        assert_eq!(std::fs::read(dir.join("m099")).unwrap(), kib(99));
        let start = Instant::now();
        c.tasks
            .unmount(pb::UnmountRequest { dir: dir_text })
            .await
            .unwrap();
        unmounts.push(start.elapsed());
    }
    let on = if medium {
        "own tmpfs"
    } else {
        "existing tmpfs"
    };
    println!("mount, 100 x 1 KiB ({on})   {}", Sample(mounts).line());
    println!("unmount, 100 x 1 KiB          {}", Sample(unmounts).line());
}

/// Rotations through `leader` to the files on each of `mounts` (a label
/// and the file), `rounds` times.
fn rotate_to_files(
    runtime: &tokio::runtime::Runtime,
    leader: &Server,
    mounts: &[(&str, PathBuf)],
    rounds: usize,
) {
    let mut c = runtime.block_on(connect(&leader.socket()));
    let mut took: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    for round in 0..rounds {
        let data = format!("rotation {round:06}").into_bytes();
        let start = Instant::now();
        runtime
            .block_on(c.secrets.rotate_secret(pb::RotateSecretRequest {
                secret: "spread".into(),
                data: data.clone(),
            }))
            .unwrap();
        took.entry("(the rotate call)")
            .or_default()
            .push(start.elapsed());
        // Every file polled in one loop (every 100 us), each timed from
        // the same start to the first time it reads the new data.
        let deadline = start + support::DEADLINE;
        let mut pending: Vec<&(&str, PathBuf)> = mounts.iter().collect();
        while !pending.is_empty() {
            pending.retain(|(label, file)| {
                let arrived = std::fs::read(file).is_ok_and(|got| got == data);
                if arrived {
                    took.entry(label).or_default().push(start.elapsed());
                }
                !arrived
            });
            assert!(
                Instant::now() < deadline,
                "a rotation never reached every file"
            );
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    for (label, all) in took {
        println!("rotate to file, {label:<16} {}", Sample(all).line());
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (seconds, mount_rounds, rotate_rounds) = if quick { (2, 5, 5) } else { (10, 30, 30) };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();

    println!("== one node: create rate and mount time");
    let mut single = Server::start_in(root, "single", "127.0.0.1:0", &[]);
    for (round, clients) in [1, 16].into_iter().enumerate() {
        runtime.block_on(create_rate(&single.socket(), clients, seconds, round));
    }
    runtime.block_on(mount_100(&single.socket(), root, mount_rounds));
    single.stop("TERM");

    println!("== two managers and a worker: rotation to the files");
    let m1 = Server::start_in(root, "m1", "127.0.0.1:0", &[]);
    let token = ok(m1.coffer(&["join-token", "-q", "manager"]));
    let m2 = Server::join_in(root, "m2", &m1, &token);
    m2.wait_until_voting();
    let token = ok(m1.coffer(&["join-token", "-q", "worker"]));
    let w = Server::join_in(root, "w", &m1, &token);
    m1.worker_id();
    let data: &[u8] = b"rotation start";
    ok(support::coffer_with_input(
        &m1.dir,
        &["secret", "create", "spread", "-"],
        Some(data),
    ));
    let nodes = [
        ("rotating manager", &m1),
        ("other manager", &m2),
        ("worker", &w),
    ];
    let mut files = Vec::new();
    let mut cleanups = Vec::new();
    for (label, node) in nodes {
        let task = format!("t-{}", node.id());
        ok(m1.coffer(&[
            "task",
            "attach",
            &task,
            "--node",
            &node.id(),
            "--secret",
            "spread",
        ]));
        let dir = root.join(format!("run/{task}"));
        cleanups.push(Unmount(dir.clone()));
        ok(node.coffer(&["mount", &task, dir.to_str().unwrap()]));
        files.push((label, dir.join("spread")));
    }
    rotate_to_files(&runtime, &m1, &files, rotate_rounds);
    for ((_, node), (_, file)) in nodes.iter().zip(&files) {
        ok(node.coffer(&["unmount", file.parent().unwrap().to_str().unwrap()]));
    }
}
