//! One HTTP call helper for the API tests: method, path, bearer token, optional JSON body;
//! answers (status, JSON body or `null`). Transport failures panic — in a test they are the
//! failure.

use std::time::Duration;

use serde_json::Value;

use crate::CloudAgent;

/// A client of one server's HTTP API.
#[derive(Clone)]
pub struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    /// For the server at `base` (`http://127.0.0.1:<port>`).
    pub fn new(base: impl Into<String>) -> Api {
        Api {
            base: base.into(),
            http: reqwest::Client::new(),
        }
    }

    /// For a running [`CloudAgent`].
    pub fn of(agent: &CloudAgent) -> Api {
        Api::new(agent.base())
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The underlying client, for requests the helpers do not cover (raw bodies, headers).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `method base+path` with `Authorization: Bearer <token>` and `body` as JSON; answers the
    /// status and the body as text.
    pub async fn call_text(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, String) {
        let m: reqwest::Method = method
            .parse()
            .unwrap_or_else(|e| panic!("bad method {method}: {e}"));
        let mut r = self
            .http
            .request(m, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: reading the body: {e}"));
        (status, text)
    }

    /// [`call_text`](Self::call_text) with the body read as JSON (`null` when it is not).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let (status, text) = self.call_text(method, path, token, body).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A call that must succeed (2xx); answers the body.
    pub async fn ok(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, token, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    }

    /// `GET path` answered as JSON (`null` when it is not), whatever the status.
    pub async fn get_json(&self, path: &str, token: &str) -> Value {
        self.call("GET", path, token, None).await.1
    }

    /// `GET /api/sessions/{id}`, which must answer 200.
    pub async fn session(&self, token: &str, id: &str) -> Value {
        let (s, v) = self
            .call("GET", &format!("/api/sessions/{id}"), token, None)
            .await;
        assert_eq!(s, 200, "session {id}: {v}");
        v
    }

    /// Waits (with a deadline) until the session's status is one of `want`; answers the session.
    /// Panics at the deadline with the session as last seen.
    pub async fn until_status(
        &self,
        token: &str,
        id: &str,
        want: &[&str],
        timeout: Duration,
    ) -> Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let (s, v) = self
                .call("GET", &format!("/api/sessions/{id}"), token, None)
                .await;
            if s == 200 && want.iter().any(|w| v["status"] == *w) {
                return v;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "session {id} never reached {want:?} within {timeout:?}: {s} {v}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// [`Api::call`] on the server at `base`, for a one-off call.
pub async fn call(
    base: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    Api::new(base).call(method, path, token, body).await
}

/// The blocks of type `kind` in a session as `GET /api/sessions/{id}` answers it, in order.
pub fn blocks_of(session: &Value, kind: &str) -> Vec<Value> {
    session["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|m| m["blocks"].as_array().cloned().unwrap_or_default())
        .filter(|b| b["type"] == kind)
        .collect()
}
