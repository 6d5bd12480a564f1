//! Secrets (SwarmKit's `api/validation/secrets.go` and
//! `controlapi/secret.go`, with versions, which SwarmKit lacks): a name
//! unique ignoring case, labels, and up to [`VERSIONS_KEPT`] versions of
//! the data. Stored as three kinds of vault objects, each sealed on disk
//! like every record:
//! - `\0coffer/secrets/<id>`: the metadata (no data);
//! - `\0coffer/secret-names/<name in lower case>`: the id, so that one
//!   transaction can claim a name;
//! - `\0coffer/secret-data/<id>/<version>`: one version's data;
//! - `\0coffer/secret-users/<id>`: the tasks that use it ([`crate::tasks`]
//!   keeps it), which removal and rotation check in the same transaction.
//!
//! Nothing here hands data out but `Secret::data_of` (crate-private), which
//! only task delivery ([`crate::tasks::Task::files`]) calls. `Debug` of every type here shows no data.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use coffer_store::{Check, CmpOp, Compare, Consistency, Op, Store, Txn, Value};
use zeroize::Zeroizing;

use crate::record::{Reader, Writer};
use crate::tasks::Users;
use crate::VaultError;

const META_PREFIX: &[u8] = b"\0coffer/secrets/";
const NAME_PREFIX: &[u8] = b"\0coffer/secret-names/";
const DATA_PREFIX: &[u8] = b"\0coffer/secret-data/";
const META_VERSION: u8 = 1;

/// The longest name (SwarmKit's limit).
pub const NAME_CHARS_MAX: usize = 64;
/// The largest secret (SwarmKit's limit: 500 KiB).
pub const DATA_BYTES_MAX: usize = 500 * 1024;
/// Versions kept: a rotation past this drops the oldest.
pub const VERSIONS_KEPT: usize = 10;
/// Labels per secret, and their sizes.
pub const LABELS_MAX: usize = 64;
pub const LABEL_KEY_BYTES_MAX: usize = 128;
pub const LABEL_VALUE_BYTES_MAX: usize = 4096;

/// One version of a secret's data, as metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    pub version: u64,
    pub created_unix: i64,
    pub size: u64,
}

/// A secret's metadata: everything but its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    /// 25 characters of base 36, as SwarmKit's ids.
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub created_unix: i64,
    pub updated_unix: i64,
    /// The versions kept, oldest first; the last is the current one.
    pub versions: Vec<VersionInfo>,
}

/// Checks a name against SwarmKit's rule:
/// `^[a-zA-Z0-9]+(?:[a-zA-Z0-9-_.]*[a-zA-Z0-9])?$`, 1 to 64 characters.
pub fn validate_name(name: &str) -> Result<(), VaultError> {
    validate_object_name("secret", name, NAME_CHARS_MAX)
}

/// SwarmKit's name rule for a `kind` of object, with at most `max`
/// characters.
pub(crate) fn validate_object_name(kind: &str, name: &str, max: usize) -> Result<(), VaultError> {
    let invalid = |why: &str| {
        VaultError::Invalid(format!(
            "invalid {kind} name {name:?}: {why} (1 to {max} of a-z, A-Z, 0-9, and - _ . inside)"
        ))
    };
    let bytes = name.as_bytes();
    match (bytes.first(), bytes.last()) {
        (None, _) | (_, None) => return Err(invalid("it is empty")),
        _ if bytes.len() > max => return Err(invalid("it is too long")),
        (Some(first), Some(last))
            if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() =>
        {
            return Err(invalid("it must start and end with a letter or digit"))
        }
        _ => {}
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(invalid("it has a character outside the allowed ones"));
    }
    Ok(())
}

/// Checks a secret's data: 1 byte to 500 KiB.
pub fn validate_data(data: &[u8]) -> Result<(), VaultError> {
    if data.is_empty() {
        return Err(VaultError::Invalid(
            "a secret's data must not be empty".into(),
        ));
    }
    if data.len() > DATA_BYTES_MAX {
        return Err(VaultError::Invalid(format!(
            "a secret's data is at most {DATA_BYTES_MAX} bytes (500 KiB); this one is {}",
            data.len()
        )));
    }
    Ok(())
}

