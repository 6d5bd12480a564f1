//! `kv`, `leases` and `reads_from` row decoders (formats 1 to 3): no panic, and a row
//! that decodes re-encodes to the same bytes.
#![no_main]

use coffer_store::rows::{
    decode_kv_row, decode_lease_row, decode_legacy_kv_row, decode_reads_from, encode_kv_row,
    encode_lease_row, encode_reads_from,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(row) = decode_kv_row(data) {
        assert_eq!(encode_kv_row(&row).expect("a decoded row re-encodes"), data);
    }
    let _ = decode_legacy_kv_row(data);
    if let Ok(ttl) = decode_lease_row(data) {
        assert_eq!(
            encode_lease_row(ttl).expect("a decoded row re-encodes"),
            data
        );
    }
    if let Ok(revision) = decode_reads_from(data) {
        assert_eq!(
            encode_reads_from(revision).expect("a decoded row re-encodes"),
            data
        );
    }
});
