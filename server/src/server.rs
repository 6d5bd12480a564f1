//! `coffer server`: a node's lifecycle in one place (as mini-redis's
//! server): take the data directory's lock, open the store, load (or on a
//! new cluster create) the cluster's CA and this node's certificate, serve
//! the gRPC services on the node's TCP port (mTLS) and on
//! `<data-dir>/coffer.sock`, and on SIGTERM or SIGINT stop taking
//! connections, end open watches, let requests in flight finish (for a
//! bounded time), close the store and remove the socket.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use coffer_store::{Config, Store, UnlockKey};
use std::sync::Arc;

use coffer_store::Bootstrap;
use coffer_vault::ca::{Role, RootCa};
use coffer_vault::cluster::Cluster;
use coffer_vault::config::ClusterConfig;
use coffer_vault::nodes::NodeRecord;
use coffer_vault::tokens::JoinTokens;
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::Router;
use tonic::transport::Server;
use tonic_health::pb::health_server::HealthServer;
use tonic_reflection::pb::v1::server_reflection_server::ServerReflectionServer;
use tracing::{debug, info, warn};

use crate::agent::{Agent, Verdict};
use crate::auth::{Guard, Removed};
use crate::cluster::ClusterService;
use crate::identity;
use crate::kv::KvService;
use crate::lock::DataDirLock;
use crate::mounts::{Mounts, Source};
use crate::pb;
use crate::pb::cluster_server::ClusterServer;
use crate::pb::kv_server::KvServer;
use crate::pb::raft_server::RaftServer;
use crate::pb::secrets_server::SecretsServer;
use crate::pb::tasks_server::TasksServer;
use crate::raft::{GrpcTransport, RaftService, RAFT_MESSAGE_BYTES_MAX};
use crate::secrets::SecretsService;
use crate::signals::Interrupts;
use crate::tasks::TasksService;
use crate::tls::{self, NodeCertResolver};

/// The local CLI's socket, in the data directory.
pub const SOCKET_FILE: &str = "coffer.sock";
/// The largest gRPC message either way: a request the store accepts
/// (1.5 MiB) or a `Range` page (4 MiB of keys and values), with room for
/// framing.
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;
/// A request's deadline when the client sets none (the store times its
/// own writes out sooner).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Requests one connection may have in flight.
const CONCURRENT_STREAMS_MAX: u32 = 1024;
/// How long a stopping server waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Where `coffer server` listens when `--listen` is not given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:6465";
/// TLS handshakes in progress at once; connections past this wait in the
/// kernel's backlog.
const HANDSHAKES_MAX: usize = 256;
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `coffer server`'s settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    /// The node's TCP port (mTLS): `host:port`; port 0 picks a free one.
    pub listen: String,
    /// The address other nodes reach this one at (default: the address
    /// `listen` bound).
    pub advertise: Option<String>,
    /// Join the cluster of the node at this address, with this token (on
    /// a data directory that holds no identity yet).
    pub join: Option<JoinConfig>,
    /// How long node certificates last, on a new cluster.
    pub cert_expiry: Option<Duration>,
    /// On a new cluster: seal the keys under a cluster unlock key
    /// (printed once), so that a restarted manager starts locked.
    pub autolock: bool,
    /// On a new cluster: the operator's own CA instead of a generated one.
    pub ca: Option<CaFiles>,
    /// Recovery from a lone surviving manager: it becomes the cluster's
    /// only member (`--force-new-cluster`).
    pub force_new_cluster: bool,
    /// When this manager rotates its data key on its own, and how fast a
    /// rotation re-encrypts.
    pub keys: KeyPolicy,
}

/// `--key-rotate-after`, `--key-rotate-records`, `--rekey-rate`.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyPolicy {
    pub rotate_after: Option<Duration>,
    pub rotate_after_records: Option<u64>,
    /// Records re-encrypted per second at most (default: the store's).
    pub rekey_rate: Option<u32>,
}

/// `--ca-cert F --ca-key K`: the operator's CA certificate and its key
/// (PEM files).
#[derive(Debug, Clone)]
pub struct CaFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `--join ADDR --token T`.
#[derive(Clone)]
pub struct JoinConfig {
    pub addr: String,
    pub token: String,
}

impl std::fmt::Debug for JoinConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinConfig")
            .field("addr", &self.addr)
            .field("token", &"[redacted]")
            .finish()
    }
}

