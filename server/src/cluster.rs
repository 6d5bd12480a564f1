//! The `Cluster` gRPC service: the root CA for anyone (a joiner pins it by
//! the digest in its token), joining with a token, managers adding
//! themselves as voting members, and the join tokens.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use coffer_store::{Consistency, Store};
use coffer_vault::ca::Role;
use coffer_vault::cluster::Cluster;
use coffer_vault::config::ClusterConfig;
use coffer_vault::nodes::{self, NodeRecord, NodeState};
use coffer_vault::tokens::JoinTokens;
use tonic::{Request, Response, Status};

use crate::auth::Guard;
use crate::pb;
use crate::raft::{
    forwarded, forwarded_for, forwarded_for_node, leader_channel, member_addr, GrpcTransport,
};
use crate::status::{from_store, from_vault, no_cluster};

/// How long `AddMember` waits for a new member to catch up before it
/// answers "call again".
const CATCH_UP_WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub struct ClusterService {
    store: Store,
    /// Served on the Unix socket (or in-process): the caller is the
    /// server's own user, and every call is allowed.
    local: bool,
    /// How this member reaches the others (none for a store a command
    /// opened): health checks, and calls only the leader answers.
    peers: Option<GrpcTransport>,
    guard: Guard,
}

/// How long a node has to answer `node ls`'s health check.
const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

impl ClusterService {
    pub fn new(
        store: Store,
        local: bool,
        peers: Option<GrpcTransport>,
        guard: Guard,
    ) -> ClusterService {
        ClusterService {
            store,
            local,
            peers,
            guard,
        }
    }

    /// Whether node `id` is in the Raft membership (voter or learner).
    fn is_member(&self, id: u64) -> bool {
        let membership = self.store.metrics().membership_config;
        membership.membership().get_node(&id).is_some()
    }

    /// Admits a local caller, or a manager of this cluster.
    /// The managers' addresses as this member's membership has them.
    fn managers_addrs(&self) -> Vec<String> {
        let membership = self.store.metrics().membership_config.membership().clone();
        membership
            .voter_ids()
            .filter_map(|id| membership.get_node(&id).map(|n| n.addr.clone()))
            .collect()
    }

    fn managers_or_local<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if !self.local {
            self.guard
                .managers(request)
                .map_err(crate::status::from_auth)?;
        }
        Ok(())
    }

    /// A client of the leader when this member does not lead and the call
    /// was not already passed on to it (`None`: answer here).
    fn leader_client(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Option<pb::cluster_client::ClusterClient<tonic::transport::Channel>>, Status> {
        Ok(leader_channel(&self.store, self.peers.as_ref(), metadata)?
            .map(pb::cluster_client::ClusterClient::new))
    }

    /// The cluster's nodes (removed ones left out): every node record, and
    /// any Raft member that has none (a manager from before node records),
    /// at the address the membership has for members.
    async fn nodes(&self) -> Result<BTreeMap<u64, NodeRecord>, Status> {
        let mut nodes: BTreeMap<u64, NodeRecord> =
            NodeRecord::list(&self.store, Consistency::Linearizable)
                .await
                .map_err(from_vault)?
                .into_iter()
                .filter(|n| !n.is_removed())
                .map(|n| (n.id, n))
                .collect();
        let membership = self.store.metrics().membership_config;
        for (id, member) in membership.membership().nodes() {
            let node = nodes.entry(*id).or_insert_with(|| NodeRecord {
                id: *id,
                role: Role::Manager,
                addr: String::new(),
                state: NodeState::Active,
                cert_root: String::new(),
            });
            node.addr.clone_from(&member.addr);
        }
        Ok(nodes)
    }

    /// The node `text` names: its id in hex, or a prefix of one id's 16
    /// digits.
    async fn resolve(&self, text: &str) -> Result<NodeRecord, Status> {
        nodes::resolve(self.nodes().await?, text).map_err(crate::status::from_vault)
    }

    /// Whether node `id` answers a health check at `addr` now.
    async fn reachable(&self, id: u64, addr: &str) -> bool {
        let Some(peers) = &self.peers else {
            return false;
        };
        let Ok(channel) = peers.node_channel(addr, id) else {
            return false;
        };
        let mut request = Request::new(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        });
        request.set_timeout(HEALTH_CHECK_TIMEOUT);
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        let check = client.check(request);
        matches!(
            tokio::time::timeout(HEALTH_CHECK_TIMEOUT, check).await,
            Ok(Ok(answer)) if answer.get_ref().status()
                == tonic_health::pb::health_check_response::ServingStatus::Serving
        )
    }

    /// How long the certificates this cluster issues last.
    async fn cert_expiry(&self) -> Result<Duration, Status> {
        Ok(ClusterConfig::load(&self.store)
            .await
            .map_err(from_vault)?
            .cert_expiry)
    }

    async fn cluster(&self) -> Result<Cluster, Status> {
        Cluster::load(&self.store)
            .await
            .map_err(from_vault)?
            .ok_or_else(no_cluster)
    }

    /// Fails unless this member leads: membership changes and admissions
    /// happen on the leader.
    fn leading(&self) -> Result<(), Status> {
        match self.store.leader() {
            Some(leader) if leader == self.store.node_id() => Ok(()),
            Some(leader) => {
                let addr = member_addr(&self.store, leader).unwrap_or_default();
                Err(Status::unavailable(format!(
                    "this node is not the leader; the leader is node {leader:016x} at {addr}"
                )))
            }
            None => Err(Status::unavailable("no leader is known yet; try again")),
        }
    }
}

