//! `coffer mount` and `coffer unmount` through the real binary and a
//! running server (as root, which CI is): the seed flow end to end; a
//! reader that never sees a missing, empty or mixed file through 100
//! rotations; mounts taken up again after a restart; and a server without
//! the right to mount, which uses a directory already on a tmpfs and
//! refuses any other.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{
    assert_in_none, coffer_with_input, files_under, mount_of, ok, refused, wait_for, Server,
    Unmount, DEADLINE,
};

#[test]
fn the_seed_flow_runs_end_to_end_and_leaves_nothing_in_the_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut n1 = Server::start_in(root, "n1", "127.0.0.1:0", &[]);
    let dir = n1.dir.clone();
    let run = root.join("run-secrets");
    let _cleanup = Unmount(run.clone());

    let id = ok(coffer_with_input(
        &dir,
        &["secret", "create", "my_password", "-"],
        Some(b"password123yoyo"),
    ));
    assert!(ok(n1.coffer(&["secret", "ls"])).contains("my_password"));
    let shown = ok(n1.coffer(&["secret", "inspect", "my_password"]));
    assert!(shown.contains(&id) && !shown.contains("yoyo"), "{shown}");
    ok(n1.coffer(&["task", "attach", "web.1", "--secret", "my_password"]));

    // Refusals first: unknown task, a directory in use or not empty.
    refused(
        n1.coffer(&["mount", "nope", run.to_str().unwrap()]),
        "no task \"nope\"",
    );
    let full = root.join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("x"), b"x").unwrap();
    refused(
        n1.coffer(&["mount", "web.1", full.to_str().unwrap()]),
        "is not empty",
    );
    refused(
        n1.coffer(&["unmount", run.to_str().unwrap()]),
        "no task's secrets are mounted",
    );

    assert_eq!(
        ok(n1.coffer(&["mount", "web.1", run.to_str().unwrap()])),
        run.to_str().unwrap()
    );
    let file = run.join("my_password");
    assert_eq!(std::fs::read(&file).unwrap(), b"password123yoyo");
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid(), meta.gid()),
        (0o444, 0, 0)
    );
    let (options, fstype) = mount_of(&run).expect("a mount on the directory");
    assert_eq!(fstype, "tmpfs");
    for flag in ["nodev", "nosuid", "noexec"] {
        assert!(options.split(',').any(|o| o == flag), "{options}");
    }
    refused(
        n1.coffer(&["mount", "web.1", run.to_str().unwrap()]),
        "mounted on",
    );
    refused(
        n1.coffer(&["secret", "rm", "my_password"]),
        "in use by task(s) web.1",
    );

    assert_eq!(ok(n1.coffer(&["unmount", run.to_str().unwrap()])), "web.1");
    assert!(mount_of(&run).is_none());
    assert!(std::fs::read_dir(&run).unwrap().next().is_none());
    ok(n1.coffer(&["task", "detach", "web.1"]));
    ok(n1.coffer(&["secret", "rm", "my_password"]));

    // Neither the name nor the data in any file of the data directory or
    // in the log.
    n1.stop("TERM");
    let mut files = vec![n1.log.clone()];
    files.extend(files_under(&n1.dir));
    assert_in_none(&files, &["password123yoyo", "my_password"]);
}

/// Version `v`'s data: 4 KiB of one repeated line, so that a mix of two
/// versions shows.
fn version_data(v: u64) -> Vec<u8> {
    format!("version {v:04}\n").repeat(300).into_bytes()
}

fn version_of(data: &[u8]) -> Option<u64> {
    let line = std::str::from_utf8(data.get(..13)?).ok()?;
    let v: u64 = line.strip_prefix("version ")?.trim_end().parse().ok()?;
    (data == version_data(v).as_slice()).then_some(v)
}