/// How long a joining manager keeps asking to become a voter.
const BECOME_VOTER_PATIENCE: Duration = Duration::from_secs(600);

/// Who this node is at start-up.
pub(crate) enum Start {
    /// It has an identity: a restart.
    Known {
        node: u64,
        role: Role,
        trust: tls::Trust,
    },
    /// It just joined a cluster.
    Joined(crate::join::Joined),
    /// A new cluster (or a data directory from before identities), with
    /// the operator's own CA (checked) if one was given.
    First { own_ca: Option<RootCa> },
}

/// Reads the operator's own CA (`--ca-cert F --ca-key K`) and checks it
/// as [`RootCa::from_operator`] does, once, before anything is created;
/// the new cluster takes it under its id ([`RootCa::with_cluster_id`]).
fn read_own_ca(files: &CaFiles) -> Result<RootCa> {
    let cert_pem = fs::read(&files.cert)
        .with_context(|| format!("reading the CA certificate {}", files.cert.display()))?;
    let key_pem = zeroize::Zeroizing::new(
        fs::read(&files.key)
            .with_context(|| format!("reading the CA key {}", files.key.display()))?,
    );
    // As ssh does for private keys: a CA key others can read is worth a
    // word (it is sealed in the store from now on).
    if let Ok(meta) = fs::metadata(&files.key) {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            warn!(
                key = %files.key.display(),
                mode = format_args!("{mode:04o}"),
                "the CA key file is readable by others; its key is sealed in the store from now on: remove the file or keep it private"
            );
        }
    }
    RootCa::from_operator("unnamed", &cert_pem, &key_pem, unix_now()).with_context(|| {
        format!(
            "the CA in {} and {}",
            files.cert.display(),
            files.key.display()
        )
    })
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The store's services, without their transport-specific guards.
struct Services {
    kv: KvServer<KvService>,
    cluster: ClusterServer<ClusterService>,
    secrets: SecretsServer<SecretsService>,
    tasks: TasksServer<TasksService>,
}

/// The services without their transport-specific guards.
fn services(
    store: &Store,
    stopping: watch::Receiver<bool>,
    local: bool,
    leader: Option<GrpcTransport>,
    guard: Guard,
    mounts: Option<Mounts>,
) -> Services {
    let mut kv = KvService::new(store.clone(), stopping.clone());
    if let Some(transport) = leader.clone() {
        kv = kv.forwarding(transport);
    }
    let kv = KvServer::new(kv)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let secrets = SecretsServer::new(SecretsService::new(store.clone(), leader.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let tasks = TasksServer::new(TasksService::new(
        store.clone(),
        leader.clone(),
        mounts,
        stopping.clone(),
    ))
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let cluster = ClusterServer::new(ClusterService::new(store.clone(), local, leader, guard));
    Services {
        kv,
        cluster,
        secrets,
        tasks,
    }
}

/// The standard health service (the node, and on a manager the store's
/// services, reported serving while the server runs) and server
/// reflection over the `coffer.v1` descriptors.
pub(crate) async fn health_and_reflection(
    manager: bool,
) -> Result<(
    HealthServer<impl tonic_health::pb::health_server::Health>,
    ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
)> {
    let (reporter, health) = tonic_health::server::health_reporter();
    if manager {
        reporter.set_serving::<KvServer<KvService>>().await;
        reporter
            .set_serving::<ClusterServer<ClusterService>>()
            .await;
        reporter
            .set_serving::<SecretsServer<SecretsService>>()
            .await;
        reporter.set_serving::<TasksServer<TasksService>>().await;
    }
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("loading the API descriptors for reflection")?;
    Ok((health, reflection))
}

pub(crate) fn builder() -> Server {
    Server::builder()
        .timeout(REQUEST_TIMEOUT)
        .max_concurrent_streams(CONCURRENT_STREAMS_MAX)
}

/// Every service for a local caller (the Unix socket, or a command's
/// in-process server): no certificate checks, the socket's mode is the
/// guard.
pub async fn local_router(
    store: &Store,
    stopping: watch::Receiver<bool>,
    leader: Option<GrpcTransport>,
    mounts: Mounts,
) -> Result<Router> {
    let s = services(
        store,
        stopping,
        true,
        leader,
        Guard::default(),
        Some(mounts),
    );
    let (health, reflection) = health_and_reflection(true).await?;
    Ok(builder()
        .add_service(s.kv)
        .add_service(s.cluster)
        .add_service(s.secrets)
        .add_service(s.tasks)
        .add_service(health)
        .add_service(reflection))
}

/// Every service for the TCP port: the key/value store and Raft for this
/// cluster's managers only ([`Guard::managers_only`]), the cluster's CA, health
/// and reflection for anyone.
async fn tcp_router(
    store: &Store,
    cluster_id: &str,
    stopping: watch::Receiver<bool>,
    leader: Option<GrpcTransport>,
) -> Result<Router> {
    let removed = Removed::follow(store.clone(), stopping.clone()).await;
    let guard = Guard::new(removed, cluster_id);
    let s = services(store, stopping, false, leader, guard.clone(), None);
    let (health, reflection) = health_and_reflection(true).await?;
    let raft = RaftServer::new(RaftService::new(store.clone()))
        .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX);
    Ok(builder()
        .add_service(InterceptedService::new(s.kv, guard.managers_only()))
        .add_service(InterceptedService::new(raft, guard.managers_only()))
        .add_service(InterceptedService::new(s.secrets, guard.managers_only()))
        .add_service(InterceptedService::new(s.tasks, guard.nodes_only()))
        .add_service(s.cluster)
        .add_service(health)
        .add_service(reflection))
}

/// Accepts TCP connections and hands each to `tls` for its handshake;
/// the finished streams go to `ready`. Ends when `stopping` turns true.
async fn accept_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    ready: mpsc::Sender<TlsStream<TcpStream>>,
    stopping: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_MAX));
    loop {
        let permit = tokio::select! {
            () = until_stopped(stopping.clone()) => return,
            permit = handshakes.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let (tcp, peer) = tokio::select! {
            () = until_stopped(stopping.clone()) => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: back off, go on.
                    warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Small Raft answers and gRPC replies go out at once: Nagle's
        // algorithm against the peer's delayed ACKs costs 40 ms a round.
        if let Err(e) = tcp.set_nodelay(true) {
            debug!(%peer, "setting TCP_NODELAY: {e}");
        }
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = ready.send(stream).await;
                }
                Ok(Err(e)) => debug!(%peer, "TLS handshake failed: {e}"),
                Err(_) => debug!(%peer, "TLS handshake timed out"),
            }
            drop(permit);
        });
    }
}

