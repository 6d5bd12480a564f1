//! `coffer snapshot save` and `coffer snapshot restore`: a whole store in
//! one file sealed under an operator's passphrase
//! ([`coffer_store::backup`]), and back into a new data directory.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use coffer_store::backup::{self, BackupReader, BackupWriter};
use coffer_store::{Config, Frame, Store};
use coffer_vault::ca::Role;
use coffer_vault::cluster::Cluster;
use coffer_vault::config::ClusterConfig;
use coffer_vault::nodes::{NodeRecord, NodeState};
use coffer_vault::tokens::JoinTokens;
use zeroize::Zeroizing;

use crate::client::{Connection, Target};
use crate::pb;
use crate::status::failed;

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Saves a consistent copy of the whole store (every key, secret,
    /// task, the CA and the tokens) from a running node into FILE, sealed
    /// under a passphrase (argon2id, XChaCha20-Poly1305), with a checksum.
    Save {
        file: PathBuf,
        /// A file whose first line is the passphrase (default: a prompt
        /// without echo, asked twice, or standard input's first line).
        #[arg(long, value_name = "P")]
        passphrase_file: Option<PathBuf>,
    },
    /// Builds a new single-node cluster in --data-dir (which must not
    /// exist or be empty) holding exactly what FILE holds, offline. It gets
    /// a new cluster id and new join tokens, and the snapshot's nodes are
    /// removed (it is a cluster of its own); start it with `coffer server`.
    Restore {
        file: PathBuf,
        /// A file whose first line is the passphrase (default: a prompt
        /// without echo, or standard input's first line).
        #[arg(long, value_name = "P")]
        passphrase_file: Option<PathBuf>,
        /// Keep the snapshot's cluster id (the CA is kept either way).
        #[arg(long)]
        keep_cluster_id: bool,
    },
}

/// The passphrase: the first line of `file`, else a prompt (twice when
/// `confirm`) or standard input's first line.
fn passphrase(file: Option<&Path>, confirm: bool) -> Result<Zeroizing<String>> {
    let text = match file {
        Some(path) => {
            let all = Zeroizing::new(
                fs::read_to_string(path)
                    .with_context(|| format!("reading the passphrase file {}", path.display()))?,
            );
            Zeroizing::new(all.lines().next().unwrap_or_default().to_string())
        }
        None => {
            let first = super::read_secret_line("Passphrase", "the passphrase")?;
            if confirm && std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                let again = super::read_secret_line("Passphrase again", "the passphrase")?;
                if first.trim_end_matches(['\r', '\n']) != again.trim_end_matches(['\r', '\n']) {
                    bail!("the two passphrases differ");
                }
            }
            Zeroizing::new(first.trim_end_matches(['\r', '\n']).to_string())
        }
    };
    if text.len() < backup::PASSPHRASE_MIN_BYTES {
        bail!(
            "the passphrase is too short: at least {} bytes",
            backup::PASSPHRASE_MIN_BYTES
        );
    }
    Ok(text)
}

pub async fn run(
    cmd: SnapshotCommand,
    target: Result<Target>,
    data_dir: &Path,
) -> Result<ExitCode> {
    match cmd {
        SnapshotCommand::Save {
            file,
            passphrase_file,
        } => save(&target?, &file, passphrase_file.as_deref()).await,
        SnapshotCommand::Restore {
            file,
            passphrase_file,
            keep_cluster_id,
        } => restore(&file, data_dir, passphrase_file.as_deref(), keep_cluster_id).await,
    }
}

async fn save(target: &Target, file: &Path, passphrase_file: Option<&Path>) -> Result<ExitCode> {
    let passphrase = passphrase(passphrase_file, true)?;
    let tmp = file.with_file_name(format!(
        ".{}.tmp-{}",
        file.file_name()
            .context("FILE names no file")?
            .to_string_lossy(),
        std::process::id()
    ));
    let written = write_file(target, &tmp, &passphrase).await;
    let (frames, records, revision) = match written {
        Ok(counts) => counts,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    fs::rename(&tmp, file).with_context(|| format!("renaming to {}", file.display()))?;
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir).and_then(|d| d.sync_all()).ok();
    }
    let bytes = fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "saved a snapshot at revision {revision}: {records} keys in {frames} frames, {bytes} bytes, to {}",
        file.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Streams the snapshot into `tmp` (created 0600); returns frames,
