//! CI/CD variables exactly as GitLab and GitLab Runner treat them: expansion of `$VAR`,
//! `${VAR}` and `$$`, an ordered variable set with GitLab's precedence and its two-stage
//! resolution (server-side sort-and-expand, then the runner's single pass), the `CI_*_SLUG`
//! and `CI_ENVIRONMENT_SLUG` rules, and the predefined `CI_*` variables of a pipeline and a
//! job.
//!
//! Everything here is pure: callers pass in ids, times, URLs and commit details.
//!
//! # Expansion
//!
//! GitLab has two expanders and both are reproduced:
//!
//! * [`expand`] is GitLab Runner's (`os.Expand` with the runner's mapping, in
//!   `common/spec/variables.go`). It runs on the job host before the job starts. Undefined
//!   variables become empty, `$$` becomes `$`, `$` not followed by a name stays, and shell
//!   special names (`$1`, `$@`, ...) become empty.
//! * [`expand_existing`] and [`expand_server`] are GitLab's `ExpandVariables.expand_existing`
//!   and `ExpandVariables.expand` (`lib/expand_variables.rb`), used by the server for
//!   keywords such as `environment:name`, `rules:changes` and `include` paths.
//!   `expand_existing` keeps undefined references as written, `expand_server` removes them.
//!   Neither knows `$$`.
//!
//! Windows-style `%VAR%` references, which the GitLab server also expands, are deliberately
//! not supported anywhere in this module.
//!
//! # Resolution before a job starts
//!
//! [`VariableSet::resolved`] reproduces what a job sees:
//!
//! 1. the server's `Collection#sort_and_expand_all(keep_undefined: true,
//!    expand_file_refs: false, expand_raw_refs: false)` (`Ci::BuildRunnerPresenter`):
//!    variables are topologically sorted by their references and expanded in that order, so
//!    references nest to any depth and may point forward. A circular reference makes the
//!    server send every variable unexpanded.
//! 2. the runner's single pass (`Variables#Expand`): every non-raw value is expanded once
//!    against the values from step 1, undefined references become empty and `$$` becomes `$`.
//!
//! No step loops, so cycles terminate; `expand: false` values are never touched.
//!
//! # Predefined variables
//!
//! [`pipeline_variables`] and [`job_variables`] build GitLab's predefined variables from plain
//! descriptions of the trigger ([`PipelineContext`]) and the job ([`JobContext`]), following
//! `Gitlab::Ci::Variables::Builder`, `Project#predefined_variables`, `MergeRequest#predefined_variables`
//! and the runner's `Build#GetAllVariables`. Set, when the documented condition holds:
//!
//! * `CI`, `GITLAB_CI` (both `true`, for scripts that test them), `CI_SERVER_URL`,
//!   `CI_SERVER_FQDN`, `CI_SERVER_HOST`, `CI_SERVER_PORT`, `CI_SERVER_PROTOCOL`,
//!   `CI_SERVER_NAME` (`Slipway`), `CI_SERVER_VERSION` and its `_MAJOR`/`_MINOR`/`_PATCH`,
//!   `CI_SERVER_REVISION`;
//! * `CI_PROJECT_ID`, `CI_PROJECT_NAME`, `CI_PROJECT_TITLE`, `CI_PROJECT_DESCRIPTION`,
//!   `CI_PROJECT_PATH`, `CI_PROJECT_PATH_SLUG`, `CI_PROJECT_NAMESPACE`,
//!   `CI_PROJECT_ROOT_NAMESPACE`, `CI_PROJECT_URL`, `CI_PROJECT_VISIBILITY`,
//!   `CI_DEFAULT_BRANCH`, `CI_CONFIG_PATH`;
//! * `CI_PIPELINE_IID`, `CI_PIPELINE_SOURCE`, `CI_PIPELINE_CREATED_AT`, `CI_PIPELINE_NAME`,
//!   `CI_PIPELINE_SCHEDULE_DESCRIPTION`, `CI_OPEN_MERGE_REQUESTS`, `GITLAB_USER_*`;
//! * `CI_COMMIT_SHA`, `_SHORT_SHA`, `_BEFORE_SHA`, `_REF_NAME`, `_REF_SLUG`, `_BRANCH` (branch
//!   pipelines only), `_TAG` and `_TAG_MESSAGE` (tag pipelines only), `_MESSAGE`, `_TITLE`,
//!   `_DESCRIPTION`, `_REF_PROTECTED`, `_TIMESTAMP`, `_AUTHOR`;
//! * `CI_MERGE_REQUEST_*` in merge request pipelines;
//! * per job: `CI_JOB_NAME`, `CI_JOB_NAME_SLUG`, `CI_JOB_STAGE`, `CI_JOB_MANUAL`,
//!   `CI_PIPELINE_TRIGGERED`, `CI_NODE_INDEX` (parallel jobs only), `CI_NODE_TOTAL`,
//!   `CI_ENVIRONMENT_NAME`, `_ACTION`, `_TIER`, `_URL`;
//! * once the job runs (GitLab's "job-only" variables): `CI_JOB_ID`, `CI_JOB_URL`,
//!   `CI_JOB_STARTED_AT`, `CI_JOB_IMAGE`, `CI_JOB_STATUS`, `CI_JOB_TIMEOUT`, `CI_PIPELINE_ID`,
//!   `CI_PIPELINE_URL`, `CI_ENVIRONMENT_SLUG`, `CI_PROJECT_DIR`, `CI_BUILDS_DIR`, `CI_SERVER`,
//!   `CI_SHARED_ENVIRONMENT` or `CI_DISPOSABLE_ENVIRONMENT`.
//!
//! Deliberately left out, because they only make sense with a GitLab server or would pretend
//! to be one: `CI_JOB_TOKEN`, `CI_JOB_JWT*`, `CI_REGISTRY*`, `CI_REPOSITORY_URL` (embeds the
//! job token), `CI_DEPLOY_USER`/`_PASSWORD`, `CI_DEPENDENCY_PROXY_*`, `CI_API_V4_URL`,
//! `CI_API_GRAPHQL_URL`, `CI_PAGES_*`, `CI_TEMPLATE_REGISTRY_HOST`, `KUBECONFIG`,
//! `CI_KUBERNETES_ACTIVE`, `CI_DEPLOY_FREEZE`, `CI_GITLAB_FIPS_MODE`, `GITLAB_FEATURES`,
//! `CI_PROJECT_NAMESPACE_ID`, `CI_PROJECT_REPOSITORY_LANGUAGES`,
//! `CI_PROJECT_CLASSIFICATION_LABEL`, `CI_SERVER_SHELL_SSH_*`, `CI_TRIGGER_SHORT_TOKEN`,
//! `CI_RUNNER_*`, `CI_CONCURRENT_*`, `CI_JOB_GROUP_NAME`, `CI_EXTERNAL_PULL_REQUEST_*`,
//! `CHAT_*`, `TRIGGER_PAYLOAD`, `CI_MERGE_REQUEST_APPROVED` and the deprecated `CI_BUILD_*`.

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------
// Expansion
// ---------------------------------------------------------------------------------------

/// Expands `$VAR`, `${VAR}` and `$$` in `value` as GitLab Runner does before a job starts
/// (Go's `os.Expand` with the runner's mapping).
///
/// * `$NAME` takes the longest run of ASCII letters, digits and `_`; `${...}` takes
///   everything up to the next `}` as the name.
/// * Undefined variables expand to the empty string.
/// * `$$` is an escape for a literal `$`.
/// * Shell special names `$*`, `$#`, `$@`, `$!`, `$?` and `$0`..`$9` (also in braces)
///   expand to the empty string; `$-` is looked up like any name.
/// * A `$` not followed by a name (`$/`, `$ `, a trailing `$`) is kept.
/// * Invalid brace syntax is dropped: `${}` disappears, and an unterminated `${` loses
///   those two characters.
///
/// The result is not expanded again.
pub fn expand(value: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    os_expand(value, &mut |name| match runner_special(name) {
        Some(fixed) => fixed.to_string(),
        None => lookup(name).unwrap_or_default(),
    })
}

/// GitLab's `ExpandVariables.expand_existing`: replaces `$VAR` and `${VAR}` whose variable
/// `lookup` knows and keeps every other reference exactly as written.
///
/// Names are `[a-zA-Z_][a-zA-Z0-9_]*`. There is no `$$` escape on this path: in `$$FOO` the
/// second `$` starts a reference.
pub fn expand_existing(value: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    server_expand(value, false, &mut |name| lookup(name))
}

/// GitLab's `ExpandVariables.expand`: like [`expand_existing`], but references to undefined
/// variables are removed. GitLab uses it for `environment:name` and `environment:url`, with
/// the variables first passed through [`VariableSet::sort_and_expand_all`].
pub fn expand_server(value: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    server_expand(value, false, &mut |name| {
        Some(lookup(name).unwrap_or_default())
    })
}

/// What the runner's mapping returns for shell special names, before any lookup.
fn runner_special(name: &str) -> Option<&'static str> {
    match name.as_bytes() {
        [b'$'] => Some("$"),
        [b'*' | b'#' | b'@' | b'!' | b'?' | b'0'..=b'9'] => Some(""),
        _ => None,
    }
}

fn is_shell_special(c: u8) -> bool {
    matches!(
        c,
        b'*' | b'#' | b'$' | b'@' | b'!' | b'?' | b'-' | b'0'..=b'9'
    )
}

fn is_name_byte(c: u8) -> bool {
    c == b'_' || c.is_ascii_alphanumeric()
}

/// Go's `getShellName`: the name at the start of `s` (which follows a `$`) and how many
/// bytes it takes. `(None, w > 0)` is invalid syntax to be dropped, `(None, 0)` means the
/// `$` is not followed by a name.
fn shell_name(s: &str) -> (Option<&str>, usize) {
    let bytes = s.as_bytes();
    let Some(&first) = bytes.first() else {
        return (None, 0);
    };
    if first == b'{' {
        if bytes.len() > 2 && is_shell_special(bytes[1]) && bytes[2] == b'}' {
            return (s.get(1..2), 3);
        }
        for (i, &c) in bytes.iter().enumerate().skip(1) {
            if c == b'}' {
                if i == 1 {
                    return (None, 2);
                }
                return (s.get(1..i), i + 1);
            }
        }
        return (None, 1);
    }
    if is_shell_special(first) {
        return (s.get(0..1), 1);
    }
    let n = bytes.iter().take_while(|c| is_name_byte(**c)).count();
    if n == 0 {
        (None, 0)
    } else {
        (s.get(..n), n)
    }
}

/// A port of Go's `os.Expand` (Go 1.11 and later).
fn os_expand(s: &str, mapping: &mut dyn FnMut(&str) -> String) -> String {
    let bytes = s.as_bytes();
    let mut out: Option<String> = None;
    let mut i = 0;
    let mut j = 0;
    while j < bytes.len() {
        if bytes[j] == b'$' && j + 1 < bytes.len() {
            let buf = out.get_or_insert_with(|| String::with_capacity(2 * s.len()));
            buf.push_str(s.get(i..j).unwrap_or_default());
            let (name, width) = shell_name(s.get(j + 1..).unwrap_or_default());
            match name {
                Some(name) => buf.push_str(&mapping(name)),
                None if width > 0 => {}
                None => buf.push('$'),
            }
            j += width;
            i = j + 1;
        }
        j += 1;
    }
    match out {
        None => s.to_string(),
        Some(mut buf) => {
            buf.push_str(s.get(i..).unwrap_or_default());
            buf
        }
    }
}

/// A piece of a value as the GitLab server's variable regex sees it.
enum Piece<'a> {
    Text(&'a str),
    /// `$$`, which the server leaves for the runner.
    Escape,
    /// `$NAME` or `${NAME}`; `raw` is the reference as written.
    Ref {
        name: &'a str,
        raw: &'a str,
    },
}

/// Splits `s` the way GitLab's `VARIABLES_REGEXP` scans it (without the `%VAR%` form).
/// With `dollar_escape`, `$$` is matched first and kept, as in
/// `Gitlab::Ci::Variables::Collection::Item::VARIABLES_REGEXP`; without it, as in
/// `ExpandVariables::VARIABLES_REGEXP`.
fn server_pieces(s: &str, dollar_escape: bool) -> Vec<Piece<'_>> {
    let bytes = s.as_bytes();
    let mut pieces = Vec::new();
    let mut text_start = 0;
    let mut p = 0;
    let name_len = |from: usize| -> usize {
        match bytes.get(from) {
            Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {
                bytes.get(from..).map_or(0, |rest| {
                    rest.iter().take_while(|c| is_name_byte(**c)).count()
                })
            }
            _ => 0,
        }
    };
    while p < bytes.len() {
        if bytes[p] != b'$' {
            p += 1;
            continue;
        }
        let next = bytes.get(p + 1).copied();
        let matched: Option<(Piece<'_>, usize)> = if dollar_escape && next == Some(b'$') {
            Some((Piece::Escape, p + 2))
        } else if next == Some(b'{') {
            let n = name_len(p + 2);
            if n > 0 && bytes.get(p + 2 + n) == Some(&b'}') {
                let end = p + 3 + n;
                match (s.get(p + 2..p + 2 + n), s.get(p..end)) {
                    (Some(name), Some(raw)) => Some((Piece::Ref { name, raw }, end)),
                    _ => None,
                }
            } else {
                None
            }
        } else {
            let n = name_len(p + 1);
            if n > 0 {
                let end = p + 1 + n;
                match (s.get(p + 1..end), s.get(p..end)) {
                    (Some(name), Some(raw)) => Some((Piece::Ref { name, raw }, end)),
                    _ => None,
                }
            } else {
                None
            }
        };
        match matched {
            Some((piece, end)) => {
                if text_start < p {
                    pieces.push(Piece::Text(s.get(text_start..p).unwrap_or_default()));
                }
                pieces.push(piece);
                p = end;
                text_start = end;
            }
            None => p += 1,
        }
    }
    if text_start < bytes.len() {
        pieces.push(Piece::Text(s.get(text_start..).unwrap_or_default()));
    }
    pieces
}

