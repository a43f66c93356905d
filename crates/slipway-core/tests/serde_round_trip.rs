//! Plans, job definitions and pipeline contexts survive JSON: the server stores them with
//! each pipeline (and will hand job definitions to remote agents), then reads them back
//! to schedule and run the jobs. Reading must give back exactly what was written.

use slipway_core::model::Job;
use slipway_core::plan::{self, Plan, Trigger};
use slipway_core::source::MemoryLoader;
use slipway_core::variables::{MergeRequestContext, PipelineContext, UserContext};

const PIPELINE: &str = r#"
stages: [build, test, deploy]
variables:
  GLOBAL: "1"
  RAW:
    value: "$NOT_EXPANDED"
    expand: false
default:
  image: alpine:3
  retry:
    max: 2
    when: [runner_system_failure]
build:
  stage: build
  script: [make]
  artifacts:
    paths: [out/]
    exclude: [out/tmp/**]
    expire_in: 1 week
    reports:
      dotenv: build.env
  cache:
    key:
      files: [Cargo.lock]
      prefix: cargo
    paths: [target/]
    policy: pull-push
test:
  stage: test
  parallel:
    matrix:
      - OS: [linux, mac]
  needs:
    - job: build
      artifacts: true
  script: [make test]
  allow_failure:
    exit_codes: [3]
  services:
    - name: postgres:16
      alias: db
  timeout: 10m
  interruptible: true
deploy:
  stage: deploy
  environment:
    name: production
    url: https://example.com
  rules:
    - if: $CI_COMMIT_BRANCH == "main"
      when: manual
      variables:
        TARGET: prod
  script: [./deploy]
  after_script: [echo done]
"#;

#[test]
fn plans_and_job_definitions_round_trip() {
    let loader = MemoryLoader::new().with(".gitlab-ci.yml", PIPELINE);
    let trigger = Trigger {
        ref_name: "main".into(),
        source: "push".into(),
        predefined: vec![("CI_COMMIT_BRANCH".into(), "main".into())],
        ..Trigger::default()
    };
    let loaded = slipway_core::load_for_trigger(&loader, ".gitlab-ci.yml", Some(&trigger));
    let pipeline = match &loaded.pipeline {
        Ok(p) => p,
        Err(d) => panic!("{}", d.render(&loaded.sources)),
    };
    let planned = match plan::plan(pipeline, &trigger) {
        Ok(Ok(p)) => p,
        other => panic!("not planned: {other:?}"),
    };
    assert_eq!(planned.jobs.len(), 4);

    let json = serde_json::to_value(&planned).expect("plan to JSON");
    let back: Plan = serde_json::from_value(json.clone()).expect("plan from JSON");
    assert_eq!(serde_json::to_value(&back).expect("again"), json);
    assert_eq!(back.jobs[1].name, "test: [linux]");
    assert_eq!(back.jobs[1].allow_failure_exit_codes, vec![3]);

    for job in &pipeline.jobs {
        let json = serde_json::to_value(job).expect("job to JSON");
        let back: Job = serde_json::from_value(json.clone()).expect("job from JSON");
        assert_eq!(serde_json::to_value(&back).expect("again"), json);
        assert_eq!(back.script, job.script);
        assert_eq!(back.artifacts, job.artifacts);
        assert_eq!(back.cache, job.cache);
        assert_eq!(back.retry, job.retry);
        assert_eq!(back.services, job.services);
        assert_eq!(back.environment, job.environment);
    }
}

#[test]
fn pipeline_contexts_round_trip_and_tolerate_missing_fields() {
    let ctx = PipelineContext {
        server_url: "http://ci.example".into(),
        project_id: 7,
        commit_sha: "a".repeat(40),
        ref_name: "feature".into(),
        source: "merge_request_event".into(),
        mr: Some(MergeRequestContext {
            iid: 3,
            source_branch: "feature".into(),
            target_branch: "main".into(),
            ..MergeRequestContext::default()
        }),
        user: Some(UserContext {
            id: 1,
            login: "ada".into(),
            name: "Ada".into(),
            email: "ada@example.com".into(),
        }),
        ..PipelineContext::default()
    };
    let json = serde_json::to_string(&ctx).expect("to JSON");
    let back: PipelineContext = serde_json::from_str(&json).expect("from JSON");
    assert_eq!(back, ctx);
    // A document written by an older server lacks newer fields: they take defaults.
    let old: PipelineContext =
        serde_json::from_str(r#"{"ref_name": "main", "pipeline_id": 4}"#).expect("partial");
    assert_eq!(old.ref_name, "main");
    assert_eq!(old.pipeline_id, 4);
    assert!(old.mr.is_none());
}
