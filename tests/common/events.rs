//! Change events as the end-to-end tests publish them (spec §5): a builder, dates in the events'
//! format, and a generator of INSERT/UPDATE/DELETE churn.
#![allow(dead_code, clippy::unwrap_used)]

use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// The company of EDS's end-to-end harness (spec §9.2).
pub const COMPANY: &str = "1234567890";
/// 2026-02-02T12:00:00.000Z in unix milliseconds.
pub const T0: i64 = 1_770_033_600_000;

/// One change event as the harness publishes it (spec §5).
#[derive(Debug, Clone)]
pub struct Ev {
    pub op: &'static str,
    pub table: &'static str,
    pub version: &'static str,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub diff: Option<Vec<&'static str>>,
    pub timestamp: i64,
}

impl Ev {
    pub fn insert(table: &'static str, version: &'static str, after: Value) -> Ev {
        Ev { op: "INSERT", table, version, before: None, after: Some(after), diff: None, timestamp: T0 }
    }

    pub fn update(
        table: &'static str,
        version: &'static str,
        before: Value,
        after: Value,
        diff: &[&'static str],
    ) -> Ev {
        Ev {
            op: "UPDATE",
            table,
            version,
            before: Some(before),
            after: Some(after),
            diff: Some(diff.to_vec()),
            timestamp: T0,
        }
    }

    pub fn delete(table: &'static str, version: &'static str, before: Value) -> Ev {
        Ev { op: "DELETE", table, version, before: Some(before), after: None, diff: None, timestamp: T0 }
    }

    /// The row: `after`, else `before`.
    pub fn object(&self) -> &Map<String, Value> {
        self.after.as_ref().or(self.before.as_ref()).and_then(Value::as_object).unwrap()
    }

    pub fn pk(&self) -> String {
        self.object()["id"].as_str().unwrap().to_owned()
    }

    pub fn subject(&self) -> String {
        format!("dbchange.{}.{}.{COMPANY}.1.PUBLIC.2", self.table, self.op)
    }

    pub fn bytes(&self) -> Vec<u8> {
        static N: AtomicU64 = AtomicU64::new(1);
        let mut e = json!({
            "operation": self.op,
            "id": format!("{:016x}", N.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x2545_F491_4F6C_DD1D)),
            "table": self.table,
            "key": [self.pk()],
            "modelVersion": self.version,
            "companyId": COMPANY,
            "locationId": "1",
            "timestamp": self.timestamp,
            "mvccTimestamp": format!("{}000000.0000000000", self.timestamp),
        });
        if let Some(b) = &self.before {
            e["before"] = b.clone();
        }
        if let Some(a) = &self.after {
            e["after"] = a.clone();
        }
        if let Some(d) = &self.diff {
            e["diff"] = json!(d);
        }
        serde_json::to_vec(&e).unwrap()
    }
}

/// A date-time `ms` milliseconds after [`T0`], in the events' format.
pub fn date(ms: i64) -> String {
    assert!((0..60_000).contains(&ms));
    format!("2026-02-02T12:00:{:02}.{:03}Z", ms / 1000, ms % 1000)
}

/// `n` INSERT/UPDATE/DELETE events of `order` at a version with `age`, over `keys` keys: a key
/// is inserted when absent, deleted every ninth event when present, else updated (name, age,
/// updatedDate, all in the diff).
pub fn churn(n: u64, keys: u64, version: &'static str) -> Vec<Ev> {
    let mut rows: BTreeMap<u64, Value> = BTreeMap::new();
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n {
        let k = i % keys;
        let row = json!({"id": format!("k{k}"), "name": format!("name {i}"), "updatedDate": date((i % 60_000) as i64), "age": i as f64 / 4.0});
        let ev = match rows.get(&k) {
            None => Ev::insert("order", version, row.clone()),
            Some(prev) if i % 9 == 0 => {
                let ev = Ev::delete("order", version, prev.clone());
                rows.remove(&k);
                out.push(Ev { timestamp: T0 + i as i64, ..ev });
                continue;
            }
            Some(prev) => Ev::update("order", version, prev.clone(), row.clone(), &["name", "age", "updatedDate"]),
        };
        rows.insert(k, row);
        out.push(Ev { timestamp: T0 + i as i64, ..ev });
    }
    out
}

/// One event of [`mixed_stream`]: what the stream destinations' tests compare against.
#[derive(Debug, Clone)]
pub struct Raw {
    pub subject: String,
    /// Exactly as published.
    pub bytes: Vec<u8>,
    pub table: String,
    pub op: &'static str,
    /// The event id.
    pub id: String,
    /// The primary key: the last element of `key`.
    pub pk: String,
    pub company: Option<String>,
    pub location: Option<String>,
    /// Unix milliseconds.
    pub timestamp: i64,
}