impl ClusterService {
    /// Refuses SwarmKit's unsafe demotions: the last manager, and a
    /// change that leaves the remaining voters without a reachable
    /// quorum.
    async fn check_demotion(&self, id: u64) -> Result<(), Status> {
        let managers: Vec<NodeRecord> = self
            .nodes()
            .await?
            .into_values()
            .filter(|n| n.role == Role::Manager)
            .collect();
        if managers.iter().all(|n| n.id == id) {
            return Err(Status::failed_precondition(format!(
                "node {id:016x} is the last manager: promote another node first"
            )));
        }
        let membership = self.store.metrics().membership_config.membership().clone();
        let remaining: Vec<(u64, String)> = membership
            .voter_ids()
            .filter(|v| *v != id)
            .filter_map(|v| membership.get_node(&v).map(|n| (v, n.addr.clone())))
            .collect();
        if remaining.len() == membership.voter_ids().count() {
            // Not a voter: its leaving changes no quorum.
            return Ok(());
        }
        let me = self.store.node_id();
        let mut reachable = 0;
        for (voter, addr) in &remaining {
            if *voter == me || self.reachable(*voter, addr).await {
                reachable += 1;
            }
        }
        let quorum = remaining.len() / 2 + 1;
        if reachable < quorum {
            return Err(Status::failed_precondition(format!(
                "demoting node {id:016x} would leave {} managers of which {reachable} answer, fewer than the {quorum} a quorum needs: bring the others back first",
                remaining.len()
            )));
        }
        Ok(())
    }

    /// Keeps the record of manager `id` current with the address it
    /// gives, and refuses a manager the cluster has demoted (its manager
    /// certificate outlives the role until it renews).
    async fn record_manager(&self, id: u64, addr: &str) -> Result<(), Status> {
        let record = NodeRecord::load(&self.store, id)
            .await
            .map_err(from_vault)?;
        match record {
            Some(node) if node.is_removed() => Err(crate::status::from_auth(
                crate::auth::AuthError::Removed(id),
            )),
            Some(node) if node.role != Role::Manager => Err(Status::failed_precondition(format!(
                "node {id:016x} was demoted to {}: it cannot become a voter",
                node.role
            ))),
            Some(node) if node.addr == addr => Ok(()),
            found => {
                let mut record = NodeRecord::active(id, Role::Manager, addr).map_err(from_vault)?;
                // What the node said of its certificate stays.
                if let Some(node) = found {
                    record.cert_root = node.cert_root;
                }
                record.save(&self.store).await.map_err(from_vault)
            }
        }
    }
}

