//! Provider selection from the environment variables Claude Code uses, and the providers that do
//! not speak the Anthropic wire format directly: Amazon Bedrock (SigV4, AWS event-stream
//! framing), Google Vertex AI (service-account OAuth), and OpenAI-compatible servers (Ollama,
//! vLLM, llama.cpp; tool calls mapped both ways). Every provider yields the same
//! [`StreamEvent`]s, so the turn loop never knows which one it talks to.
//!
//! Configuration comes from an injected map, not the process environment, so it is testable.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use futures_util::Stream;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::anthropic::{
    AnthropicProvider, ApiUsage, Auth, BlockStart, BoxFuture, ContentBlock, Delta, EventStream,
    MessageDeltaBody, MessageStart, MessagesRequest, Provider, ProviderError, StreamEvent,
    decode_stream, sse_events,
};
use crate::sse::SseParser;

/// AWS credentials as the signer takes them (re-exported for tests that check signatures).
pub use aws_credential_types::Credentials as AwsCredentials;

/// Which provider, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderConfig {
    Anthropic {
        base_url: String,
        api_key: String,
        headers: BTreeMap<String, String>,
    },
    /// An LLM gateway: the Anthropic wire format with a bearer token.
    Gateway {
        base_url: String,
        auth_token: String,
        headers: BTreeMap<String, String>,
    },
    Bedrock {
        base_url: String,
        region: String,
        access_key_id: String,
        secret_access_key: String,
        session_token: Option<String>,
    },
    /// Bedrock with credentials from the whole AWS chain (profiles with roles or SSO, web
    /// identity, ECS task roles, EC2 instance roles over IMDSv2), resolved by `aws-config`
    /// when the first request is made and refreshed before they expire.
    BedrockChain { base_url: String, region: String },
    Vertex {
        base_url: String,
        region: String,
        project: String,
        credentials_json: String,
    },
    OpenAi {
        base_url: String,
        api_key: Option<String>,
    },
}

fn truthy(v: Option<&String>) -> bool {
    v.is_some_and(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "yes"))
}

