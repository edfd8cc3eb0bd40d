//! HQ's notifications (spec §2.6): `eds.notify.<sessionId>.>`, each `{action, data}`, answered
//! with msgpack statuses and responses on `eds.client.<sessionId>.<action>-status|-response`, or
//! with a JSON reply to the request's reply subject (configure, driverconfig, validate).
//!
//! A handler never takes the process down on bad input (EDS panicked on missing fields): a
//! notification that cannot be decoded or lacks what its action needs is logged and, where HQ
//! waits for an answer, answered with the reason.

use super::wire;
use crate::state::ServerState;
use futures_util::StreamExt;
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// What a notification asks of the server as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Stop and start again (restart, upgrade, a new configuration): the worker exits with
    /// [`crate::exit::RESTART`] and the supervisor starts it at once.
    Restart(String),
    /// Stop for good (exit 0): HQ's `shutdown`.
    Shutdown(String),
}

/// HQ's `import` with a backfill, run inside the server. `server` wires it (the import command
/// lives above hq: hq must not depend on it).
pub trait Backfill: std::fmt::Debug + Send + Sync {
    /// Loads HQ's bulk export into the destination HQ configured, its drain held meanwhile (see
    /// `crate::import::in_server`); a line saying what was loaded, or why nothing was.
    fn run(&self) -> futures_util::future::BoxFuture<'_, anyhow::Result<String>>;
}

/// What the handlers work with.
#[derive(Clone)]
pub struct Notifier {
    /// The session's NATS connection.
    pub client: async_nats::Client,
    /// The session id.
    pub session_id: String,
    /// Shared server state (pause, metrics).
    pub state: Arc<ServerState>,
    /// Where server-wide requests go.
    pub control: mpsc::Sender<Control>,
    /// The data directory (config.toml).
    pub data_dir: PathBuf,
    /// The session's log file and uploads (`sendlogs`).
    pub logs: Option<Arc<super::SessionLogs>>,
    /// Where releases are downloaded from (`upgrade`).
    pub release_url: String,
    /// Runs `import` with a backfill (none: such an import is refused, saying so).
    pub backfill: Option<Arc<dyn Backfill>>,
}

/// The actions HQ sends; anything else is counted as `unknown`.
const ACTIONS: [&str; 11] = [
    "restart",
    "ping",
    "shutdown",
    "pause",
    "unpause",
    "upgrade",
    "sendlogs",
    "configure",
    "import",
    "driverconfig",
    "validate",
];

/// How long `configure` waits for a destination to answer its connectivity check.
const TEST_TIMEOUT: Duration = Duration::from_secs(15);

/// A boolean HQ may send as a bool or as the string "true".
fn flag(data: &Map<String, Value>, key: &str) -> bool {
    match data.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.trim().eq_ignore_ascii_case("true"),
        _ => false,
    }
}

fn text<'a>(data: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    data.get(key).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
}

/// Subscribes to the session's notifications and handles them until `stop` turns true.
pub async fn run(n: Notifier, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let subject = format!("eds.notify.{}.>", n.session_id);
    let mut sub = n.client.subscribe(subject.clone()).await?;
    // The subscription is live at the server once a round trip has passed (or, while NATS is
    // out of reach, once the client connects and subscribes again).
    tokio::select! {
        flushed = n.client.flush() => {
            if let Err(e) = flushed {
                tracing::warn!(subject, error = %e, "HQ notifications wait for the NATS connection");
            }
        }
        _ = stop.changed() => return Ok(()),
    }
    tracing::info!(subject, "listening for HQ notifications");
    loop {
        let msg = tokio::select! {
            m = sub.next() => m,
            _ = stop.changed() => None,
        };
        let Some(msg) = msg else { return Ok(()) };
        if *stop.borrow() {
            return Ok(());
        }
        let n = n.clone();
        // Slow actions (upgrade, sendlogs, configure's connectivity check) must not hold up a
        // ping or a pause behind them.
        tokio::spawn(async move { n.handle(msg).await });
    }
}

