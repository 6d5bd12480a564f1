//! A worker node (`coffer server --join ADDR --token <worker token>`):
//! it holds no replica of the store, only its identity (its certificate,
//! and its key sealed under the data directory's own keys), and serves
//! health on its port so that managers see it up. The store's services
//! answer every caller, on the socket and on the port, that this is a
//! worker and where to ask instead, as `docker node ls` does on one.
//! Its socket serves `Tasks` for this node's own tasks ([`WorkerTasks`]):
//! `mount` and `unmount`, with the files fetched from the managers.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use coffer_store::LocalKeys;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic::Status;
use tracing::info;

use crate::agent::Agent;
use crate::identity;
use crate::mounts::{Mounts, Source};
use crate::pb;
use crate::pb::tasks_server::TasksServer;
use crate::raft::GrpcTransport;
use crate::server::{
    bind_private, builder, health_and_reflection, remember_join_addr, serve_tls, until_stopped,
    Running, ServerConfig, Start, SOCKET_FILE,
};
use crate::tls::{self, NodeCertResolver};

/// What a worker answers for a service only managers serve.
const NOT_A_MANAGER: &str = "this node is a worker: it holds no replica of the cluster's state. Run this against a manager (--host or its --data-dir), or promote this node first";

/// Answers every call of the service `SERVICE` names with
/// `FAILED_PRECONDITION` and one message: [`NOT_A_MANAGER`] on a worker,
/// `locked::LOCKED` on a locked manager.
#[derive(Debug, Clone, Copy)]
pub struct Refuse<const SERVICE: u8>(pub &'static str);

/// `coffer.v1.Kv`.
pub const KV: u8 = 0;
/// `coffer.v1.Cluster`.
pub const CLUSTER: u8 = 1;
/// `coffer.v1.Secrets`.
pub const SECRETS: u8 = 2;
/// `coffer.v1.Tasks`.
pub const TASKS: u8 = 3;

impl NamedService for Refuse<KV> {
    const NAME: &'static str = "coffer.v1.Kv";
}

impl NamedService for Refuse<CLUSTER> {
    const NAME: &'static str = "coffer.v1.Cluster";
}

impl NamedService for Refuse<SECRETS> {
    const NAME: &'static str = "coffer.v1.Secrets";
}

impl NamedService for Refuse<TASKS> {
    const NAME: &'static str = "coffer.v1.Tasks";
}

impl<const SERVICE: u8> tower::Service<http::Request<Body>> for Refuse<SERVICE> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<Body>) -> Self::Future {
        ready(Ok(Status::failed_precondition(self.0).into_http()))
    }
}

/// The `Tasks` service on a worker's socket: mounts of this node's own
/// tasks, with their files from the managers; everything else is a
/// manager's.
#[derive(Debug, Clone)]
pub struct WorkerTasks {
    mounts: Mounts,
    /// Turns true when the worker stops: a waiting fetch ends then.
    stopping: watch::Receiver<bool>,
}

#[tonic::async_trait]
impl pb::tasks_server::Tasks for WorkerTasks {
    async fn attach(
        &self,
        _: tonic::Request<pb::AttachRequest>,
    ) -> Result<tonic::Response<pb::TaskResponse>, Status> {
        Err(Status::failed_precondition(NOT_A_MANAGER))
    }

    async fn detach(
        &self,
        _: tonic::Request<pb::TaskRef>,
    ) -> Result<tonic::Response<pb::TaskResponse>, Status> {
        Err(Status::failed_precondition(NOT_A_MANAGER))
    }

    async fn list_tasks(
        &self,
        _: tonic::Request<pb::ListTasksRequest>,
    ) -> Result<tonic::Response<pb::ListTasksResponse>, Status> {
        Err(Status::failed_precondition(NOT_A_MANAGER))
    }

    async fn inspect_task(
        &self,
        _: tonic::Request<pb::TaskRef>,
    ) -> Result<tonic::Response<pb::TaskResponse>, Status> {
        Err(Status::failed_precondition(NOT_A_MANAGER))
    }

    async fn mount(
        &self,
        request: tonic::Request<pb::MountRequest>,
    ) -> Result<tonic::Response<pb::MountResponse>, Status> {
        let r = request.into_inner();
        let mounted = self.mounts.mount(&r.task, &r.dir).await?;
        Ok(tonic::Response::new(mounted.to_pb()))
    }

