//! Keyring and KEK file parsers: no panic, no unbounded allocation, and a
//! parsed keyring re-seals to something that parses again.
#![no_main]

use coffer_store::crypto::SecretKey;
use coffer_store::keyring::{decode_kek_file, KeyringFile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_kek_file(data);
    if let Ok(file) = KeyringFile::parse(data) {
        let kek = SecretKey::from_bytes([3; 32]);
        if let Ok(ring) = file.unseal(&kek) {
            let again = ring.seal(&kek, file.source);
            let reparsed = KeyringFile::parse(&again).expect("re-sealed keyring must parse");
            assert!(reparsed.unseal(&kek).is_ok());
        }
    }
});