/// Checks labels: non-empty keys, bounded sizes and count.
pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), VaultError> {
    if labels.len() > LABELS_MAX {
        return Err(VaultError::Invalid(format!(
            "at most {LABELS_MAX} labels; {} given",
            labels.len()
        )));
    }
    for (k, v) in labels {
        if k.is_empty() || k.len() > LABEL_KEY_BYTES_MAX || k.contains('=') {
            return Err(VaultError::Invalid(format!(
                "label key {k:?}: 1 to {LABEL_KEY_BYTES_MAX} bytes, without '='"
            )));
        }
        if v.len() > LABEL_VALUE_BYTES_MAX {
            return Err(VaultError::Invalid(format!(
                "the value of label {k:?} is over {LABEL_VALUE_BYTES_MAX} bytes"
            )));
        }
    }
    Ok(())
}

pub(crate) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A new id: 128 random bits in base 36, 25 characters (SwarmKit's form).
fn new_id() -> String {
    let mut n: u128 = rand::random();
    let mut id = vec![b'0'; 25];
    for slot in id.iter_mut().rev() {
        let digit = (n % 36) as u8;
        *slot = if digit < 10 {
            b'0' + digit
        } else {
            b'a' + digit - 10
        };
        n /= 36;
    }
    String::from_utf8(id).unwrap_or_default()
}

pub(crate) fn meta_key(id: &str) -> Vec<u8> {
    [META_PREFIX, id.as_bytes()].concat()
}

fn name_key(name: &str) -> Vec<u8> {
    [NAME_PREFIX, name.to_ascii_lowercase().as_bytes()].concat()
}

fn data_key(id: &str, version: u64) -> Vec<u8> {
    [DATA_PREFIX, format!("{id}/{version:016x}").as_bytes()].concat()
}

pub(crate) fn put(key: Vec<u8>, value: Vec<u8>) -> Op {
    Op::Put {
        key,
        value: Value(value),
        lease: 0,
    }
}

impl Secret {
    /// Creates a secret; its id. `AlreadyExists` if the name is taken,
    /// ignoring case.
    pub async fn create(
        store: &Store,
        name: &str,
        labels: BTreeMap<String, String>,
        data: &[u8],
    ) -> Result<Secret, VaultError> {
        validate_name(name)?;
        validate_labels(&labels)?;
        validate_data(data)?;
        let now = now_unix();
        let secret = Secret {
            id: new_id(),
            name: name.to_string(),
            labels,
            created_unix: now,
            updated_unix: now,
            versions: vec![VersionInfo {
                version: 1,
                created_unix: now,
                size: data.len() as u64,
            }],
        };
        let created = store
            .txn(Txn {
                compares: vec![Compare {
                    key: name_key(name),
                    check: Check::Absent,
                }],
                success: vec![
                    put(name_key(name), secret.id.clone().into_bytes()),
                    put(meta_key(&secret.id), secret.encode()),
                    put(data_key(&secret.id, 1), data.to_vec()),
                ],
                failure: vec![],
            })
            .await?;
        if !created.succeeded {
            return Err(VaultError::AlreadyExists(format!(
                "a secret named {name:?} exists already (names are unique ignoring case)"
            )));
        }
        Ok(secret)
    }

    /// Every secret, by id.
    pub async fn list(store: &Store) -> Result<Vec<Secret>, VaultError> {
        store
            .list(META_PREFIX, Consistency::Linearizable)
            .await?
            .iter()
            .map(|kv| Secret::decode(&kv.value))
            .collect()
    }

    /// The secret `name_or_id` names: an id, a name (ignoring case), or a
    /// prefix of one id. `NotFound` otherwise.
    pub async fn find(store: &Store, name_or_id: &str) -> Result<Secret, VaultError> {
        if name_or_id.is_empty() || name_or_id.len() > 256 {
            return Err(VaultError::NotFound(format!("no secret {name_or_id:?}")));
        }
        Ok(Secret::find_with_revision(store, name_or_id).await?.0)
    }

    /// [`Secret::find`], with the revision of the metadata's last change.
    pub(crate) async fn find_with_revision(
        store: &Store,
        name_or_id: &str,
    ) -> Result<(Secret, u64), VaultError> {
        let by_id = |id: &str| meta_key(id);
        if let Some(kv) = store
            .get_kv(&by_id(name_or_id), Consistency::Linearizable)
            .await?
        {
            return Ok((Secret::decode(&kv.value)?, kv.meta.mod_revision));
        }
        if let Some(id) = store.get(&name_key(name_or_id)).await? {
            let id = String::from_utf8_lossy(&id).to_string();
            if let Some(kv) = store.get_kv(&by_id(&id), Consistency::Linearizable).await? {
                return Ok((Secret::decode(&kv.value)?, kv.meta.mod_revision));
            }
        }
        let prefix = by_id(name_or_id);
        let found = store.list(&prefix, Consistency::Linearizable).await?;
        match found.as_slice() {
            [kv] => Ok((Secret::decode(&kv.value)?, kv.meta.mod_revision)),
            [] => Err(VaultError::NotFound(format!("no secret {name_or_id:?}"))),
            _ => Err(VaultError::Invalid(format!(
                "{name_or_id:?} is the start of more than one secret's id: give more of it"
            ))),
        }
    }

    /// The current version.
    pub fn version(&self) -> u64 {
        self.versions.last().map_or(0, |v| v.version)
    }

    /// Adds version N+1 with `data`; versions past [`VERSIONS_KEPT`] are
    /// dropped, oldest first. A version a task pins is never dropped: the
    /// rotation is refused instead, naming the tasks.
    pub async fn rotate(
        store: &Store,
        name_or_id: &str,
        data: &[u8],
    ) -> Result<Secret, VaultError> {
        validate_data(data)?;
        Secret::change(store, name_or_id, |mut secret, users| {
            let version = secret.version() + 1;
            let now = now_unix();
            secret.versions.push(VersionInfo {
                version,
                created_unix: now,
                size: data.len() as u64,
            });
            secret.updated_unix = now;
            let extra = secret.versions.len().saturating_sub(VERSIONS_KEPT);
            let dropped: Vec<u64> = secret.versions.drain(..extra).map(|v| v.version).collect();
            for v in &dropped {
                let pinning = users.pinning(*v);
                if !pinning.is_empty() {
                    return Err(VaultError::Precondition(format!(
                        "rotating secret {:?} would drop version {v}, which task(s) {} pin: attach them to a newer version or detach them first",
                        secret.name,
                        pinning.join(", ")
                    )));
                }
            }
            let mut ops = vec![
                put(data_key(&secret.id, version), data.to_vec()),
                put(meta_key(&secret.id), secret.encode()),
            ];
            ops.extend(dropped.into_iter().map(|v| Op::Delete {
                key: data_key(&secret.id, v),
            }));
            Ok((secret, ops))
        })
        .await
    }

    /// Removes the secret, all its versions and its name; refused while a
    /// task uses it.
    pub async fn remove(store: &Store, name_or_id: &str) -> Result<Secret, VaultError> {
        Secret::change(store, name_or_id, |secret, users| {
            let tasks = users.tasks();
            if !tasks.is_empty() {
                return Err(VaultError::Precondition(format!(
                    "secret {:?} is in use by task(s) {}: detach them first",
                    secret.name,
                    tasks.join(", ")
                )));
            }
            let mut ops = vec![
                Op::Delete {
                    key: meta_key(&secret.id),
                },
                Op::Delete {
                    key: name_key(&secret.name),
                },
            ];
            ops.extend(secret.versions.iter().map(|v| Op::Delete {
                key: data_key(&secret.id, v.version),
            }));
            Ok((secret, ops))
        })
        .await
    }

    /// Reads the secret and the tasks that use it, and applies the ops
    /// `edit` makes of them unless either changed meanwhile (compares on
    /// their revisions), in which case it reads them again and retries.
    /// Returns what `edit` made.
    async fn change(
        store: &Store,
        name_or_id: &str,
        mut edit: impl FnMut(Secret, &Users) -> Result<(Secret, Vec<Op>), VaultError>,
    ) -> Result<Secret, VaultError> {
        loop {
            let (secret, revision) = Secret::find_with_revision(store, name_or_id).await?;
            let (users, users_unchanged) = Users::load(store, &secret.id).await?;
            let meta = meta_key(&secret.id);
            let (secret, success) = edit(secret, &users)?;
            let done = store
                .txn(Txn {
                    compares: vec![
                        Compare {
                            key: meta,
                            check: Check::ModRevision(CmpOp::Equal, revision),
                        },
                        users_unchanged,
                    ],
                    success,
                    failure: vec![],
                })
                .await?;
            if done.succeeded {
                return Ok(secret);
            }
        }
    }

    /// The data of version `version` of secret `id`, read directly (for
    /// task delivery, which has just resolved the version).
    pub(crate) async fn data_of(
        store: &Store,
        id: &str,
        version: u64,
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        match store.get(&data_key(id, version)).await? {
            Some(value) => Ok(Zeroizing::new(value.as_slice().to_vec())),
            None => Err(VaultError::NotFound(format!(
                "secret {id} has no version {version} any more"
            ))),
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(META_VERSION);
        w.bytes(self.id.as_bytes())
            .bytes(self.name.as_bytes())
            .i64(self.created_unix)
            .i64(self.updated_unix)
            .u64(self.labels.len() as u64);
        for (k, v) in &self.labels {
            w.bytes(k.as_bytes()).bytes(v.as_bytes());
        }
        w.u64(self.versions.len() as u64);
        for v in &self.versions {
            w.u64(v.version).i64(v.created_unix).u64(v.size);
        }
        w.finish()
    }

    /// Decodes a secret's metadata record.
    pub fn decode(record: &[u8]) -> Result<Secret, VaultError> {
        const WHAT: &str = "secret";
        let corrupt = |detail: &str| VaultError::Corrupt {
            what: WHAT,
            detail: detail.to_string(),
        };
        let mut r = Reader::new(WHAT, META_VERSION, record)?;
        let id = r.string("id")?;
        let name = r.string("name")?;
        let created_unix = r.i64("created")?;
        let updated_unix = r.i64("updated")?;
        let label_count = r.u64("label count")?;
        if label_count > LABELS_MAX as u64 {
            return Err(corrupt("too many labels"));
        }
        let mut labels = BTreeMap::new();
        for _ in 0..label_count {
            let k = r.string("label key")?;
            let v = r.string("label value")?;
            labels.insert(k, v);
        }
        let version_count = r.u64("version count")?;
        if version_count == 0 || version_count > VERSIONS_KEPT as u64 {
            return Err(corrupt("a version count out of range"));
        }
        let mut versions = Vec::new();
        for _ in 0..version_count {
            versions.push(VersionInfo {
                version: r.u64("version")?,
                created_unix: r.i64("version created")?,
                size: r.u64("version size")?,
            });
        }
        r.finish()?;
        Ok(Secret {
            id,
            name,
            labels,
            created_unix,
            updated_unix,
            versions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_store::Config;

    #[test]
    fn names_follow_swarmkits_rule() {
        for good in ["a", "my_password", "A.b-c_d9", "x1", &"n".repeat(64)] {
            validate_name(good).unwrap_or_else(|e| panic!("{good:?}: {e}"));
        }
        for bad in [
            "",
            "-a",
            "a-",
            ".a",
            "a.",
            "_a",
            "a b",
            "a/b",
            "é",
            "a\0b",
            &"n".repeat(65),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn data_is_one_byte_to_500_kib() {
        assert!(validate_data(b"").is_err());
        validate_data(b"x").unwrap();
        validate_data(&vec![0; DATA_BYTES_MAX]).unwrap();
        assert!(validate_data(&vec![0; 600 * 1000]).is_err());
    }

    #[test]
    fn ids_look_like_swarmkits() {
        let a = new_id();
        assert_eq!(a.len(), 25);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()));
        assert_ne!(a, new_id());
    }

    #[test]
    fn damaged_metadata_is_an_error() {
        let secret = Secret {
            id: new_id(),
            name: "db".into(),
            labels: BTreeMap::from([("env".into(), "prod".into())]),
            created_unix: 1,
            updated_unix: 2,
            versions: vec![VersionInfo {
                version: 1,
                created_unix: 1,
                size: 5,
            }],
        };
        let record = secret.encode();
        assert_eq!(Secret::decode(&record).unwrap(), secret);
        for cut in 0..record.len() {
            assert!(Secret::decode(&record[..cut]).is_err(), "cut at {cut}");
        }
        crate::record::assert_decoder_survives_damage(&record, Secret::decode);
    }

    #[tokio::test]
    async fn secrets_are_created_found_rotated_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(Config::new(dir.path())).await.unwrap();
        let labels = BTreeMap::from([("env".to_string(), "prod".to_string())]);
        let s = Secret::create(&store, "my_password", labels, b"password123yoyo")
            .await
            .unwrap();
        assert_eq!(s.version(), 1);
        assert!(!format!("{s:?}").contains("yoyo"));
        // Names are unique ignoring case.
        let taken = Secret::create(&store, "MY_PASSWORD", BTreeMap::new(), b"x").await;
        assert!(
            matches!(taken, Err(VaultError::AlreadyExists(_))),
            "{taken:?}"
        );
        // Found by id, by name in any case, by a prefix of the id.
        for key in [s.id.as_str(), "my_password", "My_Password", &s.id[..6]] {
            assert_eq!(Secret::find(&store, key).await.unwrap().id, s.id, "{key}");
        }
        assert!(matches!(
            Secret::find(&store, "nope").await,
            Err(VaultError::NotFound(_))
        ));
        assert_eq!(
            &*Secret::data_of(&store, &s.id, s.version()).await.unwrap(),
            b"password123yoyo"
        );

        // Twelve rotations keep the last ten versions.
        for i in 2..=13u64 {
            let r = Secret::rotate(&store, "my_password", format!("v{i}").as_bytes())
                .await
                .unwrap();
            assert_eq!(r.version(), i);
        }
        let s = Secret::find(&store, "my_password").await.unwrap();
        let kept: Vec<u64> = s.versions.iter().map(|v| v.version).collect();
        assert_eq!(kept, (4..=13).collect::<Vec<_>>());
        assert_eq!(
            &*Secret::data_of(&store, &s.id, s.version()).await.unwrap(),
            b"v13"
        );
        assert_eq!(&*Secret::data_of(&store, &s.id, 4).await.unwrap(), b"v4");
        assert!(matches!(
            Secret::data_of(&store, &s.id, 3).await,
            Err(VaultError::NotFound(_))
        ));
        assert!(store.get(&data_key(&s.id, 3)).await.unwrap().is_none());
        assert_eq!(Secret::list(&store).await.unwrap().len(), 1);

        // Removed: gone with its versions and its name, which is free again.
        Secret::remove(&store, "MY_PASSWORD").await.unwrap();
        assert!(Secret::list(&store).await.unwrap().is_empty());
        for v in 4..=13 {
            assert!(store.get(&data_key(&s.id, v)).await.unwrap().is_none());
        }
        Secret::create(&store, "my_password", BTreeMap::new(), b"again")
            .await
            .unwrap();
        store.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_creates_and_rotations_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(Config::new(dir.path())).await.unwrap();
        let creates: Vec<_> = ["race", "RACE", "Race", "rAce"]
            .into_iter()
            .map(|name| {
                let store = store.clone();
                tokio::spawn(
                    async move { Secret::create(&store, name, BTreeMap::new(), b"x").await },
                )
            })
            .collect();
        let mut won = 0;
        for c in creates {
            match c.await.unwrap() {
                Ok(_) => won += 1,
                Err(VaultError::AlreadyExists(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(won, 1);
        let rotations: Vec<_> = (0..6)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    Secret::rotate(&store, "race", format!("r{i}").as_bytes()).await
                })
            })
            .collect();
        for r in rotations {
            r.await.unwrap().unwrap();
        }
        let s = Secret::find(&store, "race").await.unwrap();
        let kept: Vec<u64> = s.versions.iter().map(|v| v.version).collect();
        assert_eq!(kept, (1..=7).collect::<Vec<_>>());
        store.shutdown().await.unwrap();
    }
}
