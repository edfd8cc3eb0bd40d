//! Loading a bulk export's files into PostgreSQL and MariaDB through the drain's write path: row
//! counts and contents equal the files (hostile values included), a bad line is reported with its
//! file and line without stopping the rest, and loading again changes nothing.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::events::HOSTILE;
use eds::import::files::{list, ExportFile};
use eds::import::load::load;
use eds_drivers::driver::{Batch, BoxFuture, Description, Driver, DriverError, FreshEncoder, Limits};
use eds_drivers::schema::Schema;
use sqlx::{Connection, Executor};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const PG: &str = "postgres://postgres@127.0.0.1:5432/test";
const MY: &str = "mysql://root@127.0.0.1:3306/test";

/// Writes a gzipped NDJSON export file of `lines` under `dir`, named as CockroachDB names them.
fn export_file(dir: &Path, table: &str, n: u32, lines: &[String]) {
    let name = format!("20261201120000123456789000000000{n}-c7274317e9a4a9cb-1-651-00000000-{table}-{n}.ndjson.gz");
    let mut e =
        flate2::write::GzEncoder::new(std::fs::File::create(dir.join(name)).unwrap(), flate2::Compression::fast());
    for l in lines {
        writeln!(e, "{l}").unwrap();
    }
    e.finish().unwrap();
}

