//! An in-process cluster of Coffer stores for cluster tests.
//!
//! Every member is a real [`Store`] (RocksDB, encryption, openraft) in its
//! own directory under one temporary root; only the network is simulated.
//! Modelled on tikv/raft-rs' `harness/src/network.rs` and openraft's test
//! fixtures: RPCs are handed straight to the target's handler, and the
//! router decides which of them arrive.
//!
//! ```text
//!  Store 1 ── NodeTransport { from: 1 } ──┐
//!  Store 2 ── NodeTransport { from: 2 } ──┼──► Router ──► target Store
//!  Store 3 ── NodeTransport { from: 3 } ──┘      │        handle_append_entries
//!                                                │        handle_vote
//!            Unreachable when the target is      │        receive_snapshot
//!            down, or either end is isolated ◄───┘          → write_frame * n
//!                                                           → finish
//! ```
//!
//! The router is checked again when the answer comes back, so a partition
//! made while an RPC is in flight loses the answer, as a real one would.
//! Snapshots travel as their frames' plaintexts, one frame at a time
//! (exactly what the server's transport does), and every completed stream
//! is recorded with whether the target installed it
//! ([`Cluster::snapshot_deliveries`]), so that a test can prove a member
//! caught up by snapshot rather than by log. A per-frame delay
//! ([`Cluster::set_snapshot_frame_delay`]) simulates a slow link.
//!
//! Synchronisation is always a poll with a deadline ([`WAIT_TIMEOUT`]) on
//! observable state (Raft metrics, the router), never a fixed sleep.
//!
//! Each member runs on a tokio runtime of its own, so that
//! [`Cluster::kill`] can stop it the way a crash does: the runtime is shut
//! down and every one of the member's tasks is dropped wherever it is
//! (mid-append, mid-apply, mid-snapshot), with no shutdown code run and
//! nothing flushed. [`Cluster::stop`] is the graceful stop.
//!
//! A test that holds a [`Store`] from [`Cluster::store`] should drop it
//! before [`Cluster::restart`]ing that member: a live handle keeps the
//! RocksDB directory open (restart waits for it, up to [`WAIT_TIMEOUT`]).
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use coffer_store::raft::{
    AppendEntriesRequest, AppendEntriesResponse, BasicNode, RaftMetrics, ServerState, Snapshot,
    SnapshotResponse, Vote, VoteRequest, VoteResponse,
};
use coffer_store::SnapshotError;
use coffer_store::{
    snapshot_frames, Bootstrap, Config, Error, NodeId, OpenError, Store, Transport, TransportError,
    TypeConfig,
};
use futures::future::BoxFuture;
use tempfile::TempDir;
use tokio::time::Instant;

/// Leader heartbeat of every member.
pub const HEARTBEAT_INTERVAL_MS: u64 = 50;
/// Election timeouts: short, so that failover tests stay fast, yet long
/// enough that a member stalled for a moment on a busy 2-core machine (an
/// fsync, a starved runtime) does not campaign. Openraft adds the leader
/// lease (the maximum) to a follower's timeout, so a follower that stops
/// hearing from its leader campaigns after 0.9 to 1.2 s.
pub const ELECTION_TIMEOUT_MIN_MS: u64 = 300;
pub const ELECTION_TIMEOUT_MAX_MS: u64 = 600;
/// How long one store request waits for a leader or a commit. Short, so a
/// write to a member cut off from the quorum fails quickly.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The deadline of every wait in this harness (elections, catch-up,
/// retried writes, a directory being released).
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause between two polls of cluster state.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Pause before retrying a write that found no leader or a stale one.
const RETRY_BACKOFF: Duration = Duration::from_millis(20);

/// One snapshot streamed to its target in full and handed to its Raft.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotDelivery {
    pub from: NodeId,
    pub to: NodeId,
    /// Frames streamed, header and end marker included.
    pub frames: u64,
    /// Plaintext bytes of all frames.
    pub bytes: u64,
    /// The last log index the snapshot covers.
    pub last_log_index: Option<u64>,
    /// Whether the target installed it: it answered with the sender's own
    /// vote. A target that has moved to a newer term refuses the snapshot.
    pub installed: bool,
}

