//! Task assignments (SwarmKit's dispatcher assignments, reduced to what
//! secret delivery needs): a task runs on one node and references
//! secrets, each delivered as one file with a target name, an owner and
//! a mode. Stored as vault objects, sealed on disk like every record:
//! - `\0coffer/tasks/<task name>`: the task ([`Task`]);
//! - `\0coffer/secret-users/<secret id>`: the tasks that use a secret
//!   ([`Users`]), written in the same transaction as the task, and
//!   compared by the secret's removal and rotation, so that a secret in
//!   use is never removed and a pinned version never dropped.
//!
//! [`Task::files`] is the one way out for secret data: the files of one
//! task, for the node that runs it.

use std::collections::{BTreeMap, BTreeSet};

use coffer_store::{Check, CmpOp, Compare, Consistency, Op, Store, Txn};
use zeroize::Zeroizing;

use crate::nodes::NodeRecord;
use crate::record::{Reader, Writer};
use crate::secrets::{put, Secret};
use crate::VaultError;

const TASKS_PREFIX: &[u8] = b"\0coffer/tasks/";
const USERS_PREFIX: &[u8] = b"\0coffer/secret-users/";
const TASK_VERSION: u8 = 1;
const USERS_VERSION: u8 = 1;

/// The longest task name.
pub const TASK_NAME_CHARS_MAX: usize = 128;
/// The longest target file name (Linux's `NAME_MAX`).
pub const TARGET_BYTES_MAX: usize = 255;
/// Secrets one task may reference.
pub const TASK_SECRETS_MAX: usize = 256;
/// The mode a file gets unless the attachment says otherwise.
pub const DEFAULT_MODE: u32 = 0o444;

/// One secret a task references, delivered as the file `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSecret {
    pub secret_id: String,
    pub secret_name: String,
    /// A pinned version; `None` follows the current one through rotations.
    pub version: Option<u64>,
    pub target: String,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// A task: where it runs and the secrets it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub name: String,
    /// The node that runs it, the only one its secrets are delivered to.
    pub node: u64,
    pub created_unix: i64,
    pub updated_unix: i64,
    pub secrets: Vec<TaskSecret>,
}

/// A request to attach one secret to a task (`source=NAME[@V][,target=F]
/// [,uid=U][,gid=G][,mode=M]` on the command line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// A secret's name, id or id prefix.
    pub source: String,
    pub version: Option<u64>,
    /// The file name; the secret's name if `None`.
    pub target: Option<String>,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

impl Attachment {
    /// The current version of `source`, as file `source`, owned by root,
    /// mode 0444.
    pub fn new(source: &str) -> Attachment {
        Attachment {
            source: source.to_string(),
            version: None,
            target: None,
            uid: 0,
            gid: 0,
            mode: DEFAULT_MODE,
        }
    }
}

/// One file of a task's secrets as it should be now: which version of
/// which secret, under which name, owner and mode (no data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    pub target: String,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub secret_id: String,
    /// The version delivered.
    pub version: u64,
}

/// A digest of what a task's files should hold (SHA-256 over every
/// [`FileRef`], in order): equal digests, equal files.
pub fn digest(refs: &[FileRef]) -> String {
    let mut w = Writer::new(1);
    for r in refs {
        w.bytes(r.target.as_bytes())
            .u64(u64::from(r.uid))
            .u64(u64::from(r.gid))
            .u64(u64::from(r.mode))
            .bytes(r.secret_id.as_bytes())
            .u64(r.version);
    }
    let sum = ring::digest::digest(&ring::digest::SHA256, &w.finish());
    sum.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// One file of a task's secrets, with its data: for the node that runs
/// the task. `Debug` shows no data.
pub struct TaskFile {
    /// What the file is.
    pub file: FileRef,
    pub data: Zeroizing<Vec<u8>>,
}

/// What a node receives for one of its tasks.
#[derive(Debug)]
pub enum Delivery {
    /// The files still match the digest the node holds.
    Unchanged { digest: String },
    /// The files as they are now.
    Files {
        digest: String,
        files: Vec<TaskFile>,
    },
}

impl std::fmt::Debug for TaskFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskFile")
            .field("file", &self.file)
            .field("data", &format_args!("[{} bytes]", self.data.len()))
            .finish()
    }
}

