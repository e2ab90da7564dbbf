//! Desktop updates served from the data dir, in the Tauri updater's dynamic-endpoint format:
//! `GET /updates/{target}/{arch}/{current_version}` answers 204 when there is nothing newer for
//! that platform, else `{version, notes, pub_date, url, signature}`; `GET /updates/files/{name}`
//! serves the artifact. `jarvis-cloud update publish` puts a release there.
//!
//! The server never signs anything and never needs the signing key: the signature is made where
//! the app is built (`tauri signer sign`) and checked by the app against the public key it was
//! built with, so a tampered manifest or artifact here is refused on the desktop.

use std::path::{Path, PathBuf};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::http::{ApiError, ErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("the manifest is not valid JSON: {0}")]
    Manifest(serde_json::Error),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub version: String,
    #[serde(default)]
    pub notes: String,
    #[serde(default)]
    pub pub_date: String,
    /// `<target>-<arch>` (e.g. `linux-x86_64`) → the artifact and its signature.
    #[serde(default)]
    pub platforms: std::collections::BTreeMap<String, Platform>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Platform {
    /// A file name under `<data>/updates/files/`.
    pub file: String,
    /// The content of the `.sig` file `tauri signer sign` wrote (base64 of a minisign signature).
    pub signature: String,
}

pub fn root(data_dir: &Path) -> PathBuf {
    data_dir.join("updates")
}

fn manifest_path(data_dir: &Path) -> PathBuf {
    root(data_dir).join("manifest.json")
}

/// A file name we are willing to serve or write: no separators, no dot files, nothing odd.
pub fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
}

fn valid_platform(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 64
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// Dotted numeric versions with an optional pre-release after `-` (which sorts before the
/// release): enough for app versions, and strict about anything else.
fn parse_version(v: &str) -> Option<(Vec<u64>, Option<String>)> {
    let v = v.trim_start_matches('v');
    let (core, pre) = match v.split_once('-') {
        Some((c, p)) => (c, Some(p.to_owned())),
        None => (v, None),
    };
    let parts: Option<Vec<u64>> = core.split('.').map(|p| p.parse().ok()).collect();
    let parts = parts?;
    (!parts.is_empty() && parts.len() <= 4).then_some((parts, pre))
}

pub fn newer(candidate: &str, current: &str) -> bool {
    let (Some((a, ap)), Some((b, bp))) = (parse_version(candidate), parse_version(current)) else {
        return false;
    };
    let len = a.len().max(b.len());
    for i in 0..len {
        let (x, y) = (
            a.get(i).copied().unwrap_or(0),
            b.get(i).copied().unwrap_or(0),
        );
        if x != y {
            return x > y;
        }
    }
    match (ap, bp) {
        (None, Some(_)) => true,
        (Some(x), Some(y)) => x > y,
        _ => false,
    }
}

pub fn read_manifest(data_dir: &Path) -> Result<Option<Manifest>, UpdateError> {
    match std::fs::read(manifest_path(data_dir)) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(UpdateError::Manifest),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(UpdateError::Io("reading the manifest".into(), e)),
    }
}

/// Publishes `file` for `platform` at `version`: the artifact is copied in, then the manifest
/// is replaced atomically (a release with the same version keeps its other platforms).
pub fn publish(
    data_dir: &Path,
    version: &str,
    platform: &str,
    file: &Path,
    signature: &str,
    notes: &str,
    pub_date: &str,
) -> Result<Manifest, UpdateError> {
    if parse_version(version).is_none() {
        return Err(UpdateError::Invalid(format!(
            "{version:?} is not a version like 1.2.3"
        )));
    }
    if !valid_platform(platform) {
        return Err(UpdateError::Invalid(format!(
            "{platform:?} is not a platform like linux-x86_64"
        )));
    }
    let signature = signature.trim();
    if signature.is_empty() {
        return Err(UpdateError::Invalid("the signature is empty".into()));
    }
    // Stored under a name that needs no URL escaping ("My Jarvis_0.2.0_amd64.deb" becomes
    // "My-Jarvis_0.2.0_amd64.deb").
    let name: String = file
        .file_name()
        .map(|n| {
            n.to_string_lossy()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+') {
                        c
                    } else {
                        '-'
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    if !valid_file_name(&name) {
        return Err(UpdateError::Invalid(format!(
            "{} is not a usable file name",
            file.display()
        )));
    }
    let files = root(data_dir).join("files");
    std::fs::create_dir_all(&files)
        .map_err(|e| UpdateError::Io(format!("creating {}", files.display()), e))?;
    let bytes = std::fs::read(file)
        .map_err(|e| UpdateError::Io(format!("reading {}", file.display()), e))?;
    jarvis_sync::paths::atomic_write(&files.join(&name), &bytes, None)
        .map_err(|e| UpdateError::Io("storing the artifact".into(), e))?;
    let mut manifest = match read_manifest(data_dir)? {
        Some(m) if m.version == version => m,
        _ => Manifest {
            version: version.to_owned(),
            ..Manifest::default()
        },
    };
    manifest.notes = notes.to_owned();
    manifest.pub_date = pub_date.to_owned();
    manifest.platforms.insert(
        platform.to_owned(),
        Platform {
            file: name,
            signature: signature.to_owned(),
        },
    );
    let text = serde_json::to_vec_pretty(&manifest).map_err(UpdateError::Manifest)?;
    jarvis_sync::paths::atomic_write(&manifest_path(data_dir), &text, None)
        .map_err(|e| UpdateError::Io("writing the manifest".into(), e))?;
    Ok(manifest)
}

pub fn router(data_dir: PathBuf) -> Router {
    Router::new()
        .route("/updates/files/{name}", get(file))
        .route("/updates/{target}/{arch}/{current}", get(check))
        .with_state(data_dir)
}

fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    ApiError::new(code, message).into_response()
}

/// The absolute base the app should download from: the address it reached us at.
fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get("x-forwarded-host")
        .or_else(|| headers.get(header::HOST))
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let proto = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .filter(|p| *p == "https" || *p == "http")
        .unwrap_or("http");
    format!("{proto}://{host}")
}

