//! The pages' static files, embedded in the binary: one stylesheet and one small script
//! (live updates only: every page works without it). Their URLs carry a hash of their
//! content, so browsers cache them for good and a new build is fetched at once.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

pub const CSS: &str = include_str!("static/app.css");
pub const JS: &str = include_str!("static/app.js");

/// The logo, inline in the top bar.
pub const LOGO_SVG: &str = r##"<svg class="logo" viewBox="0 0 24 24" width="22" height="22" aria-hidden="true"><path d="M3 17h18l-3 4H6z" fill="currentColor"/><path d="M12 2v13M12 3l7 10h-7M12 6l-6 7h6" fill="none" stroke="currentColor" stroke-width="1.8" stroke-linejoin="round"/></svg>"##;

/// The same as a data URL, so the favicon costs no request.
pub const FAVICON: &str = "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 24 24'%3E%3Cpath d='M3 17h18l-3 4H6z' fill='%231f5fbf'/%3E%3Cpath d='M12 2v13M12 3l7 10h-7M12 6l-6 7h6' fill='none' stroke='%231f5fbf' stroke-width='2'/%3E%3C/svg%3E";

fn short_hash(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

static CSS_NAME: LazyLock<String> = LazyLock::new(|| format!("app.{}.css", short_hash(CSS)));
static JS_NAME: LazyLock<String> = LazyLock::new(|| format!("app.{}.js", short_hash(JS)));

pub fn css_url() -> String {
    format!("/-/assets/{}", *CSS_NAME)
}

pub fn js_url() -> String {
    format!("/-/assets/{}", *JS_NAME)
}

/// `GET /-/assets/{file}`: the current stylesheet or script, cached for a year. An
/// older hash (a page from before an upgrade) gets the current file, not cached.
pub async fn serve(Path(file): Path<String>) -> Response {
    let (body, kind, current) = if file.ends_with(".css") && file.starts_with("app.") {
        (CSS, "text/css; charset=utf-8", file == *CSS_NAME)
    } else if file.ends_with(".js") && file.starts_with("app.") {
        (JS, "text/javascript; charset=utf-8", file == *JS_NAME)
    } else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    let mut r = ([(header::CONTENT_TYPE, kind)], body).into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if current {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        }),
    );
    r.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}
