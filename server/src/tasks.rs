//! The `Tasks` gRPC service: `coffer_vault::tasks` over the wire. The
//! leader answers; a follower passes the call on once, having named
//! itself as the task's node when the request names none. `Mount` and
//! `Unmount` act on this node ([`crate::mounts`]): served on the socket
//! only. On the port any node may call (`NodesOnly`): `FetchSecrets`
//! answers the node that runs the task, from this member's replica; every
//! other call is for managers. A `FetchSecrets` with `wait_seconds` is a
//! long poll: while the caller's files are current it waits on a watch of
//! the replica ([`deliver_waiting`]).

use std::future::Future;
use std::time::Duration;

use coffer_store::{Consistency, Store};
use coffer_vault::nodes::{self, NodeRecord};
use coffer_vault::tasks::{Attachment, Delivery, Task, TaskSecret, DEFAULT_MODE};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::auth::{from_a_manager, Caller};
use crate::mounts::Mounts;
use crate::pb;
use crate::pb::tasks_client::TasksClient;
use crate::raft::{forwarded, leader_channel, GrpcTransport};
use crate::server::until_stopped;
use crate::status::{from_store, from_vault};

/// The longest a `FetchSecrets` waits for a task's files to change.
pub const LONGEST_WAIT: Duration = Duration::from_secs(30);
/// How often a waiting `FetchSecrets` reads the task again even when its
/// replica saw no change: a member cut off from the leader then fails the
/// read, and its caller turns to another manager.
const RECHECK_WAIT: Duration = Duration::from_secs(5);

/// For node `node`, the files of `task` unless they match `held`, as
/// [`Task::deliver`]; while they match, it waits up to `wait` (at most
/// [`LONGEST_WAIT`]) for a change in the replica, answering `unchanged`
/// when the wait is over or `stop` completes.
pub async fn deliver_waiting(
    store: &Store,
    task: &str,
    node: u64,
    held: &str,
    wait: Duration,
    stop: impl Future<Output = ()>,
) -> Result<Delivery, Status> {
    let deadline = Instant::now() + wait.min(LONGEST_WAIT);
    tokio::pin!(stop);
    loop {
        // Watched before the read: no change between the two is missed.
        let changes = match wait.is_zero() {
            true => None,
            false => Some(
                store
                    .watch(&[coffer_vault::SYSTEM_PREFIX], 0)
                    .map_err(from_store)?,
            ),
        };
        let delivery = Task::deliver(store, task, node, held)
            .await
            .map_err(from_vault)?;
        let (Some(mut changes), Delivery::Unchanged { .. }) = (changes, &delivery) else {
            return Ok(delivery);
        };
        let now = Instant::now();
        if now >= deadline {
            return Ok(delivery);
        }
        tokio::select! {
            seen = changes.next() => {
                if seen.is_err() {
                    // The watch ended (compaction, a closing store).
                    return Ok(delivery);
                }
            }
            () = tokio::time::sleep_until(deadline.min(now + RECHECK_WAIT)) => {}
            () = &mut stop => return Ok(delivery),
        }
    }
}

/// On the TCP port it sits behind `Guard::nodes_only`.
#[derive(Debug, Clone)]
pub struct TasksService {
    store: Store,
    /// How a member reaches the leader (none for a store a command
    /// opened, which answers everything itself).
    peers: Option<GrpcTransport>,
    /// This node's mounts (none on the port: mounts are the local CLI's).
    mounts: Option<Mounts>,
    /// Turns true when the server stops: long polls answer then.
    stopping: watch::Receiver<bool>,
}

fn to_pb(task: Task) -> pb::Task {
    pb::Task {
        name: task.name,
        node: format!("{:016x}", task.node),
        created_unix: task.created_unix,
        updated_unix: task.updated_unix,
        secrets: task
            .secrets
            .into_iter()
            .map(|s: TaskSecret| pb::TaskSecret {
                secret_id: s.secret_id,
                secret_name: s.secret_name,
                version: s.version.unwrap_or(0),
                target: s.target,
                uid: s.uid,
                gid: s.gid,
                mode: s.mode,
            })
            .collect(),
    }
}

fn answer(task: Task) -> Response<pb::TaskResponse> {
    Response::new(pb::TaskResponse {
        task: Some(to_pb(task)),
    })
}

fn attachment(a: pb::SecretAttachment) -> Attachment {
    Attachment {
        source: a.source,
        version: Some(a.version).filter(|v| *v != 0),
        target: Some(a.target).filter(|t| !t.is_empty()),
        uid: a.uid,
        gid: a.gid,
        mode: a.mode.unwrap_or(DEFAULT_MODE),
    }
}

impl TasksService {
    pub fn new(
        store: Store,
        peers: Option<GrpcTransport>,
        mounts: Option<Mounts>,
        stopping: watch::Receiver<bool>,
    ) -> TasksService {
        TasksService {
            store,
            peers,
            mounts,
            stopping,
        }
    }