/// `ANTHROPIC_CUSTOM_HEADERS`: one `Name: value` per line.
fn custom_headers(env: &HashMap<String, String>) -> BTreeMap<String, String> {
    env.get("ANTHROPIC_CUSTOM_HEADERS")
        .map(|h| {
            h.lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .filter(|(k, _)| !k.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// The `key = value` pairs of one `[section]` of an INI file (AWS credentials format).
fn ini_section(text: &str, section: &str) -> HashMap<String, String> {
    let mut current = String::new();
    let mut out = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.trim().to_owned();
        } else if current == section
            && let Some((k, v)) = line.split_once('=')
        {
            out.insert(k.trim().to_owned(), v.trim().to_owned());
        }
    }
    out
}

impl ProviderConfig {
    /// Reads the same variables as Claude Code. `credentials_file` reads a file (Vertex's
    /// service-account JSON) and is injected for tests.
    pub fn from_env(
        env: &HashMap<String, String>,
        read_file: impl Fn(&str) -> std::io::Result<String>,
    ) -> Result<ProviderConfig, ProviderError> {
        let get = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
        let missing = |what: &str| ProviderError::Config(format!("{what} is not set"));
        if truthy(env.get("CLAUDE_CODE_USE_BEDROCK")) {
            let region = get("AWS_REGION")
                .or_else(|| get("AWS_DEFAULT_REGION"))
                .ok_or_else(|| missing("AWS_REGION"))?;
            // The credential chain as far as it goes without network: environment variables,
            // then the shared credentials file (AWS_PROFILE or "default").
            let base_url = get("ANTHROPIC_BEDROCK_BASE_URL")
                .unwrap_or_else(|| format!("https://bedrock-runtime.{region}.amazonaws.com"));
            // Static keys in a profile of the shared file are used as they are; a profile
            // without them (role, SSO, credential_process), a missing file, or no file at all
            // leaves the rest of the AWS chain to aws-config.
            let chain = || ProviderConfig::BedrockChain {
                base_url: base_url.clone(),
                region: region.clone(),
            };
            let (access_key_id, secret_access_key, session_token) =
                match (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
                    (Some(a), Some(s)) => (a, s, get("AWS_SESSION_TOKEN")),
                    _ => {
                        let Some(path) = get("AWS_SHARED_CREDENTIALS_FILE")
                            .or_else(|| get("HOME").map(|h| format!("{h}/.aws/credentials")))
                        else {
                            return Ok(chain());
                        };
                        let profile = get("AWS_PROFILE").unwrap_or_else(|| "default".into());
                        let Ok(text) = read_file(&path) else {
                            return Ok(chain());
                        };
                        let section = ini_section(&text, &profile);
                        if !section.contains_key("aws_access_key_id") {
                            return Ok(chain());
                        }
                        let field = |k: &str| section.get(k).cloned();
                        (
                            field("aws_access_key_id").ok_or_else(|| {
                                ProviderError::Config(format!(
                                    "profile [{profile}] in {path} has no aws_access_key_id"
                                ))
                            })?,
                            field("aws_secret_access_key").ok_or_else(|| {
                                ProviderError::Config(format!(
                                    "profile [{profile}] in {path} has no aws_secret_access_key"
                                ))
                            })?,
                            field("aws_session_token"),
                        )
                    }
                };
            return Ok(ProviderConfig::Bedrock {
                base_url,
                access_key_id,
                secret_access_key,
                session_token,
                region,
            });
        }
        if truthy(env.get("CLAUDE_CODE_USE_VERTEX")) {
            let region = get("CLOUD_ML_REGION").ok_or_else(|| missing("CLOUD_ML_REGION"))?;
            let project = get("ANTHROPIC_VERTEX_PROJECT_ID")
                .ok_or_else(|| missing("ANTHROPIC_VERTEX_PROJECT_ID"))?;
            let path = get("GOOGLE_APPLICATION_CREDENTIALS")
                .ok_or_else(|| missing("GOOGLE_APPLICATION_CREDENTIALS"))?;
            let credentials_json = read_file(&path).map_err(|e| {
                ProviderError::Config(format!("cannot read service account file {path}: {e}"))
            })?;
            let host = if region == "global" {
                "aiplatform.googleapis.com".to_owned()
            } else {
                format!("{region}-aiplatform.googleapis.com")
            };
            return Ok(ProviderConfig::Vertex {
                base_url: get("ANTHROPIC_VERTEX_BASE_URL")
                    .unwrap_or_else(|| format!("https://{host}")),
                region,
                project,
                credentials_json,
            });
        }
        if let Some(base_url) = get("JARVIS_OPENAI_BASE_URL") {
            return Ok(ProviderConfig::OpenAi {
                base_url,
                api_key: get("OPENAI_API_KEY"),
            });
        }
        let headers = custom_headers(env);
        if let Some(auth_token) = get("ANTHROPIC_AUTH_TOKEN") {
            return Ok(ProviderConfig::Gateway {
                base_url: get("ANTHROPIC_BASE_URL")
                    .unwrap_or_else(|| "https://api.anthropic.com".into()),
                auth_token,
                headers,
            });
        }
        let api_key = get("ANTHROPIC_API_KEY").ok_or_else(|| {
            ProviderError::Config(
                "no provider configured: set ANTHROPIC_API_KEY, or ANTHROPIC_BASE_URL with \
                 ANTHROPIC_AUTH_TOKEN, or CLAUDE_CODE_USE_BEDROCK / CLAUDE_CODE_USE_VERTEX, or \
                 JARVIS_OPENAI_BASE_URL"
                    .into(),
            )
        })?;
        Ok(ProviderConfig::Anthropic {
            base_url: get("ANTHROPIC_BASE_URL")
                .unwrap_or_else(|| "https://api.anthropic.com".into()),
            api_key,
            headers,
        })
    }

    pub fn build(self) -> Result<Box<dyn Provider>, ProviderError> {
        Ok(match self {
            ProviderConfig::Anthropic {
                base_url,
                api_key,
                headers,
            } => Box::new(AnthropicProvider::new(
                &base_url,
                Auth::ApiKey(api_key),
                headers,
            )),
            ProviderConfig::Gateway {
                base_url,
                auth_token,
                headers,
            } => Box::new(AnthropicProvider::new(
                &base_url,
                Auth::Bearer(auth_token),
                headers,
            )),
            ProviderConfig::Bedrock {
                base_url,
                region,
                access_key_id,
                secret_access_key,
                session_token,
            } => Box::new(BedrockProvider::new(
                &base_url,
                &region,
                access_key_id,
                secret_access_key,
                session_token,
            )),
            ProviderConfig::BedrockChain { base_url, region } => {
                Box::new(BedrockProvider::from_chain(&base_url, &region))
            }
            ProviderConfig::Vertex {
                base_url,
                region,
                project,
                credentials_json,
            } => Box::new(VertexProvider::new(
                &base_url,
                &region,
                &project,
                &credentials_json,
            )?),
            ProviderConfig::OpenAi { base_url, api_key } => Box::new(OpenAiProvider {
                client: reqwest::Client::new(),
                base_url: base_url.trim_end_matches('/').to_owned(),
                api_key,
            }),
        })
    }
}

/// The request body Bedrock and Vertex take: the Messages request without `model` (it is in
/// the URL) and `stream` (implied by the endpoint), with their `anthropic_version`.
fn platform_body(
    request: &MessagesRequest,
    version: &str,
    keep_stream: bool,
) -> Result<Vec<u8>, ProviderError> {
    let mut v = serde_json::to_value(request).map_err(|e| ProviderError::Config(e.to_string()))?;
    if let Some(o) = v.as_object_mut() {
        o.remove("model");
        if !keep_stream {
            o.remove("stream");
        }
        o.insert("anthropic_version".into(), Value::String(version.into()));
    }
    serde_json::to_vec(&v).map_err(|e| ProviderError::Config(e.to_string()))
}

async fn check_status(resp: reqwest::Response) -> Result<reqwest::Response, ProviderError> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    Err(ProviderError::Status { status, body })
}

// ---------------------------------------------------------------------------------------------
// Amazon Bedrock

pub struct BedrockProvider {
    client: reqwest::Client,
    base_url: String,
    region: String,
    credentials: BedrockCredentials,
}

enum BedrockCredentials {
    Static(aws_credential_types::Credentials),
    /// The AWS default chain, built on first use; the last credentials it gave are kept until
    /// five minutes before they expire.
    Chain {
        chain: tokio::sync::OnceCell<aws_credential_types::provider::SharedCredentialsProvider>,
        current: Mutex<Option<aws_credential_types::Credentials>>,
    },
}

/// An error with its sources (the chain's errors say what each provider tried in the sources).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Credentials this close to expiry are refreshed before a request.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// The parts of an HTTP request that SigV4 signs.
#[derive(Debug, Clone, Copy)]
pub struct SignedParts<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

/// Signs a request with SigV4 for `service` at `time` and returns the headers to add.
pub fn sigv4_headers(
    credentials: &aws_credential_types::Credentials,
    region: &str,
    service: &str,
    request: SignedParts<'_>,
    time: SystemTime,
) -> Result<Vec<(String, String)>, ProviderError> {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    let identity = credentials.clone().into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| ProviderError::Config(format!("SigV4 parameters: {e}")))?
        .into();
    let signable = SignableRequest::new(
        request.method,
        request.url,
        request.headers.iter().copied(),
        SignableBody::Bytes(request.body),
    )
    .map_err(|e| ProviderError::Config(format!("SigV4 request: {e}")))?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| ProviderError::Config(format!("SigV4 signing: {e}")))?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

