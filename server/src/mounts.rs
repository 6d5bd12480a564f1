//! The node's mounts of task secrets (`coffer mount TASK DIR`): each a
//! directory on a tmpfs holding one task's files ([`coffer_vault::mount`]),
//! recorded in `<data-dir>/mounts.json` (directories, task names and
//! media; never a secret or a target) so that a restarted server takes
//! them up again.
//!
//! [`Mounts::follow`] keeps every mount current: it watches the vault's
//! objects in this node's replica and, on any change (and every
//! [`RECHECK`] besides), publishes a mount again when what its task should
//! hold (targets, secret versions, owners, modes) differs from what it
//! holds. A task that is detached or given to another node has its files
//! removed; its directory stays mounted until `coffer unmount`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use coffer_store::Store;
use coffer_vault::mount::{self, Medium};
use coffer_vault::tasks::{Task, TaskFile};
use coffer_vault::VaultError;
use futures::FutureExt;
use tokio::sync::{watch, Mutex};
use tonic::Status;
use tracing::{info, warn};

use crate::status::from_vault;

/// The file that records the node's mounts.
pub const MOUNTS_FILE: &str = "mounts.json";
/// How often every mount is checked even when no change was seen.
pub const RECHECK: Duration = Duration::from_secs(5);
/// The most mounts one node keeps.
const MOUNTS_MAX: usize = 4096;

/// What a mount holds: per file, the target, the secret, its version,
/// owner and mode.
type Contents = Vec<(String, String, u64, u32, u32, u32)>;

fn contents(files: &[TaskFile]) -> Contents {
    files
        .iter()
        .map(|f| {
            (
                f.target.clone(),
                f.secret_id.clone(),
                f.version,
                f.uid,
                f.gid,
                f.mode,
            )
        })
        .collect()
}

#[derive(Debug)]
struct Entry {
    dir: PathBuf,
    task: String,
    medium: Medium,
    /// The tmpfs's size, for one this server mounted.
    size: u64,
    /// What the directory holds now (`None`: not known since start).
    published: Option<Contents>,
}

/// The node's mounts; clones share them.
#[derive(Debug, Clone)]
pub struct Mounts {
    file: PathBuf,
    store: Store,
    entries: Arc<Mutex<Vec<Entry>>>,
}

/// A mount just made.
#[derive(Debug)]
pub struct Mounted {
    pub dir: PathBuf,
    pub files: usize,
    pub medium: Medium,
}

/// `dir` as the server names it: absolute, with the symlinks of its
/// existing ancestors resolved.
fn normalize(dir: &str) -> Result<PathBuf, Status> {
    use std::path::Component;
    let path = Path::new(dir);
    let plain = path
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !path.is_absolute() || !plain || path.parent().is_none() {
        return Err(Status::invalid_argument(format!(
            "{dir:?}: the mount directory must be an absolute path without . or .. (and not /)"
        )));
    }
    let mut existing = path;
    let mut rest = Vec::new();
    while let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) {
        if existing.exists() {
            break;
        }
        rest.push(name);
        existing = parent;
    }
    let mut normal = std::fs::canonicalize(existing)
        .map_err(|e| Status::invalid_argument(format!("{dir:?}: {e}")))?;
    normal.extend(rest.into_iter().rev());
    Ok(normal)
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, VaultError> + Send + 'static,
) -> Result<T, VaultError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(VaultError::Io(format!("a mount task failed: {e}"))))
}

/// Returns once `stopping` is true.
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}

impl Mounts {
    /// The mounts recorded in `data_dir`, served from `store`.
    pub fn open(data_dir: &Path, store: Store) -> Result<Mounts> {
        let file = data_dir.join(MOUNTS_FILE);
        let mut entries = Vec::new();
        match std::fs::read(&file) {
            Ok(bytes) => {
                let saved: serde_json::Value = serde_json::from_slice(&bytes)
                    .with_context(|| format!("reading {}", file.display()))?;
                for m in saved.as_array().into_iter().flatten() {
                    let (Some(dir), Some(task), Some(medium)) = (
                        m["dir"].as_str(),
                        m["task"].as_str(),
                        m["medium"].as_str().and_then(Medium::parse),
                    ) else {
                        anyhow::bail!("{}: a mount without dir, task or medium", file.display());
                    };
                    entries.push(Entry {
                        dir: PathBuf::from(dir),
                        task: task.to_string(),
                        medium,
                        size: 0,
                        published: None,
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
        }
        Ok(Mounts {
            file,
            store,
            entries: Arc::new(Mutex::new(entries)),
        })
    }

    fn save(&self, entries: &[Entry]) -> Result<(), Status> {
        let all: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "dir": e.dir.to_string_lossy(),
                    "task": e.task,
                    "medium": e.medium.as_str(),
                })
            })
            .collect();
        let text = serde_json::Value::Array(all).to_string();
        crate::identity::write_atomic(&self.file, text.as_bytes(), 0o600)
            .map_err(|e| Status::internal(format!("recording the mount: {e:#}")))
    }

    /// The files of `task` if it runs on this node.
    async fn assigned(&self, task: &str) -> Result<Vec<TaskFile>, VaultError> {
        let task = Task::find(&self.store, task).await?;
        let here = self.store.node_id();
        if task.node != here {
            return Err(VaultError::Precondition(format!(
                "task {:?} runs on node {:016x}, not on this one ({here:016x}): mount it there",
                task.name, task.node
            )));
        }
        task.files(&self.store).await
    }

