//! The store's public errors.
//!
//! [`OpenError`] is what opening a data directory can fail with; [`Error`]
//! is what an operation on an open store can fail with. Both separate
//! retryable conditions (no leader yet, no quorum, timeout) from fatal ones
//! (corruption, wrong key): see [`Error::is_retryable`]. No message carries a
//! key name's value, a secret or key material.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::types::NodeId;

/// Why [`crate::Store::open`] failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// The key-encryption key does not open the keyring.
    #[error("{path}: wrong key-encryption key: this data directory was sealed under another key")]
    WrongKey { path: PathBuf },
    /// The keyring is sealed under a cluster unlock key (autolock) and
    /// none was given.
    #[error("{path}: this node is locked (autolock): it opens only with the cluster's unlock key (`coffer unlock`)", path = .path.display())]
    Locked { path: PathBuf },
    /// The unlock key given is not the one the keyring is sealed under.
    #[error("{path}: wrong unlock key: the keyring is sealed under another one", path = .path.display())]
    WrongUnlockKey { path: PathBuf },
    /// A file under the data directory is damaged.
    #[error("corruption in {path}: {detail}")]
    Corruption { path: PathBuf, detail: String },
    /// A key file or the keys directory can be read or changed by other
    /// users. Nothing was read from it.
    #[error("{path} has mode {mode:04o}, which lets other users reach key material; fix it with `chmod {want:o} {path}`", path = .path.display())]
    Permissions { path: PathBuf, mode: u32, want: u32 },
    /// The data directory holds data but no keys, or keys but no data.
    #[error("{path}: {detail}")]
    Inconsistent { path: PathBuf, detail: String },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("storage engine: {0}")]
    Engine(String),
    #[error("raft: {0}")]
    Raft(String),
}

/// Why an operation on an open store failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// This member is not the leader. Retry on the leader (if known).
    #[error("not the leader{}", match (.leader_id, .leader_addr) {
        (Some(id), Some(addr)) => format!("; the leader is node {id} at {addr}"),
        (Some(id), None) => format!("; the leader is node {id}"),
        _ => "; no leader is known yet".to_string(),
    })]
    NotLeader {
        leader_id: Option<NodeId>,
        leader_addr: Option<String>,
    },
    /// The cluster cannot reach a quorum right now.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// No answer within the request timeout. A write may or may not have
    /// been committed.
    #[error("timed out after {0} ms; a write may or may not have been committed")]
    Timeout(u64),
    /// The encoded request exceeds [`crate::MAX_REQUEST_BYTES`].
    #[error("request of {size} bytes exceeds the limit of {limit} bytes")]
    RequestTooLarge { size: usize, limit: usize },
    /// The write would take the store past its quota; nothing changed.
    #[error("store quota exceeded: {used_bytes} bytes used, {requested_bytes} more requested, quota {quota_bytes}")]
    QuotaExceeded {
        used_bytes: u64,
        requested_bytes: u64,
        quota_bytes: u64,
    },
    /// A watch asked for history that has been compacted away.
    #[error("revision {requested} is compacted; the oldest available revision is {oldest}")]
    Compacted { requested: u64, oldest: u64 },
    /// A malformed argument (empty or oversized key, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The lease does not exist: it expired, was revoked, or never was.
    #[error("lease {id:016x} not found (it expired, was revoked, or never existed)")]
    LeaseNotFound { id: u64 },
    /// A grant named a lease id that is already taken.
    #[error("lease {id:016x} already exists")]
    LeaseExists { id: u64 },
    /// Stored data failed to decode or authenticate.
    #[error("corruption in {location}: {detail}")]
    Corruption { location: String, detail: String },
    #[error("storage engine: {0}")]
    Engine(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// The store was shut down ([`crate::Store::shutdown`]); open it again
    /// to go on.
    #[error("the store is shut down")]
    Stopped,
    /// This member's Raft core stopped because of a storage failure (an
    /// I/O error or damage found while it ran); it serves nothing more
    /// until reopened, and the cause must be fixed first.
    #[error("the store stopped after a storage failure: {0}")]
    StorageFailed(String),
    /// A key rotation was asked for while the previous one still
    /// re-encrypts records; the message says how far it is.
    #[error("a key rotation is still in progress ({0}); try again when it is done")]
    KeyRotationInProgress(String),
    /// A bug inside the store: a background task panicked or a lock was
    /// poisoned. The message says which; please report it.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// A request that got no answer within `after`.
    #[cfg(feature = "engine")]
    pub(crate) fn timeout(after: std::time::Duration) -> Error {
        Error::Timeout(u64::try_from(after.as_millis()).unwrap_or(u64::MAX))
    }

    /// The same error for another caller of a shared batch. I/O errors,
    /// which cannot be cloned, keep their message.
    #[cfg(feature = "engine")]
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::NotLeader {
                leader_id,
                leader_addr,
            } => Error::NotLeader {
                leader_id: *leader_id,
                leader_addr: leader_addr.clone(),
            },
            Error::Unavailable(s) => Error::Unavailable(s.clone()),
            Error::Timeout(ms) => Error::Timeout(*ms),
            Error::RequestTooLarge { size, limit } => Error::RequestTooLarge {
                size: *size,
                limit: *limit,
            },
            Error::QuotaExceeded {
                used_bytes,
                requested_bytes,
                quota_bytes,
            } => Error::QuotaExceeded {
                used_bytes: *used_bytes,
                requested_bytes: *requested_bytes,
                quota_bytes: *quota_bytes,
            },
            Error::Compacted { requested, oldest } => Error::Compacted {
                requested: *requested,
                oldest: *oldest,
            },
            Error::InvalidArgument(s) => Error::InvalidArgument(s.clone()),
            Error::LeaseNotFound { id } => Error::LeaseNotFound { id: *id },
            Error::LeaseExists { id } => Error::LeaseExists { id: *id },
            Error::Corruption { location, detail } => Error::Corruption {
                location: location.clone(),
                detail: detail.clone(),
            },
            Error::Engine(s) => Error::Engine(s.clone()),
            Error::Io { path, source } => Error::Io {
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            Error::Stopped => Error::Stopped,
            Error::StorageFailed(s) => Error::StorageFailed(s.clone()),
            Error::KeyRotationInProgress(s) => Error::KeyRotationInProgress(s.clone()),
            Error::Internal(s) => Error::Internal(s.clone()),
        }
    }

    /// Whether the same request may succeed if retried later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::NotLeader { .. } | Error::Unavailable(_) | Error::Timeout(_)
        )
    }
}

