//! Job logs as HTML: what a terminal would show, line by line, so the live page can append
//! each line as it arrives.
//!
//! Each line is interpreted as a terminal would: SGR colours (the 16 standard ones as
//! classes `term-fg-N`/`term-bg-N`, the 256-colour palette and truecolour as inline
//! colours), bold, faint, italic, underline, strike-through, inverse, resets; `\r`
//! returning to the start of the line so later text overwrites (progress bars);
//! `\e[K`/`\e[0K`/`\e[1K`/`\e[2K` erasing; cursor moves within the line; backspace. Other
//! escape sequences (OSC titles and links, cursor up/down, modes) are dropped. Text is
//! HTML-escaped; nothing from the log can produce a tag.
//!
//! GitLab's collapsible sections are recognised:
//! `section_start:UNIX_TS:NAME[collapsed=true]\r\e[0K` followed by the header text, up to
//! `section_end:UNIX_TS:NAME\r\e[0K`. Sections nest; an end closes the innermost section
//! of that name (and any left open inside it); an end without a start is ignored.
//!
//! [`LogRenderer`] turns bytes into [`Event`]s (lines, section starts and ends), each
//! renderable on its own with [`Event::to_html`] for the live page; [`render_document`]
//! renders a whole log with sections as nested `<details>` blocks showing their duration.
//! Pure and total: any bytes give well-formed HTML, in time linear in the input.

use regex::Regex;
use std::fmt::Write as _;
use std::sync::LazyLock;

/// A partial line longer than this is rendered as a line of its own rather than buffered
/// further (a program printing megabytes without a newline).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Cursor moves are clamped to this column so an escape sequence cannot make a line huge.
const MAX_COLUMN: usize = 10_000;

static SECTION: LazyLock<Regex> = LazyLock::new(|| {
    // GitLab Runner's section names: letters, digits, `_`, `.`, `-`.
    #[allow(clippy::expect_used)]
    Regex::new(r"section_(start|end):(\d{1,19}):([A-Za-z0-9_.\-]+)(?:\[([^\]\r\n]*)\])?\r\x1b\[0?K")
        .expect("valid regex")
});

