//! Writing folded changes to Snowflake, and keeping tables in step with HQ's schemas.
//!
//! Statements: every identifier goes through [`quote_ident`] (always double-quoted, as EDS
//! does, so `order` and `updatedDate` keep their case); every value is a bound parameter
//! (see `cells.rs`). A group of rows is one statement over a derived table of bound rows
//! (`SELECT CAST(? AS …) AS c0, … UNION ALL SELECT …`), cut so that no statement carries more
//! than `max_bind_params` values — multi-row binds (an import into tables it just created loads
//! through a stage and `COPY INTO` instead, see [`super::bulk`]):
//!
//! * upserts: `MERGE INTO "t" AS dst USING (<rows>) AS src ON dst."id" = src.c0 WHEN MATCHED THEN
//!   UPDATE SET "c" = src.c1, … WHEN NOT MATCHED THEN INSERT (…) VALUES (…)`. An update that lists
//!   its changed columns (EDS's `standard` strategy) sets only those; a whole-row change (an
//!   insert, or the `after` strategy) sets every column. Nothing depends on an `updatedDate`
//!   column. A row missing at the destination is inserted from the change's whole row image.
//! * deletes: `DELETE FROM "t" AS dst USING (<rows>) AS src WHERE dst."id" = src.c0`.
//!
//! A batch is one transaction (`BEGIN` … `COMMIT` in the driver's session; `transaction=off`
//! commits statement by statement, for fakesnow, whose MERGE fails inside a transaction); the
//! planner's rounds make sure no MERGE sees a key twice, so a replay — or the retry of a batch
//! that failed half way without a transaction — leaves the same rows. Every query carries the
//! query tag `eds-<pid>/<batch>/<changes>`.
//!
//! Schema: `CREATE TABLE IF NOT EXISTS` (never `CREATE OR REPLACE`, which EDS runs and which drops
//! a live table's rows) with the primary key, then the columns the destination lacks are added
//! (`ALTER TABLE … ADD COLUMN IF NOT EXISTS`), never dropped or retyped. The destination's columns
//! come from `information_schema.columns` when the server answers in JSON (Snowflake, asked for
//! JSON results at login); a server that answers queries in Arrow (fakesnow) gets an idempotent
//! `ADD COLUMN IF NOT EXISTS` for every column instead. Which (table, model version) pairs were
//! ensured is remembered, so [`Driver::ensure_schema`] is a set lookup when nothing changed.

use super::bulk::{self, CsvEncoder};
use super::cells::{Cell, ColumnPlan, Storage};
use super::client::{Binding, Client};
use super::config::{parse, SnowflakeConfig};
use super::stage::{self, UploadCommand};
use crate::driver::{
    Batch, BoxFuture, Description, Driver, DriverError, ErrorClass, FreshEncoder, Limits, StateChange,
};
use crate::schema::Schema;
use crate::sql::plan::{self, Step};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Bind parameters per statement by default: Snowflake names no limit, but a statement's text
/// must stay below 1 MB (each value adds about 20 bytes of `CAST(? AS …)`).
pub const MAX_BIND_PARAMS: usize = 10_000;

/// How long [`Driver::test`] may take.
const TEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Snowflake identifiers are at most 255 characters.
const MAX_IDENTIFIER_CHARS: usize = 255;

