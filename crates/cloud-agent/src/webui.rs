//! The web view: the built `ui/` bundle served from the same origin as the API and `/sync`.
//! Owns the mapping of request paths to files (content types, cache headers, the security
//! headers of the page) and the client-route fallback to `index.html`; `tower-http`'s
//! `ServeFile` sends the file (precompressed `.br` / `.gz` siblings, HEAD, ranges, conditional
//! requests).
//!
//! It must never serve a file outside the bundle folder: request paths with `..`, `.`, empty,
//! backslash or NUL segments are refused before the file system is touched, and a file that
//! resolves (through a symlink) outside the folder is refused too. It never answers for the
//! API's own prefixes, so a mistyped API call gets a JSON 404, not a page.

use std::path::{Path, PathBuf};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tower::ServiceExt;
use tower_http::services::ServeFile;

/// Where the built bundle is.
#[derive(Debug, Clone, clap::Args)]
pub struct UiArgs {
    /// The built web view (`ui/dist`). Default: `ui/dist` under the working directory, next to
    /// the binary, or in the source tree the binary was built in.
    #[arg(long, env = "JARVIS_UI_DIR")]
    pub ui_dir: Option<PathBuf>,
}

impl UiArgs {
    /// The folder to serve, if there is one with an `index.html`.
    pub fn resolve(&self) -> Option<PathBuf> {
        if let Some(d) = &self.ui_dir {
            return Some(d.clone());
        }
        let mut candidates = vec![PathBuf::from("ui/dist")];
        if let Ok(exe) = std::env::current_exe()
            && let Some(dir) = exe.parent()
        {
            candidates.push(dir.join("ui"));
            candidates.push(dir.join("ui/dist"));
            // target/{debug,release}/jarvis-cloud in the source tree.
            candidates.push(dir.join("../../ui/dist"));
        }
        candidates
            .into_iter()
            .find(|d| d.join("index.html").is_file())
    }
}

/// The Content-Security-Policy of the page: scripts only from this origin (no inline script, no
/// eval), so even a rendering bug could not run script that came from workspace content.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' blob: data:; connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// Adds the web view as the fallback of `router`.
pub fn with_ui(router: Router, args: &UiArgs) -> Router {
    let dir = args.resolve();
    match &dir {
        Some(d) => tracing::info!(dir = %d.display(), "serving the web view"),
        None => tracing::info!("no built web view found (cd ui && npm ci && npm run build)"),
    }
    router.fallback(move |request: Request| {
        let dir = dir.clone();
        async move { serve(dir.as_deref(), request).await }
    })
}

/// What a request path maps to.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A file of the bundle (relative path inside the folder).
    File(String),
    /// A client route: answer with `index.html`.
    App,
    /// Not ours (an API prefix) or not found.
    NotFound,
    /// A path that tries to leave the folder or is malformed.
    Refused,
}

const API_PREFIXES: &[&str] = &["/api/", "/blobs/", "/sync", "/v1/", "/webhooks/"];

/// Maps a request path (still percent-encoded) to what to serve. Pure: no file system access.
pub fn lookup(path: &str) -> Lookup {
    if API_PREFIXES.iter().any(|p| path.starts_with(p)) {
        return Lookup::NotFound;
    }
    let Some(decoded) = percent_decode(path) else {
        return Lookup::Refused;
    };
    let Some(rel) = decoded.strip_prefix('/') else {
        return Lookup::Refused;
    };
    if rel.is_empty() {
        return Lookup::App;
    }
    if rel.contains('\\') || rel.contains('\0') {
        return Lookup::Refused;
    }
    // A trailing slash is a client route like any other; inner empty segments are not.
    let trimmed = rel.strip_suffix('/').unwrap_or(rel);
    if trimmed
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Lookup::Refused;
    }
    let last = trimmed.rsplit('/').next().unwrap_or(trimmed);
    if last.contains('.') {
        Lookup::File(trimmed.to_owned())
    } else {
        Lookup::App
    }
}

/// `%XX` decoding; None for a malformed escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            out.push(v);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

