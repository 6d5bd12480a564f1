//! [`Store`]: the handle a manager process links against.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft, RaftMetrics, Snapshot, SnapshotPolicy, Vote};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::command::{KeyValue, OpResult, Request, Response, Txn, Value, MAX_REQUEST_BYTES};
use crate::config::{Bootstrap, Config, Encryption};
use crate::engine::db::Db;
use crate::engine::keys::{self, LocalKeys};
use crate::engine::log_store::{Forced, LogStore};
use crate::engine::network::{NetworkFactory, NoPeers, Transport, TransportError};
use crate::engine::proposer::{self, Queued};
use crate::engine::rekey::{self, KeyStatus, Rekey, RekeyJob};
use crate::engine::retry::{self, Refused};
use crate::engine::state_machine::{LeaseInfo, Notice, Shared, StateMachine};
use crate::engine::watch::{Watch, WatchOptions};
use crate::error::{Error, OpenError};
use crate::range::{Range, RangeResult};
use crate::snapshot::{SnapshotError, SnapshotReader, SnapshotWriter};
use crate::types::{NodeId, TypeConfig};

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Linearizable: confirmed with a quorum (read index) before reading.
    /// On a follower, the leader's read index through the transport
    /// ([`Transport::read_index`]), then this member's own state once it
    /// has applied up to that index (`NotLeader` when the transport does
    /// not carry read indexes, as with no peers).
    Linearizable,
    /// This member's applied state, which may lag the leader.
    Stale,
}

/// Options of [`Store::put_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PutOptions {
    /// Return the key as it was before the put.
    pub prev_kv: bool,
    /// Attach the key to this lease (from [`Store::lease_grant`]); 0, the
    /// default, attaches it to none (and detaches it from a lease it had).
    pub lease: u64,
}

/// A granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub id: u64,
    pub ttl: Duration,
}

/// The outcome of a [`Store::lease_revoke`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRevokeResult {
    /// The revision of the deletes (the store's, if the lease had no keys).
    pub revision: u64,
    /// How many keys were deleted with it.
    pub deleted: u64,
}

/// How often the leader looks for leases that ran out.
const LEASE_CHECK_INTERVAL: Duration = Duration::from_millis(200);
/// How long the leader waits before proposing the revocation of the same
/// expired lease again (the first may still be in flight).
const LEASE_REVOKE_RETRY: Duration = Duration::from_secs(1);

/// The outcome of a [`Store::put_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutResult {
    pub revision: u64,
    /// The key before the put, when asked for and present.
    pub prev_kv: Option<KeyValue>,
}

/// Options of [`Store::delete_with`] and [`Store::delete_range`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeleteOptions {
    /// Return the deleted keys as they were.
    pub prev_kv: bool,
}

/// The outcome of a [`Store::delete`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteResult {
    pub deleted: bool,
    pub revision: u64,
    /// The key as it was, when asked for and present.
    pub prev_kv: Option<KeyValue>,
}

/// The outcome of a [`Store::delete_range`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteRangeResult {
    /// The revision of the delete (the store's revision if the range was
    /// empty).
    pub revision: u64,
    /// How many keys were deleted.
    pub deleted: u64,
    /// The deleted keys as they were, when asked for.
    pub prev_kvs: Vec<KeyValue>,
}

/// The outcome of a [`Store::txn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResult {
    pub succeeded: bool,
    pub revision: u64,
    pub results: Vec<OpResult>,
}

/// An open store: a member of a Raft cluster (a single-node one by
/// default) with an encrypted RocksDB state machine. Cheap to clone.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = std::path::Path::new("/var/lib/coffer");
/// let store = coffer_store::Store::open(coffer_store::Config::new(dir)).await?;
/// store.put(b"k", b"v").await?;
/// assert_eq!(store.get(b"k").await?.as_deref(), Some(&b"v"[..]));
/// store.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    raft: Raft<TypeConfig>,
    /// How this member reaches the others (for read indexes; openraft
    /// holds its own handle for replication).
    transport: Arc<dyn Transport>,
    shared: Arc<Shared>,
    config: Config,
    proposals: mpsc::Sender<Queued>,
    rekey: Arc<Rekey>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.config.dir)
            .field("node_id", &self.inner.config.node_id)
            .finish_non_exhaustive()
    }
}