/// Orders (`rows` of them over two files, names from HOSTILE) and customers, plus a line that is
/// not JSON and a row without an id.
fn export(dir: &Path, rows: u32) -> BTreeMap<String, String> {
    let mut expected = BTreeMap::new();
    // PostgreSQL's text holds no NUL byte (such a row is rejected, tested with the driver).
    let mut order = |i: u32| {
        let name = format!("{} #{i}", HOSTILE[i as usize % HOSTILE.len()].replace('\0', ""));
        let id = format!("o{i}");
        expected.insert(id.clone(), name.clone());
        serde_json::json!({"id": id, "name": name, "updatedDate": "2026-12-01T12:00:00.123Z", "unknownColumn": 1})
            .to_string()
    };
    let half = rows / 2;
    let mut first: Vec<String> = (0..half).map(&mut order).collect();
    first.insert(7, "{not json".into());
    export_file(dir, "order", 1, &first);
    let mut second: Vec<String> = (half..rows).map(&mut order).collect();
    second.push(r#"{"name":"no id"}"#.into());
    export_file(dir, "order", 2, &second);
    let customers: Vec<String> =
        (0..100).map(|i| serde_json::json!({"id": format!("c{i}"), "name": "Ada"}).to_string()).collect();
    export_file(dir, "customer", 3, &customers);
    expected
}

async fn destination(url: &str, hq: &common::setup::Hq) -> eds::drain::Destination {
    let mut dest = eds::drain::parse_destination(url).unwrap().unwrap();
    let source = Arc::new(eds::registry::HqSchemas::new(&hq.url).unwrap());
    dest.registry = Some(Arc::new(eds::registry::Registry::new(source, None)));
    dest
}

async fn check(dest: &eds::drain::Destination, files: &[ExportFile], rows: u32, fresh: bool) {
    let tables: BTreeSet<String> = ["order".to_owned(), "customer".to_owned()].into();
    let versions: HashMap<String, String> =
        [("order".to_owned(), "fff000111".to_owned()), ("customer".to_owned(), "fff000111".to_owned())].into();
    let loaded = load(dest, files, &tables, &versions, fresh, &|_, _| {}).await.unwrap();
    assert_eq!(loaded.rows["order"], u64::from(rows));
    assert_eq!(loaded.rows["customer"], 100);
    let rejected: Vec<(String, u64)> = loaded
        .rejected
        .iter()
        .map(|(p, l, _)| (p.file_name().unwrap().to_string_lossy().split('-').nth(5).unwrap().to_owned(), *l))
        .collect();
    assert_eq!(
        rejected,
        [("order".to_owned(), 8), ("order".to_owned(), u64::from(rows - rows / 2 + 1))],
        "{:?}",
        loaded.rejected
    );
    assert!(
        loaded.rejected[0].2.contains("not JSON") && loaded.rejected[1].2.contains("no id"),
        "{:?}",
        loaded.rejected
    );
    // Again: the same rows, upserted (into tables that are not fresh any more, even when the
    // load is told they are).
    let again = load(dest, files, &tables, &versions, fresh, &|_, _| {}).await.unwrap();
    assert_eq!(again.rows, loaded.rows);
}

/// Loads the export into a new PostgreSQL schema (`fresh` as given) and checks it; every row of
/// both tables as text, sorted.
async fn load_into_postgresql(fresh: bool) -> Vec<String> {
    let hq = common::setup::Hq::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rows = 20_000;
    let expected = export(dir.path(), rows);
    let files = list(dir.path()).unwrap();
    assert_eq!(files.len(), 3);

    let schema = format!("import_{}", common::unique_suffix());
    let mut admin = sqlx::PgConnection::connect(PG).await.unwrap();
    admin.execute(format!("CREATE SCHEMA \"{schema}\"").as_str()).await.unwrap();
    let url = format!("{PG}?name=pg&options=-c%20search_path%3D{schema}");
    let dest = destination(&url, &hq).await;
    check(&dest, &files, rows, fresh).await;
    let got: Vec<(String, String)> =
        sqlx::query_as(&format!("SELECT id, name FROM \"{schema}\".\"order\"")).fetch_all(&mut admin).await.unwrap();
    let got: BTreeMap<String, String> = got.into_iter().collect();
    assert_eq!(got, expected, "every order row, every value as in the file");
    let mut all = Vec::new();
    for table in ["order", "customer"] {
        let sql = format!("SELECT '{table}' || t::text FROM \"{schema}\".\"{table}\" t ORDER BY 1");
        all.extend(sqlx::query_scalar::<_, String>(&sql).fetch_all(&mut admin).await.unwrap());
    }
    admin.execute(format!("DROP SCHEMA \"{schema}\" CASCADE").as_str()).await.unwrap();
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_loads_into_postgresql_row_for_row() {
    load_into_postgresql(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_into_fresh_postgresql_tables_leaves_what_the_upserts_leave() {
    let (plain, fresh) = tokio::join!(load_into_postgresql(false), load_into_postgresql(true));
    assert_eq!(plain.len(), 20_100);
    assert!(plain == fresh, "the two loads differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_loads_into_mariadb_row_for_row() {
    let hq = common::setup::Hq::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rows = 20_000;
    let expected = export(dir.path(), rows);
    let files = list(dir.path()).unwrap();

    let db = format!("import_{}", common::unique_suffix());
    let mut admin = sqlx::MySqlConnection::connect(MY).await.unwrap();
    admin.execute(format!("CREATE DATABASE `{db}`").as_str()).await.unwrap();
    let url = format!("mysql://root@127.0.0.1:3306/{db}?name=my");
    let dest = destination(&url, &hq).await;
    check(&dest, &files, rows, true).await;
    let got: Vec<(String, String)> =
        sqlx::query_as(&format!("SELECT id, name FROM `{db}`.`order`")).fetch_all(&mut admin).await.unwrap();
    let got: BTreeMap<String, String> = got.into_iter().collect();
    assert_eq!(got, expected, "every order row, every value as in the file");
    admin.execute(format!("DROP DATABASE `{db}`").as_str()).await.unwrap();
}

/// A driver that passes everything on to `inner`, counting the batches of encoded rows it wrote.
struct Counting {
    inner: Arc<dyn Driver>,
    copied: AtomicUsize,
    refused: AtomicUsize,
}

impl Driver for Counting {
    fn describe(&self) -> &'static Description {
        self.inner.describe()
    }
    fn limits(&self) -> Limits {
        self.inner.limits()
    }
    fn encoded_limits(&self) -> Limits {
        self.inner.encoded_limits()
    }
    fn test(&self) -> BoxFuture<'_, Result<(), DriverError>> {
        self.inner.test()
    }
    fn write<'a>(&'a self, batch: Batch<'a>) -> BoxFuture<'a, Result<(), DriverError>> {
        self.inner.write(batch)
    }
    fn write_fresh<'a>(&'a self, batch: Batch<'a>) -> BoxFuture<'a, Result<(), DriverError>> {
        self.inner.write_fresh(batch)
    }
    fn fresh_encoder(&self, schema: &Schema) -> Option<Box<dyn FreshEncoder>> {
        self.inner.fresh_encoder(schema)
    }
    fn write_encoded<'a>(&'a self, schema: &'a Schema, data: &'a [u8]) -> BoxFuture<'a, Result<bool, DriverError>> {
        Box::pin(async move {
            let r = self.inner.write_encoded(schema, data).await;
            let counter = if matches!(r, Ok(true)) { &self.copied } else { &self.refused };
            counter.fetch_add(1, Ordering::SeqCst);
            r
        })
    }
    fn ensure_schema<'a>(&'a self, schema: &'a Schema) -> BoxFuture<'a, Result<(), DriverError>> {
        self.inner.ensure_schema(schema)
    }
    fn drop_table<'a>(&'a self, table: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        self.inner.drop_table(table)
    }
}

