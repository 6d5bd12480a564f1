//! How a CLI command reaches a store: through the socket of the server
//! that serves the data directory, or, when none runs, by opening the
//! directory itself and serving the same gRPC services in-process over an
//! in-memory pipe. Either way the command speaks gRPC, so one code path
//! serves both.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use coffer_store::{Config, Store};
use hyper_util::rt::TokioIo;
use tokio::io::DuplexStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint, Uri};

use coffer_vault::ca::MANAGER_SERVER_NAME;

use crate::lock::{DataDirLock, LockError};
use crate::pb::cluster_client::ClusterClient;
use crate::pb::kv_client::KvClient;
use crate::pb::secrets_client::SecretsClient;
use crate::pb::tasks_client::TasksClient;
use crate::server::{self, SOCKET_FILE};

/// How long a command waits for a server that holds the data directory's
/// lock but has not opened its socket yet (it is starting).
const STARTING_SERVER_WAIT: Duration = Duration::from_secs(15);
/// Connecting to a socket: local, so anything slower means trouble.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an idle or busy mTLS connection to a node is pinged.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// A ping unanswered this long closes the connection.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);
/// A request's deadline, sent to the server as `grpc-timeout`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Each direction of an in-process connection buffers this much.
const PIPE_BUFFER_BYTES: usize = 1 << 20;

/// Where a command goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// The server whose data directory this is (or the directory itself).
    DataDir(PathBuf),
    /// A server's socket, from `--host unix:///path`.
    Socket(PathBuf),
    /// A node's port, from `--host https://HOST:PORT`, reached over mTLS
    /// with the certificate of the node whose data directory is
    /// `identity`.
    Https { addr: String, identity: PathBuf },
}

impl Target {
    /// Parses `--host`: `unix:///path/to/coffer.sock` or
    /// `https://HOST:PORT` (presenting the certificate of the node whose
    /// data directory is `identity`).
    pub fn host(url: &str, identity: PathBuf) -> Result<Target> {
        if let Some(path) = url.strip_prefix("unix://") {
            if !path.starts_with('/') {
                bail!("--host {url:?}: a unix URL takes an absolute path, as unix:///var/lib/coffer/coffer.sock");
            }
            return Ok(Target::Socket(PathBuf::from(path)));
        }
        if let Some(rest) = url.strip_prefix("https://") {
            let addr = rest.trim_end_matches('/');
            let valid = addr
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid || addr.contains('/') {
                bail!("--host {url:?}: an https URL names a node's port, as https://10.0.0.1:6465");
            }
            return Ok(Target::Https {
                addr: addr.to_string(),
                identity,
            });
        }
        bail!("--host {url:?}: give unix:///path/to/coffer.sock or https://HOST:PORT")
    }
}

/// A connection to a store; [`Connection::close`] it when done.
#[derive(Debug)]
pub struct Connection {
    pub kv: KvClient<Channel>,
    pub cluster: ClusterClient<Channel>,
    pub secrets: SecretsClient<Channel>,
    pub tasks: TasksClient<Channel>,
    local: Option<Local>,
}

/// The store a command opened itself, and the in-process server over it.
#[derive(Debug)]
struct Local {
    store: Store,
    stop: watch::Sender<bool>,
    served: JoinHandle<Result<(), tonic::transport::Error>>,
    _lock: DataDirLock,
}

impl Connection {
    pub async fn open(target: &Target) -> Result<Connection> {
        match target {
            Target::Socket(path) => {
                let channel = connect_socket(path)
                    .await
                    .with_context(|| format!("connecting to {}", path.display()))?;
                Ok(Connection::remote(channel))
            }
            Target::DataDir(dir) => Connection::open_data_dir(dir).await,
            Target::Https { addr, identity } => {
                let config = node_client_config(identity)?;
                let channel = connect_tls(addr, config).await?;
                Ok(Connection::remote(channel))
            }
        }
    }

    fn remote(channel: Channel) -> Connection {
        Connection {
            kv: KvClient::new(channel.clone()).max_decoding_message_size(server::MAX_MESSAGE_BYTES),
            cluster: ClusterClient::new(channel.clone()),
            secrets: SecretsClient::new(channel.clone())
                .max_decoding_message_size(server::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(server::MAX_MESSAGE_BYTES),
            tasks: TasksClient::new(channel)
                .max_decoding_message_size(server::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(server::MAX_MESSAGE_BYTES),
            local: None,
        }
    }

    async fn open_data_dir(dir: &Path) -> Result<Connection> {
        let socket = dir.join(SOCKET_FILE);
        let deadline = Instant::now() + STARTING_SERVER_WAIT;
        loop {
            if let Ok(channel) = connect_socket(&socket).await {
                return Ok(Connection::remote(channel));
            }
            match DataDirLock::acquire(dir) {
                Ok(lock) => return Connection::serve_in_process(dir, lock).await,
                // The socket refused us while the lock is held: a server is
                // starting (or stopping), or another command has the
                // directory open. Wait for the socket a while.
                Err(e @ LockError::Busy { .. }) => {
                    if Instant::now() >= deadline {
                        return Err(e.into());
                    }
                }
                Err(e) => return Err(e.into()),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn serve_in_process(dir: &Path, lock: DataDirLock) -> Result<Connection> {
        // A node that joined a cluster has its own id, which its
        // certificate names.
        let node = crate::identity::on_disk(dir)?.map_or(1, |(cert, _)| cert.node);
        let mut config = Config::new(dir).node_id(node);
        config.local_resealer = Some(crate::identity::resealer(dir));
        let store = Store::open(config)
            .await
            .with_context(|| format!("opening the store in {}", dir.display()))?;
        let source = crate::mounts::Source::Store(store.clone());
        let connection = match crate::mounts::Mounts::open(dir, source) {
            Ok(mounts) => Connection::serve_store(store.clone(), lock, mounts).await,
            Err(e) => Err(e),
        };
        match connection {
            Ok(connection) => Ok(connection),
            Err(e) => {
                store.shutdown().await.ok();
                Err(e)
            }
        }
    }

    async fn serve_store(
        store: Store,
        lock: DataDirLock,
        mounts: crate::mounts::Mounts,
    ) -> Result<Connection> {
        // Each connection the channel makes is a fresh in-memory pipe whose
        // other end goes to the in-process server.
        let (pipes, accepted) = tokio::sync::mpsc::channel::<DuplexStream>(1);
        let (stop, stopping) = watch::channel(false);
        let router = server::local_router(&store, stopping.clone(), None, mounts).await?;
        let served = tokio::spawn(async move {
            let incoming = ReceiverStream::new(accepted).map(Ok::<_, std::io::Error>);
            let mut stopping = stopping;
            router
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stopping.wait_for(|stop| *stop).await;
                })
                .await
        });
        let channel = Endpoint::from_static("http://in-process")
            .timeout(REQUEST_TIMEOUT)
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let pipes = pipes.clone();
                async move {
                    let (client_io, server_io) = tokio::io::duplex(PIPE_BUFFER_BYTES);
                    pipes
                        .send(server_io)
                        .await
                        .map_err(|_| std::io::Error::other("the in-process server has stopped"))?;
                    Ok::<_, std::io::Error>(TokioIo::new(client_io))
                }
            }))
            .await
            .context("connecting to the in-process server")?;
        let mut connection = Connection::remote(channel);
        connection.local = Some(Local {
            store,
            stop,
            served,
            _lock: lock,
        });
        Ok(connection)
    }

