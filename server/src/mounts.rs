//! The node's mounts of task secrets (`coffer mount TASK DIR`): each a
//! directory on a tmpfs holding one task's files ([`coffer_vault::mount`]),
//! recorded in `<data-dir>/mounts.json` (directories, task names and
//! media; never a secret or a target) so that a restarted server takes
//! them up again.
//!
//! A manager takes its tasks' files from its own replica; a worker, which
//! holds none, asks the managers (`Tasks.FetchSecrets` over mTLS with its
//! certificate, which must name the task's node) ([`Source`]).
//!
//! [`Mounts::follow`] keeps every mount current: a manager watches the
//! vault's objects in its replica and checks on any change (and every
//! [`RECHECK`] besides); a worker keeps one long poll open per mount
//! (`FetchSecrets` with the digest of what it holds and [`WORKER_WAIT`]),
//! which a manager answers as soon as its replica applies a change to
//! the task's files, and with no data while they are unchanged. A
//! mount is published again when what its task should hold (targets,
//! secret versions, owners, modes) differs from what it holds. A task that
//! is detached or given to another node has its files removed; its
//! directory stays mounted until `coffer unmount`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use coffer_store::Store;
use coffer_vault::mount::{self, Medium};
use coffer_vault::tasks::{digest, Delivery, FileRef, TaskFile};
use coffer_vault::VaultError;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::{watch, Mutex, Notify};
use tokio::time::Instant;
use tonic::{Code, Status};
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use crate::pb;
use crate::pb::tasks_client::TasksClient;
use crate::raft::GrpcTransport;
use crate::status::from_vault;
use crate::tasks::{deliver_waiting, LONGEST_WAIT};

/// The file that records the node's mounts.
pub const MOUNTS_FILE: &str = "mounts.json";
/// How often every mount is checked even when no change was seen.
pub const RECHECK: Duration = Duration::from_secs(5);
/// How long a manager holds a worker's question about one of its mounts
/// while the task's files are unchanged.
pub const WORKER_WAIT: Duration = Duration::from_secs(20);
/// How long a worker waits for one manager's answer, past the wait it
/// asked for.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A worker asks again about a mount whose answer was `unchanged` no
/// sooner than this after it last asked (a bound on a manager that
/// answers at once), and
/// after a failure waits this, doubled with each further failure...
const WORKER_GAP: Duration = Duration::from_millis(100);
/// ... up to this.
const WORKER_RETRY_MAX: Duration = Duration::from_secs(2);
/// The most mounts one node keeps.
const MOUNTS_MAX: usize = 4096;

/// Where a node's mounts get their tasks' files.
#[derive(Debug, Clone)]
pub enum Source {
    /// A manager: its own replica.
    Store(Store),
    /// A worker: the managers, over mTLS with the node's certificate.
    Managers {
        /// The worker's data directory (its `identity/managers` names the
        /// managers, kept current by the agent).
        dir: PathBuf,
        /// Channels with the node's certificate, swapped on renewal.
        transport: GrpcTransport,
        node: u64,
    },
}

impl Source {
    /// The node whose tasks this source delivers.
    pub fn node(&self) -> u64 {
        match self {
            Source::Store(store) => store.node_id(),
            Source::Managers { node, .. } => *node,
        }
    }

    /// The files of `task` for this node, unless they match
    /// `held_digest`; while they do, the answer waits up to `wait` for a
    /// change (see [`deliver_waiting`]).
    pub async fn fetch(
        &self,
        task: &str,
        held_digest: &str,
        wait: Duration,
    ) -> Result<Delivery, Status> {
        let (dir, transport) = match self {
            Source::Store(store) => {
                let node = store.node_id();
                let stop = std::future::pending();
                return deliver_waiting(store, task, node, held_digest, wait, stop).await;
            }
            Source::Managers { dir, transport, .. } => (dir, transport),
        };
        let wait = wait.min(LONGEST_WAIT);
        let timeout = wait + FETCH_TIMEOUT;
        let managers = crate::identity::load_managers(dir)
            .map_err(|e| Status::internal(format!("reading the managers' addresses: {e:#}")))?;
        let mut last = None;
        for addr in &managers {
            let channel = transport.channel(addr).map_err(Status::unavailable)?;
            let mut client = TasksClient::new(channel)
                .max_decoding_message_size(crate::server::MAX_MESSAGE_BYTES);
            let mut request = tonic::Request::new(pb::FetchRequest {
                task: task.to_string(),
                held_digest: held_digest.to_string(),
                wait_seconds: u32::try_from(wait.as_secs()).unwrap_or(u32::MAX),
            });
            request.set_timeout(timeout);
            match tokio::time::timeout(timeout, client.fetch_secrets(request)).await {
                Ok(Ok(answer)) => return Ok(delivery(answer.into_inner())),
                // The cluster's answer, not one manager's trouble.
                Ok(Err(status))
                    if matches!(status.code(), Code::NotFound | Code::PermissionDenied) =>
                {
                    return Err(status)
                }
                Ok(Err(status)) => {
                    debug!(%addr, "fetching a task's secrets: {}", status.message());
                    last = Some(format!("{addr}: {}", status.message()));
                }
                Err(_) => last = Some(format!("{addr}: no answer within {timeout:?}")),
            }
        }
        Err(Status::unavailable(format!(
            "no manager answered ({})",
            last.unwrap_or_else(|| "none known".into())
        )))
    }
}

