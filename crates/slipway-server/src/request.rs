//! From "something happened" to a planned pipeline: a [`PipelineRequest`] (a push from
//! the hook, polling or a webhook; a merge request; a manual, API, schedule or trigger-token
//! run) is planned at its commit in the project's mirror by [`plan_at_commit`], exactly as
//! `slipway list` plans the working tree: the same predefined variables
//! (`slipway_core::variables`), the pipeline file and its `include:local` files read from
//! the commit, `rules:exists` over the commit's files, `rules:changes` over GitLab's diff
//! for the source (the push, or the merge request against its target branch; true for new
//! branches, tags and other sources, unless `compare_to` names a ref), then
//! `slipway_core::plan`, then the `deploy_on` mapping of the commit's `.slipway`
//! environments (`slipway_core::deploy::mapping`). Configuration errors come back
//! positioned (`file:line:col`) and rendered as the CLI prints them.

use crate::git::{CommitFiles, GitError, Mirror, RefKind, RefUpdate};
use crate::webhook::{MergeRequestEvent, PushEvent};
use slipway_core::deploy::DeploySettings;
use slipway_core::diag::Diagnostics;
use slipway_core::model::Pipeline;
use slipway_core::plan::{self, NoPipeline, Plan, Trigger};
use slipway_core::source::SourceMap;
use slipway_core::variables::{MergeRequestContext, PipelineContext, UserContext};
use std::fmt;

/// `CI_PIPELINE_SOURCE` values a server creates pipelines for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PipelineSource {
    /// A push of a branch or tag (hook, polling or webhook).
    Push,
    /// A merge request opened, reopened or updated with new commits.
    MergeRequestEvent,
    /// "Run pipeline" in the web UI.
    Web,
    /// The API (and `slipway trigger`).
    Api,
    /// A pipeline schedule.
    Schedule,
    /// A trigger token.
    Trigger,
}

impl PipelineSource {
    pub fn as_str(self) -> &'static str {
        match self {
            PipelineSource::Push => "push",
            PipelineSource::MergeRequestEvent => "merge_request_event",
            PipelineSource::Web => "web",
            PipelineSource::Api => "api",
            PipelineSource::Schedule => "schedule",
            PipelineSource::Trigger => "trigger",
        }
    }

    pub fn parse(s: &str) -> Option<PipelineSource> {
        Some(match s {
            "push" => PipelineSource::Push,
            "merge_request_event" => PipelineSource::MergeRequestEvent,
            "web" => PipelineSource::Web,
            "api" => PipelineSource::Api,
            "schedule" => PipelineSource::Schedule,
            "trigger" => PipelineSource::Trigger,
            _ => return None,
        })
    }
}

impl fmt::Display for PipelineSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the predefined variables need to know about the project.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProjectInfo {
    /// `CI_PROJECT_ID`.
    pub id: u64,
    /// `group/name` (`CI_PROJECT_PATH`); the last segment is `CI_PROJECT_NAME`.
    pub path: String,
    /// The human-readable name (`CI_PROJECT_TITLE`).
    pub title: Option<String>,
    pub description: Option<String>,
    /// The server's base URL (`CI_SERVER_URL`; project and job URLs derive from it).
    pub server_url: String,
    /// Slipway's version (`CI_SERVER_VERSION`).
    pub server_version: String,
    /// The project's default branch setting; `None` means the repository's (the mirror's
    /// HEAD), else `main`.
    pub default_branch: Option<String>,
    /// The pipeline file; `None` means `.gitlab-ci.yml`.
    pub config_path: Option<String>,
    /// `private`, `internal` or `public`.
    pub visibility: Option<String>,
}