/// Server-side substitution: `replace` returns the replacement for a name, or `None` to keep
/// the reference as written.
fn server_expand(
    s: &str,
    dollar_escape: bool,
    replace: &mut dyn FnMut(&str) -> Option<String>,
) -> String {
    if !s.contains('$') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    for piece in server_pieces(s, dollar_escape) {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Escape => out.push_str("$$"),
            Piece::Ref { name, raw } => match replace(name) {
                Some(value) => out.push_str(&value),
                None => out.push_str(raw),
            },
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Variables and variable sets
// ---------------------------------------------------------------------------------------

/// One CI/CD variable definition.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Variable {
    pub key: String,
    pub value: String,
    /// `false` for a raw variable (`expand: false` in YAML, "Expand variable reference"
    /// unticked in settings): its value is never expanded.
    pub expand: bool,
    /// The value must be hidden in job logs.
    pub masked: bool,
    /// A file-type variable: the job gets a path to a file holding the value.
    pub file: bool,
}

impl Variable {
    /// An expandable, unmasked, non-file variable.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
            expand: true,
            masked: false,
            file: false,
        }
    }

    /// A raw variable (`expand: false`).
    pub fn raw(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            expand: false,
            ..Self::new(key, value)
        }
    }
}

/// Which references [`VariableSet::sort_and_expand_all`] replaces, mirroring the options of
/// GitLab's `Collection#sort_and_expand_all`. [`Default`] is GitLab's default (undefined
/// references removed, file and raw variables expanded to their values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerExpansion {
    /// Keep references to undefined variables as written instead of removing them.
    pub keep_undefined: bool,
    /// Replace references to file-type variables with their content.
    pub expand_file_refs: bool,
    /// Replace references to raw variables with their value.
    pub expand_raw_refs: bool,
}

impl Default for ServerExpansion {
    fn default() -> Self {
        Self {
            keep_undefined: false,
            expand_file_refs: true,
            expand_raw_refs: true,
        }
    }
}

impl ServerExpansion {
    /// The options `Ci::BuildRunnerPresenter#runner_variables` uses for what it sends to the
    /// runner.
    pub const FOR_RUNNER: Self = Self {
        keep_undefined: true,
        expand_file_refs: false,
        expand_raw_refs: false,
    };
}

/// An ordered collection of variable definitions, like GitLab's
/// `Gitlab::Ci::Variables::Collection`.
///
/// Definitions are kept in insertion order, including every definition of a key: a later
/// definition of the same key takes precedence over earlier ones, so insert sources from the
/// lowest precedence to the highest. GitLab's order for a job, lowest first, is: job
/// predefined, project predefined, pipeline predefined, deployment, YAML (job merged over
/// global), `GITLAB_USER_*`, dotenv reports of dependencies, instance, group and project
/// variables, pipeline (trigger, manual, API) variables, schedule variables.
///
/// Earlier definitions are not forgotten: a value such as `$PATH_EXTRA:more` can still see
/// an earlier `PATH_EXTRA` when the set is resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VariableSet {
    definitions: Vec<Variable>,
}

impl VariableSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a definition; it overrides earlier definitions of the same key.
    pub fn insert(&mut self, variable: Variable) {
        self.definitions.push(variable);
    }

    /// Adds an expandable, unmasked, non-file definition.
    pub fn set(&mut self, key: &str, value: &str) {
        self.insert(Variable::new(key, value));
    }

    /// The definition in force for `key`: the last one inserted.
    pub fn get(&self, key: &str) -> Option<&Variable> {
        self.definitions.iter().rev().find(|v| v.key == key)
    }

    /// The value in force for `key`, unexpanded.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.get(key).map(|v| v.value.as_str())
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Appends every definition of `other`, which therefore takes precedence.
    pub fn extend(&mut self, other: &VariableSet) {
        self.definitions.extend(other.definitions.iter().cloned());
    }

    /// [`VariableSet::extend`], taking `other`'s definitions instead of copying them.
    pub fn append(&mut self, mut other: VariableSet) {
        self.definitions.append(&mut other.definitions);
    }

    /// The definitions in force, one per key, in the order each key was first inserted.
    pub fn iter(&self) -> impl Iterator<Item = &Variable> {
        self.effective_indices()
            .into_iter()
            .filter_map(move |i| self.definitions.get(i))
    }

    /// The number of distinct keys.
    pub fn len(&self) -> usize {
        self.effective_indices().len()
    }

    pub fn is_empty(&self) -> bool {
        self.definitions.is_empty()
    }

    /// Every definition in insertion order, overridden ones included.
    pub fn definitions(&self) -> &[Variable] {
        &self.definitions
    }

    /// For each key in first-insertion order, the index of its last definition.
    fn effective_indices(&self) -> Vec<usize> {
        let mut slot_of: HashMap<&str, usize> = HashMap::new();
        let mut chosen: Vec<usize> = Vec::new();
        for (i, v) in self.definitions.iter().enumerate() {
            match slot_of.get(v.key.as_str()) {
                Some(&slot) => {
                    if let Some(entry) = chosen.get_mut(slot) {
                        *entry = i;
                    }
                }
                None => {
                    slot_of.insert(v.key.as_str(), chosen.len());
                    chosen.push(i);
                }
            }
        }
        chosen
    }

    /// Every value with references to other variables of the set expanded as it reaches a
    /// job: the server's sort-and-expand with [`ServerExpansion::FOR_RUNNER`], then GitLab
    /// Runner's single expansion pass. Recursive references are resolved, a circular
    /// reference leaves the whole set to the runner's single pass (no loop),
    /// `expand: false` values are kept raw, `$$` becomes `$` and undefined references
    /// become empty.
    ///
    /// One pair per key, in first-insertion order. A file-type variable gives its content;
    /// references to it expand to that content too (use [`VariableSet::resolve`] with a
    /// directory to get the runner's file paths instead).
    pub fn resolved(&self) -> Vec<(String, String)> {
        self.resolve(None)
            .into_iter()
            .map(|v| (v.key, v.value))
            .collect()
    }

    /// Like [`VariableSet::resolved`], keeping the flags. With `file_dir`, references to a
    /// file-type variable expand to `file_dir/KEY`, the path where the runner writes its
    /// content (`RUNNER_TEMP_PROJECT_DIR/KEY`); the file-type variable itself still carries
    /// its content, for the executor to write.
    pub fn resolve(&self, file_dir: Option<&str>) -> Vec<Variable> {
        let sent = server_pass(&self.definitions, ServerExpansion::FOR_RUNNER)
            .unwrap_or_else(|_| self.definitions.clone());
        let expanded = runner_pass(sent, file_dir);
        // Each key's last expanded definition, in the order the keys were first set.
        let picked: Vec<usize> = {
            let mut in_force: HashMap<&str, usize> = HashMap::new();
            for (i, v) in expanded.iter().enumerate() {
                in_force.insert(v.key.as_str(), i);
            }
            self.iter()
                .filter_map(|d| in_force.get(d.key.as_str()).copied())
                .collect()
        };
        let mut slots: Vec<Option<Variable>> = expanded.into_iter().map(Some).collect();
        picked
            .into_iter()
            .filter_map(|i| slots.get_mut(i).and_then(Option::take))
            .collect()
    }

    /// GitLab's `Collection#sort_and_expand_all`: a new set, in dependency order, where each
    /// expandable value has its references to other variables of the set expanded. When
    /// there is a circular reference the set is returned unchanged (see
    /// [`VariableSet::circular_references`]).
    pub fn sort_and_expand_all(&self, options: ServerExpansion) -> VariableSet {
        match server_pass(&self.definitions, options) {
            Ok(definitions) => VariableSet { definitions },
            Err(_) => self.clone(),
        }
    }

    /// The groups of keys that reference each other in a cycle, as GitLab reports them.
    /// A variable referring only to its own key is not a cycle.
    pub fn circular_references(&self) -> Vec<Vec<String>> {
        let (_, components) = dependency_components(&self.definitions);
        cycles_of(&self.definitions, &components)
    }

    /// GitLab's error text for circular references, e.g.
    /// `circular variable reference detected: ["A", "B"]`.
    pub fn circular_reference_error(&self) -> Option<String> {
        let cycles = self.circular_references();
        if cycles.is_empty() {
            return None;
        }
        let groups: Vec<String> = cycles.iter().map(|keys| format!("{keys:?}")).collect();
        Some(format!(
            "circular variable reference detected: {}",
            groups.join(", ")
        ))
    }
}

impl FromIterator<Variable> for VariableSet {
    fn from_iter<I: IntoIterator<Item = Variable>>(iter: I) -> Self {
        VariableSet {
            definitions: iter.into_iter().collect(),
        }
    }
}

/// The names a definition references, or `None` when GitLab does not look at it (raw, or
/// without `$` or `%`), as `Collection::Item#depends_on`.
fn depends_on(v: &Variable) -> Option<Vec<&str>> {
    if !v.expand || !(v.value.contains('$') || v.value.contains('%')) {
        return None;
    }
    Some(
        server_pieces(&v.value, true)
            .into_iter()
            .filter_map(|p| match p {
                Piece::Ref { name, .. } => Some(name),
                _ => None,
            })
            .collect(),
    )
}

/// The dependencies of each definition and the strongly connected components of the
/// reference graph, in the order Ruby's `TSort` yields them (dependencies first).
fn dependency_components(defs: &[Variable]) -> (Vec<Option<Vec<&str>>>, Vec<Vec<usize>>) {
    let deps: Vec<Option<Vec<&str>>> = defs.iter().map(depends_on).collect();
    let mut by_key: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, v) in defs.iter().enumerate() {
        by_key.entry(v.key.as_str()).or_default().push(i);
    }
    let children: Vec<Vec<usize>> = deps
        .iter()
        .map(|d| match d {
            None => Vec::new(),
            Some(names) => names
                .iter()
                .flat_map(|n| by_key.get(n).cloned().unwrap_or_default())
                .collect(),
        })
        .collect();
    (deps, strongly_connected_components(&children))
}

fn cycles_of(defs: &[Variable], components: &[Vec<usize>]) -> Vec<Vec<String>> {
    components
        .iter()
        .filter(|c| c.len() > 1)
        .map(|c| {
            c.iter()
                .filter_map(|&i| defs.get(i).map(|v| v.key.clone()))
                .collect()
        })
        .collect()
}

/// Tarjan's algorithm without recursion, visiting nodes and children in order, yielding
/// components as they complete (each listed bottom to top of the stack, as Ruby does).
fn strongly_connected_components(children: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let n = children.len();
    let mut index: Vec<Option<usize>> = vec![None; n];
    let mut low: Vec<usize> = vec![0; n];
    let mut on_stack: Vec<bool> = vec![false; n];
    let mut stack: Vec<usize> = Vec::new();
    let mut components: Vec<Vec<usize>> = Vec::new();
    let mut counter = 0;

    for root in 0..n {
        if index[root].is_some() {
            continue;
        }
        index[root] = Some(counter);
        low[root] = counter;
        counter += 1;
        stack.push(root);
        on_stack[root] = true;
        let mut calls: Vec<(usize, usize)> = vec![(root, 0)];

        while let Some(frame) = calls.last_mut() {
            let v = frame.0;
            let next_child = children.get(v).and_then(|c| c.get(frame.1)).copied();
            if let Some(w) = next_child {
                frame.1 += 1;
                if w >= n {
                    continue;
                }
                match index[w] {
                    None => {
                        index[w] = Some(counter);
                        low[w] = counter;
                        counter += 1;
                        stack.push(w);
                        on_stack[w] = true;
                        calls.push((w, 0));
                    }
                    Some(iw) => {
                        if on_stack[w] {
                            low[v] = low[v].min(iw);
                        }
                    }
                }
            } else {
                calls.pop();
                if let Some(&(parent, _)) = calls.last() {
                    low[parent] = low[parent].min(low[v]);
                }
                if index[v] == Some(low[v]) {
                    let mut component = Vec::new();
                    while let Some(w) = stack.pop() {
                        on_stack[w] = false;
                        component.push(w);
                        if w == v {
                            break;
                        }
                    }
                    component.reverse();
                    components.push(component);
                }
            }
        }
    }
    components
}

