//! The `Cluster` gRPC service: so far the root CA, which anyone may fetch
//! (a joiner pins it by the digest in its token).

use coffer_store::Store;
use coffer_vault::cluster::Cluster;
use tonic::{Request, Response, Status};

use crate::pb;
use crate::status::from_vault;

#[derive(Debug, Clone)]
pub struct ClusterService {
    store: Store,
}

impl ClusterService {
    pub fn new(store: Store) -> ClusterService {
        ClusterService { store }
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn root_ca(
        &self,
        _: Request<pb::RootCaRequest>,
    ) -> Result<Response<pb::RootCaResponse>, Status> {
        let cluster = Cluster::load(&self.store)
            .await
            .map_err(from_vault)?
            .ok_or_else(crate::status::no_cluster)?;
        let ca = cluster.ca;
        Ok(Response::new(pb::RootCaResponse {
            certificate: ca.cert_der().to_vec(),
            certificate_pem: ca.cert_pem(),
            digest: ca.digest(),
            cluster_id: ca.cluster_id().to_string(),
        }))
    }
}
