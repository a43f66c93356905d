//! From files to one resolved configuration tree, in GitLab's order: read the root file,
//! merge `include:` files (included first, the including file on top), resolve
//! `!reference` tags over the merged tree, then resolve `extends:`. The result is still a
//! YAML tree (what `slipway preview` prints); [`crate::model`] turns it into types.

use crate::diag::{Diagnostic, Diagnostics};
use crate::expr;
use crate::source::{FileId, SourceLoader, SourceMap, Span};
use crate::yaml::{self, Key, Map, Node, Value};
use std::collections::HashSet;

/// GitLab's limit on the number of included files in one pipeline. A file included twice
/// counts twice, so this also stops include loops (and bounds include nesting).
pub const MAX_INCLUDES: usize = 150;
/// GitLab's limit on `extends`: a template with more than this many jobs and templates
/// extending it below may not extend further (eleven levels of inheritance in all).
pub const MAX_EXTENDS_DEPTH: usize = 10;
/// `!reference` chains deeper than this are refused. GitLab sets no limit of its own (in
/// `script` the nested arrays stop at 10 levels anyway); this only keeps resolution far
/// from the stack limit.
pub const MAX_REFERENCE_DEPTH: usize = 100;

/// What include rules (`include:rules`) may look at: the pipeline's predefined and
/// project variables and the repository's file list.
pub struct IncludeContext<'a> {
    pub variables: &'a dyn Fn(&str) -> Option<String>,
}

/// The resolved configuration and every file it came from.
pub struct Loaded {
    pub sources: SourceMap,
    /// The resolved tree; `None` when a file could not be read or parsed.
    pub root: Option<Node>,
    /// Errors found while resolving. With a tree present these are `!reference` and
    /// `extends` errors: the rest of the tree is still checked so that every error is
    /// reported at once.
    pub diags: Diagnostics,
    /// Top-level keys whose resolution failed: their own checks would only repeat it.
    pub broken: Vec<String>,
}

/// Read `path` and everything it includes, and resolve references and `extends`.
pub fn load(loader: &dyn SourceLoader, path: &str, ctx: &IncludeContext<'_>) -> Loaded {
    let mut sources = SourceMap::new();
    match loader.read(path.trim_start_matches('/')) {
        Ok(text) => {
            let id = sources.add(path, text);
            load_root(loader, id, sources, ctx)
        }
        Err(e) => {
            let mut diags = Diagnostics::new();
            diags.push(Span::synthetic(), format!("cannot read {path}: {e}"));
            Loaded {
                sources,
                root: None,
                diags,
                broken: Vec::new(),
            }
        }
    }
}

/// Resolve an already-read root text (used by fuzzing and by `--file -`).
pub fn load_text(
    loader: &dyn SourceLoader,
    path: &str,
    text: &str,
    ctx: &IncludeContext<'_>,
) -> Loaded {
    let mut sources = SourceMap::new();
    let id = sources.add(path, text);
    load_root(loader, id, sources, ctx)
}

fn load_root(
    loader: &dyn SourceLoader,
    id: FileId,
    mut sources: SourceMap,
    ctx: &IncludeContext<'_>,
) -> Loaded {
    let text = sources.get(id).map(|f| f.text.clone()).unwrap_or_default();
    if text.trim().is_empty() {
        let mut diags = Diagnostics::new();
        diags.push(file_start(id), "Please provide content of .gitlab-ci.yml");
        return Loaded {
            sources,
            root: None,
            diags,
            broken: Vec::new(),
        };
    }
    let mut node = match parse_file(id, &text) {
        Ok(n) => n,
        Err(diags) => {
            return Loaded {
                sources,
                root: None,
                diags,
                broken: Vec::new(),
            }
        }
    };
    let mut state = IncludeState {
        loader,
        ctx,
        sources: &mut sources,
        count: 0,
        diags: Diagnostics::new(),
    };
    expand_includes(&mut node, &mut state);
    let mut diags = state.diags;
    if !diags.is_empty() {
        // A missing or broken include would make every later check misleading.
        return Loaded {
            sources,
            root: None,
            diags: diags.sorted(),
            broken: Vec::new(),
        };
    }
    let mut broken = Vec::new();
    resolve_references(&mut node, &mut diags, &mut broken);
    resolve_extends(&mut node, &mut diags, &mut broken);
    Loaded {
        sources,
        root: Some(node),
        diags: diags.sorted(),
        broken,
    }
}

