//! `coffer ca rotate` on three managers and a worker while a client writes
//! and the worker keeps a secret mounted, with one manager down when it
//! begins: the rotation waits for that manager (3 of 4 nodes), which
//! renews under the new root once it returns (it still trusts the old
//! root alone: the cross-signed certificate lets it accept the others);
//! then every node's certificate chains to the new root and each trusts it
//! alone, a client holding only the old root is refused, the join tokens
//! carry the new digest, no write failed for longer than an election, and
//! the worker's mount still follows a secret rotation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{coffer, coffer_with_input, ok, read, wait_for, Server, Unmount};

fn root_ca(dir: &std::path::Path) -> (String, String) {
    let out = coffer(dir, &["ca"]);
    assert!(out.status.success(), "{out:?}");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn der_of(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

fn pems_in(path: &std::path::Path) -> Vec<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_file_iter(path)
        .unwrap()
        .map(|c| c.unwrap().to_vec())
        .collect()
}

#[test]
fn the_root_ca_rotates_under_load_and_waits_for_a_node_that_was_down() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let [n1, n2, mut n3] = support::three_managers(root);
    let token = ok(n1.coffer(&["join-token", "-q", "worker"]));
    let w = Server::join_in(root, "w", &n1, &token);
    let worker_id = n1.worker_id();
    ok(coffer_with_input(
        &n1.dir,
        &["secret", "create", "db_password", "-"],
        Some(b"SECRET-v1"),
    ));
    ok(n1.coffer(&[
        "task",
        "attach",
        "job",
        "--node",
        &worker_id,
        "--secret",
        "source=db_password,target=pw",
    ]));
    let run = root.join("w-run/job");
    let _cleanup = Unmount(run.clone());
    ok(w.coffer(&["mount", "job", run.to_str().unwrap()]));
    assert_eq!(std::fs::read(run.join("pw")).unwrap(), b"SECRET-v1");
    let (old_pem, _) = root_ca(&n1.dir);
    let old_root = der_of(&old_pem);
    let old_token = ok(n1.coffer(&["join-token", "-q", "manager"]));

    // A client writes all along through n1 and n2; the longest run of
    // failures is kept.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let longest_outage = Arc::new(Mutex::new(Duration::ZERO));
    let writer = {
        let (stop, acked, outage) = (stop.clone(), acked.clone(), longest_outage.clone());
        let sockets = [n1.socket(), n2.socket()];
        std::thread::spawn(move || {
            let mut failing_since: Option<Instant> = None;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let k = format!("w/{i:06}");
                let done = sockets.iter().any(|s| {
                    support::coffer_at(s, &["kv", "put", &k, "v"])
                        .status
                        .success()
                });
                match (done, failing_since) {
                    (true, Some(since)) => {
                        let mut o = outage.lock().unwrap();
                        *o = (*o).max(since.elapsed());
                        failing_since = None;
                    }
                    (false, None) => failing_since = Some(Instant::now()),
                    _ => {}
                }
                if done {
                    acked.lock().unwrap().push(k);
                }
                i += 1;
            }
        })
    };

    // Every node has said which root its certificate is from (its agent
    // asks every 2 s); then n3 is down when the rotation begins.
    let old_digest = coffer_vault::ca::cert_digest(&old_root);
    wait_for("every node to say which root it holds", &n1.log, || {
        let nodes = n1.nodes();
        nodes.len() == 4 && nodes.iter().all(|n| n["cert_root"] == old_digest.as_str())
    });
    n3.stop("TERM");
    let started = ok(n1.coffer(&["ca", "rotate", "--detach"]));
    assert!(started.contains("under way"), "{started}");
    let (_, progress) = root_ca(&n2.dir);
    assert!(progress.contains("of 4 nodes"), "{progress}");
    wait_for(
        "every node but the one that is down to renew",
        &n1.log,
        || root_ca(&n1.dir).1.contains("3 of 4 nodes"),
    );
    // It waits for n3: still under way, the old root still the cluster's,
    // and `coffer ca` names the node still under it.
    let (still, progress) = root_ca(&n1.dir);
    assert_eq!(der_of(&still), old_root, "{progress}");
    assert!(progress.contains("3 of 4 nodes"), "{progress}");
    let per_node: Vec<&str> = progress.lines().filter(|l| l.starts_with("  ")).collect();
    assert_eq!(per_node.len(), 4, "{progress}");
    assert_eq!(
        per_node
            .iter()
            .filter(|l| l.ends_with("the new root"))
            .count(),
        3,
        "{progress}"
    );
    let n3_line = progress
        .lines()
        .find(|l| l.contains("the current root"))
        .unwrap_or_else(|| panic!("{progress}"));
    assert!(n3_line.contains("manager"), "{progress}");

    // n3 returns trusting only the old root; it renews, and the rotation
    // ends.
    assert_eq!(
        pems_in(&n3.dir.join("identity/ca.crt")),
        vec![old_root.clone()]
    );
    n3.restart();
    wait_for("the rotation to finish", &n3.log, || {
        let (pem, progress) = root_ca(&n1.dir);
        der_of(&pem) != old_root && progress.is_empty()
    });
    let (new_pem, _) = root_ca(&n1.dir);
    let new_root = der_of(&new_pem);
    assert!(coffer_vault::ca::is_self_signed(&new_root));

    // Every node's certificate chains to the new root, and every node
    // trusts it alone (the agents follow within a few seconds).
    for s in [&n1, &n2, &n3, &w] {
        let files = s.dir.join("identity");
        wait_for("the node to trust the new root alone", &s.log, || {
            pems_in(&files.join("ca.crt")) == vec![new_root.clone()]
        });
        let cert = pems_in(&files.join("node.crt")).remove(0);
        coffer_vault::ca::NodeCert::verify_with(&cert, &new_root)
            .unwrap_or_else(|e| panic!("{}: {e}", s.dir.display()));
    }
    let nodes = n2.nodes();
    let new_digest = coffer_vault::ca::cert_digest(&new_root);
    assert!(
        nodes.iter().all(|n| n["cert_root"] == new_digest.as_str()),
        "{nodes:?}"
    );

    // The join tokens carry the new digest; the old one is refused.
    let new_token = ok(n1.coffer(&["join-token", "-q", "manager"]));
    assert_ne!(new_token, old_token);
    assert!(new_token.contains(&new_digest), "{new_token}");

    // A client that holds only the old root refuses the nodes.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let connect = |root: &[u8]| {
        runtime.block_on(async {
            let config =
                coffer_server::tls::client_config(&coffer_server::tls::Trust::of(root), None)
                    .unwrap();
            coffer_server::client::connect_tls(&n1.addr, config).await
        })
    };
    assert!(
        connect(&old_root).is_err(),
        "a client trusting the old root connected"
    );
    assert!(
        connect(&new_root).is_ok(),
        "a client trusting the new root was refused"
    );

    // The worker's mount still follows the secret.
    ok(coffer_with_input(
        &n2.dir,
        &["secret", "rotate", "db_password", "-"],
        Some(b"SECRET-v2"),
    ));
    wait_for("the worker's file to follow the rotation", &w.log, || {
        std::fs::read(run.join("pw")).is_ok_and(|v| v == b"SECRET-v2")
    });

    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let outage = *longest_outage.lock().unwrap();
    assert!(
        outage < Duration::from_secs(5),
        "writes failed for {outage:?} in a row"
    );
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 10, "{}", acked.len());
    let listed = ok(n3.coffer(&["kv", "ls", "--keys-only", "w/"]));
    for k in &acked {
        assert!(listed.lines().any(|l| l == k), "{k} lost");
    }
    assert!(
        [&n1, &n2, &n3]
            .iter()
            .any(|n| read(&n.log).contains("the root CA rotation is done")),
        "no manager logged the end of the rotation"
    );
    ok(w.coffer(&["unmount", run.to_str().unwrap()]));
}
