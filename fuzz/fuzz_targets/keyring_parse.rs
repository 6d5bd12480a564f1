//! Keyring and KEK file parsers: no panic, no unbounded allocation, and a
//! parsed keyring re-seals to something that parses again. Each input is
//! tried as is and with its trailing checksum made valid, so the fuzzer
//! reaches the key check and body unsealing too.
#![no_main]

use coffer_store::crypto::SecretKey;
use coffer_store::keyring::{decode_kek_file, KeyringFile};
use libfuzzer_sys::fuzz_target;

fn try_keyring(bytes: &[u8]) {
    if let Ok(file) = KeyringFile::parse(bytes) {
        let kek = SecretKey::from_bytes([3; 32]);
        if let Ok(ring) = file.unseal(&kek) {
            let again = ring
                .seal(&kek, file.source)
                .expect("an opened keyring re-seals");
            let reparsed = KeyringFile::parse(&again).expect("re-sealed keyring must parse");
            assert!(reparsed.unseal(&kek).is_ok());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = decode_kek_file(data);
    try_keyring(data);
    if data.len() >= 32 {
        let mut fixed = data.to_vec();
        let n = fixed.len() - 32;
        let sum = *blake3::hash(&fixed[..n]).as_bytes();
        fixed[n..].copy_from_slice(&sum);
        try_keyring(&fixed);
    }
});
