//! The `coffer` binary against a real data directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn coffer(dir: &std::path::Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
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
