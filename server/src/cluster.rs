//! The `Cluster` gRPC service: the root CA for anyone (a joiner pins it by
//! the digest in its token), joining with a token, managers adding
//! themselves as voting members, and the join tokens.

use std::collections::BTreeSet;
use std::time::Duration;

use coffer_store::Store;
use coffer_vault::ca::Role;
use coffer_vault::cluster::Cluster;
use coffer_vault::tokens::JoinTokens;
use tonic::{Request, Response, Status};

use crate::auth;
use crate::pb;
use crate::raft::{forwarded, member_addr, was_forwarded, GrpcTransport};
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
}

/// How long a node has to answer `node ls`'s health check.
const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

impl ClusterService {
    pub fn new(store: Store, local: bool, peers: Option<GrpcTransport>) -> ClusterService {
        ClusterService {
            store,
            local,
            peers,
        }
    }

    /// Whether the member at `addr` answers a health check now.
    async fn reachable(&self, addr: &str) -> bool {
        let Some(peers) = &self.peers else {
            return false;
        };
        let Ok(channel) = peers.channel(addr) else {
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

fn role(name: &str) -> Result<Role, Status> {
    match name {
        "manager" => Ok(Role::Manager),
        "worker" => Ok(Role::Worker),
        other => Err(Status::invalid_argument(format!(
            "unknown role {other:?}: worker or manager"
        ))),
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn root_ca(
        &self,
        _: Request<pb::RootCaRequest>,
    ) -> Result<Response<pb::RootCaResponse>, Status> {
        let ca = self.cluster().await?.ca;
        Ok(Response::new(pb::RootCaResponse {
            certificate: ca.cert_der().to_vec(),
            certificate_pem: ca.cert_pem(),
            digest: ca.digest(),
            cluster_id: ca.cluster_id().to_string(),
        }))
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
        let taken: BTreeSet<u64> = membership.nodes().map(|(id, _)| *id).collect();
        let admitted =
            coffer_vault::join::admit(&cluster, &tokens, &request.token, &request.csr, &taken)
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
        }))
    }

    async fn add_member(
        &self,
        request: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::AddMemberResponse>, Status> {
        let caller = auth::managers(&request).map_err(crate::status::from_auth)?;
        self.leading()?;
        let addr = request.into_inner().advertise_addr;
        if addr.is_empty() || addr.len() > 1024 {
            return Err(Status::invalid_argument("advertise_addr must be HOST:PORT"));
        }
        let id = caller.node;
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
        if !self.local {
            auth::managers(&request).map_err(crate::status::from_auth)?;
        }
        let me = self.store.node_id();
        let metrics = self.store.metrics();
        let leader = metrics.current_leader;
        if leader != Some(me) {
            // The leader's view, so that every member shows the same one.
            let addr = leader.and_then(|l| member_addr(&self.store, l));
            return match (&self.peers, addr) {
                (Some(peers), Some(addr)) if !was_forwarded(request.metadata()) => {
                    let channel = peers.channel(&addr).map_err(|e| {
                        Status::unavailable(format!("reaching the leader at {addr}: {e}"))
                    })?;
                    pb::cluster_client::ClusterClient::new(channel)
                        .list_nodes(forwarded(pb::ListNodesRequest {}))
                        .await
                }
                _ => Err(Status::unavailable(
                    "no leader is known: the cluster has no quorum now",
                )),
            };
        }
        let membership = metrics.membership_config.membership().clone();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let mut nodes = Vec::new();
        for (id, node) in membership.nodes() {
            let reachable = *id == me || self.reachable(&node.addr).await;
            nodes.push(pb::Node {
                id: *id,
                address: node.addr.clone(),
                role: Role::Manager.to_string(),
                membership: if voters.contains(id) {
                    "voter"
                } else {
                    "learner"
                }
                .into(),
                leader: *id == me,
                reachable,
            });
        }
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    async fn join_token(
        &self,
        request: Request<pb::JoinTokenRequest>,
    ) -> Result<Response<pb::JoinTokenResponse>, Status> {
        if !self.local {
            auth::managers(&request).map_err(crate::status::from_auth)?;
        }
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
