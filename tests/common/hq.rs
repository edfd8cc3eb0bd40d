//! A double of Shopmonkey HQ's schema routes (EDS's e2e mock, spec §9.2) on a local port, for the
//! integration tests, the benchmarks and the registry's unit tests (each includes this file). Not
//! part of eds: eds never starts it. [`serve_bytes`] also serves release archives for the
//! download and upgrade tests.
#![allow(dead_code, clippy::unwrap_used)]

use bytes::Bytes;
use http_body_util::Full;
use hyper::http::request::Parts;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Answers a request path (as sent, still percent-escaped) with a status and a JSON body.
pub type Routes = Arc<dyn Fn(&str) -> (u16, String) + Send + Sync>;

/// Answers a request (method, URI, headers) with a status and a JSON body.
pub type Handler = Arc<dyn Fn(&Parts) -> (u16, String) + Send + Sync>;

/// Serves `routes` on `listener` over HTTP/1 until the task is dropped or aborted. Every
/// answer has `Content-Type: application/json`.
pub async fn serve_schemas(listener: TcpListener, routes: Routes) {
    serve(listener, Arc::new(move |parts: &Parts| routes(parts.uri.path()))).await
}

/// As [`serve_schemas`], for handlers that look at more than the path (headers, method).
pub async fn serve(listener: TcpListener, handler: Handler) {
    let handler: BytesHandler = Arc::new(move |parts: &Parts| {
        let (status, body) = handler(parts);
        (status, body.into_bytes())
    });
    serve_bytes(listener, handler, "application/json").await
}

/// Answers a request (method, URI, headers) with a status and a body of any bytes.
pub type BytesHandler = Arc<dyn Fn(&Parts) -> (u16, Vec<u8>) + Send + Sync>;

/// As [`serve`], for bodies that are not text (release archives); every answer has
/// `Content-Type: content_type`.
pub async fn serve_bytes(listener: TcpListener, handler: BytesHandler, content_type: &'static str) {
    serve_full(listener, Arc::new(move |parts: &Parts, _: &[u8]| handler(parts)), Some(content_type)).await
}

/// Answers a request (method, URI, headers) and its whole body with a status and a body.
pub type FullHandler = Arc<dyn Fn(&Parts, &[u8]) -> (u16, Vec<u8>) + Send + Sync>;

/// Serves `handler` on `listener` over HTTP/1 until the task is dropped or aborted, each
/// request's body read whole first; answers carry `Content-Type: content_type` when given. The
/// one loop every double here runs on.
pub async fn serve_full(listener: TcpListener, handler: FullHandler, content_type: Option<&'static str>) {
    use http_body_util::BodyExt;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, say: do not spin.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let handler = handler.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let (status, answer) = match body.collect().await {
                        Ok(body) => handler(&parts, &body.to_bytes()),
                        Err(e) => (400, format!("reading the body: {e}").into_bytes()),
                    };
                    let mut response = Response::new(Full::new(Bytes::from(answer)));
                    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    if let Some(ct) = content_type {
                        response
                            .headers_mut()
                            .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(ct));
                    }
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

/// The schema routes of EDS's end-to-end mock HQ (spec §9.2): `/v3/schema` lists only
/// `order` (id, name, updatedDate) at version `fff000111`; `/v3/schema/order/<v>` is `order`
/// with `age` (number) added and `/v3/schema/customer/<v>` is `customer` (id, name,
/// updatedDate), both echoing the (unescaped) version; anything else is a 404.
pub fn e2e_routes(path: &str) -> (u16, String) {
    if path == "/v3/schema" {
        return (200, json!({"order": order("fff000111", false)}).to_string());
    }
    let found = path.strip_prefix("/v3/schema/").and_then(|rest| rest.split_once('/')).and_then(|(object, version)| {
        let version = unescape(version);
        match object {
            "order" => Some(order(&version, true)),
            "customer" => Some(customer(&version)),
            _ => None,
        }
    });
    match found {
        Some(schema) => (200, schema.to_string()),
        None => not_found(),
    }
}

/// A 404 answer with HQ's error envelope.
pub fn not_found() -> (u16, String) {
    (404, json!({"success": false, "message": "not found"}).to_string())
}

/// The mock's `order` schema at `version`, with the `age` column when `with_age`.
pub fn order(version: &str, with_age: bool) -> serde_json::Value {
    let mut schema = json!({
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "updatedDate": {"type": "string", "format": "date-time"},
        },
        "required": ["id"], "primaryKeys": ["id"], "table": "order", "modelVersion": version,
    });
    if with_age {
        schema["properties"]["age"] = json!({"type": "number"});
    }
    schema
}

/// The mock's `customer` schema at `version`.
pub fn customer(version: &str) -> serde_json::Value {
    json!({
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "updatedDate": {"type": "string", "format": "date-time"},
        },
        "required": ["id"], "primaryKeys": ["id"], "table": "customer", "modelVersion": version,
    })
}

/// Percent-decodes a path segment (invalid escapes stay as they are; invalid UTF-8 is
/// replaced).
pub fn unescape(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (bytes[i], bytes.get(i + 1).and_then(|&b| hex(b)), bytes.get(i + 2).and_then(|&b| hex(b))) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Answers a request (method, URI, headers) and its whole body with a status and a body.
pub type BodyHandler = Arc<dyn Fn(&Parts, &[u8]) -> (u16, String) + Send + Sync>;

/// As [`serve`], with each request's body read whole before the handler sees it (uploads,
/// POSTs). Answers have no `Content-Type`.
pub async fn serve_with_body(listener: TcpListener, handler: BodyHandler) {
    let handler: FullHandler = Arc::new(move |parts: &Parts, body: &[u8]| {
        let (status, answer) = handler(parts, body);
        (status, answer.into_bytes())
    });
    serve_full(listener, handler, None).await
}
