//! `rules:changes:compare_to`: the caller computes the changes against each named ref;
//! the planner uses them, and a ref that does not exist is an error at the rule.

use slipway_core::plan::{self, Trigger};
use slipway_core::source::MemoryLoader;

const PIPELINE: &str = "\
variables:
  BASE: main
docs:
  script: make docs
  rules:
    - changes:
        paths: [docs/**/*]
        compare_to: $BASE
code:
  script: make
  rules:
    - changes:
        paths: [src/**/*]
        compare_to: refs/heads/main
other:
  script: make other
  rules:
    - changes: [other/*]
";

fn jobs(trigger: &Trigger) -> Result<Vec<String>, String> {
    let loader = MemoryLoader::new().with(".gitlab-ci.yml", PIPELINE);
    let loaded = slipway_core::load_for_trigger(&loader, ".gitlab-ci.yml", Some(trigger));
    let pipeline = loaded
        .pipeline
        .as_ref()
        .map_err(|d| d.render(&loaded.sources))?;
    match plan::plan(pipeline, trigger) {
        Ok(Ok(p)) => Ok(p.jobs.into_iter().map(|j| j.name).collect()),
        Ok(Err(_)) => Ok(Vec::new()),
        Err(d) => Err(d.render(&loaded.sources)),
    }
}

fn trigger() -> Trigger {
    Trigger {
        ref_name: "feature".into(),
        source: "push".into(),
        predefined: plan::basic_predefined("feature", false, "push", "main"),
        ..Trigger::default()
    }
}

#[test]
fn refs_are_listed_expanded_and_once() {
    let t = trigger();
    let loader = MemoryLoader::new().with(".gitlab-ci.yml", PIPELINE);
    let loaded = slipway_core::load_for_trigger(&loader, ".gitlab-ci.yml", Some(&t));
    let pipeline = loaded.pipeline.expect("valid");
    assert_eq!(
        plan::compare_to_refs(&pipeline, &t),
        vec!["main", "refs/heads/main"]
    );
}

#[test]
fn changes_against_compare_to_decide_the_rule() {
    // A new branch: no push diff (changes are true), but compare_to has real diffs.
    let mut t = trigger();
    t.compare_to = vec![
        ("main".into(), Some(vec!["docs/guide/intro.md".into()])),
        ("refs/heads/main".into(), Some(vec!["README.md".into()])),
    ];
    assert_eq!(jobs(&t).expect("plan"), vec!["docs", "other"]);

    // Without computed changes (the CLI), compare_to falls back to the push's changes.
    let mut t = trigger();
    t.changed_files = Some(vec!["src/main.rs".into()]);
    assert_eq!(jobs(&t).expect("plan"), vec!["code"]);
}

#[test]
fn a_missing_compare_to_ref_is_an_error_at_the_rule() {
    let mut t = trigger();
    t.compare_to = vec![
        ("main".into(), None),
        ("refs/heads/main".into(), Some(vec![])),
    ];
    let err = jobs(&t).expect_err("invalid ref");
    assert!(
        err.starts_with(
            ".gitlab-ci.yml:6:7: error: rules:changes:compare_to is not a valid ref: main"
        ),
        "{err}"
    );
}
