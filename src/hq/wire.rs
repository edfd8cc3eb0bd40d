//! HQ's message encodings on NATS (spec §2.6, §4.3): inbound notifications are JSON, gzipped
//! JSON or msgpack by their `content-encoding` header; outbound statuses, responses and
//! heartbeats are msgpack with a `Nats-Msg-Id` and `content-encoding: msgpack`.

use anyhow::{bail, Context, Result};
use serde_json::Value as Json;

/// A random UUID (version 4), for `Nats-Msg-Id`.
pub fn uuid_v4() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        // No randomness from the OS: fall back on the clock (ids only deduplicate messages).
        b = crate::timefmt::now_micros().to_le_bytes().repeat(2).try_into().unwrap_or([0; 16]);
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// A JSON value as msgpack: integers stay integers, other numbers become floats.
pub fn to_msgpack(v: &Json) -> rmpv::Value {
    match v {
        Json::Null => rmpv::Value::Nil,
        Json::Bool(b) => rmpv::Value::Boolean(*b),
        Json::Number(n) => {
            if let Some(u) = n.as_u64() {
                rmpv::Value::from(u)
            } else if let Some(i) = n.as_i64() {
                rmpv::Value::from(i)
            } else {
                rmpv::Value::F64(n.as_f64().unwrap_or(0.0))
            }
        }
        Json::String(s) => rmpv::Value::from(s.as_str()),
        Json::Array(a) => rmpv::Value::Array(a.iter().map(to_msgpack).collect()),
        Json::Object(o) => {
            rmpv::Value::Map(o.iter().map(|(k, v)| (rmpv::Value::from(k.as_str()), to_msgpack(v))).collect())
        }
    }
}

/// A msgpack value as JSON (what EDS did: decode generically, re-encode as JSON). Binary is
/// read as UTF-8 text when it is, map keys as their text; extensions become null.
pub fn from_msgpack(v: &rmpv::Value) -> Json {
    match v {
        rmpv::Value::Nil => Json::Null,
        rmpv::Value::Boolean(b) => Json::Bool(*b),
        rmpv::Value::Integer(i) => {
            if let Some(u) = i.as_u64() {
                Json::from(u)
            } else {
                Json::from(i.as_i64().unwrap_or(0))
            }
        }
        rmpv::Value::F32(f) => serde_json::Number::from_f64(f64::from(*f)).map(Json::Number).unwrap_or(Json::Null),
        rmpv::Value::F64(f) => serde_json::Number::from_f64(*f).map(Json::Number).unwrap_or(Json::Null),
        rmpv::Value::String(s) => Json::String(
            s.as_str().map(str::to_owned).unwrap_or_else(|| String::from_utf8_lossy(s.as_bytes()).into_owned()),
        ),
        rmpv::Value::Binary(b) => Json::String(String::from_utf8_lossy(b).into_owned()),
        rmpv::Value::Array(a) => Json::Array(a.iter().map(from_msgpack).collect()),
        rmpv::Value::Map(m) => Json::Object(
            m.iter()
                .map(|(k, v)| {
                    let key = match k {
                        rmpv::Value::String(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                        other => other.to_string(),
                    };
                    (key, from_msgpack(v))
                })
                .collect(),
        ),
        rmpv::Value::Ext(..) => Json::Null,
    }
}

/// msgpack's timestamp extension (type -1) for a Unix time in microseconds.
pub fn timestamp(micros: u64) -> rmpv::Value {
    let secs = micros / 1_000_000;
    let nanos = ((micros % 1_000_000) * 1000) as u32;
    // timestamp 64: 30-bit nanoseconds, 34-bit seconds.
    let packed = (u64::from(nanos) << 34) | (secs & ((1 << 34) - 1));
    rmpv::Value::Ext(-1, packed.to_be_bytes().to_vec())
}

/// Encodes a msgpack value.
pub fn encode(v: &rmpv::Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut out, v);
    out
}

/// The largest gunzipped notification read. HQ's notifications are small JSON objects (an
/// action and its data, a few KB at most), and NATS refuses a message over its max_payload
/// (1 MiB by default), so a plain one can never be larger; this bounds what a hostile gzip can
/// make of one (16 MiB before: a 16 KB bomb made the decoder allocate that much, ~1 GB of RSS
/// under the fuzzer's address sanitizer).
pub const MAX_NOTIFICATION: u64 = 1 << 20;

/// The deepest msgpack value read, in rmpv's units (each array or map level takes two): about
/// 127 levels of nesting, as serde_json allows for JSON. rmpv's own default (1024, ~512 levels)
/// recursed that deep on a tokio worker's 2 MiB stack, in the decoder and again in
/// [`from_msgpack`].
const MSGPACK_DEPTH: usize = 256;

/// Decodes a notification body by its `content-encoding` header: `gzip/json` (gzipped JSON),
/// `msgpack`, or JSON when absent.
pub fn decode_notification(encoding: Option<&str>, body: &[u8]) -> Result<Json> {
    match encoding.map(str::trim).unwrap_or("") {
        "" | "json" | "application/json" => serde_json::from_slice(body).context("the body is not JSON"),
        "gzip/json" | "gzip" => {
            use std::io::Read;
            let mut text = Vec::new();
            // One byte over the limit tells a body cut at the limit from one that fits.
            flate2::read::GzDecoder::new(body)
                .take(MAX_NOTIFICATION + 1)
                .read_to_end(&mut text)
                .context("the body is not gzip")?;
            if text.len() as u64 > MAX_NOTIFICATION {
                bail!("the gunzipped body is larger than {MAX_NOTIFICATION} bytes (a notification is a few KB)");
            }
            serde_json::from_slice(&text).context("the gunzipped body is not JSON")
        }
        "msgpack" => {
            let mut cursor = body;
            let v = rmpv::decode::read_value_with_max_depth(&mut cursor, MSGPACK_DEPTH)
                .context("the body is not msgpack")?;
            // One value is the whole body (as JSON refuses trailing characters).
            if !cursor.is_empty() {
                bail!(
                    "the body is not one msgpack value: {} trailing bytes after the value's {}",
                    cursor.len(),
                    body.len() - cursor.len()
                );
            }
            Ok(from_msgpack(&v))
        }
        other => bail!("unknown content-encoding {other:?}"),
    }
}

