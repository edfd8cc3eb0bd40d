//! Prometheus metrics. Names are constants here and nowhere else; EDS's names keep EDS's
//! meanings so existing dashboards and alerts keep working.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntGauge, Opts, Registry, TextEncoder,
};

/// EDS: events received and not yet delivered to the destination(s).
pub const PENDING_EVENTS: &str = "eds_pending_events";
/// EDS: events received.
pub const TOTAL_EVENTS: &str = "eds_total_events";
/// EDS: duration of destination writes (label `destination`).
pub const FLUSH_DURATION: &str = "eds_flush_duration_seconds";
/// EDS: events per destination write (label `destination`).
pub const FLUSH_COUNT: &str = "eds_flush_count";
/// EDS: time from receiving events to delivering them (label `destination`).
pub const PROCESSING_DURATION: &str = "eds_processing_duration_seconds";
/// Records a destination still has to deliver (label `destination`).
pub const DESTINATION_LAG: &str = "eds_destination_lag_records";
/// Estimated WAL bytes a destination still has to deliver (label `destination`).
pub const DESTINATION_LAG_BYTES: &str = "eds_destination_lag_bytes";
/// Age of the oldest record a destination has not delivered yet (label `destination`).
pub const DESTINATION_LAG_SECONDS: &str = "eds_destination_lag_seconds";
/// Events a destination confirmed (label `destination`).
pub const DESTINATION_DELIVERED: &str = "eds_destination_delivered_total";
/// Failed destination writes that will be retried (label `destination`).
pub const DESTINATION_RETRIES: &str = "eds_destination_retries_total";
/// Events a destination rejected, now in its dead-letter log (label `destination`).
pub const DESTINATION_DEAD_LETTERED: &str = "eds_destination_dead_lettered_total";
/// Events a destination skipped because the schema validator has no rule for their table
/// (labels `destination`, `table`).
pub const VALIDATOR_SKIPPED: &str = "eds_validator_skipped_total";
/// Heartbeats published to HQ.
pub const HQ_HEARTBEATS: &str = "eds_hq_heartbeats_total";
/// HQ notifications received (label `action`).
pub const HQ_NOTIFICATIONS: &str = "eds_hq_notifications_total";
/// Bytes of all WAL segments.
pub const WAL_BYTES: &str = "eds_wal_bytes";
/// WAL segment files.
pub const WAL_SEGMENTS: &str = "eds_wal_segments";
/// Highest durable LSN.
pub const WAL_DURABLE_LSN: &str = "eds_wal_durable_lsn";
/// Time to append one batch (write, not fsync).
pub const WAL_APPEND_SECONDS: &str = "eds_wal_append_duration_seconds";
/// Time from a batch's append to its durability (fsync, shared by group commit).
pub const WAL_FSYNC_SECONDS: &str = "eds_wal_fsync_duration_seconds";
/// Highest JetStream stream sequence durable in the WAL.
pub const INGEST_STREAM_SEQ: &str = "eds_ingest_stream_sequence";
/// Messages written to the dead-letter log.
pub const DEAD_LETTERED: &str = "eds_dead_lettered_total";
/// Stream messages that never came back and were recorded as a gap.
pub const GAPS: &str = "eds_ingest_gap_messages_total";
/// 1 while ingest is paused because the WAL disk budget is full.
pub const PAUSED_FOR_DISK: &str = "eds_ingest_paused_for_disk";

