//! The operator's own CA (`coffer server --ca-cert F --ca-key K` on
//! init), made by `openssl` as an operator would: every node's port
//! presents a chain that `openssl s_client` verifies against that CA (and
//! not against another), `coffer ca` prints it, join tokens carry its
//! digest, and its key is sealed in the store, never in the clear. An
//! intermediate under the operator's root works the same: nodes present
//! the intermediate after their own certificate. A CA that will not do
//! is refused before anything is written.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::{assert_in_none, files_under, ok, read, Server};

/// Runs `openssl ARGS...` in `dir`; it must succeed.
fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A CA in `dir`: NAME.pem and NAME.key (PKCS#8). Self-signed without
/// `signer`, else signed by the CA `signer` names (an intermediate).
/// `key` is what `openssl req -newkey` takes (`ec` or `rsa:2048`).
fn ca(dir: &Path, name: &str, key: &str, signer: Option<&str>) -> (PathBuf, PathBuf) {
    let (pem, key_file) = (format!("{name}.pem"), format!("{name}.key"));
    let subject = format!("/O=Example Corp/CN={name}");
    let mut req = vec!["req", "-newkey", key];
    if key == "ec" {
        req.extend(["-pkeyopt", "ec_paramgen_curve:P-256"]);
    }
    req.extend(["-nodes", "-keyout", &key_file, "-subj", &subject]);
    match signer {
        None => {
            req.extend(["-x509", "-days", "30", "-out", &pem]);
            req.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
            req.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
            openssl(dir, &req);
        }
        Some(signer) => sign(
            dir,
            &req,
            signer,
            &pem,
            "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n",
        ),
    }
    (dir.join(pem), dir.join(key_file))
}

/// A certificate `out` from the request `req` makes, signed by the CA
/// `signer` with the extensions `ext`.
fn sign(dir: &Path, req: &[&str], signer: &str, out: &str, ext: &str) {
    let csr = format!("{out}.csr");
    let ext_file = format!("{out}.ext");
    let mut req = req.to_vec();
    req.extend(["-out", &csr]);
    openssl(dir, &req);
    std::fs::write(dir.join(&ext_file), ext).unwrap();
    let (signer_pem, signer_key) = (format!("{signer}.pem"), format!("{signer}.key"));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &signer_pem,
            "-CAkey",
            &signer_key,
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            &ext_file,
            "-out",
            out,
        ],
    );
}

/// The SHA-256 digest of the certificate in `pem`, as join tokens carry it.
fn digest(dir: &Path, pem: &Path) -> String {
    let out = openssl(
        dir,
        &[
            "x509",
            "-in",
            pem.to_str().unwrap(),
            "-noout",
            "-fingerprint",
            "-sha256",
        ],
    );
    out.trim()
        .split('=')
        .nth(1)
        .unwrap()
        .replace(':', "")
        .to_lowercase()
}

/// What `openssl s_client` says of the node at `addr` with `ca_file` as
/// its only trust anchor: (verified, certificates the node sent).
fn s_client(addr: &str, ca_file: &Path) -> (bool, usize) {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", addr, "-showcerts", "-CAfile"])
        .arg(ca_file)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Verify return code"), "{text}");
    (
        text.contains("Verify return code: 0 (ok)"),
        text.matches("-----BEGIN CERTIFICATE-----").count(),
    )
}

/// The PEM body lines of a key file: what would betray it in a file.
fn key_lines(key: &Path) -> Vec<String> {
    read(key)
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 40)
        .map(str::to_string)
        .collect()
}

/// Starts `root/n1` on a new cluster under the CA `cert` and `key`, the
/// key file with mode `mode`.
fn start_under(root: &Path, cert: &Path, key: &Path, mode: u32) -> Server {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(mode)).unwrap();
    Server::start_in(
        root,
        "n1",
        "127.0.0.1:0",
        &[
            "--ca-cert",
            cert.to_str().unwrap(),
            "--ca-key",
            key.to_str().unwrap(),
        ],
    )
}