pub(crate) async fn until_stopped(mut stopping: watch::Receiver<bool>) {
    // An error means the sender is gone: stop as well.
    let _ = stopping.wait_for(|stop| *stop).await;
}

/// Serves the node's TCP port (mTLS through `tls`, the services of
/// [`tcp_router`]) until `stopping` turns true; the returned future runs
/// it. With `leader`, writes and linearizable reads this member cannot
/// serve go to the leader through it. Client certificates must name the
/// cluster `cluster_id`.
pub async fn serve_port(
    store: &Store,
    cluster_id: &str,
    tls: Arc<rustls::ServerConfig>,
    tcp: TcpListener,
    stopping: watch::Receiver<bool>,
    leader: Option<GrpcTransport>,
) -> Result<impl std::future::Future<Output = Result<(), tonic::transport::Error>>> {
    let router = tcp_router(store, cluster_id, stopping.clone(), leader).await?;
    Ok(serve_tls(router, tls, tcp, stopping))
}

/// Serves `router` on `tcp` through `tls` until `stopping` turns true.
pub(crate) fn serve_tls(
    router: Router,
    tls: Arc<rustls::ServerConfig>,
    tcp: TcpListener,
    stopping: watch::Receiver<bool>,
) -> impl std::future::Future<Output = Result<(), tonic::transport::Error>> {
    let (ready, handshaken) = mpsc::channel(HANDSHAKES_MAX);
    tokio::spawn(accept_tls(tcp, tls, ready, stopping.clone()));
    router.serve_with_incoming_shutdown(
        ReceiverStream::new(handshaken).map(Ok::<_, std::io::Error>),
        until_stopped(stopping),
    )
}

