//! YAML as GitLab reads it: a positioned tree built from `saphyr-parser` events, with
//! anchors and aliases expanded, merge keys (`<<`) applied in Ruby Psych's order (which is
//! what GitLab uses), YAML 1.1 booleans (`yes`, `on`...) and custom tags kept on the node
//! (`!reference` is resolved later, once every include is merged).
//!
//! Every node keeps the span it came from; an alias keeps the span of the anchored node,
//! so an error in a shared fragment points at the fragment.

use crate::diag::Diagnostic;
use crate::source::{FileId, Pos, Span};
use saphyr_parser::{Event, Parser, ScalarStyle, Span as YSpan};
use std::collections::HashMap;

/// Deeper nesting than this is refused: no real pipeline comes close, and it keeps
/// recursive passes over the tree far from the stack limit.
pub const MAX_DEPTH: usize = 200;
/// Alias expansion can grow a document exponentially ("billion laughs"); past this many
/// nodes the file is refused.
pub const MAX_NODES: usize = 2_000_000;

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub span: Span,
    /// A custom tag such as `reference` for `!reference`; core-schema tags are applied
    /// while loading and not kept.
    pub tag: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    Seq(Vec<Node>),
    Map(Map),
}

/// A mapping that keeps its keys in file order. Keys are strings (GitLab symbolises them);
/// a non-string scalar key is kept as its text.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Map {
    pub entries: Vec<(Key, Node)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub name: String,
    pub span: Span,
}

