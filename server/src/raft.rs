//! The Raft gRPC service (receiving side) and [`GrpcTransport`], the
//! store's [`Transport`] over the managers' mTLS ports (sending side).
//! Messages are `coffer_store::wire` payloads; snapshots stream frame by
//! frame, one frame in memory at a time on either side.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use coffer_store::raft::{
    AppendEntriesRequest, AppendEntriesResponse, BasicNode, Snapshot, SnapshotResponse, Vote,
    VoteRequest, VoteResponse,
};
use coffer_store::{wire, NodeId, Store, Transport, TransportError, TypeConfig};
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::Caller;
use crate::pb;
use crate::pb::raft_client::RaftClient;
use coffer_vault::ca::{node_server_name, MANAGER_SERVER_NAME};

/// The largest Raft message either way. A single log entry is at most the
/// store's request limit (1.5 MiB) plus its header; an append-entries
/// request over this is cut down by openraft (`PayloadTooLarge`).
pub const RAFT_MESSAGE_BYTES_MAX: usize = 16 << 20;
/// An append-entries or vote that gets no answer by then is a failure
/// openraft retries.
const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// A snapshot stream that delivers no frame for this long is abandoned, and
/// the receiver dropped (which ends its lease renewals).
pub const SNAPSHOT_STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames read ahead of the network on the sending side.
const FRAMES_AHEAD: usize = 2;

/// The receiving side, over this member's store.
#[derive(Debug, Clone)]
pub struct RaftService {
    store: Store,
}

impl RaftService {
    pub fn new(store: Store) -> RaftService {
        RaftService { store }
    }
}

/// A member sends Raft messages only as the node its certificate names.
fn check_sender<T>(request: &Request<T>, claimed: NodeId) -> Result<(), Status> {
    match request.extensions().get::<Caller>() {
        Some(Caller(cert)) if cert.node == claimed => Ok(()),
        Some(Caller(cert)) => Err(Status::permission_denied(format!(
            "node {:016x} sent a Raft message as node {claimed:016x}",
            cert.node
        ))),
        None => Err(Status::unauthenticated(
            "Raft messages need a manager's certificate",
        )),
    }
}

fn bad_message(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("malformed Raft message: {e}"))
}

fn encode_failed(e: impl std::fmt::Display) -> Status {
    Status::internal(format!("encoding a Raft answer: {e}"))
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let rpc = wire::decode_append_entries(&request.get_ref().payload).map_err(bad_message)?;
        check_sender(&request, rpc.vote.leader_id.node_id)?;
        let answer = self
            .store
            .handle_append_entries(rpc)
            .await
            .map_err(crate::status::from_store)?;
        let payload = wire::encode_append_entries_response(&answer).map_err(encode_failed)?;
        Ok(Response::new(pb::RaftMessage { payload }))
    }

    async fn vote(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let rpc = wire::decode_vote_request(&request.get_ref().payload).map_err(bad_message)?;
        check_sender(&request, rpc.vote.leader_id.node_id)?;
        let answer = self
            .store
            .handle_vote(rpc)
            .await
            .map_err(crate::status::from_store)?;
        let payload = wire::encode_vote_response(&answer).map_err(encode_failed)?;
        Ok(Response::new(pb::RaftMessage { payload }))
    }

    async fn read_index(
        &self,
        _: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        let index = self
            .store
            .handle_read_index()
            .await
            .map_err(crate::status::from_store)?;
        Ok(Response::new(pb::ReadIndexResponse { index }))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let caller = request.extensions().get::<Caller>().cloned();
        let mut chunks = request.into_inner();
        let vote = match next_chunk(&mut chunks).await? {
            Some(pb::snapshot_chunk::Chunk::Vote(v)) => {
                wire::decode_snapshot_vote(&v).map_err(bad_message)?
            }
            _ => return Err(bad_message("a snapshot stream starts with its vote")),
        };
        match caller {
            Some(Caller(cert)) if cert.node == vote.leader_id.node_id => {}
            _ => {
                return Err(Status::permission_denied(
                    "a snapshot comes only from the leader its vote names",
                ))
            }
        }
        let mut receiver = self
            .store
            .receive_snapshot(vote)
            .map_err(crate::status::from_store)?;
        // Any early return drops `receiver`, which discards what arrived
        // and ends its lease renewals.
        let started = std::time::Instant::now();
        let (mut frames, mut bytes) = (0u64, 0u64);
        loop {
            match next_chunk(&mut chunks).await? {
                Some(pb::snapshot_chunk::Chunk::Frame(frame)) => {
                    tokio::task::block_in_place(|| receiver.write_frame(&frame))
                        .map_err(crate::status::from_store)?;
                    frames += 1;
                    bytes += frame.len() as u64;
                }
                Some(pb::snapshot_chunk::Chunk::Vote(_)) => {
                    return Err(bad_message("a second vote in a snapshot stream"))
                }
                None => break,
            }
        }
        let answer = receiver.finish().await.map_err(crate::status::from_store)?;
        tracing::info!(
            from = format_args!("{:016x}", vote.leader_id.node_id),
            frames,
            bytes,
            elapsed = ?started.elapsed(),
            "installed a snapshot"
        );
        let payload = wire::encode_snapshot_response(&answer).map_err(encode_failed)?;
        Ok(Response::new(pb::RaftMessage { payload }))
    }
}

