//! One end-to-end setup: a private nats-server with the `dbchange` stream, EDS's mock HQ, a data
//! dir, and `eds server` started on them with destination URLs.
#![allow(dead_code, clippy::unwrap_used)]

use super::events::Ev;
use super::hq::{self as testing, Routes};
use super::{publish, Eds, Nats};
use std::path::PathBuf;
use std::sync::Arc;

/// EDS's mock HQ schema routes (spec §9.2) on a free port; stopped on drop.
pub struct Hq {
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Hq {
    pub async fn start() -> Hq {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let routes: Routes = Arc::new(testing::e2e_routes);
        Hq { url, task: tokio::spawn(testing::serve_schemas(listener, routes)) }
    }
}

impl Drop for Hq {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct Setup {
    pub nats: Nats,
    pub js: async_nats::jetstream::Context,
    pub hq: Hq,
    pub data: tempfile::TempDir,
}

pub async fn setup() -> Setup {
    let nats = Nats::start().await;
    let js = nats.create_stream().await;
    Setup { hq: Hq::start().await, nats, js, data: tempfile::tempdir().unwrap() }
}

impl Setup {
    /// `eds server` on this setup (`--restart`, the mock HQ) with a `--url` per destination and
    /// `extra` flags.
    pub fn eds(&self, urls: &[String], extra: &[&str]) -> Eds {
        let mut args: Vec<&str> = vec!["--restart", "--api-url", &self.hq.url];
        for u in urls {
            args.extend(["--url", u.as_str()]);
        }
        args.extend(extra);
        Eds::start(self.data.path(), &self.nats, &args)
    }

    /// A directory in the data dir for file destinations.
    pub fn out(&self) -> PathBuf {
        self.data.path().join("out")
    }
}

/// Publish every event; the stream sequence of the last.
pub async fn publish_all(js: &async_nats::jetstream::Context, events: &[Ev]) -> u64 {
    let mut seq = 0;
    for e in events {
        seq = publish(js, e.subject(), e.bytes()).await;
    }
    seq
}
