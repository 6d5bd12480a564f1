//! Partitions and pauses across real processes, with the clients'
//! histories checked for linearizability.
//!
//! Three managers run in network namespaces of their own, joined by a
//! bridge in a fourth (nothing outside these namespaces changes). Clients
//! write and read three keys through every node's socket the whole time,
//! recording each call, answer and timeout. The leader's link goes down:
//! the old leader commits nothing, the other two elect a leader and
//! commit, and after the link comes back all three converge. Then the new
//! leader is paused (SIGSTOP) and resumed (SIGCONT), with the same checks.
//! Finally the recorded history is checked for linearizability
//! (`history`). Needs root, as CI has, for `ip netns`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod history;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coffer_server::pb::kv_client::KvClient;
use coffer_server::pb::{GetRequest, PutRequest};
use history::{Event, Op};
use support::{ok, wait_for, Server};
use tonic::transport::{Channel, Endpoint};

/// A client's wait for one answer.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// A client's pause after a failed call (so that a cut-off node does not
/// pile up calls that never answer).
const BACKOFF: Duration = Duration::from_millis(100);
/// Keys the clients share.
const KEYS: u64 = 3;
/// Clients per node.
const CLIENTS_PER_NODE: usize = 2;
const PORT: u16 = 6465;

/// Three namespaces with a node each, on a bridge in a fourth; removed
/// (with their links) on drop.
struct Net {
    tag: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ip {args:?}: {e} (this test needs iproute2 and root)"));
    assert!(
        out.status.success(),
        "ip {args:?}: {} (this test needs root: CI runs it as root)",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Net {
    fn new(nodes: usize) -> Net {
        let tag = format!("cf{}", std::process::id());
        let net = Net { tag };
        let hub = net.hub();
        ip(&["netns", "add", &hub]);
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &hub, "link", "set", "br0", "up"]);
        for i in 0..nodes {
            let ns = net.ns(i);
            let (outer, inner) = (format!("h{i}"), format!("e{i}"));
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n", &hub, "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns",
                &ns,
            ]);
            ip(&["-n", &hub, "link", "set", &outer, "master", "br0", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", net.ip(i)),
                "dev",
                &inner,
            ]);
            ip(&["-n", &ns, "link", "set", &inner, "up"]);
        }
        net
    }

    fn hub(&self) -> String {
        format!("{}-hub", self.tag)
    }

    fn ns(&self, i: usize) -> String {
        format!("{}-n{i}", self.tag)
    }

    fn ip(&self, i: usize) -> String {
        format!("10.77.0.{}", i + 1)
    }

    fn addr(&self, i: usize) -> String {
        format!("{}:{PORT}", self.ip(i))
    }

    /// Node `i` loses its link: nothing reaches it, nothing leaves it.
    fn cut(&self, i: usize) {
        ip(&["-n", &self.hub(), "link", "set", &format!("h{i}"), "down"]);
    }

    fn heal(&self, i: usize) {
        ip(&["-n", &self.hub(), "link", "set", &format!("h{i}"), "up"]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in (0..3).map(|i| self.ns(i)).chain([self.hub()]) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
    }
}

async fn connect(socket: &Path) -> Option<KvClient<Channel>> {
    let endpoint = Endpoint::from_shared(format!("unix://{}", socket.display())).ok()?;
    let channel = tokio::time::timeout(OP_TIMEOUT, endpoint.connect())
        .await
        .ok()?
        .ok()?;
    Some(KvClient::new(channel))
}

/// Writes unique values to and reads the shared keys through `socket`
/// until `stop`, recording every operation in `events`.
async fn client(id: usize, socket: PathBuf, stop: Arc<AtomicBool>, events: Arc<Mutex<Vec<Event>>>) {
    let mut kv = None;
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ (id as u64 + 1);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // xorshift: which key, and put or get.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let key = format!("lin/{}", seed % KEYS);
        if kv.is_none() {
            kv = connect(&socket).await;
            if kv.is_none() {
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
        }
        let Some(c) = kv.as_mut() else { continue };
        let call = Instant::now();
        let (op, answered) = if (seed >> 32).is_multiple_of(2) {
            let value = format!("c{id}-{n}");
            n += 1;
            let mut request = tonic::Request::new(PutRequest {
                key: key.clone().into_bytes(),
                value: value.clone().into_bytes(),
                ..PutRequest::default()
            });
            request.set_timeout(OP_TIMEOUT);
            let answer = tokio::time::timeout(OP_TIMEOUT, c.put(request)).await;
            (Op::Put(value), matches!(answer, Ok(Ok(_))))
        } else {
            let mut request = tonic::Request::new(GetRequest {
                key: key.clone().into_bytes(),
                stale: false,
            });
            request.set_timeout(OP_TIMEOUT);
            match tokio::time::timeout(OP_TIMEOUT, c.get(request)).await {
                Ok(Ok(answer)) => {
                    let value = answer
                        .into_inner()
                        .kv
                        .map(|kv| String::from_utf8(kv.value).unwrap());
                    (Op::Get(Some(value)), true)
                }
                _ => (Op::Get(None), false),
            }
        };
        let ret = answered.then(Instant::now);
        events.lock().unwrap().push(Event { key, op, call, ret });
        if !answered {
            tokio::time::sleep(BACKOFF).await;
        }
    }
}