impl Notifier {
    async fn handle(&self, msg: async_nats::Message) {
        let encoding = msg.headers.as_ref().and_then(|h| h.get("content-encoding")).map(|v| v.as_str().to_owned());
        let body = match wire::decode_notification(encoding.as_deref(), &msg.payload) {
            Ok(v) => v,
            Err(e) => {
                self.count("undecodable");
                tracing::warn!(subject = %msg.subject, error = format!("{e:#}"), "HQ notification could not be decoded; ignored");
                return;
            }
        };
        let action = body.get("action").and_then(Value::as_str).unwrap_or("").to_owned();
        let data = body.get("data").and_then(Value::as_object).cloned().unwrap_or_default();
        let reply = msg.reply.as_ref().map(|r| r.to_string());
        self.count(if ACTIONS.contains(&action.as_str()) { &action } else { "unknown" });
        tracing::info!(action, "HQ notification");
        match action.as_str() {
            "restart" => {
                self.status("restart", true, "").await;
                self.generic("restart", true, None).await;
                self.request(Control::Restart("HQ asked for a restart".into())).await;
            }
            "ping" => match text(&data, "subject") {
                Some(subject) => {
                    if let Err(e) = self.client.publish(subject.to_owned(), "pong".into()).await {
                        tracing::warn!(error = %e, "could not answer HQ's ping");
                    }
                }
                None => tracing::warn!("HQ ping without a subject to answer on; ignored"),
            },
            "shutdown" => self.shutdown(&data).await,
            "pause" | "unpause" => {
                let paused = action == "pause";
                let changed = self.state.set_hq_paused(paused);
                tracing::info!(paused, changed, "delivery to every destination paused or resumed by HQ");
                self.generic(&action, true, None).await;
            }
            "upgrade" => self.upgrade(&data).await,
            "sendlogs" => {
                let path = self.send_logs().await;
                self.logs_sent(&path).await;
            }
            "configure" => self.configure(&data, reply.as_deref()).await,
            "import" => self.import(&data).await,
            "driverconfig" => {
                let answer = json!({ "drivers": driver_config(), "sessionId": self.session_id });
                self.reply(reply.as_deref(), &answer).await;
            }
            "validate" => {
                let answer = validate(&data, &self.session_id);
                self.reply(reply.as_deref(), &answer).await;
            }
            other => tracing::warn!(action = other, "unknown action in an HQ notification; ignored"),
        }
    }

    fn count(&self, action: &str) {
        self.state.metrics.hq_notifications.with_label_values(&[action]).inc();
    }

    async fn request(&self, c: Control) {
        if self.control.send(c).await.is_err() {
            tracing::warn!("the server is already stopping; HQ's request is moot");
        }
    }

    /// A msgpack message on `eds.client.<sessionId>.<suffix>`.
    async fn publish(&self, suffix: &str, body: &Value) {
        let subject = format!("eds.client.{}.{suffix}", self.session_id);
        let payload = wire::encode(&wire::to_msgpack(body));
        if let Err(e) = self.client.publish_with_headers(subject.clone(), wire::msgpack_headers(), payload.into()).await
        {
            tracing::warn!(subject, error = %e, "could not publish to HQ");
        }
    }

    /// `<action>-status`: always with `message` (empty on success).
    async fn status(&self, action: &str, success: bool, message: &str) {
        let body = json!({ "success": success, "message": message, "sessionId": self.session_id, "action": action });
        self.publish(&format!("{action}-status"), &body).await;
    }

    /// `<action>-response`: `{success, message?, sessionId, action}`.
    async fn generic(&self, action: &str, success: bool, message: Option<&str>) {
        let mut body = json!({ "success": success, "sessionId": self.session_id, "action": action });
        if let Some(m) = message.filter(|m| !m.is_empty()) {
            body["message"] = json!(m);
        }
        self.publish(&format!("{action}-response"), &body).await;
    }

