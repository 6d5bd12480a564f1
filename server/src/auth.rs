//! Who may call what on the node's TCP port, decided in one place from the
//! peer's certificate (which TLS has already verified against the
//! cluster's root CA, when one was presented) and the ids the cluster has
//! removed. The Unix socket needs none of this: its mode (0600) admits
//! only the server's own user.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use coffer_store::{Consistency, Store};
use coffer_vault::ca::{NodeCert, Role};
use coffer_vault::nodes::{NodeRecord, NodeState};
use coffer_vault::VaultError;
use thiserror::Error;
use tokio::sync::watch;
use tonic::service::Interceptor;
use tonic::{Request, Status};
use tracing::warn;

/// Why a call was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("this call needs a certificate from this cluster's CA, and none was presented")]
    NoCertificate,
    #[error("the client certificate is not a node certificate of this cluster: {0}")]
    NotANode(String),
    #[error("node {node:016x} is a {role}; this call is for managers")]
    NotAManager { node: u64, role: Role },
    #[error("node {0:016x} was removed from the cluster; it must join again under a new id")]
    Removed(u64),
    #[error("the client certificate is for another cluster ({0}) under the same CA")]
    OtherCluster(String),
}

/// The caller's certificate, for handlers that need to know who calls.
#[derive(Debug, Clone)]
pub struct Caller(pub NodeCert);

/// The node ids this cluster removed (`node rm`), as this member's store
/// has them: every call from their certificates is refused.
#[derive(Debug, Clone, Default)]
pub struct Removed(Arc<RwLock<HashSet<u64>>>);

/// How long the follower of the removed ids waits after a failed read
/// before it reads again.
const FOLLOW_RETRY: Duration = Duration::from_millis(500);

impl Removed {
    pub fn contains(&self, id: u64) -> bool {
        self.0.read().is_ok_and(|ids| ids.contains(&id))
    }

    fn set(&self, id: u64, removed: bool) {
        if let Ok(mut ids) = self.0.write() {
            if removed {
                ids.insert(id);
            } else {
                ids.remove(&id);
            }
        }
    }

    /// The removed ids of `store`, kept current (from this member's own
    /// replica) until `stopping` turns true or the store closes.
    pub async fn follow(store: Store, mut stopping: watch::Receiver<bool>) -> Removed {
        let removed = Removed::default();
        // The first read before anything is served.
        let _ = removed.refresh(&store).await;
        let follower = removed.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stopping.wait_for(|stop| *stop) => return,
                    outcome = follower.track(&store) => match outcome {
                        Err(VaultError::Store(coffer_store::Error::Stopped)) => return,
                        Err(e) => warn!("following the removed node ids: {e}; reading again"),
                        Ok(()) => {}
                    },
                }
                tokio::time::sleep(FOLLOW_RETRY).await;
            }
        });
        removed
    }

    /// Reads every node record; returns the revision it read at or after.
    async fn refresh(&self, store: &Store) -> Result<u64, VaultError> {
        let revision = store.revision()?;
        for node in NodeRecord::list(store, Consistency::Stale).await? {
            self.set(node.id, node.state == NodeState::Removed);
        }
        Ok(revision)
    }

    /// Reads the records, then follows their changes until the watch fails.
    async fn track(&self, store: &Store) -> Result<(), VaultError> {
        let revision = self.refresh(store).await?;
        let mut changes = store.watch(NodeRecord::prefix(), revision + 1)?;
        loop {
            let event = changes.next().await?;
            if let Ok(node) = NodeRecord::decode(&event.kv.value) {
                self.set(node.id, node.is_removed());
            }
        }
    }
}

/// The node the first peer certificate names.
fn caller<T>(request: &Request<T>) -> Result<NodeCert, AuthError> {
    let certs = request
        .peer_certs()
        .filter(|chain| !chain.is_empty())
        .ok_or(AuthError::NoCertificate)?;
    NodeCert::parse(&certs[0]).map_err(|e| AuthError::NotANode(e.to_string()))
}

/// The one check of every call that needs a certificate.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    removed: Removed,
    /// This cluster's id: an operator's CA may sign for several clusters,
    /// so a certificate must name this one too. `None` on the socket.
    cluster_id: Option<Arc<str>>,
}

impl Guard {
    /// The guard of cluster `cluster_id`'s port.
    pub fn new(removed: Removed, cluster_id: &str) -> Guard {
        Guard {
            removed,
            cluster_id: Some(cluster_id.into()),
        }
    }

    /// Admits any node of this cluster that was not removed.
    pub fn nodes<T>(&self, request: &Request<T>) -> Result<NodeCert, AuthError> {
        let node = caller(request)?;
        if let Some(ours) = &self.cluster_id {
            if node.cluster_id != **ours {
                return Err(AuthError::OtherCluster(node.cluster_id));
            }
        }
        if self.removed.contains(node.node) {
            return Err(AuthError::Removed(node.node));
        }
        Ok(node)
    }

    /// Admits managers of this cluster only.
    pub fn managers<T>(&self, request: &Request<T>) -> Result<NodeCert, AuthError> {
        let node = self.nodes(request)?;
        match node.role {
            Role::Manager => Ok(node),
            role => Err(AuthError::NotAManager {
                node: node.node,
                role,
            }),
        }
    }

    /// The interceptor in front of every manager-only service on the port.
    pub fn managers_only(&self) -> ManagersOnly {
        ManagersOnly(self.clone())
    }

    /// The interceptor in front of a service any node may call on the
    /// port, whose calls check the [`Caller`] further.
    pub fn nodes_only(&self) -> NodesOnly {
        NodesOnly(self.clone())
    }
}

/// The interceptor in front of a service any node of the cluster may call
/// on the TCP port: it puts the caller's certificate in the request as a
/// [`Caller`] (so a call without one came through the socket).
#[derive(Debug, Clone)]
pub struct NodesOnly(Guard);

impl Interceptor for NodesOnly {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let node = self.0.nodes(&request).map_err(crate::status::from_auth)?;
        request.extensions_mut().insert(Caller(node));
        Ok(request)
    }
}

/// Refuses a call that came through the port from a node that is not a
/// manager (behind [`NodesOnly`]).
pub fn from_a_manager<T>(request: &Request<T>) -> Result<(), Status> {
    match request.extensions().get::<Caller>() {
        Some(Caller(cert)) if cert.role != Role::Manager => {
            Err(crate::status::from_auth(AuthError::NotAManager {
                node: cert.node,
                role: cert.role,
            }))
        }
        _ => Ok(()),
    }
}

/// The interceptor in front of every manager-only service on the TCP port.
#[derive(Debug, Clone)]
pub struct ManagersOnly(Guard);

impl Interceptor for ManagersOnly {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let node = self
            .0
            .managers(&request)
            .map_err(crate::status::from_auth)?;
        request.extensions_mut().insert(Caller(node));
        Ok(request)
    }
}
