//! `GET /openapi.json`: the HTTP contract, generated. Two sources:
//! - `routes.json` beside this file: each route's summary, tags, parameters and the bodies not
//!   yet typed (written by hand, per route);
//! - the wire types (`jarvis_wire`), whose JSON Schemas (schemars) become
//!   `components/schemas`, and the routes that use them ([`TYPED`]): their request and
//!   response bodies are those types, and every error response is `ErrorBody`.
//!
//! The same document is checked in as `crates/wire/openapi.json`, from which the UI's types are
//! generated; `tests/openapi.rs` fails when either differs from what this makes, and says how to
//! regenerate them.

use std::sync::OnceLock;

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use jarvis_wire::api as wire;
use jarvis_wire::{ErrorBody, ErrorCode};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Value, json};

use crate::http::ApiError;
use crate::services::Services;

/// Per-route descriptions written by hand (what the types do not say).
const ROUTES: &str = include_str!("routes.json");

/// Makes a wire type's schema (a `$ref` into `components/schemas`).
pub type SchemaOf = fn(&mut SchemaGenerator) -> Schema;

/// A route whose bodies are wire types.
pub struct Typed {
    pub method: &'static str,
    pub path: &'static str,
    pub request: Option<SchemaOf>,
    /// The success status and its body.
    pub response: Option<(&'static str, SchemaOf)>,
}

fn s<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

const fn typed(
    method: &'static str,
    path: &'static str,
    request: Option<SchemaOf>,
    response: Option<(&'static str, SchemaOf)>,
) -> Typed {
    Typed {
        method,
        path,
        request,
        response,
    }
}

/// The routes the wire types describe. A handler that takes or returns a wire type is listed
/// here, so the document says exactly what it parses and answers.
pub const TYPED: &[Typed] = &[
    typed("post", "/api/pair/start", Some(s::<wire::PairStart>), None),
    typed("post", "/api/pair/poll", Some(s::<wire::PairPoll>), None),
    typed(
        "post",
        "/api/pair/approve",
        Some(s::<wire::PairApprove>),
        Some(("200", s::<wire::PairApproved>)),
    ),
    typed("get", "/api/me", None, Some(("200", s::<wire::Me>))),
    typed("post", "/api/users", Some(s::<wire::NewUser>), None),
    typed(
        "delete",
        "/api/tokens/{id}",
        None,
        Some(("200", s::<wire::TokenRevoked>)),
    ),
    typed(
        "delete",
        "/api/devices/{id}",
        None,
        Some(("200", s::<wire::DeviceRevoked>)),
    ),
    typed(
        "post",
        "/api/workspaces",
        Some(s::<wire::NewWorkspace>),
        None,
    ),
    typed(
        "put",
        "/api/workspaces/{id}/members/{user}",
        Some(s::<wire::MemberRole>),
        Some(("200", s::<wire::MemberSet>)),
    ),
    typed(
        "delete",
        "/api/workspaces/{id}/members/{user}",
        None,
        Some(("200", s::<wire::MemberRemoved>)),
    ),
    typed(
        "get",
        "/api/sessions",
        None,
        Some(("200", s::<wire::SessionList>)),
    ),
    typed("post", "/api/sessions", Some(s::<wire::NewSession>), None),
    typed(
        "patch",
        "/api/sessions/{id}",
        Some(s::<wire::SessionUpdate>),
        Some(("200", s::<wire::SessionUpdated>)),
    ),
    typed(
        "post",
        "/api/sessions/{id}/messages",
        Some(s::<wire::SendMessage>),
        Some(("202", s::<wire::MessageSent>)),
    ),
    typed(
        "post",
        "/api/sessions/{id}/interrupt",
        None,
        Some(("200", s::<wire::Interrupted>)),
    ),
    typed(
        "post",
        "/api/sessions/{id}/approvals/{approval}",
        Some(s::<wire::AnswerApproval>),
        Some(("200", s::<wire::ApprovalAnswered>)),
    ),
    typed(
        "put",
        "/api/workspaces/{id}/agents/{name}",
        Some(s::<wire::PutAgent>),
        None,
    ),
    typed(
        "post",
        "/api/workspaces/{id}/agents/{name}/runs",
        Some(s::<wire::TriggerRun>),
        None,
    ),
    typed(
        "get",
        "/api/workspaces/{id}/agents/{name}/runs",
        None,
        Some(("200", s::<wire::AgentRuns>)),
    ),
];

/// The whole document, generated.
pub fn document() -> Result<Value, serde_json::Error> {
    let mut doc: Value = serde_json::from_str(ROUTES)?;
    // Requests as the server reads them (a field with a default may be left out); responses
    // as it writes them (an `Option` is there, as null). No type is used both ways.
    let settings = schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "/components/schemas/".into());
    let mut requests = settings.clone().for_deserialize().into_generator();
    let mut g = settings.for_serialize().into_generator();
    let error = g.subschema_for::<ErrorBody>();
    g.subschema_for::<ErrorCode>();
    doc["components"]["responses"]["Error"] = json!({
        "description": "{code, message}: the code says what a program may do about it, the \
                        message is for a person; the status follows from the code",
        "content": {"application/json": {"schema": error}},
    });
    for t in TYPED {
        let op = &mut doc["paths"][t.path][t.method];
        if !op.is_object() {
            // `tests/openapi.rs` names the route; the document says nothing wrong meanwhile.
            continue;
        }
        if let Some(request) = t.request {
            op["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": request(&mut requests)}},
            });
        }
        if let Some((status, response)) = t.response {
            let description = op["responses"][status]["description"]
                .as_str()
                .unwrap_or("OK")
                .to_owned();
            op["responses"][status] = json!({
                "description": description,
                "content": {"application/json": {"schema": response(&mut g)}},
            });
        }
    }
    let schemas = &mut doc["components"]["schemas"];
    if let Some(hand) = schemas.as_object_mut() {
        // The hand-written `Error` is the wire's `ErrorBody` now.
        hand.remove("Error");
        let (requests, responses) = (requests.take_definitions(true), g.take_definitions(true));
        if let Some(both) = requests.keys().find(|k| responses.contains_key(*k)) {
            // Its two schemas would differ; one name cannot say both.
            tracing::error!(schema = %both, "a wire type is both a request and a response");
        }
        hand.extend(requests);
        hand.extend(responses);
    }
    Ok(doc)
}

/// The document as served and checked in: pretty JSON with a final newline.
pub fn document_text() -> Result<String, serde_json::Error> {
    let mut text = serde_json::to_string_pretty(&document()?)?;
    text.push('\n');
    Ok(text)
}

pub fn router() -> Router<Services> {
    Router::new().route("/openapi.json", get(openapi))
}

async fn openapi() -> Response {
    static TEXT: OnceLock<Result<String, String>> = OnceLock::new();
    match TEXT.get_or_init(|| document_text().map_err(|e| e.to_string())) {
        Ok(text) => ([(header::CONTENT_TYPE, "application/json")], text.clone()).into_response(),
        Err(e) => ApiError::new(
            ErrorCode::Internal,
            format!("the API description is broken: {e}"),
        )
        .into_response(),
    }
}
