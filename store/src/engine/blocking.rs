//! A blocking facade for embedders without an async runtime (as most users
//! of redb or sled are): the same calls as [`crate::Store`], each one
//! returning when it is done. The facade owns a small tokio runtime on
//! which the store's Raft tasks run; handles are cheap to clone and may be
//! used from any number of threads.
//!
//! Calling it from inside an async runtime would block one of that
//! runtime's workers: it refuses with an error that says to use
//! [`crate::Store`] there instead.

use std::future::Future;
use std::sync::Arc;

use tokio::runtime::{Handle, Runtime};

use crate::command::{KeyValue, Txn, Value};
use crate::config::Config;
use crate::engine::state_machine::LeaseInfo;
use crate::engine::store::{
    Consistency, DeleteOptions, DeleteRangeResult, DeleteResult, Lease, LeaseRevokeResult,
    PutOptions, PutResult, TxnResult,
};
use crate::engine::watch::{WatchItem, WatchOptions};
use crate::error::{Error, OpenError};
use crate::event::Event;
use crate::range::{Range, RangeResult};

/// Worker threads of the facade's runtime: Raft, the proposer and the
/// state machine need little; blocking reads get threads of their own.
const WORKER_THREADS: usize = 2;

const INSIDE_RUNTIME: &str = "the blocking store was called from inside an async runtime, \
     where it would block a worker: use coffer_store::Store there";

/// A [`crate::Store`] whose calls block. Cheap to clone; `Send + Sync`.
#[derive(Debug, Clone)]
pub struct Store {
    runtime: Arc<Runtime>,
    store: crate::Store,
}

