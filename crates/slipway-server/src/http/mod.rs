//! The HTTP layer: the JSON API under `/api/v1` (this module and `api/`), its OpenAPI
//! document, and the mount point of the web pages (`crate::ui`, at `/`).
//!
//! Routes are registered through [`Routes`], which records each method, path and the
//! access it needs, so tests can check the OpenAPI document against the real router and
//! walk every mutating route as an anonymous user and as a viewer. The access tag is
//! documentation for those tests: the checks themselves are in the handlers (the
//! [`auth::Writer`] extractor and [`auth::project_access`]).

pub mod api;
pub mod auth;
pub mod error;
pub mod extract;

use crate::app::AppState;
use axum::handler::Handler;
use axum::http::{Method, StatusCode};
use axum::routing::{delete, get, patch, post, put};
use axum::Router;
use error::ApiError;
use slipway_db::Action;

/// The API's prefix.
pub const API_PREFIX: &str = "/api/v1";

/// What a route asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health, the OpenAPI document, signing in).
    Public,
    /// A secret of its own instead of a user: a hook token, a webhook signature, a
    /// trigger token.
    Token,
    /// Any signed-in user, acting on their own things (their session, their tokens).
    User,
    /// Instance administrators.
    Admin,
    /// A role in the project named by the path that allows this action.
    Project(Action),
}

/// One registered route.
#[derive(Debug, Clone)]
pub struct RouteInfo {
    pub method: Method,
    /// Relative to [`API_PREFIX`], with `{param}` placeholders as in OpenAPI.
    pub path: &'static str,
    pub access: Access,
}

/// The API router under construction, and the list of what it holds.
pub struct Routes {
    router: Router<AppState>,
    pub list: Vec<RouteInfo>,
}

impl Routes {
    fn new() -> Routes {
        Routes {
            router: Router::new(),
            list: Vec::new(),
        }
    }

    /// Adds `handler` for `method` on `path` (relative to the API prefix).
    pub fn add<H, T>(mut self, method: Method, path: &'static str, access: Access, h: H) -> Routes
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let mr = match method.as_str() {
            "GET" => get(h),
            "POST" => post(h),
            "PUT" => put(h),
            "PATCH" => patch(h),
            "DELETE" => delete(h),
            other => panic!("unsupported method {other} for {path}"),
        };
        self.router = self.router.route(&format!("{API_PREFIX}{path}"), mr);
        self.list.push(RouteInfo {
            method,
            path,
            access,
        });
        self
    }
}

/// Every API route, recorded.
pub fn api_routes() -> Routes {
    api::register(Routes::new())
}

/// The whole application: the API, then the pages.
pub fn router(app: AppState) -> Router {
    let routes = api_routes();
    Router::new()
        .merge(routes.router)
        .merge(crate::ui::routes())
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
}

async fn fallback(uri: axum::http::Uri) -> axum::response::Response {
    use axum::response::IntoResponse;
    if !uri.path().starts_with(API_PREFIX) {
        // A browser's mistyped address gets a page, not JSON.
        return crate::ui::not_found(uri).await;
    }
    ApiError::not_found(format!("no such route: {}", uri.path())).into_response()
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}
