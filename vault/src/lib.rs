//! coffer-vault: the objects a cluster keeps in its store (DESIGN.md §4),
//! as typed values over a [`coffer_store::Store`]: so far the cluster
//! record with its root CA ([`cluster`]), and the certificates the CA
//! issues to nodes ([`ca`]), join tokens ([`tokens`]), node records
//! ([`nodes`]), secrets ([`secrets`]) and the tasks that use them
//! ([`tasks`]).
//!
//! Every object lives under the reserved key prefix [`SYSTEM_PREFIX`]
//! (a 0x00 byte), which the server's `Kv` service refuses to read or
//! write: no remote key/value call reaches the CA key or a secret.

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod autolock;
pub mod ca;
pub mod cluster;
pub mod config;
mod error;
pub mod join;
pub mod mount;
pub mod nodes;
mod objects;
mod record;
pub mod secrets;
pub mod tasks;
pub mod tokens;

pub use error::VaultError;

/// Keys starting with this byte belong to the vault.
pub const SYSTEM_PREFIX: u8 = 0;
