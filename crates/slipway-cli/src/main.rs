//! The `slipway` command-line shell: parses arguments and hands work to the core and the
//! engines. It holds no pipeline logic of its own.

mod console;
mod gitdir;
mod pipeline_cmds;
mod repo;
mod run_cmd;
mod server_cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "slipway",
    version,
    about = "Self-hosted CI/CD: run GitLab CI pipelines locally or on a server, deliver them safely."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a pipeline file: exit 0 with a summary when valid, 1 with every error.
    Lint(pipeline_cmds::FileArgs),
    /// Print the fully expanded configuration (includes, extends, anchors and
    /// !reference resolved).
    Preview(pipeline_cmds::FileArgs),
    /// List the jobs planned for a ref and pipeline source.
    List(pipeline_cmds::ListArgs),
    /// Run the pipeline on this machine: in a shell, or in containers for jobs with image:.
    Run(run_cmd::RunArgs),
    /// Run the server: API, triggers (hook, polling, webhooks, schedules), scheduler and
    /// job workers.
    Server(server_cmd::ServerArgs),
}

fn main() -> ExitCode {
    // Piping into `head` must end the program quietly, as it does for other Unix tools,
    // not panic on the closed pipe.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Lint(a) => pipeline_cmds::lint(&a),
        Command::Preview(a) => pipeline_cmds::preview(&a),
        Command::List(a) => pipeline_cmds::list(&a),
        Command::Run(a) => run_cmd::run(&a),
        Command::Server(a) => server_cmd::run(&a),
    }
}
