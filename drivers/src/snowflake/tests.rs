//! Tests of the Snowflake destinations: URLs, key-pair tokens, values and classification without
//! a server; writes against a private fakesnow (`FAKESNOW_SERVER`), each test in its own
//! database, read back through the official Python connector; login errors and the key-pair login
//! against a one-shot HTTP double that answers as Snowflake does and records what it was sent.

#![allow(clippy::unwrap_used)]

use super::cells::{ColumnPlan, Storage};
use super::client::{classify, Binding, Client};
use super::fakesnow::Fakesnow;
use super::keypair::{spki_of_rsa_public_key, PrivateKey};
use super::*;
use crate::conformance;
use crate::driver::{Batch, Driver, DriverError, ErrorClass, StateChange};
use crate::event::{fold, ChangeEvent, FoldedChange};
use crate::schema::{Column, ColumnType, Schema};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

/// How long any one call of a test may take: a test fails, it never hangs.
const DEADLINE: Duration = Duration::from_secs(60);

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f).await.unwrap_or_else(|_| panic!("{what}: no answer within {DEADLINE:?}"))
}

fn schema(v: Value) -> Schema {
    Schema::from_json(v.to_string().as_bytes()).unwrap()
}

/// Folds events (positions 1, 2, …) as the drain does.
fn changes(events: &[Value]) -> Vec<FoldedChange> {
    let events: Vec<ChangeEvent> =
        events.iter().map(|v| ChangeEvent::from_json(v.to_string().as_bytes()).unwrap()).collect();
    fold(events.iter().enumerate().map(|(i, e)| (i as u64 + 1, e)))
}

fn ins(table: &str, version: &str, after: Value) -> Value {
    let id = after["id"].clone();
    json!({"operation": "INSERT", "table": table, "key": [id], "modelVersion": version, "after": after})
}

fn upd(table: &str, after: Value, diff: &[&str]) -> Value {
    let id = after["id"].clone();
    json!({"operation": "UPDATE", "table": table, "key": [id], "modelVersion": "v1", "after": after, "diff": diff})
}

fn del(table: &str, id: &str) -> Value {
    json!({"operation": "DELETE", "table": table, "key": [id], "modelVersion": "v1", "before": {"id": id}})
}

/// ensure_schema, then write the folded batch, as the drain does.
async fn apply(d: &SnowflakeDriver, schema: &Schema, folded: &[FoldedChange]) -> Result<(), DriverError> {
    within("ensure_schema", d.ensure_schema(schema)).await?;
    let batch: Vec<StateChange<'_>> = folded.iter().map(|change| StateChange { change, schema }).collect();
    within("writing a batch", d.write(Batch::Folded(&batch))).await
}

fn no_env(_: &str) -> Option<String> {
    None
}

/// A fakesnow and one database of it.
struct Fake {
    server: Fakesnow,
    database: &'static str,
}

impl Fake {
    fn start(database: &'static str) -> Fake {
        Fake { server: Fakesnow::start(), database }
    }

    fn url(&self) -> String {
        self.server.url(self.database, "PUBLIC")
    }

    fn driver(&self) -> SnowflakeDriver {
        SnowflakeDriver::new(&self.url(), &DESCRIPTION).unwrap()
    }

