use super::*;
use serde_json::json;

/// A validator directory as an EDS user has one: two tables, a schema shared through `$ref`
/// (relative, and by EDS's `file://<rel>` URI), a README that is not JSON.
fn shop_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("schemas/common")).unwrap();
    std::fs::write(
        d.join(CONFIG_FILE),
        json!({
            "labor": {"schema": "schemas/labor.json", "path": "{{.table}}/received/{{.table}}_{{.mvccTimestamp}}_{{.id}}.json"},
            "order": {"schema": "schemas/order.json"}
        })
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        d.join("schemas/common/defs.json"),
        json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "definitions": {
                "when": {"type": "string", "format": "date-time"},
                "id": {"type": "string", "minLength": 1}
            }
        })
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        d.join("schemas/labor.json"),
        json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "required": ["table", "after"],
            "properties": {
                "after": {
                    "type": "object",
                    "required": ["id", "hours"],
                    "properties": {
                        "id": {"$ref": "common/defs.json#/definitions/id"},
                        "hours": {"type": "number", "minimum": 0},
                        "updatedDate": {"$ref": "common/defs.json#/definitions/when"}
                    }
                }
            }
        })
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        d.join("schemas/order.json"),
        json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {"after": {"properties": {"createdDate": {"$ref": "file://schemas/common/defs.json#/definitions/when"}}}}
        })
        .to_string(),
    )
    .unwrap();
    std::fs::write(d.join("README.md"), "not a schema").unwrap();
    dir
}

fn labor(hours: serde_json::Value, updated: &str) -> Vec<u8> {
    json!({"operation": "INSERT", "id": "999", "table": "labor", "key": ["l1"], "modelVersion": "v",
        "after": {"id": "l1", "hours": hours, "updatedDate": updated},
        "timestamp": 1, "mvccTimestamp": "123456789"})
    .to_string()
    .into_bytes()
}

#[test]
fn the_labor_example_validates_and_renders_its_path() {
    let dir = shop_dir();
    let v = Validator::load(dir.path()).unwrap();
    assert_eq!(
        v.check(&labor(json!(1.5), "2026-12-03T10:00:00.000Z")),
        Verdict::Valid(Some("labor/received/labor_123456789_999.json".into()))
    );
    let order = json!({"operation": "INSERT", "id": "e", "table": "order", "key": ["o"], "modelVersion": "v",
        "after": {"id": "o", "createdDate": "2026-12-03T10:00:00Z"}, "timestamp": 1, "mvccTimestamp": "1"});
    assert_eq!(v.check(order.to_string().as_bytes()), Verdict::Valid(None), "a rule without a path");
    let customer = labor(json!(1), "x").into_iter().collect::<Vec<u8>>();
    let customer = String::from_utf8(customer).unwrap().replace("\"labor\"", "\"customer\"");
    assert_eq!(v.check(customer.as_bytes()), Verdict::NoRule);
    assert!(v.first_skip("pg", "customer"));
    assert!(!v.first_skip("pg", "customer"), "logged once per destination and table");
    assert!(v.first_skip("s3", "customer"));
}

#[test]
fn a_failing_event_is_named_with_every_problem() {
    let dir = shop_dir();
    let v = Validator::load(dir.path()).unwrap();
    let Verdict::Invalid(why) = v.check(&labor(json!(-2), "yesterday")) else { panic!("must fail") };
    assert!(why.contains("table \"labor\" (schemas/labor.json)"), "{why}");
    assert!(why.contains("/after/hours"), "minimum: {why}");
    assert!(
        why.contains("/after/updatedDate") && why.contains("date-time"),
        "format is enforced through the $ref: {why}"
    );
    let order = json!({"operation": "INSERT", "id": "e", "table": "order", "key": ["o"], "modelVersion": "v",
        "after": {"id": "o", "createdDate": "2026-13-03"}, "timestamp": 1, "mvccTimestamp": "1"});
    let Verdict::Invalid(why) = v.check(order.to_string().as_bytes()) else { panic!("EDS's file://<rel> $ref") };
    assert!(why.contains("/after/createdDate"), "{why}");
    let Verdict::Invalid(why) = v.check(&labor(json!(1), "2026-12-03T10:00:00Z").replace_id("../../etc")) else {
        panic!("a path leaving the folder")
    };
    assert!(why.contains("not a relative name"), "{why}");
}

trait ReplaceId {
    fn replace_id(self, id: &str) -> Vec<u8>;
}
impl ReplaceId for Vec<u8> {
    fn replace_id(self, id: &str) -> Vec<u8> {
        let mut v: Value = serde_json::from_slice(&self).unwrap();
        v["id"] = json!(id);
        v.to_string().into_bytes()
    }
}

