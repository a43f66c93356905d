//! The parts of Slipway's server that do not depend on the database: everything between
//! "something happened in a repository" and "this pipeline should be created", plus the
//! pieces the job log page is made of.
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
//! The HTTP layer, the web pages, the API, authentication and the database are not here:
//! they build on these modules.

pub mod ansi;
pub mod cron;
pub mod git;
pub mod hook;
pub mod loghub;
pub mod request;
pub mod webhook;
