//! Console logging as EDS does it: INFO by default, `-v` for TRACE, `-s` for errors only (wins
//! over `-v`), `-t` to prefix the Go standard logger's timestamp, `--log-label` to prefix
//! `[label]`. Logs go to stderr so command output on stdout stays machine-readable.
//!
//! Beside the console, the same events go to the JSON log file of an HQ session ([`mod@file`]) once
//! the server opens one through [`log_file`]: eds's own crates at TRACE whatever the console
//! level. Until then (and in every other command) there is no file.

pub mod file;

pub use file::LogFileHandle;

use std::fmt;
use std::sync::OnceLock;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How the console log looks.
#[derive(Debug, Clone, Default)]
pub struct LogSettings {
    /// TRACE instead of INFO.
    pub verbose: bool,
    /// ERROR only; wins over `verbose`.
    pub silent: bool,
    /// Prefix a timestamp.
    pub timestamps: bool,
    /// Prefix `[label]` when set and non-empty.
    pub label: Option<String>,
}

impl LogSettings {
    /// The most detailed level printed.
    pub fn level(&self) -> Level {
        if self.silent {
            Level::ERROR
        } else if self.verbose {
            Level::TRACE
        } else {
            Level::INFO
        }
    }
}

struct LineFormat {
    timestamps: bool,
    label: Option<String>,
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        if self.timestamps {
            write!(writer, "{} ", crate::timefmt::go_log_stamp(crate::timefmt::now_micros()))?;
        }
        if let Some(label) = &self.label {
            write!(writer, "[{label}] ")?;
        }
        write!(writer, "{:<5} ", event.metadata().level())?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// The process's JSON log file, written by the layer [`init`] installs. Inactive until the
/// server opens it for a session.
pub fn log_file() -> &'static LogFileHandle {
    static LOG_FILE: OnceLock<LogFileHandle> = OnceLock::new();
    LOG_FILE.get_or_init(LogFileHandle::new)
}

/// Install the console logger and the (inactive) JSON log file layer writing [`log_file`],
/// which it returns. Safe to call once per process; a later call installs nothing.
pub fn init(settings: &LogSettings) -> &'static LogFileHandle {
    use tracing_subscriber::layer::{Layer, SubscriberExt};
    use tracing_subscriber::util::SubscriberInitExt;
    let label = settings.label.clone().filter(|l| !l.is_empty());
    let level = settings.level();
    // `-v` is for eds's own detail; libraries (the NATS client above all) stay at INFO.
    let filter = tracing_subscriber::filter::Targets::new()
        .with_target("eds", level)
        .with_target("eds_wal", level)
        .with_target("eds_drivers", level)
        .with_default(level.min(Level::INFO));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .event_format(LineFormat { timestamps: settings.timestamps, label: label.clone() })
        .with_filter(filter);
    // Filters are per layer: the console's level must not hide TRACE from the file.
    let file = file::layer(log_file().clone(), label);
    let _ = tracing_subscriber::registry().with(fmt).with(file).try_init();
    log_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_wins_over_verbose() {
        let s = LogSettings { verbose: true, silent: true, ..LogSettings::default() };
        assert_eq!(s.level(), Level::ERROR);
        assert_eq!(LogSettings { verbose: true, ..LogSettings::default() }.level(), Level::TRACE);
        assert_eq!(LogSettings::default().level(), Level::INFO);
    }
}
