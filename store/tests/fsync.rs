//! Durability that SIGKILL cannot show: the page cache survives a killed
//! process, so a crash test passes even if a write was never fsynced. Here
//! a child process writes sequentially under `strace` and prints `ACK n`
//! after each put returns; the trace must show, before every
//! acknowledgement, a completed `fdatasync`/`fsync` on a file of the data
//! directory that no earlier acknowledgement already used. A put that
//! returned before its data reached the disk fails this test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};

use coffer_store::{Config, Store};

const DIR_ENV: &str = "COFFER_FSYNC_DIR";
const PUTS: u64 = 100;

/// The child: when `COFFER_FSYNC_DIR` is set, opens the store there and
/// puts `PUTS` keys one after another, printing `ACK n` after each. In a
/// normal test run it returns at once; the assertions are in the parent.
#[test]
fn fsync_child_entry() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = Store::open(Config::new(&dir)).await.unwrap();
        for n in 0..PUTS {
            store
                .put(format!("k{n}").as_bytes(), b"value")
                .await
                .unwrap();
            let mut out = std::io::stdout().lock();
            writeln!(out, "ACK {n}").unwrap();
            out.flush().unwrap();
        }
        store.shutdown().await.unwrap();
    });
}

/// One line of `strace -f -y` output that matters here.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    /// A `fsync`/`fdatasync` on `path` returned 0.
    Synced { path: String },
    /// The child started writing `ACK n` to stdout.
    Ack(u64),
}

/// Extracts the path from an fd argument printed by `-y`: `13</a/b.log>`.
fn fd_path(args: &str) -> Option<String> {
    let start = args.find('<')? + 1;
    let end = start + args[start..].find('>')?;
    Some(args[start..end].to_string())
}

/// Reads a `strace -f -y` trace into events, in trace order. A syscall a
/// thread was inside of when another thread's line came is split into
/// `<unfinished ...>` and `<... NAME resumed>` lines; it counts where it
/// completed.
fn parse_trace(trace: &str) -> Vec<Event> {
    let mut pending: HashMap<String, String> = HashMap::new();
    let mut out = Vec::new();
    for line in trace.lines() {
        let (pid, rest) = match line.split_once(' ') {
            Some((pid, rest)) if pid.chars().all(|c| c.is_ascii_digit()) => (pid, rest.trim()),
            _ => ("", line.trim()),
        };
        let is_sync = |s: &str| s.starts_with("fdatasync(") || s.starts_with("fsync(");
        if is_sync(rest) {
            let Some(path) = fd_path(rest) else { continue };
            if rest.ends_with("<unfinished ...>") {
                pending.insert(pid.to_string(), path);
            } else if rest.ends_with("= 0") {
                out.push(Event::Synced { path });
            }
        } else if rest.starts_with("<... fdatasync resumed>")
            || rest.starts_with("<... fsync resumed>")
        {
            if let Some(path) = pending.remove(pid) {
                if rest.ends_with("= 0") {
                    out.push(Event::Synced { path });
                }
            }
        } else if rest.starts_with("write(1") {
            if let Some(n) = rest
                .split("\"ACK ")
                .nth(1)
                .and_then(|s| s.split('\\').next())
                .and_then(|s| s.parse().ok())
            {
                out.push(Event::Ack(n));
            }
        }
    }
    out
}

/// Checks that every acknowledgement follows a completed sync of a file
/// under `dir` that came after the previous acknowledgement. Returns the
/// acknowledgements seen, in order.
fn check_syncs_before_acks(events: &[Event], dir: &str) -> Result<Vec<u64>, String> {
    let mut acks = Vec::new();
    let mut synced_since_ack = false;
    for e in events {
        match e {
            Event::Synced { path } if path.starts_with(dir) => synced_since_ack = true,
            Event::Synced { .. } => {}
            Event::Ack(n) => {
                if !synced_since_ack {
                    return Err(format!(
                        "ACK {n} was printed with no completed fsync under {dir} since the previous acknowledgement"
                    ));
                }
                synced_since_ack = false;
                acks.push(*n);
            }
        }
    }
    Ok(acks)
}

