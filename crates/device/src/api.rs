//! The hub's HTTP API with this device's token: typed calls for what a device does (who am I,
//! leases, run settings, handoffs), and [`Api::call`] for the rest. A `429` is waited out as
//! the hub's `Retry-After` says, within a bound, so a rate-limited device goes on instead of
//! failing the session it serves.

use std::time::Duration;

use jarvis_wire::device::{HandoffRequest, HandoffState, Lease, LeaseOp, RunSettings};
use jarvis_wire::{ErrorBody, ErrorCode};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::error::{DeviceError, DeviceResult, LocalContext};

/// The longest a device waits in total on one call that the hub keeps rate-limiting.
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(120);

/// One call's own timeout: long enough for a handoff that waits for the holder (up to 120 s).
const CALL_TIMEOUT: Duration = Duration::from_secs(150);

/// The hub's `Retry-After` (whole seconds), at least 50 ms and at most 30 s; 1 s when absent
/// or unreadable.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Duration {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map_or(Duration::from_secs(1), |s| {
            Duration::from_secs_f64(s.clamp(0.05, 30.0))
        })
}

/// The hub's HTTP API with this device's token.
#[derive(Clone)]
pub struct Api {
    hub: String,
    token: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for Api {
    // Never the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("hub", &self.hub).finish()
    }
}

/// What `GET /api/me` says about the caller.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Me {
    /// This device's id (leases are held under it); None for a token with no device.
    pub device: Option<String>,
    #[serde(flatten)]
    pub rest: serde_json::Map<String, Value>,
}