/// Runs the server until SIGTERM or SIGINT (or until the cluster removes
/// this node), switching between manager and worker as the cluster
/// changes this node's role.
pub async fn run(config: ServerConfig) -> Result<()> {
    let dir = &config.data_dir;
    // Listening first: a signal that comes while the store opens still
    // stops the server cleanly once it is open.
    let mut signals = Interrupts::listen()?;
    let lock = DataDirLock::acquire(dir).context("refusing to start a second server")?;
    // The port first: its address is what the store's membership records.
    // One socket for the process's life; each role serves a copy of it.
    let listener = TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?
        .into_std()
        .context("the listening socket")?;
    let addr = listener.local_addr().context("the listening address")?;
    let advertise = config.advertise.clone().unwrap_or_else(|| addr.to_string());
    let mut force_new_cluster = config.force_new_cluster;
    let mut start_as = match (identity::on_disk(dir)?, &config.join) {
        (Some((cert, trust)), join) => {
            if join.is_some() {
                warn!("this data directory already belongs to a cluster: --join is ignored");
            }
            if config.cert_expiry.is_some() {
                warn!("--cert-expiry is set when a cluster is created: ignored");
            }
            if config.ca.is_some() {
                warn!("--ca-cert and --ca-key are used when a cluster is created: ignored (this cluster keeps its CA)");
            }
            if config.force_new_cluster
                && (cert.role != Role::Manager || !coffer_store::has_data(dir))
            {
                bail!(
                    "--force-new-cluster recovers a manager's data directory, and {} is a worker's: it holds no replica of the store",
                    dir.display()
                );
            }
            Start::Known {
                node: cert.node,
                role: cert.role,
                trust,
            }
        }
        (None, _) if config.force_new_cluster => bail!(
            "--force-new-cluster recovers a manager's data directory, and {} holds no cluster",
            dir.display()
        ),
        (None, Some(join)) => {
            Start::Joined(crate::join::join(&join.addr, &join.token, &advertise).await?)
        }
        (None, None) => Start::First {
            // Checked before the store is created: a CA that will not do
            // leaves nothing behind.
            own_ca: config.ca.as_ref().map(read_own_ca).transpose()?,
        },
    };
    loop {
        let tcp = TcpListener::from_std(listener.try_clone().context("the listening socket")?)
            .context("the listening socket")?;
        let role = match &start_as {
            Start::Known { role, .. } => *role,
            Start::Joined(joined) => joined.cert.role,
            Start::First { .. } => Role::Manager,
        };
        let ended = match role {
            Role::Worker => serve_worker(&config, tcp, &advertise, start_as, &mut signals).await?,
            Role::Manager => {
                // Forced once: a manager this process becomes again later
                // (demoted, then promoted) joins as any other.
                let force = std::mem::take(&mut force_new_cluster);
                serve_manager(&config, tcp, &advertise, start_as, force, &mut signals).await?
            }
        };
        match ended {
            Ended::Stopped => break,
            Ended::Removed(why) => {
                bail!("{why}; to join again, start on an empty data directory with a join token")
            }
            Ended::Switch(role) => {
                let Some((cert, trust)) = identity::on_disk(dir)? else {
                    bail!("switching to {role}: the new identity is not on disk");
                };
                if role == Role::Worker {
                    drop_replica(dir)?;
                }
                info!(%role, "serving as a {role} from now on");
                start_as = Start::Known {
                    node: cert.node,
                    role: cert.role,
                    trust,
                };
            }
        }
    }
    drop(lock);
    info!("stopped");
    Ok(())
}

