//! `slipway lint`, `preview` and `list`: read the pipeline file of the repository in the
//! working directory, report errors as `path:line:col: error: message`, print the
//! expanded configuration or the planned jobs.

use crate::repo::Repo;
use clap::Args;
use serde::Serialize;
use slipway_core::model::Pipeline;
use slipway_core::plan::{self, NoPipeline, Trigger};
use slipway_core::source::SourceLoader;
use slipway_core::{variables, yaml, Loaded};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Clone)]
pub struct FileArgs {
    /// The pipeline file (default: .gitlab-ci.yml at the repository root).
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
}

#[derive(Args, Clone)]
pub struct ContextArgs {
    /// The branch or tag to plan for (default: the checked-out branch).
    #[arg(long = "ref")]
    pub ref_name: Option<String>,
    /// The ref is a tag.
    #[arg(long)]
    pub tag: bool,
    /// CI_PIPELINE_SOURCE: push, web, schedule, merge_request_event, api, trigger...
    #[arg(long, default_value = "push")]
    pub source: String,
    /// A variable for this pipeline, KEY=VALUE (repeatable).
    #[arg(long = "variable", short = 'v', value_name = "KEY=VALUE")]
    pub variables: Vec<String>,
    /// A file changed by the push, for `changes:` rules (repeatable). Without any,
    /// `changes:` conditions are true, as on GitLab when no diff is known.
    #[arg(long = "changed", value_name = "PATH")]
    pub changed: Vec<String>,
}

#[derive(Args, Clone)]
pub struct ListArgs {
    #[command(flatten)]
    pub file: FileArgs,
    #[command(flatten)]
    pub context: ContextArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The repository and the pipeline file path relative to its root.
pub fn locate(args: &FileArgs) -> Result<(Repo, String), String> {
    let cwd =
        std::env::current_dir().map_err(|e| format!("cannot read the current directory: {e}"))?;
    let repo = Repo::discover(&cwd);
    let path = match &args.file {
        None => ".gitlab-ci.yml".to_string(),
        Some(f) => repo.relative(f).ok_or_else(|| {
            format!(
                "{}: the pipeline file must be inside the repository ({})",
                f.display(),
                repo.root.display()
            )
        })?,
    };
    if !repo.root.join(&path).is_file() {
        return Err(format!(
            "{path}: no such pipeline file in {}",
            repo.root.display()
        ));
    }
    Ok((repo, path))
}

/// Predefined variables and the trigger for a planning context.
pub fn trigger(repo: &Repo, ctx: &ContextArgs) -> Result<Trigger, String> {
    let at = Revision {
        rev: "HEAD".into(),
        files: repo.files().to_vec(),
        pipeline_id: 0,
    };
    trigger_at(repo, ctx, &at).map(|(t, _)| t)
}

/// What a pipeline is planned for: a commit (`HEAD`, or `--commit`), the files it has,
/// and the pipeline's number.
pub struct Revision {
    pub rev: String,
    pub files: Vec<String>,
    pub pipeline_id: u64,
}

/// The trigger and the pipeline context (for job-level predefined variables) of a
/// planning context at a revision.
pub fn trigger_at(
    repo: &Repo,
    ctx: &ContextArgs,
    at: &Revision,
) -> Result<(Trigger, variables::PipelineContext), String> {
    let (ref_name, tag) =
        match &ctx.ref_name {
            Some(r) => (r.clone(), ctx.tag),
            None => match repo.current_branch() {
                Some(b) => (b, false),
                None => match repo.current_tag() {
                    Some(t) => (t, true),
                    None if !repo.is_git => ("main".to_string(), false),
                    None => return Err(
                        "HEAD is detached and not on a tag: give the ref to plan for with --ref"
                            .into(),
                    ),
                },
            },
        };
    let mut variables = Vec::new();
    for kv in &ctx.variables {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => variables.push((k.to_string(), v.to_string())),
            _ => return Err(format!("--variable {kv}: expected KEY=VALUE")),
        }
    }
    let default_branch = repo.default_branch();
    let commit = repo.commit_info(&at.rev).unwrap_or_default();
    let sha = if commit.sha.is_empty() {
        "0000000000000000000000000000000000000000".to_string()
    } else {
        commit.sha.clone()
    };
    let project_name = repo
        .root
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "project".into());
    let ctx_vars = variables::PipelineContext {
        server_url: "http://localhost".into(),
        project_path: format!("local/{project_name}"),
        project_name: project_name.clone(),
        default_branch,
        commit_sha: sha.clone(),
        commit_message: commit.message.trim_end_matches('\n').to_string(),
        commit_author: commit.author,
        commit_timestamp: commit.timestamp,
        ref_name: ref_name.clone(),
        tag,
        source: ctx.source.clone(),
        pipeline_id: at.pipeline_id,
        pipeline_iid: at.pipeline_id,
        ..variables::PipelineContext::default()
    };
    let changed = if ctx.changed.is_empty() {
        None
    } else {
        Some(ctx.changed.clone())
    };
    Ok((
        Trigger::from_context(&ctx_vars, at.files.clone(), changed, variables),
        ctx_vars,
    ))
}

/// Load for the checked-out branch and a push (what `lint` and `preview` check): include
/// rules see that context, as GitLab's lint sees the default branch.
fn load_checked_out(repo: &Repo, path: &str) -> Loaded {
    let ctx = ContextArgs {
        ref_name: None,
        tag: false,
        source: "push".into(),
        variables: Vec::new(),
        changed: Vec::new(),
    };
    let trig = trigger(repo, &ctx).ok();
    load(repo, path, trig.as_ref())
}

