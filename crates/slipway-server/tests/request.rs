//! Planning pipelines at commits of a real mirror, for each kind of request.

mod common;

use common::TestRepo;
use slipway_core::variables::MergeRequestContext;
use slipway_server::git::{Mirror, RefUpdate, RepoSource};
use slipway_server::request::{
    plan_at_commit, PipelineRequest, PipelineSource, PlanError, PlanOutcome, PlannedPipeline,
    ProjectInfo,
};

const PIPELINE: &str = r#"
workflow:
  rules:
    - if: $CI_COMMIT_TAG =~ /^nightly/
      when: never
    - when: always
stages: [build, test, deploy]
docs:
  stage: build
  script: make docs
  rules:
    - changes: [docs/**/*]
docs-vs-main:
  stage: build
  script: make docs
  rules:
    - changes:
        paths: [docs/**/*]
        compare_to: refs/heads/main
code:
  stage: test
  script: make test
  rules:
    - changes: [src/**/*]
has-dockerfile:
  stage: test
  script: docker build .
  rules:
    - exists: [Dockerfile]
mr-only:
  stage: test
  script: echo review
  rules:
    - if: $CI_PIPELINE_SOURCE == "merge_request_event"
release:
  stage: deploy
  script: echo "$CI_COMMIT_TAG"
  rules:
    - if: $CI_COMMIT_TAG
manual-deploy:
  stage: deploy
  script: echo "$TARGET"
  rules:
    - if: $CI_PIPELINE_SOURCE == "web" && $TARGET == "staging"
"#;

struct Fixture {
    _tmp: tempfile::TempDir,
    src: TestRepo,
    mirror: Mirror,
    project: ProjectInfo,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = TestRepo::init(&tmp.path().join("app"));
    src.commit(
        &[
            (".gitlab-ci.yml", PIPELINE),
            ("src/main.rs", "fn main() {}\n"),
            ("docs/index.md", "# Docs\n"),
        ],
        "initial",
    );
    // Not committed: `rules:exists` must not see it.
    src.write("Dockerfile", "FROM scratch\n");
    let mirror = Mirror::create_or_open(
        &tmp.path().join("m.git"),
        &RepoSource::Local(src.path.clone()),
    )
    .expect("mirror");
    let project = ProjectInfo {
        id: 7,
        path: "team/app".into(),
        server_url: "http://ci.example.com".into(),
        server_version: "0.1.0".into(),
        ..ProjectInfo::default()
    };
    Fixture {
        _tmp: tmp,
        src,
        mirror,
        project,
    }
}

fn jobs(p: &PlannedPipeline) -> Vec<&str> {
    match &p.outcome {
        PlanOutcome::Planned(plan) => plan.jobs.iter().map(|j| j.name.as_str()).collect(),
        other => panic!("expected a plan, got {other:?}"),
    }
}

fn var<'a>(p: &'a PlannedPipeline, key: &str) -> Option<&'a str> {
    p.trigger
        .predefined
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn push(f: &Fixture, old: Option<&str>, new: &str, full_ref: &str) -> PlannedPipeline {
    let zero = "0".repeat(40);
    let update = RefUpdate::from_shas(old.unwrap_or(&zero), new, full_ref).expect("update");
    let req = PipelineRequest::for_ref_update(&update, &[]).expect("request");
    plan_at_commit(&f.mirror, &f.project, &req).expect("planned")
}