/// The next chunk of a snapshot stream; a stall is an error.
async fn next_chunk(
    chunks: &mut Streaming<pb::SnapshotChunk>,
) -> Result<Option<pb::snapshot_chunk::Chunk>, Status> {
    match tokio::time::timeout(SNAPSHOT_STALL_TIMEOUT, chunks.message()).await {
        Err(_) => Err(Status::deadline_exceeded(format!(
            "the snapshot stream stalled for {SNAPSHOT_STALL_TIMEOUT:?}"
        ))),
        Ok(Err(status)) => Err(status),
        Ok(Ok(None)) => Ok(None),
        Ok(Ok(Some(chunk))) => match chunk.chunk {
            Some(chunk) => Ok(Some(chunk)),
            None => Err(bad_message("an empty snapshot chunk")),
        },
    }
}

/// Marks a request one member forwarded to the leader; it is never
/// forwarded again (a leader that changed meanwhile answers UNAVAILABLE
/// and the client retries).
const FORWARDED: &str = "coffer-forwarded";

/// `message` as a request forwarded to the leader.
pub fn forwarded<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    request
}

/// Names the node a forwarded request is for, when the forwarding member
/// called on that node's behalf (`Cluster.Renew`).
const FOR_NODE: &str = "coffer-for-node";

/// `message` forwarded to the leader on behalf of node `node`.
pub fn forwarded_for<T>(message: T, node: NodeId) -> Request<T> {
    let mut request = forwarded(message);
    if let Ok(value) = format!("{node:016x}").parse() {
        request.metadata_mut().insert(FOR_NODE, value);
    }
    request
}

/// The node a forwarded request is for (see [`forwarded_for`]); only a
/// manager's word counts, which the caller checks.
pub fn forwarded_for_node(metadata: &tonic::metadata::MetadataMap) -> Option<NodeId> {
    if !was_forwarded(metadata) {
        return None;
    }
    let value = metadata.get(FOR_NODE)?.to_str().ok()?;
    u64::from_str_radix(value, 16).ok()
}

/// Whether a request came forwarded from another member.
pub fn was_forwarded(metadata: &tonic::metadata::MetadataMap) -> bool {
    metadata.contains_key(FORWARDED)
}