fn parse_file(id: FileId, text: &str) -> Result<Node, Diagnostics> {
    let mut diags = Diagnostics::new();
    match yaml::parse(id, text) {
        Err(d) => {
            diags.0.push(d);
            Err(diags)
        }
        Ok(None) => Ok(Node::new(Value::Map(Map::default()), file_start(id))),
        Ok(Some(node)) => match node.value {
            Value::Map(_) => Ok(node),
            Value::Null => Ok(Node::new(Value::Map(Map::default()), node.span)),
            _ => {
                diags.push(
                    node.span,
                    format!(
                        "Invalid configuration format: the pipeline configuration must be a hash of keywords and jobs, not {}",
                        a_type(&node)
                    ),
                );
                Err(diags)
            }
        },
    }
}

fn file_start(id: FileId) -> Span {
    let p = crate::source::Pos { line: 1, col: 1 };
    Span::new(id, p, p)
}

/// "a string", "an array"...
pub fn a_type(node: &Node) -> String {
    let t = node.type_name();
    if t.starts_with(['a', 'e', 'i', 'o', 'u']) {
        format!("an {t}")
    } else {
        format!("a {t}")
    }
}

struct IncludeState<'a, 'b> {
    loader: &'a dyn SourceLoader,
    ctx: &'a IncludeContext<'b>,
    sources: &'a mut SourceMap,
    count: usize,
    diags: Diagnostics,
}

/// Replace `node`'s `include:` with the deep merge of the included files beneath it.
fn expand_includes(node: &mut Node, state: &mut IncludeState<'_, '_>) {
    let Some(map) = node.as_map_mut() else { return };
    let Some(include) = map.remove("include") else {
        return;
    };
    let items: Vec<Node> = match include.value {
        Value::Seq(items) => items,
        Value::Null => Vec::new(),
        _ => vec![include],
    };
    let mut merged: Option<Node> = None;
    for item in items {
        for mut included in include_item(&item, state) {
            expand_includes(&mut included, state);
            merged = Some(match merged {
                None => included,
                Some(base) => deep_merge(base, included),
            });
        }
    }
    if let Some(base) = merged {
        let own = std::mem::replace(node, Node::new(Value::Null, node.span));
        let span = own.span;
        *node = deep_merge(base, own);
        node.span = span;
    }
}

