//! `coffer-bench`: drives Coffer (its `Kv` service, through a node's
//! socket) or etcd (through `etcd-client`) with N concurrent clients over
//! M connections for S seconds, and reports ops/s and latency
//! percentiles, as text or JSON. `scripts/bench-vs-etcd` runs it against
//! both on the same machine.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};

#[allow(clippy::all, dead_code, missing_debug_implementations)]
mod pb {
    include!("../../../server/src/pb/coffer.v1.rs");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum System {
    Coffer,
    Etcd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// Puts of random keys.
    Put,
    /// Linearizable gets of preloaded keys.
    Get,
    /// Half puts, half linearizable gets.
    Mixed,
}

#[derive(Debug, Parser)]
#[command(name = "coffer-bench", about)]
struct Args {
    #[arg(long, value_enum)]
    system: System,
    /// Where to connect, comma-separated: unix:///path/coffer.sock for
    /// Coffer, http://HOST:PORT for etcd. Connections go round-robin.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Concurrent clients, each with one request in flight.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Connections the clients share (default: one per client, at most 16).
    #[arg(long)]
    connections: Option<usize>,
    #[arg(long, value_enum, default_value_t = Workload::Put)]
    workload: Workload,
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Measured seconds (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Only wait (up to 60 s) until one put succeeds, then exit.
    #[arg(long)]
    wait: bool,
    /// One JSON object instead of a text line.
    #[arg(long)]
    json: bool,
    /// Also append the JSON object, as one line, to this file.
    #[arg(long, value_name = "FILE")]
    json_out: Option<std::path::PathBuf>,
    /// A label printed with the results (the topology, say).
    #[arg(long, default_value = "")]
    label: String,
}

/// One connection to either system.
#[derive(Clone)]
#[allow(clippy::large_enum_variant)] // a handful per run, cloned per client
enum Conn {
    Coffer(pb::kv_client::KvClient<tonic::transport::Channel>),
    Etcd(etcd_client::KvClient),
}

/// How long one request may take before it counts as an error.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
const WARM_UP: Duration = Duration::from_secs(1);

impl Conn {
    async fn open(system: System, endpoint: &str) -> Result<Conn> {
        Ok(match system {
            System::Coffer => {
                let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())?
                    .connect()
                    .await
                    .with_context(|| format!("connecting to {endpoint}"))?;
                Conn::Coffer(pb::kv_client::KvClient::new(channel))
            }
            System::Etcd => {
                let client = etcd_client::Client::connect([endpoint], None)
                    .await
                    .with_context(|| format!("connecting to {endpoint}"))?;
                Conn::Etcd(client.kv_client())
            }
        })
    }

    async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        match self {
            Conn::Coffer(c) => {
                c.put(pb::PutRequest {
                    key,
                    value,
                    ..Default::default()
                })
                .await?;
            }
            Conn::Etcd(c) => {
                c.put(key, value, None).await?;
            }
        }
        Ok(())
    }

    /// A linearizable read.
    async fn get(&mut self, key: Vec<u8>) -> Result<()> {
        match self {
            Conn::Coffer(c) => {
                c.get(pb::GetRequest { key, stale: false }).await?;
            }
            Conn::Etcd(c) => {
                c.get(key, None).await?;
            }
        }
        Ok(())
    }
}

/// xorshift64: cheap per-client randomness.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

fn key(n: u64) -> Vec<u8> {
    format!("bench/{n:08}").into_bytes()
}

struct Totals {
    ops: u64,
    errors: u64,
    latencies_us: Vec<u64>,
}

