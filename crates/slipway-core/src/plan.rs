//! Planning: given a pipeline and what triggered it (ref, source, changed files,
//! variables), decide which jobs exist and how they start, exactly as GitLab creates a
//! pipeline: `workflow:rules` first, then each job's `rules` (first match wins) or
//! `only`/`except`, `parallel` and `parallel:matrix` expanded, `when` and
//! `allow_failure` resolved, and the DAG from `needs` and stage order.

use crate::config::any_file_matches;
use crate::diag::Diagnostics;
use crate::expr;
use crate::model::{
    matrix_instance_name, AllowFailure, Job, Need, Pipeline, RefFilter, Rule, VariableDef, When,
};
use crate::source::Span;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// What started a pipeline.
#[derive(Debug, Clone, Default)]
pub struct Trigger {
    /// Branch or tag name (no `refs/heads/`).
    pub ref_name: String,
    pub tag: bool,
    /// `CI_PIPELINE_SOURCE`: push, web, schedule, merge_request_event, api, trigger...
    pub source: String,
    /// Files changed by the push; `None` when unknown (new branch, tag, schedule, web),
    /// in which case `changes` conditions are true, as on GitLab.
    pub changed_files: Option<Vec<String>>,
    /// Every file in the repository at the commit, for `exists`.
    pub files: Vec<String>,
    /// Predefined `CI_*` variables of the pipeline.
    pub predefined: Vec<(String, String)>,
    /// Variables given for this run (manual run, API, `--variable`): they override the
    /// file's variables.
    pub variables: Vec<(String, String)>,
    /// The files changed against each `rules:changes:compare_to` ref (see
    /// [`compare_to_refs`]), computed by the caller from the repository: the ref as
    /// expanded, and the changed files, or `None` when the ref does not exist (an error,
    /// as on GitLab). A ref not listed here falls back to `changed_files`.
    pub compare_to: Vec<(String, Option<Vec<String>>)>,
}