/// A request to create a pipeline, before it is planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineRequest {
    pub source: PipelineSource,
    /// The branch or tag name (no `refs/heads/`); the source branch for a merge request.
    pub ref_name: String,
    pub tag: bool,
    /// The commit to run; `None` means the ref's current commit in the mirror.
    pub sha: Option<String>,
    /// The ref's previous commit for a push (`CI_COMMIT_BEFORE_SHA`, and the diff for
    /// `rules:changes`); `None` for a new branch.
    pub before_sha: Option<String>,
    /// Variables given for this run (manual, API, schedule, trigger, `ci.variable` push
    /// options): above the file's variables.
    pub variables: Vec<(String, String)>,
    pub merge_request: Option<MergeRequestContext>,
    /// `CI_PIPELINE_SCHEDULE_DESCRIPTION`.
    pub schedule_description: Option<String>,
    /// Who started it (`GITLAB_USER_*`).
    pub user: Option<UserContext>,
    /// `CI_COMMIT_REF_PROTECTED`: the integration knows the protected branches.
    pub ref_protected: bool,
    /// Ids the store assigns when the pipeline row is written; 0 until then.
    pub pipeline_id: u64,
    pub pipeline_iid: u64,
    /// `CI_PIPELINE_CREATED_AT`; `None` means now.
    pub created_at: Option<String>,
    /// `git push -o` options; `ci.skip` skips the pipeline.
    pub push_options: Vec<String>,
}

impl PipelineRequest {
    /// A request for `ref_name` at its current commit.
    pub fn new(source: PipelineSource, ref_name: impl Into<String>, tag: bool) -> PipelineRequest {
        PipelineRequest {
            source,
            ref_name: ref_name.into(),
            tag,
            sha: None,
            before_sha: None,
            variables: Vec::new(),
            merge_request: None,
            schedule_description: None,
            user: None,
            ref_protected: false,
            pipeline_id: 0,
            pipeline_iid: 0,
            created_at: None,
            push_options: Vec::new(),
        }
    }

    /// The push pipeline for a ref the hook or polling saw change; `None` for deletions
    /// and for refs that are neither branches nor tags. `push_options` are the push's
    /// `-o` values: `ci.variable="KEY=VALUE"` become variables, as on GitLab.
    pub fn for_ref_update(update: &RefUpdate, push_options: &[String]) -> Option<PipelineRequest> {
        let (kind, name) = update.split()?;
        let sha = update.new.clone()?;
        let mut r = PipelineRequest::new(PipelineSource::Push, name, kind == RefKind::Tag);
        r.sha = Some(sha);
        r.before_sha = update.old.clone();
        r.push_options = push_options.to_vec();
        for opt in push_options {
            let value = opt
                .strip_prefix("ci.variable=")
                .or_else(|| opt.strip_prefix("ci.var="));
            if let Some((k, v)) = value
                .map(|v| v.trim_matches('"'))
                .and_then(|v| v.split_once('='))
            {
                if !k.is_empty() {
                    r.variables.push((k.to_string(), v.to_string()));
                }
            }
        }
        Some(r)
    }

    /// The push pipeline for a push webhook; `None` for deletions.
    pub fn for_push_event(event: &PushEvent) -> Option<PipelineRequest> {
        let mut r = PipelineRequest::for_ref_update(&event.ref_update(), &[])?;
        r.user = event.pusher.as_ref().map(|a| a.to_context());
        Some(r)
    }

    /// The merge request pipeline for a merge request event; `None` when GitLab would not
    /// start one (closed, merged, edited without new commits...). The source commit must be
    /// in the mirror: fetch [`MergeRequestEvent::head_ref`] for forks.
    pub fn for_merge_request(event: &MergeRequestEvent) -> Option<PipelineRequest> {
        if !event.starts_pipeline() {
            return None;
        }
        let mut r = PipelineRequest::new(
            PipelineSource::MergeRequestEvent,
            event.source_branch.clone(),
            false,
        );
        r.sha = Some(event.source_sha.clone());
        r.merge_request = Some(event.to_context());
        r.user = event
            .sender
            .as_ref()
            .or(event.author.as_ref())
            .map(|a| a.to_context());
        Some(r)
    }
}