    fn mounts(&self) -> Result<&Mounts, Status> {
        self.mounts.as_ref().ok_or_else(|| {
            Status::permission_denied(
                "mount and unmount act on the node that serves them: call them on its Unix socket",
            )
        })
    }

    /// The leader's client when this member does not lead and the call
    /// was not already passed on (`None`: answer here).
    fn route<T>(
        &self,
        request: &Request<T>,
    ) -> Result<Option<TasksClient<tonic::transport::Channel>>, Status> {
        let channel = leader_channel(&self.store, self.peers.as_ref(), request.metadata())?;
        Ok(channel.map(|channel| {
            TasksClient::new(channel)
                .max_decoding_message_size(crate::server::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(crate::server::MAX_MESSAGE_BYTES)
        }))
    }

    /// The node `text` names among the cluster's records.
    async fn node(&self, text: &str) -> Result<u64, Status> {
        let records = NodeRecord::list(&self.store, Consistency::Linearizable)
            .await
            .map_err(from_vault)?;
        let by_id = records.into_iter().map(|n| (n.id, n)).collect();
        Ok(nodes::resolve(by_id, text).map_err(from_vault)?.id)
    }
}

#[tonic::async_trait]
impl pb::tasks_server::Tasks for TasksService {
    async fn attach(
        &self,
        mut request: Request<pb::AttachRequest>,
    ) -> Result<Response<pb::TaskResponse>, Status> {
        from_a_manager(&request)?;
        // No node named: the one the caller asked, before any passing on.
        if request.get_ref().node.is_empty() {
            request.get_mut().node = format!("{:016x}", self.store.node_id());
        }
        if let Some(mut leader) = self.route(&request)? {
            return leader.attach(forwarded(request.into_inner())).await;
        }
        let r = request.into_inner();
        let node = self.node(&r.node).await?;
        let attachments: Vec<Attachment> = r.secrets.into_iter().map(attachment).collect();
        let task = Task::attach(&self.store, &r.task, node, &attachments)
            .await
            .map_err(from_vault)?;
        tracing::info!(task = %task.name, node = %format!("{node:016x}"), secrets = task.secrets.len(), "attached secrets to a task");
        Ok(answer(task))
    }

    async fn detach(
        &self,
        request: Request<pb::TaskRef>,
    ) -> Result<Response<pb::TaskResponse>, Status> {
        from_a_manager(&request)?;
        if let Some(mut leader) = self.route(&request)? {
            return leader.detach(forwarded(request.into_inner())).await;
        }
        let task = Task::detach(&self.store, &request.into_inner().task)
            .await
            .map_err(from_vault)?;
        tracing::info!(task = %task.name, "detached a task");
        Ok(answer(task))
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        from_a_manager(&request)?;
        if let Some(mut leader) = self.route(&request)? {
            return leader.list_tasks(forwarded(request.into_inner())).await;
        }
        let tasks = Task::list(&self.store).await.map_err(from_vault)?;
        Ok(Response::new(pb::ListTasksResponse {
            tasks: tasks.into_iter().map(to_pb).collect(),
        }))
    }

    async fn inspect_task(
        &self,
        request: Request<pb::TaskRef>,
    ) -> Result<Response<pb::TaskResponse>, Status> {
        from_a_manager(&request)?;
        if let Some(mut leader) = self.route(&request)? {
            return leader.inspect_task(forwarded(request.into_inner())).await;
        }
        let task = Task::find(&self.store, &request.into_inner().task)
            .await
            .map_err(from_vault)?;
        Ok(answer(task))
    }

    async fn mount(
        &self,
        request: Request<pb::MountRequest>,
    ) -> Result<Response<pb::MountResponse>, Status> {
        let r = request.into_inner();
        let mounted = self.mounts()?.mount(&r.task, &r.dir).await?;
        Ok(Response::new(mounted.to_pb()))
    }

    async fn unmount(
        &self,
        request: Request<pb::UnmountRequest>,
    ) -> Result<Response<pb::UnmountResponse>, Status> {
        let task = self.mounts()?.unmount(&request.into_inner().dir).await?;
        Ok(Response::new(pb::UnmountResponse { task }))
    }

    async fn fetch_secrets(
        &self,
        request: Request<pb::FetchRequest>,
    ) -> Result<Response<pb::FetchResponse>, Status> {
        // On the port, the node its certificate names; on the socket, this
        // node.
        let node = match request.extensions().get::<Caller>() {
            Some(Caller(cert)) => cert.node,
            None => self.store.node_id(),
        };
        let r = request.into_inner();
        let wait = Duration::from_secs(u64::from(r.wait_seconds));
        let stop = until_stopped(self.stopping.clone());
        let delivery =
            deliver_waiting(&self.store, &r.task, node, &r.held_digest, wait, stop).await?;
        if let Delivery::Files { files, .. } = &delivery {
            tracing::info!(task = r.task, node = %format!("{node:016x}"), files = files.len(), "delivered a task's secrets");
        }
        Ok(Response::new(crate::mounts::to_pb(delivery)))
    }
}
