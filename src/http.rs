//! The health, status and metrics endpoints.
//!
//! `/` is liveness only: 200, or 503 while shutting down or while the WAL cannot be written
//! (EDS always answers 200). A destination being down is never a reason to restart eds, so
//! destination state appears in `/status`, not here.

use crate::state::ServerState;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

async fn handle(req: Request<Incoming>, state: Arc<ServerState>) -> Result<Response<Full<Bytes>>, Infallible> {
    // POST /destinations/<name>/pause and …/resume: hold or release one drain.
    if req.method() == Method::POST {
        let path = req.uri().path();
        let action = path.strip_prefix("/destinations/").and_then(|rest| rest.rsplit_once('/'));
        let resp = match action {
            Some((name, verb @ ("pause" | "resume"))) => match state.set_paused(name, verb == "pause") {
                true => reply(
                    StatusCode::OK,
                    "application/json",
                    serde_json::json!({"destination": name, "paused": verb == "pause"}).to_string(),
                ),
                false => reply(StatusCode::NOT_FOUND, "text/plain", format!("no destination named {name:?}\n")),
            },
            _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        };
        return Ok(resp);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "method not allowed\n".into()));
    }
    let resp = match req.uri().path() {
        "/" => match state.liveness_problem() {
            None => reply(StatusCode::OK, "text/plain", "ok\n".into()),
            Some(why) => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("{why}\n")),
        },
        "/status" => reply(StatusCode::OK, "application/json", state.status_json().to_string()),
        "/metrics" => {
            state.refresh_metrics();
            reply(StatusCode::OK, "text/plain; version=0.0.4", state.metrics.render())
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    };
    Ok(resp)
}

/// Serve until the process ends: liveness must keep answering (503) during shutdown.
pub async fn serve(listener: TcpListener, state: Arc<ServerState>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accepting an HTTP connection failed");
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, state.clone()));
            if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
}
