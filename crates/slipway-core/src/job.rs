//! The decisions one job attempt makes around its scripts, as GitLab and GitLab Runner make
//! them: the job's environment (predefined, YAML, dotenv and run variables in GitLab's
//! precedence), whether a failed attempt is retried, whether artifacts and caches are
//! uploaded for the way the job ended, which cache keys are tried on restore, and which jobs'
//! artifacts a job receives. Pure: every shell (local runner, server, agent) asks here, so
//! they agree.

use crate::model::{Cache, Retry, VariableDef};
use crate::plan::Plan;
use crate::variables::{self, JobContext, PipelineContext, Variable, VariableSet};

/// GitLab's failure reasons, as `retry:when` names them.
pub mod reason {
    pub const SCRIPT_FAILURE: &str = "script_failure";
    pub const JOB_EXECUTION_TIMEOUT: &str = "job_execution_timeout";
    pub const RUNNER_SYSTEM_FAILURE: &str = "runner_system_failure";
    pub const UNKNOWN_FAILURE: &str = "unknown_failure";
    /// GitLab's reason for a deployment job whose deployment was refused or rejected
    /// (a protected environment's rule, a promotion rule, an approver).
    pub const DEPLOYMENT_REJECTED: &str = "deployment_rejected";
    /// Slipway's: the deployment engine could not bring the release up (health checks
    /// failed, the process would not start).
    pub const DEPLOYMENT_FAILURE: &str = "deployment_failure";
}

/// Whether a failed attempt is retried, by `retry:when` (failure reasons) and
/// `retry:exit_codes`: when either matches; with neither given, any failure is retried.
/// The caller checks the attempt count against `retry:max`.
pub fn should_retry(retry: &Retry, reason: Option<&str>, exit_code: Option<i32>) -> bool {
    if retry.max == 0 {
        return false;
    }
    if retry.when.is_empty() && retry.exit_codes.is_empty() {
        return true;
    }
    let by_reason = retry.when.iter().any(|w| {
        w == "always"
            || Some(w.as_str()) == reason
            || (w == "stuck_or_timeout_failure" && reason == Some(reason::JOB_EXECUTION_TIMEOUT))
            || (w == reason::UNKNOWN_FAILURE && reason.is_none())
    });
    let by_code = exit_code.is_some_and(|c| retry.exit_codes.contains(&c));
    by_reason || by_code
}

/// `artifacts:when` and `cache:when`: whether to upload for a job that succeeded or not.
/// Anything but `on_failure` and `always` means `on_success`, the default.
pub fn uploads_when(when: &str, succeeded: bool) -> bool {
    match when {
        "always" => true,
        "on_failure" => !succeeded,
        _ => succeeded,
    }
}

/// `cache:policy`, after variables in it are expanded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CachePolicy {
    Pull,
    Push,
    PullPush,
}

impl CachePolicy {
    /// An empty policy is `pull-push`, the default; anything else unknown is an error, as
    /// GitLab Runner fails the job on one (`unknown cache policy`).
    pub fn parse(expanded: &str) -> Result<CachePolicy, String> {
        match expanded.trim() {
            "" | "pull-push" => Ok(CachePolicy::PullPush),
            "pull" => Ok(CachePolicy::Pull),
            "push" => Ok(CachePolicy::Push),
            other => Err(format!(
                "unknown cache policy {other:?} (expected pull, push or pull-push)"
            )),
        }
    }

    pub fn restores(self) -> bool {
        matches!(self, CachePolicy::Pull | CachePolicy::PullPush)
    }

    pub fn saves(self) -> bool {
        matches!(self, CachePolicy::Push | CachePolicy::PullPush)
    }
}

/// The keys tried, in order, when the cache for the job's key is missing:
/// `cache:fallback_keys`, then the `CACHE_FALLBACK_KEY` variable, each expanded like the
/// key itself. Empty ones and repeats of the key are dropped.
pub fn fallback_keys(
    cache: &Cache,
    key: &str,
    expand: &dyn Fn(&str) -> String,
    cache_fallback_key: Option<&str>,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for k in cache
        .fallback_keys
        .iter()
        .map(|k| expand(k))
        .chain(cache_fallback_key.map(expand))
    {
        if !k.trim().is_empty() && k != key && !out.contains(&k) {
            out.push(k);
        }
    }
    out
}

