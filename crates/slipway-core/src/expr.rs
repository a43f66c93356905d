//! The expression language of `rules:if`, `workflow:rules:if` (and `only/except:variables`):
//! GitLab's "CI/CD variable expressions", such as
//! `$CI_COMMIT_BRANCH == "main" && ($CI_COMMIT_TITLE =~ /^release/i || $FORCE)`.
//!
//! [`parse`] checks an expression once and compiles its regular expressions; [`Expr::evaluate`]
//! then decides it for a set of variables. The behaviour follows GitLab's own implementation
//! (the lexer, shunting-yard parser and lexemes under `lib/gitlab/ci/pipeline/expression/`),
//! including its Ruby value semantics, which show through in a few places:
//!
//! * Values are `null` (an undefined variable), strings, regular expressions and the booleans
//!   that comparisons produce. `&&` and `||` return one of their operands, like Ruby's: `a && b`
//!   is `a` when `a` is `null` or `false`, else `b`; `a || b` is `a` unless `a` is `null` or
//!   `false`. An empty string counts as "true" there, so `$EMPTY && $X` is decided by `$X`, and
//!   `$EMPTY || $X` is the empty string (GitLab issues 321371, 358775, 463528).
//! * The result of the whole expression is true when it is `true`, a regular expression, or a
//!   string that is not blank (not empty nor only whitespace): a bare `$VAR` is true when the
//!   variable is defined and not empty.
//! * `==` / `!=` compare exactly; a boolean equals the string `"true"` / `"false"`.
//! * `=~` / `!~` match the left side, as a string (`null` is the empty string), against the right
//!   side without anchoring. A right side that is a string (a variable's value or a quoted
//!   literal) in `/pattern/flags` form is used as a regular expression; any other string is
//!   searched for the left side as a substring (`"23" =~ "1234"` is true), and `null` never
//!   matches.
//!
//! * GitLab's shunting-yard parser also accepts a few token orders that are not infix
//!   expressions, such as `== $A $B` or `$A ()`; they are errors here.
//!
//! Regular expressions use RE2 syntax (translated to the `regex` crate, which shares its
//! linear-time guarantee), with the flags `i`, `m`, `s` and `U`.
//!
//! Like GitLab, an expression has at most 99 tokens; parentheses nest at most 64 deep.

use std::borrow::Cow;
use std::fmt;
use std::sync::OnceLock;

use regex::{Regex, RegexBuilder};

/// GitLab's lexer gives up when it reaches this many tokens: an expression has at most 99.
const MAX_TOKENS: usize = 100;

/// Deepest nesting of parentheses accepted (the token limit already keeps it below 50).
const MAX_DEPTH: usize = 64;

/// Upper bound on the compiled size of one regular expression, in bytes.
const REGEX_SIZE_LIMIT: usize = 4 << 20;

/// RE2's largest counted repetition, `{1000}`.
const MAX_REPEAT: u32 = 1000;

/// A parsed expression, ready to evaluate many times.
#[derive(Debug, Clone)]
pub struct Expr {
    root: Node,
}

/// A syntax error: `offset` is the byte offset in the expression text where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExprError {}

fn err<T>(offset: usize, message: impl Into<String>) -> Result<T, ExprError> {
    Err(ExprError {
        offset,
        message: message.into(),
    })
}

/// Parses an expression, compiling its regular expressions.
pub fn parse(src: &str) -> Result<Expr, ExprError> {
    // Large pipelines repeat the same few expressions on hundreds of jobs (templates),
    // and compiling their regexes dominates planning: remember what was parsed. Parsed
    // expressions share compiled regexes, so a clone is cheap.
    thread_local! {
        static PARSED: std::cell::RefCell<std::collections::HashMap<String, Result<Expr, ExprError>>> =
            std::cell::RefCell::new(std::collections::HashMap::new());
    }
    const MAX_REMEMBERED: usize = 4096;
    if let Some(hit) = PARSED.with(|c| c.borrow().get(src).cloned()) {
        return hit;
    }
    let result = parse_uncached(src);
    PARSED.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= MAX_REMEMBERED {
            c.clear();
        }
        c.insert(src.to_string(), result.clone());
    });
    result
}

fn parse_uncached(src: &str) -> Result<Expr, ExprError> {
    let tokens = lex(src)?;
    if tokens.is_empty() {
        return err(0, "the expression is empty");
    }
    let mut parser = Parser {
        src,
        tokens: &tokens,
        pos: 0,
        depth: 0,
    };
    let root = parser.parse_or()?;
    if let Some(tok) = parser.peek() {
        return match tok.kind {
            TokKind::RParen => err(tok.offset, "unmatched `)`"),
            _ => err(
                tok.offset,
                format!(
                    "expected an operator (`==`, `!=`, `=~`, `!~`, `&&` or `||`) before {}",
                    tok.describe(src)
                ),
            ),
        };
    }
    Ok(Expr { root })
}

impl Expr {
    /// `lookup(name)` returns the variable's value, None when the variable is not defined.
    pub fn evaluate(&self, lookup: &dyn Fn(&str) -> Option<String>) -> bool {
        eval(&self.root, lookup).is_present()
    }

    /// Names of every variable the expression mentions (for diagnostics).
    pub fn variables(&self) -> Vec<String> {
        let mut names = Vec::new();
        collect_variables(&self.root, &mut names);
        names
    }
}

fn collect_variables(node: &Node, names: &mut Vec<String>) {
    match node {
        Node::Variable(name) => {
            if !names.iter().any(|n| n == name) {
                names.push(name.clone());
            }
        }
        Node::Binary(_, left, right) => {
            collect_variables(left, names);
            collect_variables(right, names);
        }
        Node::String(_) | Node::Null | Node::Pattern(_) => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Syntax tree and values

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BinOp {
    Equals,
    NotEquals,
    Matches,
    NotMatches,
    And,
    Or,
}

impl BinOp {
    fn symbol(self) -> &'static str {
        match self {
            BinOp::Equals => "==",
            BinOp::NotEquals => "!=",
            BinOp::Matches => "=~",
            BinOp::NotMatches => "!~",
            BinOp::And => "&&",
            BinOp::Or => "||",
        }
    }
}

/// A compiled regular expression. `source` is the RE2 source GitLab would build
/// (`(?flags)` followed by the pattern); two patterns are equal when their sources are.
#[derive(Debug, Clone)]
struct Pattern {
    source: String,
    regex: Regex,
}

#[derive(Debug, Clone)]
enum Node {
    Variable(String),
    String(String),
    Null,
    Pattern(Box<Pattern>),
    Binary(BinOp, Box<Node>, Box<Node>),
}

/// A value during evaluation, modelled on the Ruby values GitLab computes with.
enum Value<'a> {
    Null,
    Bool(bool),
    Str(Cow<'a, str>),
    Pattern(&'a Pattern),
}

impl Value<'_> {
    /// Ruby truthiness: everything but `nil` and `false`, the empty string included.
    fn is_truthy(&self) -> bool {
        !matches!(self, Value::Null | Value::Bool(false))
    }

    /// Rails' `present?`, which decides the expression: strings must not be blank.
    fn is_present(&self) -> bool {
        match self {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Str(s) => !s.chars().all(char::is_whitespace),
            Value::Pattern(_) => true,
        }
    }

    /// Ruby's `to_s`, used for the left side of `=~` and `!~`.
    fn to_text(&self) -> Cow<'_, str> {
        match self {
            Value::Null => Cow::Borrowed(""),
            Value::Bool(true) => Cow::Borrowed("true"),
            Value::Bool(false) => Cow::Borrowed("false"),
            Value::Str(s) => Cow::Borrowed(s),
            Value::Pattern(p) => Cow::Owned(format!("/{}/", p.source)),
        }
    }
}