pub fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit('.').next().unwrap_or("");
    match ext.to_ascii_lowercase().as_str() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "txt" => "text/plain; charset=utf-8",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

/// Vite names everything under `assets/` by content hash: cache those for a year; everything
/// else (index.html above all) must be revalidated so a new build is picked up at once.
fn cache_control(rel: &str) -> &'static str {
    if rel.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    }
}

fn not_found(api: bool) -> Response {
    if api {
        crate::http::ApiError::new(crate::http::ErrorCode::NotFound, "no such endpoint")
            .into_response()
    } else {
        (StatusCode::NOT_FOUND, "not found").into_response()
    }
}

async fn serve(dir: Option<&Path>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let method = request.method();
    if method != Method::GET && method != Method::HEAD {
        return not_found(API_PREFIXES.iter().any(|p| path.starts_with(p)));
    }
    let rel = match lookup(&path) {
        Lookup::Refused => {
            tracing::info!(path, "refused a web view path");
            return (StatusCode::BAD_REQUEST, "bad path").into_response();
        }
        Lookup::NotFound => return not_found(true),
        Lookup::App => "index.html".to_owned(),
        Lookup::File(rel) => rel,
    };
    let Some(dir) = dir else {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "The web view is not built. Run: cd ui && npm ci && npm run build\n",
        )
            .into_response();
    };
    if !really_inside(dir, &rel).await {
        return not_found(false);
    }
    // tower-http serves the file: HEAD, conditional and range requests, and the precompressed
    // `.br` / `.gz` sibling the client accepts (the UI build writes them).
    let file = ServeFile::new(dir.join(&rel))
        .precompressed_br()
        .precompressed_gzip();
    let mut r = match file.oneshot(request).await {
        Ok(r) => r.map(Body::new),
        Err(e) => match e {},
    };
    if !r.status().is_success() && r.status() != StatusCode::NOT_MODIFIED {
        return r;
    }
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(&rel)),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control(&rel)),
    );
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if rel == "index.html" {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    r
}