async fn client(
    mut conn: Conn,
    id: usize,
    args: Arc<Args>,
    measure_from: Instant,
    stop: Arc<AtomicBool>,
    errors: Arc<AtomicU64>,
) -> Totals {
    let mut seed = 0x2545_f491_4f6c_dd1d ^ (id as u64 + 1).wrapping_mul(0x9e37_79b9);
    let value = vec![b'v'; args.value_size];
    let mut totals = Totals {
        ops: 0,
        errors: 0,
        latencies_us: Vec::new(),
    };
    while !stop.load(Ordering::Relaxed) {
        let r = next(&mut seed);
        let k = key(r % args.keys);
        let put = match args.workload {
            Workload::Put => true,
            Workload::Get => false,
            Workload::Mixed => (r >> 40).is_multiple_of(2),
        };
        let start = Instant::now();
        let done = if put {
            tokio::time::timeout(OP_TIMEOUT, conn.put(k, value.clone())).await
        } else {
            tokio::time::timeout(OP_TIMEOUT, conn.get(k)).await
        };
        let ok = matches!(done, Ok(Ok(())));
        if start >= measure_from {
            if ok {
                totals.ops += 1;
                totals
                    .latencies_us
                    .push(u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX));
            } else {
                totals.errors += 1;
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    totals
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)] as f64 / 1000.0
}

async fn open_all(args: &Args, count: usize) -> Result<Vec<Conn>> {
    let mut conns = Vec::new();
    for i in 0..count {
        let endpoint = &args.endpoints[i % args.endpoints.len()];
        conns.push(Conn::open(args.system, endpoint).await?);
    }
    Ok(conns)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Arc::new(Args::parse());
    if args.clients == 0 || args.keys == 0 {
        bail!("--clients and --keys must be at least 1");
    }
    if args.wait {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let attempt = async {
                let mut conn = Conn::open(args.system, &args.endpoints[0]).await?;
                conn.put(b"bench/ready".to_vec(), b"1".to_vec()).await
            };
            match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                Ok(Ok(())) => return Ok(()),
                _ if Instant::now() > deadline => bail!("no put succeeded within 60 s"),
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    let connections = args.connections.unwrap_or(args.clients.min(16)).max(1);
    let conns = open_all(&args, connections).await?;
    if args.workload != Workload::Put {
        // Every key exists before gets are measured.
        let value = vec![b'v'; args.value_size];
        let mut loaders = Vec::new();
        for (i, conn) in conns.iter().enumerate() {
            let mut conn = conn.clone();
            let (value, keys, step) = (value.clone(), args.keys, conns.len() as u64);
            loaders.push(tokio::spawn(async move {
                let mut n = i as u64;
                while n < keys {
                    conn.put(key(n), value.clone()).await?;
                    n += step;
                }
                anyhow::Ok(())
            }));
        }
        for loader in loaders {
            loader.await??;
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let measure_from = Instant::now() + WARM_UP;
    let tasks: Vec<_> = (0..args.clients)
        .map(|id| {
            tokio::spawn(client(
                conns[id % conns.len()].clone(),
                id,
                args.clone(),
                measure_from,
                stop.clone(),
                errors.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(WARM_UP + Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let measured = measure_from.elapsed().as_secs_f64();
    let mut ops = 0;
    let mut failed = 0;
    let mut latencies = Vec::new();
    for task in tasks {
        let totals = task.await?;
        ops += totals.ops;
        failed += totals.errors;
        latencies.extend(totals.latencies_us);
    }
    latencies.sort_unstable();
    let rate = ops as f64 / measured;
    let (p50, p99, max) = (
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().map_or(0.0, |m| *m as f64 / 1000.0),
    );
    let system = format!("{:?}", args.system).to_lowercase();
    let workload = format!("{:?}", args.workload).to_lowercase();
    let json = serde_json::json!({
        "system": system,
        "label": args.label,
        "workload": workload,
        "clients": args.clients,
        "connections": connections,
        "value_size": args.value_size,
        "seconds": measured,
        "ops": ops,
        "errors": failed,
        "ops_per_sec": rate,
        "p50_ms": p50,
        "p99_ms": p99,
        "max_ms": max,
    });
    if let Some(path) = &args.json_out {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        writeln!(file, "{json}")?;
    }
    if args.json {
        println!("{json}");
    } else {
        println!(
            "{system:<6} {:<8} {workload:<5} clients={:<4} conns={:<3} {rate:>9.0} ops/s  p50 {p50:>7.2} ms  p99 {p99:>7.2} ms  max {max:>8.2} ms  errors {failed}",
            args.label, args.clients, connections
        );
    }
    Ok(())
}
