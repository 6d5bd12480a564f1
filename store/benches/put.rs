#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Embedded single-node throughput and latency: durable puts with 1, 64 and
//! 256 concurrent writers, and linearizable gets, with 256-byte values; the
//! put figures again with encryption switched off, to show its cost.
//!
//! `cargo bench -p coffer-store --bench put` (add `-- --quick` for a short
//! run). Every put returns only after its log entry is fsynced.

use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_store::{Config, Encryption, Store};

const VALUE_BYTES: usize = 256;

struct Figures {
    ops: usize,
    elapsed: Duration,
    latencies_us: Vec<u32>,
}

impl Figures {
    /// The latency below which `permille`/1000 of the operations finished.
    fn percentile(&self, permille: usize) -> u32 {
        let n = self.latencies_us.len();
        if n == 0 {
            return 0;
        }
        self.latencies_us[(n - 1) * permille / 1000]
    }

    fn print(&self, name: &str) {
        println!(
            "{name:<34} {:>9.0} ops/s   p50 {:>6} us   p99 {:>6} us   ({} ops in {:.2} s)",
            self.ops as f64 / self.elapsed.as_secs_f64(),
            self.percentile(500),
            self.percentile(990),
            self.ops,
            self.elapsed.as_secs_f64()
        );
    }
}

#[derive(Clone, Copy)]
enum Workload {
    Put,
    Get,
}

async fn run(store: &Store, workload: Workload, writers: usize, duration: Duration) -> Figures {
    let value = Arc::new(vec![0xA5u8; VALUE_BYTES]);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(writers);
    for w in 0..writers {
        let store = store.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(16 * 1024);
            let mut i = 0u64;
            while start.elapsed() < duration {
                // 1,000 distinct keys per writer, overwritten in turn.
                let key = format!("bench/{w:04}/{:04}", i % 1000);
                let t = Instant::now();
                match workload {
                    Workload::Put => {
                        store.put(key.as_bytes(), &value).await.expect("put");
                    }
                    Workload::Get => {
                        store.get(key.as_bytes()).await.expect("get");
                    }
                }
                lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                i += 1;
            }
            lat
        }));
    }
    let mut latencies_us = Vec::new();
    for t in tasks {
        latencies_us.extend(t.await.expect("bench task"));
    }
    let elapsed = start.elapsed();
    latencies_us.sort_unstable();
    Figures {
        ops: latencies_us.len(),
        elapsed,
        latencies_us,
    }
}

async fn suite(encryption: Encryption, secs: Duration, with_gets: bool, filter: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::new(dir.path());
    config.encryption = encryption;
    let store = Store::open(config).await.expect("open");
    let label = match encryption {
        Encryption::On => "encrypted",
        Encryption::DangerOffForBenchmarks => "plaintext",
    };
    // Warm up: create the keys the get benchmark reads.
    run(&store, Workload::Put, 64, Duration::from_millis(500)).await;
    for writers in [1, 64, 256] {
        let name = format!("put {label} {writers} writers");
        if name.contains(filter) {
            run(&store, Workload::Put, writers, secs).await.print(&name);
        }
    }
    if with_gets {
        for readers in [1, 64] {
            let name = format!("get {label} {readers} readers");
            if name.contains(filter) {
                run(&store, Workload::Get, readers, secs).await.print(&name);
            }
        }
    }
    store.shutdown().await.expect("shutdown");
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    // Like criterion: a plain argument selects the runs whose name contains it.
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_default();
    let secs = Duration::from_secs(if quick { 2 } else { 10 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("coffer-store embedded single node, {VALUE_BYTES}-byte values, durable puts");
    rt.block_on(suite(Encryption::On, secs, true, &filter));
    rt.block_on(suite(
        Encryption::DangerOffForBenchmarks,
        secs,
        false,
        &filter,
    ));
}
