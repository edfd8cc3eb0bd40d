//! How the stream destinations that write an object per event (files, S3) name it:
//! `<table>/<unix seconds>-<primary key>.json`, or `<unix seconds>-<primary key>+<lsn>.json` when
//! another event already holds that name (EDS overwrote it). The `+` is a byte [`escape`] never
//! leaves as it is, so no key's plain name is another key's LSN name (with `-`, key `k` at LSN 8
//! and key `k-8` would share `<seconds>-k-8.json`).
//!
//! Invariant: a name is a pure function of the event (and its LSN), and no table or key can climb
//! out of its table's "directory": both drivers name identically.

use crate::event::ChangeEvent;

/// A name-safe form of a table name or key: letters, digits, `_` and `-` as they are, `.` except
/// in first place, everything else as `%XX` (so `/`, `..` and `%` itself are escaped).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, b) in s.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if plain {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() {
        out.push_str("%00");
    }
    out
}

/// The table "directory" of an event: its table, escaped.
pub fn table_dir(event: &ChangeEvent) -> String {
    escape(&event.table)
}

/// `<unix seconds>-<primary key>`: seconds are the event's timestamp (milliseconds) rounded down.
pub fn stem(event: &ChangeEvent) -> String {
    format!("{}-{}", event.timestamp.div_euclid(1000), escape(event.primary_key()))
}

/// The first name an event tries: `<stem>.json`.
pub fn plain_name(event: &ChangeEvent) -> String {
    format!("{}.json", stem(event))
}

/// The name of an event whose plain name holds another event: `<stem>+<lsn>.json`.
pub fn lsn_name(event: &ChangeEvent, lsn: u64) -> String {
    with_lsn(&plain_name(event), lsn)
}

/// The folder (relative, `/`-separated, maybe empty) and first name of an event's object: the
/// schema validator's `path` when it gave the event one (already checked to stay inside the
/// destination), else [`table_dir`] and [`plain_name`].
pub fn object(event: &ChangeEvent) -> (String, String) {
    match &event.path {
        Some(p) => match p.rsplit_once('/') {
            Some((dir, file)) => (dir.to_owned(), file.to_owned()),
            None => (String::new(), p.clone()),
        },
        None => (table_dir(event), plain_name(event)),
    }
}

/// `name` with `+<lsn>` before its extension: the name of an event whose first name holds
/// another event.
pub fn with_lsn(name: &str, lsn: u64) -> String {
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem}+{lsn}.{ext}"),
        _ => format!("{name}+{lsn}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_climb_out() {
        assert_eq!(escape(""), "%00");
        assert_eq!(escape("order"), "order");
        assert_eq!(escape("é"), "%C3%A9");
        assert_eq!(escape("../x/y"), "%2E.%2Fx%2Fy");
        assert_eq!(escape("%2F"), "%252F");
        let e = ChangeEvent::from_json(
            br#"{"operation":"INSERT","table":"a/b","key":["r","../k"],"after":{"id":"../k"},"timestamp":-1}"#,
        )
        .unwrap();
        assert_eq!(
            (table_dir(&e), plain_name(&e), lsn_name(&e, 9)),
            ("a%2Fb".into(), "-1-%2E.%2Fk.json".into(), "-1-%2E.%2Fk+9.json".into())
        );
    }

    #[test]
    fn a_validator_path_names_the_object() {
        let json = r#"{"operation":"INSERT","table":"order","key":["k"],"timestamp":5000}"#;
        let mut e = ChangeEvent::from_json(json.as_bytes()).unwrap();
        assert_eq!(object(&e), ("order".to_owned(), "5-k.json".to_owned()));
        e.path = Some("labor/received/labor_1_2.json".into());
        assert_eq!(object(&e), ("labor/received".to_owned(), "labor_1_2.json".to_owned()));
        e.path = Some("flat.json".into());
        assert_eq!(object(&e), (String::new(), "flat.json".to_owned()));
        assert_eq!(with_lsn("labor_1.2.json", 7), "labor_1.2+7.json");
        assert_eq!(with_lsn("noext", 7), "noext+7");
        assert_eq!(with_lsn(".hidden", 7), ".hidden+7");
    }

    #[test]
    fn no_key_takes_the_lsn_name_of_another() {
        let ev = |pk: &str| {
            let json = format!(r#"{{"operation":"INSERT","table":"t","key":["{pk}"],"timestamp":5000}}"#);
            ChangeEvent::from_json(json.as_bytes()).unwrap()
        };
        assert_eq!(lsn_name(&ev("k"), 8), "5-k+8.json");
        for other in ["k-8", "k+8", "k_8", "k.8"] {
            assert_ne!(plain_name(&ev(other)), lsn_name(&ev("k"), 8), "{other}");
        }
    }
}
