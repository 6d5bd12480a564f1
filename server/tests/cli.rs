//! The `coffer` binary against a real data directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Command, Output, Stdio};

fn coffer(dir: &std::path::Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    support::coffer_with_input(dir, args, stdin)
}

#[test]
fn kv_round_trip_across_processes() {
    let dir = tempfile::tempdir().unwrap();
    let put = coffer(dir.path(), &["kv", "put", "app/a", "one"], None);
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&put.stdout).trim(), "1");
    let put = coffer(dir.path(), &["kv", "put", "app/b", "-"], Some(b"two\n"));
    assert!(put.status.success());
    let get = coffer(dir.path(), &["kv", "get", "app/b"], None);
    assert_eq!(get.stdout, b"two\n");
    let stale = coffer(dir.path(), &["kv", "get", "--stale", "app/b"], None);
    assert_eq!(stale.stdout, b"two\n");
    let ls = coffer(dir.path(), &["kv", "ls", "app/"], None);
    assert_eq!(
        String::from_utf8_lossy(&ls.stdout),
        "app/a\tone\napp/b\ttwo\\n\n"
    );
    let keys = coffer(dir.path(), &["kv", "ls", "--keys-only", "app/"], None);
    assert_eq!(String::from_utf8_lossy(&keys.stdout), "app/a\napp/b\n");
    let first = coffer(
        dir.path(),
        &["kv", "ls", "--keys-only", "--limit", "1", "app/"],
        None,
    );
    assert!(first.status.success());
    assert_eq!(String::from_utf8_lossy(&first.stdout), "app/a\n");
    assert!(String::from_utf8_lossy(&first.stderr).contains("1 more key"));
    let del = coffer(dir.path(), &["kv", "del", "app/a"], None);
    assert!(del.status.success());
    let put = coffer(dir.path(), &["kv", "put", "app/c", "three"], None);
    assert!(put.status.success());
    // The listing as it was at revision 1, and one the history never had.
    let then = coffer(dir.path(), &["kv", "ls", "--rev", "1", "app/"], None);
    assert_eq!(String::from_utf8_lossy(&then.stdout), "app/a\tone\n");
    let future = coffer(dir.path(), &["kv", "ls", "--rev", "99", "app/"], None);
    assert_eq!(future.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&future.stderr).contains("future"));
    let del = coffer(dir.path(), &["kv", "del", "--prefix", "app/"], None);
    assert!(del.status.success());
    assert_eq!(String::from_utf8_lossy(&del.stdout).trim(), "2");
    let ls = coffer(dir.path(), &["kv", "ls", "app/"], None);
    assert!(ls.stdout.is_empty());
    let missing = coffer(dir.path(), &["kv", "get", "app/a"], None);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
}

#[test]
fn bad_input_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let empty_key = coffer(dir.path(), &["kv", "put", "", "v"], None);
    assert_eq!(empty_key.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&empty_key.stderr).contains("key is empty"));
    let too_big = vec![b'x'; coffer_store_limit() + 1];
    let big = coffer(dir.path(), &["kv", "put", "k", "-"], Some(&too_big));
    assert_eq!(big.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&big.stderr).contains("limit"));
    let help = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(["kv", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("put"));
}

fn coffer_store_limit() -> usize {
    1536 * 1024
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// `kv lease grant|ls|keep-alive --once|revoke` and `kv put --lease`, each
/// a separate process on one data directory; a missing lease exits 1 and
/// says so, a malformed id exits 2.
#[test]
fn leases_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let id = stdout(&coffer(dir.path(), &["kv", "lease", "grant", "3600"], None));
    assert_eq!(id.len(), 16, "lease id {id:?}");
    stdout(&coffer(
        dir.path(),
        &["kv", "put", "--lease", &id, "svc/a", "up"],
        None,
    ));
    stdout(&coffer(dir.path(), &["kv", "put", "svc/b", "plain"], None));
    let ls = stdout(&coffer(dir.path(), &["kv", "lease", "ls"], None));
    let fields: Vec<&str> = ls.split('\t').collect();
    assert_eq!(fields.len(), 4, "{ls:?}");
    assert_eq!(
        (fields[0], fields[1], fields[3]),
        (id.as_str(), "3600", "1")
    );
    let ttl = stdout(&coffer(
        dir.path(),
        &["kv", "lease", "keep-alive", "--once", &id],
        None,
    ));
    assert_eq!(ttl, "3600");
    let revoked = stdout(&coffer(dir.path(), &["kv", "lease", "revoke", &id], None));
    assert_eq!(revoked, "1");
    let keys = stdout(&coffer(
        dir.path(),
        &["kv", "ls", "--keys-only", "svc/"],
        None,
    ));
    assert_eq!(keys, "svc/b");
    let again = coffer(dir.path(), &["kv", "lease", "revoke", &id], None);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("not found"));
    let put = coffer(dir.path(), &["kv", "put", "--lease", &id, "k", "v"], None);
    assert_eq!(put.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&put.stderr).contains("not found"));
    let bad = coffer(dir.path(), &["kv", "lease", "revoke", "not-hex"], None);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a lease id"));
    let zero = coffer(dir.path(), &["kv", "lease", "grant", "0"], None);
    assert_eq!(zero.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&zero.stderr).contains("time-to-live"));
}

/// `kv lease keep-alive ID` renews until it is interrupted, then exits 0.
#[test]
fn keep_alive_runs_until_interrupted() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let id = stdout(&coffer(dir.path(), &["kv", "lease", "grant", "60"], None));
    let mut child = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["kv", "lease", "keep-alive", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first renewal's line shows it is running (a blocking read: the
    // test harness's own timeout bounds it).
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first.trim(), "60");
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait().unwrap()));
    let status = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("keep-alive did not stop on SIGTERM");
    assert_eq!(status.code(), Some(0));
}
