//! A thin client of Snowflake's SQL REST protocol, as the official connectors speak it.
//!
//! `POST /session/v1/login-request` (password, or the `SNOWFLAKE_JWT` authenticator with a key-pair
//! token, see [`super::keypair`]) returns a session token; `POST /queries/v1/query-request`
//! runs one statement with positional bindings (`{"1": {"type": "TEXT", "value": "…"}}`) and
//! answers with the result's `rowtype` and a JSON `rowset` (the session asks for JSON results; a
//! server that still answers in Arrow — fakesnow does for queries — gives rows this client does
//! not decode, see [`QueryResult::rows`]). A long statement answers "still running" with a
//! result URL, which is polled until the request deadline (`timeout=`). Errors are classified for the drain
//! ([`classify`]); a session the server ended is forgotten, so the next request logs in again.
//!
//! A request whose connection fails after it was sent and before any answer (a pooled connection
//! the server or a proxy closed while it was idle, a reset) is sent once more at once, as the
//! connectors do: the same `requestId` (Snowflake runs a request id once) with `retryCount=1`.
//!
//! Invariant: the password, the private key and the session token never appear in a message.

use super::config::{Auth, SnowflakeConfig};
use super::keypair::PrivateKey;
use crate::driver::{DriverError, ErrorClass};
use serde_json::{json, Map, Value};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long to wait for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Codes that say the session is gone (expired, closed, or never known): log in again.
const SESSION_GONE: &[&str] = &["390104", "390111", "390112", "390114"];

/// Codes of a statement still running: poll its result URL.
const STILL_RUNNING: &[&str] = &["333333", "333334"];

/// One result of a statement.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryResult {
    /// Column names, in order.
    pub columns: Vec<String>,
    /// Rows as text (`None`: SQL NULL), when the server answered in JSON; `None` when it answered
    /// in another format (Arrow).
    pub rows: Option<Vec<Vec<Option<String>>>>,
    /// `data.total`: rows in the result, or rows affected by DML.
    pub total: Option<i64>,
    /// The query id.
    pub query_id: Option<String>,
    /// The reply's `data` when it is a command for the client (a `PUT`'s upload), not a result.
    pub command: Option<Value>,
}

impl QueryResult {
    /// The number in the first cell of the first row: what a DML statement reports as rows affected
    /// (an insert or a MERGE reports several counts; their sum is the rows touched).
    pub fn affected(&self) -> Option<i64> {
        let first = self.rows.as_ref()?.first()?;
        Some(first.iter().flatten().filter_map(|c| c.parse::<i64>().ok()).sum())
    }
}

/// A bound value: Snowflake's binding type and its text (`None`: NULL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding<'a> {
    /// `TEXT`, `FIXED`, `REAL`, `BOOLEAN`, `TIMESTAMP_NTZ`…
    pub kind: &'static str,
    /// The value as text.
    pub value: Option<&'a str>,
}

/// `{"1": {"type": …, "value": …}, …}` for positional bindings.
pub fn bindings_json(values: &[Binding<'_>]) -> Value {
    let mut map = Map::with_capacity(values.len());
    for (i, b) in values.iter().enumerate() {
        map.insert((i + 1).to_string(), json!({"type": b.kind, "value": b.value}));
    }
    Value::Object(map)
}

/// How the drain should treat a Snowflake error code (`sqlState` as a fallback); `login`: the
/// error came from the login request.
pub fn classify(code: &str, sql_state: &str, login: bool) -> ErrorClass {
    if SESSION_GONE.contains(&code) {
        return ErrorClass::Transient;
    }
    if login {
        // Wrong user, password or key, locked user, unknown database, role or warehouse, an
        // account that does not exist: nothing a retry fixes.
        return ErrorClass::Config;
    }
    match code {
        // Statement cancelled, timed out, or the warehouse busy or resuming; an object that does
        // not exist (a table dropped behind eds: the driver forgets what it ensured, the retry
        // creates it again); an invalid identifier (a column dropped behind eds, likewise).
        "000604" | "000625" | "000630" | "000610" | "000612" | "002003" | "000904" | "090064" => ErrorClass::Transient,
        // No active warehouse, insufficient privileges, a database or schema that cannot be used.
        "000606" | "003001" | "003003" | "002043" | "090105" | "090106" => ErrorClass::Config,
        _ => match sql_state {
            // Data exceptions (conversion, out of range, bad JSON) and integrity (NULL into a NOT
            // NULL column): the row's fault.
            s if s.starts_with("22") || s.starts_with("23") => ErrorClass::Rejected,
            s if s.starts_with("08") || s.starts_with("57") || s.starts_with("40") => ErrorClass::Transient,
            s if s.starts_with("28") => ErrorClass::Config,
            // Snowflake's 100xxx codes are data errors (numeric value not recognised, timestamp
            // out of range, error parsing JSON…).
            _ if code.len() == 6 && code.starts_with("100") => ErrorClass::Rejected,
            // Syntax and anything else: retried, bisected, and dead-lettered only when a change
            // fails alone again and again (the drain's backstop).
            _ => ErrorClass::Unknown,
        },
    }
}

/// The client of one destination: one session at a time, logged in lazily.
pub struct Client {
    http: reqwest::Client,
    config: SnowflakeConfig,
    key: Option<PrivateKey>,
    token: Mutex<Option<String>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("target", &self.config.target).finish_non_exhaustive()
    }
}