/// records and revision.
async fn write_file(target: &Target, tmp: &Path, passphrase: &str) -> Result<(u64, u64, u64)> {
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    let connection = Connection::open(target).await?;
    let answer = connection
        .cluster
        .clone()
        .save_snapshot(pb::SaveSnapshotRequest {})
        .await;
    let mut stream = match answer {
        Ok(stream) => stream.into_inner(),
        Err(e) => {
            connection.close().await.ok();
            return Err(failed(e));
        }
    };
    let mut writer = BackupWriter::new(BufWriter::new(out), passphrase.as_bytes())?;
    let (mut frames, mut records, mut revision, mut ended) = (0u64, 0u64, 0u64, false);
    let streamed: Result<()> = async {
        while let Some(frame) = stream.message().await.map_err(failed)? {
            let plain = Zeroizing::new(frame.frame);
            let decoded = Frame::decode(&plain).context("a snapshot frame from the server")?;
            match &decoded {
                Frame::Header(h) => revision = h.revision,
                Frame::Records(kvs) => records += kvs.len() as u64,
                Frame::End { .. } => ended = true,
                Frame::Leases(_) => {}
            }
            writer.frame(&plain, ended)?;
            frames += 1;
            if ended {
                break;
            }
        }
        Ok(())
    }
    .await;
    connection.close().await.ok();
    streamed?;
    if !ended {
        bail!("the server's snapshot stream ended before its end marker");
    }
    let out = writer.finish()?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all().context("syncing the snapshot file")?;
    Ok((frames, records, revision))
}

async fn restore(
    file: &Path,
    dir: &Path,
    passphrase_file: Option<&Path>,
    keep_cluster_id: bool,
) -> Result<ExitCode> {
    let open = || File::open(file).with_context(|| format!("opening {}", file.display()));
    // Damage and truncation are found before the passphrase is asked.
    backup::verify(BufReader::new(open()?))
        .with_context(|| format!("refusing {}", file.display()))?;
    let passphrase = passphrase(passphrase_file, false)?;
    let mut reader = BackupReader::open(BufReader::new(open()?), passphrase.as_bytes())
        .with_context(|| format!("refusing {}", file.display()))?;
    drop(passphrase);
    let node: u64 = loop {
        let id = rand::random();
        if id != 0 {
            break id;
        }
    };
    let config = Config::new(dir).node_id(node).advertise_addr(RESTORED_ADDR);
    let restored = tokio::task::spawn_blocking(move || {
        coffer_store::restore_snapshot(&config, || reader.next_frame().map_err(|e| e.to_string()))
    })
    .await
    .context("restoring")?
    .with_context(|| format!("restoring into {}", dir.display()))?;
    let adopted = adopt(dir, node, keep_cluster_id).await;
    let cluster = match adopted {
        Ok(cluster) => cluster,
        Err(e) => {
            // Nothing half-restored stays: the directory was empty.
            coffer_store::clear_restored(dir);
            return Err(e);
        }
    };
    eprintln!(
        "restored {} keys at revision {} into {} as node {node:016x} of cluster {cluster}; start it with `coffer --data-dir {} server`",
        restored.records,
        restored.revision,
        dir.display(),
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The address the restored member is recorded at until its server
/// starts and records its own.
const RESTORED_ADDR: &str = "restored";

/// Makes the restored store a cluster of its own: a new id (unless
/// `keep_cluster_id`), new join tokens, every node of the snapshot's
/// cluster removed, and this node a manager with its identity. Returns
/// the cluster id.
async fn adopt(dir: &Path, node: u64, keep_cluster_id: bool) -> Result<String> {
    let mut config = Config::new(dir).node_id(node).advertise_addr(RESTORED_ADDR);
    config.local_resealer = Some(crate::identity::resealer(dir));
    let store = Store::open(config)
        .await
        .context("opening the restored store")?;
    let adopted = async {
        let cluster = if keep_cluster_id {
            Cluster::load(&store).await?
        } else {
            Cluster::reidentify(&store).await?
        };
        // A store embedded without a server holds no cluster: it gets one.
        let cluster = match cluster {
            Some(cluster) => cluster,
            None => Cluster::init_or_load(&store).await?,
        };
        let settings = ClusterConfig::init_or_load(&store, ClusterConfig::default()).await?;
        if JoinTokens::load(&store).await?.is_some() {
            JoinTokens::rotate(&store, Role::Worker).await?;
            JoinTokens::rotate(&store, Role::Manager).await?;
        } else {
            JoinTokens::init_or_load(&store).await?;
        }
        for mut record in NodeRecord::list(&store, coffer_store::Consistency::Linearizable).await? {
            if record.id == node {
                bail!("the restored node's new id {node:016x} was taken in the snapshot: restore again");
            }
            if !record.is_removed() {
                record.state = NodeState::Removed;
                record.save(&store).await?;
            }
        }
        // This node: a manager with an identity from the cluster's CA, so
        // that `coffer server` starts it as the member the store names.
        NodeRecord::active(node, Role::Manager, RESTORED_ADDR)?
            .save(&store)
            .await?;
        crate::identity::load_or_issue(
            dir,
            &store.local_keys(),
            &cluster.ca,
            node,
            settings.cert_expiry,
        )?;
        anyhow::Ok(cluster.ca.cluster_id().to_string())
    }
    .await;
    store
        .shutdown()
        .await
        .context("closing the restored store")?;
    adopted
}
