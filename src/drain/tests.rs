//! The drain against drivers in memory: rejections, the backstop, the state path.

use super::deliver::BACKSTOP_ATTEMPTS;
use super::*;
use crate::registry::Registry;
use eds_drivers::driver::{Batch, Driver, Kind};
use eds_drivers::event::Row;
use eds_drivers::schema::Schema;
use eds_wal::Wal;
use std::collections::HashMap;

mod rejection_tests {
    use super::*;
    use crate::dlq::DeadLetters;
    use eds_drivers::driver::{Description, DriverError, Limits};
    use std::sync::Mutex;

    static PICKY: Description = Description {
        name: "Picky",
        scheme: "picky",
        aliases: &[],
        example_url: "picky://x",
        help: "rejects rows whose key starts with bad",
        fields: &[],
        kind: Kind::Stream,
        needs_schema: false,
    };

    /// What the double refuses.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Refuse {
        /// Batches holding a key starting with "bad": rejected.
        Bad,
        /// Every batch: rejected.
        All,
        /// Batches holding a key starting with "bad": an error the driver cannot place.
        BadUnplaced,
    }

    /// Refuses (atomically, like a SQL transaction) what its [`Refuse`] says; writes the rest.
    struct Picky {
        written: Mutex<Vec<u64>>,
        refuse: Refuse,
        attempts: Mutex<usize>,
    }

    impl Driver for Picky {
        fn describe(&self) -> &'static Description {
            &PICKY
        }
        fn limits(&self) -> Limits {
            Limits { max_rows: 8, max_bytes: 1 << 20, max_bind_params: usize::MAX }
        }
        fn test(&self) -> eds_drivers::driver::BoxFuture<'_, Result<(), DriverError>> {
            Box::pin(async { Ok(()) })
        }
        fn write<'a>(&'a self, batch: Batch<'a>) -> eds_drivers::driver::BoxFuture<'a, Result<(), DriverError>> {
            Box::pin(async move {
                let Batch::Events(events) = batch else { unreachable!() };
                *self.attempts.lock().unwrap() += 1;
                let bad = events.iter().any(|d| d.event.primary_key().starts_with("bad"));
                match self.refuse {
                    Refuse::All => {
                        return Err(DriverError::new(ErrorClass::Rejected, "value out of range for column \"number\""))
                    }
                    Refuse::Bad if bad => {
                        return Err(DriverError::new(ErrorClass::Rejected, "value out of range for column \"number\""))
                    }
                    Refuse::BadUnplaced if bad => {
                        return Err(DriverError::new(ErrorClass::Unknown, "XX000: unexpected internal error"))
                    }
                    _ => {}
                }
                self.written.lock().unwrap().extend(events.iter().map(|d| d.lsn));
                Ok(())
            })
        }
    }

    /// The `picky` destination over `driver`, dead letters under `dlq_dir` when given, retrying
    /// within milliseconds.
    fn picky(driver: &Arc<Picky>, dlq_dir: Option<&std::path::Path>) -> Destination {
        Destination {
            name: "picky".into(),
            driver: driver.clone(),
            start: Start::Oldest,
            dead_letters: dlq_dir.map(|d| DeadLetters::open_for_destination(d, "picky").unwrap()),
            overflow: Overflow::Block,
            registry: None,
            skip_before: HashMap::new(),
            unfinished_import: None,
            validator: None,
            retry: Retry { first: Duration::from_millis(1), max: Duration::from_millis(4) },
        }
    }

    async fn run_with(
        refuse: Refuse,
        undecodable: &[u64],
    ) -> (Vec<u64>, Vec<crate::dlq::Listed>, serde_json::Value, Vec<u64>) {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path().join("wal"), eds_wal::Options::default()).unwrap();
        let records: Vec<Vec<u8>> = (1..=20u64)
            .map(|n| {
                let key = if [4, 9, 17].contains(&n) { format!("bad{n}") } else { format!("k{n}") };
                // Ingest's validation does not look at `timestamp`; drivers' decoding does.
                let ts = if undecodable.contains(&n) { r#""soon""#.to_string() } else { n.to_string() };
                let payload = format!(
                    r#"{{"operation":"INSERT","table":"t","key":["{key}"],"after":{{"id":"{key}"}},"timestamp":{ts}}}"#
                );
                record::Envelope {
                    kind: EnvelopeKind::Event,
                    stream_seq: n,
                    received_at: 1,
                    subject: "dbchange.t.INSERT.c.l.PUBLIC.1".into(),
                    msg_id: "".into(),
                    reason: "".into(),
                    payload: payload.as_bytes(),
                }
                .encode()
            })
            .collect();
        wal.append(&records).unwrap();
        let state = Arc::new(ServerState::new(crate::metrics::Metrics::new().unwrap(), wal.clone(), "test".into()));
        let driver = Arc::new(Picky { written: Mutex::new(Vec::new()), refuse, attempts: Mutex::new(0) });
        let dest = picky(&driver, Some(dir.path()));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(dest, state.clone(), stop_rx));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = state.status_json();
            let d = &s["destinations"][0];
            if d["cursor"] == 20 || d["state"] == "stopped" {
                break;
            }
            assert!(Instant::now() < deadline, "drain made no progress: {s}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let status = state.status_json();
        stop.send(true).unwrap();
        task.await.unwrap();
        let mut written = driver.written.lock().unwrap().clone();
        written.sort_unstable();
        let letters = crate::dlq::list_at(&dir.path().join("dlq").join("picky")).unwrap();
        let positions = state.destination_positions().into_iter().map(|(_, p)| p).collect();
        (written, letters, status, positions)
    }

    /// A pause that lands while the drain waits for records holds what that wait returns: once the
    /// destination shows "paused", nothing was delivered (the read in flight used to deliver one
    /// more batch after the operator was told it was paused).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pause_holds_the_batch_a_waiting_read_returns() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path().join("wal"), eds_wal::Options::default()).unwrap();
        let state = Arc::new(ServerState::new(crate::metrics::Metrics::new().unwrap(), wal.clone(), "test".into()));
        let driver = Arc::new(Picky { written: Mutex::new(Vec::new()), refuse: Refuse::Bad, attempts: Mutex::new(0) });
        let dest = picky(&driver, None);
        crate::drain::ensure_cursor(&wal, "picky", Start::Oldest).unwrap();
        crate::drain::register(&state, std::slice::from_ref(&dest));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(dest, state.clone(), stop_rx));
        async fn until(
            state: &ServerState,
            what: &str,
            done: impl Fn(&serde_json::Value) -> bool,
        ) -> serde_json::Value {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let s = state.status_json();
                if done(&s["destinations"][0]) {
                    return s;
                }
                assert!(Instant::now() < deadline, "timed out waiting for {what}: {s}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        // Idle: the drain waits for records (up to 200 ms per wait) when the pause lands.
        until(&state, "the drain to idle", |d| d["state"] == "idle").await;
        // Not a wait for anything: it places the pause inside the drain's next 200 ms wait for
        // records (the drain marks itself idle just before it waits again), the window at issue.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(state.set_paused("picky", true));
        let payload = br#"{"operation":"INSERT","table":"t","key":["k1"],"after":{"id":"k1"},"timestamp":1}"#;
        let record = record::Envelope {
            kind: EnvelopeKind::Event,
            stream_seq: 1,
            received_at: 1,
            subject: "dbchange.t.INSERT.c.l.PUBLIC.1".into(),
            msg_id: "".into(),
            reason: "".into(),
            payload,
        }
        .encode();
        wal.append(&[record]).unwrap();
        let s = until(&state, "the destination to show it is paused", |d| d["state"] == "paused").await;
        assert!(driver.written.lock().unwrap().is_empty(), "delivered while paused: {s}");
        assert_eq!(s["destinations"][0]["lag_records"], 1, "{s}");
        assert!(state.set_paused("picky", false));
        until(&state, "the event after the resume", |d| d["cursor"] == 1).await;
        assert_eq!(*driver.written.lock().unwrap(), vec![1]);
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    /// HQ's import holds a destination: `pausing` until the drain, between batches, says
    /// `paused`; an operator's or HQ's resume does not release it, the import's release does.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hold_for_an_import_reports_paused_between_batches_and_outlasts_a_resume() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path().join("wal"), eds_wal::Options::default()).unwrap();
        let state = Arc::new(ServerState::new(crate::metrics::Metrics::new().unwrap(), wal.clone(), "test".into()));
        let driver = Arc::new(Picky { written: Mutex::new(Vec::new()), refuse: Refuse::Bad, attempts: Mutex::new(0) });
        let dest = picky(&driver, None);
        crate::drain::ensure_cursor(&wal, "picky", Start::Oldest).unwrap();
        crate::drain::register(&state, std::slice::from_ref(&dest));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(dest, state.clone(), stop_rx));
        let until = |what: &'static str, want: &'static str| {
            let state = state.clone();
            async move {
                let deadline = Instant::now() + Duration::from_secs(10);
                while state.destination_state("picky") != Some(want) {
                    assert!(Instant::now() < deadline, "timed out waiting for {what}: {}", state.status_json());
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        until("the drain to idle", "idle").await;
        assert!(state.hold_for_import("picky", true));
        assert!(!state.hold_for_import("nobody", true));
        until("the drain to pause", "paused").await;
        assert_eq!(state.status_json()["destinations"][0]["importing"], true);
        let payload = br#"{"operation":"INSERT","table":"t","key":["k1"],"after":{"id":"k1"},"timestamp":1}"#;
        let record = record::Envelope {
            kind: EnvelopeKind::Event,
            stream_seq: 1,
            received_at: 1,
            subject: "dbchange.t.INSERT.c.l.PUBLIC.1".into(),
            msg_id: "".into(),
            reason: "".into(),
            payload,
        }
        .encode();
        wal.append(&[record]).unwrap();
        // Resumes by an operator and by HQ leave the import's hold in place.
        state.set_paused("picky", false);
        state.set_hq_paused(true);
        state.set_hq_paused(false);
        assert!(state.is_paused("picky"));
        assert!(state.hold_for_import("picky", false));
        let deadline = Instant::now() + Duration::from_secs(10);
        while driver.written.lock().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "nothing delivered after the release: {}", state.status_json());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(*driver.written.lock().unwrap(), vec![1]);
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    /// A destination an import dropped and did not finish loading starts held: nothing is
    /// delivered into its half-loaded tables until the hold is released.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unfinished_import_holds_the_drain_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path().join("wal"), eds_wal::Options::default()).unwrap();
        let state = Arc::new(ServerState::new(crate::metrics::Metrics::new().unwrap(), wal.clone(), "test".into()));
        let driver = Arc::new(Picky { written: Mutex::new(Vec::new()), refuse: Refuse::Bad, attempts: Mutex::new(0) });
        let payload = br#"{"operation":"INSERT","table":"t","key":["k1"],"after":{"id":"k1"},"timestamp":1}"#;
        let record = record::Envelope {
            kind: EnvelopeKind::Event,
            stream_seq: 1,
            received_at: 1,
            subject: "dbchange.t.INSERT.c.l.PUBLIC.1".into(),
            msg_id: "".into(),
            reason: "".into(),
            payload,
        }
        .encode();
        wal.append(&[record]).unwrap();
        let mut dest = picky(&driver, None);
        dest.unfinished_import = Some("an import that began at … did not finish".into());
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(dest, state.clone(), stop_rx));
        let deadline = Instant::now() + Duration::from_secs(10);
        while state.destination_state("picky") != Some("paused") {
            assert!(Instant::now() < deadline, "the drain never said paused: {}", state.status_json());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(state.status_json()["destinations"][0]["importing"], true);
        assert!(driver.written.lock().unwrap().is_empty(), "nothing delivered into a half-loaded destination");
        assert!(state.hold_for_import("picky", false));
        let deadline = Instant::now() + Duration::from_secs(10);
        while driver.written.lock().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "nothing delivered after the release: {}", state.status_json());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(*driver.written.lock().unwrap(), vec![1]);
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rejected_event_is_isolated_and_dead_lettered_the_rest_delivered() {
        let (written, letters, status, positions) = run_with(Refuse::Bad, &[]).await;
        let good: Vec<u64> = (1..=20).filter(|n| ![4, 9, 17].contains(n)).collect();
        assert_eq!(written, good, "every other event exactly once");
        let dead: Vec<u64> = letters.iter().map(|l| l.stream_seq).collect();
        assert_eq!(dead, vec![4, 9, 17]);
        assert!(letters
            .iter()
            .all(|l| l.reason == "destination picky rejected it: value out of range for column \"number\""));
        assert_eq!(positions, vec![20], "the cursor passes dead letters: {status}");
        assert_eq!(status["destinations"][0]["delivered"], 17);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_event_drivers_cannot_decode_is_dead_lettered_not_dropped() {
        let (written, letters, _, positions) = run_with(Refuse::Bad, &[2]).await;
        assert!(!written.contains(&2));
        let undecodable: Vec<&crate::dlq::Listed> = letters.iter().filter(|l| l.stream_seq == 2).collect();
        assert_eq!(undecodable.len(), 1);
        assert!(undecodable[0].reason.contains("drivers cannot decode it"), "{}", undecodable[0].reason);
        assert_eq!(positions, vec![20]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_systematic_rejection_stops_the_destination_instead_of_dead_lettering_everything() {
        let (written, letters, status, positions) = run_with(Refuse::All, &[]).await;
        assert!(written.is_empty());
        // The first batch (8 < 10 in a row) is dead-lettered; the second proves it systematic.
        assert_eq!(letters.len(), 8, "at most one batch below the threshold is dead-lettered");
        let d = &status["destinations"][0];
        assert_eq!(d["state"], "stopped", "{status}");
        assert!(d["last_error"].as_str().unwrap().contains("16 events in a row were rejected"), "{status}");
        assert_eq!(positions, vec![8], "the cursor stops before the batch that proved it");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_no_driver_can_decode_count_towards_the_stop() {
        let all: Vec<u64> = (1..=20).collect();
        let (written, letters, status, positions) = run_with(Refuse::Bad, &all).await;
        assert!(written.is_empty());
        assert_eq!(letters.len(), 8, "the first batch is dead-lettered, the second proves it systematic");
        let d = &status["destinations"][0];
        assert_eq!(d["state"], "stopped", "{status}");
        assert!(d["last_error"].as_str().unwrap().contains("drivers cannot decode it"), "{status}");
        assert_eq!(positions, vec![8]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_failing_alone_with_an_unplaced_error_is_dead_lettered_in_the_end() {
        let (written, letters, status, positions) = run_with(Refuse::BadUnplaced, &[]).await;
        let good: Vec<u64> = (1..=20).filter(|n| ![4, 9, 17].contains(n)).collect();
        let mut once = written.clone();
        once.dedup();
        assert_eq!(once, good, "every other event delivered: {status}");
        let dead: Vec<(u64, &str)> = letters.iter().map(|l| (l.stream_seq, l.reason.as_str())).collect();
        assert_eq!(dead.len(), 3, "{dead:?}");
        for (seq, reason) in dead {
            assert!([4, 9, 17].contains(&seq));
            assert!(
                reason.contains("failed alone 8 times in a row with the same error: XX000: unexpected internal error"),
                "{reason}"
            );
        }
        assert_eq!(positions, vec![20], "{status}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unplaced_error_on_every_change_blames_none_of_them() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path().join("wal"), eds_wal::Options::default()).unwrap();
        let records: Vec<Vec<u8>> = (1..=16u64)
            .map(|n| {
                let payload =
                    format!(r#"{{"operation":"INSERT","table":"t","key":["bad{n}"],"after":{{"id":"bad{n}"}}}}"#);
                let env = record::Envelope {
                    kind: EnvelopeKind::Event,
                    stream_seq: n,
                    received_at: 1,
                    subject: "dbchange.t.INSERT.c.l.PUBLIC.1".into(),
                    msg_id: "".into(),
                    reason: "".into(),
                    payload: payload.as_bytes(),
                };
                env.encode()
            })
            .collect();
        wal.append(&records).unwrap();
        let state = Arc::new(ServerState::new(crate::metrics::Metrics::new().unwrap(), wal.clone(), "test".into()));
        let driver =
            Arc::new(Picky { written: Mutex::new(Vec::new()), refuse: Refuse::BadUnplaced, attempts: Mutex::new(0) });
        let dest = picky(&driver, Some(dir.path()));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(dest, state.clone(), stop_rx));
        // Far more attempts than the backstop needs: still nothing dead-lettered, cursor held.
        let deadline = Instant::now() + Duration::from_secs(10);
        while *driver.attempts.lock().unwrap() < 20 * BACKSTOP_ATTEMPTS as usize {
            assert!(Instant::now() < deadline, "too few attempts: {}", state.status_json());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let status = state.status_json();
        stop.send(true).unwrap();
        task.await.unwrap();
        assert_eq!(status["destinations"][0]["state"], "retrying", "{status}");
        assert!(status["destinations"][0]["last_error"].as_str().unwrap().contains("XX000"), "{status}");
        assert_eq!(state.destination_positions(), vec![("picky".to_owned(), 0)]);
        let letters = crate::dlq::list_at(&dir.path().join("dlq").join("picky")).unwrap();
        assert!(letters.is_empty(), "{letters:?}");
    }
}

mod state_tests {
    use super::*;
    use crate::dlq::DeadLetters;
    use crate::registry::{SchemaSource, SourceError};
    use eds_drivers::driver::{BoxFuture, Description, Limits};
    use eds_drivers::event::Folded;
    use eds_drivers::schema::LatestSchemas;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    static MEMORY: Description = Description {
        name: "Memory",
        scheme: "memory",
        aliases: &[],
        example_url: "memory://x",
        help: "a table store in memory; rejects rows whose n is 13",
        fields: &[],
        kind: Kind::State,
        needs_schema: true,
    };

    /// Tables in memory: (table, primary key) → row. Rejects, atomically, a batch holding n = 13.
    #[derive(Default)]
    struct Memory {
        rows: Mutex<BTreeMap<(String, String), Row>>,
        ensured: Mutex<Vec<(String, String)>>,
        writes: Mutex<usize>,
    }

    impl Driver for Memory {
        fn describe(&self) -> &'static Description {
            &MEMORY
        }
        fn limits(&self) -> Limits {
            Limits { max_rows: 100, max_bytes: 1 << 20, max_bind_params: usize::MAX }
        }
        fn test(&self) -> BoxFuture<'_, Result<(), DriverError>> {
            Box::pin(async { Ok(()) })
        }
        fn ensure_schema<'a>(&'a self, schema: &'a Schema) -> BoxFuture<'a, Result<(), DriverError>> {
            Box::pin(async move {
                let id = (schema.table().to_owned(), schema.model_version().to_owned());
                self.ensured.lock().unwrap().push(id);
                Ok(())
            })
        }
        fn write<'a>(&'a self, batch: Batch<'a>) -> BoxFuture<'a, Result<(), DriverError>> {
            Box::pin(async move {
                let Batch::Folded(changes) = batch else { unreachable!() };
                *self.writes.lock().unwrap() += 1;
                let bad = changes.iter().any(|c| match &c.change.change {
                    Folded::Upsert { row, .. } => row.get("n") == Some(&serde_json::json!(13)),
                    Folded::Delete { .. } => false,
                });
                if bad {
                    return Err(DriverError::new(ErrorClass::Rejected, "n must not be 13"));
                }
                let mut rows = self.rows.lock().unwrap();
                for c in changes {
                    let id = (c.change.table.clone(), c.change.primary_key.clone());
                    match &c.change.change {
                        Folded::Delete { .. } => {
                            rows.remove(&id);
                        }
                        Folded::Upsert { row, changed: None } => {
                            rows.insert(id, row.clone());
                        }
                        Folded::Upsert { row, changed: Some(cols) } => {
                            let r = rows.entry(id).or_insert_with(|| row.clone());
                            for c in cols {
                                if let Some(v) = row.get(c) {
                                    r.insert(c.clone(), v.clone());
                                }
                            }
                        }
                    }
                }
                Ok(())
            })
        }
    }

    /// Table `t` at v1 (id, n) and v2 (id, n, added); nothing else.
    struct Source;

    fn doc(version: &str) -> Schema {
        let mut props = serde_json::json!({"id": {"type": "string"}, "n": {"type": "integer", "nullable": true}});
        if version == "v2" {
            props["added"] = serde_json::json!({"type": "string", "nullable": true});
        }
        let d = serde_json::json!({"table": "t", "modelVersion": version, "primaryKeys": ["id"], "required": ["id"], "properties": props});
        Schema::from_json(d.to_string().as_bytes()).unwrap()
    }

    impl SchemaSource for Source {
        fn latest(&self) -> BoxFuture<'_, Result<LatestSchemas, SourceError>> {
            Box::pin(async {
                let d = serde_json::json!({"t": {"table": "t", "modelVersion": "v2", "primaryKeys": ["id"], "required": ["id"],
                    "properties": {"id": {"type": "string"}, "n": {"type": "integer", "nullable": true}, "added": {"type": "string", "nullable": true}}}});
                Ok(LatestSchemas::from_json(d.to_string().as_bytes()).unwrap())
            })
        }
        fn version<'a>(
            &'a self,
            object: &'a str,
            version: &'a str,
        ) -> BoxFuture<'a, Result<Option<Schema>, SourceError>> {
            Box::pin(async move { Ok((object == "t" && (version == "v1" || version == "v2")).then(|| doc(version))) })
        }
    }

    fn record(n: u64, payload: serde_json::Value) -> Vec<u8> {
        let payload = payload.to_string();
        record::Envelope {
            kind: EnvelopeKind::Event,
            stream_seq: n,
            received_at: 1,
            subject: "dbchange.t.INSERT.c.l.PUBLIC.1".into(),
            msg_id: "".into(),
            reason: "".into(),
            payload: payload.as_bytes(),
        }
        .encode()
    }

    /// Runs a drain to a [`Memory`] destination holding `rows` over `events` (stream sequences 1,
    /// 2, …) until its cursor passes them all. The driver and the dead letters then.
    async fn drain_to_memory(
        events: &[serde_json::Value],
        rows: &[(&str, serde_json::Value)],
        skip_before: HashMap<String, i64>,
    ) -> (Arc<Memory>, Vec<crate::dlq::Listed>) {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path().join("wal"), eds_wal::Options::default()).unwrap();
        let records: Vec<Vec<u8>> = events.iter().enumerate().map(|(i, e)| record(i as u64 + 1, e.clone())).collect();
        wal.append(&records).unwrap();
        let state = Arc::new(ServerState::new(crate::metrics::Metrics::new().unwrap(), wal.clone(), "test".into()));
        let driver = Arc::new(Memory::default());
        for (id, row) in rows {
            driver.rows.lock().unwrap().insert(("t".into(), (*id).into()), row.as_object().unwrap().clone());
        }
        let dest = Destination {
            name: "mem".into(),
            driver: driver.clone(),
            start: Start::Oldest,
            dead_letters: Some(DeadLetters::open_for_destination(dir.path(), "mem").unwrap()),
            overflow: Overflow::Block,
            registry: Some(Arc::new(Registry::new(Arc::new(Source), None))),
            skip_before,
            unfinished_import: None,
            validator: None,
            retry: Retry { first: Duration::from_millis(1), max: Duration::from_millis(4) },
        };
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(dest, state.clone(), stop_rx));
        let deadline = Instant::now() + Duration::from_secs(10);
        while state.destination_positions() != vec![("mem".to_owned(), events.len() as u64)] {
            assert!(Instant::now() < deadline, "drain made no progress: {}", state.status_json());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.send(true).unwrap();
        task.await.unwrap();
        let letters = crate::dlq::list_at(&dir.path().join("dlq").join("mem")).unwrap();
        (driver, letters)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn state_batches_are_cut_to_the_schema_folded_and_bad_rows_dead_lettered() {
        use serde_json::json;
        let ev = |op: &str, table: &str, v: &str, id: &str, after: serde_json::Value, ts: i64| {
            json!({"operation": op, "table": table, "modelVersion": v, "key": ["gcp-us-west1", id], "after": after,
                "before": {"id": id}, "diff": ["n"], "timestamp": ts})
        };
        let events = [
            ev("INSERT", "t", "v1", "a", json!({"id": "a", "n": 1, "unknown": "dropped"}), 100),
            ev("UPDATE", "t", "v1", "a", json!({"id": "a", "n": 2}), 101),
            ev("INSERT", "t", "v2", "b", json!({"id": "b", "n": 5, "added": "x"}), 102),
            ev("INSERT", "ghost", "v1", "g", json!({"id": "g"}), 103),
            ev("INSERT", "t", "v1", "bad", json!({"id": "bad", "n": 12}), 104),
            ev("UPDATE", "t", "v1", "bad", json!({"id": "bad", "n": 13}), 105),
            ev("INSERT", "t", "v1", "old", json!({"id": "old", "n": 0}), 50),
            ev("DELETE", "t", "v1", "c", json!(null), 106),
        ];
        let (driver, letters) =
            drain_to_memory(&events, &[("c", json!({}))], HashMap::from([("t".to_owned(), 60)])).await;
        let rows = driver.rows.lock().unwrap().clone();
        let row = |id: &str| rows.get(&("t".to_owned(), id.to_owned())).cloned();
        assert_eq!(row("a"), Some(json!({"id": "a", "n": 2}).as_object().unwrap().clone()), "folded, unknown dropped");
        assert_eq!(row("b"), Some(json!({"id": "b", "n": 5, "added": "x"}).as_object().unwrap().clone()));
        assert_eq!(row("bad"), None, "the rejected key's events are all dead-lettered");
        assert_eq!(row("old"), None, "older than the table's import: skipped");
        assert_eq!(row("c"), None, "deleted");
        assert_eq!(rows.len(), 2, "{rows:?}");
        let mut ensured = driver.ensured.lock().unwrap().clone();
        ensured.sort();
        assert_eq!(ensured, vec![("t".to_owned(), "v1".to_owned()), ("t".to_owned(), "v2".to_owned())]);
        let dead: Vec<(u64, bool)> =
            letters.iter().map(|l| (l.stream_seq, l.reason.contains("ghost") || l.reason.contains("13"))).collect();
        assert_eq!(dead, vec![(4, true), (5, true), (6, true)], "{letters:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_update_without_an_after_image_is_dead_lettered_never_written() {
        use serde_json::json;
        let before = json!({"id": "k", "n": 1});
        let ev = |op: &str, id: &str, after: Option<serde_json::Value>| {
            let mut e = json!({"operation": op, "table": "t", "modelVersion": "v1", "key": [id],
                "before": {"id": id, "n": 0}, "diff": ["n"]});
            if let Some(a) = after {
                e["after"] = a;
            }
            e
        };
        let events = [
            ev("UPDATE", "k", Some(json!(null))),
            ev("UPDATE", "k", Some(json!({}))),
            ev("UPDATE", "k", None),
            ev("INSERT", "z", Some(json!({}))),
            ev("UPDATE", "k", Some(json!({"id": "k", "n": 2}))),
        ];
        let (driver, letters) = drain_to_memory(&events, &[("k", before)], HashMap::new()).await;
        let rows = driver.rows.lock().unwrap().clone();
        // Neither NULLs nor the `before` image (n = 0) were written: only the real update.
        assert_eq!(rows.get(&("t".to_owned(), "k".to_owned())), Some(json!({"id": "k", "n": 2}).as_object().unwrap()));
        assert_eq!(rows.len(), 1, "{rows:?}");
        let dead: Vec<u64> = letters.iter().map(|l| l.stream_seq).collect();
        assert_eq!(dead, vec![1, 2, 3, 4]);
        assert!(letters.iter().all(|l| l.reason.contains("has no `after` image")), "{letters:?}");
    }
}