impl Trigger {
    /// The trigger for a pipeline context: ref, tag and source from it, its pipeline-level
    /// predefined variables, and what the caller knows of the repository (`files`, the
    /// changed files) and the run (`variables`). How the CLI and the server both start.
    pub fn from_context(
        ctx: &crate::variables::PipelineContext,
        files: Vec<String>,
        changed_files: Option<Vec<String>>,
        variables: Vec<(String, String)>,
    ) -> Trigger {
        let predefined = crate::variables::pipeline_variables(ctx)
            .iter()
            .map(|v| (v.key.clone(), v.value.clone()))
            .collect();
        Trigger {
            ref_name: ctx.ref_name.clone(),
            tag: ctx.tag,
            source: ctx.source.clone(),
            changed_files,
            files,
            predefined,
            variables,
            compare_to: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// `workflow:name`, expanded.
    pub name: Option<String>,
    pub stages: Vec<String>,
    /// Variables set by the matching `workflow:rules` entry.
    pub workflow_variables: Vec<VariableDef>,
    pub jobs: Vec<PlannedJob>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedJob {
    /// Name as shown: `test 1/3`, `build: [linux, amd64]`.
    pub name: String,
    /// The job's key in the configuration.
    pub job: String,
    pub stage: String,
    pub stage_index: usize,
    pub when: When,
    pub start_in: Option<String>,
    pub allow_failure: bool,
    pub allow_failure_exit_codes: Vec<i32>,
    /// `None` when the job has no `needs:` and follows stage order.
    pub needs: Option<Vec<PlannedNeed>>,
    /// Jobs whose artifacts this job receives.
    pub dependencies: Vec<String>,
    /// Global, `workflow:rules`, job, matrix and rule variables, later ones winning.
    pub variables: Vec<VariableDef>,
    pub node_index: Option<u32>,
    pub node_total: u32,
    pub interruptible: bool,
    /// Index of the job definition in [`Pipeline::jobs`].
    #[serde(skip)]
    pub definition: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedNeed {
    pub job: String,
    pub artifacts: bool,
    pub optional: bool,
}

/// Why no pipeline was planned although the configuration is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoPipeline {
    /// No `workflow:rules` entry matched, or the match said `never`.
    FilteredByWorkflow,
}

pub type PlanResult = Result<Result<Plan, NoPipeline>, Diagnostics>;

/// Per job definition: the planned name of each instance with its matrix values.
type Instances<'a> = HashMap<&'a str, Vec<(String, Vec<(String, String)>)>>;
/// One instance of a job before rules: name, CI_NODE_INDEX, CI_NODE_TOTAL, matrix values.
type Cell = (String, Option<u32>, u32, Vec<(String, String)>);

/// Variables visible to an expression, resolved by name.
struct Scope<'a> {
    layers: Vec<&'a [(String, String)]>,
    defs: Vec<&'a [VariableDef]>,
    owned: Vec<(String, String)>,
}

impl Scope<'_> {
    /// The value with references to other variables expanded (what `rules:changes`
    /// paths and `workflow:name` see).
    fn lookup(&self, name: &str) -> Option<String> {
        self.lookup_depth(name, 0)
    }

    /// The value as defined, references to other variables left as written: what
    /// `rules:if` and `only:variables` expressions compare and `rules:exists` paths use
    /// ("You cannot use nested variables with if", gitlab-org/gitlab#327780).
    fn raw(&self, name: &str) -> Option<String> {
        if let Some((_, v)) = self.owned.iter().rev().find(|(k, _)| k == name) {
            return Some(v.clone());
        }
        for layer in self.layers.iter().rev() {
            if let Some((_, v)) = layer.iter().rev().find(|(k, _)| k == name) {
                return Some(v.clone());
            }
        }
        self.defs
            .iter()
            .rev()
            .find_map(|defs| defs.iter().rev().find(|d| d.key == name))
            .map(|d| d.value.clone())
    }

    fn lookup_depth(&self, name: &str, depth: usize) -> Option<String> {
        if depth > 10 {
            return None;
        }
        // Later layers win: run variables, then rule/job/global definitions, then predefined.
        if let Some((_, v)) = self.owned.iter().rev().find(|(k, _)| k == name) {
            return Some(v.clone());
        }
        for layer in self.layers.iter().rev() {
            if let Some((_, v)) = layer.iter().rev().find(|(k, _)| k == name) {
                return Some(v.clone());
            }
        }
        for defs in self.defs.iter().rev() {
            if let Some(d) = defs.iter().rev().find(|d| d.key == name) {
                return Some(self.expand(&d.value, d.expand, depth + 1));
            }
        }
        None
    }

    /// Expand `$VAR`/`${VAR}` in a definition; unknown references stay as written.
    fn expand(&self, value: &str, expand: bool, depth: usize) -> String {
        if !expand || !value.contains('$') {
            return value.to_string();
        }
        expand_existing(value, &|n| self.lookup_depth(n, depth))
    }
}

/// Replace references to defined variables; keep unknown ones and `$$` as written.
pub fn expand_existing(value: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let bytes = value.as_bytes();
    let mut out = String::with_capacity(value.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' {
            if bytes.get(i + 1) == Some(&b'$') {
                out.push_str("$$");
                i += 2;
                continue;
            }
            let (name, end) = if bytes.get(i + 1) == Some(&b'{') {
                match value[i + 2..].find('}') {
                    Some(close) => (&value[i + 2..i + 2 + close], i + 3 + close),
                    None => ("", i + 1),
                }
            } else {
                let len = value[i + 1..]
                    .bytes()
                    .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                    .count();
                (&value[i + 1..i + 1 + len], i + 1 + len)
            };
            if !name.is_empty() {
                if let Some(v) = lookup(name) {
                    out.push_str(&v);
                    i = end;
                    continue;
                }
            }
            out.push('$');
            i += 1;
            continue;
        }
        let ch_len = value[i..].chars().next().map(|c| c.len_utf8()).unwrap_or(1);
        out.push_str(&value[i..i + ch_len]);
        i += ch_len;
    }
    out
}

