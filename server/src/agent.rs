//! A node's agent: every few seconds it asks the managers for this node's
//! standing (`Cluster.Renew`), and
//! - renews the node's certificate in the last third of its validity,
//!   swapping it into the running server and client without a restart;
//! - when the cluster wants another role (`node promote`, `node demote`),
//!   takes a certificate for that role and tells the server to switch;
//! - when the node was removed (`node rm`), tells the server to stop;
//! - keeps the managers' addresses in `identity/managers`, so that a
//!   restarted worker knows where to ask.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use coffer_store::{LocalKeys, Store};
use coffer_vault::ca::{signing_request, NodeKey, Role};
use tonic::Code;
use tracing::{debug, info, warn};

use crate::client::connect_tls;
use crate::identity::{self, Identity};
use crate::pb;
use crate::pb::cluster_client::ClusterClient;
use crate::raft::GrpcTransport;
use crate::tls::{self, ClientVerifier, NodeCertResolver, Trust};

/// How often a node asks for its standing.
pub const AGENT_INTERVAL: Duration = Duration::from_secs(2);
/// How long one ask may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// What the agent tells the server to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The cluster wants this node in `Role`; its certificate for that
    /// role is on disk.
    Switch(Role),
    /// The cluster removed this node.
    Removed(String),
}

/// The agent of one running node.
#[derive(Debug)]
pub struct Agent {
    pub dir: PathBuf,
    pub keys: LocalKeys,
    pub identity: Identity,
    /// What the node trusts and presents.
    pub trust: Trust,
    /// The client certificate verifier of the node's port.
    pub verifier: Arc<ClientVerifier>,
    /// The certificate the node's port presents.
    pub resolver: Arc<NodeCertResolver>,
    /// A manager's transport, whose client certificate follows renewals.
    pub transport: Option<GrpcTransport>,
    /// A manager's store: the members it knows of are asked too.
    pub store: Option<Store>,
    /// Where the managers are, in the order to try them.
    pub managers: Vec<String>,
    /// This node's own address: asked last (a manager that is not the
    /// leader forwards the ask).
    pub own: Option<String>,
}

enum Asked {
    Answer(pb::RenewResponse),
    Removed(String),
}

impl Agent {
    /// Runs until the node must switch roles or stop.
    pub async fn run(mut self) -> Verdict {
        let mut last_error = String::new();
        loop {
            tokio::time::sleep(AGENT_INTERVAL).await;
            match self.tick().await {
                Ok(Some(verdict)) => return verdict,
                Ok(None) => last_error.clear(),
                Err(e) => {
                    let now = format!("{e:#}");
                    if now != last_error {
                        warn!("asking the managers for this node's standing: {now}");
                        last_error = now;
                    }
                }
            }
        }
    }

    async fn tick(&mut self) -> Result<Option<Verdict>> {
        let renew = identity::due_for_renewal(&self.identity.cert);
        let key = renew.then(NodeKey::generate).transpose()?;
        let mut answer = match self.ask(key.as_ref()).await? {
            Asked::Removed(why) => return Ok(Some(Verdict::Removed(why))),
            Asked::Answer(answer) => answer,
        };
        self.remember_managers(&answer.managers);
        if !answer.trusted_roots.is_empty() {
            let trust = Trust {
                roots: std::mem::take(&mut answer.trusted_roots),
                chain: std::mem::take(&mut answer.chain),
            };
            if trust != self.trust {
                self.apply_trust(trust)?;
            }
        }
        let role = match answer.role.as_str() {
            "manager" => Role::Manager,
            "worker" => Role::Worker,
            other => bail!("the managers answered an unknown role {other:?}"),
        };
        // The managers issue for the role they want: a certificate asked
        // for with a renewal already has the new role.
        if answer.renew_now && key.is_none() {
            info!("a root CA rotation is under way: renewing this node's certificate under the new root");
        }
        let (key, certificate) = match (key, role == self.identity.cert.role && !answer.renew_now) {
            (Some(key), _) => (key, std::mem::take(&mut answer.certificate)),
            (None, true) => return Ok(None),
            (None, false) => {
                let key = NodeKey::generate()?;
                match self.ask(Some(&key)).await? {
                    Asked::Removed(why) => return Ok(Some(Verdict::Removed(why))),
                    Asked::Answer(answer) => (key, answer.certificate),
                }
            }
        };
        let (cert, _) = self
            .trust
            .verify(&certificate)
            .context("the certificate the managers issued")?;
        if cert.cluster_id != self.identity.cert.cluster_id {
            bail!(
                "the managers issued a certificate for cluster {}, not this node's {}",
                cert.cluster_id,
                self.identity.cert.cluster_id
            );
        }
        if cert.node != self.identity.cert.node {
            bail!(
                "the managers issued a certificate for node {:016x}, not this one",
                cert.node
            );
        }
        identity::save(&self.dir, &self.keys, &certificate, &key, &self.trust)?;
        if cert.role != self.identity.cert.role {
            info!(from = %self.identity.cert.role, to = %cert.role, "the cluster changed this node's role");
            return Ok(Some(Verdict::Switch(cert.role)));
        }
        self.resolver.replace(&certificate, &key, &self.trust)?;
        if let Some(transport) = &self.transport {
            transport
                .set_client_config(tls::client_config(&self.trust, Some((&certificate, &key)))?);
        }
        info!(
            expires_in_days = (cert.not_after_unix - identity::unix_now()) / 86_400,
            "renewed this node's certificate"
        );
        self.identity = Identity {
            cert_der: certificate,
            key,
            cert,
        };
        Ok(None)
    }

