//! Joining a cluster (the joiner's side of `coffer server --join ADDR
//! --token T`): fetch the root CA and refuse it unless its digest is the
//! token's, then trade the token and a signing request for a node id and
//! a certificate; once the node serves, ask the leader to make it a voting
//! member until it has.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use coffer_vault::ca::{cert_digest, signing_request, NodeCert, NodeKey};
use coffer_vault::tokens::JoinToken;
use tracing::{info, warn};

use crate::client::connect_tls;
use crate::pb;
use crate::pb::cluster_client::ClusterClient;
use crate::status::failed;
use crate::tls;

/// What joining gave this node.
#[derive(Debug)]
pub struct Joined {
    pub cert: NodeCert,
    pub cert_der: Vec<u8>,
    pub key: NodeKey,
    pub ca_der: Vec<u8>,
    /// The managers' addresses the cluster answered.
    pub managers: Vec<String>,
}

/// Joins the cluster whose member listens at `addr`, with `token`, as a
/// node the others reach at `advertise`.
pub async fn join(addr: &str, token: &str, advertise: &str) -> Result<Joined> {
    let parsed = JoinToken::parse(token)?;
    // No trust root yet: fetch the CA unverified, then pin it by digest.
    let insecure = connect_tls(addr, tls::danger_unverified_client_config()?).await?;
    let root = ClusterClient::new(insecure)
        .root_ca(pb::RootCaRequest {})
        .await
        .map_err(failed)
        .with_context(|| format!("fetching the root CA from {addr}"))?
        .into_inner();
    let digest = cert_digest(&root.certificate);
    if digest != parsed.ca_digest {
        bail!(
            "the cluster at {addr} has root CA {digest}, not the {} the join token names: refusing to trust it",
            parsed.ca_digest
        );
    }
    let ca_der = root.certificate;
    let key = NodeKey::generate()?;
    let csr = signing_request(&key)?;
    // From here on the pinned CA verifies the server.
    let verified = connect_tls(addr, tls::client_config(&tls::Trust::of(&ca_der), None)?).await?;
    let answer = ClusterClient::new(verified)
        .join(pb::JoinRequest {
            token: token.trim().to_string(),
            csr,
            advertise_addr: advertise.to_string(),
        })
        .await
        .map_err(failed)
        .with_context(|| format!("joining the cluster at {addr}"))?
        .into_inner();
    let cert = NodeCert::verify_with(&answer.certificate, &ca_der)
        .context("the certificate the cluster issued")?;
    info!(
        node = format_args!("{:016x}", cert.node),
        role = %cert.role,
        "joined the cluster"
    );
    Ok(Joined {
        cert,
        cert_der: answer.certificate,
        key,
        ca_der,
        managers: answer.managers,
    })
}

/// Asks the leader (through the members at `candidates`, in turn) to
/// make this manager a voting member at `advertise`, until it has. Gives
/// up after `patience` with an error that says why.
pub async fn become_voter(
    candidates: &[String],
    advertise: &str,
    config: rustls::ClientConfig,
    patience: Duration,
) -> Result<()> {
    let deadline = Instant::now() + patience;
    let mut last = String::new();
    for addr in candidates.iter().cycle() {
        if Instant::now() >= deadline {
            break;
        }
        let attempt = async {
            let channel = connect_tls(addr, config.clone()).await?;
            ClusterClient::new(channel)
                .add_member(pb::AddMemberRequest {
                    advertise_addr: advertise.to_string(),
                })
                .await
                .map_err(failed)?;
            anyhow::Ok(())
        };
        match attempt.await {
            Ok(()) => {
                info!("this node is a voting member");
                return Ok(());
            }
            Err(e) => {
                let now = format!("{e:#}");
                if now != last {
                    warn!("becoming a voting member (asking {addr}): {now}; trying again");
                    last = now;
                }
            }
        }
        tokio::time::sleep(VOTER_RETRY).await;
    }
    bail!("not a voting member after {patience:?}: {last}")
}

/// How long a manager waits between asks to become a voter.
const VOTER_RETRY: Duration = Duration::from_millis(500);
