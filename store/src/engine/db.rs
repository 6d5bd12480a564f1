//! The RocksDB instance and sealed reads and writes on it.
//!
//! One RocksDB database holds every column family, so they share one
//! write-ahead log: a synced write makes every earlier write durable too,
//! which is what lets state-machine writes skip their own fsync (see
//! ARCHITECTURE.md, "Durability").
//!
//! Every row's layout, with its version byte, is in ARCHITECTURE.md ("On
//! disk"). The `meta` row `format` holds the version of the data
//! directory as a whole: [`Db::check_format`] refuses a directory written
//! by a newer build, or by a build from before versions, instead of
//! misreading it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};
use zeroize::Zeroizing;

use crate::crypto::Cipher;
use crate::error::Error;

pub const CF_META: &str = "meta";
pub const CF_LOG: &str = "log";
pub const CF_KV: &str = "kv";
pub const CF_EVENTS: &str = "events";
pub const CF_LEASES: &str = "leases";
pub const ALL_CFS: [&str; 5] = [CF_META, CF_LOG, CF_KV, CF_EVENTS, CF_LEASES];

/// Version of the data directory's layout as a whole: which rows exist
/// and what each holds. A build reads the formats it knows and migrates
/// older ones on open.
///
/// - 1: the first versioned format.
/// - 2: leases (the `leases` column family; `kv` rows, event records and
///   snapshot frames carry a key's lease). Format 1 rows still read as
///   they are (no lease).
/// - 3: `kv` rows hold every version still in the history, under the
///   name's hash and the version's revision, and deletes leave tombstones
///   (reads at past revisions). Opening a format 1 or 2 directory rewrites
///   its `kv` rows ([`crate::engine::state_machine::migrate_kv_rows`]).
pub const FORMAT_VERSION: u32 = 3;
const META_FORMAT: &[u8] = b"format";

/// A row key with its opened value.
pub type OpenedRow = (Box<[u8]>, Zeroizing<Vec<u8>>);

