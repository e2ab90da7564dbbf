//! The model provider, set up in the browser: the form's fields become the variables Claude
//! Code reads (`ProviderConfig::from_env`, so every provider the runtime knows is offered: the
//! Anthropic API, an LLM gateway, Amazon Bedrock, Google Vertex AI, an OpenAI-compatible
//! server), tested with one real request to the configured endpoint, then kept encrypted in the
//! secret store's server scope under [`SECRET_NAME`] and handed to the running cloud runner.
//! A saved provider wins over the server's environment at the next start too.
//!
//! Never: a key in a response, a log line or the audit detail. Failures are said in plain words
//! with what to do ([`explain`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use futures_util::StreamExt;
use jarvis_agent::anthropic::{ApiMessage, ContentBlock, MessagesRequest, Provider, ProviderError};
use jarvis_agent::providers::ProviderConfig;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::access::{Action, Target};
use crate::http::{ApiError, Body, ErrorCode};
use crate::onboarding::{Onboarding, Who};
use crate::secrets::{Scope, SecretStore};

/// The server-scope secret holding the provider's variables (a JSON object).
pub const SECRET_NAME: &str = "JARVIS_MODEL_PROVIDER";
/// Stands for the pasted Vertex service-account JSON where `from_env` expects a file path.
const PASTED_CREDENTIALS: &str = "<pasted service account>";

/// What the form sends. Only the fields of the chosen `kind` are read.
#[derive(Debug, Default, Deserialize)]
pub struct ProviderForm {
    /// anthropic, gateway, bedrock, vertex or openai.
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub api_key: String,
    #[serde(default)]
    pub base_url: String,
    #[serde(default)]
    pub auth_token: String,
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub access_key_id: String,
    #[serde(default)]
    pub secret_access_key: String,
    #[serde(default)]
    pub session_token: String,
    #[serde(default)]
    pub project: String,
    #[serde(default)]
    pub credentials_json: String,
    /// The model the test request names (OpenAI-compatible servers need one they have).
    #[serde(default)]
    pub model: String,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidRequest, message)
}

/// The form as the variables Claude Code reads.
pub fn variables(f: &ProviderForm) -> Result<HashMap<String, String>, ApiError> {
    let mut env = HashMap::new();
    let mut put = |k: &str, v: &str| {
        if !v.trim().is_empty() {
            env.insert(k.to_owned(), v.trim().to_owned());
        }
    };
    let need = |v: &str, what: &str| {
        if v.trim().is_empty() {
            Err(invalid(format!("{what} is needed for this provider")))
        } else {
            Ok(())
        }
    };
    match f.kind.as_str() {
        "anthropic" => {
            need(&f.api_key, "the API key")?;
            put("ANTHROPIC_API_KEY", &f.api_key);
            put("ANTHROPIC_BASE_URL", &f.base_url);
        }
        "gateway" => {
            need(&f.base_url, "the gateway's address")?;
            need(&f.auth_token, "the gateway token")?;
            put("ANTHROPIC_BASE_URL", &f.base_url);
            put("ANTHROPIC_AUTH_TOKEN", &f.auth_token);
        }
        "bedrock" => {
            need(&f.region, "the AWS region")?;
            need(&f.access_key_id, "the access key id")?;
            need(&f.secret_access_key, "the secret access key")?;
            put("CLAUDE_CODE_USE_BEDROCK", "1");
            put("AWS_REGION", &f.region);
            put("AWS_ACCESS_KEY_ID", &f.access_key_id);
            put("AWS_SECRET_ACCESS_KEY", &f.secret_access_key);
            put("AWS_SESSION_TOKEN", &f.session_token);
            put("ANTHROPIC_BEDROCK_BASE_URL", &f.base_url);
        }
        "vertex" => {
            need(&f.region, "the region")?;
            need(&f.project, "the project id")?;
            need(&f.credentials_json, "the service account key (JSON)")?;
            put("CLAUDE_CODE_USE_VERTEX", "1");
            put("CLOUD_ML_REGION", &f.region);
            put("ANTHROPIC_VERTEX_PROJECT_ID", &f.project);
            put("GOOGLE_APPLICATION_CREDENTIALS", PASTED_CREDENTIALS);
            put("JARVIS_VERTEX_CREDENTIALS_JSON", &f.credentials_json);
            put("ANTHROPIC_VERTEX_BASE_URL", &f.base_url);
        }
        "openai" => {
            need(&f.base_url, "the server's address")?;
            put("JARVIS_OPENAI_BASE_URL", &f.base_url);
            put("OPENAI_API_KEY", &f.api_key);
        }
        other => {
            return Err(invalid(format!(
                "unknown provider {other:?}: anthropic, gateway, bedrock, vertex or openai"
            )));
        }
    }
    for url in [
        "ANTHROPIC_BASE_URL",
        "ANTHROPIC_BEDROCK_BASE_URL",
        "ANTHROPIC_VERTEX_BASE_URL",
        "JARVIS_OPENAI_BASE_URL",
    ] {
        if let Some(u) = env.get(url)
            && !(u.starts_with("https://") || u.starts_with("http://"))
        {
            return Err(invalid(format!("{u:?} is not an http(s) address")));
        }
    }
    Ok(env)
}

