//! The `coffer` binary.
//!
//! Until the server lands (it will serve these commands over the data
//! directory's Unix socket), client commands open the store in the data
//! directory directly; RocksDB's lock keeps two processes from opening one
//! directory at once, and the second gets a clear error.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::time::Duration;

use coffer_store::{Config, Consistency, DeleteOptions, PutOptions, Range, Store};

/// Coffer: a replicated, encrypted-at-rest state store and secrets vault.
#[derive(Debug, Parser)]
#[command(name = "coffer", version, about)]
struct Cli {
    /// The data directory (created and bootstrapped as a single-node
    /// store if empty).
    #[arg(
        long,
        global = true,
        env = "COFFER_DATA_DIR",
        default_value = "/var/lib/coffer"
    )]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Reads and writes raw keys.
    #[command(subcommand)]
    Kv(KvCommand),
}

#[derive(Debug, Subcommand)]
enum KvCommand {
    /// Prints the value under KEY (exit code 1 if absent).
    Get {
        /// Read this member's applied state instead of a linearizable read
        /// (faster, and possible without a quorum; may be behind).
        #[arg(long)]
        stale: bool,
        key: String,
    },
    /// Stores VALUE (or standard input with `-` or nothing) under KEY; prints the revision.
    Put {
        /// Attach the key to this lease (its id from `kv lease grant`): the
        /// key is deleted when the lease is revoked or runs out.
        #[arg(long, value_parser = parse_lease_id)]
        lease: Option<u64>,
        key: String,
        value: Option<String>,
    },
    /// Deletes KEY; exit code 1 if it did not exist. With --prefix,
    /// deletes every key starting with KEY at one revision and prints how
    /// many (at most 1,024 at once; a larger range is refused whole).
    Del {
        #[arg(long)]
        prefix: bool,
        key: String,
    },
    /// Lists keys starting with PREFIX in key order, a line per key: the
    /// key, a tab and the value (bytes outside printable ASCII escaped, as
    /// `\n` or `\xNN`, so each entry stays on one line).
    Ls {
        /// Print at most N keys (0: all); standard error then says how
        /// many were left out.
        #[arg(long, default_value_t = 0)]
        limit: usize,
        /// Print the keys alone, without reading any value.
        #[arg(long)]
        keys_only: bool,
        /// List the keys as they were at past revision R (while the
        /// history still holds it).
        #[arg(long = "rev", value_name = "R", default_value_t = 0)]
        revision: u64,
        #[arg(default_value = "")]
        prefix: String,
    },
    /// Leases: keys put with one are deleted when it is revoked or when it
    /// goes SECONDS without a keep-alive.
    #[command(subcommand)]
    Lease(LeaseCommand),
}

#[derive(Debug, Subcommand)]
enum LeaseCommand {
    /// Grants a lease of SECONDS (1 to 9,000,000,000); prints its id (16
    /// hex digits, as etcd prints them).
    Grant { seconds: u64 },
    /// Revokes lease ID and deletes its keys; prints how many.
    Revoke {
        #[arg(value_parser = parse_lease_id)]
        id: u64,
    },
    /// Keeps lease ID alive, renewing it every third of its time-to-live
    /// and printing its time-to-live in seconds each time, until
    /// interrupted (exit 0) or the lease is gone (exit 1).
    KeepAlive {
        /// Renew once, print the time-to-live, and exit.
        #[arg(long)]
        once: bool,
        #[arg(value_parser = parse_lease_id)]
        id: u64,
    },
    /// Lists the leases, a line per lease: id, time-to-live and seconds
    /// left (both in seconds), and how many keys are attached, separated
    /// by tabs.
    Ls,
}

/// A lease id as `kv lease grant` prints it: hexadecimal, with or without
/// `0x`.
fn parse_lease_id(s: &str) -> Result<u64, String> {
    let digits = s.strip_prefix("0x").unwrap_or(s);
    match u64::from_str_radix(digits, 16) {
        Ok(0) => Err("lease id 0 means no lease".into()),
        Ok(id) => Ok(id),
        Err(_) => Err(format!(
            "{s:?} is not a lease id (the hexadecimal id `kv lease grant` printed)"
        )),
    }
}

/// Standard input, at most one byte more than a request may carry.
fn read_stdin() -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::io::stdin()
        .take(coffer_store::MAX_REQUEST_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .context("reading standard input")?;
    Ok(buf)
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let store = Store::open(Config::new(&cli.data_dir))
        .await
        .with_context(|| format!("opening the store in {}", cli.data_dir.display()))?;
    let result = match cli.command {
        Command::Kv(cmd) => kv(&store, cmd).await,
    };
    store.shutdown().await.context("closing the store")?;
    result
}

