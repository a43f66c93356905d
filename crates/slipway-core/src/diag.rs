//! Diagnostics: errors found in a pipeline configuration, each tied to a place in a file.
//! The core collects every error it can find before giving up, so a user fixes them all in
//! one pass; nothing is planned or run from a configuration that has any.

use crate::source::{SourceMap, Span};
use std::fmt::Write as _;

/// One error in a pipeline configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub span: Span,
    pub message: String,
}

impl Diagnostic {
    pub fn new(span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            span,
            message: message.into(),
        }
    }

    /// `path:line:col: error: message`, then the source line and a caret under the column.
    pub fn render(&self, sources: &SourceMap) -> String {
        let mut out = String::new();
        if self.span.is_synthetic() {
            let path = sources
                .files()
                .next()
                .map(|f| f.path.as_str())
                .unwrap_or("<input>");
            let _ = write!(out, "{path}: error: {}", self.message);
            return out;
        }
        let path = sources.path(self.span.file);
        let _ = write!(
            out,
            "{path}:{}:{}: error: {}",
            self.span.start.line, self.span.start.col, self.message
        );
        if let Some(line) = sources
            .get(self.span.file)
            .and_then(|f| f.line(self.span.start.line))
        {
            let gutter = self.span.start.line.to_string();
            let pad = " ".repeat(gutter.len());
            let caret_pad: String = line
                .chars()
                .take(self.span.start.col.saturating_sub(1) as usize)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            let _ = write!(out, "\n{gutter} | {line}\n{pad} | {caret_pad}^");
        }
        out
    }
}

/// Every error found, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn new() -> Diagnostics {
        Diagnostics::default()
    }

    pub fn push(&mut self, span: Span, message: impl Into<String>) {
        self.0.push(Diagnostic::new(span, message));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }

    /// Sort by file and position and drop exact duplicates (the same error reached twice,
    /// for example through a job and the template it extends).
    pub fn sorted(mut self) -> Diagnostics {
        self.0.sort_by(|a, b| {
            (a.span.file, a.span.start, &a.message).cmp(&(b.span.file, b.span.start, &b.message))
        });
        self.0.dedup();
        self
    }

    pub fn render(&self, sources: &SourceMap) -> String {
        self.0
            .iter()
            .map(|d| d.render(sources))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