impl Api {
    pub fn new(hub: &str, token: &str) -> Self {
        Api {
            hub: hub.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// The hub's address, without a trailing slash.
    pub fn hub(&self) -> &str {
        &self.hub
    }

    /// Continue in cloud: the repository at `dir` goes with the session as a git bundle blob
    /// (`.git` itself is never synced as files). None: `dir` is not a repository. Some(bytes):
    /// what was sent.
    pub async fn send_git_state(
        &self,
        session: &str,
        workspace: &str,
        dir: &std::path::Path,
    ) -> DeviceResult<Option<u64>> {
        jarvis_sync::gitstate::send_to_cloud(&self.hub, &self.token, session, workspace, dir)
            .await
            .local(|| "sending the repository's git state".into())
    }

    /// Continue here: the cloud's commits onto the agent's branch of the repository at `dir`
    /// (never onto the user's own branch). None: nothing to bring back.
    pub async fn receive_git_state(
        &self,
        session: &str,
        dir: &std::path::Path,
    ) -> DeviceResult<Option<jarvis_sync::gitstate::BroughtBack>> {
        jarvis_sync::gitstate::receive_from_cloud(&self.hub, &self.token, session, dir)
            .await
            .local(|| "bringing the cloud's commits back".into())
    }

    /// The hub's sync socket.
    pub fn ws_url(&self) -> String {
        ws_url(&self.hub)
    }

    fn unreachable(&self, e: &reqwest::Error) -> DeviceError {
        DeviceError::Unreachable {
            hub: self.hub.clone(),
            reason: e.to_string(),
        }
    }

    /// Any API call; an error answer becomes [`DeviceError::Hub`] with the hub's code.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> DeviceResult<Value> {
        // A hub that rate-limits this token says how long to wait (`Retry-After`); a device
        // waits and goes on rather than failing the session or the benchmark it serves. The
        // total wait is bounded so a hub that never relents still surfaces as an error.
        let mut waited = Duration::ZERO;
        let resp = loop {
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.hub))
                .bearer_auth(&self.token)
                .timeout(CALL_TIMEOUT);
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
            if resp.status() != reqwest::StatusCode::TOO_MANY_REQUESTS {
                break resp;
            }
            let wait = retry_after(resp.headers());
            if waited + wait > MAX_RATE_LIMIT_WAIT {
                break resp;
            }
            tracing::debug!(path, ?wait, "rate-limited by the hub; waiting");
            tokio::time::sleep(wait).await;
            waited += wait;
        };
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(&e))?;
        if status >= 400 {
            return Err(hub_error(status, &bytes));
        }
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| DeviceError::Protocol {
            what: path.to_owned(),
            detail: e.to_string(),
        })
    }

    /// A call whose answer has a known shape.
    pub async fn call_as<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> DeviceResult<T> {
        let v = self.call(method, path, body).await?;
        serde_json::from_value(v).map_err(|e| DeviceError::Protocol {
            what: path.to_owned(),
            detail: e.to_string(),
        })
    }

    pub async fn get(&self, path: &str) -> DeviceResult<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> DeviceResult<Value> {
        self.call(reqwest::Method::POST, path, Some(&body)).await
    }

    /// `GET /api/me`.
    pub async fn me(&self) -> DeviceResult<Me> {
        self.call_as(reqwest::Method::GET, "/api/me", None).await
    }

    /// `POST /api/sessions/{id}/lease`.
    pub async fn lease(&self, session: &str, op: &LeaseOp) -> DeviceResult<Lease> {
        let body = serde_json::to_value(op).map_err(|e| DeviceError::Invalid(e.to_string()))?;
        self.call_as(
            reqwest::Method::POST,
            &format!("/api/sessions/{session}/lease"),
            Some(&body),
        )
        .await
    }

    /// `GET /api/sessions/{id}/settings`: the session's authoritative run settings.
    pub async fn run_settings(&self, session: &str) -> DeviceResult<RunSettings> {
        self.call_as(
            reqwest::Method::GET,
            &format!("/api/sessions/{session}/settings"),
            None,
        )
        .await
    }

    /// `POST /api/sessions/{id}/handoff`.
    pub async fn handoff(
        &self,
        session: &str,
        request: &HandoffRequest,
    ) -> DeviceResult<HandoffState> {
        let body =
            serde_json::to_value(request).map_err(|e| DeviceError::Invalid(e.to_string()))?;
        self.call_as(
            reqwest::Method::POST,
            &format!("/api/sessions/{session}/handoff"),
            Some(&body),
        )
        .await
    }

    /// `POST /api/workspaces`: registers (or re-opens) a workspace.
    pub async fn register_workspace(&self, id: &str) -> DeviceResult<Value> {
        self.post("/api/workspaces", json!({"id": id, "name": id}))
            .await
    }

    /// The workspace a session belongs to, as the hub knows it (None: the hub does not know
    /// the session).
    pub async fn session_workspace(&self, session: &str) -> DeviceResult<Option<String>> {
        match self.get(&format!("/api/sessions/{session}")).await {
            Ok(v) => Ok(v["workspace"].as_str().map(str::to_owned)),
            Err(e) if e.code() == Some(ErrorCode::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The caller's "always allow" answers in a workspace, as the hub keeps them.
    pub async fn always_allow(&self, workspace: &str) -> DeviceResult<Vec<Value>> {
        let v = self
            .get(&format!("/api/workspaces/{workspace}/always-allow"))
            .await?;
        Ok(v["rules"]
            .as_array()
            .map(|a| a.iter().map(|r| r["entry"].clone()).collect())
            .unwrap_or_default())
    }
}

/// An error answer as a typed error: the body is `{code, message}` per the contract; anything
/// else keeps the status and says the body was not one.
fn hub_error(status: u16, bytes: &[u8]) -> DeviceError {
    if let Ok(b) = serde_json::from_slice::<ErrorBody>(bytes) {
        return DeviceError::Hub {
            status,
            code: Some(b.code),
            message: b.message,
        };
    }
    // A code this build does not know (a newer hub), or a body that is not `{code, message}`.
    let v: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    DeviceError::Hub {
        status,
        code: v["code"].as_str().and_then(ErrorCode::parse),
        message: v["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("the hub answered HTTP {status}")),
    }
}

/// The hub's sync socket for its HTTP address.
/// `GET /healthz` on the hub (http or https) within 5 s, in words for a status line:
/// "reachable", "answered <status>" or "unreachable: <why>".
pub async fn hub_health(hub: &str) -> String {
    let url = format!("{}/healthz", hub.trim_end_matches('/'));
    let client = match reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => return format!("not checked: {e}"),
    };
    match client.get(&url).send().await {
        Ok(r) if r.status().is_success() => "reachable".into(),
        Ok(r) => format!("answered {}", r.status()),
        Err(e) if e.is_timeout() => "unreachable: timed out".into(),
        Err(e) => format!("unreachable: {e}"),
    }
}

pub fn ws_url(hub: &str) -> String {
    let base = hub
        .trim_end_matches('/')
        .replacen("https://", "wss://", 1)
        .replacen("http://", "ws://", 1);
    format!("{base}/sync")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A hub stand-in on loopback: answers the first `limited` requests with 429 and a
    /// `Retry-After`, then 200; returns its address and the count of requests it saw.
    async fn limiting_hub(limited: usize) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let n = seen2.fetch_add(1, Ordering::SeqCst);
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let (status, extra, body) = if n < limited {
                    (
                        "429 Too Many Requests",
                        "Retry-After: 0\r\n",
                        r#"{"code":"rate_limited","message":"slow down"}"#,
                    )
                } else {
                    ("200 OK", "", r#"{"ok":true}"#)
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        (format!("http://{addr}"), seen)
    }

    #[tokio::test]
    async fn a_rate_limited_device_waits_and_continues() {
        let (hub, seen) = limiting_hub(3).await;
        let v = Api::new(&hub, "jt_test").get("/api/me").await.unwrap();
        assert_eq!(v["ok"], true);
        assert_eq!(seen.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn retry_after_is_read_and_bounded() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&h), Duration::from_secs(1));
        h.insert(reqwest::header::RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&h), Duration::from_secs(2));
        h.insert(reqwest::header::RETRY_AFTER, "3600".parse().unwrap());
        assert_eq!(retry_after(&h), Duration::from_secs(30));
        h.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), Duration::from_secs(1));
    }

    #[test]
    fn error_answers_keep_the_hubs_code() {
        let e = hub_error(409, br#"{"code":"conflict","message":"held by d-2"}"#);
        assert!(e.is_conflict());
        assert_eq!(e.message(), "held by d-2");
        let e = hub_error(418, br#"{"code":"teapot","message":"no"}"#);
        assert_eq!(e.code(), None);
        assert_eq!(e.message(), "no");
        let e = hub_error(502, b"<html>bad gateway</html>");
        assert_eq!(e.message(), "the hub answered HTTP 502");
    }

    #[test]
    fn sync_socket_address_follows_the_scheme() {
        assert_eq!(ws_url("http://h:1/"), "ws://h:1/sync");
        assert_eq!(ws_url("https://h"), "wss://h/sync");
    }
}