/// The server step: `Collection#sort_and_expand_all`. `Err` carries the cycles.
fn server_pass(
    defs: &[Variable],
    options: ServerExpansion,
) -> Result<Vec<Variable>, Vec<Vec<String>>> {
    let (deps, components) = dependency_components(defs);
    let cycles = cycles_of(defs, &components);
    if !cycles.is_empty() {
        return Err(cycles);
    }
    let mut out: Vec<Variable> = Vec::with_capacity(defs.len());
    let mut last: HashMap<String, usize> = HashMap::new();
    for i in components.into_iter().flatten() {
        let Some(def) = defs.get(i) else {
            continue;
        };
        let mut variable = def.clone();
        if matches!(deps.get(i), Some(Some(_))) {
            variable.value = server_expand(&def.value, true, &mut |name| match last
                .get(name)
                .and_then(|&j| out.get(j))
            {
                Some(found) if found.file => options.expand_file_refs.then(|| found.value.clone()),
                Some(found) if !found.expand => {
                    options.expand_raw_refs.then(|| found.value.clone())
                }
                Some(found) => Some(found.value.clone()),
                None if options.keep_undefined => None,
                None => Some(String::new()),
            });
        }
        last.insert(variable.key.clone(), out.len());
        out.push(variable);
    }
    Ok(out)
}

/// The runner step: `Variables#Expand`, one pass against the values as received.
fn runner_pass(mut list: Vec<Variable>, file_dir: Option<&str>) -> Vec<Variable> {
    let values: Vec<Option<String>> = {
        let mut last: HashMap<&str, &Variable> = HashMap::new();
        for v in &list {
            last.insert(v.key.as_str(), v);
        }
        let mut mapping = |name: &str| -> String {
            if let Some(fixed) = runner_special(name) {
                return fixed.to_string();
            }
            match last.get(name) {
                Some(v) if v.file => match file_dir {
                    Some(dir) => file_path(dir, &v.key),
                    None => v.value.clone(),
                },
                Some(v) => v.value.clone(),
                None => String::new(),
            }
        };
        list.iter()
            // Without a `$` there is nothing to expand.
            .map(|v| (v.expand && v.value.contains('$')).then(|| os_expand(&v.value, &mut mapping)))
            .collect()
    };
    for (v, value) in list.iter_mut().zip(values) {
        if let Some(value) = value {
            v.value = value;
        }
    }
    list
}

fn file_path(dir: &str, key: &str) -> String {
    if dir.is_empty() {
        key.to_string()
    } else {
        format!("{}/{}", dir.trim_end_matches('/'), key)
    }
}

// ---------------------------------------------------------------------------------------
// Slugs
// ---------------------------------------------------------------------------------------

/// GitLab's `Gitlab::Utils.slugify`, used for `CI_COMMIT_REF_SLUG`, `CI_JOB_NAME_SLUG` and
/// `CI_PROJECT_PATH_SLUG`: lowercased (full Unicode lowercasing), every character except
/// `a-z` and `0-9` replaced with `-`, cut to 63 bytes, leading and trailing `-` removed.
pub fn ref_slug(s: &str) -> String {
    let slug: String = s
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    slug.trim_matches('-').to_string()
}

/// GitLab's `Gitlab::Slug::Environment#generate`, the value of `CI_ENVIRONMENT_SLUG`:
/// lowercase letters, digits and `-` only, starting with a letter (else prefixed with
/// `env-`), no repeated `-`, at most 24 characters, no trailing `-`. When the slug differs
/// from the name or is longer than 24 characters, it is cut to 17 characters and a
/// 6-character suffix derived from the SHA-256 of the name is appended.
pub fn environment_slug(name: &str) -> String {
    environment_slug_with(name, &|| {
        environment_suffix(&Sha256::digest(name.as_bytes()))
    })
}

fn environment_slug_with(name: &str, suffix: &dyn Fn() -> String) -> String {
    let mapped: String = name
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    let prefixed = if mapped.starts_with(|c: char| c.is_ascii_lowercase()) {
        mapped
    } else {
        format!("env-{mapped}")
    };
    let mut slug = String::with_capacity(prefixed.len());
    for c in prefixed.chars() {
        if !(c == '-' && slug.ends_with('-')) {
            slug.push(c);
        }
    }
    if slug.len() > 24 || slug != name {
        let mut short: String = slug.chars().take(17).collect();
        if !short.ends_with('-') {
            short.push('-');
        }
        short.push_str(&suffix());
        short
    } else {
        slug.strip_suffix('-').map(str::to_string).unwrap_or(slug)
    }
}

/// `digest.to_i(16).to_s(36).last(6)` for a big-endian digest.
fn environment_suffix(digest: &[u8]) -> String {
    const BASE: u64 = 36;
    const SIX: u64 = 36 * 36 * 36 * 36 * 36 * 36;
    const FIVE: u64 = 36 * 36 * 36 * 36 * 36;
    let remainder = digest
        .iter()
        .fold(0u64, |acc, &b| (acc * 256 + u64::from(b)) % SIX);
    // The full base-36 form has at least six digits unless the number is below 36^5.
    let leading_zero_bytes = digest.len().saturating_sub(4);
    let small = digest
        .get(..leading_zero_bytes)
        .is_some_and(|head| head.iter().all(|&b| b == 0))
        && digest.iter().fold(0u64, |acc, &b| {
            acc.saturating_mul(256).saturating_add(u64::from(b))
        }) < FIVE;
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::with_capacity(6);
    let mut n = remainder;
    loop {
        out.push(digits.get((n % BASE) as usize).copied().unwrap_or(b'0'));
        n /= BASE;
        if (small && n == 0) || (!small && out.len() == 6) {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Deployment tier
// ---------------------------------------------------------------------------------------

static TIER_PATTERNS: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    [
        ("(?i)(dev|review|trunk)", "development"),
        (
            "(?i)(test|tst|int|ac(ce|)pt|qa|qc|control|quality)",
            "testing",
        ),
        ("(?i)(st(a|)g|mod(e|)l|pre|demo|non)", "staging"),
        ("(?i)(pr(o|)d|live)", "production"),
    ]
    .into_iter()
    .filter_map(|(pattern, tier)| Regex::new(pattern).ok().map(|re| (re, tier)))
    .collect()
});

/// GitLab's `Environment#guess_tier`: the deployment tier of an environment whose
/// `deployment_tier` is not set, from its name. The first matching rule wins, case
/// insensitive and anywhere in the name: `dev|review|trunk` → `development`;
/// `test|tst|int|ac(ce|)pt|qa|qc|control|quality` → `testing`;
/// `st(a|)g|mod(e|)l|pre|demo|non` → `staging`; `pr(o|)d|live` → `production`; else
/// `other`.
pub fn deployment_tier_from_name(env_name: &str) -> &'static str {
    TIER_PATTERNS
        .iter()
        .find(|(re, _)| re.is_match(env_name))
        .map_or("other", |(_, tier)| tier)
}

// ---------------------------------------------------------------------------------------
// Predefined variables
// ---------------------------------------------------------------------------------------

/// The trigger of a pipeline, as far as predefined variables need it. Callers fill it; the
/// fields left empty or `None` produce the documented fallback or no variable.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PipelineContext {
    /// The server's base URL, e.g. `https://ci.example.com:8443` (`CI_SERVER_URL`, and
    /// `CI_SERVER_HOST`, `_PORT`, `_PROTOCOL`, `_FQDN` derived from it).
    pub server_url: String,
    /// Slipway's version (`CI_SERVER_VERSION` and its numeric parts).
    pub server_version: String,
    /// `CI_SERVER_REVISION`, when known.
    pub server_revision: Option<String>,
    /// `CI_PROJECT_ID`.
    pub project_id: u64,
    /// The project's full path, e.g. `group/sub/app` (`CI_PROJECT_PATH`; namespace, root
    /// namespace and path slug are derived from it).
    pub project_path: String,
    /// `CI_PROJECT_NAME`: the project's path segment (`app`); empty means the last segment
    /// of `project_path`.
    pub project_name: String,
    /// `CI_PROJECT_TITLE`, the human-readable name; `None` means `project_name`.
    pub project_title: Option<String>,
    /// `CI_PROJECT_DESCRIPTION`.
    pub project_description: Option<String>,
    /// `CI_PROJECT_URL`; `None` means `server_url/project_path`, as GitLab's `web_url`.
    pub project_url: Option<String>,
    /// `CI_PROJECT_VISIBILITY`: `private`, `internal` or `public`.
    pub project_visibility: Option<String>,
    /// `CI_DEFAULT_BRANCH`.
    pub default_branch: String,
    /// `CI_CONFIG_PATH`; `None` means `.gitlab-ci.yml`.
    pub config_path: Option<String>,
    /// `CI_COMMIT_SHA`; when empty no `CI_COMMIT_*` variable is set.
    pub commit_sha: String,
    /// `CI_COMMIT_BEFORE_SHA`; `None` (and every merge request pipeline) gives forty zeros.
    pub commit_before_sha: Option<String>,
    /// The full commit message (`CI_COMMIT_MESSAGE`; title and description are derived).
    pub commit_message: String,
    /// `CI_COMMIT_AUTHOR`, in `Name <email>` form.
    pub commit_author: String,
    /// `CI_COMMIT_TIMESTAMP`, ISO 8601.
    pub commit_timestamp: String,
    /// The branch or tag name. Ignored for `CI_COMMIT_REF_NAME` in merge request pipelines,
    /// which use the merge request's source branch.
    pub ref_name: String,
    /// The pipeline runs for a tag.
    pub tag: bool,
    /// `CI_COMMIT_TAG_MESSAGE` of an annotated tag.
    pub tag_message: Option<String>,
    /// `CI_COMMIT_REF_PROTECTED`.
    pub ref_protected: bool,
    /// `CI_PIPELINE_SOURCE`: `push`, `web`, `schedule`, `merge_request_event`, `api`,
    /// `trigger`, `pipeline`, `parent_pipeline`, ...
    pub source: String,
    /// `CI_PIPELINE_ID` (a job-only variable in GitLab, see [`job_variables`]).
    pub pipeline_id: u64,
    /// `CI_PIPELINE_IID`.
    pub pipeline_iid: u64,
    /// `CI_PIPELINE_CREATED_AT`, ISO 8601.
    pub pipeline_created_at: String,
    /// `CI_PIPELINE_NAME`, from `workflow:name`.
    pub pipeline_name: Option<String>,
    /// `CI_PIPELINE_SCHEDULE_DESCRIPTION`, for scheduled pipelines.
    pub schedule_description: Option<String>,
    /// References of open merge requests from this branch, e.g. `group/app!12`
    /// (`CI_OPEN_MERGE_REQUESTS`, at most four).
    pub open_merge_requests: Vec<String>,
    /// Set for merge request pipelines.
    pub mr: Option<MergeRequestContext>,
    /// The user who started the pipeline (`GITLAB_USER_*`).
    pub user: Option<UserContext>,
}

/// The merge request of a merge request pipeline.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct MergeRequestContext {
    /// `CI_MERGE_REQUEST_ID`, instance-wide.
    pub id: u64,
    /// `CI_MERGE_REQUEST_IID`, per project.
    pub iid: u64,
    pub title: String,
    /// Cut to 2700 characters in `CI_MERGE_REQUEST_DESCRIPTION`.
    pub description: String,
    pub source_branch: String,
    pub target_branch: String,
    pub source_branch_protected: bool,
    pub target_branch_protected: bool,
    /// The source project, for merge requests from forks; `None` means the pipeline's
    /// project.
    pub source_project_id: Option<u64>,
    pub source_project_path: Option<String>,
    pub source_project_url: Option<String>,
    /// `detached`, `merged_result` or `merge_train`; empty means `detached`.
    pub event_type: String,
    /// Present only in merged results pipelines; otherwise the variable is empty.
    pub source_branch_sha: Option<String>,
    pub target_branch_sha: Option<String>,
    pub diff_id: Option<u64>,
    pub diff_base_sha: Option<String>,
    /// Usernames.
    pub assignees: Vec<String>,
    pub labels: Vec<String>,
    pub milestone: Option<String>,
    pub draft: bool,
    pub squash_on_merge: bool,
}

/// The user who started a pipeline.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct UserContext {
    pub id: u64,
    pub login: String,
    pub name: String,
    pub email: String,
}

/// A job, as far as predefined variables need it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobContext {
    pub name: String,
    pub stage: String,
    /// `when: manual` or `when: delayed` (`CI_JOB_MANUAL`).
    pub manual: bool,
    /// 1-based index among the instances of a `parallel` job; `None` for other jobs.
    pub node_index: Option<u32>,
    /// The number of instances (`CI_NODE_TOTAL`); 0 is taken as 1.
    pub node_total: u32,
    pub environment: Option<EnvironmentContext>,
    /// Set once the job runs; `None` gives only what GitLab knows when it evaluates job
    /// `rules`.
    pub run: Option<JobRun>,
}

/// The `environment` of a job, with variables in its name already expanded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvironmentContext {
    pub name: String,
    /// `environment:url`, unexpanded: the runner expands it.
    pub url: Option<String>,
    /// `start`, `prepare`, `stop`, `verify` or `access`; `None` means `start`.
    pub action: Option<String>,
    /// `environment:deployment_tier`; `None` means [`deployment_tier_from_name`].
    pub tier: Option<String>,
}