/// Load the files one `include:` entry names (several for a glob).
fn include_item(item: &Node, state: &mut IncludeState<'_, '_>) -> Vec<Node> {
    let span = item.span;
    let (local, item_map) = match &item.value {
        Value::String(s) if s.starts_with("http://") || s.starts_with("https://") => {
            state.diags.push(
                span,
                format!("include of the remote file `{s}` needs a network source; Slipway reads only local files (use include:local)"),
            );
            return Vec::new();
        }
        Value::String(s) => (s.clone(), None),
        Value::Map(m) => {
            for (k, v) in m.iter() {
                match k.name.as_str() {
                    "local" | "rules" | "inputs" => {}
                    "remote" | "project" | "file" | "ref" | "template" | "component"
                    | "artifact" | "job" | "integrity" | "cache" => {
                        let what = match k.name.as_str() {
                            "remote" => "include:remote",
                            "template" => "include:template (GitLab's bundled templates)",
                            "component" => "include:component (the CI/CD catalog)",
                            "artifact" | "job" => "include:artifact (child pipelines)",
                            _ => "include:project (another project's repository)",
                        };
                        let _ = v;
                        state.diags.push(
                            k.span,
                            format!("{what} needs a network source that Slipway does not have; copy the file into this repository and use include:local"),
                        );
                        return Vec::new();
                    }
                    other => {
                        state.diags.push(
                            k.span,
                            format!("include config contains unknown keys: {other}"),
                        );
                        return Vec::new();
                    }
                }
            }
            match m.get("local").map(|n| &n.value) {
                Some(Value::String(s)) => (s.clone(), Some(m)),
                Some(_) => {
                    state
                        .diags
                        .push(span, "include:local config should be a string");
                    return Vec::new();
                }
                None => {
                    state.diags.push(
                        span,
                        "include config should name a local file (include:local)",
                    );
                    return Vec::new();
                }
            }
        }
        _ => {
            state.diags.push(
                span,
                format!(
                    "include config should be a string, a hash or an array, not {}",
                    a_type(item)
                ),
            );
            return Vec::new();
        }
    };
    if let Some(m) = item_map {
        if m.contains("inputs") {
            state.diags.push(
                span,
                "include:inputs needs a file with spec:inputs, which Slipway does not support yet",
            );
            return Vec::new();
        }
        if let Some(rules) = m.get("rules") {
            match include_rules_match(rules, state) {
                Ok(true) => {}
                Ok(false) => return Vec::new(),
                Err(d) => {
                    state.diags.0.push(d);
                    return Vec::new();
                }
            }
        }
    }
    let pattern = local.trim_start_matches('/').to_string();
    let paths: Vec<String> = if pattern.contains('*') {
        match wildcard_regex(&pattern) {
            Ok(re) => {
                let mut found: Vec<String> = state
                    .loader
                    .list()
                    .into_iter()
                    .filter(|p| re.is_match(p))
                    .collect();
                found.sort();
                found
            }
            Err(e) => {
                state
                    .diags
                    .push(span, format!("include pattern `{local}` is invalid: {e}"));
                return Vec::new();
            }
        }
    } else {
        vec![pattern]
    };
    let mut out = Vec::new();
    for path in paths {
        if !has_yaml_extension(&path) {
            state.diags.push(
                span,
                format!("Included file `{path}` does not have YAML extension!"),
            );
            continue;
        }
        // The same file may be included several times (GitLab 15.10 and later); every
        // inclusion counts towards the limit.
        state.count += 1;
        if state.count > MAX_INCLUDES {
            state.diags.push(
                span,
                format!("Maximum of {MAX_INCLUDES} nested includes are allowed!"),
            );
            return out;
        }
        let text = match state.loader.read(&path) {
            Ok(t) => t,
            Err(_) => {
                state
                    .diags
                    .push(span, format!("Local file `{path}` does not exist!"));
                continue;
            }
        };
        if text.trim().is_empty() {
            state
                .diags
                .push(span, format!("Local file `{path}` is empty!"));
            continue;
        }
        let id = state.sources.add(path.clone(), text.clone());
        match parse_file(id, &text) {
            Ok(node) => out.push(node),
            Err(d) => state.diags.extend(d),
        }
    }
    out
}

/// GitLab's test for an included file name: `/.+\.(yml|yaml)$/i` on the file's base name.
fn has_yaml_extension(path: &str) -> bool {
    let base = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
    [".yml", ".yaml"]
        .iter()
        .any(|ext| base.len() > ext.len() && base.ends_with(ext))
}

/// An `include:local` wildcard as GitLab matches it against the repository's paths: the
/// pattern is taken literally except that `**` matches anything (including `/`) and `*`
/// anything but `/`, and it must match the whole path. So `configs/**.yml` reaches every
/// subfolder while `configs/**/*.yml` needs at least one.
fn wildcard_regex(pattern: &str) -> Result<regex::Regex, regex::Error> {
    let mut re = String::from("^");
    let mut rest = pattern;
    while let Some(i) = rest.find('*') {
        re.push_str(&regex::escape(&rest[..i]));
        if rest[i..].starts_with("**") {
            re.push_str(".*?");
            rest = &rest[i + 2..];
        } else {
            re.push_str("[^/]*?");
            rest = &rest[i + 1..];
        }
    }
    re.push_str(&regex::escape(rest));
    re.push('$');
    regex::Regex::new(&re)
}

