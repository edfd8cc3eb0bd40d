//! HQ's notification decoding (`eds::hq::wire::decode_notification`) by content-encoding, on
//! arbitrary bodies. Beyond not panicking:
//! - a plain body decodes exactly when serde_json reads it, to the same value;
//! - the gzip of a body decodes as the body does (same value, or an error), and a gzip whose
//!   content is over `MAX_NOTIFICATION` is refused as too large;
//! - arbitrary bytes as gzip never decode to more than the limit allows.
#![no_main]

use eds::hq::wire::{decode_notification, MAX_NOTIFICATION};
use libfuzzer_sys::fuzz_target;

const ENCODINGS: [Option<&str>; 7] =
    [None, Some(""), Some("json"), Some(" application/json "), Some("gzip/json"), Some("gzip"), Some("msgpack")];

fn gzip(bytes: &[u8], level: u32) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    std::io::Write::write_all(&mut gz, bytes).expect("writing to a Vec");
    gz.finish().expect("writing to a Vec")
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    // The body under the encoding the first byte picks.
    let encoding = ENCODINGS[usize::from(selector) % ENCODINGS.len()];
    let _ = decode_notification(encoding, body);
    // The body as JSON, plain and gzipped.
    let plain = decode_notification(None, body);
    let direct: Result<serde_json::Value, _> = serde_json::from_slice(body);
    assert_eq!(plain.as_ref().ok(), direct.as_ref().ok());
    let zipped = decode_notification(Some("gzip/json"), &gzip(body, u32::from(selector % 10)));
    if body.len() as u64 <= MAX_NOTIFICATION {
        assert_eq!(zipped.as_ref().ok(), plain.as_ref().ok(), "gzip changed the reading");
    } else {
        assert!(format!("{:#}", zipped.expect_err("over the limit")).contains("larger than"));
    }
    // A body repeated past the limit (a small gzip of a large text): refused as too large. (One
    // selector only: a megabyte per run is slow.)
    if selector == 0xff && !body.is_empty() {
        let times = usize::try_from(MAX_NOTIFICATION).expect("fits") / body.len() + 1;
        let big = gzip(&body.repeat(times), 1);
        let err = decode_notification(Some("gzip"), &big).expect_err("over the limit");
        assert!(format!("{err:#}").contains("larger than"), "{err:#}");
    }
});