#[derive(Debug, Default)]
struct RouterState {
    /// Members that are running, by id.
    live: BTreeMap<NodeId, Store>,
    /// Members cut off from every other member (but still running).
    isolated: BTreeSet<NodeId>,
    deliveries: Vec<SnapshotDelivery>,
    /// Simulated link time of one snapshot frame.
    snapshot_frame_delay: Duration,
}

/// Decides which RPCs arrive; shared by every member's transport.
#[derive(Debug, Default)]
struct Router {
    state: Mutex<RouterState>,
}

impl Router {
    fn lock(&self) -> MutexGuard<'_, RouterState> {
        // A panicking test thread must not take the network down with it:
        // the state is a plain map, valid after any partial update.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `from` can currently reach `to`.
    fn check(&self, from: NodeId, to: NodeId) -> Result<(), TransportError> {
        let st = self.lock();
        if st.isolated.contains(&from) || st.isolated.contains(&to) {
            return Err(TransportError::Unreachable(format!(
                "node {from} -> node {to}: partitioned"
            )));
        }
        if !st.live.contains_key(&to) {
            return Err(TransportError::Unreachable(format!("node {to} is down")));
        }
        Ok(())
    }

    /// The target's store, if `from` can reach it.
    fn route(&self, from: NodeId, to: NodeId) -> Result<Store, TransportError> {
        self.check(from, to)?;
        self.lock()
            .live
            .get(&to)
            .cloned()
            .ok_or_else(|| TransportError::Unreachable(format!("node {to} is down")))
    }
}

/// A failure inside the target. A member whose Raft has stopped is as good
/// as unreachable.
fn remote(to: NodeId, e: Error) -> TransportError {
    match e {
        Error::Stopped | Error::StorageFailed(_) => {
            TransportError::Unreachable(format!("node {to}: {e}"))
        }
        other => TransportError::Remote(format!("node {to}: {other}")),
    }
}

/// Set when the future streaming a snapshot is dropped.
#[derive(Debug, Default)]
struct Abandoned(Arc<AtomicBool>);

impl Drop for Abandoned {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// One member's view of the network: every RPC it sends is from `from`.
#[derive(Debug)]
struct NodeTransport {
    from: NodeId,
    router: Arc<Router>,
}

impl Transport for NodeTransport {
    fn append_entries(
        &self,
        target: NodeId,
        _node: &BasicNode,
        rpc: AppendEntriesRequest<TypeConfig>,
    ) -> BoxFuture<'static, Result<AppendEntriesResponse<NodeId>, TransportError>> {
        let (from, router) = (self.from, self.router.clone());
        Box::pin(async move {
            let store = router.route(from, target)?;
            let resp = store
                .handle_append_entries(rpc)
                .await
                .map_err(|e| remote(target, e))?;
            router.check(from, target)?;
            Ok(resp)
        })
    }