/// Into fresh PostgreSQL tables rows go in bulk, encoded without events; a batch PostgreSQL
/// refuses that way (an id that came before, in another file; a value it refuses) is written as
/// events, where the later row wins and a refused row is reported by its line as in the event way
/// — the table ends as an upsert load leaves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_load_writes_encoded_rows_and_falls_back_to_events_for_a_repeated_id() {
    let hq = common::setup::Hq::start().await;
    let dir = tempfile::tempdir().unwrap();
    let row = |i: u32, name: &str| serde_json::json!({"id": format!("o{i}"), "name": name}).to_string();
    // PostgreSQL refuses the NUL byte of one row (line 8): reported by its line like any row.
    let mut first: Vec<String> =
        (0..3_000).map(|i| row(i, &HOSTILE[i as usize % HOSTILE.len()].replace('\0', ""))).collect();
    first[7] = row(7, "nul \0 byte");
    let mut second: Vec<String> = (3_000..6_000).map(|i| row(i, "second file")).collect();
    second.insert(10, row(5, "o5 again, later"));
    second.insert(20, r#"{"name":"no id"}"#.to_owned());
    export_file(dir.path(), "order", 1, &first);
    export_file(dir.path(), "order", 2, &second);
    let files = list(dir.path()).unwrap();
    let tables: BTreeSet<String> = ["order".to_owned()].into();
    let versions: HashMap<String, String> = [("order".to_owned(), "fff000111".to_owned())].into();

    let mut admin = sqlx::PgConnection::connect(PG).await.unwrap();
    let mut contents = Vec::new();
    let mut counts = Vec::new();
    for fresh in [true, false] {
        let schema = format!("import_enc_{}", common::unique_suffix());
        admin.execute(format!("CREATE SCHEMA \"{schema}\"").as_str()).await.unwrap();
        let mut dest = destination(&format!("{PG}?name=pg&options=-c%20search_path%3D{schema}"), &hq).await;
        let counting = Arc::new(Counting { inner: dest.driver.clone(), copied: 0.into(), refused: 0.into() });
        dest.driver = counting.clone();
        let loaded = load(&dest, &files, &tables, &versions, fresh, &|_, _| {}).await.unwrap();
        assert_eq!(loaded.rows["order"], 6_000, "fresh {fresh}");
        let mut rejected: Vec<(u64, &str)> = loaded.rejected.iter().map(|r| (r.1, r.2.as_str())).collect();
        rejected.sort();
        assert_eq!(rejected.iter().map(|r| r.0).collect::<Vec<_>>(), [8, 21], "fresh {fresh}: {rejected:?}");
        assert!(rejected[0].1.contains("0x00") && rejected[1].1.contains("no id"), "{rejected:?}");
        let sql = format!("SELECT t::text FROM \"{schema}\".\"order\" t ORDER BY 1");
        contents.push(sqlx::query_scalar::<_, String>(&sql).fetch_all(&mut admin).await.unwrap());
        let sql = format!("SELECT name FROM \"{schema}\".\"order\" WHERE id = 'o5'");
        let o5: String = sqlx::query_scalar(&sql).fetch_one(&mut admin).await.unwrap();
        assert_eq!(o5, "o5 again, later", "fresh {fresh}");
        counts.push((counting.copied.load(Ordering::SeqCst), counting.refused.load(Ordering::SeqCst)));
        admin.execute(format!("DROP SCHEMA \"{schema}\" CASCADE").as_str()).await.unwrap();
    }
    assert_eq!(contents[0].len(), 5_999);
    assert!(contents[0] == contents[1], "the fresh load and the upsert load differ");
    let (copied, refused) = counts[0];
    assert!(copied >= 1, "no batch went in bulk: {counts:?}");
    assert_eq!(refused, 1, "only the batch with the repeated id is refused in bulk: {counts:?}");
    assert_eq!(counts[1], (0, 0), "a load into tables that are not fresh never writes in bulk");
}

