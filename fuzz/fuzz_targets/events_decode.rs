//! Watch-event record decoder (rows of the `events` column family): no
//! panic, and whatever decodes re-encodes to the same events.
#![no_main]

use coffer_store::event::{decode_events, encode_events};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(events) = decode_events(data) {
        assert_eq!(
            decode_events(&encode_events(&events).expect("decoded events re-encode")).ok(),
            Some(events)
        );
    }
});
