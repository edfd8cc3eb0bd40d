//! Cursor files as read from disk: `cursor::decode` must never panic, and what it accepts must
//! encode back to the very same bytes.
#![no_main]

use eds_wal::cursor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cursor::decode(data, "x");
    // The name stored in the file must match the file name; try the one the bytes claim too, so
    // inputs can get past the name check.
    let claimed = data
        .get(28..)
        .map(|rest| String::from_utf8_lossy(rest.get(..rest.len().saturating_sub(4)).unwrap_or(&[])).into_owned());
    for name in ["x"].into_iter().map(str::to_owned).chain(claimed) {
        if let Ok(rec) = cursor::decode(data, &name) {
            assert_eq!(rec.name, name);
            // decode reads the stored name lossily; only valid UTF-8 can round-trip byte for byte.
            let stored = data.get(28..data.len() - 4).expect("accepted input holds its name");
            if std::str::from_utf8(stored).is_ok() {
                assert_eq!(cursor::encode(&rec), data, "accepted cursor bytes do not round-trip");
            }
        }
    }
});
