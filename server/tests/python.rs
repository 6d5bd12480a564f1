//! A client in another language, from the proto alone: the Python test in
//! clients/python (grpcio from PyPI, stubs generated from proto/ when it
//! runs) against a real server, through its Unix socket. It creates a
//! secret, attaches it to a task, mounts the task and reads the file,
//! sees a rotation reach it, checks the status codes, and cleans up;
//! afterwards neither the secret's name nor its data is in any file of the
//! data directory or in the server's log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::{assert_in_none, files_under, mount_of, ok, Server, Unmount};

/// The repository's root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The interpreter of the client's environment (made by
/// `scripts/python-env` if missing: a venv with grpcio from PyPI).
fn python() -> PathBuf {
    let out = Command::new(root().join("scripts/python-env"))
        .output()
        .expect("running scripts/python-env");
    assert!(
        out.status.success(),
        "scripts/python-env failed (it installs grpcio and grpcio-tools from PyPI): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

#[test]
fn a_python_client_generated_from_the_proto_mounts_a_secret() {
    let python = python();
    let tmp = tempfile::tempdir().unwrap();
    let mut n1 = Server::start_in(tmp.path(), "n1", "127.0.0.1:0", &[]);
    let run = tmp.path().join("run/web.1");
    let _cleanup = Unmount(run.clone());

    let out = Command::new(&python)
        .arg(root().join("clients/python/vault_test.py"))
        .arg("--socket")
        .arg(n1.socket())
        .arg("--dir")
        .arg(&run)
        .output()
        .unwrap();
    let said = ok(out);
    assert!(said.ends_with("python client: ok"), "{said}");
    assert!(said.contains("reads the secret, mode 400"), "{said}");
    assert!(
        mount_of(&run).is_none(),
        "the client's unmount left a mount"
    );

    n1.stop("TERM");
    let mut files = vec![n1.log.clone()];
    files.extend(files_under(&n1.dir));
    assert_in_none(
        &files,
        &["password123yoyo", "password456yoyo", "my_password"],
    );
}
