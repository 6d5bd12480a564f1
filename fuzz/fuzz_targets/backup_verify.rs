//! The snapshot file walk of `coffer snapshot restore` (header, chunk
//! framing, last chunk, checksum) on arbitrary bytes, as they are and
//! behind a valid magic and version (so that the walk goes past them): no
//! panic, and only a file whose checksum matches its contents passes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fn check(bytes: &[u8]) {
    if coffer_store::backup::verify(bytes).is_ok() {
        let (body, sum) = bytes.split_at(bytes.len() - 32);
        assert_eq!(blake3::hash(body).as_bytes(), sum);
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut framed = b"COFFER-SNAPSHOT\n\x01".to_vec();
    framed.extend_from_slice(data);
    check(&framed);
});
