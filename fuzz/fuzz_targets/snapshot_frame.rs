//! Snapshot frame decoder (what a member accepts from the network while
//! receiving a snapshot): no panic, and decoded frames round-trip.
#![no_main]

use coffer_store::snapshot::Frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = Frame::decode(data) {
        assert_eq!(
            Frame::decode(&frame.encode().expect("a decoded frame re-encodes")).ok(),
            Some(frame)
        );
    }
});