impl BedrockProvider {
    pub fn new(
        base_url: &str,
        region: &str,
        access_key_id: String,
        secret_access_key: String,
        session_token: Option<String>,
    ) -> Self {
        BedrockProvider {
            client: reqwest::Client::new(),
            base_url: base_url.trim_end_matches('/').to_owned(),
            region: region.to_owned(),
            credentials: BedrockCredentials::Static(aws_credential_types::Credentials::new(
                access_key_id,
                secret_access_key,
                session_token,
                None,
                "environment",
            )),
        }
    }

    /// Credentials from the AWS default chain (see [`ProviderConfig::BedrockChain`]).
    pub fn from_chain(base_url: &str, region: &str) -> Self {
        BedrockProvider {
            client: reqwest::Client::new(),
            base_url: base_url.trim_end_matches('/').to_owned(),
            region: region.to_owned(),
            credentials: BedrockCredentials::Chain {
                chain: tokio::sync::OnceCell::new(),
                current: Mutex::new(None),
            },
        }
    }

    /// Makes sure the credentials [`BedrockProvider::sign`] uses are current (a no-op for
    /// static ones): asks the chain when there are none yet or they expire soon.
    pub async fn refresh_credentials(&self) -> Result<(), ProviderError> {
        use aws_credential_types::provider::ProvideCredentials;
        let BedrockCredentials::Chain { chain, current } = &self.credentials else {
            return Ok(());
        };
        let fresh = |c: &aws_credential_types::Credentials| {
            c.expiry()
                .is_none_or(|t| t > SystemTime::now() + REFRESH_MARGIN)
        };
        if current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(fresh)
        {
            return Ok(());
        }
        let region = self.region.clone();
        let chain = chain
            .get_or_init(|| async move {
                use aws_smithy_http_client::tls;
                let http = aws_smithy_http_client::Builder::new()
                    .tls_provider(tls::Provider::Rustls(
                        tls::rustls_provider::CryptoMode::Ring,
                    ))
                    .build_https();
                let region = aws_types::region::Region::new(region);
                let conf = aws_config::provider_config::ProviderConfig::without_region()
                    .with_region(Some(region.clone()))
                    .with_http_client(http);
                let chain =
                    aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
                        .configure(conf)
                        .region(region)
                        .build()
                        .await;
                aws_credential_types::provider::SharedCredentialsProvider::new(chain)
            })
            .await;
        let creds = chain.provide_credentials().await.map_err(|e| {
            ProviderError::Config(format!(
                "no AWS credentials from the environment, profiles, SSO, web identity, ECS or \
                 EC2 instance metadata: {}",
                error_chain(&e)
            ))
        })?;
        *current.lock().unwrap_or_else(|p| p.into_inner()) = Some(creds);
        Ok(())
    }