pub struct Db {
    pub db: DB,
    pub cipher: Arc<Cipher>,
    pub path: PathBuf,
    /// Held by every write of the Raft log store, from its first seal to
    /// its write, so that re-encryption ([`crate::engine::rekey`]) never
    /// interleaves with one.
    log_gate: Mutex<()>,
    /// Held (shared) by reads that may hold a sealed row for a while
    /// before opening it (log reads, snapshot builds from a database
    /// view); a key rotation deletes old keys only while it can hold it
    /// alone.
    key_gate: RwLock<()>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The associated data of a row: its column family and key.
pub fn location(cf: &str, key: &[u8]) -> Vec<u8> {
    let mut loc = Vec::with_capacity(cf.len() + 1 + key.len());
    loc.extend_from_slice(cf.as_bytes());
    loc.push(0);
    loc.extend_from_slice(key);
    loc
}

/// A RocksDB error on the database at `path`. Damage RocksDB detects (a
/// block checksum mismatch, a file shorter than the manifest says) is
/// corruption of the database, not a transient engine failure; RocksDB's
/// message names the damaged file.
fn engine_error(path: &Path, e: rocksdb::Error) -> Error {
    match e.kind() {
        rocksdb::ErrorKind::Corruption => Error::Corruption {
            location: path.display().to_string(),
            detail: e.into_string(),
        },
        _ => Error::Engine(e.into_string()),
    }
}

impl Db {
    pub fn open(path: &Path, cipher: Arc<Cipher>) -> Result<Self, Error> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_paranoid_checks(true);
        opts.increase_parallelism(2);
        opts.set_max_background_jobs(2);
        // Values are sealed: compression would find nothing to compress.
        opts.set_compression_type(rocksdb::DBCompressionType::None);
        // The hash memtable below takes one writer at a time (RocksDB
        // groups concurrent writes anyway).
        opts.set_allow_concurrent_memtable_write(false);
        let cfs = ALL_CFS.iter().map(|name| {
            let mut o = Options::default();
            if *name == CF_KV {
                // `kv` rows are `hash ‖ revision`: a memtable hashed on the
                // name's hash makes each insert (a new version, or the
                // delete of a replaced one) a short walk in its key's
                // bucket instead of a search of one large skiplist. This
                // measured 15-20% more puts per second with 64 and 256
                // writers. Scans of the whole family ask for total order
                // ([`Db::total_order`]).
                o.set_prefix_extractor(rocksdb::SliceTransform::create_fixed_prefix(32));
                o.set_memtable_factory(rocksdb::MemtableFactory::HashSkipList {
                    bucket_count: 1 << 18,
                    height: 4,
                    branching_factor: 4,
                });
            }
            o.set_compression_type(rocksdb::DBCompressionType::None);
            ColumnFamilyDescriptor::new(*name, o)
        });
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| engine_error(path, e))?;
        Ok(Db {
            db,
            cipher,
            path: path.to_path_buf(),
            log_gate: Mutex::new(()),
            key_gate: RwLock::new(()),
        })
    }

    /// See [`Db::key_gate`](struct.Db.html#structfield.key_gate).
    pub fn key_readers(&self) -> RwLockReadGuard<'_, ()> {
        self.key_gate.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The key gate alone, if no reader holds it now. Never waits, so a
    /// long reader does not make new readers queue behind the caller.
    pub fn try_key_gate(&self) -> Option<RwLockWriteGuard<'_, ()>> {
        match self.key_gate.try_write() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// See [`Db::log_gate`](struct.Db.html#structfield.log_gate). It guards
    /// no data of its own, so a panic elsewhere does not poison it.
    pub fn log_gate(&self) -> MutexGuard<'_, ()> {
        self.log_gate.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks the data directory's format version and returns it: this
    /// build's, or an older one the caller migrates (then records with
    /// [`Db::write_format`]). Writes it (synced) into a database that holds
    /// nothing yet.
    pub fn check_format(&self) -> Result<u32, Error> {
        let Some(plain) = self.get_sealed(CF_META, META_FORMAT)? else {
            let meta = self.cf(CF_META)?;
            let empty = self
                .db
                .iterator_cf(meta, IteratorMode::Start)
                .next()
                .is_none();
            if !empty {
                return Err(self.corruption(
                    CF_META,
                    format!(
                        "the data directory has no format version: it was written by a \
                         development build older than format {FORMAT_VERSION}, which this \
                         build cannot read"
                    ),
                ));
            }
            self.write_format()?;
            return Ok(FORMAT_VERSION);
        };
        let version = <[u8; 4]>::try_from(plain.as_slice())
            .map(u32::from_be_bytes)
            .map_err(|_| self.corruption(CF_META, "the format row is not 4 bytes"))?;
        if (1..FORMAT_VERSION).contains(&version) {
            return Ok(version);
        }
        if version != FORMAT_VERSION {
            return Err(Error::Engine(format!(
                "{}: data directory format {version}; this build reads format {FORMAT_VERSION}{}",
                self.path.display(),
                if version > FORMAT_VERSION {
                    " (it was written by a newer Coffer)"
                } else {
                    ""
                }
            )));
        }
        Ok(version)
    }

    /// Records (synced) that the directory is in this build's format.
    pub fn write_format(&self) -> Result<(), Error> {
        let mut batch = WriteBatch::default();
        self.put_sealed(
            &mut batch,
            CF_META,
            META_FORMAT,
            &FORMAT_VERSION.to_be_bytes(),
        )?;
        self.write(batch, true)
    }

    pub fn cf(&self, name: &'static str) -> Result<&ColumnFamily, Error> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| Error::Engine(format!("column family `{name}` is missing")))
    }

    /// A RocksDB error on this database (see [`engine_error`]).
    pub fn engine_err(&self, e: rocksdb::Error) -> Error {
        engine_error(&self.path, e)
    }

    pub fn corruption(&self, cf: &str, detail: impl std::fmt::Display) -> Error {
        Error::Corruption {
            location: format!("{}: column family `{cf}`", self.path.display()),
            detail: detail.to_string(),
        }
    }

    /// Opens a sealed row read from `cf` at `key`; a row that does not
    /// open is corruption of `cf`.
    pub fn open_row(&self, cf: &str, key: &[u8], raw: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        self.cipher
            .open(&location(cf, key), raw)
            .map_err(|e| self.corruption(cf, e))
    }

    /// Reads and opens one sealed row.
    pub fn get_sealed(
        &self,
        cf: &'static str,
        key: &[u8],
    ) -> Result<Option<Zeroizing<Vec<u8>>>, Error> {
        let handle = self.cf(cf)?;
        match self
            .db
            .get_pinned_cf(handle, key)
            .map_err(|e| self.engine_err(e))?
        {
            None => Ok(None),
            Some(raw) => self.open_row(cf, key, &raw).map(Some),
        }
    }

    /// Adds a sealed put to `batch`.
    pub fn put_sealed(
        &self,
        batch: &mut WriteBatch,
        cf: &'static str,
        key: &[u8],
        plain: &[u8],
    ) -> Result<(), Error> {
        let sealed = self.cipher.seal(&location(cf, key), plain)?;
        batch.put_cf(self.cf(cf)?, key, sealed);
        Ok(())
    }

    pub fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), Error> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db
            .write_opt(batch, &wo)
            .map_err(|e| self.engine_err(e))
    }

    /// Read options for a scan across keys of any prefix (the `kv` family
    /// has a prefix extractor; without this, an iterator is only ordered
    /// within one key's versions).
    pub fn total_order() -> rocksdb::ReadOptions {
        let mut o = rocksdb::ReadOptions::default();
        o.set_total_order_seek(true);
        o
    }

    /// Read options for walking one key's versions in `kv` (within one
    /// prefix, the name hash, which is what the hash memtable serves).
    pub fn same_key() -> rocksdb::ReadOptions {
        let mut o = rocksdb::ReadOptions::default();
        o.set_prefix_same_as_start(true);
        o
    }

    /// Every row of `cf` from `start`, opened, in key order.
    pub fn scan_sealed<'a>(
        &'a self,
        cf: &'static str,
        start: &[u8],
    ) -> Result<impl Iterator<Item = Result<OpenedRow, Error>> + 'a, Error> {
        let handle = self.cf(cf)?;
        let it = self.db.iterator_cf_opt(
            handle,
            Self::total_order(),
            IteratorMode::From(start, rocksdb::Direction::Forward),
        );
        Ok(it.map(move |item| {
            let (k, v) = item.map_err(|e| self.engine_err(e))?;
            let plain = self.open_row(cf, &k, &v)?;
            Ok((k, plain))
        }))
    }
}
