//! The API's handlers, one module per area, and the table of routes.

pub mod admin;
pub mod environments;
pub mod jobs;
pub mod pipelines;
pub mod projects;
pub mod session;
pub mod settings;
pub mod system;
pub mod triggers;

use crate::http::{Access, Routes};
use axum::http::Method;
use slipway_db::Action as A;

/// Registers every API route. Keep `openapi.json` in step: a test compares them.
pub fn register(r: Routes) -> Routes {
    use Access::*;
    use Method as M;
    r.add(M::GET, "/health", Public, system::health)
        .add(M::GET, "/openapi.json", Public, system::openapi)
        // The caller.
        .add(M::POST, "/session", Public, session::login)
        .add(M::GET, "/session", User, session::current)
        .add(M::DELETE, "/session", User, session::logout)
        .add(M::GET, "/user", User, session::me)
        .add(M::GET, "/user/tokens", User, session::tokens)
        .add(M::POST, "/user/tokens", User, session::create_token)
        .add(M::DELETE, "/user/tokens/{id}", User, session::revoke_token)
        // Administration.
        .add(M::GET, "/users", Admin, admin::users)
        .add(M::POST, "/users", Admin, admin::create_user)
        .add(M::GET, "/audit", Admin, admin::audit)
        // Projects.
        .add(M::GET, "/projects", User, projects::list)
        .add(M::POST, "/projects", Admin, projects::create)
        .add(
            M::GET,
            "/projects/{project}",
            Project(A::View),
            projects::get,
        )
        .add(
            M::PATCH,
            "/projects/{project}",
            Project(A::ManageSettings),
            projects::update,
        )
        .add(
            M::DELETE,
            "/projects/{project}",
            Project(A::DeleteProject),
            projects::delete,
        )
        // Pipelines.
        .add(
            M::GET,
            "/projects/{project}/pipelines",
            Project(A::View),
            pipelines::list,
        )
        .add(
            M::POST,
            "/projects/{project}/pipelines",
            Project(A::Trigger),
            pipelines::run,
        )
        .add(M::GET, "/pipelines/{id}", Project(A::View), pipelines::get)
        .add(
            M::GET,
            "/pipelines/{id}/jobs",
            Project(A::View),
            pipelines::jobs,
        )
        .add(
            M::POST,
            "/pipelines/{id}/cancel",
            Project(A::CancelJob),
            pipelines::cancel,
        )
        .add(
            M::POST,
            "/pipelines/{id}/retry",
            Project(A::RetryJob),
            pipelines::retry,
        )
        // Jobs.
        .add(M::GET, "/jobs/{id}", Project(A::View), jobs::get)
        .add(M::GET, "/jobs/{id}/log", Project(A::View), jobs::log)
        .add(
            M::GET,
            "/jobs/{id}/log/stream",
            Project(A::View),
            jobs::stream,
        )
        .add(
            M::GET,
            "/jobs/{id}/artifacts",
            Project(A::View),
            jobs::artifacts,
        )
        .add(
            M::GET,
            "/jobs/{id}/artifacts/archive",
            Project(A::View),
            jobs::archive,
        )
        .add(M::POST, "/jobs/{id}/play", Project(A::PlayJob), jobs::play)
        .add(
            M::POST,
            "/jobs/{id}/retry",
            Project(A::RetryJob),
            jobs::retry,
        )
        .add(
            M::POST,
            "/jobs/{id}/cancel",
            Project(A::CancelJob),
            jobs::cancel,
        )
        // Environments and deployments.
        .add(M::GET, "/environments", User, environments::all)
        .add(
            M::GET,
            "/projects/{project}/environments",
            Project(A::View),
            environments::list,
        )
        .add(
            M::GET,
            "/projects/{project}/environments/{name}",
            Project(A::View),
            environments::get,
        )
        .add(
            M::GET,
            "/projects/{project}/environments/{name}/deployments",
            Project(A::View),
            environments::deployments,
        )
        // Approvers and rollback rights are checked by the handlers (see
        // `crate::deployments::actions`), beyond seeing the project.
        .add(
            M::POST,
            "/projects/{project}/environments/{name}/rollback",
            Project(A::View),
            environments::rollback,
        )
        .add(
            M::GET,
            "/deployments/{id}",
            Project(A::View),
            environments::deployment,
        )
        .add(
            M::POST,
            "/deployments/{id}/approve",
            Project(A::View),
            environments::approve,
        )
        .add(
            M::POST,
            "/deployments/{id}/reject",
            Project(A::View),
            environments::reject,
        )
        .add(
            M::GET,
            "/projects/{project}/protected-environments",
            Project(A::View),
            environments::protections,
        )
        .add(
            M::PUT,
            "/projects/{project}/protected-environments/{name}",
            Project(A::ManageSettings),
            environments::set_protection,
        )
        .add(
            M::DELETE,
            "/projects/{project}/protected-environments/{name}",
            Project(A::ManageSettings),
            environments::delete_protection,
        )
        .add(
            M::GET,
            "/projects/{project}/resource-groups",
            Project(A::View),
            environments::resource_groups,
        )
        .add(
            M::PUT,
            "/projects/{project}/resource-groups/{name}",
            Project(A::ManageSettings),
            environments::set_resource_group,
        )
        .add(
            M::GET,
            "/projects/{project}/deployment-webhooks",
            Project(A::ManageSettings),
            environments::webhooks,
        )
        .add(
            M::POST,
            "/projects/{project}/deployment-webhooks",
            Project(A::ManageSecrets),
            environments::create_webhook,
        )
        .add(
            M::DELETE,
            "/projects/{project}/deployment-webhooks/{id}",
            Project(A::ManageSecrets),
            environments::delete_webhook,
        )
        // Triggers that carry their own secret.
        .add(M::POST, "/projects/{project}/hook", Token, triggers::hook)
        .add(
            M::POST,
            "/projects/{project}/webhook",
            Token,
            triggers::webhook,
        )
        .add(
            M::POST,
            "/projects/{project}/trigger/pipeline",
            Token,
            triggers::trigger,
        )
        .add(
            M::POST,
            "/projects/{project}/hook-token",
            Project(A::ManageSettings),
            triggers::hook_token,
        )
        // Settings.
        .add(
            M::GET,
            "/projects/{project}/variables",
            Project(A::ManageSettings),
            settings::variables,
        )
        .add(
            M::PUT,
            "/projects/{project}/variables/{key}",
            Project(A::ManageSettings),
            settings::set_variable,
        )
        .add(
            M::DELETE,
            "/projects/{project}/variables/{key}",
            Project(A::ManageSecrets),
            settings::delete_variable,
        )
        .add(
            M::GET,
            "/projects/{project}/members",
            Project(A::View),
            settings::members,
        )
        .add(
            M::PUT,
            "/projects/{project}/members/{user}",
            Project(A::ManageMembers),
            settings::set_member,
        )
        .add(
            M::DELETE,
            "/projects/{project}/members/{user}",
            Project(A::ManageMembers),
            settings::remove_member,
        )
        .add(
            M::GET,
            "/projects/{project}/schedules",
            Project(A::View),
            settings::schedules,
        )
        .add(
            M::POST,
            "/projects/{project}/schedules",
            Project(A::ManageSettings),
            settings::create_schedule,
        )
        .add(
            M::PATCH,
            "/projects/{project}/schedules/{id}",
            Project(A::ManageSettings),
            settings::update_schedule,
        )
        .add(
            M::DELETE,
            "/projects/{project}/schedules/{id}",
            Project(A::ManageSettings),
            settings::delete_schedule,
        )
        .add(
            M::GET,
            "/projects/{project}/webhooks",
            Project(A::ManageSettings),
            settings::webhooks,
        )
        .add(
            M::PUT,
            "/projects/{project}/webhooks/{provider}",
            Project(A::ManageSecrets),
            settings::set_webhook,
        )
        .add(
            M::DELETE,
            "/projects/{project}/webhooks/{provider}",
            Project(A::ManageSecrets),
            settings::delete_webhook,
        )
        .add(
            M::GET,
            "/projects/{project}/triggers",
            Project(A::ManageSettings),
            settings::triggers,
        )
        .add(
            M::POST,
            "/projects/{project}/triggers",
            Project(A::ManageSettings),
            settings::create_trigger,
        )
        .add(
            M::DELETE,
            "/projects/{project}/triggers/{id}",
            Project(A::ManageSettings),
            settings::revoke_trigger,
        )
}