    /// A JSON reply to the request's reply subject.
    async fn reply(&self, reply: Option<&str>, body: &Value) {
        let Some(reply) = reply else {
            tracing::warn!("HQ notification expects a reply but names no reply subject; answer dropped");
            return;
        };
        if let Err(e) = self.client.publish(reply.to_owned(), body.to_string().into()).await {
            tracing::warn!(error = %e, "could not reply to HQ");
        }
    }

    /// Reads `config.toml`, changes it with `change`, and writes it back (atomically), off the
    /// async threads.
    async fn update_config(
        &self,
        change: impl FnOnce(&mut crate::config::ConfigFile) + Send + 'static,
    ) -> anyhow::Result<()> {
        let dir = self.data_dir.clone();
        tokio::task::spawn_blocking(move || {
            let mut config = crate::config::load(&dir)?;
            change(&mut config);
            crate::config::save(&dir, &config)
        })
        .await?
    }

    async fn shutdown(&self, data: &Map<String, Value>) {
        let message = text(data, "message").unwrap_or("HQ asked this server to shut down").to_owned();
        if flag(data, "deleted") {
            // HQ deleted this server: forget its id, so the next start asks for a new enrollment.
            match self.update_config(|config| config.server_id = Some(String::new())).await {
                Ok(()) => tracing::warn!("HQ deleted this server: its server id is cleared from config.toml"),
                Err(e) => tracing::error!(error = format!("{e:#}"), "could not clear the server id in config.toml"),
            }
        }
        tracing::warn!(message, "HQ asked this server to shut down");
        self.request(Control::Shutdown(message)).await;
    }

    async fn upgrade(&self, data: &Map<String, Value>) {
        // One upgrade at a time: two would race on the same download and the same swap.
        static UPGRADING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let Some(version) = text(data, "version").map(str::to_owned) else {
            self.status("upgrade", false, "the upgrade notification names no version").await;
            return;
        };
        let Ok(_one) = UPGRADING.try_lock() else {
            self.status("upgrade", false, "an upgrade is already running").await;
            return;
        };
        self.status("upgrade", true, "").await;
        let outcome = super::upgrade_to(&self.data_dir, &version, &self.release_url).await;
        let mut body = json!({ "success": outcome.is_ok(), "sessionId": self.session_id, "version": version });
        if let Err(e) = &outcome {
            body["message"] = json!(format!("{e:#}"));
            tracing::error!(version, error = format!("{e:#}"), "upgrade failed; this version keeps running");
        }
        self.publish("upgrade-response", &body).await;
        if outcome.is_ok() {
            self.request(Control::Restart(format!("upgraded to {version}"))).await;
        }
    }

    /// `sendlogs-response`: where the log went (empty when nothing was sent).
    pub async fn logs_sent(&self, path: &str) {
        self.publish("sendlogs-response", &json!({ "path": path, "sessionId": self.session_id })).await;
    }