#[test]
fn bad_configurations_name_the_file_and_rule() {
    let dir = shop_dir();
    let cfg = dir.path().join(CONFIG_FILE);
    let err = |text: &str| {
        std::fs::write(&cfg, text).unwrap();
        format!("{:#}", Validator::load(dir.path()).unwrap_err())
    };
    let e = err(r#"{"labor": {"schema": "schemas/missing.json"}}"#);
    assert!(e.contains("table \"labor\"") && e.contains("schemas/missing.json"), "{e}");
    let e = err(r#"{"labor": {"schema": "schemas/labor.json", "path": "{{if .x}}a{{end}}"}}"#);
    assert!(e.contains("table \"labor\"") && e.contains("{{if .x}} is not supported"), "{e}");
    let e = err(r#"{"labor": {"schema": "schemas/labor.json", "path": "{{.table"}}"#);
    assert!(e.contains("never closed"), "{e}");
    let e = err(r#"["labor"]"#);
    assert!(e.contains("config.json") && e.contains("expected"), "{e}");
    std::fs::write(dir.path().join("schemas/labor.json"), r#"{"type": 12}"#).unwrap();
    let e = err(r#"{"labor": {"schema": "schemas/labor.json"}}"#);
    assert!(e.contains("schemas/labor.json"), "{e}");
    let e = format!("{:#}", Validator::load(&dir.path().join("nope")).unwrap_err());
    assert!(e.contains("nope"), "{e}");
}

#[test]
fn templates_render_fields_literals_and_escape_as_go() {
    let doc =
        json!({"table": "order", "n": 12, "b": true, "after": {"id": "a<b>&'\"+c", "deep": {"x": "y"}}, "nil": null});
    let r = |t: &str| Template::parse(t).unwrap().render(&doc);
    assert_eq!(r("{{.table}}/{{ .after.deep.x }}/{{.n}}-{{.b}}.json").unwrap(), "order/y/12-true.json");
    assert_eq!(r("{{.after.id}}").unwrap(), "a&lt;b&gt;&amp;&#39;&#34;&#43;c");
    assert_eq!(r(r#"{{"lit"}}/{{`raw`}}/{{/* note */}}x"#).unwrap(), "lit/raw/x");
    assert_eq!(r("a/  {{- .table -}}  /b").unwrap(), "a/order/b");
    assert!(r("{{.missing}}").unwrap_err().to_string().contains("no field .missing"));
    assert!(r("{{.nil}}").unwrap_err().to_string().contains("null"));
    assert!(r("{{.after}}").unwrap_err().to_string().contains("not a single value"));
    assert!(r("/{{.table}}").is_err(), "absolute");
    for bad in ["{{.}}", "{{.a | printf}}", "{{range .x}}", "{{printf \"%s\" .a}}", "{{.a.}}", "x}}"] {
        assert!(Template::parse(bad).is_err(), "{bad} must be refused");
    }
}

#[test]
fn the_document_is_edss_own_fields_without_nulls() {
    let raw = json!({"operation": "UPDATE", "id": "e", "table": "t", "key": ["k"], "modelVersion": "v",
        "companyId": null, "userId": null, "before": null, "after": {"id": "k"}, "diff": [], "imported": true,
        "region": "gcp-us-west1", "sessionId": "s", "timestamp": 1, "mvccTimestamp": "1.0"});
    let doc = document(raw.to_string().as_bytes()).unwrap();
    assert_eq!(
        doc,
        json!({"operation": "UPDATE", "id": "e", "table": "t", "key": ["k"], "modelVersion": "v",
            "after": {"id": "k"}, "timestamp": 1, "mvccTimestamp": "1.0"})
    );
    // So an EDS-era schema that allows no other property still passes real messages.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(CONFIG_FILE), r#"{"t": {"schema": "t.json"}}"#).unwrap();
    let props: serde_json::Map<String, Value> =
        ENVELOPE.iter().chain(&["mvccTimestamp"]).map(|k| ((*k).to_owned(), json!({}))).collect();
    let schema = json!({"type": "object", "additionalProperties": false, "properties": props,
        "required": ["after"]});
    std::fs::write(dir.path().join("t.json"), schema.to_string()).unwrap();
    let v = Validator::load(dir.path()).unwrap();
    assert_eq!(v.check(raw.to_string().as_bytes()), Verdict::Valid(None));
}

#[test]
fn literals_are_escaped_and_long_or_odd_names_refused() {
    let doc = json!({"a": "x".repeat(300), "b": "back\\slash", "c": "tab\there"});
    let r = |t: &str| Template::parse(t).unwrap().render(&doc);
    assert_eq!(r(r#"{{"a+b"}}"#).unwrap(), "a&#43;b", "an action's output, literal or not, is escaped");
    assert!(r("{{.a}}").unwrap_err().to_string().contains("too long"));
    assert!(r("{{.b}}").unwrap_err().to_string().contains("backslash"));
    assert!(r("{{.c}}").unwrap_err().to_string().contains("control"));
}

#[test]
fn a_directory_with_spaces_and_hashes_still_loads() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("my rules #1");
    std::fs::create_dir_all(dir.join("sub dir")).unwrap();
    std::fs::write(dir.join(CONFIG_FILE), r#"{"t": {"schema": "sub dir/t.json"}}"#).unwrap();
    std::fs::write(dir.join("sub dir/t.json"), r#"{"properties": {"after": {"$ref": "common%20defs.json"}}}"#).unwrap();
    std::fs::write(dir.join("sub dir/common defs.json"), r#"{"type": "object", "required": ["id"]}"#).unwrap();
    let v = Validator::load(&dir).unwrap();
    let ok = json!({"operation": "INSERT", "table": "t", "key": ["k"], "after": {"id": "k"}, "timestamp": 1});
    assert_eq!(v.check(ok.to_string().as_bytes()), Verdict::Valid(None));
    let bad = json!({"operation": "INSERT", "table": "t", "key": ["k"], "after": {"x": 1}, "timestamp": 1});
    assert!(matches!(v.check(bad.to_string().as_bytes()), Verdict::Invalid(_)), "the $ref across a space resolved");
}