#[test]
fn every_acknowledged_put_follows_a_completed_fsync() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let trace_path = tmp.path().join("trace");
    let exe = std::env::current_exe().unwrap();
    let status = Command::new("strace")
        .args([
            "-f",
            "-y",
            "-s",
            "64",
            "-e",
            "trace=fsync,fdatasync,write",
            "-o",
        ])
        .arg(&trace_path)
        .arg(&exe)
        .args([
            "fsync_child_entry",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_ENV, &dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("strace is not installed (scripts/setup installs it)");
    assert!(status.success(), "the child under strace failed: {status}");
    let trace = std::fs::read_to_string(&trace_path).unwrap();
    let events = parse_trace(&trace);
    let dir_str = dir.canonicalize().unwrap().display().to_string();
    let acks = check_syncs_before_acks(&events, &dir_str).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        acks,
        (0..PUTS).collect::<Vec<_>>(),
        "acknowledgements missing from the trace"
    );
    let syncs = events
        .iter()
        .filter(|e| matches!(e, Event::Synced { path } if path.starts_with(&dir_str)))
        .count();
    eprintln!("{PUTS} acknowledged puts, {syncs} completed syncs under the data directory");
}

/// The check itself fails on a trace where an acknowledgement comes before
/// its sync completed, or after a sync of a file outside the data
/// directory, or after a sync that an earlier acknowledgement used; and it
/// follows syscalls split across threads.
#[test]
fn the_check_catches_an_acknowledgement_before_its_sync() {
    let dir = "/d";
    let early = "\
10 write(5</d/db/000004.log>, \"x\", 1) = 1
10 fdatasync(5</d/db/000004.log> <unfinished ...>
11 write(1<pipe:[9]>, \"ACK 0\\n\", 6 <unfinished ...>
10 <... fdatasync resumed>) = 0
11 <... write resumed>) = 6
10 fdatasync(5</d/db/000004.log>) = 0
11 write(1<pipe:[9]>, \"ACK 1\\n\", 6) = 6
";
    // ACK 0 started before the sync completed: the first sync came after.
    let events = parse_trace(early);
    assert_eq!(
        events,
        vec![
            Event::Ack(0),
            Event::Synced {
                path: "/d/db/000004.log".into()
            },
            Event::Synced {
                path: "/d/db/000004.log".into()
            },
            Event::Ack(1),
        ]
    );
    assert!(check_syncs_before_acks(&events, dir).is_err());

    let good = "\
10 fdatasync(5</d/db/000004.log>) = 0
11 write(1<pipe:[9]>, \"ACK 0\\n\", 6) = 6
10 fdatasync(5</d/db/000004.log> <unfinished ...>
11 write(2<pipe:[8]>, \"log line\\n\", 9) = 9
10 <... fdatasync resumed>) = 0
11 write(1<pipe:[9]>, \"ACK 1\\n\", 6) = 6
";
    assert_eq!(
        check_syncs_before_acks(&parse_trace(good), dir),
        Ok(vec![0, 1])
    );

    let reused = "\
10 fdatasync(5</d/db/000004.log>) = 0
11 write(1<pipe:[9]>, \"ACK 0\\n\", 6) = 6
11 write(1<pipe:[9]>, \"ACK 1\\n\", 6) = 6
";
    assert!(check_syncs_before_acks(&parse_trace(reused), dir).is_err());

    let elsewhere = "\
10 fdatasync(5</elsewhere/x>) = 0
11 write(1<pipe:[9]>, \"ACK 0\\n\", 6) = 6
";
    assert!(check_syncs_before_acks(&parse_trace(elsewhere), dir).is_err());

    let failed = "\
10 fdatasync(5</d/db/000004.log>) = -1 EIO (Input/output error)
11 write(1<pipe:[9]>, \"ACK 0\\n\", 6) = 6
";
    assert!(check_syncs_before_acks(&parse_trace(failed), dir).is_err());
}