/// Headers of an outbound msgpack message.
pub fn msgpack_headers() -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", uuid_v4().as_str());
    h.insert("content-encoding", "msgpack");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn uuids_are_version_4() {
        let a = uuid_v4();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
        assert_ne!(a, uuid_v4());
    }

    #[test]
    fn json_survives_msgpack_both_ways() {
        let v = json!({"action": "validate", "data": {"n": 3, "neg": -2, "f": 1.5, "ok": true, "s": "é\"x", "a": [null, 1]}});
        let packed = encode(&to_msgpack(&v));
        assert_eq!(decode_notification(Some("msgpack"), &packed).unwrap(), v);
    }

    #[test]
    fn notifications_decode_by_their_encoding() {
        let v = json!({"action": "ping", "data": {"subject": "x"}});
        assert_eq!(decode_notification(None, v.to_string().as_bytes()).unwrap(), v);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, v.to_string().as_bytes()).unwrap();
        assert_eq!(decode_notification(Some("gzip/json"), &gz.finish().unwrap()).unwrap(), v);
        assert!(decode_notification(Some("msgpack"), b"\x81\xa6act").is_err());
        assert!(decode_notification(None, b"{not json").is_err());
        assert!(decode_notification(Some("gzip/json"), b"plain").is_err());
        assert!(format!("{:#}", decode_notification(Some("brotli"), b"").unwrap_err()).contains("brotli"));
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, bytes).unwrap();
        gz.finish().unwrap()
    }

    /// A gzip that inflates past the limit is refused as too large (it was cut at the limit and
    /// reported as "not JSON"), and the limit is a notification's size, not 16 MiB: a 1 KB bomb
    /// no longer makes the decoder build megabytes.
    #[test]
    fn a_gzip_larger_than_a_notification_is_refused_as_too_large() {
        let cap = usize::try_from(MAX_NOTIFICATION).unwrap();
        assert!(cap <= 1 << 20, "a notification is small; the cap bounds a gzip bomb");
        // Valid JSON just over the cap: a string of spaces inside an object.
        let over = format!("{{\"action\":\"ping\",\"pad\":\"{}\"}}", " ".repeat(cap));
        let err = format!("{:#}", decode_notification(Some("gzip/json"), &gzip(over.as_bytes())).unwrap_err());
        assert!(err.contains("larger than"), "{err}");
        // The same at the cap decodes.
        let at = format!("{{\"action\":\"ping\",\"pad\":\"{}\"}}", " ".repeat(cap - 26));
        assert_eq!(at.len(), cap);
        let v = decode_notification(Some("gzip/json"), &gzip(at.as_bytes())).unwrap();
        assert_eq!(v["action"], "ping");
        // A bomb of zeros: small, refused as too large.
        let bomb = gzip(&vec![0u8; 16 << 20]);
        assert!(bomb.len() < 32 << 10, "{}", bomb.len());
        let err = format!("{:#}", decode_notification(Some("gzip"), &bomb).unwrap_err());
        assert!(err.contains("larger than"), "{err}");
    }

    /// A msgpack body is one value: bytes after it are refused (they were ignored), naming how
    /// many.
    #[test]
    fn msgpack_trailing_bytes_are_refused() {
        let packed = encode(&to_msgpack(&json!({"action": "ping"})));
        assert!(decode_notification(Some("msgpack"), &packed).is_ok());
        let mut extra = packed.clone();
        extra.extend_from_slice(b"\xc0\x01");
        let err = format!("{:#}", decode_notification(Some("msgpack"), &extra).unwrap_err());
        assert!(err.contains("2 trailing bytes"), "{err}");
    }

    /// msgpack nests no deeper than JSON may (serde_json: 128): 120 levels decode, 200 are
    /// refused (rmpv's default let ~512 through, recursing on a worker's stack).
    #[test]
    fn msgpack_nesting_is_bounded_as_json_is() {
        let nested = |levels: usize| {
            let mut bytes = vec![0x91u8; levels]; // fixarray of one element, `levels` deep
            bytes.push(0x01);
            bytes
        };
        let v = decode_notification(Some("msgpack"), &nested(120)).unwrap();
        let mut inner = &v;
        for _ in 0..120 {
            inner = &inner[0];
        }
        assert_eq!(inner, &json!(1));
        for levels in [200, 511] {
            let err = format!("{:#}", decode_notification(Some("msgpack"), &nested(levels)).unwrap_err());
            assert!(err.contains("depth"), "{levels}: {err}");
        }
    }

    #[test]
    fn timestamps_use_the_msgpack_extension() {
        let rmpv::Value::Ext(kind, bytes) = timestamp(1_700_000_000_250_000) else { panic!() };
        assert_eq!(kind, -1);
        let packed = u64::from_be_bytes(bytes.try_into().unwrap());
        assert_eq!(packed & ((1 << 34) - 1), 1_700_000_000);
        assert_eq!(packed >> 34, 250_000_000);
    }
}