    /// Closes the connection; a store opened in-process is shut down
    /// cleanly.
    pub async fn close(self) -> Result<()> {
        let Connection {
            kv,
            cluster,
            secrets,
            tasks,
            local,
        } = self;
        drop((kv, cluster, secrets, tasks));
        if let Some(local) = local {
            let _ = local.stop.send(true);
            match tokio::time::timeout(Duration::from_secs(10), local.served).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => return Err(e).context("the in-process server failed"),
                Ok(Err(e)) => bail!("the in-process server task failed: {e}"),
                Err(_) => bail!("the in-process server did not stop within 10 s"),
            }
            local.store.shutdown().await.context("closing the store")?;
        }
        Ok(())
    }
}

/// The mTLS client configuration of the node whose data directory is
/// `dir`: its certificate and key, trusting its cluster's CA alone.
fn node_client_config(dir: &Path) -> Result<rustls::ClientConfig> {
    let no_identity = || {
        format!(
            "{} holds no node identity: --host https://... presents the certificate of a node of that cluster; give its data directory with --identity",
            dir.display()
        )
    };
    let Some((_, trust)) = crate::identity::on_disk(dir).with_context(no_identity)? else {
        bail!(no_identity());
    };
    let keys = coffer_store::LocalKeys::open(dir)
        .with_context(|| format!("opening the keys in {}", dir.display()))?;
    let identity = crate::identity::load(dir, &keys)?;
    crate::tls::client_config(&trust, Some((&identity.cert_der, &identity.key)))
}

/// An endpoint for a node's TCP port and the connector that dials it over
/// mTLS with `config` (see [`crate::tls::client_config`]): it trusts the
/// cluster's CA alone, and the node must present a certificate for
/// `server_name` ([`MANAGER_SERVER_NAME`] for any manager).
fn tls_endpoint(
    addr: &str,
    config: std::sync::Arc<rustls::ClientConfig>,
    server_name: &str,
) -> Result<(
    Endpoint,
    impl tower::Service<
            Uri,
            Response = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
            Error = std::io::Error,
            Future = impl Send,
        > + Send
        + Clone
        + 'static,
)> {
    let connector = tokio_rustls::TlsConnector::from(config);
    let server_name = rustls::pki_types::ServerName::try_from(server_name.to_string())
        .context("the node's server name")?;
    let target = addr.to_string();
    // The scheme is http: TLS is this connector's, not tonic's.
    // HTTP/2 pings find a connection to a node that is cut off or paused
    // (no reset ever comes) within seconds; the channel then reconnects.
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let dial = tower::service_fn(move |_: Uri| {
        let connector = connector.clone();
        let server_name = server_name.clone();
        let target = target.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(&target).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Ok((endpoint, dial))
}

/// A channel to a node's TCP port over mTLS, connected now.
pub async fn connect_tls(addr: &str, config: rustls::ClientConfig) -> Result<Channel> {
    let (endpoint, dial) = tls_endpoint(addr, std::sync::Arc::new(config), MANAGER_SERVER_NAME)?;
    endpoint
        .timeout(REQUEST_TIMEOUT)
        .connect_with_connector(dial)
        .await
        .with_context(|| format!("connecting to {addr}"))
}

/// A channel to the port of a node that presents a certificate for
/// `server_name`, over mTLS; it connects on first use and reconnects after
/// failures (for the Raft transport).
pub fn lazy_tls_channel(
    addr: &str,
    config: std::sync::Arc<rustls::ClientConfig>,
    server_name: &str,
) -> Result<Channel> {
    let (endpoint, dial) = tls_endpoint(addr, config, server_name)?;
    Ok(endpoint.connect_with_connector_lazy(dial))
}

/// A channel over a Unix socket, connected now (so that a missing or dead
/// socket is found here, not at the first request).
async fn connect_socket(path: &Path) -> Result<Channel> {
    let url = format!("unix://{}", path.display());
    let channel = Endpoint::from_shared(url)?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .connect()
        .await?;
    Ok(channel)
}