/// What is known once a job is picked up to run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobRun {
    /// `CI_JOB_ID`.
    pub job_id: u64,
    /// `CI_JOB_STARTED_AT`, ISO 8601.
    pub started_at: String,
    /// `CI_PROJECT_DIR`: where the repository is checked out and the job runs.
    pub project_dir: String,
    /// `CI_BUILDS_DIR`: the top-level directory of builds.
    pub builds_dir: String,
    /// `CI_JOB_IMAGE`, the expanded `image:name`.
    pub image: Option<String>,
    /// `CI_JOB_TIMEOUT`, in seconds.
    pub timeout_secs: Option<u64>,
    /// The job runs in an environment created for it alone (`CI_DISPOSABLE_ENVIRONMENT`)
    /// rather than a shared one (`CI_SHARED_ENVIRONMENT`).
    pub disposable: bool,
}

const BLANK_SHA: &str = "0000000000000000000000000000000000000000";
const NO_COMMIT_MESSAGE: &str = "No commit message";
const MR_DESCRIPTION_MAX: usize = 2700;

/// The pipeline-level predefined variables: what GitLab knows when it creates the pipeline
/// ("pre-pipeline" and "pipeline" availability), usable in `workflow:rules`, `rules` and
/// `include:rules`. `CI_PIPELINE_ID` and `CI_PIPELINE_URL` are job-only in GitLab and come
/// from [`job_variables`].
pub fn pipeline_variables(ctx: &PipelineContext) -> VariableSet {
    let mut vars = VariableSet::new();
    server_variables(ctx, &mut vars);
    project_variables(ctx, &mut vars);

    vars.set("CI_PIPELINE_IID", &ctx.pipeline_iid.to_string());
    vars.set("CI_PIPELINE_SOURCE", &ctx.source);
    vars.set("CI_PIPELINE_CREATED_AT", &ctx.pipeline_created_at);
    if let Some(name) = &ctx.pipeline_name {
        vars.set("CI_PIPELINE_NAME", name);
    }
    if let Some(description) = &ctx.schedule_description {
        vars.set("CI_PIPELINE_SCHEDULE_DESCRIPTION", description);
    }

    if !ctx.commit_sha.is_empty() {
        commit_variables(ctx, &mut vars);
    }
    if ctx.tag && ctx.mr.is_none() {
        vars.set("CI_COMMIT_TAG", &ctx.ref_name);
        vars.set(
            "CI_COMMIT_TAG_MESSAGE",
            ctx.tag_message.as_deref().unwrap_or_default(),
        );
    }
    if let Some(mr) = &ctx.mr {
        merge_request_variables(ctx, mr, &mut vars);
    }
    if !ctx.open_merge_requests.is_empty() {
        let refs: Vec<&str> = ctx
            .open_merge_requests
            .iter()
            .take(4)
            .map(String::as_str)
            .collect();
        vars.set("CI_OPEN_MERGE_REQUESTS", &refs.join(","));
    }
    if let Some(user) = &ctx.user {
        vars.set("GITLAB_USER_ID", &user.id.to_string());
        vars.set("GITLAB_USER_EMAIL", &user.email);
        vars.set("GITLAB_USER_LOGIN", &user.login);
        vars.set("GITLAB_USER_NAME", &user.name);
    }
    vars
}

/// The job-level predefined variables, to insert after [`pipeline_variables`]. Without
/// [`JobContext::run`] these are the ones GitLab knows when it evaluates job `rules`; with
/// it, the job-only ones are added (GitLab's persisted-job and runner variables).
pub fn job_variables(pipeline: &PipelineContext, job: &JobContext) -> VariableSet {
    let mut vars = VariableSet::new();
    vars.set("CI_JOB_NAME", &job.name);
    vars.set("CI_JOB_NAME_SLUG", &ref_slug(&job.name));
    vars.set("CI_JOB_STAGE", &job.stage);
    if job.manual {
        vars.set("CI_JOB_MANUAL", "true");
    }
    if pipeline.source == "trigger" {
        vars.set("CI_PIPELINE_TRIGGERED", "true");
    }
    if let Some(index) = job.node_index {
        vars.set("CI_NODE_INDEX", &index.to_string());
    }
    vars.set("CI_NODE_TOTAL", &job.node_total.max(1).to_string());
    if let Some(env) = &job.environment {
        vars.set("CI_ENVIRONMENT_NAME", &env.name);
        vars.set(
            "CI_ENVIRONMENT_ACTION",
            env.action.as_deref().unwrap_or("start"),
        );
        vars.set(
            "CI_ENVIRONMENT_TIER",
            env.tier
                .as_deref()
                .unwrap_or_else(|| deployment_tier_from_name(&env.name)),
        );
    }

    if let Some(run) = &job.run {
        let project_url = project_url(pipeline);
        vars.set("CI_JOB_ID", &run.job_id.to_string());
        vars.set(
            "CI_JOB_URL",
            &format!("{project_url}/-/jobs/{}", run.job_id),
        );
        vars.set("CI_JOB_STARTED_AT", &run.started_at);
        vars.set("CI_PIPELINE_ID", &pipeline.pipeline_id.to_string());
        vars.set(
            "CI_PIPELINE_URL",
            &format!("{project_url}/-/pipelines/{}", pipeline.pipeline_id),
        );
        if let Some(env) = &job.environment {
            vars.set("CI_ENVIRONMENT_SLUG", &environment_slug(&env.name));
        }
        if let Some(image) = &run.image {
            vars.set("CI_JOB_IMAGE", image);
        }
        vars.set("CI_BUILDS_DIR", &run.builds_dir);
        vars.set("CI_PROJECT_DIR", &run.project_dir);
        vars.set("CI_SERVER", "yes");
        vars.set("CI_JOB_STATUS", "running");
        if let Some(timeout) = run.timeout_secs {
            vars.set("CI_JOB_TIMEOUT", &timeout.to_string());
        }
        if run.disposable {
            vars.set("CI_DISPOSABLE_ENVIRONMENT", "true");
        } else {
            vars.set("CI_SHARED_ENVIRONMENT", "true");
        }
    }

    // Last, unexpanded, so that the runner can expand it with everything above available.
    if let Some(url) = job.environment.as_ref().and_then(|e| e.url.as_ref()) {
        vars.set("CI_ENVIRONMENT_URL", url);
    }
    vars
}

fn server_variables(ctx: &PipelineContext, vars: &mut VariableSet) {
    let url = ctx.server_url.trim_end_matches('/');
    vars.set("CI", "true");
    vars.set("GITLAB_CI", "true");
    let parts = parse_server_url(url);
    if let Some(parts) = &parts {
        vars.set("CI_SERVER_FQDN", &parts.fqdn);
    }
    vars.set("CI_SERVER_URL", url);
    if let Some(parts) = &parts {
        vars.set("CI_SERVER_HOST", &parts.host);
        if let Some(port) = parts.port {
            vars.set("CI_SERVER_PORT", &port.to_string());
        }
        vars.set("CI_SERVER_PROTOCOL", &parts.protocol);
    }
    vars.set("CI_SERVER_NAME", "Slipway");
    vars.set("CI_SERVER_VERSION", &ctx.server_version);
    let [major, minor, patch] = version_parts(&ctx.server_version);
    vars.set("CI_SERVER_VERSION_MAJOR", &major);
    vars.set("CI_SERVER_VERSION_MINOR", &minor);
    vars.set("CI_SERVER_VERSION_PATCH", &patch);
    if let Some(revision) = &ctx.server_revision {
        vars.set("CI_SERVER_REVISION", revision);
    }
}

fn project_variables(ctx: &PipelineContext, vars: &mut VariableSet) {
    let path = ctx.project_path.trim_matches('/');
    let (namespace, last_segment) = path.rsplit_once('/').unwrap_or(("", path));
    let name = if ctx.project_name.is_empty() {
        last_segment
    } else {
        ctx.project_name.as_str()
    };
    let root_namespace = namespace.split('/').next().unwrap_or_default();

    vars.set("CI_PROJECT_ID", &ctx.project_id.to_string());
    vars.set("CI_PROJECT_NAME", name);
    vars.set(
        "CI_PROJECT_TITLE",
        ctx.project_title.as_deref().unwrap_or(name),
    );
    if let Some(description) = &ctx.project_description {
        vars.set("CI_PROJECT_DESCRIPTION", description);
    }
    vars.set("CI_PROJECT_PATH", path);
    vars.set("CI_PROJECT_PATH_SLUG", &ref_slug(path));
    vars.set("CI_PROJECT_NAMESPACE", namespace);
    vars.set("CI_PROJECT_ROOT_NAMESPACE", root_namespace);
    vars.set("CI_PROJECT_URL", &project_url(ctx));
    if let Some(visibility) = &ctx.project_visibility {
        vars.set("CI_PROJECT_VISIBILITY", visibility);
    }
    vars.set("CI_DEFAULT_BRANCH", &ctx.default_branch);
    vars.set(
        "CI_CONFIG_PATH",
        ctx.config_path.as_deref().unwrap_or(".gitlab-ci.yml"),
    );
}

fn commit_variables(ctx: &PipelineContext, vars: &mut VariableSet) {
    let ref_name = match &ctx.mr {
        Some(mr) => mr.source_branch.as_str(),
        None => ctx.ref_name.as_str(),
    };
    let before_sha = match (&ctx.mr, &ctx.commit_before_sha) {
        (None, Some(sha)) if !sha.is_empty() => sha.as_str(),
        _ => BLANK_SHA,
    };
    vars.set("CI_COMMIT_SHA", &ctx.commit_sha);
    vars.set(
        "CI_COMMIT_SHORT_SHA",
        &ctx.commit_sha.chars().take(8).collect::<String>(),
    );
    vars.set("CI_COMMIT_BEFORE_SHA", before_sha);
    vars.set("CI_COMMIT_REF_NAME", ref_name);
    vars.set("CI_COMMIT_REF_SLUG", &ref_slug(ref_name));
    if !ctx.tag && ctx.mr.is_none() {
        vars.set("CI_COMMIT_BRANCH", &ctx.ref_name);
    }
    vars.set("CI_COMMIT_MESSAGE", &ctx.commit_message);
    vars.set("CI_COMMIT_TITLE", &commit_title(&ctx.commit_message));
    vars.set(
        "CI_COMMIT_DESCRIPTION",
        &commit_description(&ctx.commit_message),
    );
    vars.set(
        "CI_COMMIT_REF_PROTECTED",
        if ctx.ref_protected { "true" } else { "false" },
    );
    vars.set("CI_COMMIT_TIMESTAMP", &ctx.commit_timestamp);
    vars.set("CI_COMMIT_AUTHOR", &ctx.commit_author);
}

fn merge_request_variables(
    ctx: &PipelineContext,
    mr: &MergeRequestContext,
    vars: &mut VariableSet,
) {
    let bool_str = |b: bool| if b { "true" } else { "false" };
    let event_type = if mr.event_type.is_empty() {
        "detached"
    } else {
        mr.event_type.as_str()
    };
    vars.set("CI_MERGE_REQUEST_EVENT_TYPE", event_type);
    vars.set(
        "CI_MERGE_REQUEST_SOURCE_BRANCH_SHA",
        mr.source_branch_sha.as_deref().unwrap_or_default(),
    );
    vars.set(
        "CI_MERGE_REQUEST_TARGET_BRANCH_SHA",
        mr.target_branch_sha.as_deref().unwrap_or_default(),
    );
    if let Some(diff_id) = mr.diff_id {
        vars.set("CI_MERGE_REQUEST_DIFF_ID", &diff_id.to_string());
        vars.set(
            "CI_MERGE_REQUEST_DIFF_BASE_SHA",
            mr.diff_base_sha.as_deref().unwrap_or_default(),
        );
    }

    let project_path = ctx.project_path.trim_matches('/');
    let project_url = project_url(ctx);
    vars.set("CI_MERGE_REQUEST_ID", &mr.id.to_string());
    vars.set("CI_MERGE_REQUEST_IID", &mr.iid.to_string());
    vars.set(
        "CI_MERGE_REQUEST_REF_PATH",
        &format!("refs/merge-requests/{}/head", mr.iid),
    );
    vars.set("CI_MERGE_REQUEST_PROJECT_ID", &ctx.project_id.to_string());
    vars.set("CI_MERGE_REQUEST_PROJECT_PATH", project_path);
    vars.set("CI_MERGE_REQUEST_PROJECT_URL", &project_url);
    vars.set("CI_MERGE_REQUEST_TARGET_BRANCH_NAME", &mr.target_branch);
    vars.set(
        "CI_MERGE_REQUEST_TARGET_BRANCH_PROTECTED",
        bool_str(mr.target_branch_protected),
    );
    vars.set("CI_MERGE_REQUEST_TITLE", &mr.title);
    let (description, truncated) = truncate_description(&mr.description);
    vars.set("CI_MERGE_REQUEST_DESCRIPTION", &description);
    vars.set(
        "CI_MERGE_REQUEST_DESCRIPTION_IS_TRUNCATED",
        bool_str(truncated),
    );
    if !mr.assignees.is_empty() {
        vars.set("CI_MERGE_REQUEST_ASSIGNEES", &to_sentence(&mr.assignees));
    }
    if let Some(milestone) = &mr.milestone {
        vars.set("CI_MERGE_REQUEST_MILESTONE", milestone);
    }
    if !mr.labels.is_empty() {
        vars.set("CI_MERGE_REQUEST_LABELS", &mr.labels.join(","));
    }
    vars.set(
        "CI_MERGE_REQUEST_SQUASH_ON_MERGE",
        bool_str(mr.squash_on_merge),
    );
    vars.set("CI_MERGE_REQUEST_DRAFT", bool_str(mr.draft));
    vars.set(
        "CI_MERGE_REQUEST_SOURCE_PROJECT_ID",
        &mr.source_project_id.unwrap_or(ctx.project_id).to_string(),
    );
    vars.set(
        "CI_MERGE_REQUEST_SOURCE_PROJECT_PATH",
        mr.source_project_path.as_deref().unwrap_or(project_path),
    );
    vars.set(
        "CI_MERGE_REQUEST_SOURCE_PROJECT_URL",
        mr.source_project_url.as_deref().unwrap_or(&project_url),
    );
    vars.set("CI_MERGE_REQUEST_SOURCE_BRANCH_NAME", &mr.source_branch);
    vars.set(
        "CI_MERGE_REQUEST_SOURCE_BRANCH_PROTECTED",
        bool_str(mr.source_branch_protected),
    );
}