async fn check(
    State(data_dir): State<PathBuf>,
    UrlPath((target, arch, current)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let platform = format!("{target}-{arch}");
    if !valid_platform(&platform) {
        return error(ErrorCode::InvalidRequest, "unknown platform");
    }
    if parse_version(&current).is_none() {
        return error(
            ErrorCode::InvalidRequest,
            format!("{current:?} is not a version"),
        );
    }
    let manifest = match read_manifest(&data_dir) {
        Ok(Some(m)) => m,
        Ok(None) => return StatusCode::NO_CONTENT.into_response(),
        Err(e) => {
            tracing::error!(error = %e, "update manifest unreadable");
            return error(ErrorCode::Storage, e.to_string());
        }
    };
    let Some(p) = manifest.platforms.get(&platform) else {
        return StatusCode::NO_CONTENT.into_response();
    };
    if !newer(&manifest.version, &current) {
        return StatusCode::NO_CONTENT.into_response();
    }
    let mut body = json!({
        "version": manifest.version,
        "notes": manifest.notes,
        "url": format!("{}/updates/files/{}", base_url(&headers), p.file),
        "signature": p.signature,
    });
    if !manifest.pub_date.is_empty() {
        body["pub_date"] = json!(manifest.pub_date);
    }
    axum::Json(body).into_response()
}

async fn file(State(data_dir): State<PathBuf>, UrlPath(name): UrlPath<String>) -> Response {
    if !valid_file_name(&name) {
        return error(ErrorCode::InvalidRequest, "not a release file name");
    }
    let path = root(&data_dir).join("files").join(&name);
    match tokio::fs::File::open(&path).await {
        Ok(f) => {
            let len = f.metadata().await.map(|m| m.len()).ok();
            let stream = tokio_util::io::ReaderStream::new(f);
            let mut r = Response::new(Body::from_stream(stream));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/octet-stream"),
            );
            if let Some(len) = len
                && let Ok(v) = header::HeaderValue::from_str(&len.to_string())
            {
                r.headers_mut().insert(header::CONTENT_LENGTH, v);
            }
            r
        }
        Err(_) => error(ErrorCode::NotFound, "no such release file"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::body::to_bytes;
    use tower::ServiceExt;

    #[test]
    fn versions_compare_numerically_and_pre_releases_come_first() {
        assert!(newer("0.2.0", "0.1.9"));
        assert!(newer("0.10.0", "0.9.0"));
        assert!(newer("1.0.0", "1.0.0-rc.1"));
        assert!(!newer("1.0.0-rc.1", "1.0.0"));
        assert!(!newer("1.0.0", "1.0.0"));
        assert!(!newer("1.0", "1.0.0"));
        assert!(!newer("garbage", "0.1.0"));
        assert!(!newer("0.2.0", "garbage"));
    }

    #[test]
    fn hostile_names_are_refused() {
        for bad in ["", "../x", "a/b", ".hidden", "a\\b", "a b", "é"] {
            assert!(!valid_file_name(bad), "{bad:?}");
        }
        assert!(valid_file_name("my-jarvis_0.2.0_amd64.deb"));
    }

    async fn get(app: &Router, uri: &str) -> (StatusCode, Vec<u8>) {
        let r = app
            .clone()
            .oneshot(
                axum::http::Request::get(uri)
                    .header("host", "hub.example:8080")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = r.status();
        (
            status,
            to_bytes(r.into_body(), 1 << 20).await.unwrap().to_vec(),
        )
    }

    #[tokio::test]
    async fn a_published_release_is_offered_to_older_apps_of_its_platform_only() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let app = router(data.clone());
        assert_eq!(
            get(&app, "/updates/linux/x86_64/0.1.0").await.0,
            StatusCode::NO_CONTENT
        );
        let artifact = tmp.path().join("My Jarvis_0.2.0_amd64.deb");
        std::fs::write(&artifact, b"package bytes").unwrap();
        publish(
            &data,
            "0.2.0",
            "linux-x86_64",
            &artifact,
            "c2lnbmF0dXJl\n",
            "Faster handoff.",
            "2026-11-25T20:00:00Z",
        )
        .unwrap();
        let (s, body) = get(&app, "/updates/linux/x86_64/0.1.0").await;
        assert_eq!(s, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["version"], "0.2.0");
        assert_eq!(v["signature"], "c2lnbmF0dXJl");
        assert_eq!(
            v["url"],
            "http://hub.example:8080/updates/files/My-Jarvis_0.2.0_amd64.deb"
        );
        // Up to date, or another platform: nothing.
        assert_eq!(
            get(&app, "/updates/linux/x86_64/0.2.0").await.0,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            get(&app, "/updates/darwin/aarch64/0.1.0").await.0,
            StatusCode::NO_CONTENT
        );
        let (s, bytes) = get(&app, "/updates/files/My-Jarvis_0.2.0_amd64.deb").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(bytes, b"package bytes");
        // Hostile requests.
        assert_eq!(
            get(&app, "/updates/files/..%2Fmanifest.json").await.0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            get(&app, "/updates/files/.manifest").await.0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            get(&app, "/updates/linux/x86_64/not-a-version").await.0,
            StatusCode::BAD_REQUEST
        );
        assert!(
            publish(&data, "x", "linux-x86_64", &artifact, "s", "", "").is_err(),
            "a bad version is refused"
        );
    }
}