#[cfg(feature = "engine")]
impl From<openraft::error::Fatal<NodeId>> for Error {
    /// What stopped the Raft core, said plainly.
    fn from(f: openraft::error::Fatal<NodeId>) -> Self {
        use openraft::error::Fatal;
        match f {
            Fatal::Stopped => Error::Stopped,
            Fatal::StorageError(e) => Error::StorageFailed(e.to_string()),
            Fatal::Panicked => Error::Internal("the Raft core panicked".into()),
        }
    }
}

#[cfg(feature = "engine")]
impl From<openraft::error::RaftError<NodeId>> for Error {
    fn from(e: openraft::error::RaftError<NodeId>) -> Self {
        match e {
            openraft::error::RaftError::Fatal(f) => Error::from(f),
            openraft::error::RaftError::APIError(never) => match never {},
        }
    }
}

#[cfg(feature = "engine")]
impl From<tokio::task::JoinError> for Error {
    /// A blocking task the store started did not finish.
    fn from(e: tokio::task::JoinError) -> Self {
        if e.is_cancelled() {
            Error::Stopped
        } else {
            Error::Internal(format!("a background task panicked: {e}"))
        }
    }
}

impl From<crate::codec::EncodeError> for Error {
    /// Only an input past the format's `u32` limits gets here, and every
    /// request is bounded far below them.
    fn from(e: crate::codec::EncodeError) -> Self {
        Error::InvalidArgument(e.to_string())
    }
}

impl From<crate::crypto::SealError> for Error {
    fn from(e: crate::crypto::SealError) -> Self {
        Error::InvalidArgument(e.to_string())
    }
}

impl From<crate::snapshot::SnapshotError> for Error {
    fn from(e: crate::snapshot::SnapshotError) -> Self {
        use crate::snapshot::SnapshotError;
        match e {
            SnapshotError::Io { path, source } => Error::Io { path, source },
            SnapshotError::Corrupt { path, detail } => Error::Corruption {
                location: path.display().to_string(),
                detail,
            },
            // Out-of-order frames come from whoever sent them.
            SnapshotError::Sequence(s) => Error::InvalidArgument(format!("snapshot stream: {s}")),
            SnapshotError::Encode(e) => Error::from(e),
            SnapshotError::Seal(e) => Error::from(e),
        }
    }
}
