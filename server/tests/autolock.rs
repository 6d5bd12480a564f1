//! Autolock across processes: a manager initialised with `--autolock`
//! prints its unlock key once; SIGKILLed and restarted, it is locked (its
//! socket answers every call but `unlock` with the locked error, and the
//! data directory cannot be opened without a server either); a wrong or
//! malformed key is refused; the right key from standard input unlocks
//! it and every write is there; `unlock-key --rotate` replaces the key,
//! after which only the new one unlocks it; no file holds an unlock key or
//! the data in the clear.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{
    assert_in_none, coffer_with_input, files_under, ok, read, refused, wait_for, Server,
};

#[test]
fn an_autolocked_manager_restarts_locked_until_unlocked() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut n1 = Server::start_in(root, "n1", "127.0.0.1:0", &["--autolock"]);
    let printed = read(&root.join("n1.out"));
    let key = printed
        .split_whitespace()
        .find(|w| w.starts_with("CFKEY-1-"))
        .unwrap_or_else(|| panic!("no unlock key printed:\n{printed}"))
        .to_string();
    assert!(
        !n1.log().contains(&key[8..]),
        "the unlock key is in the log"
    );
    ok(coffer_with_input(
        &n1.dir,
        &["kv", "put", "app/db-password", "-"],
        Some(b"CANARY-autolock"),
    ));
    ok(coffer_with_input(
        &n1.dir,
        &["secret", "create", "my_password", "-"],
        Some(b"password123yoyo"),
    ));

    n1.stop("KILL");
    let (dir, log, addr) = (n1.dir.clone(), n1.log.clone(), n1.addr.clone());
    drop(n1);
    // Not served, the data directory cannot be opened without the key.
    refused(
        support::coffer(&dir, &["kv", "get", "app/db-password"]),
        "locked",
    );

    let mut n1 = Server::spawn(&dir, &log, &addr, &[]);
    n1.wait_for_socket();
    refused(
        n1.coffer(&["kv", "get", "app/db-password"]),
        "this node is locked",
    );
    refused(n1.coffer(&["secret", "ls"]), "coffer unlock");
    let wrong = format!("CFKEY-1-{}", "0".repeat(64));
    refused(
        coffer_with_input(&dir, &["unlock"], Some(wrong.as_bytes())),
        "wrong unlock key",
    );
    refused(
        coffer_with_input(&dir, &["unlock"], Some(b"CFKEY-1-not-hex")),
        "not an unlock key",
    );
    ok(coffer_with_input(&dir, &["unlock"], Some(key.as_bytes())));
    wait_for("the unlocked server to serve", &log, || {
        read(&log).contains("coffer server is up")
    });
    assert_eq!(
        ok(n1.coffer(&["kv", "get", "app/db-password"])),
        "CANARY-autolock"
    );
    assert!(ok(n1.coffer(&["secret", "ls", "-q"])).lines().count() == 1);
    refused(
        coffer_with_input(&dir, &["unlock"], Some(key.as_bytes())),
        "not locked",
    );

    // `unlock-key` prints it again; `--rotate` replaces it, the node seals
    // its keys under the new one, and only that one unlocks it next time.
    assert_eq!(ok(n1.coffer(&["unlock-key", "-q"])), key);
    let rotated = ok(n1.coffer(&["unlock-key", "--rotate", "-q"]));
    assert!(
        rotated.starts_with("CFKEY-1-") && rotated != key,
        "{rotated}"
    );
    assert_eq!(ok(n1.coffer(&["unlock-key", "-q"])), rotated);
    wait_for("the keys sealed under the new unlock key", &log, || {
        read(&log).contains("sealed this node's keys under the cluster's current unlock key")
    });
    n1.stop("KILL");
    let mut n1 = Server::spawn(&dir, &log, &addr, &[]);
    n1.wait_for_socket();
    refused(
        coffer_with_input(&dir, &["unlock"], Some(key.as_bytes())),
        "wrong unlock key",
    );
    ok(coffer_with_input(
        &dir,
        &["unlock"],
        Some(rotated.as_bytes()),
    ));
    wait_for("the unlocked server to serve", &log, || {
        read(&log).contains("coffer server is up")
    });
    assert_eq!(
        ok(n1.coffer(&["kv", "get", "app/db-password"])),
        "CANARY-autolock"
    );

    n1.stop("TERM");
    assert_in_none_of(
        &dir,
        &log,
        &[
            &key[8..],
            "CANARY-autolock",
            "password123yoyo",
            "my_password",
        ],
    );
    assert!(!dir.join("keys/kek").exists());
}

/// A manager that joins an autolocked cluster seals its keys under the
/// cluster's unlock key once its replica holds the setting: restarted,
/// it is locked, and the cluster's key unlocks it.
#[test]
fn a_manager_joining_an_autolocked_cluster_is_autolocked_too() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (_n1, mut n2, key) = autolocked_pair(root);
    assert!(!n2.dir.join("keys/kek").exists());

    n2.stop("KILL");
    let (dir, log, addr) = (n2.dir.clone(), n2.log.clone(), n2.addr.clone());
    drop(n2);
    let mut n2 = Server::spawn(&dir, &log, &addr, &[]);
    n2.wait_for_socket();
    refused(n2.coffer(&["node", "ls"]), "this node is locked");
    ok(coffer_with_input(&dir, &["unlock"], Some(key.as_bytes())));
    wait_for("the unlocked manager to serve", &log, || {
        read(&log).contains("coffer server is up")
    });
    n2.wait_until_voting();
    n2.stop("TERM");
    assert_in_none_of(&dir, &log, &[&key[8..]]);
}

