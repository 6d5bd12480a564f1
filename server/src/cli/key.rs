//! `coffer key rotate` and `coffer key status`: the managers' data keys.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use crate::client::Target;
use crate::pb;

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Rotates the data keys: every manager seals new records under a new
    /// key at once and re-encrypts its older records in the background
    /// (`coffer key status` shows how far), then deletes the old key.
    Rotate {
        /// This manager's keys alone.
        #[arg(long)]
        local: bool,
    },
    /// Each manager's data keys and re-encryption progress.
    Status {
        /// This manager alone.
        #[arg(long)]
        local: bool,
        /// Exit with status 2 while a manager still re-encrypts or could
        /// not be reached (for scripts that wait for a rotation to finish).
        #[arg(long)]
        check_done: bool,
    },
}

pub async fn run(target: &Target, cmd: KeyCommand) -> Result<ExitCode> {
    match cmd {
        KeyCommand::Rotate { local } => {
            let request = pb::RotateKeyRequest { local_only: local };
            let answer =
                super::cluster_call(target, |mut c| async move { c.rotate_key(request).await })
                    .await?;
            let mut failed = false;
            for n in &answer.nodes {
                if n.error.is_empty() {
                    println!(
                        "node {}: new data key {}; re-encrypting older records ({})",
                        n.node, n.active_key, n.phase
                    );
                } else {
                    failed = true;
                    println!("node {}: not rotated: {}", n.node, n.error);
                }
            }
            println!("`coffer key status` shows the progress.");
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        KeyCommand::Status { local, check_done } => {
            let request = pb::KeyStatusRequest { local_only: local };
            let answer =
                super::cluster_call(target, |mut c| async move { c.key_status(request).await })
                    .await?;
            print!("{}", table(&answer.nodes));
            let done = answer
                .nodes
                .iter()
                .all(|n| n.error.is_empty() && n.keys.len() == 1 && n.phase == "idle");
            Ok(if check_done && !done {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

fn table(nodes: &[pb::NodeKeyStatus]) -> String {
    let mut out = format!(
        "{:<16}  {:>6}  {:<12}  {:<26}  {}\n",
        "NODE", "ACTIVE", "KEYS", "STATE", "PROGRESS"
    );
    for n in nodes {
        if !n.error.is_empty() {
            out.push_str(&format!(
                "{:<16}  {:>6}  {:<12}  {:<26}  {}\n",
                n.node, "-", "-", "unknown", n.error
            ));
            continue;
        }
        let keys: Vec<String> = n.keys.iter().map(u32::to_string).collect();
        let progress = if n.keys.len() > 1 || n.phase != "idle" {
            format!(
                "{} rows examined of about {}, {} re-encrypted",
                n.scanned, n.rows_estimate, n.resealed
            )
        } else {
            format!(
                "{} records sealed under the active key",
                n.sealed_under_active
            )
        };
        let state = if n.last_error.is_empty() {
            n.phase.clone()
        } else {
            format!("{}: {}", n.phase, n.last_error)
        };
        out.push_str(&format!(
            "{:<16}  {:>6}  {:<12}  {:<26}  {}\n",
            n.node,
            n.active_key,
            keys.join(","),
            state,
            progress
        ));
    }
    out
}
