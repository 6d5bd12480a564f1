//! The RocksDB + openraft engine behind [`crate::Store`].

pub mod blocking;
pub mod db;
pub mod keys;
pub mod log_store;
pub mod network;
pub mod proposer;
pub mod rekey;
pub mod restore;
pub mod retry;
pub mod snapshots;
pub mod state_machine;
pub mod store;
pub mod watch;

#[cfg(test)]
mod tests;