fn rule_matches(rule: &Rule, scope: &Scope<'_>, trigger: &Trigger) -> bool {
    if let Some(src) = &rule.if_expr {
        match expr::parse(src) {
            Ok(e) => {
                if !e.evaluate(&|n| scope.raw(n)) {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
    if let Some(ch) = &rule.changes {
        let against = ch.compare_to.as_ref().and_then(|r| {
            let r = expand_existing(r, &|n| scope.lookup(n));
            trigger
                .compare_to
                .iter()
                .find(|(k, _)| *k == r)
                .map(|(_, files)| files)
        });
        let changed = match against {
            Some(files) => files.as_ref(),
            None => trigger.changed_files.as_ref(),
        };
        if let Some(changed) = changed {
            let paths: Vec<String> = ch
                .paths
                .iter()
                .map(|p| expand_existing(p, &|n| scope.lookup(n)))
                .collect();
            if !any_file_matches(&paths, changed) {
                return false;
            }
        }
    }
    if let Some(ex) = &rule.exists {
        let paths: Vec<String> = ex
            .iter()
            .map(|p| expand_existing(p, &|n| scope.raw(n)))
            .collect();
        if !any_file_matches(&paths, &trigger.files) {
            return false;
        }
    }
    true
}

fn ref_pattern_matches(pattern: &str, trigger: &Trigger) -> bool {
    let source = trigger.source.as_str();
    let is_mr = source == "merge_request_event";
    match pattern {
        "branches" => return !trigger.tag && !is_mr,
        "tags" => return trigger.tag,
        "api" => return source == "api",
        "external" => return source == "external",
        "pipelines" => return source == "pipeline" || source == "parent_pipeline",
        "pushes" => return source == "push",
        "schedules" => return source == "schedule",
        "triggers" => return source == "trigger",
        "web" => return source == "web",
        "merge_requests" => return is_mr,
        "chat" => return source == "chat",
        "external_pull_requests" => return source == "external_pull_request_event",
        _ => {}
    }
    // Names and regular expressions match only branch and tag pipelines, never merge
    // request pipelines (GitLab's Policy::Refs).
    if is_mr {
        return false;
    }
    // `branch@group/project` restricts to a project: the project part is not checked.
    let pattern = match pattern.rsplit_once('@') {
        Some((p, _)) if !p.starts_with('/') || p.ends_with('/') => p,
        _ => pattern,
    };
    if let Some(body) = pattern.strip_prefix('/') {
        if let Some((re, flags)) = body.rsplit_once('/') {
            let re = if flags.contains('i') {
                format!("(?i){re}")
            } else {
                re.to_string()
            };
            return regex::Regex::new(&re).is_ok_and(|r| r.is_match(&trigger.ref_name));
        }
    }
    pattern == trigger.ref_name
}

fn filter_matches(filter: &RefFilter, scope: &Scope<'_>, trigger: &Trigger) -> Vec<bool> {
    let mut results = Vec::new();
    if !filter.refs.is_empty() {
        results.push(filter.refs.iter().any(|r| ref_pattern_matches(r, trigger)));
    }
    if !filter.variables.is_empty() {
        results.push(
            filter
                .variables
                .iter()
                .any(|src| expr::parse(src).is_ok_and(|e| e.evaluate(&|n| scope.raw(n)))),
        );
    }
    if !filter.changes.is_empty() {
        results.push(match &trigger.changed_files {
            None => true,
            Some(files) => any_file_matches(&filter.changes, files),
        });
    }
    results
}

/// Every rule of the pipeline (workflow, then jobs) with its `compare_to` expanded with the
/// pipeline-level variables of `trigger`.
fn compare_to_rules<'p>(pipeline: &'p Pipeline, trigger: &Trigger) -> Vec<(&'p Rule, String)> {
    let scope = Scope {
        layers: vec![&trigger.predefined],
        defs: vec![&pipeline.variables],
        owned: trigger.variables.clone(),
    };
    let job_rules = pipeline.jobs.iter().filter_map(|j| j.rules.as_ref());
    pipeline
        .workflow
        .rules
        .iter()
        .chain(job_rules)
        .flatten()
        .filter_map(|r| {
            let to = r.changes.as_ref()?.compare_to.as_ref()?;
            Some((r, expand_existing(to, &|n| scope.lookup(n))))
        })
        .collect()
}

/// The refs that `rules:changes:compare_to` names in `pipeline` (variables expanded), each
/// once, in file order: what the caller computes [`Trigger::compare_to`] for.
pub fn compare_to_refs(pipeline: &Pipeline, trigger: &Trigger) -> Vec<String> {
    let mut refs: Vec<String> = Vec::new();
    for (_, r) in compare_to_rules(pipeline, trigger) {
        if !refs.contains(&r) {
            refs.push(r);
        }
    }
    refs
}

/// Plan a pipeline for a trigger.
pub fn plan(pipeline: &Pipeline, trigger: &Trigger) -> PlanResult {
    let mut diags = Diagnostics::new();

    for (rule, to) in compare_to_rules(pipeline, trigger) {
        if trigger
            .compare_to
            .iter()
            .any(|(k, f)| *k == to && f.is_none())
        {
            diags.push(
                rule.span,
                format!("rules:changes:compare_to is not a valid ref: {to}"),
            );
        }
    }
    if !diags.is_empty() {
        return Err(diags);
    }

    // workflow:rules
    let mut workflow_variables = Vec::new();
    if let Some(rules) = &pipeline.workflow.rules {
        let scope = Scope {
            layers: vec![&trigger.predefined],
            defs: vec![&pipeline.variables],
            owned: trigger.variables.clone(),
        };
        let matched = rules.iter().find(|r| rule_matches(r, &scope, trigger));
        match matched {
            Some(r) if r.when != Some(When::Never) => workflow_variables = r.variables.clone(),
            _ => return Ok(Err(NoPipeline::FilteredByWorkflow)),
        }
    }

    let has_workflow_rules = pipeline.workflow.rules.is_some();
    let stage_index: HashMap<&str, usize> = pipeline
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i))
        .collect();

    let mut planned: Vec<PlannedJob> = Vec::new();
    // Per job definition: the planned names of its instances (for needs on parallel jobs).
    let mut instances: Instances = HashMap::new();
    // The rule-chosen needs of each planned job, resolved once every job is planned.
    let mut pending_needs: Vec<Option<Vec<Need>>> = Vec::new();

    for (def_index, job) in pipeline.jobs.iter().enumerate() {
        // workflow:rules variables override the global variables the job inherits, and
        // the job's own variables override them.
        let mut base_variables = job.variables.clone();
        for w in &workflow_variables {
            if job.inherit_variables.allows(&w.key) && !job.own_variables.contains(&w.key) {
                base_variables.retain(|v| v.key != w.key);
                base_variables.push(w.clone());
            }
        }
        let cells: Vec<Cell> = job
            .instances()
            .into_iter()
            .map(|i| (i.name, i.node_index, i.node_total, i.matrix))
            .collect();
        for (name, node_index, node_total, matrix) in cells {
            let matrix_defs: Vec<VariableDef> = matrix
                .iter()
                .map(|(k, v)| VariableDef {
                    key: k.clone(),
                    value: v.clone(),
                    description: None,
                    options: Vec::new(),
                    expand: true,
                    span: Span::synthetic(),
                })
                .collect();
            let mut node_vars: Vec<(String, String)> = trigger.predefined.clone();
            if let Some(i) = node_index {
                node_vars.push(("CI_NODE_INDEX".into(), i.to_string()));
            }
            node_vars.push(("CI_NODE_TOTAL".into(), node_total.to_string()));
            node_vars.push(("CI_JOB_NAME".into(), name.clone()));
            node_vars.push(("CI_JOB_STAGE".into(), job.stage.clone()));
            let scope = Scope {
                layers: vec![&node_vars],
                defs: vec![&base_variables, &matrix_defs],
                owned: trigger.variables.clone(),
            };
            let Some(decision) = decide(job, &scope, trigger, has_workflow_rules) else {
                continue;
            };
            if decision.when == When::Never {
                continue;
            }
            let mut variables = base_variables.clone();
            for d in matrix_defs.iter().chain(decision.rule_variables.iter()) {
                variables.retain(|v| v.key != d.key);
                variables.push(d.clone());
            }
            instances
                .entry(job.name.as_str())
                .or_default()
                .push((name.clone(), matrix.clone()));
            pending_needs.push(decision.needs.clone());
            planned.push(PlannedJob {
                name,
                job: job.name.clone(),
                stage: job.stage.clone(),
                stage_index: stage_index.get(job.stage.as_str()).copied().unwrap_or(0),
                when: decision.when,
                start_in: decision.start_in,
                allow_failure: decision.allow_failure.allowed,
                allow_failure_exit_codes: decision.allow_failure.exit_codes,
                needs: None,
                dependencies: Vec::new(),
                variables,
                node_index,
                node_total,
                interruptible: decision.interruptible,
                definition: def_index,
            });
        }
    }

    // needs and dependencies, now that every surviving job is known.
    let stage_of: HashMap<String, usize> = planned
        .iter()
        .map(|p| (p.name.clone(), p.stage_index))
        .collect();
    for (idx, needs) in pending_needs.into_iter().enumerate() {
        let job = &pipeline.jobs[planned[idx].definition];
        let mut resolved_needs: Option<Vec<PlannedNeed>> = None;
        if let Some(needs) = needs {
            let mut out = Vec::new();
            for need in needs {
                let targets: Vec<String> = match instances.get(need.job.as_str()) {
                    // A generated instance named directly: `build: [linux, amd64]`.
                    None => planned_instance(&need.job, &instances)
                        .into_iter()
                        .collect(),
                    Some(list) => match &need.matrix {
                        None => list.iter().map(|(n, _)| n.clone()).collect(),
                        // GitLab names each wanted cell from the values in the order the
                        // need lists them, and depends on the instances of those names.
                        Some(cells) => cells
                            .iter()
                            .map(|cell| matrix_instance_name(&need.job, cell))
                            .filter(|name| list.iter().any(|(n, _)| n == name))
                            .collect(),
                    },
                };
                if targets.is_empty() {
                    if !need.optional {
                        diags.push(
                            need.span,
                            format!(
                                "'{}' job needs '{}' job, but '{}' does not exist in the pipeline. This might be because of the only, except, or rules keywords. To need a job that sometimes does not exist in the pipeline, use needs:optional.",
                                planned[idx].name, need.job, need.job
                            ),
                        );
                    }
                    continue;
                }
                for t in targets {
                    if stage_of.get(&t).copied().unwrap_or(0) > planned[idx].stage_index {
                        diags.push(
                            need.span,
                            format!(
                                "'{}' job needs '{t}' job, but '{t}' is not in any previous stage",
                                planned[idx].name
                            ),
                        );
                        continue;
                    }
                    out.push(PlannedNeed {
                        job: t,
                        artifacts: need.artifacts,
                        optional: need.optional,
                    });
                }
            }
            resolved_needs = Some(out);
        }
        let deps: Vec<String> = match (&resolved_needs, &job.dependencies) {
            (Some(needs), Some(deps)) => needs
                .iter()
                .filter(|n| n.artifacts && deps.iter().any(|d| instance_of(&n.job, d, &instances)))
                .map(|n| n.job.clone())
                .collect(),
            (Some(needs), None) => needs
                .iter()
                .filter(|n| n.artifacts)
                .map(|n| n.job.clone())
                .collect(),
            (None, Some(deps)) => deps
                .iter()
                .flat_map(|d| match instances.get(d.as_str()) {
                    Some(l) => l.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
                    None => planned_instance(d, &instances).into_iter().collect(),
                })
                .collect(),
            (None, None) => planned
                .iter()
                .filter(|p| p.stage_index < planned[idx].stage_index)
                .map(|p| p.name.clone())
                .collect(),
        };
        planned[idx].needs = resolved_needs;
        planned[idx].dependencies = deps;
    }

    if !diags.is_empty() {
        return Err(diags.sorted());
    }

    // Jobs run stage by stage, and within a stage in file order.
    planned.sort_by_key(|p| p.stage_index);

    // Leading and trailing spaces are removed; an empty name means no name.
    let name = pipeline
        .workflow
        .name
        .as_ref()
        .map(|n| {
            let scope = Scope {
                layers: vec![&trigger.predefined],
                defs: vec![&pipeline.variables, &workflow_variables],
                owned: trigger.variables.clone(),
            };
            expand_existing(n, &|v| scope.lookup(v)).trim().to_string()
        })
        .filter(|n| !n.is_empty());

    let used: Vec<usize> = planned.iter().map(|p| p.stage_index).collect();
    let stages = pipeline
        .stages
        .iter()
        .enumerate()
        .filter(|(i, _)| used.contains(i))
        .map(|(_, s)| s.clone())
        .collect();

    Ok(Ok(Plan {
        name,
        stages,
        workflow_variables,
        jobs: planned,
    }))
}

/// Whether `instance` is `job` itself (a generated instance named directly) or one of its
/// instances.
fn instance_of(instance: &str, job: &str, instances: &Instances) -> bool {
    instance == job
        || instances
            .get(job)
            .is_some_and(|l| l.iter().any(|(n, _)| n == instance))
}

/// The planned instance called `name` (`test 2/3`, `build: [linux, amd64]`), if any.
fn planned_instance(name: &str, instances: &Instances) -> Option<String> {
    instances
        .values()
        .flatten()
        .find(|(n, _)| n == name)
        .map(|(n, _)| n.clone())
}

struct Decision {
    when: When,
    start_in: Option<String>,
    allow_failure: AllowFailure,
    rule_variables: Vec<VariableDef>,
    needs: Option<Vec<Need>>,
    interruptible: bool,
}

/// Whether the job is in the pipeline and how it starts; `None` when it is not.
fn decide(
    job: &Job,
    scope: &Scope<'_>,
    trigger: &Trigger,
    has_workflow_rules: bool,
) -> Option<Decision> {
    // Job-level `when: manual` is allowed to fail unless told otherwise; a manual job
    // from `rules` is not (GitLab's `ignored?`).
    let default_allow = |explicit: &Option<AllowFailure>| -> AllowFailure {
        explicit.clone().unwrap_or(AllowFailure {
            allowed: job.when == When::Manual,
            exit_codes: Vec::new(),
        })
    };
    if let Some(rules) = &job.rules {
        let rule = rules.iter().find(|r| rule_matches(r, scope, trigger))?;
        let when = rule.when.unwrap_or(job.when);
        let allow_failure = match rule.allow_failure {
            Some(b) => AllowFailure {
                allowed: b,
                exit_codes: Vec::new(),
            },
            None => default_allow(&job.allow_failure),
        };
        let start_in = if when == When::Delayed {
            rule.start_in.clone().or_else(|| job.start_in.clone())
        } else {
            None
        };
        return Some(Decision {
            when,
            start_in,
            allow_failure,
            rule_variables: rule.variables.clone(),
            needs: rule.needs.clone().or_else(|| job.needs.clone()),
            interruptible: rule.interruptible.or(job.interruptible).unwrap_or(false),
        });
    }
    let default_only = RefFilter {
        refs: vec!["branches".into(), "tags".into()],
        ..RefFilter::default()
    };
    let only = match &job.only {
        Some(o) => Some(o),
        // With workflow:rules GitLab drops the only/except defaults.
        None if has_workflow_rules => None,
        None => Some(&default_only),
    };
    if let Some(only) = only {
        if !filter_matches(only, scope, trigger).into_iter().all(|b| b) {
            return None;
        }
    }
    if let Some(except) = &job.except {
        if filter_matches(except, scope, trigger)
            .into_iter()
            .any(|b| b)
        {
            return None;
        }
    }
    Some(Decision {
        when: job.when,
        start_in: job.start_in.clone(),
        allow_failure: default_allow(&job.allow_failure),
        rule_variables: Vec::new(),
        needs: job.needs.clone(),
        interruptible: job.interruptible.unwrap_or(false),
    })
}

/// The predefined variables that follow from the ref and source alone (used where no
/// repository or server context exists, such as tests and fuzzing).
pub fn basic_predefined(
    ref_name: &str,
    tag: bool,
    source: &str,
    default_branch: &str,
) -> Vec<(String, String)> {
    let mut v = vec![
        ("CI".to_string(), "true".to_string()),
        ("GITLAB_CI".to_string(), "true".to_string()),
        ("CI_PIPELINE_SOURCE".to_string(), source.to_string()),
        ("CI_COMMIT_REF_NAME".to_string(), ref_name.to_string()),
        ("CI_DEFAULT_BRANCH".to_string(), default_branch.to_string()),
    ];
    if tag {
        v.push(("CI_COMMIT_TAG".into(), ref_name.to_string()));
    } else if source != "merge_request_event" {
        v.push(("CI_COMMIT_BRANCH".into(), ref_name.to_string()));
    }
    v
}
