//! `GET /openapi.json`: the API's description.

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::services::Services;

pub const OPENAPI: &str = include_str!("../openapi.json");

pub fn router() -> Router<Services> {
    Router::new().route("/openapi.json", get(openapi))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}
