//! One job attempt through the public API, as the server drives it: jobs parsed from YAML,
//! a real source tree, workspaces, the store and the shell executor.

use slipway_core::model::{Job, Pipeline};
use slipway_core::schedule::JobStatus;
use slipway_core::source::MemoryLoader;
use slipway_runner::job::{run_attempt, Attempt, AttemptResult, Dependency, MISSING_DEPENDENCY};
use slipway_runner::logs::{LogSink, Masker};
use slipway_runner::shell::ShellExecutor;
use slipway_runner::store::Store;
use slipway_runner::workspace::{Source, Workspace};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

fn pipeline(yaml: &str) -> Pipeline {
    let loader = MemoryLoader::new().with(".gitlab-ci.yml", yaml);
    let loaded = slipway_core::load_pipeline(&loader, ".gitlab-ci.yml", &|_| None);
    match loaded.pipeline {
        Ok(p) => p,
        Err(d) => panic!("{}", d.render(&loaded.sources)),
    }
}

fn job<'a>(p: &'a Pipeline, name: &str) -> &'a Job {
    p.jobs
        .iter()
        .find(|j| j.name == name)
        .unwrap_or_else(|| panic!("no job {name}"))
}

struct Env {
    _dirs: Vec<tempfile::TempDir>,
    source: Source,
    store: Store,
    shell: ShellExecutor,
    root: std::path::PathBuf,
}

fn env(files: &[(&str, &str)]) -> Env {
    let src = tempfile::tempdir().expect("tmp");
    for (path, text) in files {
        let p = src.path().join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }
    let data = tempfile::tempdir().expect("tmp");
    let source = Source::new(src.path(), files.iter().map(|(p, _)| p.to_string()));
    let store = Store::open(data.path().join("store")).expect("store");
    let shell = ShellExecutor::new(&data.path().join("tmp"));
    let root = data.path().to_path_buf();
    Env {
        _dirs: vec![src, data],
        source,
        store,
        shell,
        root,
    }
}

async fn attempt(
    e: &Env,
    job: &Job,
    ws: &mut Workspace,
    deps: &[Dependency],
    id: &str,
    extra: &[(&str, &str)],
) -> (AttemptResult, Vec<String>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l2 = lines.clone();
    let log = Arc::new(LogSink::detached(
        Masker::new(["hunter2"]),
        Some(Box::new(move |s: &str| {
            l2.lock().expect("lock").push(s.to_string())
        })),
    ));
    let mut vars = vec![
        ("CI_PROJECT_DIR".to_string(), ws.dir().display().to_string()),
        ("CI_COMMIT_REF_SLUG".to_string(), "main".to_string()),
        ("PASSWORD".to_string(), "hunter2".to_string()),
    ];
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let r = run_attempt(Attempt {
        name: &job.name,
        job,
        workspace: ws,
        source: &e.source,
        git: None,
        variables: &vars,
        dependencies: deps,
        artifacts_id: id,
        store: &e.store,
        executor: &e.shell,
        log: &log,
        cancel: &CancellationToken::new(),
    })
    .await;
    log.finish();
    let lines = lines.lock().expect("lock").clone();
    (r, lines)
}

const PIPELINE: &str = "
stages: [build, test]
build:
  stage: build
  script:
    - mkdir -p dist
    - cp app.txt dist/app.txt
    - echo \"VERSION=1.0\" > build.env
    - echo junk > junk.txt
    - echo \"password $PASSWORD\"
  artifacts:
    paths: [dist/]
    reports:
      dotenv: build.env
  cache:
    key: deps-$CI_COMMIT_REF_SLUG
    paths: [.cache/]
test:
  stage: test
  script:
    - cat dist/app.txt
    - test ! -e junk.txt
    - mkdir -p .cache && echo filled > .cache/x
  cache:
    key: deps-$CI_COMMIT_REF_SLUG
    paths: [.cache/]