    /// Rows of `sql`, each as its cells joined by `|` (NULL as `NULL`, text as is).
    fn snapshot(&self, sql: &str) -> Vec<String> {
        self.server
            .rows(self.database, "PUBLIC", sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .into_iter()
            .map(|r| {
                r.iter()
                    .map(|c| match c {
                        Value::Null => "NULL".to_owned(),
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join("|")
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// URLs, redaction, key pairs, values, classification (no server)

#[test]
fn urls_follow_eds_and_read_their_options() {
    let c = parse("snowflake://user:pass@abcdefg-ab12345/DB", &no_env).unwrap();
    assert_eq!(c.base_url, "https://abcdefg-ab12345.snowflakecomputing.com");
    assert_eq!(
        (c.account.as_str(), c.user.as_str(), c.database.as_str(), c.schema.as_str()),
        ("ABCDEFG-AB12345", "user", "DB", "PUBLIC")
    );
    assert_eq!(c.auth, Auth::Password { password: "pass".into() });

    // EDS's example forms: host with dots, /DB/SCHEMA, eds's own parameters left to the drain.
    let c = parse(
        "snowflake://FOO:p%40ss%2Fw@TFLXCJY-LU41011.snowflakecomputing.com/TEST/PUBLIC?name=sf&start=2024-01-01&eds-x=1",
        &no_env,
    )
    .unwrap();
    assert_eq!(c.base_url, "https://tflxcjy-lu41011.snowflakecomputing.com");
    assert_eq!(c.account, "TFLXCJY-LU41011");
    assert_eq!(c.auth, Auth::Password { password: "p@ss/w".into() });
    assert_eq!((c.database.as_str(), c.schema.as_str()), ("TEST", "PUBLIC"));
    // A legacy account locator with its region: Snowflake's domain is added, the account is the
    // locator.
    let c = parse("snowflake://u:p@xy12345.us-east-1/DB", &no_env).unwrap();
    assert_eq!(
        (c.base_url.as_str(), c.account.as_str()),
        ("https://xy12345.us-east-1.snowflakecomputing.com", "XY12345")
    );
    let c = parse("snowflake://u:p@org-acct.privatelink.snowflakecomputing.com/DB", &no_env).unwrap();
    assert_eq!(c.base_url, "https://org-acct.privatelink.snowflakecomputing.com");

    let c = parse(
        "snowflake://u:p@acct/D/S?endpoint=http://127.0.0.1:9/&warehouse=WH&role=R%20X&application=eds&client_session_keep_alive=true",
        &no_env,
    )
    .unwrap();
    assert_eq!(c.base_url, "http://127.0.0.1:9");
    assert_eq!((c.warehouse.as_deref(), c.role.as_deref()), (Some("WH"), Some("R X")));

    // Key pair: the key from the named variable, else from SNOWFLAKE_SECRET_ACCESS_KEY.
    let env = |name: &str| match name {
        "MY_KEY" => Some("PEM-A".to_owned()),
        "SNOWFLAKE_SECRET_ACCESS_KEY" => Some("PEM-DEFAULT".to_owned()),
        _ => None,
    };
    let c = parse("snowflake-keypair://svc@acct/DB/SCH?secret-key=MY_KEY", &env).unwrap();
    assert_eq!(c.auth, Auth::KeyPair { env: "MY_KEY".into(), pem: "PEM-A".into() });
    assert_eq!(c.schema, "SCH");
    let c = parse("snowflake-keypair://svc@acct/DB/SCH?secret-key=UNSET", &env).unwrap();
    assert_eq!(c.auth, Auth::KeyPair { env: "UNSET".into(), pem: "PEM-DEFAULT".into() });
    let c = parse("snowflake-keypair://svc@acct/DB/SCH", &env).unwrap();
    assert!(matches!(c.auth, Auth::KeyPair { pem, .. } if pem == "PEM-DEFAULT"));
}

#[test]
fn bad_urls_are_config_errors_that_never_show_the_password() {
    for (url, needle) in [
        ("snowflake://user:hunter2secret@acct", "must name the database"),
        ("snowflake://acct/DB", "must name the user"),
        ("snowflake://user@acct/DB", "must carry the password"),
        ("snowflake://user:hunter2secret@/DB", "account is empty"),
        ("snowflake://user:hunter2secret@acct/A/B/C", "path must be"),
        ("snowflake://user:hunter2secret@acct/DB?bogus=1", "unknown option \"bogus\""),
        ("snowflake://user:hunter2secret@acct/DB?endpoint=ftp://x", "endpoint must start"),
        ("snowflake://user:hunter2secret@acct/DB%zz", "malformed"),
        ("snowflake-keypair://user@acct/DB", "must name database and schema"),
        ("snowflake-keypair://user:hunter2secret@acct/DB/S", "takes no password"),
        (
            "snowflake-keypair://user@acct/DB/S?secret-key=NOPE",
            "NOPE (or SNOWFLAKE_SECRET_ACCESS_KEY) holds no private key",
        ),
        ("mysql://user:hunter2secret@acct/DB", "scheme must be"),
    ] {
        let err = parse(url, &no_env).unwrap_err();
        assert_eq!(err.class, ErrorClass::Config, "{url}");
        assert!(err.message.contains(needle), "{url}: {}", err.message);
        assert!(!err.message.contains("hunter2secret"), "{url}: {}", err.message);
    }
    // Through the registry too, and in Debug output.
    let err = crate::find("snowflake").unwrap().open("snowflake://u:hunter2secret@acct").err().unwrap();
    assert!(!err.message.contains("hunter2secret"));
    let c = parse("snowflake://u:hunter2secret@acct/DB", &no_env).unwrap();
    assert!(!format!("{c:?}").contains("hunter2secret"), "{c:?}");
    assert_eq!(c.target, "snowflake://u:***@acct/DB");
    let c = parse("snowflake-keypair://u@acct/DB/S", &|_| Some("-----BEGIN PRIVATE KEY-----secret".into())).unwrap();
    assert!(!format!("{c:?}").contains("secret"), "{c:?}");
}

/// A fresh 2048-bit RSA key: (PKCS#8 PEM, SubjectPublicKeyInfo DER), both made by openssl.
fn openssl_key() -> (String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let pubder = dir.path().join("pub.der");
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).output().expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key.to_str().unwrap()]);
    run(&["pkey", "-in", key.to_str().unwrap(), "-pubout", "-outform", "DER", "-out", pubder.to_str().unwrap()]);
    (std::fs::read_to_string(&key).unwrap(), std::fs::read(&pubder).unwrap())
}

/// Checks a login token against the public key (SPKI DER) and returns its claims.
fn verify_jwt(token: &str, spki: &[u8]) -> Value {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header, json!({"alg": "RS256", "typ": "JWT"}));
    // The RSAPublicKey inside a 2048-bit key's SPKI: after the algorithm and the BIT STRING header.
    assert_eq!(&spki[19..24], &[0x03, 0x82, 0x01, 0x0f, 0x00], "a 2048-bit RSA SPKI");
    let public = ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, &spki[24..]);
    let signed = format!("{}.{}", parts[0], parts[1]);
    public.verify(signed.as_bytes(), &URL_SAFE_NO_PAD.decode(parts[2]).unwrap()).expect("the signature verifies");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap()
}

#[test]
fn key_pair_tokens_are_signed_and_name_account_user_and_fingerprint() {
    let (pem, spki) = openssl_key();
    let key = PrivateKey::from_pem(&pem).unwrap();
    // Our SPKI is openssl's, byte for byte, so the fingerprint is the one Snowflake computes.
    assert_eq!(key.public_key_der(), &spki[..]);
    let fingerprint = STANDARD.encode(ring::digest::digest(&ring::digest::SHA256, &spki));
    assert_eq!(key.fingerprint(), fingerprint);
    let token = key.jwt("abcdefg-ab12345", "svc_user", 1_700_000_000).unwrap();
    let claims = verify_jwt(&token, &spki);
    assert_eq!(
        claims,
        json!({
            "iss": format!("ABCDEFG-AB12345.SVC_USER.SHA256:{fingerprint}"),
            "sub": "ABCDEFG-AB12345.SVC_USER",
            "iat": 1_700_000_000u64,
            "exp": 1_700_000_000u64 + 59 * 60,
        })
    );
    // A tampered token does not verify.
    let other = PrivateKey::from_pem(&openssl_key().0).unwrap();
    let forged = other.jwt("abcdefg-ab12345", "svc_user", 1_700_000_000).unwrap();
    let parts: Vec<&str> = forged.split('.').collect();
    let public = ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, &spki[24..]);
    assert!(public
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &URL_SAFE_NO_PAD.decode(parts[2]).unwrap())
        .is_err());
    // The SPKI wrapper of a short key length form too.
    assert_eq!(spki_of_rsa_public_key(&[0x30, 0x00])[..4], [0x30, 0x14, 0x30, 0x0d]);
}

#[test]
fn unusable_keys_are_config_errors_that_say_why() {
    for (pem, needle) in [
        ("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----", "encrypted"),
        ("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----", "PKCS#1"),
        ("not a key at all", "not a PEM private key"),
        ("-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----", "not base64"),
        ("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----", "not a usable RSA key"),
    ] {
        let err = PrivateKey::from_pem(pem).unwrap_err();
        assert_eq!(err.class, ErrorClass::Config);
        assert!(err.message.contains(needle), "{}", err.message);
    }
    // Opening a driver whose variable holds no usable key fails at once, naming the variable.
    let c = parse("snowflake-keypair://u@acct/DB/S?secret-key=BAD_KEY", &|_| Some("junk".into())).unwrap();
    let err = SnowflakeDriver::with_config(c, &KEYPAIR_DESCRIPTION).unwrap_err();
    assert_eq!(err.class, ErrorClass::Config);
    assert!(err.message.contains("$BAD_KEY"), "{}", err.message);
}

