//! What the cloud agent's API tests share: a server built exactly as served (`server::build`,
//! so `app()`), requests sent to it with `oneshot`, and the route table read from the sources.
//! Only crash, SIGTERM, handoff and socket tests start the process (`tests/tests`).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use clap::Parser;
use jarvis_cloud::server::{Built, ServeArgs, build};
use serde_json::Value;
use tower::ServiceExt;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

/// A server on a temporary data directory, its router driven with `oneshot`.
pub struct TestApp {
    pub dir: tempfile::TempDir,
    pub built: Built,
    /// A full-scope token of the admin user.
    pub admin: String,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Builds the server with `extra` options. The cloud runner reaches the hub over a loopback
/// listener, as in production, so one is served beside the `oneshot` calls.
pub async fn start(extra: &[&str]) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_string_lossy().into_owned();
    let mut argv = vec![
        "serve",
        "--data-dir",
        &data,
        "--port",
        "0",
        "--sandbox",
        "limits",
    ];
    argv.extend_from_slice(extra);
    let cli = Cli::parse_from(argv);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let built = build(&cli.serve, local, shutdown.clone()).await.unwrap();
    tokio::spawn(jarvis_cloud::limits::serve(
        listener,
        built.router.clone(),
        built.limits,
        jarvis_cloud::limits::TrustedProxies::default(),
        shutdown.clone(),
    ));
    let admin = built
        .control
        .create_token(
            jarvis_cloud::control::ADMIN_USER,
            None,
            "test admin",
            &["*".to_owned()],
            false,
        )
        .unwrap();
    TestApp {
        dir,
        built,
        admin,
        shutdown,
    }
}

/// A response: status, JSON body (Null when empty or not JSON) and the raw text.
pub struct Reply {
    pub status: StatusCode,
    pub json: Value,
    pub text: String,
    pub bytes: Vec<u8>,
    pub headers: axum::http::HeaderMap,
}

impl TestApp {
    /// A new user and a full-scope token of theirs.
    pub fn user(&self, name: &str) -> (String, String) {
        let c = &self.built.control;
        let u = c.create_user(name, false).unwrap();
        let t = c
            .create_token(&u.id, None, name, &["*".to_owned()], false)
            .unwrap();
        (u.id, t)
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        self.send(req.body(body).unwrap()).await
    }

    pub async fn send(&self, req: Request<Body>) -> Reply {
        let resp = self.built.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Reply {
            status,
            json: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
            bytes: bytes.to_vec(),
            headers,
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }
}

/// Every (method, path) the server registers, read from its sources: `.route("path", …)`
/// with the methods chained in that call.
pub fn route_table() -> BTreeSet<(String, String)> {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeSet::new();
    let mut files = Vec::new();
    let mut dirs = vec![src];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        // Test modules build their own routers.
        let text = text.split("#[cfg(test)]").next().unwrap_or_default();
        let mut rest = text;
        while let Some(i) = rest.find(".route(") {
            rest = &rest[i + ".route(".len()..];
            let mut depth = 1;
            let mut end = 0;
            for (j, ch) in rest.char_indices() {
                match ch {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            end = j;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let call = &rest[..end];
            let Some(q) = call.find('"') else { continue };
            let Some(q2) = call[q + 1..].find('"') else {
                continue;
            };
            let route = call[q + 1..q + 1 + q2].to_owned();
            let methods = &call[q + 2 + q2..];
            for (needle, m) in [
                ("get(", "GET"),
                ("post(", "POST"),
                ("put(", "PUT"),
                ("delete(", "DELETE"),
                ("patch(", "PATCH"),
            ] {
                let found = methods.match_indices(needle).any(|(k, _)| {
                    k == 0
                        || !methods.as_bytes()[k - 1].is_ascii_alphanumeric()
                            && methods.as_bytes()[k - 1] != b'_'
                });
                if found {
                    out.insert((m.to_owned(), route.clone()));
                }
            }
        }
    }
    out
}