/// The jobs (indices into `plan.jobs`) whose artifacts job `index` receives, in the order
/// they are extracted: its planned `dependencies` (from `needs` with `artifacts: true`,
/// `dependencies:`, or every job of earlier stages). Names not in the plan are left out.
pub fn artifact_sources(plan: &Plan, index: usize) -> Vec<usize> {
    plan.jobs[index]
        .dependencies
        .iter()
        .filter_map(|d| plan.jobs.iter().position(|j| &j.name == d))
        .collect()
}

/// Everything a job's environment is made of, lowest precedence first.
pub struct EnvironmentParts<'a> {
    pub pipeline: &'a PipelineContext,
    /// The pipeline-level predefined variables, already resolved (`CI_COMMIT_*`, ...).
    pub predefined: &'a [(String, String)],
    /// The job, with its `run` set (job id, project and builds directories, ...).
    pub job: &'a JobContext,
    /// `CI_CONCURRENT_ID` / `CI_CONCURRENT_PROJECT_ID`: the executor slot it runs in.
    pub concurrent_id: Option<usize>,
    /// The planned job's YAML variables (global, `workflow:rules`, job, matrix, rules).
    pub yaml: &'a [VariableDef],
    /// `artifacts:reports:dotenv` of the jobs it depends on, in dependency order.
    pub dotenv: &'a [(String, String)],
    /// Project-level variables (the CLI's `--secret`, masked).
    pub project: &'a [(String, String)],
    /// Pipeline variables given for this run (the CLI's `--variable`, a manual run's form).
    pub pipeline_variables: &'a [(String, String)],
}