#[test]
fn identifiers_are_always_double_quoted() {
    assert_eq!(quote_ident("order").unwrap(), r#""order""#);
    assert_eq!(quote_ident("updatedDate").unwrap(), r#""updatedDate""#);
    assert_eq!(quote_ident(r#"a"; DROP TABLE x; --"#).unwrap(), r#""a""; DROP TABLE x; --""#);
    for bad in ["", "a\0b", &"x".repeat(256)] {
        assert_eq!(quote_ident(bad).unwrap_err().class, ErrorClass::Rejected, "{bad:?}");
    }
}

fn column(kind: ColumnType, nullable: bool) -> Column {
    Column { name: "c".into(), kind, nullable, required: false, primary_key: false, deprecated: false, comment: None }
}

#[test]
fn values_become_text_by_the_column_type() {
    let text = |kind: ColumnType, v: Value| {
        let c = column(kind, true);
        ColumnPlan::new(&c).unwrap().cell(Some(&v), "t").map(|c| c.map(|t| t.into_owned()))
    };
    let some = |s: &str| Some(s.to_owned());
    let text_ok = |kind: ColumnType, v: Value| text(kind, v).unwrap();
    assert_eq!(text_ok(ColumnType::Integer, json!(9223372036854775807i64)), some("9223372036854775807"));
    let big: Value = serde_json::from_str("18446744073709551615").unwrap();
    assert_eq!(text_ok(ColumnType::Integer, big), some("18446744073709551615"));
    assert_eq!(text_ok(ColumnType::Integer, json!(3.0)), some("3"));
    assert_eq!(text_ok(ColumnType::Integer, json!("42")), some("42"));
    assert_eq!(text_ok(ColumnType::Number, json!(0.1)), some("0.1"));
    assert_eq!(text_ok(ColumnType::Boolean, json!(true)), some("true"));
    assert_eq!(text_ok(ColumnType::Boolean, json!(0)), some("false"));
    assert_eq!(text_ok(ColumnType::Object, json!({"a": [1, "x"]})), some(r#"{"a":[1,"x"]}"#));
    assert_eq!(text_ok(ColumnType::Object, json!("plain")), some(r#""plain""#));
    assert_eq!(text_ok(ColumnType::Array { items: None }, json!([1, 2])), some("[1,2]"));
    assert_eq!(text_ok(ColumnType::Text, json!(12.50)), some("12.5"));
    assert_eq!(
        text_ok(ColumnType::DateTime, json!("2024-03-01T10:00:00+05:30")),
        some("2024-03-01 04:30:00.000000000")
    );
    assert_eq!(
        text_ok(ColumnType::DateTime, json!("2026-02-02T12:00:00.123456789Z")),
        some("2026-02-02 12:00:00.123456789")
    );
    for (kind, v) in [
        (ColumnType::Integer, json!(1.5)),
        (ColumnType::Integer, json!("x")),
        (ColumnType::Integer, serde_json::from_str::<Value>(&"9".repeat(39)).unwrap()),
        (ColumnType::Number, json!("NaN")),
        (ColumnType::Number, json!([1])),
        (ColumnType::Boolean, json!("maybe")),
        (ColumnType::DateTime, json!("now")),
        (ColumnType::DateTime, json!(17)),
    ] {
        let err = text(kind.clone(), v.clone()).unwrap_err();
        assert_eq!(err.class, ErrorClass::Rejected, "{kind} {v}");
        assert!(err.message.contains("column \"c\" of table \"t\""), "{}", err.message);
    }
    // Missing: NULL, or the JSON default of a not-null object or array.
    let c = column(ColumnType::Object, false);
    assert_eq!(ColumnPlan::new(&c).unwrap().cell(None, "t").unwrap().as_deref(), Some("{}"));
    let c = column(ColumnType::Array { items: None }, true);
    assert_eq!(ColumnPlan::new(&c).unwrap().cell(Some(&Value::Null), "t").unwrap().as_deref(), Some("[]"));
    let c = column(ColumnType::Text, true);
    assert_eq!(ColumnPlan::new(&c).unwrap().cell(None, "t").unwrap(), None);
}

#[test]
fn ddl_follows_the_spec_with_json_as_variant() {
    let s = schema(json!({"table": "order", "modelVersion": "v1", "primaryKeys": ["id"], "required": ["id", "name"],
    "properties": {
        "id": {"type": "string"}, "name": {"type": "string"}, "n": {"type": "integer", "nullable": true},
        "f": {"type": "number"}, "b": {"type": "boolean"}, "d": {"type": "string", "format": "date-time"},
        "o": {"type": "object"}, "a": {"type": "array", "items": {"type": "string"}},
        "e": {"type": "array", "items": {"type": "enum", "enum": ["A"]}}, "u": {"type": "mystery"}
    }}));
    assert_eq!(
        create_table_sql(&s).unwrap(),
        r#"CREATE TABLE IF NOT EXISTS "order" ("id" STRING NOT NULL, "a" VARIANT, "b" BOOLEAN, "d" TIMESTAMP_NTZ, "e" STRING, "f" FLOAT, "n" INTEGER, "name" STRING NOT NULL, "o" VARIANT, "u" STRING, PRIMARY KEY ("id"))"#
    );
    assert_eq!(Storage::of(&ColumnType::Object).read(), "PARSE_JSON(?)");
}

#[test]
fn error_codes_are_classified() {
    use ErrorClass::*;
    for (code, state, login, class) in [
        ("390100", "", true, Config),
        ("390144", "", true, Config),
        ("390112", "", false, Transient),
        ("390104", "", true, Transient),
        ("100035", "22007", false, Rejected),
        ("100072", "22000", false, Rejected),
        ("100069", "", false, Rejected),
        ("002003", "42S02", false, Transient),
        ("000904", "42000", false, Transient),
        ("000606", "57P03", false, Config),
        ("003001", "42501", false, Config),
        ("000625", "57014", false, Transient),
        ("001003", "42000", false, Unknown),
        ("", "", false, Unknown),
    ] {
        assert_eq!(classify(code, state, login), class, "{code} {state} login={login}");
    }
}

#[tokio::test]
async fn registered_and_described() {
    for (scheme, name) in [("snowflake", "Snowflake"), ("snowflake-keypair", "Snowflake Key Pair")] {
        let r = crate::find(scheme).unwrap();
        assert_eq!(r.name, name);
        assert_eq!(crate::missing(scheme), None);
    }
    let d = SnowflakeDriver::new("snowflake://u:p@acct/DB", &DESCRIPTION).unwrap();
    conformance::description_is_complete(&d).unwrap();
    let c = parse("snowflake-keypair://u@acct/DB/S", &|_| Some(openssl_key().0)).unwrap();
    let d = SnowflakeDriver::with_config(c, &KEYPAIR_DESCRIPTION).unwrap();
    conformance::description_is_complete(&d).unwrap();
    assert_eq!(d.describe().scheme, "snowflake-keypair");
}

// ---------------------------------------------------------------------------------------------
// A one-shot HTTP double for what fakesnow does not do: refuse logins, end sessions, record bodies

/// Answers every request with the next of `replies` (status, JSON body) and records each
/// request's path and body; the test reads them from the returned receiver. Status 0: the
/// connection is closed after the request is read, without an answer.
async fn double(
    replies: Vec<(u16, Value)>,
) -> (String, tokio::sync::mpsc::UnboundedReceiver<(String, Value)>, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        for (status, body) in replies {
            let (stream, _) = listener.accept().await.unwrap();
            let mut reader = BufReader::new(stream);
            let mut request_line = String::new();
            reader.read_line(&mut request_line).await.unwrap();
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).await.unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().unwrap();
                    }
                }
            }
            let mut buf = vec![0u8; length];
            reader.read_exact(&mut buf).await.unwrap();
            let path = request_line.split_whitespace().nth(1).unwrap_or("").to_owned();
            let _ = tx.send((path, serde_json::from_slice(&buf).unwrap_or(Value::Null)));
            if status == 0 {
                continue;
            }
            let text = body.to_string();
            let reply = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            );
            reader.get_mut().write_all(reply.as_bytes()).await.unwrap();
        }
    });
    (endpoint, rx, task)
}

#[tokio::test]
async fn refused_logins_are_config_errors_and_ended_sessions_log_in_again() {
    let refused = json!({"data": null, "code": "390100", "message": "Incorrect username or password was specified.", "success": false});
    let (endpoint, _rx, _t) = double(vec![(200, refused.clone())]).await;
    let d = SnowflakeDriver::new(&format!("snowflake://u:hunter2secret@acct/DB?endpoint={endpoint}"), &DESCRIPTION)
        .unwrap();
    let err = within("test", d.test()).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Config, "{}", err.message);
    assert!(err.message.contains("390100") && err.message.contains("Incorrect username"), "{}", err.message);
    assert!(!err.message.contains("hunter2secret"));

    // A 5xx at login is transient; so is a server that is not there.
    let (endpoint, _rx, _t) = double(vec![(503, json!({"message": "busy"}))]).await;
    let d = SnowflakeDriver::new(&format!("snowflake://u:p@acct/DB?endpoint={endpoint}"), &DESCRIPTION).unwrap();
    assert_eq!(within("test", d.test()).await.unwrap_err().class, ErrorClass::Transient);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let d = SnowflakeDriver::new(&format!("snowflake://u:p@acct/DB?endpoint=http://127.0.0.1:{closed}"), &DESCRIPTION)
        .unwrap();
    assert_eq!(within("test", d.test()).await.unwrap_err().class, ErrorClass::Transient);

    // A session the server ended: transient, and the next request logs in again.
    let login = |t: &str| json!({"data": {"token": t}, "success": true});
    let gone = json!({"data": null, "code": "390112", "message": "Your session has expired. Please login again.", "success": false});
    let ok = json!({"data": {"rowtype": [{"name": "1"}], "rowset": [["1"]], "total": 1, "queryResultFormat": "json"}, "success": true});
    let (endpoint, mut rx, _t) = double(vec![(200, login("T1")), (401, gone), (200, login("T2")), (200, ok)]).await;
    let c =
        Client::new(parse(&format!("snowflake://u:p@acct/DB/S?endpoint={endpoint}&warehouse=WH"), &no_env).unwrap())
            .unwrap();
    let t1 = c.session().await.unwrap();
    assert_eq!(t1, "T1");
    let err = c.query(&t1, "SELECT ?", &[Binding { kind: "TEXT", value: Some("x") }], "eds-t").await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient, "{}", err.message);
    let t2 = c.session().await.unwrap();
    assert_eq!(t2, "T2");
    let r = c.query(&t2, "SELECT 1", &[], "eds-t").await.unwrap();
    assert_eq!(r.rows, Some(vec![vec![Some("1".to_owned())]]));
    let (path, body) = rx.recv().await.unwrap();
    assert!(path.starts_with("/session/v1/login-request?databaseName=DB&schemaName=S&requestId="), "{path}");
    assert!(path.contains("&warehouse=WH"), "{path}");
    assert_eq!(body["data"]["LOGIN_NAME"], "u");
    assert_eq!(body["data"]["PASSWORD"], "p");
    assert_eq!(body["data"]["ACCOUNT_NAME"], "ACCT");
    assert_eq!(body["data"]["SESSION_PARAMETERS"]["QUERY_RESULT_FORMAT"], "JSON");
    let (path, body) = rx.recv().await.unwrap();
    assert!(path.starts_with("/queries/v1/query-request?requestId="), "{path}");
    assert_eq!(body["sqlText"], "SELECT ?");
    assert_eq!(body["bindings"], json!({"1": {"type": "TEXT", "value": "x"}}));
    assert_eq!(body["parameters"]["QUERY_TAG"], "eds-t");
}

