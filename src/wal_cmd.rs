//! `eds wal …`: operator tools over the write-ahead log. All but `cursor delete` and `sample`
//! open the log read-only: no lock, no file changed, safe beside a running server.

use crate::record;
use crate::timefmt::{human_bytes, human_duration, now_micros, rfc3339_micros};
use anyhow::{bail, Context, Result};
use eds_wal::{Options, Wal};
use serde_json::json;
use std::io::Write;
use std::path::Path;

fn open_read_only(dir: &Path) -> Result<Wal> {
    if !dir.is_dir() {
        bail!("no write-ahead log at {} (is --data-dir the server's data directory?)", dir.display());
    }
    Wal::open_read_only(dir, Options::default())
        .with_context(|| format!("opening the write-ahead log at {}", dir.display()))
}

fn opt_time(micros: Option<u64>) -> serde_json::Value {
    micros.map(|m| json!(rfc3339_micros(m))).unwrap_or(serde_json::Value::Null)
}

/// Gaps ingest recorded (`<data-dir>/gaps.jsonl`, one JSON object per line).
/// What a cursor belongs to: a configured destination's driver, an eds-internal cursor, or an
/// orphan that holds retention back (`eds wal cursor delete` removes it).
fn destination_of(recorded: &Option<Vec<(String, String)>>, cursor: &str) -> String {
    match recorded {
        None => "unknown (no server start recorded)".into(),
        Some(list) => match list.iter().find(|(n, _)| n == cursor) {
            Some((_, driver)) => format!("{driver} destination"),
            None => "orphaned: no destination has this name; it holds retention back".into(),
        },
    }
}