/// Operations answered so far.
fn answered(events: &Mutex<Vec<Event>>) -> usize {
    events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.ret.is_some())
        .count()
}

/// The index of the node `node` reports as leader, if it knows one.
fn leader_seen_by(node: &Server, net: &Net) -> Option<usize> {
    let out = node.coffer_at(&["node", "ls", "--format", "json"]);
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let addr = all.as_array()?.iter().find(|n| n["leader"] == true)?["address"]
        .as_str()?
        .to_string();
    (0..3).find(|i| net.addr(*i) == addr)
}

/// Puts through `node`'s socket until one commits; the time it took.
fn first_commit_through(node: &Server, key: &str) -> Duration {
    let start = Instant::now();
    wait_for("a commit through the majority", &node.log, || {
        node.coffer_at(&["kv", "put", key, "x"]).status.success()
    });
    start.elapsed()
}

/// Every node's own replica holds `value` under `key`.
fn converged(nodes: &[Server], key: &str, value: &str) {
    for node in nodes {
        wait_for("every replica to converge", &node.log, || {
            let out = node.coffer_at(&["kv", "get", "--stale", key]);
            String::from_utf8_lossy(&out.stdout).trim() == value
        });
    }
}

#[test]
fn partitions_and_pauses_keep_the_histories_linearizable() {
    let net = Net::new(3);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let start = |i: usize, extra: &[&str]| {
        let name = format!("n{i}");
        Server::start_in_netns(
            Some(&net.ns(i)),
            &root.join(&name),
            &root.join(format!("{name}.log")),
            &net.addr(i),
            extra,
        )
    };
    let n0 = start(0, &[]);
    let token = ok(n0.coffer_at(&["join-token", "-q", "manager"]));
    let join = ["--join", &net.addr(0), "--token", token.as_str()];
    let nodes = vec![n0, start(1, &join), start(2, &join)];
    for n in &nodes[1..] {
        n.wait_until_voting();
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let events = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..3 * CLIENTS_PER_NODE)
        .map(|id| {
            let socket = nodes[id % 3].socket();
            runtime.spawn(client(id, socket, stop.clone(), events.clone()))
        })
        .collect();
    let log = nodes[0].log.clone();
    let progress = |more: usize| {
        let target = answered(&events) + more;
        wait_for("the clients to make progress", &log, || {
            answered(&events) >= target
        });
    };
    progress(60);

    // The leader's link goes down.
    let old = leader_seen_by(&nodes[0], &net).expect("a leader");
    let majority: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    net.cut(old);
    let failover = first_commit_through(&nodes[majority[0]], "probe/partition");
    let new = leader_seen_by(&nodes[majority[0]], &net).expect("a leader in the majority");
    assert_ne!(new, old, "the cut-off node still leads the majority");
    // The old leader, alone, commits nothing.
    let lone = nodes[old].coffer_at(&["kv", "put", "probe/minority", "lost"]);
    assert!(!lone.status.success(), "a cut-off node committed a write");
    let said = String::from_utf8_lossy(&lone.stderr).trim().to_string();
    assert!(said.contains("no quorum"), "the minority's refusal: {said}");
    eprintln!("partition: the cut-off leader answered a write with: {said}");
    progress(60);
    net.heal(old);
    ok(nodes[new].coffer_at(&["kv", "put", "probe/healed", "1"]));
    converged(&nodes, "probe/healed", "1");
    converged(&nodes, "probe/partition", "x");
    let minority_write = nodes[new].coffer_at(&["kv", "get", "probe/minority"]);
    assert!(
        String::from_utf8_lossy(&minority_write.stdout)
            .trim()
            .is_empty(),
        "the minority's write appeared after healing"
    );

    // The leader pauses.
    let paused = leader_seen_by(&nodes[new], &net).expect("a leader");
    let other = (0..3).find(|i| *i != paused).unwrap();
    nodes[paused].signal("STOP");
    let pause_failover = first_commit_through(&nodes[other], "probe/pause");
    progress(60);
    nodes[paused].signal("CONT");
    ok(nodes[other].coffer_at(&["kv", "put", "probe/resumed", "1"]));
    converged(&nodes, "probe/resumed", "1");

    stop.store(true, Ordering::Relaxed);
    runtime.block_on(async {
        for c in clients {
            c.await.unwrap();
        }
    });
    let events = events.lock().unwrap().clone();
    let verdict = history::check(&events);
    eprintln!(
        "partition: a commit {failover:?} after the cut, {pause_failover:?} after the pause; \
         {} operations on {} keys, {} checked, {} unanswered writes never seen; violations on {:?}",
        events.len(),
        verdict.keys,
        verdict.checked,
        verdict.dropped,
        verdict.violations
    );
    assert!(
        verdict.violations.is_empty(),
        "not linearizable: {verdict:?}"
    );
    assert!(
        verdict.checked >= 180,
        "too few operations checked: {verdict:?}"
    );
}