/// Checks a task name: 1 to 128 of a-z, A-Z, 0-9 and `-_.`, starting and
/// ending with a letter or digit (the secret name rule, longer).
pub fn validate_task_name(name: &str) -> Result<(), VaultError> {
    crate::secrets::validate_object_name("task", name, TASK_NAME_CHARS_MAX)
}

/// Checks a target: a plain file name. No `/`, not `.` or `..`, not
/// starting with `..` (the publishing directory `..data` and its
/// siblings are the mount's own), no NUL, at most 255 bytes.
pub fn validate_target(target: &str) -> Result<(), VaultError> {
    let invalid = |why: &str| {
        VaultError::Invalid(format!(
            "invalid target {target:?}: {why}; a target is a plain file name"
        ))
    };
    if target.is_empty() {
        return Err(invalid("it is empty"));
    }
    if target.len() > TARGET_BYTES_MAX {
        return Err(invalid("it is over 255 bytes"));
    }
    if target.contains('/') {
        return Err(invalid("it contains '/'"));
    }
    if target.contains('\0') {
        return Err(invalid("it contains a NUL byte"));
    }
    if target == "." || target.starts_with("..") {
        return Err(invalid("it is '.', '..' or starts with '..'"));
    }
    Ok(())
}

fn validate_owner_and_mode(a: &Attachment) -> Result<(), VaultError> {
    if a.mode > 0o777 {
        return Err(VaultError::Invalid(format!(
            "mode {:o} for secret {:?}: at most 0777 (no setuid, setgid or sticky bit)",
            a.mode, a.source
        )));
    }
    if a.uid == u32::MAX || a.gid == u32::MAX {
        return Err(VaultError::Invalid(format!(
            "uid or gid 4294967295 for secret {:?} is not an owner",
            a.source
        )));
    }
    Ok(())
}

fn task_key(name: &str) -> Vec<u8> {
    [TASKS_PREFIX, name.as_bytes()].concat()
}

fn users_key(secret_id: &str) -> Vec<u8> {
    [USERS_PREFIX, secret_id.as_bytes()].concat()
}

/// A compare that `key` is still at `revision` (absent for `None`).
fn unchanged(key: Vec<u8>, revision: Option<u64>) -> Compare {
    Compare {
        key,
        check: match revision {
            Some(revision) => Check::ModRevision(CmpOp::Equal, revision),
            None => Check::Absent,
        },
    }
}

/// The tasks that use one secret: (task, pinned version or 0) pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Users(BTreeSet<(String, u64)>);

impl Users {
    /// The secret's users, and a compare that they are unchanged.
    pub(crate) async fn load(
        store: &Store,
        secret_id: &str,
    ) -> Result<(Users, Compare), VaultError> {
        let key = users_key(secret_id);
        match store.get_kv(&key, Consistency::Linearizable).await? {
            Some(kv) => Ok((
                Users::decode(&kv.value)?,
                unchanged(key, Some(kv.meta.mod_revision)),
            )),
            None => Ok((Users::default(), unchanged(key, None))),
        }
    }

    /// Every task that uses the secret, once each.
    pub(crate) fn tasks(&self) -> Vec<String> {
        let names: BTreeSet<&String> = self.0.iter().map(|(task, _)| task).collect();
        names.into_iter().cloned().collect()
    }

    /// The tasks that pin `version`.
    pub(crate) fn pinning(&self, version: u64) -> Vec<String> {
        self.0
            .iter()
            .filter(|(_, v)| *v == version)
            .map(|(task, _)| task.clone())
            .collect()
    }

    /// The op that stores these users for `secret_id` (a delete when
    /// none is left).
    fn store_op(&self, secret_id: &str) -> Op {
        if self.0.is_empty() {
            return Op::Delete {
                key: users_key(secret_id),
            };
        }
        let mut w = Writer::new(USERS_VERSION);
        w.u64(self.0.len() as u64);
        for (task, version) in &self.0 {
            w.bytes(task.as_bytes()).u64(*version);
        }
        put(users_key(secret_id), w.finish())
    }

    fn decode(record: &[u8]) -> Result<Users, VaultError> {
        let mut r = Reader::new("secret users", USERS_VERSION, record)?;
        let count = r.u64("count")?;
        let mut users = BTreeSet::new();
        for _ in 0..count {
            let task = r.string("task")?;
            users.insert((task, r.u64("version")?));
        }
        r.finish()?;
        Ok(Users(users))
    }
}

