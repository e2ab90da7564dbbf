//! Pairing a device by a short code the person approves where they are signed in (the web
//! view, or `POST /api/pair/approve`): [`Pairing::start`] gets the code to show, then
//! [`Pairing::wait`] polls until it is approved.

use std::time::Duration;

use jarvis_wire::ErrorCode;
use serde_json::{Value, json};

use crate::error::{DeviceError, DeviceResult};

/// A pairing in progress: show `code` to the person, then [`Pairing::wait`].
#[derive(Debug, Clone)]
pub struct Pairing {
    pub hub: String,
    pub code: String,
    pub device_code: String,
    pub expires_in: u64,
}

/// What an approved pairing gives the device.
#[derive(Debug, Clone)]
pub struct Paired {
    pub token: String,
    pub device: String,
}

async fn post(
    http: &reqwest::Client,
    hub: &str,
    path: &str,
    body: Value,
) -> DeviceResult<(u16, Value)> {
    let resp = http
        .post(format!("{hub}{path}"))
        .json(&body)
        .send()
        .await
        .map_err(|e| DeviceError::Unreachable {
            hub: hub.to_owned(),
            reason: e.to_string(),
        })?;
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    Ok((status, v))
}

fn refusal(status: u16, v: &Value) -> DeviceError {
    DeviceError::Hub {
        status,
        code: v["code"].as_str().and_then(ErrorCode::parse),
        message: v["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("the hub answered HTTP {status}")),
    }
}

impl Pairing {
    /// Asks the hub for a pairing code for a device called `name`.
    pub async fn start(hub: &str, name: &str) -> DeviceResult<Pairing> {
        let hub = hub.trim_end_matches('/');
        let (status, v) = post(
            &reqwest::Client::new(),
            hub,
            "/api/pair/start",
            json!({"name": name}),
        )
        .await?;
        if status >= 400 {
            return Err(refusal(status, &v));
        }
        let field = |k: &str| {
            v[k].as_str()
                .map(str::to_owned)
                .ok_or_else(|| DeviceError::Protocol {
                    what: "/api/pair/start".into(),
                    detail: format!("no {k} in {v}"),
                })
        };
        Ok(Pairing {
            hub: hub.to_owned(),
            code: field("code")?,
            device_code: field("device_code")?,
            expires_in: v["expires_in"].as_u64().unwrap_or(600),
        })
    }

    /// Polls until the code is approved (or refused, or expired).
    pub async fn wait(&self) -> DeviceResult<Paired> {
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(self.expires_in);
        loop {
            if tokio::time::Instant::now() >= deadline {
                return Err(DeviceError::hub(
                    ErrorCode::Timeout,
                    "the pairing code expired; sign in again",
                ));
            }
            // The hub's polling interval for device codes.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (status, v) = match post(
                &http,
                &self.hub,
                "/api/pair/poll",
                json!({"device_code": self.device_code}),
            )
            .await
            {
                Ok(x) => x,
                // A blip while waiting is not the end of the pairing.
                Err(e) if e.is_unreachable() => {
                    tracing::debug!(error = %e, "pairing poll did not reach the hub");
                    continue;
                }
                Err(e) => return Err(e),
            };
            if status < 400 {
                let field = |v: &Value| v.as_str().map(str::to_owned);
                return match (field(&v["token"]), field(&v["device"]["id"])) {
                    (Some(token), Some(device)) => Ok(Paired { token, device }),
                    _ => Err(DeviceError::Protocol {
                        what: "/api/pair/poll".into(),
                        detail: "no token or device id in the approval".into(),
                    }),
                };
            }
            let e = refusal(status, &v);
            match e.code() {
                Some(ErrorCode::AuthorizationPending | ErrorCode::RateLimited) => {}
                _ => return Err(e),
            }
        }
    }
}
