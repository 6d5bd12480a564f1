//! Raft calls that ride out an election.
//!
//! While a cluster elects a leader, openraft refuses writes and reads with
//! `ForwardToLeader` naming no leader. Both the proposer and linearizable
//! reads retry those after a short backoff until their deadline; a refusal
//! that names a leader is returned as `NotLeader` at once.

use std::future::Future;
use std::time::Duration;

use openraft::error::ForwardToLeader;
use openraft::{BasicNode, Raft};
use tokio::time::Instant;

use crate::error::Error;
use crate::types::{NodeId, TypeConfig};

/// How long a retry waits while no leader is known.
pub const NO_LEADER_BACKOFF: Duration = Duration::from_millis(20);

/// Why one attempt did not succeed.
#[derive(Debug)]
pub enum Refused {
    /// Not the leader (possibly no leader yet).
    Forward(ForwardToLeader<NodeId, BasicNode>),
    /// Anything else: returned as is.
    Failed(Error),
}

pub fn not_leader(f: ForwardToLeader<NodeId, BasicNode>) -> Error {
    Error::NotLeader {
        leader_id: f.leader_id,
        leader_addr: f.leader_node.map(|n| n.addr),
    }
}

/// Runs `attempt` until it succeeds, fails for another reason, a leader
/// other than this member is named, or `timeout` passes.
pub async fn through_election<T, Fut>(
    timeout: Duration,
    mut attempt: impl FnMut() -> Fut,
) -> Result<T, Error>
where
    Fut: Future<Output = Result<T, Refused>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, attempt()).await {
            Err(_) => return Err(Error::timeout(timeout)),
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(Refused::Failed(e))) => return Err(e),
            Ok(Err(Refused::Forward(f))) => {
                if f.leader_id.is_some() || Instant::now() + NO_LEADER_BACKOFF >= deadline {
                    return Err(not_leader(f));
                }
                tokio::time::sleep(NO_LEADER_BACKOFF).await;
            }
        }
    }
}

/// What a request that ran out of time on this member tells its caller.
/// A leader asks its followers once more (a read index, for at most an
/// election timeout): when a majority does not answer, or no leader is
/// known at all, the cluster has no quorum now (`Unavailable`, saying so);
/// otherwise the request was only slow (`Timeout`). Either way a write may
/// or may not take effect later.
pub async fn timed_out(raft: &Raft<TypeConfig>, error: Error) -> Error {
    if !matches!(error, Error::Timeout(_)) {
        return error;
    }
    let metrics = raft.metrics().borrow().clone();
    let voters = metrics.membership_config.membership().voter_ids().count();
    match metrics.current_leader {
        Some(leader) if leader == metrics.id => {
            let probe = Duration::from_millis(raft.config().election_timeout_max);
            match tokio::time::timeout(probe, raft.ensure_linearizable()).await {
                Ok(Ok(_)) => error,
                _ => Error::Unavailable(format!(
                    "no quorum: a majority of the {voters} voters does not answer this leader; the request may or may not take effect if one returns"
                )),
            }
        }
        Some(_) => error,
        None => Error::Unavailable(format!(
            "no quorum: no leader is elected among the {voters} voters; the request may or may not take effect if one returns"
        )),
    }
}
