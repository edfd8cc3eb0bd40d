//! What the end-to-end benchmarks (latency, catch-up, restart) set up around `eds server`: the
//! environment line they print, the mock HQ's schema routes, and a PostgreSQL schema of their own.
#![allow(dead_code, clippy::unwrap_used)]

use super::hq as testing;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor, PgPool};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

/// The PostgreSQL the benchmarks use.
pub const PG: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Prints the benchmark's environment: where its files are, the NATS server, the CPUs.
pub fn print_env(base: &Path, nats_bin: &Path, shared_by: &str) {
    println!(
        "  env: dir {} — {}; {}; {} cpus{shared_by}",
        base.display(),
        super::describe_fs(base),
        super::procs::nats_version(nats_bin),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
}

/// The mock HQ's schema routes on a free port: its URL and its task.
pub async fn mock_hq() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hq = format!("http://{}", listener.local_addr().unwrap());
    let routes: testing::Routes = Arc::new(testing::e2e_routes);
    (hq, tokio::spawn(testing::serve_schemas(listener, routes)))
}

/// A pool on `schema` (dropped and created again, empty) of the benchmarks' PostgreSQL.
pub async fn pg_schema(schema: &str) -> PgPool {
    let opts = PgConnectOptions::from_str(PG).unwrap().options([("search_path", schema)]);
    let pool = PgPoolOptions::new().max_connections(2).connect_with(opts).await.expect("PostgreSQL at 127.0.0.1:5432");
    pool.execute(format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}").as_str()).await.unwrap();
    pool
}
