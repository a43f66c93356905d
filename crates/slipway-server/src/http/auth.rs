//! Who is calling, for the API and the pages.
//!
//! Two ways in: a personal API token (`Authorization: Bearer slwpat_...`, for the CLI and
//! scripts) or the UI's session cookie (`slipway_session`, `HttpOnly`, `SameSite=Lax`,
//! `Secure` behind HTTPS). Handlers take:
//!
//! - [`Caller`]: any signed-in user (401 otherwise), for reads;
//! - [`Writer`]: a caller allowed to change things: a token with the `api` scope (a
//!   `read_api` token gets 403), or a session whose request carries the session's CSRF
//!   token in `X-CSRF-Token` (forms may send it as the `_csrf` field; the UI checks that
//!   with [`csrf_matches`]). Cookies alone never authorise a change, so another site
//!   cannot make a signed-in browser act.
//!
//! Project permissions are then checked per action with [`project_access`] (viewer,
//! developer, maintainer, admin; see `slipway_db::access`).

use crate::app::AppState;
use crate::http::error::{ApiError, ApiResult};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use slipway_db::{Action, Project, ProjectId, User};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "slipway_session";
/// The header carrying the CSRF token on cookie-authenticated changes.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// How the caller proved who they are.
#[derive(Debug, Clone)]
pub enum AuthMethod {
    /// The UI's session cookie; the token is kept to check CSRF tokens against.
    Session { token: String },
    /// A personal API token; `write` when it has the `api` scope.
    Token { write: bool },
}

/// A signed-in user.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: User,
    pub method: AuthMethod,
}

/// A signed-in user allowed to make changes (see the module documentation).
#[derive(Debug, Clone)]
pub struct Writer(pub Caller);

impl std::ops::Deref for Writer {
    type Target = Caller;
    fn deref(&self) -> &Caller {
        &self.0
    }
}

/// A caller if there is one (pages that also show something to visitors).
#[derive(Debug, Clone)]
pub struct MaybeCaller(pub Option<Caller>);

/// The CSRF token of a session: derived from the session token, so nothing more is
/// stored, and useless without the session cookie.
pub fn csrf_token(session_token: &str) -> String {
    let d = Sha256::digest(format!("slipway-csrf:{session_token}").as_bytes());
    d.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Whether `given` is the CSRF token of the session `session_token` (constant time).
pub fn csrf_matches(session_token: &str, given: &str) -> bool {
    crate::webhook::constant_time_eq(csrf_token(session_token).as_bytes(), given.as_bytes())
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// The bearer token of the `Authorization` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Authenticates the request, if it carries credentials. Bad credentials are an error
/// (401), not an anonymous request.
pub async fn authenticate(app: &AppState, headers: &HeaderMap) -> ApiResult<Option<Caller>> {
    if let Some(token) = bearer(headers) {
        return match app.store.authenticate_api_token(token).await? {
            Some((info, user)) => Ok(Some(Caller {
                user,
                method: AuthMethod::Token {
                    write: info.can_write(),
                },
            })),
            None => Err(ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "the API token is not valid (unknown, revoked or expired)",
            )),
        };
    }
    if let Some(token) = cookie(headers, SESSION_COOKIE) {
        return match app.store.session_user(token).await? {
            Some((_, user)) => Ok(Some(Caller {
                user,
                method: AuthMethod::Session {
                    token: token.to_string(),
                },
            })),
            None => Err(ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "the session has ended: sign in again",
            )),
        };
    }
    Ok(None)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        authenticate(app, &parts.headers)
            .await?
            .ok_or_else(ApiError::unauthenticated)
    }
}

impl FromRequestParts<AppState> for MaybeCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        Ok(MaybeCaller(authenticate(app, &parts.headers).await?))
    }
}

impl FromRequestParts<AppState> for Writer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, app).await?;
        match &caller.method {
            AuthMethod::Token { write: true } => {}
            AuthMethod::Token { write: false } => return Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "insufficient_scope",
                "this token is read-only (scope read_api): changes need a token with the api scope",
            )),
            AuthMethod::Session { token } => {
                let given = parts
                    .headers
                    .get(CSRF_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if !csrf_matches(token, given) {
                    return Err(ApiError::new(
                        axum::http::StatusCode::FORBIDDEN,
                        "csrf",
                        "missing or wrong X-CSRF-Token header for a signed-in change",
                    ));
                }
            }
        }
        Ok(Writer(caller))
    }
}

impl Caller {
    /// Instance administrators only.
    pub fn require_admin(&self) -> ApiResult<()> {
        if self.user.is_admin && !self.user.disabled {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "only instance administrators may do this",
            ))
        }
    }

    pub fn actor(&self) -> slipway_db::Actor {
        slipway_db::Actor::user(&self.user)
    }
}

/// The project `key` names (its id, or its name when not all digits).
pub async fn find_project(app: &AppState, key: &str) -> ApiResult<Project> {
    let found = match key.parse::<i64>() {
        Ok(id) => match app.store.project(ProjectId(id)).await {
            Ok(p) => Some(p),
            Err(slipway_db::Error::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        },
        Err(_) => app.store.project_by_name(key).await?,
    };
    found.ok_or_else(|| ApiError::not_found(format!("project {key} not found")))
}

/// Checks that `caller` may do `action` in `project`. A user who may not even view it
/// is told it does not exist (404), as GitLab does, so names do not leak.
pub async fn require_project(
    app: &AppState,
    caller: &Caller,
    project: &Project,
    action: Action,
) -> ApiResult<()> {
    if !app
        .store
        .can(&caller.user, project.id, Action::View)
        .await?
    {
        return Err(ApiError::not_found(format!(
            "project {} not found",
            project.name
        )));
    }
    if action != Action::View && !app.store.can(&caller.user, project.id, action).await? {
        return Err(ApiError::forbidden(format!(
            "your role in project {} does not allow this ({})",
            project.name,
            action_name(action)
        )));
    }
    Ok(())
}

/// [`find_project`] then [`require_project`].
pub async fn project_access(
    app: &AppState,
    caller: &Caller,
    key: &str,
    action: Action,
) -> ApiResult<Project> {
    let p = find_project(app, key).await?;
    require_project(app, caller, &p, action).await?;
    Ok(p)
}

fn action_name(a: Action) -> &'static str {
    match a {
        Action::View => "view",
        Action::Trigger => "trigger pipelines: developer or above",
        Action::PlayJob => "play jobs: developer or above",
        Action::RetryJob => "retry jobs: developer or above",
        Action::CancelJob => "cancel: developer or above",
        Action::ManageSettings => "manage settings: maintainer or above",
        Action::ManageSecrets => "manage secrets: maintainer or above",
        Action::ManageMembers => "manage members: admin",
        Action::DeleteProject => "delete the project: admin",
    }
}
