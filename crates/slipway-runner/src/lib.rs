//! The engine that runs planned pipelines, shared by `slipway run`, the server and the
//! agents. It prepares each job's workspace, runs the job on an [`executor::Executor`]
//! (a shell on this machine, or containers through the Docker Engine API), streams its
//! log through [`logs::LogSink`] (masking secrets, never truncating), and moves
//! artifacts and caches in and out of the content-addressed [`store`].
//!
//! One job attempt end to end is [`job::run_attempt`]: the server runs it for each job it
//! takes from its queue, and [`pipeline::run`] (`slipway run`) loops over a plan with it.
//! Scheduling decisions come from `slipway_core::schedule` and the per-job rules (retry,
//! artifact and cache conditions, the job's environment) from `slipway_core::job`, so
//! every shell agrees on what runs when and how.

pub mod container;
pub mod executor;
pub mod job;
pub mod logs;
pub mod pipeline;
pub mod report;
pub mod shell;
pub mod store;
pub mod workspace;
