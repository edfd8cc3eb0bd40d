//! Sample CDC events shaped like Shopmonkey's `order` table changes (see
//! `shared/fixtures/schema/order_schema_b041c12fbf8d1103.json`), for `eds wal sample` and tests.
//! Deterministic: the same index always gives the same event.

use serde_json::json;

/// Schema version of the `order` fixture.
pub const ORDER_MODEL_VERSION: &str = "b041c12fbf8d1103";

fn hex_id(seed: u64) -> String {
    // splitmix64: cheap, well-spread ids.
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    format!("{:016x}", z ^ (z >> 31))
}

/// The `index`-th sample event: an INSERT for every tenth order, UPDATEs otherwise, with
/// before/after images and a diff, about 700 bytes of JSON.
pub fn order_event(index: u64) -> Vec<u8> {
    let order = index / 10;
    let order_id = hex_id(order);
    let company = "6287a4154d1a72cc5ce091bb";
    let location = "6287a4154d1a72cc5ce091bc";
    let ts_ms: u64 = 1_795_749_176_000 + index * 250;
    let row = |total: u64, status: &str| {
        json!({
            "id": order_id,
            "companyId": company,
            "locationId": location,
            "number": order,
            "status": status,
            "name": format!("Brake job #{order}"),
            "customerId": hex_id(order ^ 0xC0FFEE),
            "vehicleId": hex_id(order ^ 0xCA7),
            "totalCostCents": total,
            "laborCents": total / 3,
            "partsCents": total - total / 3,
            "authorized": total.is_multiple_of(2),
            "archived": false,
            "deleted": false,
            "createdDate": "2026-11-20T09:30:00.000Z",
            "updatedDate": format!("2026-11-27T03:{:02}:{:02}.000Z", (index / 60) % 60, index % 60),
        })
    };
    let total = 10_000 + (index % 10) * 1_250;
    let event = if index.is_multiple_of(10) {
        json!({
            "operation": "INSERT", "id": hex_id(index), "table": "order",
            "key": ["gcp-us-west1", order_id], "modelVersion": ORDER_MODEL_VERSION,
            "companyId": company, "locationId": location,
            "after": row(total, "Estimate"),
            "timestamp": ts_ms, "mvccTimestamp": format!("{}000000.0000000000", ts_ms),
        })
    } else {
        json!({
            "operation": "UPDATE", "id": hex_id(index), "table": "order",
            "key": ["gcp-us-west1", order_id], "modelVersion": ORDER_MODEL_VERSION,
            "companyId": company, "locationId": location,
            "before": row(total - 1_250, "Estimate"),
            "after": row(total, "RepairOrder"),
            "diff": ["totalCostCents", "laborCents", "partsCents", "status", "updatedDate"],
            "timestamp": ts_ms, "mvccTimestamp": format!("{}000000.0000000000", ts_ms),
        })
    };
    event.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_valid_json_of_realistic_size() {
        for i in 0..30 {
            let e = order_event(i);
            let v: serde_json::Value = serde_json::from_slice(&e).unwrap();
            assert_eq!(v["table"], "order");
            let op = v["operation"].as_str().unwrap();
            assert_eq!(op, if i % 10 == 0 { "INSERT" } else { "UPDATE" });
            assert!((400..1400).contains(&e.len()), "event {i} is {} bytes", e.len());
        }
        assert_eq!(order_event(7), order_event(7));
        assert_ne!(order_event(7), order_event(8));
    }
}

/// A stream of Shopmonkey-shaped change events over several tables — orders, customers,
/// vehicles, labor — with inserts, updates and deletes in plausible proportions, and a schema
/// change halfway (a new model version whose rows carry one more column). Deterministic for a
/// given seed and length.
#[derive(Debug, Clone)]
pub struct Traffic {
    seed: u64,
    next: u64,
    total: u64,
    /// Live row ids per table, so updates and deletes name rows that exist.
    live: [Vec<u64>; 4],
    ids: u64,
}

const TABLES: [&str; 4] = ["order", "customer", "vehicle", "labor"];

impl Traffic {
    /// `total` events from `seed`.
    pub fn new(seed: u64, total: u64) -> Traffic {
        Traffic { seed, next: 0, total, live: Default::default(), ids: 0 }
    }

    fn rand(&mut self) -> u64 {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        self.seed
    }
}