/// A pooled connection the server (fakesnow's uvicorn after 5 s) or a proxy closed while idle
/// fails the next request before any answer: it is sent once more, with the same request id.
#[tokio::test]
async fn a_request_whose_connection_is_lost_before_an_answer_is_sent_again_with_its_request_id() {
    let login = json!({"data": {"token": "T1"}, "success": true});
    let ok = json!({"data": {"rowtype": [{"name": "1"}], "rowset": [["1"]], "total": 1, "queryResultFormat": "json"}, "success": true});
    let (endpoint, mut rx, _t) =
        double(vec![(0, Value::Null), (200, login), (0, Value::Null), (200, ok), (0, Value::Null), (0, Value::Null)])
            .await;
    let c = Client::new(parse(&format!("snowflake://u:p@acct/DB/S?endpoint={endpoint}"), &no_env).unwrap()).unwrap();
    let token = within("login", c.session()).await.unwrap();
    assert_eq!(token, "T1");
    let r = within("query", c.query(&token, "SELECT 1", &[], "eds-t")).await.unwrap();
    assert_eq!(r.rows, Some(vec![vec![Some("1".to_owned())]]));
    let param = |path: &str, name: &str| {
        path.split_once('?')
            .unwrap()
            .1
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .map(str::to_owned)
    };
    for what in ["login", "query"] {
        let (first, body1) = rx.recv().await.unwrap();
        let (second, body2) = rx.recv().await.unwrap();
        assert_eq!(first.split_once('?').unwrap().0, second.split_once('?').unwrap().0, "{what}");
        assert_eq!(param(&first, "requestId"), param(&second, "requestId"), "{what}: {first} then {second}");
        assert_ne!(param(&first, "request_guid"), param(&second, "request_guid"), "{what}");
        assert_eq!(param(&first, "retryCount"), None, "{what}: {first}");
        assert_eq!(param(&second, "retryCount").as_deref(), Some("1"), "{what}: {second}");
        assert_eq!(body1, body2, "{what}");
    }
    // Lost twice: a transient error (the drain retries it later), and no third attempt.
    let err = within("query", c.query(&token, "SELECT 2", &[], "eds-t")).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient, "{}", err.message);
    assert!(rx.recv().await.is_some() && rx.recv().await.is_some() && rx.recv().await.is_none());
}

#[tokio::test]
async fn a_key_pair_login_sends_a_token_that_verifies() {
    let (pem, spki) = openssl_key();
    let login = json!({"data": {"token": "T"}, "success": true});
    let ok = json!({"data": {"rowtype": [], "rowset": [], "total": 0}, "success": true});
    let (endpoint, mut rx, _t) = double(vec![(200, login), (200, ok)]).await;
    let url = format!("snowflake-keypair://svc_user@xy12345.eu-west-1/DB/SCH?secret-key=K&endpoint={endpoint}");
    let c = parse(&url, &|name| (name == "K").then(|| pem.clone())).unwrap();
    let d = SnowflakeDriver::with_config(c, &KEYPAIR_DESCRIPTION).unwrap();
    within("test", d.test()).await.unwrap();
    let (_, body) = rx.recv().await.unwrap();
    assert_eq!(body["data"]["AUTHENTICATOR"], "SNOWFLAKE_JWT");
    assert!(body["data"].get("PASSWORD").is_none());
    let claims = verify_jwt(body["data"]["TOKEN"].as_str().unwrap(), &spki);
    assert_eq!(claims["sub"], "XY12345.SVC_USER");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(claims["iat"].as_u64().unwrap().abs_diff(now) < 120);
}

// ---------------------------------------------------------------------------------------------
// Against fakesnow

