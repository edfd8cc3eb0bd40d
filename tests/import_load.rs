//! Loading a bulk export's files into PostgreSQL and MariaDB through the drain's write path: row
//! counts and contents equal the files (hostile values included), a bad line is reported with its
//! file and line without stopping the rest, and loading again changes nothing.
#![allow(clippy::unwrap_used)]

mod common;

use common::events::HOSTILE;
use eds::import::files::{list, ExportFile};
use eds::import::load::load;
use sqlx::{Connection, Executor};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::Path;
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
