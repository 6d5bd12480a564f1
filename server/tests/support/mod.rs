//! What the process tests share: a `coffer server` child process and the
//! `coffer` command, with every wait bounded by a deadline and polling
//! observable state (a log line, a socket that answers, an exit status).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub const DEADLINE: Duration = Duration::from_secs(60);
/// How often a wait looks again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Polls `check` until it holds; fails after [`DEADLINE`], showing `log`.
pub fn wait_for(what: &str, log: &Path, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; log {}:\n{}",
            log.display(),
            read(log)
        );
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Standard output of a command that must succeed, trimmed.
pub fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .trim_end()
        .to_string()
}

/// `coffer --data-dir DIR ARGS...`.
pub fn coffer(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coffer"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `coffer --data-dir DIR ARGS...` with `input` on standard input (none:
/// standard input closed at once).
pub fn coffer_with_input(dir: &Path, args: &[&str], input: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    if let Some(bytes) = input {
        std::io::Write::write_all(&mut stdin, bytes).unwrap();
    }
    drop(stdin);
    child.wait_with_output().unwrap()
}

/// A command that must fail: a non-zero exit and one line on standard
/// error that says `expect`.
pub fn refused(out: Output, expect: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(expect), "expected {expect:?} in {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

/// Every file under `dir`, at any depth.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

/// Asserts that no needle appears in any of `files` (those that can be
/// read: a file removed meanwhile is skipped).
pub fn assert_in_none(files: &[PathBuf], needles: &[&str]) {
    for file in files {
        let Ok(bytes) = std::fs::read(file) else {
            continue;
        };
        for needle in needles {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{} holds {:?}",
                file.display(),
                needle
            );
        }
    }
}

/// `coffer --host unix://SOCKET ARGS...`: through the socket only, never
/// opening the directory (which would take the lock a restart needs).
pub fn coffer_at(socket: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coffer"))
        .arg("--host")
        .arg(format!("unix://{}", socket.display()))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// A `coffer server` process, killed if the test ends without stopping it.
pub struct Server {
    child: Option<Child>,
    pub dir: PathBuf,
    pub log: PathBuf,
    /// The address its port listens on (from its log).
    pub addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Server {
    /// Starts `coffer --data-dir DIR server --listen LISTEN EXTRA...`,
    /// logging to `log`, without waiting.
    pub fn spawn(dir: &Path, log: &Path, listen: &str, extra: &[&str]) -> Server {
        Server::spawn_in_netns(None, dir, log, listen, extra)
    }

    /// [`Server::spawn`] inside the network namespace `netns` (`ip netns
    /// exec`, which execs: the child is the server).
    pub fn spawn_in_netns(
        netns: Option<&str>,
        dir: &Path,
        log: &Path,
        listen: &str,
        extra: &[&str],
    ) -> Server {
        match netns {
            Some(ns) => Server::spawn_under(&["ip", "netns", "exec", ns], dir, log, listen, extra),
            None => Server::spawn_under(&[], dir, log, listen, extra),
        }
    }

    /// [`Server::spawn`] under a command that execs the rest of its
    /// arguments (`ip netns exec NS`, `setpriv ...`): the child is the
    /// server.
    pub fn spawn_under(
        wrapper: &[&str],
        dir: &Path,
        log: &Path,
        listen: &str,
        extra: &[&str],
    ) -> Server {
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_coffer"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_coffer")),
        };
        let child = command
            .arg("--data-dir")
            .arg(dir)
            .args(["server", "--listen", listen])
            .args(extra)
            // What the server prints for the operator (join commands, an
            // unlock key), beside the log.
            .stdout(std::fs::File::create(log.with_extension("out")).unwrap())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        Server {
            child: Some(child),
            dir: dir.to_path_buf(),
            log: log.to_path_buf(),
            addr: String::new(),
        }
    }

    /// Waits until the socket of a server that was spawned answers a
    /// connection (a locked node serves its socket, not its port).
    pub fn wait_for_socket(&self) {
        let socket = self.socket();
        wait_for("the socket to answer", &self.log, || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
    }

    /// Starts a server and waits until it serves: its log names the
    /// address it listens on, and its socket answers.
    pub fn start(dir: &Path, log: &Path, listen: &str, extra: &[&str]) -> Server {
        Server::start_in_netns(None, dir, log, listen, extra)
    }

    /// [`Server::start`] inside a network namespace.
    pub fn start_in_netns(
        netns: Option<&str>,
        dir: &Path,
        log: &Path,
        listen: &str,
        extra: &[&str],
    ) -> Server {
        Server::serving(Server::spawn_in_netns(netns, dir, log, listen, extra))
    }

    /// [`Server::start`] under a wrapper command ([`Server::spawn_under`]).
    pub fn start_under(
        wrapper: &[&str],
        dir: &Path,
        log: &Path,
        listen: &str,
        extra: &[&str],
    ) -> Server {
        Server::serving(Server::spawn_under(wrapper, dir, log, listen, extra))
    }

    /// Waits until `server` serves.
    fn serving(mut server: Server) -> Server {
        let (log, socket) = (server.log.clone(), server.socket());
        let mut addr = None;
        wait_for("the server to serve", &log, || {
            addr = read(&log)
                .split_whitespace()
                .find_map(|w| w.strip_prefix("listen="))
                .map(str::to_string);
            addr.is_some() && std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        server.addr = addr.unwrap();
        server
    }

    /// A server in `root/NAME` that joins `via`'s cluster with `token`
    /// (on 127.0.0.1, any free port).
    pub fn join_in(root: &Path, name: &str, via: &Server, token: &str) -> Server {
        Server::start_in(
            root,
            name,
            "127.0.0.1:0",
            &["--join", &via.addr, "--token", token],
        )
    }

    /// A server in `root/NAME` logging to `root/NAME.log`.
    pub fn start_in(root: &Path, name: &str, listen: &str, extra: &[&str]) -> Server {
        Server::start(
            &root.join(name),
            &root.join(format!("{name}.log")),
            listen,
            extra,
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("coffer.sock")
    }

    pub fn log(&self) -> String {
        read(&self.log)
    }

    /// `coffer --data-dir` this server's directory.
    pub fn coffer(&self, args: &[&str]) -> Output {
        coffer(&self.dir, args)
    }

    /// `coffer --host` this server's socket.
    pub fn coffer_at(&self, args: &[&str]) -> Output {
        coffer_at(&self.socket(), args)
    }

    pub fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self) -> ExitStatus {
        let log = self.log.clone();
        let child = self.child.as_mut().unwrap();
        let mut status = None;
        wait_for("the server to exit", &log, || {
            status = child.try_wait().unwrap();
            status.is_some()
        });
        self.child = None;
        status.unwrap()
    }

    /// Sends the signal and waits for the process to exit.
    pub fn stop(&mut self, signal: &str) -> ExitStatus {
        self.signal(signal);
        self.wait()
    }

    /// `node ls --format json` through this server.
    pub fn nodes(&self) -> Vec<serde_json::Value> {
        let out = ok(self.coffer(&["node", "ls", "--format", "json"]));
        match serde_json::from_str(&out).unwrap() {
            serde_json::Value::Array(all) => all,
            other => panic!("node ls gave {other}"),
        }
    }

    /// This server's node id, as `node ls` shows it (from its log).
    pub fn id(&self) -> String {
        let log = self.log();
        log.split_whitespace()
            .find_map(|w| w.strip_prefix("node="))
            .unwrap_or_else(|| panic!("no node id in:\n{log}"))
            .to_string()
    }

    /// Waits until `node ls` through this server shows a worker; its id.
    pub fn worker_id(&self) -> String {
        let mut id = String::new();
        wait_for("the worker in node ls", &self.log, || {
            match self.nodes().iter().find(|n| n["role"] == "worker") {
                Some(n) => {
                    id = n["id"].as_str().unwrap().to_string();
                    true
                }
                None => false,
            }
        });
        id
    }

    /// Waits until it logs that it is a voting member.
    pub fn wait_until_voting(&self) {
        wait_for("a voting member", &self.log, || {
            self.log().contains("this node is a voting member")
        });
    }

    /// Starts it again on the same directory and address.
    pub fn restart(&mut self) {
        let (dir, log, addr) = (self.dir.clone(), self.log.clone(), self.addr.clone());
        *self = Server::start(&dir, &log, &addr, &[]);
    }
}

/// A cluster of three managers in `root/n1..n3`: n1 initialises it, n2
/// and n3 join with the manager token; returns once both vote.
pub fn three_managers(root: &Path) -> [Server; 3] {
    let n1 = Server::start_in(root, "n1", "127.0.0.1:0", &[]);
    let token = ok(n1.coffer(&["join-token", "-q", "manager"]));
    let n2 = Server::join_in(root, "n2", &n1, &token);
    let n3 = Server::join_in(root, "n3", &n1, &token);
    for n in [&n2, &n3] {
        n.wait_until_voting();
    }
    [n1, n2, n3]
}

/// The mount on `dir` from /proc/self/mountinfo: (options, fs type).
pub fn mount_of(dir: &Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = dir.to_str().unwrap();
    info.lines().rev().find_map(|line| {
        let (head, tail) = line.split_once(" - ")?;
        let fields: Vec<&str> = head.split(' ').collect();
        (fields.get(4) == Some(&want)).then(|| {
            (
                fields[5].to_string(),
                tail.split(' ').next().unwrap_or("").to_string(),
            )
        })
    })
}

/// Unmounts what a failed test left mounted.
pub struct Unmount(pub PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        if mount_of(&self.0).is_some() {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
}