    fn read_index(
        &self,
        target: NodeId,
        _node: &BasicNode,
    ) -> BoxFuture<'static, Result<u64, TransportError>> {
        let (from, router) = (self.from, self.router.clone());
        Box::pin(async move {
            let store = router.route(from, target)?;
            let index = store
                .handle_read_index()
                .await
                .map_err(|e| remote(target, e))?;
            router.check(from, target)?;
            Ok(index)
        })
    }

    fn vote(
        &self,
        target: NodeId,
        _node: &BasicNode,
        rpc: VoteRequest<NodeId>,
    ) -> BoxFuture<'static, Result<VoteResponse<NodeId>, TransportError>> {
        let (from, router) = (self.from, self.router.clone());
        Box::pin(async move {
            let store = router.route(from, target)?;
            let resp = store
                .handle_vote(rpc)
                .await
                .map_err(|e| remote(target, e))?;
            router.check(from, target)?;
            Ok(resp)
        })
    }

    fn snapshot(
        &self,
        target: NodeId,
        _node: &BasicNode,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
    ) -> BoxFuture<'static, Result<SnapshotResponse<NodeId>, TransportError>> {
        let (from, router) = (self.from, self.router.clone());
        Box::pin(async move {
            let store = router.route(from, target)?;
            let last_log_index = snapshot.meta.last_log_id.map(|l| l.index);
            let mut frames = snapshot_frames(&snapshot)
                .map_err(|e| TransportError::Remote(format!("sender {from}: {e}")))?;
            let mut receiver = store
                .receive_snapshot(vote)
                .map_err(|e| remote(target, e))?;
            drop(store);
            // Reading, opening and re-sealing frames is blocking file and
            // crypto work: keep it off the async workers. One frame is in
            // memory at a time.
            let streamer = router.clone();
            let frame_delay = router.lock().snapshot_frame_delay;
            // Openraft drops this future to cancel the stream; the blocking
            // task must then stop too, and drop the receiver (which keeps
            // the leader's lease alive on the target while it lives).
            let abandoned = Abandoned::default();
            let stop = abandoned.0.clone();
            let streamed = tokio::task::spawn_blocking(move || {
                let (mut count, mut bytes) = (0u64, 0u64);
                loop {
                    // A slow link, not synchronisation: see
                    // `Cluster::set_snapshot_frame_delay`.
                    std::thread::sleep(frame_delay);
                    if stop.load(Ordering::Relaxed) {
                        return Err(TransportError::Unreachable(format!(
                            "node {from} -> node {target}: snapshot stream cancelled"
                        )));
                    }
                    let next = frames.next_frame().map_err(|e: SnapshotError| {
                        TransportError::Remote(format!("sender {from}: {e}"))
                    })?;
                    let Some((_, plain)) = next else { break };
                    streamer.check(from, target)?;
                    receiver
                        .write_frame(&plain)
                        .map_err(|e| remote(target, e))?;
                    count += 1;
                    bytes += plain.len() as u64;
                }
                Ok::<_, TransportError>((receiver, count, bytes))
            })
            .await
            .map_err(|e| TransportError::Remote(format!("snapshot stream task: {e}")))?;
            let (receiver, frames, bytes) = streamed?;
            let resp = receiver.finish().await.map_err(|e| remote(target, e))?;
            drop(abandoned);
            router.check(from, target)?;
            router.lock().deliveries.push(SnapshotDelivery {
                from,
                to: target,
                frames,
                bytes,
                last_log_index,
                installed: resp.vote == vote,
            });
            Ok(resp)
        })
    }
}

/// The runtime a member's tasks run on. Dropping it drops those tasks
/// without waiting for them (a blocking wait is not allowed where a test's
/// cluster is dropped: inside its own runtime).
#[derive(Debug)]
struct MemberRuntime(Option<tokio::runtime::Runtime>);

impl Drop for MemberRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// An in-process cluster. Methods take `&self`, so a test may share it
/// (`Arc<Cluster>`) between a writer task and the code that kills or
/// isolates members.
#[derive(Debug)]
pub struct Cluster {
    router: Arc<Router>,
    /// The runtime of every running member.
    runtimes: Mutex<BTreeMap<NodeId, MemberRuntime>>,
    /// Every member's configuration, for restarts.
    configs: BTreeMap<NodeId, Config>,
    /// Removed last: every store is dropped (or shut down) before it.
    root: TempDir,
}

/// The configuration the harness gives member `id` of a cluster under `root`.
fn member_config(root: &TempDir, id: NodeId) -> Config {
    let mut config = Config::new(root.path().join(format!("node-{id}")))
        .node_id(id)
        .advertise_addr(format!("node-{id}"))
        .bootstrap(if id == 1 {
            Bootstrap::SingleNode
        } else {
            Bootstrap::Join
        });
    config.request_timeout = REQUEST_TIMEOUT;
    config.heartbeat_interval_ms = HEARTBEAT_INTERVAL_MS;
    config.election_timeout_min_ms = ELECTION_TIMEOUT_MIN_MS;
    config.election_timeout_max_ms = ELECTION_TIMEOUT_MAX_MS;
    config
}

impl Cluster {
    /// Starts `size` members with the harness defaults and makes them all
    /// voters. Member 1 bootstraps and is the first leader.
    pub async fn start(size: u64) -> anyhow::Result<Cluster> {
        Self::start_with(size, |_| {}).await
    }

