//! From a planned pipeline to its deployments: which environment each job deploys to
//! (`environment:name`, expanded as GitLab does), and the `deploy_on` mapping of
//! `.slipway` applied to the plan, so a push to `main` deploys dev by itself and a tag
//! `v*` is the only thing that reaches production.
//!
//! The mapping, for a job whose environment has `deploy_on`:
//! - a ref the mapping does not name leaves the job out of the pipeline (as a rule that
//!   does not match would), and with it every job that `needs` it (an `optional` need
//!   is dropped instead); `dependencies` on it are dropped;
//! - `when: manual` in the mapping makes an automatic job manual (a click deploys it);
//!   the job's `allow_failure` stays as planned, so a pipeline waiting for that click
//!   is `blocked` unless the job says otherwise.
//!
//! Environments without `deploy_on`, and jobs without an environment, are left alone.

use super::settings::{DeploySettings, When as DeployWhen};
use crate::model::{self, When};
use crate::plan::{Plan, PlannedJob, Trigger};
use crate::variables::expand_server;

/// The environment `job` deploys to, when it creates a deployment: `environment:name`
/// with `action: start` (the default). Variables are expanded with GitLab's server-side
/// rules (unknown ones removed), from the job's own variables first, then `lookup`
/// (predefined and pipeline variables).
pub fn deployment_environment(
    job: &PlannedJob,
    def: &model::Job,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Option<String> {
    let env = def.environment.as_ref()?;
    if env.action != "start" {
        return None;
    }
    let name = expand_server(&env.name, &|key| {
        job.variables
            .iter()
            .rev()
            .find(|v| v.key == key)
            .map(|v| v.value.clone())
            .or_else(|| lookup(key))
    });
    let name = name.trim().to_string();
    (!name.is_empty()).then_some(name)
}

/// The environment of every job of `plan` (see [`deployment_environment`]), with the
/// trigger's predefined and pipeline variables for expansion.
pub fn plan_environments(
    pipeline: &model::Pipeline,
    plan: &Plan,
    trigger: &Trigger,
) -> Vec<Option<String>> {
    let lookup = |key: &str| {
        trigger
            .variables
            .iter()
            .rev()
            .chain(trigger.predefined.iter().rev())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    plan.jobs
        .iter()
        .map(|j| {
            pipeline
                .jobs
                .get(j.definition)
                .and_then(|def| deployment_environment(j, def, &lookup))
        })
        .collect()
}

/// [`apply_deploy_on`] for a plan made from `pipeline` and `trigger`.
pub fn map_plan(
    settings: &DeploySettings,
    pipeline: &model::Pipeline,
    plan: &mut Plan,
    trigger: &Trigger,
) -> Mapped {
    let envs = plan_environments(pipeline, plan, trigger);
    apply_deploy_on(settings, plan, &envs, &trigger.ref_name, trigger.tag)
}

/// What [`apply_deploy_on`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mapped {
    /// Jobs left out, in plan order.
    pub removed: Vec<String>,
    /// Jobs made manual.
    pub manual: Vec<String>,
}

/// Applies the `deploy_on` mapping to `plan`. `environments[i]` is the environment job
/// `i` of the plan deploys to (see [`deployment_environment`]).
pub fn apply_deploy_on(
    settings: &DeploySettings,
    plan: &mut Plan,
    environments: &[Option<String>],
    git_ref: &str,
    tag: bool,
) -> Mapped {
    let n = plan.jobs.len();
    let mut out = vec![false; n];
    let mut manual = vec![false; n];
    for (i, env) in environments.iter().enumerate().take(n) {
        let Some(on) = env
            .as_deref()
            .and_then(|e| settings.environment(e))
            .and_then(|d| d.deploy_on.as_ref())
        else {
            continue;
        };
        if !on.matches(git_ref, tag) {
            out[i] = true;
        } else if on.when == DeployWhen::Manual && plan.jobs[i].when == When::OnSuccess {
            manual[i] = true;
        }
    }
    // Jobs that need a job left out go too (their deployment did not happen).
    loop {
        let mut changed = false;
        for i in 0..n {
            if out[i] {
                continue;
            }
            let needs_out = plan.jobs[i].needs.iter().flatten().any(|need| {
                !need.optional
                    && plan
                        .jobs
                        .iter()
                        .enumerate()
                        .any(|(k, j)| out[k] && j.name == need.job)
            });
            if needs_out {
                out[i] = true;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let removed: Vec<String> = (0..n)
        .filter(|&i| out[i])
        .map(|i| plan.jobs[i].name.clone())
        .collect();
    let mut made_manual = Vec::new();
    let mut kept = Vec::with_capacity(n);
    for (i, mut j) in std::mem::take(&mut plan.jobs).into_iter().enumerate() {
        if out[i] {
            continue;
        }
        if manual[i] {
            j.when = When::Manual;
            made_manual.push(j.name.clone());
        }
        if let Some(needs) = j.needs.as_mut() {
            needs.retain(|nd| !removed.contains(&nd.job));
        }
        j.dependencies.retain(|d| !removed.contains(d));
        kept.push(j);
    }
    plan.jobs = kept;
    Mapped {
        removed,
        manual: made_manual,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::MemoryLoader;

    fn loader() -> MemoryLoader {
        MemoryLoader {
            files: vec![(".gitlab-ci.yml".into(), FILE.into())],
        }
    }

    const FILE: &str = r#"
stages: [build, deploy, verify]
build:
  stage: build
  script: [make]
deploy-dev:
  stage: deploy
  script: [echo dev]
  environment: dev
deploy-staging:
  stage: deploy
  script: [echo staging]
  environment: { name: staging }
deploy-production:
  stage: deploy
  script: [echo production]
  environment: { name: "$TARGET" }
  variables: { TARGET: production }
smoke-production:
  stage: verify
  needs: [deploy-production]
  script: [curl production]
report:
  stage: verify
  needs: [{ job: deploy-production, optional: true }, build]
  dependencies: [build, deploy-production]
  script: [echo report]
stop-dev:
  stage: deploy
  when: manual
  script: [echo stop]
  environment: { name: dev, action: stop }
.slipway:
  environments:
    dev:
      process: { command: ./app }
      deploy_on: { branches: [main] }
    staging:
      process: { command: ./app }
      deploy_on: { branches: ["release/*", main], when: manual }
    production:
      process: { command: ./app }
      deploy_on: { tags: ["v*"] }
"#;

    fn planned(git_ref: &str, tag: bool) -> (Plan, Mapped) {
        let loaded = crate::load_pipeline(&loader(), ".gitlab-ci.yml", &|_| None);
        let pipeline = loaded.pipeline.expect("valid pipeline");
        let settings = super::super::parse_settings(loaded.tree.as_ref().expect("tree"))
            .expect("valid settings");
        let trigger = crate::plan::Trigger {
            ref_name: git_ref.into(),
            tag,
            source: "push".into(),
            changed_files: None,
            files: vec![".gitlab-ci.yml".into()],
            predefined: Vec::new(),
            variables: Vec::new(),
            compare_to: Vec::new(),
        };
        let mut plan = crate::plan::plan(&pipeline, &trigger)
            .expect("plans")
            .expect("a pipeline");
        let mapped = map_plan(&settings, &pipeline, &mut plan, &trigger);
        (plan, mapped)
    }

    fn names(p: &Plan) -> Vec<&str> {
        p.jobs.iter().map(|j| j.name.as_str()).collect()
    }

    #[test]
    fn main_deploys_dev_by_itself_and_staging_on_a_click() {
        let (plan, mapped) = planned("main", false);
        assert_eq!(
            names(&plan),
            [
                "build",
                "deploy-dev",
                "deploy-staging",
                "stop-dev",
                "report"
            ]
        );
        assert_eq!(mapped.removed, ["deploy-production", "smoke-production"]);
        assert_eq!(mapped.manual, ["deploy-staging"]);
        let dev = plan
            .jobs
            .iter()
            .find(|j| j.name == "deploy-dev")
            .expect("dev");
        assert_eq!(dev.when, When::OnSuccess);
        let report = plan
            .jobs
            .iter()
            .find(|j| j.name == "report")
            .expect("report");
        let needs: Vec<&str> = report
            .needs
            .iter()
            .flatten()
            .map(|n| n.job.as_str())
            .collect();
        assert_eq!(needs, ["build"]);
        assert_eq!(report.dependencies, ["build"]);
    }

    #[test]
    fn tags_reach_production_and_release_branches_staging() {
        let (plan, mapped) = planned("v1.2.0", true);
        assert_eq!(
            names(&plan),
            [
                "build",
                "deploy-production",
                "stop-dev",
                "smoke-production",
                "report"
            ]
        );
        assert_eq!(mapped.removed, ["deploy-dev", "deploy-staging"]);
        let (plan, _) = planned("release/2024-05", false);
        assert_eq!(
            names(&plan),
            ["build", "deploy-staging", "stop-dev", "report"]
        );
        // A branch named like a tag pattern is not a tag.
        let (plan, _) = planned("v9", false);
        assert_eq!(names(&plan), ["build", "stop-dev", "report"]);
    }

    #[test]
    fn environment_names_expand_and_only_start_creates_deployments() {
        let (plan, _) = planned("v1", true);
        let loaded = crate::load_pipeline(&loader(), ".gitlab-ci.yml", &|_| None);
        let pipeline = loaded.pipeline.expect("valid");
        let env_of = |name: &str| {
            let j = plan.jobs.iter().find(|j| j.name == name).expect("job");
            deployment_environment(j, &pipeline.jobs[j.definition], &|_| None)
        };
        assert_eq!(env_of("deploy-production").as_deref(), Some("production"));
        assert_eq!(env_of("stop-dev"), None, "action: stop makes no deployment");
        assert_eq!(env_of("build"), None);
    }
}