impl Store {
    /// Opens (or creates) the store in `config.dir`, as
    /// [`crate::Store::open`] does.
    pub fn open(config: Config) -> Result<Store, OpenError> {
        if Handle::try_current().is_ok() {
            return Err(OpenError::Config(INSIDE_RUNTIME.into()));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .thread_name("coffer-blocking")
            .enable_all()
            .build()
            .map_err(|e| OpenError::Engine(format!("cannot start the store's runtime: {e}")))?;
        let store = runtime.block_on(crate::Store::open(config))?;
        Ok(Store {
            runtime: Arc::new(runtime),
            store,
        })
    }

    /// Runs one call of the async store to completion.
    fn run<T>(&self, call: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        if Handle::try_current().is_ok() {
            return Err(Error::InvalidArgument(INSIDE_RUNTIME.into()));
        }
        self.runtime.block_on(call)
    }

    /// The async store underneath, for code that has a runtime after all.
    pub fn as_async(&self) -> &crate::Store {
        &self.store
    }

    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<u64, Error> {
        self.run(self.store.put(key, value))
    }

    pub fn put_with(
        &self,
        key: &[u8],
        value: &[u8],
        options: PutOptions,
    ) -> Result<PutResult, Error> {
        self.run(self.store.put_with(key, value, options))
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Value>, Error> {
        self.run(self.store.get(key))
    }

    pub fn get_kv(&self, key: &[u8], consistency: Consistency) -> Result<Option<KeyValue>, Error> {
        self.run(self.store.get_kv(key, consistency))
    }

    pub fn delete(&self, key: &[u8]) -> Result<DeleteResult, Error> {
        self.run(self.store.delete(key))
    }

    pub fn delete_with(&self, key: &[u8], options: DeleteOptions) -> Result<DeleteResult, Error> {
        self.run(self.store.delete_with(key, options))
    }

    pub fn delete_range(
        &self,
        range: Range,
        options: DeleteOptions,
    ) -> Result<DeleteRangeResult, Error> {
        self.run(self.store.delete_range(range, options))
    }

    pub fn list(&self, prefix: &[u8], consistency: Consistency) -> Result<Vec<KeyValue>, Error> {
        self.run(self.store.list(prefix, consistency))
    }

    pub fn range(&self, range: Range, consistency: Consistency) -> Result<RangeResult, Error> {
        self.run(self.store.range(range, consistency))
    }

    pub fn txn(&self, txn: Txn) -> Result<TxnResult, Error> {
        self.run(self.store.txn(txn))
    }

    pub fn compact(&self, revision: u64) -> Result<(), Error> {
        self.run(self.store.compact(revision))
    }

    pub fn revision(&self) -> Result<u64, Error> {
        self.store.revision()
    }

    /// Grants a lease; see [`crate::Store::lease_grant`]. Its countdown
    /// runs on the facade's own runtime, so leases expire while the
    /// caller's threads do other things.
    pub fn lease_grant(&self, ttl: std::time::Duration) -> Result<Lease, Error> {
        self.run(self.store.lease_grant(ttl))
    }

    pub fn lease_grant_with_id(&self, id: u64, ttl: std::time::Duration) -> Result<Lease, Error> {
        self.run(self.store.lease_grant_with_id(id, ttl))
    }

    pub fn lease_keep_alive(&self, id: u64) -> Result<std::time::Duration, Error> {
        self.run(self.store.lease_keep_alive(id))
    }

    pub fn lease_revoke(&self, id: u64) -> Result<LeaseRevokeResult, Error> {
        self.run(self.store.lease_revoke(id))
    }

    pub fn leases(&self, consistency: Consistency) -> Result<Vec<LeaseInfo>, Error> {
        self.run(self.store.leases(consistency))
    }

    pub fn lease_keys(&self, id: u64, consistency: Consistency) -> Result<Vec<Vec<u8>>, Error> {
        self.run(self.store.lease_keys(id, consistency))
    }

    /// Watches keys under `prefix` from revision `from` (0: changes after
    /// now). The watch is an [`Iterator`] of events.
    pub fn watch(&self, prefix: &[u8], from: u64) -> Result<Watch, Error> {
        Ok(Watch {
            runtime: self.runtime.clone(),
            watch: self.store.watch(prefix, from)?,
        })
    }

    pub fn watch_with(&self, prefix: &[u8], options: WatchOptions) -> Result<Watch, Error> {
        Ok(Watch {
            runtime: self.runtime.clone(),
            watch: self.store.watch_with(prefix, options)?,
        })
    }

    /// Shuts the store down and waits until its directory is released.
    pub fn shutdown(self) -> Result<(), Error> {
        let Store { runtime, store } = self;
        if Handle::try_current().is_ok() {
            return Err(Error::InvalidArgument(INSIDE_RUNTIME.into()));
        }
        runtime.block_on(store.shutdown())
    }
}

/// A blocking [`crate::Watch`]: `next` waits for the next event, and as an
/// [`Iterator`] it yields events until the watch ends.
#[derive(Debug)]
pub struct Watch {
    runtime: Arc<Runtime>,
    watch: crate::Watch,
}

impl Watch {
    /// The next event (progress notifications skipped).
    pub fn next_event(&mut self) -> Result<Event, Error> {
        if Handle::try_current().is_ok() {
            return Err(Error::InvalidArgument(INSIDE_RUNTIME.into()));
        }
        self.runtime.block_on(self.watch.next())
    }

    /// The next event or progress notification.
    pub fn next_item(&mut self) -> Result<WatchItem, Error> {
        if Handle::try_current().is_ok() {
            return Err(Error::InvalidArgument(INSIDE_RUNTIME.into()));
        }
        self.runtime.block_on(self.watch.next_item())
    }
}

impl Iterator for Watch {
    type Item = Result<Event, Error>;

    /// The next event; `None` once the watch has ended (after the error
    /// that ended it).
    fn next(&mut self) -> Option<Self::Item> {
        if Handle::try_current().is_ok() {
            return Some(Err(Error::InvalidArgument(INSIDE_RUNTIME.into())));
        }
        loop {
            let item = self
                .runtime
                .block_on(futures::StreamExt::next(&mut self.watch))?;
            match item {
                Ok(WatchItem::Event(e)) => return Some(Ok(e)),
                Ok(WatchItem::Progress { .. }) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
