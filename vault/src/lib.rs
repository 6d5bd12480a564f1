//! coffer-vault: secrets, cluster objects (configuration, root CA, join
//! tokens, unlock key, nodes), task assignments and secret delivery, kept in
//! a [`coffer_store::Store`].
//!
//! This crate is the seam where those objects will live (DESIGN.md §4);
//! the store it builds on is complete. Nothing is exported yet.

#![forbid(unsafe_code)]
