//! The API's handlers, one module per area, and the table of routes.

pub mod projects;
pub mod session;
pub mod system;

use crate::http::{Access, Routes};
use axum::http::Method;

/// Registers every API route. Keep `openapi.json` in step: a test compares them.
pub fn register(r: Routes) -> Routes {
    use Access::*;
    use Method as M;
    r.add(M::GET, "/health", Public, system::health)
        .add(M::GET, "/openapi.json", Public, system::openapi)
        .add(M::POST, "/session", Public, session::login)
        .add(M::GET, "/session", User, session::current)
        .add(M::DELETE, "/session", User, session::logout)
        .add(M::GET, "/user", User, session::me)
        .add(M::GET, "/user/tokens", User, session::tokens)
        .add(M::POST, "/user/tokens", User, session::create_token)
        .add(M::DELETE, "/user/tokens/{id}", User, session::revoke_token)
        .add(M::GET, "/projects", User, projects::list)
        .add(M::POST, "/projects", Admin, projects::create)
        .add(
            M::GET,
            "/projects/{project}",
            Project(slipway_db::Action::View),
            projects::get,
        )
        .add(
            M::PATCH,
            "/projects/{project}",
            Project(slipway_db::Action::ManageSettings),
            projects::update,
        )
        .add(
            M::DELETE,
            "/projects/{project}",
            Project(slipway_db::Action::DeleteProject),
            projects::delete,
        )
}