    fn current_credentials(&self) -> Result<aws_credential_types::Credentials, ProviderError> {
        match &self.credentials {
            BedrockCredentials::Static(c) => Ok(c.clone()),
            BedrockCredentials::Chain { current, .. } => current
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .ok_or_else(|| {
                    ProviderError::Config("AWS credentials were not resolved yet".into())
                }),
        }
    }

    /// `…/model/{model}/invoke-with-response-stream` (or `/invoke`), the model id
    /// percent-encoded as SigV4 expects.
    pub fn invoke_url(&self, model: &str, stream: bool) -> String {
        let model: String = model
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                other => format!("%{other:02X}"),
            })
            .collect();
        let action = if stream {
            "invoke-with-response-stream"
        } else {
            "invoke"
        };
        format!("{}/model/{model}/{action}", self.base_url)
    }

    /// The SigV4 headers for a POST of `body` to `url` with `headers` (now).
    pub fn sign(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Vec<(String, String)>, ProviderError> {
        sigv4_headers(
            &self.current_credentials()?,
            &self.region,
            "bedrock",
            SignedParts {
                method: "POST",
                url,
                headers,
                body,
            },
            SystemTime::now(),
        )
    }
}

impl Provider for BedrockProvider {
    fn stream<'a>(
        &'a self,
        request: &'a MessagesRequest,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<EventStream, ProviderError>> {
        Box::pin(async move {
            let body = platform_body(request, "bedrock-2023-05-31", false)?;
            self.refresh_credentials().await?;
            let url = self.invoke_url(&request.model, true);
            let base = [
                ("content-type", "application/json"),
                ("accept", "application/vnd.amazon.eventstream"),
            ];
            let signed = self.sign(&url, &base, &body)?;
            let mut req = self.client.post(&url).body(body);
            for (k, v) in base {
                req = req.header(k, v);
            }
            for (k, v) in &signed {
                req = req.header(k, v);
            }
            let resp = tokio::select! {
                r = req.send() => r.map_err(|e| ProviderError::Http(e.to_string()))?,
                _ = cancel.cancelled() => return Err(ProviderError::Cancelled),
            };
            let resp = check_status(resp).await?;
            Ok(event_stream_events(resp.bytes_stream(), cancel))
        })
    }
}

