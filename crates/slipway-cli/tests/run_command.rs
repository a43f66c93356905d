//! `slipway run` as a developer runs it: the real binary on real pipelines in temporary git
//! repositories, with its own data directory. Container tests are `#[ignore]`d (they need
//! Podman's API: `scripts/setup-podman.sh`); `.ci/run` runs them with
//! `SLIPWAY_REQUIRE_ENGINE=1`.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Project {
    repo: tempfile::TempDir,
    data: tempfile::TempDir,
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}: {:?}", out);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(p, text).expect("write");
}

impl Project {
    fn new(files: &[(&str, &str)]) -> Project {
        let repo = tempfile::tempdir().expect("temp dir");
        git(repo.path(), &["init", "-q", "-b", "main"]);
        for (path, text) in files {
            write(repo.path(), path, text);
        }
        git(repo.path(), &["add", "-A"]);
        git(repo.path(), &["commit", "-qm", "init"]);
        Project {
            repo,
            data: tempfile::tempdir().expect("data dir"),
        }
    }

    fn path(&self) -> &Path {
        self.repo.path()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_slipway"));
        c.arg("run")
            .arg("--data")
            .arg(self.data.path())
            .args(args)
            .current_dir(self.repo.path())
            .env("NO_COLOR", "1")
            // No engine unless a test asks for one.
            .env("DOCKER_HOST", "unix:///nonexistent/slipway-test.sock")
            // Expire artifacts at every run, not once an hour.
            .env("SLIPWAY_EXPIRE_INTERVAL", "0");
        c
    }

    fn run(&self, args: &[&str]) -> Run {
        let out = self.command(args).output().expect("slipway runs");
        Run { out }
    }

    /// The project's directory inside the data directory.
    fn project_dir(&self) -> PathBuf {
        let projects = self.data.path().join("projects");
        std::fs::read_dir(&projects)
            .expect("projects")
            .flatten()
            .next()
            .expect("one project")
            .path()
    }

    fn report(&self, args: &[&str]) -> (Run, Value) {
        let report = self.data.path().join("report.json");
        let mut all = vec!["--report", report.to_str().expect("utf-8")];
        all.extend_from_slice(args);
        let run = self.run(&all);
        let text = std::fs::read_to_string(&report)
            .unwrap_or_else(|e| panic!("report: {e}\n{}", run.all()));
        let value: Value = serde_json::from_str(&text).expect("report is JSON");
        (run, value)
    }
}

struct Run {
    out: Output,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).to_string()
    }
    fn all(&self) -> String {
        format!(
            "{}\n--- stderr ---\n{}",
            self.stdout(),
            String::from_utf8_lossy(&self.out.stderr)
        )
    }
    fn code(&self) -> Option<i32> {
        self.out.status.code()
    }
    fn ok(&self) -> &Run {
        assert_eq!(self.code(), Some(0), "{}", self.all());
        self
    }
}

fn job<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .find(|j| j["name"] == name)
        .unwrap_or_else(|| panic!("no job {name} in {report}"))
}

