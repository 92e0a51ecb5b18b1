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
    if lines.len() > ingest.transaction_capacity {
        ingest.metrics.rejected.inc();
        return reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
            format!(
                "{} events, over transaction_capacity ({}): send smaller bodies",
                lines.len(),
                ingest.transaction_capacity
            ),
        );
    }
    let n = lines.len();
    let state = Arc::clone(&ingest);
    let result = tokio::task::spawn_blocking(move || {
        let served = &state.served;
        ChannelCounters::add(&served.counters.put_attempts, n as u64);
        let mut tx = served.channel.begin()?;
        for range in lines {
            tx.put(&body[range])?;
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
                format!("{{\"accepted\":{n}}}"),
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