fn io_open(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> OpenError + '_ {
    move |source| OpenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn open_err(e: Error) -> OpenError {
    match e {
        Error::Corruption { location, detail } => OpenError::Corruption {
            path: location.into(),
            detail,
        },
        Error::Io { path, source } => OpenError::Io { path, source },
        Error::Engine(detail) => OpenError::Engine(detail),
        other => OpenError::Engine(other.to_string()),
    }
}

impl Store {
    /// Opens (creating if empty) the store in `config.dir`. An empty
    /// directory with [`Bootstrap::SingleNode`] becomes a single-node cluster.
    pub async fn open(config: Config) -> Result<Store, OpenError> {
        Self::open_with_transport(config, Arc::new(NoPeers)).await
    }

    /// Opens a store that reaches other members through `transport`.
    pub async fn open_with_transport(
        config: Config,
        transport: Arc<dyn Transport>,
    ) -> Result<Store, OpenError> {
        if config.node_id == 0 {
            return Err(OpenError::Config("node id 0 is reserved".into()));
        }
        let dir = config.dir.clone();
        // A directory created here is private to its owner; one the caller
        // made keeps the mode the caller gave it (the keys in it are
        // checked on their own, and every other file is sealed).
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_open(&dir))?;
        let fresh = !keys::has_data(&dir);
        let keyring = keys::open_keyring(&dir, fresh, config.unlock_key.as_ref())?;
        let cipher = Arc::new(match config.encryption {
            Encryption::On => keyring.cipher().map_err(|e| OpenError::Corruption {
                path: dir.join(keys::KEYS_DIR),
                detail: e.to_string(),
            })?,
            Encryption::DangerOffForBenchmarks => keyring.danger_plaintext_cipher(),
        });
        // A key of unknown age (an older keyring) counts from now.
        let rekey = Rekey::new(Some(
            keyring.active_created().unwrap_or_else(rekey::unix_now),
        ));
        drop(keyring);
        let snapshot_dir = dir.join("snapshots");
        fs::create_dir_all(&snapshot_dir).map_err(io_open(&snapshot_dir))?;
        let db_path = dir.join("db");
        let db = Arc::new(Db::open(&db_path, cipher).map_err(open_err)?);
        let format = db.check_format().map_err(open_err)?;
        if format < crate::engine::db::FORMAT_VERSION {
            // Rows of formats 1 and 2 are rewritten as format 3 rows; the
            // other format 1 rows read as they are.
            crate::engine::state_machine::migrate_kv_rows(&db).map_err(open_err)?;
            db.write_format().map_err(open_err)?;
        }
        let shared = Shared::open(db.clone(), snapshot_dir, config.watch_history_revisions)
            .map_err(open_err)?;
        if config.force_new_cluster {
            let applied = shared.applied_membership().map_err(open_err)?;
            let forced = crate::engine::log_store::force_sole_member(
                &db,
                &applied,
                config.node_id,
                &config.advertise_addr,
            )
            .map_err(open_err)?;
            match forced {
                Forced::Forced { term, dropped } => tracing::warn!(
                    term,
                    ?dropped,
                    "forced a new cluster: this member is now its only voter"
                ),
                Forced::AlreadyAlone => {
                    tracing::info!("forced a new cluster: this member already was its only voter")
                }
            }
        }
        let log_store = LogStore::open(db).map_err(open_err)?;
        let raft_config = openraft::Config {
            cluster_name: "coffer".into(),
            heartbeat_interval: config.heartbeat_interval_ms,
            election_timeout_min: config.election_timeout_min_ms,
            election_timeout_max: config.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_after_logs),
            max_in_snapshot_log_to_keep: config.logs_kept_after_snapshot,
            install_snapshot_timeout: 60_000,
            max_payload_entries: 512,
            ..Default::default()
        }
        .validate()
        .map_err(|e| OpenError::Config(e.to_string()))?;
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            NetworkFactory {
                transport: transport.clone(),
            },
            log_store,
            StateMachine {
                shared: shared.clone(),
            },
        )
        .await
        .map_err(|e| OpenError::Raft(e.to_string()))?;
        let store = Store {
            inner: Arc::new(Inner {
                proposals: proposer::start(
                    raft.clone(),
                    config.quota_bytes,
                    config.request_timeout,
                ),
                raft,
                transport,
                shared,
                config,
                rekey,
            }),
        };
        store.bootstrap().await?;
        tokio::spawn(expire_leases(Arc::downgrade(&store.inner)));
        // A rotation a crash or shutdown interrupted goes on.
        store
            .inner
            .rekey
            .resume(&store.inner.shared, store.rekey_job());
        if store.inner.config.rotate_key_after_records.is_some()
            || store.inner.config.rotate_key_after.is_some()
        {
            tokio::spawn(rotate_keys_when_due(Arc::downgrade(&store.inner)));
        }
        Ok(store)
    }

    async fn bootstrap(&self) -> Result<(), OpenError> {
        let cfg = &self.inner.config;
        let raft = &self.inner.raft;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| OpenError::Raft(e.to_string()))?;
        if !initialized && cfg.bootstrap == Bootstrap::SingleNode {
            let members = BTreeMap::from([(cfg.node_id, BasicNode::new(&cfg.advertise_addr))]);
            match raft.initialize(members).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(OpenError::Raft(e.to_string())),
            }
        }
        // A member that is the only voter elects itself at once: wait for
        // that so the first request does not race the election.
        let sole_voter = {
            let m = raft.metrics().borrow().membership_config.clone();
            let voters: BTreeSet<NodeId> = m.membership().voter_ids().collect();
            voters.len() == 1 && voters.contains(&cfg.node_id)
        };
        if sole_voter {
            raft.wait(Some(cfg.request_timeout))
                .current_leader(cfg.node_id, "single-node election")
                .await
                .map_err(|e| OpenError::Raft(e.to_string()))?;
        }
        Ok(())
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.config.node_id
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The underlying openraft handle (membership changes, metrics).
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.inner.raft
    }

    pub fn metrics(&self) -> RaftMetrics<NodeId, BasicNode> {
        self.inner.raft.metrics().borrow().clone()
    }

    /// The leader this member knows of, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.inner.raft.metrics().borrow().current_leader
    }

    /// Seals `plaintext` for a file this member keeps outside the store
    /// (its TLS key, say): [`LocalKeys::seal`] with this store's keys.
    pub fn seal_local(&self, purpose: &str, plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        self.local_keys().seal(purpose, plaintext)
    }

    /// Opens a record from [`Store::seal_local`]: [`LocalKeys::open_sealed`].
    pub fn open_local(&self, purpose: &str, record: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        self.local_keys().open_sealed(purpose, record)
    }

    /// This store's keys, for files the member keeps outside the store.
    /// A data-key rotation ([`Store::rotate_key`]) deletes the old key
    /// once the store's own records are re-encrypted: files sealed with
    /// these keys must be sealed again by [`Config::local_resealer`] (as
    /// the server does for its TLS key), or they stop opening.
    pub fn local_keys(&self) -> LocalKeys {
        LocalKeys {
            cipher: self.inner.shared.db.cipher.clone(),
        }
    }

    fn rekey_job(&self) -> RekeyJob {
        let cfg = &self.inner.config;
        RekeyJob {
            dir: cfg.dir.clone(),
            rate: cfg.rekey_records_per_sec,
            resealer: cfg.local_resealer.clone(),
        }
    }

    /// Rotates this member's data key (`coffer key rotate`): a new key,
    /// written to the keyring, seals every record from now on; a
    /// background thread seals the older records again at
    /// [`Config::rekey_records_per_sec`] at most, then deletes the older
    /// keys ([`Store::key_status`] shows how far it is). Each member seals
    /// its replica under keys of its own, so this rotates this member's
    /// alone. Refused while the previous rotation still runs.
    pub async fn rotate_key(&self) -> Result<crate::KeyId, Error> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            store
                .inner
                .rekey
                .rotate(&store.inner.shared, store.rekey_job())
        })
        .await
        .map_err(|e| Error::Internal(format!("key rotation task: {e}")))?
    }

    /// This member's data keys and the progress of a rotation.
    pub fn key_status(&self) -> KeyStatus {
        self.inner.rekey.status(&self.inner.shared)
    }

    /// How many rows and snapshot frames are sealed under each data key,
    /// read from their headers: after a rotation finished, only the
    /// active key appears.
    pub async fn key_census(&self) -> Result<BTreeMap<crate::KeyId, u64>, Error> {
        let shared = self.inner.shared.clone();
        tokio::task::spawn_blocking(move || rekey::census(&shared))
            .await
            .map_err(|e| Error::Internal(format!("key census task: {e}")))?
    }

    /// The engine state, for the engine's own tests.
    #[cfg(test)]
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// The revision of the last change this member applied.
    pub fn revision(&self) -> Result<u64, Error> {
        Ok(self
            .inner
            .shared
            .state
            .read()
            .map_err(|_| poisoned())?
            .index
            .revision)
    }

    async fn propose(&self, request: Request) -> Result<Response, Error> {
        request
            .validate()
            .map_err(|e| Error::InvalidArgument(e.into()))?;
        let encoded_len = request.encoded_len();
        if encoded_len > MAX_REQUEST_BYTES {
            return Err(Error::RequestTooLarge {
                size: encoded_len,
                limit: MAX_REQUEST_BYTES,
            });
        }
        let (reply, answer) = oneshot::channel();
        let stopped = || Error::Stopped;
        self.inner
            .proposals
            .send(Queued {
                request,
                encoded_len,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        let timeout = self.inner.config.request_timeout;
        match tokio::time::timeout(timeout, answer).await {
            Err(_) => Err(retry::timed_out(&self.inner.raft, Error::timeout(timeout)).await),
            Ok(Err(_)) => Err(stopped()),
            Ok(Ok(Err(e))) => Err(retry::timed_out(&self.inner.raft, e).await),
            Ok(Ok(result)) => result,
        }
    }

    /// Waits until this member may serve a linearizable read.
    async fn read_barrier(&self, consistency: Consistency) -> Result<(), Error> {
        if consistency == Consistency::Stale {
            return Ok(());
        }
        let raft = &self.inner.raft;
        let transport = &self.inner.transport;
        let barrier = retry::through_election(self.inner.config.request_timeout, || async move {
            match raft.ensure_linearizable().await {
                Ok(_) => Ok(()),
                // A follower: the leader's read index, then this member's
                // state applied up to it.
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                    let (Some(leader), Some(node)) = (f.leader_id, f.leader_node.as_ref()) else {
                        return Err(Refused::Forward(f));
                    };
                    let index = match transport.read_index(leader, node).await {
                        Ok(index) => index,
                        Err(TransportError::Unsupported(_)) => return Err(Refused::Forward(f)),
                        // The leader changing or out of reach: asked again
                        // (through the election) until the deadline.
                        Err(e) => {
                            tracing::debug!(leader, "no read index from the leader: {e}");
                            return Err(Refused::Forward(openraft::error::ForwardToLeader {
                                leader_id: None,
                                leader_node: None,
                            }));
                        }
                    };
                    raft.wait(None)
                        .applied_index_at_least(Some(index), "a follower's read index")
                        .await
                        .map(|_| ())
                        .map_err(|_| Refused::Failed(Error::Stopped))
                }
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q))) => {
                    Err(Refused::Failed(Error::Unavailable(q.to_string())))
                }
                Err(RaftError::Fatal(f)) => Err(Refused::Failed(Error::from(f))),
            }
        })
        .await;
        match barrier {
            Err(e) => Err(retry::timed_out(raft, e).await),
            Ok(()) => Ok(()),
        }
    }

    /// Puts `value` under `key`; returns the revision once the write is
    /// committed by a quorum and durable.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<u64, Error> {
        Ok(self
            .put_with(key, value, PutOptions::default())
            .await?
            .revision)
    }

    /// [`Store::put`] with options: `prev_kv` returns the key as it was
    /// before the put (`None` if it was absent).
    pub async fn put_with(
        &self,
        key: &[u8],
        value: &[u8],
        options: PutOptions,
    ) -> Result<PutResult, Error> {
        match self
            .propose(Request::Put {
                key: key.to_vec(),
                value: Value(value.to_vec()),
                prev_kv: options.prev_kv,
                lease: options.lease,
            })
            .await?
        {
            Response::Put { revision, prev_kv } => Ok(PutResult { revision, prev_kv }),
            other => Err(unexpected(&other)),
        }
    }

    /// Deletes `key`; returns whether it existed, and the revision: the
    /// delete's own if it existed, else the store's revision when the
    /// delete was applied.
    pub async fn delete(&self, key: &[u8]) -> Result<DeleteResult, Error> {
        self.delete_with(key, DeleteOptions::default()).await
    }

    /// [`Store::delete`] with options: `prev_kv` returns the deleted key
    /// as it was.
    pub async fn delete_with(
        &self,
        key: &[u8],
        options: DeleteOptions,
    ) -> Result<DeleteResult, Error> {
        match self
            .propose(Request::Delete {
                key: key.to_vec(),
                prev_kv: options.prev_kv,
            })
            .await?
        {
            Response::Delete {
                deleted,
                revision,
                prev_kv,
            } => Ok(DeleteResult {
                deleted,
                revision,
                prev_kv,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// Deletes every key in `range`'s bounds (`Range::prefix`,
    /// `Range::between`, ...) at one revision. A range holding more than
    /// [`MAX_DELETE_RANGE_KEYS`](crate::MAX_DELETE_RANGE_KEYS) keys is
    /// refused with `InvalidArgument` and nothing is deleted; a limit or
    /// mode on `range` is `InvalidArgument` too.
    pub async fn delete_range(
        &self,
        range: Range,
        options: DeleteOptions,
    ) -> Result<DeleteRangeResult, Error> {
        if range.limit != 0 || range.keys_only || range.count_only || range.revision != 0 {
            return Err(Error::InvalidArgument(
                "a range delete takes bounds only: no limit, keys-only, count-only or revision"
                    .into(),
            ));
        }
        match self
            .propose(Request::DeleteRange {
                start: range.start,
                end: range.end,
                prev_kv: options.prev_kv,
            })
            .await?
        {
            Response::DeleteRange {
                revision,
                deleted,
                prev_kvs,
            } => Ok(DeleteRangeResult {
                revision,
                deleted,
                prev_kvs,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// Runs a compare-and-swap transaction.
    pub async fn txn(&self, txn: Txn) -> Result<TxnResult, Error> {
        match self.propose(Request::Txn(txn)).await? {
            Response::Txn {
                succeeded,
                revision,
                results,
            } => Ok(TxnResult {
                succeeded,
                revision,
                results,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// The value under `key` (linearizable).
    pub async fn get(&self, key: &[u8]) -> Result<Option<Value>, Error> {
        Ok(self
            .get_kv(key, Consistency::Linearizable)
            .await?
            .map(|kv| kv.value))
    }

    /// The key with its value and metadata.
    pub async fn get_kv(
        &self,
        key: &[u8],
        consistency: Consistency,
    ) -> Result<Option<KeyValue>, Error> {
        self.read_barrier(consistency).await?;
        self.inner.shared.get(key)
    }

    /// Every key starting with `prefix`, in key order: the keys of
    /// [`Store::range`] over [`Range::prefix`].
    pub async fn list(
        &self,
        prefix: &[u8],
        consistency: Consistency,
    ) -> Result<Vec<KeyValue>, Error> {
        Ok(self.range(Range::prefix(prefix), consistency).await?.kvs)
    }

    /// The keys in `range` (see [`Range`]: bounds, a limit with a
    /// continuation, keys-only and count-only), with the revision the read
    /// was served at. Linearizable unless `consistency` says otherwise.
    pub async fn range(
        &self,
        range: Range,
        consistency: Consistency,
    ) -> Result<RangeResult, Error> {
        range
            .validate()
            .map_err(|e| Error::InvalidArgument(e.into()))?;
        self.read_barrier(consistency).await?;
        let shared = self.inner.shared.clone();
        tokio::task::spawn_blocking(move || shared.range(&range))
            .await
            .map_err(Error::from)?
    }

    /// Drops the watch history up to and including `revision` on every
    /// member, through Raft (etcd's `Compact`): a watch from `revision` or
    /// earlier then fails with `Compacted`. History is also dropped on its
    /// own past `Config::watch_history_revisions`. A revision past the
    /// store's is `InvalidArgument`; one already compacted changes nothing.
    pub async fn compact(&self, revision: u64) -> Result<(), Error> {
        match self.propose(Request::Compact { revision }).await? {
            Response::Compact { .. } => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Grants a lease with a time-to-live of `ttl` (whole seconds, at least
    /// one; a fraction rounds up) under a random id. Keys put with it
    /// ([`PutOptions::lease`]) are deleted, at one revision, when it is
    /// revoked or runs out: `ttl` after the grant or the last
    /// [`Store::lease_keep_alive`], as the leader counts. A new leader, and
    /// a member that restarts, give every lease its full time-to-live
    /// again (as etcd does), so a lease never ends early. Lease state is
    /// replicated: it survives restarts and leader changes.
    pub async fn lease_grant(&self, ttl: Duration) -> Result<Lease, Error> {
        loop {
            // A random id, never 0 and below 2^63 (etcd's ids are signed).
            let id = (rand::random::<u64>() >> 1).max(1);
            match self.lease_grant_with_id(id, ttl).await {
                // 2^63 ids: a collision is the caller's other lease.
                Err(Error::LeaseExists { .. }) => continue,
                other => return other,
            }
        }
    }

    /// [`Store::lease_grant`] under the id the caller chose (not 0);
    /// `LeaseExists` if it is taken.
    pub async fn lease_grant_with_id(&self, id: u64, ttl: Duration) -> Result<Lease, Error> {
        let ttl_secs = ttl
            .as_secs()
            .saturating_add(u64::from(ttl.subsec_nanos() > 0));
        match self.propose(Request::LeaseGrant { id, ttl_secs }).await? {
            Response::LeaseGrant { id, ttl_secs } => Ok(Lease {
                id,
                ttl: Duration::from_secs(ttl_secs),
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// Revokes lease `id` and deletes every key attached to it, at one
    /// revision. `LeaseNotFound` if it does not exist.
    pub async fn lease_revoke(&self, id: u64) -> Result<LeaseRevokeResult, Error> {
        match self.propose(Request::LeaseRevoke { id }).await? {
            Response::LeaseRevoke { revision, deleted } => {
                Ok(LeaseRevokeResult { revision, deleted })
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Restarts lease `id`'s countdown from its full time-to-live, which
    /// it returns; `LeaseNotFound` once it has run out. Through Raft, so
    /// every member (and a future leader) counts from it. Keep a lease
    /// alive at a third of its time-to-live, as etcd's clients do.
    pub async fn lease_keep_alive(&self, id: u64) -> Result<Duration, Error> {
        match self.propose(Request::LeaseKeepAlive { id }).await? {
            Response::LeaseKeepAlive { ttl_secs, .. } => Ok(Duration::from_secs(ttl_secs)),
            other => Err(unexpected(&other)),
        }
    }

    /// Every lease, in id order, with the time left as this member counts
    /// it (on a follower, an estimate of the leader's count).
    pub async fn leases(&self, consistency: Consistency) -> Result<Vec<LeaseInfo>, Error> {
        self.read_barrier(consistency).await?;
        self.inner.shared.leases()
    }

    /// The keys attached to lease `id`, in key order; `LeaseNotFound` if
    /// it does not exist.
    pub async fn lease_keys(
        &self,
        id: u64,
        consistency: Consistency,
    ) -> Result<Vec<Vec<u8>>, Error> {
        self.read_barrier(consistency).await?;
        self.inner.shared.lease_keys(id)
    }

    /// Watches keys under `prefix` from revision `from` (inclusive; 0 means
    /// only changes after now).
    pub fn watch(&self, prefix: &[u8], from: u64) -> Result<Watch, Error> {
        self.watch_with(
            prefix,
            WatchOptions {
                from,
                ..WatchOptions::default()
            },
        )
    }

    /// Watches keys under `prefix` with options: a start revision, a
    /// filter (puts only, deletes only) and progress notifications.
    pub fn watch_with(&self, prefix: &[u8], options: WatchOptions) -> Result<Watch, Error> {
        Watch::start(&self.inner.shared, prefix.to_vec(), options)
    }

    /// Adds a non-voting member that starts receiving the log.
    pub async fn add_learner(&self, id: NodeId, addr: &str) -> Result<(), Error> {
        self.inner
            .raft
            .add_learner(id, BasicNode::new(addr), true)
            .await
            .map(|_| ())
            .map_err(membership_err)
    }

    /// Makes `voters` the voting members (learners not in it stay learners).
    pub async fn change_membership(&self, voters: BTreeSet<NodeId>) -> Result<(), Error> {
        self.inner
            .raft
            .change_membership(voters, false)
            .await
            .map(|_| ())
            .map_err(membership_err)
    }

    /// Takes member `id` (voter or learner) out of the membership for
    /// good; other members keep their roles. Leader only. A leader that
    /// removes itself steps down once the change is committed.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), Error> {
        let membership = self.metrics().membership_config;
        let voters: BTreeSet<NodeId> = membership.membership().voter_ids().collect();
        let ids = BTreeSet::from([id]);
        let change = if voters.contains(&id) {
            openraft::ChangeMembers::RemoveVoters(ids)
        } else {
            openraft::ChangeMembers::RemoveNodes(ids)
        };
        self.inner
            .raft
            .change_membership(change, false)
            .await
            .map(|_| ())
            .map_err(membership_err)
    }

    /// Records `addr` as the address member `id` is reached at (a member
    /// that restarted on another port, say). Leader only.
    pub async fn set_member_addr(&self, id: NodeId, addr: &str) -> Result<(), Error> {
        let nodes = std::collections::BTreeMap::from([(id, BasicNode::new(addr))]);
        self.inner
            .raft
            .change_membership(openraft::ChangeMembers::SetNodes(nodes), false)
            .await
            .map(|_| ())
            .map_err(membership_err)
    }

    /// Builds a snapshot now (and lets openraft purge the log behind it).
    pub async fn trigger_snapshot(&self) -> Result<(), Error> {
        self.inner
            .raft
            .trigger()
            .snapshot()
            .await
            .map_err(Error::from)
    }

    /// A consistent copy of the whole store for `coffer snapshot save`:
    /// after a linearizable barrier (everything acknowledged before the
    /// call), a snapshot is built that covers at least what this member
    /// then applied, and its frames (plaintext: the caller seals them) are
    /// read from its file, which stays readable while it is open even if a
    /// newer snapshot replaces it.
    pub async fn export_snapshot(&self) -> Result<SnapshotReader, Error> {
        self.read_barrier(Consistency::Linearizable).await?;
        let applied = self.metrics().last_applied.map(|l| l.index);
        let deadline = Instant::now()
            + self
                .inner
                .config
                .request_timeout
                .max(Duration::from_secs(60));
        loop {
            let covered = self.metrics().snapshot.map(|s| s.index);
            if covered >= applied {
                break;
            }
            if Instant::now() >= deadline {
                return Err(Error::timeout(self.inner.config.request_timeout));
            }
            // A build already running covers less: asked again until one
            // covers it.
            self.trigger_snapshot().await?;
            let _ = self
                .inner
                .raft
                .wait(Some(Duration::from_secs(1)))
                .metrics(
                    |m| m.snapshot.map(|s| s.index) >= applied,
                    "a snapshot of what was applied",
                )
                .await;
        }
        let snapshot = self
            .inner
            .shared
            .current_snapshot()?
            .ok_or_else(|| Error::Internal("no current snapshot after building one".into()))?;
        snapshot_frames(&snapshot)
    }

    /// Handles an AppendEntries RPC from the leader.
    pub async fn handle_append_entries(
        &self,
        rpc: AppendEntriesRequest<TypeConfig>,
    ) -> Result<AppendEntriesResponse<NodeId>, Error> {
        self.inner
            .raft
            .append_entries(rpc)
            .await
            .map_err(Error::from)
    }

    /// Answers a follower's read index (see [`Transport::read_index`]):
    /// once a quorum has confirmed that this member still leads, the log
    /// index a linearizable read must see applied. `NotLeader` on a
    /// follower.
    pub async fn handle_read_index(&self) -> Result<u64, Error> {
        match self.inner.raft.get_read_log_id().await {
            Ok((read, _applied)) => Ok(read.map_or(0, |id| id.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(retry::not_leader(f))
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q))) => {
                Err(Error::Unavailable(q.to_string()))
            }
            Err(RaftError::Fatal(f)) => Err(Error::from(f)),
        }
    }

    /// Handles a RequestVote RPC from a candidate.
    pub async fn handle_vote(
        &self,
        rpc: VoteRequest<NodeId>,
    ) -> Result<VoteResponse<NodeId>, Error> {
        self.inner.raft.vote(rpc).await.map_err(Error::from)
    }

    /// Starts receiving a snapshot streamed by the leader holding `vote`.
    pub fn receive_snapshot(&self, vote: Vote<NodeId>) -> Result<SnapshotReceiver, Error> {
        Ok(SnapshotReceiver {
            writer: self.inner.shared.receive_snapshot()?,
            vote,
            store: self.clone(),
            _lease: self.keep_lease(vote),
        })
    }

    /// Renews `vote`'s lease on this member every heartbeat interval until
    /// the returned sender is dropped. `None` outside a Tokio runtime.
    fn keep_lease(&self, vote: Vote<NodeId>) -> Option<oneshot::Sender<()>> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (open, mut closed) = oneshot::channel::<()>();
        let raft = self.inner.raft.clone();
        let every = Duration::from_millis(self.inner.config.heartbeat_interval_ms.max(1));
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = &mut closed => break,
                    _ = tick.tick() => {
                        // A refused renewal means a newer leader exists, and
                        // `finish` reports the snapshot refused as well.
                        if let Err(RaftError::Fatal(_)) = raft.append_entries(lease_renewal(vote)).await {
                            break;
                        }
                    }
                }
            }
        });
        Some(open)
    }

    /// Stops Raft and waits for the data directory to be released. Other
    /// clones of this handle become unusable.
    pub async fn shutdown(self) -> Result<(), Error> {
        // Watches end now, whoever else holds this store.
        self.inner
            .shared
            .stopped
            .store(true, std::sync::atomic::Ordering::Release);
        let _ = self.inner.shared.notices.send(Notice::Stopped);
        self.inner
            .raft
            .shutdown()
            .await
            .map_err(|e| Error::Internal(format!("a Raft task did not stop cleanly: {e}")))?;
        // openraft's tasks drop the log store and state machine as they
        // end; the flusher and snapshot threads follow. Wait for every
        // internal reference to the database to go.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Arc::strong_count(&self.inner.shared) > 1
            || Arc::strong_count(&self.inner.shared.db) > 1
        {
            if Instant::now() >= deadline {
                return Err(Error::Internal(
                    "internal tasks did not stop within 30 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }
}

/// How often a store with an automatic key rotation policy checks it.
const KEY_POLICY_INTERVAL: Duration = Duration::from_secs(1);

/// While the store lives: rotates the data key when the policy in its
/// configuration says it is due (and no rotation runs).
async fn rotate_keys_when_due(inner: std::sync::Weak<Inner>) {
    let mut tick = tokio::time::interval(KEY_POLICY_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner
            .shared
            .stopped
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return;
        }
        let store = Store { inner };
        let status = store.key_status();
        if store.inner.rekey.is_running() || status.active.is_none() {
            continue;
        }
        let cfg = &store.inner.config;
        let by_count = cfg
            .rotate_key_after_records
            .is_some_and(|n| status.sealed_under_active >= n);
        let by_age = match (cfg.rotate_key_after, status.active_created) {
            (Some(max), Some(created)) => {
                rekey::unix_now().saturating_sub(created) >= max.as_secs()
            }
            _ => false,
        };
        if by_count || by_age {
            match store.rotate_key().await {
                Ok(id) => {
                    tracing::info!(key = %id, by_count, by_age, "rotated the data key by policy")
                }
                Err(e) => tracing::warn!(error = %e, "automatic data key rotation failed"),
            }
        }
    }
}

/// While the store lives: on the leader, revokes (through Raft) every
/// lease whose time ran out.
async fn expire_leases(inner: std::sync::Weak<Inner>) {
    let mut tick = tokio::time::interval(LEASE_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let shared = &inner.shared;
        if shared.stopped.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let leading = {
            let m = inner.raft.metrics();
            let m = m.borrow();
            m.current_leader == Some(inner.config.node_id)
                && m.state == openraft::ServerState::Leader
        };
        if !leading {
            continue;
        }
        let Ok(expired) = shared.take_expired_leases(std::time::Instant::now(), LEASE_REVOKE_RETRY)
        else {
            return;
        };
        if expired.is_empty() {
            continue;
        }
        let store = Store { inner };
        for id in expired {
            match store.propose(Request::LeaseRevoke { id }).await {
                Ok(_) | Err(Error::LeaseNotFound { .. }) => {}
                Err(Error::Stopped) | Err(Error::StorageFailed(_)) => return,
                // Lost the leadership or timed out: the next leader, or
                // the next turn, tries again.
                Err(e) => tracing::debug!(lease = id, error = %e, "lease revocation not committed"),
            }
        }
    }
}

/// Receives a streamed snapshot: [`write_frame`](Self::write_frame) each
/// frame as it arrives, then [`finish`](Self::finish).
///
/// While a snapshot streams and installs, openraft sends the member nothing
/// else (no heartbeats while a snapshot is in flight). So that the member's
/// election timer does not fire meanwhile (it would campaign in a higher
/// term, refuse the finished snapshot and depose the leader, and a large
/// snapshot would never land), a receiver renews the sender's lease every
/// heartbeat interval for as long as it lives, as openraft's own chunked
/// install does with every chunk. A transport must therefore drop the
/// receiver as soon as its stream breaks or stalls.
#[derive(Debug)]
pub struct SnapshotReceiver {
    writer: SnapshotWriter,
    vote: Vote<NodeId>,
    store: Store,
    /// Dropping it ends the lease renewals.
    _lease: Option<oneshot::Sender<()>>,
}

/// An AppendEntries with no entries and no previous log id: any log
/// accepts it, and it changes nothing but the vote and its lease.
fn lease_renewal(vote: Vote<NodeId>) -> AppendEntriesRequest<TypeConfig> {
    AppendEntriesRequest {
        vote,
        prev_log_id: None,
        leader_commit: None,
        entries: Vec::new(),
    }
}

impl SnapshotReceiver {
    /// Validates a frame's plaintext and stores it sealed under this
    /// member's keys.
    pub fn write_frame(&mut self, frame: &[u8]) -> Result<(), Error> {
        self.writer.write_frame(frame).map_err(Error::from)
    }

    /// Completes the file and installs it.
    pub async fn finish(self) -> Result<SnapshotResponse<NodeId>, Error> {
        if !self.writer.is_complete() {
            return Err(Error::from(SnapshotError::Sequence(
                "stream ended before its end marker",
            )));
        }
        let file = tokio::task::spawn_blocking(move || self.writer.finish())
            .await?
            .map_err(Error::from)?;
        let header = file.header().map_err(Error::from)?;
        let answer = self
            .store
            .inner
            .raft
            .install_full_snapshot(
                self.vote,
                Snapshot {
                    meta: header.meta,
                    snapshot: Box::new(file.clone()),
                },
            )
            .await
            .map_err(Error::from);
        // openraft answers once the snapshot is installed, or at once if it
        // refused it (an older snapshot, a stale leader): a file it did not
        // install is ours to remove.
        self.store.inner.shared.snapshots.discard(&file)?;
        answer
    }
}

/// Opens a snapshot's frames for sending.
pub fn snapshot_frames(snapshot: &Snapshot<TypeConfig>) -> Result<SnapshotReader, Error> {
    snapshot.snapshot.reader().map_err(Error::from)
}

fn membership_err(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => retry::not_leader(f),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            Error::InvalidArgument(c.to_string())
        }
        RaftError::Fatal(f) => Error::from(f),
    }
}

fn poisoned() -> Error {
    Error::Internal("state lock poisoned by a panic".into())
}

fn unexpected(resp: &Response) -> Error {
    Error::Engine(format!(
        "state machine answered {resp:?} to a different request"
    ))
}
