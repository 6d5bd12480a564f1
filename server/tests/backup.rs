//! `coffer snapshot save` and `coffer snapshot restore` across processes:
//! a snapshot saved from a follower of three managers while a client
//! writes, restored offline into a new data directory, holds every key,
//! secret and task acknowledged before the save; started, the restored
//! node is a single-node cluster of its own (same CA, new cluster id, new
//! join tokens, the old nodes removed). A flipped byte, a truncation, a
//! wrong passphrase and a non-empty directory are refused without writing
//! anything, and the file holds no plaintext.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use support::{assert_in_none, coffer, coffer_with_input, files_under, ok, read, refused, Server};

const PASSPHRASE: &str = "correct horse battery staple";

fn restore(dir: &Path, file: &Path, passphrase: &Path) -> std::process::Output {
    coffer(
        dir,
        &[
            "snapshot",
            "restore",
            file.to_str().unwrap(),
            "--passphrase-file",
            passphrase.to_str().unwrap(),
        ],
    )
}

#[test]
fn a_snapshot_saved_under_load_restores_into_a_cluster_of_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let [n1, n2, n3] = support::three_managers(root);
    let pass = root.join("pass");
    std::fs::write(&pass, format!("{PASSPHRASE}\n")).unwrap();
    for i in 0..100 {
        ok(n1.coffer(&["kv", "put", &format!("app/k{i:03}"), &format!("v{i}")]));
    }
    ok(coffer_with_input(
        &n1.dir,
        &["secret", "create", "db_password", "-"],
        Some(b"CANARY-backup-secret"),
    ));
    ok(coffer_with_input(
        &n1.dir,
        &["secret", "create", "api_key", "-"],
        Some(b"second secret value"),
    ));
    ok(n1.coffer(&[
        "task",
        "attach",
        "web.1",
        "--secret",
        "source=db_password,target=db,mode=0400",
    ]));

    // A writer through n2 the whole time; what it had acknowledged before
    // the save started must be in the snapshot.
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop, dir) = (acked.clone(), stop.clone(), n2.dir.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("load/{i:05}");
                if coffer(&dir, &["kv", "put", &key, &format!("w{i}")])
                    .status
                    .success()
                {
                    acked.lock().unwrap().push(i);
                }
                i += 1;
            }
        })
    };
    support::wait_for("the writer to get going", &n2.log, || {
        acked.lock().unwrap().len() >= 5
    });
    let before_save: Vec<usize> = acked.lock().unwrap().clone();
    let file = root.join("backup.cfsnap");
    let said = coffer(
        &n3.dir,
        &[
            "snapshot",
            "save",
            file.to_str().unwrap(),
            "--passphrase-file",
            pass.to_str().unwrap(),
        ],
    );
    ok(said.clone());
    let said = String::from_utf8_lossy(&said.stderr).to_string();
    assert!(said.contains("saved a snapshot at revision"), "{said}");
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert_in_none(
        std::slice::from_ref(&file),
        &["CANARY-backup-secret", "app/k050", "db_password"],
    );

    // Refused, writing nothing: damage, truncation, a wrong passphrase, a
    // directory that is not empty.
    let bytes = std::fs::read(&file).unwrap();
    let mut flipped = bytes.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    let cases: [(&str, Vec<u8>, &str); 2] = [
        ("flipped", flipped, "damaged"),
        (
            "truncated",
            bytes[..bytes.len() - 100].to_vec(),
            "truncated",
        ),
    ];
    for (name, content, why) in cases {
        let bad = root.join(format!("{name}.cfsnap"));
        std::fs::write(&bad, content).unwrap();
        let target = root.join(format!("restore-{name}"));
        refused(restore(&target, &bad, &pass), why);
        assert!(
            !target.exists() || files_under(&target).is_empty(),
            "{name} wrote files"
        );
    }
    let cut = root.join("cut.cfsnap");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    refused(restore(&root.join("restore-cut"), &cut, &pass), "truncated");
    let wrong = root.join("wrong-pass");
    std::fs::write(&wrong, "not the passphrase\n").unwrap();
    let target = root.join("restore-wrong");
    refused(restore(&target, &file, &wrong), "wrong passphrase");
    assert!(!target.exists() || files_under(&target).is_empty());
    refused(restore(&n1.dir, &file, &pass), "is not empty");

    // Restored and started: everything acknowledged before the save.
    let new = root.join("restored");
    let said = restore(&new, &file, &pass);
    ok(said.clone());
    let said = String::from_utf8_lossy(&said.stderr).to_string();
    assert!(said.contains("restored"), "{said}");
    let restored = Server::start(&new, &root.join("restored.log"), "127.0.0.1:0", &[]);
    for i in [0, 42, 99] {
        assert_eq!(
            ok(restored.coffer(&["kv", "get", &format!("app/k{i:03}")])),
            format!("v{i}")
        );
    }
    for i in &before_save {
        assert_eq!(
            ok(restored.coffer(&["kv", "get", &format!("load/{i:05}")])),
            format!("w{i}")
        );
    }
    let secrets = ok(restored.coffer(&["secret", "ls", "--format", "json"]));
    assert!(
        secrets.contains("db_password") && secrets.contains("api_key"),
        "{secrets}"
    );
    let task = ok(restored.coffer(&["task", "inspect", "web.1"]));
    assert!(task.contains("db_password"), "{task}");

    // A cluster of its own: the same CA, another cluster id, new tokens,
    // the old nodes gone.
    assert_eq!(ok(restored.coffer(&["ca"])), ok(n1.coffer(&["ca"])));
    let cluster_of = |log: &str| {
        log.split_whitespace()
            .find_map(|w| w.strip_prefix("cluster="))
            .map(|id| id.trim_matches('"').to_string())
            .unwrap()
    };
    assert_ne!(cluster_of(&restored.log()), cluster_of(&n1.log()));
    let nodes = restored.nodes();
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    // Recorded at the address it serves, and answering there.
    support::wait_for(
        "the restored node at its own address",
        &restored.log,
        || {
            let nodes = restored.nodes();
            nodes[0]["address"] == restored.addr.as_str() && nodes[0]["reachable"] == true
        },
    );
    let old_token = ok(n1.coffer(&["join-token", "-q", "manager"]));
    assert_ne!(
        ok(restored.coffer(&["join-token", "-q", "manager"])),
        old_token
    );
    let mut joiner = Server::spawn(
        &root.join("joiner"),
        &root.join("joiner.log"),
        "127.0.0.1:0",
        &["--join", &restored.addr, "--token", &old_token],
    );
    assert!(!joiner.wait().success());
    assert!(read(&root.join("joiner.log")).contains("invalid join token"));

    // Asked to, a restore keeps the cluster id.
    let kept = root.join("restored-kept");
    let said = coffer(
        &kept,
        &[
            "snapshot",
            "restore",
            file.to_str().unwrap(),
            "--passphrase-file",
            pass.to_str().unwrap(),
            "--keep-cluster-id",
        ],
    );
    ok(said.clone());
    let said = String::from_utf8_lossy(&said.stderr).to_string();
    assert!(
        said.contains(&format!("of cluster {}", cluster_of(&n1.log()))),
        "{said}"
    );

    // A restart is an ordinary one.
    let mut restored = restored;
    restored.stop("TERM");
    restored.restart();
    assert_eq!(ok(restored.coffer(&["kv", "get", "app/k007"])), "v7");
    restored.stop("TERM");

    let mut files = vec![root.join("restored.log")];
    files.extend(files_under(&new));
    assert_in_none(&files, &["CANARY-backup-secret", PASSPHRASE]);
}
