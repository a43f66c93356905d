//! `slipway run`: plan the pipeline of the repository in the working directory and run it
//! on this machine with the shell executor, printing each job's lines prefixed by its name
//! and a summary at the end. Exit status 0 exactly when the pipeline succeeds.

use crate::pipeline_cmds::{fail, load, locate, report_errors, trigger, ContextArgs, FileArgs};
use clap::Args;
use slipway_core::plan::{self, NoPipeline};
use slipway_core::schedule::{JobStatus, PipelineStatus};
use slipway_runner::pipeline::{self as runner, Event, RunContext};
use slipway_runner::shell::ShellExecutor;
use slipway_runner::workspace::Source;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Args, Clone)]
pub struct RunArgs {
    /// Run only these jobs (by name as `slipway list` shows them).
    pub jobs: Vec<String>,
    #[command(flatten)]
    pub file: FileArgs,
    #[command(flatten)]
    pub context: ContextArgs,
    /// How many jobs run at once (default: the number of cores).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// A masked variable for this run, KEY=VALUE (repeatable): never shown in output.
    #[arg(long = "secret", value_name = "KEY=VALUE")]
    pub secrets: Vec<String>,
    /// Where Slipway keeps workspaces and logs (default: $XDG_DATA_HOME/slipway).
    #[arg(long, env = "SLIPWAY_DATA")]
    pub data: Option<PathBuf>,
}

fn data_dir(arg: &Option<PathBuf>) -> PathBuf {
    if let Some(d) = arg {
        return d.clone();
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(x).join("slipway");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/slipway")
}

pub fn run(args: &RunArgs) -> ExitCode {
    let (repo, path) = match locate(&args.file) {
        Ok(x) => x,
        Err(e) => return fail(&e),
    };
    let trig = match trigger(&repo, &args.context) {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    let loaded = load(&repo, &path, Some(&trig));
    let pipeline = match &loaded.pipeline {
        Ok(p) => p.clone(),
        Err(d) => return report_errors(&loaded, d),
    };
    let mut plan = match plan::plan(&pipeline, &trig) {
        Err(d) => return report_errors(&loaded, &d),
        Ok(Err(NoPipeline::FilteredByWorkflow)) => {
            eprintln!(
                "no pipeline for {}: filtered out by workflow:rules",
                trig.ref_name
            );
            return ExitCode::SUCCESS;
        }
        Ok(Ok(p)) => p,
    };
    if !args.jobs.is_empty() {
        for name in &args.jobs {
            if !plan.jobs.iter().any(|j| &j.name == name || &j.job == name) {
                return fail(&format!(
                    "no job `{name}` in the pipeline for {}",
                    trig.ref_name
                ));
            }
        }
        plan.jobs
            .retain(|j| args.jobs.iter().any(|n| n == &j.name || n == &j.job));
        let kept: Vec<String> = plan.jobs.iter().map(|j| j.name.clone()).collect();
        for j in plan.jobs.iter_mut() {
            if let Some(needs) = j.needs.as_mut() {
                needs.retain(|n| kept.contains(&n.job));
            }
            j.dependencies.retain(|d| kept.contains(d));
        }
    }
    let mut secrets = Vec::new();
    for kv in &args.secrets {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => secrets.push((k.to_string(), v.to_string())),
            _ => {
                return fail(&format!(
                    "--secret {}: expected KEY=VALUE",
                    kv.split('=').next().unwrap_or("")
                ))
            }
        }
    }
    let project = format!(
        "{}-{:08x}",
        repo.root
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default(),
        fnv(&repo.root.to_string_lossy())
    );
    let base = data_dir(&args.data).join("projects").join(project);
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let git = repo.head_sha().and_then(|sha| {
        let git_dir = repo.git(&["rev-parse", "--absolute-git-dir"])?;
        let packed = repo
            .git(&[
                "for-each-ref",
                "--format=%(objectname) %(refname)",
                "refs/heads",
                "refs/tags",
            ])
            .unwrap_or_default();
        Some(runner::GitInfo {
            git_dir: PathBuf::from(git_dir),
            commit: sha,
            packed_refs: format!("{packed}\n"),
        })
    });
    let width = plan
        .jobs
        .iter()
        .map(|j| j.name.chars().count())
        .max()
        .unwrap_or(4);
    let ctx = RunContext {
        pipeline: Arc::new(pipeline),
        plan,
        source: Source {
            root: repo.root.clone(),
            files: repo.files().to_vec(),
        },
        git,
        predefined: trig.predefined.clone(),
        variables: trig.variables.clone(),
        secrets,
        builds_dir: base.join("builds"),
        logs_dir: base.join("pipelines").join(run_id.to_string()),
        scratch_dir: base.join("tmp"),
        concurrency: args.concurrency.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        }),
    };
    let executor = Arc::new(ShellExecutor::new(&ctx.scratch_dir));
    let observer: runner::Observer = Arc::new(move |ev: Event<'_>| match ev {
        Event::JobStarted { name, attempt, .. } => {
            if attempt > 1 {
                println!("{name:width$} | (retry {attempt})");
            }
        }
        Event::JobLine { name, line, .. } => println!("{name:width$} | {line}"),
        Event::JobFinished { result, .. } => {
            println!(
                "{:width$} | {} in {:.1}s",
                result.name,
                result.status.as_str(),
                result.duration_ms as f64 / 1000.0
            )
        }
    });
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    let result = rt.block_on(async move {
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                c2.cancel();
            }
        });
        runner::run(ctx, executor, observer, cancel).await
    });
    println!();
    println!(
        "{:width$}  {:10}  {:10}  DURATION",
        "JOB", "STAGE", "STATUS"
    );
    for j in &result.jobs {
        let status = if j.status == JobStatus::Failed && j.allow_failure {
            "failed (allowed)".to_string()
        } else {
            j.status.as_str().to_string()
        };
        println!(
            "{:width$}  {:10}  {:10}  {:.1}s",
            j.name,
            j.stage,
            status,
            j.duration_ms as f64 / 1000.0
        );
    }
    println!(
        "pipeline {} in {:.1}s",
        result.status.as_str(),
        result.duration_ms as f64 / 1000.0
    );
    match result.status {
        PipelineStatus::Success => ExitCode::SUCCESS,
        PipelineStatus::Canceled => ExitCode::from(130),
        _ => ExitCode::from(1),
    }
}

/// A stable short hash of the repository path, to tell projects with the same name apart.
fn fnv(s: &str) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x01000193);
    }
    h
}
