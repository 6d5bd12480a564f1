//! Who may call what on the node's TCP port, decided in one place from the
//! peer's certificate (which TLS has already verified against the
//! cluster's root CA, when one was presented). The Unix socket needs none
//! of this: its mode (0600) admits only the server's own user.

use coffer_vault::ca::{NodeCert, Role};
use thiserror::Error;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Why a call was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("this call needs a certificate from this cluster's CA, and none was presented")]
    NoCertificate,
    #[error("the client certificate is not a node certificate of this cluster: {0}")]
    NotANode(String),
    #[error("node {node:016x} is a {role}; this call is for managers")]
    NotAManager { node: u64, role: Role },
}

/// The caller's certificate, for handlers that need to know who calls.
#[derive(Debug, Clone)]
pub struct Caller(pub NodeCert);

/// The node the first peer certificate names.
fn caller<T>(request: &Request<T>) -> Result<NodeCert, AuthError> {
    let certs = request
        .peer_certs()
        .filter(|chain| !chain.is_empty())
        .ok_or(AuthError::NoCertificate)?;
    NodeCert::parse(&certs[0]).map_err(|e| AuthError::NotANode(e.to_string()))
}

/// Admits managers of this cluster only.
pub fn managers<T>(request: &Request<T>) -> Result<NodeCert, AuthError> {
    let node = caller(request)?;
    match node.role {
        Role::Manager => Ok(node),
        role => Err(AuthError::NotAManager {
            node: node.node,
            role,
        }),
    }
}

/// The interceptor in front of every manager-only service on the TCP port.
#[derive(Debug, Clone, Copy, Default)]
pub struct ManagersOnly;

impl Interceptor for ManagersOnly {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let node = managers(&request).map_err(crate::status::from_auth)?;
        request.extensions_mut().insert(Caller(node));
        Ok(request)
    }
}