/// A channel to the leader when this member does not lead, for a call that
/// was not already passed on to it; `None`: answer here (as the leader, or
/// as a store a command opened, which has no peers and reports for itself).
pub fn leader_channel(
    store: &Store,
    peers: Option<&GrpcTransport>,
    metadata: &tonic::metadata::MetadataMap,
) -> Result<Option<Channel>, Status> {
    let leader = store.leader();
    let Some(peers) = peers else {
        return Ok(None);
    };
    if leader == Some(store.node_id()) {
        return Ok(None);
    }
    if was_forwarded(metadata) {
        return Err(Status::unavailable(
            "the leader changed while the call was passed on to it: retry",
        ));
    }
    let Some(addr) = leader.and_then(|l| member_addr(store, l)) else {
        return Err(Status::unavailable(
            "no leader is known: the cluster has no quorum now",
        ));
    };
    peers
        .channel(&addr)
        .map(Some)
        .map_err(|e| Status::unavailable(format!("reaching the leader at {addr}: {e}")))
}

/// The address member `id` is reached at, as `store`'s membership has it.
pub fn member_addr(store: &Store, id: NodeId) -> Option<String> {
    store
        .metrics()
        .membership_config
        .membership()
        .get_node(&id)
        .map(|n| n.addr.clone())
}

/// How a member dials another: the mTLS client configuration (this node's
/// certificate), set once the identity is loaded and swapped on renewal.
type Dialer = Arc<RwLock<Option<Arc<rustls::ClientConfig>>>>;

/// The store's transport over gRPC and mTLS to the other managers'
/// ports, one lazily connected channel per member address.
#[derive(Debug, Clone, Default)]
pub struct GrpcTransport {
    dialer: Dialer,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl GrpcTransport {
    pub fn new() -> GrpcTransport {
        GrpcTransport::default()
    }

    /// Dials with `config` from now on (dropping connections made with an
    /// earlier one).
    pub fn set_client_config(&self, config: rustls::ClientConfig) {
        *self.dialer.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(config));
        self.channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// A lazily connected mTLS channel to the member at `addr`, shared by
    /// Raft and by requests forwarded to the leader.
    pub fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let channel = self.dial(addr, MANAGER_SERVER_NAME)?;
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    /// A channel of its own to node `id` (of any role) at `addr`, which
    /// must present that node's certificate.
    pub fn node_channel(&self, addr: &str, id: NodeId) -> Result<Channel, String> {
        self.dial(addr, &node_server_name(id))
    }

    fn dial(&self, addr: &str, server_name: &str) -> Result<Channel, String> {
        let config = self
            .dialer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| "this node has no certificate yet".to_string())?;
        crate::client::lazy_tls_channel(addr, config, server_name).map_err(|e| format!("{e:#}"))
    }

    fn client(
        &self,
        target: NodeId,
        node: &BasicNode,
    ) -> Result<RaftClient<Channel>, TransportError> {
        let channel = self
            .channel(&node.addr)
            .map_err(|e| TransportError::Unreachable(format!("node {target}: {e}")))?;
        Ok(RaftClient::new(channel)
            .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX))
    }
}

/// A failed call: unreachable when nothing answered, remote otherwise.
fn call_failed(target: NodeId, status: Status) -> TransportError {
    use tonic::Code;
    let message = format!("node {target}: {}", crate::status::describe(&status));
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            TransportError::Unreachable(message)
        }
        _ => TransportError::Remote(message),
    }
}

fn timed<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(RPC_TIMEOUT);
    request
}

