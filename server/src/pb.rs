//! The `coffer.v1` gRPC API: message types and tonic stubs generated from
//! `proto/coffer/v1/*.proto` by `scripts/protogen` (committed, and checked
//! by `.ci/run`, so that building Coffer needs no code generator).

#![allow(clippy::all, missing_debug_implementations, unreachable_pub)]

include!("pb/coffer.v1.rs");

/// The encoded `FileDescriptorSet` of every `coffer.v1` file, for server
/// reflection.
#[allow(dead_code)]
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("pb/coffer.v1.bin");