impl Map {
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        self.entries
            .iter_mut()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
    }

    pub fn key(&self, key: &str) -> Option<&Key> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(k, _)| k)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Insert or replace, keeping the position of an existing key (Ruby hash semantics).
    pub fn insert(&mut self, key: Key, value: Node) {
        if let Some(slot) = self.entries.iter_mut().find(|(k, _)| k.name == key.name) {
            slot.1 = value;
        } else {
            self.entries.push((key, value));
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<Node> {
        let i = self.entries.iter().position(|(k, _)| k.name == key)?;
        Some(self.entries.remove(i).1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Node)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Node {
    pub fn new(value: Value, span: Span) -> Node {
        Node {
            value,
            span,
            tag: None,
        }
    }

    pub fn as_map(&self) -> Option<&Map> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_map_mut(&mut self) -> Option<&mut Map> {
        match &mut self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// The scalar as GitLab would turn it into a string (numbers and booleans too).
    pub fn scalar_string(&self) -> Option<String> {
        match &self.value {
            Value::String(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(format_float(*f)),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// What kind of value this is, in the words GitLab's errors use.
    pub fn type_name(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Int(_) => "integer",
            Value::Float(_) => "float",
            Value::String(_) => "string",
            Value::Seq(_) => "array",
            Value::Map(_) => "hash",
        }
    }
}

pub fn format_float(f: f64) -> String {
    if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e15 {
        format!("{f:.1}")
    } else {
        f.to_string()
    }
}

/// Parse one file. A file may hold a header document (`spec:`) before the configuration
/// document, as GitLab allows; the last document is the configuration.
pub fn parse(file: FileId, text: &str) -> Result<Option<Node>, Diagnostic> {
    let mut builder = Builder {
        file,
        stack: Vec::new(),
        anchors: HashMap::new(),
        documents: Vec::new(),
        nodes: 0,
    };
    let mut parser = Parser::new_from_str(text);
    loop {
        let next = match parser.next_event() {
            None => break,
            Some(Ok(ev)) => ev,
            Some(Err(e)) => {
                let m = e.marker();
                let span = Span::new(
                    file,
                    Pos {
                        line: m.line() as u32,
                        col: m.col() as u32 + 1,
                    },
                    Pos {
                        line: m.line() as u32,
                        col: m.col() as u32 + 1,
                    },
                );
                return Err(Diagnostic::new(
                    span,
                    format!("YAML syntax error: {}", e.info()),
                ));
            }
        };
        let (event, yspan) = next;
        if matches!(event, Event::StreamEnd) {
            break;
        }
        builder.event(event, yspan)?;
    }
    Ok(builder.documents.pop())
}

enum Frame {
    Seq {
        items: Vec<Node>,
        start: Span,
        anchor: usize,
        tag: Option<String>,
    },
    Map {
        map: Map,
        pending_key: Option<Node>,
        start: Span,
        anchor: usize,
        tag: Option<String>,
    },
}

struct Builder {
    file: FileId,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    documents: Vec<Node>,
    nodes: usize,
}

impl Builder {
    fn span(&self, s: &YSpan) -> Span {
        Span::new(
            self.file,
            Pos {
                line: s.start.line() as u32,
                col: s.start.col() as u32 + 1,
            },
            Pos {
                line: s.end.line() as u32,
                col: s.end.col() as u32 + 1,
            },
        )
    }

    fn event(&mut self, event: Event<'_>, yspan: YSpan) -> Result<(), Diagnostic> {
        let span = self.span(&yspan);
        match event {
            Event::StreamStart | Event::DocumentStart(_) | Event::DocumentEnd | Event::Nothing => {
                Ok(())
            }
            Event::StreamEnd => Ok(()),
            Event::Alias(id) => {
                let node = match self.anchors.get(&id) {
                    Some(n) => n.clone(),
                    None => return Err(Diagnostic::new(span, "unknown YAML alias")),
                };
                self.nodes += count_nodes(&node);
                if self.nodes > MAX_NODES {
                    return Err(Diagnostic::new(
                        span,
                        "document too large after expanding aliases",
                    ));
                }
                self.push_node(node, 0)
            }
            Event::Scalar(text, style, anchor, tag) => {
                let tag_name = tag.as_ref().map(|t| tag_string(&t.handle, &t.suffix));
                let (value, custom) = resolve_scalar(&text, style, tag_name.as_deref())
                    .map_err(|m| Diagnostic::new(span, m))?;
                let mut node = Node::new(value, span);
                node.tag = custom;
                self.nodes += 1;
                self.push_node(node, anchor)
            }
            Event::SequenceStart(anchor, tag) => {
                if self.stack.len() >= MAX_DEPTH {
                    return Err(Diagnostic::new(span, "YAML nesting too deep"));
                }
                let tag = custom_tag(tag.as_ref().map(|t| tag_string(&t.handle, &t.suffix)))
                    .map_err(|m| Diagnostic::new(span, m))?;
                self.stack.push(Frame::Seq {
                    items: Vec::new(),
                    start: span,
                    anchor,
                    tag,
                });
                Ok(())
            }
            Event::MappingStart(anchor, tag) => {
                if self.stack.len() >= MAX_DEPTH {
                    return Err(Diagnostic::new(span, "YAML nesting too deep"));
                }
                let tag = custom_tag(tag.as_ref().map(|t| tag_string(&t.handle, &t.suffix)))
                    .map_err(|m| Diagnostic::new(span, m))?;
                self.stack.push(Frame::Map {
                    map: Map::default(),
                    pending_key: None,
                    start: span,
                    anchor,
                    tag,
                });
                Ok(())
            }
            Event::SequenceEnd => match self.stack.pop() {
                Some(Frame::Seq {
                    items,
                    mut start,
                    anchor,
                    tag,
                }) => {
                    start.end = span.end;
                    self.nodes += 1;
                    let mut node = Node::new(Value::Seq(items), start);
                    node.tag = tag;
                    self.push_node(node, anchor)
                }
                _ => Err(Diagnostic::new(span, "unbalanced YAML sequence")),
            },
            Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Map {
                    map,
                    mut start,
                    anchor,
                    tag,
                    ..
                }) => {
                    start.end = span.end;
                    self.nodes += 1;
                    let mut node = Node::new(Value::Map(map), start);
                    node.tag = tag;
                    self.push_node(node, anchor)
                }
                _ => Err(Diagnostic::new(span, "unbalanced YAML mapping")),
            },
        }
    }

    fn push_node(&mut self, node: Node, anchor: usize) -> Result<(), Diagnostic> {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => {
                self.documents.push(node);
                Ok(())
            }
            Some(Frame::Seq { items, .. }) => {
                items.push(node);
                Ok(())
            }
            Some(Frame::Map {
                map, pending_key, ..
            }) => match pending_key.take() {
                None => {
                    *pending_key = Some(node);
                    Ok(())
                }
                Some(key) => insert_entry(map, key, node),
            },
        }
    }
}

/// Add one `key: value` pair, applying merge keys as Ruby's Psych does: `<<` merges the
/// mapping (or each mapping of a list, earlier ones winning) over what is already there,
/// and keys written after it override it.
fn insert_entry(map: &mut Map, key: Node, value: Node) -> Result<(), Diagnostic> {
    let is_merge = matches!(&key.value, Value::String(s) if s == "<<") && key.tag.is_none();
    if is_merge {
        match value.value {
            Value::Map(m) => {
                for (k, v) in m.entries {
                    map.insert(k, v);
                }
                return Ok(());
            }
            Value::Seq(items) => {
                let mut merged = Map::default();
                for item in items.into_iter().rev() {
                    match item.value {
                        Value::Map(m) => {
                            for (k, v) in m.entries {
                                merged.insert(k, v);
                            }
                        }
                        _ => {
                            return Err(Diagnostic::new(
                                item.span,
                                "a merge key (<<) list may only hold mappings",
                            ))
                        }
                    }
                }
                for (k, v) in merged.entries {
                    map.insert(k, v);
                }
                return Ok(());
            }
            _ => {
                return Err(Diagnostic::new(
                    value.span,
                    "a merge key (<<) needs a mapping or a list of mappings",
                ))
            }
        }
    }
    let name = match &key.value {
        Value::Seq(_) | Value::Map(_) => {
            return Err(Diagnostic::new(
                key.span,
                "a mapping key must be a scalar, not a collection",
            ))
        }
        Value::Null => String::new(),
        _ => key.scalar_string().unwrap_or_default(),
    };
    map.insert(
        Key {
            name,
            span: key.span,
        },
        value,
    );
    Ok(())
}

fn count_nodes(node: &Node) -> usize {
    // Iterative so that a deep alias does not recurse.
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

fn tag_string(handle: &str, suffix: &str) -> String {
    format!("{handle}{suffix}")
}

const CORE: &str = "tag:yaml.org,2002:";

/// Tags GitLab understands on collections: `!reference` (and core-schema ones, ignored).
fn custom_tag(tag: Option<String>) -> Result<Option<String>, String> {
    match tag {
        None => Ok(None),
        Some(t) if t.starts_with(CORE) => Ok(None),
        Some(t) if t == "!reference" => Ok(Some("reference".to_string())),
        Some(t) => Err(format!("unknown YAML tag {t}")),
    }
}

/// Turn a scalar into a typed value. Plain scalars follow YAML 1.1 as Ruby's Psych reads
/// it (GitLab's parser): `true/yes/on` and `false/no/off` in any case are booleans, `~`
/// and `null` are null, integers in decimal, octal (`0o17`, `017`), hex and with `_`.
fn resolve_scalar(
    text: &str,
    style: ScalarStyle,
    tag: Option<&str>,
) -> Result<(Value, Option<String>), String> {
    if let Some(tag) = tag {
        let core = tag.strip_prefix(CORE);
        return match core {
            Some("str") => Ok((Value::String(text.to_string()), None)),
            Some("int") => parse_int(text)
                .map(|i| (Value::Int(i), None))
                .ok_or_else(|| format!("invalid !!int value {text:?}")),
            Some("float") => text
                .trim()
                .parse::<f64>()
                .map(|f| (Value::Float(f), None))
                .map_err(|_| format!("invalid !!float value {text:?}")),
            Some("bool") => match bool_word(text) {
                Some(b) => Ok((Value::Bool(b), None)),
                None => Err(format!("invalid !!bool value {text:?}")),
            },
            Some("null") => Ok((Value::Null, None)),
            Some(_) => Ok((plain(text), None)),
            None if tag == "!reference" => Err(format!(
                "!reference {text:?} is not valid: it needs a list of keys, such as !reference [.setup, script]"
            )),
            None => Err(format!("unknown YAML tag {tag}")),
        };
    }
    match style {
        ScalarStyle::Plain => Ok((plain(text), None)),
        _ => Ok((Value::String(text.to_string()), None)),
    }
}

fn bool_word(text: &str) -> Option<bool> {
    match text {
        "true" | "True" | "TRUE" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => Some(true),
        "false" | "False" | "FALSE" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => Some(false),
        _ => None,
    }
}

fn plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        _ => {}
    }
    if let Some(b) = bool_word(text) {
        return Value::Bool(b);
    }
    if let Some(i) = parse_int(text) {
        return Value::Int(i);
    }
    if let Some(f) = parse_float(text) {
        return Value::Float(f);
    }
    Value::String(text.to_string())
}

fn parse_int(text: &str) -> Option<i64> {
    let (neg, body) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if body.is_empty() || body.starts_with('_') || body.ends_with('_') {
        return None;
    }
    let clean: String = body.chars().filter(|c| *c != '_').collect();
    let value = if let Some(hex) = clean.strip_prefix("0x") {
        i64::from_str_radix(hex, 16).ok()?
    } else if let Some(oct) = clean.strip_prefix("0o") {
        i64::from_str_radix(oct, 8).ok()?
    } else if let Some(bin) = clean.strip_prefix("0b") {
        i64::from_str_radix(bin, 2).ok()?
    } else if clean.len() > 1 && clean.starts_with('0') {
        i64::from_str_radix(&clean[1..], 8).ok()?
    } else {
        if !clean.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        clean.parse::<i64>().ok()?
    };
    Some(if neg { -value } else { value })
}

fn parse_float(text: &str) -> Option<f64> {
    match text {
        ".inf" | ".Inf" | ".INF" | "+.inf" => return Some(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Some(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Some(f64::NAN),
        _ => {}
    }
    let body = text.trim_start_matches(['-', '+']);
    // Only things that look like numbers: digits with one dot and an optional exponent.
    let mut seen_digit = false;
    let mut seen_dot = false;
    for (i, c) in body.char_indices() {
        match c {
            '0'..='9' | '_' => seen_digit = true,
            '.' if !seen_dot => seen_dot = true,
            'e' | 'E' if seen_digit && i > 0 => {
                let rest = &body[i + 1..];
                let rest = rest.trim_start_matches(['-', '+']);
                if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                break;
            }
            _ => return None,
        }
    }
    if !seen_digit || !seen_dot {
        return None;
    }
    text.replace('_', "").parse::<f64>().ok()
}

/// Write a node back as YAML (used by `slipway preview`). Strings are always quoted in
/// JSON style, which is valid YAML and never changes type on re-reading.
pub fn emit(node: &Node) -> String {
    let mut out = String::new();
    match &node.value {
        Value::Map(m) if !m.is_empty() => emit_map(m, 0, &mut out),
        Value::Seq(s) if !s.is_empty() => emit_seq(s, 0, &mut out),
        _ => {
            out.push_str(&emit_scalar(node));
            out.push('\n');
        }
    }
    out
}

fn emit_scalar(node: &Node) -> String {
    let s = match &node.value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) if f.is_nan() => ".nan".to_string(),
        Value::Float(f) if f.is_infinite() => {
            if *f > 0.0 {
                ".inf".to_string()
            } else {
                "-.inf".to_string()
            }
        }
        Value::Float(f) => format_float(*f),
        Value::String(s) => quote(s),
        Value::Seq(s) if s.is_empty() => "[]".to_string(),
        Value::Map(m) if m.is_empty() => "{}".to_string(),
        _ => String::new(),
    };
    match &node.tag {
        Some(t) => format!("!{t} {s}"),
        None => s,
    }
}

/// Keys are written plain when that reads back as the same string, quoted otherwise.
fn emit_key(k: &str) -> String {
    let plain_safe = !k.is_empty()
        && k.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '.')
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/'))
        && matches!(plain(k), Value::String(_))
        && k != "<<";
    if plain_safe {
        k.to_string()
    } else {
        quote(k)
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

fn is_block(node: &Node) -> bool {
    match &node.value {
        Value::Map(m) => !m.is_empty(),
        Value::Seq(s) => !s.is_empty(),
        _ => false,
    }
}

fn emit_map(m: &Map, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    for (k, v) in &m.entries {
        out.push_str(&pad);
        out.push_str(&emit_key(&k.name));
        out.push(':');
        if is_block(v) {
            if let Some(t) = &v.tag {
                out.push_str(&format!(" !{t}"));
            }
            out.push('\n');
            match &v.value {
                Value::Map(inner) => emit_map(inner, indent + 2, out),
                Value::Seq(items) => emit_seq(items, indent + 2, out),
                _ => {}
            }
        } else {
            out.push(' ');
            out.push_str(&emit_scalar(v));
            out.push('\n');
        }
    }
}

fn emit_seq(items: &[Node], indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    for item in items {
        out.push_str(&pad);
        out.push('-');
        if is_block(item) {
            if let Some(t) = &item.tag {
                out.push_str(&format!(" !{t}"));
            }
            out.push('\n');
            match &item.value {
                Value::Map(inner) => emit_map(inner, indent + 2, out),
                Value::Seq(inner) => emit_seq(inner, indent + 2, out),
                _ => {}
            }
        } else {
            out.push(' ');
            out.push_str(&emit_scalar(item));
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Node {
        parse(FileId(0), text).expect("valid").expect("document")
    }

    #[test]
    fn keeps_positions() {
        let n = load("a:\n  b: [1, 2]\n");
        let b = n
            .as_map()
            .and_then(|m| m.get("a"))
            .and_then(|a| a.as_map())
            .and_then(|m| m.get("b"));
        let b = b.expect("b");
        assert_eq!((b.span.start.line, b.span.start.col), (2, 6));
    }

    #[test]
    fn psych_booleans_and_numbers() {
        let n = load("a: yes\nb: off\nc: 010\nd: 0x1f\ne: 1_000\nf: 1.5\ng: '1'\nh: ~\ni: 1.2.3\n");
        let m = n.as_map().expect("map");
        assert_eq!(m.get("a").map(|n| &n.value), Some(&Value::Bool(true)));
        assert_eq!(m.get("b").map(|n| &n.value), Some(&Value::Bool(false)));
        assert_eq!(m.get("c").map(|n| &n.value), Some(&Value::Int(8)));
        assert_eq!(m.get("d").map(|n| &n.value), Some(&Value::Int(31)));
        assert_eq!(m.get("e").map(|n| &n.value), Some(&Value::Int(1000)));
        assert_eq!(m.get("f").map(|n| &n.value), Some(&Value::Float(1.5)));
        assert_eq!(
            m.get("g").map(|n| &n.value),
            Some(&Value::String("1".into()))
        );
        assert_eq!(m.get("h").map(|n| &n.value), Some(&Value::Null));
        assert_eq!(
            m.get("i").map(|n| &n.value),
            Some(&Value::String("1.2.3".into()))
        );
    }

    #[test]
    fn merge_keys_follow_psych_order() {
        let n = load("base: &b {x: 1, y: 2}\nj:\n  x: 0\n  <<: *b\n  y: 3\n");
        let j = n
            .as_map()
            .and_then(|m| m.get("j"))
            .and_then(|j| j.as_map())
            .expect("j");
        // `<<` overrides keys written before it, keys after it override the merge.
        assert_eq!(j.get("x").map(|n| &n.value), Some(&Value::Int(1)));
        assert_eq!(j.get("y").map(|n| &n.value), Some(&Value::Int(3)));
    }

    #[test]
    fn merge_list_earlier_wins() {
        let n = load("a: &a {x: 1}\nb: &b {x: 2, z: 2}\nj:\n  <<: [*a, *b]\n");
        let j = n
            .as_map()
            .and_then(|m| m.get("j"))
            .and_then(|j| j.as_map())
            .expect("j");
        assert_eq!(j.get("x").map(|n| &n.value), Some(&Value::Int(1)));
        assert_eq!(j.get("z").map(|n| &n.value), Some(&Value::Int(2)));
    }

    #[test]
    fn reference_tag_is_kept() {
        let n = load("j:\n  script: !reference [.a, script]\n");
        let s = n
            .as_map()
            .and_then(|m| m.get("j"))
            .and_then(|j| j.as_map())
            .and_then(|m| m.get("script"))
            .expect("s");
        assert_eq!(s.tag.as_deref(), Some("reference"));
    }

    #[test]
    fn errors_have_positions() {
        let e = parse(FileId(0), "a: [1,\nb: 2\n").expect_err("invalid");
        assert!(e.message.starts_with("YAML syntax error"));
        assert!(e.span.start.line >= 1);
        let e = parse(FileId(0), "a: *nope\n").expect_err("unknown alias");
        assert!(
            e.message.contains("alias") || e.message.contains("anchor"),
            "{}",
            e.message
        );
        let e = parse(FileId(0), "a: !custom x\n").expect_err("unknown tag");
        assert!(e.message.contains("unknown YAML tag"));
    }

    #[test]
    fn billion_laughs_is_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        assert!(parse(FileId(0), &text).is_err());
    }

    #[test]
    fn deep_nesting_is_refused() {
        let text = format!("a: {}{}\n", "[".repeat(5000), "]".repeat(5000));
        assert!(parse(FileId(0), &text).is_err());
    }

    #[test]
    fn emit_round_trips() {
        let n = load(
            "a:\n  - 1\n  - 'x: y'\n  - {b: null, c: [true, 1.5]}\nd: !reference [x, y]\ne: []\n",
        );
        let text = emit(&n);
        let again = load(&text);
        assert_eq!(emit(&again), text);
    }
}