/// The job's environment as GitLab Runner hands it to the script: predefined variables,
/// YAML variables, dotenv from dependencies, project variables, then pipeline variables
/// (later wins), every reference to another variable expanded (`expand: false` kept raw,
/// `$$` a literal `$`). One pair per key.
pub fn environment(parts: &EnvironmentParts<'_>) -> Vec<(String, String)> {
    let mut set = VariableSet::new();
    // Predefined values are final: a `$` in a commit message is not a reference.
    for (k, v) in parts.predefined {
        set.insert(Variable::raw(k.clone(), v.clone()));
    }
    set.append(variables::job_variables(parts.pipeline, parts.job));
    if let Some(id) = parts.concurrent_id {
        set.set("CI_CONCURRENT_ID", &id.to_string());
        set.set("CI_CONCURRENT_PROJECT_ID", &id.to_string());
    }
    for d in parts.yaml {
        set.insert(Variable {
            key: d.key.clone(),
            value: d.value.clone(),
            expand: d.expand,
            masked: false,
            file: false,
        });
    }
    for (k, v) in parts
        .dotenv
        .iter()
        .chain(parts.project)
        .chain(parts.pipeline_variables)
    {
        // Values from outside the file are taken as written, as GitLab does for dotenv
        // and masked variables.
        set.insert(Variable::raw(k.clone(), v.clone()));
    }
    set.resolved()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::CacheKey;
    use crate::variables::JobRun;

    fn retry(max: u32, when: &[&str], codes: &[i32]) -> Retry {
        Retry {
            max,
            when: when.iter().map(|s| s.to_string()).collect(),
            exit_codes: codes.to_vec(),
        }
    }

    #[test]
    fn retry_by_reason_and_exit_code() {
        assert!(!should_retry(
            &retry(0, &[], &[]),
            Some("script_failure"),
            Some(1)
        ));
        assert!(should_retry(
            &retry(2, &[], &[]),
            Some("script_failure"),
            Some(1)
        ));
        let r = retry(2, &["stuck_or_timeout_failure"], &[]);
        assert!(should_retry(&r, Some("job_execution_timeout"), None));
        assert!(!should_retry(&r, Some("script_failure"), Some(1)));
        let r = retry(2, &["runner_system_failure"], &[137]);
        assert!(should_retry(&r, Some("script_failure"), Some(137)));
        assert!(!should_retry(&r, Some("script_failure"), Some(1)));
        assert!(should_retry(&r, Some("runner_system_failure"), None));
        assert!(should_retry(&retry(1, &["always"], &[]), None, None));
    }

    #[test]
    fn upload_conditions() {
        assert!(uploads_when("on_success", true));
        assert!(uploads_when("", true));
        assert!(!uploads_when("on_success", false));
        assert!(uploads_when("on_failure", false));
        assert!(!uploads_when("on_failure", true));
        assert!(uploads_when("always", false));
    }

    #[test]
    fn cache_policies() {
        assert_eq!(CachePolicy::parse(""), Ok(CachePolicy::PullPush));
        let pull = CachePolicy::parse("pull").expect("pull");
        assert!(pull.restores() && !pull.saves());
        let push = CachePolicy::parse("push").expect("push");
        assert!(!push.restores() && push.saves());
        assert!(CachePolicy::parse("$UNSET").is_err());
    }

    #[test]
    fn fallback_keys_are_expanded_and_deduplicated() {
        let cache = Cache {
            key: CacheKey::Literal("gems-$CI_COMMIT_REF_SLUG".into()),
            paths: vec![],
            policy: String::new(),
            when: String::new(),
            untracked: false,
            unprotect: false,
            fallback_keys: vec!["gems-$CI_DEFAULT_BRANCH".into(), "gems-main".into()],
        };
        let expand = |s: &str| s.replace("$CI_DEFAULT_BRANCH", "main");
        assert_eq!(
            fallback_keys(&cache, "gems-topic", &expand, Some("global")),
            vec!["gems-main".to_string(), "global".to_string()]
        );
    }

    #[test]
    fn artifact_sources_follow_the_planned_dependencies() {
        let yaml = "stages: [build, test]\nbuild:\n  stage: build\n  script: x\nlint:\n  stage: build\n  script: x\ntest:\n  stage: test\n  needs:\n    - build\n    - job: lint\n      artifacts: false\n  script: x\nalone:\n  stage: test\n  dependencies: []\n  script: x\nall:\n  stage: test\n  script: x\n";
        let loader = crate::source::MemoryLoader::new().with(".gitlab-ci.yml", yaml);
        let pipeline = crate::load_pipeline(&loader, ".gitlab-ci.yml", &|_| None)
            .pipeline
            .expect("valid");
        let trigger = crate::plan::Trigger {
            ref_name: "main".into(),
            source: "push".into(),
            ..Default::default()
        };
        let plan = crate::plan::plan(&pipeline, &trigger)
            .expect("plans")
            .expect("a pipeline");
        let index = |n: &str| plan.jobs.iter().position(|j| j.name == n).expect(n);
        let names = |i: usize| -> Vec<&str> {
            artifact_sources(&plan, i)
                .into_iter()
                .map(|j| plan.jobs[j].name.as_str())
                .collect()
        };
        assert_eq!(names(index("test")), vec!["build"]);
        assert!(names(index("alone")).is_empty());
        assert_eq!(names(index("all")), vec!["build", "lint"]);
    }

    #[test]
    fn environment_follows_gitlab_precedence() {
        let pipeline = PipelineContext {
            source: "push".into(),
            ..PipelineContext::default()
        };
        let job = JobContext {
            name: "test".into(),
            stage: "test".into(),
            node_total: 1,
            run: Some(JobRun {
                project_dir: "/builds/p".into(),
                builds_dir: "/builds".into(),
                ..JobRun::default()
            }),
            ..JobContext::default()
        };
        let def = |k: &str, v: &str, expand: bool| VariableDef {
            key: k.into(),
            value: v.into(),
            description: None,
            options: vec![],
            expand,
            span: Default::default(),
        };
        let yaml = vec![
            def("GREETING", "hello $WHO", true),
            def("WHO", "file", true),
            def("RAW", "$WHO", false),
            def("OVERRIDDEN", "yaml", true),
        ];
        let predefined = vec![("CI_COMMIT_MESSAGE".to_string(), "costs $5".to_string())];
        let env = environment(&EnvironmentParts {
            pipeline: &pipeline,
            predefined: &predefined,
            job: &job,
            concurrent_id: Some(1),
            yaml: &yaml,
            dotenv: &[("FROM_DOTENV".into(), "1".into())],
            project: &[("OVERRIDDEN".into(), "project".into())],
            pipeline_variables: &[("WHO".into(), "cli".into())],
        });
        let get = |k: &str| {
            env.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("GREETING"), Some("hello cli"));
        assert_eq!(get("RAW"), Some("$WHO"));
        assert_eq!(get("OVERRIDDEN"), Some("project"));
        assert_eq!(get("FROM_DOTENV"), Some("1"));
        assert_eq!(get("CI_COMMIT_MESSAGE"), Some("costs $5"));
        assert_eq!(get("CI_PROJECT_DIR"), Some("/builds/p"));
        assert_eq!(get("CI_CONCURRENT_ID"), Some("1"));
        assert_eq!(get("CI_JOB_NAME"), Some("test"));
    }
}