#[test]
fn a_push_to_a_branch_plans_with_its_diff_and_commit_variables() {
    let f = fixture();
    let before = f.src.head();
    let after = f.src.commit(
        &[("src/lib.rs", "pub fn f() {}\n")],
        "Add the library\n\nWith details.",
    );
    f.mirror.fetch().expect("fetch");
    let p = push(&f, Some(&before), &after, "refs/heads/main");
    assert_eq!(
        p.trigger.changed_files.as_deref(),
        Some(&["src/lib.rs".to_string()][..])
    );
    // Docs did not change, in the push or against main (the same commit).
    assert_eq!(jobs(&p), vec!["code"]);
    assert_eq!(var(&p, "CI_PIPELINE_SOURCE"), Some("push"));
    assert_eq!(var(&p, "CI_COMMIT_SHA"), Some(after.as_str()));
    assert_eq!(var(&p, "CI_COMMIT_BEFORE_SHA"), Some(before.as_str()));
    assert_eq!(var(&p, "CI_COMMIT_BRANCH"), Some("main"));
    assert_eq!(var(&p, "CI_COMMIT_REF_NAME"), Some("main"));
    assert_eq!(var(&p, "CI_COMMIT_TITLE"), Some("Add the library"));
    assert_eq!(
        var(&p, "CI_COMMIT_AUTHOR"),
        Some("Ada Lovelace <ada@example.com>")
    );
    assert_eq!(
        var(&p, "CI_COMMIT_TIMESTAMP"),
        Some("2024-05-01T10:00:00+02:00")
    );
    assert_eq!(var(&p, "CI_DEFAULT_BRANCH"), Some("main"));
    assert_eq!(var(&p, "CI_PROJECT_PATH"), Some("team/app"));
    assert_eq!(
        var(&p, "CI_PROJECT_URL"),
        Some("http://ci.example.com/team/app")
    );
    assert!(var(&p, "CI_PIPELINE_CREATED_AT").is_some_and(|t| t.ends_with('Z')));
    assert_eq!(p.config_path, ".gitlab-ci.yml");
}

#[test]
fn a_new_branch_has_unknown_changes_except_against_compare_to() {
    let f = fixture();
    f.src.git(&["checkout", "--quiet", "-b", "topic"]);
    let sha = f.src.commit(&[("docs/guide.md", "guide\n")], "docs only");
    f.mirror.fetch().expect("fetch");
    let p = push(&f, None, &sha, "refs/heads/topic");
    assert_eq!(p.trigger.changed_files, None);
    assert_eq!(
        p.trigger.compare_to,
        vec![(
            "refs/heads/main".to_string(),
            Some(vec!["docs/guide.md".to_string()])
        )]
    );
    // `changes` without compare_to are true on a new branch; with it, only docs changed.
    assert_eq!(jobs(&p), vec!["docs", "docs-vs-main", "code"]);
    // `exists` sees the commit's files, not the untracked Dockerfile.
    assert!(!jobs(&p).contains(&"has-dockerfile"));
}

#[test]
fn tags_get_tag_variables_and_workflow_rules_apply() {
    let f = fixture();
    f.src.git(&["tag", "-a", "v1.0", "-m", "First release"]);
    f.src.git(&["tag", "nightly-1"]);
    f.mirror.fetch().expect("fetch");
    let req = PipelineRequest::new(PipelineSource::Push, "v1.0", true);
    let p = plan_at_commit(&f.mirror, &f.project, &req).expect("plan");
    assert_eq!(var(&p, "CI_COMMIT_TAG"), Some("v1.0"));
    assert_eq!(var(&p, "CI_COMMIT_TAG_MESSAGE"), Some("First release"));
    assert_eq!(var(&p, "CI_COMMIT_BRANCH"), None);
    assert_eq!(
        p.sha,
        f.src.head(),
        "the annotated tag is peeled to its commit"
    );
    assert!(jobs(&p).contains(&"release"));
    let nightly = PipelineRequest::new(PipelineSource::Push, "nightly-1", true);
    let p = plan_at_commit(&f.mirror, &f.project, &nightly).expect("plan");
    assert!(matches!(p.outcome, PlanOutcome::FilteredByWorkflow));
}