/// One AWS event-stream message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMessage {
    pub headers: BTreeMap<String, String>,
    pub payload: Vec<u8>,
}

/// Decodes AWS event-stream framing incrementally: `total_len u32, headers_len u32,
/// prelude_crc u32, headers, payload, message_crc u32` (big-endian, CRC-32 checked).
#[derive(Debug, Default)]
pub struct EventStreamDecoder {
    buf: Vec<u8>,
}

impl EventStreamDecoder {
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<EventMessage>, String> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        loop {
            if self.buf.len() < 12 {
                return Ok(out);
            }
            let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            let total = be(&self.buf[0..4]) as usize;
            let headers_len = be(&self.buf[4..8]) as usize;
            if crc32fast::hash(&self.buf[0..8]) != be(&self.buf[8..12]) {
                return Err("event-stream prelude checksum mismatch".into());
            }
            if !(16..=16 * 1024 * 1024).contains(&total) || headers_len + 16 > total {
                return Err(format!("event-stream message length {total} is invalid"));
            }
            if self.buf.len() < total {
                return Ok(out);
            }
            let msg: Vec<u8> = self.buf.drain(..total).collect();
            if crc32fast::hash(&msg[..total - 4]) != be(&msg[total - 4..]) {
                return Err("event-stream message checksum mismatch".into());
            }
            let headers = parse_headers(&msg[12..12 + headers_len])?;
            out.push(EventMessage {
                headers,
                payload: msg[12 + headers_len..total - 4].to_vec(),
            });
        }
    }
}

fn parse_headers(mut b: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    while !b.is_empty() {
        let name_len = b[0] as usize;
        let name = b.get(1..1 + name_len).ok_or("truncated header name")?;
        let name = String::from_utf8_lossy(name).into_owned();
        b = &b[1 + name_len..];
        let kind = *b.first().ok_or("truncated header type")?;
        b = &b[1..];
        let (value, used) = match kind {
            // string (7) and byte array (6): u16 length then bytes
            6 | 7 => {
                let len = u16::from_be_bytes([
                    *b.first().ok_or("truncated")?,
                    *b.get(1).ok_or("truncated")?,
                ]) as usize;
                let v = b.get(2..2 + len).ok_or("truncated header value")?;
                (String::from_utf8_lossy(v).into_owned(), 2 + len)
            }
            0 | 1 => (String::from(if kind == 0 { "true" } else { "false" }), 0),
            2 => (String::new(), 1),
            3 => (String::new(), 2),
            4 => (String::new(), 4),
            5 | 8 => (String::new(), 8),
            9 => (String::new(), 16),
            other => return Err(format!("unknown event-stream header type {other}")),
        };
        if b.len() < used {
            return Err("truncated header value".into());
        }
        b = &b[used..];
        out.insert(name, value);
    }
    Ok(out)
}

