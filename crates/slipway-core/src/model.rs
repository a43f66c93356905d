//! The pipeline model: the resolved configuration tree checked keyword by keyword and
//! turned into types. Every error names the keyword path the way GitLab does
//! (`jobs:build:artifacts:paths config should be an array of strings`) and the place in
//! the file. `default:` and global variables are applied to jobs here, honouring
//! `inherit:`; hidden jobs (`.name`) are dropped.

use crate::config::a_type;
use crate::diag::Diagnostics;
use crate::duration::parse_seconds;
use crate::expr;
use crate::source::Span;
use crate::yaml::{Map, Node, Value};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// GitLab's stages when `stages:` is not given.
pub const DEFAULT_STAGES: [&str; 3] = ["build", "test", "deploy"];
/// Nested arrays of strings in `script`-like keywords and in `stages` (GitLab 16.9 and
/// later) are flattened up to this depth, as GitLab does.
const MAX_SCRIPT_NESTING: usize = 10;

/// Strings, or arrays of them nested up to GitLab's 10 levels, flattened in order.
fn flatten_strings(node: &Node, depth: usize, out: &mut Vec<String>) -> bool {
    match &node.value {
        Value::String(s) => {
            out.push(s.clone());
            true
        }
        Value::Seq(items) if depth < MAX_SCRIPT_NESTING => {
            items.iter().all(|i| flatten_strings(i, depth + 1, out))
        }
        _ => false,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pipeline {
    /// Every stage in order, `.pre` first and `.post` last.
    pub stages: Vec<String>,
    pub variables: Vec<VariableDef>,
    pub workflow: Workflow,
    /// Visible jobs in file order (after includes are merged).
    pub jobs: Vec<Job>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Workflow {
    pub name: Option<String>,
    pub rules: Option<Vec<Rule>>,
    /// `workflow:auto_cancel:on_new_commit` (`conservative`, `interruptible`, `none`).
    pub auto_cancel_on_new_commit: Option<String>,
    /// `workflow:auto_cancel:on_job_failure` (`none`, `all`).
    pub auto_cancel_on_job_failure: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariableDef {
    pub key: String,
    pub value: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    /// `expand: false` keeps `$` references in the value as written.
    pub expand: bool,
    #[serde(skip)]
    pub span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum When {
    OnSuccess,
    OnFailure,
    Always,
    Manual,
    Delayed,
    Never,
}

impl When {
    pub fn as_str(self) -> &'static str {
        match self {
            When::OnSuccess => "on_success",
            When::OnFailure => "on_failure",
            When::Always => "always",
            When::Manual => "manual",
            When::Delayed => "delayed",
            When::Never => "never",
        }
    }

    fn parse(s: &str) -> Option<When> {
        Some(match s {
            "on_success" => When::OnSuccess,
            "on_failure" => When::OnFailure,
            "always" => When::Always,
            "manual" => When::Manual,
            "delayed" => When::Delayed,
            "never" => When::Never,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    #[serde(rename = "if", skip_serializing_if = "Option::is_none")]
    pub if_expr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes: Option<Changes>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exists: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when: Option<When>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_in: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_failure: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variables: Vec<VariableDef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub needs: Option<Vec<Need>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interruptible: Option<bool>,
    #[serde(skip)]
    pub span: Span,
    #[serde(skip)]
    pub if_span: Span,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Changes {
    pub paths: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compare_to: Option<String>,
}

/// `only:` / `except:` in their full form.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RefFilter {
    pub refs: Vec<String>,
    pub variables: Vec<String>,
    pub changes: Vec<String>,
    #[serde(skip)]
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Need {
    pub job: String,
    pub artifacts: bool,
    pub optional: bool,
    /// `needs:parallel:matrix`: the matrix cells to depend on, each a set of variable values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matrix: Option<Vec<MatrixCell>>,
    #[serde(skip)]
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllowFailure {
    pub allowed: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exit_codes: Vec<i32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Retry {
    pub max: u32,
    /// Failure reasons to retry on (`always` when empty and `max` > 0).
    pub when: Vec<String>,
    pub exit_codes: Vec<i32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parallel {
    Count(u32),
    /// Each entry maps variable names to the list of values to cross.
    Matrix(Vec<MatrixEntry>),
}

/// One `parallel:matrix` entry: variable names with the values to cross.
pub type MatrixEntry = Vec<(String, Vec<String>)>;
/// One matrix cell: a value for each variable.
pub type MatrixCell = Vec<(String, String)>;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Artifacts {
    pub paths: Vec<String>,
    pub exclude: Vec<String>,
    pub untracked: bool,
    /// `on_success`, `on_failure` or `always`.
    pub when: String,
    pub expire_in: Option<String>,
    pub name: Option<String>,
    pub expose_as: Option<String>,
    pub public: Option<bool>,
    pub reports: Reports,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reports {
    pub junit: Vec<String>,
    pub dotenv: Vec<String>,
    pub coverage_report: Option<CoverageReport>,
    /// Other report kinds (sast, cyclonedx, ...), kept by name with their paths.
    pub other: Vec<(String, Vec<String>)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoverageReport {
    pub coverage_format: String,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cache {
    pub key: CacheKey,
    pub paths: Vec<String>,
    /// `pull`, `push` or `pull-push`.
    pub policy: String,
    /// `on_success`, `on_failure` or `always`.
    pub when: String,
    pub untracked: bool,
    pub unprotect: bool,
    pub fallback_keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheKey {
    Literal(String),
    Files {
        files: Vec<String>,
        prefix: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    pub name: String,
    pub url: Option<String>,
    /// `start`, `prepare`, `stop`, `verify` or `access`.
    pub action: String,
    pub deployment_tier: Option<String>,
    pub on_stop: Option<String>,
    pub auto_stop_in: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    pub name: String,
    pub entrypoint: Option<Vec<String>>,
    pub pull_policy: Vec<String>,
    pub user: Option<String>,
    pub platform: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub alias: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    pub command: Option<Vec<String>>,
    pub variables: Vec<VariableDef>,
    pub pull_policy: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Runs `script` on an executor.
    Script,
    /// `trigger:` starts a downstream pipeline.
    Trigger,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub name: String,
    pub kind: JobKind,
    pub stage: String,
    pub before_script: Vec<String>,
    pub script: Vec<String>,
    pub after_script: Vec<String>,
    /// Global variables this job inherits, then its own (which override them).
    pub variables: Vec<VariableDef>,
    /// The names of the variables the job defines itself (not inherited).
    pub own_variables: Vec<String>,
    /// `inherit:variables`: which global variables, and so which `workflow:rules`
    /// variables, the job takes.
    pub inherit_variables: Inherit,
    pub rules: Option<Vec<Rule>>,
    pub only: Option<RefFilter>,
    pub except: Option<RefFilter>,
    /// Job-level `when` (on_success when not given).
    pub when: When,
    /// Whether `when` was written on the job (rules fall back to it).
    pub when_explicit: bool,
    pub start_in: Option<String>,
    pub allow_failure: Option<AllowFailure>,
    pub needs: Option<Vec<Need>>,
    pub dependencies: Option<Vec<String>>,
    pub retry: Retry,
    /// Seconds.
    pub timeout: Option<u64>,
    pub parallel: Option<Parallel>,
    pub artifacts: Option<Artifacts>,
    pub cache: Vec<Cache>,
    pub environment: Option<Environment>,
    pub resource_group: Option<String>,
    pub interruptible: Option<bool>,
    pub tags: Vec<String>,
    pub coverage: Option<String>,
    pub image: Option<Image>,
    pub services: Vec<Service>,
    #[serde(skip)]
    pub span: Span,
    #[serde(skip)]
    pub stage_span: Span,
}

const GLOBAL_KEYWORDS: &[&str] = &[
    "default",
    "include",
    "stages",
    "variables",
    "workflow",
    "image",
    "services",
    "cache",
    "before_script",
    "after_script",
    "spec",
];

const DEFAULT_KEYWORDS: &[&str] = &[
    "after_script",
    "artifacts",
    "before_script",
    "cache",
    "hooks",
    "id_tokens",
    "image",
    "interruptible",
    "retry",
    "services",
    "tags",
    "timeout",
];

const JOB_KEYWORDS: &[&str] = &[
    "after_script",
    "allow_failure",
    "artifacts",
    "before_script",
    "cache",
    "coverage",
    "dast_configuration",
    "dependencies",
    "environment",
    "except",
    "extends",
    "hooks",
    "id_tokens",
    "identity",
    "image",
    "inherit",
    "interruptible",
    "manual_confirmation",
    "needs",
    "only",
    "pages",
    "parallel",
    "release",
    "resource_group",
    "retry",
    "rules",
    "run",
    "script",
    "secrets",
    "services",
    "stage",
    "start_in",
    "tags",
    "timeout",
    "trigger",
    "variables",
    "when",
];

/// Checks values and collects errors; `path` is GitLab's keyword path for messages.
struct Checker {
    diags: Diagnostics,
}

impl Checker {
    fn err(&mut self, span: Span, msg: impl Into<String>) {
        self.diags.push(span, msg);
    }

    fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            Value::String(s) => Some(s.clone()),
            _ => {
                self.err(node.span, format!("{path} config should be a string"));
                None
            }
        }
    }

    /// A string, or a number GitLab would accept as text (durations, names).
    fn stringish(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            Value::String(_) | Value::Int(_) | Value::Float(_) => node.scalar_string(),
            _ => {
                self.err(node.span, format!("{path} config should be a string"));
                None
            }
        }
    }

    fn bool(&mut self, node: &Node, path: &str) -> Option<bool> {
        match node.value {
            Value::Bool(b) => Some(b),
            _ => {
                self.err(
                    node.span,
                    format!("{path} config should be a boolean value"),
                );
                None
            }
        }
    }

    fn strings(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
        match &node.value {
            Value::Seq(items) => {
                let mut out = Vec::new();
                for i in items {
                    match &i.value {
                        Value::String(s) => out.push(s.clone()),
                        _ => {
                            self.err(
                                i.span,
                                format!("{path} config should be an array of strings"),
                            );
                            return None;
                        }
                    }
                }
                Some(out)
            }
            _ => {
                self.err(
                    node.span,
                    format!("{path} config should be an array of strings"),
                );
                None
            }
        }
    }

    fn string_or_strings(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
        match &node.value {
            Value::String(s) => Some(vec![s.clone()]),
            Value::Seq(_) => self.strings(node, path),
            _ => {
                self.err(
                    node.span,
                    format!("{path} config should be a string or an array of strings"),
                );
                None
            }
        }
    }

    fn map<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n Map> {
        match &node.value {
            Value::Map(m) => Some(m),
            _ => {
                self.err(node.span, format!("{path} config should be a hash"));
                None
            }
        }
    }

    fn unknown_keys(&mut self, map: &Map, allowed: &[&str], path: &str) {
        let unknown: Vec<&str> = map
            .iter()
            .filter(|(k, _)| !allowed.contains(&k.name.as_str()))
            .map(|(k, _)| k.name.as_str())
            .collect();
        if let Some(first) = unknown.first() {
            let span = map.key(first).map(|k| k.span).unwrap_or_default();
            self.err(
                span,
                format!(
                    "{path} config contains unknown keys: {}",
                    unknown.join(", ")
                ),
            );
        }
    }

    /// A duration, which GitLab parses only from a string (`'42'`, `1h 30m`); `subject`
    /// starts the message: "jobs:build:timeout config should be a duration".
    fn duration(&mut self, node: &Node, subject: &str) -> Option<(String, u64)> {
        match node.as_str().and_then(|t| parse_seconds(t).map(|s| (t, s))) {
            Some((t, s)) => Some((t.to_string(), s)),
            None => {
                self.err(node.span, format!("{subject} should be a duration"));
                None
            }
        }
    }

    /// `script`-like keywords: a string, or arrays of strings nested up to 10 deep,
    /// flattened.
    fn script(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
        let mut out = Vec::new();
        if flatten_strings(node, 0, &mut out) {
            Some(out)
        } else {
            self.err(
                node.span,
                format!("{path} config should be a string or a nested array of strings up to {MAX_SCRIPT_NESTING} levels deep"),
            );
            None
        }
    }

    fn variables(&mut self, node: &Node, path: &str, global: bool) -> Vec<VariableDef> {
        let mut out = Vec::new();
        if node.is_null() {
            return out;
        }
        let Some(map) = node.as_map() else {
            self.err(
                node.span,
                format!("{path} config should be a hash of key value pairs"),
            );
            return out;
        };
        for (k, v) in map.iter() {
            let mut def = VariableDef {
                key: k.name.clone(),
                value: String::new(),
                description: None,
                options: Vec::new(),
                expand: true,
                span: k.span,
            };
            if k.name.is_empty()
                || !k
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                self.err(
                    k.span,
                    format!("{path} config uses invalid variable name `{}`: names may contain only letters, digits and _", k.name),
                );
                continue;
            }
            let vpath = format!("{path}:{}", k.name);
            match &v.value {
                // GitLab takes any scalar (string, number, boolean) as the value's text.
                Value::String(_) | Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
                    def.value = v.scalar_string().unwrap_or_default();
                }
                Value::Null => {}
                Value::Map(m) => {
                    let allowed: &[&str] = if global {
                        &["value", "description", "options", "expand"]
                    } else {
                        &["value", "expand"]
                    };
                    let unknown: Vec<&str> = m
                        .iter()
                        .map(|(k, _)| k.name.as_str())
                        .filter(|k| !allowed.contains(k))
                        .collect();
                    if let Some(first) = unknown.first() {
                        let span = m.key(first).map(|k| k.span).unwrap_or(v.span);
                        self.err(
                            span,
                            format!(
                                "{vpath} config uses invalid data keys: {}",
                                unknown.join(", ")
                            ),
                        );
                    }
                    if let Some(val) = m.get("value") {
                        match &val.value {
                            Value::String(_) | Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
                                def.value = val.scalar_string().unwrap_or_default()
                            }
                            Value::Null => {}
                            _ => {
                                self.err(val.span, format!("{vpath} config value must be a scalar"))
                            }
                        }
                    }
                    if let Some(d) = m.get("description") {
                        match &d.value {
                            Value::String(_) | Value::Int(_) => def.description = d.scalar_string(),
                            Value::Null => {}
                            _ => self.err(
                                d.span,
                                format!(
                                    "{vpath} config description must be an alphanumeric string"
                                ),
                            ),
                        }
                    }
                    if let Some(o) = m.get("options") {
                        def.options = self
                            .strings(o, &format!("{vpath}:options"))
                            .unwrap_or_default();
                        if !def.options.is_empty() && !def.options.contains(&def.value) {
                            self.err(
                                o.span,
                                format!("{vpath} config value must be present in options"),
                            );
                        }
                    }
                    if let Some(e) = m.get("expand") {
                        def.expand = self.bool(e, &format!("{vpath}:expand")).unwrap_or(true);
                    }
                }
                Value::Seq(_) => {
                    self.err(
                        v.span,
                        format!("{vpath} variable definition must be either a string or a hash"),
                    );
                    continue;
                }
            }
            out.push(def);
        }
        out
    }
}

/// Check the resolved tree and build the pipeline model.
pub fn build(root: &Node) -> Result<Pipeline, Diagnostics> {
    let mut c = Checker {
        diags: Diagnostics::new(),
    };
    let empty = Map::default();
    let map = root.as_map().unwrap_or(&empty);

    // Stages.
    let mut stages: Vec<String> = DEFAULT_STAGES.iter().map(|s| s.to_string()).collect();
    if let Some(node) = map.get("stages") {
        let mut list = Vec::new();
        if flatten_strings(node, 0, &mut list) && node.as_seq().is_some() {
            stages = list;
        } else {
            c.err(
                node.span,
                format!("stages config should be an array of strings or a nested array of strings up to {MAX_SCRIPT_NESTING} levels deep"),
            );
        }
    }
    stages.retain(|s| s != ".pre" && s != ".post");
    let mut seen = HashSet::new();
    stages.retain(|s| seen.insert(s.clone()));
    stages.insert(0, ".pre".to_string());
    stages.push(".post".to_string());

    // Global variables.
    let variables = map
        .get("variables")
        .map(|v| c.variables(v, "variables", true))
        .unwrap_or_default();

    // Workflow.
    let mut workflow = Workflow::default();
    if let Some(w) = map.get("workflow") {
        if let Some(wm) = c.map(w, "workflow") {
            c.unknown_keys(wm, &["rules", "name", "auto_cancel"], "workflow");
            if let Some(n) = wm.get("name") {
                workflow.name = c.stringish(n, "workflow:name");
            }
            if let Some(r) = wm.get("rules") {
                workflow.rules = rules(&mut c, r, "workflow:rules", true);
            }
            if let Some(a) = wm.get("auto_cancel") {
                if let Some(am) = c.map(a, "workflow:auto_cancel") {
                    c.unknown_keys(
                        am,
                        &["on_new_commit", "on_job_failure"],
                        "workflow:auto_cancel",
                    );
                    if let Some(v) = am.get("on_new_commit") {
                        let s = c.string(v, "workflow:auto_cancel:on_new_commit");
                        if let Some(s) = &s {
                            if !["conservative", "interruptible", "none"].contains(&s.as_str()) {
                                c.err(v.span, "workflow:auto_cancel:on_new_commit config must be one of: conservative, interruptible, none");
                            }
                        }
                        workflow.auto_cancel_on_new_commit = s;
                    }
                    if let Some(v) = am.get("on_job_failure") {
                        let s = c.string(v, "workflow:auto_cancel:on_job_failure");
                        if let Some(s) = &s {
                            if !["none", "all"].contains(&s.as_str()) {
                                c.err(v.span, "workflow:auto_cancel:on_job_failure config must be one of: none, all");
                            }
                        }
                        workflow.auto_cancel_on_job_failure = s;
                    }
                }
            }
        }
    }

    // Defaults: `default:` plus the legacy top-level forms. Each is checked once here,
    // and an invalid one is not handed to the jobs (they would repeat its error).
    let mut defaults = Map::default();
    let legacy = [
        "image",
        "services",
        "cache",
        "before_script",
        "after_script",
    ];
    for key in legacy {
        if let Some((k, v)) = map.iter().find(|(k, _)| k.name == key) {
            if check_default(&mut c, key, v, key) {
                defaults.insert(k.clone(), v.clone());
            }
        }
    }
    if let Some(d) = map.get("default") {
        if let Some(dm) = c.map(d, "default") {
            c.unknown_keys(dm, DEFAULT_KEYWORDS, "default");
            for (k, v) in dm.iter() {
                if legacy.contains(&k.name.as_str()) && map.contains(&k.name) {
                    c.err(
                        k.span,
                        format!("{} is defined in top-level and `default:` entry", k.name),
                    );
                    continue;
                }
                if !DEFAULT_KEYWORDS.contains(&k.name.as_str()) {
                    continue;
                }
                if check_default(&mut c, &k.name, v, &format!("default:{}", k.name)) {
                    defaults.insert(k.clone(), v.clone());
                }
            }
        }
    }

    // Jobs: a top-level key that is not a global keyword is a job when it is a hash with
    // `script`, `run` or `trigger`, hidden when it starts with a dot.
    let mut jobs = Vec::new();
    let mut visible = 0;
    for (k, v) in map.iter() {
        if GLOBAL_KEYWORDS.contains(&k.name.as_str()) {
            continue;
        }
        if k.name.starts_with('.') {
            if is_blank(v) {
                c.err(k.span, format!("jobs:{} config can't be blank", k.name));
            }
            continue;
        }
        if k.name.is_empty() {
            c.err(
                k.span,
                "jobs config should contain valid jobs: a job name cannot be empty",
            );
            continue;
        }
        let jm = match v.as_map() {
            Some(jm) if ["script", "run", "trigger"].iter().any(|w| jm.contains(w)) => jm,
            _ => {
                c.err(
                    k.span,
                    format!(
                        "jobs {} config should implement the script:, run:, or trigger: keyword",
                        k.name
                    ),
                );
                continue;
            }
        };
        visible += 1;
        if let Some(job) = job(&mut c, &k.name, k.span, jm, &defaults, &variables, &stages) {
            jobs.push(job);
        }
    }
    if visible == 0 {
        let start = crate::source::Pos { line: 1, col: 1 };
        let span = Span::new(root.span.file, start, start);
        c.err(span, "jobs config should contain at least one visible job");
    }

    check_needs_graph(&mut c, &jobs, &stages);

    if c.diags.is_empty() {
        Ok(Pipeline {
            stages,
            variables,
            workflow,
            jobs,
        })
    } else {
        Err(c.diags.sorted())
    }
}

/// Ruby's `blank?`: what GitLab treats as no value at all.
fn is_blank(node: &Node) -> bool {
    match &node.value {
        Value::Null | Value::Bool(false) => true,
        Value::String(s) => s.trim().is_empty(),
        Value::Seq(items) => items.is_empty(),
        Value::Map(m) => m.is_empty(),
        _ => false,
    }
}

/// Check one default keyword (from `default:` or the legacy top level) once; `false`
/// when it is invalid.
fn check_default(c: &mut Checker, key: &str, node: &Node, path: &str) -> bool {
    let before = c.diags.len();
    match key {
        "before_script" | "after_script" => {
            c.script(node, path);
        }
        "image" => {
            image(c, node, path);
        }
        "services" => {
            services(c, node, path);
        }
        "cache" => {
            caches(c, node, path);
        }
        "artifacts" => {
            artifacts(c, node, path);
        }
        "retry" => {
            retry(c, node, path);
        }
        "timeout" => {
            c.duration(node, &format!("{path} config"));
        }
        "tags" => {
            c.strings(node, path);
        }
        "interruptible" => {
            c.bool(node, path);
        }
        _ => {}
    }
    c.diags.len() == before
}

/// Which defaults and global variables a job takes (`inherit:`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Inherit {
    All,
    Nothing,
    Only(Vec<String>),
}

impl Inherit {
    pub fn allows(&self, key: &str) -> bool {
        match self {
            Inherit::All => true,
            Inherit::Nothing => false,
            Inherit::Only(list) => list.iter().any(|k| k == key),
        }
    }
}

/// `allowed`: the values a list may name (the default keywords for `inherit:default`).
fn inherit_entry(
    c: &mut Checker,
    node: Option<&Node>,
    path: &str,
    allowed: Option<&[&str]>,
) -> Inherit {
    match node {
        None => Inherit::All,
        Some(n) => match &n.value {
            Value::Bool(true) => Inherit::All,
            Value::Bool(false) => Inherit::Nothing,
            Value::Seq(_) => {
                let list = c.strings(n, path).unwrap_or_default();
                if let Some(allowed) = allowed {
                    let unknown: Vec<&str> = list
                        .iter()
                        .map(String::as_str)
                        .filter(|v| !allowed.contains(v))
                        .collect();
                    if !unknown.is_empty() {
                        c.err(
                            n.span,
                            format!(
                                "{path} config contains unknown values: {}",
                                unknown.join(", ")
                            ),
                        );
                    }
                }
                Inherit::Only(list)
            }
            _ => {
                c.err(
                    n.span,
                    format!("{path} should be a bool or array of strings"),
                );
                Inherit::All
            }
        },
    }
}

#[allow(clippy::too_many_arguments)]
fn job(
    c: &mut Checker,
    name: &str,
    span: Span,
    own: &Map,
    defaults: &Map,
    globals: &[VariableDef],
    stages: &[String],
) -> Option<Job> {
    let path = format!("jobs:{name}");
    c.unknown_keys(own, JOB_KEYWORDS, &path);

    let (inherit_default, inherit_vars) = match own.get("inherit") {
        None => (Inherit::All, Inherit::All),
        Some(n) => match c.map(n, &format!("{path}:inherit")) {
            Some(im) => {
                c.unknown_keys(im, &["default", "variables"], &format!("{path}:inherit"));
                (
                    inherit_entry(
                        c,
                        im.get("default"),
                        &format!("{path}:inherit:default"),
                        Some(DEFAULT_KEYWORDS),
                    ),
                    inherit_entry(
                        c,
                        im.get("variables"),
                        &format!("{path}:inherit:variables"),
                        None,
                    ),
                )
            }
            None => (Inherit::All, Inherit::All),
        },
    };
    // The job's own keys, then defaults it does not override (not merged: a job value
    // replaces the default whole).
    let mut m = own.clone();
    for (k, v) in defaults.iter() {
        if !m.contains(&k.name) && inherit_default.allows(&k.name) {
            m.insert(k.clone(), v.clone());
        }
    }
    let get = |k: &str| m.get(k);

    let kind = if own.contains("trigger") {
        JobKind::Trigger
    } else {
        JobKind::Script
    };
    let script = match get("script") {
        Some(s) => c.script(s, &format!("{path}:script")).unwrap_or_default(),
        None if kind == JobKind::Trigger || own.contains("run") => Vec::new(),
        None => {
            c.err(
                span,
                format!("{path} config should implement the script:, run:, or trigger: keyword"),
            );
            Vec::new()
        }
    };
    if kind == JobKind::Script {
        if let (Some(key), Some(s)) = (own.key("script"), own.get("script")) {
            if is_blank(s) {
                c.err(key.span, format!("{path} script can't be blank"));
            }
        }
    }
    let before_script = get("before_script")
        .and_then(|s| c.script(s, &format!("{path}:before_script")))
        .unwrap_or_default();
    let after_script = get("after_script")
        .and_then(|s| c.script(s, &format!("{path}:after_script")))
        .unwrap_or_default();

    let (stage, stage_span) = match own.get("stage") {
        Some(s) => (
            c.stringish(s, &format!("{path}:stage"))
                .unwrap_or_else(|| "test".into()),
            s.span,
        ),
        None => ("test".to_string(), span),
    };
    if !stages.contains(&stage) {
        c.err(
            stage_span,
            format!(
                "{path} chosen stage {stage} does not exist; available stages are {}",
                stages.join(", ")
            ),
        );
    }

    let mut variables: Vec<VariableDef> = globals
        .iter()
        .filter(|v| inherit_vars.allows(&v.key))
        .cloned()
        .collect();
    let mut own_variables = Vec::new();
    if let Some(v) = own.get("variables") {
        for def in c.variables(v, &format!("{path}:variables"), false) {
            variables.retain(|g| g.key != def.key);
            own_variables.push(def.key.clone());
            variables.push(def);
        }
    }

    let job_rules = own
        .get("rules")
        .and_then(|r| rules(c, r, &format!("{path}:rules"), false));
    let only = own
        .get("only")
        .and_then(|o| ref_filter(c, o, &format!("{path}:only")));
    let except = own
        .get("except")
        .and_then(|o| ref_filter(c, o, &format!("{path}:except")));
    if job_rules.is_some() {
        // With rules, `when: delayed` and `start_in` belong in the rules.
        for k in ["only", "except", "start_in"] {
            if let Some(key) = own.key(k) {
                c.err(
                    key.span,
                    format!("{path} config key may not be used with `rules`: {k}"),
                );
            }
        }
    }

    let (when, when_explicit) = match own.get("when") {
        Some(w) => match w.as_str().and_then(When::parse) {
            Some(When::Never) | None => {
                c.err(w.span, format!("{path} when should be one of: on_success, on_failure, always, manual, delayed"));
                (When::OnSuccess, true)
            }
            Some(x) => (x, true),
        },
        None => (When::OnSuccess, false),
    };
    // GitLab's job validations: start_in must be absent when the job is not delayed or has
    // rules (they carry their own, reported above), and a delayed job needs a start_in of
    // at most a week.
    let start_in = match own.get("start_in") {
        Some(_) if job_rules.is_some() => None,
        Some(_) if when != When::Delayed => {
            c.err(
                own.key("start_in").map(|k| k.span).unwrap_or(span),
                format!("{path} start in must be blank when not delayed"),
            );
            None
        }
        Some(s) => {
            let d = c.duration(s, &format!("{path}:start_in config"));
            if let Some((_, secs)) = &d {
                if *secs > 7 * 86_400 {
                    c.err(
                        s.span,
                        format!("{path}:start_in should not exceed the limit of one week"),
                    );
                }
            }
            d.map(|(t, _)| t)
        }
        None => {
            if when == When::Delayed {
                c.err(
                    span,
                    format!("{path} start in should be a duration when `when` is delayed"),
                );
            }
            None
        }
    };

    let allow_failure = own.get("allow_failure").and_then(|a| match &a.value {
        Value::Bool(b) => Some(AllowFailure {
            allowed: *b,
            exit_codes: Vec::new(),
        }),
        Value::Map(am) => {
            c.unknown_keys(am, &["exit_codes"], &format!("{path}:allow_failure"));
            let codes = am
                .get("exit_codes")
                .and_then(|e| exit_codes(c, e, &format!("{path}:allow_failure:exit_codes")))
                .unwrap_or_default();
            Some(AllowFailure {
                allowed: false,
                exit_codes: codes,
            })
        }
        _ => {
            c.err(
                a.span,
                format!("{path}:allow_failure config should be a hash or a boolean value"),
            );
            None
        }
    });

    let needs = own
        .get("needs")
        .and_then(|n| needs(c, n, &format!("{path}:needs")));
    let dependencies = own
        .get("dependencies")
        .and_then(|d| c.strings(d, &format!("{path}:dependencies")));

    let retry = get("retry")
        .map(|r| retry(c, r, &format!("{path}:retry")))
        .unwrap_or_default();
    let timeout = get("timeout")
        .and_then(|t| c.duration(t, &format!("{path}:timeout config")))
        .map(|(_, s)| s);
    let parallel = own
        .get("parallel")
        .and_then(|p| parallel(c, p, &format!("{path}:parallel")));
    let artifacts = get("artifacts").and_then(|a| artifacts(c, a, &format!("{path}:artifacts")));
    let cache = get("cache")
        .map(|a| caches(c, a, &format!("{path}:cache")))
        .unwrap_or_default();
    let environment = own
        .get("environment")
        .and_then(|e| environment(c, e, &format!("{path}:environment")));
    let resource_group = own
        .get("resource_group")
        .and_then(|r| c.stringish(r, &format!("{path}:resource_group")));
    let interruptible =
        get("interruptible").and_then(|i| c.bool(i, &format!("{path}:interruptible")));
    let tags = get("tags")
        .and_then(|t| c.strings(t, &format!("{path}:tags")))
        .unwrap_or_default();
    let coverage = own.get("coverage").and_then(|cv| {
        let s = c.string(cv, &format!("{path}:coverage"))?;
        let inner = s.strip_prefix('/').and_then(|r| r.rsplit_once('/')).map(|(p, _)| p);
        match inner {
            Some(p) if regex::Regex::new(p).is_ok() => Some(s),
            _ => {
                c.err(cv.span, format!("{path}:coverage config must be a regular expression such as /Coverage: (\\d+)%/"));
                None
            }
        }
    });
    let image = get("image").and_then(|i| image(c, i, &format!("{path}:image")));
    let services = get("services")
        .map(|s| services(c, s, &format!("{path}:services")))
        .unwrap_or_default();

    Some(Job {
        name: name.to_string(),
        kind,
        stage,
        before_script,
        script,
        after_script,
        variables,
        own_variables,
        inherit_variables: inherit_vars,
        rules: job_rules,
        only,
        except,
        when,
        when_explicit,
        start_in,
        allow_failure,
        needs,
        dependencies,
        retry,
        timeout,
        parallel,
        artifacts,
        cache,
        environment,
        resource_group,
        interruptible,
        tags,
        coverage,
        image,
        services,
        span,
        stage_span,
    })
}

fn exit_codes(c: &mut Checker, node: &Node, path: &str) -> Option<Vec<i32>> {
    let items: Vec<&Node> = match &node.value {
        Value::Int(_) => vec![node],
        Value::Seq(s) => s.iter().collect(),
        _ => {
            c.err(
                node.span,
                format!("{path} config should be an integer or an array of integers"),
            );
            return None;
        }
    };
    let mut out = Vec::new();
    for i in items {
        match i.value {
            Value::Int(n) if (0..=255).contains(&n) => out.push(n as i32),
            _ => {
                c.err(
                    i.span,
                    format!(
                        "{path} config should be an integer or an array of integers from 0 to 255"
                    ),
                );
                return None;
            }
        }
    }
    Some(out)
}

fn rules(c: &mut Checker, node: &Node, path: &str, workflow: bool) -> Option<Vec<Rule>> {
    let Some(items) = node.as_seq() else {
        c.err(
            node.span,
            format!("{path} config should be an array of hashes"),
        );
        return None;
    };
    let mut out = Vec::new();
    for item in items {
        // A nested array of rules (from `!reference`) is flattened, as GitLab does.
        if let Some(inner) = item.as_seq() {
            let nested = Node::new(Value::Seq(inner.to_vec()), item.span);
            out.extend(rules(c, &nested, path, workflow).unwrap_or_default());
            continue;
        }
        let Some(m) = item.as_map() else {
            c.err(item.span, format!("{path}:rule config should be a hash"));
            continue;
        };
        let allowed: &[&str] = if workflow {
            // GitLab accepts start_in, allow_failure and needs in workflow:rules without
            // effect (gitlab-org/gitlab#436473); start_in still needs `when: delayed`,
            // which workflow:rules cannot use.
            &[
                "if",
                "changes",
                "exists",
                "when",
                "start_in",
                "allow_failure",
                "variables",
                "needs",
                "auto_cancel",
            ]
        } else {
            &[
                "if",
                "changes",
                "exists",
                "when",
                "start_in",
                "allow_failure",
                "variables",
                "needs",
                "interruptible",
            ]
        };
        c.unknown_keys(m, allowed, &format!("{path}:rule"));
        let mut rule = Rule {
            if_expr: None,
            changes: None,
            exists: None,
            when: None,
            start_in: None,
            allow_failure: None,
            variables: Vec::new(),
            needs: None,
            interruptible: None,
            span: item.span,
            if_span: item.span,
        };
        if let Some(i) = m.get("if") {
            if let Some(src) = c.string(i, &format!("{path}:rule:if")) {
                if let Err(e) = expr::parse(&src) {
                    c.err(i.span, format!("{path}:rule:if invalid expression syntax: {e} (at offset {} of `{src}`)", e.offset));
                }
                rule.if_expr = Some(src);
                rule.if_span = i.span;
            }
        }
        if let Some(ch) = m.get("changes") {
            rule.changes = match &ch.value {
                Value::Map(cm) => {
                    c.unknown_keys(
                        cm,
                        &["paths", "compare_to"],
                        &format!("{path}:rule:changes"),
                    );
                    let paths = cm
                        .get("paths")
                        .and_then(|p| c.strings(p, &format!("{path}:rule:changes:paths")))
                        .unwrap_or_default();
                    let compare_to = cm
                        .get("compare_to")
                        .and_then(|p| c.string(p, &format!("{path}:rule:changes:compare_to")));
                    Some(Changes { paths, compare_to })
                }
                _ => c
                    .strings(ch, &format!("{path}:rule:changes"))
                    .map(|paths| Changes {
                        paths,
                        compare_to: None,
                    }),
            };
        }
        if let Some(ex) = m.get("exists") {
            rule.exists = match &ex.value {
                Value::Map(em) => {
                    c.unknown_keys(
                        em,
                        &["paths", "project", "ref"],
                        &format!("{path}:rule:exists"),
                    );
                    em.get("paths")
                        .and_then(|p| c.strings(p, &format!("{path}:rule:exists:paths")))
                }
                _ => c.string_or_strings(ex, &format!("{path}:rule:exists")),
            };
        }
        if let Some(w) = m.get("when") {
            let allowed: &[When] = if workflow {
                &[When::Always, When::Never]
            } else {
                &[
                    When::OnSuccess,
                    When::OnFailure,
                    When::Always,
                    When::Manual,
                    When::Delayed,
                    When::Never,
                ]
            };
            match w.as_str().and_then(When::parse) {
                Some(x) if allowed.contains(&x) => rule.when = Some(x),
                _ => {
                    let names: Vec<&str> = allowed.iter().map(|w| w.as_str()).collect();
                    c.err(
                        w.span,
                        format!(
                            "{path}:rule when unknown value: {}; should be one of: {}",
                            w.scalar_string().unwrap_or_else(|| w.type_name().into()),
                            names.join(", ")
                        ),
                    );
                }
            }
        }
        if let Some(s) = m.get("start_in") {
            let d = c.duration(s, &format!("{path}:rule:start_in config"));
            if let Some((_, secs)) = &d {
                if *secs > 7 * 86_400 {
                    c.err(
                        s.span,
                        format!("{path}:rule:start_in should be a duration up to one week"),
                    );
                }
            }
            rule.start_in = d.map(|(t, _)| t);
            if rule.when != Some(When::Delayed) {
                c.err(
                    s.span,
                    format!("{path}:rule start_in must be blank when not delayed"),
                );
            }
        } else if rule.when == Some(When::Delayed) {
            c.err(
                item.span,
                format!("{path}:rule start_in should be specified for delayed job"),
            );
        }
        if let Some(a) = m.get("allow_failure") {
            rule.allow_failure = c.bool(a, &format!("{path}:rule:allow_failure"));
        }
        if let Some(v) = m.get("variables") {
            rule.variables = c.variables(v, &format!("{path}:rule:variables"), false);
        }
        if let Some(n) = m.get("needs") {
            rule.needs = needs(c, n, &format!("{path}:rule:needs"));
        }
        if let Some(i) = m.get("interruptible") {
            rule.interruptible = c.bool(i, &format!("{path}:rule:interruptible"));
        }
        out.push(rule);
    }
    Some(out)
}

fn ref_filter(c: &mut Checker, node: &Node, path: &str) -> Option<RefFilter> {
    let mut f = RefFilter {
        span: node.span,
        ..RefFilter::default()
    };
    match &node.value {
        Value::String(_) | Value::Seq(_) => {
            f.refs = c.string_or_strings(node, path)?;
        }
        Value::Map(m) => {
            c.unknown_keys(m, &["refs", "variables", "changes", "kubernetes"], path);
            if let Some(r) = m.get("refs") {
                f.refs = c
                    .string_or_strings(r, &format!("{path}:refs"))
                    .unwrap_or_default();
            }
            if let Some(v) = m.get("variables") {
                f.variables = c
                    .string_or_strings(v, &format!("{path}:variables"))
                    .unwrap_or_default();
                for (i, src) in f.variables.iter().enumerate() {
                    if let Err(e) = expr::parse(src) {
                        let span = v
                            .as_seq()
                            .and_then(|s| s.get(i))
                            .map(|n| n.span)
                            .unwrap_or(v.span);
                        c.err(
                            span,
                            format!("{path}:variables invalid expression syntax: {e}"),
                        );
                    }
                }
            }
            if let Some(ch) = m.get("changes") {
                f.changes = c
                    .string_or_strings(ch, &format!("{path}:changes"))
                    .unwrap_or_default();
            }
        }
        _ => {
            c.err(
                node.span,
                format!("{path} config should be an array of strings or a hash"),
            );
            return None;
        }
    }
    for r in &f.refs {
        if let Some(pattern) = r.strip_prefix('/') {
            let body = pattern.rsplit_once('/').map(|(b, _)| b);
            if body.is_none_or(|b| regex::Regex::new(b).is_err()) {
                c.err(
                    node.span,
                    format!("{path} has an invalid regular expression: {r}"),
                );
            }
        }
    }
    Some(f)
}

fn needs(c: &mut Checker, node: &Node, path: &str) -> Option<Vec<Need>> {
    let items: Vec<&Node> = match &node.value {
        Value::Seq(s) => s.iter().collect(),
        Value::String(_) | Value::Map(_) => vec![node],
        _ => {
            c.err(
                node.span,
                format!("{path} config should be an array of jobs or a hash"),
            );
            return None;
        }
    };
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for i in items {
        let need = match &i.value {
            Value::String(s) => Need {
                job: s.clone(),
                artifacts: true,
                optional: false,
                matrix: None,
                span: i.span,
            },
            Value::Map(m) => {
                if m.contains("pipeline") || m.contains("project") {
                    c.err(i.span, format!("{path} on another pipeline or project needs a GitLab server; Slipway supports needs on jobs of the same pipeline"));
                    continue;
                }
                c.unknown_keys(
                    m,
                    &["job", "artifacts", "optional", "parallel"],
                    &format!("{path}:need"),
                );
                let Some(job) = m
                    .get("job")
                    .and_then(|j| c.string(j, &format!("{path}:need:job")))
                else {
                    if !m.contains("job") {
                        c.err(
                            i.span,
                            format!("{path}:need config missing required keys: job"),
                        );
                    }
                    continue;
                };
                let artifacts = m
                    .get("artifacts")
                    .and_then(|a| c.bool(a, &format!("{path}:need:artifacts")))
                    .unwrap_or(true);
                let optional = m
                    .get("optional")
                    .and_then(|a| c.bool(a, &format!("{path}:need:optional")))
                    .unwrap_or(false);
                let matrix = m.get("parallel").and_then(|p| {
                    let pm = c.map(p, &format!("{path}:need:parallel"))?;
                    c.unknown_keys(pm, &["matrix"], &format!("{path}:need:parallel"));
                    let mx = pm.get("matrix")?;
                    parallel_matrix(c, mx, &format!("{path}:need:parallel:matrix")).map(|entries| {
                        entries
                            .into_iter()
                            .flat_map(|e| cross(&e))
                            .collect::<Vec<_>>()
                    })
                });
                Need {
                    job,
                    artifacts,
                    optional,
                    matrix,
                    span: i.span,
                }
            }
            _ => {
                c.err(
                    i.span,
                    format!("{path} config should be an array of jobs or a hash"),
                );
                continue;
            }
        };
        let key = (need.job.clone(), format!("{:?}", need.matrix));
        if !seen.insert(key) {
            c.err(
                need.span,
                format!("{path} contains duplicate jobs: {}", need.job),
            );
            continue;
        }
        out.push(need);
    }
    Some(out)
}

fn retry(c: &mut Checker, node: &Node, path: &str) -> Retry {
    const REASONS: &[&str] = &[
        "always",
        "unknown_failure",
        "script_failure",
        "api_failure",
        "stuck_or_timeout_failure",
        "runner_system_failure",
        "runner_unsupported",
        "stale_schedule",
        "job_execution_timeout",
        "archived_failure",
        "unmet_prerequisites",
        "scheduler_failure",
        "data_integrity_failure",
    ];
    // `what` names the value in messages: "jobs:a:retry config", "jobs:a:retry max".
    let check_max = |c: &mut Checker, n: &Node, what: &str| -> u32 {
        match n.value {
            Value::Int(i) if (0..=2).contains(&i) => i as u32,
            Value::Int(i) if i < 0 => {
                c.err(n.span, format!("{what} must be greater than or equal to 0"));
                0
            }
            Value::Int(_) => {
                c.err(n.span, format!("{what} must be less than or equal to 2"));
                0
            }
            _ => {
                c.err(n.span, format!("{what} is not a number"));
                0
            }
        }
    };
    match &node.value {
        Value::Int(_) => Retry {
            max: check_max(c, node, &format!("{path} config")),
            ..Retry::default()
        },
        Value::Map(m) => {
            c.unknown_keys(m, &["max", "when", "exit_codes"], path);
            let max = m
                .get("max")
                .map(|n| check_max(c, n, &format!("{path} max")))
                .unwrap_or(0);
            let when = m
                .get("when")
                .and_then(|w| c.string_or_strings(w, &format!("{path}:when")))
                .unwrap_or_default();
            let unknown: Vec<&str> = when
                .iter()
                .map(String::as_str)
                .filter(|w| !REASONS.contains(w))
                .collect();
            if !unknown.is_empty() {
                c.err(
                    m.get("when").map(|n| n.span).unwrap_or(node.span),
                    format!(
                        "{path} when contains unknown values: {}",
                        unknown.join(", ")
                    ),
                );
            }
            let exit_codes = m
                .get("exit_codes")
                .and_then(|e| exit_codes(c, e, &format!("{path}:exit_codes")))
                .unwrap_or_default();
            Retry {
                max,
                when,
                exit_codes,
            }
        }
        _ => {
            c.err(
                node.span,
                format!("{path} config has to be either an integer or a hash"),
            );
            Retry::default()
        }
    }
}

fn parallel(c: &mut Checker, node: &Node, path: &str) -> Option<Parallel> {
    match &node.value {
        Value::Int(n) => {
            if (1..=200).contains(n) {
                Some(Parallel::Count(*n as u32))
            } else {
                let bound = if *n < 1 {
                    "greater than or equal to 1"
                } else {
                    "less than or equal to 200"
                };
                c.err(node.span, format!("{path} config must be {bound}"));
                None
            }
        }
        Value::Map(m) => {
            c.unknown_keys(m, &["matrix"], path);
            let mx = m.get("matrix")?;
            let entries = parallel_matrix(c, mx, &format!("{path}:matrix"))?;
            let total: usize = entries.iter().map(|e| cross(e).len()).sum();
            if total > 200 {
                c.err(
                    mx.span,
                    format!("{path}:matrix config generates too many jobs (maximum is 200)"),
                );
                return None;
            }
            Some(Parallel::Matrix(entries))
        }
        _ => {
            c.err(node.span, format!("{path} should be an integer or a hash"));
            None
        }
    }
}

fn parallel_matrix(c: &mut Checker, node: &Node, path: &str) -> Option<Vec<MatrixEntry>> {
    let Some(items) = node.as_seq() else {
        c.err(
            node.span,
            format!("{path} config should be an array of hashes"),
        );
        return None;
    };
    let mut out = Vec::new();
    for item in items {
        let Some(m) = item.as_map() else {
            c.err(
                item.span,
                format!("{path} config should be an array of hashes"),
            );
            return None;
        };
        let mut entry = Vec::new();
        for (k, v) in m.iter() {
            let values = match &v.value {
                Value::Seq(vs) => {
                    let mut out = Vec::new();
                    for x in vs {
                        match &x.value {
                            Value::String(_) | Value::Int(_) | Value::Float(_) => {
                                out.push(x.scalar_string().unwrap_or_default())
                            }
                            _ => {
                                c.err(x.span, format!("{path} config should be an array of hashes with string values or arrays of strings"));
                                return None;
                            }
                        }
                    }
                    out
                }
                Value::String(_) | Value::Int(_) | Value::Float(_) => {
                    vec![v.scalar_string().unwrap_or_default()]
                }
                _ => {
                    c.err(v.span, format!("{path} config should be an array of hashes with string values or arrays of strings"));
                    return None;
                }
            };
            if values.is_empty() {
                c.err(
                    v.span,
                    format!("{path}:{} config should not be empty", k.name),
                );
                return None;
            }
            entry.push((k.name.clone(), values));
        }
        out.push(entry);
    }
    Some(out)
}

/// One job as GitLab creates it from a definition: `test 2/3` for `parallel: 3`,
/// `build: [linux, amd64]` for a matrix cell, or the definition itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub name: String,
    /// `CI_NODE_INDEX`, for parallel jobs only.
    pub node_index: Option<u32>,
    /// `CI_NODE_TOTAL`.
    pub node_total: u32,
    /// The matrix variables of this cell.
    pub matrix: Vec<(String, String)>,
}

impl Job {
    /// The jobs this definition creates, in GitLab's order.
    pub fn instances(&self) -> Vec<Instance> {
        match &self.parallel {
            None => vec![Instance {
                name: self.name.clone(),
                node_index: None,
                node_total: 1,
                matrix: Vec::new(),
            }],
            Some(Parallel::Count(n)) => (1..=*n)
                .map(|i| Instance {
                    name: format!("{} {i}/{n}", self.name),
                    node_index: Some(i),
                    node_total: *n,
                    matrix: Vec::new(),
                })
                .collect(),
            Some(Parallel::Matrix(entries)) => {
                let rows: Vec<Vec<(String, String)>> =
                    entries.iter().flat_map(|e| cross(e)).collect();
                let total = rows.len() as u32;
                rows.into_iter()
                    .enumerate()
                    .map(|(i, row)| Instance {
                        name: matrix_instance_name(&self.name, &row),
                        node_index: Some(i as u32 + 1),
                        node_total: total,
                        matrix: row,
                    })
                    .collect()
            }
        }
    }
}

/// The name GitLab gives the instance of `job` for one matrix cell: `job: [v1, v2]`, the
/// values in the order the cell lists its variables.
pub fn matrix_instance_name(job: &str, cell: &[(String, String)]) -> String {
    let values: Vec<&str> = cell.iter().map(|(_, v)| v.as_str()).collect();
    format!("{job}: [{}]", values.join(", "))
}

/// Every combination of one matrix entry, in GitLab's order (the last variable varies
/// fastest).
pub fn cross(entry: &[(String, Vec<String>)]) -> Vec<MatrixCell> {
    let mut out: Vec<MatrixCell> = vec![Vec::new()];
    for (k, values) in entry {
        let mut next = Vec::with_capacity(out.len() * values.len());
        for prefix in &out {
            for v in values {
                let mut row = prefix.clone();
                row.push((k.clone(), v.clone()));
                next.push(row);
            }
        }
        out = next;
    }
    out
}

fn artifacts(c: &mut Checker, node: &Node, path: &str) -> Option<Artifacts> {
    let m = c.map(node, path)?;
    c.unknown_keys(
        m,
        &[
            "paths",
            "exclude",
            "untracked",
            "when",
            "expire_in",
            "name",
            "expose_as",
            "public",
            "access",
            "reports",
        ],
        path,
    );
    let mut a = Artifacts {
        when: "on_success".into(),
        ..Artifacts::default()
    };
    if let Some(p) = m.get("paths") {
        a.paths = c.strings(p, &format!("{path}:paths")).unwrap_or_default();
    }
    if let Some(p) = m.get("exclude") {
        a.exclude = c.strings(p, &format!("{path}:exclude")).unwrap_or_default();
    }
    if let Some(u) = m.get("untracked") {
        a.untracked = c.bool(u, &format!("{path}:untracked")).unwrap_or(false);
    }
    if let Some(w) = m.get("when") {
        match w.as_str() {
            Some(s @ ("on_success" | "on_failure" | "always")) => a.when = s.to_string(),
            _ => c.err(
                w.span,
                format!("{path} when should be one of: on_success, on_failure, always"),
            ),
        }
    }
    if let Some(e) = m.get("expire_in") {
        // A string: a duration or `never` (GitLab parses durations only from strings).
        match e.as_str() {
            Some(s) if s.eq_ignore_ascii_case("never") || parse_seconds(s).is_some() => {
                a.expire_in = Some(s.to_string())
            }
            _ => c.err(e.span, format!("{path} expire in should be a duration")),
        }
    }
    if let Some(n) = m.get("name") {
        a.name = c.stringish(n, &format!("{path}:name"));
    }
    if let Some(n) = m.get("expose_as") {
        a.expose_as = c.string(n, &format!("{path}:expose_as"));
    }
    if let Some(n) = m.get("public") {
        a.public = c.bool(n, &format!("{path}:public"));
    }
    if let Some(r) = m.get("reports") {
        if let Some(rm) = c.map(r, &format!("{path}:reports")) {
            for (k, v) in rm.iter() {
                let rp = format!("{path}:reports:{}", k.name);
                match k.name.as_str() {
                    "junit" => a.reports.junit = c.string_or_strings(v, &rp).unwrap_or_default(),
                    "dotenv" => a.reports.dotenv = c.string_or_strings(v, &rp).unwrap_or_default(),
                    "coverage_report" => {
                        if let Some(cm) = c.map(v, &rp) {
                            c.unknown_keys(cm, &["coverage_format", "path"], &rp);
                            let fmt = cm
                                .get("coverage_format")
                                .and_then(|f| c.string(f, &format!("{rp}:coverage_format")));
                            let p = cm
                                .get("path")
                                .and_then(|f| c.string(f, &format!("{rp}:path")));
                            match (fmt, p) {
                                (Some(f), Some(p)) => {
                                    if f != "cobertura" && f != "jacoco" {
                                        c.err(
                                            v.span,
                                            format!(
                                                "{rp}:coverage_format must be cobertura or jacoco"
                                            ),
                                        );
                                    }
                                    a.reports.coverage_report = Some(CoverageReport {
                                        coverage_format: f,
                                        path: p,
                                    });
                                }
                                _ => c.err(
                                    v.span,
                                    format!(
                                        "{rp} config missing required keys: coverage_format, path"
                                    ),
                                ),
                            }
                        }
                    }
                    "accessibility"
                    | "annotations"
                    | "api_fuzzing"
                    | "browser_performance"
                    | "coverage_fuzzing"
                    | "container_scanning"
                    | "cyclonedx"
                    | "dast"
                    | "dependency_scanning"
                    | "load_performance"
                    | "metrics"
                    | "requirements"
                    | "sast"
                    | "secret_detection"
                    | "terraform"
                    | "codequality"
                    | "performance"
                    | "license_scanning" => {
                        if let Some(paths) = c.string_or_strings(v, &rp) {
                            a.reports.other.push((k.name.clone(), paths));
                        }
                    }
                    other => c.err(
                        k.span,
                        format!("{path}:reports config contains unknown keys: {other}"),
                    ),
                }
            }
        }
    }
    Some(a)
}

fn caches(c: &mut Checker, node: &Node, path: &str) -> Vec<Cache> {
    match &node.value {
        Value::Seq(items) => {
            if items.len() > 4 {
                c.err(
                    node.span,
                    format!("{path} config no more than 4 caches can be created"),
                );
            }
            items.iter().filter_map(|i| cache(c, i, path)).collect()
        }
        Value::Null => Vec::new(),
        _ => cache(c, node, path).into_iter().collect(),
    }
}

fn cache(c: &mut Checker, node: &Node, path: &str) -> Option<Cache> {
    let m = c.map(node, path)?;
    c.unknown_keys(
        m,
        &[
            "key",
            "paths",
            "policy",
            "when",
            "untracked",
            "unprotect",
            "fallback_keys",
        ],
        path,
    );
    let key = match m.get("key") {
        None => CacheKey::Literal("default".into()),
        Some(k) => match &k.value {
            Value::Map(km) => {
                c.unknown_keys(km, &["files", "prefix"], &format!("{path}:key"));
                let files_node = km.get("files");
                let files = files_node
                    .and_then(|f| c.strings(f, &format!("{path}:key:files")))
                    .unwrap_or_default();
                let at = files_node.map(|f| f.span).unwrap_or(k.span);
                if files.is_empty() {
                    c.err(
                        at,
                        format!("{path}:key:files config requires at least 1 item"),
                    );
                } else if files.len() > 2 {
                    c.err(
                        at,
                        format!("{path}:key:files config has too many items (maximum is 2)"),
                    );
                }
                let prefix = km
                    .get("prefix")
                    .and_then(|p| c.stringish(p, &format!("{path}:key:prefix")));
                CacheKey::Files { files, prefix }
            }
            _ => {
                let s = c.stringish(k, &format!("{path}:key")).unwrap_or_default();
                let unescaped = s
                    .replace("%2F", "/")
                    .replace("%2f", "/")
                    .replace("%2E", ".")
                    .replace("%2e", ".");
                if unescaped.contains('/') {
                    c.err(
                        k.span,
                        format!("{path}:key config cannot contain the \"/\" character"),
                    );
                } else if unescaped == "." || unescaped == ".." {
                    c.err(
                        k.span,
                        format!("{path}:key config cannot be \".\" or \"..\""),
                    );
                }
                CacheKey::Literal(s)
            }
        },
    };
    let paths = m
        .get("paths")
        .and_then(|p| c.strings(p, &format!("{path}:paths")))
        .unwrap_or_default();
    let policy = match m.get("policy") {
        None => "pull-push".to_string(),
        Some(p) => {
            let s = c.string(p, &format!("{path}:policy")).unwrap_or_default();
            // GitLab's (unanchored) check: a policy name, or a variable that picks one at
            // run time.
            let ok = regex::Regex::new(r"pull-push|push|pull|\$\w")
                .map(|re| re.is_match(&s))
                .unwrap_or(false);
            if !ok {
                c.err(
                    p.span,
                    format!("{path} policy should be a variable or one of: pull-push, push, pull"),
                );
            }
            s
        }
    };
    let when = match m.get("when") {
        None => "on_success".to_string(),
        Some(w) => match w.as_str() {
            Some(s @ ("on_success" | "on_failure" | "always")) => s.to_string(),
            _ => {
                c.err(
                    w.span,
                    format!("{path} when should be one of: on_success, on_failure, always"),
                );
                "on_success".to_string()
            }
        },
    };
    let untracked = m
        .get("untracked")
        .and_then(|u| c.bool(u, &format!("{path}:untracked")))
        .unwrap_or(false);
    let unprotect = m
        .get("unprotect")
        .and_then(|u| c.bool(u, &format!("{path}:unprotect")))
        .unwrap_or(false);
    let fallback_keys = m
        .get("fallback_keys")
        .and_then(|f| {
            let keys = c.strings(f, &format!("{path}:fallback_keys"))?;
            if keys.len() > 5 {
                c.err(
                    f.span,
                    format!("{path} fallback keys has to many entries (maximum 5)"),
                );
            }
            Some(keys)
        })
        .unwrap_or_default();
    Some(Cache {
        key,
        paths,
        policy,
        when,
        untracked,
        unprotect,
        fallback_keys,
    })
}

fn environment(c: &mut Checker, node: &Node, path: &str) -> Option<Environment> {
    let mut env = Environment {
        name: String::new(),
        url: None,
        action: "start".into(),
        deployment_tier: None,
        on_stop: None,
        auto_stop_in: None,
    };
    match &node.value {
        Value::String(s) => env.name = s.clone(),
        Value::Map(m) => {
            c.unknown_keys(
                m,
                &[
                    "name",
                    "url",
                    "action",
                    "deployment_tier",
                    "on_stop",
                    "auto_stop_in",
                    "kubernetes",
                ],
                path,
            );
            if let Some(n) = m.get("name") {
                env.name = c.stringish(n, &format!("{path}:name")).unwrap_or_default();
            }
            if let Some(u) = m.get("url") {
                env.url = c.string(u, &format!("{path}:url"));
            }
            if let Some(a) = m.get("action") {
                match a.as_str() {
                    Some(s @ ("start" | "prepare" | "stop" | "verify" | "access")) => env.action = s.into(),
                    _ => c.err(a.span, format!("{path}:action config should be start, stop, prepare, verify, or access")),
                }
            }
            if let Some(t) = m.get("deployment_tier") {
                match t.as_str() {
                    Some(s @ ("production" | "staging" | "testing" | "development" | "other")) => env.deployment_tier = Some(s.into()),
                    _ => c.err(t.span, format!("{path}:deployment_tier must be one of production, staging, testing, development, other")),
                }
            }
            if let Some(o) = m.get("on_stop") {
                env.on_stop = c.string(o, &format!("{path}:on_stop"));
            }
            if let Some(a) = m.get("auto_stop_in") {
                if let Some(s) = c.stringish(a, &format!("{path}:auto_stop_in")) {
                    if s != "never" && parse_seconds(&s).is_none() {
                        c.err(a.span, format!("{path}:auto_stop_in should be a duration"));
                    }
                    env.auto_stop_in = Some(s);
                }
            }
        }
        _ => {
            c.err(
                node.span,
                format!("{path} config should be a hash or a string"),
            );
            return None;
        }
    }
    if env.name.trim().is_empty() {
        c.err(node.span, format!("{path} name can't be blank"));
        return None;
    }
    Some(env)
}

fn pull_policy(c: &mut Checker, node: &Node, path: &str) -> Vec<String> {
    let list = c.string_or_strings(node, path).unwrap_or_default();
    let unknown: Vec<&str> = list
        .iter()
        .map(String::as_str)
        .filter(|p| !["always", "never", "if-not-present"].contains(p))
        .collect();
    if !unknown.is_empty() {
        c.err(
            node.span,
            format!(
                "{path} config contains unknown values: {} (use always, never or if-not-present)",
                unknown.join(", ")
            ),
        );
    }
    list
}

fn image(c: &mut Checker, node: &Node, path: &str) -> Option<Image> {
    match &node.value {
        Value::String(s) => Some(Image {
            name: s.clone(),
            entrypoint: None,
            pull_policy: Vec::new(),
            user: None,
            platform: None,
        }),
        Value::Map(m) => {
            c.unknown_keys(
                m,
                &["name", "entrypoint", "pull_policy", "docker", "kubernetes"],
                path,
            );
            let name = match m.get("name") {
                Some(n) if !is_blank(n) => c.string(n, &format!("{path}:name"))?,
                _ => {
                    c.err(node.span, format!("{path} name can't be blank"));
                    return None;
                }
            };
            let entrypoint = m
                .get("entrypoint")
                .and_then(|e| c.strings(e, &format!("{path}:entrypoint")));
            let pull_policy = m
                .get("pull_policy")
                .map(|p| pull_policy(c, p, &format!("{path}:pull_policy")))
                .unwrap_or_default();
            let mut user = None;
            let mut platform = None;
            if let Some(d) = m
                .get("docker")
                .and_then(|d| c.map(d, &format!("{path}:docker")))
            {
                c.unknown_keys(d, &["user", "platform"], &format!("{path}:docker"));
                user = d
                    .get("user")
                    .and_then(|u| c.string(u, &format!("{path}:docker:user")));
                platform = d
                    .get("platform")
                    .and_then(|u| c.string(u, &format!("{path}:docker:platform")));
            }
            Some(Image {
                name,
                entrypoint,
                pull_policy,
                user,
                platform,
            })
        }
        _ => {
            c.err(
                node.span,
                format!("{path} config should be a hash or a string"),
            );
            None
        }
    }
}

fn services(c: &mut Checker, node: &Node, path: &str) -> Vec<Service> {
    let Some(items) = node.as_seq() else {
        c.err(node.span, format!("{path} config should be a array"));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let sp = format!("{path}:service");
        let service = match &item.value {
            Value::String(s) => Service {
                name: s.clone(),
                alias: Vec::new(),
                entrypoint: None,
                command: None,
                variables: Vec::new(),
                pull_policy: Vec::new(),
            },
            Value::Map(m) => {
                c.unknown_keys(
                    m,
                    &[
                        "name",
                        "alias",
                        "entrypoint",
                        "command",
                        "variables",
                        "pull_policy",
                        "docker",
                        "kubernetes",
                    ],
                    &sp,
                );
                let Some(name) = m
                    .get("name")
                    .filter(|n| !is_blank(n))
                    .and_then(|n| c.string(n, &format!("{sp}:name")))
                else {
                    if m.get("name").is_none_or(is_blank) {
                        c.err(item.span, format!("{sp} name can't be blank"));
                    }
                    continue;
                };
                let alias = m
                    .get("alias")
                    .and_then(|a| c.string(a, &format!("{sp}:alias")))
                    .map(|a| {
                        a.split(',')
                            .map(|s| s.trim().to_string())
                            .filter(|s| !s.is_empty())
                            .collect()
                    })
                    .unwrap_or_default();
                Service {
                    name,
                    alias,
                    entrypoint: m
                        .get("entrypoint")
                        .and_then(|e| c.strings(e, &format!("{sp}:entrypoint"))),
                    command: m
                        .get("command")
                        .and_then(|e| c.strings(e, &format!("{sp}:command"))),
                    variables: m
                        .get("variables")
                        .map(|v| c.variables(v, &format!("{sp}:variables"), false))
                        .unwrap_or_default(),
                    pull_policy: m
                        .get("pull_policy")
                        .map(|p| pull_policy(c, p, &format!("{sp}:pull_policy")))
                        .unwrap_or_default(),
                }
            }
            _ => {
                c.err(
                    item.span,
                    format!("{path}:{i} config should be a hash or a string"),
                );
                continue;
            }
        };
        out.push(service);
    }
    out
}

/// Static checks of `needs` and `dependencies` across jobs: unknown jobs, jobs in later
/// stages, and cycles. Whether a needed job survives rules is checked when planning.
fn check_needs_graph(c: &mut Checker, jobs: &[Job], stages: &[String]) {
    // A need or dependency names a job definition (meaning all of its parallel
    // instances) or one generated instance such as `build: [linux, amd64]`.
    let mut targets: HashMap<String, (usize, Vec<String>)> = HashMap::new();
    for (i, j) in jobs.iter().enumerate() {
        let instances: Vec<String> = j.instances().into_iter().map(|x| x.name).collect();
        if j.parallel.is_some() {
            for name in &instances {
                targets
                    .entry(name.clone())
                    .or_insert_with(|| (i, vec![name.clone()]));
            }
        }
        targets.insert(j.name.clone(), (i, instances));
    }
    let stage_index = |j: &Job| stages.iter().position(|s| *s == j.stage).unwrap_or(0);
    for job in jobs {
        let my_stage = stage_index(job);
        let mut all_needs: Vec<&Need> = job.needs.iter().flatten().collect();
        for r in job.rules.iter().flatten() {
            all_needs.extend(r.needs.iter().flatten());
        }
        for need in all_needs {
            match targets.get(need.job.as_str()) {
                None => {
                    if !need.optional {
                        c.err(need.span, format!("jobs:{} undefined need: {}", job.name, need.job));
                    }
                }
                Some((t, _)) if jobs[*t].parallel.is_some() && need.matrix.is_some() => {
                    // needs:parallel:matrix names instances from the values in the order
                    // the need gives the variables, which must match the job's order.
                    for cell in need.matrix.iter().flatten() {
                        let name = matrix_instance_name(&need.job, cell);
                        if !targets.contains_key(&name) && !need.optional {
                            c.err(
                                need.span,
                                format!("jobs:{} undefined need: {name}", job.name),
                            );
                        }
                    }
                    if stage_index(&jobs[*t]) > my_stage {
                        c.err(
                            need.span,
                            format!("jobs:{} need '{}' is in a later stage ({}); a job can only need jobs in earlier stages or its own", job.name, need.job, jobs[*t].stage),
                        );
                    }
                }
                Some((t, _)) if stage_index(&jobs[*t]) > my_stage => c.err(
                    need.span,
                    format!("jobs:{} need '{}' is in a later stage ({}); a job can only need jobs in earlier stages or its own", job.name, need.job, jobs[*t].stage),
                ),
                Some(_) => {}
            }
        }
        if let Some(deps) = &job.dependencies {
            let needed: Vec<&String> = job
                .needs
                .iter()
                .flatten()
                .filter_map(|n| targets.get(n.job.as_str()))
                .flat_map(|(_, names)| names)
                .collect();
            for d in deps {
                let target = targets.get(d.as_str());
                match target {
                    Some((t, _)) if stage_index(&jobs[*t]) < my_stage => {}
                    _ => c.err(job.span, format!("jobs:{} dependencies: job `{d}` is not defined in current or prior stages", job.name)),
                }
                if job.needs.is_some() {
                    let covered =
                        target.is_some_and(|(_, names)| names.iter().all(|n| needed.contains(&n)));
                    if !covered {
                        c.err(
                            job.span,
                            format!(
                                "jobs:{} dependencies the {d} should be part of needs",
                                job.name
                            ),
                        );
                    }
                }
            }
        }
    }
    // Cycles through `needs` (possible within one stage).
    let index: HashMap<&str, usize> = targets
        .iter()
        .map(|(name, (i, _))| (name.as_str(), *i))
        .collect();
    let mut state = vec![0u8; jobs.len()]; // 0 new, 1 on stack, 2 done
    for start in 0..jobs.len() {
        if state[start] != 0 {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        state[start] = 1;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            let needs: Vec<&Need> = jobs[node].needs.iter().flatten().collect();
            if *next < needs.len() {
                let need = needs[*next];
                *next += 1;
                if let Some(&to) = index.get(need.job.as_str()) {
                    match state[to] {
                        0 => {
                            state[to] = 1;
                            stack.push((to, 0));
                        }
                        1 => {
                            let path: Vec<&str> = stack
                                .iter()
                                .map(|(i, _)| jobs[*i].name.as_str())
                                .skip_while(|n| *n != jobs[to].name)
                                .collect();
                            c.err(
                                need.span,
                                format!(
                                    "the pipeline has circular dependencies: {} -> {}",
                                    path.join(" -> "),
                                    jobs[to].name
                                ),
                            );
                        }
                        _ => {}
                    }
                }
            } else {
                state[node] = 2;
                stack.pop();
            }
        }
    }
}

/// For messages: "a string" / "an array".
pub fn describe(node: &Node) -> String {
    a_type(node)
}
