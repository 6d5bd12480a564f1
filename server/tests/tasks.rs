//! `coffer task ...` through the real binary and a running server: attach
//! with every rule, ls, a secret's removal refused while a task uses it,
//! detach; and a follower naming itself as the task's node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{coffer_with_input, ok, refused, Server};

fn tasks_json(server: &Server) -> serde_json::Value {
    serde_json::from_str(&ok(server.coffer(&["task", "ls", "--format", "json"]))).unwrap()
}

#[test]
fn tasks_attach_by_the_rules_and_hold_their_secrets() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let n1 = Server::start_in(root, "n1", "127.0.0.1:0", &[]);
    let dir = n1.dir.clone();
    for (name, data) in [("my_password", "password123yoyo"), ("api_key", "k1")] {
        ok(coffer_with_input(
            &dir,
            &["secret", "create", name, "-"],
            Some(data.as_bytes()),
        ));
    }

    // Every rule refuses, and nothing is recorded.
    let attach = |task: &str, specs: &[&str]| {
        let mut args = vec!["task", "attach", task];
        for spec in specs {
            args.extend(["--secret", spec]);
        }
        n1.coffer(&args)
    };
    for (specs, why) in [
        (vec!["source=my_password,target=../x"], "invalid target"),
        (
            vec!["source=my_password,target=/etc/passwd"],
            "invalid target",
        ),
        (vec!["source=my_password,target=a/b"], "invalid target"),
        (vec!["source=my_password,target=..data"], "invalid target"),
        (vec!["source=my_password,target=."], "invalid target"),
        (
            vec!["source=my_password,target=x", "source=api_key,target=x"],
            "used twice",
        ),
        (vec!["api_key", "source=nope"], "no secret \"nope\""),
        (vec!["source=my_password@2"], "has no version 2"),
        (vec!["source=my_password,mode=4755"], "at most 0777"),
    ] {
        refused(attach("web.1", &specs), why);
    }
    refused(attach("web/1", &["api_key"]), "invalid task name");
    refused(
        n1.coffer(&[
            "task", "attach", "web.1", "--node", "abcdef", "--secret", "api_key",
        ]),
        "no node abcdef",
    );
    refused(n1.coffer(&["task", "detach", "nope"]), "no task \"nope\"");
    refused(n1.coffer(&["task", "inspect", "nope"]), "no task \"nope\"");
    assert_eq!(tasks_json(&n1), serde_json::json!([]));

    // Attached: defaults, and a pinned version with its own owner and mode.
    assert_eq!(
        ok(attach(
            "web.1",
            &[
                "my_password",
                "source=api_key@1,target=key,uid=1000,gid=1000,mode=0400"
            ]
        )),
        "web.1"
    );
    let tasks = tasks_json(&n1);
    let task = &tasks[0];
    assert_eq!(task["name"], "web.1");
    assert_eq!(task["secrets"][0]["target"], "my_password");
    assert_eq!(task["secrets"][0]["mode"], "0444");
    assert_eq!(task["secrets"][0]["version"], serde_json::Value::Null);
    assert_eq!(task["secrets"][1]["target"], "key");
    assert_eq!(task["secrets"][1]["version"], 1);
    assert_eq!(task["secrets"][1]["uid"], 1000);
    assert_eq!(task["secrets"][1]["mode"], "0400");
    let table = ok(n1.coffer(&["task", "ls"]));
    assert!(
        table.contains("my_password=my_password,key=api_key@1"),
        "{table}"
    );
    assert!(!table.contains("yoyo"), "{table}");

    // In use: removal is refused, naming the task.
    refused(
        n1.coffer(&["secret", "rm", "my_password"]),
        "in use by task(s) web.1",
    );

    // A follower's attach without --node gives the task to the follower.
    let token = ok(n1.coffer(&["join-token", "-q", "manager"]));
    let n2 = Server::join_in(root, "n2", &n1, &token);
    n2.wait_until_voting();
    ok(n2.coffer(&["task", "attach", "db.1", "--secret", "api_key"]));
    let tasks = tasks_json(&n2);
    let (web, db) = (&tasks[1]["node"], &tasks[0]["node"]);
    assert_eq!(tasks[0]["name"], "db.1");
    assert_ne!(web, db);
    let nodes = ok(n1.coffer(&["node", "ls"]));
    for node in [web, db] {
        assert!(nodes.contains(node.as_str().unwrap()), "{node} in {nodes}");
    }
    // A task stays on its node.
    refused(
        n2.coffer(&[
            "task",
            "attach",
            "db.1",
            "--node",
            web.as_str().unwrap(),
            "--secret",
            "source=my_password,target=pw",
        ]),
        "detach it before giving it to another node",
    );

    // Detached: the secret may go.
    assert_eq!(ok(n1.coffer(&["task", "detach", "web.1"])), "web.1");
    ok(n1.coffer(&["secret", "rm", "my_password"]));
    refused(
        n1.coffer(&["secret", "rm", "api_key"]),
        "in use by task(s) db.1",
    );
    ok(n2.coffer(&["task", "detach", "db.1"]));
    ok(n2.coffer(&["secret", "rm", "api_key"]));
    assert_eq!(tasks_json(&n1), serde_json::json!([]));
}
