//! The `coffer` command line (clap): `coffer server`, and the commands
//! that talk to a server (through its Unix socket) or, when none runs on
//! the data directory, open the directory themselves.

mod key;
mod kv;
mod secret;
mod snapshot;
mod task;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use coffer_vault::ca::Role;

use crate::client::Target;
use crate::pb::cluster_client::ClusterClient;
use crate::server;
use tonic::transport::Channel;

/// Coffer: a replicated, encrypted-at-rest state store and secrets vault.
#[derive(Debug, Parser)]
#[command(name = "coffer", version, about)]
pub struct Cli {
    /// The data directory: the server's own, or, for other commands, the
    /// directory of the server to talk to (through its socket
    /// `coffer.sock`; with no server running, the command opens the
    /// directory itself). Created and bootstrapped as a single-node store
    /// if empty. Default: /var/lib/coffer for root, else
    /// ~/.local/share/coffer.
    #[arg(long, global = true, env = "COFFER_DATA_DIR", default_value_os_t = default_data_dir())]
    data_dir: PathBuf,
    /// The server to talk to instead of the data directory's:
    /// unix:///path/to/coffer.sock, or https://HOST:PORT (a node's port,
    /// over mTLS with the certificate of the node in --identity).
    #[arg(long, global = true, env = "COFFER_HOST", conflicts_with = "data_dir")]
    host: Option<String>,
    /// With --host https://...: the data directory of a node of that
    /// cluster whose certificate the command presents (a manager's, for
    /// the store and the nodes). Default: the default data directory.
    #[arg(long, global = true, env = "COFFER_IDENTITY", value_name = "DIR")]
    identity: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// `/var/lib/coffer` for root (as Docker's `/var/lib/docker`), the user's
/// own data directory for anyone else.
fn default_data_dir() -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    match std::env::var_os("HOME") {
        Some(home) if !root => PathBuf::from(home).join(".local/share/coffer"),
        _ => PathBuf::from("/var/lib/coffer"),
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs a Coffer node: a single-node cluster on a new data directory,
    /// or the node a data directory already holds. Serves the local CLI on
    /// `<data-dir>/coffer.sock` (mode 0600) until SIGTERM or SIGINT.
    Server {
        /// The node's TCP port, for other nodes and remote clients (mTLS
        /// with certificates from the cluster's CA): HOST:PORT, port 0 for
        /// any free one (the log says which).
        #[arg(long, value_name = "ADDR", default_value = server::DEFAULT_LISTEN)]
        listen: String,
        /// The address other nodes reach this one at, HOST:PORT (default:
        /// the address --listen bound; give it when listening on 0.0.0.0).
        #[arg(long, value_name = "ADDR")]
        advertise: Option<String>,
        /// Join the cluster of the manager at HOST:PORT (on a new data
        /// directory), with --token.
        #[arg(long, value_name = "HOST:PORT", requires = "token")]
        join: Option<String>,
        /// The join token (`coffer join-token manager` on a manager prints
        /// it).
        #[arg(
            long,
            value_name = "TOKEN",
            env = "COFFER_JOIN_TOKEN",
            requires = "join",
            hide_env_values = true
        )]
        token: Option<String>,
        /// How long node certificates last, on a new cluster (default 90d;
        /// 30s to 10 years, as 90d, 2160h, 1h30m or 45s). Nodes renew
        /// theirs once 60% of it has passed.
        #[arg(long, value_name = "DURATION", value_parser = coffer_vault::config::parse_duration)]
        cert_expiry: Option<std::time::Duration>,
        /// On a new cluster: seal this manager's keys under a cluster
        /// unlock key, printed once on standard output. A restarted
        /// manager then stays locked until `coffer unlock` gives it.
        #[arg(long)]
        autolock: bool,
        /// On a new cluster: the operator's own CA certificate (PEM), a
        /// root or an intermediate, instead of a generated root CA. Its
        /// key (--ca-key) is sealed in the store like a generated one.
        #[arg(
            long,
            value_name = "FILE",
            requires = "ca_key",
            conflicts_with = "join"
        )]
        ca_cert: Option<PathBuf>,
        /// The key of --ca-cert: unencrypted PKCS#8 PEM (ECDSA P-256 or
        /// P-384, Ed25519, or RSA).
        #[arg(
            long,
            value_name = "FILE",
            requires = "ca_cert",
            conflicts_with = "join"
        )]
        ca_key: Option<PathBuf>,
        /// Recovery of a cluster that lost its quorum for good: this
        /// surviving manager keeps its data and identity and becomes the
        /// cluster's only member; the others are removed, and new
        /// managers join with a manager token. Start without it afterwards.
        #[arg(long, conflicts_with_all = ["join", "ca_cert", "autolock", "cert_expiry"])]
        force_new_cluster: bool,
        /// Rotate this manager's data key on its own once it is this old
        /// (as 30d, 720h; as `coffer key rotate` does, for this manager).
        #[arg(long, value_name = "DURATION", value_parser = coffer_vault::config::parse_duration)]
        key_rotate_after: Option<std::time::Duration>,
        /// Rotate this manager's data key on its own once this many records
        /// were sealed under it (counted since the server started).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        key_rotate_records: Option<u64>,
        /// After a data key rotation, re-encrypt at most this many records
        /// per second (default 20000), so the node keeps serving.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        rekey_rate: Option<u32>,
        /// Log lines as text (for people) or JSON (for log collectors).
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Reads and writes raw keys.
    #[command(subcommand)]
    Kv(KvCommand),
    /// Secrets, as `docker secret`: create, ls, inspect, rotate, rm.
    #[command(subcommand)]
    Secret(secret::SecretCommand),
    /// Tasks: the secrets each gets as files, and the node that runs it.
    #[command(subcommand)]
    Task(task::TaskCommand),
    /// Materializes the secrets of TASK, which runs on this node, in DIR:
    /// a fresh tmpfs (nodev, nosuid, noexec) when the server may mount
    /// one, else DIR must already be on a tmpfs. One file per secret with
    /// its owner and mode, published by a `..data` symlink swap; the
    /// server keeps them current as secrets rotate. DIR is created (with
    /// its parents) if missing, and must be empty.
    Mount {
        task: String,
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Wipes the files of the mount on DIR and unmounts its tmpfs.
    Unmount {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Unlocks a manager that restarted autolocked: reads the cluster's
    /// unlock key from a prompt (a terminal, without echo) or from
    /// standard input, and gives it to the server on --data-dir.
    Unlock,
    /// Prints the cluster's unlock key (autolock), which `coffer unlock`
    /// takes on a locked manager.
    UnlockKey {
        /// Replace it first: every manager seals its keys under the new
        /// one (a manager that is down does so when it returns, and its
        /// old key unlocks it until then).
        #[arg(long)]
        rotate: bool,
        /// Print the key alone.
        #[arg(short, long)]
        quiet: bool,
    },
    /// The cluster's settings.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// The managers' data keys: rotate them, or see a rotation's progress.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Prints the cluster's root CA certificate (PEM); `ca rotate`
    /// replaces it on the running cluster.
    Ca(CaArgs),
    /// Saves the whole store into an encrypted file, or restores one into
    /// a new data directory.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// The cluster's nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Prints the command that joins a node to this cluster as ROLE
    /// (worker or manager), with its join token.
    JoinToken {
        /// Replace the token first: the old one stops working at once.
        #[arg(long)]
        rotate: bool,
        /// Print the token alone.
        #[arg(short, long)]
        quiet: bool,
        #[arg(value_parser = ["worker", "manager"])]
        role: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct CaArgs {
    #[command(subcommand)]
    command: Option<CaCommand>,
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Replaces the cluster's root CA without downtime, as SwarmKit's root
    /// rotation: the new root (the operator's with --ca-cert and
    /// --ca-key, else a generated one) is cross-signed by the current
    /// one, every node renews its certificate under it, and the cluster
    /// trusts only it once every node holds one (a node that is down
    /// included, once it returns). The join tokens change with it. Shows
    /// the progress until it is done; --detach leaves it to finish on its
    /// own (`coffer ca` shows how far it is).
    Rotate {
        /// The new CA's certificate (PEM), a root or an intermediate.
        #[arg(long, value_name = "FILE", requires = "ca_key")]
        ca_cert: Option<PathBuf>,
        /// The new CA's key (unencrypted PKCS#8 PEM).
        #[arg(long, value_name = "FILE", requires = "ca_cert")]
        ca_key: Option<PathBuf>,
        /// Node certificate validity from now on (as 90d, 2160h).
        #[arg(long, value_name = "DURATION", value_parser = coffer_vault::config::parse_duration)]
        cert_expiry: Option<std::time::Duration>,
        /// Return once the rotation has begun.
        #[arg(long)]
        detach: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Changes the cluster's settings.
    Update {
        /// Autolock on (prints the unlock key, which a restarted manager
        /// then needs: `coffer unlock`) or off.
        #[arg(long, value_name = "true|false", action = clap::ArgAction::Set)]
        autolock: Option<bool>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KvCommand {
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
        /// List this member's applied state instead of a linearizable read
        /// (no quorum needed; may be behind).
        #[arg(long)]
        stale: bool,
        #[arg(default_value = "")]
        prefix: String,
    },
    /// Leases: keys put with one are deleted when it is revoked or when it
    /// goes SECONDS without a keep-alive.
    #[command(subcommand)]
    Lease(LeaseCommand),
}

#[derive(Debug, Subcommand)]
pub enum LeaseCommand {
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

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Lists the nodes as the leader sees them: id, address, role,
    /// membership (voter, learner, or none for a worker), whether it
    /// answers now, and which one leads.
    Ls {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Removes a node for good: its id and certificate are refused from
    /// then on. A manager must be demoted first; a worker that still
    /// answers needs --force.
    Rm {
        /// Remove a worker that still answers.
        #[arg(long)]
        force: bool,
        /// The node's id, or a prefix of it that names one node.
        node: String,
    },
    /// Makes a worker a manager: it gets a manager certificate and a
    /// replica of the store, and votes.
    Promote {
        /// The node's id, or a prefix of it that names one node.
        node: String,
    },
    /// Makes a manager a worker: it stops voting at once and drops its
    /// replica. Refused for the last manager, or when the managers left
    /// would not have a reachable quorum.
    Demote {
        /// The node's id, or a prefix of it that names one node.
        node: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
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

/// Runs one command line.
pub async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Server {
            listen,
            advertise,
            join,
            token,
            cert_expiry,
            autolock,
            ca_cert,
            ca_key,
            force_new_cluster,
            key_rotate_after,
            key_rotate_records,
            rekey_rate,
            log_format,
        } => {
            init_logs(log_format);
            let join = match (join, token) {
                (Some(addr), Some(token)) => Some(server::JoinConfig { addr, token }),
                _ => None,
            };
            server::run(server::ServerConfig {
                data_dir: cli.data_dir,
                listen,
                advertise,
                join,
                cert_expiry,
                autolock,
                ca: match (ca_cert, ca_key) {
                    (Some(cert), Some(key)) => Some(server::CaFiles { cert, key }),
                    _ => None,
                },
                force_new_cluster,
                keys: server::KeyPolicy {
                    rotate_after: key_rotate_after,
                    rotate_after_records: key_rotate_records,
                    rekey_rate,
                },
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Secret(cmd) => {
            secret::run(
                &target(cli.host.as_deref(), cli.identity.as_deref(), &cli.data_dir)?,
                cmd,
            )
            .await
        }
        Command::Task(cmd) => {
            task::run(
                &target(cli.host.as_deref(), cli.identity.as_deref(), &cli.data_dir)?,
                cmd,
            )
            .await
        }
        Command::Mount { task: name, dir } => {
            let target = target(cli.host.as_deref(), cli.identity.as_deref(), &cli.data_dir)?;
            task::mount(&target, name, &dir).await
        }
        Command::Unmount { dir } => {
            let target = target(cli.host.as_deref(), cli.identity.as_deref(), &cli.data_dir)?;
            task::unmount(&target, &dir).await
        }
        Command::Kv(cmd) => {
            kv::run(
                &target(cli.host.as_deref(), cli.identity.as_deref(), &cli.data_dir)?,
                cmd,
            )
            .await
        }
        Command::Unlock => unlock(cli.host.as_deref(), &cli.data_dir).await,
        Command::Snapshot(cmd) => {
            snapshot::run(
                cmd,
                target(cli.host.as_deref(), cli.identity.as_deref(), &cli.data_dir),
                &cli.data_dir,
            )
            .await
        }
        Command::Cluster(ClusterCommand::Update { autolock }) => {
            let target = target(cli.host.as_deref(), cli.identity.as_deref(), &cli.data_dir)?;
            let request = crate::pb::UpdateClusterRequest { autolock };
            let mut answer =
                cluster_call(
                    &target,
                    |mut c| async move { c.update_cluster(request).await },
                )
                .await?;
            let key = zeroize::Zeroizing::new(std::mem::take(&mut answer.unlock_key));
            match (autolock, key.is_empty()) {
                (Some(true), false) => println!(
                    "Autolock is on. A restarted manager stays locked until it is given this unlock key (`coffer unlock`):\n\n    {}\n",
                    key.as_str()
                ),
                (Some(false), _) => println!("Autolock is off: every manager seals its keys under a key file again."),
                _ => println!("The cluster is unchanged."),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::UnlockKey { rotate, quiet } => {
            let target = target(cli.host.as_deref(), cli.identity.as_deref(), &cli.data_dir)?;
            let request = crate::pb::UnlockKeyRequest { rotate };
            let mut answer =
                cluster_call(&target, |mut c| async move { c.unlock_key(request).await }).await?;
            let key = zeroize::Zeroizing::new(std::mem::take(&mut answer.key));
            if quiet {
                println!("{}", key.as_str());
            } else {
                println!(
                    "To unlock a locked manager, run `coffer unlock` on it and give it this key:\n\n    {}\n",
                    key.as_str()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Key(cmd) => {
            key::run(
                &target(cli.host.as_deref(), cli.identity.as_deref(), &cli.data_dir)?,
                cmd,
            )
            .await
        }
        Command::Ca(CaArgs { command }) => {
            let target = target(cli.host.as_deref(), cli.identity.as_deref(), &cli.data_dir)?;
            match command {
                None => ca(&target).await,
                Some(CaCommand::Rotate {
                    ca_cert,
                    ca_key,
                    cert_expiry,
                    detach,
                }) => ca_rotate(&target, ca_cert, ca_key, cert_expiry, detach).await,
            }
        }
        Command::Node(cmd) => {
            node(
                &target(cli.host.as_deref(), cli.identity.as_deref(), &cli.data_dir)?,
                cmd,
            )
            .await
        }
        Command::JoinToken {
            rotate,
            quiet,
            role,
        } => {
            let target = target(cli.host.as_deref(), cli.identity.as_deref(), &cli.data_dir)?;
            join_token(&target, rotate, quiet, role).await
        }
    }
}

/// Where a client command goes: `--host` (with `--identity` for https),
/// or the server of `--data-dir`.
fn target(host: Option<&str>, identity: Option<&Path>, data_dir: &Path) -> Result<Target> {
    match host {
        Some(url) => Target::host(
            url,
            identity.map_or_else(default_data_dir, Path::to_path_buf),
        ),
        None => Ok(Target::DataDir(data_dir.to_path_buf())),
    }
}

/// Opens a connection, makes one `Cluster` call, closes the connection
/// (a store opened in-process too), and gives the answer.
async fn cluster_call<T, F, Fut>(target: &Target, call: F) -> Result<T>
where
    F: FnOnce(ClusterClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let connection = crate::client::Connection::open(target).await?;
    let answer = call(connection.cluster.clone()).await;
    connection.close().await?;
    Ok(answer.map_err(crate::status::failed)?.into_inner())
}

/// Reads a secret line (`what`): from a prompt (`PROMPT: `) without echo
/// when standard input is a terminal, else standard input's first line.
fn read_secret_line(prompt: &str, what: &str) -> Result<zeroize::Zeroizing<String>> {
    use anyhow::Context as _;
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    let mut line = zeroize::Zeroizing::new(String::new());
    if stdin.is_terminal() {
        use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
        let before = tcgetattr(&stdin).context("reading the terminal's settings")?;
        let mut quiet = before.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        eprint!("{prompt}: ");
        std::io::stderr().flush().ok();
        tcsetattr(&stdin, OptionalActions::Now, &quiet).context("turning echo off")?;
        let read = stdin.lock().read_line(&mut line);
        tcsetattr(&stdin, OptionalActions::Now, &before).context("turning echo on")?;
        eprintln!();
        read.with_context(|| format!("reading {what}"))?;
    } else {
        stdin
            .lock()
            .read_line(&mut line)
            .with_context(|| format!("reading {what} from standard input"))?;
    }
    Ok(line)
}

/// Reads the unlock key: from a prompt without echo when standard input
/// is a terminal, else its first line.
fn read_unlock_key() -> Result<coffer_store::UnlockKey> {
    let line = read_secret_line("Unlock key", "the unlock key")?;
    Ok(coffer_store::UnlockKey::parse(&line)?)
}

/// `coffer unlock`: the key to the locked server's socket.
async fn unlock(host: Option<&str>, data_dir: &Path) -> Result<ExitCode> {
    use anyhow::Context as _;
    let socket = match host {
        Some(url) => match Target::host(url, PathBuf::new())? {
            Target::Socket(path) => path,
            _ => anyhow::bail!("unlock goes to a server's Unix socket: give --data-dir, or --host unix:///path/coffer.sock"),
        },
        None => data_dir.join(server::SOCKET_FILE),
    };
    let key = read_unlock_key()?;
    let connection = crate::client::Connection::open(&Target::Socket(socket.clone()))
        .await
        .with_context(|| format!("no server answers on {}: start `coffer server` on its data directory, then unlock it", socket.display()))?;
    let request = crate::pb::UnlockRequest {
        key: key.to_text().to_string(),
    };
    let answer = connection.cluster.clone().unlock(request).await;
    connection.close().await?;
    answer.map_err(crate::status::failed)?;
    eprintln!("unlocked: the server opens its store and starts serving");
    Ok(ExitCode::SUCCESS)
}

async fn ca(target: &Target) -> Result<ExitCode> {
    let answer = cluster_call(target, |mut c| async move {
        c.root_ca(crate::pb::RootCaRequest {}).await
    })
    .await?;
    print!("{}", answer.certificate_pem);
    if !answer.next_digest.is_empty() {
        eprintln!("{}", rotation_progress(&answer));
        // Which root each node's certificate is from.
        let nodes = cluster_call(target, |mut c| async move {
            c.list_nodes(crate::pb::ListNodesRequest {}).await
        })
        .await?;
        for n in &nodes.nodes {
            let holds = if n.cert_root == answer.next_digest {
                "the new root"
            } else if n.cert_root == answer.digest {
                "the current root"
            } else if n.cert_root.is_empty() {
                "has not said which root yet"
            } else {
                "another root"
            };
            eprintln!("  {:016x}  {:<7}  {holds}", n.id, n.role);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn rotation_progress(answer: &crate::pb::RootCaResponse) -> String {
    format!(
        "a root CA rotation from {} to {} is under way: {} of {} nodes hold a certificate from the new root",
        &answer.digest[..answer.digest.len().min(12)],
        &answer.next_digest[..answer.next_digest.len().min(12)],
        answer.nodes_done,
        answer.nodes_total
    )
}

/// How often `ca rotate` looks at the rotation's progress.
const CA_ROTATE_POLL: std::time::Duration = std::time::Duration::from_millis(500);

async fn ca_rotate(
    target: &Target,
    ca_cert: Option<PathBuf>,
    ca_key: Option<PathBuf>,
    cert_expiry: Option<std::time::Duration>,
    detach: bool,
) -> Result<ExitCode> {
    let read = |path: &Option<PathBuf>| -> Result<zeroize::Zeroizing<Vec<u8>>> {
        Ok(zeroize::Zeroizing::new(match path {
            Some(p) => anyhow::Context::with_context(std::fs::read(p), || {
                format!("reading {}", p.display())
            })?,
            None => Vec::new(),
        }))
    };
    let request = crate::pb::RotateCaRequest {
        ca_cert_pem: read(&ca_cert)?.to_vec(),
        ca_key_pem: read(&ca_key)?.to_vec(),
        cert_expiry_secs: cert_expiry.map_or(0, |d| d.as_secs()),
    };
    let started = cluster_call(target, |mut c| async move { c.rotate_ca(request).await }).await?;
    let next = started.next_digest.clone();
    println!("{}", rotation_progress(&started));
    if detach {
        println!("It goes on on its own: `coffer ca` shows how far it is.");
        return Ok(ExitCode::SUCCESS);
    }
    let mut shown = (started.nodes_done, started.nodes_total);
    loop {
        tokio::time::sleep(CA_ROTATE_POLL).await;
        let answer = match cluster_call(target, |mut c| async move {
            c.root_ca(crate::pb::RootCaRequest {}).await
        })
        .await
        {
            Ok(answer) => answer,
            // A leader change or a node restarting: ask again.
            Err(e) => {
                eprintln!("asking for the rotation's progress: {e:#}");
                continue;
            }
        };
        if answer.digest == next {
            println!(
                "The root CA rotation is done: every node holds a certificate from the new root {}, which alone is trusted now. The join tokens changed with it (`coffer join-token`).",
                &next[..12]
            );
            return Ok(ExitCode::SUCCESS);
        }
        if answer.next_digest != next {
            anyhow::bail!("the rotation to {} is no longer under way", &next[..12]);
        }
        if (answer.nodes_done, answer.nodes_total) != shown {
            shown = (answer.nodes_done, answer.nodes_total);
            println!("{} of {} nodes", shown.0, shown.1);
        }
    }
}

async fn node(target: &Target, cmd: NodeCommand) -> Result<ExitCode> {
    let (node, role) = match cmd {
        NodeCommand::Ls { format } => return node_ls(target, format).await,
        NodeCommand::Rm { force, node } => {
            let request = crate::pb::RemoveNodeRequest { node, force };
            let answer =
                cluster_call(target, |mut c| async move { c.remove_node(request).await }).await?;
            println!("{:016x}", answer.id);
            return Ok(ExitCode::SUCCESS);
        }
        NodeCommand::Promote { node } => (node, Role::Manager),
        NodeCommand::Demote { node } => (node, Role::Worker),
    };
    let request = crate::pb::SetRoleRequest {
        node,
        role: role.to_string(),
    };
    let answer = cluster_call(target, |mut c| async move { c.set_role(request).await }).await?;
    if answer.previous_role == role.to_string() {
        println!("node {:016x} is already a {role}", answer.id);
    } else {
        println!("node {:016x} is now a {role}", answer.id);
    }
    Ok(ExitCode::SUCCESS)
}

async fn node_ls(target: &Target, format: Format) -> Result<ExitCode> {
    let answer = cluster_call(target, |mut c| async move {
        c.list_nodes(crate::pb::ListNodesRequest {}).await
    })
    .await?;
    let mut nodes = answer.nodes;
    nodes.sort_by_key(|n| n.id);
    match format {
        Format::Json => {
            let rows: Vec<serde_json::Value> = nodes
                .iter()
                .map(|n| {
                    serde_json::json!({
                        "id": format!("{:016x}", n.id),
                        "address": n.address,
                        "role": n.role,
                        "membership": n.membership,
                        "reachable": n.reachable,
                        "leader": n.leader,
                        "cert_root": n.cert_root,
                    })
                })
                .collect();
            println!("{}", serde_json::Value::Array(rows));
        }
        Format::Table => {
            println!(
                "{:<16}  {:<21}  {:<7}  {:<10}  {:<11}  {:<6}  CA",
                "ID", "ADDRESS", "ROLE", "MEMBERSHIP", "REACHABLE", "LEADER"
            );
            for n in &nodes {
                println!(
                    "{:016x}  {:<21}  {:<7}  {:<10}  {:<11}  {:<6}  {}",
                    n.id,
                    n.address,
                    n.role,
                    n.membership,
                    if n.reachable { "yes" } else { "no" },
                    if n.leader { "*" } else { "" },
                    if n.cert_root.is_empty() {
                        "-"
                    } else {
                        &n.cert_root[..n.cert_root.len().min(12)]
                    }
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn join_token(target: &Target, rotate: bool, quiet: bool, role: String) -> Result<ExitCode> {
    let request = crate::pb::JoinTokenRequest {
        role: role.clone(),
        rotate,
    };
    let answer = cluster_call(target, |mut c| async move { c.join_token(request).await }).await?;
    if quiet {
        println!("{}", answer.token);
    } else {
        println!(
            "To add a {role} to this cluster, run on the new node:\n\n    coffer server --data-dir DIR --join {} --token {}\n",
            answer.join_addr, answer.token
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Logs to standard error; `RUST_LOG` filters them (default: Coffer's at
/// info, the libraries' warnings).
fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,coffer=info,coffer_store=info")
    });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}
