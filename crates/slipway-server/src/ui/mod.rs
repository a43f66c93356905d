//! The web pages, mounted at `/` beside the API (see `crate::http::router`).
//!
//! Server-rendered with maud from the store, a few queries per page whatever its length;
//! they share the API's state ([`crate::app::AppState`]), its sessions (the cookie the
//! sign-in page sets is the API's) and its permission checks (`slipway_db::can` through
//! [`page::project_access`]): a button is shown only to roles that may press it, and the
//! form it posts is checked again. Forms carry the session's CSRF token. Everything works
//! without the script but live updates; the script ([`assets`]) follows server-sent
//! events: page changes ([`live`]) and job logs ([`log`]).
//!
//! - [`page`]: viewer, layout, errors, flash messages; [`view`]: badges, times, sizes;
//! - [`session`]: sign in and out; [`projects`]: list, add, overview;
//! - [`pipelines`]: lists, a pipeline and its graph ([`graph`]), "Run pipeline";
//! - [`jobs`]: the job page, its log and its actions;
//! - [`environments`]: environments, what runs where, deployment history, a deployment,
//!   approve / reject / rollback.

pub mod assets;
pub mod environments;
pub mod graph;
pub mod jobs;
pub mod live;
pub mod log;
pub mod page;
pub mod pipelines;
pub mod projects;
pub mod session;
pub mod view;

use crate::app::AppState;
use axum::routing::{get, post};
use axum::Router;

/// The pages' routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { page::redirect("/projects") }))
        .route("/login", get(session::form).post(session::submit))
        .route("/logout", post(session::logout))
        .route("/-/assets/{file}", get(assets::serve))
        .route("/-/events", get(live::events))
        .route("/projects", get(projects::list))
        .route(
            "/projects/-/new",
            get(projects::new_page).post(projects::create),
        )
        .route("/projects/{project}", get(projects::show))
        .route(
            "/projects/{project}/pipelines",
            get(pipelines::list).post(pipelines::run),
        )
        .route(
            "/projects/{project}/pipelines/new",
            get(pipelines::new_form),
        )
        .route("/projects/{project}/pipelines/{iid}", get(pipelines::show))
        .route(
            "/projects/{project}/pipelines/{iid}/cancel",
            post(pipelines::cancel),
        )
        .route(
            "/projects/{project}/pipelines/{iid}/retry",
            post(pipelines::retry),
        )
        .route("/projects/{project}/jobs/{id}", get(jobs::show))
        .route("/projects/{project}/jobs/{id}/log.events", get(log::events))
        .route("/projects/{project}/jobs/{id}/play", post(jobs::play))
        .route("/projects/{project}/jobs/{id}/retry", post(jobs::retry))
        .route("/projects/{project}/jobs/{id}/cancel", post(jobs::cancel))
        .route(
            "/projects/{project}/pipelines/-/id/{id}",
            get(environments::pipeline_by_id),
        )
        .route("/projects/{project}/environments", get(environments::list))
        .route(
            "/projects/{project}/environments/{name}",
            get(environments::show),
        )
        .route(
            "/projects/{project}/environments/{name}/rollback",
            post(environments::rollback),
        )
        .route(
            "/projects/{project}/deployments/{id}",
            get(environments::deployment),
        )
        .route(
            "/projects/{project}/deployments/{id}/approve",
            post(environments::approve),
        )
        .route(
            "/projects/{project}/deployments/{id}/reject",
            post(environments::reject),
        )
}

/// A page for paths nothing else answers (the API's own keep its JSON errors).
pub async fn not_found(uri: axum::http::Uri) -> axum::response::Response {
    use axum::response::IntoResponse;
    page::PageError::not_found(format!("There is no page at {}.", uri.path())).into_response()
}