/// One configuration error with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PositionedError {
    pub path: String,
    /// 1-based; 0 when the error has no place in a file.
    pub line: u32,
    pub col: u32,
    pub message: String,
}

/// The pipeline configuration has errors: nothing is planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    pub errors: Vec<PositionedError>,
    /// As `slipway lint` prints them: `path:line:col: error: message` and the source line.
    pub rendered: String,
}

impl ConfigErrors {
    fn new(diags: &Diagnostics, sources: &SourceMap) -> ConfigErrors {
        let errors = diags
            .0
            .iter()
            .map(|d| PositionedError {
                path: if d.span.is_synthetic() {
                    sources
                        .files()
                        .next()
                        .map(|f| f.path.clone())
                        .unwrap_or_default()
                } else {
                    sources.path(d.span.file).to_string()
                },
                line: d.span.start.line,
                col: d.span.start.col,
                message: d.message.clone(),
            })
            .collect();
        ConfigErrors {
            errors,
            rendered: diags.render(sources),
        }
    }
}

/// Why no plan was made.
#[derive(Debug)]
pub enum PlanError {
    /// The mirror could not be read.
    Git(GitError),
    /// The ref names no commit in the mirror (deleted, or not fetched yet).
    UnknownRef(String),
    /// The commit has no pipeline file: no pipeline, as on GitLab.
    NoPipelineFile { path: String, sha: String },
    /// The configuration is invalid; a pipeline shown as failed with these errors.
    Config(ConfigErrors),
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::Git(e) => e.fmt(f),
            PlanError::UnknownRef(r) => write!(f, "{r}: no such branch or tag"),
            PlanError::NoPipelineFile { path, sha } => {
                write!(f, "{path}: no such file at commit {}", short(sha))
            }
            PlanError::Config(c) => f.write_str(&c.rendered),
        }
    }
}

impl std::error::Error for PlanError {}

impl From<GitError> for PlanError {
    fn from(e: GitError) -> PlanError {
        PlanError::Git(e)
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(8)]
}

/// What planning decided.
#[derive(Debug, Clone)]
pub enum PlanOutcome {
    Planned(Plan),
    /// `workflow:rules` create no pipeline for this request.
    FilteredByWorkflow,
    /// A push asked to be skipped (`[skip ci]` / `[ci skip]` in the commit message, or
    /// `git push -o ci.skip`): GitLab records a skipped pipeline.
    Skipped(String),
}

/// A pipeline planned at a commit, with everything the run will need.
#[derive(Debug, Clone)]
pub struct PlannedPipeline {
    /// The commit planned.
    pub sha: String,
    pub config_path: String,
    /// Predefined-variable inputs; the runner adds job variables from it.
    pub context: PipelineContext,
    /// The trigger the plan was made from (predefined variables, files, changes).
    pub trigger: Trigger,
    pub pipeline: Pipeline,
    /// The environments the commit defines (`.slipway`).
    pub deploy: DeploySettings,
    /// The files the configuration came from (for showing it and its errors).
    pub sources: SourceMap,
    pub outcome: PlanOutcome,
}

/// Plans `request` at its commit in `mirror`. Blocking (runs git): call it from
/// `spawn_blocking` in async code.
pub fn plan_at_commit(
    mirror: &Mirror,
    project: &ProjectInfo,
    request: &PipelineRequest,
) -> Result<PlannedPipeline, PlanError> {
    // Every question about the commit's objects goes through one `git cat-file --batch`
    // process; the diff for `rules:changes` runs beside it.
    let mut reader = mirror.objects()?;
    let rev = match &request.sha {
        Some(s) => s.clone(),
        None if request.tag => format!("refs/tags/{}", request.ref_name),
        None => format!("refs/heads/{}", request.ref_name),
    };
    let sha = reader.resolve_commit(mirror, &rev)?.ok_or_else(|| {
        PlanError::UnknownRef(
            request
                .sha
                .clone()
                .unwrap_or_else(|| request.ref_name.clone()),
        )
    })?;
    let loader = mirror.at_commit_with(&sha, reader);
    std::thread::scope(|scope| {
        let changed = scope.spawn(|| changed_files(mirror, request, &sha));
        plan_with(mirror, project, request, &sha, &loader, || {
            changed.join().ok().flatten()
        })
    })
}