/// `include:rules`: `if`, `exists` and `when` (`never` or `always`), first match wins; no
/// match means the file is not included.
fn include_rules_match(rules: &Node, state: &IncludeState<'_, '_>) -> Result<bool, Diagnostic> {
    let Some(list) = rules.as_seq() else {
        return Err(Diagnostic::new(
            rules.span,
            "include:rules config should be an array of hashes",
        ));
    };
    for rule in list {
        let Some(m) = rule.as_map() else {
            return Err(Diagnostic::new(
                rule.span,
                "include:rules:rule config should be a hash",
            ));
        };
        let mut matched = true;
        for (k, v) in m.iter() {
            match k.name.as_str() {
                "if" => {
                    let Some(src) = v.as_str() else {
                        return Err(Diagnostic::new(
                            v.span,
                            "include:rules:if should be a string",
                        ));
                    };
                    let e = expr::parse(src).map_err(|e| {
                        Diagnostic::new(v.span, format!("invalid expression syntax: {e}"))
                    })?;
                    matched &= e.evaluate(state.ctx.variables);
                }
                "exists" => {
                    let patterns = string_list(v).ok_or_else(|| {
                        Diagnostic::new(
                            v.span,
                            "include:rules:exists should be an array of strings",
                        )
                    })?;
                    matched &= any_file_matches(&patterns, &state.loader.list());
                }
                "changes" => {
                    // Changes are known only per pipeline; include:rules:changes counts as
                    // true as GitLab does for pipelines without a push diff.
                }
                "when" => match v.as_str() {
                    Some("never") | Some("always") => {}
                    _ => {
                        return Err(Diagnostic::new(
                            v.span,
                            "include:rules:when can be `never` or `always`",
                        ))
                    }
                },
                other => {
                    return Err(Diagnostic::new(
                        k.span,
                        format!("include:rules:rule config contains unknown keys: {other}"),
                    ))
                }
            }
        }
        if matched {
            return Ok(m.get("when").and_then(|w| w.as_str()) != Some("never"));
        }
    }
    Ok(false)
}

/// A list of strings, or a single string.
pub fn string_list(node: &Node) -> Option<Vec<String>> {
    match &node.value {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Seq(items) => items.iter().map(|i| i.scalar_string()).collect(),
        _ => None,
    }
}

/// Whether any file matches any of the glob patterns (GitLab's `File.fnmatch` with
/// `FNM_PATHNAME | FNM_DOTMATCH | FNM_EXTGLOB`: `*` stops at `/`, `**/` spans
/// directories, braces alternate).
pub fn any_file_matches(patterns: &[String], files: &[String]) -> bool {
    let mut builder = globset::GlobSetBuilder::new();
    for p in patterns {
        let p = p.trim_start_matches('/');
        if let Ok(g) = globset::GlobBuilder::new(p).literal_separator(true).build() {
            builder.add(g);
        }
    }
    match builder.build() {
        Ok(set) => files.iter().any(|f| set.is_match(f)),
        Err(_) => false,
    }
}

/// GitLab's `deep_merge`: mappings merge key by key, anything else is replaced by the
/// value on top.
pub fn deep_merge(base: Node, over: Node) -> Node {
    match (base.value, over.value) {
        (Value::Map(mut b), Value::Map(o)) => {
            for (k, v) in o.entries {
                match b.entries.iter().position(|(bk, _)| bk.name == k.name) {
                    Some(i) => {
                        let old =
                            std::mem::replace(&mut b.entries[i].1, Node::new(Value::Null, v.span));
                        b.entries[i].1 = deep_merge(old, v);
                    }
                    None => b.entries.push((k, v)),
                }
            }
            Node {
                value: Value::Map(b),
                span: over.span,
                tag: over.tag,
            }
        }
        (_, value) => Node {
            value,
            span: over.span,
            tag: over.tag,
        },
    }
}

/// Replace every `!reference [key, ...]` by the value it points at in the merged tree.
fn resolve_references(root: &mut Node, diags: &mut Diagnostics, broken: &mut Vec<String>) {
    if !contains_reference(root) {
        return;
    }
    let snapshot = root.clone();
    let Some(map) = root.as_map_mut() else { return };
    let mut refs = Refs::default();
    for (k, v) in map.entries.iter_mut() {
        let before = diags.len();
        resolve_in(v, &snapshot, &mut refs, diags);
        if diags.len() > before {
            broken.push(k.name.clone());
        }
    }
}

fn contains_reference(node: &Node) -> bool {
    if node.tag.as_deref() == Some("reference") {
        return true;
    }
    match &node.value {
        Value::Seq(items) => items.iter().any(contains_reference),
        Value::Map(m) => m.entries.iter().any(|(_, v)| contains_reference(v)),
        _ => false,
    }
}

/// The state of `!reference` resolution: the chain of references being followed (to find
/// cycles) and how many nodes they produced so far (shared fragments referenced again and
/// again can grow exponentially, like YAML aliases).
#[derive(Default)]
struct Refs {
    chain: Vec<Vec<String>>,
    nodes: usize,
}

