//! The one place where library errors become gRPC statuses, and statuses
//! become the CLI's error lines, with the codes `proto/coffer/v1/kv.proto` documents.
//!
//! Messages are the library errors' own `Display`, which never carries a
//! value, a secret or key material.

use coffer_store::Error;
use tonic::{Code, Status};

/// The status a store error is reported with.
pub fn from_store(e: Error) -> Status {
    let code = match &e {
        Error::NotLeader { .. } | Error::Unavailable(_) | Error::Stopped => Code::Unavailable,
        Error::Timeout(_) => Code::DeadlineExceeded,
        Error::RequestTooLarge { .. } | Error::QuotaExceeded { .. } => Code::ResourceExhausted,
        Error::Compacted { .. } => Code::OutOfRange,
        Error::InvalidArgument(_) => Code::InvalidArgument,
        Error::LeaseNotFound { .. } => Code::NotFound,
        Error::LeaseExists { .. } => Code::AlreadyExists,
        Error::Corruption { .. } => Code::DataLoss,
        Error::KeyRotationInProgress(_) => Code::FailedPrecondition,
        Error::StorageFailed(_) | Error::Engine(_) | Error::Io { .. } | Error::Internal(_) => {
            Code::Internal
        }
        // A variant added to the store later: an internal error until it
        // is given its own code here.
        _ => Code::Internal,
    };
    Status::new(code, e.to_string())
}

/// A call the peer's certificate does not allow.
pub fn from_auth(e: crate::auth::AuthError) -> Status {
    use crate::auth::AuthError;
    let code = match e {
        AuthError::NoCertificate | AuthError::NotANode(_) | AuthError::OtherCluster(_) => {
            Code::Unauthenticated
        }
        AuthError::NotAManager { .. } | AuthError::Removed(_) => Code::PermissionDenied,
    };
    Status::new(code, e.to_string())
}

/// A vault error.
pub fn from_vault(e: coffer_vault::VaultError) -> Status {
    use coffer_vault::VaultError;
    match e {
        VaultError::Store(e) => from_store(e),
        VaultError::InvalidCertificate(_) | VaultError::Invalid(_) => {
            Status::invalid_argument(e.to_string())
        }
        VaultError::Denied(_) => Status::permission_denied(e.to_string()),
        VaultError::NotFound(_) => Status::not_found(e.to_string()),
        VaultError::AlreadyExists(_) => Status::already_exists(e.to_string()),
        VaultError::Precondition(_) => Status::failed_precondition(e.to_string()),
        VaultError::Corrupt { .. } => Status::data_loss(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

/// The data directory was never initialised by `coffer server`.
pub fn no_cluster() -> Status {
    Status::failed_precondition(
        "this data directory holds no cluster yet: start `coffer server` on it once",
    )
}

/// A request the server refuses before it reaches the store.
pub fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message)
}

/// A request the server answered with an error, for the CLI: its
/// `Display` is one line, the server's message without gRPC wrapping.
#[derive(Debug, thiserror::Error)]
#[error("{}", describe(.0))]
pub struct Failed(pub Status);

impl Failed {
    /// The key, lease or object the request named does not exist.
    pub fn is_not_found(&self) -> bool {
        self.0.code() == Code::NotFound
    }
}

/// A failed request as an `anyhow` error (see [`Failed`]).
pub fn failed(status: Status) -> anyhow::Error {
    Failed(status).into()
}

/// A status as the CLI prints it: the server's message, with a hint where
/// the code alone says what to do.
pub fn describe(status: &Status) -> String {
    let message = status.message();
    match status.code() {
        Code::Unavailable if message.is_empty() => "the server is unavailable".into(),
        Code::DeadlineExceeded if message.is_empty() => {
            "the request timed out; a write may or may not have been committed".into()
        }
        _ if message.is_empty() => format!("the server answered {:?}", status.code()),
        _ => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_proto() {
        let cases = [
            (
                Error::NotLeader {
                    leader_id: Some(2),
                    leader_addr: None,
                },
                Code::Unavailable,
            ),
            (Error::Unavailable("no quorum".into()), Code::Unavailable),
            (Error::Timeout(5000), Code::DeadlineExceeded),
            (
                Error::RequestTooLarge { size: 2, limit: 1 },
                Code::ResourceExhausted,
            ),
            (
                Error::QuotaExceeded {
                    used_bytes: 1,
                    requested_bytes: 2,
                    quota_bytes: 2,
                },
                Code::ResourceExhausted,
            ),
            (
                Error::Compacted {
                    requested: 1,
                    oldest: 5,
                },
                Code::OutOfRange,
            ),
            (
                Error::InvalidArgument("empty key".into()),
                Code::InvalidArgument,
            ),
            (Error::LeaseNotFound { id: 7 }, Code::NotFound),
            (Error::LeaseExists { id: 7 }, Code::AlreadyExists),
            (
                Error::Corruption {
                    location: "kv".into(),
                    detail: "bad tag".into(),
                },
                Code::DataLoss,
            ),
            (Error::Internal("bug".into()), Code::Internal),
        ];
        for (error, code) in cases {
            let text = error.to_string();
            let status = from_store(error);
            assert_eq!(status.code(), code, "{text}");
            assert_eq!(status.message(), text);
        }
    }
}