/// The provider the variables describe (the pasted Vertex key stands in for its file).
pub fn config_of(env: &HashMap<String, String>) -> Result<ProviderConfig, ProviderError> {
    ProviderConfig::from_env(env, |path| {
        if path == PASTED_CREDENTIALS {
            env.get("JARVIS_VERTEX_CREDENTIALS_JSON")
                .cloned()
                .ok_or_else(|| std::io::Error::other("no service account key was pasted"))
        } else {
            // Never a file of this server's: the form cannot name one.
            Err(std::io::Error::other(
                "files are not read for a provider set in the browser",
            ))
        }
    })
}

/// The provider saved in the browser, if any: (its kind, the built provider).
pub fn stored(secrets: &SecretStore) -> Option<Result<Arc<dyn Provider>, String>> {
    let raw = match secrets.get(&Scope::Server, SECRET_NAME) {
        Ok(v) => v?,
        Err(e) => return Some(Err(format!("reading the saved provider: {e}"))),
    };
    let env: HashMap<String, String> = match serde_json::from_str(&raw) {
        Ok(e) => e,
        Err(e) => return Some(Err(format!("the saved provider is unreadable: {e}"))),
    };
    Some(
        config_of(&env)
            .and_then(|c| c.build())
            .map(Arc::from)
            .map_err(|e| e.to_string()),
    )
}

/// A provider failure in plain words: (code, what happened and what to do).
pub fn explain(e: &ProviderError) -> (ErrorCode, String) {
    match e {
        ProviderError::Status {
            status: 401 | 403, ..
        } => (
            ErrorCode::ProviderKeyRefused,
            format!(
                "The provider refused the key (HTTP {}). Check that the key is complete and \
                 still active, then try again.",
                status_of(e)
            ),
        ),
        ProviderError::Status {
            status: 429 | 503 | 529,
            ..
        } => (
            ErrorCode::ProviderBusy,
            format!(
                "The provider is busy or is limiting this key (HTTP {}). Wait a minute and try \
                 again, or check the key's rate limits and credit.",
                status_of(e)
            ),
        ),
        ProviderError::Status { status: 404, .. } => (
            ErrorCode::ProviderNotFound,
            "The provider answered 404: check the address and the model name.".into(),
        ),
        ProviderError::Status { status, .. } => (
            ErrorCode::ProviderFailed,
            format!("The provider answered HTTP {status}. Check the settings and try again."),
        ),
        ProviderError::Api { kind, .. } if kind.contains("overloaded") || kind.contains("rate") => {
            (
                ErrorCode::ProviderBusy,
                "The provider is overloaded right now. Wait a minute and try again.".into(),
            )
        }
        ProviderError::Api { kind, .. }
            if kind.contains("authentication") || kind.contains("permission") =>
        {
            (
                ErrorCode::ProviderKeyRefused,
                "The provider refused the key. Check that the key is complete and still active."
                    .into(),
            )
        }
        ProviderError::Http(_) => (
            ErrorCode::ProviderUnreachable,
            "Could not reach the provider. Check the address, and that this server can reach \
             it (network, proxy, firewall)."
                .into(),
        ),
        ProviderError::Config(m) => (
            ErrorCode::ProviderConfig,
            format!("The settings are incomplete: {m}."),
        ),
        other => (
            ErrorCode::ProviderFailed,
            format!("The provider's answer was not usable ({other}). Try again."),
        ),
    }
}

fn status_of(e: &ProviderError) -> u16 {
    match e {
        ProviderError::Status { status, .. } => *status,
        _ => 0,
    }
}

