//! Instance administration: users and the audit log.

use crate::app::AppState;
use crate::http::auth::{Caller, Writer};
use crate::http::error::ApiResult;
use crate::http::extract::{Body, Page, PageQuery, Query};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

/// `GET /users` (administrators).
pub async fn users(
    State(app): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Page<slipway_db::User>>> {
    caller.require_admin()?;
    Ok(Json(Page::all(app.store.users().await?)))
}

#[derive(Deserialize)]
pub struct NewUser {
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub is_admin: bool,
}

/// `POST /users` (administrators).
pub async fn create_user(
    State(app): State<AppState>,
    w: Writer,
    Body(b): Body<NewUser>,
) -> ApiResult<(StatusCode, Json<slipway_db::User>)> {
    w.require_admin()?;
    let u = app
        .store
        .create_user(&w.actor(), &b.username, &b.password, b.is_admin)
        .await?;
    Ok((StatusCode::CREATED, Json(u)))
}

/// `GET /audit?cursor=&limit=` (administrators): entries oldest first from `cursor` (the
/// last sequence number seen).
pub async fn audit(
    State(app): State<AppState>,
    caller: Caller,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Page<slipway_db::AuditEntry>>> {
    caller.require_admin()?;
    let after = q.cursor_i64()?.unwrap_or(0);
    let limit = q.limit();
    let mut items = app.store.audit_entries(after, limit + 1).await?;
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let next_cursor = if more {
        items.last().map(|e| e.seq.to_string())
    } else {
        None
    };
    Ok(Json(Page { items, next_cursor }))
}