async fn kv(store: &Store, cmd: KvCommand) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match cmd {
        KvCommand::Get { stale, key } => {
            let consistency = if stale {
                Consistency::Stale
            } else {
                Consistency::Linearizable
            };
            match store.get_kv(key.as_bytes(), consistency).await? {
                Some(kv) => {
                    out.write_all(&kv.value)?;
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!("coffer: key {key:?} not found");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        KvCommand::Put { lease, key, value } => {
            let value = match value.as_deref() {
                None | Some("-") => read_stdin()?,
                Some(v) => v.as_bytes().to_vec(),
            };
            if value.len() > coffer_store::MAX_REQUEST_BYTES {
                bail!(
                    "value is larger than the {} byte request limit",
                    coffer_store::MAX_REQUEST_BYTES
                );
            }
            let options = PutOptions {
                lease: lease.unwrap_or(0),
                ..PutOptions::default()
            };
            let put = store.put_with(key.as_bytes(), &value, options).await?;
            writeln!(out, "{}", put.revision)?;
            Ok(ExitCode::SUCCESS)
        }
        KvCommand::Del { prefix: true, key } => {
            let deleted = store
                .delete_range(Range::prefix(key.as_bytes()), DeleteOptions::default())
                .await?;
            writeln!(out, "{}", deleted.deleted)?;
            Ok(ExitCode::SUCCESS)
        }
        KvCommand::Del { prefix: false, key } => {
            if store.delete(key.as_bytes()).await?.deleted {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("coffer: key {key:?} not found");
                Ok(ExitCode::FAILURE)
            }
        }
        KvCommand::Ls {
            limit,
            keys_only,
            revision,
            prefix,
        } => {
            let mut range = Range::prefix(prefix.as_bytes())
                .limit(limit)
                .at_revision(revision);
            range.keys_only = keys_only;
            let listed = store.range(range, Consistency::Linearizable).await?;
            for kv in &listed.kvs {
                write!(out, "{}", kv.key.escape_ascii())?;
                if !keys_only {
                    write!(out, "\t{}", kv.value.escape_ascii())?;
                }
                writeln!(out)?;
            }
            if listed.more {
                let left = listed.count - listed.kvs.len() as u64;
                eprintln!("coffer: {left} more keys not shown (--limit {limit})");
            }
            Ok(ExitCode::SUCCESS)
        }
        KvCommand::Lease(cmd) => lease(store, cmd, &mut out).await,
    }
}

async fn lease(store: &Store, cmd: LeaseCommand, out: &mut impl Write) -> Result<ExitCode> {
    match lease_command(store, cmd, out).await {
        Err(e) => match e.downcast_ref::<coffer_store::Error>() {
            Some(e @ coffer_store::Error::LeaseNotFound { .. }) => {
                eprintln!("coffer: {e}");
                Ok(ExitCode::FAILURE)
            }
            _ => Err(e),
        },
        ok => ok,
    }
}

async fn lease_command(store: &Store, cmd: LeaseCommand, out: &mut impl Write) -> Result<ExitCode> {
    match cmd {
        LeaseCommand::Grant { seconds } => {
            let lease = store.lease_grant(Duration::from_secs(seconds)).await?;
            writeln!(out, "{:016x}", lease.id)?;
        }
        LeaseCommand::Revoke { id } => {
            let revoked = store.lease_revoke(id).await?;
            writeln!(out, "{}", revoked.deleted)?;
        }
        LeaseCommand::KeepAlive { once: true, id } => {
            let ttl = store.lease_keep_alive(id).await?;
            writeln!(out, "{}", ttl.as_secs())?;
        }
        LeaseCommand::KeepAlive { once: false, id } => {
            // Listening before the first renewal is printed: a signal sent
            // once that line is out always ends the loop cleanly.
            let mut signals = Interrupts::listen()?;
            loop {
                let ttl = store.lease_keep_alive(id).await?;
                writeln!(out, "{}", ttl.as_secs())?;
                out.flush()?;
                tokio::select! {
                    () = signals.next() => return Ok(ExitCode::SUCCESS),
                    _ = tokio::time::sleep((ttl / 3).max(Duration::from_millis(500))) => {}
                }
            }
        }
        LeaseCommand::Ls => {
            for l in store.leases(Consistency::Linearizable).await? {
                writeln!(
                    out,
                    "{:016x}\t{}\t{}\t{}",
                    l.id,
                    l.ttl.as_secs(),
                    l.remaining.as_secs(),
                    l.keys
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// SIGINT and SIGTERM, caught from the moment they are listened for.
struct Interrupts {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Interrupts {
    fn listen() -> Result<Interrupts> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Interrupts {
            term: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
        })
    }

    /// Resolves on the next SIGINT or SIGTERM.
    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("coffer: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("coffer: {e:#}");
            ExitCode::from(2)
        }
    }
}
