//! Stopping on a signal.

/// SIGINT and SIGTERM, caught from the moment [`Signals::install`] returns: install before the
/// process announces itself (a supervisor or a test may signal it at once), then await
/// [`Signals::next`] as often as needed.
pub struct Signals {
    #[cfg(unix)]
    caught: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    /// Replaces the default action of SIGINT and SIGTERM (which would end the process at once)
    /// with a delivery to [`Signals::next`]. Needs a tokio runtime.
    pub fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
                (Ok(int), Ok(term)) => Signals { caught: Some((int, term)) },
                _ => Signals { caught: None },
            }
        }
        #[cfg(not(unix))]
        {
            Signals {}
        }
    }

    /// Resolves at the next SIGINT or SIGTERM (one sent since [`Signals::install`] included).
    pub async fn next(&mut self) {
        #[cfg(unix)]
        if let Some((int, term)) = self.caught.as_mut() {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