    /// Trusts and presents `trust` from now on (a root CA rotation began
    /// or ended). A root it did not trust before is taken only with a
    /// certificate in the chain that a root it trusts signed for it.
    fn apply_trust(&mut self, trust: Trust) -> Result<()> {
        for root in &trust.roots {
            if self.trust.roots.contains(root) {
                continue;
            }
            let vouched = trust.chain.iter().any(|cross| {
                self.trust
                    .roots
                    .iter()
                    .any(|known| coffer_vault::ca::verify_cross_signed(known, root, cross).is_ok())
            });
            if !vouched {
                bail!("the managers named a root CA that no root this node trusts vouches for");
            }
        }
        self.verifier.replace(&trust)?;
        self.resolver
            .replace(&self.identity.cert_der, &self.identity.key, &trust)?;
        if let Some(transport) = &self.transport {
            transport.set_client_config(tls::client_config(
                &trust,
                Some((&self.identity.cert_der, &self.identity.key)),
            )?);
        }
        // On disk last: what the files say is in force.
        identity::save_trust(&self.dir, &trust)?;
        info!(
            roots = trust.roots.len(),
            root = &coffer_vault::ca::cert_digest(trust.current())[..12],
            "this node's trusted root CAs changed"
        );
        self.trust = trust;
        Ok(())
    }

    /// Asks the managers in turn until one answers.
    async fn ask(&self, key: Option<&NodeKey>) -> Result<Asked> {
        let csr = key.map(signing_request).transpose()?.unwrap_or_default();
        // Which of the roots it trusts issued its certificate.
        let cert_root = self
            .trust
            .verify(&self.identity.cert_der)
            .map(|(_, root)| root)
            .unwrap_or_default();
        let config = tls::client_config(
            &self.trust,
            Some((&self.identity.cert_der, &self.identity.key)),
        )?;
        let mut candidates: Vec<String> = self.managers.clone();
        if let Some(store) = &self.store {
            let membership = store.metrics().membership_config;
            for (_, member) in membership.membership().nodes() {
                if !candidates.contains(&member.addr) {
                    candidates.push(member.addr.clone());
                }
            }
        }
        candidates.retain(|m| Some(m) != self.own.as_ref());
        candidates.extend(self.own.clone());
        let mut last = None;
        for addr in &candidates {
            let attempt = async {
                let channel = connect_tls(addr, config.clone()).await?;
                let mut request = tonic::Request::new(pb::RenewRequest {
                    csr: csr.clone(),
                    cert_root: cert_root.clone(),
                });
                request.set_timeout(ASK_TIMEOUT);
                anyhow::Ok(ClusterClient::new(channel).renew(request).await)
            };
            match tokio::time::timeout(ASK_TIMEOUT, attempt).await {
                Ok(Ok(Ok(answer))) => return Ok(Asked::Answer(answer.into_inner())),
                Ok(Ok(Err(status))) if status.code() == Code::PermissionDenied => {
                    return Ok(Asked::Removed(status.message().to_string()))
                }
                Ok(Ok(Err(status))) => {
                    debug!(%addr, "asking for this node's standing: {}", status.message());
                    last = Some(format!("{addr}: {}", status.message()));
                }
                Ok(Err(e)) => last = Some(format!("{addr}: {e:#}")),
                Err(_) => last = Some(format!("{addr}: no answer within {ASK_TIMEOUT:?}")),
            }
        }
        bail!(
            "no manager answered ({})",
            last.unwrap_or_else(|| "none known".into())
        )
    }

    fn remember_managers(&mut self, managers: &[String]) {
        if managers.is_empty() || managers == self.managers.as_slice() {
            return;
        }
        self.managers = managers.to_vec();
        if let Err(e) = identity::save_managers(&self.dir, managers) {
            warn!("recording the managers' addresses: {e:#}");
        }
    }
}
