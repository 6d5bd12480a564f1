//! `coffer secret ...` through the real binary and a running server: the
//! seed flow's create, ls, inspect, rotate and rm; every validation rule;
//! a follower passing calls to the leader; and neither the name nor the
//! data anywhere on disk or in the log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{assert_in_none, coffer_with_input, files_under, ok, refused, Server};

#[test]
fn secrets_are_created_listed_inspected_rotated_and_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut n1 = Server::start_in(root, "n1", "127.0.0.1:0", &[]);
    let dir = n1.dir.clone();

    let id = ok(coffer_with_input(
        &dir,
        &[
            "secret",
            "create",
            "--label",
            "env=prod",
            "my_password",
            "-",
        ],
        Some(b"password123yoyo"),
    ));
    assert_eq!(id.len(), 25, "{id}");
    let table = ok(n1.coffer(&["secret", "ls"]));
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table.contains(&id) && table.contains("my_password"),
        "{table}"
    );
    assert_eq!(ok(n1.coffer(&["secret", "ls", "-q"])), id);
    assert_eq!(
        ok(n1.coffer(&["secret", "ls", "-q", "--filter", "label=env=prod"])),
        id
    );
    assert_eq!(
        ok(n1.coffer(&["secret", "ls", "-q", "--filter", "name=other"])),
        ""
    );

    // Metadata only, by name, id or id prefix.
    for key in ["my_password", id.as_str(), &id[..5]] {
        let shown = ok(n1.coffer(&["secret", "inspect", key]));
        let json: serde_json::Value = serde_json::from_str(&shown).unwrap();
        assert_eq!(json[0]["id"], id.as_str());
        assert_eq!(json[0]["version"], 1);
        assert_eq!(json[0]["labels"]["env"], "prod");
        assert!(!shown.contains("yoyo"), "{shown}");
    }
    let pretty = ok(n1.coffer(&["secret", "inspect", "--pretty", "my_password"]));
    assert!(pretty.contains("Name:      my_password"), "{pretty}");

    // Every rule, each with its own refusal.
    for bad in ["-bad", "bad-", "a b", "a/b", &"n".repeat(65)] {
        refused(
            coffer_with_input(&dir, &["secret", "create", "--", bad, "-"], Some(b"x")),
            "invalid secret name",
        );
    }
    refused(
        coffer_with_input(&dir, &["secret", "create", "MY_PASSWORD", "-"], Some(b"x")),
        "exists already",
    );
    refused(
        coffer_with_input(&dir, &["secret", "create", "empty", "-"], Some(b"")),
        "must not be empty",
    );
    let big = root.join("big");
    std::fs::write(&big, vec![b'x'; 600 * 1000]).unwrap();
    refused(
        n1.coffer(&["secret", "create", "big", big.to_str().unwrap()]),
        "at most 512000 bytes",
    );
    refused(n1.coffer(&["secret", "inspect", "nope"]), "no secret");
    let v2 = root.join("v2");
    std::fs::write(&v2, b"second-yoyo").unwrap();
    refused(
        n1.coffer(&["secret", "rotate", "nope", v2.to_str().unwrap()]),
        "no secret",
    );

    // Rotation from a file; a follower passes calls to the leader.
    let token = ok(n1.coffer(&["join-token", "-q", "manager"]));
    let n2 = Server::join_in(root, "n2", &n1, &token);
    n2.wait_until_voting();
    assert_eq!(
        ok(n2.coffer(&["secret", "rotate", "my_password", v2.to_str().unwrap()])),
        "2"
    );
    let shown = ok(n2.coffer(&["secret", "inspect", "my_password"]));
    assert!(shown.contains("\"version\": 2"), "{shown}");

    // Neither the name nor the data is on disk in the clear, nor in a log.
    n1.stop("TERM");
    let mut files = vec![n1.log.clone(), n2.log.clone()];
    files.extend(files_under(&n1.dir));
    files.extend(files_under(&n2.dir));
    assert_in_none(&files, &["password123yoyo", "second-yoyo", "my_password"]);
    n1.restart();

    // Removed (several at once; an unknown one fails alone).
    let out = n1.coffer(&["secret", "rm", "my_password", "nope"]);
    assert!(!out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), id);
    assert_eq!(ok(n1.coffer(&["secret", "ls", "-q"])), "");
}
