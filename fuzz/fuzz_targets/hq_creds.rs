//! HQ's session credentials (`eds::hq::creds::SessionCreds`): a decorated `.creds` text and the
//! base64 of one, from arbitrary bytes, and from arbitrary bytes as the JWT's claims inside a
//! well-formed text. Beyond not panicking: what parses names a server and at least one company,
//! each id as the subjects carry it; the base64 form reads the same; nothing it shows (`Debug`,
//! errors) contains the seed.
#![no_main]

use base64::Engine;
use eds::hq::creds::SessionCreds;
use libfuzzer_sys::fuzz_target;

const SEED: &str = "SUAFUZZSEEDFUZZSEEDFUZZSEED";

fn check(text: &str) {
    let b64 = base64::engine::general_purpose::STANDARD.encode(text);
    let by_b64 = SessionCreds::from_base64(&b64);
    match SessionCreds::parse(text) {
        Ok(c) => {
            assert!(!c.server_id.trim().is_empty());
            assert!(!c.company_ids.is_empty());
            for (i, id) in c.company_ids.iter().enumerate() {
                assert!(
                    !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-'),
                    "{id:?}"
                );
                assert!(!c.company_ids[..i].contains(id), "company {id} twice");
            }
            if let Some(s) = &c.session_id {
                assert!(!s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'), "{s:?}");
            }
            let by_b64 = by_b64.expect("the base64 of readable credentials reads");
            assert_eq!(
                (&by_b64.server_id, &by_b64.company_ids, &by_b64.session_id),
                (&c.server_id, &c.company_ids, &c.session_id)
            );
            let shown = format!("{c:?} {:?}", c.for_ingest());
            assert!(!shown.contains(SEED), "{shown}");
            let _ = c.may_publish("$JS.API.STREAM.INFO.dbchange");
        }
        Err(e) => {
            assert_eq!(by_b64.expect_err("the base64 form fails alike"), e);
            assert!(!e.to_string().contains(SEED));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        // The bytes as the whole text.
        Some((0, rest)) => {
            if let Ok(text) = std::str::from_utf8(rest) {
                check(text);
            }
            let _ = SessionCreds::from_base64(&String::from_utf8_lossy(rest));
        }
        // The bytes as the claims of a decorated text.
        Some((_, claims)) => {
            let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
            let jwt = format!("{}.{}.{}", b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#), b64(claims), b64(b"sig"));
            check(&format!(
                "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
                 -----BEGIN USER NKEY SEED-----\n{SEED}\n------END USER NKEY SEED------\n"
            ));
        }
        None => {}
    }
});
