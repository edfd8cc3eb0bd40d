//! One batch's transaction on a pooled sqlx connection (PostgreSQL, MySQL/MariaDB), ended
//! explicitly on every path.
//!
//! Invariant: a connection goes back to the pool only after its transaction was committed or
//! rolled back *on the server*. sqlx's own `Transaction` only queues its ROLLBACK when dropped and
//! sends it with the next use of the connection; until then the idle pooled connection keeps the
//! transaction open and its locks held, so the user's DDL on that table blocks — forever if the
//! destination has stopped. Here a failed batch is rolled back before `write` returns, and a
//! connection whose transaction could not be ended (the rollback failed, or the write was
//! cancelled half-way by a deadline) is closed instead of returned: closing ends the transaction.

use sqlx::pool::PoolConnection;
use sqlx::{Connection, Database, Executor, Pool};
use std::time::Duration;

/// How long an explicit ROLLBACK may take before the connection is given up (closed) instead.
const ROLLBACK_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the direct connection attempt that explains a pool timeout may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection from `pool`. When the pool gives up waiting it says only "pool timed out", which
/// hides why (connection refused, authentication failed…): one direct attempt with `options`
/// then returns the real cause.
pub(crate) async fn acquire<DB: Database>(
    pool: &Pool<DB>,
    options: &<DB::Connection as Connection>::Options,
) -> Result<PoolConnection<DB>, sqlx::Error> {
    match pool.acquire().await {
        Err(sqlx::Error::PoolTimedOut) => {
            match tokio::time::timeout(PROBE_TIMEOUT, DB::Connection::connect_with(options)).await {
                Ok(Err(cause)) => Err(cause),
                Ok(Ok(conn)) => {
                    let _ = conn.close().await;
                    Err(sqlx::Error::PoolTimedOut)
                }
                Err(_) => Err(sqlx::Error::PoolTimedOut),
            }
        }
        other => other,
    }
}

/// A pooled connection inside one open transaction. Dropped while its transaction may still be
/// open (the write was cancelled, or neither COMMIT nor ROLLBACK got through), its connection is
/// taken out of the pool and closed at once — the socket is closed by the drop itself, without
/// waiting for a task of the runtime — so the server ends the transaction.
pub(crate) struct BatchTx<DB: Database> {
    conn: Option<PoolConnection<DB>>,
    /// Whether the server-side transaction is known to be over (committed or rolled back).
    settled: bool,
}

impl<DB: Database> Drop for BatchTx<DB> {
    fn drop(&mut self) {
        if let (false, Some(conn)) = (self.settled, self.conn.take()) {
            drop(conn.detach());
        }
    }
}

impl<DB: Database> BatchTx<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    /// Take a connection from `pool` (see [`acquire`]) and start a transaction on it.
    pub(crate) async fn begin(
        pool: &Pool<DB>,
        options: &<DB::Connection as Connection>::Options,
    ) -> Result<BatchTx<DB>, sqlx::Error> {
        let conn = acquire(pool, options).await?;
        // From here on a failure or a cancellation leaves a transaction that may be open.
        let mut tx = BatchTx { conn: Some(conn), settled: false };
        tx.run("BEGIN").await?;
        Ok(tx)
    }

    /// The connection, for the batch's statements.
    pub(crate) fn conn(&mut self) -> &mut DB::Connection {
        match self.conn.as_mut() {
            Some(conn) => conn,
            // Only `Drop` takes it.
            None => unreachable!("a BatchTx's connection is taken only when it is dropped"),
        }
    }

    async fn run(&mut self, sql: &'static str) -> Result<(), sqlx::Error> {
        self.conn().execute(sql).await.map(|_| ())
    }

    /// End the transaction by the batch's outcome: COMMIT after `Ok`, ROLLBACK after `Err`
    /// (whose error is returned unchanged). A COMMIT that fails is reported through `commit_error`.
    /// When neither statement gets through, the connection is closed.
    pub(crate) async fn finish<E>(
        mut self,
        outcome: Result<(), E>,
        commit_error: impl FnOnce(sqlx::Error) -> E,
    ) -> Result<(), E> {
        match outcome {
            Ok(()) => match self.run("COMMIT").await {
                Ok(()) => {
                    self.settled = true;
                    Ok(())
                }
                Err(e) => {
                    // A COMMIT the server answered with an error (a deferred constraint, a
                    // serialization failure) has ended the transaction; anything else leaves the
                    // connection in doubt, and it is closed.
                    if matches!(e, sqlx::Error::Database(_)) {
                        self.rollback().await;
                    }
                    Err(commit_error(e))
                }
            },
            Err(e) => {
                self.rollback().await;
                Err(e)
            }
        }
    }

    /// ROLLBACK within [`ROLLBACK_TIMEOUT`]; the transaction counts as settled when it got through.
    async fn rollback(&mut self) {
        let rollback = self.run("ROLLBACK");
        self.settled = matches!(tokio::time::timeout(ROLLBACK_TIMEOUT, rollback).await, Ok(Ok(())));
    }
}