impl Task {
    /// Attaches secrets to task `name` on node `node`, creating the task
    /// if it is new. An unknown secret, version or node, a target outside
    /// the rules or already used by the task, or a task that runs on
    /// another node fails the whole call, and nothing is recorded.
    pub async fn attach(
        store: &Store,
        name: &str,
        node: u64,
        attachments: &[Attachment],
    ) -> Result<Task, VaultError> {
        validate_task_name(name)?;
        if attachments.is_empty() {
            return Err(VaultError::Invalid(format!(
                "attach at least one secret to task {name:?}"
            )));
        }
        for a in attachments {
            validate_owner_and_mode(a)?;
            if let Some(target) = &a.target {
                validate_target(target)?;
            }
        }
        match NodeRecord::load(store, node).await? {
            None => {
                return Err(VaultError::NotFound(format!(
                    "no node {node:016x} in this cluster"
                )))
            }
            Some(record) if record.is_removed() => {
                return Err(VaultError::NotFound(format!(
                    "node {node:016x} was removed from the cluster"
                )))
            }
            Some(_) => {}
        }
        loop {
            let now = crate::secrets::now_unix();
            let key = task_key(name);
            let (mut task, task_revision) = match Task::load(store, name).await? {
                Some((task, revision)) => (task, Some(revision)),
                None => (
                    Task {
                        name: name.to_string(),
                        node,
                        created_unix: now,
                        updated_unix: now,
                        secrets: Vec::new(),
                    },
                    None,
                ),
            };
            if task.node != node {
                return Err(VaultError::Precondition(format!(
                    "task {name:?} runs on node {:016x}: detach it before giving it to another node",
                    task.node
                )));
            }
            task.updated_unix = now;
            let mut compares = vec![unchanged(key.clone(), task_revision)];
            let mut users: BTreeMap<String, Users> = BTreeMap::new();
            for a in attachments {
                let (secret, revision) = Secret::find_with_revision(store, &a.source).await?;
                if let Some(v) = a.version {
                    if !secret.versions.iter().any(|kept| kept.version == v) {
                        return Err(VaultError::NotFound(format!(
                            "secret {:?} has no version {v} (kept: {})",
                            secret.name,
                            kept_list(&secret)
                        )));
                    }
                }
                let target = a.target.clone().unwrap_or_else(|| secret.name.clone());
                validate_target(&target)?;
                if task.secrets.iter().any(|s| s.target == target) {
                    return Err(VaultError::Invalid(format!(
                        "target {target:?} is used twice in task {name:?}: give each secret its own target"
                    )));
                }
                if task.secrets.len() >= TASK_SECRETS_MAX {
                    return Err(VaultError::Invalid(format!(
                        "a task references at most {TASK_SECRETS_MAX} secrets"
                    )));
                }
                compares.push(unchanged(
                    crate::secrets::meta_key(&secret.id),
                    Some(revision),
                ));
                if !users.contains_key(&secret.id) {
                    let (loaded, compare) = Users::load(store, &secret.id).await?;
                    compares.push(compare);
                    users.insert(secret.id.clone(), loaded);
                }
                if let Some(u) = users.get_mut(&secret.id) {
                    u.0.insert((name.to_string(), a.version.unwrap_or(0)));
                }
                task.secrets.push(TaskSecret {
                    secret_id: secret.id,
                    secret_name: secret.name,
                    version: a.version,
                    target,
                    uid: a.uid,
                    gid: a.gid,
                    mode: a.mode,
                });
            }
            let mut success = vec![put(key, task.encode())];
            success.extend(users.iter().map(|(id, u)| u.store_op(id)));
            let done = store
                .txn(Txn {
                    compares,
                    success,
                    failure: vec![],
                })
                .await?;
            if done.succeeded {
                return Ok(task);
            }
        }
    }

    /// Removes task `name` and its references; its secrets may then be
    /// removed.
    pub async fn detach(store: &Store, name: &str) -> Result<Task, VaultError> {
        loop {
            let Some((task, revision)) = Task::load(store, name).await? else {
                return Err(VaultError::NotFound(format!("no task {name:?}")));
            };
            let key = task_key(name);
            let mut compares = vec![unchanged(key.clone(), Some(revision))];
            let mut success = vec![Op::Delete { key }];
            let ids: BTreeSet<&String> = task.secrets.iter().map(|s| &s.secret_id).collect();
            for id in ids {
                let (mut users, compare) = Users::load(store, id).await?;
                users.0.retain(|(user, _)| user != name);
                compares.push(compare);
                success.push(users.store_op(id));
            }
            let done = store
                .txn(Txn {
                    compares,
                    success,
                    failure: vec![],
                })
                .await?;
            if done.succeeded {
                return Ok(task);
            }
        }
    }