    async fn unmount(
        &self,
        request: tonic::Request<pb::UnmountRequest>,
    ) -> Result<tonic::Response<pb::UnmountResponse>, Status> {
        let task = self.mounts.unmount(&request.into_inner().dir).await?;
        Ok(tonic::Response::new(pb::UnmountResponse { task }))
    }

    async fn fetch_secrets(
        &self,
        request: tonic::Request<pb::FetchRequest>,
    ) -> Result<tonic::Response<pb::FetchResponse>, Status> {
        let r = request.into_inner();
        let wait = Duration::from_secs(u64::from(r.wait_seconds));
        let fetched = self.mounts.source().fetch(&r.task, &r.held_digest, wait);
        let delivery = tokio::select! {
            delivery = fetched => delivery?,
            () = until_stopped(self.stopping.clone()) => {
                return Err(Status::unavailable("this node is stopping"))
            }
        };
        Ok(tonic::Response::new(crate::mounts::to_pb(delivery)))
    }
}

/// Starts a worker: its identity (saved first if it just joined), its
/// port, its socket and its agent.
pub(crate) async fn start(
    config: &ServerConfig,
    tcp: TcpListener,
    advertise: &str,
    start_as: Start,
) -> Result<Running> {
    let dir = &config.data_dir;
    let keys =
        LocalKeys::open(dir).with_context(|| format!("opening the keys in {}", dir.display()))?;
    let trust = match start_as {
        Start::Known { trust, .. } => trust,
        Start::Joined(joined) => {
            let trust = tls::Trust::of(&joined.ca_der);
            identity::save(dir, &keys, &joined.cert_der, &joined.key, &trust)?;
            remember_join_addr(config, &joined.managers)?;
            trust
        }
        Start::First { .. } => bail!("a new cluster starts with a manager, not a worker"),
    };
    let identity = identity::load(dir, &keys)?;
    let addr = tcp.local_addr().context("the listening address")?;
    let certs = NodeCertResolver::new(&identity.cert_der, &identity.key, &trust)?;
    let verifier = tls::ClientVerifier::new(&trust)?;
    let tls = tls::server_config(verifier.clone(), certs.clone())?;
    let socket = dir.join(SOCKET_FILE);
    let unix = bind_private(&socket)?;

    let (stop, stopping) = watch::channel(false);
    // The managers are asked with this node's certificate, which the agent
    // swaps on renewal.
    let transport = GrpcTransport::new();
    transport.set_client_config(tls::client_config(
        &trust,
        Some((&identity.cert_der, &identity.key)),
    )?);
    let mounts = Mounts::open(
        dir,
        Source::Managers {
            dir: dir.clone(),
            transport: transport.clone(),
            node: identity.cert.node,
        },
    )?;
    let router = || async {
        let (health, reflection) = health_and_reflection(false).await?;
        anyhow::Ok(
            builder()
                .add_service(Refuse::<KV>(NOT_A_MANAGER))
                .add_service(Refuse::<CLUSTER>(NOT_A_MANAGER))
                .add_service(Refuse::<SECRETS>(NOT_A_MANAGER))
                .add_service(health)
                .add_service(reflection),
        )
    };
    let on_port = serve_tls(
        router().await?.add_service(Refuse::<TASKS>(NOT_A_MANAGER)),
        tls,
        tcp,
        stopping.clone(),
    );
    let tasks = TasksServer::new(WorkerTasks {
        mounts: mounts.clone(),
        stopping: stopping.clone(),
    })
    .max_decoding_message_size(crate::server::MAX_MESSAGE_BYTES)
    .max_encoding_message_size(crate::server::MAX_MESSAGE_BYTES);
    let on_socket = router()
        .await?
        .add_service(tasks)
        .serve_with_incoming_shutdown(UnixListenerStream::new(unix), until_stopped(stopping));
    let served = tokio::spawn(async move { tokio::try_join!(on_socket, on_port).map(|_| ()) });
    info!(
        node = format_args!("{:016x}", identity.cert.node),
        cluster = identity.cert.cluster_id,
        listen = %addr,
        advertise,
        socket = %socket.display(),
        "coffer worker is up: it holds no replica of the store"
    );
    let following = tokio::spawn(mounts.follow(stop.subscribe()));
    let agent = Agent {
        dir: dir.clone(),
        keys,
        identity,
        trust,
        verifier,
        resolver: certs,
        transport: Some(transport),
        store: None,
        managers: identity::load_managers(dir)?,
        own: None,
    };
    Ok(Running {
        served,
        socket,
        stop,
        agent,
        tasks: vec![following],
    })
}
