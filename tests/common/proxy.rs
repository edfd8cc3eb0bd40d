//! A TCP proxy in front of a server (a destination), to cut the connection to it or to make it a
//! black hole.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::sync::watch;

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forwards both ways.
    Up,
    /// Closes every connection it holds and drops new ones as soon as they are accepted (a
    /// refused or reset connection: the client notices at once).
    Cut,
    /// Keeps every connection open and accepts new ones, but forwards nothing either way and
    /// answers nothing (a network that swallows packets: the client notices only by its own
    /// deadlines).
    Blackhole,
}

/// A TCP proxy to a server that can be cut or turned into a black hole.
pub struct Proxy {
    pub port: u16,
    mode: Arc<watch::Sender<Mode>>,
    swallowed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy to `upstream` (`host:port`) on a free port of 127.0.0.1, up.
    pub async fn start(upstream: impl Into<String>) -> Proxy {
        let upstream: Arc<str> = upstream.into().into();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(watch::channel(Mode::Up).0);
        let switch = mode.clone();
        let swallowed = Arc::new(AtomicU64::new(0));
        let count = swallowed.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                let rx = switch.subscribe();
                tokio::spawn(serve(client, upstream.clone(), rx, count.clone()));
            }
        });
        Proxy { port, mode, swallowed, task }
    }

    /// Bytes clients sent into the black hole so far (held, and passed on once the proxy is up):
    /// more than 0 after the proxy became a black hole means a request is in flight.
    pub fn swallowed(&self) -> u64 {
        self.swallowed.load(Ordering::SeqCst)
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Up (`true`) or cut (`false`).
    pub fn set_up(&self, up: bool) {
        self.set(if up { Mode::Up } else { Mode::Cut });
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

/// One client connection: forwarded while up; held silent in a black hole (and forwarded again,
/// without losing a byte, when the proxy comes back up, as a network that recovers would); closed
/// when cut. What the client sends into a black hole is counted in `swallowed`.
async fn serve(client: TcpStream, upstream: Arc<str>, rx: watch::Receiver<Mode>, swallowed: Arc<AtomicU64>) {
    if *rx.borrow() == Mode::Cut {
        return;
    }
    let Ok(server) = TcpStream::connect(&*upstream).await else { return };
    let (client_r, client_w) = client.into_split();
    let (server_r, server_w) = server.into_split();
    tokio::join!(pump(client_r, server_w, rx.clone(), Some(swallowed)), pump(server_r, client_w, rx, None));
}

/// Copies one direction; what it reads in a black hole it holds (counting it in `swallowed`) until
/// the proxy is up again. Returns when the source ends (after passing the end on) or the proxy is
/// cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut rx: watch::Receiver<Mode>,
    swallowed: Option<Arc<AtomicU64>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // A TCP read is cancel-safe: nothing is lost when the proxy is cut first.
        let n = tokio::select! {
            n = from.read(&mut buf) => n.unwrap_or(0),
            _ = rx.wait_for(|m| *m == Mode::Cut) => return,
        };
        if n == 0 {
            let _ = to.shutdown().await;
            return;
        }
        if *rx.borrow_and_update() == Mode::Blackhole {
            if let Some(count) = &swallowed {
                count.fetch_add(n as u64, Ordering::SeqCst);
            }
        }
        if *rx.wait_for(|m| *m != Mode::Blackhole).await.unwrap() == Mode::Cut {
            return;
        }
        tokio::select! {
            r = to.write_all(&buf[..n]) => if r.is_err() { return },
            _ = rx.wait_for(|m| *m == Mode::Cut) => return,
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.set(Mode::Cut);
        self.task.abort();
    }
}