    /// Task `name`, and the revision of its last change.
    async fn load(store: &Store, name: &str) -> Result<Option<(Task, u64)>, VaultError> {
        if name.is_empty() || name.len() > TASK_NAME_CHARS_MAX {
            return Ok(None);
        }
        match store
            .get_kv(&task_key(name), Consistency::Linearizable)
            .await?
        {
            Some(kv) => Ok(Some((Task::decode(&kv.value)?, kv.meta.mod_revision))),
            None => Ok(None),
        }
    }

    /// Task `name`; `NotFound` if there is none.
    pub async fn find(store: &Store, name: &str) -> Result<Task, VaultError> {
        match Task::load(store, name).await? {
            Some((task, _)) => Ok(task),
            None => Err(VaultError::NotFound(format!("no task {name:?}"))),
        }
    }

    /// Every task, by name.
    pub async fn list(store: &Store) -> Result<Vec<Task>, VaultError> {
        store
            .list(TASKS_PREFIX, Consistency::Linearizable)
            .await?
            .iter()
            .map(|kv| Task::decode(&kv.value))
            .collect()
    }

    /// For node `node`, the files of task `name`, unless they still match
    /// `held_digest`. `Denied` unless the task runs on `node`: only the
    /// node that runs a task receives its secrets.
    pub async fn deliver(
        store: &Store,
        name: &str,
        node: u64,
        held_digest: &str,
    ) -> Result<Delivery, VaultError> {
        let task = Task::find(store, name).await?;
        if task.node != node {
            return Err(VaultError::Denied(format!(
                "task {name:?} does not run on node {node:016x}: only the node that runs a task receives its secrets"
            )));
        }
        let refs = task.resolve(store).await?;
        let digest = digest(&refs);
        if digest == held_digest {
            return Ok(Delivery::Unchanged { digest });
        }
        let files = Task::files_of(store, refs).await?;
        Ok(Delivery::Files { digest, files })
    }

    /// What this task's files should hold now: each secret's pinned or
    /// current version (no data).
    pub async fn resolve(&self, store: &Store) -> Result<Vec<FileRef>, VaultError> {
        let mut refs = Vec::with_capacity(self.secrets.len());
        for s in &self.secrets {
            let secret = Secret::find(store, &s.secret_id).await?;
            refs.push(FileRef {
                target: s.target.clone(),
                uid: s.uid,
                gid: s.gid,
                mode: s.mode,
                secret_id: s.secret_id.clone(),
                version: s.version.unwrap_or_else(|| secret.version()),
            });
        }
        Ok(refs)
    }

    /// The files of this task's secrets, with their data: for the node
    /// that runs it, and for nothing else.
    pub async fn files(&self, store: &Store) -> Result<Vec<TaskFile>, VaultError> {
        Task::files_of(store, self.resolve(store).await?).await
    }

    /// The data of the files `refs` name.
    pub async fn files_of(store: &Store, refs: Vec<FileRef>) -> Result<Vec<TaskFile>, VaultError> {
        let mut files = Vec::with_capacity(refs.len());
        for r in refs {
            let data = Secret::data_of(store, &r.secret_id, r.version).await?;
            files.push(TaskFile { file: r, data });
        }
        Ok(files)
    }

