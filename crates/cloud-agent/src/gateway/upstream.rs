//! Where the gateway's requests go, built from the server's provider configuration.

use axum::http::{HeaderName, HeaderValue, header};
use jarvis_agent::providers::{BedrockProvider, ProviderConfig, VertexProvider};

/// Where requests go, built from the server's provider configuration.
pub(crate) enum Upstream {
    /// The Anthropic API or another gateway: the same wire format, forwarded byte for byte.
    Anthropic {
        base_url: String,
        auth: (HeaderName, HeaderValue),
        headers: Vec<(HeaderName, HeaderValue)>,
    },
    Bedrock(BedrockProvider),
    Vertex(VertexProvider),
}

impl Upstream {
    pub(crate) fn from_config(config: ProviderConfig) -> Result<Upstream, String> {
        let extra = |h: std::collections::BTreeMap<String, String>| {
            h.into_iter()
                .filter_map(|(k, v)| {
                    Some((
                        HeaderName::from_bytes(k.as_bytes()).ok()?,
                        HeaderValue::from_str(&v).ok()?,
                    ))
                })
                .collect::<Vec<_>>()
        };
        let value = |v: String| {
            HeaderValue::from_str(&v).map_err(|_| "the provider key is not a valid header value")
        };
        Ok(match config {
            ProviderConfig::Anthropic {
                base_url,
                api_key,
                headers,
            } => Upstream::Anthropic {
                base_url: base_url.trim_end_matches('/').to_owned(),
                auth: (HeaderName::from_static("x-api-key"), value(api_key)?),
                headers: extra(headers),
            },
            ProviderConfig::Gateway {
                base_url,
                auth_token,
                headers,
            } => Upstream::Anthropic {
                base_url: base_url.trim_end_matches('/').to_owned(),
                auth: (
                    header::AUTHORIZATION,
                    value(format!("Bearer {auth_token}"))?,
                ),
                headers: extra(headers),
            },
            ProviderConfig::Bedrock {
                base_url,
                region,
                access_key_id,
                secret_access_key,
                session_token,
            } => Upstream::Bedrock(BedrockProvider::new(
                &base_url,
                &region,
                access_key_id,
                secret_access_key,
                session_token,
            )),
            ProviderConfig::BedrockChain { base_url, region } => {
                Upstream::Bedrock(BedrockProvider::from_chain(&base_url, &region))
            }
            ProviderConfig::Vertex {
                base_url,
                region,
                project,
                credentials_json,
            } => Upstream::Vertex(
                VertexProvider::new(&base_url, &region, &project, &credentials_json)
                    .map_err(|e| e.to_string())?,
            ),
            ProviderConfig::OpenAi { .. } => {
                return Err(
                    "the configured provider is OpenAI-compatible; the gateway speaks the \
                     Anthropic Messages API and forwards only to Anthropic, Bedrock or Vertex"
                        .into(),
                );
            }
        })
    }
}