fn things(version: &str, extra: Value) -> Schema {
    let mut props = json!({
        "id": {"type": "string"},
        "name": {"type": "string", "nullable": true},
        "n": {"type": "integer", "nullable": true},
        "doc": {"type": "object", "nullable": true},
        "updatedDate": {"type": "string", "format": "date-time", "nullable": true}
    });
    for (k, v) in extra.as_object().unwrap() {
        props[k] = v.clone();
    }
    schema(
        json!({"table": "things", "modelVersion": version, "primaryKeys": ["id"], "required": ["id"], "properties": props}),
    )
}

/// Timestamps are read as text: the Python connector reads fakesnow's NULL timestamps as 1970-01-01.
const THINGS: &str = r#"SELECT "id", "doc", "n", "name", TO_VARCHAR("updatedDate") FROM "things" ORDER BY "id""#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upserts_updates_and_deletes_round_trip_and_a_replay_is_harmless() {
    let fake = Fake::start("RT");
    let d = fake.driver();
    let s = things("v1", json!({}));
    apply(
        &d,
        &s,
        &changes(&[
            ins("things", "v1", json!({"id": "gone", "name": "x"})),
            ins("things", "v1", json!({"id": "k1", "name": "first", "n": 1, "updatedDate": "2024-01-01T00:00:00Z"})),
        ]),
    )
    .await
    .unwrap();
    assert_eq!(fake.snapshot(THINGS), ["gone|NULL|NULL|x|NULL", "k1|NULL|1|first|2024-01-01 00:00:00"]);
    // An update of some columns sets only those; no updatedDate needed; a row missing at the
    // destination is inserted whole.
    let folded = changes(&[
        ins(
            "things",
            "v1",
            json!({"id": "k2", "name": "two", "doc": {"a": [1, "x"]}, "updatedDate": "2024-01-01T00:00:00.5Z"}),
        ),
        upd("things", json!({"id": "k1", "name": "one", "n": 5}), &["name"]),
        del("things", "gone"),
        upd("things", json!({"id": "k3", "n": 3}), &["n"]),
    ]);
    let batch: Vec<StateChange<'_>> = folded.iter().map(|change| StateChange { change, schema: &s }).collect();
    let snapshot = || fake.snapshot(THINGS);
    conformance::replay_is_harmless(&d, Batch::Folded(&batch), snapshot).await.unwrap();
    assert_eq!(
        fake.snapshot(THINGS),
        [
            "k1|NULL|1|one|2024-01-01 00:00:00",
            r#"k2|{"a":[1,"x"]}|NULL|two|2024-01-01 00:00:00.5"#,
            "k3|NULL|3|NULL|NULL"
        ]
    );
    // Delete then insert of one key in one batch: the insert wins; insert then delete: gone.
    apply(&d, &s, &changes(&[del("things", "k1"), ins("things", "v1", json!({"id": "k1", "name": "again"}))]))
        .await
        .unwrap();
    apply(&d, &s, &changes(&[ins("things", "v1", json!({"id": "k4"})), del("things", "k4"), del("things", "k3")]))
        .await
        .unwrap();
    assert_eq!(fake.snapshot(r#"SELECT "id", "name" FROM "things" ORDER BY "id""#), ["k1|again", "k2|two"]);
    d.test().await.unwrap();
    d.write(Batch::Folded(&[])).await.unwrap();
}

const HOSTILE: &[&str] = &[
    "it's",
    r#"say "hi""#,
    r"back\slash \\ \n",
    "'); DROP TABLE x; --",
    "emoji 😀🚗 ünïcödé",
    "<script>&amp;</script>",
    "tab\tnew\nline\r\n\u{1f}",
    "",
    "{\"looks\": [\"like json\"]}",
    "$$ dollar $$ ? :1 %s",
];

#[tokio::test]
async fn hostile_values_tables_and_columns_are_stored_exactly() {
    let fake = Fake::start("HOSTILE");
    let d = fake.driver();
    let table = r#"x"; DROP TABLE y; --"#;
    let s = schema(json!({"table": table, "modelVersion": "v1", "primaryKeys": ["Id Key"], "properties": {
        "Id Key": {"type": "string"},
        "with space": {"type": "string", "nullable": true},
        "quo\"te": {"type": "integer", "nullable": true},
        "UPPER": {"type": "boolean", "nullable": true},
        "Doc ? x": {"type": "object", "nullable": true},
        "ts": {"type": "string", "format": "date-time", "nullable": true},
        "f": {"type": "number", "nullable": true}
    }}));
    // fakesnow stores INTEGER as a 64-bit integer (Snowflake: NUMBER(38,0)), so the largest value both hold.
    let big: Value = serde_json::from_str("9223372036854775807").unwrap();
    let mut events = Vec::new();
    for (i, h) in HOSTILE.iter().enumerate() {
        let key = format!("{h}#{i}");
        events.push(json!({"operation": "INSERT", "table": table, "key": [key], "modelVersion": "v1", "after": {
            "Id Key": key, "with space": h, "quo\"te": i, "UPPER": i % 2 == 0, "Doc ? x": {"v": h},
            "ts": "2024-03-01T10:00:00.123+05:30", "f": -1.2345678901234567e-7}}));
    }
    events.push(json!({"operation": "INSERT", "table": table, "key": ["big"], "modelVersion": "v1",
        "after": {"Id Key": "big", "quo\"te": big}}));
    apply(&d, &s, &changes(&events)).await.unwrap();
    let rows = fake
        .server
        .rows(
            "HOSTILE",
            "PUBLIC",
            r#"SELECT "Id Key", "with space", "quo""te", "UPPER", "Doc ? x", "ts", "f" FROM "x""; DROP TABLE y; --" ORDER BY "quo""te""#,
        )
        .unwrap();
    assert_eq!(rows.len(), HOSTILE.len() + 1);
    for (i, h) in HOSTILE.iter().enumerate() {
        let r = &rows[i];
        assert_eq!(r[0], json!(format!("{h}#{i}")));
        assert_eq!(r[1], json!(h), "value {i}");
        assert_eq!(r[2], json!(i));
        assert_eq!(r[3], json!(i % 2 == 0));
        let doc: Value = serde_json::from_str(r[4].as_str().unwrap()).unwrap();
        assert_eq!(doc, json!({"v": h}));
        assert_eq!(r[5], json!("2024-03-01 04:30:00.123000"), "UTC");
        assert_eq!(r[6].as_f64(), Some(-1.2345678901234567e-7));
    }
    assert_eq!(rows[HOSTILE.len()][2].to_string(), "9223372036854775807");
    // A replay changes nothing; deletes by hostile keys.
    let before = fake.server.rows("HOSTILE", "PUBLIC", r#"SELECT * FROM "x""; DROP TABLE y; --" ORDER BY 1"#).unwrap();
    apply(&d, &s, &changes(&events)).await.unwrap();
    assert_eq!(
        fake.server.rows("HOSTILE", "PUBLIC", r#"SELECT * FROM "x""; DROP TABLE y; --" ORDER BY 1"#).unwrap(),
        before
    );
    let deletes: Vec<Value> = (0..HOSTILE.len())
        .map(|i| {
            let key = format!("{}#{i}", HOSTILE[i]);
            json!({"operation": "DELETE", "table": table, "key": [key], "modelVersion": "v1", "before": {"Id Key": key}})
        })
        .collect();
    apply(&d, &s, &changes(&deletes)).await.unwrap();
    assert_eq!(fake.snapshot(r#"SELECT "Id Key" FROM "x""; DROP TABLE y; --""#), ["big"]);
}

#[tokio::test]
async fn migrations_add_columns_and_never_drop() {
    let fake = Fake::start("MIG");
    let d = fake.driver();
    let v1 = things("v1", json!({}));
    apply(&d, &v1, &changes(&[ins("things", "v1", json!({"id": "a", "name": "kept"}))])).await.unwrap();
    // A new version with a new column (and a column dropped from the schema): the table gains the
    // column, keeps its row and the old column.
    let v2 = schema(json!({"table": "things", "modelVersion": "v2", "primaryKeys": ["id"], "properties": {
        "id": {"type": "string"}, "name": {"type": "string", "nullable": true},
        "age": {"type": "number", "nullable": true}, "tags": {"type": "array", "items": {"type": "string"}}}}));
    apply(&d, &v2, &changes(&[ins("things", "v2", json!({"id": "b", "name": "new", "age": 1.5, "tags": ["x"]}))]))
        .await
        .unwrap();
    assert_eq!(
        fake.snapshot(r#"SELECT "id", "name", "age", "tags", "n" FROM "things" ORDER BY "id""#),
        ["a|kept|NULL|NULL|NULL", r#"b|new|1.5|["x"]|NULL"#]
    );
    let types = fake.snapshot(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'things' ORDER BY column_name",
    );
    assert_eq!(
        types,
        ["age|FLOAT", "doc|VARIANT", "id|TEXT", "n|NUMBER", "name|TEXT", "tags|VARIANT", "updatedDate|TIMESTAMP_NTZ"]
    );
    // A second driver (a restart) ensures again without harm, and an old version still writes.
    let d2 = fake.driver();
    apply(&d2, &v1, &changes(&[ins("things", "v1", json!({"id": "c", "n": 7}))])).await.unwrap();
    apply(&d2, &v2, &changes(&[upd("things", json!({"id": "b", "age": 2.5}), &["age"])])).await.unwrap();
    assert_eq!(
        fake.snapshot(r#"SELECT "id", "name", "age", "n" FROM "things" ORDER BY "id""#),
        ["a|kept|NULL|NULL", "b|new|2.5|NULL", "c|NULL|NULL|7"]
    );
}

#[tokio::test]
async fn big_batches_are_cut_into_statements_and_bad_rows_rejected() {
    let fake = Fake::start("BIG");
    let d = fake.driver().with_max_bind_params(20);
    let s = things("v1", json!({}));
    let events: Vec<Value> =
        (0..23).map(|i| ins("things", "v1", json!({"id": format!("r{i:02}"), "n": i, "doc": {"i": i}}))).collect();
    apply(&d, &s, &changes(&events)).await.unwrap();
    // 5 columns: 4 rows per statement, 23 rows in 6 statements.
    assert_eq!(d.statements_executed(), 6);
    assert_eq!(fake.snapshot(r#"SELECT count(*), min("n"), max("n") FROM "things""#), ["23|0|22"]);

    // A value the column cannot take rejects the batch before any SQL runs, naming it.
    let bad = changes(&[
        ins("things", "v1", json!({"id": "ok", "n": 1})),
        ins("things", "v1", json!({"id": "bad", "n": "seven"})),
    ]);
    let err = apply(&d, &s, &bad).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Rejected);
    assert!(err.message.contains(r#"column "n" of table "things""#), "{}", err.message);
    // fakesnow answers a NOT NULL violation with an unhandled exception (HTTP 500, transient);
    // Snowflake's own answer (100072, 22000) is a rejection: see the next test.
}

#[tokio::test]
async fn a_batch_is_one_transaction_rolled_back_when_a_statement_fails() {
    let login = json!({"data": {"token": "T"}, "success": true});
    let ok = json!({"data": {"rowtype": [], "rowset": [["1"]], "total": 1}, "success": true});
    let refused = json!({"data": {"errorCode": "100072", "sqlState": "22000"}, "code": "100072",
        "message": "NULL result in a non-nullable column", "success": false});
    // Login, catalog (JSON: no table), CREATE TABLE, then BEGIN, MERGE ok, MERGE refused, ROLLBACK.
    let catalog = json!({"data": {"rowtype": [{"name": "COLUMN_NAME"}], "rowset": [], "total": 0, "queryResultFormat": "json"}, "success": true});
    let replies = vec![
        (200, login),
        (200, catalog),
        (200, ok.clone()),
        (200, ok.clone()),
        (200, ok.clone()),
        (200, refused),
        (200, ok),
    ];
    let (endpoint, mut rx, _t) = double(replies).await;
    let d = SnowflakeDriver::new(&format!("snowflake://u:p@acct/DB?endpoint={endpoint}"), &DESCRIPTION)
        .unwrap()
        .with_max_bind_params(5);
    let s = things("v1", json!({}));
    let err =
        apply(&d, &s, &changes(&[ins("things", "v1", json!({"id": "a"})), ins("things", "v1", json!({"id": "b"}))]))
            .await
            .unwrap_err();
    assert_eq!(err.class, ErrorClass::Rejected, "{}", err.message);
    let mut sql = Vec::new();
    while let Ok((_, body)) = rx.try_recv() {
        sql.push(body["sqlText"].as_str().unwrap_or("<login>").split(' ').next().unwrap().to_owned());
        if let Some(tag) = body["parameters"]["QUERY_TAG"].as_str() {
            assert!(tag.starts_with("eds-"), "{tag}");
        }
    }
    assert_eq!(sql, ["<login>", "SELECT", "CREATE", "BEGIN", "MERGE", "MERGE", "ROLLBACK"]);
}

#[tokio::test]
async fn the_order_fixture_round_trips_every_column_type() {
    let fake = Fake::start("ORDERS");
    let d = fake.driver();
    let s = Schema::from_json(include_bytes!("../../../../shared/fixtures/schema/order_schema_b041c12fbf8d1103.json"))
        .unwrap();
    let mut row = serde_json::Map::new();
    let mut expect: HashMap<String, Value> = HashMap::new();
    for c in s.columns() {
        let v = match &c.kind {
            ColumnType::Text | ColumnType::Unknown(_) => json!(format!("v-{}", c.name)),
            ColumnType::DateTime => json!("2024-07-24T20:03:01.585Z"),
            ColumnType::Integer => json!(42),
            ColumnType::Number => json!(2.5),
            ColumnType::Boolean => json!(true),
            ColumnType::Object => json!({"k": c.name}),
            ColumnType::Enum { values } => json!(values.first().cloned().unwrap_or_else(|| "E".into())),
            ColumnType::Array { .. } => json!([c.name.clone()]),
        };
        row.insert(c.name.clone(), v.clone());
        expect.insert(c.name.clone(), v);
    }
    row.insert("id".into(), json!("o1"));
    expect.insert("id".into(), json!("o1"));
    let event = json!({"operation": "INSERT", "table": "order", "key": ["o1"], "modelVersion": s.model_version(), "after": row});
    apply(&d, &s, &changes(&[event])).await.unwrap();
    let names: Vec<String> = s.columns().iter().map(|c| quote_ident(&c.name).unwrap()).collect();
    let rows = fake.server.rows("ORDERS", "PUBLIC", &format!(r#"SELECT {} FROM "order""#, names.join(", "))).unwrap();
    assert_eq!(rows.len(), 1);
    for (c, got) in s.columns().iter().zip(&rows[0]) {
        let want = &expect[&c.name];
        match &c.kind {
            ColumnType::DateTime => assert_eq!(got, &json!("2024-07-24 20:03:01.585000"), "{}", c.name),
            ColumnType::Object | ColumnType::Array { .. } => {
                assert_eq!(&serde_json::from_str::<Value>(got.as_str().unwrap()).unwrap(), want, "{}", c.name)
            }
            _ => assert_eq!(got, want, "{}", c.name),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_table_drops_the_table_and_the_next_write_recreates_it() {
    let fake = Fake::start("DROPPED");
    let d = fake.driver();
    let s = things("v1", json!({}));
    apply(&d, &s, &changes(&[ins("things", "v1", json!({"id": "old", "name": "x"}))])).await.unwrap();
    d.drop_table("things").await.unwrap();
    assert!(fake.server.rows("DROPPED", "PUBLIC", r#"SELECT * FROM "things""#).is_err(), "the table is gone");
    // The driver forgot it had ensured the table: the next write creates it again.
    apply(&d, &s, &changes(&[ins("things", "v1", json!({"id": "new"}))])).await.unwrap();
    assert_eq!(fake.snapshot(r#"SELECT "id", "name" FROM "things" ORDER BY "id""#), ["new|NULL"]);
    d.drop_table("never_made").await.unwrap();
}

#[tokio::test]
async fn object_columns_an_eds_table_holds_as_text_get_json_text() {
    // EDS created object columns as STRING: a VARIANT value would be refused there.
    let login = json!({"data": {"token": "T"}, "success": true});
    let ok = json!({"data": {"rowtype": [], "rowset": [["1"]], "total": 1}, "success": true});
    let catalog = json!({"data": {"rowtype": [{"name": "COLUMN_NAME"}, {"name": "DATA_TYPE"}],
        "rowset": [["id", "TEXT"], ["name", "TEXT"], ["n", "NUMBER"], ["doc", "TEXT"], ["updatedDate", "TIMESTAMP_NTZ"]],
        "total": 5, "queryResultFormat": "json"}, "success": true});
    let (endpoint, mut rx, _t) =
        double(vec![(200, login), (200, catalog), (200, ok.clone()), (200, ok.clone()), (200, ok)]).await;
    let d = SnowflakeDriver::new(&format!("snowflake://u:p@acct/DB?endpoint={endpoint}"), &DESCRIPTION).unwrap();
    let s = things("v1", json!({}));
    apply(&d, &s, &changes(&[ins("things", "v1", json!({"id": "a", "doc": {"k": [1, "two"]}}))])).await.unwrap();
    let mut merge = None;
    let mut first_words = Vec::new();
    while let Ok((_, body)) = rx.try_recv() {
        let sql = body["sqlText"].as_str().unwrap_or("<login>").to_owned();
        first_words.push(sql.split(' ').next().unwrap().to_owned());
        if sql.starts_with("MERGE") {
            merge = Some((sql, body["bindings"].clone()));
        }
    }
    assert_eq!(first_words, ["<login>", "SELECT", "MERGE"], "no CREATE, no ALTER: every column is there");
    let (sql, bindings) = merge.unwrap();
    assert!(!sql.contains("PARSE_JSON"), "{sql}");
    let texts: Vec<&str> = bindings.as_object().unwrap().values().filter_map(|b| b["value"].as_str()).collect();
    assert!(texts.contains(&r#"{"k":[1,"two"]}"#), "the object as JSON text: {bindings}");
}

#[test]
fn hq_forms_build_urls_that_parse_back() {
    let form = |v: Value| v.as_object().cloned().unwrap();
    let url = crate::form::url_from_form(
        &DESCRIPTION,
        &form(json!({"Database": "TEST/PUBLIC", "Username": "svc", "Password": "p@ss/w#1", "Hostname": "abcdefg-ab12345"})),
    )
    .unwrap();
    let c = parse(&url, &no_env).unwrap();
    assert_eq!((c.database.as_str(), c.schema.as_str()), ("TEST", "PUBLIC"), "{url}");
    assert_eq!(c.auth, Auth::Password { password: "p@ss/w#1".into() });
    assert!(!crate::url::redact(&url).contains("p%40ss"), "{url}");

    let url = crate::form::url_from_form(
        &KEYPAIR_DESCRIPTION,
        &form(json!({"Database": "DB/SCH", "Username": "svc_user", "Account": "xy12345"})),
    )
    .unwrap();
    assert_eq!(url, "snowflake-keypair://svc_user@xy12345/DB/SCH?secret-key=SNOWFLAKE_SECRET_ACCESS_KEY");
    let errors = crate::form::url_from_form(&KEYPAIR_DESCRIPTION, &form(json!({"Database": "DB/SCH"}))).unwrap_err();
    assert!(errors.iter().any(|e| e.field == "Username"), "{errors:?}");
}

// ---------------------------------------------------------------------------------------------
// Bulk loads through a stage (fakesnow: `PUT` answered with a GCS-style presigned URL)

/// Encodes `lines` with the driver's fresh encoder: the CSV of those it takes, and the lines it
/// declines.
fn encode_lines(d: &SnowflakeDriver, s: &Schema, lines: &[String]) -> (Vec<u8>, Vec<String>) {
    let mut e = d.fresh_encoder(s).expect("an encoder for a table keyed by id");
    let (mut data, mut declined) = (Vec::new(), Vec::new());
    for l in lines {
        if !e.encode(l, &mut data) {
            declined.push(l.clone());
        }
    }
    (data, declined)
}

/// Every column type, hostile text in every text and JSON column: rows loaded through the stage
/// read back exactly as the same rows merged as events. (Nine columns: fakesnow 0.12.1 reads a
/// staged CSV file's fields as `column0`, `column1`… but DuckDB names them `column00`… once a
/// file has ten or more, so the double cannot load a wider table through a stage; Snowflake maps
/// fields by position.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_loaded_through_a_stage_read_back_as_merged_rows_do() {
    let fake = Fake::start("STAGED");
    let s = schema(json!({"table": "order", "modelVersion": "v1", "primaryKeys": ["id"], "properties": {
        "id": {"type": "string"},
        "text": {"type": "string", "nullable": true},
        "state": {"type": "array", "items": {"type": "enum", "enum": ["Open", "Closed"]}, "nullable": true},
        "at": {"type": "string", "format": "date-time", "nullable": true},
        "n": {"type": "integer", "nullable": true},
        "f": {"type": "number", "nullable": true},
        "ok": {"type": "boolean", "nullable": true},
        "doc": {"type": "object"},
        "list": {"type": "array", "items": {"type": "string"}, "nullable": true}
    }}));
    let kinds: Vec<ColumnType> = s.columns().iter().map(|c| c.kind.clone()).collect();
    assert!(kinds.iter().any(|k| matches!(k, ColumnType::Enum { .. })), "{kinds:?}");
    assert!(kinds.iter().any(|k| matches!(k, ColumnType::Array { .. })), "{kinds:?}");
    let mut lines = Vec::new();
    for i in 0..60usize {
        let h = HOSTILE[i % HOSTILE.len()];
        let mut row = serde_json::Map::new();
        for (n, c) in s.columns().iter().enumerate() {
            // Some columns missing, some null: defaults and NULLs.
            if (i + n) % 7 == 0 {
                continue;
            }
            let v = match &c.kind {
                _ if (i + n) % 11 == 0 => Value::Null,
                ColumnType::Text | ColumnType::Unknown(_) => json!(format!("{h}|{}|{i}", c.name)),
                ColumnType::DateTime => json!(format!("2024-07-{:02}T20:03:01.{:03}+02:00", 1 + i % 28, i)),
                ColumnType::Integer => json!(i as i64 * 1_000_003 - 7),
                ColumnType::Number => json!(i as f64 / 3.0),
                ColumnType::Boolean => json!(i % 2 == 0),
                ColumnType::Object => json!({"k": h, "n": i, "deep": {"a": [h]}}),
                ColumnType::Enum { values } => json!(values.get(i % values.len().max(1)).cloned().unwrap_or_default()),
                ColumnType::Array { .. } => json!([h, i]),
            };
            row.insert(c.name.clone(), v);
        }
        row.insert("id".into(), json!(format!("{h}#{i}")));
        lines.push(Value::Object(row).to_string());
    }
    let d = fake.driver();
    within("ensure_schema", d.ensure_schema(&s)).await.unwrap();
    let (data, declined) = encode_lines(&d, &s, &lines);
    assert!(declined.is_empty(), "declined: {declined:?}");
    assert!(within("a stage load", d.write_encoded(&s, &data)).await.unwrap(), "loaded through the stage");

    let merged = SnowflakeDriver::new(&fake.server.url("MERGED", "PUBLIC"), &DESCRIPTION).unwrap();
    let events: Vec<Value> = lines
        .iter()
        .map(|l| {
            let row: Value = serde_json::from_str(l).unwrap();
            json!({"operation": "INSERT", "table": "order", "key": [row["id"].clone()], "modelVersion": s.model_version(), "after": row})
        })
        .collect();
    apply(&merged, &s, &changes(&events)).await.unwrap();

    let names: Vec<String> = s.columns().iter().map(|c| quote_ident(&c.name).unwrap()).collect();
    let read = |database: &str| {
        let sql = format!(r#"SELECT {} FROM "order" ORDER BY "id""#, names.join(", "));
        fake.server.rows(database, "PUBLIC", &sql).unwrap()
    };
    let (staged, upserted) = (read("STAGED"), read("MERGED"));
    assert_eq!(staged.len(), 60);
    for (a, b) in staged.iter().zip(&upserted) {
        for ((c, x), y) in s.columns().iter().zip(a).zip(b) {
            if Storage::of(&c.kind) == Storage::Variant && !x.is_null() {
                // The same document (DuckDB keeps a VARIANT's text as it came: `\u001f`, `\u001F`).
                let doc = |v: &Value| serde_json::from_str::<Value>(v.as_str().unwrap()).unwrap();
                assert_eq!(doc(x), doc(y), "column {} of row {}", c.name, a[0]);
            } else {
                assert_eq!(x, y, "column {} of row {}", c.name, a[0]);
            }
        }
    }
    // The file was removed from the stage once loaded (PURGE), and the next batch still loads.
    let more: Vec<String> = (0..3).map(|i| json!({"id": format!("more{i}")}).to_string()).collect();
    let (data, _) = encode_lines(&d, &s, &more);
    assert!(within("a second stage load", d.write_encoded(&s, &data)).await.unwrap());
    assert_eq!(fake.snapshot(r#"SELECT count(*) FROM "order""#), ["63"]);
}

/// A batch the warehouse refuses in `COPY` (a value out of the column's range) is an error and
/// leaves the table as it was: the import then writes those rows as events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_copy_is_an_error_and_loads_nothing() {
    let fake = Fake::start("REFUSED");
    let d = fake.driver();
    let s = things("v1", json!({}));
    within("ensure_schema", d.ensure_schema(&s)).await.unwrap();
    let lines = [
        json!({"id": "a", "n": 1}).to_string(),
        // 20 digits: an INTEGER for eds (NUMBER(38,0)), too large for fakesnow's 64-bit integer.
        r#"{"id": "b", "n": 12345678901234567890}"#.to_owned(),
    ];
    let (data, declined) = encode_lines(&d, &s, &lines);
    assert!(declined.is_empty());
    let err = within("a refused stage load", d.write_encoded(&s, &data)).await.unwrap_err();
    assert!(err.message.contains("copying 2 rows for table \"things\""), "{}", err.message);
    // A conversion error (SQLSTATE 22…): the data's fault, not the statement's.
    assert_eq!(err.class, ErrorClass::Rejected, "{}", err.message);
    assert_eq!(fake.snapshot(r#"SELECT count(*) FROM "things""#), ["0"]);
    // Rows of tables keyed other than by `id` alone get no encoder (they are merged).
    let keyed = schema(json!({"table": "pairs", "modelVersion": "v1", "primaryKeys": ["a", "b"],
        "properties": {"a": {"type": "string"}, "b": {"type": "string"}, "id": {"type": "string"}}}));
    assert!(d.fresh_encoder(&keyed).is_none());
}

/// A stage whose storage eds does not upload to: the batch is an error that names it (the
/// import merges the rows), and later batches fail at once, without another `PUT`.
#[tokio::test]
async fn a_stage_on_storage_eds_does_not_write_fails_once_named_then_at_once() {
    let login = json!({"data": {"token": "T"}, "success": true});
    let ok = json!({"data": {"rowtype": [], "rowset": [], "total": 0}, "success": true});
    let put = json!({"data": {"command": "UPLOAD", "src_locations": ["/x"],
        "stageInfo": {"locationType": "LOCAL_FS", "location": "/srv/stage/", "creds": {}}}, "success": true});
    let (endpoint, mut rx, _t) = double(vec![(200, login), (200, ok), (200, put)]).await;
    let d = SnowflakeDriver::new(&format!("snowflake://u:p@acct/DB?endpoint={endpoint}"), &DESCRIPTION).unwrap();
    let s = things("v1", json!({}));
    let (data, _) = encode_lines(&d, &s, &[json!({"id": "a", "name": "x"}).to_string()]);
    for attempt in 0..2 {
        let err = within("a stage load", d.write_encoded(&s, &data)).await.unwrap_err();
        assert_eq!(err.class, ErrorClass::Config, "{}", err.message);
        assert!(err.message.contains("LOCAL_FS storage, which eds does not upload to"), "{attempt}: {}", err.message);
    }
    let mut sql = Vec::new();
    while let Ok((_, body)) = rx.try_recv() {
        sql.push(body["sqlText"].as_str().unwrap_or("<login>").split(' ').take(2).collect::<Vec<_>>().join(" "));
    }
    assert_eq!(sql.len(), 3, "{sql:?}");
    assert_eq!(sql[..2], ["<login>", "CREATE TEMPORARY"], "{sql:?}");
    assert!(sql[2].starts_with("PUT 'file:///eds-"), "{sql:?}");
}
