//! Google Vertex AI: service-account OAuth tokens, the Anthropic wire format on Vertex's URLs.

use super::*;

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