/// Every metric the server exports, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Received, not yet delivered. Until drains exist: received, not yet durable in the WAL.
    pub pending_events: IntGauge,
    /// Received.
    pub total_events: IntCounter,
    /// WAL bytes.
    pub wal_bytes: IntGauge,
    /// WAL segments.
    pub wal_segments: IntGauge,
    /// Durable LSN.
    pub wal_durable_lsn: IntGauge,
    /// Append latency.
    pub wal_append_seconds: Histogram,
    /// Append-to-durable latency.
    pub wal_fsync_seconds: Histogram,
    /// Highest stream sequence stored.
    pub stream_seq: IntGauge,
    /// Dead-lettered messages.
    pub dead_lettered: IntCounter,
    /// Messages lost to gaps.
    pub gaps: IntCounter,
    /// Paused for disk.
    pub paused_for_disk: Gauge,
    /// Destination write durations.
    pub flush_duration: HistogramVec,
    /// Events per destination write.
    pub flush_count: HistogramVec,
    /// Receive-to-delivery latency.
    pub processing_duration: HistogramVec,
    /// Records not yet delivered, per destination.
    pub destination_lag: prometheus::IntGaugeVec,
    /// Estimated bytes not yet delivered, per destination.
    pub destination_lag_bytes: prometheus::IntGaugeVec,
    /// Age of the oldest undelivered record, per destination.
    pub destination_lag_seconds: prometheus::GaugeVec,
    /// Delivered events, per destination.
    pub destination_delivered: prometheus::IntCounterVec,
    /// Retried writes, per destination.
    pub destination_retries: prometheus::IntCounterVec,
    /// Dead-lettered events, per destination.
    pub destination_dead_lettered: prometheus::IntCounterVec,
    /// [`VALIDATOR_SKIPPED`].
    pub validator_skipped: prometheus::IntCounterVec,
    /// [`HQ_HEARTBEATS`].
    pub hq_heartbeats: IntCounter,
    /// [`HQ_NOTIFICATIONS`].
    pub hq_notifications: prometheus::IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn buckets() -> Vec<f64> {
    vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]
}

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let m = Metrics {
            pending_events: IntGauge::with_opts(Opts::new(PENDING_EVENTS, "events received and not yet delivered"))?,
            total_events: IntCounter::with_opts(Opts::new(TOTAL_EVENTS, "events received"))?,
            wal_bytes: IntGauge::with_opts(Opts::new(WAL_BYTES, "bytes of all write-ahead log segments"))?,
            wal_segments: IntGauge::with_opts(Opts::new(WAL_SEGMENTS, "write-ahead log segment files"))?,
            wal_durable_lsn: IntGauge::with_opts(Opts::new(WAL_DURABLE_LSN, "highest durable LSN"))?,
            wal_append_seconds: Histogram::with_opts(
                HistogramOpts::new(WAL_APPEND_SECONDS, "time to write one batch to the log").buckets(buckets()),
            )?,
            wal_fsync_seconds: Histogram::with_opts(
                HistogramOpts::new(WAL_FSYNC_SECONDS, "time from a batch's write to its durability").buckets(buckets()),
            )?,
            stream_seq: IntGauge::with_opts(Opts::new(INGEST_STREAM_SEQ, "highest JetStream stream sequence stored"))?,
            dead_lettered: IntCounter::with_opts(Opts::new(DEAD_LETTERED, "messages written to the dead-letter log"))?,
            gaps: IntCounter::with_opts(Opts::new(GAPS, "stream messages that never came back, recorded as gaps"))?,
            paused_for_disk: Gauge::with_opts(Opts::new(PAUSED_FOR_DISK, "1 while ingest waits for WAL disk space"))?,
            flush_duration: HistogramVec::new(
                HistogramOpts::new(FLUSH_DURATION, "The duration of driver flushes")
                    .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                &["destination"],
            )?,
            flush_count: HistogramVec::new(
                HistogramOpts::new(FLUSH_COUNT, "The count of events flushed")
                    .buckets(vec![1.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0]),
                &["destination"],
            )?,
            processing_duration: HistogramVec::new(
                HistogramOpts::new(
                    PROCESSING_DURATION,
                    "The latency in duration of processing events from receiving them to flushing them",
                )
                .buckets(vec![
                    0.001, 0.005, 0.02, 0.1, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 60.0, 300.0, 600.0, 1800.0, 3600.0,
                ]),
                &["destination"],
            )?,
            destination_lag: prometheus::IntGaugeVec::new(
                Opts::new(DESTINATION_LAG, "records in the write-ahead log the destination has not received yet"),
                &["destination"],
            )?,
            destination_lag_bytes: prometheus::IntGaugeVec::new(
                Opts::new(
                    DESTINATION_LAG_BYTES,
                    "estimated write-ahead log bytes the destination has not received yet",
                ),
                &["destination"],
            )?,
            destination_lag_seconds: prometheus::GaugeVec::new(
                Opts::new(DESTINATION_LAG_SECONDS, "age of the oldest record the destination has not received yet"),
                &["destination"],
            )?,
            destination_delivered: prometheus::IntCounterVec::new(
                Opts::new(DESTINATION_DELIVERED, "events the destination confirmed"),
                &["destination"],
            )?,
            destination_retries: prometheus::IntCounterVec::new(
                Opts::new(DESTINATION_RETRIES, "failed destination writes that are retried"),
                &["destination"],
            )?,
            destination_dead_lettered: prometheus::IntCounterVec::new(
                Opts::new(DESTINATION_DEAD_LETTERED, "events the destination rejected, kept in its dead-letter log"),
                &["destination"],
            )?,
            validator_skipped: prometheus::IntCounterVec::new(
                Opts::new(VALIDATOR_SKIPPED, "events skipped because the schema validator has no rule for their table"),
                &["destination", "table"],
            )?,
            hq_heartbeats: IntCounter::with_opts(Opts::new(HQ_HEARTBEATS, "heartbeats published to Shopmonkey HQ"))?,
            hq_notifications: prometheus::IntCounterVec::new(
                Opts::new(HQ_NOTIFICATIONS, "notifications received from Shopmonkey HQ, by action"),
                &["action"],
            )?,
            registry,
        };
        m.registry.register(Box::new(m.pending_events.clone()))?;
        m.registry.register(Box::new(m.total_events.clone()))?;
        m.registry.register(Box::new(m.wal_bytes.clone()))?;
        m.registry.register(Box::new(m.wal_segments.clone()))?;
        m.registry.register(Box::new(m.wal_durable_lsn.clone()))?;
        m.registry.register(Box::new(m.wal_append_seconds.clone()))?;
        m.registry.register(Box::new(m.wal_fsync_seconds.clone()))?;
        m.registry.register(Box::new(m.stream_seq.clone()))?;
        m.registry.register(Box::new(m.dead_lettered.clone()))?;
        m.registry.register(Box::new(m.gaps.clone()))?;
        m.registry.register(Box::new(m.paused_for_disk.clone()))?;
        m.registry.register(Box::new(m.flush_duration.clone()))?;
        m.registry.register(Box::new(m.flush_count.clone()))?;
        m.registry.register(Box::new(m.processing_duration.clone()))?;
        m.registry.register(Box::new(m.destination_lag.clone()))?;
        m.registry.register(Box::new(m.destination_lag_bytes.clone()))?;
        m.registry.register(Box::new(m.destination_lag_seconds.clone()))?;
        m.registry.register(Box::new(m.destination_delivered.clone()))?;
        m.registry.register(Box::new(m.destination_retries.clone()))?;
        m.registry.register(Box::new(m.destination_dead_lettered.clone()))?;
        m.registry.register(Box::new(m.validator_skipped.clone()))?;
        m.registry.register(Box::new(m.hq_heartbeats.clone()))?;
        m.registry.register(Box::new(m.hq_notifications.clone()))?;
        Ok(m)
    }

    /// Refresh the WAL gauges from the log's counters.
    pub fn observe_wal(&self, stats: &eds_wal::Stats) {
        self.wal_bytes.set(stats.bytes as i64);
        self.wal_segments.set(stats.segments as i64);
        self.wal_durable_lsn.set(stats.durable_lsn as i64);
    }

    /// Record one destination write: its duration, its size, and how long its oldest event
    /// waited since it was received.
    pub fn observe_flush(&self, destination: &str, seconds: f64, events: usize, waited: f64) {
        self.flush_duration.with_label_values(&[destination]).observe(seconds);
        self.flush_count.with_label_values(&[destination]).observe(events as f64);
        self.processing_duration.with_label_values(&[destination]).observe(waited);
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