fn role(name: &str) -> Result<Role, Status> {
    match name {
        "manager" => Ok(Role::Manager),
        "worker" => Ok(Role::Worker),
        other => Err(Status::invalid_argument(format!(
            "unknown role {other:?}: worker or manager"
        ))),
    }
}

/// The frames of `Cluster.SaveSnapshot`.
pub type SnapshotFrames =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::SnapshotFrame, Status>> + Send>>;

/// Streams `reader`'s frames (read on a blocking thread), a few ahead of
/// the client.
fn stream_frames(mut reader: coffer_store::SnapshotReader) -> SnapshotFrames {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || loop {
        let next = match reader.next_frame() {
            Ok(Some((_, plain))) => Ok(pb::SnapshotFrame {
                frame: plain.to_vec(),
            }),
            Ok(None) => return,
            Err(e) => Err(Status::internal(format!("reading the snapshot: {e}"))),
        };
        let failed = next.is_err();
        if tx.blocking_send(next).is_err() || failed {
            return;
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// What a node trusts and presents while `cluster` is as it is: its root
/// (and the next one during a rotation), and the CA certificates that go
/// after a node certificate (an operator's intermediate, the next root
/// cross-signed by the current one).
pub fn cluster_trust(cluster: &Cluster) -> crate::tls::Trust {
    let mut trust = crate::tls::Trust::of(cluster.ca.cert_der());
    if let Some(r) = &cluster.rotation {
        let next = crate::tls::Trust::of(r.next.cert_der());
        trust.roots.extend(next.roots);
        trust.chain.push(r.cross_signed.clone());
        trust.chain.extend(next.chain);
    }
    trust
}

/// How long each other manager has to answer `key rotate`/`key status`.
const KEY_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// One manager's data keys, as `key status` shows them.
fn key_status(node: u64, addr: &str, st: &coffer_store::KeyStatus) -> pb::NodeKeyStatus {
    pb::NodeKeyStatus {
        node: format!("{node:016x}"),
        addr: addr.to_string(),
        error: String::new(),
        active_key: st.active.map_or(0, |k| k.0),
        keys: st.keys.iter().map(|k| k.0).collect(),
        phase: st.phase.to_string(),
        scanned: st.scanned,
        resealed: st.resealed,
        rows_estimate: st.rows_estimate,
        sealed_under_active: st.sealed_under_active,
        active_created_unix: st.active_created.unwrap_or(0),
        last_error: st.error.clone().unwrap_or_default(),
    }
}

/// A manager whose status is missing, and why.
fn key_status_error(node: u64, addr: &str, error: String) -> pb::NodeKeyStatus {
    pb::NodeKeyStatus {
        node: format!("{node:016x}"),
        addr: addr.to_string(),
        error,
        ..Default::default()
    }
}

impl ClusterService {
    /// Asks every other manager (the voters of this member's membership)
    /// the same key call, in parallel, each within [`KEY_CALL_TIMEOUT`].
    async fn other_managers_keys<F, Fut>(&self, call: F) -> Vec<pb::NodeKeyStatus>
    where
        F: Fn(pb::cluster_client::ClusterClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<pb::KeyStatusResponse>, Status>>,
    {
        let me = self.store.node_id();
        let membership = self.store.metrics().membership_config.membership().clone();
        let others: Vec<(u64, String)> = membership
            .voter_ids()
            .filter(|id| *id != me)
            .filter_map(|id| membership.get_node(&id).map(|n| (id, n.addr.clone())))
            .collect();
        let asks = others.into_iter().map(|(id, addr)| {
            let channel = self
                .peers
                .as_ref()
                .ok_or_else(|| "this member reaches no other node".to_string())
                .and_then(|p| p.node_channel(&addr, id));
            let call = channel.map(|c| call(pb::cluster_client::ClusterClient::new(c)));
            async move {
                let answer = match call {
                    Err(e) => Err(e),
                    Ok(call) => match tokio::time::timeout(KEY_CALL_TIMEOUT, call).await {
                        Err(_) => Err(format!("no answer within {} s", KEY_CALL_TIMEOUT.as_secs())),
                        Ok(Err(status)) => Err(status.message().to_string()),
                        Ok(Ok(answer)) => Ok(answer.into_inner().nodes),
                    },
                };
                match answer {
                    Ok(nodes) if !nodes.is_empty() => nodes,
                    Ok(_) => vec![key_status_error(id, &addr, "an empty answer".into())],
                    Err(e) => vec![key_status_error(id, &addr, e)],
                }
            }
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// The root CA as `RootCa` answers it, with a rotation's progress.
    async fn ca_answer(&self, cluster: &Cluster) -> Result<pb::RootCaResponse, Status> {
        let ca = &cluster.ca;
        let mut answer = pb::RootCaResponse {
            certificate: ca.cert_der().to_vec(),
            certificate_pem: ca.cert_pem(),
            digest: ca.digest(),
            cluster_id: ca.cluster_id().to_string(),
            ..Default::default()
        };
        if let Some(r) = &cluster.rotation {
            let next = r.next.digest();
            let nodes = self.nodes().await?;
            answer.nodes_total = u32::try_from(nodes.len()).unwrap_or(u32::MAX);
            answer.nodes_done =
                u32::try_from(nodes.values().filter(|n| n.cert_root == next).count())
                    .unwrap_or(u32::MAX);
            answer.next_certificate = r.next.cert_der().to_vec();
            answer.next_digest = next;
        }
        Ok(answer)
    }

    /// Records the root that issued node `node`'s certificate, as it said,
    /// and ends a rotation once every node holds a certificate from the
    /// next root.
    async fn record_cert_root(
        &self,
        cluster: &Cluster,
        node: u64,
        record: Option<NodeRecord>,
        cert_root: &str,
    ) -> Result<(), Status> {
        if cert_root.len() != 64 || !cert_root.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(());
        }
        if record.is_none_or(|r| r.cert_root != cert_root) {
            // A manager from before node records gets one.
            let addr = member_addr(&self.store, node).unwrap_or_default();
            NodeRecord::set_cert_root(&self.store, node, cert_root, || {
                NodeRecord::active(node, Role::Manager, &addr)
            })
            .await
            .map_err(from_vault)?;
        }
        let Some(r) = &cluster.rotation else {
            return Ok(());
        };
        let next = r.next.digest();
        let nodes = self.nodes().await?;
        if nodes.values().all(|n| n.cert_root == next) {
            if let Some(done) = Cluster::finish_rotation(&self.store, &next)
                .await
                .map_err(from_vault)?
            {
                tracing::info!(
                    root = &done.ca.digest()[..12],
                    nodes = nodes.len(),
                    "the root CA rotation is done: every node holds a certificate from the new root, which alone is trusted now"
                );
            }
        }
        Ok(())
    }

    fn own_addr(&self) -> String {
        let membership = self.store.metrics().membership_config;
        membership
            .membership()
            .get_node(&self.store.node_id())
            .map(|n| n.addr.clone())
            .unwrap_or_default()
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    type SaveSnapshotStream = SnapshotFrames;

    async fn save_snapshot(
        &self,
        request: Request<pb::SaveSnapshotRequest>,
    ) -> Result<Response<SnapshotFrames>, Status> {
        self.managers_or_local(&request)?;
        let reader = self.store.export_snapshot().await.map_err(from_store)?;
        tracing::info!("streaming a snapshot of the store (coffer snapshot save)");
        Ok(Response::new(stream_frames(reader)))
    }

    async fn rotate_key(
        &self,
        request: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::KeyStatusResponse>, Status> {
        self.managers_or_local(&request)?;
        let me = self.store.node_id();
        let addr = self.own_addr();
        let mine = match self.store.rotate_key().await {
            Ok(_) => key_status(me, &addr, &self.store.key_status()),
            Err(e) => key_status_error(me, &addr, from_store(e).message().to_string()),
        };
        let mut nodes = vec![mine];
        if !request.get_ref().local_only {
            nodes.extend(
                self.other_managers_keys(|mut c| async move {
                    c.rotate_key(forwarded(pb::RotateKeyRequest { local_only: true }))
                        .await
                })
                .await,
            );
        }
        Ok(Response::new(pb::KeyStatusResponse { nodes }))
    }

    async fn key_status(
        &self,
        request: Request<pb::KeyStatusRequest>,
    ) -> Result<Response<pb::KeyStatusResponse>, Status> {
        self.managers_or_local(&request)?;
        let mut nodes = vec![key_status(
            self.store.node_id(),
            &self.own_addr(),
            &self.store.key_status(),
        )];
        if !request.get_ref().local_only {
            nodes.extend(
                self.other_managers_keys(|mut c| async move {
                    c.key_status(forwarded(pb::KeyStatusRequest { local_only: true }))
                        .await
                })
                .await,
            );
        }
        Ok(Response::new(pb::KeyStatusResponse { nodes }))
    }

    async fn root_ca(
        &self,
        _: Request<pb::RootCaRequest>,
    ) -> Result<Response<pb::RootCaResponse>, Status> {
        let cluster = self.cluster().await?;
        Ok(Response::new(self.ca_answer(&cluster).await?))
    }

    async fn rotate_ca(
        &self,
        request: Request<pb::RotateCaRequest>,
    ) -> Result<Response<pb::RootCaResponse>, Status> {
        self.managers_or_local(&request)?;
        if let Some(mut leader) = self.leader_client(request.metadata())? {
            return leader.rotate_ca(forwarded(request.into_inner())).await;
        }
        self.leading()?;
        let request = request.into_inner();
        let cluster = self.cluster().await?;
        if let Some(r) = &cluster.rotation {
            return Err(Status::failed_precondition(format!(
                "a root CA rotation to {} is already under way: `coffer ca` shows its progress",
                &r.next.digest()[..12]
            )));
        }
        if request.cert_expiry_secs > 0 {
            ClusterConfig::new(Duration::from_secs(request.cert_expiry_secs))
                .map_err(from_vault)?
                .save(&self.store)
                .await
                .map_err(from_vault)?;
        }
        let id = cluster.ca.cluster_id();
        let next = match (
            request.ca_cert_pem.is_empty(),
            request.ca_key_pem.is_empty(),
        ) {
            (true, true) => coffer_vault::ca::RootCa::generate(id).map_err(from_vault)?,
            (false, false) => coffer_vault::ca::RootCa::from_operator(
                id,
                &request.ca_cert_pem,
                &request.ca_key_pem,
                crate::identity::unix_now(),
            )
            .map_err(|e| Status::invalid_argument(format!("the new CA: {e}")))?,
            _ => {
                return Err(Status::invalid_argument(
                    "give both the new CA's certificate and its key, or neither",
                ))
            }
        };
        if next.digest() == cluster.ca.digest() {
            return Err(Status::invalid_argument(
                "the new CA is the cluster's current CA",
            ));
        }
        let rotating = Cluster::start_rotation(&self.store, next, crate::identity::unix_now())
            .await
            .map_err(from_vault)?;
        tracing::info!(
            from = &rotating.ca.digest()[..12],
            to = &rotating.issuing_ca().digest()[..12],
            "a root CA rotation began: every node renews its certificate under the new root"
        );
        Ok(Response::new(self.ca_answer(&rotating).await?))
    }

    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        self.leading()?;
        let request = request.into_inner();
        let cluster = self.cluster().await?;
        let tokens = JoinTokens::load(&self.store)
            .await
            .map_err(from_vault)?
            .ok_or_else(no_cluster)?;
        let membership = self.store.metrics().membership_config;
        let mut taken = nodes::ids_taken(&self.store).await.map_err(from_vault)?;
        taken.extend(membership.nodes().map(|(id, _)| *id));
        let validity = self.cert_expiry().await?;
        let admitted = coffer_vault::join::admit(
            &cluster,
            &tokens,
            &request.token,
            &request.csr,
            &taken,
            validity,
        )
        .map_err(from_vault)?;
        NodeRecord::active(admitted.node, admitted.role, &request.advertise_addr)
            .map_err(from_vault)?
            .save(&self.store)
            .await
            .map_err(from_vault)?;
        tracing::info!(
            node = format_args!("{:016x}", admitted.node),
            role = %admitted.role,
            "admitted a node"
        );
        Ok(Response::new(pb::JoinResponse {
            node_id: admitted.node,
            role: admitted.role.to_string(),
            certificate: admitted.cert_der,
            ca_certificate: cluster.ca.cert_der().to_vec(),
            managers: self.managers_addrs(),
        }))
    }

    async fn add_member(
        &self,
        request: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::AddMemberResponse>, Status> {
        let caller = self
            .guard
            .managers(&request)
            .map_err(crate::status::from_auth)?;
        self.leading()?;
        let addr = request.into_inner().advertise_addr;
        if addr.is_empty() || addr.len() > nodes::ADDR_BYTES_MAX {
            return Err(Status::invalid_argument("advertise_addr must be HOST:PORT"));
        }
        let id = caller.node;
        self.record_manager(id, &addr).await?;
        match member_addr(&self.store, id) {
            Some(known) if known == addr => {}
            Some(_) => self
                .store
                .set_member_addr(id, &addr)
                .await
                .map_err(from_store)?,
            None => {
                // Waits until the learner has caught up; a long catch-up
                // (a large snapshot) goes on after the deadline, and the
                // caller calls again.
                match tokio::time::timeout(CATCH_UP_WAIT, self.store.add_learner(id, &addr)).await {
                    Ok(added) => added.map_err(from_store)?,
                    Err(_) => {
                        return Err(Status::unavailable(
                            "still catching up with the cluster; call again",
                        ))
                    }
                }
            }
        }
        let membership = self.store.metrics().membership_config;
        let mut voters: BTreeSet<u64> = membership.membership().voter_ids().collect();
        if voters.insert(id) {
            self.store
                .change_membership(voters)
                .await
                .map_err(from_store)?;
            tracing::info!(node = format_args!("{id:016x}"), %addr, "a manager joined as a voter");
        }
        Ok(Response::new(pb::AddMemberResponse {}))
    }

    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        self.managers_or_local(&request)?;
        // The leader's view, so that every member shows the same one.
        if let Some(mut leader) = self.leader_client(request.metadata())? {
            return leader.list_nodes(forwarded(pb::ListNodesRequest {})).await;
        }
        let me = self.store.node_id();
        let membership = self.store.metrics().membership_config.membership().clone();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let mut nodes = Vec::new();
        for node in self.nodes().await?.into_values() {
            let reachable = node.id == me || self.reachable(node.id, &node.addr).await;
            let membership = if voters.contains(&node.id) {
                "voter"
            } else if membership.get_node(&node.id).is_some() {
                "learner"
            } else {
                "none"
            };
            nodes.push(pb::Node {
                id: node.id,
                address: node.addr,
                role: node.role.to_string(),
                membership: membership.into(),
                leader: node.id == me,
                reachable,
                cert_root: node.cert_root,
            });
        }
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        self.managers_or_local(&request)?;
        if let Some(mut leader) = self.leader_client(request.metadata())? {
            return leader.remove_node(forwarded(request.into_inner())).await;
        }
        let request = request.into_inner();
        let mut node = self.resolve(&request.node).await?;
        let id = node.id;
        let member = self.is_member(id);
        if node.role == Role::Manager || member {
            return Err(Status::failed_precondition(format!(
                "node {id:016x} is a manager: demote it first (coffer node demote {id:016x})"
            )));
        }
        if !request.force && self.reachable(id, &node.addr).await {
            return Err(Status::failed_precondition(format!(
                "node {id:016x} is up and answering: stop it first, or remove it anyway with --force"
            )));
        }
        node.state = NodeState::Removed;
        node.save(&self.store).await.map_err(from_vault)?;
        tracing::info!(node = format_args!("{id:016x}"), "removed a node");
        Ok(Response::new(pb::RemoveNodeResponse { id }))
    }

    async fn set_role(
        &self,
        request: Request<pb::SetRoleRequest>,
    ) -> Result<Response<pb::SetRoleResponse>, Status> {
        self.managers_or_local(&request)?;
        if let Some(mut leader) = self.leader_client(request.metadata())? {
            return leader.set_role(forwarded(request.into_inner())).await;
        }
        let request = request.into_inner();
        let wanted = role(&request.role)?;
        let mut node = self.resolve(&request.node).await?;
        let (id, previous) = (node.id, node.role);
        if wanted == Role::Worker {
            self.check_demotion(id).await?;
        }
        if previous != wanted {
            node.role = wanted;
            node.save(&self.store).await.map_err(from_vault)?;
            tracing::info!(node = format_args!("{id:016x}"), role = %wanted, "changed a node's role");
        }
        let member = self.is_member(id);
        if wanted == Role::Worker && member {
            // Out of the membership at once: the node's vote no longer
            // counts, and it drops its replica when it sees its new role.
            self.store.remove_member(id).await.map_err(from_store)?;
        }
        Ok(Response::new(pb::SetRoleResponse {
            id,
            previous_role: previous.to_string(),
        }))
    }

    async fn unlock_key(
        &self,
        request: Request<pb::UnlockKeyRequest>,
    ) -> Result<Response<pb::UnlockKeyResponse>, Status> {
        self.managers_or_local(&request)?;
        let rotate = request.get_ref().rotate;
        if rotate {
            if let Some(mut leader) = self.leader_client(request.metadata())? {
                return leader.unlock_key(forwarded(request.into_inner())).await;
            }
        }
        let Some(current) = coffer_vault::autolock::unlock_key(&self.store)
            .await
            .map_err(from_vault)?
        else {
            return Err(Status::failed_precondition(
                "autolock is off on this cluster: it is turned on when the cluster is created (`coffer server --autolock`)",
            ));
        };
        let key = if rotate {
            let new = coffer_store::UnlockKey::generate();
            coffer_vault::autolock::set_unlock_key(&self.store, Some(&new))
                .await
                .map_err(from_vault)?;
            tracing::info!(
                "rotated the cluster's unlock key: every manager seals its keys under the new one"
            );
            new
        } else {
            current
        };
        Ok(Response::new(pb::UnlockKeyResponse {
            key: key.to_text().to_string(),
        }))
    }

    async fn update_cluster(
        &self,
        request: Request<pb::UpdateClusterRequest>,
    ) -> Result<Response<pb::UpdateClusterResponse>, Status> {
        self.managers_or_local(&request)?;
        if let Some(mut leader) = self.leader_client(request.metadata())? {
            return leader.update_cluster(forwarded(request.into_inner())).await;
        }
        let current = coffer_vault::autolock::unlock_key(&self.store)
            .await
            .map_err(from_vault)?;
        let key = match (request.into_inner().autolock, current) {
            (Some(true), Some(key)) | (None, Some(key)) => Some(key),
            (Some(true), None) => {
                let key = coffer_store::UnlockKey::generate();
                coffer_vault::autolock::set_unlock_key(&self.store, Some(&key))
                    .await
                    .map_err(from_vault)?;
                tracing::info!("autolock turned on: every manager seals its keys under the cluster's unlock key");
                Some(key)
            }
            (Some(false), _) => {
                coffer_vault::autolock::set_unlock_key(&self.store, None)
                    .await
                    .map_err(from_vault)?;
                tracing::info!(
                    "autolock turned off: every manager seals its keys under a key file again"
                );
                None
            }
            (None, None) => None,
        };
        Ok(Response::new(pb::UpdateClusterResponse {
            unlock_key: key.map(|k| k.to_text().to_string()).unwrap_or_default(),
        }))
    }

    async fn unlock(
        &self,
        _: Request<pb::UnlockRequest>,
    ) -> Result<Response<pb::UnlockResponse>, Status> {
        Err(Status::failed_precondition(
            "this node is not locked: it is serving already",
        ))
    }

    async fn renew(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        let direct = self
            .guard
            .nodes(&request)
            .map_err(crate::status::from_auth)?;
        // A manager forwarding a node's call speaks for it.
        let node = match forwarded_for_node(request.metadata()) {
            Some(id) if direct.role == Role::Manager => id,
            _ => direct.node,
        };
        if let Some(mut leader) = self.leader_client(request.metadata())? {
            return leader
                .renew(forwarded_for(request.into_inner(), node))
                .await;
        }
        let record = NodeRecord::load(&self.store, node)
            .await
            .map_err(from_vault)?;
        let role = match &record {
            Some(record) if record.is_removed() => {
                return Err(crate::status::from_auth(crate::auth::AuthError::Removed(
                    node,
                )))
            }
            Some(record) => record.role,
            None if self.is_member(node) => Role::Manager,
            None => {
                return Err(Status::permission_denied(format!(
                    "node {node:016x} is not a node of this cluster"
                )))
            }
        };
        let request = request.into_inner();
        let cluster = self.cluster().await?;
        let issuing = cluster.issuing_ca();
        let certificate = if request.csr.is_empty() {
            Vec::new()
        } else {
            let issued = issuing
                .issue_for_csr(&request.csr, node, role, self.cert_expiry().await?)
                .map_err(from_vault)?;
            tracing::info!(node = format_args!("{node:016x}"), %role, root = &issuing.digest()[..12], "renewed a node's certificate");
            issued
        };
        // What it holds now: a certificate just issued is not in use yet.
        let renew_now = request.csr.is_empty()
            && cluster.rotation.is_some()
            && request.cert_root != issuing.digest();
        self.record_cert_root(&cluster, node, record, &request.cert_root)
            .await?;
        let trust = cluster_trust(&cluster);
        Ok(Response::new(pb::RenewResponse {
            role: role.to_string(),
            certificate,
            managers: self.managers_addrs(),
            trusted_roots: trust.roots,
            chain: trust.chain,
            renew_now,
        }))
    }

    async fn join_token(
        &self,
        request: Request<pb::JoinTokenRequest>,
    ) -> Result<Response<pb::JoinTokenResponse>, Status> {
        self.managers_or_local(&request)?;
        let request = request.into_inner();
        let role = role(&request.role)?;
        let cluster = self.cluster().await?;
        let tokens = if request.rotate {
            JoinTokens::rotate(&self.store, role).await
        } else {
            JoinTokens::init_or_load(&self.store).await
        }
        .map_err(from_vault)?;
        let token = tokens.token(role, &cluster.ca).to_token_string();
        let join_addr = member_addr(&self.store, self.store.node_id()).unwrap_or_default();
        Ok(Response::new(pb::JoinTokenResponse {
            token: token.to_string(),
            join_addr,
        }))
    }
}

/// After `--force-new-cluster`: every other manager the cluster recorded
/// is no longer a member, so its node record is marked removed (its id
/// and certificate refused from now on, as after `node rm`; should it
/// come back, it cannot disturb the new cluster). Workers stay.
pub async fn remove_other_managers(store: &Store) -> Result<(), coffer_vault::VaultError> {
    for mut node in NodeRecord::list(store, Consistency::Linearizable).await? {
        if node.id == store.node_id() || node.role != Role::Manager || node.is_removed() {
            continue;
        }
        node.state = NodeState::Removed;
        node.save(store).await?;
        tracing::warn!(
            node = format_args!("{:016x}", node.id),
            addr = node.addr,
            "removed a manager lost with the old cluster"
        );
    }
    Ok(())
}
