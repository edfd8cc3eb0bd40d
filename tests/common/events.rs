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