/// Values no destination may alter: quotes, backslashes, SQL, emoji, control characters, markup,
/// and JSON-looking text.
pub const HOSTILE: &[&str] = &[
    "it's",
    r#"say "hi""#,
    r"back\slash \\ \n",
    "'); DROP TABLE x; --",
    "emoji 😀🚗 ünïcödé",
    "<script>&amp;</script>",
    "tab\tnew\nline\r\n\u{0}\u{1f}",
    "",
    "{\"looks\": [\"like json\"]}",
];

/// Primary keys that are no safe object names or message keys.
pub const HOSTILE_IDS: &[&str] =
    &["it's \"odd\"", r"a\b", "😀", "<id>", "../../etc/passwd", "a/b", "sp ace", "%2F", "."];

/// A realistic mixed stream of `n` events (at least 40): INSERT, UPDATE and DELETE over five
/// tables and many keys, several events for one key within one second, keys with a region prefix,
/// events without company or location, fields eds does not know, hostile strings in values and
/// keys, 2^63-1 and 2^64-1, a long decimal, nested objects and arrays, and one 200 KiB value.
pub fn mixed_stream(n: usize) -> Vec<Raw> {
    assert!(n >= 40);
    const TABLES: &[&str] = &["order", "customer", "vehicle", "inventory_part", "labor"];
    let big_decimal: Value = serde_json::from_str("12345678901234567890.123456789012345678").unwrap();
    let mut live: BTreeMap<(usize, usize), Value> = BTreeMap::new();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = i % TABLES.len();
        let k = (i / TABLES.len()) % 7;
        let table = TABLES[t];
        let pk = if i % 11 == 3 { HOSTILE_IDS[i % HOSTILE_IDS.len()].to_owned() } else { format!("{table}-{k}") };
        let company = (i % 13 != 5).then(|| COMPANY.to_owned());
        let location = (i % 17 != 6).then(|| format!("loc-{}", i % 3));
        let h = HOSTILE[i % HOSTILE.len()];
        let mut row = json!({
            "id": pk,
            "name": format!("{h} #{i}"),
            "companyId": company,
            "locationId": location,
            "count": i,
            "max_i64": i64::MAX,
            "max_u64": u64::MAX,
            "amount": big_decimal,
            "meta": {"tags": [h, {"deep": [1, 2.5, null, true]}], "note": h},
            "updatedDate": date((i as i64 * 10) % 60_000),
        });
        // Odd, so never a DELETE (which carries only `before`).
        if i == (n / 2) | 1 {
            row["blob"] = Value::String("x".repeat(200 * 1024));
        }
        let slot = (t, if pk.starts_with(table) { k } else { 100 + i });
        let (op, before, after, diff) = match live.get(&slot) {
            None => ("INSERT", None, Some(row.clone()), None),
            Some(prev) if i % 4 == 0 => ("DELETE", Some(prev.clone()), None, None),
            Some(prev) => ("UPDATE", Some(prev.clone()), Some(row.clone()), Some(json!(["name", "count"]))),
        };
        match op {
            "DELETE" => live.remove(&slot),
            _ => live.insert(slot, row),
        };
        let id = format!("{:016x}", (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        // 70 events per second (10 ms apart): a key comes back every 35 events, so each key sees
        // two events within one second.
        let timestamp = T0 + (i as i64 / 70) * 1000 + (i as i64 % 70) * 10;
        let key = if i % 3 == 0 { json!(["gcp-us-west1", pk]) } else { json!([pk]) };
        let mut e = json!({
            "operation": op,
            "id": id,
            "table": table,
            "key": key,
            "modelVersion": "fff000112-update",
            "timestamp": timestamp,
            "mvccTimestamp": format!("{timestamp}000000.0000000000"),
            "region": "gcp-us-west1",
            "sessionId": "0b6c-11ef",
            "version": 2,
        });
        if let Some(c) = &company {
            e["companyId"] = json!(c);
        }
        if let Some(l) = &location {
            e["locationId"] = json!(l);
        }
        if let Some(b) = before {
            e["before"] = b;
        }
        if let Some(a) = after {
            e["after"] = a;
        }
        if let Some(d) = diff {
            e["diff"] = d;
        }
        let company_subject = company.clone().unwrap_or_else(|| "NONE".to_owned());
        out.push(Raw {
            subject: format!("dbchange.{table}.{op}.{company_subject}.1.PUBLIC.2"),
            bytes: serde_json::to_vec(&e).unwrap(),
            table: table.to_owned(),
            op,
            id,
            pk,
            company,
            location,
            timestamp,
        });
    }
    out
}
