//! How a store is opened.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::engine::keys::LocalKeys;
use crate::error::Error;

use crate::types::NodeId;
use crate::unlock::UnlockKey;

/// Default store quota: 2 GiB of keys and values.
pub const DEFAULT_QUOTA_BYTES: u64 = 2 << 30;

/// Default bound of the re-encryption after a key rotation.
pub const DEFAULT_REKEY_RECORDS_PER_SEC: u32 = 20_000;

/// What to do with a data directory that holds no cluster yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bootstrap {
    /// Become a single-node cluster of which this node is the only voter.
    SingleNode,
    /// Wait to be added to an existing cluster by its leader.
    Join,
}

/// Whether records are encrypted at rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encryption {
    /// XChaCha20-Poly1305 under the keyring's data keys (always, in production).
    On,
    /// Records stored in the clear. Exists only so a benchmark can measure
    /// what encryption costs; a directory written this way cannot be opened
    /// with encryption on, and vice versa.
    DangerOffForBenchmarks,
}

/// Configuration of [`crate::Store::open`]. `Config::new(dir)` is a
/// complete single-node configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub dir: PathBuf,
    /// This member's id, unique in the cluster.
    pub node_id: NodeId,
    /// The address other members reach this one at (opaque to the store).
    pub advertise_addr: String,
    pub bootstrap: Bootstrap,
    /// Writes that would take keys plus values past this many bytes fail
    /// with `QuotaExceeded`.
    pub quota_bytes: u64,
    /// How long a request waits for a leader or a commit.
    pub request_timeout: Duration,
    /// How many revisions of watch history are kept.
    pub watch_history_revisions: u64,
    /// A snapshot is built after this many log entries.
    pub snapshot_after_logs: u64,
    /// Log entries kept behind a snapshot for slow followers.
    pub logs_kept_after_snapshot: u64,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub encryption: Encryption,
    /// The cluster unlock key (autolock): a new data directory is sealed
    /// under it, and one sealed under it opens only with it (`Locked`
    /// without, `WrongUnlockKey` with another). Ignored by a directory
    /// whose key-encryption key is in `keys/kek`.
    pub unlock_key: Option<UnlockKey>,
    /// Recovery from a lone survivor (`--force-new-cluster`): before Raft
    /// starts, this member's log gets a membership in which it is the
    /// only voter, under a term above any it has seen, so that it elects
    /// itself and commits what its log holds. Nothing is lost from its
    /// replica; the other members are no longer members. A directory in
    /// which this member already is the only voter is left as it is.
    pub force_new_cluster: bool,
    /// Data-key rotation: at most this many records are sealed again per
    /// second by the background re-encryption after a rotation.
    pub rekey_records_per_sec: u32,
    /// Rotate the data key on its own once this many records were sealed
    /// under it (counted by this process since it became active).
    pub rotate_key_after_records: Option<u64>,
    /// Rotate the data key on its own once it is this old.
    pub rotate_key_after: Option<Duration>,
    /// Seals again the files the store's owner keeps outside the store
    /// under [`crate::Store::local_keys`] (a server's TLS key): called by
    /// a key rotation before the old keys are deleted.
    pub local_resealer: Option<LocalResealer>,
}

/// See [`Config::local_resealer`]: given the store's keys, seals every
/// local file again under the active key ([`LocalKeys::reseal`]).
#[derive(Clone)]
#[allow(clippy::type_complexity)]
pub struct LocalResealer(pub Arc<dyn Fn(&LocalKeys) -> Result<(), Error> + Send + Sync>);

impl std::fmt::Debug for LocalResealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalResealer")
    }
}

impl Config {
    pub fn new(dir: impl AsRef<Path>) -> Self {
        Config {
            dir: dir.as_ref().to_path_buf(),
            node_id: 1,
            advertise_addr: "local".into(),
            bootstrap: Bootstrap::SingleNode,
            quota_bytes: DEFAULT_QUOTA_BYTES,
            request_timeout: Duration::from_secs(10),
            watch_history_revisions: 10_000,
            snapshot_after_logs: 10_000,
            logs_kept_after_snapshot: 1_000,
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            encryption: Encryption::On,
            unlock_key: None,
            force_new_cluster: false,
            rekey_records_per_sec: DEFAULT_REKEY_RECORDS_PER_SEC,
            rotate_key_after_records: None,
            rotate_key_after: None,
            local_resealer: None,
        }
    }

    pub fn node_id(mut self, id: NodeId) -> Self {
        self.node_id = id;
        self
    }

    pub fn advertise_addr(mut self, addr: impl Into<String>) -> Self {
        self.advertise_addr = addr.into();
        self
    }

    pub fn bootstrap(mut self, b: Bootstrap) -> Self {
        self.bootstrap = b;
        self
    }

    pub fn quota_bytes(mut self, q: u64) -> Self {
        self.quota_bytes = q;
        self
    }
}