fn project_url(ctx: &PipelineContext) -> String {
    match &ctx.project_url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => format!(
            "{}/{}",
            ctx.server_url.trim_end_matches('/'),
            ctx.project_path.trim_matches('/')
        ),
    }
}

/// Ruby's `String#blank?`: empty or only whitespace.
fn is_blank(s: &str) -> bool {
    s.chars().all(char::is_whitespace)
}

/// GitLab's `Commit#full_title`: the first line (up to `\r` or `\n`), or
/// `No commit message` for a blank message.
fn commit_title(message: &str) -> String {
    if is_blank(message) {
        return NO_COMMIT_MESSAGE.to_string();
    }
    message
        .split(['\r', '\n'])
        .next()
        .unwrap_or_default()
        .to_string()
}

/// GitLab's `Commit#description`: the whole message when the title is 100 characters or
/// longer, else the message after the first `\n` with one trailing newline removed.
fn commit_description(message: &str) -> String {
    if commit_title(message).chars().count() >= 100 {
        return message.to_string();
    }
    if is_blank(message) {
        return NO_COMMIT_MESSAGE.to_string();
    }
    match message.split_once('\n') {
        Some((_, rest)) => chomp(rest).to_string(),
        None => String::new(),
    }
}

/// Ruby's `String#chomp`: removes one trailing `\r\n`, `\n` or `\r`.
fn chomp(s: &str) -> &str {
    s.strip_suffix("\r\n")
        .or_else(|| s.strip_suffix('\n'))
        .or_else(|| s.strip_suffix('\r'))
        .unwrap_or(s)
}

/// ActiveSupport's `String#truncate(2700)`, as `MergeRequest#truncate_mr_description`.
fn truncate_description(description: &str) -> (String, bool) {
    if description.chars().count() > MR_DESCRIPTION_MAX {
        let kept: String = description.chars().take(MR_DESCRIPTION_MAX - 3).collect();
        (format!("{kept}..."), true)
    } else {
        (description.to_string(), false)
    }
}

/// ActiveSupport's `Array#to_sentence`: `a`, `a and b`, `a, b, and c`.
fn to_sentence(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [a, b] => format!("{a} and {b}"),
        [init @ .., last] => format!("{}, and {last}", init.join(", ")),
    }
}

struct ServerUrlParts {
    protocol: String,
    host: String,
    port: Option<u16>,
    fqdn: String,
}

/// Splits a server URL into the parts GitLab exposes. `None` when it has no `scheme://`.
fn parse_server_url(url: &str) -> Option<ServerUrlParts> {
    let (scheme, rest) = url.split_once("://")?;
    let protocol = scheme.to_ascii_lowercase();
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let path = tail
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .trim_end_matches('/');
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let (host, explicit_port) = if host_port.starts_with('[') {
        match host_port.find(']') {
            Some(end) => {
                let (host, after) = host_port.split_at(end + 1);
                (host, after.strip_prefix(':'))
            }
            None => (host_port, None),
        }
    } else {
        match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match explicit_port.filter(|p| !p.is_empty()) {
        Some(p) => Some(p.parse::<u16>().ok()?),
        None => match protocol.as_str() {
            "https" => Some(443),
            "http" => Some(80),
            _ => None,
        },
    };
    let custom_port = match port {
        Some(p) if p != 80 && p != 443 => format!(":{p}"),
        _ => String::new(),
    };
    Some(ServerUrlParts {
        fqdn: format!("{host}{custom_port}{path}"),
        host: host.to_string(),
        port,
        protocol,
    })
}

static VERSION_RE: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"([0-9]+)\.([0-9]+)\.([0-9]+)").ok());