/// A colour as the terminal was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Color {
    #[default]
    Default,
    /// 0-255: 0-15 the standard and bright colours, 16-255 the xterm palette.
    Indexed(u8),
    Rgb(u8, u8, u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Style {
    fg: Color,
    bg: Color,
    bold: bool,
    faint: bool,
    italic: bool,
    underline: bool,
    strike: bool,
    inverse: bool,
    conceal: bool,
}

impl Style {
    fn is_plain(&self) -> bool {
        *self == Style::default()
    }

    /// SGR parameters, `;`-separated with `:` sub-parameters for extended colours.
    fn apply(&mut self, params: &str) {
        if params.is_empty() {
            *self = Style::default();
            return;
        }
        let groups: Vec<&str> = params.split(';').collect();
        let mut i = 0;
        while i < groups.len() {
            let g = groups[i];
            if g.contains(':') {
                // `38:5:N`, `38:2::R:G:B` or `38:2:R:G:B`.
                let sub: Vec<u32> = g.split(':').map(|s| s.parse().unwrap_or(0)).collect();
                let color = match sub.get(1) {
                    Some(5) => sub.get(2).map(|n| Color::Indexed(clamp8(*n))),
                    Some(2) => {
                        let rgb = if sub.len() >= 6 {
                            &sub[3..6]
                        } else {
                            sub.get(2..5).unwrap_or(&[])
                        };
                        (rgb.len() == 3)
                            .then(|| Color::Rgb(clamp8(rgb[0]), clamp8(rgb[1]), clamp8(rgb[2])))
                    }
                    _ => None,
                };
                match (sub.first(), color) {
                    (Some(38), Some(c)) => self.fg = c,
                    (Some(48), Some(c)) => self.bg = c,
                    (Some(4), _) => self.underline = sub.get(1).is_some_and(|s| *s != 0),
                    _ => {}
                }
                i += 1;
                continue;
            }
            let n: u32 = if g.is_empty() {
                0
            } else {
                g.parse().unwrap_or(u32::MAX)
            };
            match n {
                0 => *self = Style::default(),
                1 => self.bold = true,
                2 => self.faint = true,
                3 => self.italic = true,
                4 => self.underline = true,
                7 => self.inverse = true,
                8 => self.conceal = true,
                9 => self.strike = true,
                21 => self.underline = true,
                22 => {
                    self.bold = false;
                    self.faint = false;
                }
                23 => self.italic = false,
                24 => self.underline = false,
                27 => self.inverse = false,
                28 => self.conceal = false,
                29 => self.strike = false,
                30..=37 => self.fg = Color::Indexed((n - 30) as u8),
                39 => self.fg = Color::Default,
                40..=47 => self.bg = Color::Indexed((n - 40) as u8),
                49 => self.bg = Color::Default,
                90..=97 => self.fg = Color::Indexed((n - 90 + 8) as u8),
                100..=107 => self.bg = Color::Indexed((n - 100 + 8) as u8),
                38 | 48 => {
                    let kind = groups.get(i + 1).and_then(|s| s.parse::<u32>().ok());
                    let (color, used) = match kind {
                        Some(5) => (
                            groups
                                .get(i + 2)
                                .and_then(|s| s.parse().ok())
                                .map(|v| Color::Indexed(clamp8(v))),
                            3,
                        ),
                        Some(2) => {
                            let c =
                                |k: usize| groups.get(i + k).and_then(|s| s.parse::<u32>().ok());
                            (
                                match (c(2), c(3), c(4)) {
                                    (Some(r), Some(g), Some(b)) => {
                                        Some(Color::Rgb(clamp8(r), clamp8(g), clamp8(b)))
                                    }
                                    _ => None,
                                },
                                5,
                            )
                        }
                        _ => (None, 1),
                    };
                    if let Some(c) = color {
                        if n == 38 {
                            self.fg = c;
                        } else {
                            self.bg = c;
                        }
                    }
                    i += used;
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
    }

    /// The opening tag for text in this style; empty for plain text.
    fn open_tag(&self, out: &mut String) {
        if self.is_plain() {
            return;
        }
        let (fg, bg) = if self.inverse {
            (self.bg, self.fg)
        } else {
            (self.fg, self.bg)
        };
        let mut classes: Vec<String> = Vec::new();
        let mut css = String::new();
        match fg {
            Color::Default if self.inverse => classes.push("term-fg-inverse".into()),
            Color::Default => {}
            Color::Indexed(n) if n < 16 => classes.push(format!("term-fg-{n}")),
            c => {
                let _ = write!(css, "color:{};", hex(c));
            }
        }
        match bg {
            Color::Default if self.inverse => classes.push("term-bg-inverse".into()),
            Color::Default => {}
            Color::Indexed(n) if n < 16 => classes.push(format!("term-bg-{n}")),
            c => {
                let _ = write!(css, "background-color:{};", hex(c));
            }
        }
        for (on, class) in [
            (self.bold, "term-bold"),
            (self.faint, "term-faint"),
            (self.italic, "term-italic"),
            (self.underline, "term-underline"),
            (self.strike, "term-strike"),
            (self.conceal, "term-conceal"),
        ] {
            if on {
                classes.push(class.into());
            }
        }
        out.push_str("<span");
        if !classes.is_empty() {
            let _ = write!(out, " class=\"{}\"", classes.join(" "));
        }
        if !css.is_empty() {
            let _ = write!(out, " style=\"{css}\"");
        }
        out.push('>');
    }
}

fn clamp8(v: u32) -> u8 {
    v.min(255) as u8
}

/// `#rrggbb` for a palette index of 16 and above or an RGB colour.
fn hex(c: Color) -> String {
    let (r, g, b) = match c {
        Color::Rgb(r, g, b) => (r, g, b),
        Color::Indexed(n) if n >= 232 => {
            let v = 8 + 10 * (n - 232);
            (v, v, v)
        }
        Color::Indexed(n) if n >= 16 => {
            let n = n - 16;
            let level = |x: u8| if x == 0 { 0 } else { 55 + 40 * x };
            (level(n / 36), level((n / 6) % 6), level(n % 6))
        }
        // The standard colours are themed by class; this is only a fallback.
        Color::Indexed(_) | Color::Default => (0xcc, 0xcc, 0xcc),
    };
    format!("#{r:02x}{g:02x}{b:02x}")
}

/// Escapes text for HTML content and attribute values.
pub fn escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// One terminal line being drawn.
#[derive(Default)]
struct Screen {
    cells: Vec<(char, Style)>,
    col: usize,
}

impl Screen {
    fn put(&mut self, c: char, style: Style) {
        while self.cells.len() < self.col {
            self.cells.push((' ', Style::default()));
        }
        if self.col < self.cells.len() {
            self.cells[self.col] = (c, style);
        } else {
            self.cells.push((c, style));
        }
        self.col += 1;
    }

    fn is_blank(&self) -> bool {
        self.cells.iter().all(|(c, _)| c.is_whitespace())
    }

    fn html(&self) -> String {
        let mut out = String::new();
        let mut i = 0;
        while i < self.cells.len() {
            let style = self.cells[i].1;
            let mut text = String::new();
            while let Some((c, _)) = self.cells.get(i).filter(|(_, s)| *s == style) {
                text.push(*c);
                i += 1;
            }
            style.open_tag(&mut out);
            escape(&text, &mut out);
            if !style.is_plain() {
                out.push_str("</span>");
            }
        }
        out
    }
}

/// Draws `text` onto a screen line, starting in `style`; returns the style at the end.
fn draw(text: &str, mut style: Style) -> (Screen, Style) {
    let mut screen = Screen::default();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.peek() {
                Some('[') => {
                    chars.next();
                    let mut params = String::new();
                    let mut fin = None;
                    for d in chars.by_ref() {
                        if ('\x40'..='\x7e').contains(&d) {
                            fin = Some(d);
                            break;
                        }
                        if params.len() < 64 {
                            params.push(d);
                        }
                    }
                    let n = || {
                        params
                            .trim_start_matches('?')
                            .split(';')
                            .next()
                            .and_then(|s| s.parse::<usize>().ok())
                            .unwrap_or(0)
                    };
                    match fin {
                        Some('m') => style.apply(&params),
                        Some('K') => match n() {
                            0 => screen.cells.truncate(screen.col),
                            1 => {
                                for i in 0..screen.col.min(screen.cells.len()) {
                                    screen.cells[i] = (' ', Style::default());
                                }
                            }
                            _ => screen.cells.clear(),
                        },
                        Some('G') => screen.col = n().saturating_sub(1).min(MAX_COLUMN),
                        Some('C') => {
                            screen.col = screen.col.saturating_add(n().max(1)).min(MAX_COLUMN)
                        }
                        Some('D') => screen.col = screen.col.saturating_sub(n().max(1)),
                        _ => {}
                    }
                }
                Some(']') => {
                    // OSC: up to BEL or ESC \.
                    chars.next();
                    while let Some(d) = chars.next() {
                        if d == '\x07' {
                            break;
                        }
                        if d == '\x1b' && chars.peek() == Some(&'\\') {
                            chars.next();
                            break;
                        }
                    }
                }
                Some(_) => {
                    chars.next();
                }
                None => {}
            },
            '\r' => screen.col = 0,
            '\x08' => screen.col = screen.col.saturating_sub(1),
            '\t' => screen.put('\t', style),
            c if c.is_control() => {}
            c => screen.put(c, style),
        }
    }
    (screen, style)
}

/// What the renderer found in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A line of output (1-based `number`) inside `sections` (outermost first).
    Line {
        number: u64,
        html: String,
        sections: Vec<String>,
    },
    /// A section begins; its header is line `number`.
    SectionStart {
        number: u64,
        name: String,
        header_html: String,
        collapsed: bool,
        started_at: u64,
        /// The enclosing sections, outermost first.
        sections: Vec<String>,
    },
    /// A section ends; `duration_secs` is `None` when the log ended without closing it.
    SectionEnd {
        name: String,
        duration_secs: Option<u64>,
        sections: Vec<String>,
    },
}

impl Event {
    /// A self-contained HTML fragment for the live page, which appends fragments in order
    /// and groups lines under their section header by `data-section`.
    pub fn to_html(&self) -> String {
        let mut out = String::new();
        match self {
            Event::Line {
                number,
                html,
                sections,
            } => {
                let _ = write!(out, "<div class=\"line\" id=\"L{number}\"");
                section_attr(&mut out, sections);
                let _ = write!(
                    out,
                    "><a class=\"ln\" href=\"#L{number}\">{number}</a>{html}</div>"
                );
            }
            Event::SectionStart {
                number,
                name,
                header_html,
                collapsed,
                started_at,
                sections,
            } => {
                let mut path = sections.clone();
                path.push(name.clone());
                let _ = write!(out, "<div class=\"section-header\" id=\"L{number}\"");
                section_attr(&mut out, &path);
                let _ = write!(
                    out,
                    " data-collapsed=\"{collapsed}\" data-started=\"{started_at}\"><a class=\"ln\" \
                     href=\"#L{number}\">{number}</a>{header_html}</div>"
                );
            }
            Event::SectionEnd {
                name,
                duration_secs,
                sections,
            } => {
                let mut path = sections.clone();
                path.push(name.clone());
                out.push_str("<div class=\"section-end\"");
                section_attr(&mut out, &path);
                if let Some(d) = duration_secs {
                    let _ = write!(out, " data-duration=\"{d}\"");
                }
                out.push_str(" hidden></div>");
            }
        }
        out
    }
}

fn section_attr(out: &mut String, sections: &[String]) {
    if sections.is_empty() {
        return;
    }
    out.push_str(" data-section=\"");
    escape(&sections.join("/"), out);
    out.push('"');
}

/// GitLab's duration format: `MM:SS`, or `H:MM:SS` from an hour.
pub fn format_duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m:02}:{s:02}")
    }
}