/// `cluster update --autolock=true` on a running cluster prints a key and
/// the manager seals its keys under it (locked after a restart);
/// `--autolock=false` seals them under a key file again (a restart needs
/// no key).
#[test]
fn autolock_is_turned_on_and_off_on_a_running_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut n1 = Server::start_in(root, "n1", "127.0.0.1:0", &[]);
    ok(coffer_with_input(
        &n1.dir,
        &["kv", "put", "k", "-"],
        Some(b"CANARY-update"),
    ));
    refused(n1.coffer(&["unlock-key"]), "autolock is off");
    let printed = ok(n1.coffer(&["cluster", "update", "--autolock=true"]));
    let key = printed
        .split_whitespace()
        .find(|w| w.starts_with("CFKEY-1-"))
        .unwrap_or_else(|| panic!("no unlock key printed:\n{printed}"))
        .to_string();
    assert_eq!(ok(n1.coffer(&["unlock-key", "-q"])), key);
    wait_for("the keys sealed under the unlock key", &n1.log, || {
        n1.log()
            .contains("sealed this node's keys under the cluster's current unlock key")
    });
    assert!(!n1.dir.join("keys/kek").exists());

    n1.stop("KILL");
    let (dir, log, addr) = (n1.dir.clone(), n1.log.clone(), n1.addr.clone());
    drop(n1);
    let n1 = Server::spawn(&dir, &log, &addr, &[]);
    n1.wait_for_socket();
    refused(n1.coffer(&["kv", "get", "k"]), "this node is locked");
    ok(coffer_with_input(&dir, &["unlock"], Some(key.as_bytes())));
    wait_for("the unlocked server to serve", &log, || {
        read(&log).contains("coffer server is up")
    });
    assert!(ok(n1.coffer(&["cluster", "update", "--autolock=false"])).contains("off"));
    wait_for("the keys sealed under a key file", &log, || {
        read(&log).contains("autolock is off: this node's keys are sealed under keys/kek again")
    });
    assert!(dir.join("keys/kek").exists());

    let mut n1 = n1;
    n1.stop("KILL");
    drop(n1);
    let mut n1 = Server::start(&dir, &log, &addr, &[]);
    assert_eq!(ok(n1.coffer(&["kv", "get", "k"])), "CANARY-update");
    n1.stop("TERM");
    assert_in_none_of(&dir, &log, &[&key[8..], "CANARY-update"]);
}

/// An autolocked cluster in `root`: n1 created it, n2 joined as a manager
/// and voting, its keys sealed under the cluster's unlock key (returned).
fn autolocked_pair(root: &std::path::Path) -> (Server, Server, String) {
    let n1 = Server::start_in(root, "n1", "127.0.0.1:0", &["--autolock"]);
    let key = ok(n1.coffer(&["unlock-key", "-q"]));
    let token = ok(n1.coffer(&["join-token", "-q", "manager"]));
    let n2 = Server::join_in(root, "n2", &n1, &token);
    n2.wait_until_voting();
    wait_for("the joined manager to seal its keys", &n2.log, || {
        sealings(&n2.log) == 1
    });
    (n1, n2, key)
}

/// Asserts that no file under `dir`, nor the log `log`, holds any of
/// `needles`.
fn assert_in_none_of(dir: &std::path::Path, log: &std::path::Path, needles: &[&str]) {
    let mut files = vec![log.to_path_buf()];
    files.extend(files_under(dir));
    assert_in_none(&files, needles);
}

/// How many times `server`'s log says it sealed its keys under the
/// cluster's current unlock key.
fn sealings(log: &std::path::Path) -> usize {
    read(log)
        .matches("sealed this node's keys under the cluster's current unlock key")
        .count()
}

/// Restarts `server` (killed) on its directory and address: locked.
fn restart_locked(server: Server) -> Server {
    let (dir, log, addr) = (server.dir.clone(), server.log.clone(), server.addr.clone());
    drop(server);
    let mut restarted = Server::spawn(&dir, &log, &addr, &[]);
    restarted.wait_for_socket();
    restarted.addr = addr;
    restarted
}

/// Unlocks `server` with `key` and waits until it serves.
fn unlock(server: &Server, key: &str) {
    ok(coffer_with_input(
        &server.dir,
        &["unlock"],
        Some(key.as_bytes()),
    ));
    wait_for("the unlocked server to serve", &server.log, || {
        server.log().contains("coffer server is up")
    });
}