/// [`plan_at_commit`] once the commit is known; `changed` waits for the diff.
fn plan_with(
    mirror: &Mirror,
    project: &ProjectInfo,
    request: &PipelineRequest,
    sha: &str,
    loader: &CommitFiles<'_>,
    changed: impl FnOnce() -> Option<Vec<String>>,
) -> Result<PlannedPipeline, PlanError> {
    let sha = sha.to_string();
    let config_path = project
        .config_path
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| ".gitlab-ci.yml".into());
    if loader.read_bytes(&config_path)?.is_none() {
        return Err(PlanError::NoPipelineFile {
            path: config_path,
            sha,
        });
    }
    let commit = loader.with_reader(|r| r.commit_info(mirror, &sha))?;
    let default_branch = project
        .default_branch
        .clone()
        .or_else(|| mirror.default_branch())
        .unwrap_or_else(|| "main".into());
    let tag_message = if request.tag {
        mirror.tag_message(&request.ref_name)?
    } else {
        None
    };
    let created_at = request.created_at.clone().unwrap_or_else(|| {
        jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    });
    let context = PipelineContext {
        server_url: project.server_url.clone(),
        server_version: project.server_version.clone(),
        project_id: project.id,
        project_path: project.path.clone(),
        project_title: project.title.clone(),
        project_description: project.description.clone(),
        project_visibility: project.visibility.clone(),
        default_branch,
        config_path: project.config_path.clone(),
        commit_sha: sha.clone(),
        commit_before_sha: request.before_sha.clone(),
        commit_message: commit.message.clone(),
        commit_author: commit.author.clone(),
        commit_timestamp: commit.timestamp.clone(),
        ref_name: request.ref_name.clone(),
        tag: request.tag,
        tag_message,
        ref_protected: request.ref_protected,
        source: request.source.as_str().to_string(),
        pipeline_id: request.pipeline_id,
        pipeline_iid: request.pipeline_iid,
        pipeline_created_at: created_at,
        schedule_description: request.schedule_description.clone(),
        mr: request.merge_request.clone(),
        user: request.user.clone(),
        ..PipelineContext::default()
    };
    let files = loader.files().map_err(|e| {
        PlanError::Git(GitError::Failed {
            command: "git cat-file --batch".into(),
            stderr: e,
        })
    })?;
    let mut trigger = Trigger::from_context(
        &context,
        files.to_vec(),
        changed(),
        request.variables.clone(),
    );

    let loaded = slipway_core::load_for_trigger(loader, &config_path, Some(&trigger));
    let pipeline = match loaded.pipeline {
        Ok(p) => p,
        Err(d) => return Err(PlanError::Config(ConfigErrors::new(&d, &loaded.sources))),
    };
    // The environments' definitions (`.slipway`) come from the same commit: a broken one
    // is a configuration error like a broken job.
    let deploy = match loaded
        .tree
        .as_ref()
        .map(slipway_core::deploy::parse_settings)
    {
        Some(Ok(s)) => s,
        Some(Err(d)) => return Err(PlanError::Config(ConfigErrors::new(&d, &loaded.sources))),
        None => DeploySettings::default(),
    };
    for to in plan::compare_to_refs(&pipeline, &trigger) {
        let files = match loader.with_reader(|r| r.resolve_commit(mirror, &to)) {
            Ok(Some(base)) => Some(mirror.changed_files(&base, &sha)?),
            Ok(None) | Err(GitError::Invalid(_)) => None,
            Err(e) => return Err(e.into()),
        };
        trigger.compare_to.push((to, files));
    }

    let skip = skip_reason(request, &commit.message);
    let outcome = match plan::plan(&pipeline, &trigger) {
        Err(d) => return Err(PlanError::Config(ConfigErrors::new(&d, &loaded.sources))),
        Ok(Err(NoPipeline::FilteredByWorkflow)) => PlanOutcome::FilteredByWorkflow,
        Ok(Ok(mut p)) => {
            // `deploy_on`: which refs deploy where, automatically or on a click.
            slipway_core::deploy::mapping::map_plan(&deploy, &pipeline, &mut p, &trigger);
            match skip {
                Some(reason) => PlanOutcome::Skipped(reason),
                None => PlanOutcome::Planned(p),
            }
        }
    };
    Ok(PlannedPipeline {
        sha,
        config_path,
        context,
        trigger,
        pipeline,
        deploy,
        sources: loaded.sources,
        outcome,
    })
}

