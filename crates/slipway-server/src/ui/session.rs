//! Signing in and out from the browser. The sign-in form is protected against login
//! CSRF (another site signing the browser in as someone else) by a double-submit token:
//! a random cookie set with the form, which the form repeats.

use crate::app::AppState;
use crate::http::auth::SESSION_COOKIE;
use crate::ui::page::{redirect, Layout, MaybeSignedIn, PageError, SignedIn};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use maud::html;
use serde::Deserialize;
use std::net::SocketAddr;

const LOGIN_CSRF_COOKIE: &str = "slipway_login";

#[derive(Debug, Default, Deserialize)]
pub struct LoginQuery {
    #[serde(default)]
    pub next: String,
    #[serde(default)]
    pub expired: Option<String>,
}

/// Where to go after signing in: a path on this server only (no `//host` or
/// `https://...`, which would make the form an open redirect).
fn safe_next(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.starts_with("/\\") {
        next
    } else {
        "/projects"
    }
}

fn login_page(next: &str, token: &str, error: Option<&str>, username: &str) -> Response {
    let mut r = Layout::bare("Sign in").render(html! {
        section.panel.narrow.login {
            h1 { "Sign in to Slipway" }
            @if let Some(e) = error {
                p.flash.error role="alert" { (e) }
            }
            form method="post" action="/login" {
                input type="hidden" name="_login" value=(token);
                input type="hidden" name="next" value=(next);
                div.field {
                    label for="username" { "Username" }
                    input #username type="text" name="username" value=(username) autocomplete="username" required autofocus;
                }
                div.field {
                    label for="password" { "Password" }
                    input #password type="password" name="password" autocomplete="current-password" required;
                }
                button.btn.primary type="submit" { "Sign in" }
            }
        }
    });
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{LOGIN_CSRF_COOKIE}={token}; Path=/login; HttpOnly; SameSite=Strict; Max-Age=3600"
    )) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

fn new_login_token() -> Result<String, PageError> {
    crate::hook::new_token()
        .map(|t| t[..32].to_string())
        .map_err(|e| crate::http::error::ApiError::internal("making a sign-in token", &e).into())
}

/// `GET /login`.
pub async fn form(
    MaybeSignedIn(viewer): MaybeSignedIn,
    Query(q): Query<LoginQuery>,
) -> Result<Response, PageError> {
    let next = safe_next(&q.next);
    if viewer.is_some() {
        return Ok(redirect(next));
    }
    let note = q
        .expired
        .is_some()
        .then_some("Your session has ended: sign in again.");
    Ok(login_page(next, &new_login_token()?, note, ""))
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub next: String,
    #[serde(default, rename = "_login")]
    pub login_token: String,
}

/// `POST /login`: opens a session (the same as the API's `POST /session`).
pub async fn submit(
    State(app): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Result<Response, PageError> {
    let next = safe_next(&f.next).to_string();
    let cookie = crate::http::auth::cookie(&headers, LOGIN_CSRF_COOKIE).unwrap_or("");
    if cookie.is_empty()
        || !crate::webhook::constant_time_eq(cookie.as_bytes(), f.login_token.as_bytes())
    {
        let mut r = login_page(
            &next,
            &new_login_token()?,
            Some("The sign-in form expired: please try again."),
            &f.username,
        );
        *r.status_mut() = StatusCode::FORBIDDEN;
        return Ok(r);
    }
    let ttl = app.config.session_ttl;
    let from = addr.ip().to_string();
    let Some((token, _session, user)) = app
        .store
        .login(&f.username, &f.password, ttl, &from)
        .await?
    else {
        tracing::info!(user = %f.username, %from, "sign-in refused");
        return Ok(login_page(
            &next,
            &new_login_token()?,
            Some("Wrong username or password."),
            &f.username,
        ));
    };
    tracing::info!(user = %user.username, %from, "signed in");
    let secure = if app.config.secure_cookies() {
        "; Secure"
    } else {
        ""
    };
    let mut r = redirect(&next);
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
        token.expose(),
        ttl.as_secs()
    )) {
        h.append(header::SET_COOKIE, v);
    }
    h.append(
        header::SET_COOKIE,
        HeaderValue::from_static("slipway_login=; Path=/login; HttpOnly; Max-Age=0"),
    );
    Ok(r)
}

#[derive(Debug, Deserialize)]
pub struct CsrfOnly {
    #[serde(default, rename = "_csrf")]
    pub csrf: String,
}

/// `POST /logout`.
pub async fn logout(
    State(app): State<AppState>,
    SignedIn(viewer): SignedIn,
    headers: HeaderMap,
    Form(f): Form<CsrfOnly>,
) -> Result<Response, PageError> {
    viewer.check_csrf(&f.csrf)?;
    if let Some(token) = crate::http::auth::cookie(&headers, SESSION_COOKIE) {
        app.store.logout(token).await?;
        // As the API's `DELETE /session` records it.
        app.store
            .audit(
                &viewer.actor(),
                "user.logout",
                "user",
                &viewer.user.id.to_string(),
                serde_json::json!({}),
            )
            .await?;
    }
    let mut r = redirect("/login");
    r.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_static("slipway_session=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"),
    );
    Ok(r.into_response())
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn next_stays_on_this_server() {
        assert_eq!(safe_next("/projects/app"), "/projects/app");
        assert_eq!(safe_next("//evil.example/x"), "/projects");
        assert_eq!(safe_next("/\\evil.example"), "/projects");
        assert_eq!(safe_next("https://evil.example"), "/projects");
        assert_eq!(safe_next(""), "/projects");
    }
}
