//! Slipway's server: everything between "something happened in a repository" and "the
//! job's log is in the browser".
//!
//! The parts that need no database:
//!
//! - [`git`]: bare mirrors of project repositories, refs and push detection by snapshot,
//!   files and changes at a commit, exporting a commit into a job workspace.
//! - [`hook`]: the `post-receive` hook that tells the server about each pushed ref.
//! - [`webhook`]: push and merge request webhooks from GitHub, GitLab and Gitea, with
//!   their signatures or tokens verified.
//! - [`request`]: from an event to a planned pipeline at a commit (`Trigger`, predefined
//!   variables, changed and repository files), or positioned errors.
//! - [`cron`]: GitLab's cron syntax for pipeline schedules, in a time zone.
//! - [`loghub`]: live job logs for many subscribers, with catch-up from storage.
//! - [`ansi`]: job logs as HTML (colours, `\r` overwrites, collapsible sections).
//!
//! The running server, on the state store (`slipway-db`) and the runner
//! (`slipway-runner`):
//!
//! - [`server`]: start, serve, stop; [`background`]: the tasks it runs; [`app`]: the
//!   configuration and the state every part shares.
//! - [`http`]: the JSON API under `/api/v1`, authentication, errors, the OpenAPI
//!   document; [`ui`]: where the pages mount.
//! - [`pipelines`]: requests to pipelines (plan, store, auto-cancel); [`triggers`]:
//!   hook and webhook pushes, polling, schedules.
//! - [`scheduler`]: pipelines moved forward on job events; [`queue`]: the job
//!   lifecycle workers (and later agents) drive; [`worker`]: local workers on the
//!   runner's one-job attempt; [`exports`]: commits checked out for jobs;
//!   [`recovery`]: jobs of a dead process or a silent holder.
//! - [`mirrors`], [`logstore`], [`artifacts`], [`tar`]: mirrors, the log hub's view of
//!   the store, artifact downloads; [`client`]: the HTTP client the CLI uses.
//! - [`deployments`]: environments, deployment records, protection and approvals,
//!   resource groups, the deployment engine and its router, rollback, notifications.

pub mod ansi;
pub mod app;
pub mod artifacts;
pub mod background;
pub mod client;
pub mod cron;
pub mod deployments;
pub mod exports;
pub mod git;
pub mod hook;
pub mod http;
pub mod loghub;
pub mod logstore;
pub mod mirrors;
pub mod pipelines;
pub mod queue;
pub mod recovery;
pub mod request;
pub mod scheduler;
pub mod server;
pub mod tar;
pub mod triggers;
pub mod ui;
pub mod webhook;
pub mod worker;