fails:
  stage: test
  script: exit 7
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_pass_artifacts_caches_and_dotenv() {
    let e = env(&[("app.txt", "the app\n")]);
    let p = pipeline(PIPELINE);
    let mut ws = Workspace::new(e.root.join("ws0"));

    let (build, lines) = attempt(&e, job(&p, "build"), &mut ws, &[], "p1-build", &[]).await;
    assert_eq!(build.status, JobStatus::Success, "{lines:#?}");
    assert_eq!(build.artifacts.as_deref(), Some("p1-build"));
    assert_eq!(
        build.dotenv,
        vec![("VERSION".to_string(), "1.0".to_string())]
    );
    assert!(
        lines.contains(&"password [MASKED]".to_string()),
        "{lines:#?}"
    );
    assert!(lines
        .iter()
        .any(|l| l.starts_with("No cache found for deps-main")));

    // Same workspace: the build's files are gone, its artifacts are extracted.
    let deps = [Dependency {
        job: "build".into(),
        artifacts: "p1-build".into(),
    }];
    let (test, lines) = attempt(&e, job(&p, "test"), &mut ws, &deps, "p1-test", &[]).await;
    assert_eq!(test.status, JobStatus::Success, "{lines:#?}");
    assert!(lines.contains(&"the app".to_string()));
    assert!(!test.workspace.full, "the second reset follows the changes");
    assert!(test.workspace.removed >= 3, "{:?}", test.workspace);
    assert!(e.store.load_cache("deps-main").expect("cache").is_some());

    // Another workspace restores the cache the test job saved.
    let mut ws1 = Workspace::new(e.root.join("ws1"));
    let (again, lines) = attempt(&e, job(&p, "build"), &mut ws1, &[], "p2-build", &[]).await;
    assert_eq!(again.status, JobStatus::Success);
    assert!(
        lines.contains(&"Restored cache deps-main".to_string()),
        "{lines:#?}"
    );
    assert_eq!(
        std::fs::read_to_string(ws1.dir().join(".cache/x")).expect("cache file"),
        "filled\n"
    );
    // The developer's tree is untouched.
    assert!(!e.source.root().join("dist").exists());
}

#[tokio::test]
async fn failures_have_gitlab_reasons() {
    let e = env(&[("app.txt", "x\n")]);
    let p = pipeline(PIPELINE);
    let mut ws = Workspace::new(e.root.join("ws"));
    let (r, lines) = attempt(&e, job(&p, "fails"), &mut ws, &[], "p1-fails", &[]).await;
    assert_eq!(r.status, JobStatus::Failed);
    assert_eq!(r.exit_code, Some(7));
    assert_eq!(r.failure_reason.as_deref(), Some("script_failure"));
    assert!(lines.contains(&"ERROR: Job failed: exit code 7".to_string()));
    let deps = [Dependency {
        job: "build".into(),
        artifacts: "never-saved".into(),
    }];
    let (r, lines) = attempt(&e, job(&p, "test"), &mut ws, &deps, "p1-test", &[]).await;
    assert_eq!(r.status, JobStatus::Failed, "{lines:#?}");
    assert_eq!(r.failure_reason.as_deref(), Some(MISSING_DEPENDENCY));
}

#[tokio::test]
async fn an_unknown_cache_policy_fails_the_job() {
    let e = env(&[("a", "a")]);
    let p = pipeline(
        "job:\n  script: echo hi\n  cache:\n    key: k\n    policy: $POLICY\n    paths: [x]\n",
    );
    let mut ws = Workspace::new(e.root.join("ws"));
    let (r, lines) = attempt(
        &e,
        job(&p, "job"),
        &mut ws,
        &[],
        "p1-job",
        &[("POLICY", "bogus")],
    )
    .await;
    assert_eq!(r.status, JobStatus::Failed);
    assert!(
        lines.iter().any(|l| l.contains("unknown cache policy")),
        "{lines:#?}"
    );
}