/// A delivery as the wire carries it.
pub fn to_pb(delivery: Delivery) -> pb::FetchResponse {
    match delivery {
        Delivery::Unchanged { digest } => pb::FetchResponse {
            unchanged: true,
            digest,
            files: Vec::new(),
        },
        Delivery::Files { digest, files } => pb::FetchResponse {
            unchanged: false,
            digest,
            files: files
                .into_iter()
                .map(|TaskFile { file, data }| pb::SecretFile {
                    target: file.target,
                    uid: file.uid,
                    gid: file.gid,
                    mode: file.mode,
                    secret_id: file.secret_id,
                    version: file.version,
                    data: data.to_vec(),
                })
                .collect(),
        },
    }
}

/// A delivery from the wire; the message's data buffers are wiped.
fn delivery(mut answer: pb::FetchResponse) -> Delivery {
    if answer.unchanged {
        return Delivery::Unchanged {
            digest: answer.digest,
        };
    }
    let files = answer
        .files
        .iter_mut()
        .map(|f| TaskFile {
            file: FileRef {
                target: std::mem::take(&mut f.target),
                uid: f.uid,
                gid: f.gid,
                mode: f.mode,
                secret_id: std::mem::take(&mut f.secret_id),
                version: f.version,
            },
            data: Zeroizing::new(std::mem::take(&mut f.data)),
        })
        .collect();
    Delivery::Files {
        digest: answer.digest,
        files,
    }
}

#[derive(Debug)]
struct Entry {
    dir: PathBuf,
    task: String,
    medium: Medium,
    /// The tmpfs's size, for one this server mounted.
    size: u64,
    /// The digest of what the directory holds now (`None`: not known
    /// since start).
    published: Option<String>,
    /// The last failure to update it, logged once.
    failing: Option<String>,
}

impl Entry {
    /// Notes how an update went, logging a failure once and the recovery.
    fn note(&mut self, result: Result<(), VaultError>) {
        match result {
            Ok(()) => {
                if self.failing.take().is_some() {
                    info!(task = self.task, dir = %self.dir.display(), "the mount is up to date again");
                }
            }
            Err(e) => {
                let now = e.to_string();
                if self.failing.as_ref() != Some(&now) {
                    warn!(task = self.task, dir = %self.dir.display(), "updating a mount: {now}");
                    self.failing = Some(now);
                }
            }
        }
    }
}

/// The node's mounts; clones share them.
#[derive(Debug, Clone)]
pub struct Mounts {
    file: PathBuf,
    source: Source,
    entries: Arc<Mutex<Vec<Entry>>>,
    /// Told when a mount is made or removed (a worker's follower then
    /// asks about the new ones).
    changed: Arc<Notify>,
}

/// A mount just made.
#[derive(Debug)]
pub struct Mounted {
    pub dir: PathBuf,
    pub files: usize,
    pub medium: Medium,
}

impl Mounted {
    pub fn to_pb(&self) -> pb::MountResponse {
        pb::MountResponse {
            dir: self.dir.to_string_lossy().into_owned(),
            files: u32::try_from(self.files).unwrap_or(u32::MAX),
            own_tmpfs: self.medium == Medium::OwnTmpfs,
        }
    }
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
    /// The mounts recorded in `data_dir`, delivered from `source`.
    pub fn open(data_dir: &Path, source: Source) -> Result<Mounts> {
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
                        failing: None,
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
        }
        Ok(Mounts {
            file,
            source,
            entries: Arc::new(Mutex::new(entries)),
            changed: Arc::new(Notify::new()),
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

    /// Where the mounts get their files.
    pub fn source(&self) -> &Source {
        &self.source
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
        let (published, files) = match self.source.fetch(task, "", Duration::ZERO).await? {
            Delivery::Files { digest, files } => (digest, files),
            Delivery::Unchanged { .. } => {
                return Err(Status::internal(
                    "the managers answered `unchanged` to a first fetch",
                ))
            }
        };
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
            failing: None,
        });
        if let Err(e) = self.save(&entries) {
            if let Some(entry) = entries.pop() {
                let _ = blocking(move || mount::wipe(&entry.dir, entry.medium)).await;
            }
            return Err(e);
        }
        self.changed.notify_one();
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
        self.changed.notify_one();
        self.save(&entries)?;
        info!(task = entry.task, dir = %dir.display(), "unmounted a task's secrets");
        Ok(entry.task)
    }

