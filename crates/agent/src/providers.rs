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

mod bedrock;
mod openai;
mod vertex;

pub use bedrock::{
    BedrockProvider, EventMessage, EventStreamDecoder, SignedParts, bedrock_event_json,
    encode_event_message, sigv4_headers,
};
pub use openai::{OpenAiProvider, openai_request};
pub use vertex::VertexProvider;

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