    /// The prefix a watch for task changes takes.
    pub fn prefix() -> &'static [u8] {
        TASKS_PREFIX
    }

    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(TASK_VERSION);
        w.bytes(self.name.as_bytes())
            .u64(self.node)
            .i64(self.created_unix)
            .i64(self.updated_unix)
            .u64(self.secrets.len() as u64);
        for s in &self.secrets {
            w.bytes(s.secret_id.as_bytes())
                .bytes(s.secret_name.as_bytes())
                .u64(s.version.unwrap_or(0))
                .bytes(s.target.as_bytes())
                .u64(u64::from(s.uid))
                .u64(u64::from(s.gid))
                .u64(u64::from(s.mode));
        }
        w.finish()
    }

    /// Decodes a task record.
    pub fn decode(record: &[u8]) -> Result<Task, VaultError> {
        const WHAT: &str = "task";
        let corrupt = |detail: &str| VaultError::Corrupt {
            what: WHAT,
            detail: detail.to_string(),
        };
        let mut r = Reader::new(WHAT, TASK_VERSION, record)?;
        let name = r.string("name")?;
        let node = r.u64("node")?;
        let created_unix = r.i64("created")?;
        let updated_unix = r.i64("updated")?;
        let count = r.u64("secret count")?;
        if count > TASK_SECRETS_MAX as u64 {
            return Err(corrupt("too many secrets"));
        }
        let mut secrets = Vec::new();
        let small = |n: u64, field: &str| {
            u32::try_from(n).map_err(|_| corrupt(&format!("{field} is out of range")))
        };
        for _ in 0..count {
            let secret_id = r.string("secret id")?;
            let secret_name = r.string("secret name")?;
            let version = Some(r.u64("version")?).filter(|v| *v != 0);
            let target = r.string("target")?;
            let uid = small(r.u64("uid")?, "uid")?;
            let gid = small(r.u64("gid")?, "gid")?;
            let mode = small(r.u64("mode")?, "mode")?;
            validate_target(&target).map_err(|_| corrupt("a target outside the rules"))?;
            secrets.push(TaskSecret {
                secret_id,
                secret_name,
                version,
                target,
                uid,
                gid,
                mode,
            });
        }
        r.finish()?;
        Ok(Task {
            name,
            node,
            created_unix,
            updated_unix,
            secrets,
        })
    }
}

