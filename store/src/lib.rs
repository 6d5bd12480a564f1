//! coffer-store: Coffer's encrypted, Raft-replicated key/value store.
#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

/// Modules whose pure codecs and decisions the fuzz targets (feature
/// `fuzzing`) and this crate's own tests (feature `internals`) reach into;
/// to embedders only what the crate root re-exports is public.
macro_rules! internal_modules {
    ($($(#[$attr:meta])* $name:ident),* $(,)?) => {$(
        #[cfg(any(feature = "fuzzing", feature = "internals"))]
        #[doc(hidden)]
        pub mod $name;
        #[cfg(not(any(feature = "fuzzing", feature = "internals")))]
        $(#[$attr])*
        mod $name;
    )*};
}

internal_modules!(
    codec,
    command,
    // The unlock-key derivation and DEK rotation are tested here and wait
    // for the key flows (autolock, `key rotate`) to call them.
    #[allow(dead_code)]
    crypto,
    event,
    #[allow(dead_code)]
    keyring,
    machine,
    rows,
    snapshot,
    types,
);
pub mod backup;
pub mod range;
pub mod unlock;
pub use unlock::{UnlockKey, UnlockKeyError};

pub use codec::{DecodeError, EncodeError};

/// The wire encoding of the Raft RPCs between members, for transports.
pub mod wire;
pub use command::{
    Check, CmpOp, Command, Compare, KeyMeta, KeyValue, Op, OpResult, Rejection, Request, Response,
    Txn, Value, MAX_DELETE_RANGE_KEYS, MAX_KEY_BYTES, MAX_LEASE_TTL_SECS, MAX_REQUEST_BYTES,
};
pub use event::{Event, EventKind};
pub use range::{prefix_end, Range, RangeResult};
pub use snapshot::{Frame, FrameBytes, SnapshotError, SnapshotReader};
pub use types::{NodeId, TypeConfig};

mod error;
pub use error::{Error, OpenError};

/// The openraft types that [`Transport`], [`Store::metrics`] and
/// [`Store::raft`] expose, re-exported: a transport or a server written
/// against these uses exactly the openraft this store was built with, and
/// needs no openraft dependency (and no matching version) of its own.
pub mod raft {
    pub use openraft::raft::{
        AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
    };
    pub use openraft::{
        BasicNode, LogId, Membership, Raft, RaftMetrics, ServerState, Snapshot, SnapshotMeta,
        StoredMembership, Vote,
    };
}

#[cfg(feature = "engine")]
mod config;
#[cfg(all(feature = "engine", feature = "internals"))]
#[doc(hidden)]
pub mod engine;
#[cfg(all(feature = "engine", not(feature = "internals")))]
mod engine;

#[cfg(feature = "engine")]
pub use config::{Bootstrap, Config, Encryption, LocalResealer, DEFAULT_QUOTA_BYTES};
pub use crypto::KeyId;
/// The same store for code without an async runtime: every call blocks.
#[cfg(feature = "engine")]
pub use engine::blocking;
#[cfg(feature = "engine")]
pub use engine::keys::{has_data, is_autolocked, key_census, reseal_keyring, LocalKeys};
#[cfg(feature = "engine")]
pub use engine::network::{NoPeers, Transport, TransportError};
#[cfg(feature = "engine")]
pub use engine::rekey::{KeyStatus, RekeyPhase};
#[cfg(feature = "engine")]
pub use engine::restore::{clear_restored, restore_snapshot, Restored};
#[cfg(feature = "engine")]
pub use engine::state_machine::LeaseInfo;
#[cfg(feature = "engine")]
pub use engine::store::{
    snapshot_frames, Consistency, DeleteOptions, DeleteRangeResult, DeleteResult, Lease,
    LeaseRevokeResult, PutOptions, PutResult, SnapshotReceiver, Store, TxnResult,
};
#[cfg(feature = "engine")]
pub use engine::watch::{Watch, WatchFilter, WatchItem, WatchOptions};
