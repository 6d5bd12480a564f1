//! The Raft RPC decoders a member runs on what other members send
//! (`coffer_store::wire`): no panic, and whatever decodes re-encodes to
//! bytes that decode and re-encode to themselves (the log entries inside
//! accept more than one spelling of some fields, as `entry_decode` notes,
//! so the first re-encoding may differ from the input). The first input
//! byte picks the message type.
#![no_main]

use coffer_store::wire::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 5 {
        0 => {
            if let Ok(m) = decode_append_entries(bytes) {
                let once = encode_append_entries(&m).expect("re-encodes");
                let again = decode_append_entries(&once).expect("the re-encoding decodes");
                assert_eq!(encode_append_entries(&again).expect("re-encodes"), once);
            }
        }
        1 => {
            if let Ok(m) = decode_append_entries_response(bytes) {
                let once = encode_append_entries_response(&m).expect("re-encodes");
                let again = decode_append_entries_response(&once).expect("the re-encoding decodes");
                assert_eq!(
                    encode_append_entries_response(&again).expect("re-encodes"),
                    once
                );
            }
        }
        2 => {
            if let Ok(m) = decode_vote_request(bytes) {
                let once = encode_vote_request(&m).expect("re-encodes");
                let again = decode_vote_request(&once).expect("the re-encoding decodes");
                assert_eq!(encode_vote_request(&again).expect("re-encodes"), once);
            }
        }
        3 => {
            if let Ok(m) = decode_vote_response(bytes) {
                let once = encode_vote_response(&m).expect("re-encodes");
                let again = decode_vote_response(&once).expect("the re-encoding decodes");
                assert_eq!(encode_vote_response(&again).expect("re-encodes"), once);
            }
        }
        _ => {
            if let Ok(v) = decode_snapshot_vote(bytes) {
                assert_eq!(encode_snapshot_vote(&v).expect("re-encodes"), bytes);
            }
        }
    }
});