#[test]
fn a_cluster_runs_under_the_operators_root_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (ca_pem, ca_key) = ca(root, "corp-root", "ec", None);
    let (other_pem, _) = ca(root, "other-root", "ec", None);
    let n1 = start_under(root, &ca_pem, &ca_key, 0o600);
    assert!(!n1.log().contains("readable by others"));
    // `coffer ca` prints the operator's certificate; tokens pin it.
    let printed = root.join("printed.pem");
    std::fs::write(&printed, ok(n1.coffer(&["ca"]))).unwrap();
    let want = digest(root, &ca_pem);
    assert_eq!(digest(root, &printed), want);
    assert!(n1.log().contains(&want), "the log names another CA digest");
    let manager_token = ok(n1.coffer(&["join-token", "-q", "manager"]));
    let worker_token = ok(n1.coffer(&["join-token", "-q", "worker"]));
    for token in [&manager_token, &worker_token] {
        assert!(token.contains(&want), "{token} does not carry the digest");
    }

    // The CA lasts 30 days, node certificates 90: they end with the CA,
    // and the server says so.
    assert!(
        n1.log()
            .contains("the cluster's CA ends before node certificates"),
        "{}",
        n1.log()
    );
    let end = |pem: &Path| {
        openssl(
            root,
            &["x509", "-in", pem.to_str().unwrap(), "-noout", "-enddate"],
        )
    };
    assert_eq!(end(&n1.dir.join("identity/node.crt")), end(&ca_pem));
    let n2 = Server::join_in(root, "n2", &n1, &manager_token);
    n2.wait_until_voting();
    let w = Server::join_in(root, "w", &n1, &worker_token);
    ok(n2.coffer(&["kv", "put", "k", "v"]));
    assert_eq!(ok(n1.coffer(&["kv", "get", "k"])), "v");
    for node in [&n1, &n2, &w] {
        assert_eq!(
            s_client(&node.addr, &ca_pem),
            (true, 1),
            "{} under its CA",
            node.addr
        );
        assert!(!s_client(&node.addr, &other_pem).0, "another CA verified");
    }

    // The CA key is sealed in the store: no file of any node, nor a log,
    // holds it.
    let mut files = Vec::new();
    for node in [&n1, &n2, &w] {
        files.push(node.log.clone());
        files.extend(files_under(&node.dir));
    }
    let lines = key_lines(&ca_key);
    assert!(!lines.is_empty());
    let needles: Vec<&str> = lines.iter().map(String::as_str).collect();
    assert_in_none(&files, &needles);
}

#[test]
fn an_intermediate_ca_with_an_rsa_key_is_presented_after_each_node() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (root_pem, _) = ca(root, "corp-root", "ec", None);
    let (int_pem, int_key) = ca(root, "corp-issuing", "rsa:2048", Some("corp-root"));
    // A key file others may read: used, with a warning.
    let n1 = start_under(root, &int_pem, &int_key, 0o644);
    assert!(
        n1.log().contains("the CA key file is readable by others"),
        "{}",
        n1.log()
    );
    let token = ok(n1.coffer(&["join-token", "-q", "worker"]));
    assert!(token.contains(&digest(root, &int_pem)));
    let w = Server::join_in(root, "w", &n1, &token);
    for node in [&n1, &w] {
        // A client trusting only the operator's root: the node sends the
        // intermediate too.
        assert_eq!(s_client(&node.addr, &root_pem), (true, 2), "{}", node.addr);
    }
    ok(n1.coffer(&["kv", "put", "k", "v"]));
}

/// Starts a server on `dir` with `extra` and waits for it to exit.
fn refused_start(root: &Path, name: &str, extra: &[&str], why: &str) {
    let dir = root.join(name);
    let log = root.join(format!("{name}.log"));
    let mut server = Server::spawn(&dir, &log, "127.0.0.1:0", extra);
    let status = server.wait();
    assert!(!status.success());
    let said = read(&log);
    assert!(said.contains(why), "{said:?} does not say {why:?}");
    // Nothing was created.
    assert!(!dir.join("keys").exists() && !dir.join("db").exists());
}