/// Whether `rel` and the precompressed siblings of it that exist all really lie under `dir`
/// (a symlink in the bundle pointing out of it is never followed out). `ServeFile` would
/// follow it.
async fn really_inside(dir: &Path, rel: &str) -> bool {
    let Ok(root) = tokio::fs::canonicalize(dir).await else {
        return false;
    };
    for name in [rel.to_owned(), format!("{rel}.gz"), format!("{rel}.br")] {
        match tokio::fs::canonicalize(root.join(&name)).await {
            Ok(real) if !real.starts_with(&root) => {
                tracing::warn!(path = rel, "a web view file resolves outside its folder");
                return false;
            }
            // Missing is fine here: ServeFile answers 404 or skips the sibling.
            _ => {}
        }
    }
    true
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn paths_map_to_files_routes_or_refusals() {
        let cases = [
            ("/", Lookup::App),
            ("/sessions/abc", Lookup::App),
            ("/sessions/abc/", Lookup::App),
            ("/index.html", Lookup::File("index.html".into())),
            (
                "/assets/index-abc123.js",
                Lookup::File("assets/index-abc123.js".into()),
            ),
            ("/api/nope", Lookup::NotFound),
            ("/blobs/xyz", Lookup::NotFound),
            ("/webhooks/nope", Lookup::NotFound),
            ("/../etc/passwd", Lookup::Refused),
            ("/assets/../../etc/passwd", Lookup::Refused),
            ("/%2e%2e/etc/passwd", Lookup::Refused),
            ("/assets/%2E%2E/%2E%2E/secret.txt", Lookup::Refused),
            ("/assets/..%2fsecret.txt", Lookup::Refused),
            ("/assets/..%5csecret.txt", Lookup::Refused),
            ("/a//b.js", Lookup::Refused),
            ("/./index.html", Lookup::Refused),
            ("/x%00.js", Lookup::Refused),
            ("/bad%zz.js", Lookup::Refused),
            ("/bad%ff.js", Lookup::Refused),
        ];
        for (path, want) in cases {
            assert_eq!(lookup(path), want, "{path}");
        }
    }

    async fn get(port: u16, path: &str, extra: &str) -> (u16, String, Vec<u8>) {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let split = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&buf[..split]).to_string();
        let status = head[9..12].parse().unwrap();
        (status, head.to_ascii_lowercase(), buf[split + 4..].to_vec())
    }

    #[tokio::test]
    async fn serves_the_bundle_and_never_a_file_outside_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dist = tmp.path().join("dist");
        std::fs::create_dir_all(dist.join("assets")).unwrap();
        std::fs::write(dist.join("index.html"), "<!doctype html><title>J</title>").unwrap();
        std::fs::write(dist.join("assets/app-1a2b.js"), "console.log(1)").unwrap();
        std::fs::write(dist.join("assets/app-1a2b.js.gz"), b"\x1f\x8bgz").unwrap();
        std::fs::write(tmp.path().join("secret.txt"), "top secret").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(tmp.path().join("secret.txt"), dist.join("link.txt")).unwrap();

        let router = with_ui(
            Router::new().route("/healthz", axum::routing::get(|| async { "ok" })),
            &UiArgs {
                ui_dir: Some(dist.clone()),
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

        let (s, head, body) = get(port, "/", "").await;
        assert_eq!(s, 200);
        assert!(head.contains("content-type: text/html"), "{head}");
        assert!(head.contains("cache-control: no-cache"), "{head}");
        assert!(head.contains("content-security-policy: default-src 'self'; script-src 'self'"));
        assert_eq!(body, b"<!doctype html><title>J</title>");

        // A client route gets the app.
        let (s, _, body) = get(port, "/sessions/s1", "").await;
        assert_eq!(
            (s, body.as_slice()),
            (200, &b"<!doctype html><title>J</title>"[..])
        );

        let (s, head, body) = get(port, "/assets/app-1a2b.js", "").await;
        assert_eq!(s, 200);
        assert!(head.contains("content-type: text/javascript"), "{head}");
        assert!(head.contains("immutable"), "{head}");
        assert!(!head.contains("content-encoding"), "{head}");
        assert_eq!(body, b"console.log(1)");
        let (s, head, body) =
            get(port, "/assets/app-1a2b.js", "Accept-Encoding: gzip, br\r\n").await;
        assert_eq!(s, 200);
        assert!(head.contains("content-encoding: gzip"), "{head}");
        assert_eq!(body, b"\x1f\x8bgz");
        // With a brotli sibling too, a client taking only brotli gets it, with the same headers.
        std::fs::write(dist.join("assets/app-1a2b.js.br"), b"br-bytes").unwrap();
        let (s, head, body) = get(port, "/assets/app-1a2b.js", "Accept-Encoding: br\r\n").await;
        assert_eq!(s, 200);
        assert!(head.contains("content-encoding: br"), "{head}");
        assert!(head.contains("content-type: text/javascript"), "{head}");
        assert!(head.contains("vary: accept-encoding"), "{head}");
        assert_eq!(body, b"br-bytes");

        // Routes of the API still win; unknown API paths are JSON 404s, not the page.
        assert_eq!(get(port, "/healthz", "").await.0, 200);
        let (s, _, body) = get(port, "/api/nope", "").await;
        assert_eq!(s, 404);
        assert!(String::from_utf8_lossy(&body).contains("not_found"));

        for hostile in [
            "/../secret.txt",
            "/assets/../../secret.txt",
            "/%2e%2e/secret.txt",
            "/assets/%2e%2e%2f%2e%2e%2fsecret.txt",
            "/..%5csecret.txt",
        ] {
            let (s, _, body) = get(port, hostile, "").await;
            assert_eq!(s, 400, "{hostile}");
            assert!(!String::from_utf8_lossy(&body).contains("top secret"));
        }
        // A symlink inside the bundle that points out of it is not followed out.
        #[cfg(unix)]
        {
            let (s, _, body) = get(port, "/link.txt", "").await;
            assert_eq!(s, 404);
            assert!(!String::from_utf8_lossy(&body).contains("top secret"));
        }
        let (s, _, _) = get(port, "/missing.js", "").await;
        assert_eq!(s, 404);
    }
}