/// A demoted manager's replica goes: a worker holds none. The keys stay
/// (the identity is sealed under them).
fn drop_replica(dir: &Path) -> Result<()> {
    for part in ["db", "snapshots"] {
        let path = dir.join(part);
        match fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    info!("dropped this node's replica of the store");
    Ok(())
}

async fn serve_worker(
    config: &ServerConfig,
    tcp: TcpListener,
    advertise: &str,
    start_as: Start,
    signals: &mut Interrupts,
) -> Result<Ended> {
    let known = matches!(start_as, Start::Known { .. });
    if known && coffer_store::is_autolocked(&config.data_dir)? {
        // Demoted while autolocked and killed before its keys were sealed
        // for a worker: unlocked once, then never again.
        match crate::locked::until_unlocked(&config.data_dir, signals).await? {
            Some(key) => crate::locked::seal_for_worker(&config.data_dir, key).await?,
            None => return Ok(Ended::Stopped),
        }
    }
    let running = crate::worker::start(config, tcp, advertise, start_as).await?;
    serve(signals, running).await
}

async fn serve_manager(
    config: &ServerConfig,
    tcp: TcpListener,
    advertise: &str,
    start_as: Start,
    force_new_cluster: bool,
    signals: &mut Interrupts,
) -> Result<Ended> {
    let dir = &config.data_dir;
    let (node, bootstrap) = match &start_as {
        Start::Known { node, .. } => (*node, Bootstrap::Join),
        Start::Joined(joined) => (joined.cert.node, Bootstrap::Join),
        Start::First { .. } => (1, Bootstrap::SingleNode),
    };
    let unlock_key = match &start_as {
        // Autolocked: nothing opens before `coffer unlock`.
        Start::Known { .. } if coffer_store::is_autolocked(dir)? => {
            match crate::locked::until_unlocked(dir, signals).await? {
                Some(key) => Some(key),
                None => return Ok(Ended::Stopped),
            }
        }
        Start::First { .. } if config.autolock => {
            let key = UnlockKey::generate();
            // As `docker swarm init --autolock` does: once, on standard
            // output (never in the log).
            println!(
                "Autolock is on. A restarted manager stays locked until it is given this unlock key (`coffer unlock`):\n\n    {}\n\nKeep it safe: without it a restarted manager cannot open its data.\n",
                key.to_text().as_str()
            );
            Some(key)
        }
        _ => None,
    };
    let transport = GrpcTransport::new();
    let mut store_config = Config::new(dir)
        .node_id(node)
        .bootstrap(bootstrap)
        .advertise_addr(advertise.to_string());
    let first_autolocked = matches!(start_as, Start::First { .. }) && unlock_key.is_some();
    let sealed_under = unlock_key.clone();
    store_config.unlock_key = unlock_key;
    store_config.force_new_cluster = force_new_cluster;
    store_config.rotate_key_after = config.keys.rotate_after;
    store_config.rotate_key_after_records = config.keys.rotate_after_records;
    if let Some(rate) = config.keys.rekey_rate {
        store_config.rekey_records_per_sec = rate;
    }
    // A key rotation seals this node's TLS key again before it deletes
    // the old data key.
    store_config.local_resealer = Some(crate::identity::resealer(dir));
    let store = Store::open_with_transport(store_config, Arc::new(transport.clone()))
        .await
        .with_context(|| format!("opening the store in {}", dir.display()))?;
    if force_new_cluster {
        if let Err(e) = crate::cluster::remove_other_managers(&store).await {
            store.shutdown().await.ok();
            return Err(e).context("removing the lost managers after --force-new-cluster");
        }
    }
    let running = match start(config, &store, tcp, advertise, &transport, start_as).await {
        Ok(running) => running,
        Err(e) => {
            store.shutdown().await.ok();
            return Err(e);
        }
    };
    if first_autolocked {
        // The cluster's record of its unlock key, which every manager
        // follows (and `coffer unlock-key` prints).
        if let Err(e) = coffer_vault::autolock::set_unlock_key(&store, sealed_under.as_ref()).await
        {
            let _ = running.stop.send(true);
            store.shutdown().await.ok();
            return Err(e).context("recording the cluster's unlock key");
        }
    }
    // Not one of the role's aborted tasks: it is stopped between sealings
    // and says what the keys are sealed under at the end.
    let (stop_following, following) = watch::channel(false);
    let follower = tokio::spawn(crate::locked::follow_unlock_key(
        store.clone(),
        dir.clone(),
        sealed_under,
        following,
    ));
    let ended = serve(signals, running).await;
    let _ = stop_following.send(true);
    let sealed_under = follower.await.context("following the autolock setting")?;
    store.shutdown().await.context("closing the store")?;
    if let (Ok(Ended::Switch(Role::Worker)), Some(key)) = (&ended, sealed_under) {
        crate::locked::seal_for_worker(dir, key).await?;
    }
    ended
}

/// Serves in one role until it ends, then removes the socket.
async fn serve(signals: &mut Interrupts, running: Running) -> Result<Ended> {
    let socket = running.socket.clone();
    let ended = until_signalled(signals, running).await;
    if let Err(e) = fs::remove_file(&socket) {
        warn!(socket = %socket.display(), "removing the socket: {e}");
    }
    ended
}

/// How a node's serving in one role ended.
#[derive(Debug)]
enum Ended {
    /// SIGTERM or SIGINT.
    Stopped,
    /// The cluster wants this node in another role.
    Switch(Role),
    /// The cluster removed this node.
    Removed(String),
}

/// A node serving in one role.
pub(crate) struct Running {
    pub served: Served,
    pub socket: PathBuf,
    pub stop: watch::Sender<bool>,
    pub agent: Agent,
    /// Tasks that end with the role (asking to become a voter).
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Serves until SIGTERM or SIGINT, or until the agent says the role
/// changed or the node was removed; then stops taking connections and
/// lets requests in flight finish for at most [`DRAIN_TIMEOUT`].
async fn until_signalled(signals: &mut Interrupts, running: Running) -> Result<Ended> {
    let Running {
        mut served,
        stop,
        agent,
        tasks,
        ..
    } = running;
    let ended = tokio::select! {
        () = signals.next() => {
            info!("stopping: finishing requests in flight");
            Ended::Stopped
        }
        verdict = agent.run() => match verdict {
            Verdict::Switch(role) => Ended::Switch(role),
            Verdict::Removed(why) => Ended::Removed(why),
        },
        result = &mut served => {
            for task in &tasks {
                task.abort();
            }
            return flatten(result).and_then(|()| bail!("the gRPC server stopped on its own"));
        }
    };
    for task in &tasks {
        task.abort();
    }
    let _ = stop.send(true);
    match tokio::time::timeout(DRAIN_TIMEOUT, &mut served).await {
        Ok(result) => flatten(result)?,
        Err(_) => {
            warn!("requests still open after {DRAIN_TIMEOUT:?}; closing them");
            served.abort();
        }
    }
    Ok(ended)
}

pub(crate) type Served = tokio::task::JoinHandle<Result<(), tonic::transport::Error>>;

/// Loads or creates the cluster and this node's identity, then serves the
/// TCP port and binds and serves the socket (once the socket answers, so
/// does the port).
async fn start(
    config: &ServerConfig,
    store: &Store,
    tcp: TcpListener,
    advertise: &str,
    transport: &GrpcTransport,
    start_as: Start,
) -> Result<Running> {
    let dir = &config.data_dir;
    let addr = tcp.local_addr().context("the listening address")?;
    let keys = store.local_keys();
    let first = matches!(start_as, Start::First { .. });
    let (identity, trust) = match start_as {
        Start::Known { trust, .. } => (identity::load(dir, &keys)?, trust),
        Start::Joined(joined) => {
            let trust = tls::Trust::of(&joined.ca_der);
            identity::save(dir, &keys, &joined.cert_der, &joined.key, &trust)?;
            remember_join_addr(config, &joined.managers)?;
            (identity::load(dir, &keys)?, trust)
        }
        Start::First { own_ca } => {
            let settings = match config.cert_expiry {
                Some(expiry) => ClusterConfig::new(expiry)?,
                None => ClusterConfig::default(),
            };
            let settings = ClusterConfig::init_or_load(store, settings)
                .await
                .context("recording the cluster's settings")?;
            let cluster = Cluster::init_or_load_with(store, |id| match &own_ca {
                Some(own) => Ok(own.with_cluster_id(id)),
                None => RootCa::generate(id),
            })
            .await
            .context("creating the cluster's CA")?;
            if let Some(ca_end) = cluster.ca.not_after() {
                let wanted = time::OffsetDateTime::now_utc() + settings.cert_expiry;
                if ca_end < wanted {
                    warn!(
                        ca_end = %ca_end,
                        "the cluster's CA ends before node certificates of --cert-expiry would: they end with it"
                    );
                }
            }
            let tokens = JoinTokens::init_or_load(store)
                .await
                .context("creating the join tokens")?;
            let identity = identity::load_or_issue(
                dir,
                &keys,
                &cluster.ca,
                store.node_id(),
                settings.cert_expiry,
            )?;
            if NodeRecord::load(store, store.node_id()).await?.is_none() {
                NodeRecord::active(store.node_id(), Role::Manager, advertise)?
                    .save(store)
                    .await
                    .context("recording this node")?;
            }
            let token = tokens.token(Role::Manager, &cluster.ca).to_token_string();
            // As `docker swarm init` does: the command that adds a manager,
            // on standard output (the token is a secret: never in the log).
            println!(
                "This node leads cluster {}. To add a manager to it, run on the new node:\n\n    coffer server --data-dir DIR --join {advertise} --token {}\n",
                cluster.ca.cluster_id(),
                token.as_str()
            );
            (identity, tls::Trust::of(cluster.ca.cert_der()))
        }
    };
    let client_tls = tls::client_config(&trust, Some((&identity.cert_der, &identity.key)))?;
    transport.set_client_config(client_tls.clone());
    let certs = NodeCertResolver::new(&identity.cert_der, &identity.key, &trust)?;
    let verifier = tls::ClientVerifier::new(&trust)?;
    let tls = tls::server_config(verifier.clone(), certs.clone())?;
    let socket = dir.join(SOCKET_FILE);
    let unix = bind_private(&socket)?;

    let (stop, stopping) = watch::channel(false);
    let mounts = Mounts::open(dir, Source::Store(store.clone()))?;
    let local = local_router(
        store,
        stopping.clone(),
        Some(transport.clone()),
        mounts.clone(),
    )
    .await?;
    let on_port = serve_port(
        store,
        &identity.cert.cluster_id,
        tls,
        tcp,
        stopping.clone(),
        Some(transport.clone()),
    )
    .await?;
    let on_socket =
        local.serve_with_incoming_shutdown(UnixListenerStream::new(unix), until_stopped(stopping));
    let served = tokio::spawn(async move { tokio::try_join!(on_socket, on_port).map(|_| ()) });
    let managers = identity::load_managers(dir)?;
    let mut tasks = vec![tokio::spawn(mounts.follow(stop.subscribe()))];
    if !first {
        // Joined, restarted or promoted: a voter at this address (a no-op
        // for a member that is one already).
        let mut candidates: Vec<String> = managers
            .iter()
            .filter(|m| *m != advertise)
            .cloned()
            .collect();
        candidates.push(advertise.to_string());
        let advertise = advertise.to_string();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = crate::join::become_voter(
                &candidates,
                &advertise,
                client_tls,
                BECOME_VOTER_PATIENCE,
            )
            .await
            {
                tracing::error!("{e:#}");
            }
        }));
    }
    info!(
        node = format_args!("{:016x}", store.node_id()),
        cluster = identity.cert.cluster_id,
        ca_digest = coffer_vault::ca::cert_digest(trust.current()),
        listen = %addr,
        advertise,
        socket = %socket.display(),
        "coffer server is up: `coffer --data-dir {}` commands reach it",
        dir.display()
    );
    let agent = Agent {
        dir: dir.clone(),
        keys,
        identity,
        trust,
        verifier,
        resolver: certs,
        transport: Some(transport.clone()),
        store: Some(store.clone()),
        managers,
        own: Some(advertise.to_string()),
    };
    Ok(Running {
        served,
        socket,
        stop,
        agent,
        tasks,
    })
}

