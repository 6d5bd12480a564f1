//! The transport seam between members.
//!
//! The store knows nothing about sockets: a [`Transport`] carries openraft's
//! RPCs to another member, and that member hands them to
//! [`crate::Store::handle_append_entries`], [`crate::Store::handle_vote`] and
//! [`crate::Store::receive_snapshot`]. The server implements it over
//! gRPC/mTLS; tests implement it in memory.

use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use openraft::error::Fatal;
use openraft::error::{
    NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend, Snapshot, Vote};
use thiserror::Error;

use crate::types::{NodeId, TypeConfig};

/// Why an RPC did not get an answer.
#[derive(Debug, Clone, Error)]
pub enum TransportError {
    /// The target cannot be reached now; openraft backs off and retries.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The request reached the target and failed there.
    #[error("remote: {0}")]
    Remote(String),
    /// The append-entries request is larger than the transport carries;
    /// openraft retries with at most `entries_hint` entries.
    #[error("payload too large: send at most {entries_hint} entries")]
    PayloadTooLarge { entries_hint: u64 },
    /// The transport does not carry this kind of request.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// Carries Raft RPCs to other members.
pub trait Transport: Send + Sync + 'static {
    fn append_entries(
        &self,
        target: NodeId,
        node: &BasicNode,
        rpc: AppendEntriesRequest<TypeConfig>,
    ) -> BoxFuture<'static, Result<AppendEntriesResponse<NodeId>, TransportError>>;

    fn vote(
        &self,
        target: NodeId,
        node: &BasicNode,
        rpc: VoteRequest<NodeId>,
    ) -> BoxFuture<'static, Result<VoteResponse<NodeId>, TransportError>>;

    /// Streams a snapshot's frames (see [`crate::Frame`]) and has the
    /// target install it.
    fn snapshot(
        &self,
        target: NodeId,
        node: &BasicNode,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
    ) -> BoxFuture<'static, Result<SnapshotResponse<NodeId>, TransportError>>;

    /// Asks `target`, the leader, for a read index: the log index this
    /// member must have applied before it serves a linearizable read (the
    /// leader confirms with a quorum that it still leads first, see
    /// [`crate::Store::handle_read_index`]). A transport that does not
    /// carry it keeps the default, `Unsupported`: linearizable reads on a
    /// follower are then refused with `NotLeader`.
    fn read_index(
        &self,
        target: NodeId,
        _node: &BasicNode,
    ) -> BoxFuture<'static, Result<u64, TransportError>> {
        Box::pin(async move {
            Err(TransportError::Unsupported(format!(
                "node {target}: this transport carries no read index"
            )))
        })
    }
}

/// A transport for a store that has no peers: every RPC is unreachable.
#[derive(Debug, Default)]
pub struct NoPeers;

impl Transport for NoPeers {
    fn append_entries(
        &self,
        target: NodeId,
        _: &BasicNode,
        _: AppendEntriesRequest<TypeConfig>,
    ) -> BoxFuture<'static, Result<AppendEntriesResponse<NodeId>, TransportError>> {
        Box::pin(async move {
            Err(TransportError::Unreachable(format!(
                "node {target}: this store has no transport"
            )))
        })
    }
    fn vote(
        &self,
        target: NodeId,
        _: &BasicNode,
        _: VoteRequest<NodeId>,
    ) -> BoxFuture<'static, Result<VoteResponse<NodeId>, TransportError>> {
        Box::pin(async move {
            Err(TransportError::Unreachable(format!(
                "node {target}: this store has no transport"
            )))
        })
    }
    fn snapshot(
        &self,
        target: NodeId,
        _: &BasicNode,
        _: Vote<NodeId>,
        _: Snapshot<TypeConfig>,
    ) -> BoxFuture<'static, Result<SnapshotResponse<NodeId>, TransportError>> {
        Box::pin(async move {
            Err(TransportError::Unreachable(format!(
                "node {target}: this store has no transport"
            )))
        })
    }
}

/// Hands openraft one [`Network`] per target.
pub struct NetworkFactory {
    pub transport: Arc<dyn Transport>,
}

/// Openraft's connection to one target, over the transport.
pub struct Network {
    transport: Arc<dyn Transport>,
    target: NodeId,
    node: BasicNode,
}

impl std::fmt::Debug for NetworkFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NetworkFactory")
    }
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Network;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Network {
        Network {
            transport: self.transport.clone(),
            target,
            node: node.clone(),
        }
    }
}

fn rpc_err<E: std::error::Error>(e: TransportError) -> RPCError<NodeId, BasicNode, E> {
    match e {
        TransportError::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&e)),
        TransportError::Remote(_) | TransportError::Unsupported(_) => {
            RPCError::Network(NetworkError::new(&e))
        }
        TransportError::PayloadTooLarge { entries_hint } => RPCError::PayloadTooLarge(
            openraft::error::PayloadTooLarge::new_entries_hint(entries_hint.max(1)),
        ),
    }
}

impl RaftNetwork<TypeConfig> for Network {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.transport
            .append_entries(self.target, &self.node, rpc)
            .await
            .map_err(rpc_err)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.transport
            .vote(self.target, &self.node, rpc)
            .await
            .map_err(rpc_err)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let send = self
            .transport
            .snapshot(self.target, &self.node, vote, snapshot);
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            res = send => res.map_err(|e| match e {
                TransportError::Unreachable(_) => StreamingError::Unreachable(Unreachable::new(&e)),
                TransportError::Remote(_)
                | TransportError::PayloadTooLarge { .. }
                | TransportError::Unsupported(_) => {
                    StreamingError::Network(NetworkError::new(&e))
                }
            }),
        }
    }
}