    /// Brings one mount up to date: its tmpfs back after a reboot, its
    /// files to what its task should hold now.
    async fn refresh(&self, entry: &mut Entry) -> Result<(), VaultError> {
        let held = entry.published.clone().unwrap_or_default();
        let fetched = self.source.fetch(&entry.task, &held, Duration::ZERO).await;
        Mounts::apply(entry, fetched).await
    }

    /// Brings one mount to what `fetched` says its task should hold.
    async fn apply(entry: &mut Entry, fetched: Result<Delivery, Status>) -> Result<(), VaultError> {
        let (wanted, files) = match fetched {
            Ok(Delivery::Unchanged { .. }) => return Ok(()),
            Ok(Delivery::Files { digest, files }) => (digest, files),
            // Detached, or given to another node: its files go.
            Err(status) if matches!(status.code(), Code::NotFound | Code::PermissionDenied) => {
                (digest(&[]), Vec::new())
            }
            Err(status) => return Err(VaultError::Io(status.message().to_string())),
        };
        if entry.published.as_ref() == Some(&wanted) {
            return Ok(());
        }
        let gone = files.is_empty();
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
        if gone {
            info!(task = entry.task, dir = %entry.dir.display(), "the task has no secrets for this node now: its files were removed");
        }
        entry.size = grown;
        entry.published = Some(wanted);
        Ok(())
    }

    /// Brings every mount up to date.
    async fn refresh_all(&self) {
        let mut entries = self.entries.lock().await;
        for entry in entries.iter_mut() {
            let result = self.refresh(entry).await;
            entry.note(result);
        }
    }

    /// Keeps every mount current until `stopping` turns true.
    pub async fn follow(self, stopping: watch::Receiver<bool>) {
        match &self.source {
            Source::Store(store) => {
                let store = store.clone();
                self.follow_store(&store, stopping).await
            }
            Source::Managers { .. } => self.follow_managers(stopping).await,
        }
    }

    /// A worker's: one long poll per mount at a time, each followed by
    /// the next as soon as it is answered (and applied).
    async fn follow_managers(self, mut stopping: watch::Receiver<bool>) {
        // The mounts asked about, and when each may be asked about again
        // (with the failures in a row that set it).
        let mut asking: HashMap<PathBuf, Instant> = HashMap::new();
        let mut not_before: HashMap<PathBuf, (Instant, u32)> = HashMap::new();
        let mut questions = FuturesUnordered::new();
        loop {
            {
                let entries = self.entries.lock().await;
                not_before.retain(|dir, _| entries.iter().any(|e| &e.dir == dir));
                for e in entries.iter() {
                    if asking.contains_key(&e.dir) {
                        continue;
                    }
                    let (dir, task) = (e.dir.clone(), e.task.clone());
                    let held = e.published.clone().unwrap_or_default();
                    let start = not_before.get(&dir).map(|(at, _)| *at);
                    asking.insert(dir.clone(), Instant::now());
                    let source = self.source.clone();
                    questions.push(async move {
                        if let Some(at) = start {
                            tokio::time::sleep_until(at).await;
                        }
                        let fetched = source.fetch(&task, &held, WORKER_WAIT).await;
                        (dir, task, held, fetched)
                    });
                }
            }
            let answered = async {
                match questions.next().await {
                    Some(answer) => answer,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = stopped(&mut stopping) => return,
                () = self.changed.notified() => {}
                (dir, task, held, fetched) = answered => {
                    let asked = asking.remove(&dir).unwrap_or_else(Instant::now);
                    let mut entries = self.entries.lock().await;
                    // Unless it was unmounted, or mounted again, meanwhile.
                    let Some(entry) = entries.iter_mut().find(|e| {
                        e.dir == dir && e.task == task && e.published.as_deref().unwrap_or("") == held
                    }) else {
                        continue;
                    };
                    // A change: asked again at once; `unchanged`: no sooner
                    // than the gap after the last question.
                    let changed = matches!(fetched, Ok(Delivery::Files { .. }));
                    let result = Mounts::apply(entry, fetched).await;
                    let failures = not_before.get(&dir).map_or(0, |(_, n)| *n);
                    let next = match result {
                        Ok(()) if changed => (Instant::now(), 0),
                        Ok(()) => (asked + WORKER_GAP, 0),
                        Err(_) => {
                            let backoff = WORKER_GAP.saturating_mul(1 << failures.min(5));
                            (Instant::now() + backoff.min(WORKER_RETRY_MAX), failures + 1)
                        }
                    };
                    not_before.insert(dir, next);
                    entry.note(result);
                }
            }
        }
    }

    /// A manager's: a watch on its replica, every mount checked on each
    /// change and every [`RECHECK`].
    async fn follow_store(self, store: &Store, mut stopping: watch::Receiver<bool>) {
        loop {
            let mut changes = match store.watch(&[coffer_vault::SYSTEM_PREFIX], 0) {
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
