//! A manager that restarted autolocked (`coffer server --autolock`): its
//! keyring is sealed under the cluster's unlock key, so until `coffer
//! unlock` gives it, the node can open neither its store nor its TLS key.
//! Meanwhile its socket serves health and `Cluster.Unlock`; every other
//! call answers `FAILED_PRECONDITION` with [`LOCKED`], and its port is not
//! served. A wrong key is refused after a delay that doubles with each
//! wrong attempt in a row (attempts are taken one at a time).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use coffer_store::{LocalKeys, OpenError, UnlockKey};
use tokio::sync::{oneshot, watch, Mutex};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::pb;
use crate::pb::cluster_server::ClusterServer;
use crate::server::{bind_private, builder, health_and_reflection, until_stopped, SOCKET_FILE};
use crate::signals::Interrupts;
use crate::worker::{Refuse, KV, SECRETS, TASKS};

/// What a locked node answers.
pub const LOCKED: &str = "this node is locked (autolock): unlock it with the cluster's unlock key: `coffer unlock` (it reads the key from a prompt or standard input)";

/// The first wrong key's delay, doubled for each further one in a row...
const WRONG_KEY_DELAY: Duration = Duration::from_millis(250);
/// ... up to this.
const WRONG_KEY_DELAY_MAX: Duration = Duration::from_secs(10);

/// `Cluster` on a locked node: `Unlock` alone.
struct LockedCluster {
    dir: PathBuf,
    /// Wrong keys in a row; the lock also takes attempts one at a time.
    wrong: Mutex<u32>,
    unlocked: Mutex<Option<oneshot::Sender<UnlockKey>>>,
}