fn now_millis() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

/// A random version-4 UUID (request ids).
pub fn request_id() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    // The system RNG does not fail on Linux; a zero id would still be a valid (if repeated) id.
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => format!("{:0>6}", n.to_string()),
        _ => String::new(),
    }
}

impl Client {
    /// A client for `config`; a key-pair config's key is read here (a bad key is a
    /// [`ErrorClass::Config`] error).
    pub fn new(config: SnowflakeConfig) -> Result<Client, DriverError> {
        let key = match &config.auth {
            Auth::KeyPair { env, pem } => Some(PrivateKey::from_pem(pem).map_err(|e| {
                DriverError::new(e.class, format!("{} (the key in ${env}, for {})", e.message, config.target))
            })?),
            Auth::Password { .. } => None,
        };
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(config.timeout)
            .user_agent(concat!("eds/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| DriverError::caused(ErrorClass::Config, "Snowflake: building the HTTP client failed", e))?;
        Ok(Client { http, config, key, token: Mutex::new(None) })
    }

    /// The HTTP client (stage uploads use it too).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// What the URL says.
    pub fn config(&self) -> &SnowflakeConfig {
        &self.config
    }

    fn lock_token(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.token.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets the session (the next request logs in again).
    pub fn forget_session(&self) {
        *self.lock_token() = None;
    }

    /// The current session token, logging in when there is none.
    pub async fn session(&self) -> Result<String, DriverError> {
        if let Some(t) = self.lock_token().clone() {
            return Ok(t);
        }
        let token = self.login().await?;
        *self.lock_token() = Some(token.clone());
        Ok(token)
    }

    /// Sends the request `build(attempt)` makes; a connection lost before any answer (see the
    /// module docs) gets one more attempt at once. A refused connection or a timeout is not sent
    /// again here: the drain's retry, with its backoff, handles a server that is away.
    async fn send(
        &self,
        what: &str,
        build: impl Fn(u32) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, DriverError> {
        match build(0).send().await {
            Ok(resp) => Ok(resp),
            Err(e) if lost_before_an_answer(&e) => build(1).send().await.map_err(|e| self.transport_error(what, e)),
            Err(e) => Err(self.transport_error(what, e)),
        }
    }

    fn transport_error(&self, what: &str, e: reqwest::Error) -> DriverError {
        // reqwest's message names the URL, which holds no secret (they travel in the body).
        let class = if e.is_builder() { ErrorClass::Config } else { ErrorClass::Transient };
        DriverError::caused(class, format!("Snowflake: {what} at {} failed: {e}", self.config.target), e)
    }

    /// The login request's body (without secrets in any message built from it).
    pub fn login_body(&self, now_secs: u64) -> Result<Value, DriverError> {
        let c = &self.config;
        let mut data = json!({
            "CLIENT_APP_ID": "eds",
            "CLIENT_APP_VERSION": env!("CARGO_PKG_VERSION"),
            "SVN_REVISION": "",
            "ACCOUNT_NAME": c.account,
            "LOGIN_NAME": c.user,
            "CLIENT_ENVIRONMENT": {"APPLICATION": "eds", "OS": std::env::consts::OS},
            "SESSION_PARAMETERS": {
                "QUERY_TAG": "eds",
                "QUERY_RESULT_FORMAT": "JSON",
                "AUTOCOMMIT": true,
                "TIMEZONE": "UTC",
                "CLIENT_SESSION_KEEP_ALIVE": true,
            },
        });
        match (&c.auth, &self.key) {
            (Auth::Password { password }, _) => data["PASSWORD"] = json!(password),
            (Auth::KeyPair { .. }, Some(key)) => {
                data["AUTHENTICATOR"] = json!("SNOWFLAKE_JWT");
                data["TOKEN"] = json!(key.jwt(&c.account, &c.user, now_secs)?);
            }
            (Auth::KeyPair { .. }, None) => {
                return Err(DriverError::new(ErrorClass::Config, "Snowflake: key-pair login without a key"))
            }
        }
        Ok(json!({ "data": data }))
    }

    async fn login(&self) -> Result<String, DriverError> {
        let c = &self.config;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let body = self.login_body(now)?;
        let mut query: Vec<(&str, String)> =
            vec![("databaseName", c.database.clone()), ("schemaName", c.schema.clone()), ("requestId", request_id())];
        if let Some(w) = &c.warehouse {
            query.push(("warehouse", w.clone()));
        }
        if let Some(r) = &c.role {
            query.push(("roleName", r.clone()));
        }
        let url = format!("{}/session/v1/login-request", c.base_url);
        let resp = self
            .send("logging in", |attempt| {
                retry_params(self.http.post(&url).query(&query), attempt)
                    .header("Accept", "application/json")
                    .json(&body)
            })
            .await?;
        let status = resp.status();
        let reply: Option<Value> = resp.json().await.ok();
        let ok = reply.as_ref().and_then(|r| r.get("success")).and_then(Value::as_bool) == Some(true);
        if status.is_success() && ok {
            if let Some(token) = reply.as_ref().and_then(|r| r["data"]["token"].as_str()) {
                return Ok(token.to_owned());
            }
        }
        let code = text(reply.as_ref().and_then(|r| r.get("code")));
        let message = reply.as_ref().and_then(|r| r["message"].as_str()).unwrap_or("").to_owned();
        let class = if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
            ErrorClass::Transient
        } else if !status.is_success() && reply.is_none() {
            // Not Snowflake's JSON (a proxy's page): retried.
            ErrorClass::Transient
        } else {
            classify(&code, "", true)
        };
        Err(DriverError::new(
            class,
            format!(
                "Snowflake: login of user {:?} at {} refused (HTTP {status}{}): {}",
                c.user,
                c.target,
                if code.is_empty() { String::new() } else { format!(", code {code}") },
                if message.is_empty() { "no message" } else { &message }
            ),
        ))
    }

    /// Runs `sql` with `bindings` in the session `token` (from [`Client::session`]), tagged
    /// `query_tag`. A session the server no longer knows is forgotten (the error is transient:
    /// the next request logs in again).
    pub async fn query(
        &self,
        token: &str,
        sql: &str,
        bindings: &[Binding<'_>],
        query_tag: &str,
    ) -> Result<QueryResult, DriverError> {
        let mut body = json!({
            "sqlText": sql,
            "asyncExec": false,
            "sequenceId": 1,
            "querySubmissionTime": now_millis() as u64,
            "parameters": {"QUERY_TAG": query_tag},
        });
        if !bindings.is_empty() {
            body["bindings"] = bindings_json(bindings);
        }
        let started = Instant::now();
        let url = format!("{}/queries/v1/query-request", self.config.base_url);
        let id = request_id();
        let resp = self
            .send("a query", |attempt| {
                retry_params(self.http.post(&url).query(&[("requestId", &id)]), attempt)
                    .header("Accept", "application/snowflake")
                    .header("Authorization", format!("Snowflake Token=\"{token}\""))
                    .json(&body)
            })
            .await?;
        let mut reply = self.reply(token, resp).await?;
        // A long statement: poll its result until the request deadline.
        while STILL_RUNNING.contains(&text(reply.get("code")).as_str()) {
            let Some(url) = reply["data"]["getResultUrl"].as_str().map(str::to_owned) else { break };
            if started.elapsed() > self.config.timeout {
                return Err(DriverError::new(
                    ErrorClass::Transient,
                    format!(
                        "Snowflake: a statement at {} still ran after {} s",
                        self.config.target,
                        self.config.timeout.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            let url = format!("{}{url}", self.config.base_url);
            let resp = self
                .send("polling a result", |_| {
                    self.http
                        .get(&url)
                        .header("Accept", "application/snowflake")
                        .header("Authorization", format!("Snowflake Token=\"{token}\""))
                })
                .await?;
            reply = self.reply(token, resp).await?;
        }
        Ok(result_of(&reply))
    }

    /// The JSON of a successful reply, or its classified error.
    async fn reply(&self, token: &str, resp: reqwest::Response) -> Result<Value, DriverError> {
        let status = resp.status();
        let reply: Option<Value> = resp.json().await.ok();
        let ok = reply.as_ref().and_then(|r| r.get("success")).and_then(Value::as_bool) == Some(true);
        if status.is_success() && ok {
            return reply.ok_or_else(|| DriverError::new(ErrorClass::Transient, "Snowflake: an empty reply"));
        }
        let code = text(reply.as_ref().and_then(|r| r.get("code")));
        let sql_state = reply.as_ref().and_then(|r| r["data"]["sqlState"].as_str()).unwrap_or("").to_owned();
        let message = reply.as_ref().and_then(|r| r["message"].as_str()).unwrap_or("no message").to_owned();
        let class = if SESSION_GONE.contains(&code.as_str()) || status.as_u16() == 401 {
            let mut t = self.lock_token();
            if t.as_deref() == Some(token) {
                *t = None;
            }
            ErrorClass::Transient
        } else if status.is_server_error() || matches!(status.as_u16(), 408 | 429) || reply.is_none() {
            ErrorClass::Transient
        } else {
            classify(&code, &sql_state, false)
        };
        let state = if sql_state.is_empty() { String::new() } else { format!(" ({sql_state})") };
        Err(DriverError::new(class, format!("Snowflake: error {code}{state} at {}: {message}", self.config.target)))
    }
}

/// Whether a request failed after its connection was made and before any answer came: the
/// connection was closed or reset under it (not refused, not timed out).
fn lost_before_an_answer(e: &reqwest::Error) -> bool {
    e.is_request() && !e.is_connect() && !e.is_timeout()
}

/// A request's tracing parameters: a fresh `request_guid` for every attempt and, on a repeat,
/// `retryCount`, as the connectors send them.
fn retry_params(request: reqwest::RequestBuilder, attempt: u32) -> reqwest::RequestBuilder {
    let request = request.query(&[("request_guid", request_id())]);
    if attempt == 0 {
        request
    } else {
        request.query(&[("retryCount", attempt)])
    }
}

/// The rows, columns and counts of a successful reply.
fn result_of(reply: &Value) -> QueryResult {
    let data = &reply["data"];
    let columns = data["rowtype"]
        .as_array()
        .map(|cols| cols.iter().map(|c| c["name"].as_str().unwrap_or("").to_owned()).collect())
        .unwrap_or_default();
    let json_rows = data["queryResultFormat"].as_str().is_none_or(|f| f.eq_ignore_ascii_case("json"));
    let rows = if json_rows {
        Some(
            data["rowset"]
                .as_array()
                .map(|rows| {
                    rows.iter()
                        .map(|r| {
                            r.as_array()
                                .map(|cells| cells.iter().map(|c| c.as_str().map(str::to_owned)).collect())
                                .unwrap_or_default()
                        })
                        .collect()
                })
                .unwrap_or_default(),
        )
    } else {
        None
    };
    let command = data["command"].is_string().then(|| data.clone());
    QueryResult {
        columns,
        rows,
        total: data["total"].as_i64(),
        query_id: data["queryId"].as_str().map(str::to_owned),
        command,
    }
}
