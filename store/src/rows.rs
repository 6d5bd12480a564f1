//! The plaintexts of the state machine's own rows: `kv` rows (a version of
//! a key, or the tombstone of its delete) and `leases` rows. Pure, so the
//! decoders are fuzz targets; the engine adds the checks that need the
//! row's key (its hash and revision) and the sealing.

use crate::codec::{DecodeError, EncodeError, Reader, Writer};
use crate::command::{KeyValue, MAX_KEY_BYTES};
use crate::snapshot::{decode_kv, encode_kv, KvLayout};

/// Format of a `kv` row: version, kind, then the version of the key or its
/// tombstone. Versions 1 and 2 (one row per live key, under its name's
/// hash alone) are read by [`decode_legacy_kv_row`] for the migration.
pub const KV_ROW_VERSION: u8 = 3;
const ROW_LIVE: u8 = 1;
const ROW_TOMBSTONE: u8 = 2;
/// Format of a `leases` row: version, then the time-to-live in seconds.
pub const LEASE_ROW_VERSION: u8 = 1;
/// Format of the `meta` row `reads_from`: version, then the revision.
const READS_FROM_VERSION: u8 = 1;

/// One `kv` row: a version of a key, or the tombstone its delete left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvRow {
    Live(KeyValue),
    Tombstone { key: Vec<u8> },
}

impl KvRow {
    /// The key's name.
    pub fn key(&self) -> &[u8] {
        match self {
            KvRow::Live(kv) => &kv.key,
            KvRow::Tombstone { key } => key,
        }
    }
}

/// Encodes a `kv` row (the engine calls the two functions below; this is
/// the round trip the tests and the fuzz target check).
#[cfg_attr(
    not(any(test, feature = "fuzzing", feature = "internals")),
    allow(dead_code)
)]
pub fn encode_kv_row(row: &KvRow) -> Result<Vec<u8>, EncodeError> {
    match row {
        KvRow::Live(kv) => encode_live_row(kv),
        KvRow::Tombstone { key } => encode_tombstone_row(key),
    }
}

/// Encodes the `kv` row of a version of a key.
pub fn encode_live_row(kv: &KeyValue) -> Result<Vec<u8>, EncodeError> {
    let mut w = Writer::with_capacity(kv.key.len() + kv.value.len() + 50);
    w.u8(KV_ROW_VERSION).u8(ROW_LIVE);
    encode_kv(&mut w, kv);
    w.finish()
}

/// Encodes the `kv` row of a delete's tombstone.
pub fn encode_tombstone_row(key: &[u8]) -> Result<Vec<u8>, EncodeError> {
    let mut w = Writer::with_capacity(key.len() + 8);
    w.u8(KV_ROW_VERSION).u8(ROW_TOMBSTONE).bytes(key);
    w.finish()
}

/// Decodes what [`encode_kv_row`] wrote.
pub fn decode_kv_row(plain: &[u8]) -> Result<KvRow, DecodeError> {
    let mut r = Reader::new(plain);
    r.version(KV_ROW_VERSION, "kv row version")?;
    let row = match r.u8("kv row kind")? {
        ROW_LIVE => KvRow::Live(decode_kv(&mut r, KvLayout::WithLease)?),
        ROW_TOMBSTONE => {
            let key = r.bytes(MAX_KEY_BYTES, "key")?.to_vec();
            if key.is_empty() {
                return Err(DecodeError::Invalid {
                    what: "key",
                    reason: "empty",
                });
            }
            KvRow::Tombstone { key }
        }
        tag => {
            return Err(DecodeError::UnknownTag {
                what: "kv row kind",
                tag,
            })
        }
    };
    r.finish("kv row")?;
    Ok(row)
}

/// Decodes a `kv` row of formats 1 and 2 (version 1: no lease; version 2:
/// with one), which held the live version of a key.
pub fn decode_legacy_kv_row(plain: &[u8]) -> Result<KeyValue, DecodeError> {
    let mut r = Reader::new(plain);
    let layout = KvLayout::read(&mut r, 1, 2, "kv row version (formats 1 and 2)")?;
    let kv = decode_kv(&mut r, layout)?;
    r.finish("kv row")?;
    Ok(kv)
}

/// Encodes a `leases` row.
pub fn encode_lease_row(ttl_secs: u64) -> Result<Vec<u8>, EncodeError> {
    let mut w = Writer::with_capacity(9);
    w.u8(LEASE_ROW_VERSION).u64(ttl_secs);
    w.finish()
}

/// Decodes what [`encode_lease_row`] wrote: the time-to-live in seconds.
pub fn decode_lease_row(plain: &[u8]) -> Result<u64, DecodeError> {
    let mut r = Reader::new(plain);
    r.version(LEASE_ROW_VERSION, "lease row version")?;
    let ttl = r.u64("lease ttl")?;
    r.finish("lease row")?;
    Ok(ttl)
}

/// Encodes the `meta` row `reads_from`: reads before `revision` are
/// refused (the versions they need were never kept).
pub fn encode_reads_from(revision: u64) -> Result<Vec<u8>, EncodeError> {
    let mut w = Writer::with_capacity(9);
    w.u8(READS_FROM_VERSION).u64(revision);
    w.finish()
}

/// Decodes what [`encode_reads_from`] wrote.
pub fn decode_reads_from(plain: &[u8]) -> Result<u64, DecodeError> {
    let mut r = Reader::new(plain);
    r.version(READS_FROM_VERSION, "reads_from version")?;
    let revision = r.u64("reads_from")?;
    r.finish("reads_from row")?;
    Ok(revision)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{KeyMeta, Value};

    #[test]
    fn rows_round_trip_and_legacy_rows_read() {
        let kv = KeyValue {
            key: b"k".to_vec(),
            value: Value(b"v".to_vec()),
            meta: KeyMeta {
                create_revision: 1,
                mod_revision: 2,
                version: 2,
                lease: 7,
            },
        };
        for row in [
            KvRow::Live(kv.clone()),
            KvRow::Tombstone { key: b"k".to_vec() },
        ] {
            assert_eq!(decode_kv_row(&encode_kv_row(&row).unwrap()).unwrap(), row);
        }
        assert!(decode_kv_row(&[KV_ROW_VERSION, ROW_TOMBSTONE, 0, 0, 0, 0]).is_err());
        let mut v1 = Writer::default();
        v1.u8(1).bytes(b"k").bytes(b"v").u64(1).u64(2).u64(2);
        let legacy = decode_legacy_kv_row(&v1.finish().unwrap()).unwrap();
        assert_eq!(legacy.meta.lease, 0);
        assert_eq!(legacy.meta.mod_revision, 2);
        assert_eq!(
            decode_lease_row(&encode_lease_row(60).unwrap()).unwrap(),
            60
        );
        assert!(decode_lease_row(&[LEASE_ROW_VERSION, 0]).is_err());
    }
}
