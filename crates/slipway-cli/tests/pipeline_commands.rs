//! `slipway lint`, `preview` and `list` run as a user runs them: the real binary in a real
//! git repository in a temporary directory.

use std::path::Path;
use std::process::{Command, Output};

fn slipway(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("slipway runs")
}

fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .status()
        .expect("git runs")
        .success();
    assert!(ok, "git {args:?}");
}

fn repo(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    git(dir.path(), &["init", "-q", "-b", "main"]);
    for (path, text) in files {
        let p = dir.path().join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(p, text).expect("write");
    }
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-qm", "init"]);
    dir
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

const PIPELINE: &str = "\
include: ci/templates.yml
stages: [build, test, deploy]
build:
  stage: build
  script: make
test:
  extends: .test
  parallel: 2
deploy:
  stage: deploy
  script: ./deploy
  rules:
    - if: $CI_COMMIT_BRANCH == \"main\"
    - if: $CI_COMMIT_TAG
      when: manual
";

const TEMPLATES: &str = "\
.test:
  stage: test
  needs: [build]
  script:
    - make test
";

#[test]
fn lint_valid_prints_one_line_summary() {
    let dir = repo(&[
        (".gitlab-ci.yml", PIPELINE),
        ("ci/templates.yml", TEMPLATES),
    ]);
    let out = slipway(dir.path(), &["lint"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("valid"), "{text}");
    assert!(text.contains("3 jobs"), "{text}");
}

#[test]
fn lint_invalid_reports_every_error_with_position_and_source_line() {
    let bad = "\
stages: [build]
build:
  stage: biuld
  script: make
test:
  stage: build
  scirpt: x
";
    let dir = repo(&[(".gitlab-ci.yml", bad)]);
    let out = slipway(dir.path(), &["lint"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(".gitlab-ci.yml:3:10: error: jobs:build chosen stage biuld does not exist"),
        "{err}"
    );
    assert!(err.contains("3 |   stage: biuld"), "{err}");
    // As on GitLab, a hash without script/run/trigger is not checked as a job: the
    // misspelt `scirpt` shows as the missing script.
    assert!(
        err.contains(".gitlab-ci.yml:5:1: error: jobs test config should implement the script:"),
        "{err}"
    );
}

#[test]
fn lint_yaml_syntax_error_names_the_place() {
    let dir = repo(&[(
        ".gitlab-ci.yml",
        "build:\n  script: [make\n  stage: build\n",
    )]);
    let out = slipway(dir.path(), &["lint"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.starts_with(".gitlab-ci.yml:"), "{err}");
    assert!(err.contains("YAML syntax error"), "{err}");
}

#[test]
fn lint_names_the_included_file_of_an_error() {
    let dir = repo(&[
        (".gitlab-ci.yml", "include: ci/jobs.yml\n"),
        ("ci/jobs.yml", "job:\n  script: x\n  when: sometimes\n"),
    ]);
    let out = slipway(dir.path(), &["lint"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("ci/jobs.yml:3:9: error:"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn lint_missing_file_is_a_clear_error() {
    let dir = repo(&[("README", "x")]);
    let out = slipway(dir.path(), &["lint"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no such pipeline file"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn list_json_has_the_documented_fields() {
    let dir = repo(&[
        (".gitlab-ci.yml", PIPELINE),
        ("ci/templates.yml", TEMPLATES),
    ]);
    let out = slipway(dir.path(), &["list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let jobs: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let jobs = jobs.as_array().expect("array");
    let names: Vec<&str> = jobs.iter().filter_map(|j| j["name"].as_str()).collect();
    assert_eq!(names, ["build", "test 1/2", "test 2/2", "deploy"]);
    assert_eq!(jobs[0]["needs"], serde_json::Value::Null);
    assert_eq!(jobs[1]["needs"], serde_json::json!(["build"]));
    assert_eq!(jobs[1]["stage"], "test");
    assert_eq!(jobs[3]["when"], "on_success");
    assert_eq!(jobs[3]["allow_failure"], false);
}

#[test]
fn list_defaults_to_the_checked_out_branch() {
    let dir = repo(&[
        (".gitlab-ci.yml", PIPELINE),
        ("ci/templates.yml", TEMPLATES),
    ]);
    git(dir.path(), &["checkout", "-q", "-b", "feature"]);
    let out = slipway(dir.path(), &["list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let jobs: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let names: Vec<&str> = jobs
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|j| j["name"].as_str())
        .collect();
    assert!(
        !names.contains(&"deploy"),
        "deploy only runs on main: {names:?}"
    );
}

#[test]
fn list_for_a_tag_makes_the_rule_manual() {
    let dir = repo(&[
        (".gitlab-ci.yml", PIPELINE),
        ("ci/templates.yml", TEMPLATES),
    ]);
    let out = slipway(dir.path(), &["list", "--json", "--ref", "v1.0.0", "--tag"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let jobs: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let deploy = jobs
        .as_array()
        .expect("array")
        .iter()
        .find(|j| j["name"] == "deploy")
        .cloned()
        .expect("deploy");
    assert_eq!(deploy["when"], "manual");
    assert_eq!(
        deploy["allow_failure"], false,
        "a manual job from rules is not allowed to fail"
    );
}

#[test]
fn list_with_variables_and_source() {
    let pipeline = "\
workflow:
  rules:
    - if: $CI_PIPELINE_SOURCE == \"schedule\"
nightly:
  script: x
  rules:
    - if: $SUITE == \"full\"
";
    let dir = repo(&[(".gitlab-ci.yml", pipeline)]);
    let out = slipway(dir.path(), &["list", "--json"]);
    assert!(out.status.success());
    assert_eq!(
        stdout(&out).trim(),
        "[]",
        "a push is filtered out by workflow:rules"
    );
    let out = slipway(
        dir.path(),
        &[
            "list",
            "--json",
            "--source",
            "schedule",
            "--variable",
            "SUITE=full",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let jobs: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(jobs.as_array().map(|a| a.len()), Some(1));
}

#[test]
fn preview_lints_and_plans_the_same() {
    let dir = repo(&[
        (".gitlab-ci.yml", PIPELINE),
        ("ci/templates.yml", TEMPLATES),
    ]);
    let out = slipway(dir.path(), &["preview"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let expanded = stdout(&out);
    assert!(!expanded.contains("include"), "{expanded}");
    assert!(!expanded.contains("extends"), "{expanded}");
    std::fs::write(dir.path().join("expanded.yml"), &expanded).expect("write");
    let lint = slipway(dir.path(), &["lint", "--file", "expanded.yml"]);
    assert!(lint.status.success(), "{}", stderr(&lint));
    let a = slipway(dir.path(), &["list", "--json"]);
    let b = slipway(dir.path(), &["list", "--json", "--file", "expanded.yml"]);
    assert_eq!(stdout(&a), stdout(&b));
}

#[test]
fn remote_include_is_a_clear_error_at_its_line() {
    let dir = repo(&[(
        ".gitlab-ci.yml",
        "include:\n  - remote: https://example.com/ci.yml\njob:\n  script: x\n",
    )]);
    let out = slipway(dir.path(), &["lint"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(".gitlab-ci.yml:2:5: error: include:remote needs a network source"),
        "{err}"
    );
}

#[test]
fn run_executes_the_pipeline_in_the_shell() {
    let pipeline = "\
stages: [build, test]
build:
  stage: build
  script:
    - echo \"VERSION=1.2.3\" > build.env
  artifacts:
    reports:
      dotenv: build.env
test:
  stage: test
  script:
    - echo \"sees $VERSION and $TOKEN\"
flaky:
  stage: test
  script: exit 3
  allow_failure:
    exit_codes: [3]
";
    let dir = repo(&[(".gitlab-ci.yml", pipeline)]);
    let data = tempfile::tempdir().expect("data dir");
    let data_arg = data.path().to_string_lossy().to_string();
    let out = slipway(
        dir.path(),
        &["run", "--data", &data_arg, "--secret", "TOKEN=hunter2"],
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(text.contains("test  | sees 1.2.3 and [MASKED]"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("failed (allowed)"), "{text}");
    assert!(text.contains("pipeline success"), "{text}");
    // The developer's working tree is untouched.
    assert!(!dir.path().join("build.env").exists());
}

#[test]
fn run_fails_when_a_job_fails() {
    let dir = repo(&[(
        ".gitlab-ci.yml",
        "a:\n  stage: build\n  script: exit 2\nb:\n  stage: test\n  script: echo never\n",
    )]);
    let data = tempfile::tempdir().expect("data dir");
    let data_arg = data.path().to_string_lossy().to_string();
    let out = slipway(dir.path(), &["run", "--data", &data_arg]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(!text.contains("b | never"), "{text}");
    assert!(text.contains("pipeline failed"), "{text}");
}