/// Into fresh Snowflake tables rows go through a stage: gzipped CSV uploaded as the `PUT`
/// answer says (fakesnow: a GCS-style presigned URL) and one `COPY INTO` per batch. A repeated id
/// (Snowflake enforces no primary key) and rows the encoder cannot be sure of are merged as
/// events instead, after the batch before them — the table ends as a MERGE load leaves it.
#[cfg(feature = "snowflake")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_load_into_snowflake_goes_through_a_stage_and_leaves_what_merges_leave() {
    use eds_drivers::snowflake::fakesnow::Fakesnow;
    let hq = common::setup::Hq::start().await;
    let fake = Fakesnow::start();
    let dir = tempfile::tempdir().unwrap();
    let row = |i: u32, name: &str| {
        serde_json::json!({"id": format!("o{i}"), "name": name, "updatedDate": "2026-12-01T12:00:00.123Z", "age": f64::from(i) / 4.0})
            .to_string()
    };
    let first: Vec<String> =
        (0..400).map(|i| row(i, &format!("{} #{i}", HOSTILE[i as usize % HOSTILE.len()]))).collect();
    let mut second: Vec<String> = (400..800).map(|i| row(i, "second file")).collect();
    second.insert(10, row(5, "o5 again, later"));
    second.insert(20, r#"{"name":"no id"}"#.to_owned());
    second.insert(30, r#"{"id":"null-looking","name":"\\N"}"#.to_owned());
    export_file(dir.path(), "order", 1, &first);
    export_file(dir.path(), "order", 2, &second);
    let files = list(dir.path()).unwrap();
    let tables: BTreeSet<String> = ["order".to_owned()].into();
    let versions: HashMap<String, String> = [("order".to_owned(), "fff000111".to_owned())].into();

    let mut contents = Vec::new();
    let mut counts = Vec::new();
    for (fresh, db) in [(true, "BULK"), (false, "MERGED")] {
        let mut dest = destination(&format!("{}&name=sf", fake.url(db, "PUBLIC")), &hq).await;
        let counting = Arc::new(Counting { inner: dest.driver.clone(), copied: 0.into(), refused: 0.into() });
        dest.driver = counting.clone();
        let loaded = load(&dest, &files, &tables, &versions, fresh, &|_, _| {}).await.unwrap();
        let rejected: Vec<u64> = loaded.rejected.iter().map(|r| r.1).collect();
        assert_eq!(rejected, [21], "fresh {fresh}: {:?}", loaded.rejected);
        contents
            .push((loaded.rows["order"], fake.rows(db, "PUBLIC", r#"SELECT * FROM "order" ORDER BY "id""#).unwrap()));
        let o5 = fake.rows(db, "PUBLIC", r#"SELECT "name" FROM "order" WHERE "id" = 'o5'"#).unwrap();
        assert_eq!(o5, [[serde_json::json!("o5 again, later")]], "fresh {fresh}");
        let null_looking =
            fake.rows(db, "PUBLIC", r#"SELECT "name" FROM "order" WHERE "id" = 'null-looking'"#).unwrap();
        assert_eq!(null_looking, [[serde_json::json!("\\N")]], "fresh {fresh}: a text that reads as NULL in CSV");
        counts.push((counting.copied.load(Ordering::SeqCst), counting.refused.load(Ordering::SeqCst)));
    }
    assert_eq!(contents[0].1.len(), 801, "one row per id");
    assert!(contents[0] == contents[1], "the stage load and the MERGE load differ");
    let (copied, refused) = counts[0];
    assert!(copied >= 2, "the batches went through the stage: {counts:?}");
    assert_eq!(refused, 0, "repeated ids are merged, not refused in bulk: {counts:?}");
    assert_eq!(counts[1], (0, 0), "a load into tables that are not fresh never goes through a stage");
}