/// `Gitlab::VersionInfo.parse`: the first `X.Y.Z` in the string, else `0.0.0`; numbers
/// without leading zeros.
fn version_parts(version: &str) -> [String; 3] {
    let normalize = |digits: &str| {
        let trimmed = digits.trim_start_matches('0');
        if trimmed.is_empty() {
            "0".to_string()
        } else {
            trimmed.to_string()
        }
    };
    let captures = VERSION_RE.as_ref().and_then(|re| re.captures(version));
    let part = |i: usize| {
        captures
            .as_ref()
            .and_then(|c| c.get(i))
            .map_or_else(|| "0".to_string(), |m| normalize(m.as_str()))
    };
    [part(1), part(2), part(3)]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn lookup_in<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .rev()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    fn set_of(pairs: &[(&str, &str)]) -> VariableSet {
        pairs.iter().map(|(k, v)| Variable::new(*k, *v)).collect()
    }

    fn resolved_value(set: &VariableSet, key: &str) -> String {
        set.resolved()
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .unwrap()
    }

    // --- expand (GitLab Runner) --------------------------------------------------------

    #[test]
    fn expand_dollar_and_brace_forms() {
        let vars = [("FOO", "foo"), ("BAR_2", "bar")];
        let lookup = lookup_in(&vars);
        assert_eq!(expand("$FOO", &lookup), "foo");
        assert_eq!(expand("${FOO}", &lookup), "foo");
        assert_eq!(expand("a-$FOO-${BAR_2}-z", &lookup), "a-foo-bar-z");
        assert_eq!(expand("${FOO}bar", &lookup), "foobar");
        assert_eq!(expand("no references", &lookup), "no references");
    }

    #[test]
    fn expand_name_is_longest_run_of_name_characters() {
        let vars = [("FOO", "foo")];
        let lookup = lookup_in(&vars);
        // `$FOObar` names FOObar, which is undefined.
        assert_eq!(expand("$FOObar", &lookup), "");
        assert_eq!(expand("$FOO-bar", &lookup), "foo-bar");
        assert_eq!(expand("$FOO.bar", &lookup), "foo.bar");
        assert_eq!(expand("$FOO/bar", &lookup), "foo/bar");
    }

    #[test]
    fn expand_undefined_variables_become_empty() {
        // gitlab-runner TestVariablesExpansionWithSource: `$undefined` → "".
        let lookup = lookup_in(&[]);
        assert_eq!(expand("$undefined", &lookup), "");
        assert_eq!(expand("value_of_${undefined}", &lookup), "value_of_");
        // gitlab-org/gitlab#16442: `A$B/C` reaches the job as `A/C`.
        assert_eq!(expand("A$B/C", &lookup), "A/C");
    }

    #[test]
    fn expand_double_dollar_is_a_literal_dollar() {
        // gitlab-runner TestSpecialVariablesExpansion and gitlab-org/gitlab#16442.
        let lookup = lookup_in(&[("B", "bee")]);
        assert_eq!(expand("$$", &lookup), "$");
        assert_eq!(expand("A$$B/C", &lookup), "A$B/C");
        assert_eq!(expand("$$$B", &lookup), "$bee");
        assert_eq!(expand("${$}", &lookup), "$");
    }

    #[test]
    fn expand_keeps_a_dollar_not_followed_by_a_name() {
        let lookup = lookup_in(&[]);
        assert_eq!(expand("$/dsa", &lookup), "$/dsa");
        assert_eq!(expand("cost: 5$", &lookup), "cost: 5$");
        assert_eq!(expand("$ sign", &lookup), "$ sign");
        assert_eq!(expand("$", &lookup), "$");
        assert_eq!(expand("$é", &lookup), "$é");
    }

    #[test]
    fn expand_shell_special_names_are_empty() {
        // gitlab-runner TestSpecialVariablesExpansion: `aa$@bb` and `aa${@}bb` → `aabb`.
        let lookup = |_: &str| Some("never".to_string());
        assert_eq!(expand("aa$@bb", &lookup), "aabb");
        assert_eq!(expand("aa${@}bb", &lookup), "aabb");
        assert_eq!(expand("$*$#$!$?", &lookup), "");
        // `$1` is a positional parameter: one digit only.
        assert_eq!(expand("$10", &lookup), "0");
        assert_eq!(expand("${1}", &lookup), "");
    }

    #[test]
    fn expand_invalid_braces_are_dropped() {
        let vars = [("b", "B"), ("FOO BAR", "spaced")];
        let lookup = lookup_in(&vars);
        assert_eq!(expand("a${}b", &lookup), "ab");
        assert_eq!(expand("a${b", &lookup), "ab");
        // Anything up to `}` is a name in braces.
        assert_eq!(expand("${FOO BAR}", &lookup), "spaced");
        assert_eq!(expand("${b}}", &lookup), "B}");
    }

    #[test]
    fn expand_does_not_expand_the_result_again() {
        let vars = [("A", "$B"), ("B", "b")];
        assert_eq!(expand("$A", &lookup_in(&vars)), "$B");
    }

    #[test]
    fn expand_passes_unicode_through() {
        let vars = [("NAME", "wörld")];
        let lookup = lookup_in(&vars);
        assert_eq!(
            expand("héllo ${NAME} ✓ $NAME€", &lookup),
            "héllo wörld ✓ wörld€"
        );
        assert_eq!(expand("${ü}x", &lookup), "x");
    }

    // --- expand_existing / expand_server (GitLab server) -------------------------------

    #[test]
    fn expand_existing_follows_gitlab_spec() {
        // spec/lib/expand_variables_spec.rb, "common variable expansion".
        let vars = [
            ("variable", "value"),
            ("variable2", "result"),
            ("CI_COMMIT_REF_NAME", "feature/add-review-apps"),
        ];
        let lookup = lookup_in(&vars);
        assert_eq!(expand_existing("key", &lookup), "key");
        assert_eq!(expand_existing("key$variable", &lookup), "keyvalue");
        assert_eq!(expand_existing("key${variable}", &lookup), "keyvalue");
        assert_eq!(
            expand_existing("key$variable$variable2", &lookup),
            "keyvalueresult"
        );
        assert_eq!(
            expand_existing("key${variable2}${variable}", &lookup),
            "keyresultvalue"
        );
        assert_eq!(
            expand_existing("review/$CI_COMMIT_REF_NAME", &lookup),
            "review/feature/add-review-apps"
        );
        // "nested expansion is not expanded".
        let nested = [
            ("variable", "value"),
            ("variable2", "$variable3"),
            ("variable3", "result"),
        ];
        assert_eq!(
            expand_existing("key$variable$variable2", &lookup_in(&nested)),
            "keyvalue$variable3"
        );
    }

    #[test]
    fn expand_existing_keeps_undefined_references() {
        // spec/lib/expand_variables_spec.rb, "#expand_existing with missing variables".
        let vars = [("variable", "value")];
        let lookup = lookup_in(&vars);
        assert_eq!(expand_existing("key$variable2", &lookup), "key$variable2");
        assert_eq!(
            expand_existing("key${variable}${variable2}", &lookup),
            "keyvalue${variable2}"
        );
        assert_eq!(expand_existing("$1 ${1} ${} $", &lookup), "$1 ${1} ${} $");
    }

    #[test]
    fn expand_existing_has_no_double_dollar_escape() {
        // ExpandVariables::VARIABLES_REGEXP has no `$$` alternative.
        let vars = [("FOO", "x")];
        assert_eq!(expand_existing("$$FOO", &lookup_in(&vars)), "$x");
    }

    #[test]
    fn expand_server_removes_undefined_references() {
        // spec/lib/expand_variables_spec.rb, "#expand with missing variables".
        let vars = [("variable", "value")];
        let lookup = lookup_in(&vars);
        assert_eq!(expand_server("key$variable2", &lookup), "key");
        assert_eq!(
            expand_server("key${variable}${variable2}", &lookup),
            "keyvalue"
        );
        assert_eq!(expand_server("review/$MISSING-x", &lookup), "review/-x");
    }

    // --- VariableSet ---------------------------------------------------------------------

    #[test]
    fn later_definitions_take_precedence() {
        // gitlab-runner TestMultipleUsageOfAKey: config < default < job.
        let mut set = VariableSet::new();
        set.set("key", "from-config");
        set.set("key", "from-default");
        assert_eq!(set.value("key"), Some("from-default"));
        set.set("key", "from-job");
        assert_eq!(set.value("key"), Some("from-job"));
        assert_eq!(set.get("missing"), None);
        assert!(set.contains_key("key"));
    }

    #[test]
    fn iter_lists_keys_in_first_insertion_order_with_the_value_in_force() {
        let mut set = VariableSet::new();
        set.set("A", "1");
        set.set("B", "2");
        set.set("A", "3");
        set.set("C", "4");
        let listed: Vec<(&str, &str)> = set
            .iter()
            .map(|v| (v.key.as_str(), v.value.as_str()))
            .collect();
        assert_eq!(listed, [("A", "3"), ("B", "2"), ("C", "4")]);
        assert_eq!(set.len(), 3);
        assert_eq!(set.definitions().len(), 4);
        assert!(!set.is_empty());
        assert!(VariableSet::new().is_empty());
    }

    #[test]
    fn extend_appends_with_higher_precedence() {
        let mut base = set_of(&[("A", "base"), ("B", "base")]);
        let higher = set_of(&[("B", "higher"), ("C", "new")]);
        base.extend(&higher);
        assert_eq!(base.value("A"), Some("base"));
        assert_eq!(base.value("B"), Some("higher"));
        assert_eq!(base.value("C"), Some("new"));
    }

    #[test]
    fn insert_keeps_the_flags_of_the_definition_in_force() {
        let mut set = VariableSet::new();
        set.insert(Variable {
            masked: true,
            ..Variable::new("TOKEN", "secret-value")
        });
        set.insert(Variable::raw("RAW", "$x"));
        set.insert(Variable {
            file: true,
            ..Variable::new("CERT", "pem")
        });
        assert!(set.get("TOKEN").unwrap().masked);
        assert!(!set.get("RAW").unwrap().expand);
        assert!(set.get("CERT").unwrap().file);
        set.set("TOKEN", "plain");
        assert!(!set.get("TOKEN").unwrap().masked);
    }

    #[test]
    fn resolved_expands_references_between_variables() {
        let set = set_of(&[("HOST", "example.com"), ("URL", "https://$HOST/${HOST}")]);
        assert_eq!(
            set.resolved(),
            [
                ("HOST".to_string(), "example.com".to_string()),
                (
                    "URL".to_string(),
                    "https://example.com/example.com".to_string()
                )
            ]
        );
    }

    #[test]
    fn resolved_follows_nested_references_in_any_order() {
        // collection_spec "simple expansions" and "out-of-order expansion".
        let set = set_of(&[
            ("variable4", "key$variable$variable3"),
            ("variable3", "key$variable$variable2"),
            ("variable", "value"),
            ("variable2", "result"),
        ]);
        assert_eq!(resolved_value(&set, "variable3"), "keyvalueresult");
        assert_eq!(resolved_value(&set, "variable4"), "keyvaluekeyvalueresult");
    }

    #[test]
    fn resolved_removes_undefined_references() {
        let set = set_of(&[("A", "x-$UNDEFINED-${ALSO_UNDEFINED}-y")]);
        assert_eq!(resolved_value(&set, "A"), "x---y");
    }

    #[test]
    fn resolved_turns_double_dollar_into_dollar() {
        // collection_spec "variable value referencing password with special characters",
        // followed by the runner's pass.
        let set = set_of(&[
            ("VAR", "$PASSWORD"),
            ("PASSWORD", "my_password$$_%%_$A"),
            ("A", "value"),
        ]);
        assert_eq!(resolved_value(&set, "PASSWORD"), "my_password$_%%_value");
        assert_eq!(resolved_value(&set, "VAR"), "my_password$_%%_value");
        let escaped = set_of(&[("HOME", "/root"), ("V", "$${HOME} $$HOME")]);
        assert_eq!(resolved_value(&escaped, "V"), "${HOME} $HOME");
    }

    #[test]
    fn resolved_keeps_raw_values() {
        // gitlab-runner TestRawVariableExpansion.
        let mut set = set_of(&[("base", "base_value")]);
        set.insert(Variable::raw("related", "value_of_${base}"));
        assert_eq!(resolved_value(&set, "related"), "value_of_${base}");
        let mut expandable = set_of(&[("base", "base_value")]);
        expandable.set("related", "value_of_${base}");
        assert_eq!(
            resolved_value(&expandable, "related"),
            "value_of_base_value"
        );
    }

    #[test]
    fn references_to_raw_variables_insert_the_raw_value_unexpanded() {
        // The example in Collection#expand_value: A normal, B raw `raw-$A`, C `$B`.
        let mut set = set_of(&[("A", "normal")]);
        set.insert(Variable::raw("B", "raw-$A"));
        set.set("C", "$B");
        assert_eq!(resolved_value(&set, "C"), "raw-$A");
        assert_eq!(resolved_value(&set, "B"), "raw-$A");
    }

    #[test]
    fn circular_references_terminate_and_are_reported() {
        // collection_spec "cyclic dependency causes original array to be returned".
        let set = set_of(&[
            ("variable", "$variable2"),
            ("variable2", "$variable3"),
            ("variable3", "key$variable$variable2"),
        ]);
        assert_eq!(set.sort_and_expand_all(ServerExpansion::default()), set);
        assert_eq!(
            set.circular_references(),
            [vec!["variable", "variable2", "variable3"]]
        );
        assert_eq!(
            set.circular_reference_error().unwrap(),
            r#"circular variable reference detected: ["variable", "variable2", "variable3"]"#
        );
        // The runner's single pass still runs on the unexpanded values.
        assert_eq!(resolved_value(&set, "variable"), "$variable3");
        assert_eq!(resolved_value(&set, "variable3"), "key$variable2$variable3");
    }

    #[test]
    fn a_cycle_leaves_unrelated_chains_to_the_single_runner_pass() {
        let set = set_of(&[
            ("A", "$B"),
            ("B", "$A"),
            ("C", "$D"),
            ("D", "$E"),
            ("E", "e"),
        ]);
        assert_eq!(resolved_value(&set, "C"), "$E");
        assert_eq!(resolved_value(&set, "D"), "e");
        assert_eq!(set_of(&[("A", "$A")]).circular_references().len(), 0);
        assert_eq!(
            set.circular_reference_error()
                .map(|e| e.contains(r#"["A", "B"]"#)),
            Some(true)
        );
    }

    #[test]
    fn self_reference_sees_the_earlier_definition() {
        let mut set = set_of(&[("PATH_EXTRA", "/opt/bin")]);
        set.set("PATH_EXTRA", "${PATH_EXTRA}:/usr/local/bin");
        assert_eq!(
            resolved_value(&set, "PATH_EXTRA"),
            "/opt/bin:/usr/local/bin"
        );
    }

    #[test]
    fn self_reference_without_earlier_definition_is_expanded_once_by_the_runner() {
        // The server keeps `$A` (undefined when A is expanded); the runner then replaces it
        // with A's value as received, once.
        let set = set_of(&[("A", "$A-x")]);
        assert_eq!(resolved_value(&set, "A"), "$A-x-x");
    }

    #[test]
    fn file_variable_references_expand_to_the_file_path() {
        // gitlab-runner TestFileVariablesExpansion.
        let mut set = VariableSet::new();
        set.insert(Variable {
            file: true,
            ..Variable::new("a_file_var", "some top secret stuff")
        });
        set.set("ref_file_var", "${a_file_var}.txt");
        let with_paths = set.resolve(Some("/foo/bar"));
        assert_eq!(with_paths[0].value, "some top secret stuff");
        assert!(with_paths[0].file);
        assert_eq!(with_paths[1].value, "/foo/bar/a_file_var.txt");
        assert_eq!(
            resolved_value(&set, "ref_file_var"),
            "some top secret stuff.txt"
        );
    }

    #[test]
    fn resolve_keeps_masked_flags() {
        let mut set = VariableSet::new();
        set.insert(Variable {
            masked: true,
            ..Variable::new("SECRET", "abc$$def")
        });
        let resolved = set.resolve(None);
        assert!(resolved[0].masked);
        assert_eq!(resolved[0].value, "abc$def");
    }

    #[test]
    fn sort_and_expand_all_follows_gitlab_spec() {
        // spec/lib/gitlab/ci/variables/collection_spec.rb.
        let escaped = set_of(&[
            ("variable3", "key_${variable}_$${HOME}_%%HOME%%"),
            ("variable", "$variable2"),
            ("variable2", "value"),
        ]);
        let kept = escaped.sort_and_expand_all(ServerExpansion {
            keep_undefined: true,
            ..ServerExpansion::default()
        });
        assert_eq!(kept.value("variable3"), Some("key_value_$${HOME}_%%HOME%%"));

        let discarding = set_of(&[("variable2", "key_${variable4}_$${HOME}_%%HOME%%")]);
        assert_eq!(
            discarding
                .sort_and_expand_all(ServerExpansion::default())
                .value("variable2"),
            Some("key__$${HOME}_%%HOME%%")
        );

        let mut raw = set_of(&[("variable1", "value1")]);
        raw.insert(Variable::raw("raw_var", "raw-$variable1"));
        raw.set("nonraw_var", "nonraw-$variable1");
        raw.set("variable2", "$raw_var and $nonraw_var");
        let default = raw.sort_and_expand_all(ServerExpansion::default());
        assert_eq!(
            default.value("variable2"),
            Some("raw-$variable1 and nonraw-value1")
        );
        let no_raw_refs = raw.sort_and_expand_all(ServerExpansion {
            expand_raw_refs: false,
            ..ServerExpansion::default()
        });
        assert_eq!(
            no_raw_refs.value("variable2"),
            Some("$raw_var and nonraw-value1")
        );

        let mut files = VariableSet::new();
        files.insert(Variable {
            file: true,
            ..Variable::new("file_var", "secret content")
        });
        files.set("variable1", "var one");
        files.set("variable2", "var two $variable1 $file_var");
        assert_eq!(
            files
                .sort_and_expand_all(ServerExpansion::default())
                .value("variable2"),
            Some("var two var one secret content")
        );
        assert_eq!(
            files
                .sort_and_expand_all(ServerExpansion::FOR_RUNNER)
                .value("variable2"),
            Some("var two var one $file_var")
        );
    }

    #[test]
    fn long_reference_chains_resolve_without_deep_recursion() {
        let n = 20_000;
        let mut set = VariableSet::new();
        for i in 0..n {
            set.set(&format!("V{i}"), &format!("$V{}", i + 1));
        }
        set.set(&format!("V{n}"), "end");
        assert_eq!(resolved_value(&set, "V0"), "end");
    }

    // --- Slugs ---------------------------------------------------------------------------

    #[test]
    fn ref_slug_replaces_everything_but_lowercase_letters_and_digits() {
        // GitLab docs and ci/build_spec: `improve/awesome` → `improve-awesome`.
        assert_eq!(ref_slug("improve/awesome"), "improve-awesome");
        assert_eq!(ref_slug("v17.2.0-rc42-ee"), "v17-2-0-rc42-ee");
        assert_eq!(ref_slug("Feature/ADD_Login"), "feature-add-login");
        assert_eq!(ref_slug("a--b"), "a--b");
    }

    #[test]
    fn ref_slug_of_empty_and_symbol_only_names_is_empty() {
        assert_eq!(ref_slug(""), "");
        assert_eq!(ref_slug("/._-!@#"), "");
        assert_eq!(ref_slug("--main--"), "main");
    }

    #[test]
    fn ref_slug_is_cut_to_63_bytes_before_trimming() {
        let long = "a".repeat(100);
        assert_eq!(ref_slug(&long), "a".repeat(63));
        // The 63rd character is `-`, which is then trimmed.
        let edge = format!("{}/{}", "b".repeat(62), "c".repeat(10));
        assert_eq!(ref_slug(&edge), "b".repeat(62));
        // Leading dashes count towards the 63 before being trimmed.
        let leading = format!("{}{}", "/".repeat(60), "abcdef");
        assert_eq!(ref_slug(&leading), "abc");
    }

    #[test]
    fn ref_slug_lowercases_unicode_before_replacing() {
        assert_eq!(ref_slug("café"), "caf");
        assert_eq!(ref_slug("über-feature"), "ber-feature");
        // KELVIN SIGN lowercases to an ASCII `k`.
        assert_eq!(ref_slug("\u{212A}ilo"), "kilo");
        // `İ` lowercases to `i` and a combining dot, which becomes `-`.
        assert_eq!(ref_slug("İx"), "i-x");
        assert_eq!(ref_slug("日本語"), "");
    }

    #[test]
    fn ref_slug_keeps_valid_names() {
        assert_eq!(ref_slug("main"), "main");
        assert_eq!(ref_slug("release-1-2"), "release-1-2");
    }

    #[test]
    fn environment_suffix_of_gitlab_stubbed_digest() {
        // spec: ('a' * 64).to_i(16).to_s(36).last(6) gives 'q517sa'.
        assert_eq!(environment_suffix(&[0xaa; 32]), "q517sa");
        assert_eq!(environment_suffix(&[0u8; 32]), "0");
        let mut small = [0u8; 32];
        small[31] = 35;
        assert_eq!(environment_suffix(&small), "z");
        small[30] = 1;
        assert_eq!(environment_suffix(&small), "83");
    }

    #[test]
    fn environment_slug_matches_gitlab_spec_vectors() {
        // spec/lib/gitlab/slug/environment_spec.rb, with SHA2 stubbed to 'a' * 64.
        let stub = || "q517sa".to_string();
        let vectors = [
            ("staging-12345678901234567", "staging-123456789-q517sa"),
            ("9-staging-123456789012345", "env-9-staging-123-q517sa"),
            ("staging-1234567890123456", "staging-1234567890123456"),
            ("staging-1234567890123456-", "staging-123456789-q517sa"),
            ("production", "production"),
            ("PRODUCTION", "production-q517sa"),
            ("review/1-foo", "review-1-foo-q517sa"),
            ("1-foo", "env-1-foo-q517sa"),
            ("1/foo", "env-1-foo-q517sa"),
            ("foo-", "foo"),
            ("foo--bar", "foo-bar-q517sa"),
            ("foo**bar", "foo-bar-q517sa"),
            ("*-foo", "env-foo-q517sa"),
            ("staging-12345678-", "staging-12345678"),
            ("staging-12345678-01234567", "staging-12345678-q517sa"),
            ("", "env-q517sa"),
        ];
        for (name, slug) in vectors {
            assert_eq!(environment_slug_with(name, &stub), slug, "name {name:?}");
        }
    }

    #[test]
    fn environment_slug_uses_sha256_of_the_name() {
        // Suffixes computed independently: sha256 → integer → base 36 → last 6.
        assert_eq!(environment_slug("PRODUCTION"), "production-vl4voz");
        assert_eq!(environment_slug("review/1-foo"), "review-1-foo-9tdj0u");
        assert_eq!(environment_slug("1-foo"), "env-1-foo-1k46wz");
        assert_eq!(environment_slug(""), "env-qhkd3p");
        assert_eq!(
            environment_slug("staging-12345678901234567"),
            "staging-123456789-s729ne"
        );
        assert_eq!(
            environment_slug("Review Apps/feature-Branch"),
            "review-apps-featu-bu32tn"
        );
    }

    #[test]
    fn environment_slug_keeps_valid_short_names() {
        assert_eq!(environment_slug("production"), "production");
        assert_eq!(
            environment_slug("staging-1234567890123456"),
            "staging-1234567890123456"
        );
        assert_eq!(environment_slug("review-"), "review");
    }

    #[test]
    fn environment_slug_of_long_and_unicode_names() {
        assert_eq!(environment_slug("ümlaut-env"), "env-mlaut-env-gvubqk");
        assert_eq!(
            environment_slug(&"a".repeat(100)),
            "aaaaaaaaaaaaaaaaa-fw40zy"
        );
        for name in [
            "日本",
            "\u{212A}",
            "a/b/c/d/e/f/g/h/i/j/k/l/m/n",
            "İİİ",
            "-",
        ] {
            let slug = environment_slug(name);
            assert!(slug.len() <= 24, "{slug}");
            assert!(slug.starts_with(|c: char| c.is_ascii_lowercase()), "{slug}");
            assert!(!slug.ends_with('-') && !slug.contains("--"), "{slug}");
            assert!(slug
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
        }
    }

    // --- Deployment tier -----------------------------------------------------------------

    #[test]
    fn deployment_tier_matches_gitlab_spec_vectors() {
        // spec/models/environment_spec.rb, '#guess_tier'.
        let vectors = [
            ("review/feature", "development"),
            ("review/product", "development"),
            ("DEV", "development"),
            ("development", "development"),
            ("trunk", "development"),
            ("test", "testing"),
            ("TEST", "testing"),
            ("testing-prd", "testing"),
            ("acceptance-testing", "testing"),
            ("production-test", "testing"),
            ("test-production", "testing"),
            ("QC", "testing"),
            ("qa-env-2", "testing"),
            ("gstg", "staging"),
            ("stage", "staging"),
            ("Model", "staging"),
            ("MODL", "staging"),
            ("Pre-production", "staging"),
            ("Demo", "staging"),
            ("blue-kit-stage", "staging"),
            ("nonprod", "staging"),
            ("non-live", "staging"),
            ("gprd", "production"),
            ("gprd-cny", "production"),
            ("Production/eu", "production"),
            ("store-produce", "production"),
            ("unproductive", "production"),
            ("production/www.gitlab.com", "production"),
            ("Live", "production"),
            ("canary", "other"),
            ("other", "other"),
            ("EXP", "other"),
            ("something-else", "other"),
            ("", "other"),
        ];
        for (name, tier) in vectors {
            assert_eq!(deployment_tier_from_name(name), tier, "name {name:?}");
        }
    }

    // --- Predefined variables ------------------------------------------------------------

    fn push_context() -> PipelineContext {
        PipelineContext {
            server_url: "https://ci.example.com".into(),
            server_version: "0.1.0".into(),
            project_id: 7,
            project_path: "group/sub/app".into(),
            default_branch: "main".into(),
            commit_sha: "0123456789abcdef0123456789abcdef01234567".into(),
            commit_before_sha: Some("fedcba9876543210fedcba9876543210fedcba98".into()),
            commit_message: "Add login form\n\nWith validation.\n".into(),
            commit_author: "Ada <ada@example.com>".into(),
            commit_timestamp: "2024-05-01T10:00:00+00:00".into(),
            ref_name: "feature/Login".into(),
            source: "push".into(),
            pipeline_id: 1001,
            pipeline_iid: 12,
            pipeline_created_at: "2024-05-01T10:01:00Z".into(),
            ..PipelineContext::default()
        }
    }

    #[test]
    fn branch_push_pipeline_variables() {
        let vars = pipeline_variables(&push_context());
        let v = |k| vars.value(k);
        assert_eq!(v("CI"), Some("true"));
        assert_eq!(v("GITLAB_CI"), Some("true"));
        assert_eq!(v("CI_SERVER_NAME"), Some("Slipway"));
        assert_eq!(v("CI_COMMIT_BRANCH"), Some("feature/Login"));
        assert_eq!(v("CI_COMMIT_REF_NAME"), Some("feature/Login"));
        assert_eq!(v("CI_COMMIT_REF_SLUG"), Some("feature-login"));
        assert_eq!(v("CI_COMMIT_SHORT_SHA"), Some("01234567"));
        assert_eq!(
            v("CI_COMMIT_BEFORE_SHA"),
            Some("fedcba9876543210fedcba9876543210fedcba98")
        );
        assert_eq!(v("CI_COMMIT_TITLE"), Some("Add login form"));
        assert_eq!(v("CI_COMMIT_DESCRIPTION"), Some("\nWith validation."));
        assert_eq!(v("CI_COMMIT_REF_PROTECTED"), Some("false"));
        assert_eq!(v("CI_COMMIT_AUTHOR"), Some("Ada <ada@example.com>"));
        assert_eq!(v("CI_PIPELINE_SOURCE"), Some("push"));
        assert_eq!(v("CI_PIPELINE_IID"), Some("12"));
        assert_eq!(v("CI_DEFAULT_BRANCH"), Some("main"));
        assert_eq!(v("CI_CONFIG_PATH"), Some(".gitlab-ci.yml"));
        for absent in [
            "CI_COMMIT_TAG",
            "CI_COMMIT_TAG_MESSAGE",
            "CI_MERGE_REQUEST_IID",
            "CI_OPEN_MERGE_REQUESTS",
            "CI_PIPELINE_ID",
            "CI_PIPELINE_URL",
            "CI_JOB_NAME",
            "GITLAB_USER_LOGIN",
            "CI_PIPELINE_NAME",
        ] {
            assert_eq!(v(absent), None, "{absent}");
        }
    }

    #[test]
    fn tag_pipeline_variables() {
        let ctx = PipelineContext {
            ref_name: "v1.2.0".into(),
            tag: true,
            tag_message: Some("Release 1.2".into()),
            ref_protected: true,
            ..push_context()
        };
        let vars = pipeline_variables(&ctx);
        assert_eq!(vars.value("CI_COMMIT_TAG"), Some("v1.2.0"));
        assert_eq!(vars.value("CI_COMMIT_TAG_MESSAGE"), Some("Release 1.2"));
        assert_eq!(vars.value("CI_COMMIT_REF_NAME"), Some("v1.2.0"));
        assert_eq!(vars.value("CI_COMMIT_REF_SLUG"), Some("v1-2-0"));
        assert_eq!(vars.value("CI_COMMIT_REF_PROTECTED"), Some("true"));
        assert_eq!(vars.value("CI_COMMIT_BRANCH"), None);
    }

    fn merge_request_context() -> PipelineContext {
        PipelineContext {
            ref_name: "refs/merge-requests/5/head".into(),
            source: "merge_request_event".into(),
            mr: Some(MergeRequestContext {
                id: 900,
                iid: 5,
                title: "Draft: Login".into(),
                description: "Adds a login form.".into(),
                source_branch: "improve/awesome".into(),
                target_branch: "main".into(),
                target_branch_protected: true,
                assignees: vec!["ada".into(), "bob".into(), "cy".into()],
                labels: vec!["backend".into(), "ui".into()],
                draft: true,
                ..MergeRequestContext::default()
            }),
            ..push_context()
        }
    }

    #[test]
    fn merge_request_pipeline_variables() {
        let vars = pipeline_variables(&merge_request_context());
        let v = |k| vars.value(k);
        assert_eq!(v("CI_COMMIT_BRANCH"), None);
        assert_eq!(v("CI_COMMIT_TAG"), None);
        // ci/build_spec "returns values based on source ref".
        assert_eq!(v("CI_COMMIT_REF_NAME"), Some("improve/awesome"));
        assert_eq!(v("CI_COMMIT_REF_SLUG"), Some("improve-awesome"));
        assert_eq!(v("CI_COMMIT_BEFORE_SHA"), Some(BLANK_SHA));
        assert_eq!(v("CI_PIPELINE_SOURCE"), Some("merge_request_event"));
        assert_eq!(v("CI_MERGE_REQUEST_IID"), Some("5"));
        assert_eq!(v("CI_MERGE_REQUEST_ID"), Some("900"));
        assert_eq!(
            v("CI_MERGE_REQUEST_REF_PATH"),
            Some("refs/merge-requests/5/head")
        );
        assert_eq!(v("CI_MERGE_REQUEST_EVENT_TYPE"), Some("detached"));
        assert_eq!(
            v("CI_MERGE_REQUEST_SOURCE_BRANCH_NAME"),
            Some("improve/awesome")
        );
        assert_eq!(v("CI_MERGE_REQUEST_TARGET_BRANCH_NAME"), Some("main"));
        assert_eq!(v("CI_MERGE_REQUEST_TARGET_BRANCH_PROTECTED"), Some("true"));
        assert_eq!(v("CI_MERGE_REQUEST_SOURCE_BRANCH_SHA"), Some(""));
        assert_eq!(v("CI_MERGE_REQUEST_TITLE"), Some("Draft: Login"));
        assert_eq!(v("CI_MERGE_REQUEST_ASSIGNEES"), Some("ada, bob, and cy"));
        assert_eq!(v("CI_MERGE_REQUEST_LABELS"), Some("backend,ui"));
        assert_eq!(v("CI_MERGE_REQUEST_MILESTONE"), None);
        assert_eq!(v("CI_MERGE_REQUEST_DRAFT"), Some("true"));
        assert_eq!(v("CI_MERGE_REQUEST_PROJECT_PATH"), Some("group/sub/app"));
        assert_eq!(
            v("CI_MERGE_REQUEST_SOURCE_PROJECT_PATH"),
            Some("group/sub/app")
        );
        assert_eq!(
            v("CI_MERGE_REQUEST_PROJECT_URL"),
            Some("https://ci.example.com/group/sub/app")
        );
        assert_eq!(
            v("CI_MERGE_REQUEST_DESCRIPTION_IS_TRUNCATED"),
            Some("false")
        );
    }

    #[test]
    fn merge_request_description_is_truncated_to_2700_characters() {
        let mut ctx = merge_request_context();
        if let Some(mr) = ctx.mr.as_mut() {
            mr.description = "é".repeat(2701);
        }
        let vars = pipeline_variables(&ctx);
        let description = vars.value("CI_MERGE_REQUEST_DESCRIPTION").unwrap();
        assert_eq!(description.chars().count(), 2700);
        assert!(description.ends_with("é..."));
        assert_eq!(
            vars.value("CI_MERGE_REQUEST_DESCRIPTION_IS_TRUNCATED"),
            Some("true")
        );
        let (exact, truncated) = truncate_description(&"x".repeat(2700));
        assert_eq!((exact.len(), truncated), (2700, false));
    }

    #[test]
    fn assignees_are_listed_as_a_sentence() {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(to_sentence(&names(&["ada"])), "ada");
        assert_eq!(to_sentence(&names(&["ada", "bob"])), "ada and bob");
        assert_eq!(to_sentence(&names(&[])), "");
    }

    #[test]
    fn commit_title_and_description_follow_gitlab_commit_rules() {
        assert_eq!(commit_title("Title\r\nBody"), "Title");
        assert_eq!(commit_description("Title\nBody\n"), "Body");
        assert_eq!(commit_description("Title\nBody\r\n"), "Body");
        assert_eq!(commit_description("Title only"), "");
        assert_eq!(commit_description("Title\n"), "");
        assert_eq!(commit_title(""), "No commit message");
        assert_eq!(commit_title(" \n\t"), "No commit message");
        assert_eq!(commit_description(""), "No commit message");
        assert_eq!(commit_title("\nbody"), "");
        // A title of 100 characters or more gives the whole message as description.
        let long = format!("{}\nrest\n", "t".repeat(100));
        assert_eq!(commit_title(&long), "t".repeat(100));
        assert_eq!(commit_description(&long), long);
        let short = format!("{}\nrest", "t".repeat(99));
        assert_eq!(commit_description(&short), "rest");
    }

    #[test]
    fn server_variables_are_derived_from_the_url() {
        let ctx = PipelineContext {
            server_url: "http://ci.example.com:8080/gitlab/".into(),
            server_version: "17.2.1-ee".into(),
            server_revision: Some("abc123".into()),
            ..push_context()
        };
        let vars = pipeline_variables(&ctx);
        assert_eq!(
            vars.value("CI_SERVER_URL"),
            Some("http://ci.example.com:8080/gitlab")
        );
        assert_eq!(vars.value("CI_SERVER_HOST"), Some("ci.example.com"));
        assert_eq!(vars.value("CI_SERVER_PORT"), Some("8080"));
        assert_eq!(vars.value("CI_SERVER_PROTOCOL"), Some("http"));
        assert_eq!(
            vars.value("CI_SERVER_FQDN"),
            Some("ci.example.com:8080/gitlab")
        );
        assert_eq!(vars.value("CI_SERVER_VERSION_MAJOR"), Some("17"));
        assert_eq!(vars.value("CI_SERVER_VERSION_MINOR"), Some("2"));
        assert_eq!(vars.value("CI_SERVER_VERSION_PATCH"), Some("1"));
        assert_eq!(vars.value("CI_SERVER_REVISION"), Some("abc123"));

        let https = pipeline_variables(&push_context());
        assert_eq!(https.value("CI_SERVER_PORT"), Some("443"));
        assert_eq!(https.value("CI_SERVER_FQDN"), Some("ci.example.com"));
        let ipv6 = parse_server_url("https://user@[::1]:9000").unwrap();
        assert_eq!((ipv6.host.as_str(), ipv6.port), ("[::1]", Some(9000)));
        assert!(parse_server_url("not a url").is_none());
        assert_eq!(version_parts("dev"), ["0", "0", "0"]);
    }

    #[test]
    fn project_variables_are_derived_from_the_path() {
        let vars = pipeline_variables(&PipelineContext {
            project_path: "My-Group/Sub.Group/App".into(),
            project_title: Some("The App".into()),
            ..push_context()
        });
        assert_eq!(
            vars.value("CI_PROJECT_PATH"),
            Some("My-Group/Sub.Group/App")
        );
        assert_eq!(
            vars.value("CI_PROJECT_PATH_SLUG"),
            Some("my-group-sub-group-app")
        );
        assert_eq!(vars.value("CI_PROJECT_NAME"), Some("App"));
        assert_eq!(vars.value("CI_PROJECT_TITLE"), Some("The App"));
        assert_eq!(
            vars.value("CI_PROJECT_NAMESPACE"),
            Some("My-Group/Sub.Group")
        );
        assert_eq!(vars.value("CI_PROJECT_ROOT_NAMESPACE"), Some("My-Group"));
        assert_eq!(
            vars.value("CI_PROJECT_URL"),
            Some("https://ci.example.com/My-Group/Sub.Group/App")
        );
        assert_eq!(vars.value("CI_PROJECT_ID"), Some("7"));
    }

    #[test]
    fn optional_pipeline_variables_appear_only_when_given() {
        let vars = pipeline_variables(&PipelineContext {
            pipeline_name: Some("Nightly".into()),
            source: "schedule".into(),
            schedule_description: Some("every night".into()),
            open_merge_requests: (1..=6).map(|i| format!("group/sub/app!{i}")).collect(),
            user: Some(UserContext {
                id: 3,
                login: "ada".into(),
                name: "Ada L".into(),
                email: "ada@example.com".into(),
            }),
            commit_sha: String::new(),
            ..push_context()
        });
        assert_eq!(vars.value("CI_PIPELINE_NAME"), Some("Nightly"));
        assert_eq!(
            vars.value("CI_PIPELINE_SCHEDULE_DESCRIPTION"),
            Some("every night")
        );
        assert_eq!(
            vars.value("CI_OPEN_MERGE_REQUESTS"),
            Some("group/sub/app!1,group/sub/app!2,group/sub/app!3,group/sub/app!4")
        );
        assert_eq!(vars.value("GITLAB_USER_LOGIN"), Some("ada"));
        assert_eq!(vars.value("GITLAB_USER_ID"), Some("3"));
        // No commit: no CI_COMMIT_* at all.
        assert!(vars.iter().all(|v| !v.key.starts_with("CI_COMMIT_")));
    }

    #[test]
    fn job_variables_known_when_rules_are_evaluated() {
        let job = JobContext {
            name: "rspec: [ruby, 3.2]".into(),
            stage: "test".into(),
            ..JobContext::default()
        };
        let vars = job_variables(&push_context(), &job);
        assert_eq!(vars.value("CI_JOB_NAME"), Some("rspec: [ruby, 3.2]"));
        assert_eq!(vars.value("CI_JOB_NAME_SLUG"), Some("rspec---ruby--3-2"));
        assert_eq!(vars.value("CI_JOB_STAGE"), Some("test"));
        assert_eq!(vars.value("CI_NODE_TOTAL"), Some("1"));
        for absent in [
            "CI_NODE_INDEX",
            "CI_JOB_MANUAL",
            "CI_PIPELINE_TRIGGERED",
            "CI_JOB_ID",
            "CI_PIPELINE_ID",
            "CI_PROJECT_DIR",
            "CI_ENVIRONMENT_NAME",
        ] {
            assert_eq!(vars.value(absent), None, "{absent}");
        }
    }

    #[test]
    fn node_index_is_set_only_for_parallel_jobs() {
        let job = JobContext {
            name: "test 2/3".into(),
            stage: "test".into(),
            node_index: Some(2),
            node_total: 3,
            manual: true,
            ..JobContext::default()
        };
        let ctx = PipelineContext {
            source: "trigger".into(),
            ..push_context()
        };
        let vars = job_variables(&ctx, &job);
        assert_eq!(vars.value("CI_NODE_INDEX"), Some("2"));
        assert_eq!(vars.value("CI_NODE_TOTAL"), Some("3"));
        assert_eq!(vars.value("CI_JOB_MANUAL"), Some("true"));
        assert_eq!(vars.value("CI_PIPELINE_TRIGGERED"), Some("true"));
    }

    #[test]
    fn environment_variables_of_a_deployment_job() {
        let mut job = JobContext {
            name: "deploy".into(),
            stage: "deploy".into(),
            environment: Some(EnvironmentContext {
                name: "review/feature-login".into(),
                url: Some("https://$CI_ENVIRONMENT_SLUG.example.com".into()),
                ..EnvironmentContext::default()
            }),
            ..JobContext::default()
        };
        let rules_time = job_variables(&push_context(), &job);
        assert_eq!(
            rules_time.value("CI_ENVIRONMENT_NAME"),
            Some("review/feature-login")
        );
        assert_eq!(rules_time.value("CI_ENVIRONMENT_ACTION"), Some("start"));
        assert_eq!(rules_time.value("CI_ENVIRONMENT_TIER"), Some("development"));
        assert_eq!(rules_time.value("CI_ENVIRONMENT_SLUG"), None);

        job.run = Some(JobRun::default());
        if let Some(env) = job.environment.as_mut() {
            env.tier = Some("staging".into());
            env.action = Some("prepare".into());
        }
        let mut all = pipeline_variables(&push_context());
        all.extend(&job_variables(&push_context(), &job));
        let slug = environment_slug("review/feature-login");
        assert_eq!(all.value("CI_ENVIRONMENT_SLUG"), Some(slug.as_str()));
        assert_eq!(all.value("CI_ENVIRONMENT_TIER"), Some("staging"));
        assert_eq!(all.value("CI_ENVIRONMENT_ACTION"), Some("prepare"));
        assert_eq!(
            all.definitions().last().map(|v| v.key.as_str()),
            Some("CI_ENVIRONMENT_URL")
        );
        // The runner expands the URL with the slug.
        assert_eq!(
            resolved_value(&all, "CI_ENVIRONMENT_URL"),
            format!("https://{slug}.example.com")
        );
    }

    #[test]
    fn job_only_variables_once_the_job_runs() {
        let job = JobContext {
            name: "build".into(),
            stage: "build".into(),
            run: Some(JobRun {
                job_id: 4242,
                started_at: "2024-05-01T10:02:00Z".into(),
                project_dir: "/builds/group/sub/app".into(),
                builds_dir: "/builds".into(),
                image: Some("rust:1.85".into()),
                timeout_secs: Some(3600),
                disposable: true,
            }),
            ..JobContext::default()
        };
        let vars = job_variables(&push_context(), &job);
        let v = |k| vars.value(k);
        assert_eq!(v("CI_JOB_ID"), Some("4242"));
        assert_eq!(
            v("CI_JOB_URL"),
            Some("https://ci.example.com/group/sub/app/-/jobs/4242")
        );
        assert_eq!(v("CI_PIPELINE_ID"), Some("1001"));
        assert_eq!(
            v("CI_PIPELINE_URL"),
            Some("https://ci.example.com/group/sub/app/-/pipelines/1001")
        );
        assert_eq!(v("CI_JOB_STARTED_AT"), Some("2024-05-01T10:02:00Z"));
        assert_eq!(v("CI_PROJECT_DIR"), Some("/builds/group/sub/app"));
        assert_eq!(v("CI_BUILDS_DIR"), Some("/builds"));
        assert_eq!(v("CI_JOB_IMAGE"), Some("rust:1.85"));
        assert_eq!(v("CI_JOB_TIMEOUT"), Some("3600"));
        assert_eq!(v("CI_SERVER"), Some("yes"));
        assert_eq!(v("CI_JOB_STATUS"), Some("running"));
        assert_eq!(v("CI_DISPOSABLE_ENVIRONMENT"), Some("true"));
        assert_eq!(v("CI_SHARED_ENVIRONMENT"), None);
        assert_eq!(v("CI_ENVIRONMENT_SLUG"), None);
    }

    #[test]
    fn no_gitlab_credentials_are_invented() {
        let job = JobContext {
            name: "build".into(),
            run: Some(JobRun::default()),
            ..JobContext::default()
        };
        let mut all = pipeline_variables(&merge_request_context());
        all.extend(&job_variables(&merge_request_context(), &job));
        for key in [
            "CI_JOB_TOKEN",
            "CI_JOB_JWT",
            "CI_REGISTRY_PASSWORD",
            "CI_REGISTRY_USER",
            "CI_REPOSITORY_URL",
            "CI_DEPLOY_PASSWORD",
            "CI_DEPENDENCY_PROXY_PASSWORD",
            "CI_API_V4_URL",
        ] {
            assert!(!all.contains_key(key), "{key}");
        }
        assert_eq!(all.value("CI_SHARED_ENVIRONMENT"), Some("true"));
    }

    #[test]
    fn arbitrary_input_never_panics() {
        // A deterministic generator over the characters that matter to the parsers.
        let alphabet: Vec<char> = "$${}%_aZ09-/.:@[]é€\u{212A}İ \n\r*#?!".chars().collect();
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..3000 {
            let len = (next() % 24) as usize;
            let s: String = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let lookup = |name: &str| name.len().is_multiple_of(2).then(|| format!("<{name}$>"));
            let _ = expand(&s, &lookup);
            let _ = expand_existing(&s, &lookup);
            let _ = expand_server(&s, &lookup);
            let slug = environment_slug(&s);
            assert!(
                slug.len() <= 24 && !slug.ends_with('-'),
                "{s:?} -> {slug:?}"
            );
            assert!(ref_slug(&s).len() <= 63);
            let _ = deployment_tier_from_name(&s);
            let _ = parse_server_url(&format!("https://{s}"));
            let _ = version_parts(&s);
            let _ = commit_description(&s);
            let set = set_of(&[("A", s.as_str()), ("B", "$A"), (s.as_str(), "$B")]);
            let _ = set.resolved();
            let _ = set.circular_reference_error();
        }
    }

    #[test]
    fn predefined_values_are_expandable_like_gitlab_sends_them() {
        // GitLab sends predefined variables as expandable: a `$` in a commit message is
        // expanded by the runner.
        let ctx = PipelineContext {
            commit_message: "Costs $5 and $$6".into(),
            ..push_context()
        };
        let vars = pipeline_variables(&ctx);
        assert!(vars.get("CI_COMMIT_MESSAGE").unwrap().expand);
        assert_eq!(resolved_value(&vars, "CI_COMMIT_MESSAGE"), "Costs  and $6");
    }
}