/// `name` as a Snowflake identifier: always double-quoted with every `"` doubled, so case,
/// spaces and punctuation are kept exactly. Names Snowflake cannot hold — empty, containing a NUL
/// byte, longer than 255 characters — are an [`ErrorClass::Rejected`] error.
pub fn quote_ident(name: &str) -> Result<String, DriverError> {
    crate::sql::quote_identifier("Snowflake", name, ('"', '"'), |name| {
        (name.chars().count() > MAX_IDENTIFIER_CHARS)
            .then_some("is longer than Snowflake's 255-character identifier limit")
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while holding these locks; a poisoned one still holds consistent data.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The Snowflake destination (password or key pair).
pub struct SnowflakeDriver {
    client: Client,
    description: &'static Description,
    max_bind_params: usize,
    ensured: Mutex<HashSet<(String, String)>>,
    /// Per table, the object and array columns that exist as text (tables EDS created: it made
    /// them STRING): written as JSON text there, not as VARIANT, which such a column refuses.
    text_json: Mutex<HashMap<String, HashSet<String>>>,
    batches: AtomicU64,
    /// One batch at a time: a batch is a transaction of the one session.
    session: tokio::sync::Mutex<()>,
    /// Statements executed by writes (tests check the cutting with it).
    executed: AtomicU64,
    /// The temporary stage of bulk loads, and the session token it belongs to (a temporary
    /// stage ends with its session).
    stage: Mutex<Option<(String, String)>>,
    /// Bulk loads made so far (file names).
    uploads: AtomicU64,
    /// The stage's storage, once a `PUT` named one eds does not upload to (bulk loads then
    /// stop at once).
    unwritable: Mutex<Option<String>>,
}

impl std::fmt::Debug for SnowflakeDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnowflakeDriver").field("target", &self.client.config().target).finish_non_exhaustive()
    }
}

/// One statement of a batch: its SQL, what it does (for messages) and its bound values.
struct Statement<'b> {
    sql: String,
    what: String,
    values: Vec<Binding<'b>>,
}

