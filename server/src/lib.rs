//! Coffer's server and CLI (the `coffer` binary), as a library so that
//! tests and other Rust programs reach the same gRPC types and client.
//!
//! Only this crate knows protobuf and tonic: the store and the vault are
//! plain Rust below it.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod agent;
pub mod auth;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod identity;
pub mod join;
pub mod kv;
pub mod lock;
pub mod locked;
pub mod mounts;
pub mod pb;
pub mod raft;
pub mod secrets;
pub mod server;
pub mod signals;
pub mod status;
pub mod tasks;
pub mod tls;
pub mod worker;
