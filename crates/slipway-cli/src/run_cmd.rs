//! `slipway run`: plan the pipeline of the repository in the working directory (or of a
//! commit, `--commit`) and run it on this machine, jobs with `image:` in containers when
//! an engine is reachable and the others in a shell, printing each job's lines prefixed by
//! its name and a summary at the end. Exit status 0 exactly when the pipeline succeeds,
//! 130 when it was canceled (Ctrl-C), 1 otherwise.

use crate::console::Console;
use crate::pipeline_cmds::{
    fail, load, locate, report_errors, trigger_at, ContextArgs, FileArgs, Revision,
};
use crate::repo::Snapshot;
use clap::{Args, ValueEnum};
use slipway_core::plan::{self, NoPipeline};
use slipway_core::schedule::{self, PipelineStatus};
use slipway_core::source::SourceLoader;
use slipway_runner::container::ContainerExecutor;
use slipway_runner::pipeline::{self as runner, Event, ExecutorChoice, Executors, RunContext};
use slipway_runner::shell::ShellExecutor;
use slipway_runner::store::Store;
use slipway_runner::workspace::{GitInfo, Source, Workspace};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExecutorArg {
    /// Jobs with `image:` in containers, the others in a shell.
    Auto,
    /// Every job in a shell on this machine; `image:` and `services:` are ignored.
    Shell,
    /// Every job in a container through the Docker Engine API (`DOCKER_HOST`).
    Docker,
}

#[derive(Args, Clone)]
pub struct RunArgs {
    /// Run only these jobs (by name as `slipway list` shows them, or a job's key for all
    /// its parallel instances). A named manual job is played.
    pub jobs: Vec<String>,
    #[command(flatten)]
    pub file: FileArgs,
    #[command(flatten)]
    pub context: ContextArgs,
    /// With JOB...: also run what those jobs need, transitively.
    #[arg(long)]
    pub needs: bool,
    /// Play this manual job when it becomes playable (repeatable).
    #[arg(long = "manual", value_name = "JOB")]
    pub manual: Vec<String>,
    /// Run a clean checkout of this commit instead of the working tree.
    #[arg(long, value_name = "REV")]
    pub commit: Option<String>,
    /// Where jobs run: auto (jobs with image: in containers), shell or docker.
    #[arg(long, value_enum, default_value = "auto")]
    pub executor: ExecutorArg,
    /// How many jobs run at once (default: the number of cores).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// A masked variable for this run, KEY=VALUE (repeatable): never shown in output.
    #[arg(long = "secret", value_name = "KEY=VALUE")]
    pub secrets: Vec<String>,
    /// Write a JSON report of the run (pipeline status, each job's status and log).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Where Slipway keeps workspaces, logs, artifacts and caches
    /// (default: $XDG_DATA_HOME/slipway).
    #[arg(long, env = "SLIPWAY_DATA")]
    pub data: Option<PathBuf>,
}

pub(crate) fn data_dir(arg: &Option<PathBuf>) -> PathBuf {
    if let Some(d) = arg {
        return d.clone();
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("slipway");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/slipway")
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

fn parse_pairs(flag: &str, values: &[String]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for kv in values {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => out.push((k.to_string(), v.to_string())),
            // The value is not echoed: it may be a secret.
            _ => {
                return Err(format!(
                    "{flag} {}: expected KEY=VALUE",
                    kv.split('=').next().unwrap_or("")
                ))
            }
        }
    }
    Ok(out)
}

/// A new pipeline number for the project: the first free `pipelines/<n>` directory,
/// claimed by creating it (so concurrent runs never share one).
fn claim_pipeline(project: &Path) -> Result<(u64, PathBuf), String> {
    let dir = project.join("pipelines");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut next = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()))
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
        + 1;
    loop {
        let p = dir.join(next.to_string());
        match std::fs::create_dir(&p) {
            Ok(()) => return Ok((next, p)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => next += 1,
            Err(e) => return Err(format!("cannot create {}: {e}", p.display())),
        }
    }
}

/// Pipelines whose logs are kept; older ones are deleted when a run starts.
const KEEP_PIPELINES: u64 = 50;