#[test]
fn a_reader_sees_every_rotation_whole_and_a_restart_keeps_the_mount() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut n1 = Server::start_in(root, "n1", "127.0.0.1:0", &[]);
    let dir = n1.dir.clone();
    let run = root.join("run/secrets/app");
    let _cleanup = Unmount(run.clone());
    ok(coffer_with_input(
        &dir,
        &["secret", "create", "db", "-"],
        Some(&version_data(1)),
    ));
    ok(coffer_with_input(
        &dir,
        &["secret", "create", "api", "-"],
        Some(b"pinned"),
    ));
    ok(n1.coffer(&[
        "task",
        "attach",
        "app",
        "--secret",
        "source=db,target=db_password,uid=1000,mode=0440",
        "--secret",
        "source=api@1,target=api_key",
    ]));
    ok(n1.coffer(&["mount", "app", run.to_str().unwrap()]));

    // Readers open and read the file in a tight loop while 100 rotations
    // land; every read must be one whole version, never an older one than
    // the reader saw before.
    let stop = Arc::new(AtomicBool::new(false));
    let newest = Arc::new(AtomicU64::new(1));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (stop, newest, file) = (stop.clone(), newest.clone(), run.join("db_password"));
            std::thread::spawn(move || {
                let (mut reads, mut last) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let data = std::fs::read(&file)
                        .unwrap_or_else(|e| panic!("read {reads}: the file is missing: {e}"));
                    let v = version_of(&data).unwrap_or_else(|| {
                        panic!("read {reads}: {} bytes of no one version", data.len())
                    });
                    assert!(v >= last, "read {reads}: version {v} after {last}");
                    last = v;
                    newest.fetch_max(v, Ordering::Relaxed);
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for v in 2..=101u64 {
        let rotated = Instant::now();
        let out = coffer_with_input(
            &dir,
            &["secret", "rotate", "db", "-"],
            Some(&version_data(v)),
        );
        assert_eq!(ok(out), v.to_string());
        // Every tenth rotation, wait until the file shows it.
        if v % 10 == 0 {
            wait_for(&format!("version {v} in the mount"), &n1.log, || {
                newest.load(Ordering::Relaxed) >= v
            });
            latencies.push(rotated.elapsed());
        }
    }
    stop.store(true, Ordering::Relaxed);
    let reads: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    latencies.sort();
    eprintln!(
        "{reads} reads through 100 rotations; rotate-to-file (CLI included) median {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies.last().unwrap()
    );
    assert!(reads > 100, "{reads} reads");
    let db = std::fs::metadata(run.join("db_password")).unwrap();
    assert_eq!((db.uid(), db.mode() & 0o7777), (1000, 0o440));
    assert_eq!(std::fs::read(run.join("api_key")).unwrap(), b"pinned");
    // The previous generation and the current one, nothing older, once
    // the last rotation is published: a publication writes the new
    // generation and swaps `..data` before it removes the oldest, so a
    // third one may stand for a moment.
    let generations = || {
        std::fs::read_dir(&run)
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                let name = name.to_string_lossy();
                name.starts_with("..") && name != "..data"
            })
            .count()
    };
    wait_for("version 101 in the mount", &n1.log, || {
        version_of(&std::fs::read(run.join("db_password")).unwrap()) == Some(101)
    });
    wait_for("at most two generations", &n1.log, || generations() <= 2);

    // A restarted server takes its mounts up again.
    n1.stop("TERM");
    n1.restart();
    ok(coffer_with_input(
        &dir,
        &["secret", "rotate", "db", "-"],
        Some(&version_data(102)),
    ));
    let deadline = Instant::now() + DEADLINE;
    while version_of(&std::fs::read(run.join("db_password")).unwrap()) != Some(102) {
        assert!(Instant::now() < deadline, "no version 102:\n{}", n1.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Detached: the files go, the mount stays until unmounted.
    ok(n1.coffer(&["task", "detach", "app"]));
    wait_for("the files to go", &n1.log, || {
        std::fs::symlink_metadata(run.join("db_password")).is_err()
    });
    assert!(mount_of(&run).is_some());
    ok(n1.coffer(&["unmount", run.to_str().unwrap()]));
    assert!(mount_of(&run).is_none());
}

#[test]
fn without_the_right_to_mount_only_a_directory_on_a_tmpfs_is_used() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // Root without CAP_SYS_ADMIN: it may not mount.
    let n1 = Server::start_under(
        &[
            "setpriv",
            "--bounding-set=-sys_admin",
            "--inh-caps=-sys_admin",
        ],
        &root.join("n1"),
        &root.join("n1.log"),
        "127.0.0.1:0",
        &[],
    );
    let dir = n1.dir.clone();
    ok(coffer_with_input(
        &dir,
        &["secret", "create", "token", "-"],
        Some(b"s3cr3t-value"),
    ));
    ok(n1.coffer(&["task", "attach", "job", "--secret", "token"]));

    // On disk: refused, and nothing written.
    let disk = root.join("on-disk");
    refused(
        n1.coffer(&["mount", "job", disk.to_str().unwrap()]),
        "is not on a tmpfs",
    );
    assert!(std::fs::read_dir(&disk).unwrap().next().is_none());
    assert!(mount_of(&disk).is_none());

    // Already on a tmpfs: used as it is.
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let run = shm.path().join("secrets");
    ok(n1.coffer(&["mount", "job", run.to_str().unwrap()]));
    assert_eq!(std::fs::read(run.join("token")).unwrap(), b"s3cr3t-value");
    assert!(mount_of(&run).is_none());
    ok(n1.coffer(&["unmount", run.to_str().unwrap()]));
    assert!(std::fs::read_dir(&run).unwrap().next().is_none());
}