    /// Like [`Cluster::start`], with `tune` applied to every member's
    /// configuration (e.g. a small `snapshot_after_logs`).
    pub async fn start_with(size: u64, tune: impl Fn(&mut Config)) -> anyhow::Result<Cluster> {
        if size == 0 {
            bail!("a cluster needs at least one member");
        }
        let root = tempfile::Builder::new()
            .prefix("coffer-cluster-")
            .tempdir()
            .context("creating the cluster's temporary directory")?;
        let configs = (1..=size)
            .map(|id| {
                let mut config = member_config(&root, id);
                tune(&mut config);
                (id, config)
            })
            .collect();
        let cluster = Cluster {
            router: Arc::new(Router::default()),
            runtimes: Mutex::new(BTreeMap::new()),
            configs,
            root,
        };
        for id in 1..=size {
            cluster.open(id).await?;
        }
        cluster.form().await?;
        Ok(cluster)
    }

    /// Opens member `id` from its directory and connects it to the router.
    async fn open(&self, id: NodeId) -> anyhow::Result<()> {
        self.open_with(id, false).await
    }

    /// Reopens stopped or killed member `id` with `force_new_cluster`:
    /// it becomes the only voter of what its log holds.
    pub async fn restart_forced(&self, id: NodeId) -> anyhow::Result<()> {
        if self.router.lock().live.contains_key(&id) {
            bail!("node {id} is already running");
        }
        self.open_with(id, true).await
    }

    async fn open_with(&self, id: NodeId, force_new_cluster: bool) -> anyhow::Result<()> {
        let mut config = self
            .configs
            .get(&id)
            .ok_or_else(|| anyhow!("node {id} is not a member of this cluster"))?
            .clone();
        config.force_new_cluster = force_new_cluster;
        let config = &config;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("coffer-node-{id}"))
            .enable_all()
            .build()
            .with_context(|| format!("starting node {id}'s runtime"))?;
        // Dropped without blocking, even when the open fails.
        let mut runtime = MemberRuntime(Some(runtime));
        let deadline = Instant::now() + WAIT_TIMEOUT;
        let store = loop {
            let transport = Arc::new(NodeTransport {
                from: id,
                router: self.router.clone(),
            });
            // Opened on the member's runtime, so that Raft's tasks run there.
            let Some(rt) = runtime.0.as_ref() else {
                bail!("node {id}'s runtime is gone");
            };
            let opening = rt.spawn(Store::open_with_transport(config.clone(), transport));
            match opening
                .await
                .with_context(|| format!("opening node {id}: the task failed"))?
            {
                Ok(store) => break store,
                // A handle from before a kill (an RPC or a test still
                // holding it) keeps RocksDB's lock until it is dropped.
                Err(OpenError::Engine(msg))
                    if msg.contains("lock") && Instant::now() < deadline =>
                {
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
                Err(e) => return Err(e).with_context(|| format!("opening node {id}")),
            }
        };
        self.router.lock().live.insert(id, store);
        self.runtimes_lock()
            .insert(id, MemberRuntime(runtime.0.take()));
        Ok(())
    }