/// Delete the log directories of all but the newest [`KEEP_PIPELINES`] pipelines.
fn prune_pipelines(project: &Path, newest: u64) {
    let dir = project.join("pipelines");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in rd.flatten() {
        let old = e
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n + KEEP_PIPELINES <= newest);
        if old {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Whether artifacts are due to be expired: at most once per `SLIPWAY_EXPIRE_INTERVAL`
/// seconds (an hour by default; 0 for every run), as GitLab expires them periodically.
/// Claims the turn by touching a stamp file.
fn expiry_due(store_dir: &Path) -> bool {
    let interval = std::env::var("SLIPWAY_EXPIRE_INTERVAL")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(3600);
    let stamp = store_dir.join(".expired-at");
    let due = std::fs::metadata(&stamp)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_none_or(|age| age.as_secs() >= interval);
    if due {
        let _ = std::fs::create_dir_all(store_dir);
        let _ = std::fs::write(&stamp, b"");
    }
    due
}

/// `n` workspace slots nobody else uses: each is held by an exclusive lock on
/// `builds/<slot>.lock` for as long as the returned files stay open.
fn claim_slots(builds: &Path, n: usize) -> Result<(Vec<usize>, Vec<File>), String> {
    std::fs::create_dir_all(builds)
        .map_err(|e| format!("cannot create {}: {e}", builds.display()))?;
    let mut slots = Vec::new();
    let mut locks = Vec::new();
    let mut slot = 0;
    while slots.len() < n {
        let path = builds.join(format!("{slot}.lock"));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if locked {
            slots.push(slot);
            locks.push(file);
        }
        slot += 1;
    }
    Ok((slots, locks))
}

pub fn run(args: &RunArgs) -> ExitCode {
    // A closed stdout (`slipway run | head`) must not kill Slipway mid-pipeline, leaving
    // jobs and containers behind: writes then fail quietly and the pipeline finishes.
    // (Jobs still get the default SIGPIPE: std resets it in every child.)
    // SAFETY: changing a signal disposition; no handler code runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    match run_inner(args) {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

fn run_inner(args: &RunArgs) -> Result<ExitCode, String> {
    let (repo, path) = locate(&args.file)?;
    let secrets = parse_pairs("--secret", &args.secrets)?;
    let project_name = repo
        .root
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "project".into());
    let project_key = format!("{project_name}-{:08x}", fnv(&repo.root.to_string_lossy()));
    let project_dir = data_dir(&args.data).join("projects").join(&project_key);

    // What the jobs run on: the working tree, or a checkout of the commit.
    let (loader, source, commit): (Box<dyn SourceLoader>, Source, Option<String>) = match &args
        .commit
    {
        Some(rev) => {
            let sha = repo.resolve_commit(rev)?;
            let snap: Snapshot = repo.checkout(&sha, &project_dir.join("checkouts").join(&sha))?;
            if !snap.files.iter().any(|f| f == &path) {
                return Err(format!("{path}: no such pipeline file in commit {sha}"));
            }
            let source = Source::scan(snap.root.clone(), snap.files.clone());
            (Box::new(snap), source, Some(sha))
        }
        None => {
            // One read of every file's metadata: it drops files deleted in the working
            // tree and serves each workspace's first comparison.
            let source = Source::scan(repo.root.clone(), repo.listed().to_vec());
            let head = repo.head_sha();
            (
                Box::new(Snapshot {
                    root: repo.root.clone(),
                    files: source.files().to_vec(),
                }),
                source,
                head,
            )
        }
    };
    let (pipeline_id, logs_dir) = claim_pipeline(&project_dir)?;
    prune_pipelines(&project_dir, pipeline_id);
    let at = Revision {
        rev: commit.clone().unwrap_or_else(|| "HEAD".into()),
        files: source.files().to_vec(),
        pipeline_id,
    };
    let (trig, pipeline_context) = trigger_at(&repo, &args.context, &at)?;
    let loaded = load(loader.as_ref(), &path, Some(&trig));
    let pipeline = match &loaded.pipeline {
        Ok(p) => p.clone(),
        Err(d) => return Ok(report_errors(&loaded, d)),
    };
    let mut plan = match plan::plan(&pipeline, &trig) {
        Err(d) => return Ok(report_errors(&loaded, &d)),
        Ok(Err(NoPipeline::FilteredByWorkflow)) => {
            eprintln!(
                "no pipeline for {}: filtered out by workflow:rules",
                trig.ref_name
            );
            return Ok(ExitCode::SUCCESS);
        }
        Ok(Ok(p)) => p,
    };
    if let Err(code) = crate::pipeline_cmds::map_deployments(&loaded, &pipeline, &mut plan, &trig) {
        return Ok(code);
    }
    if !args.jobs.is_empty() {
        plan = schedule::select(&plan, &args.jobs, args.needs)
            .map_err(|e| format!("{e} (for {}; see `slipway list`)", trig.ref_name))?;
    } else if args.needs {
        return Err("--needs adds what the named jobs need: name at least one JOB".into());
    }
    for m in &args.manual {
        let Some(j) = plan.jobs.iter().find(|j| &j.name == m || &j.job == m) else {
            return Err(format!(
                "--manual {m}: no such job in this run (see `slipway list`)"
            ));
        };
        if j.when != slipway_core::model::When::Manual {
            eprintln!("warning: --manual {m}: the job is not manual; it runs anyway");
        }
    }
    if plan.jobs.is_empty() {
        // GitLab creates no pipeline without jobs.
        eprintln!("no jobs to run for {} ({})", trig.ref_name, trig.source);
        return Ok(ExitCode::SUCCESS);
    }
    let mut play = args.manual.clone();
    play.extend(args.jobs.iter().cloned());

    let git = commit.as_ref().and_then(|sha| {
        Some(GitInfo {
            git_dir: repo.objects_git_dir()?,
            commit: sha.clone(),
            packed_refs: repo.branches_and_tags(),
        })
    });
    let concurrency = args
        .concurrency
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        })
        .max(1);
    let builds_dir = project_dir.join("builds");
    let (slots, _locks) = claim_slots(&builds_dir, concurrency.min(plan.jobs.len().max(1)))?;
    let workspaces: Vec<(usize, Workspace)> = slots
        .iter()
        .map(|s| {
            (
                *s,
                Workspace::new(builds_dir.join(s.to_string()).join(&project_name)),
            )
        })
        .collect();
    // Artifacts and caches of a local run can be made again: no flush to disk per
    // manifest (a killed run still leaves every manifest whole).
    let store = Store::open(project_dir.join("store"))
        .map_err(|e| format!("cannot open the artifact store: {e}"))?
        .with_durability(false);
    let scratch = project_dir.join("tmp");
    let executors = Executors {
        shell: Arc::new(ShellExecutor::new(&scratch)),
        container: Arc::new(
            ContainerExecutor::from_env()
                .with_scripts_dir(&scratch)
                .with_labels([("slipway.pipeline", format!("{project_key}-{pipeline_id}"))]),
        ),
        choice: match args.executor {
            ExecutorArg::Auto => ExecutorChoice::Auto,
            ExecutorArg::Shell => ExecutorChoice::Shell,
            ExecutorArg::Docker => ExecutorChoice::Docker,
        },
    };
    let names: Vec<&str> = plan.jobs.iter().map(|j| j.name.as_str()).collect();
    let console = Arc::new(Console::new(&names));
    let ctx = RunContext {
        pipeline: Arc::new(pipeline),
        plan,
        source,
        git,
        pipeline_context,
        predefined: trig.predefined.clone(),
        variables: trig.variables.clone(),
        secrets,
        builds_dir,
        workspaces,
        logs_dir: logs_dir.clone(),
        store: Arc::new(store),
        run_id: format!("p{pipeline_id}"),
        latest_artifacts: Some(project_dir.join("latest-artifacts.json")),
        expire_artifacts: expiry_due(&project_dir.join("store")),
        concurrency,
        play,
    };
    let c2 = console.clone();
    let observer: runner::Observer = Arc::new(move |ev: Event<'_>| c2.event(ev));
    let rt =
        tokio::runtime::Runtime::new().map_err(|e| format!("cannot start the runtime: {e}"))?;
    let cancel = CancellationToken::new();
    let c3 = cancel.clone();
    let c4 = console.clone();
    let result = rt.block_on(async move {
        tokio::spawn(async move {
            let mut presses = 0;
            while tokio::signal::ctrl_c().await.is_ok() {
                presses += 1;
                if presses == 1 {
                    c4.note("Canceling: stopping the running jobs; nothing new starts.");
                    c3.cancel();
                } else {
                    c4.note("Still stopping the running jobs (after_script, container cleanup)...");
                }
            }
        });
        // The loop runs on the runtime's workers, next to the jobs: a finished job's
        // message and the next job's start stay on one thread instead of waking another.
        tokio::spawn(runner::run(ctx, executors, observer, cancel))
            .await
            .map_err(|e| format!("the run stopped unexpectedly: {e}"))
    })?;
    console.summary(&result, &logs_dir);
    if let Some(report) = &args.report {
        slipway_runner::report::write(report, &result).map_err(|e| e.to_string())?;
    }
    Ok(match result.status {
        PipelineStatus::Success => ExitCode::SUCCESS,
        PipelineStatus::Canceled => ExitCode::from(130),
        _ => ExitCode::from(1),
    })
}
