//! Admitting a node: a join token and a signing request in, a node id and
//! a certificate out (SwarmKit's `IssueNodeCertificate`), decided here
//! without I/O; the caller reads the cluster's objects and membership.

use std::collections::BTreeSet;

use std::time::Duration;

use crate::ca::Role;
use crate::cluster::Cluster;
use crate::tokens::{JoinToken, JoinTokens};
use crate::VaultError;

/// A node the cluster admitted.
#[derive(Debug, Clone)]
pub struct Admission {
    pub node: u64,
    pub role: Role,
    pub cert_der: Vec<u8>,
}

/// Admits the holder of `token` with the key of `csr_der`, under a fresh
/// node id that is not in `taken`, with a certificate valid for
/// `validity`.
pub fn admit(
    cluster: &Cluster,
    tokens: &JoinTokens,
    token: &str,
    csr_der: &[u8],
    taken: &BTreeSet<u64>,
    validity: Duration,
) -> Result<Admission, VaultError> {
    let token = JoinToken::parse(token).map_err(|e| VaultError::Denied(e.to_string()))?;
    if token.ca_digest != cluster.ca.digest() {
        return Err(VaultError::Denied(
            "the join token names another root CA: it is not this cluster's (or the CA was rotated)"
                .into(),
        ));
    }
    let role = tokens.role_of(&token, &cluster.ca).ok_or_else(|| {
        VaultError::Denied(
            "invalid join token: it is not one of this cluster's current tokens (rotated?)".into(),
        )
    })?;
    let node = loop {
        let id: u64 = rand::random();
        if id != 0 && !taken.contains(&id) {
            break id;
        }
    };
    let cert_der = cluster.ca.issue_for_csr(csr_der, node, role, validity)?;
    Ok(Admission {
        node,
        role,
        cert_der,
    })
}