struct Open {
    name: String,
    started_at: u64,
}

/// Renders a log incrementally: feed it bytes as they arrive, get events for every
/// complete line.
#[derive(Default)]
pub struct LogRenderer {
    partial: Vec<u8>,
    style: Style,
    sections: Vec<Open>,
    line: u64,
}

impl LogRenderer {
    pub fn new() -> LogRenderer {
        LogRenderer::default()
    }

    /// The number of the last line rendered.
    pub fn lines(&self) -> u64 {
        self.line
    }

    /// Feeds bytes; returns the events of the lines they complete. However the log is cut
    /// into pieces, the events are the same.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Event> {
        let mut events = Vec::new();
        let mut rest = bytes;
        loop {
            match rest.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    self.partial.extend_from_slice(&rest[..nl]);
                    self.cut_long(&mut events);
                    let line = std::mem::take(&mut self.partial);
                    self.line_events(&line, &mut events);
                    rest = &rest[nl + 1..];
                }
                None => {
                    self.partial.extend_from_slice(rest);
                    self.cut_long(&mut events);
                    return events;
                }
            }
        }
    }

    /// Renders the head of an over-long line as a line of its own, cut on a character
    /// boundary so nothing is lost or mangled.
    fn cut_long(&mut self, events: &mut Vec<Event>) {
        while self.partial.len() > MAX_LINE_BYTES {
            let mut cut = MAX_LINE_BYTES;
            while cut > 0 && (self.partial[cut] & 0xc0) == 0x80 {
                cut -= 1;
            }
            let head: Vec<u8> = self.partial.drain(..cut.max(1)).collect();
            self.line_events(&head, events);
        }
    }

    /// Renders what is left (a last line without newline) and closes open sections.
    pub fn finish(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.line_events(&line, &mut events);
        }
        while let Some(open) = self.sections.pop() {
            events.push(Event::SectionEnd {
                name: open.name,
                duration_secs: None,
                sections: self.path(),
            });
        }
        events
    }

    fn path(&self) -> Vec<String> {
        self.sections.iter().map(|s| s.name.clone()).collect()
    }

    fn line_events(&mut self, raw: &[u8], events: &mut Vec<Event>) {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = String::from_utf8_lossy(raw);
        let mut rest: &str = &text;
        let mut seen_marker = false;
        loop {
            let Some(caps) = SECTION.captures(rest) else {
                self.text_line(rest, events, seen_marker);
                return;
            };
            seen_marker = true;
            let Some(whole) = caps.get(0) else { return };
            let before = &rest[..whole.start()];
            self.text_line(before, events, true);
            let ts: u64 = caps
                .get(2)
                .and_then(|m| m.as_str().parse().ok())
                .unwrap_or(0);
            let name = caps
                .get(3)
                .map(|m| m.as_str().to_string())
                .unwrap_or_default();
            let after = &rest[whole.end()..];
            if caps.get(1).map(|m| m.as_str()) == Some("start") {
                let collapsed = caps.get(4).is_some_and(|o| {
                    o.as_str()
                        .split(',')
                        .any(|kv| kv.trim() == "collapsed=true")
                });
                // The header runs to the next marker or the end of the line.
                let header_end = SECTION
                    .find(after)
                    .map(|m| m.start())
                    .unwrap_or(after.len());
                let (header, style) = draw(&after[..header_end], self.style);
                self.style = style;
                self.line += 1;
                events.push(Event::SectionStart {
                    number: self.line,
                    name: name.clone(),
                    header_html: header.html(),
                    collapsed,
                    started_at: ts,
                    sections: self.path(),
                });
                self.sections.push(Open {
                    name,
                    started_at: ts,
                });
                rest = &after[header_end..];
            } else {
                if let Some(pos) = self.sections.iter().rposition(|s| s.name == name) {
                    while self.sections.len() > pos + 1 {
                        if let Some(inner) = self.sections.pop() {
                            events.push(Event::SectionEnd {
                                name: inner.name,
                                duration_secs: None,
                                sections: self.path(),
                            });
                        }
                    }
                    if let Some(open) = self.sections.pop() {
                        events.push(Event::SectionEnd {
                            name: open.name,
                            duration_secs: Some(ts.saturating_sub(open.started_at)),
                            sections: self.path(),
                        });
                    }
                }
                rest = after;
            }
            if rest.is_empty() {
                return;
            }
        }
    }

    /// A plain line. Beside a section marker, text that draws nothing visible (the
    /// runner's `\e[0K` around markers) is not a line; elsewhere an empty line is kept.
    fn text_line(&mut self, text: &str, events: &mut Vec<Event>, beside_marker: bool) {
        let (screen, style) = draw(text, self.style);
        self.style = style;
        if beside_marker && screen.is_blank() {
            return;
        }
        self.line += 1;
        events.push(Event::Line {
            number: self.line,
            html: screen.html(),
            sections: self.path(),
        });
    }
}