    /// Mounts `task`'s secrets on `dir` (see `tasks.proto`).
    pub async fn mount(&self, task: &str, dir: &str) -> Result<Mounted, Status> {
        let dir = normalize(dir)?;
        let mut entries = self.entries.lock().await;
        if let Some(e) = entries.iter().find(|e| e.dir == dir) {
            return Err(Status::already_exists(format!(
                "task {:?} is mounted on {} already",
                e.task,
                dir.display()
            )));
        }
        if entries.len() >= MOUNTS_MAX {
            return Err(Status::resource_exhausted(format!(
                "this node keeps at most {MOUNTS_MAX} mounts"
            )));
        }
        let files = self.assigned(task).await.map_err(from_vault)?;
        let published = contents(&files);
        let count = files.len();
        let size = mount::size_for(&files);
        let at = dir.clone();
        let medium = blocking(move || {
            let medium = mount::prepare(&at, size)?;
            if let Err(e) = mount::publish(&at, &files) {
                let _ = mount::wipe(&at, medium);
                return Err(e);
            }
            Ok(medium)
        })
        .await
        .map_err(from_vault)?;
        entries.push(Entry {
            dir: dir.clone(),
            task: task.to_string(),
            medium,
            size,
            published: Some(published),
        });
        if let Err(e) = self.save(&entries) {
            if let Some(entry) = entries.pop() {
                let _ = blocking(move || mount::wipe(&entry.dir, entry.medium)).await;
            }
            return Err(e);
        }
        info!(task, dir = %dir.display(), files = count, medium = medium.as_str(), "mounted a task's secrets");
        Ok(Mounted {
            dir,
            files: count,
            medium,
        })
    }

    /// Wipes the mount on `dir`; the task that was mounted there.
    pub async fn unmount(&self, dir: &str) -> Result<String, Status> {
        let dir = normalize(dir)?;
        let mut entries = self.entries.lock().await;
        let Some(at) = entries.iter().position(|e| e.dir == dir) else {
            return Err(Status::not_found(format!(
                "no task's secrets are mounted on {}",
                dir.display()
            )));
        };
        let (path, medium) = (entries[at].dir.clone(), entries[at].medium);
        blocking(move || mount::wipe(&path, medium))
            .await
            .map_err(from_vault)?;
        let entry = entries.remove(at);
        self.save(&entries)?;
        info!(task = entry.task, dir = %dir.display(), "unmounted a task's secrets");
        Ok(entry.task)
    }

    /// Brings one mount up to date: its tmpfs back after a reboot, its
    /// files to what its task should hold now.
    async fn refresh(&self, entry: &mut Entry) -> Result<(), VaultError> {
        let files = match self.assigned(&entry.task).await {
            Ok(files) => files,
            // Detached, or given to another node: its files go.
            Err(VaultError::NotFound(_) | VaultError::Precondition(_)) => Vec::new(),
            Err(e) => return Err(e),
        };
        let wanted = contents(&files);
        if entry.published.as_ref() == Some(&wanted) {
            return Ok(());
        }
        let size = mount::size_for(&files);
        let (dir, medium, mounted_size) = (entry.dir.clone(), entry.medium, entry.size);
        let grown = blocking(move || {
            let mut now = mounted_size;
            if medium == Medium::OwnTmpfs {
                if !mount::is_mount_point(&dir)? {
                    // Gone since (a reboot): mounted again.
                    mount::prepare(&dir, size)?;
                    now = size;
                } else if size > mounted_size {
                    mount::resize(&dir, size)?;
                    now = size;
                }
            }
            mount::publish(&dir, &files)?;
            Ok(now)
        })
        .await?;
        if wanted.is_empty() {
            info!(task = entry.task, dir = %entry.dir.display(), "the task no longer runs here: its files were removed");
        }
        entry.size = grown;
        entry.published = Some(wanted);
        Ok(())
    }

    /// Brings every mount up to date.
    async fn refresh_all(&self) {
        let mut entries = self.entries.lock().await;
        for entry in entries.iter_mut() {
            if let Err(e) = self.refresh(entry).await {
                warn!(task = entry.task, dir = %entry.dir.display(), "updating a mount: {e}");
            }
        }
    }

    /// Keeps every mount current until `stopping` turns true.
    pub async fn follow(self, mut stopping: watch::Receiver<bool>) {
        loop {
            let mut changes = match self.store.watch(&[coffer_vault::SYSTEM_PREFIX], 0) {
                Ok(w) => Some(w),
                Err(e) => {
                    warn!("watching for changes to mounted tasks: {e}");
                    None
                }
            };
            self.refresh_all().await;
            loop {
                let changed = async {
                    match changes.as_mut() {
                        Some(w) => w.next().await.map(|_| ()),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = stopped(&mut stopping) => return,
                    seen = changed => {
                        if seen.is_err() {
                            // The watch ended (compaction, a closed store):
                            // a new one, after a full check.
                            break;
                        }
                        // Everything already waiting, in one pass.
                        if let Some(w) = changes.as_mut() {
                            while let Some(Ok(_)) = w.next().now_or_never() {}
                        }
                        self.refresh_all().await;
                    }
                    () = tokio::time::sleep(RECHECK) => self.refresh_all().await,
                }
            }
            tokio::select! {
                () = stopped(&mut stopping) => return,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }
}