#[test]
fn a_ca_that_will_not_do_is_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (ca_pem, ca_key) = ca(root, "corp-root", "ec", None);
    let (_, other_key) = ca(root, "other-root", "ec", None);
    // A leaf certificate signed by the root: not a CA.
    let leaf_req = [
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "leaf.key",
        "-subj",
        "/CN=leaf",
    ];
    sign(
        root,
        &leaf_req,
        "corp-root",
        "leaf.pem",
        "basicConstraints=critical,CA:FALSE\n",
    );
    let sec1 = root.join("corp-root.sec1");
    openssl(
        root,
        &[
            "ec",
            "-in",
            ca_key.to_str().unwrap(),
            "-out",
            sec1.to_str().unwrap(),
        ],
    );
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let leaf = (s(&root.join("leaf.pem")), s(&root.join("leaf.key")));
    for (name, cert, key, why) in [
        ("leaf", leaf.0.clone(), leaf.1.clone(), "not a CA's"),
        (
            "mismatch",
            s(&ca_pem),
            s(&other_key),
            "not the key of the CA certificate",
        ),
        ("sec1", s(&ca_pem), s(&sec1), "convert it to PKCS#8"),
        ("swapped", s(&ca_key), s(&ca_pem), "not a CERTIFICATE"),
        (
            "missing",
            s(&root.join("nothing.pem")),
            s(&ca_key),
            "reading the CA certificate",
        ),
    ] {
        refused_start(root, name, &["--ca-cert", &cert, "--ca-key", &key], why);
    }
    // Both files or neither; never with --join.
    refused_start(root, "half", &["--ca-cert", &s(&ca_pem)], "--ca-key <FILE>");
    refused_start(
        root,
        "joining",
        &[
            "--ca-cert",
            &s(&ca_pem),
            "--ca-key",
            &s(&ca_key),
            "--join",
            "127.0.0.1:1",
            "--token",
            "x",
        ],
        "cannot be used with",
    );
    // The key never shows in what the refusals said.
    let mut logs: Vec<PathBuf> = ["leaf", "mismatch", "sec1", "swapped", "missing"]
        .iter()
        .map(|n| root.join(format!("{n}.log")))
        .collect();
    logs.sort();
    let lines = key_lines(&ca_key);
    let needles: Vec<&str> = lines.iter().map(String::as_str).collect();
    assert_in_none(&logs, &needles);
}

/// `coffer ca rotate --ca-cert --ca-key` moves a running cluster (a
/// generated root) to the operator's CA: done once both nodes renewed,
/// `openssl s_client` then verifies each against the operator's CA, and
/// the tokens carry its digest. A second rotation while one waits for a
/// node that is down is refused, and a key that is not the CA's is refused
/// before anything changes.
#[test]
fn a_running_cluster_rotates_to_the_operators_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let n1 = Server::start_in(root, "n1", "127.0.0.1:0", &[]);
    let worker_token = ok(n1.coffer(&["join-token", "-q", "worker"]));
    let mut w = Server::join_in(root, "w", &n1, &worker_token);
    support::wait_for("the worker in node ls", &n1.log, || n1.nodes().len() == 2);
    let (corp_pem, corp_key) = ca(root, "corp-root", "ec", None);
    let (other_pem, other_key) = ca(root, "other-root", "ec", None);

    // The other CA's key with this CA's certificate: refused.
    let out = n1.coffer(&[
        "ca",
        "rotate",
        "--ca-cert",
        corp_pem.to_str().unwrap(),
        "--ca-key",
        other_key.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("the new CA"), "{said}");
    assert!(ok(n1.coffer(&["ca"])).len() > 100);
    assert!(coffer_status(&n1).is_empty(), "a rotation began");

    let rotated = ok(n1.coffer(&[
        "ca",
        "rotate",
        "--ca-cert",
        corp_pem.to_str().unwrap(),
        "--ca-key",
        corp_key.to_str().unwrap(),
    ]));
    assert!(rotated.contains("rotation is done"), "{rotated}");
    let printed = root.join("printed.pem");
    std::fs::write(&printed, ok(n1.coffer(&["ca"]))).unwrap();
    let want = digest(root, &corp_pem);
    assert_eq!(digest(root, &printed), want);
    assert!(ok(n1.coffer(&["join-token", "-q", "worker"])).contains(&want));
    for node in [&n1, &w] {
        support::wait_for("the node to present its new certificate", &node.log, || {
            s_client(&node.addr, &corp_pem).0
        });
        assert!(!s_client(&node.addr, &other_pem).0);
    }

    // A rotation waits for the worker, which is down; another is refused.
    w.stop("TERM");
    let started = ok(n1.coffer(&["ca", "rotate", "--detach"]));
    assert!(started.contains("of 2 nodes"), "{started}");
    let again = n1.coffer(&["ca", "rotate", "--detach"]);
    assert!(!again.status.success());
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(said.contains("already under way"), "{said}");
    w.restart();
    support::wait_for("the second rotation to finish", &w.log, || {
        coffer_status(&n1).is_empty()
    });
    std::fs::write(&printed, ok(n1.coffer(&["ca"]))).unwrap();
    assert_ne!(digest(root, &printed), want);
    // The CA key is sealed in the store: no file of a node, nor a log,
    // holds it.
    let mut files = Vec::new();
    for node in [&n1, &w] {
        files.push(node.log.clone());
        files.extend(files_under(&node.dir));
    }
    let lines = key_lines(&corp_key);
    assert!(!lines.is_empty());
    let needles: Vec<&str> = lines.iter().map(String::as_str).collect();
    assert_in_none(&files, &needles);
}

/// What `coffer ca` says on standard error: a rotation's progress, or
/// nothing.
fn coffer_status(node: &Server) -> String {
    let out = node.coffer(&["ca"]);
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}
