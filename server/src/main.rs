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
use coffer_store::{Config, Consistency, DeleteOptions, Range, Store};

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
    Put { key: String, value: Option<String> },
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
        #[arg(default_value = "")]
        prefix: String,
    },
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
        KvCommand::Put { key, value } => {
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
            let revision = store.put(key.as_bytes(), &value).await?;
            writeln!(out, "{revision}")?;
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
            prefix,
        } => {
            let mut range = Range::prefix(prefix.as_bytes()).limit(limit);
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