/// A whole log as HTML: lines as `<div class="line">`, sections as nested
/// `<details class="section">` (open unless `collapsed=true`) whose `<summary>` holds the
/// header and the duration.
pub fn render_document(log: &[u8]) -> String {
    let mut r = LogRenderer::new();
    let mut events = r.push(log);
    events.extend(r.finish());
    // One buffer per open section: the summary needs the duration, known only at the end.
    struct Frame {
        head: String,
        body: String,
    }
    let mut stack: Vec<Frame> = vec![Frame {
        head: String::new(),
        body: String::new(),
    }];
    for e in events {
        match e {
            Event::Line { .. } => {
                if let Some(top) = stack.last_mut() {
                    let html = e.to_html();
                    top.body.push_str(&html);
                }
            }
            Event::SectionStart {
                number,
                name,
                header_html,
                collapsed,
                ..
            } => {
                let mut head = String::new();
                head.push_str("<details class=\"section\" data-section=\"");
                escape(&name, &mut head);
                head.push('"');
                if !collapsed {
                    head.push_str(" open");
                }
                let _ = write!(
                    head,
                    "><summary class=\"section-header\" id=\"L{number}\"><a class=\"ln\" \
                     href=\"#L{number}\">{number}</a>{header_html}"
                );
                stack.push(Frame {
                    head,
                    body: String::new(),
                });
            }
            Event::SectionEnd { duration_secs, .. } => {
                if stack.len() < 2 {
                    continue;
                }
                if let Some(frame) = stack.pop() {
                    let mut html = frame.head;
                    if let Some(d) = duration_secs {
                        let _ = write!(
                            html,
                            "<span class=\"section-duration\">{}</span>",
                            format_duration(d)
                        );
                    }
                    html.push_str("</summary>");
                    html.push_str(&frame.body);
                    html.push_str("</details>");
                    if let Some(parent) = stack.last_mut() {
                        parent.body.push_str(&html);
                    }
                }
            }
        }
    }
    let body = stack.pop().map(|f| f.body).unwrap_or_default();
    format!("<div class=\"job-log\">{body}</div>")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_html(s: &str) -> String {
        draw(s, Style::default()).0.html()
    }

    #[test]
    fn colours_and_attributes() {
        assert_eq!(
            line_html("\x1b[31mred\x1b[0m plain"),
            "<span class=\"term-fg-1\">red</span> plain"
        );
        assert_eq!(
            line_html("\x1b[1;92mok"),
            "<span class=\"term-fg-10 term-bold\">ok</span>"
        );
        assert_eq!(
            line_html("\x1b[38;5;196mx"),
            "<span style=\"color:#ff0000;\">x</span>"
        );
        assert_eq!(
            line_html("\x1b[38;5;244mx"),
            "<span style=\"color:#808080;\">x</span>"
        );
        assert_eq!(
            line_html("\x1b[48;2;1;2;3mx"),
            "<span style=\"background-color:#010203;\">x</span>"
        );
        assert_eq!(
            line_html("\x1b[38:2::10:20:30mx"),
            "<span style=\"color:#0a141e;\">x</span>"
        );
        assert_eq!(
            line_html("\x1b[3;4;9mx\x1b[23;24;29my"),
            "<span class=\"term-italic term-underline term-strike\">x</span>y"
        );
        assert_eq!(
            line_html("\x1b[7mx"),
            "<span class=\"term-fg-inverse term-bg-inverse\">x</span>"
        );
        assert_eq!(
            line_html("\x1b[32;41;7mx"),
            "<span class=\"term-fg-1 term-bg-2\">x</span>"
        );
        assert_eq!(
            line_html("\x1b[1mb\x1b[22mn\x1b[mz"),
            "<span class=\"term-bold\">b</span>nz"
        );
        assert_eq!(line_html("\x1b[0;mreset"), "reset");
        assert_eq!(
            line_html("\x1b[999;38;5mx"),
            "x",
            "bad parameters are ignored"
        );
    }

    #[test]
    fn overwrites_erases_and_escaping() {
        assert_eq!(line_html("10%\r20%\r30%"), "30%");
        assert_eq!(line_html("hello\rHE"), "HEllo");
        assert_eq!(line_html("hello\r\x1b[Kbye"), "bye");
        assert_eq!(line_html("hello\x1b[3D\x1b[0K!"), "he!");
        assert_eq!(line_html("abc\x1b[2Kx"), "   x");
        assert_eq!(line_html("abc\x1b[1D\x1b[1KZ"), "  Z");
        assert_eq!(line_html("a\x1b[5Gb"), "a   b");
        assert_eq!(line_html("ab\x08c"), "ac");
        assert_eq!(line_html("<script>&\"'"), "&lt;script&gt;&amp;&quot;&#39;");
        assert_eq!(
            line_html("\x1b]0;title\x07text\x1b]8;;http://x\x1b\\link"),
            "textlink"
        );
        assert_eq!(
            line_html("\x1b[?25lhidden cursor\x1b[?25h"),
            "hidden cursor"
        );
        assert_eq!(line_html("bell\x07"), "bell");
        assert_eq!(line_html("\x1b[99999999999Cx").len(), MAX_COLUMN + 1);
        // Found by fuzzing: a move by usize::MAX columns.
        assert_eq!(
            line_html("a\x1b[18446744073709551615Cb").len(),
            MAX_COLUMN + 1
        );
    }

    #[test]
    fn styles_carry_over_lines() {
        let mut r = LogRenderer::new();
        let e = r.push(b"\x1b[33mone\ntwo\x1b[0m\nthree\n");
        let html: Vec<String> = e
            .iter()
            .map(|e| match e {
                Event::Line { html, .. } => html.clone(),
                _ => String::new(),
            })
            .collect();
        assert_eq!(
            html,
            vec![
                "<span class=\"term-fg-3\">one</span>",
                "<span class=\"term-fg-3\">two</span>",
                "three"
            ]
        );
    }

    #[test]
    fn sections_nest_with_durations() {
        let log = b"\x1b[0Ksection_start:1700000000:prepare[collapsed=true]\r\x1b[0K\x1b[36;1mPreparing\x1b[0;m\n\
            pulling <image>\n\
            \x1b[0Ksection_start:1700000001:inner\r\x1b[0KInner\n\
            inside\n\
            \x1b[0Ksection_end:1700000003:inner\r\x1b[0K\n\
            \x1b[0Ksection_end:1700000065:prepare\r\x1b[0K\x1b[0Ksection_start:1700000065:script\r\x1b[0KScript\n\
            $ make\n";
        let mut r = LogRenderer::new();
        let mut events = r.push(log);
        events.extend(r.finish());
        let kinds: Vec<String> = events
            .iter()
            .map(|e| match e {
                Event::Line {
                    number, sections, ..
                } => format!("{number} line in {}", sections.join("/")),
                Event::SectionStart {
                    number,
                    name,
                    collapsed,
                    ..
                } => format!("{number} start {name} {collapsed}"),
                Event::SectionEnd {
                    name,
                    duration_secs,
                    ..
                } => format!("end {name} {duration_secs:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                "1 start prepare true",
                "2 line in prepare",
                "3 start inner false",
                "4 line in prepare/inner",
                "end inner Some(2)",
                "end prepare Some(65)",
                "5 start script false",
                "6 line in script",
                "end script None",
            ]
        );
        let doc = render_document(log);
        assert!(doc.starts_with("<div class=\"job-log\"><details class=\"section\" data-section=\"prepare\"><summary"), "{doc}");
        assert!(doc.contains("<span class=\"term-fg-6 term-bold\">Preparing</span><span class=\"section-duration\">01:05</span></summary>"), "{doc}");
        assert!(doc.contains("pulling &lt;image&gt;"));
        assert!(doc.contains("<details class=\"section\" data-section=\"inner\" open>"));
        assert_eq!(
            doc.matches("<details").count(),
            doc.matches("</details>").count()
        );
        assert_eq!(doc.matches("<div").count(), doc.matches("</div>").count());
        // Live fragments carry the section path.
        assert_eq!(
            events[3].to_html(),
            "<div class=\"line\" id=\"L4\" data-section=\"prepare/inner\"><a class=\"ln\" href=\"#L4\">4</a>inside</div>"
        );
        assert!(events[0]
            .to_html()
            .contains("data-collapsed=\"true\" data-started=\"1700000000\""));
    }

    #[test]
    fn unmatched_ends_and_chunk_boundaries() {
        let mut r = LogRenderer::new();
        let mut e = r.push(b"section_end:5:never\r\x1b[0Kstill shown\n");
        e.extend(r.finish());
        assert_eq!(e.len(), 1);
        // A line split anywhere, even inside a UTF-8 character, renders the same.
        let text = "d\u{e9}j\u{e0} \x1b[32mvu\x1b[0m\n".as_bytes();
        for cut in 0..text.len() {
            let mut r = LogRenderer::new();
            let mut e = r.push(&text[..cut]);
            e.extend(r.push(&text[cut..]));
            assert_eq!(e.len(), 1, "cut at {cut}");
            assert_eq!(e[0].to_html(), "<div class=\"line\" id=\"L1\"><a class=\"ln\" href=\"#L1\">1</a>d\u{e9}j\u{e0} <span class=\"term-fg-2\">vu</span></div>");
        }
        assert_eq!(format_duration(3725), "1:02:05");
        assert_eq!(format_duration(59), "00:59");
    }

    #[test]
    fn over_long_lines_are_cut_not_buffered() {
        let mut r = LogRenderer::new();
        let e = r.push(&vec![b'a'; MAX_LINE_BYTES * 2 + 10]);
        assert_eq!(e.len(), 2);
        assert_eq!(r.finish().len(), 1);
        // The same line given whole, with its newline, is cut at the same places.
        let mut long = vec![b'a'; MAX_LINE_BYTES * 2 + 10];
        long.push(b'\n');
        let whole = LogRenderer::new().push(&long);
        let mut r = LogRenderer::new();
        let mut parts = r.push(&long[..MAX_LINE_BYTES + 1]);
        parts.extend(r.push(&long[MAX_LINE_BYTES + 1..]));
        assert_eq!(whole.len(), 3);
        assert_eq!(parts, whole);
    }
}