#[test]
fn merge_requests_diff_against_their_target_branch() {
    let f = fixture();
    f.src.git(&["checkout", "--quiet", "-b", "feature"]);
    let sha = f.src.commit(&[("src/new.rs", "\n")], "feature");
    f.src.git(&["checkout", "--quiet", "main"]);
    f.src
        .commit(&[("docs/changed-on-main.md", "\n")], "main moves on");
    f.mirror.fetch().expect("fetch");
    let mut req = PipelineRequest::new(PipelineSource::MergeRequestEvent, "feature", false);
    req.sha = Some(sha.clone());
    req.merge_request = Some(MergeRequestContext {
        id: 501,
        iid: 12,
        title: "Add new.rs".into(),
        source_branch: "feature".into(),
        target_branch: "main".into(),
        ..MergeRequestContext::default()
    });
    let p = plan_at_commit(&f.mirror, &f.project, &req).expect("plan");
    assert_eq!(
        p.trigger.changed_files.as_deref(),
        Some(&["src/new.rs".to_string()][..])
    );
    assert_eq!(jobs(&p), vec!["code", "mr-only"]);
    assert_eq!(var(&p, "CI_PIPELINE_SOURCE"), Some("merge_request_event"));
    assert_eq!(var(&p, "CI_MERGE_REQUEST_IID"), Some("12"));
    assert_eq!(
        var(&p, "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME"),
        Some("feature")
    );
    assert_eq!(var(&p, "CI_MERGE_REQUEST_TARGET_BRANCH_NAME"), Some("main"));
    assert_eq!(
        var(&p, "CI_COMMIT_BRANCH"),
        None,
        "merge request pipelines have no CI_COMMIT_BRANCH"
    );
}

#[test]
fn manual_runs_take_variables_and_pushes_can_be_skipped() {
    let f = fixture();
    let mut req = PipelineRequest::new(PipelineSource::Web, "main", false);
    req.variables.push(("TARGET".into(), "staging".into()));
    let p = plan_at_commit(&f.mirror, &f.project, &req).expect("plan");
    assert!(jobs(&p).contains(&"manual-deploy"));
    assert_eq!(p.trigger.changed_files, None, "web pipelines have no diff");

    let before = f.src.head();
    let after = f.src.commit(&[("src/x.rs", "\n")], "wip [skip ci]");
    f.mirror.fetch().expect("fetch");
    let p = push(&f, Some(&before), &after, "refs/heads/main");
    assert!(matches!(p.outcome, PlanOutcome::Skipped(ref r) if r.contains("[skip ci]")));
    let update = RefUpdate::from_shas(&before, &after, "refs/heads/main").expect("u");
    let req = PipelineRequest::for_ref_update(&update, &["ci.skip".into()]).expect("req");
    assert!(matches!(
        plan_at_commit(&f.mirror, &f.project, &req)
            .expect("plan")
            .outcome,
        PlanOutcome::Skipped(_)
    ));
}

#[test]
fn errors_are_positioned_and_missing_files_or_refs_reported() {
    let f = fixture();
    f.src.commit(
        &[
            (
                ".gitlab-ci.yml",
                "include: ci/jobs.yml\nbuild:\n  script: make\n",
            ),
            ("ci/jobs.yml", "test:\n  stage: nope\n  script: make test\n"),
        ],
        "broken",
    );
    f.mirror.fetch().expect("fetch");
    let err = plan_at_commit(
        &f.mirror,
        &f.project,
        &PipelineRequest::new(PipelineSource::Api, "main", false),
    )
    .expect_err("invalid");
    let PlanError::Config(c) = err else {
        panic!("expected config errors, got {err}")
    };
    assert_eq!(c.errors.len(), 1, "{}", c.rendered);
    assert_eq!(
        (c.errors[0].path.as_str(), c.errors[0].line, c.errors[0].col),
        ("ci/jobs.yml", 2, 10)
    );
    assert!(
        c.rendered.starts_with("ci/jobs.yml:2:10: error: "),
        "{}",
        c.rendered
    );

    let mut other = f.project.clone();
    other.config_path = Some("ci/missing.yml".into());
    let err = plan_at_commit(
        &f.mirror,
        &other,
        &PipelineRequest::new(PipelineSource::Api, "main", false),
    )
    .expect_err("no file");
    assert!(matches!(err, PlanError::NoPipelineFile { ref path, .. } if path == "ci/missing.yml"));
    let err = plan_at_commit(
        &f.mirror,
        &f.project,
        &PipelineRequest::new(PipelineSource::Api, "nope", false),
    )
    .expect_err("no ref");
    assert_eq!(err.to_string(), "nope: no such branch or tag");
}
