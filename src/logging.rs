//! Console logging as EDS does it: INFO by default, `-v` for TRACE, `-s` for errors only (wins
//! over `-v`), `-t` to prefix the Go standard logger's timestamp, `--log-label` to prefix
//! `[label]`. Logs go to stderr so command output on stdout stays machine-readable.

use std::fmt;
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

/// Install the console logger. Safe to call once per process.
pub fn init(settings: &LogSettings) {
    use tracing_subscriber::layer::SubscriberExt;
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
        .event_format(LineFormat { timestamps: settings.timestamps, label });
    let _ = tracing_subscriber::registry().with(filter).with(fmt).try_init();
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