/// Encodes one event-stream message with string headers (used by fakes and tests).
pub fn encode_event_message(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (k, v) in headers {
        h.push(k.len() as u8);
        h.extend_from_slice(k.as_bytes());
        h.push(7);
        h.extend_from_slice(&(v.len() as u16).to_be_bytes());
        h.extend_from_slice(v.as_bytes());
    }
    let total = 12 + h.len() + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// Bedrock's stream: event-stream messages whose `chunk` events carry
/// `{"bytes": base64(Anthropic stream event JSON)}`; `exception` messages become errors.
fn event_stream_events<S, B, E>(body: S, cancel: CancellationToken) -> EventStream
where
    S: Stream<Item = Result<B, E>> + Send + 'static,
    B: AsRef<[u8]> + Send,
    E: std::fmt::Display + Send,
{
    let mut decoder = EventStreamDecoder::default();
    decode_stream(body, cancel, move |chunk| {
        let Some(chunk) = chunk else {
            return Vec::new();
        };
        match decoder.feed(chunk) {
            Ok(messages) => messages.iter().map(bedrock_message).collect(),
            Err(e) => vec![Err(ProviderError::Malformed(e))],
        }
    })
}

fn bedrock_message(m: &EventMessage) -> Result<StreamEvent, ProviderError> {
    let raw = bedrock_event_json(m)?;
    serde_json::from_slice(&raw)
        .map_err(|e| ProviderError::Malformed(format!("bedrock event: {e}")))
}

/// The Anthropic stream event JSON carried by one Bedrock event-stream message (a `chunk`
/// event's base64 `bytes`); `exception` messages become errors. The LLM gateway re-frames these
/// as SSE without parsing them.
pub fn bedrock_event_json(m: &EventMessage) -> Result<Vec<u8>, ProviderError> {
    let kind = m.headers.get(":message-type").map(String::as_str);
    if kind == Some("exception") || kind == Some("error") {
        let name = m
            .headers
            .get(":exception-type")
            .or_else(|| m.headers.get(":error-code"))
            .cloned()
            .unwrap_or_else(|| "exception".into());
        return Err(ProviderError::Api {
            kind: name,
            message: String::from_utf8_lossy(&m.payload).into_owned(),
        });
    }
    let v: Value = serde_json::from_slice(&m.payload)
        .map_err(|e| ProviderError::Malformed(format!("bedrock chunk: {e}")))?;
    let b64 = v
        .get("bytes")
        .and_then(Value::as_str)
        .ok_or_else(|| ProviderError::Malformed("bedrock chunk without bytes".into()))?;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| ProviderError::Malformed(format!("bedrock chunk base64: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Google Vertex AI

pub struct VertexProvider {
    client: reqwest::Client,
    base_url: String,
    region: String,
    project: String,
    client_email: String,
    token_uri: String,
    key: jsonwebtoken::EncodingKey,
    token: Mutex<Option<(String, SystemTime)>>,
}

impl VertexProvider {
    /// `https://{region}-aiplatform.googleapis.com/v1/projects/{project}/locations/{region}`
    /// (or the configured base URL): model paths are appended to it.
    pub fn location_url(&self) -> String {
        format!(
            "{}/v1/projects/{}/locations/{}",
            self.base_url, self.project, self.region
        )
    }

    pub fn new(
        base_url: &str,
        region: &str,
        project: &str,
        credentials_json: &str,
    ) -> Result<Self, ProviderError> {
        let v: Value = serde_json::from_str(credentials_json)
            .map_err(|e| ProviderError::Config(format!("service account JSON: {e}")))?;
        let field = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| ProviderError::Config(format!("service account JSON lacks {k}")))
        };
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(field("private_key")?.as_bytes())
            .map_err(|e| ProviderError::Config(format!("service account private key: {e}")))?;
        Ok(VertexProvider {
            client: reqwest::Client::new(),
            base_url: base_url.trim_end_matches('/').to_owned(),
            region: region.to_owned(),
            project: project.to_owned(),
            client_email: field("client_email")?,
            token_uri: field("token_uri")
                .unwrap_or_else(|_| "https://oauth2.googleapis.com/token".into()),
            key,
            token: Mutex::new(None),
        })
    }

    /// An access token, reused until a minute before it expires.
    pub async fn access_token(&self) -> Result<String, ProviderError> {
        if let Some((t, exp)) = self.token.lock().unwrap_or_else(|p| p.into_inner()).clone()
            && SystemTime::now() + Duration::from_secs(60) < exp
        {
            return Ok(t);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = json!({
            "iss": self.client_email,
            "scope": "https://www.googleapis.com/auth/cloud-platform",
            "aud": self.token_uri,
            "iat": now,
            "exp": now + 3600,
        });
        let assertion = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            &self.key,
        )
        .map_err(|e| ProviderError::Config(format!("signing the token request: {e}")))?;
        let resp = self
            .client
            .post(&self.token_uri)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(|e| ProviderError::Http(format!("token endpoint: {e}")))?;
        let resp = check_status(resp).await?;
        let v: Value = resp
            .json()
            .await
            .map_err(|e| ProviderError::Malformed(format!("token response: {e}")))?;
        let token = v
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| ProviderError::Malformed("token response lacks access_token".into()))?
            .to_owned();
        let ttl = v.get("expires_in").and_then(Value::as_u64).unwrap_or(3600);
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((token.clone(), SystemTime::now() + Duration::from_secs(ttl)));
        Ok(token)
    }
}

impl Provider for VertexProvider {
    fn stream<'a>(
        &'a self,
        request: &'a MessagesRequest,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<EventStream, ProviderError>> {
        Box::pin(async move {
            let token = tokio::select! {
                t = self.access_token() => t?,
                _ = cancel.cancelled() => return Err(ProviderError::Cancelled),
            };
            let url = format!(
                "{}/publishers/anthropic/models/{}:streamRawPredict",
                self.location_url(),
                request.model
            );
            let body = platform_body(request, "vertex-2023-10-16", true)?;
            let req = self
                .client
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(body);
            let resp = tokio::select! {
                r = req.send() => r.map_err(|e| ProviderError::Http(e.to_string()))?,
                _ = cancel.cancelled() => return Err(ProviderError::Cancelled),
            };
            let resp = check_status(resp).await?;
            Ok(sse_events(resp.bytes_stream(), cancel))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// OpenAI-compatible chat completions

pub struct OpenAiProvider {
    client: reqwest::Client,
    base_url: String,
    api_key: Option<String>,
}

/// The chat-completions request for a Messages request: system first, tool results as `tool`
/// messages, tool calls as `tool_calls` with JSON-string arguments.
pub fn openai_request(request: &MessagesRequest) -> Value {
    let mut messages = Vec::new();
    let system: String = request
        .system
        .iter()
        .map(|s| s.text.as_str())
        .collect::<Vec<_>>()
        .join(
            "

",
        );
    if !system.is_empty() {
        messages.push(json!({"role": "system", "content": system}));
    }
    for m in &request.messages {
        let mut text = String::new();
        let mut calls = Vec::new();
        for b in &m.content {
            match b {
                ContentBlock::Text { text: t, .. } => text.push_str(t),
                ContentBlock::ToolUse {
                    id, name, input, ..
                } => calls.push(json!({
                    "id": id, "type": "function",
                    "function": {"name": name, "arguments": input.to_string()}
                })),
                ContentBlock::ToolResult {
                    tool_use_id,
                    content,
                    is_error,
                    ..
                } => {
                    let content = if *is_error {
                        format!("Error: {content}")
                    } else {
                        content.clone()
                    };
                    messages.push(
                        json!({"role": "tool", "tool_call_id": tool_use_id, "content": content}),
                    );
                }
                ContentBlock::Thinking { .. } => {}
            }
        }
        if m.role == "assistant" {
            let mut msg = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { Value::String(text) }});
            if !calls.is_empty() {
                msg["tool_calls"] = Value::Array(calls);
            }
            messages.push(msg);
        } else if !text.is_empty() {
            messages.push(json!({"role": "user", "content": text}));
        }
    }
    let tools: Vec<Value> = request
        .tools
        .iter()
        .map(|t| json!({"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.input_schema}}))
        .collect();
    let mut body = json!({
        "model": request.model,
        "messages": messages,
        "max_tokens": request.max_tokens,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if !tools.is_empty() {
        body["tools"] = Value::Array(tools);
    }
    body
}

/// Maps chat-completion chunks onto Messages stream events.
#[derive(Default)]
struct OpenAiMapper {
    started: bool,
    text_index: Option<u32>,
    /// tool call index → our content block index
    tools: BTreeMap<u64, u32>,
    next_index: u32,
    stop_reason: Option<String>,
    usage: ApiUsage,
    finished: bool,
}

impl OpenAiMapper {
    fn chunk(&mut self, v: &Value, out: &mut Vec<StreamEvent>) {
        if !self.started {
            self.started = true;
            out.push(StreamEvent::MessageStart {
                message: MessageStart {
                    id: v
                        .get("id")
                        .and_then(Value::as_str)
                        .unwrap_or("chatcmpl")
                        .to_owned(),
                    model: v
                        .get("model")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    usage: ApiUsage::default(),
                },
            });
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage.input_tokens = u.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0);
            self.usage.output_tokens = u
                .get("completion_tokens")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            self.usage.cache_read_input_tokens = u
                .pointer("/prompt_tokens_details/cached_tokens")
                .and_then(Value::as_u64);
        }
        let Some(choice) = v.get("choices").and_then(|c| c.get(0)) else {
            return;
        };
        let delta = choice.get("delta").cloned().unwrap_or(Value::Null);
        if let Some(t) = delta
            .get("content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            let index = match self.text_index {
                Some(i) => i,
                None => {
                    let i = self.next_index;
                    self.next_index += 1;
                    self.text_index = Some(i);
                    out.push(StreamEvent::ContentBlockStart {
                        index: i,
                        content_block: BlockStart::Text {
                            text: String::new(),
                        },
                    });
                    i
                }
            };
            out.push(StreamEvent::ContentBlockDelta {
                index,
                delta: Delta::TextDelta { text: t.to_owned() },
            });
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let i = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            let index = match self.tools.get(&i) {
                Some(ix) => *ix,
                None => {
                    let ix = self.next_index;
                    self.next_index += 1;
                    self.tools.insert(i, ix);
                    out.push(StreamEvent::ContentBlockStart {
                        index: ix,
                        content_block: BlockStart::ToolUse {
                            id: call
                                .get("id")
                                .and_then(Value::as_str)
                                .unwrap_or("call")
                                .to_owned(),
                            name: call
                                .pointer("/function/name")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_owned(),
                        },
                    });
                    ix
                }
            };
            if let Some(args) = call
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .filter(|a| !a.is_empty())
            {
                out.push(StreamEvent::ContentBlockDelta {
                    index,
                    delta: Delta::InputJsonDelta {
                        partial_json: args.to_owned(),
                    },
                });
            }
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.stop_reason = Some(match reason {
                "tool_calls" | "function_call" => "tool_use".into(),
                "length" => "max_tokens".into(),
                _ => "end_turn".into(),
            });
        }
    }

    fn finish(&mut self, out: &mut Vec<StreamEvent>) {
        if self.finished {
            return;
        }
        self.finished = true;
        for index in 0..self.next_index {
            out.push(StreamEvent::ContentBlockStop { index });
        }
        out.push(StreamEvent::MessageDelta {
            delta: MessageDeltaBody {
                stop_reason: self.stop_reason.clone(),
            },
            usage: self.usage,
        });
        out.push(StreamEvent::MessageStop);
    }
}

impl Provider for OpenAiProvider {
    fn stream<'a>(
        &'a self,
        request: &'a MessagesRequest,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<EventStream, ProviderError>> {
        Box::pin(async move {
            let mut req = self
                .client
                .post(format!("{}/v1/chat/completions", self.base_url))
                .json(&openai_request(request));
            if let Some(k) = &self.api_key {
                req = req.bearer_auth(k);
            }
            let resp = tokio::select! {
                r = req.send() => r.map_err(|e| ProviderError::Http(e.to_string()))?,
                _ = cancel.cancelled() => return Err(ProviderError::Cancelled),
            };
            let resp = check_status(resp).await?;
            Ok(openai_events(resp.bytes_stream(), cancel))
        })
    }
}

fn openai_events<S, B, E>(body: S, cancel: CancellationToken) -> EventStream
where
    S: Stream<Item = Result<B, E>> + Send + 'static,
    B: AsRef<[u8]> + Send,
    E: std::fmt::Display + Send,
{
    let mut parser = SseParser::new();
    let mut mapper = OpenAiMapper::default();
    decode_stream(body, cancel, move |chunk| {
        let mut out = Vec::new();
        let Some(chunk) = chunk else {
            // Some servers end the body without `[DONE]` once they sent a finish reason.
            if mapper.stop_reason.is_some() {
                mapper.finish(&mut out);
            }
            return out.into_iter().map(Ok).collect();
        };
        let events = match parser.feed(chunk) {
            Ok(e) => e,
            Err(e) => return vec![Err(ProviderError::Malformed(e.to_string()))],
        };
        let mut results = Vec::new();
        for e in events {
            if e.data.trim() == "[DONE]" {
                mapper.finish(&mut out);
            } else {
                match serde_json::from_str::<Value>(&e.data) {
                    Ok(v) => mapper.chunk(&v, &mut out),
                    Err(err) => {
                        results.extend(out.drain(..).map(Ok));
                        results.push(Err(ProviderError::Malformed(format!("chunk: {err}"))));
                        return results;
                    }
                }
            }
            results.extend(out.drain(..).map(Ok));
        }
        results
    })
}