/// `==` as GitLab does it: Ruby equality, except that a boolean equals its string form.
fn values_equal(left: &Value<'_>, right: &Value<'_>) -> bool {
    match (left, right) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(a), Value::Bool(b)) => a == b,
        (Value::Str(a), Value::Str(b)) => a == b,
        (Value::Bool(b), Value::Str(s)) | (Value::Str(s), Value::Bool(b)) => {
            s.as_ref() == if *b { "true" } else { "false" }
        }
        (Value::Pattern(a), Value::Pattern(b)) => a.source == b.source,
        _ => false,
    }
}

/// `=~`: the left side's text against the right side's pattern (see the module docs).
fn value_matches(left: &Value<'_>, right: &Value<'_>) -> bool {
    let text = left.to_text();
    match right {
        // GitLab returns false for nil and false; `true` would raise there, it never matches here.
        Value::Null | Value::Bool(_) => false,
        Value::Pattern(p) => p.regex.is_match(&text),
        Value::Str(s) => match pattern_from_string(s) {
            Some(p) => p.regex.is_match(&text),
            // Not a usable `/pattern/`: GitLab falls back to `String#scan`, a substring search.
            None => s.contains(text.as_ref()),
        },
    }
}

fn eval<'a>(node: &'a Node, lookup: &dyn Fn(&str) -> Option<String>) -> Value<'a> {
    match node {
        Node::Variable(name) => match lookup(name) {
            Some(value) => Value::Str(Cow::Owned(value)),
            None => Value::Null,
        },
        Node::String(s) => Value::Str(Cow::Borrowed(s)),
        Node::Null => Value::Null,
        Node::Pattern(p) => Value::Pattern(p),
        Node::Binary(op, left, right) => {
            let left = eval(left, lookup);
            match op {
                BinOp::And => {
                    if left.is_truthy() {
                        eval(right, lookup)
                    } else {
                        left
                    }
                }
                BinOp::Or => {
                    if left.is_truthy() {
                        left
                    } else {
                        eval(right, lookup)
                    }
                }
                BinOp::Equals => Value::Bool(values_equal(&left, &eval(right, lookup))),
                BinOp::NotEquals => Value::Bool(!values_equal(&left, &eval(right, lookup))),
                BinOp::Matches => Value::Bool(value_matches(&left, &eval(right, lookup))),
                BinOp::NotMatches => Value::Bool(!value_matches(&left, &eval(right, lookup))),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Lexer

#[derive(Debug)]
enum TokKind {
    LParen,
    RParen,
    Variable(String),
    String(String),
    Pattern(Box<Pattern>),
    Null,
    Op(BinOp),
}

#[derive(Debug)]
struct Token {
    kind: TokKind,
    offset: usize,
    len: usize,
}

impl Token {
    fn describe(&self, src: &str) -> String {
        let text = src.get(self.offset..self.offset + self.len).unwrap_or("");
        let mut shown: String = text.chars().take(40).collect();
        if shown.len() < text.len() {
            shown.push('…');
        }
        format!("`{shown}`")
    }
}

/// GitLab skips whitespace with Ruby's `\s`: ASCII space, `\t`, `\n`, `\v`, `\f` and `\r`.
fn is_ruby_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// GitLab's pattern lexeme, `^\/([^\/]|\\/)+[^\\]\/[ismU]*`. The regex crate reports the same
/// leftmost-first match a backtracking engine finds.
fn pattern_lexeme() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        #[allow(clippy::expect_used)]
        Regex::new(r"^/(?:[^/]|\\/)+[^\\]/[ismU]*").expect("the pattern lexeme is a valid regex")
    })
}

fn lex(src: &str) -> Result<Vec<Token>, ExprError> {
    let bytes = src.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    loop {
        while i < bytes.len() && is_ruby_space(bytes[i]) {
            i += 1;
        }
        if i >= bytes.len() {
            return Ok(tokens);
        }
        if tokens.len() == MAX_TOKENS - 1 {
            return err(
                i,
                format!(
                    "the expression has too many tokens (at most {} are allowed)",
                    MAX_TOKENS - 1
                ),
            );
        }
        let rest = &src[i..];
        let (kind, len) = lex_one(rest, i)?;
        tokens.push(Token {
            kind,
            offset: i,
            len,
        });
        i += len;
    }
}

/// Scans one token at the start of `rest` (which starts at byte `offset` of the expression),
/// trying GitLab's lexemes in its order.
fn lex_one(rest: &str, offset: usize) -> Result<(TokKind, usize), ExprError> {
    let bytes = rest.as_bytes();
    let two = bytes.get(..2).unwrap_or(bytes);
    match bytes[0] {
        b'(' => return Ok((TokKind::LParen, 1)),
        b')' => return Ok((TokKind::RParen, 1)),
        b'$' => {
            let name_len = bytes[1..].iter().take_while(|&&b| is_word_byte(b)).count();
            if name_len > 0 {
                let name = &rest[1..1 + name_len];
                return Ok((TokKind::Variable(name.to_string()), 1 + name_len));
            }
            let message = if bytes.get(1) == Some(&b'{') {
                "`${...}` is not supported in expressions: write the variable as `$NAME`"
            } else {
                "`$` must be followed by a variable name made of letters, digits and `_`"
            };
            return err(offset, message);
        }
        quote @ (b'"' | b'\'') => {
            // `"(?<string>.*?)"`: up to the next quote of the same kind, no escapes, one line.
            let end = bytes[1..]
                .iter()
                .position(|&b| b == quote || b == b'\n')
                .map(|p| p + 1);
            return match end {
                Some(end) if bytes[end] == quote => {
                    Ok((TokKind::String(rest[1..end].to_string()), end + 1))
                }
                _ => err(
                    offset,
                    format!(
                        "unterminated string: no closing {} on the same line",
                        if quote == b'"' { "`\"`" } else { "`'`" }
                    ),
                ),
            };
        }
        b'/' => return lex_pattern(rest, offset),
        _ => {}
    }
    if rest.starts_with("null") {
        return Ok((TokKind::Null, 4));
    }
    let op = match two {
        b"==" => Some(BinOp::Equals),
        b"=~" => Some(BinOp::Matches),
        b"!=" => Some(BinOp::NotEquals),
        b"!~" => Some(BinOp::NotMatches),
        b"&&" => Some(BinOp::And),
        b"||" => Some(BinOp::Or),
        _ => None,
    };
    if let Some(op) = op {
        return Ok((TokKind::Op(op), 2));
    }
    let first: String = rest.chars().next().into_iter().collect();
    let hint = match bytes[0] {
        b'=' => " (did you mean `==` or `=~`?)",
        b'!' => " (did you mean `!=` or `!~`? there is no negation operator)",
        b'&' => " (did you mean `&&`?)",
        b'|' => " (did you mean `||`?)",
        b'<' | b'>' => " (only `==`, `!=`, `=~` and `!~` compare values)",
        b if b.is_ascii_alphanumeric() => {
            " (strings must be quoted, variables start with `$`, and the only keyword is `null`)"
        }
        _ => "",
    };
    err(offset, format!("unexpected character `{first}`{hint}"))
}

fn lex_pattern(rest: &str, offset: usize) -> Result<(TokKind, usize), ExprError> {
    let Some(m) = pattern_lexeme().find(rest) else {
        let mut chars = rest.chars().skip(1);
        let message = match (chars.next(), chars.next()) {
            (Some('/'), _) => "empty regular expression `//`",
            (Some(_), Some('/')) => {
                "single-character regular expressions such as `/./` are not supported"
            }
            _ => {
                "invalid regular expression literal: it must be `/pattern/flags`, ending in a \
                 `/` that is not escaped"
            }
        };
        return err(offset, message);
    };
    let text = m.as_str();
    let unescaped = text.replace("\\/", "/");
    let Some((body, flags)) = ruby_regex_syntax(&unescaped) else {
        return err(
            offset,
            format!(
                "invalid regular expression {}: a pattern cannot span lines",
                shorten(text)
            ),
        );
    };
    match compile_pattern(body, flags) {
        Ok(p) => Ok((TokKind::Pattern(Box::new(p)), text.len())),
        Err(e) => err(
            offset,
            format!("invalid regular expression {}: {e}", shorten(text)),
        ),
    }
}

