//! `eds server`'s supervisor: a small parent that runs the worker (the same binary with the same
//! flags plus `--wrapper`), starts it again after a crash, and gives up after
//! [`MAX_FAILURES`] failures in a row.
//!
//! | worker exit | supervisor |
//! |---|---|
//! | 0 (stopped by a signal or by HQ) | exits 0 |
//! | 2 (usage or configuration error) | exits 2 at once: a retry would fail the same way (EDS retried it five times, each with a new HQ session) |
//! | 4 (restart asked for: HQ restart, upgrade, new configuration) | starts it again at once; not a failure |
//! | anything else, or killed by a signal | a failure: starts it again after 1 s, 2 s, 3 s, 4 s (a stop meanwhile exits 0); the 5th failure in a row exits 1 |
//!
//! A worker that ran [`HEALTHY_RUN`] before failing starts the count again, so a server running
//! for months is not given up after five crashes spread over them. SIGINT and SIGTERM are passed
//! on to the worker, and the supervisor exits with its exit code. The worker asks the kernel to
//! kill it when the supervisor dies (so a SIGKILL of the supervisor never leaves an orphan
//! holding the data directory).

use anyhow::{Context, Result};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Failures in a row after which the supervisor gives up.
pub const MAX_FAILURES: u32 = 5;

/// A worker that ran this long before failing was healthy: the failure count starts again.
pub const HEALTHY_RUN: Duration = Duration::from_secs(600);

/// Runs the supervisor with this process's own command line. Returns the exit code.
pub fn run() -> Result<u8> {
    // Resolved once: an upgrade replaces the file at this path, and the next worker is the new one.
    let exe = std::env::current_exe().context("finding this program's path to start the worker")?;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the supervisor's runtime")?;
    runtime.block_on(supervise(exe, args))
}

fn describe(status: &std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("killed by signal {signal}");
        }
    }
    match status.code() {
        Some(code) => format!("exit code {code}"),
        None => "ended without an exit code".to_owned(),
    }
}

fn forward(pid: Option<u32>) {
    #[cfg(unix)]
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()).and_then(rustix::process::Pid::from_raw) {
        if let Err(e) = rustix::process::kill_process(pid, rustix::process::Signal::TERM) {
            tracing::warn!(error = %e, "could not pass the stop signal on to the worker");
        }
    }
}

async fn supervise(exe: PathBuf, args: Vec<OsString>) -> Result<u8> {
    let mut signals = crate::shutdown::Signals::install();
    let mut failures = 0u32;
    loop {
        let started = Instant::now();
        let mut command = tokio::process::Command::new(&exe);
        command.args(&args).arg("--wrapper").arg(format!("--parent={}", std::process::id()));
        // Its own process group: a Ctrl-C at the terminal reaches the supervisor only, which
        // passes one stop on (the worker would take two signals for "exit at once").
        #[cfg(unix)]
        command.process_group(0);
        let mut child = command.spawn().with_context(|| format!("starting the worker {}", exe.display()))?;
        let pid = child.id();
        tracing::info!(pid, "worker started");
        let status = tokio::select! {
            s = child.wait() => s.context("waiting for the worker")?,
            _ = signals.next() => {
                tracing::info!("stopping: signal passed on to the worker");
                forward(pid);
                let status = loop {
                    tokio::select! {
                        s = child.wait() => break s.context("waiting for the worker")?,
                        // A second signal makes the worker exit at once (it is safe: nothing is
                        // acked before it is durable).
                        _ = signals.next() => forward(pid),
                    }
                };
                return Ok(status.code().and_then(|c| u8::try_from(c).ok()).unwrap_or(crate::exit::FAILURE));
            }
        };
        match status.code() {
            Some(0) => return Ok(0),
            Some(c) if c == i32::from(crate::exit::USAGE) => return Ok(crate::exit::USAGE),
            Some(c) if c == i32::from(crate::exit::RESTART) => {
                tracing::info!("worker asked to be started again");
                continue;
            }
            _ => {}
        }
        if started.elapsed() >= HEALTHY_RUN {
            failures = 0;
        }
        failures += 1;
        let what = describe(&status);
        if failures >= MAX_FAILURES {
            tracing::error!(
                failures,
                last = %what,
                "the worker failed {failures} times in a row; giving up (see the errors above)"
            );
            return Ok(crate::exit::FAILURE);
        }
        let backoff = Duration::from_secs(u64::from(failures));
        tracing::warn!(failures, last = %what, backoff_secs = backoff.as_secs(), "the worker failed; starting it again");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = signals.next() => {
                tracing::info!("stopped while the worker was down");
                return Ok(0);
            }
        }
    }
}

/// In the worker: have the kernel kill this process when the supervisor `parent` (its pid)
/// dies, and exit at once when it already has.
pub fn die_with_parent(parent: i64) {
    #[cfg(target_os = "linux")]
    {
        if let Err(e) = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL)) {
            tracing::warn!(error = %e, "cannot ask to be stopped with the supervisor");
        }
        let ppid = rustix::process::getppid().map(|p| i64::from(p.as_raw_nonzero().get())).unwrap_or(0);
        if parent > 0 && ppid != parent {
            tracing::error!(parent, "the supervisor is gone; exiting");
            std::process::exit(i32::from(crate::exit::FAILURE));
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = parent;
}
