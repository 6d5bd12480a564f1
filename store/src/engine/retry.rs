//! Raft calls that ride out an election.
//!
//! While a cluster elects a leader, openraft refuses writes and reads with
//! `ForwardToLeader` naming no leader. Both the proposer and linearizable
//! reads retry those after a short backoff until their deadline; a refusal
//! that names a leader is returned as `NotLeader` at once.

use std::future::Future;
use std::time::Duration;

use openraft::error::ForwardToLeader;
use openraft::BasicNode;
use tokio::time::Instant;

use crate::error::Error;
use crate::types::NodeId;

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
