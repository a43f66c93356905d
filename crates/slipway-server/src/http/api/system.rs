//! Health and the API's own description.

use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

/// The OpenAPI 3 document of this API (`GET /openapi.json`), kept beside the code and
/// checked against the router by the tests.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// `GET /health`: the server answers (and with which version).
pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

/// `GET /openapi.json`.
pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}
