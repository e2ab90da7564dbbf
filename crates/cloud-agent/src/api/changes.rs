//! `GET /api/sessions/changes`: server-sent events that make a session list live.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use serde_json::json;

use crate::http::{Caller, bearer};
use crate::services::Services;

/// `GET /api/sessions/changes`: server-sent events that make a session list live. One
/// `changed` event (data `{"sessions": [ids]}`) per burst of changes to sessions the caller may
/// open, coalesced over 200 ms; `lagged` when the stream fell behind (refetch everything); a
/// comment every 15 s. The list itself stays `GET /api/sessions`. The caller's token is checked
/// again before every event, so a revoked token's stream ends at once.
pub async fn session_changes(
    State(api): State<Services>,
    Caller(who): Caller,
    headers: axum::http::HeaderMap,
) -> Response {
    // Kept to check again before every event (Caller already proved it is there).
    let token = bearer(&headers).unwrap_or_default().to_owned();
    let mut changes = api.hub.changes();
    // Ends with the server: a graceful shutdown waits for every open response.
    let shutdown = api.cloud.shutdown().clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::convert::Infallible>>(16);
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        if tx
            .send(Ok(": following session changes\n\n".into()))
            .await
            .is_err()
        {
            return;
        }
        let mut keepalive = tokio::time::interval(Duration::from_secs(15));
        keepalive.tick().await;
        loop {
            let first = tokio::select! {
                r = changes.recv() => r,
                _ = keepalive.tick() => {
                    if api.control.identify(&token).is_err()
                        || tx.send(Ok(": keep-alive\n\n".into())).await.is_err()
                    {
                        return;
                    }
                    continue;
                }
                _ = tx.closed() => return,
                _ = shutdown.cancelled() => return,
            };
            let mut names = Vec::new();
            let mut lagged = false;
            match first {
                Ok(n) => names.push(n),
                Err(RecvError::Lagged(_)) => lagged = true,
                Err(RecvError::Closed) => return,
            }
            let until = tokio::time::Instant::now() + Duration::from_millis(200);
            loop {
                match tokio::time::timeout_at(until, changes.recv()).await {
                    Ok(Ok(n)) => names.push(n),
                    Ok(Err(RecvError::Lagged(_))) => lagged = true,
                    Ok(Err(RecvError::Closed)) => return,
                    Err(_) => break,
                }
            }
            if api.control.identify(&token).is_err() {
                return;
            }
            let mut ids = std::collections::BTreeSet::new();
            for n in &names {
                // The one rule (`access::decide`, through `check_session`): registered
                // sessions the token's scopes and the user's role let it read.
                if let Some(id) = n.strip_prefix("session/")
                    && api.control.check_session(&who, id).is_ok()
                {
                    ids.insert(id.to_owned());
                }
            }
            let event = if lagged {
                "event: lagged\ndata: {}\n\n".to_owned()
            } else if ids.is_empty() {
                continue;
            } else {
                format!("event: changed\ndata: {}\n\n", json!({ "sessions": ids }))
            };
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut r = Response::new(axum::body::Body::from_stream(stream));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}
