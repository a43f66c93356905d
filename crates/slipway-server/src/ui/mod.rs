//! The web pages, mounted at `/` beside the API (see `crate::http::router`). Server-rendered;
//! they share the API's state ([`crate::app::AppState`]) and its authentication
//! (`crate::http::auth::{Caller, MaybeCaller, Writer}`, the session cookie and
//! `csrf_token` for forms). Pages are added here; the API's routes stay in `crate::http::api`.

use crate::app::AppState;
use axum::Router;

/// The pages' routes (none yet: the API is served alone).
pub fn routes() -> Router<AppState> {
    Router::new()
}