fn shorten(text: &str) -> String {
    let mut shown: String = text.chars().take(60).collect();
    if shown.len() < text.len() {
        shown.push('…');
    }
    format!("`{shown}`")
}

// ---------------------------------------------------------------------------------------------
// Parser: `||` binds loosest, then `&&`, then the comparisons; all are left-associative.

struct Parser<'a> {
    src: &'a str,
    tokens: &'a [Token],
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn peek_op(&self) -> Option<BinOp> {
        match self.peek() {
            Some(Token {
                kind: TokKind::Op(op),
                ..
            }) => Some(*op),
            _ => None,
        }
    }

    fn parse_or(&mut self) -> Result<Node, ExprError> {
        let mut left = self.parse_and()?;
        while self.peek_op() == Some(BinOp::Or) {
            self.pos += 1;
            let right = self.parse_and()?;
            left = Node::Binary(BinOp::Or, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn parse_and(&mut self) -> Result<Node, ExprError> {
        let mut left = self.parse_comparison()?;
        while self.peek_op() == Some(BinOp::And) {
            self.pos += 1;
            let right = self.parse_comparison()?;
            left = Node::Binary(BinOp::And, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn parse_comparison(&mut self) -> Result<Node, ExprError> {
        let mut left = self.parse_operand()?;
        while let Some(op) = self.peek_op() {
            if matches!(op, BinOp::And | BinOp::Or) {
                break;
            }
            self.pos += 1;
            let right = self.parse_operand()?;
            left = Node::Binary(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn parse_operand(&mut self) -> Result<Node, ExprError> {
        let previous = self.pos.checked_sub(1).and_then(|p| self.tokens.get(p));
        let after = match previous {
            Some(Token {
                kind: TokKind::Op(op),
                ..
            }) => format!(" after `{}`", op.symbol()),
            Some(Token {
                kind: TokKind::LParen,
                ..
            }) => " after `(`".to_string(),
            _ => String::new(),
        };
        let Some(tok) = self.tokens.get(self.pos) else {
            return err(
                self.src.len(),
                format!("the expression ends where a value was expected{after}"),
            );
        };
        self.pos += 1;
        match &tok.kind {
            TokKind::Variable(name) => Ok(Node::Variable(name.clone())),
            TokKind::String(s) => Ok(Node::String(s.clone())),
            TokKind::Null => Ok(Node::Null),
            TokKind::Pattern(p) => Ok(Node::Pattern(p.clone())),
            TokKind::LParen => {
                if self.depth >= MAX_DEPTH {
                    return err(
                        tok.offset,
                        format!("parentheses are nested more than {MAX_DEPTH} deep"),
                    );
                }
                self.depth += 1;
                let inner = self.parse_or()?;
                self.depth -= 1;
                match self.peek() {
                    Some(Token {
                        kind: TokKind::RParen,
                        ..
                    }) => {
                        self.pos += 1;
                        Ok(inner)
                    }
                    Some(other) => err(
                        other.offset,
                        format!(
                            "expected an operator or `)` before {}",
                            other.describe(self.src)
                        ),
                    ),
                    None => err(tok.offset, "unclosed `(`: no matching `)`"),
                }
            }
            TokKind::RParen if after == " after `(`" => err(tok.offset, "empty parentheses"),
            TokKind::Op(op) if previous.is_none() => err(
                tok.offset,
                format!("`{}` has no value on its left", op.symbol()),
            ),
            _ => err(
                tok.offset,
                format!(
                    "expected a value (a `$VARIABLE`, a quoted string, `null` or a /pattern/){after}, found {}",
                    tok.describe(self.src)
                ),
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Regular expressions

/// GitLab's `UntrustedRegexp::RubySyntax`: the first line of `s` that reads
/// `/<pattern>/<flags>`, the pattern running to the last `/` followed only by flags `ismU`.
fn ruby_regex_syntax(s: &str) -> Option<(&str, &str)> {
    s.split('\n').find_map(|line| {
        let body = line.strip_prefix('/')?;
        let close = body.rfind(|c: char| !matches!(c, 'i' | 's' | 'm' | 'U'))?;
        (body.as_bytes()[close] == b'/').then(|| (&body[..close], &body[close + 1..]))
    })
}

/// A string used as a pattern (a variable's value, or the text of a pattern literal): after
/// GitLab's unescaping of `\/`, it must be `/pattern/flags` and compile.
fn pattern_from_string(s: &str) -> Option<Pattern> {
    let unescaped = s.replace("\\/", "/");
    let (body, flags) = ruby_regex_syntax(&unescaped)?;
    compile_pattern(body, flags).ok()
}

fn compile_pattern(body: &str, flags: &str) -> Result<Pattern, String> {
    let mut source = String::new();
    let mut prefix = String::new();
    if !flags.is_empty() {
        source = format!("(?{flags})");
        // RE2 accepts repeated flags (`/ab/ii`); the regex crate wants each once.
        for f in ['i', 'm', 's', 'U'] {
            if flags.contains(f) {
                prefix.push(f);
            }
        }
        prefix = format!("(?{prefix})");
    }
    source.push_str(body);
    let translated = re2_to_rust(body)?;
    let regex = RegexBuilder::new(&format!("{prefix}{translated}"))
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(_) => "the pattern is too large".to_string(),
            other => {
                let text = other.to_string();
                let last = text.lines().last().unwrap_or("").trim();
                last.strip_prefix("error: ").unwrap_or(last).to_string()
            }
        })?;
    Ok(Pattern { source, regex })
}

const ASCII_DIGIT: &str = "0-9";
const ASCII_WORD: &str = "0-9A-Za-z_";
const ASCII_SPACE: &str = r"\t\n\x0C\r ";

/// Rewrites RE2 syntax into the `regex` crate's, keeping RE2's meaning where the two differ:
/// `\d \s \w \b` are ASCII-only in RE2, `[` `&&` `--` `~~` are plain characters in RE2
/// classes, a `{` that does not start a repetition is a literal, `\Q...\E` quotes, octal
/// escapes exist, stacked repetitions (`a**`) and repeated counts above 1000 are errors, and
/// only the flags `i m s U` exist.
fn re2_to_rust(src: &str) -> Result<String, String> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len() + 16);
    let mut i = 0;
    let mut last_was_repeat = false;
    while i < chars.len() {
        let c = chars[i];
        let mut is_repeat = false;
        match c {
            '\\' => {
                i = translate_escape(&chars, i, &mut out)?;
                last_was_repeat = false;
                continue;
            }
            '[' => {
                i = translate_class(&chars, i, &mut out)?;
                last_was_repeat = false;
                continue;
            }
            '(' if chars.get(i + 1) == Some(&'?') => {
                i = translate_group_flags(&chars, i, &mut out)?;
                last_was_repeat = false;
                continue;
            }
            '*' | '+' | '?' => {
                if last_was_repeat {
                    return Err(format!("bad repetition operator `{c}`"));
                }
                out.push(c);
                if chars.get(i + 1) == Some(&'?') {
                    out.push('?');
                    i += 1;
                }
                is_repeat = true;
            }
            '{' => match counted_repetition(&chars, i) {
                Some((end, min, max)) => {
                    if last_was_repeat {
                        return Err("bad repetition operator `{`".to_string());
                    }
                    if min > MAX_REPEAT || max.is_some_and(|m| m > MAX_REPEAT) {
                        return Err(format!("repetition count above {MAX_REPEAT}"));
                    }
                    if max.is_some_and(|m| m < min) {
                        return Err(
                            "bad repetition range: the maximum is below the minimum".to_string()
                        );
                    }
                    out.extend(&chars[i..end]);
                    i = end - 1;
                    if chars.get(i + 1) == Some(&'?') {
                        out.push('?');
                        i += 1;
                    }
                    is_repeat = true;
                }
                None => out.push_str(r"\{"),
            },
            '}' => out.push_str(r"\}"),
            _ => out.push(c),
        }
        last_was_repeat = is_repeat;
        i += 1;
    }
    Ok(out)
}

/// `{n}`, `{n,}` or `{n,m}` at `chars[i]`: returns the index after `}`, n and m.
fn counted_repetition(chars: &[char], i: usize) -> Option<(usize, u32, Option<u32>)> {
    let mut j = i + 1;
    let number = |j: &mut usize| -> Option<u32> {
        let start = *j;
        while chars.get(*j).is_some_and(char::is_ascii_digit) {
            *j += 1;
        }
        if *j == start {
            return None;
        }
        // Saturate: anything this large is rejected as above the limit anyway.
        let digits: String = chars[start..*j].iter().collect();
        Some(digits.parse::<u32>().unwrap_or(u32::MAX))
    };
    let min = number(&mut j)?;
    let max = match chars.get(j) {
        Some('}') => Some(min),
        Some(',') => {
            j += 1;
            if chars.get(j) == Some(&'}') {
                None
            } else {
                Some(number(&mut j)?)
            }
        }
        _ => return None,
    };
    (chars.get(j) == Some(&'}')).then_some((j + 1, min, max))
}

/// `(?flags)`, `(?flags:...`, `(?P<name>` and `(?<name>`; anything else after `(?` is an error
/// in RE2 (look-around, atomic groups, comments, `x` flag...).
fn translate_group_flags(chars: &[char], i: usize, out: &mut String) -> Result<usize, String> {
    let mut j = i + 2;
    match chars.get(j) {
        Some('P') if chars.get(j + 1) == Some(&'<') => {
            out.push_str("(?P<");
            return Ok(j + 2);
        }
        Some('<') if !matches!(chars.get(j + 1), Some('=' | '!')) => {
            out.push_str("(?<");
            return Ok(j + 1);
        }
        _ => {}
    }
    let mut on: Vec<char> = Vec::new();
    let mut off: Vec<char> = Vec::new();
    let mut negated = false;
    let mut saw_flag = false;
    loop {
        match chars.get(j) {
            Some(&f @ ('i' | 'm' | 's' | 'U')) => {
                saw_flag = true;
                on.retain(|&x| x != f);
                off.retain(|&x| x != f);
                if negated {
                    off.push(f);
                } else {
                    on.push(f);
                }
            }
            Some('-') if !negated => {
                negated = true;
                saw_flag = false;
            }
            Some(&end @ (':' | ')')) => {
                if negated && !saw_flag {
                    return Err("invalid flags: `-` must be followed by a flag".to_string());
                }
                out.push_str("(?");
                out.extend(&on);
                if !off.is_empty() {
                    out.push('-');
                    out.extend(&off);
                }
                if on.is_empty() && off.is_empty() && end == ')' {
                    // `(?)` is an error in RE2 too.
                    return Err("missing flags in `(?)`".to_string());
                }
                out.push(end);
                return Ok(j + 1);
            }
            _ => {
                return Err(
                    "unsupported group syntax after `(?` (RE2 has no look-around, no `x` flag)"
                        .to_string(),
                )
            }
        }
        j += 1;
    }
}

/// An escape outside a character class, at `chars[i] == '\\'`.
fn translate_escape(chars: &[char], i: usize, out: &mut String) -> Result<usize, String> {
    let Some(&c) = chars.get(i + 1) else {
        return Err("trailing backslash".to_string());
    };
    let next = i + 2;
    match c {
        'd' => out.push_str("[0-9]"),
        'D' => out.push_str("[^0-9]"),
        'w' => out.push_str("[0-9A-Za-z_]"),
        'W' => out.push_str("[^0-9A-Za-z_]"),
        's' => out.push_str(r"[\t\n\x0C\r ]"),
        'S' => out.push_str(r"[^\t\n\x0C\r ]"),
        'b' => out.push_str(r"(?-u:\b)"),
        'B' => out.push_str(r"(?-u:\B)"),
        'A' => out.push_str(r"\A"),
        'z' => out.push_str(r"\z"),
        'C' => out.push_str("(?s:.)"),
        'Q' => {
            let mut j = next;
            while j < chars.len() {
                if chars[j] == '\\' && chars.get(j + 1) == Some(&'E') {
                    return Ok(j + 2);
                }
                if chars[j] == '\\' && chars.get(j + 1) == Some(&'\\') {
                    // RE2 reads `\\` inside `\Q...\E` as one backslash.
                    push_literal(out, '\\');
                    j += 2;
                    continue;
                }
                push_literal(out, chars[j]);
                j += 1;
            }
            return Ok(j);
        }
        'p' | 'P' => return translate_unicode_class(chars, i, out),
        _ => {
            let (value, end) = escaped_char(chars, i)?;
            push_literal(out, value);
            return Ok(end);
        }
    }
    Ok(next)
}

/// `\pL`, `\p{Greek}`, `\p{^Greek}`, `\PL`...
fn translate_unicode_class(chars: &[char], i: usize, out: &mut String) -> Result<usize, String> {
    let negated = chars.get(i + 1) == Some(&'P');
    match chars.get(i + 2) {
        Some('{') => {
            let Some(close) = chars[i + 3..].iter().position(|&c| c == '}') else {
                return Err("missing `}` in a `\\p{...}` class".to_string());
            };
            let mut name: String = chars[i + 3..i + 3 + close].iter().collect();
            let mut negated = negated;
            if let Some(stripped) = name.strip_prefix('^') {
                negated = !negated;
                name = stripped.to_string();
            }
            out.push_str(if negated { r"\P{" } else { r"\p{" });
            out.push_str(&name);
            out.push('}');
            Ok(i + 4 + close)
        }
        Some(&c) => {
            out.push_str(if negated { r"\P" } else { r"\p" });
            out.push(c);
            Ok(i + 3)
        }
        None => Err("missing class name after `\\p`".to_string()),
    }
}

/// A single-character escape at `chars[i] == '\\'` (RE2's `ParseEscape`): returns the character
/// and the index after the escape.
fn escaped_char(chars: &[char], i: usize) -> Result<(char, usize), String> {
    let Some(&c) = chars.get(i + 1) else {
        return Err("trailing backslash".to_string());
    };
    let simple = |v: char| Ok((v, i + 2));
    match c {
        'a' => simple('\x07'),
        'f' => simple('\x0C'),
        't' => simple('\t'),
        'n' => simple('\n'),
        'r' => simple('\r'),
        'v' => simple('\x0B'),
        '0'..='7' => {
            // `\0`, `\0NN`, `\NN`, `\NNN`; a lone `\1`-`\7` would be a back-reference.
            let mut j = i + 2;
            let mut code = c as u32 - '0' as u32;
            if c != '0' && !chars.get(j).is_some_and(|d| ('0'..='7').contains(d)) {
                return Err(format!("back-references such as `\\{c}` are not supported"));
            }
            for _ in 0..2 {
                match chars.get(j) {
                    Some(&d @ '0'..='7') => {
                        code = code * 8 + (d as u32 - '0' as u32);
                        j += 1;
                    }
                    _ => break,
                }
            }
            char::from_u32(code)
                .map(|v| (v, j))
                .ok_or_else(|| "invalid octal escape".to_string())
        }
        'x' => {
            if chars.get(i + 2) == Some(&'{') {
                let Some(close) = chars[i + 3..].iter().position(|&c| c == '}') else {
                    return Err("missing `}` in a `\\x{...}` escape".to_string());
                };
                let hex: String = chars[i + 3..i + 3 + close].iter().collect();
                let value = (!hex.is_empty() && hex.chars().all(|h| h.is_ascii_hexdigit()))
                    .then(|| u32::from_str_radix(&hex, 16).ok())
                    .flatten()
                    .and_then(char::from_u32);
                match value {
                    Some(v) => Ok((v, i + 4 + close)),
                    None => Err(format!("invalid escape `\\x{{{hex}}}`")),
                }
            } else {
                let hex: String = chars.iter().skip(i + 2).take(2).collect();
                let value = (hex.len() == 2 && hex.chars().all(|h| h.is_ascii_hexdigit()))
                    .then(|| u32::from_str_radix(&hex, 16).ok())
                    .flatten()
                    .and_then(char::from_u32);
                match value {
                    Some(v) => Ok((v, i + 4)),
                    None => Err("invalid escape: `\\x` needs two hex digits".to_string()),
                }
            }
        }
        // Any other ASCII punctuation or space stands for itself.
        c if c.is_ascii() && !c.is_ascii_alphanumeric() => simple(c),
        c => Err(format!("invalid escape sequence `\\{c}`")),
    }
}

/// Appends `c` as a literal, escaped when the regex crate would read it as syntax.
fn push_literal(out: &mut String, c: char) {
    if c.is_alphanumeric() || c == '_' || (!c.is_ascii() && !c.is_whitespace()) {
        out.push(c);
    } else {
        out.push_str(&format!(r"\x{{{:X}}}", c as u32));
    }
}

const POSIX_CLASSES: [&str; 14] = [
    "alnum", "alpha", "ascii", "blank", "cntrl", "digit", "graph", "lower", "print", "punct",
    "space", "upper", "word", "xdigit",
];

/// A character class at `chars[i] == '['`, RE2 style.
fn translate_class(chars: &[char], i: usize, out: &mut String) -> Result<usize, String> {
    let mut j = i + 1;
    out.push('[');
    if chars.get(j) == Some(&'^') {
        out.push('^');
        j += 1;
    }
    let mut first = true;
    loop {
        let Some(&c) = chars.get(j) else {
            return Err("missing `]` to close a character class".to_string());
        };
        if c == ']' && !first {
            out.push(']');
            return Ok(j + 1);
        }
        first = false;
        // POSIX classes: `[:alpha:]`, `[:^alpha:]`.
        if c == '[' && chars.get(j + 1) == Some(&':') {
            let rest: String = chars[j + 2..].iter().take(12).collect();
            if let Some(end) = rest.find(":]") {
                let name = &rest[..end];
                let bare = name.strip_prefix('^').unwrap_or(name);
                if !POSIX_CLASSES.contains(&bare) {
                    return Err(format!("invalid character class `[:{name}:]`"));
                }
                out.push_str("[:");
                out.push_str(name);
                out.push_str(":]");
                j += 2 + name.chars().count() + 2;
                continue;
            }
        }
        if c == '\\' {
            match chars.get(j + 1) {
                Some('d') => {
                    out.push_str(ASCII_DIGIT);
                    j += 2;
                    continue;
                }
                Some('w') => {
                    out.push_str(ASCII_WORD);
                    j += 2;
                    continue;
                }
                Some('s') => {
                    out.push_str(ASCII_SPACE);
                    j += 2;
                    continue;
                }
                Some('D') => {
                    out.push_str("[^0-9]");
                    j += 2;
                    continue;
                }
                Some('W') => {
                    out.push_str("[^0-9A-Za-z_]");
                    j += 2;
                    continue;
                }
                Some('S') => {
                    out.push_str(r"[^\t\n\x0C\r ]");
                    j += 2;
                    continue;
                }
                Some('p' | 'P') => {
                    j = translate_unicode_class(chars, j, out)?;
                    continue;
                }
                _ => {}
            }
        }
        let (lo, after_lo) = class_char(chars, j)?;
        // A range, unless the `-` is the last thing in the class.
        if chars.get(after_lo) == Some(&'-') && chars.get(after_lo + 1).is_some_and(|&n| n != ']') {
            let (hi, after_hi) = class_char(chars, after_lo + 1)?;
            if hi < lo {
                return Err(format!("invalid character class range `{lo}-{hi}`"));
            }
            push_literal(out, lo);
            out.push('-');
            push_literal(out, hi);
            j = after_hi;
        } else {
            push_literal(out, lo);
            j = after_lo;
        }
    }
}

fn class_char(chars: &[char], j: usize) -> Result<(char, usize), String> {
    match chars.get(j) {
        Some('\\') => escaped_char(chars, j),
        Some(&c) => Ok((c, j + 1)),
        None => Err("missing `]` to close a character class".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The variables of GitLab's own statement spec.
    fn spec_vars() -> HashMap<String, String> {
        vars(&[
            ("PRESENT_VARIABLE", "my variable"),
            ("PATH_VARIABLE", "a/path/variable/value"),
            ("FULL_PATH_VARIABLE", "/a/full/path/variable/value"),
            ("EMPTY_VARIABLE", ""),
        ])
    }

    fn eval_in(src: &str, vars: &HashMap<String, String>) -> bool {
        let expr = parse(src).unwrap_or_else(|e| panic!("{src:?} should parse: {e:?}"));
        expr.evaluate(&|name| vars.get(name).cloned())
    }

    fn t(src: &str) -> bool {
        eval_in(src, &spec_vars())
    }

    fn parse_err(src: &str) -> ExprError {
        match parse(src) {
            Ok(expr) => panic!("{src:?} should not parse, got {expr:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn equality_with_strings() {
        assert!(t(r#"$PRESENT_VARIABLE == "my variable""#));
        assert!(t(r#""my variable" == $PRESENT_VARIABLE"#));
        assert!(!t(r#"$PRESENT_VARIABLE == "my""#));
        assert!(!t(r#"$PRESENT_VARIABLE != "my variable""#));
        assert!(t(r#"$PRESENT_VARIABLE != "other""#));
    }

    #[test]
    fn single_and_double_quotes_are_both_strings() {
        assert!(t("$PRESENT_VARIABLE == 'my variable'"));
        assert!(!t("$PRESENT_VARIABLE == 'no match'"));
        assert!(t(r#""say 'hi'" == "say 'hi'""#));
        // Two strings side by side are not one string.
        assert!(parse("'it''s'").is_err());
    }

    #[test]
    fn quotes_have_no_escapes() {
        // A backslash is an ordinary character and the string ends at the next quote.
        let v = vars(&[("V", r"a\b"), ("Q", r"x\")]);
        assert!(eval_in(r#"$V == "a\b""#, &v));
        assert!(eval_in(r#"$Q == "x\""#, &v));
        // `"a\"b"` is the string `a\` followed by a stray `b`.
        let e = parse_err(r#"$V == "a\"b""#);
        assert_eq!(e.offset, 10);
        // The other kind of quote is plain text inside a string.
        assert!(eval_in(r#"'"' == '"'"#, &v));
    }

    #[test]
    fn empty_string_literals() {
        assert!(t(r#"$EMPTY_VARIABLE == """#));
        assert!(t(r#""" == $EMPTY_VARIABLE"#));
        assert!(t("$EMPTY_VARIABLE == ''"));
        assert!(!t(r#"$UNDEFINED_VARIABLE == """#));
        assert!(!t(r#""" != $EMPTY_VARIABLE"#));
    }

    #[test]
    fn null_is_undefined() {
        assert!(t("$UNDEFINED_VARIABLE == null"));
        assert!(t("null == $UNDEFINED_VARIABLE"));
        assert!(!t("$PRESENT_VARIABLE == null"));
        assert!(!t("$EMPTY_VARIABLE == null"), "empty is not null");
        assert!(t("$EMPTY_VARIABLE != null"));
        assert!(!t("$UNDEFINED_VARIABLE != null"));
        assert!(t("null == null"));
    }

    #[test]
    fn bare_variable_is_defined_and_not_empty() {
        assert!(t("$PRESENT_VARIABLE"));
        assert!(!t("$UNDEFINED_VARIABLE"));
        assert!(!t("$EMPTY_VARIABLE"));
        // Rails' `present?`: a value of only whitespace is blank too.
        let v = vars(&[("BLANK", " \t\n"), ("NBSP", "\u{a0}")]);
        assert!(!eval_in("$BLANK", &v));
        assert!(!eval_in("$NBSP", &v));
    }

    #[test]
    fn literals_alone() {
        assert!(t(r#""string""#));
        assert!(!t(r#""""#));
        assert!(!t("null"));
        assert!(t("/pattern/"), "a pattern is a truthy value");
    }

    #[test]
    fn variables_compared_with_variables() {
        let v = vars(&[("A", "x"), ("B", "x"), ("C", "y"), ("E", "")]);
        assert!(eval_in("$A == $B", &v));
        assert!(!eval_in("$A == $C", &v));
        assert!(eval_in("$A != $C", &v));
        assert!(
            eval_in("$U1 == $U2", &v),
            "two undefined variables are both null"
        );
        assert!(!eval_in("$E == $U1", &v), "empty is not undefined");
    }

    #[test]
    fn variable_names() {
        let v = vars(&[("_x1", "a"), ("1A", "b"), ("CI_COMMIT_BRANCH", "main")]);
        assert!(eval_in("$_x1 == 'a'", &v));
        assert!(eval_in("$1A == 'b'", &v));
        assert!(eval_in("$CI_COMMIT_BRANCH=='main'", &v), "no spaces needed");
        // A name is case-sensitive.
        assert!(!eval_in("$ci_commit_branch", &v));
    }

    #[test]
    fn braced_variables_are_rejected() {
        // GitLab's variable lexeme is `\$(?<name>\w+)`: `${VAR}` is an unknown lexeme.
        let e = parse_err("${CI_COMMIT_BRANCH} == 'main'");
        assert_eq!(e.offset, 0);
        assert!(e.message.contains("${...}"), "{}", e.message);
        assert_eq!(parse_err("$ == 'x'").offset, 0);
        assert_eq!(parse_err("$A == $é").offset, 6);
    }

    #[test]
    fn regex_match_is_unanchored() {
        assert!(t("$PRESENT_VARIABLE =~ /var.*e$/"));
        assert!(t("$PRESENT_VARIABLE =~ /y v/"));
        assert!(!t("$PRESENT_VARIABLE =~ /^var.*/"));
        assert!(t("$PRESENT_VARIABLE !~ /^var.*/"));
        assert!(!t("$PRESENT_VARIABLE !~ /var.*e$/"));
    }

    #[test]
    fn regex_against_empty_and_undefined() {
        assert!(!t("$EMPTY_VARIABLE =~ /var.*/"));
        assert!(!t("$UNDEFINED_VARIABLE =~ /var.*/"));
        assert!(t("$EMPTY_VARIABLE !~ /var.*/"));
        assert!(t("$UNDEFINED_VARIABLE !~ /var.*/"));
        // GitLab matches `nil.to_s`, the empty string: a pattern that matches "" matches.
        assert!(t("$UNDEFINED_VARIABLE =~ /^$|x/"));
    }

    #[test]
    fn regex_flags() {
        assert!(t("$PRESENT_VARIABLE =~ /VAR.*/i"));
        assert!(!t("$PRESENT_VARIABLE =~ /VAR.*/"));
        assert!(!t("$PRESENT_VARIABLE !~ /VAR.*/i"));
        let v = vars(&[("MSG", "title\nbody line\nend")]);
        // Without `m`, `^` and `$` are the ends of the text; with it, of each line.
        assert!(!eval_in("$MSG =~ /^body/", &v));
        assert!(eval_in("$MSG =~ /^body/m", &v));
        // Without `s`, `.` stops at a line break.
        assert!(!eval_in("$MSG =~ /title.body/", &v));
        assert!(eval_in("$MSG =~ /title.body/s", &v));
        // `U` swaps greediness, flags combine and may repeat.
        assert!(eval_in("$MSG =~ /TITLE.BODY/smi", &v));
        assert!(eval_in("$MSG =~ /title/ii", &v));
        assert!(eval_in("'aaa' =~ /^a+?$/U", &v));
    }

    #[test]
    fn unknown_regex_flag_is_an_error() {
        // The lexeme takes only `[ismU]*`; `x` is left over as an unknown token.
        let e = parse_err("$A =~ /abc/x");
        assert_eq!(e.offset, 11);
        let e = parse_err("$A =~ /abc/g");
        assert_eq!(e.offset, 11);
    }

    #[test]
    fn escaped_slashes_in_patterns() {
        assert!(t(r"$PATH_VARIABLE =~ /path\/variable/"));
        assert!(t(
            r"$FULL_PATH_VARIABLE =~ /^\/a\/full\/path\/variable\/value$/"
        ));
        assert!(!t(r"$PRESENT_VARIABLE =~ /va\/r.*e$/"));
        // A pattern ends at the first slash that is not escaped.
        let e = parse_err("$A =~ /some .* / pattern/");
        assert_eq!(e.offset, 17);
    }

    #[test]
    fn regex_escapes_are_re2() {
        assert!(!t(r"$PRESENT_VARIABLE =~ /va\r.*e$/"));
        assert!(t(r"$PRESENT_VARIABLE !~ /^v\ar.*/"));
        let v = vars(&[("REF", "feature@group/project"), ("N", "v1.2")]);
        assert!(eval_in(r"$REF =~ /\x40group/", &v));
        assert!(eval_in(r"$N =~ /^v\d\.\d$/", &v));
        assert!(eval_in(r"$N =~ /^\Qv1.2\E$/", &v));
        assert!(!eval_in(r"'v1x2' =~ /^\Qv1.2\E$/", &v));
    }

    #[test]
    fn perl_classes_are_ascii_as_in_re2() {
        let v = vars(&[("U", "é"), ("D", "٣")]);
        assert!(!eval_in(r"$U =~ /\w/", &v));
        assert!(eval_in(r"$U =~ /\W/", &v));
        assert!(!eval_in(r"$D =~ /\d/", &v));
        assert!(
            eval_in(r"$U =~ /\pL/", &v),
            "Unicode classes are still available"
        );
        assert!(eval_in(r"'a-b' =~ /[\w-]+$/", &v));
        assert!(eval_in(r"'é a' =~ /\ba/", &v));
    }

    #[test]
    fn re2_character_classes() {
        let v = HashMap::new();
        // `[` and `&&` are ordinary characters in an RE2 class.
        assert!(eval_in(r"'[' =~ /^[[]$/", &v));
        assert!(eval_in(r"'&' =~ /^[a&&b]$/", &v));
        assert!(eval_in(r"'-' =~ /^[+--]$/", &v));
        assert!(eval_in(r"'x' =~ /^[[:alpha:]]$/", &v));
        assert!(eval_in(r"']' =~ /^[]a]$/", &v));
        // A `{` that does not start a repetition is a literal.
        assert!(eval_in(r"'${x}' =~ /\${x}/", &v));
        assert!(eval_in(r"'aa' =~ /^a{2}$/", &v));
    }

    #[test]
    fn invalid_regex_is_a_parse_error() {
        let e = parse_err("$A =~ /a(b/");
        assert_eq!(e.offset, 6);
        assert!(
            e.message.contains("invalid regular expression"),
            "{}",
            e.message
        );
        // RE2 has no look-ahead and no back-references.
        assert_eq!(parse_err("$A =~ /(?!x)y/").offset, 6);
        assert_eq!(parse_err(r"$A =~ /(a)\1/").offset, 6);
        // RE2 rejects stacked repetitions and counts above 1000.
        assert_eq!(parse_err("$A =~ /a**/").offset, 6);
        assert_eq!(parse_err("$A =~ /a{1001}/").offset, 6);
        assert!(parse("$A =~ /a{1000}/").is_ok());
    }

    #[test]
    fn huge_regex_is_an_error_not_an_allocation() {
        let e = parse_err(r"$A =~ /(\pL{1000}){1000}/");
        assert_eq!(e.offset, 6);
        let e = parse_err(r"$A =~ /((((a{1000}){1000}){1000}){1000})/");
        assert_eq!(e.offset, 6);
    }

    #[test]
    fn single_character_and_empty_patterns_are_rejected() {
        // Documented: single-character regular expressions like `/./` are not supported.
        assert_eq!(parse_err("$A =~ /./").offset, 6);
        assert_eq!(parse_err("$A =~ //").offset, 6);
        assert!(parse("$A =~ /../").is_ok());
        // The character before the closing slash cannot be a backslash.
        assert_eq!(parse_err(r"$A =~ /a\\/").offset, 6);
    }

    #[test]
    fn variable_holding_a_pattern_is_a_regex() {
        let v = vars(&[
            ("teststring", "abcde"),
            ("pattern1", "/^ab.*/"),
            ("pattern2", "/^at.*/"),
            ("ipattern", "/^AB/i"),
            ("escaped", r"/^a\/b$/"),
        ]);
        assert!(eval_in("$teststring =~ $pattern1", &v));
        assert!(!eval_in("$teststring =~ $pattern2", &v));
        assert!(eval_in("$teststring !~ $pattern2", &v));
        assert!(eval_in("$teststring =~ $ipattern", &v));
        assert!(eval_in("'a/b' =~ $escaped", &v));
        // Variables inside a pattern are not expanded.
        assert!(!eval_in("$teststring =~ /$teststring/", &v));
    }

    #[test]
    fn quoted_string_in_pattern_form_is_a_regex() {
        // The right side is evaluated as a string first, then read as `/pattern/`.
        let v = vars(&[("REF", "release-1.0")]);
        assert!(eval_in(r#"$REF =~ "/^release/""#, &v));
        assert!(!eval_in(r#"$REF =~ "/^feature/""#, &v));
    }

    #[test]
    fn non_pattern_right_side_is_a_substring_test() {
        // Documented under troubleshooting: the left side must be a substring of the right.
        let v = vars(&[("L1234", "1234"), ("L23", "23"), ("P23", "/23/")]);
        assert!(eval_in(r#""23" =~ "1234""#, &v));
        assert!(!eval_in(r#""1234" =~ "23""#, &v));
        // GitLab issue 426313's table, LEFT =~ RIGHT.
        assert!(eval_in("$L1234 =~ $L1234", &v));
        assert!(!eval_in("$L1234 =~ $L23", &v));
        assert!(eval_in("$L1234 =~ $P23", &v));
        assert!(eval_in("$L23 =~ $L1234", &v));
        assert!(!eval_in("$P23 =~ $L1234", &v));
        assert!(eval_in("$P23 =~ $P23", &v));
        // A value that is not a valid pattern falls back to the substring test too.
        let v = vars(&[("BAD", "/a(/"), ("X", "a(")]);
        assert!(eval_in("$X =~ $BAD", &v));
    }

    #[test]
    fn null_or_undefined_right_side_never_matches() {
        assert!(!t("$PRESENT_VARIABLE =~ null"));
        assert!(t("$PRESENT_VARIABLE !~ null"));
        assert!(!t("$PRESENT_VARIABLE =~ $UNDEFINED_VARIABLE"));
        assert!(t("$PRESENT_VARIABLE !~ $UNDEFINED_VARIABLE"));
    }

    #[test]
    fn and_returns_an_operand() {
        // GitLab's statement spec: `&&` yields Ruby values, and `""` is truthy there.
        assert!(t(r#"$PRESENT_VARIABLE && "string""#));
        assert!(!t("$PRESENT_VARIABLE && $EMPTY_VARIABLE"));
        assert!(!t("$PRESENT_VARIABLE && null"));
        assert!(
            t("$EMPTY_VARIABLE && $PRESENT_VARIABLE"),
            "GitLab issue 321371"
        );
        assert!(!t("$UNDEFINED_VARIABLE && $PRESENT_VARIABLE"));
        assert!(t(r#"$EMPTY_VARIABLE == "" && $PRESENT_VARIABLE != "nope""#));
        assert!(!t(
            "$PRESENT_VARIABLE =~ /my var/ && $EMPTY_VARIABLE =~ /nope/"
        ));
    }

    #[test]
    fn or_returns_an_operand() {
        assert!(t("$PRESENT_VARIABLE || $UNDEFINED_VARIABLE"));
        assert!(t("$UNDEFINED_VARIABLE || $PRESENT_VARIABLE"));
        assert!(t(r#"$EMPTY_VARIABLE == "" || $PRESENT_VARIABLE"#));
        // An empty left side is "truthy", so `||` returns it and the whole is blank: false.
        // GitLab issues 358775 and 463528.
        assert!(!t("$EMPTY_VARIABLE || $PRESENT_VARIABLE"));
        assert!(!t("$EMPTY_VARIABLE || $PRESENT_VARIABLE == 'my variable'"));
    }

    #[test]
    fn and_binds_tighter_than_or() {
        let v = vars(&[("A", "1")]);
        // `$A || $B && $C` is `$A || ($B && $C)`.
        assert!(eval_in("$A || $U && $U", &v));
        // `$U && $U || $A` is `($U && $U) || $A`.
        assert!(eval_in("$U && $U || $A", &v));
        assert!(t(r#"$PRESENT_VARIABLE && null || $EMPTY_VARIABLE == """#));
        assert!(!t(
            r#"$UNDEFINED_VARIABLE == "x" || $PRESENT_VARIABLE == "my variable" && null"#
        ));
    }

    #[test]
    fn comparisons_bind_tighter_than_logic() {
        // `$A == "x" && $B == "y"` compares first.
        let v = vars(&[("A", "x"), ("B", "y")]);
        assert!(eval_in(r#"$A == "x" && $B == "y""#, &v));
        assert!(eval_in(r#"$A == "z" || $B =~ /^y/"#, &v));
        // GitLab's spec: `("string" == "test" || "string")` is `(false || "string")`.
        assert!(t(r#"("string" == "test" || "string")"#));
    }

    #[test]
    fn comparisons_chain_left_associatively() {
        // `$VAR1 == "123" == $VAR2` is `($VAR1 == "123") == $VAR2` in GitLab's parser.
        let v = vars(&[("V", "123"), ("T", "true"), ("F", "false")]);
        assert!(eval_in(r#"$V == "123" == $T"#, &v));
        assert!(!eval_in(r#"$V == "123" == $F"#, &v));
        assert!(eval_in(r#"$V == "9" == "false""#, &v));
        assert!(eval_in(r#"$V =~ /^1/ != "false""#, &v));
        assert!(!eval_in(r#""a" == ("b" == "c")"#, &v));
    }

    #[test]
    fn parentheses_group() {
        assert!(t("($PRESENT_VARIABLE)"));
        assert!(t("(($PRESENT_VARIABLE))"));
        assert!(t(
            r#"(($PRESENT_VARIABLE && null) || $EMPTY_VARIABLE == "")"#
        ));
        assert!(t(
            r#"($PRESENT_VARIABLE) && (null || $EMPTY_VARIABLE == "")"#
        ));
        assert!(t(r#"("string" || "test") == "string""#));
        assert!(!t(r#"(null || ("test" == "string"))"#));
        assert!(t(r#"("string" == ("test" && "string"))"#));
        assert!(!t(r#"("string" == ("test" || "string"))"#));
        assert!(t(
            r#"("string" == ("string" || (("1" == "1") && ("2" == "3"))))"#
        ));
        let v = vars(&[("A", "1")]);
        assert!(!eval_in("($A || $U) && $U", &v));
        assert!(eval_in("$A || ($U && $U)", &v));
    }

    #[test]
    fn whitespace_is_optional_and_ignored() {
        let v = vars(&[("A", "x")]);
        assert!(eval_in("\t $A=='x'&&($A!~/yz/)\n", &v));
        assert!(eval_in("$A\r\n==\x0b'x'", &v));
    }

    #[test]
    fn empty_expression_is_an_error() {
        assert_eq!(parse_err("").offset, 0);
        assert_eq!(parse_err("   \n\t").offset, 0);
        assert!(parse_err("").message.contains("empty"));
    }

    #[test]
    fn unknown_tokens_are_errors_with_offsets() {
        assert_eq!(parse_err("$V1 123 $V2").offset, 4);
        let e = parse_err("$INVALID = 1");
        assert_eq!(e.offset, 9);
        assert!(e.message.contains("=="), "{}", e.message);
        assert_eq!(parse_err("$A === 'x'").offset, 5);
        assert_eq!(parse_err("!$A").offset, 0);
        assert_eq!(parse_err("$A & $B").offset, 3);
        assert_eq!(parse_err("$A == true").offset, 6);
        assert_eq!(parse_err("$A == nil").offset, 6);
        assert_eq!(parse_err("$A == nullx").offset, 10);
        // Offsets are in bytes.
        assert_eq!(parse_err("'é' == ¬").offset, 8);
    }

    #[test]
    fn unterminated_strings_are_errors() {
        let e = parse_err(r#"$A == "abc"#);
        assert_eq!(e.offset, 6);
        assert!(e.message.contains("unterminated"), "{}", e.message);
        assert_eq!(parse_err("$A == 'abc").offset, 6);
        // A string cannot span lines.
        assert_eq!(parse_err("$A == 'a\nb'").offset, 6);
    }

    #[test]
    fn missing_operands_are_errors() {
        let e = parse_err(r#"== "123""#);
        assert_eq!(e.offset, 0);
        let e = parse_err("$VAR ==");
        assert_eq!(e.offset, 7);
        assert!(e.message.contains("after `==`"), "{}", e.message);
        assert_eq!(parse_err("$A && || $B").offset, 6);
        assert_eq!(parse_err("$A == (").offset, 7);
        assert_eq!(parse_err("$A || ").offset, 6);
    }

    #[test]
    fn trailing_garbage_is_an_error() {
        let e = parse_err(r#"$VAR "text""#);
        assert_eq!(e.offset, 5);
        assert!(e.message.contains("expected an operator"), "{}", e.message);
        assert_eq!(parse_err("$A == 'x' $B").offset, 10);
        assert_eq!(parse_err("$A == 'x' /ab/").offset, 10);
    }

    #[test]
    fn malformed_orders_gitlab_tolerates_are_errors() {
        // GitLab's shunting-yard turns these into `$A == $B` and `$A`; Slipway rejects them.
        assert_eq!(parse_err("== $A $B").offset, 0);
        assert_eq!(parse_err("$A $B ==").offset, 3);
        assert_eq!(parse_err("$A ()").offset, 3);
    }

    #[test]
    fn unbalanced_parentheses_are_errors() {
        // GitLab's parser spec cases.
        assert_eq!(parse_err(r#"$VAR2 == ("aa""#).offset, 9);
        let e = parse_err(r#"$VAR2 == ("aa"))"#);
        assert_eq!(e.offset, 15);
        assert!(e.message.contains("unmatched"), "{}", e.message);
        assert_eq!(parse_err(r#"$VAR2 == "aa")"#).offset, 13);
        assert_eq!(parse_err(r#"(($VAR2 == "aa")"#).offset, 0);
        assert_eq!(parse_err(r#"($VAR2 == "aa"))"#).offset, 15);
        assert_eq!(parse_err("()").offset, 1);
        assert_eq!(parse_err("($A $B)").offset, 4);
        assert_eq!(parse_err(")").offset, 0);
    }

    #[test]
    fn token_limit_matches_gitlab() {
        // GitLab's lexer stops at 100 tokens: 99 are accepted, 100 are not.
        let ok = vec!["$A"; 50].join(" || ");
        assert!(parse(&ok).is_ok());
        let too_many = ok.clone() + " || $A";
        let e = parse_err(&too_many);
        assert_eq!(e.offset, ok.len() + 1);
        assert!(e.message.contains("too many tokens"), "{}", e.message);
    }

    #[test]
    fn deep_nesting_and_huge_inputs_do_not_overflow() {
        let deep = "(".repeat(100_000) + "$A" + &")".repeat(100_000);
        assert!(parse(&deep).is_err());
        let nested = "(".repeat(49) + "$A" + &")".repeat(49);
        assert!(eval_in(&nested, &vars(&[("A", "1")])));
        let long = format!("$A == '{}'", "x".repeat(1_000_000));
        assert!(!eval_in(&long, &vars(&[("A", "1")])));
        let many = "$A ".repeat(1_000_000);
        assert!(parse_err(&many).message.contains("too many tokens"));
        let junk = "#".repeat(1_000_000);
        assert_eq!(parse_err(&junk).offset, 0);
        let pattern = format!("$A =~ /{}/", "a".repeat(100_000));
        assert!(!eval_in(&pattern, &vars(&[("A", "1")])));
    }

    #[test]
    fn depth_limit_is_enforced_by_the_parser() {
        // Past the token limit in practice, but the parser checks on its own too.
        let tokens: Vec<Token> = (0..MAX_DEPTH + 1)
            .map(|i| Token {
                kind: TokKind::LParen,
                offset: i,
                len: 1,
            })
            .collect();
        let src = "(".repeat(MAX_DEPTH + 1);
        let mut parser = Parser {
            src: &src,
            tokens: &tokens,
            pos: 0,
            depth: 0,
        };
        let e = match parser.parse_or() {
            Ok(node) => panic!("should fail, got {node:?}"),
            Err(e) => e,
        };
        assert_eq!(e.offset, MAX_DEPTH);
        assert!(e.message.contains("nested"), "{}", e.message);
    }

    #[test]
    fn patterns_compare_by_source() {
        let v = HashMap::new();
        assert!(eval_in("/ab/ == /ab/", &v));
        assert!(!eval_in("/ab/ == /ab/i", &v));
        assert!(!eval_in("/ab/ == 'ab'", &v));
    }

    #[test]
    fn variables_lists_each_name_once_in_order() {
        let expr = match parse("$B == $A || ($A =~ /^x/ && $C) || 'lit' == null") {
            Ok(e) => e,
            Err(e) => panic!("{e:?}"),
        };
        assert_eq!(expr.variables(), vec!["B", "A", "C"]);
        let expr = match parse("'x' =~ /^y/") {
            Ok(e) => e,
            Err(e) => panic!("{e:?}"),
        };
        assert!(expr.variables().is_empty());
    }

    #[test]
    fn evaluation_asks_for_variables_by_name() {
        let expr = match parse("$CI_PIPELINE_SOURCE == 'push'") {
            Ok(e) => e,
            Err(e) => panic!("{e:?}"),
        };
        assert!(expr.evaluate(&|n| (n == "CI_PIPELINE_SOURCE").then(|| "push".to_string())));
        assert!(!expr.evaluate(&|_| None));
        // Parsed once, evaluated many times.
        let clone = expr.clone();
        assert!(clone.evaluate(&|_| Some("push".to_string())));
    }

    #[test]
    fn error_display_is_the_message() {
        let e = parse_err("$A ==");
        assert_eq!(e.to_string(), e.message);
    }
}