fn kept_list(secret: &Secret) -> String {
    secret
        .versions
        .iter()
        .map(|v| v.version.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::Role;
    use coffer_store::Config;

    #[test]
    fn targets_are_plain_file_names() {
        for good in ["my_password", "a.txt", ".hidden", "x..y", &"t".repeat(255)] {
            validate_target(good).unwrap_or_else(|e| panic!("{good:?}: {e}"));
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "..data",
            "..x",
            "/etc/passwd",
            "a/b",
            "a\0b",
            &"t".repeat(256),
        ] {
            assert!(validate_target(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn damaged_tasks_are_an_error() {
        let task = Task {
            name: "web.1".into(),
            node: 0xabc,
            created_unix: 1,
            updated_unix: 2,
            secrets: vec![TaskSecret {
                secret_id: "s".repeat(25),
                secret_name: "db".into(),
                version: Some(3),
                target: "db_password".into(),
                uid: 1000,
                gid: 1000,
                mode: 0o400,
            }],
        };
        let record = task.encode();
        assert_eq!(Task::decode(&record).unwrap(), task);
        for cut in 0..record.len() {
            assert!(Task::decode(&record[..cut]).is_err(), "cut at {cut}");
        }
        crate::record::assert_decoder_survives_damage(&record, Task::decode);
        let users = Users(BTreeSet::from([
            ("web.1".to_string(), 0),
            ("api.2".to_string(), 3),
        ]));
        let Op::Put { value, .. } = users.store_op("s") else {
            panic!("users are written with a put");
        };
        crate::record::assert_decoder_survives_damage(&value, Users::decode);
    }

    async fn store_with_node(dir: &std::path::Path) -> Store {
        let store = Store::open(Config::new(dir)).await.unwrap();
        NodeRecord::active(store.node_id(), Role::Manager, "127.0.0.1:1")
            .unwrap()
            .save(&store)
            .await
            .unwrap();
        store
    }

    #[tokio::test]
    async fn attach_records_all_or_nothing_and_guards_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_node(dir.path()).await;
        let node = store.node_id();
        Secret::create(&store, "db", BTreeMap::new(), b"hunter2")
            .await
            .unwrap();
        Secret::create(&store, "api", BTreeMap::new(), b"k1")
            .await
            .unwrap();

        // Every bad attachment fails and records nothing.
        let mut pinned = Attachment::new("db");
        pinned.version = Some(2);
        let mut bad_target = Attachment::new("db");
        bad_target.target = Some("..data".into());
        let mut bad_mode = Attachment::new("db");
        bad_mode.mode = 0o4755;
        let cases: Vec<(&str, u64, Vec<Attachment>)> = vec![
            (
                "web",
                node,
                vec![Attachment::new("api"), Attachment::new("nope")],
            ),
            ("web", node, vec![pinned]),
            ("web", node, vec![bad_target]),
            ("web", node, vec![bad_mode]),
            ("web", node + 1, vec![Attachment::new("db")]),
            (
                "web",
                node,
                vec![Attachment::new("db"), Attachment::new("db")],
            ),
            ("web/1", node, vec![Attachment::new("db")]),
            ("web", node, vec![]),
        ];
        for (task, node, attachments) in cases {
            let e = Task::attach(&store, task, node, &attachments).await;
            assert!(e.is_err(), "{task} {attachments:?}");
            assert!(Task::list(&store).await.unwrap().is_empty());
        }
        assert!(matches!(
            Task::find(&store, "web").await,
            Err(VaultError::NotFound(_))
        ));

        let mut own = Attachment::new("db");
        own.target = Some("db_password".into());
        own.uid = 1000;
        own.mode = 0o400;
        let task = Task::attach(&store, "web", node, &[own, Attachment::new("api")])
            .await
            .unwrap();
        assert_eq!(task.secrets.len(), 2);
        // A second attach adds to the task, with its own targets.
        assert!(Task::attach(&store, "web", node, &[Attachment::new("api")])
            .await
            .is_err());
        let mut again = Attachment::new("api");
        again.target = Some("api2".into());
        again.version = Some(1);
        Task::attach(&store, "web", node, &[again]).await.unwrap();

        // In use: no removal; the pinned version is never dropped.
        let refused = Secret::remove(&store, "db").await;
        assert!(
            matches!(&refused, Err(VaultError::Precondition(m)) if m.contains("web")),
            "{refused:?}"
        );
        for i in 2..=10 {
            Secret::rotate(&store, "api", format!("k{i}").as_bytes())
                .await
                .unwrap();
        }
        let refused = Secret::rotate(&store, "api", b"k11").await;
        assert!(
            matches!(&refused, Err(VaultError::Precondition(m)) if m.contains("version 1")),
            "{refused:?}"
        );
        let files = Task::find(&store, "web")
            .await
            .unwrap()
            .files(&store)
            .await
            .unwrap();
        let got: Vec<(&str, &[u8], u64)> = files
            .iter()
            .map(|f| (f.file.target.as_str(), f.data.as_slice(), f.file.version))
            .collect();
        assert_eq!(
            got,
            vec![
                ("db_password", &b"hunter2"[..], 1),
                ("api", b"k10", 10),
                ("api2", b"k1", 1)
            ]
        );
        assert!(!format!("{files:?}").contains("hunter2"));
        // Delivered to the task's node alone, and not again while unchanged.
        let Delivery::Files { digest, files } =
            Task::deliver(&store, "web", node, "").await.unwrap()
        else {
            panic!("no files");
        };
        assert_eq!(files.len(), 3);
        assert!(matches!(
            Task::deliver(&store, "web", node, &digest).await.unwrap(),
            Delivery::Unchanged { .. }
        ));
        assert!(matches!(
            Task::deliver(&store, "web", node + 1, "").await,
            Err(VaultError::Denied(_))
        ));

        // Detached: the secrets are free again.
        Task::detach(&store, "web").await.unwrap();
        assert!(Task::detach(&store, "web").await.is_err());
        Secret::rotate(&store, "api", b"k11").await.unwrap();
        Secret::remove(&store, "db").await.unwrap();
        assert!(store.get(&users_key("x")).await.unwrap().is_none());
        assert!(store
            .list(USERS_PREFIX, Consistency::Linearizable)
            .await
            .unwrap()
            .is_empty());
        store.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_secret_is_never_removed_under_a_racing_attach() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_node(dir.path()).await;
        let node = store.node_id();
        for round in 0..20 {
            let name = format!("s{round}");
            Secret::create(&store, &name, BTreeMap::new(), b"x")
                .await
                .unwrap();
            let attach = {
                let (store, name) = (store.clone(), name.clone());
                tokio::spawn(async move {
                    Task::attach(
                        &store,
                        &format!("t{round}"),
                        node,
                        &[Attachment::new(&name)],
                    )
                    .await
                })
            };
            let remove = {
                let (store, name) = (store.clone(), name.clone());
                tokio::spawn(async move { Secret::remove(&store, &name).await })
            };
            let (attached, removed) = (attach.await.unwrap(), remove.await.unwrap());
            // Exactly one wins: never a task left pointing at nothing.
            assert!(
                attached.is_ok() != removed.is_ok(),
                "round {round}: {attached:?} / {removed:?}"
            );
            if let Ok(task) = attached {
                task.files(&store).await.unwrap();
            }
        }
        store.shutdown().await.unwrap();
    }
}
