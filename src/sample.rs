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
