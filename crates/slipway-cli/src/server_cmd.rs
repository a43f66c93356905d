//! `slipway server`: runs the server (API, triggers, scheduler, workers) until SIGTERM or
//! Ctrl-C. Everything it does lives in `slipway_server`; this is flags and logging.

use clap::{Args, ValueEnum};
use slipway_runner::pipeline::ExecutorChoice;
use slipway_server::app::ServerConfig;
use slipway_server::server::{self, FirstAdminOptions};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ServerExecutor {
    /// Jobs with `image:` in containers, the others in a shell.
    Auto,
    /// Every job in a shell on this machine.
    Shell,
    /// Every job in a container through the Docker Engine API (`DOCKER_HOST`).
    Docker,
}

#[derive(Args, Clone)]
pub struct ServerArgs {
    /// Where the server keeps its database (SQLite), secret key, mirrors, workspaces and
    /// artifacts (default: $XDG_DATA_HOME/slipway/server).
    #[arg(long, env = "SLIPWAY_DATA")]
    pub data: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "SLIPWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// PostgreSQL URL (postgres://user@host/db); default: SQLite in the data directory.
    #[arg(long, env = "SLIPWAY_DATABASE_URL")]
    pub database: Option<String>,
    /// Jobs run at once on this server (default: the number of cores).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Where jobs run.
    #[arg(long, value_enum, default_value = "auto")]
    pub executor: ServerExecutor,
    /// The URL users and hooks reach this server at (CI_SERVER_URL, hook targets);
    /// default: http:// and the listen address. An https:// URL makes cookies Secure.
    #[arg(long, env = "SLIPWAY_EXTERNAL_URL")]
    pub external_url: Option<String>,
}

pub fn server_data_dir(arg: &Option<PathBuf>) -> PathBuf {
    match arg {
        Some(d) => d.clone(),
        None => crate::run_cmd::data_dir(&None).join("server"),
    }
}

/// Logs go to standard error; `SLIPWAY_LOG` (or `RUST_LOG`) filters them (`info` by
/// default, e.g. `SLIPWAY_LOG=slipway_server=debug`).
pub fn init_logging() {
    let filter = std::env::var("SLIPWAY_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

pub fn run(args: &ServerArgs) -> ExitCode {
    init_logging();
    let mut config = ServerConfig::new(server_data_dir(&args.data));
    config.listen = args.listen.clone();
    config.database_url = args.database.clone().filter(|d| !d.is_empty());
    if let Some(c) = args.concurrency {
        config.concurrency = c.max(1);
    }
    config.executor = match args.executor {
        ServerExecutor::Auto => ExecutorChoice::Auto,
        ServerExecutor::Shell => ExecutorChoice::Shell,
        ServerExecutor::Docker => ExecutorChoice::Docker,
    };
    config.external_url = args.external_url.clone().filter(|u| !u.is_empty());
    let admin = FirstAdminOptions {
        username: std::env::var("SLIPWAY_ADMIN_USER")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "admin".into()),
        password: std::env::var("SLIPWAY_ADMIN_PASSWORD")
            .ok()
            .filter(|p| !p.is_empty()),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        match server::start(config, admin).await {
            Ok(started) => {
                eprintln!("Slipway server listening on http://{}", started.addr);
                started.serve(server::shutdown_signal()).await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
