//! Sealed-record decoder: any bytes at any location either open to the
//! plaintext that was sealed there or fail cleanly; never a panic.
#![no_main]

use coffer_store::crypto::{Cipher, KeyId, SecretKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = SecretKey::from_bytes([7; 32]);
    let Ok(cipher) = Cipher::new(KeyId(1), [(KeyId(1), &key)], SecretKey::from_bytes([9; 32]))
    else {
        return;
    };
    let (location, record) = data.split_at(data.len().min(8));
    let _ = cipher.open(location, record);
    // Whatever is sealed opens to itself at its location, and only there.
    let sealed = cipher.seal(location, record).expect("a small record seals");
    let opened = cipher
        .open(location, &sealed)
        .expect("sealed record must open");
    assert_eq!(opened.as_slice(), record);
    let mut elsewhere = location.to_vec();
    elsewhere.push(0);
    assert!(cipher.open(&elsewhere, &sealed).is_err());
    let plain = Cipher::danger_plaintext(SecretKey::from_bytes([9; 32]));
    let _ = plain.open(location, record);
});