pub fn load(repo: &dyn SourceLoader, path: &str, trigger: Option<&Trigger>) -> Loaded {
    slipway_core::load_for_trigger(repo, path, trigger)
}

/// The environments the file's `.slipway` key defines (errors rendered, exit 1).
pub fn deploy_settings(loaded: &Loaded) -> Result<slipway_core::deploy::DeploySettings, ExitCode> {
    match loaded
        .tree
        .as_ref()
        .map(slipway_core::deploy::parse_settings)
    {
        Some(Ok(s)) => Ok(s),
        Some(Err(d)) => Err(report_errors(loaded, &d)),
        None => Ok(Default::default()),
    }
}

/// Applies `.slipway`'s `deploy_on` mapping to a plan, as the server does.
pub fn map_deployments(
    loaded: &Loaded,
    pipeline: &Pipeline,
    plan: &mut slipway_core::plan::Plan,
    trig: &Trigger,
) -> Result<(), ExitCode> {
    let settings = deploy_settings(loaded)?;
    slipway_core::deploy::mapping::map_plan(&settings, pipeline, plan, trig);
    Ok(())
}

pub fn report_errors(loaded: &Loaded, diags: &slipway_core::diag::Diagnostics) -> ExitCode {
    eprintln!("{}", diags.render(&loaded.sources));
    let n = diags.len();
    eprintln!("{n} error{}", if n == 1 { "" } else { "s" });
    ExitCode::from(1)
}

pub fn fail(msg: &str) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(1)
}

pub fn lint(args: &FileArgs) -> ExitCode {
    let (repo, path) = match locate(args) {
        Ok(x) => x,
        Err(e) => return fail(&e),
    };
    let loaded = load_checked_out(&repo, &path);
    match &loaded.pipeline {
        Ok(p) => {
            if let Err(code) = deploy_settings(&loaded) {
                return code;
            }
            println!(
                "{path}: valid: {}",
                summary(p, loaded.sources.files().count())
            );
            ExitCode::SUCCESS
        }
        Err(d) => report_errors(&loaded, d),
    }
}

fn summary(p: &Pipeline, files: usize) -> String {
    let stages = p
        .stages
        .iter()
        .filter(|s| *s != ".pre" && *s != ".post")
        .count();
    format!(
        "{} job{}, {} stage{}, {} file{}",
        p.jobs.len(),
        if p.jobs.len() == 1 { "" } else { "s" },
        stages,
        if stages == 1 { "" } else { "s" },
        files,
        if files == 1 { "" } else { "s" }
    )
}

pub fn preview(args: &FileArgs) -> ExitCode {
    let (repo, path) = match locate(args) {
        Ok(x) => x,
        Err(e) => return fail(&e),
    };
    let loaded = load_checked_out(&repo, &path);
    match (&loaded.pipeline, &loaded.tree) {
        (Ok(_), Some(tree)) => {
            print!("{}", yaml::emit(tree));
            ExitCode::SUCCESS
        }
        (Err(d), _) => report_errors(&loaded, d),
        (Ok(_), None) => fail("nothing to preview"),
    }
}

#[derive(Serialize)]
struct ListedJob<'a> {
    name: &'a str,
    stage: &'a str,
    when: &'a str,
    allow_failure: bool,
    needs: Option<Vec<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    start_in: Option<&'a str>,
    dependencies: &'a [String],
}

pub fn list(args: &ListArgs) -> ExitCode {
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
        Ok(p) => p,
        Err(d) => return report_errors(&loaded, d),
    };
    let mut plan = match plan::plan(pipeline, &trig) {
        Err(d) => return report_errors(&loaded, &d),
        Ok(Err(NoPipeline::FilteredByWorkflow)) => {
            if args.json {
                println!("[]");
            }
            eprintln!(
                "no pipeline for {}: filtered out by workflow:rules",
                trig.ref_name
            );
            return ExitCode::SUCCESS;
        }
        Ok(Ok(p)) => p,
    };
    if let Err(code) = map_deployments(&loaded, pipeline, &mut plan, &trig) {
        return code;
    }
    let rows: Vec<ListedJob> = plan
        .jobs
        .iter()
        .map(|j| ListedJob {
            name: &j.name,
            stage: &j.stage,
            when: j.when.as_str(),
            allow_failure: j.allow_failure,
            needs: j
                .needs
                .as_ref()
                .map(|n| n.iter().map(|x| x.job.as_str()).collect()),
            start_in: j.start_in.as_deref(),
            dependencies: &j.dependencies,
        })
        .collect();
    if args.json {
        match serde_json::to_string_pretty(&rows) {
            Ok(s) => println!("{s}"),
            Err(e) => return fail(&e.to_string()),
        }
        return ExitCode::SUCCESS;
    }
    if rows.is_empty() {
        println!("no jobs for {} ({})", trig.ref_name, trig.source);
        return ExitCode::SUCCESS;
    }
    let w_name = rows
        .iter()
        .map(|r| r.name.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    let w_stage = rows
        .iter()
        .map(|r| r.stage.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    println!(
        "{:w_name$}  {:w_stage$}  {:10}  {:13}  NEEDS",
        "JOB", "STAGE", "WHEN", "ALLOW_FAILURE"
    );
    for r in &rows {
        let needs = match &r.needs {
            None => "-".to_string(),
            Some(n) if n.is_empty() => "[]".to_string(),
            Some(n) => n.join(", "),
        };
        println!(
            "{:w_name$}  {:w_stage$}  {:10}  {:13}  {needs}",
            r.name, r.stage, r.when, r.allow_failure
        );
    }
    ExitCode::SUCCESS
}