/// On three autolocked managers, the unlock key is rotated while one is
/// down: after a restart of all three, the two that were up unlock with
/// the new key only, the one that was down with the old key, and once
/// unlocked it seals its keys under the new one.
#[test]
fn a_manager_down_during_a_rotation_unlocks_with_its_old_key() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let n1 = Server::start_in(root, "n1", "127.0.0.1:0", &["--autolock"]);
    let old = ok(n1.coffer(&["unlock-key", "-q"]));
    let token = ok(n1.coffer(&["join-token", "-q", "manager"]));
    let n2 = Server::join_in(root, "n2", &n1, &token);
    let mut n3 = Server::join_in(root, "n3", &n1, &token);
    for n in [&n2, &n3] {
        n.wait_until_voting();
        wait_for("the joined manager to seal its keys", &n.log, || {
            sealings(&n.log) == 1
        });
    }
    ok(coffer_with_input(
        &n1.dir,
        &["kv", "put", "k", "-"],
        Some(b"v1"),
    ));

    n3.stop("KILL");
    let new = ok(n1.coffer(&["unlock-key", "--rotate", "-q"]));
    assert_ne!(new, old);
    wait_for("n2 to seal its keys under the new key", &n2.log, || {
        sealings(&n2.log) == 2
    });
    wait_for("n1 to seal its keys under the new key", &n1.log, || {
        sealings(&n1.log) == 1
    });
    ok(coffer_with_input(
        &n1.dir,
        &["kv", "put", "k", "-"],
        Some(b"v2"),
    ));

    let (mut n1, mut n2) = (n1, n2);
    n1.stop("KILL");
    n2.stop("KILL");
    let n1 = restart_locked(n1);
    let n2 = restart_locked(n2);
    let n3 = restart_locked(n3);
    for n in [&n1, &n2] {
        refused(
            coffer_with_input(&n.dir, &["unlock"], Some(old.as_bytes())),
            "wrong unlock key",
        );
        unlock(n, &new);
    }
    refused(
        coffer_with_input(&n3.dir, &["unlock"], Some(new.as_bytes())),
        "wrong unlock key",
    );
    unlock(&n3, &old);
    wait_for("n3 to seal its keys under the new key", &n3.log, || {
        sealings(&n3.log) == 1
    });
    n3.wait_until_voting();
    assert_eq!(ok(n3.coffer(&["kv", "get", "k"])), "v2");

    let mut n3 = n3;
    n3.stop("KILL");
    let n3 = restart_locked(n3);
    refused(
        coffer_with_input(&n3.dir, &["unlock"], Some(old.as_bytes())),
        "wrong unlock key",
    );
    unlock(&n3, &new);
    for n in [&n1, &n2, &n3] {
        assert_in_none_of(&n.dir, &n.log, &[&old[8..], &new[8..]]);
    }
}

/// Autolock is for managers (as in Swarm): a manager demoted in an
/// autolocked cluster seals its keys under a key file again and restarts
/// as a worker without a key; a worker whose keys are still sealed under
/// the unlock key (killed between its demotion and that) is locked once,
/// then unsealed for good; promoted again, it seals its keys under the
/// cluster's key.
#[test]
fn a_demoted_manager_serves_as_a_worker_without_the_unlock_key() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (n1, mut n2, key) = autolocked_pair(root);
    let id2 = n2.id();

    assert!(ok(n1.coffer(&["node", "demote", &id2])).contains("is now a worker"));
    wait_for(
        "the demoted manager to seal its keys for a worker",
        &n2.log,
        || {
            n2.log().contains("a worker is not autolocked")
                && n2.log().contains("serving as a worker from now on")
        },
    );
    assert!(n2.dir.join("keys/kek").exists());
    n2.stop("KILL");
    n2.restart();
    refused(n2.coffer(&["kv", "get", "k"]), "this node is a worker");

    // Killed before its keys were sealed for a worker (made here by
    // sealing them under the unlock key again): locked once.
    n2.stop("KILL");
    coffer_store::reseal_keyring(
        &n2.dir,
        None,
        Some(&coffer_store::UnlockKey::parse(&key).unwrap()),
    )
    .unwrap();
    assert!(!n2.dir.join("keys/kek").exists());
    let n2 = restart_locked(n2);
    refused(n2.coffer(&["node", "ls"]), "this node is locked");
    ok(coffer_with_input(
        &n2.dir,
        &["unlock"],
        Some(key.as_bytes()),
    ));
    wait_for("the unlocked worker to serve", &n2.log, || {
        n2.log().contains("coffer worker is up")
    });
    assert!(n2.log().contains("a worker is not autolocked"));
    assert!(n2.dir.join("keys/kek").exists());
    let mut n2 = n2;
    n2.stop("KILL");
    n2.restart();
    refused(n2.coffer(&["kv", "get", "k"]), "this node is a worker");

    // Promoted, it is a manager of an autolocked cluster again.
    let before = sealings(&n2.log);
    assert!(ok(n1.coffer(&["node", "promote", &id2])).contains("is now a manager"));
    wait_for("the promoted worker to seal its keys", &n2.log, || {
        sealings(&n2.log) == before + 1
    });
    assert!(!n2.dir.join("keys/kek").exists());
    n2.wait_until_voting();
    assert_in_none_of(&n2.dir, &n2.log, &[&key[8..]]);
}
