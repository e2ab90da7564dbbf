//! Amazon Bedrock: SigV4-signed requests (static keys or the AWS credential chain, refreshed
//! before expiry) and the AWS event-stream framing of its streamed replies.

use super::*;

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

/// Splits a byte stream into AWS event-stream messages (`total_len u32, headers_len u32,
/// prelude_crc u32, headers, payload, message_crc u32`) and decodes each with
/// `aws-smithy-eventstream`, which checks both CRCs and parses the typed headers.
///
/// Two checks stay here because the crate's streaming decoder lacks them: the prelude's CRC is
/// verified as soon as its 12 bytes arrive (a corrupted length would otherwise make the decoder
/// wait for bytes that never come), and a message may not claim more than 16 MiB (the crate
/// would buffer whatever length a peer announces).
#[derive(Debug, Default)]
pub struct EventStreamDecoder {
    buf: Vec<u8>,
}

/// The longest event-stream message accepted (Bedrock's are a few KiB).
const MAX_EVENT_MESSAGE: usize = 16 * 1024 * 1024;

impl EventStreamDecoder {
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<EventMessage>, String> {
        use aws_smithy_eventstream::frame::read_message_from;
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        loop {
            let Some(prelude) = self.buf.first_chunk::<12>() else {
                return Ok(out);
            };
            let be = |i: usize| {
                u32::from_be_bytes([prelude[i], prelude[i + 1], prelude[i + 2], prelude[i + 3]])
            };
            if crc32fast::hash(&prelude[0..8]) != be(8) {
                return Err("event-stream prelude checksum mismatch".into());
            }
            let total = be(0) as usize;
            if !(16..=MAX_EVENT_MESSAGE).contains(&total) {
                return Err(format!("event-stream message length {total} is invalid"));
            }
            if self.buf.len() < total {
                return Ok(out);
            }
            let message =
                read_message_from(&self.buf[..total]).map_err(|e| format!("event-stream: {e}"))?;
            self.buf.drain(..total);
            out.push(EventMessage {
                headers: message
                    .headers()
                    .iter()
                    .map(|h| (h.name().as_str().to_owned(), header_text(h.value())))
                    .collect(),
                payload: message.payload().to_vec(),
            });
        }
    }
}

/// A header value as text: strings as they are, byte arrays as lossy UTF-8, the rest as their
/// usual spelling (Bedrock only sends strings).
fn header_text(v: &aws_smithy_types::event_stream::HeaderValue) -> String {
    use aws_smithy_types::event_stream::HeaderValue as V;
    match v {
        V::String(s) => s.as_str().to_owned(),
        V::ByteArray(b) => String::from_utf8_lossy(b).into_owned(),
        V::Bool(b) => b.to_string(),
        V::Byte(n) => n.to_string(),
        V::Int16(n) => n.to_string(),
        V::Int32(n) => n.to_string(),
        V::Int64(n) => n.to_string(),
        V::Timestamp(t) => t.to_string(),
        V::Uuid(u) => format!("{u:032x}"),
        // The enum is non-exhaustive: a kind added later reads as empty, as unknown ones did.
        _ => String::new(),
    }
}

/// Encodes one event-stream message with string headers (used by fakes and tests).
pub fn encode_event_message(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
    let message = headers
        .iter()
        .fold(Message::new(payload.to_vec()), |m, (k, v)| {
            m.add_header(Header::new(
                k.to_string(),
                HeaderValue::String((*v).to_owned().into()),
            ))
        });
    let mut out = Vec::new();
    // Only over-long headers or payloads fail to encode; fakes and tests send small ones.
    if let Err(e) = aws_smithy_eventstream::frame::write_message_to(&message, &mut out) {
        tracing::error!(error = %e, "cannot encode an event-stream message");
    }
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