    /// Rotates and uploads the session's log; the uploaded path, empty when nothing was sent.
    async fn send_logs(&self) -> String {
        let Some(logs) = &self.logs else { return String::new() };
        match logs.send(&self.session_id).await {
            Ok(path) => path,
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "could not upload the log file to HQ");
                String::new()
            }
        }
    }

    async fn configure(&self, data: &Map<String, Value>, reply: Option<&str>) {
        let backfill = flag(data, "backfill");
        let strategy = text(data, "updateStrategy").map(str::to_owned);
        let mut answer = json!({ "sessionId": self.session_id, "backfill": backfill });
        match text(data, "url") {
            None => {
                answer["success"] = json!(false);
                answer["message"] = json!("the configure notification holds no url");
            }
            Some(url) => match check_destination(url).await {
                Err(message) => {
                    answer["success"] = json!(false);
                    answer["message"] = json!(message);
                }
                Ok(()) => {
                    let url_owned = url.to_owned();
                    let saved = self
                        .update_config(move |config| {
                            config.other.insert("url".into(), toml::Value::String(url_owned));
                            match strategy {
                                Some(s) => config.other.insert("update_strategy".into(), toml::Value::String(s)),
                                None => config.other.remove("update_strategy"),
                            };
                        })
                        .await;
                    match saved {
                        Ok(()) => {
                            answer["success"] = json!(true);
                            answer["maskedURL"] = json!(super::mask_url(url));
                            tracing::info!(url = %super::mask_url(url), "destination configured by HQ (applied at the next import or restart)");
                        }
                        Err(e) => {
                            answer["success"] = json!(false);
                            answer["message"] = json!(format!("could not save the configuration: {e:#}"));
                        }
                    }
                }
            },
        }
        self.reply(reply, &answer).await;
    }

    /// HQ's `import`: `import-status` at once, then the import, then `import-response` with
    /// whether it really succeeded (EDS said success for a failed import), then a restart: the
    /// new worker runs the configured destination, skipping what the import loaded.
    async fn import(&self, data: &Map<String, Value>) {
        // One import at a time: two would drop and load the same tables at once.
        static IMPORTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let Ok(_one) = IMPORTING.try_lock() else {
            const BUSY: &str = "an import is already running";
            self.status("import", false, BUSY).await;
            self.import_response(false, BUSY).await;
            return;
        };
        self.status("import", true, "").await;
        // A destination in config.toml (HQ's configure), or one this server runs with (--url).
        let configured = !self.state.destination_positions().is_empty()
            || crate::config::load(&self.data_dir)
                .ok()
                .and_then(|c| c.other.get("url").and_then(toml::Value::as_str).map(|u| !u.trim().is_empty()))
                .unwrap_or(false);
        let backfill = flag(data, "backfill");
        let (success, message) = match (configured, backfill, &self.backfill) {
            (false, _, _) => (false, "no destination is configured yet: send configure first".to_owned()),
            // Tables are created from HQ's schemas as their first events arrive, so a
            // schema-only import has nothing left to do but start streaming.
            (true, false, _) => (true, String::new()),
            (true, true, None) => (false, "this server cannot load a backfill (no HQ API to export from)".to_owned()),
            (true, true, Some(importer)) => match importer.run().await {
                Ok(summary) => {
                    tracing::info!(summary, "HQ's import is loaded; restarting to stream from where it ends");
                    (true, String::new())
                }
                Err(e) => {
                    let message = format!("the import failed: {e:#}");
                    tracing::error!(error = format!("{e:#}"), "HQ's import failed; the restart releases the destination's drain (it streams on without the backfill)");
                    (false, message)
                }
            },
        };
        self.import_response(success, &message).await;
        if configured {
            self.request(Control::Restart("applying HQ's configuration".into())).await;
        }
    }

    /// `import-response`: `{success, message?, sessionId}`.
    async fn import_response(&self, success: bool, message: &str) {
        let mut body = json!({ "success": success, "sessionId": self.session_id });
        if !message.is_empty() {
            body["message"] = json!(message);
        }
        self.publish("import-response", &body).await;
    }
}

/// Opens the destination a URL names and checks it answers, within [`TEST_TIMEOUT`].
async fn check_destination(url: &str) -> Result<(), String> {
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    let Some(driver) = eds_drivers::find(scheme) else {
        return Err(format!("no destination driver for scheme {scheme:?} in this build"));
    };
    let opened = driver.open(url).map_err(|e| e.to_string())?;
    match tokio::time::timeout(TEST_TIMEOUT, opened.test()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("the destination did not answer within {}s", TEST_TIMEOUT.as_secs())),
    }
}

