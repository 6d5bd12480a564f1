//! `coffer server`: a node's lifecycle in one place (as mini-redis's
//! server): take the data directory's lock, open the store, serve the
//! gRPC services on `<data-dir>/coffer.sock`, and on SIGTERM or SIGINT stop
//! taking connections, end open watches, let requests in flight finish
//! (for a bounded time), close the store and remove the socket.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use coffer_store::{Config, Store};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::server::Router;
use tonic::transport::Server;
use tracing::{info, warn};

use crate::kv::KvService;
use crate::lock::DataDirLock;
use crate::pb::kv_server::KvServer;
use crate::signals::Interrupts;

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

/// `coffer server`'s settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
}

/// Every gRPC service over `store`; `stopping` ends long-lived streams.
pub fn router(store: &Store, stopping: watch::Receiver<bool>) -> Router {
    let kv = KvServer::new(KvService::new(store.clone(), stopping))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    Server::builder()
        .timeout(REQUEST_TIMEOUT)
        .max_concurrent_streams(CONCURRENT_STREAMS_MAX)
        .add_service(kv)
}

/// Runs the server until SIGTERM or SIGINT.
pub async fn run(config: ServerConfig) -> Result<()> {
    let dir = &config.data_dir;
    // Listening first: a signal that comes while the store opens still
    // stops the server cleanly once it is open.
    let mut signals = Interrupts::listen()?;
    let lock = DataDirLock::acquire(dir).context("refusing to start a second server")?;
    let store = Store::open(Config::new(dir))
        .await
        .with_context(|| format!("opening the store in {}", dir.display()))?;
    let socket = dir.join(SOCKET_FILE);
    let listener = match bind_private(&socket) {
        Ok(listener) => listener,
        Err(e) => {
            store.shutdown().await.ok();
            return Err(e);
        }
    };
    let (stop, stopping) = watch::channel(false);
    let mut served = {
        let mut stopping = stopping.clone();
        tokio::spawn(
            router(&store, stopping.clone()).serve_with_incoming_shutdown(
                UnixListenerStream::new(listener),
                async move {
                    let _ = stopping.wait_for(|stop| *stop).await;
                },
            ),
        )
    };
    info!(
        node = store.node_id(),
        socket = %socket.display(),
        "coffer server is up: `coffer --data-dir {}` commands reach it",
        dir.display()
    );

    let outcome = tokio::select! {
        () = signals.next() => {
            info!("stopping: finishing requests in flight");
            let _ = stop.send(true);
            match tokio::time::timeout(DRAIN_TIMEOUT, &mut served).await {
                Ok(result) => flatten(result),
                Err(_) => {
                    warn!("requests still open after {DRAIN_TIMEOUT:?}; closing them");
                    served.abort();
                    Ok(())
                }
            }
        }
        result = &mut served => flatten(result).and_then(|()| bail!("the gRPC server stopped on its own")),
    };
    if let Err(e) = fs::remove_file(&socket) {
        warn!(socket = %socket.display(), "removing the socket: {e}");
    }
    store.shutdown().await.context("closing the store")?;
    drop(lock);
    info!("stopped");
    outcome
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
fn bind_private(socket: &Path) -> Result<UnixListener> {
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
