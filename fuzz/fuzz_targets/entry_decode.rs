//! Raft log entry and command decoders: no panic, and whatever decodes
//! re-encodes to bytes that decode to the same value.
#![no_main]

use coffer_store::types::{decode_entry, encode_entry};
use coffer_store::Command;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = decode_entry(data) {
        let again = decode_entry(&encode_entry(&entry).expect("a decoded entry re-encodes"))
            .expect("re-encoded entry must decode");
        assert_eq!(again, entry);
    }
    if let Ok(cmd) = Command::from_bytes(data) {
        assert_eq!(
            Command::from_bytes(&cmd.to_bytes().expect("a decoded command re-encodes")).ok(),
            Some(cmd)
        );
    }
});