fn resolve_in(node: &mut Node, root: &Node, refs: &mut Refs, diags: &mut Diagnostics) {
    if node.tag.as_deref() == Some("reference") {
        match follow_reference(node, root, refs, diags) {
            Some(resolved) => *node = resolved,
            None => {
                node.tag = None;
                node.value = Value::Null;
            }
        }
        return;
    }
    match &mut node.value {
        Value::Seq(items) => items
            .iter_mut()
            .for_each(|i| resolve_in(i, root, refs, diags)),
        Value::Map(m) => m
            .entries
            .iter_mut()
            .for_each(|(_, v)| resolve_in(v, root, refs, diags)),
        _ => {}
    }
}

/// A value written the way Ruby's `inspect` shows it in GitLab's messages: `[".a", 1]`.
pub fn ruby_inspect(node: &Node) -> String {
    match &node.value {
        Value::Null => "nil".to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Seq(items) => {
            let inner: Vec<String> = items.iter().map(ruby_inspect).collect();
            format!("[{}]", inner.join(", "))
        }
        Value::Map(m) => {
            let inner: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{:?}=>{}", k.name, ruby_inspect(v)))
                .collect();
            format!("{{{}}}", inner.join(", "))
        }
        _ => node.scalar_string().unwrap_or_default(),
    }
}

fn node_count(node: &Node) -> usize {
    let mut count = 0;
    let mut stack = vec![node];
    while let Some(n) = stack.pop() {
        count += 1;
        match &n.value {
            Value::Seq(items) => stack.extend(items.iter()),
            Value::Map(m) => stack.extend(m.entries.iter().map(|(_, v)| v)),
            _ => {}
        }
    }
    count
}

fn reference_text(path: &[String]) -> String {
    let inner: Vec<String> = path.iter().map(|p| format!("{p:?}")).collect();
    format!("!reference [{}]", inner.join(", "))
}

fn follow_reference(
    node: &Node,
    root: &Node,
    refs: &mut Refs,
    diags: &mut Diagnostics,
) -> Option<Node> {
    let path: Option<Vec<String>> = node
        .as_seq()
        .filter(|s| !s.is_empty())
        .and_then(|s| s.iter().map(|k| k.as_str().map(str::to_string)).collect());
    let Some(path) = path else {
        diags.push(
            node.span,
            format!(
                "!reference {} is not valid: it needs a non-empty list of key names, such as !reference [.setup, script]",
                ruby_inspect(node)
            ),
        );
        return None;
    };
    if refs.chain.contains(&path) {
        diags.push(
            node.span,
            format!("{} is part of a circular chain", reference_text(&path)),
        );
        return None;
    }
    if refs.chain.len() >= MAX_REFERENCE_DEPTH {
        diags.push(
            node.span,
            format!(
                "{} is nested too deeply: more than {MAX_REFERENCE_DEPTH} !reference tags in a chain",
                reference_text(&path)
            ),
        );
        return None;
    }
    let mut target = Some(root);
    for key in &path {
        target = target.and_then(|t| t.as_map()).and_then(|m| m.get(key));
    }
    let Some(target) = target else {
        diags.push(
            node.span,
            format!("{} could not be found", reference_text(&path)),
        );
        return None;
    };
    refs.nodes += node_count(target);
    if refs.nodes > yaml::MAX_NODES {
        diags.push(
            node.span,
            format!(
                "{} makes the configuration too large after resolving !reference tags",
                reference_text(&path)
            ),
        );
        return None;
    }
    let mut value = target.clone();
    refs.chain.push(path);
    resolve_in(&mut value, root, refs, diags);
    refs.chain.pop();
    // The value keeps its own span (where it is defined) for later error messages.
    Some(value)
}

/// Resolve `extends:` on every top-level hash: bases deep-merged in order, the job on top.
fn resolve_extends(root: &mut Node, diags: &mut Diagnostics, broken: &mut Vec<String>) {
    let Some(map) = root.as_map() else { return };
    let names: Vec<String> = map
        .iter()
        .filter(|(_, v)| v.as_map().is_some_and(|m| m.contains("extends")))
        .map(|(k, _)| k.name.clone())
        .collect();
    if names.is_empty() {
        return;
    }
    let original = map.clone();
    let mut resolved: Vec<(String, Node)> = Vec::new();
    let mut cycles = HashSet::new();
    for name in names {
        let mut stack = Vec::new();
        match extend_one(&name, &original, &mut stack, &mut cycles, diags) {
            Some(node) => resolved.push((name, node)),
            None => broken.push(name),
        }
    }
    if let Some(map) = root.as_map_mut() {
        for (name, node) in resolved {
            if let Some(slot) = map.get_mut(&name) {
                *slot = node;
            }
        }
    }
}