/// One real request (one token asked for): Ok when the first event of a reply arrives.
pub async fn test(provider: &dyn Provider, model: &str) -> Result<(), ProviderError> {
    let request = MessagesRequest {
        model: model.to_owned(),
        max_tokens: 1,
        system: vec![],
        messages: vec![ApiMessage {
            role: "user".into(),
            content: vec![ContentBlock::Text {
                text: "Reply with OK.".into(),
                cache_control: None,
            }],
        }],
        tools: vec![],
        stream: true,
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    let attempt = async {
        let mut stream = provider.stream(&request, cancel.clone()).await?;
        match stream.next().await {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(e),
            None => Err(ProviderError::Truncated),
        }
    };
    let out = tokio::time::timeout(Duration::from_secs(60), attempt)
        .await
        .unwrap_or_else(|_| Err(ProviderError::Http("no answer within 60 s".into())));
    cancel.cancel();
    out
}

fn admin(who: &crate::control::Identity) -> Result<(), ApiError> {
    who.may(Target::Server, Action::Manage)?;
    Ok(())
}

/// `GET /api/server/provider` (admins): whether a provider is configured and where from;
/// never a key.
pub async fn show(State(o): State<Onboarding>, Who(who): Who) -> Result<Json<Value>, ApiError> {
    admin(&who)?;
    let saved = o
        .secrets
        .get(&Scope::Server, SECRET_NAME)
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    let kind = saved
        .as_deref()
        .and_then(|raw| serde_json::from_str::<HashMap<String, String>>(raw).ok())
        .and_then(|env| config_of(&env).ok())
        .map(|c| kind_of(&c));
    let problem = o.cloud.provider_problem();
    Ok(Json(json!({
        "configured": problem.is_none(),
        "source": if saved.is_some() { "browser" } else if problem.is_none() { "environment" } else { "none" },
        "kind": kind,
        "problem": problem,
    })))
}

fn kind_of(c: &ProviderConfig) -> &'static str {
    match c {
        ProviderConfig::Anthropic { .. } => "anthropic",
        ProviderConfig::Gateway { .. } => "gateway",
        ProviderConfig::Bedrock { .. } | ProviderConfig::BedrockChain { .. } => "bedrock",
        ProviderConfig::Vertex { .. } => "vertex",
        ProviderConfig::OpenAi { .. } => "openai",
    }
}

/// `PUT /api/server/provider` (admins): tests the provider with one request, then saves it
/// and the running server uses it from the next turn on. A failed test saves nothing.
pub async fn save(
    State(o): State<Onboarding>,
    Who(who): Who,
    Body(form): Body<ProviderForm>,
) -> Result<Json<Value>, ApiError> {
    admin(&who)?;
    let env = variables(&form)?;
    let config = config_of(&env).map_err(|e| invalid(explain(&e).1))?;
    let kind = kind_of(&config);
    let provider: Arc<dyn Provider> =
        Arc::from(config.build().map_err(|e| invalid(explain(&e).1))?);
    let model = if form.model.trim().is_empty() {
        o.inner.default_model.clone()
    } else {
        form.model.trim().to_owned()
    };
    if let Err(e) = test(provider.as_ref(), &model).await {
        let (code, message) = explain(&e);
        // The detail names the status and the provider's own words, never the key.
        tracing::info!(%kind, %code, "a provider test request failed");
        let mut err = ApiError::new(code, message);
        if code == ErrorCode::ProviderBusy {
            err.retry_after = Some(30);
        }
        return Err(err);
    }
    let raw = serde_json::to_string(&env).map_err(|e| invalid(e.to_string()))?;
    o.secrets
        .set(&Scope::Server, SECRET_NAME, &raw, &who.user)
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    o.cloud.set_provider(provider);
    o.control
        .audit(Some(&who), "provider.set", kind, "tested with one request");
    Ok(Json(json!({"saved": true, "kind": kind, "tested": true})))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn forms_become_the_variables_claude_code_reads() {
        let f = ProviderForm {
            kind: "anthropic".into(),
            api_key: " sk-test ".into(),
            ..Default::default()
        };
        let c = config_of(&variables(&f).unwrap()).unwrap();
        assert!(matches!(c, ProviderConfig::Anthropic { ref api_key, .. } if api_key == "sk-test"));
        let f = ProviderForm {
            kind: "vertex".into(),
            region: "us-east5".into(),
            project: "p".into(),
            credentials_json: "{\"k\":1}".into(),
            ..Default::default()
        };
        let env = variables(&f).unwrap();
        // The pasted key is what from_env reads; no file of the server is.
        let read = config_of(&env);
        assert!(
            !matches!(read, Err(ProviderError::Config(ref m)) if m.contains("cannot read")),
            "{read:?}"
        );
        let f = ProviderForm {
            kind: "gateway".into(),
            base_url: "file:///etc/passwd".into(),
            auth_token: "t".into(),
            ..Default::default()
        };
        assert!(variables(&f).is_err());
        assert!(
            variables(&ProviderForm {
                kind: "anthropic".into(),
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            variables(&ProviderForm {
                kind: "x".into(),
                ..Default::default()
            })
            .is_err()
        );
    }

    #[test]
    fn failures_are_said_in_plain_words() {
        let s = |status| ProviderError::Status {
            status,
            body: "{\"secret\":\"no\"}".into(),
        };
        assert_eq!(explain(&s(401)).0.as_str(), "provider_key_refused");
        assert_eq!(explain(&s(429)).0.as_str(), "provider_busy");
        assert_eq!(explain(&s(529)).0.as_str(), "provider_busy");
        assert_eq!(
            explain(&ProviderError::Http("refused".into())).0.as_str(),
            "provider_unreachable"
        );
        // The provider's body (which may echo anything) is not repeated.
        assert!(!explain(&s(401)).1.contains("secret"));
    }
}