/// GitLab's changes for `rules:changes`: the push's diff for an existing branch, the merge
/// request's diff against its target branch; unknown (`None`: changes are true) for new
/// branches, tags and every other source, and when the diff cannot be computed (the old
/// commit is gone after a force push and `gc`).
fn changed_files(mirror: &Mirror, request: &PipelineRequest, sha: &str) -> Option<Vec<String>> {
    match request.source {
        PipelineSource::Push if !request.tag => {
            let before = request.before_sha.as_deref()?;
            mirror.changed_files(before, sha).ok()
        }
        PipelineSource::MergeRequestEvent => {
            let target = &request.merge_request.as_ref()?.target_branch;
            let base = mirror
                .resolve_commit(&format!("refs/heads/{target}"))
                .ok()??;
            mirror.changed_files(&base, sha).ok()
        }
        _ => None,
    }
}

/// Why a push pipeline is skipped, if it is.
fn skip_reason(request: &PipelineRequest, message: &str) -> Option<String> {
    if request.source != PipelineSource::Push {
        return None;
    }
    if request.push_options.iter().any(|o| o == "ci.skip") {
        return Some("skipped by the ci.skip push option".into());
    }
    let lower = message.to_ascii_lowercase();
    if lower.contains("[skip ci]") || lower.contains("[ci skip]") {
        return Some("skipped by [skip ci] in the commit message".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::ZERO_SHA;

    #[test]
    fn push_options_become_variables() {
        let a = "a".repeat(40);
        let u = RefUpdate::from_shas(ZERO_SHA, &a, "refs/heads/main").expect("update");
        let r = PipelineRequest::for_ref_update(
            &u,
            &[
                "ci.variable=\"MAX=10\"".into(),
                "ci.var=X=a=b".into(),
                "other".into(),
            ],
        )
        .expect("request");
        assert_eq!(
            r.variables,
            vec![("MAX".into(), "10".into()), ("X".into(), "a=b".into())]
        );
        assert_eq!(r.before_sha, None);
        let del = RefUpdate::from_shas(&a, ZERO_SHA, "refs/heads/main").expect("update");
        assert!(PipelineRequest::for_ref_update(&del, &[]).is_none());
        let note = RefUpdate::from_shas(ZERO_SHA, &a, "refs/notes/commits").expect("update");
        assert!(PipelineRequest::for_ref_update(&note, &[]).is_none());
    }

    #[test]
    fn sources_round_trip() {
        for s in [
            PipelineSource::Push,
            PipelineSource::MergeRequestEvent,
            PipelineSource::Web,
            PipelineSource::Api,
            PipelineSource::Schedule,
            PipelineSource::Trigger,
        ] {
            assert_eq!(PipelineSource::parse(s.as_str()), Some(s));
        }
        assert_eq!(PipelineSource::parse("chat"), None);
    }
}
