//! How far an import is: on a terminal, one bar per phase redrawn in place on stderr (at most ten
//! times a second); otherwise a log line every five seconds, so a log file gets a readable
//! trace instead of a screenful of carriage returns.

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a phase counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Export tables done.
    Tables,
    /// Bytes downloaded.
    Bytes,
    /// Rows loaded.
    Rows,
}

impl Unit {
    fn amount(self, n: u64) -> String {
        match self {
            Unit::Tables => format!("{n} tables"),
            Unit::Bytes => crate::timefmt::human_bytes(n),
            Unit::Rows => format!("{} rows", thousands(n)),
        }
    }

    fn rate(self, per_second: f64) -> String {
        match self {
            Unit::Tables => String::new(),
            Unit::Bytes => format!("{}/s", crate::timefmt::human_bytes(per_second as u64)),
            Unit::Rows => format!("{} rows/s", thousands(per_second as u64)),
        }
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One line of a phase: `label [#####.....]  50% 5 of 10 tables` with a known total, else
/// `label 1.2 GiB (3.4 MiB/s)`; `detail` follows.
pub fn render(label: &str, unit: Unit, done: u64, total: Option<u64>, elapsed: Duration, detail: &str) -> String {
    const WIDTH: usize = 24;
    let secs = elapsed.as_secs_f64();
    let rate = if secs >= 0.5 && unit != Unit::Tables {
        format!(" ({})", unit.rate(done as f64 / secs))
    } else {
        String::new()
    };
    let detail = if detail.is_empty() { String::new() } else { format!("  {detail}") };
    match total.filter(|&t| t > 0) {
        Some(total) => {
            let share = (done as f64 / total as f64).clamp(0.0, 1.0);
            let filled = (share * WIDTH as f64).round() as usize;
            format!(
                "{label:<8} [{}{}] {:>3}% {} of {}{rate}{detail}",
                "#".repeat(filled),
                ".".repeat(WIDTH - filled),
                (share * 100.0).floor() as u64,
                match unit {
                    Unit::Tables => done.to_string(),
                    _ => unit.amount(done),
                },
                unit.amount(total),
            )
        }
        None => format!("{label:<8} {}{rate}{detail}", unit.amount(done)),
    }
}

struct Phase {
    label: &'static str,
    unit: Unit,
    total: Option<u64>,
    done: u64,
    detail: String,
    started: Instant,
    shown: Option<Instant>,
}

/// The import's progress display.
pub struct Progress {
    terminal: bool,
    every: Duration,
    phase: Mutex<Option<Phase>>,
}

impl Progress {
    /// Bars when stderr is a terminal, log lines otherwise.
    pub fn on_stderr() -> Progress {
        use std::io::IsTerminal;
        Progress::new(std::io::stderr().is_terminal())
    }

    /// Bars (`terminal`) or log lines.
    pub fn new(terminal: bool) -> Progress {
        let every = if terminal { Duration::from_millis(100) } else { Duration::from_secs(5) };
        Progress { terminal, every, phase: Mutex::new(None) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Phase>> {
        self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a phase (ending the one before).
    pub fn start(&self, label: &'static str, unit: Unit, total: Option<u64>) {
        let mut phase = self.lock();
        self.end(&mut phase);
        *phase =
            Some(Phase { label, unit, total, done: 0, detail: String::new(), started: Instant::now(), shown: None });
    }

    /// The phase has reached `done` (of its total); `detail` says where.
    pub fn update(&self, done: u64, detail: &str) {
        let mut guard = self.lock();
        let Some(p) = guard.as_mut() else { return };
        p.done = done;
        if detail != p.detail {
            p.detail = detail.to_owned();
        }
        if p.shown.is_some_and(|t| t.elapsed() < self.every) || (p.shown.is_none() && p.started.elapsed() < self.every)
        {
            return;
        }
        p.shown = Some(Instant::now());
        self.show(p);
    }

    /// Ends the current phase, showing where it ended.
    pub fn finish(&self) {
        let mut phase = self.lock();
        self.end(&mut phase);
    }

    fn end(&self, phase: &mut Option<Phase>) {
        if let Some(p) = phase.take() {
            if self.terminal {
                self.show(&p);
                let _ = writeln!(std::io::stderr());
            }
        }
    }

    fn show(&self, p: &Phase) {
        let line = render(p.label, p.unit, p.done, p.total, p.started.elapsed(), &p.detail);
        if self.terminal {
            // Back to the line's start, the bar, the rest of an older, longer line cleared.
            let _ = write!(std::io::stderr(), "\r{line}\x1b[K");
            let _ = std::io::stderr().flush();
        } else {
            tracing::info!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_and_counts_read_well() {
        let d = Duration::from_secs(2);
        assert_eq!(
            render("export", Unit::Tables, 3, Some(12), d, ""),
            "export   [######..................]  25% 3 of 12 tables"
        );
        assert_eq!(
            render("load", Unit::Rows, 1_500_000, None, d, "order"),
            "load     1,500,000 rows (750,000 rows/s)  order"
        );
        assert_eq!(
            render("download", Unit::Bytes, 2048, Some(4096), d, ""),
            "download [############............]  50% 2.0 KiB of 4.0 KiB (1.0 KiB/s)"
        );
        // Never past the end, never a rate before half a second.
        assert!(render("x", Unit::Rows, 20, Some(10), Duration::ZERO, "").contains("[########################] 100%"));
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(12_345_678), "12,345,678");
    }
}