fn read_gaps(wal_dir: &Path) -> Vec<serde_json::Value> {
    let Some(data_dir) = wal_dir.parent() else { return Vec::new() };
    std::fs::read_to_string(data_dir.join("gaps.jsonl"))
        .map(|text| text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
        .unwrap_or_default()
}

pub(crate) fn inspect(dir: &Path, as_json: bool, out: &mut dyn Write) -> Result<u8> {
    let wal = open_read_only(dir)?;
    let gaps = read_gaps(dir);
    let recorded = dir.parent().and_then(crate::drain::recorded_destinations);
    let r = wal.inspect().context("inspecting the write-ahead log")?;
    let now = now_micros();
    if as_json {
        let doc = json!({
            "dir": r.dir,
            "oldest_lsn": r.oldest_lsn,
            "head_lsn": r.head_lsn,
            "total_bytes": r.total_bytes(),
            "total_records": r.total_records(),
            "segments": r.segments.iter().map(|s| json!({
                "name": s.name, "first_lsn": s.first_lsn, "last_lsn": s.last_lsn, "bytes": s.bytes,
                "frames": s.frames, "records": s.records, "raw_bytes": s.raw_bytes,
                "stored_bytes": s.stored_bytes, "compression_ratio": s.compression_ratio(),
                "first_appended_at": opt_time(s.first_appended_at),
                "last_appended_at": opt_time(s.last_appended_at), "problem": s.problem,
            })).collect::<Vec<_>>(),
            "cursors": r.cursors.iter().map(|c| json!({
                "name": c.name, "destination": destination_of(&recorded, &c.name), "position": c.position,
                "lag_records": c.lag_records,
                "lag_bytes": c.lag_bytes, "oldest_pending_at": opt_time(c.oldest_pending_at),
                "oldest_pending_age_seconds": c.oldest_pending_at.map(|t| now.saturating_sub(t) / 1_000_000),
            })).collect::<Vec<_>>(),
            "cursor_problems": r.cursor_problems,
            "holes": r.holes.iter().map(|h| json!({
                "segment": eds_wal::segment::segment_name(h.segment), "offset": h.offset, "bytes": h.len,
                "first_lsn": h.first_lsn, "last_lsn": h.last_lsn,
            })).collect::<Vec<_>>(),
            "stream_gaps": gaps,
            "unsynced_tail": r.pending_cut.as_ref().map(|c| json!({
                "segment": c.segment, "offset": c.offset, "bytes": c.bytes, "first_lsn": c.first_lsn,
            })),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(0);
    }
    let kept = if r.head_lsn >= r.oldest_lsn { r.head_lsn - r.oldest_lsn + 1 } else { 0 };
    writeln!(out, "write-ahead log {}", r.dir.display())?;
    writeln!(
        out,
        "  LSNs {}..{} ({kept} records kept), {} segment(s), {} on disk",
        r.oldest_lsn,
        r.head_lsn,
        r.segments.len(),
        human_bytes(r.total_bytes())
    )?;
    writeln!(out, "\nsegments")?;
    writeln!(
        out,
        "  {:<26} {:>12} {:>12} {:>10} {:>9} {:>6}  {:<27} {:<27}",
        "NAME", "FIRST", "LAST", "BYTES", "RECORDS", "RATIO", "FIRST APPEND", "LAST APPEND"
    )?;
    for s in &r.segments {
        writeln!(
            out,
            "  {:<26} {:>12} {:>12} {:>10} {:>9} {:>6.2}  {:<27} {:<27}",
            s.name,
            s.first_lsn,
            s.last_lsn.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
            human_bytes(s.bytes),
            s.records,
            s.compression_ratio(),
            s.first_appended_at.map(rfc3339_micros).unwrap_or_else(|| "-".into()),
            s.last_appended_at.map(rfc3339_micros).unwrap_or_else(|| "-".into()),
        )?;
        if let Some(p) = &s.problem {
            writeln!(out, "    problem: {p}")?;
        }
    }
    writeln!(out, "\ncursors")?;
    if r.cursors.is_empty() {
        writeln!(out, "  none (retention keeps every segment until a cursor exists)")?;
    } else {
        write_cursor_table(&r.cursors, now, out)?;
    }
    if let Some(recorded) = &recorded {
        writeln!(out, "\ndestinations (as of the last server start)")?;
        for c in &r.cursors {
            writeln!(out, "  {:<32} {}", c.name, destination_of(&Some(recorded.clone()), &c.name))?;
        }
        for (name, driver) in recorded.iter().filter(|(n, _)| !r.cursors.iter().any(|c| &c.name == n)) {
            writeln!(out, "  {name:<32} {driver} destination without a cursor yet")?;
        }
    }
    for p in &r.cursor_problems {
        writeln!(out, "  unreadable cursor: {p}")?;
    }
    if !r.holes.is_empty() {
        writeln!(out, "\nholes (damaged acknowledged data skipped on request)")?;
        for h in &r.holes {
            writeln!(
                out,
                "  segment {} offset {} ({} bytes): LSNs {}..{} lost",
                eds_wal::segment::segment_name(h.segment),
                h.offset,
                h.len,
                h.first_lsn,
                h.last_lsn
            )?;
        }
    }
    if !gaps.is_empty() {
        writeln!(out, "\nstream gaps (messages that never came back from JetStream)")?;
        for g in &gaps {
            writeln!(
                out,
                "  {} message(s) between stream sequences {} and {}, recorded {}: {}",
                g["missing"],
                g["from_seq"],
                g["to_seq"],
                g["at"].as_str().unwrap_or("?"),
                g["reason"].as_str().unwrap_or("")
            )?;
        }
    }
    if let Some(c) = &r.pending_cut {
        writeln!(
            out,
            "\nunsynced tail: {} bytes at offset {} of {} (from LSN {}); never acknowledged, cut when the server next opens the log",
            c.bytes,
            c.offset,
            c.segment.display(),
            c.first_lsn
        )?;
    }
    Ok(0)
}

fn write_cursor_table(cursors: &[eds_wal::CursorReport], now: u64, out: &mut dyn Write) -> Result<()> {
    writeln!(out, "  {:<32} {:>12} {:>12} {:>10} {:>12}", "NAME", "POSITION", "LAG", "LAG BYTES", "OLDEST AGE")?;
    for c in cursors {
        writeln!(
            out,
            "  {:<32} {:>12} {:>12} {:>10} {:>12}",
            c.name,
            c.position,
            c.lag_records,
            human_bytes(c.lag_bytes),
            c.oldest_pending_at.map(|t| human_duration(now.saturating_sub(t))).unwrap_or_else(|| "-".into()),
        )?;
    }
    Ok(())
}

pub(crate) fn verify(dir: &Path, as_json: bool, out: &mut dyn Write) -> Result<u8> {
    let wal = open_read_only(dir)?;
    let v = wal.verify().context("verifying the write-ahead log")?;
    let holes = wal.holes();
    if as_json {
        let doc = json!({
            "segments": v.segments, "frames": v.frames, "records": v.records,
            "problems": v.problems.iter().map(|p| json!({"segment": p.segment, "offset": p.offset, "message": p.message})).collect::<Vec<_>>(),
            "holes": holes.len(),
            "ok": v.problems.is_empty(),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
    } else {
        for p in &v.problems {
            writeln!(out, "problem: segment {} offset {}: {}", p.segment.display(), p.offset, p.message)?;
        }
        for h in &holes {
            writeln!(
                out,
                "note: recorded hole in segment {} at offset {}: LSNs {}..{} were lost and are skipped",
                eds_wal::segment::segment_name(h.segment),
                h.offset,
                h.first_lsn,
                h.last_lsn
            )?;
        }
        if let Some(c) = &wal.recovery().cut {
            writeln!(out, "note: unsynced tail of {} bytes at offset {} of {} (never acknowledged; cut at the next writable open)", c.bytes, c.offset, c.segment.display())?;
        }
        writeln!(
            out,
            "checked {} segments, {} frames, {} records: {} problems",
            v.segments,
            v.frames,
            v.records,
            v.problems.len()
        )?;
    }
    Ok(if v.problems.is_empty() { 0 } else { crate::exit::FAILURE })
}

/// How `eds wal dump` prints records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DumpFormat {
    /// One line per record: LSN, kind, stream sequence, receive time, subject, message id, then
    /// the event (or why it was dead-lettered).
    Text,
    /// One JSON object per line.
    Json,
    /// The record's bytes as they are: `text` and the record when it is UTF-8, else `hex`.
    Raw,
}

/// `eds wal dump`: records decoded as eds writes them (envelopes); anything else, and `--raw`,
/// as text or hex. A dead-letter marker shows the reason ingest recorded for it.
pub(crate) fn dump(
    dir: &Path,
    from: Option<u64>,
    limit: Option<u64>,
    format: DumpFormat,
    out: &mut dyn Write,
) -> Result<u8> {
    let wal = open_read_only(dir)?;
    let from = from.unwrap_or_else(|| wal.oldest_lsn());
    let mut reader = wal.reader(from).with_context(|| format!("reading from LSN {from}"))?;
    // Reasons of ingest's dead letters by stream sequence, read when the first marker shows up.
    let mut reasons: Option<std::collections::HashMap<u64, String>> = None;
    let mut printed = 0u64;
    while limit.is_none_or(|l| printed < l) {
        let Some(rec) = reader.next().context("reading the write-ahead log")? else { break };
        printed += 1;
        let env = match format {
            DumpFormat::Raw => None,
            _ => record::decode(&rec.data).ok(),
        };
        let Some(env) = env else {
            let (kind, shown) = match std::str::from_utf8(&rec.data) {
                Ok(text) => ("text", escape_text(text).into_owned()),
                Err(_) => ("hex", hex(&rec.data)),
            };
            match format {
                DumpFormat::Json => writeln!(out, "{}", json!({"lsn": rec.lsn, kind: shown}))?,
                _ => writeln!(out, "{}\t{kind}\t{shown}", rec.lsn)?,
            }
            continue;
        };
        let (kind, reason) = match env.kind {
            record::Kind::Event => ("event", None),
            record::Kind::DeadLetter => ("dead-letter", Some(env.reason.to_string())),
            record::Kind::StreamReset => ("stream-reset", Some(env.reason.to_string())),
            record::Kind::DeadLetterMarker => {
                let known = reasons.get_or_insert_with(|| {
                    let data_dir = dir.parent().unwrap_or(Path::new("."));
                    crate::dlq::list(data_dir)
                        .map(|l| l.into_iter().map(|d| (d.stream_seq, d.reason)).collect())
                        .unwrap_or_default()
                });
                let why = known
                    .get(&env.stream_seq)
                    .cloned()
                    .unwrap_or_else(|| "(reason not found in the ingest dead-letter log)".into());
                ("dead-lettered", Some(why))
            }
        };
        let received = rfc3339_micros(env.received_at);
        let payload = std::str::from_utf8(env.payload).ok();
        match format {
            DumpFormat::Json => {
                let mut line = json!({"lsn": rec.lsn, "kind": kind, "stream_seq": env.stream_seq,
                    "received_at": received, "subject": env.subject, "msg_id": env.msg_id});
                if let Some(why) = &reason {
                    line["reason"] = json!(why);
                }
                if !env.payload.is_empty() {
                    line["event"] = match payload.and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok()) {
                        Some(v) => v,
                        None => json!(payload.map_or_else(|| hex(env.payload), str::to_owned)),
                    };
                }
                writeln!(out, "{line}")?;
            }
            _ => {
                let id = if env.msg_id.is_empty() { "-" } else { env.msg_id.as_ref() };
                let shown = match (&reason, payload) {
                    (Some(why), _) if env.payload.is_empty() || kind == "dead-lettered" => format!("reason: {why}"),
                    (Some(why), Some(text)) => format!("reason: {why}\t{}", escape_text(text)),
                    (Some(why), None) => format!("reason: {why}\thex {}", hex(env.payload)),
                    (None, Some(text)) => escape_text(text).into_owned(),
                    (None, None) => format!("hex {}", hex(env.payload)),
                };
                writeln!(
                    out,
                    "{}\t{kind}\tseq {}\t{received}\t{}\t{id}\t{shown}",
                    rec.lsn, env.stream_seq, env.subject
                )?;
            }
        }
    }
    Ok(0)
}

fn escape_text(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() || c == '\\') {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut s = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if c.is_control() => s.push_str(&format!("\\u{{{:04x}}}", c as u32)),
            c => s.push(c),
        }
    }
    std::borrow::Cow::Owned(s)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

pub(crate) fn cursor_list(dir: &Path, as_json: bool, out: &mut dyn Write) -> Result<u8> {
    let wal = open_read_only(dir)?;
    let recorded = dir.parent().and_then(crate::drain::recorded_destinations);
    let r = wal.inspect().context("inspecting the write-ahead log")?;
    let now = now_micros();
    if as_json {
        let doc: Vec<_> = r
            .cursors
            .iter()
            .map(|c| json!({"name": c.name, "destination": destination_of(&recorded, &c.name), "position": c.position, "lag_records": c.lag_records, "lag_bytes": c.lag_bytes, "oldest_pending_at": opt_time(c.oldest_pending_at)}))
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
    } else if r.cursors.is_empty() {
        writeln!(out, "no cursors")?;
    } else {
        write_cursor_table(&r.cursors, now, out)?;
    }
    if let Some(recorded) = recorded.as_ref().filter(|_| !as_json) {
        writeln!(out, "\ndestinations (as of the last server start)")?;
        for c in &r.cursors {
            writeln!(out, "  {:<32} {}", c.name, destination_of(&Some(recorded.clone()), &c.name))?;
        }
        for (name, driver) in recorded.iter().filter(|(n, _)| !r.cursors.iter().any(|c| &c.name == n)) {
            writeln!(out, "  {name:<32} {driver} destination without a cursor yet")?;
        }
    }
    for p in &r.cursor_problems {
        writeln!(out, "unreadable cursor: {p}")?;
    }
    Ok(0)
}

pub(crate) fn cursor_delete(dir: &Path, name: &str, out: &mut dyn Write) -> Result<u8> {
    if !dir.is_dir() {
        bail!("no write-ahead log at {} (is --data-dir the server's data directory?)", dir.display());
    }
    match Wal::remove_cursor_offline(dir, name) {
        Ok(()) => {
            writeln!(out, "deleted cursor {name:?}; retention no longer waits for it")?;
            Ok(0)
        }
        Err(e @ eds_wal::Error::Locked { .. }) => {
            Err(anyhow::Error::new(e).context("stop the server before deleting a cursor"))
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("deleting cursor {name:?}"))),
    }
}

pub(crate) fn dlq(data_dir: &Path, destination: Option<&str>, as_json: bool, out: &mut dyn Write) -> Result<u8> {
    let letters = match destination {
        None => crate::dlq::list(data_dir)?,
        Some(name) => {
            eds_wal::cursor::validate_name(name).map_err(|why| anyhow::anyhow!("--destination {name:?}: {why}"))?;
            crate::dlq::list_at(&data_dir.join("dlq").join(name))?
        }
    };
    if as_json {
        let doc: Vec<_> = letters
            .iter()
            .map(|d| {
                json!({
                    "lsn": d.lsn, "stream_seq": d.stream_seq, "received_at": rfc3339_micros(d.received_at),
                    "subject": d.subject, "reason": d.reason, "replayed": d.replayed,
                    "payload": String::from_utf8(d.payload.clone()).unwrap_or_else(|_| hex(&d.payload)),
                })
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(0);
    }
    if letters.is_empty() {
        writeln!(out, "no dead letters")?;
    }
    for d in &letters {
        let payload = match std::str::from_utf8(&d.payload) {
            Ok(t) => format!("text\t{}", escape_text(t)),
            Err(_) => format!("hex\t{}", hex(&d.payload)),
        };
        let replayed = if d.replayed { "\treplayed" } else { "" };
        writeln!(
            out,
            "{}\t{}\tseq {}\t{}\t{}\t{payload}{replayed}",
            d.lsn,
            rfc3339_micros(d.received_at),
            d.stream_seq,
            d.subject,
            escape_text(&d.reason)
        )?;
    }
    Ok(0)
}

pub(crate) fn dlq_replay(
    data_dir: &Path,
    destination: &str,
    url: &str,
    api_url: &str,
    force: bool,
    out: &mut dyn Write,
) -> Result<u8> {
    eds_wal::cursor::validate_name(destination)
        .map_err(|why| anyhow::anyhow!("--destination {destination:?}: {why}"))?;
    let Some(mut dest) = crate::drain::parse_destination(url)? else {
        bail!("--url {}: this build has no driver for it", eds_drivers::url::redact(url));
    };
    // Tables need schemas: the server's tracker has the ones it used, HQ the rest.
    crate::drain::attach_registry(std::slice::from_mut(&mut dest), || {
        let tracker = crate::tracker::Tracker::open(data_dir)?;
        let source = crate::registry::HqSchemas::new(api_url)?;
        Ok(std::sync::Arc::new(crate::registry::Registry::new(std::sync::Arc::new(source), Some(tracker))))
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let done = runtime.block_on(crate::drain::replay(data_dir, destination, &dest, force))?;
    writeln!(out, "re-delivered {} dead letter(s) of {destination:?}", done.delivered)?;
    for (seq, table, key, by) in &done.superseded {
        writeln!(
            out,
            "superseded: stream sequence {seq} (table {table:?}, key {key:?}): a newer event of the row (stream \
             sequence {by}) was delivered since; replaying it would roll the row back, so it stays pending \
             (--force replays it anyway)"
        )?;
    }
    for (seq, reason) in &done.still_rejected {
        writeln!(
            out,
            "still rejected: stream sequence {seq}: {reason} (it and those after it stay for a later replay)"
        )?;
    }
    Ok(if done.still_rejected.is_empty() { 0 } else { crate::exit::FAILURE })
}

pub(crate) fn sample(dir: &Path, records: u64, batch: u64, out: &mut dyn Write) -> Result<u8> {
    let wal = Wal::open(dir, Options::default())
        .with_context(|| format!("opening the write-ahead log at {}", dir.display()))?;
    let start = wal.durable_lsn();
    let mut appended = 0u64;
    let started = std::time::Instant::now();
    while appended < records {
        let n = batch.min(records - appended);
        let events: Vec<Vec<u8>> = (start + appended..start + appended + n).map(crate::sample::order_event).collect();
        wal.append(&events).context("appending sample events")?;
        appended += n;
    }
    let took = started.elapsed();
    wal.close().context("closing the write-ahead log")?;
    tracing::info!(
        records = appended,
        batch,
        seconds = took.as_secs_f64(),
        "appended sample order events, each batch fsynced"
    );
    writeln!(
        out,
        "appended {appended} sample order events in batches of {batch} ({:.0} records/s, fsync per batch)\n",
        appended as f64 / took.as_secs_f64().max(1e-9)
    )?;
    inspect(dir, false, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_escaping_keeps_one_record_per_line() {
        assert_eq!(escape_text("{\"a\":1}"), "{\"a\":1}");
        assert_eq!(escape_text("a\nb\\c\u{1}"), "a\\nb\\\\c\\u{0001}");
        assert_eq!(hex(&[0, 0xab, 0xff]), "00abff");
    }
}
