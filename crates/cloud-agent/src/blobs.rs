//! `PUT /blobs/<hash>` and `GET /blobs/<hash>`: content-addressed file contents for a workspace,
//! named by the `X-Jarvis-Workspace` header and authorised by the bearer token's access to that
//! workspace's index document (read for GET, read-write for PUT). Bodies are streamed to and from
//! disk, never held whole; an upload whose bytes do not hash to its name is refused and dropped.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use jarvis_sync::blob::{BlobError, BlobStore};
use jarvis_sync::hub::{Access, Authorizer};

use serde_json::json;

use crate::http::{ApiError, ErrorCode};

pub struct BlobService {
    pub root: std::path::PathBuf,
    pub authorizer: Arc<dyn Authorizer>,
    pub max_bytes: u64,
    /// Per-user upload quotas (None: none, e.g. benchmarks without a control plane).
    pub quota: Option<Arc<crate::control::Control>>,
}

fn api_error(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError::new(code, message)
}

fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    api_error(code, message).into_response()
}

impl BlobService {
    /// The workspace's store, after checking the caller may `need` it.
    fn authorize(&self, headers: &HeaderMap, need: Access) -> Result<BlobStore, ApiError> {
        self.authorize_as(headers, need).map(|(s, _, _)| s)
    }

    /// As [`authorize`](Self::authorize), with the workspace and the bearer token.
    fn authorize_as(
        &self,
        headers: &HeaderMap,
        need: Access,
    ) -> Result<(BlobStore, String, String), ApiError> {
        let ws = headers
            .get("x-jarvis-workspace")
            .and_then(|v| v.to_str().ok())
            .filter(|w| jarvis_sync::doc::DocName::workspace_index(w).is_ok())
            .ok_or_else(|| {
                api_error(
                    ErrorCode::InvalidRequest,
                    "X-Jarvis-Workspace must name a workspace",
                )
            })?;
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| api_error(ErrorCode::Unauthorized, "missing bearer token"))?;
        match self.authorizer.authorize(token, &format!("ws/{ws}/index")) {
            Ok(Access::ReadOnly) if need == Access::ReadWrite => {
                Err(api_error(ErrorCode::Forbidden, "this token is read-only"))
            }
            Ok(_) => {
                let mut store = BlobStore::new(self.root.join(ws));
                store.max_bytes = self.max_bytes;
                Ok((store, ws.to_owned(), token.to_owned()))
            }
            Err(reason) => Err(api_error(ErrorCode::Forbidden, reason)),
        }
    }
}

pub async fn put_blob(
    State(svc): State<Arc<BlobService>>,
    Path(hash): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (mut store, ws, token) = match svc.authorize_as(&headers, Access::ReadWrite) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    // The uploader's quota, checked from the declared length before reading, and as the
    // writer's limit while streaming.
    let mut charge = None;
    if let Some(control) = &svc.quota {
        let who = match control.identify(&token) {
            Ok(w) => w,
            Err(e) => return error(ErrorCode::Unauthorized, e.to_string()),
        };
        match control.blob_allowance(&who, &ws, &hash) {
            Ok(Some(left)) => {
                let declared = headers
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                if declared.is_some_and(|n| n > left) || left == 0 {
                    return error(
                        ErrorCode::TooLarge,
                        format!("this upload passes your blob quota ({left} bytes left)"),
                    );
                }
                store.max_bytes = store.max_bytes.min(left);
                charge = Some((control.clone(), who));
            }
            Ok(None) => {}
            Err(e) => return error(ErrorCode::Storage, e.to_string()),
        }
    }
    if store.contains(&hash) {
        // Read the body to its end anyway: answering before it is consumed closes the
        // connection under a client that is still sending, which it sees as a broken pipe
        // instead of this answer.
        let mut stream = body.into_data_stream();
        let mut seen = 0u64;
        while let Some(Ok(chunk)) = stream.next().await {
            seen += chunk.len() as u64;
            if seen > svc.max_bytes {
                break;
            }
        }
        return (
            StatusCode::OK,
            Json(json!({"hash": hash, "stored": "already"})),
        )
            .into_response();
    }
    let mut writer = match store.writer(&hash) {
        Ok(w) => w,
        Err(BlobError::InvalidHash(h)) => {
            return error(
                ErrorCode::BadHash,
                format!("{h:?} is not a BLAKE3 hex hash"),
            );
        }
        Err(e) => return error(ErrorCode::Storage, e.to_string()),
    };
    let mut stream = body.into_data_stream();
    loop {
        // An upload that stalls is refused, not held open: the app's `RequestBodyTimeoutLayer`
        // ends the stream with a timeout, which `body_error` says as 408.
        let chunk = match stream.next().await {
            None => break,
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                return crate::http::error::body_error(&e, usize::MAX).into_response();
            }
        };
        match writer.write(&chunk) {
            Ok(()) => {}
            Err(BlobError::TooLarge(max)) => {
                return error(
                    ErrorCode::TooLarge,
                    format!("blobs are limited to {max} bytes"),
                );
            }
            Err(e) => return error(ErrorCode::Storage, e.to_string()),
        }
    }
    match tokio::task::spawn_blocking(move || writer.finish()).await {
        Ok(Ok(size)) => {
            if let Some((control, who)) = charge
                && let Err(e) = control.record_blob(&who, &ws, &hash, size)
            {
                tracing::error!(error = %e, "recording a blob's owner failed");
            }
            (
                StatusCode::CREATED,
                Json(json!({"hash": hash, "size": size})),
            )
                .into_response()
        }
        Ok(Err(BlobError::Mismatch { expected, actual })) => error(
            ErrorCode::BadHash,
            format!("the body hashes to {actual}, not {expected}; nothing was stored"),
        ),
        Ok(Err(e)) => error(ErrorCode::Storage, e.to_string()),
        Err(e) => error(ErrorCode::Storage, e.to_string()),
    }
}

pub async fn get_blob(
    State(svc): State<Arc<BlobService>>,
    Path(hash): Path<String>,
    headers: HeaderMap,
) -> Response {
    let store = match svc.authorize(&headers, Access::ReadOnly) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let path = match store.path(&hash) {
        Ok(p) => p,
        Err(e) => return error(ErrorCode::BadHash, e.to_string()),
    };
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(_) => {
            return error(ErrorCode::NotFound, format!("no blob {hash}"));
        }
    };
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response()
}

pub fn router(svc: Arc<BlobService>) -> axum::Router {
    axum::Router::new()
        .route("/blobs/{hash}", axum::routing::put(put_blob).get(get_blob))
        // Bodies are streamed to disk with their own limit; axum's 2 MB default would refuse
        // every large file.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(svc)
}
