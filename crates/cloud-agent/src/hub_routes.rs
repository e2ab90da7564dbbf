//! The hub's own routes: `/sync` (the Hocuspocus protocol over a WebSocket), `/healthz`,
//! `/metrics`, and blobs. Handlers are a few lines over `jarvis_sync::hub`; the socket task only
//! moves bytes between the WebSocket and a [`HubConnection`](jarvis_sync::hub::HubConnection).
//! Served alone (benchmarks) or as part of `crate::app::app`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use jarvis_sync::hub::{CloseReason, Hub, Outbound, close_code};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::control::Control;

#[derive(Clone)]
pub struct AppState {
    pub hub: Hub,
    pub shutdown: CancellationToken,
    pub sockets: TaskTracker,
    pub blobs: Arc<crate::blobs::BlobService>,
    /// Who may read `/metrics`; None (benchmarks, no tokens) answers anyone.
    pub control: Option<Arc<Control>>,
}

pub fn router(state: AppState) -> Router {
    let blobs = crate::blobs::router(state.blobs.clone());
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/sync", get(sync_socket))
        .with_state(state)
        .merge(blobs)
}

async fn healthz() -> &'static str {
    "ok"
}

/// `/metrics` answers an admin user's token whose scopes cover `metrics` (read-only is fine);
/// a server without the API (benchmarks) has no tokens and answers anyone.
async fn metrics(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    if let Some(control) = &state.control {
        let token = crate::http::bearer(&headers).unwrap_or_default();
        let allowed = control
            .identify(token)
            .map_err(crate::http::ApiError::from)
            .and_then(|who| {
                who.may(crate::access::Target::Metrics, crate::access::Action::Read)
                    .map_err(crate::http::ApiError::from)
            });
        if let Err(e) = allowed {
            return e.into_response();
        }
    }
    match crate::metrics::render(&state.hub) {
        Ok((text, content_type)) => ([(header::CONTENT_TYPE, content_type)], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn sync_socket(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    let limit = state.hub.config().limits.max_frame_bytes;
    // The socket layer allows a little more than the protocol limit, so a moderately oversized
    // frame reaches the decoder and gets a clean 1009 close with a reason; anything larger is
    // cut off by the socket layer itself.
    // Small buffers: thousands of idle-ish sockets must not cost 256 KiB each; frames larger
    // than a buffer still arrive whole (the buffer grows for them).
    ws.read_buffer_size(16 * 1024)
        .write_buffer_size(16 * 1024)
        .max_message_size(limit.saturating_mul(2))
        .max_frame_size(limit.saturating_mul(2))
        .on_upgrade(move |socket| {
            let tracker = state.sockets.clone();
            tracker.track_future(serve_socket(socket, state))
        })
}

async fn serve_socket(socket: WebSocket, state: AppState) {
    let (mut conn, mut outbox, kill) = state.hub.connect();
    let id = conn.id();
    let (mut sink, mut stream) = socket.split();
    let close = loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(WsMessage::Binary(bytes))) => {
                    if let Err(reason) = conn.handle(&bytes).await {
                        break Some(reason);
                    }
                }
                Some(Ok(WsMessage::Text(_))) => {
                    break Some(CloseReason::new(close_code::UNSUPPORTED_DATA, "binary frames only"));
                }
                Some(Ok(WsMessage::Close(_))) | None => break None,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::info!(conn = id, error = %e, "socket error");
                    break Some(CloseReason::new(close_code::MESSAGE_TOO_BIG, format!("socket error: {e}")));
                }
            },
            out = outbox.recv() => {
                let Some(first) = out else { break None };
                // Write everything already queued before one flush: under load this turns many
                // small frames into few syscalls.
                let mut next = Some(first);
                let mut closing = None;
                while let Some(item) = next.take() {
                    match item {
                        Outbound::Frame(f) => {
                            if sink.feed(WsMessage::Binary(f.into())).await.is_err() {
                                break;
                            }
                        }
                        Outbound::Close(reason) => { closing = Some(reason); break; }
                    }
                    next = outbox.try_recv().ok();
                }
                if sink.flush().await.is_err() { break None; }
                if closing.is_some() { break closing; }
            }
            _ = kill.cancelled() => {
                break Some(CloseReason::new(close_code::TRY_AGAIN_LATER, "connection fell behind or storage failed; reconnect"));
            }
            _ = state.shutdown.cancelled() => {
                break Some(CloseReason::new(close_code::GOING_AWAY, "server shutting down"));
            }
        }
    };
    if let Some(reason) = close {
        tracing::info!(conn = id, code = reason.code, reason = %reason.reason, "closing socket");
        let _ = sink
            .send(WsMessage::Close(Some(CloseFrame {
                code: reason.code,
                reason: reason.reason.into(),
            })))
            .await;
    }
    drop(conn);
}
