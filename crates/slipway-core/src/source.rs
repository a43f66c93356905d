//! Source files and positions. Every value read from a pipeline file carries a [`Span`]
//! so that an error can name `file:line:col` and show the offending line.

use std::fmt;

/// Index of a file in a [`SourceMap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct FileId(pub u32);

/// A position in a file: line and column, both 1-based, column counted in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

/// A range in one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Span {
    pub file: FileId,
    pub start: Pos,
    pub end: Pos,
}

impl Span {
    pub fn new(file: FileId, start: Pos, end: Pos) -> Span {
        Span { file, start, end }
    }

    /// A span for values that do not come from a file (defaults, command-line values).
    pub fn synthetic() -> Span {
        Span::default()
    }

    pub fn is_synthetic(&self) -> bool {
        self.start.line == 0
    }
}

/// One loaded file.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Path as the user wrote it or as it is relative to the repository root.
    pub path: String,
    pub text: String,
}

impl SourceFile {
    /// The text of a 1-based line, without its line break.
    pub fn line(&self, line: u32) -> Option<&str> {
        if line == 0 {
            return None;
        }
        self.text.lines().nth(line as usize - 1)
    }
}

/// Every file that went into a pipeline configuration, so diagnostics can quote them.
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    files: Vec<SourceFile>,
}

impl SourceMap {
    pub fn new() -> SourceMap {
        SourceMap::default()
    }

    pub fn add(&mut self, path: impl Into<String>, text: impl Into<String>) -> FileId {
        self.files.push(SourceFile {
            path: path.into(),
            text: text.into(),
        });
        FileId((self.files.len() - 1) as u32)
    }

    pub fn get(&self, id: FileId) -> Option<&SourceFile> {
        self.files.get(id.0 as usize)
    }

    pub fn path(&self, id: FileId) -> &str {
        self.get(id).map(|f| f.path.as_str()).unwrap_or("<input>")
    }

    pub fn files(&self) -> impl Iterator<Item = &SourceFile> {
        self.files.iter()
    }
}

/// Where pipeline files come from. The CLI reads a working tree, the server a git object
/// store, tests an in-memory map; the core never touches the file system itself.
pub trait SourceLoader {
    /// Read a file by its path relative to the repository root (no leading `/`).
    fn read(&self, path: &str) -> Result<String, String>;
    /// Every file path in the repository, relative to the root, `/`-separated. Used for
    /// `include:local` globs and `rules:exists`.
    fn list(&self) -> Vec<String>;
}

/// A loader over an in-memory set of files, for tests, fuzzing and `slipway preview` of
/// standard input.
#[derive(Debug, Clone, Default)]
pub struct MemoryLoader {
    pub files: Vec<(String, String)>,
}

impl MemoryLoader {
    pub fn new() -> MemoryLoader {
        MemoryLoader::default()
    }

    pub fn with(mut self, path: &str, text: &str) -> MemoryLoader {
        self.files.push((path.to_string(), text.to_string()));
        self
    }
}

impl SourceLoader for MemoryLoader {
    fn read(&self, path: &str) -> Result<String, String> {
        self.files
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, t)| t.clone())
            .ok_or_else(|| "no such file".to_string())
    }

    fn list(&self) -> Vec<String> {
        self.files.iter().map(|(p, _)| p.clone()).collect()
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}