/// `driverconfig`'s `drivers`: every driver of this build with its metadata and form fields.
pub fn driver_config() -> Value {
    use eds_drivers::driver::FieldKind;
    let mut drivers = Map::new();
    for d in eds_drivers::descriptions() {
        let fields: Vec<Value> = d
            .fields
            .iter()
            .map(|f| {
                let mut field = json!({
                    "name": f.name,
                    "type": if f.kind == FieldKind::Number { "number" } else { "string" },
                    "description": f.help,
                    "required": f.required,
                });
                if f.kind == FieldKind::Password {
                    field["format"] = json!("password");
                }
                if let Some(default) = f.default {
                    field["default"] = json!(default);
                }
                field
            })
            .collect();
        drivers.insert(
            d.scheme.to_owned(),
            json!({
                "metadata": {
                    "scheme": d.scheme,
                    "name": d.name,
                    "description": d.summary(),
                    "exampleURL": d.example_url,
                    "help": d.help,
                    // Every driver loads HQ's export (`eds import`, and `import` from HQ).
                    "supportsImport": true,
                    "supportsMigration": d.needs_schema,
                },
                "fields": fields,
            }),
        );
    }
    Value::Object(drivers)
}

/// `validate`'s reply: the URL the form builds, or what is wrong with it.
pub fn validate(data: &Map<String, Value>, session_id: &str) -> Value {
    // HQ reads this reply's message under the key `messsage` (three s), as EDS sent it; the
    // spelling is HQ's contract, not a typo to fix here.
    const MESSAGE: &str = "messsage";
    let mut answer = json!({ "sessionId": session_id });
    let scheme = text(data, "driver").unwrap_or("");
    let Some(driver) = eds_drivers::find(scheme) else {
        answer["success"] = json!(false);
        answer[MESSAGE] = json!(format!("no destination driver {scheme:?} in this build"));
        return answer;
    };
    let form = data.get("config").and_then(Value::as_object).cloned().unwrap_or_default();
    match eds_drivers::form::url_from_form(driver.description(), &form) {
        Ok(url) => {
            answer["success"] = json!(true);
            answer["url"] = json!(url);
        }
        Err(errors) => {
            answer["success"] = json!(false);
            answer[MESSAGE] = json!("the configuration has errors");
            answer["field_errors"] =
                errors.iter().map(|e| json!({ "field": e.field, "error": e.error })).collect::<Value>();
        }
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_may_be_strings() {
        let data = json!({"a": true, "b": "true", "c": "no", "d": 1}).as_object().cloned().unwrap();
        assert!(flag(&data, "a") && flag(&data, "b"));
        assert!(!flag(&data, "c") && !flag(&data, "d") && !flag(&data, "missing"));
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn validate_builds_the_url_or_names_the_fields() {
        let data = json!({"driver": "postgres", "config": {"Database": "db", "Hostname": "h", "Username": "u", "Password": "p w"}});
        let answer = validate(data.as_object().unwrap(), "s1");
        assert_eq!(answer["success"], true, "{answer}");
        assert_eq!(answer["url"], "postgres://u:p%20w@h:5432/db");
        let data = json!({"driver": "postgres", "config": {"Hostname": "h"}});
        let answer = validate(data.as_object().unwrap(), "s1");
        assert_eq!(answer["success"], false);
        assert_eq!(answer["field_errors"][0]["field"], "Database");
        assert!(answer.get("messsage").is_some() && answer.get("message").is_none());
        let answer = validate(json!({"driver": "nope"}).as_object().unwrap(), "s1");
        assert_eq!(answer["success"], false);
        // Nothing at all: an answer, not a panic.
        assert_eq!(validate(&Map::new(), "s1")["success"], false);
    }

    #[test]
    fn driverconfig_lists_every_driver_with_its_fields() {
        let all = driver_config();
        for d in eds_drivers::descriptions() {
            let entry = &all[d.scheme];
            assert_eq!(entry["metadata"]["exampleURL"], d.example_url);
            assert_eq!(entry["fields"].as_array().map(Vec::len), Some(d.fields.len()));
        }
    }
}
