//! The vault embedded in a manager written in Rust: no server, no network.
//! One `Store::open` on a directory, then secrets, a task and its files
//! rendered into a directory on a tmpfs, kept current through a rotation.
//!
//! `cargo run -p coffer-vault --example embedded_vault [DATA_DIR [RENDER_DIR]]`
//! (defaults: a fresh temporary data directory, and a directory under
//! /dev/shm to render into). As root the render directory gets a tmpfs of
//! its own; otherwise it must already be on one (/dev/shm is).
//! `vault/tests/example.rs` runs this same code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use coffer_store::{Config, Store};
use coffer_vault::ca::Role;
use coffer_vault::mount;
use coffer_vault::nodes::NodeRecord;
use coffer_vault::secrets::Secret;
use coffer_vault::tasks::{Attachment, Task};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// What the example did, for its test.
pub struct Rendered {
    /// The file as read after creation, then after the rotation.
    pub reads: Vec<Vec<u8>>,
    /// The file's mode bits.
    pub mode: u32,
}

impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sizes: Vec<usize> = self.reads.iter().map(Vec::len).collect();
        f.debug_struct("Rendered")
            .field("read_bytes", &sizes)
            .field("mode", &format_args!("{:o}", self.mode))
            .finish()
    }
}

/// Opens (or creates) the store in `data_dir`, renders task `web.1`'s
/// secrets into `render_dir`, rotates the secret, follows the change, and
/// takes everything down again.
pub async fn run(data_dir: &Path, render_dir: &Path) -> Result<Rendered> {
    use std::os::unix::fs::PermissionsExt;

    // An empty directory bootstraps a single-node cluster; everything is
    // sealed on disk (names and data included).
    let store = Store::open(Config::new(data_dir)).await?;

    // Tasks run on nodes the vault knows: this process is one.
    let node = store.node_id();
    NodeRecord::active(node, Role::Manager, "embedded")?
        .save(&store)
        .await?;

    // `docker secret create my_password -` ...
    let secret = Secret::create(&store, "my_password", BTreeMap::new(), b"password123yoyo").await?;
    println!("created secret {} ({})", secret.name, secret.id);

    // ... and a task that gets it as `db_password`, mode 0400.
    let attach = Attachment {
        target: Some("db_password".into()),
        mode: 0o400,
        ..Attachment::new("my_password")
    };
    let task = Task::attach(&store, "web.1", node, &[attach]).await?;

    // Render the task's files: a tmpfs (or a directory already on one),
    // the files published at once by a `..data` symlink swap.
    let files = task.files(&store).await?;
    let medium = mount::prepare(render_dir, mount::size_for(&files))?;
    mount::publish(render_dir, &files)?;
    let file = render_dir.join("db_password");
    let mut reads = vec![std::fs::read(&file)?];
    let mode = std::fs::metadata(&file)?.permissions().mode() & 0o7777;
    println!(
        "rendered {} ({} bytes, mode {mode:o}, on {})",
        file.display(),
        reads[0].len(),
        medium.as_str()
    );

    // Keep it current: watch the vault's objects, and render again on a
    // change (the server's mounts do exactly this).
    let mut changes = store.watch(&[coffer_vault::SYSTEM_PREFIX], 0)?;
    let rotated = Secret::rotate(&store, "my_password", b"password456yoyo").await?;
    changes.next().await?;
    mount::publish(
        render_dir,
        &Task::find(&store, "web.1").await?.files(&store).await?,
    )?;
    reads.push(std::fs::read(&file)?);
    println!("rotated to version {}: the file follows", rotated.version());

    // Take it down: wipe the files (and unmount our tmpfs), then the task
    // and the secret, which the task's reference guarded until now.
    mount::wipe(render_dir, medium)?;
    Task::detach(&store, "web.1").await?;
    Secret::remove(&store, "my_password").await?;
    store.shutdown().await?;
    Ok(Rendered { reads, mode })
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let data = tempfile::tempdir()?;
    let data_dir = args
        .next()
        .map_or_else(|| data.path().to_path_buf(), PathBuf::from);
    let shm = tempfile::tempdir_in("/dev/shm")?;
    let render_dir = args
        .next()
        .map_or_else(|| shm.path().join("web.1"), PathBuf::from);
    run(&data_dir, &render_dir).await?;
    Ok(())
}
