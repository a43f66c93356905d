//! The `slipway` command-line shell: parses arguments and hands work to the core and the
//! engines. It holds no pipeline logic of its own.

mod audit_cmd;
mod client_cmd;
mod console;
mod demo_cmd;
mod deploy_cmd;
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
    /// A server with a bundled example project (build, test, deploy to dev, staging on a
    /// click, production after an approval with blue-green), ready in the browser.
    Demo(demo_cmd::DemoArgs),
    /// Projects on the server.
    Project {
        #[command(subcommand)]
        cmd: client_cmd::ProjectCmd,
        #[command(flatten)]
        server: client_cmd::ServerOpts,
    },
    /// Pipelines on the server, newest first, with status and duration.
    Pipelines {
        /// Only this project (name or id).
        #[arg(long)]
        project: Option<String>,
        /// Only this branch or tag.
        #[arg(long = "ref")]
        ref_name: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: client_cmd::ServerOpts,
    },
    /// The jobs of a pipeline, with their needs.
    Jobs {
        pipeline: i64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: client_cmd::ServerOpts,
    },
    /// A job's log; -f follows it live until the job ends.
    Logs {
        job: i64,
        #[arg(short = 'f', long)]
        follow: bool,
        #[command(flatten)]
        server: client_cmd::ServerOpts,
    },
    /// Run a project's pipeline on the server (CI_PIPELINE_SOURCE=api).
    Trigger {
        project: String,
        /// Branch or tag (default: the project's default branch).
        #[arg(long = "ref")]
        ref_name: Option<String>,
        /// A pipeline variable, KEY=VALUE (repeatable).
        #[arg(long = "variable", value_name = "KEY=VALUE")]
        variables: Vec<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: client_cmd::ServerOpts,
    },
    /// Play a manual job (with job variables).
    Play {
        job: i64,
        #[arg(long = "variable", value_name = "KEY=VALUE")]
        variables: Vec<String>,
        #[command(flatten)]
        server: client_cmd::ServerOpts,
    },
    /// Retry a finished job (or, with --pipeline, a pipeline's failed jobs).
    Retry {
        id: i64,
        #[arg(long)]
        pipeline: bool,
        #[command(flatten)]
        server: client_cmd::ServerOpts,
    },
    /// Cancel a job (or, with --pipeline, a whole pipeline); running jobs are stopped.
    Cancel {
        id: i64,
        #[arg(long)]
        pipeline: bool,
        #[command(flatten)]
        server: client_cmd::ServerOpts,
    },
    /// The post-receive hook that tells the server about pushes.
    Hook {
        #[command(subcommand)]
        cmd: client_cmd::HookCmd,
        #[command(flatten)]
        server: client_cmd::ServerOpts,
    },
    /// Environments on the server: what runs where (version, commit, since when, deployed
    /// and approved by whom) and their router addresses.
    Environments {
        /// Only this project.
        #[arg(long)]
        project: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: client_cmd::ServerOpts,
    },
    /// An environment's deployment history, newest first.
    Deployments {
        environment: String,
        /// The project (needed when several have an environment of this name).
        #[arg(long)]
        project: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: client_cmd::ServerOpts,
    },
    /// Approve a deployment waiting for approval (the environment's approvers).
    Approve {
        deployment: i64,
        #[arg(long)]
        comment: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: client_cmd::ServerOpts,
    },
    /// Reject a deployment waiting for approval: it is canceled.
    Reject {
        deployment: i64,
        #[arg(long)]
        comment: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: client_cmd::ServerOpts,
    },
    /// Roll an environment back to the previous successful deployment (or --to one),
    /// with that deployment's own variables; returns once all traffic is on it.
    Rollback {
        environment: String,
        #[arg(long)]
        to: Option<i64>,
        #[arg(long)]
        project: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: client_cmd::ServerOpts,
    },
    /// Sign in and save a personal API token for the other commands.
    Login {
        #[arg(long, default_value = "admin")]
        username: String,
        /// Read the password from standard input (else SLIPWAY_PASSWORD).
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        server: client_cmd::ServerOpts,
    },
    /// The server's audit log, read from its store on this machine.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check the hash chain and signatures: exit 1 with every edited, inserted or
    /// deleted entry.
    Verify {
        #[command(flatten)]
        store: audit_cmd::AuditStoreArgs,
        #[arg(long)]
        json: bool,
    },
    /// The newest entries (oldest first).
    List {
        #[command(flatten)]
        store: audit_cmd::AuditStoreArgs,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
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
        Command::Demo(a) => demo_cmd::run(&a),
        Command::Project { cmd, server } => client_cmd::run(client_cmd::project(server, cmd)),
        Command::Pipelines {
            project,
            ref_name,
            json,
            server,
        } => client_cmd::run(client_cmd::pipelines(server, project, ref_name, json)),
        Command::Jobs {
            pipeline,
            json,
            server,
        } => client_cmd::run(client_cmd::jobs(server, pipeline, json)),
        Command::Logs {
            job,
            follow,
            server,
        } => client_cmd::run(client_cmd::logs(server, job, follow)),
        Command::Trigger {
            project,
            ref_name,
            variables,
            json,
            server,
        } => client_cmd::run(client_cmd::trigger(
            server, project, ref_name, variables, json,
        )),
        Command::Play {
            job,
            variables,
            server,
        } => client_cmd::run(client_cmd::action(server, "play", job, false, variables)),
        Command::Retry {
            id,
            pipeline,
            server,
        } => client_cmd::run(client_cmd::action(
            server,
            "retry",
            id,
            pipeline,
            Vec::new(),
        )),
        Command::Cancel {
            id,
            pipeline,
            server,
        } => client_cmd::run(client_cmd::action(
            server,
            "cancel",
            id,
            pipeline,
            Vec::new(),
        )),
        Command::Hook { cmd, server } => client_cmd::run(client_cmd::hook(server, cmd)),
        Command::Environments {
            project,
            json,
            server,
        } => client_cmd::run(deploy_cmd::environments(server, project, json)),
        Command::Deployments {
            environment,
            project,
            limit,
            json,
            server,
        } => client_cmd::run(deploy_cmd::deployments(
            server,
            environment,
            project,
            limit,
            json,
        )),
        Command::Approve {
            deployment,
            comment,
            json,
            server,
        } => client_cmd::run(deploy_cmd::decide(
            server, "approve", deployment, comment, json,
        )),
        Command::Reject {
            deployment,
            comment,
            json,
            server,
        } => client_cmd::run(deploy_cmd::decide(
            server, "reject", deployment, comment, json,
        )),
        Command::Rollback {
            environment,
            to,
            project,
            json,
            server,
        } => client_cmd::run(deploy_cmd::rollback(server, environment, project, to, json)),
        Command::Login {
            username,
            password_stdin,
            server,
        } => client_cmd::run(client_cmd::login(server, username, password_stdin)),
        Command::Audit { cmd } => match cmd {
            AuditCmd::Verify { store, json } => client_cmd::run(audit_cmd::verify(store, json)),
            AuditCmd::List { store, limit, json } => {
                client_cmd::run(audit_cmd::list(store, limit, json))
            }
        },
    }
}