fn locked<T>() -> Result<Response<T>, Status> {
    Err(Status::failed_precondition(LOCKED))
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for Arc<LockedCluster> {
    type SaveSnapshotStream = crate::cluster::SnapshotFrames;

    async fn save_snapshot(
        &self,
        _: Request<pb::SaveSnapshotRequest>,
    ) -> Result<Response<Self::SaveSnapshotStream>, Status> {
        locked()
    }

    async fn rotate_ca(
        &self,
        _: Request<pb::RotateCaRequest>,
    ) -> Result<Response<pb::RootCaResponse>, Status> {
        locked()
    }

    async fn rotate_key(
        &self,
        _: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::KeyStatusResponse>, Status> {
        locked()
    }

    async fn key_status(
        &self,
        _: Request<pb::KeyStatusRequest>,
    ) -> Result<Response<pb::KeyStatusResponse>, Status> {
        locked()
    }

    async fn root_ca(
        &self,
        _: Request<pb::RootCaRequest>,
    ) -> Result<Response<pb::RootCaResponse>, Status> {
        locked()
    }
    async fn join(
        &self,
        _: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        locked()
    }
    async fn add_member(
        &self,
        _: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::AddMemberResponse>, Status> {
        locked()
    }
    async fn join_token(
        &self,
        _: Request<pb::JoinTokenRequest>,
    ) -> Result<Response<pb::JoinTokenResponse>, Status> {
        locked()
    }
    async fn list_nodes(
        &self,
        _: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        locked()
    }
    async fn remove_node(
        &self,
        _: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        locked()
    }
    async fn set_role(
        &self,
        _: Request<pb::SetRoleRequest>,
    ) -> Result<Response<pb::SetRoleResponse>, Status> {
        locked()
    }
    async fn renew(
        &self,
        _: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        locked()
    }

    async fn unlock_key(
        &self,
        _: Request<pb::UnlockKeyRequest>,
    ) -> Result<Response<pb::UnlockKeyResponse>, Status> {
        locked()
    }
    async fn update_cluster(
        &self,
        _: Request<pb::UpdateClusterRequest>,
    ) -> Result<Response<pb::UpdateClusterResponse>, Status> {
        locked()
    }

    async fn unlock(
        &self,
        request: Request<pb::UnlockRequest>,
    ) -> Result<Response<pb::UnlockResponse>, Status> {
        let key = UnlockKey::parse(&request.into_inner().key)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut wrong = self.wrong.lock().await;
        let (dir, tried) = (self.dir.clone(), key.clone());
        let opened = tokio::task::spawn_blocking(move || LocalKeys::open_with(&dir, Some(&tried)))
            .await
            .map_err(|e| Status::internal(format!("checking the unlock key: {e}")))?;
        match opened {
            Ok(_) => {
                let Some(unlocked) = self.unlocked.lock().await.take() else {
                    return Err(Status::failed_precondition(
                        "this node is unlocking already",
                    ));
                };
                *wrong = 0;
                let _ = unlocked.send(key);
                info!("unlocked: opening the store");
                Ok(Response::new(pb::UnlockResponse {}))
            }
            Err(OpenError::WrongUnlockKey { .. }) => {
                *wrong = wrong.saturating_add(1);
                let delay = WRONG_KEY_DELAY
                    .saturating_mul(1 << (*wrong - 1).min(6))
                    .min(WRONG_KEY_DELAY_MAX);
                warn!(attempts = *wrong, "a wrong unlock key");
                tokio::time::sleep(delay).await;
                Err(Status::permission_denied(
                    "wrong unlock key: this node's keys are sealed under another one",
                ))
            }
            Err(e) => Err(Status::internal(format!("opening the keys: {e}"))),
        }
    }
}

/// How often [`follow_unlock_key`] reads the setting even when its watch
/// saw no change.
const RECHECK: Duration = Duration::from_secs(5);

/// Keeps this manager's keyring sealed as the cluster's autolock setting
/// says: under its unlock key (sealed anew when the key is rotated, or
/// when this manager joined an autolocked cluster), or under `keys/kek`
/// once autolock is off. `sealed_under` is the key it is sealed under
/// now. Checks on every change to the setting and every [`RECHECK`];
/// a failure is logged and tried again then. Once `stopping` says so
/// (never in the middle of a sealing) it returns the key the keyring is
/// sealed under then.
pub(crate) async fn follow_unlock_key(
    store: coffer_store::Store,
    dir: PathBuf,
    mut sealed_under: Option<UnlockKey>,
    stopping: watch::Receiver<bool>,
) -> Option<UnlockKey> {
    use futures::FutureExt;
    loop {
        let mut changes = store.watch(coffer_vault::autolock::key(), 0).ok();
        match coffer_vault::autolock::setting(&store).await {
            // Never set: the keyring stays as it is.
            Ok(None) => {}
            Ok(Some(wanted)) => {
                let same = match (&wanted, &sealed_under) {
                    (Some(a), Some(b)) => a.same_as(b),
                    (None, None) => true,
                    _ => false,
                };
                if !same {
                    let (at, from, to) = (dir.clone(), sealed_under.clone(), wanted.clone());
                    let resealed = tokio::task::spawn_blocking(move || {
                        coffer_store::reseal_keyring(&at, from.as_ref(), to.as_ref())
                    })
                    .await;
                    match resealed {
                        Ok(Ok(())) => {
                            match &wanted {
                                Some(_) => info!("sealed this node's keys under the cluster's current unlock key"),
                                None => info!("autolock is off: this node's keys are sealed under keys/kek again"),
                            }
                            sealed_under = wanted;
                        }
                        Ok(Err(e)) => warn!("sealing this node's keys as autolock says: {e}"),
                        Err(e) => warn!("sealing this node's keys as autolock says: {e}"),
                    }
                }
            }
            Err(e) => tracing::debug!("reading the autolock setting: {e}"),
        }
        let changed = async {
            match changes.as_mut() {
                Some(w) => {
                    let _ = w.next().await;
                    while let Some(Ok(_)) = w.next().now_or_never() {}
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = until_stopped(stopping.clone()) => return sealed_under,
            () = changed => {}
            () = tokio::time::sleep(RECHECK) => {}
        }
    }
}

/// Serves the locked socket of the data directory `dir` until an unlock
/// (the key) or SIGTERM/SIGINT (`None`).
pub(crate) async fn until_unlocked(
    dir: &Path,
    signals: &mut Interrupts,
) -> Result<Option<UnlockKey>> {
    let (unlocked_tx, unlocked_rx) = oneshot::channel();
    let cluster = Arc::new(LockedCluster {
        dir: dir.to_path_buf(),
        wrong: Mutex::new(0),
        unlocked: Mutex::new(Some(unlocked_tx)),
    });
    let (health, reflection) = health_and_reflection(false).await?;
    let socket = dir.join(SOCKET_FILE);
    let unix = bind_private(&socket)?;
    let (stop, stopping) = watch::channel(false);
    let served = builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(ClusterServer::new(cluster))
        .add_service(Refuse::<KV>(LOCKED))
        .add_service(Refuse::<SECRETS>(LOCKED))
        .add_service(Refuse::<TASKS>(LOCKED))
        .serve_with_incoming_shutdown(UnixListenerStream::new(unix), until_stopped(stopping));
    let served = tokio::spawn(served);
    warn!(socket = %socket.display(), "{LOCKED}");
    let key = tokio::select! {
        () = signals.next() => None,
        key = unlocked_rx => key.ok(),
    };
    let _ = stop.send(true);
    served
        .await
        .context("the locked socket's server")?
        .context("serving the locked socket")?;
    let _ = std::fs::remove_file(&socket);
    Ok(key)
}

/// Seals the keyring of `dir`, now sealed under the unlock key `key`,
/// under `keys/kek` again: autolock is for managers (as in Swarm), and a
/// worker, which holds no replica, must start without a key. Done when a
/// manager is demoted, and when a worker finds its keys still sealed
/// under the unlock key (it was killed between its demotion and this).
pub(crate) async fn seal_for_worker(dir: &Path, key: UnlockKey) -> Result<()> {
    let at = dir.to_path_buf();
    tokio::task::spawn_blocking(move || coffer_store::reseal_keyring(&at, Some(&key), None))
        .await
        .context("sealing this node's keys for a worker")?
        .context("sealing this node's keys for a worker")?;
    info!("a worker is not autolocked: this node's keys are sealed under keys/kek again");
    Ok(())
}