/// A node that just joined asks the node it joined through first, then
/// the other managers the cluster named.
pub(crate) fn remember_join_addr(config: &ServerConfig, managers: &[String]) -> Result<()> {
    if let Some(join) = &config.join {
        if identity::load_managers(&config.data_dir)?.is_empty() {
            let mut known = vec![join.addr.clone()];
            known.extend(managers.iter().filter(|a| **a != join.addr).cloned());
            identity::save_managers(&config.data_dir, &known)?;
        }
    }
    Ok(())
}

fn flatten(
    result: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> Result<()> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e).context("the gRPC server failed"),
        Err(e) => bail!("the gRPC server task failed: {e}"),
    }
}

/// Binds the socket with mode 0600. A socket file already there is stale:
/// whoever made it no longer holds the data directory's lock, which the
/// caller holds.
///
/// The socket is bound in a fresh directory of mode 0700, given its mode
/// there, and only then renamed into place: even in a data directory that
/// others can enter, nobody can connect before the mode is set.
pub(crate) fn bind_private(socket: &Path) -> Result<UnixListener> {
    let dir = socket.parent().unwrap_or(Path::new("."));
    match fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("removing the stale {}", socket.display()))
        }
    }
    let private = dir.join(format!(".coffer.sock.{}", std::process::id()));
    // Left over by an earlier process with this pid: nothing in it matters.
    let _ = fs::remove_dir_all(&private);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .with_context(|| format!("creating {}", private.display()))?;
    let bound = (|| {
        let staged = private.join(SOCKET_FILE);
        let listener =
            UnixListener::bind(&staged).with_context(|| format!("binding {}", staged.display()))?;
        fs::set_permissions(&staged, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("setting the mode of {}", staged.display()))?;
        fs::rename(&staged, socket)
            .with_context(|| format!("moving the socket to {}", socket.display()))?;
        Ok(listener)
    })();
    let _ = fs::remove_dir_all(&private);
    bound
}
