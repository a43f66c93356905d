//! Signing in and out (UI sessions), who the caller is, and the caller's personal API
//! tokens.

use crate::app::AppState;
use crate::http::auth::{csrf_token, AuthMethod, Caller, Writer, SESSION_COOKIE};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{Body, Page, Path};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use slipway_db::{ApiTokenId, TokenScope};
use std::net::SocketAddr;

#[derive(Deserialize)]
pub struct Login {
    pub username: String,
    pub password: String,
}

fn session_cookie(app: &AppState, value: &str, max_age: u64) -> ApiResult<HeaderValue> {
    let secure = if app.config.secure_cookies() {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    ))
    .map_err(|e| ApiError::internal("setting the session cookie", &e))
}

/// `POST /session`: checks the password, opens a session (cookie) and returns the user
/// and the session's CSRF token. Successes and failures are audited.
pub async fn login(
    State(app): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Body(body): Body<Login>,
) -> ApiResult<Response> {
    let ttl = app.config.session_ttl;
    let from = addr.ip().to_string();
    let Some((token, session, user)) = app
        .store
        .login(&body.username, &body.password, ttl, &from)
        .await?
    else {
        tracing::info!(user = %body.username, %from, "sign-in refused");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "bad_credentials",
            "wrong username or password",
        ));
    };
    tracing::info!(user = %user.username, %from, "signed in");
    let cookie = session_cookie(&app, token.expose(), ttl.as_secs())?;
    let body = json!({
        "user": user,
        "csrf_token": csrf_token(token.expose()),
        "expires_at": session.expires_at,
    });
    let mut resp = (StatusCode::CREATED, Json(body)).into_response();
    resp.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(resp)
}

/// `GET /session`: the signed-in user and, for a session, its CSRF token.
pub async fn current(caller: Caller) -> Json<Value> {
    let csrf = match &caller.method {
        AuthMethod::Session { token } => Some(csrf_token(token)),
        AuthMethod::Token { .. } => None,
    };
    Json(json!({"user": caller.user, "csrf_token": csrf}))
}

/// `DELETE /session`: signs out (the cookie is cleared).
pub async fn logout(State(app): State<AppState>, w: Writer) -> ApiResult<Response> {
    if let AuthMethod::Session { token } = &w.method {
        app.store.logout(token).await?;
        app.store
            .audit(
                &w.actor(),
                "user.logout",
                "user",
                &w.user.id.to_string(),
                serde_json::json!({}),
            )
            .await?;
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, session_cookie(&app, "", 0)?);
    Ok(resp)
}

/// `GET /user`: the caller.
pub async fn me(caller: Caller) -> Json<slipway_db::User> {
    Json(caller.user)
}

#[derive(Deserialize)]
pub struct NewToken {
    pub name: String,
    /// `api` (default) or `read_api`.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Days until it expires; none: never.
    pub expires_in_days: Option<u32>,
}

/// `GET /user/tokens`: the caller's tokens (never the tokens themselves).
pub async fn tokens(
    State(app): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Page<slipway_db::ApiToken>>> {
    Ok(Json(Page::all(app.store.api_tokens(caller.user.id).await?)))
}

/// `POST /user/tokens`: a new personal API token, shown this once.
pub async fn create_token(
    State(app): State<AppState>,
    w: Writer,
    Body(body): Body<NewToken>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let scopes: Vec<TokenScope> = if body.scopes.is_empty() {
        vec![TokenScope::Api]
    } else {
        body.scopes
            .iter()
            .map(|s| {
                TokenScope::parse(s).ok_or_else(|| {
                    ApiError::invalid(format!("unknown scope {s:?}: use api or read_api"))
                })
            })
            .collect::<ApiResult<_>>()?
    };
    let expires = body.expires_in_days.map(|d| {
        app.store
            .now()
            .plus(std::time::Duration::from_secs(u64::from(d) * 86_400))
    });
    let (token, info) = app
        .store
        .create_api_token(&w.actor(), w.user.id, &body.name, &scopes, expires)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"token": token.expose(), "info": info})),
    ))
}

/// `DELETE /user/tokens/{id}`: revokes one of the caller's tokens.
pub async fn revoke_token(
    State(app): State<AppState>,
    w: Writer,
    Path(id): Path<i64>,
) -> ApiResult<StatusCode> {
    let mine = app
        .store
        .api_tokens(w.user.id)
        .await?
        .into_iter()
        .any(|t| t.id == ApiTokenId(id));
    if !mine {
        return Err(ApiError::not_found(format!("token {id} not found")));
    }
    app.store
        .revoke_api_token(&w.actor(), ApiTokenId(id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