fn log_of(report: &Value, name: &str) -> String {
    job(report, name)["log"]
        .as_array()
        .expect("log")
        .iter()
        .map(|l| l.as_str().unwrap_or_default().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn status(report: &Value, name: &str) -> String {
    job(report, name)["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn artifacts_follow_paths_exclude_and_untracked() {
    let p = Project::new(&[
        (
            ".gitlab-ci.yml",
            "\
stages: [build, test]
build:
  stage: build
  script:
    - mkdir -p out/sub out/tmp
    - echo a > out/a.txt
    - echo b > out/sub/b.txt
    - echo x > out/tmp/x.txt
    - echo log > out/sub/build.log
    - echo generated > generated.txt
    - echo changed >> tracked.txt
  artifacts:
    paths: ['out/**/*.txt']
    exclude: ['out/tmp/**']
    untracked: true
test:
  stage: test
  script:
    - test \"$(cat out/a.txt)\" = a
    - test \"$(cat out/sub/b.txt)\" = b
    - test ! -e out/tmp/x.txt
    - test -f out/sub/build.log
    - test \"$(cat generated.txt)\" = generated
    - test \"$(cat tracked.txt)\" = original
",
        ),
        ("tracked.txt", "original\n"),
    ]);
    let (run, report) = p.report(&[]);
    run.ok();
    assert_eq!(status(&report, "test"), "success", "{}", run.all());
    assert!(job(&report, "build")["artifacts"].is_string());
    assert!(log_of(&report, "test").contains("Downloaded artifacts of build"));
    // The developer's tree is untouched.
    assert!(!p.path().join("out").exists());
    assert_eq!(
        std::fs::read_to_string(p.path().join("tracked.txt")).expect("read"),
        "original\n"
    );
}

#[test]
fn needs_without_artifacts_and_empty_dependencies_get_nothing() {
    let p = Project::new(&[(
        ".gitlab-ci.yml",
        "\
stages: [build, test]
build:
  stage: build
  script: echo built > built.txt
  artifacts:
    paths: [built.txt]
by-stage:
  stage: test
  script: test -f built.txt
by-needs:
  stage: test
  needs: [build]
  script: test -f built.txt
needs-no-artifacts:
  stage: test
  needs:
    - job: build
      artifacts: false
  script: test ! -e built.txt
no-dependencies:
  stage: test
  dependencies: []
  script: test ! -e built.txt
",
    )]);
    let (run, report) = p.report(&[]);
    run.ok();
    for name in [
        "by-stage",
        "by-needs",
        "needs-no-artifacts",
        "no-dependencies",
    ] {
        assert_eq!(status(&report, name), "success", "{name}: {}", run.all());
    }
}

#[test]
fn artifacts_when_follows_how_the_job_ended() {
    let p = Project::new(&[(
        ".gitlab-ci.yml",
        "\
stages: [build, report]
fails:
  stage: build
  allow_failure: true
  script:
    - echo failure-details > on-failure.txt
    - echo success-only > on-success.txt
    - exit 1
  artifacts:
    when: on_failure
    paths: [on-failure.txt]
fails-too:
  stage: build
  allow_failure: true
  script:
    - echo nothing > on-success.txt
    - exit 1
  artifacts:
    paths: [on-success.txt]
collect:
  stage: report
  script:
    - test \"$(cat on-failure.txt)\" = failure-details
    - test ! -e on-success.txt
",
    )]);
    let (run, report) = p.report(&[]);
    run.ok();
    assert_eq!(status(&report, "collect"), "success", "{}", run.all());
    assert!(job(&report, "fails")["artifacts"].is_string());
    assert!(job(&report, "fails-too")["artifacts"].is_null());
}

#[test]
fn expired_artifacts_are_removed_and_the_latest_kept() {
    let p = Project::new(&[(
        ".gitlab-ci.yml",
        "\
build:
  script: echo $CI_PIPELINE_ID > id.txt
  artifacts:
    paths: [id.txt]
    expire_in: 1 second
keep:
  script: echo kept > kept.txt
  artifacts:
    paths: [kept.txt]
    expire_in: never
",
    )]);
    p.run(&[]).ok();
    p.run(&[]).ok();
    let manifests = |p: &Project| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(p.project_dir().join("store/artifacts"))
            .expect("artifacts dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        manifests(&p),
        vec![
            "p1-build.json",
            "p1-keep.json",
            "p2-build.json",
            "p2-keep.json"
        ]
    );
    let stored: Value = serde_json::from_str(
        &std::fs::read_to_string(p.project_dir().join("store/artifacts/p2-build.json"))
            .expect("manifest"),
    )
    .expect("json");
    assert!(stored["expire_at"].is_u64(), "{stored}");
    std::thread::sleep(Duration::from_millis(1100));
    p.run(&[]).ok();
    // p1-build expired; p2-build expired too but is the latest of `build` until p3's
    // replaced it; `never` does not expire.
    let left = manifests(&p);
    assert!(!left.contains(&"p1-build.json".to_string()), "{left:?}");
    assert!(left.contains(&"p1-keep.json".to_string()), "{left:?}");
    assert!(left.contains(&"p3-build.json".to_string()), "{left:?}");
}

#[test]
fn identical_artifact_files_are_stored_once() {
    let p = Project::new(&[(
        ".gitlab-ci.yml",
        "\
one:
  script:
    - mkdir -p a b
    - seq 1 50000 > a/data.txt
    - cp a/data.txt b/data.txt
  artifacts:
    paths: [a, b]
two:
  script:
    - mkdir -p c
    - seq 1 50000 > c/same.txt
  artifacts:
    paths: [c]
",
    )]);
    p.run(&[]).ok();
    let mut blobs = 0;
    let objects = p.project_dir().join("store/objects");
    for shard in std::fs::read_dir(&objects).expect("objects").flatten() {
        blobs += std::fs::read_dir(shard.path()).expect("shard").count();
    }
    assert_eq!(blobs, 1, "three identical files, one blob");
}

#[test]
fn caches_follow_keys_policies_and_fallbacks() {
    let p = Project::new(&[
        (
            ".gitlab-ci.yml",
            "\
stages: [fill, use]
variables:
  CACHE_FALLBACK_KEY: global-fallback
fill:
  stage: fill
  script:
    - mkdir -p .deps
    - echo \"from $CI_COMMIT_REF_SLUG\" > .deps/v
  cache:
    key: deps-$CI_COMMIT_REF_SLUG
    paths: [.deps/]
    policy: push
use:
  stage: use
  script:
    - test \"$(cat .deps/v)\" = 'from main'
    - echo touched > .deps/v
  cache:
    key: deps-$CI_COMMIT_REF_SLUG
    paths: [.deps/]
    policy: pull
by-files:
  stage: use
  script:
    - cat vendor/lock 2>/dev/null || echo no-cache
    - mkdir -p vendor && cp lock.txt vendor/lock
  cache:
    key:
      files: [lock.txt]
      prefix: vendor
    paths: [vendor/]
    fallback_keys: [vendor-old]
failing:
  stage: use
  allow_failure: true
  script:
    - echo partial > partial.txt
    - exit 1
  cache:
    key: on-failure
    paths: [partial.txt]
    when: on_failure
global:
  stage: use
  allow_failure: true
  script: cat g.txt
  cache:
    key: missing-key
    paths: [g.txt]
    policy: pull
",
        ),
        ("lock.txt", "v1\n"),
    ]);
    let (run, report) = p.report(&[]);
    run.ok();
    assert_eq!(status(&report, "use"), "success", "{}", run.all());
    assert!(log_of(&report, "by-files").contains("no-cache"));
    assert_eq!(status(&report, "global"), "failed", "no cache to pull yet");
    let caches = p.project_dir().join("store/caches");
    assert!(caches.join("on-failure.json").exists(), "saved on failure");
    assert!(caches.join("deps-main.json").exists());

    // `pull` did not save: the cache still holds what `fill` pushed. A second run of
    // `use` alone sees it.
    let (run, report) = p.report(&["use"]);
    run.ok();
    assert_eq!(status(&report, "use"), "success");

    // The same lock file: the same key, the cache is found.
    let (_, report) = p.report(&["by-files"]);
    assert!(
        log_of(&report, "by-files").contains("\nv1"),
        "{}",
        log_of(&report, "by-files")
    );
    // Another lock file (uncommitted): a new key; the fallback key is tried, then
    // CACHE_FALLBACK_KEY.
    write(p.path(), "lock.txt", "v2\n");
    let (_, report) = p.report(&["by-files"]);
    let log = log_of(&report, "by-files");
    assert!(log.contains("no-cache"), "{log}");
    assert!(
        log.contains("vendor-old") && log.contains("global-fallback"),
        "{log}"
    );

    // CACHE_FALLBACK_KEY restores when the job's key has no cache.
    let (_, report) = p.report(&["global", "--variable", "CACHE_FALLBACK_KEY=on-failure"]);
    assert!(
        log_of(&report, "global").contains("Restored cache on-failure (fallback key)"),
        "{}",
        log_of(&report, "global")
    );
}

#[test]
fn selected_jobs_needs_and_artifacts_from_an_earlier_run() {
    let p = Project::new(&[(
        ".gitlab-ci.yml",
        "\
stages: [build, test, deploy]
build:
  stage: build
  script: echo \"build of pipeline $CI_PIPELINE_ID\" > app.txt
  artifacts:
    paths: [app.txt]
test:
  stage: test
  needs: [build]
  script: cat app.txt
deploy:
  stage: deploy
  script: echo deploying
",
    )]);
    // No earlier run: `test` alone has no artifacts to read.
    let (run, report) = p.report(&["test"]);
    assert_eq!(run.code(), Some(1), "{}", run.all());
    assert_eq!(report["jobs"].as_array().map(|j| j.len()), Some(1));
    // With --needs, build runs first.
    let (run, report) = p.report(&["test", "--needs"]);
    run.ok();
    assert_eq!(report["jobs"].as_array().map(|j| j.len()), Some(2));
    assert!(log_of(&report, "test").contains("build of pipeline 2"));
    // Alone again: build's artifacts come from that run.
    let (run, report) = p.report(&["test"]);
    run.ok();
    let log = log_of(&report, "test");
    assert!(log.contains("build of pipeline 2"), "{log}");
    assert!(log.contains("from an earlier run"), "{log}");
    // Unknown names are errors that say so.
    let run = p.run(&["nope"]);
    assert_eq!(run.code(), Some(1));
    assert!(run.all().contains("no job `nope`"), "{}", run.all());
}

#[test]
fn manual_jobs_wait_unless_played() {
    let p = Project::new(&[(
        ".gitlab-ci.yml",
        "\
stages: [build, deploy]
build:
  stage: build
  script: echo built
deploy:
  stage: deploy
  when: manual
  script: echo deployed by $GITLAB_USER_LOGIN $CI_JOB_MANUAL
gate:
  stage: deploy
  script: echo gated
  rules:
    - when: manual
",
    )]);
    // `rules: when: manual` may not fail: the pipeline is blocked.
    let (run, report) = p.report(&[]);
    assert_eq!(run.code(), Some(1), "{}", run.all());
    assert_eq!(report["status"], "blocked");
    assert_eq!(status(&report, "deploy"), "manual");
    assert!(run.stdout().contains("play with --manual"), "{}", run.all());
    let (run, report) = p.report(&["--manual", "deploy", "--manual", "gate"]);
    run.ok();
    assert_eq!(status(&report, "deploy"), "success");
    assert!(log_of(&report, "deploy").contains("deployed by true"));
    assert_eq!(report["status"], "success");
}

#[test]
fn delayed_jobs_wait_for_start_in() {
    let p = Project::new(&[(
        ".gitlab-ci.yml",
        "\
later:
  when: delayed
  start_in: 1 second
  script: echo ran later
",
    )]);
    let started = Instant::now();
    let (run, report) = p.report(&[]);
    run.ok();
    assert_eq!(status(&report, "later"), "success");
    // A semantic bound (it waited), not a performance figure.
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(report["duration_ms"].as_u64().unwrap_or(0) >= 1000);
}

#[test]
fn commit_runs_a_clean_checkout() {
    let p = Project::new(&[
        (
            ".gitlab-ci.yml",
            "job:\n  script:\n    - cat version.txt\n    - test ! -e untracked.txt\n    - git log -1 --format=%s\n",
        ),
        ("version.txt", "v1\n"),
    ]);
    write(p.path(), "version.txt", "v2\n");
    git(p.path(), &["commit", "-qam", "second"]);
    // Uncommitted work and a changed pipeline in the working tree.
    write(p.path(), "version.txt", "v3-uncommitted\n");
    write(p.path(), "untracked.txt", "x\n");
    write(
        p.path(),
        ".gitlab-ci.yml",
        "job:\n  script: echo working-tree-pipeline\n",
    );
    let (run, report) = p.report(&["--commit", "HEAD~1"]);
    run.ok();
    let log = log_of(&report, "job");
    assert!(log.contains("\nv1"), "{log}");
    assert!(log.contains("\ninit"), "{log}");
    let (run, report) = p.report(&["--commit", "HEAD"]);
    run.ok();
    assert!(log_of(&report, "job").contains("\nv2"));
    // The working tree as it is: uncommitted pipeline and files.
    let (run, report) = p.report(&[]);
    run.ok();
    assert!(log_of(&report, "job").contains("working-tree-pipeline"));
    let run = p.run(&["--commit", "no-such-rev"]);
    assert_eq!(run.code(), Some(1));
    assert!(run.all().contains("--commit no-such-rev"), "{}", run.all());
}

#[test]
fn workspaces_hold_uncommitted_and_untracked_files_but_not_ignored_ones() {
    let p = Project::new(&[
        (
            ".gitlab-ci.yml",
            "job:\n  script:\n    - cat a.txt new.txt\n    - test ! -e ignored.log\n",
        ),
        (".gitignore", "*.log\n"),
        ("a.txt", "committed\n"),
    ]);
    write(p.path(), "a.txt", "edited\n");
    write(p.path(), "new.txt", "untracked\n");
    write(p.path(), "ignored.log", "ignored\n");
    let (run, report) = p.report(&[]);
    run.ok();
    let log = log_of(&report, "job");
    assert!(log.contains("edited") && log.contains("untracked"), "{log}");
}

#[test]
fn variables_and_another_pipeline_file() {
    let p = Project::new(&[
        (
            "ci/other.yml",
            "variables:\n  GREETING: hello\n  WHO: file\njob:\n  script: echo \"$GREETING $WHO\"\n",
        ),
        ("README", "x\n"),
    ]);
    let (run, report) = p.report(&["--file", "ci/other.yml", "--variable", "WHO=cli"]);
    run.ok();
    assert!(log_of(&report, "job").contains("hello cli"));
    let run = p.run(&["--file", "ci/other.yml", "--variable", "novalue"]);
    assert_eq!(run.code(), Some(1));
    assert!(
        run.all().contains("--variable novalue: expected KEY=VALUE"),
        "{}",
        run.all()
    );
}

#[test]
fn report_has_every_status_and_masked_logs() {
    let p = Project::new(&[(
        ".gitlab-ci.yml",
        "\
stages: [one, two]
ok:
  stage: one
  script: echo \"token is $TOKEN\"
allowed:
  stage: one
  script: exit 3
  allow_failure: true
retried:
  stage: one
  retry: 1
  script:
    - if [ ! -e /tmp/slipway-retry-$CI_PIPELINE_ID-$RUN ]; then touch /tmp/slipway-retry-$CI_PIPELINE_ID-$RUN; exit 1; fi
    - rm /tmp/slipway-retry-$CI_PIPELINE_ID-$RUN
cleanup:
  stage: two
  when: on_failure
  script: echo cleaning
play:
  stage: two
  when: manual
  script: echo manual
",
    )]);
    let run_id = format!("{}", std::process::id());
    let var = format!("RUN={run_id}");
    let (run, report) = p.report(&["--secret", "TOKEN=s3cr3t-value", "--variable", &var]);
    run.ok();
    assert_eq!(report["status"], "success");
    assert_eq!(status(&report, "ok"), "success");
    let allowed = job(&report, "allowed");
    assert_eq!(allowed["status"], "failed");
    assert_eq!(allowed["allow_failure"], true);
    assert_eq!(allowed["exit_code"], 3);
    assert_eq!(status(&report, "cleanup"), "skipped");
    assert_eq!(status(&report, "play"), "manual");
    assert_eq!(job(&report, "retried")["attempts"], 2);
    assert_eq!(status(&report, "retried"), "success");
    for j in report["jobs"].as_array().expect("jobs") {
        for key in [
            "name",
            "stage",
            "status",
            "allow_failure",
            "exit_code",
            "duration_ms",
            "log",
        ] {
            assert!(j.get(key).is_some(), "{key} missing in {j}");
        }
    }
    let log = log_of(&report, "ok");
    assert!(log.contains("token is [MASKED]"), "{log}");
    let text = std::fs::read_to_string(p.data.path().join("report.json")).expect("report");
    assert!(!text.contains("s3cr3t-value"));
    assert!(!run.all().contains("s3cr3t-value"));
}

/// Secrets are masked in the console, the log files and the report whatever the line and
/// chunk boundaries: printed in two writes with a pause between, inside a line longer
/// than the log buffer, and passed on through dotenv.
#[test]
fn secrets_never_reach_output_logs_or_reports() {
    let secret = "Zq8-very-secret-4711";
    let p = Project::new(&[(
        ".gitlab-ci.yml",
        "\
stages: [one, two]
split:
  stage: one
  script:
    - printf 'first half %s' \"${S:0:7}\"; sleep 0.2; printf '%s and the rest\\n' \"${S:7}\"
    - head -c 70000 /dev/zero | tr '\\0' x; printf '%s' \"$S\"; head -c 70000 /dev/zero | tr '\\0' y; echo
    - for i in $(seq 1 3000); do printf '%s' \"$S\"; done; echo
    - echo \"PASSED=$S\" > vars.env
  artifacts:
    reports:
      dotenv: vars.env
later:
  stage: two
  script: echo \"got $PASSED\"
",
    )]);
    let arg = format!("S={secret}");
    let (run, report) = p.report(&["--secret", &arg]);
    run.ok();
    let out = run.all();
    assert!(!out.contains(secret), "console");
    assert!(out.contains("first half [MASKED] and the rest"), "{out}");
    assert!(out.contains("got [MASKED]"));
    let report_text = std::fs::read_to_string(p.data.path().join("report.json")).expect("report");
    assert!(!report_text.contains(secret), "report");
    // Not even the halves that were printed apart.
    for half in [&secret[..7], &secret[7..]] {
        assert!(!report_text.contains(half), "report: {half}");
        assert!(!out.contains(half), "console: {half}");
    }
    let mut logs = 0;
    for e in walk(&p.project_dir().join("pipelines")) {
        let bytes = std::fs::read(&e).expect("log");
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(secret), "{}", e.display());
        logs += 1;
    }
    assert_eq!(logs, 2);
    assert_eq!(log_of(&report, "split").matches("[MASKED]").count(), 3002);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("dir").flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn large_output_is_kept_whole() {
    let p = Project::new(&[(
        ".gitlab-ci.yml",
        "big:\n  script:\n    - seq 1 200000\n    - head -c 300000 /dev/zero | tr '\\0' z; echo\n",
    )]);
    let (run, report) = p.report(&[]);
    run.ok();
    let log_file = walk(&p.project_dir().join("pipelines"))
        .into_iter()
        .next()
        .expect("log file");
    let text = std::fs::read_to_string(log_file).expect("log");
    let only = |t: &str, c: char| -> usize {
        t.lines()
            .filter(|l| !l.is_empty() && l.chars().all(|x| x == c))
            .map(str::len)
            .sum()
    };
    let numbers: Vec<&str> = text
        .lines()
        .filter(|l| l.bytes().all(|b| b.is_ascii_digit()) && !l.is_empty())
        .collect();
    assert_eq!(numbers.len(), 200_000);
    assert_eq!(numbers.last(), Some(&"200000"));
    assert_eq!(only(&text, 'z'), 300_000);
    let log = log_of(&report, "big");
    assert_eq!(only(&log, 'z'), 300_000);
    assert!(log.contains("\n199999\n200000\n"));
    let console: String = run
        .stdout()
        .lines()
        .filter_map(|l| l.strip_prefix("big | "))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(only(&console, 'z'), 300_000);
}

#[test]
fn plain_output_is_prefixed_and_aligned_with_a_summary() {
    let p = Project::new(&[(
        ".gitlab-ci.yml",
        "\
stages: [build, test]
b:
  stage: build
  script: echo short
longer-name:
  stage: test
  script: echo long
broken:
  stage: test
  script: exit 4
",
    )]);
    let run = p.run(&[]);
    assert_eq!(run.code(), Some(1), "{}", run.all());
    let out = run.stdout();
    assert!(
        !out.contains('\x1b'),
        "no escape codes off a terminal: {out:?}"
    );
    assert!(
        out.contains("\nb           | short\n") || out.starts_with("b           | "),
        "{out}"
    );
    assert!(out.contains("longer-name | long\n"), "{out}");
    assert!(
        out.contains("broken      | ERROR: Job failed: exit code 4"),
        "{out}"
    );
    let table = out.split("\nJOB").nth(1).expect("summary table");
    assert!(table.starts_with("          STAGE  STATUS"), "{table}");
    assert!(table.contains("broken       test   failed"), "{table}");
    assert!(out.contains("pipeline failed in"), "{out}");
}

fn script_available() -> bool {
    Command::new("script")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// On a terminal (a pseudo-terminal from `script`), job names are coloured and the live
/// view shows; `NO_COLOR` turns the colours off.
#[test]
fn terminal_output_is_coloured_with_a_live_view() {
    if !script_available() {
        // util-linux's `script` is part of every Debian system; without it, nothing to test.
        eprintln!("skipped: no `script` command");
        return;
    }
    let p = Project::new(&[(
        ".gitlab-ci.yml",
        "one:\n  script: sleep 0.5; echo first\ntwo:\n  script: echo second\n",
    )]);
    let exe = env!("CARGO_BIN_EXE_slipway");
    let cmd = format!(
        "{exe} run --data {} --executor shell",
        p.data.path().display()
    );
    let run = |no_color: bool| {
        let mut c = Command::new("script");
        c.args(["-qec", &cmd, "/dev/null"])
            .current_dir(p.path())
            .env("TERM", "xterm-256color")
            .env_remove("NO_COLOR");
        if no_color {
            c.env("NO_COLOR", "1");
        }
        let out = c.output().expect("script runs");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let coloured = run(false);
    assert!(coloured.contains("\x1b[1;36mone\x1b[0m"), "{coloured:?}");
    assert!(coloured.contains("jobs finished"), "{coloured:?}");
    let plain = run(true);
    assert!(!plain.contains("\x1b[1;36mone"), "{plain:?}");
    assert!(plain.contains("one | first"), "{plain:?}");
}

/// Ctrl-C (a real SIGINT to the process): the running job is stopped (its whole process
/// group), its after_script runs, nothing new starts, the exit status is 130.
#[test]
fn ctrl_c_cancels_the_pipeline() {
    let p = Project::new(&[(
        ".gitlab-ci.yml",
        "\
stages: [one, two]
long:
  stage: one
  script:
    - sleep 300 & echo $! > $MARKERS/child.pid
    - echo started
    - wait
  after_script:
    - echo \"after_script saw $CI_JOB_STATUS\"
next:
  stage: two
  script: touch $MARKERS/next-ran
",
    )]);
    let markers = tempfile::tempdir().expect("markers");
    let report = p.data.path().join("report.json");
    let mut child = p
        .command(&["--report", report.to_str().expect("utf-8")])
        .arg("--variable")
        .arg(format!("MARKERS={}", markers.path().display()))
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let (mut seen, lines) = read_until_started(&mut child);
    let pid = child.id() as i32;
    // SAFETY: signalling the child we spawned.
    unsafe {
        libc::kill(pid, libc::SIGINT);
    }
    for line in lines {
        seen.push(line.expect("line"));
    }
    let status = child.wait().expect("wait");
    let out = seen.join("\n");
    assert_eq!(status.code(), Some(130), "{out}");
    assert!(out.contains("after_script saw canceled"), "{out}");
    assert!(out.contains("pipeline canceled"), "{out}");
    assert!(!markers.path().join("next-ran").exists());
    let child_pid: i32 = std::fs::read_to_string(markers.path().join("child.pid"))
        .expect("pid")
        .trim()
        .parse()
        .expect("number");
    // The job's background process was stopped with it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{child_pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!Path::new(&format!("/proc/{child_pid}")).exists());
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(report).expect("report")).expect("json");
    assert_eq!(report["status"], "canceled");
    assert_eq!(status_of(&report, "long"), "canceled");
    assert_eq!(status_of(&report, "next"), "canceled");
}

/// A reader that goes away (`slipway run | head -1`) does not stop the pipeline, and the
/// jobs keep the default SIGPIPE (`yes | head` ends normally inside a job).
#[test]
fn a_closed_stdout_does_not_stop_the_pipeline() {
    let p = Project::new(&[(
        ".gitlab-ci.yml",
        "\
stages: [one, two]
first:
  stage: one
  script:
    - for i in $(seq 1 2000); do echo line $i; done
    - set +o pipefail; yes | head -1; test \"${PIPESTATUS[0]}\" = 141
second:
  stage: two
  script: touch $MARKERS/second-ran
",
    )]);
    let markers = tempfile::tempdir().expect("markers");
    let mut child = p
        .command(&[
            "--variable",
            &format!("MARKERS={}", markers.path().display()),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .expect("a line");
    // The reading end closes here.
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "first line: {first}");
    assert!(markers.path().join("second-ran").exists());
}

/// The child's output lines up to the first ending in `| started`, and the rest to come.
fn read_until_started(
    child: &mut std::process::Child,
) -> (
    Vec<String>,
    std::io::Lines<BufReader<std::process::ChildStdout>>,
) {
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("line");
        let started = line.ends_with("| started");
        seen.push(line);
        if started {
            break;
        }
    }
    (seen, lines)
}

fn status_of(report: &Value, name: &str) -> String {
    status(report, name)
}

#[test]
fn image_jobs_without_an_engine_say_how_to_use_the_shell() {
    let p = Project::new(&[(
        ".gitlab-ci.yml",
        "\
in-image:
  image: alpine:3.20
  script: echo in the shell
plain:
  script: echo plain
",
    )]);
    let (run, report) = p.report(&[]);
    assert_eq!(run.code(), Some(1), "{}", run.all());
    assert_eq!(status(&report, "in-image"), "failed");
    assert_eq!(status(&report, "plain"), "success");
    let log = log_of(&report, "in-image");
    assert!(log.contains("could not be reached"), "{log}");
    assert!(log.contains("--executor shell"), "{log}");
    assert_eq!(
        job(&report, "in-image")["failure_reason"],
        "runner_system_failure"
    );
    let (run, report) = p.report(&["--executor", "shell"]);
    run.ok();
    assert!(log_of(&report, "in-image").contains("in the shell"));
}

// ----- containers (Podman's Docker Engine API) -----

fn engine_host() -> Option<String> {
    let host = std::env::var("DOCKER_HOST").ok();
    if host.is_none() && std::env::var_os("SLIPWAY_REQUIRE_ENGINE").is_some() {
        panic!("SLIPWAY_REQUIRE_ENGINE is set but DOCKER_HOST is not");
    }
    host
}

/// Containers carrying `label` on the engine (Podman's own CLI sees what its API
/// service made).
fn engine_containers(label: &str) -> usize {
    let out = Command::new("podman")
        .args(["ps", "-a", "-q", "--filter", &format!("label={label}")])
        .output()
        .expect("podman runs");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

fn pipeline_label(p: &Project, id: u32) -> String {
    let project = p.project_dir();
    let key = project.file_name().expect("name").to_string_lossy();
    format!("slipway.pipeline={key}-{id}")
}

#[test]
#[ignore = "needs a container engine: scripts/setup-podman.sh, DOCKER_HOST"]
fn image_and_services_run_in_containers() {
    let Some(host) = engine_host() else {
        eprintln!("skipped: DOCKER_HOST is not set");
        return;
    };
    let p = Project::new(&[
        (
            ".gitlab-ci.yml",
            "\
stages: [build, test]
variables:
  MESSAGE: from the pipeline
build:
  stage: build
  image: localhost/busybox:test
  script:
    - cat input.txt
    - echo \"$MESSAGE in $CI_JOB_IMAGE\" > out.txt
  artifacts:
    paths: [out.txt]
web-test:
  stage: test
  image: localhost/busybox:test
  services:
    - name: localhost/busybox-web:test
      alias: web
      entrypoint: [sh, -c]
      command: ['mkdir -p /www; echo served > /www/index.html; exec httpd -f -p 8080 -h /www']
  script:
    - cat out.txt
    - wget -q -O - http://web:8080/index.html
shell-job:
  stage: test
  script: 'echo \"on the host: $CI_DISPOSABLE_ENVIRONMENT$CI_SHARED_ENVIRONMENT\"'
",
        ),
        ("input.txt", "input from the repository\n"),
    ]);
    let report_path = p.data.path().join("report.json");
    let out = p
        .command(&["--report", report_path.to_str().expect("utf-8")])
        .env("DOCKER_HOST", &host)
        .output()
        .expect("runs");
    let run = Run { out };
    run.ok();
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).expect("report"))
            .expect("json");
    assert!(log_of(&report, "build").contains("input from the repository"));
    let web = log_of(&report, "web-test");
    assert!(
        web.contains("from the pipeline in localhost/busybox:test"),
        "{web}"
    );
    assert!(web.contains("\nserved"), "{web}");
    assert_eq!(job(&report, "web-test")["executor"], "docker");
    assert_eq!(job(&report, "shell-job")["executor"], "shell");
    assert!(log_of(&report, "shell-job").contains("on the host: true"));
    // Nothing is left on the engine.
    assert_eq!(engine_containers(&pipeline_label(&p, 1)), 0);
}

#[test]
#[ignore = "needs a container engine: scripts/setup-podman.sh, DOCKER_HOST"]
fn ctrl_c_removes_the_containers() {
    let Some(host) = engine_host() else {
        eprintln!("skipped: DOCKER_HOST is not set");
        return;
    };
    let p = Project::new(&[(
        ".gitlab-ci.yml",
        "\
slow:
  image: localhost/busybox:test
  services:
    - name: localhost/busybox-web:test
      alias: web
  script:
    - echo started
    - sleep 300
",
    )]);
    let mut child = p
        .command(&[])
        .env("DOCKER_HOST", &host)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let (mut seen, lines) = read_until_started(&mut child);
    assert!(engine_containers(&pipeline_label(&p, 1)) >= 2, "{seen:?}");
    // SAFETY: signalling the child we spawned.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    for line in lines {
        seen.push(line.expect("line"));
    }
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(130), "{}", seen.join("\n"));
    assert_eq!(engine_containers(&pipeline_label(&p, 1)), 0);
}