/// `cycles` holds the members of cycles already reported, so each cycle is reported once.
fn extend_one(
    name: &str,
    all: &Map,
    stack: &mut Vec<String>,
    cycles: &mut HashSet<String>,
    diags: &mut Diagnostics,
) -> Option<Node> {
    let job = all.get(name)?;
    let Some(job_map) = job.as_map() else {
        return Some(job.clone());
    };
    let Some(ext) = job_map.get("extends") else {
        return Some(job.clone());
    };
    let bases: Vec<(String, Span)> = match &ext.value {
        Value::String(s) => vec![(s.clone(), ext.span)],
        Value::Seq(items) => {
            let mut out = Vec::new();
            for i in items {
                match i.as_str() {
                    Some(s) => out.push((s.to_string(), i.span)),
                    None => {
                        diags.push(
                            i.span,
                            format!(
                                "jobs:{name}:extends should be a string or an array of strings"
                            ),
                        );
                        return None;
                    }
                }
            }
            out
        }
        _ => {
            diags.push(
                ext.span,
                format!("jobs:{name}:extends should be a string or an array of strings"),
            );
            return None;
        }
    };
    if let Some(pos) = stack.iter().position(|s| s == name) {
        if !cycles.contains(name) {
            diags.push(
                ext.span,
                format!("{name}: circular dependency detected in `extends`"),
            );
            cycles.extend(stack[pos..].iter().cloned());
        }
        return None;
    }
    if stack.len() > MAX_EXTENDS_DEPTH {
        diags.push(ext.span, format!("{name}: nesting too deep in `extends`"));
        return None;
    }
    stack.push(name.to_string());
    let mut merged: Option<Node> = None;
    let mut ok = true;
    for (base, span) in &bases {
        match all.get(base) {
            None => {
                diags.push(*span, format!("{name}: unknown key in `extends` ({base})"));
                ok = false;
            }
            Some(b) if b.as_map().is_none() => {
                diags.push(
                    *span,
                    format!("{name}: invalid base hash in `extends` ({base})"),
                );
                ok = false;
            }
            Some(_) => match extend_one(base, all, stack, cycles, diags) {
                Some(resolved) => {
                    merged = Some(match merged {
                        None => resolved,
                        Some(m) => deep_merge(m, resolved),
                    })
                }
                None => ok = false,
            },
        }
    }
    stack.pop();
    if !ok {
        return None;
    }
    let mut own = job.clone();
    if let Some(m) = own.as_map_mut() {
        m.remove("extends");
    }
    let span = own.span;
    let mut out = match merged {
        Some(mut base) => {
            if let Some(m) = base.as_map_mut() {
                m.remove("extends");
            }
            deep_merge(base, own)
        }
        None => own,
    };
    out.span = span;
    Some(out)
}

/// The key of a synthetic entry (used when the core adds keys of its own).
pub fn key(name: &str, span: Span) -> Key {
    Key {
        name: name.to_string(),
        span,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::MemoryLoader;

    #[test]
    fn exponential_references_are_refused() {
        // Each level references the previous one twice: 2^40 strings if resolved.
        let mut text = String::from(".r0: [x, x, x, x, x, x, x, x]\n");
        for i in 1..40 {
            let p = i - 1;
            text.push_str(&format!(
                ".r{i}: [!reference [.r{p}], !reference [.r{p}]]\n"
            ));
        }
        text.push_str("job:\n  script: [!reference [.r39]]\n");
        let loader = MemoryLoader::new().with(".gitlab-ci.yml", &text);
        let lookup = |_: &str| None;
        let ctx = IncludeContext { variables: &lookup };
        let loaded = load(&loader, ".gitlab-ci.yml", &ctx);
        assert!(loaded
            .diags
            .0
            .iter()
            .any(|d| d.message.contains("too large")));
    }
}
