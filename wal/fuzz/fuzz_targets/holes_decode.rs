//! The holes file as read from disk: `holes::decode` must never panic (nor allocate for a
//! count the bytes cannot hold), and what it accepts must encode back to the same bytes.
#![no_main]

use eds_wal::holes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(list) = holes::decode(data) {
        assert_eq!(holes::encode(&list), data, "accepted holes bytes do not round-trip");
    }
});
