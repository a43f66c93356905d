//! Renders arbitrary bytes as a job log. Checks that the HTML is well formed (only the
//! renderer's own tags, balanced), that no byte of the input becomes markup, and that
//! feeding the log in two pieces gives the same result as feeding it whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slipway_server::ansi::{render_document, Event, LogRenderer};

const TAGS: &[&str] = &["div", "span", "details", "summary", "a"];

fn check_markup(html: &str) {
    let mut stack: Vec<&str> = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find('<') {
        let after = &rest[start + 1..];
        let end = after.find('>').expect("every tag is closed");
        let tag = &after[..end];
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop(), Some(name), "mismatched </{name}>");
        } else {
            let name = tag.split(' ').next().unwrap_or_default();
            assert!(TAGS.contains(&name), "unexpected tag <{name}>");
            // Attribute values never contain a raw quote or angle bracket from the input.
            assert!(!tag.contains('<'));
            stack.push(name);
        }
        rest = &after[end + 1..];
    }
    assert!(stack.is_empty(), "unclosed {stack:?}");
    assert!(!rest.contains('>'));
}

fn events(parts: &[&[u8]]) -> Vec<Event> {
    let mut r = LogRenderer::new();
    let mut out = Vec::new();
    for p in parts {
        out.extend(r.push(p));
    }
    out.extend(r.finish());
    out
}

fuzz_target!(|data: &[u8]| {
    let html = render_document(data);
    check_markup(&html);
    let whole = events(&[data]);
    for e in &whole {
        check_markup(&e.to_html());
    }
    if !data.is_empty() {
        let cut = data[0] as usize % data.len();
        assert_eq!(events(&[&data[..cut], &data[cut..]]), whole, "split at {cut}");
    }
});