/// The bindings of `rows` (every cell as TEXT).
fn bind_rows<'b>(rows: &'b [Vec<Cell<'_>>], width: usize) -> Vec<Binding<'b>> {
    rows.iter().flat_map(|r| r.iter().take(width)).map(|c| Binding { kind: "TEXT", value: c.as_deref() }).collect()
}

/// `(SELECT <read> AS c0, … UNION ALL SELECT <read>, … )` for `rows` rows of `columns`.
fn rows_table(columns: &[ColumnPlan<'_>], rows: usize) -> String {
    let first =
        columns.iter().enumerate().map(|(i, p)| format!("{} AS c{i}", p.storage.read())).collect::<Vec<_>>().join(", ");
    let rest = columns.iter().map(|p| p.storage.read()).collect::<Vec<_>>().join(", ");
    let mut s = String::with_capacity(rows * (rest.len() + 20));
    s.push_str("(SELECT ");
    s.push_str(&first);
    for _ in 1..rows {
        s.push_str(" UNION ALL SELECT ");
        s.push_str(&rest);
    }
    s.push(')');
    s
}

/// `dst."k0" = src.c0 AND …` over the primary-key columns (the first of a plan).
fn key_match(keys: &[ColumnPlan<'_>]) -> String {
    keys.iter().enumerate().map(|(i, p)| format!("dst.{} = src.c{i}", p.quoted)).collect::<Vec<_>>().join(" AND ")
}

/// The MERGE of an upsert group's `rows` rows.
fn merge_sql(table: &str, columns: &[ColumnPlan<'_>], npk: usize, update: &[&str], rows: usize) -> String {
    let keys = &columns[..npk.min(columns.len())];
    let mut sql =
        format!("MERGE INTO {table} AS dst USING {} AS src ON {}", rows_table(columns, rows), key_match(keys));
    let sets: Vec<String> = columns
        .iter()
        .enumerate()
        .filter(|(_, p)| update.contains(&p.name))
        .map(|(i, p)| format!("{} = src.c{i}", p.quoted))
        .collect();
    if !sets.is_empty() {
        sql.push_str(" WHEN MATCHED THEN UPDATE SET ");
        sql.push_str(&sets.join(", "));
    }
    let names = columns.iter().map(|p| p.quoted.as_str()).collect::<Vec<_>>().join(", ");
    let values = (0..columns.len()).map(|i| format!("src.c{i}")).collect::<Vec<_>>().join(", ");
    sql.push_str(&format!(" WHEN NOT MATCHED THEN INSERT ({names}) VALUES ({values})"));
    sql
}

/// The DELETE of a delete group's `rows` rows.
fn delete_sql(table: &str, keys: &[ColumnPlan<'_>], rows: usize) -> String {
    format!("DELETE FROM {table} AS dst USING {} AS src WHERE {}", rows_table(keys, rows), key_match(keys))
}

/// `CREATE TABLE IF NOT EXISTS` for `schema`.
pub fn create_table_sql(schema: &Schema) -> Result<String, DriverError> {
    let mut lines = Vec::new();
    for c in schema.columns() {
        let p = ColumnPlan::new(c)?;
        let not_null = if c.not_null_in_ddl() || c.primary_key { " NOT NULL" } else { "" };
        lines.push(format!("{} {}{not_null}", p.quoted, p.storage.ddl()));
    }
    let keys = schema.primary_keys().iter().map(|k| quote_ident(k)).collect::<Result<Vec<_>, _>>()?;
    if !keys.is_empty() {
        lines.push(format!("PRIMARY KEY ({})", keys.join(", ")));
    }
    Ok(format!("CREATE TABLE IF NOT EXISTS {} ({})", quote_ident(schema.table())?, lines.join(", ")))
}

impl SnowflakeDriver {
    /// A driver for `url` (see [`parse`]; the key pair's key is read from the environment here).
    /// Logs in lazily: the first write, ensure or test opens the session.
    pub fn new(url: &str, description: &'static Description) -> Result<SnowflakeDriver, DriverError> {
        let config = parse(url, &|name| std::env::var(name).ok())?;
        SnowflakeDriver::with_config(config, description)
    }

    /// A driver for a parsed configuration.
    pub fn with_config(
        config: SnowflakeConfig,
        description: &'static Description,
    ) -> Result<SnowflakeDriver, DriverError> {
        Ok(SnowflakeDriver {
            client: Client::new(config)?,
            description,
            max_bind_params: MAX_BIND_PARAMS,
            ensured: Mutex::new(HashSet::new()),
            text_json: Mutex::new(HashMap::new()),
            batches: AtomicU64::new(0),
            session: tokio::sync::Mutex::new(()),
            executed: AtomicU64::new(0),
            stage: Mutex::new(None),
            uploads: AtomicU64::new(0),
            unwritable: Mutex::new(None),
        })
    }

    /// Sets how many values one statement may carry ([`MAX_BIND_PARAMS`] by default); larger
    /// groups are cut into several statements of the same transaction.
    pub fn with_max_bind_params(mut self, params: usize) -> SnowflakeDriver {
        self.max_bind_params = params.max(1);
        self
    }

    /// The REST client (the benchmark issues the same statements through it).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Statements executed by writes so far.
    pub fn statements_executed(&self) -> u64 {
        self.executed.load(Ordering::Relaxed)
    }

    fn tag(&self, changes: usize) -> String {
        let seq = self.batches.fetch_add(1, Ordering::Relaxed) + 1;
        format!("eds-{}/{seq}/{changes}", std::process::id())
    }

    /// Forgets which schemas were ensured (a table or column went missing behind eds).
    fn forget_ensured(&self) {
        lock(&self.ensured).clear();
    }

    /// [`Driver::drop_table`]: Snowflake resolves an unqualified name in the session's schema
    /// only, the one the catalog reads.
    async fn drop_one(&self, table: &str) -> Result<(), DriverError> {
        let sql = format!("DROP TABLE IF EXISTS {}", quote_ident(table)?);
        let _one = self.session.lock().await;
        let token = self.client.session().await?;
        let tag = format!("eds-{}/ddl", std::process::id());
        let dropped = self.client.query(&token, &sql, &[], &tag).await;
        self.forget_ensured();
        lock(&self.text_json).remove(table);
        dropped.map(drop).map_err(|e| DriverError {
            class: if matches!(e.class, ErrorClass::Rejected | ErrorClass::TooLarge) {
                ErrorClass::Config
            } else {
                e.class
            },
            message: format!("{} (dropping table {table:?})", e.message),
            source: e.source,
        })
    }

    /// Creates `schema`'s table if missing and adds the columns it lacks.
    async fn ensure(&self, schema: &Schema) -> Result<(), DriverError> {
        let id = (schema.table().to_owned(), schema.model_version().to_owned());
        if lock(&self.ensured).contains(&id) {
            return Ok(());
        }
        let _one = self.session.lock().await;
        let table = schema.table();
        let quoted = quote_ident(table)?;
        let token = self.client.session().await?;
        let tag = format!("eds-{}/ddl", std::process::id());
        let ddl_error = |e: DriverError| {
            let class = match e.class {
                // A DDL statement the server refuses is no row's fault.
                ErrorClass::Rejected | ErrorClass::TooLarge => ErrorClass::Config,
                c => c,
            };
            DriverError { class, message: format!("{} (ensuring table {table:?})", e.message), source: e.source }
        };
        let catalog = self
            .client
            .query(
                &token,
                "SELECT column_name, data_type FROM information_schema.columns \
                 WHERE table_schema = CURRENT_SCHEMA() AND table_name = ?",
                &[Binding { kind: "TEXT", value: Some(table) }],
                &tag,
            )
            .await
            .map_err(ddl_error)?;
        // `None`: the server answered in Arrow; every column is then added idempotently.
        let types: Option<HashMap<String, String>> = catalog.rows.map(|rows| {
            rows.into_iter()
                .filter_map(|r| {
                    let mut r = r.into_iter();
                    Some((r.next().flatten()?, r.next().flatten().unwrap_or_default()))
                })
                .collect()
        });
        let existing: Option<HashSet<String>> = types.as_ref().map(|t| t.keys().cloned().collect());
        if let Some(types) = &types {
            let text: HashSet<String> = schema
                .columns()
                .iter()
                .filter(|c| Storage::of(&c.kind) == Storage::Variant)
                .filter(|c| {
                    types
                        .get(&c.name)
                        .is_some_and(|t| matches!(t.to_ascii_uppercase().as_str(), "TEXT" | "VARCHAR" | "STRING"))
                })
                .map(|c| c.name.clone())
                .collect();
            lock(&self.text_json).entry(table.to_owned()).or_default().extend(text);
        }
        if existing.as_ref().is_none_or(HashSet::is_empty) {
            self.client.query(&token, &create_table_sql(schema)?, &[], &tag).await.map_err(ddl_error)?;
        }
        let missing: Vec<String> = schema
            .columns()
            .iter()
            .filter(|c| existing.as_ref().is_none_or(|e| !e.is_empty() && !e.contains(&c.name)))
            .map(|c| ColumnPlan::new(c).map(|p| format!("{} {}", p.quoted, p.storage.ddl())))
            .collect::<Result<_, _>>()?;
        for column in missing {
            let sql = format!("ALTER TABLE {quoted} ADD COLUMN IF NOT EXISTS {column}");
            self.client.query(&token, &sql, &[], &tag).await.map_err(ddl_error)?;
        }
        lock(&self.ensured).insert(id);
        Ok(())
    }

    /// How `schema`'s columns are written (object columns the table holds as text, as text).
    fn column_plans<'s>(&self, schema: &'s Schema) -> Result<Vec<ColumnPlan<'s>>, DriverError> {
        let mut cols = schema.columns().iter().map(ColumnPlan::new).collect::<Result<Vec<_>, _>>()?;
        if let Some(text) = lock(&self.text_json).get(schema.table()) {
            for c in cols.iter_mut().filter(|c| text.contains(c.name)) {
                c.storage = Storage::Text;
            }
        }
        Ok(cols)
    }

    /// The session's temporary stage of bulk loads, created when the session has none.
    async fn stage_of(&self, token: &str, tag: &str) -> Result<String, DriverError> {
        if let Some((t, name)) = lock(&self.stage).as_ref() {
            if t == token {
                return Ok(name.clone());
            }
        }
        // Only letters, digits and `_`, upper case: the same name quoted or not.
        let suffix: String = super::client::request_id().chars().filter(char::is_ascii_hexdigit).take(12).collect();
        let name = format!("EDS_IMPORT_{}_{}", std::process::id(), suffix.to_ascii_uppercase());
        self.client.query(token, &format!("CREATE TEMPORARY STAGE IF NOT EXISTS {name}"), &[], tag).await?;
        *lock(&self.stage) = Some((token.to_owned(), name.clone()));
        Ok(name)
    }

    /// [`Driver::write_encoded`]: `data` (CSV from [`CsvEncoder`]) uploaded to the stage and
    /// loaded with one `COPY INTO`. A stage on storage eds does not upload to is an error that
    /// says so (the import then merges the rows).
    async fn copy_encoded(&self, schema: &Schema, data: &[u8]) -> Result<bool, DriverError> {
        let rows = bulk::records(data);
        if rows == 0 {
            return Ok(true);
        }
        let unwritable = |kind: &str| {
            DriverError::new(
                ErrorClass::Config,
                format!(
                    "Snowflake: the stage at {} keeps its files on {kind} storage, which eds does not upload to \
                     (it uploads to S3, GCS and Azure); rows are merged instead",
                    self.client.config().target
                ),
            )
        };
        if let Some(kind) = lock(&self.unwritable).clone() {
            return Err(unwritable(&kind));
        }
        let table = schema.table();
        let quoted = quote_ident(table)?;
        let columns: Vec<String> = self.column_plans(schema)?.into_iter().map(|p| p.quoted).collect();
        let gz = bulk::gzip(data)?;
        let seq = self.uploads.fetch_add(1, Ordering::Relaxed) + 1;
        let file = format!("eds-{}-{seq}-{}.csv.gz", std::process::id(), super::client::request_id());
        let what = |step: &str| format!("{step} {rows} rows for table {table:?}");
        let _one = self.session.lock().await;
        let token = self.client.session().await?;
        let tag = self.tag(rows);
        let stage_name = self.stage_of(&token, &tag).await.map_err(|e| self.write_error(&what("staging"), e, rows))?;
        let put = format!(
            "PUT 'file:///{file}' @{stage_name} AUTO_COMPRESS = FALSE SOURCE_COMPRESSION = GZIP OVERWRITE = TRUE"
        );
        let answer = match self.client.query(&token, &put, &[], &tag).await {
            Ok(r) => r,
            Err(e) => {
                // The stage may have gone with its session.
                *lock(&self.stage) = None;
                return Err(self.write_error(&what("staging"), e, rows));
            }
        };
        let command = UploadCommand::of(answer.command.as_ref().unwrap_or(&serde_json::Value::Null))?;
        if let stage::Location::Other(kind) = &command.location {
            *lock(&self.unwritable) = Some(kind.clone());
            return Err(unwritable(kind));
        }
        stage::upload(self.client.http(), &command, &file, gz).await?;
        let copy = bulk::copy_sql(&quoted, &columns, &stage_name, &file);
        match self.client.query(&token, &copy, &[], &tag).await {
            Ok(result) => match bulk::loaded(&result) {
                Some((n, true)) if n == rows as i64 => Ok(true),
                None => Ok(true),
                Some((n, _)) => Err(DriverError::new(
                    ErrorClass::Unknown,
                    format!("Snowflake: COPY INTO table {table:?} loaded {n} of {rows} rows from {file}"),
                )),
            },
            Err(e) => {
                // Best effort: a file that did not load is not left in the stage.
                let _ = self.client.query(&token, &format!("REMOVE @{stage_name}/{file}"), &[], &tag).await;
                Err(self.write_error(&what("copying"), e, rows))
            }
        }
    }

    async fn write_folded(&self, changes: &[StateChange<'_>]) -> Result<(), DriverError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut plans: plan::Columns<'_, ColumnPlan<'_>> = HashMap::new();
        for schema in plan::schemas("Snowflake", changes)? {
            self.ensure(schema).await?;
            plans.insert((schema.table(), schema.model_version()), self.column_plans(schema)?);
        }
        let plan = plan::plan("Snowflake", changes, &plans)?;
        let mut statements: Vec<Statement<'_>> = Vec::new();
        for step in plan.steps() {
            let (schema, rows, delete) = match step {
                Step::Delete(g) => (g.schema, &g.rows, true),
                Step::Upsert(g) => (g.schema, &g.rows, false),
            };
            let table = quote_ident(schema.table())?;
            let columns = plans.get(&(schema.table(), schema.model_version())).map_or(&[][..], Vec::as_slice);
            let npk = schema.primary_keys().len().min(columns.len());
            let width = if delete { npk } else { columns.len() };
            let per_statement = (self.max_bind_params / width.max(1)).max(1);
            for chunk in rows.chunks(per_statement) {
                let (sql, what) = match step {
                    Step::Delete(_) => (
                        delete_sql(&table, &columns[..npk], chunk.len()),
                        format!("deleting {} rows from table {:?}", chunk.len(), schema.table()),
                    ),
                    Step::Upsert(g) => (
                        merge_sql(&table, columns, npk, &g.update, chunk.len()),
                        format!("merging {} rows into table {:?}", chunk.len(), schema.table()),
                    ),
                };
                statements.push(Statement { sql, what, values: bind_rows(chunk, width) });
            }
        }
        let _one = self.session.lock().await;
        let token = self.client.session().await?;
        let tag = self.tag(changes.len());
        let transaction = self.client.config().transaction && statements.len() > 1;
        if transaction {
            self.client.query(&token, "BEGIN", &[], &tag).await?;
        }
        for s in &statements {
            if let Err(e) = self.client.query(&token, &s.sql, &s.values, &tag).await {
                if transaction {
                    // Best effort: a session that is gone has no transaction left to roll back.
                    let _ = self.client.query(&token, "ROLLBACK", &[], &tag).await;
                }
                return Err(self.write_error(&s.what, e, changes.len()));
            }
            self.executed.fetch_add(1, Ordering::Relaxed);
        }
        if transaction {
            self.client
                .query(&token, "COMMIT", &[], &tag)
                .await
                .map_err(|e| self.write_error("committing", e, changes.len()))?;
        }
        Ok(())
    }

    /// Names what failed; an error that suggests a table or column went missing drops what was
    /// ensured; a batch of one change the server finds too large is that change's rejection.
    fn write_error(&self, what: &str, e: DriverError, changes: usize) -> DriverError {
        if e.message.contains("error 002003") || e.message.contains("error 000904") {
            self.forget_ensured();
        }
        let class = match e.class {
            ErrorClass::TooLarge if changes == 1 => ErrorClass::Rejected,
            c => c,
        };
        DriverError { class, message: format!("{} ({what})", e.message), source: e.source }
    }

    async fn check(&self) -> Result<(), DriverError> {
        let target = self.client.config().target.clone();
        let probe = async {
            // A fresh login, so a wrong password or key shows now.
            self.client.forget_session();
            let token = self.client.session().await?;
            self.client.query(&token, "SELECT 1", &[], "eds-test").await.map(|_| ())
        };
        match tokio::time::timeout(TEST_TIMEOUT, probe).await {
            Err(_) => Err(DriverError::new(
                ErrorClass::Transient,
                format!("Snowflake: {target} did not answer within {} s", TEST_TIMEOUT.as_secs()),
            )),
            Ok(r) => r,
        }
    }
}

impl Driver for SnowflakeDriver {
    fn describe(&self) -> &'static Description {
        self.description
    }

    fn limits(&self) -> Limits {
        // 2 MiB of records per batch, as the other SQL destinations: it bounds the drain's memory.
        Limits { max_rows: 2_000, max_bytes: 2 << 20, max_bind_params: self.max_bind_params }
    }

    fn test(&self) -> BoxFuture<'_, Result<(), DriverError>> {
        Box::pin(self.check())
    }

    fn write<'a>(&'a self, batch: Batch<'a>) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            match batch {
                Batch::Folded(changes) => self.write_folded(changes).await,
                Batch::Events(_) => Err(DriverError::new(
                    ErrorClass::Config,
                    "the Snowflake destination takes folded changes (state kind), not every event",
                )),
            }
        })
    }

    fn encoded_limits(&self) -> Limits {
        // A stage load costs three round trips and a file: large batches (still bounded, as the
        // import holds one in memory and writes it again as events if it fails).
        Limits { max_rows: 100_000, max_bytes: 32 << 20, max_bind_params: self.max_bind_params }
    }

    fn fresh_encoder(&self, schema: &Schema) -> Option<Box<dyn FreshEncoder>> {
        let plans = self.column_plans(schema).ok()?;
        CsvEncoder::new(schema, &plans).map(|e| Box::new(e) as Box<dyn FreshEncoder>)
    }

    fn write_encoded<'a>(&'a self, schema: &'a Schema, data: &'a [u8]) -> BoxFuture<'a, Result<bool, DriverError>> {
        Box::pin(self.copy_encoded(schema, data))
    }

    fn ensure_schema<'a>(&'a self, schema: &'a Schema) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.ensure(schema))
    }

    fn drop_table<'a>(&'a self, table: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.drop_one(table))
    }
}