impl Transport for GrpcTransport {
    fn append_entries(
        &self,
        target: NodeId,
        node: &BasicNode,
        rpc: AppendEntriesRequest<TypeConfig>,
    ) -> BoxFuture<'static, Result<AppendEntriesResponse<NodeId>, TransportError>> {
        let client = self.client(target, node);
        Box::pin(async move {
            let entries = rpc.entries.len();
            let payload = wire::encode_append_entries(&rpc)
                .map_err(|e| TransportError::Remote(format!("encoding: {e}")))?;
            if payload.len() > RAFT_MESSAGE_BYTES_MAX && entries > 1 {
                let fit = entries * RAFT_MESSAGE_BYTES_MAX / payload.len();
                return Err(TransportError::PayloadTooLarge {
                    entries_hint: fit.max(1) as u64,
                });
            }
            let answer = client?
                .append_entries(timed(pb::RaftMessage { payload }))
                .await
                .map_err(|s| call_failed(target, s))?;
            wire::decode_append_entries_response(&answer.into_inner().payload)
                .map_err(|e| TransportError::Remote(format!("node {target}: {e}")))
        })
    }

    fn vote(
        &self,
        target: NodeId,
        node: &BasicNode,
        rpc: VoteRequest<NodeId>,
    ) -> BoxFuture<'static, Result<VoteResponse<NodeId>, TransportError>> {
        let client = self.client(target, node);
        Box::pin(async move {
            let payload = wire::encode_vote_request(&rpc)
                .map_err(|e| TransportError::Remote(format!("encoding: {e}")))?;
            let answer = client?
                .vote(timed(pb::RaftMessage { payload }))
                .await
                .map_err(|s| call_failed(target, s))?;
            wire::decode_vote_response(&answer.into_inner().payload)
                .map_err(|e| TransportError::Remote(format!("node {target}: {e}")))
        })
    }

    fn read_index(
        &self,
        target: NodeId,
        node: &BasicNode,
    ) -> BoxFuture<'static, Result<u64, TransportError>> {
        let client = self.client(target, node);
        Box::pin(async move {
            let answer = client?
                .read_index(timed(pb::ReadIndexRequest {}))
                .await
                .map_err(|s| call_failed(target, s))?;
            Ok(answer.into_inner().index)
        })
    }

    fn snapshot(
        &self,
        target: NodeId,
        node: &BasicNode,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
    ) -> BoxFuture<'static, Result<SnapshotResponse<NodeId>, TransportError>> {
        let client = self.client(target, node);
        Box::pin(send_snapshot(client, target, vote, snapshot))
    }
}

/// Streams `snapshot` to `target`: its vote, then every frame.
async fn send_snapshot(
    client: Result<RaftClient<Channel>, TransportError>,
    target: NodeId,
    vote: Vote<NodeId>,
    snapshot: Snapshot<TypeConfig>,
) -> Result<SnapshotResponse<NodeId>, TransportError> {
    let mut frames = coffer_store::snapshot_frames(&snapshot)
        .map_err(|e| TransportError::Remote(format!("opening the snapshot: {e}")))?;
    let first = wire::encode_snapshot_vote(&vote)
        .map_err(|e| TransportError::Remote(format!("encoding: {e}")))?;
    let (chunks, to_send) = mpsc::channel::<pb::SnapshotChunk>(FRAMES_AHEAD);
    // The channel is new and has room: no waiting.
    chunks
        .try_send(pb::SnapshotChunk {
            chunk: Some(pb::snapshot_chunk::Chunk::Vote(first)),
        })
        .map_err(|_| TransportError::Remote("the snapshot stream closed".into()))?;
    // Reading and opening frames is blocking file and crypto work.
    // When the call is dropped (openraft cancels it) or fails, the
    // channel closes and the reader stops at its next frame.
    let reader = tokio::task::spawn_blocking(move || loop {
        match frames.next_frame() {
            Ok(Some((_, plain))) => {
                let chunk = pb::SnapshotChunk {
                    chunk: Some(pb::snapshot_chunk::Chunk::Frame(plain.to_vec())),
                };
                if chunks.blocking_send(chunk).is_err() {
                    return Ok(());
                }
            }
            Ok(None) => return Ok(()),
            Err(e) => return Err(TransportError::Remote(format!("reading the snapshot: {e}"))),
        }
    });
    let answer = client?
        .install_snapshot(Request::new(ReceiverStream::new(to_send)))
        .await
        .map_err(|s| call_failed(target, s));
    reader
        .await
        .map_err(|e| TransportError::Remote(format!("snapshot reader: {e}")))??;
    let answer = answer?;
    wire::decode_snapshot_response(&answer.into_inner().payload)
        .map_err(|e| TransportError::Remote(format!("node {target}: {e}")))
}
