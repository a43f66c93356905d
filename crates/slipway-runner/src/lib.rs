//! The engine that runs planned pipelines, shared by `slipway run`, the server and the
//! agents. It prepares each job's workspace, runs the job on an [`executor::Executor`]
//! (a shell on this machine, or containers through the Docker Engine API), streams its
//! log through [`logs::LogSink`] (masking secrets, never truncating), and moves
//! artifacts and caches in and out of the content-addressed [`store`].
//!
//! Scheduling decisions come from `slipway_core::schedule`, so every shell agrees on
//! what runs when.

pub mod container;
pub mod executor;
pub mod logs;
pub mod pipeline;
pub mod shell;
pub mod store;
pub mod workspace;