    fn runtimes_lock(&self) -> MutexGuard<'_, BTreeMap<NodeId, MemberRuntime>> {
        self.runtimes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Member 1 adds every other member as a learner (waiting for each to
    /// catch up), then makes all of them voters.
    async fn form(&self) -> anyhow::Result<()> {
        let first = self.store(1)?;
        for (&id, config) in self.configs.range(2..) {
            first
                .add_learner(id, &config.advertise_addr)
                .await
                .with_context(|| format!("adding node {id} as a learner"))?;
        }
        let voters: BTreeSet<NodeId> = self.configs.keys().copied().collect();
        first
            .change_membership(voters.clone())
            .await
            .context("making every member a voter")?;
        drop(first);
        for id in self.ids() {
            let want = voters.clone();
            self.store(id)?
                .raft()
                .wait(Some(WAIT_TIMEOUT))
                .metrics(
                    move |m| {
                        m.current_leader.is_some()
                            && m.membership_config
                                .membership()
                                .voter_ids()
                                .collect::<BTreeSet<_>>()
                                == want
                    },
                    format!("node {id} sees the full membership"),
                )
                .await
                .with_context(|| format!("node {id} did not join"))?;
        }
        Ok(())
    }

    /// Every member's id, live or not.
    pub fn ids(&self) -> Vec<NodeId> {
        self.configs.keys().copied().collect()
    }

    /// Member `id`'s configuration.
    pub fn config(&self, id: NodeId) -> anyhow::Result<&Config> {
        self.configs
            .get(&id)
            .ok_or_else(|| anyhow!("node {id} is not a member of this cluster"))
    }

    /// A handle on running member `id` (isolated or not).
    pub fn store(&self, id: NodeId) -> anyhow::Result<Store> {
        self.router
            .lock()
            .live
            .get(&id)
            .cloned()
            .ok_or_else(|| anyhow!("node {id} is not running"))
    }

    /// Member `id`'s Raft metrics.
    pub fn metrics(&self, id: NodeId) -> anyhow::Result<RaftMetrics<NodeId, BasicNode>> {
        Ok(self.store(id)?.metrics())
    }

    /// Running members that are not isolated.
    pub fn reachable(&self) -> Vec<NodeId> {
        let st = self.router.lock();
        st.live
            .keys()
            .filter(|id| !st.isolated.contains(id))
            .copied()
            .collect()
    }

    /// Takes running member `id` off the network: RPCs to it fail from now.
    fn take_running(&self, id: NodeId) -> anyhow::Result<Store> {
        self.router
            .lock()
            .live
            .remove(&id)
            .ok_or_else(|| anyhow!("node {id} is not running"))
    }

    /// Crashes member `id`: every one of its tasks is dropped wherever it
    /// is, no shutdown code runs and nothing is flushed; its directory
    /// stays as the crash left it. RPCs to it fail as unreachable.
    pub fn kill(&self, id: NodeId) -> anyhow::Result<()> {
        let store = self.take_running(id)?;
        drop(store);
        let runtime = self.runtimes_lock().remove(&id);
        drop(runtime);
        Ok(())
    }

    /// Stops member `id` gracefully (Raft shut down, the directory
    /// released); RPCs to it then fail as unreachable.
    pub async fn stop(&self, id: NodeId) -> anyhow::Result<()> {
        let store = self.take_running(id)?;
        let stopped = store
            .shutdown()
            .await
            .with_context(|| format!("shutting node {id} down"));
        let runtime = self.runtimes_lock().remove(&id);
        drop(runtime);
        stopped
    }

    /// Reopens killed member `id` from its directory.
    pub async fn restart(&self, id: NodeId) -> anyhow::Result<()> {
        if self.router.lock().live.contains_key(&id) {
            bail!("node {id} is already running");
        }
        self.open(id).await
    }

    /// Cuts member `id` off: RPCs to it and from it fail as unreachable.
    pub fn isolate(&self, id: NodeId) {
        self.router.lock().isolated.insert(id);
    }

    /// Reconnects member `id`.
    pub fn heal(&self, id: NodeId) {
        self.router.lock().isolated.remove(&id);
    }

    /// Makes every snapshot frame take `delay` to cross the network, so a
    /// stream can outlast the election timeout.
    pub fn set_snapshot_frame_delay(&self, delay: Duration) {
        self.router.lock().snapshot_frame_delay = delay;
    }

    /// Snapshots streamed to member `to` so far, installed or refused.
    pub fn snapshot_deliveries(&self, to: NodeId) -> Vec<SnapshotDelivery> {
        self.router
            .lock()
            .deliveries
            .iter()
            .filter(|d| d.to == to)
            .cloned()
            .collect()
    }

    /// The reachable member that believes it leads in the highest term, if
    /// any, without waiting. Other members may not have heard of it yet.
    pub fn current_leader(&self) -> Option<NodeId> {
        let st = self.router.lock();
        st.live
            .iter()
            .filter(|(id, _)| !st.isolated.contains(id))
            .map(|(&id, store)| (id, store.metrics()))
            .filter(|(id, m)| m.state == ServerState::Leader && m.current_leader == Some(*id))
            .max_by_key(|(_, m)| m.current_term)
            .map(|(id, _)| id)
    }

    /// Waits until one of the members `among` (all running) is leader and
    /// every one of them follows it in the same term.
    pub async fn leader_among(&self, among: &[NodeId]) -> anyhow::Result<NodeId> {
        let deadline = Instant::now() + WAIT_TIMEOUT;
        loop {
            let metrics = among
                .iter()
                .map(|&id| self.metrics(id))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let agreed = metrics.iter().find_map(|lead| {
                let leads = lead.state == ServerState::Leader
                    && lead.current_leader == Some(lead.id)
                    && metrics.iter().all(|m| {
                        m.current_leader == Some(lead.id) && m.current_term == lead.current_term
                    });
                leads.then_some(lead.id)
            });
            if let Some(id) = agreed {
                return Ok(id);
            }
            if Instant::now() >= deadline {
                let seen: Vec<_> = metrics
                    .iter()
                    .map(|m| (m.id, m.state, m.current_term, m.current_leader))
                    .collect();
                bail!("no agreed leader among {among:?} within {WAIT_TIMEOUT:?}: (id, state, term, leader) = {seen:?}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits for a leader that every reachable member follows.
    pub async fn leader(&self) -> anyhow::Result<NodeId> {
        self.leader_among(&self.reachable()).await
    }

    /// Waits until member `id` has applied log index `index`.
    pub async fn wait_applied(&self, id: NodeId, index: u64) -> anyhow::Result<()> {
        self.store(id)?
            .raft()
            .wait(Some(WAIT_TIMEOUT))
            .applied_index_at_least(Some(index), format!("node {id} applies {index}"))
            .await
            .with_context(|| format!("node {id} did not apply log index {index}"))?;
        Ok(())
    }

    /// Waits for an agreed leader among the reachable members and until
    /// each of them has applied everything the leader had applied when
    /// asked. Returns that log index.
    pub async fn wait_converged(&self) -> anyhow::Result<u64> {
        let leader = self.leader().await?;
        let index = self
            .metrics(leader)?
            .last_applied
            .map_or(0, |log_id| log_id.index);
        for id in self.reachable() {
            self.wait_applied(id, index).await?;
        }
        Ok(index)
    }

    /// Runs `op` on whichever reachable member leads, retrying (until
    /// [`WAIT_TIMEOUT`]) while there is no leader, the leader is stale, a
    /// commit timed out or the member was stopped under it. Returns the
    /// leader that acknowledged and `op`'s result.
    ///
    /// A retried write may have been committed by the attempt that timed
    /// out: use it with idempotent operations.
    pub async fn on_leader<T, F, Fut>(&self, mut op: F) -> anyhow::Result<(NodeId, T)>
    where
        F: FnMut(Store) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let deadline = Instant::now() + WAIT_TIMEOUT;
        let mut last_error = None;
        loop {
            let target = self
                .current_leader()
                .and_then(|id| Some((id, self.store(id).ok()?)));
            if let Some((id, store)) = target {
                match op(store).await {
                    Ok(v) => return Ok((id, v)),
                    Err(e) if e.is_retryable() || matches!(e, Error::Stopped) => {
                        last_error = Some(format!("node {id}: {e}"));
                    }
                    Err(e) => return Err(e).with_context(|| format!("on leader {id}")),
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "no leader completed the request within {WAIT_TIMEOUT:?}; last error: {}",
                    last_error.as_deref().unwrap_or("no leader found")
                );
            }
            tokio::time::sleep(RETRY_BACKOFF).await;
        }
    }

    /// Puts `key` = `value` through the leader (see [`Cluster::on_leader`]);
    /// returns the revision.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> anyhow::Result<u64> {
        let (_, revision) = self
            .on_leader(|store| {
                let (key, value) = (key.to_vec(), value.to_vec());
                async move { store.put(&key, &value).await }
            })
            .await?;
        Ok(revision)
    }

    /// Shuts every running member down cleanly.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let stores = std::mem::take(&mut self.router.lock().live);
        for (id, store) in stores {
            store
                .shutdown()
                .await
                .with_context(|| format!("shutting node {id} down"))?;
        }
        let runtimes = std::mem::take(&mut *self.runtimes_lock());
        drop(runtimes);
        drop(self.root);
        Ok(())
    }
}
