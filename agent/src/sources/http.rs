//! HTTP ingest: a POST body of newline-delimited JSON events becomes one channel transaction.
//!
//! | reply | when |
//! |---|---|
//! | 200 `{"accepted": N}` | the transaction's commit is durable |
//! | 400 | a line is not JSON (nothing was put) |
//! | 413 | a line is over `max_event_bytes`, the body over `max_body_bytes`, or the lines over `transaction_capacity` |
//! | 429, `Retry-After: 1` | the channel stayed full for `keep_alive_ms` |
//! | 503, `Retry-After: 10` | a directory is below `minimum_required_space_bytes` |
//! | 500 | the channel failed |
//!
//! Blank lines are skipped. The put and commit run on tokio's blocking pool, so a sync never
//! blocks the event loop; concurrent requests share syncs through the channel's group commit.
//!
//! `POST /v1/logs` takes OTLP/HTTP logs in their JSON encoding (`ExportLogsServiceRequest`):
//! each log record becomes one event, `{"resource": ..., "scope": ..., "log": RECORD}`, and the
//! whole request one transaction, answered `{}` with 200 after the durable commit (the same
//! 413, 429 and 503 as above; 400 for a body that is not such a request). The protobuf encoding
//! is refused with 415.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::de::IgnoredAny;
use sluicegate_core::Error as CoreError;
use sluicegate_file::FileChannelError;

use crate::metrics::{ChannelCounters, Component, Served};

struct Ingest {
    served: Served,
    metrics: Component,
    max_event_bytes: usize,
    transaction_capacity: usize,
}

/// The ingest routes (`POST /` and `POST /events`) for one channel.
pub fn router(served: Served, metrics: Component, max_body_bytes: usize) -> Router {
    let config = served.channel.config();
    let state = Arc::new(Ingest {
        max_event_bytes: config.max_event_bytes as usize,
        transaction_capacity: config.transaction_capacity as usize,
        served,
        metrics,
    });
    Router::new()
        .route("/", post(ingest))
        .route("/events", post(ingest))
        .route("/v1/logs", post(otlp_logs))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

fn reply(status: StatusCode, retry_after: Option<u32>, message: String) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut r = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    if let Some(s) = retry_after {
        if let Ok(v) = s.to_string().parse() {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    r
}

async fn ingest(State(ingest): State<Arc<Ingest>>, body: Bytes) -> Response {
    let started = Instant::now();
    let mut lines = Vec::new();
    let mut start = 0usize;
    for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
        let at = start;
        start += raw.len() + 1;
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if line.len() > ingest.max_event_bytes {
            ingest.metrics.rejected.inc();
            return reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                None,
                format!(
                    "line {}: {} bytes, over max_event_bytes ({})",
                    i + 1,
                    line.len(),
                    ingest.max_event_bytes
                ),
            );
        }
        if let Err(e) = serde_json::from_slice::<IgnoredAny>(line) {
            ingest.metrics.rejected.inc();
            return reply(
                StatusCode::BAD_REQUEST,
                None,
                format!("line {}: not JSON: {e}", i + 1),
            );
        }
        lines.push(at..at + line.len());
    }
    let events: Vec<Bytes> = lines.into_iter().map(|r| body.slice(r)).collect();
    commit(&ingest, events, started, |n| {
        format!("{{\"accepted\":{n}}}")
    })
    .await
}

/// The JSON encoding of an OTLP `ExportLogsServiceRequest`, as far as this source reads it.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct OtlpLogs {
    #[serde(default)]
    resource_logs: Vec<OtlpResourceLogs>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct OtlpResourceLogs {
    #[serde(default)]
    resource: serde_json::Value,
    #[serde(default)]
    scope_logs: Vec<OtlpScopeLogs>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct OtlpScopeLogs {
    #[serde(default)]
    scope: serde_json::Value,
    #[serde(default)]
    log_records: Vec<serde_json::Value>,
}

async fn otlp_logs(
    State(ingest): State<Arc<Ingest>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let kind = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if kind.starts_with("application/x-protobuf") {
        ingest.metrics.rejected.inc();
        return reply(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
            "OTLP's protobuf encoding is not read here: send Content-Type application/json".into(),
        );
    }
    let request: OtlpLogs = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            ingest.metrics.rejected.inc();
            return reply(
                StatusCode::BAD_REQUEST,
                None,
                format!("not an OTLP logs request in JSON: {e}"),
            );
        }
    };
    let mut events = Vec::new();
    for rl in &request.resource_logs {
        for sl in &rl.scope_logs {
            for record in &sl.log_records {
                let event = serde_json::json!({
                    "resource": rl.resource,
                    "scope": sl.scope,
                    "log": record,
                });
                let bytes = Bytes::from(event.to_string());
                if bytes.len() > ingest.max_event_bytes {
                    ingest.metrics.rejected.inc();
                    return reply(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        None,
                        format!(
                            "a log record of {} bytes, over max_event_bytes ({})",
                            bytes.len(),
                            ingest.max_event_bytes
                        ),
                    );
                }
                events.push(bytes);
            }
        }
    }
    commit(&ingest, events, started, |_| "{}".to_string()).await
}

/// Puts `events` in one transaction and commits it; the reply comes after the durable commit.
async fn commit(
    ingest: &Arc<Ingest>,
    events: Vec<Bytes>,
    started: Instant,
    ok_body: impl Fn(usize) -> String,
) -> Response {
    if events.len() > ingest.transaction_capacity {
        ingest.metrics.rejected.inc();
        return reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
            format!(
                "{} events, over transaction_capacity ({}): send smaller bodies",
                events.len(),
                ingest.transaction_capacity
            ),
        );
    }
    let n = events.len();
    let state = Arc::clone(ingest);
    let result = tokio::task::spawn_blocking(move || {
        let served = &state.served;
        ChannelCounters::add(&served.counters.put_attempts, n as u64);
        let mut tx = served.channel.begin()?;
        for event in &events {
            tx.put(event)?;
        }
        tx.commit()?;
        ChannelCounters::add(&served.counters.put_successes, n as u64);
        Ok::<(), FileChannelError>(())
    })
    .await;
    match result {
        Ok(Ok(())) => {
            let m = &ingest.metrics;
            m.events.inc_by(n as u64);
            m.batches.inc();
            m.latency.observe(started.elapsed().as_secs_f64());
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                ok_body(n),
            )
                .into_response()
        }
        Ok(Err(e)) => {
            let (status, retry) = match &e {
                FileChannelError::Full(_) => (StatusCode::TOO_MANY_REQUESTS, Some(1)),
                FileChannelError::InsufficientSpace { .. } => {
                    (StatusCode::SERVICE_UNAVAILABLE, Some(10))
                }
                FileChannelError::Channel(CoreError::EventTooLarge { .. })
                | FileChannelError::Channel(CoreError::TransactionFull) => {
                    (StatusCode::PAYLOAD_TOO_LARGE, None)
                }
                FileChannelError::Channel(c) if c.is_full() => {
                    (StatusCode::TOO_MANY_REQUESTS, Some(1))
                }
                _ => (StatusCode::INTERNAL_SERVER_ERROR, None),
            };
            if status.is_server_error() && retry.is_none() {
                ingest.metrics.errors.inc();
                tracing::error!("ingest failed: {e}");
            } else {
                ingest.metrics.rejected.inc();
            }
            reply(status, retry, e.to_string())
        }
        Err(e) => {
            ingest.metrics.errors.inc();
            reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                None,
                format!("ingest task failed: {e}"),
            )
        }
    }
}
