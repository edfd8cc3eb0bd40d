//! HQ's msgpack decoding (`eds::hq::wire`: `decode_notification` with `msgpack`,
//! `from_msgpack`, `to_msgpack`, `encode`, `timestamp`). Beyond not panicking:
//! - what decodes, encoded again through `to_msgpack`, decodes to the same JSON;
//! - a body is one value: an accepted body is exactly one encoded value (rmpv reads it alone
//!   to the end), and appending a byte makes it refused;
//! - `timestamp` is the msgpack timestamp extension: type -1, 8 bytes, giving back the seconds
//!   and nanoseconds of any time in its 34-bit range.
#![no_main]

use eds::hq::wire::{decode_notification, encode, from_msgpack, timestamp, to_msgpack};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(json) = decode_notification(Some("msgpack"), data) {
        let mut cursor = data;
        let value = rmpv::decode::read_value(&mut cursor).expect("rmpv reads what was accepted");
        assert!(cursor.is_empty(), "an accepted body has bytes after its value");
        assert_eq!(from_msgpack(&value), json);
        let again = decode_notification(Some("msgpack"), &encode(&to_msgpack(&json))).expect("re-encoded decodes");
        assert_eq!(again, json, "msgpack → JSON → msgpack changed the value");
        let mut longer = data.to_vec();
        longer.push(0xc0);
        assert!(decode_notification(Some("msgpack"), &longer).is_err(), "a trailing byte was ignored");
    }
    if let Some(bytes) = data.get(..8) {
        let micros = u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
        let rmpv::Value::Ext(kind, packed) = timestamp(micros) else { panic!("not an extension") };
        assert_eq!((kind, packed.len()), (-1, 8));
        let packed = u64::from_be_bytes(packed.as_slice().try_into().expect("8 bytes"));
        let (secs, nanos) = (packed & ((1 << 34) - 1), packed >> 34);
        assert!(nanos < 1_000_000_000);
        assert_eq!(nanos, (micros % 1_000_000) * 1000);
        if micros / 1_000_000 < 1 << 34 {
            assert_eq!(secs * 1_000_000 + nanos / 1000, micros);
        }
        // It encodes as fixext 8 and reads back.
        let wire = encode(&timestamp(micros));
        assert_eq!(wire.len(), 10);
        assert_eq!(rmpv::decode::read_value(&mut wire.as_slice()).expect("reads back"), timestamp(micros));
    }
});
