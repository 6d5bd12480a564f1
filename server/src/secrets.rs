//! The `Secrets` gRPC service: `coffer_vault::secrets` over the wire,
//! metadata only. The leader answers; a follower passes the call on once
//! (its certificate speaks for it), so any member serves any call.

use coffer_store::Store;
use coffer_vault::secrets::{Secret, VersionInfo};
use tonic::{Request, Response, Status};

use crate::pb;
use crate::pb::secrets_client::SecretsClient;
use crate::raft::{forwarded, leader_channel, GrpcTransport};
use crate::status::from_vault;

/// On the TCP port it sits behind `Guard::managers_only`, like `Kv`.
#[derive(Debug, Clone)]
pub struct SecretsService {
    store: Store,
    /// How a member reaches the leader (none for a store a command
    /// opened, which answers everything itself).
    peers: Option<GrpcTransport>,
}

fn to_pb(secret: Secret) -> pb::Secret {
    pb::Secret {
        version: secret.version(),
        id: secret.id,
        name: secret.name,
        labels: secret.labels.into_iter().collect(),
        created_unix: secret.created_unix,
        updated_unix: secret.updated_unix,
        versions: secret
            .versions
            .into_iter()
            .map(
                |VersionInfo {
                     version,
                     created_unix,
                     size,
                 }| pb::SecretVersion {
                    version,
                    created_unix,
                    size,
                },
            )
            .collect(),
    }
}

fn answer(secret: Secret) -> Response<pb::SecretResponse> {
    Response::new(pb::SecretResponse {
        secret: Some(to_pb(secret)),
    })
}

impl SecretsService {
    pub fn new(store: Store, peers: Option<GrpcTransport>) -> SecretsService {
        SecretsService { store, peers }
    }

    /// The leader's client when this member does not lead and the call
    /// was not already passed on (`None`: answer here).
    fn route<T>(
        &self,
        request: &Request<T>,
    ) -> Result<Option<SecretsClient<tonic::transport::Channel>>, Status> {
        let channel = leader_channel(&self.store, self.peers.as_ref(), request.metadata())?;
        Ok(channel.map(|channel| {
            SecretsClient::new(channel)
                .max_decoding_message_size(crate::server::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(crate::server::MAX_MESSAGE_BYTES)
        }))
    }
}

#[tonic::async_trait]
impl pb::secrets_server::Secrets for SecretsService {
    async fn create_secret(
        &self,
        request: Request<pb::CreateSecretRequest>,
    ) -> Result<Response<pb::SecretResponse>, Status> {
        if let Some(mut leader) = self.route(&request)? {
            return leader.create_secret(forwarded(request.into_inner())).await;
        }
        let r = request.into_inner();
        let labels = r.labels.into_iter().collect();
        let secret = Secret::create(&self.store, &r.name, labels, &r.data)
            .await
            .map_err(from_vault)?;
        tracing::info!(id = %secret.id, "created a secret");
        Ok(answer(secret))
    }

    async fn list_secrets(
        &self,
        request: Request<pb::ListSecretsRequest>,
    ) -> Result<Response<pb::ListSecretsResponse>, Status> {
        if let Some(mut leader) = self.route(&request)? {
            return leader.list_secrets(forwarded(request.into_inner())).await;
        }
        let secrets = Secret::list(&self.store).await.map_err(from_vault)?;
        Ok(Response::new(pb::ListSecretsResponse {
            secrets: secrets.into_iter().map(to_pb).collect(),
        }))
    }

    async fn inspect_secret(
        &self,
        request: Request<pb::SecretRef>,
    ) -> Result<Response<pb::SecretResponse>, Status> {
        if let Some(mut leader) = self.route(&request)? {
            return leader.inspect_secret(forwarded(request.into_inner())).await;
        }
        let r = request.into_inner();
        let secret = Secret::find(&self.store, &r.secret)
            .await
            .map_err(from_vault)?;
        Ok(answer(secret))
    }

    async fn rotate_secret(
        &self,
        request: Request<pb::RotateSecretRequest>,
    ) -> Result<Response<pb::SecretResponse>, Status> {
        if let Some(mut leader) = self.route(&request)? {
            return leader.rotate_secret(forwarded(request.into_inner())).await;
        }
        let r = request.into_inner();
        let secret = Secret::rotate(&self.store, &r.secret, &r.data)
            .await
            .map_err(from_vault)?;
        tracing::info!(id = %secret.id, version = secret.version(), "rotated a secret");
        Ok(answer(secret))
    }

    async fn remove_secret(
        &self,
        request: Request<pb::SecretRef>,
    ) -> Result<Response<pb::SecretResponse>, Status> {
        if let Some(mut leader) = self.route(&request)? {
            return leader.remove_secret(forwarded(request.into_inner())).await;
        }
        let r = request.into_inner();
        let secret = Secret::remove(&self.store, &r.secret)
            .await
            .map_err(from_vault)?;
        tracing::info!(id = %secret.id, "removed a secret");
        Ok(answer(secret))
    }
}
