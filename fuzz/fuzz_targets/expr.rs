//! Parses arbitrary UTF-8 as a `rules:if` expression; when it parses, evaluates it against a
//! small fixed set of variables. Checks that errors point inside the text, on a character
//! boundary, and that evaluation is deterministic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slipway_core::expr;

/// Defined, empty, blank, regex-shaped and invalid-regex values; anything else is undefined.
fn lookup(name: &str) -> Option<String> {
    let value = match name {
        "A" | "CI_COMMIT_BRANCH" => "main",
        "B" => "feature/login-1.2",
        "EMPTY" => "",
        "BLANK" => " \t",
        "RE" => "/^feat.*/i",
        "BAD_RE" => "/a(/",
        "MULTI" => "line one\n/li/m\nline three",
        "UNI" => "é√ß",
        _ => return None,
    };
    Some(value.to_string())
}

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    match expr::parse(src) {
        Ok(e) => {
            let first = e.evaluate(&lookup);
            assert_eq!(
                first,
                e.evaluate(&lookup),
                "evaluation must be deterministic"
            );
            let _ = e.evaluate(&|_| None);
            let _ = e.evaluate(&|name| Some(name.to_string()));
            for name in e.variables() {
                assert!(!name.is_empty() && src.contains(&name));
            }
        }
        Err(err) => {
            assert!(
                err.offset <= src.len(),
                "offset {} past the end",
                err.offset
            );
            assert!(
                src.is_char_boundary(err.offset),
                "offset {} inside a character",
                err.offset
            );
            assert!(!err.message.is_empty());
        }
    }
});