/// The JetStream subject ingest would have stored with a sample event (its table and operation,
/// the sample company and location); `"unknown"`/`"UPDATE"` where the event lacks them.
pub fn subject_of(payload: &[u8]) -> serde_json::Result<String> {
    let v: serde_json::Value = serde_json::from_slice(payload)?;
    Ok(format!(
        "dbchange.{}.{}.6287a4154d1a72cc5ce091bb.6287a4154d1a72cc5ce091bc.PUBLIC.2",
        v["table"].as_str().unwrap_or("unknown"),
        v["operation"].as_str().unwrap_or("UPDATE")
    ))
}

impl Iterator for Traffic {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        if self.next >= self.total {
            return None;
        }
        let i = self.next;
        self.next += 1;
        let t = (self.rand() % 4) as usize;
        let table = TABLES[t];
        let migrated = i >= self.total / 2;
        let model_version = if migrated { "c7f1e2d3a4b5c6d7" } else { "b041c12fbf8d1103" };
        let roll = self.rand() % 100;
        let live = self.live[t].len();
        let (operation, row_id) = if live == 0 || roll < 25 {
            self.ids += 1;
            self.live[t].push(self.ids);
            ("INSERT", self.ids)
        } else if roll < 92 {
            let at = (self.rand() as usize) % live;
            ("UPDATE", self.live[t][at])
        } else {
            let at = (self.rand() as usize) % live;
            ("DELETE", self.live[t].swap_remove(at))
        };
        let id = hex_id(row_id ^ ((t as u64) << 56));
        let ts_ms: u64 = 1_795_749_176_000 + i * 37;
        let n = self.rand() % 100_000;
        let status = ["Estimate", "RepairOrder", "Invoice"][(n % 3) as usize];
        let mut row = match table {
            "order" => {
                json!({"id": id, "number": row_id, "status": status, "totalCostCents": n, "updatedDate": format!("2026-11-27T03:{:02}:{:02}.000Z", (i / 60) % 60, i % 60)})
            }
            "customer" => {
                json!({"id": id, "firstName": "Ada", "lastName": format!("Lovelace {n}"), "email": format!("ada{n}@example.com"), "marketingOptIn": n.is_multiple_of(2)})
            }
            "vehicle" => json!({"id": id, "make": "Volvo", "model": "240", "year": 1975 + n % 50, "mileage": n * 3}),
            _ => {
                json!({"id": id, "name": "Brake pads", "hours": (n % 40) as f64 / 4.0, "rateCents": 15_000 + n % 5_000, "completed": n.is_multiple_of(3)})
            }
        };
        if migrated {
            if let Some(obj) = row.as_object_mut() {
                obj.insert("locationName".into(), json!("Main Street"));
            }
        }
        let mut event = json!({
            "operation": operation, "id": hex_id(i ^ 0xD0D0), "table": table,
            "key": ["gcp-us-west1", id], "modelVersion": model_version,
            "companyId": "6287a4154d1a72cc5ce091bb", "locationId": "6287a4154d1a72cc5ce091bc",
            "timestamp": ts_ms, "mvccTimestamp": format!("{ts_ms}000000.0000000000"),
        });
        match operation {
            "INSERT" => event["after"] = row,
            "UPDATE" => {
                // The new image's values are all drawn afresh: every column but the key changed.
                let diff: Vec<String> = row
                    .as_object()
                    .map(|o| o.keys().filter(|k| k.as_str() != "id").cloned().collect())
                    .unwrap_or_default();
                event["before"] = row.clone();
                event["after"] = row;
                event["diff"] = json!(diff);
            }
            _ => event["before"] = row,
        }
        Some(event.to_string().into_bytes())
    }
}

#[cfg(test)]
mod traffic_tests {
    use super::*;

    #[test]
    fn traffic_is_valid_varied_and_migrates_halfway() {
        let events: Vec<serde_json::Value> =
            Traffic::new(7, 400).map(|e| serde_json::from_slice(&e).unwrap()).collect();
        assert_eq!(events.len(), 400);
        for op in ["INSERT", "UPDATE", "DELETE"] {
            assert!(events.iter().any(|e| e["operation"] == op), "no {op}");
        }
        for t in TABLES {
            assert!(events.iter().any(|e| e["table"] == t), "no {t}");
        }
        assert!(events[..200].iter().all(|e| e["modelVersion"] == "b041c12fbf8d1103"));
        assert!(events[200..].iter().all(|e| e["modelVersion"] == "c7f1e2d3a4b5c6d7"));
        for e in &events {
            eds_drivers::event::validate(e.to_string().as_bytes()).unwrap();
        }
        let again: Vec<Vec<u8>> = Traffic::new(7, 400).collect();
        assert_eq!(again[123], serde_json::to_vec(&events[123]).unwrap());
    }
}
