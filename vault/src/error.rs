//! The vault's errors. None carries key material or secret data.

use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum VaultError {
    #[error(transparent)]
    Store(#[from] coffer_store::Error),
    /// Making or signing a certificate failed.
    #[error("certificate: {0}")]
    Certificate(String),
    /// A stored object did not decode.
    #[error("corrupt {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    /// No such object.
    #[error("{0}")]
    NotFound(String),
    /// An object with that name exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// The object is in a state that does not allow this (a secret a
    /// task uses, a task on another node).
    #[error("{0}")]
    Precondition(String),
    /// Reading or writing local files (a mount's) failed.
    #[error("{0}")]
    Io(String),
    /// A value outside what the cluster accepts.
    #[error("{0}")]
    Invalid(String),
    /// A join token or request this cluster does not accept.
    #[error("{0}")]
    Denied(String),
    /// A certificate that is not one this cluster's CA issues.
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
}

impl From<rcgen::Error> for VaultError {
    fn from(e: rcgen::Error) -> Self {
        VaultError::Certificate(e.to_string())
    }
}
