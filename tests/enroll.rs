//! `eds enroll` against the HQ double: the code's answer lands in config.toml (0600, other keys
//! kept, the key never printed); a used code, a refusal and a bad code say so.

#![allow(clippy::unwrap_used)]
use crate::common;

use common::hq;
use serde_json::json;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.secret-key.sig";

/// The double's enrollment route: `Pgood` enrolls server `srv-1`; `Pbusy` answers 503 twice
/// first; `Pno` is refused in the envelope; anything else is a used or unknown code (404).
async fn start_hq() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let busy = Arc::new(AtomicUsize::new(0));
    let calls = busy.clone();
    let routes: hq::Routes = Arc::new(move |path: &str| match path {
        "/v3/eds/internal/enroll/Pgood" => {
            (200, json!({"success": true, "message": "", "data": {"token": TOKEN, "serverId": "srv-1"}}).to_string())
        }
        "/v3/eds/internal/enroll/Pbusy" if calls.fetch_add(1, Ordering::SeqCst) < 2 => {
            (503, json!({"success": false, "message": "try later"}).to_string())
        }
        "/v3/eds/internal/enroll/Pbusy" => {
            (200, json!({"success": true, "message": "", "data": {"token": TOKEN, "serverId": "srv-2"}}).to_string())
        }
        "/v3/eds/internal/enroll/Pno" => (200, json!({"success": false, "message": "company suspended"}).to_string()),
        _ => hq::not_found(),
    });
    tokio::spawn(hq::serve_schemas(listener, routes));
    (format!("http://{addr}"), busy)
}

fn enroll(data: &Path, code: &str, api: Option<&str>) -> Output {
    let mut args = vec!["enroll".to_owned(), code.to_owned(), "-d".into(), data.display().to_string()];
    if let Some(api) = api {
        args.extend(["--api-url".to_owned(), api.to_owned()]);
    }
    Command::new(env!("CARGO_BIN_EXE_eds")).args(&args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_becomes_the_key_and_server_id_in_a_private_config_toml() {
    let (api, _) = start_hq().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("config.toml"), "keep_logs = 3\nurl = \"file:///x\"\n").unwrap();
    let o = enroll(&data, "Pgood", Some(&api));
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("Enrollment successful: server srv-1"), "{}", text(&o));
    assert!(!text(&o).contains("secret-key"), "the key is never printed: {}", text(&o));
    let config: toml::Table = toml::from_str(&std::fs::read_to_string(data.join("config.toml")).unwrap()).unwrap();
    assert_eq!(config["token"].as_str(), Some(TOKEN));
    assert_eq!(config["server_id"].as_str(), Some("srv-1"));
    assert_eq!(config["keep_logs"].as_integer(), Some(3), "other keys are kept");
    assert_eq!(config["url"].as_str(), Some("file:///x"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("config.toml")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "config.toml holds the API key");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_hq_is_asked_again_and_a_used_or_refused_code_says_so() {
    let (api, calls) = start_hq().await;
    let dir = tempfile::tempdir().unwrap();
    let o = enroll(dir.path(), "Pbusy", Some(&api));
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(calls.load(Ordering::SeqCst), 3, "two 503s, then the answer");

    let used = tempfile::tempdir().unwrap();
    let o = enroll(used.path(), "Pused", Some(&api));
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("invalid enrollment code or it has already been used"), "{}", text(&o));
    assert!(!used.path().join("config.toml").exists(), "nothing written");

    let o = enroll(used.path(), "Pno", Some(&api));
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("HQ refused the enrollment: company suspended"), "{}", text(&o));
}

#[test]
fn a_code_of_no_known_environment_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = enroll(dir.path(), "X1234", None);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("starts with P (production), S (sandbox), E (edge) or L (local)"), "{}", text(&o));
    let o = enroll(dir.path(), "P12/../x", None);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(!dir.path().join("config.toml").exists());
}
