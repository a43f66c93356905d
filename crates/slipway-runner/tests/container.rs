//! The container executor against a real engine (Podman's Docker API here). Run
//! `scripts/setup-podman.sh` as root first, then
//! `cargo test -p slipway-runner --test container -- --ignored` with DOCKER_HOST set.
//! The tests without `#[ignore]` need no engine.

use bollard::query_parameters::{ListContainersOptions, ListNetworksOptions};
use slipway_core::model::{Image, Service, VariableDef};
use slipway_runner::container::{ContainerExecutor, EngineAddress};
use slipway_runner::executor::{ExecOutcome, ExecStatus, Executor, JobSpec};
use slipway_runner::logs::{LogSink, Masker};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const IMAGE: &str = "localhost/busybox:test";
const WEB_IMAGE: &str = "localhost/busybox-web:test";
const TEST_LABEL: &str = "slipway.test";

fn unique() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
}

fn image(name: &str) -> Image {
    Image {
        name: name.to_string(),
        entrypoint: None,
        pull_policy: Vec::new(),
        user: None,
        platform: None,
    }
}

fn job(workdir: &Path, script: &[&str]) -> JobSpec {
    JobSpec {
        name: "container test".to_string(),
        workdir: workdir.to_path_buf(),
        image: Some(image(IMAGE)),
        services: Vec::new(),
        before_script: Vec::new(),
        script: script.iter().map(|s| s.to_string()).collect(),
        after_script: Vec::new(),
        variables: Vec::new(),
        timeout: Duration::from_secs(120),
        after_script_timeout: Duration::from_secs(60),
    }
}

struct Run {
    outcome: ExecOutcome,
    lines: Vec<String>,
}

impl Run {
    fn text(&self) -> String {
        self.lines.join("\n")
    }
}

/// One test's executor: everything it creates carries the test's own label.
struct Harness {
    id: String,
    exec: ContainerExecutor,
}

impl Harness {
    fn new() -> Harness {
        let id = unique();
        let exec = ContainerExecutor::from_env().with_labels([(TEST_LABEL, id.clone())]);
        Harness { id, exec }
    }

    async fn run(&self, spec: &JobSpec) -> Run {
        self.run_with(spec, CancellationToken::new()).await
    }

    async fn run_with(&self, spec: &JobSpec, cancel: CancellationToken) -> Run {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l2 = lines.clone();
        let log = Arc::new(LogSink::detached(
            Masker::default(),
            Some(Box::new(move |s: &str| {
                l2.lock().expect("lock").push(s.to_string())
            })),
        ));
        let outcome = self.exec.run(spec, log.clone(), cancel).await;
        log.finish();
        let lines = lines.lock().expect("lock").clone();
        if std::env::var_os("SLIPWAY_TEST_SHOW_LOG").is_some() {
            eprintln!("--- log of {:?} ({:?}):", spec.name, outcome);
            for l in lines.iter().take(40) {
                eprintln!("| {l}");
            }
        }
        self.assert_nothing_left().await;
        Run { outcome, lines }
    }

    /// No container or network created by this test remains.
    async fn assert_nothing_left(&self) {
        let docker = bollard::Docker::connect_with_defaults().expect("engine");
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{TEST_LABEL}={}", self.id)],
        )]);
        let containers = docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters.clone()),
                ..Default::default()
            }))
            .await
            .expect("list containers");
        assert!(
            containers.is_empty(),
            "containers left behind: {:?}",
            containers
                .iter()
                .map(|c| c.names.clone())
                .collect::<Vec<_>>()
        );
        let networks = docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(filters),
            }))
            .await
            .expect("list networks");
        assert!(
            networks.is_empty(),
            "networks left behind: {:?}",
            networks.iter().map(|n| n.name.clone()).collect::<Vec<_>>()
        );
    }
}

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("slipway-container-test-")
        .tempdir()
        .expect("tempdir")
}

#[tokio::test]
#[ignore = "needs a container engine: scripts/setup-podman.sh"]
async fn job_succeeds_and_its_output_reaches_the_log() {
    let h = Harness::new();
    let dir = tmp();
    let mut spec = job(
        dir.path(),
        &["echo hello from the job", "echo to stderr >&2"],
    );
    spec.before_script = vec!["echo before".to_string()];
    let run = h.run(&spec).await;
    assert_eq!(run.outcome.status, ExecStatus::Success, "{}", run.text());
    assert_eq!(run.outcome.exit_code, Some(0));
    let text = run.text();
    for want in [
        "$ echo before",
        "before",
        "$ echo hello from the job",
        "hello from the job",
        "to stderr",
    ] {
        assert!(run.lines.iter().any(|l| l == want), "{want:?} in\n{text}");
    }
}

#[tokio::test]
#[ignore = "needs a container engine: scripts/setup-podman.sh"]
async fn failing_command_stops_the_script_with_its_exit_code() {
    let h = Harness::new();
    let dir = tmp();
    let spec = job(
        dir.path(),
        &["echo one", "sh -c 'exit 7'", "echo never-printed"],
    );
    let run = h.run(&spec).await;
    assert_eq!(run.outcome.status, ExecStatus::Failed, "{}", run.text());
    assert_eq!(run.outcome.exit_code, Some(7));
    assert!(run.lines.iter().any(|l| l == "one"));
    assert!(!run.text().contains("never-printed"), "{}", run.text());
}

#[tokio::test]
#[ignore = "needs a container engine: scripts/setup-podman.sh"]
async fn after_script_runs_with_the_job_status() {
    let h = Harness::new();
    let dir = tmp();
    let mut spec = job(dir.path(), &["false"]);
    spec.after_script = vec!["echo status=$CI_JOB_STATUS".to_string()];
    let run = h.run(&spec).await;
    assert_eq!(run.outcome.status, ExecStatus::Failed);
    assert_eq!(run.outcome.exit_code, Some(1));
    assert!(
        run.lines.iter().any(|l| l == "status=failed"),
        "{}",
        run.text()
    );

    spec.script = vec!["true".to_string()];
    spec.after_script.push("exit 3".to_string());
    let run = h.run(&spec).await;
    assert_eq!(run.outcome.status, ExecStatus::Success, "{}", run.text());
    assert!(run.lines.iter().any(|l| l == "status=success"));
    // A failing after_script does not change the job's result; it is reported.
    assert!(run.text().contains("after_script failed with exit code 3"));
}

#[tokio::test]
#[ignore = "needs a container engine: scripts/setup-podman.sh"]
async fn variables_reach_the_job() {
    let h = Harness::new();
    let dir = tmp();
    let mut spec = job(
        dir.path(),
        &[
            "echo \"greeting=$GREETING\"",
            "printf '%s\\n' \"$TRICKY\"",
            "echo \"multi=$(echo \"$MULTI\" | wc -l)\"",
        ],
    );
    spec.variables = vec![
        ("GREETING".into(), "overridden".into()),
        ("TRICKY".into(), "it's \"quoted\" $HOME `x`".into()),
        ("MULTI".into(), "a\nb\nc".into()),
        ("GREETING".into(), "hello there".into()),
    ];
    let run = h.run(&spec).await;
    assert_eq!(run.outcome.status, ExecStatus::Success, "{}", run.text());
    let text = run.text();
    assert!(
        run.lines.iter().any(|l| l == "greeting=hello there"),
        "{text}"
    );
    assert!(
        run.lines.iter().any(|l| l == "it's \"quoted\" $HOME `x`"),
        "{text}"
    );
    assert!(run.lines.iter().any(|l| l == "multi=3"), "{text}");
}

#[tokio::test]
#[ignore = "needs a container engine: scripts/setup-podman.sh"]
async fn workspace_is_mounted_at_the_same_path() {
    let h = Harness::new();
    let dir = tmp();
    std::fs::write(dir.path().join("input.txt"), "from the host\n").expect("write");
    let spec = job(
        dir.path(),
        &[
            "pwd > pwd.txt",
            "cat input.txt",
            "mkdir -p out && echo made in the container > out/result.txt",
        ],
    );
    let run = h.run(&spec).await;
    assert_eq!(run.outcome.status, ExecStatus::Success, "{}", run.text());
    assert!(run.lines.iter().any(|l| l == "from the host"));
    let pwd = std::fs::read_to_string(dir.path().join("pwd.txt")).expect("pwd.txt");
    assert_eq!(pwd.trim(), dir.path().to_string_lossy());
    let result = std::fs::read_to_string(dir.path().join("out/result.txt")).expect("result");
    assert_eq!(result, "made in the container\n");
    // The generated scripts are not in the workspace.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("ls")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, vec!["input.txt", "out", "pwd.txt"]);
}

#[tokio::test]
#[ignore = "needs a container engine: scripts/setup-podman.sh"]
async fn service_is_reachable_by_alias_and_derived_names() {
    let h = Harness::new();
    let dir = tmp();
    let mut spec = job(
        dir.path(),
        &[
            // No retry: the executor waits for the service's exposed port.
            "wget -q -O - http://web:8080/index.html",
            "wget -q -O - http://localhost-busybox-web:8080/index.html",
            "wget -q -O - http://localhost__busybox-web:8080/index.html",
            "wget -q -O - http://second:8080/index.html",
        ],
    );
    spec.variables = vec![("PAGE".into(), "served".into())];
    spec.services = vec![Service {
        name: WEB_IMAGE.to_string(),
        alias: vec!["web".to_string(), "second".to_string()],
        entrypoint: Some(vec!["sh".to_string(), "-c".to_string()]),
        // Starts listening only after a while: the job must not start before.
        command: Some(vec![
            "sleep 2; mkdir -p /www; echo \"$BODY\" > /www/index.html; exec httpd -f -p 8080 -h /www"
                .to_string(),
        ]),
        variables: vec![VariableDef {
            key: "BODY".to_string(),
            value: "page ${PAGE} by service".to_string(),
            description: None,
            options: Vec::new(),
            expand: true,
            span: Default::default(),
        }],
        pull_policy: Vec::new(),
    }];
    let run = h.run(&spec).await;
    assert_eq!(run.outcome.status, ExecStatus::Success, "{}", run.text());
    let served = run
        .lines
        .iter()
        .filter(|l| *l == "page served by service")
        .count();
    assert_eq!(served, 4, "{}", run.text());
}

#[tokio::test]
#[ignore = "needs a container engine: scripts/setup-podman.sh"]
async fn timeout_kills_the_container() {
    let h = Harness::new();
    let dir = tmp();
    let mut spec = job(
        dir.path(),
        &["echo started", "sleep 300", "echo not-reached"],
    );
    spec.timeout = Duration::from_secs(4);
    spec.after_script = vec!["echo after=$CI_JOB_STATUS".to_string()];
    let start = Instant::now();
    let run = h.run(&spec).await;
    assert_eq!(run.outcome.status, ExecStatus::TimedOut, "{}", run.text());
    assert_eq!(run.outcome.exit_code, None);
    assert!(start.elapsed() < Duration::from_secs(60));
    assert!(run.lines.iter().any(|l| l == "started"));
    assert!(
        run.lines.iter().any(|l| l == "after=failed"),
        "{}",
        run.text()
    );
    assert!(!run.text().contains("not-reached"));
}

#[tokio::test]
#[ignore = "needs a container engine: scripts/setup-podman.sh"]
async fn cancel_stops_the_job() {
    let h = Harness::new();
    let dir = tmp();
    let mut spec = job(dir.path(), &["echo started", "sleep 300"]);
    spec.after_script = vec!["echo after=$CI_JOB_STATUS".to_string()];
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        c2.cancel();
    });
    let start = Instant::now();
    let run = h.run_with(&spec, cancel).await;
    assert_eq!(run.outcome.status, ExecStatus::Canceled, "{}", run.text());
    assert!(start.elapsed() < Duration::from_secs(60));
    assert!(
        run.lines.iter().any(|l| l == "after=canceled"),
        "{}",
        run.text()
    );
}

#[tokio::test]
#[ignore = "needs a container engine: scripts/setup-podman.sh"]
async fn pull_policy_never_with_a_missing_image_fails_clearly() {
    let h = Harness::new();
    let dir = tmp();
    let mut spec = job(dir.path(), &["true"]);
    let mut img = image("localhost/slipway-no-such-image:nope");
    img.pull_policy = vec!["never".to_string()];
    spec.image = Some(img);
    let run = h.run(&spec).await;
    match &run.outcome.status {
        ExecStatus::SystemFailure(msg) => {
            assert!(
                msg.contains("localhost/slipway-no-such-image:nope"),
                "{msg}"
            );
            assert!(msg.contains("never"), "{msg}");
        }
        other => panic!("expected a system failure, got {other:?}\n{}", run.text()),
    }
    assert!(run.text().contains("slipway-no-such-image"));
}

#[tokio::test]
#[ignore = "needs a container engine: scripts/setup-podman.sh"]
async fn entrypoint_override_and_large_output() {
    let h = Harness::new();
    let dir = tmp();
    // 20,000 numbered lines and one 300 kB line: nothing may be lost or reordered.
    let mut spec = job(
        dir.path(),
        &[
            "i=0; while [ $i -lt 20000 ]; do echo \"line $i\"; i=$((i+1)); done",
            "head -c 300000 /dev/zero | tr '\\0' x; echo",
            "echo done",
        ],
    );
    let mut img = image(IMAGE);
    img.entrypoint = Some(vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        "echo from-entrypoint; exec \"$@\"".to_string(),
        "entrypoint".to_string(),
    ]);
    spec.image = Some(img);
    let run = h.run(&spec).await;
    assert_eq!(
        run.outcome.status,
        ExecStatus::Success,
        "{}",
        run.lines
            .iter()
            .rev()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(run.lines.iter().any(|l| l == "from-entrypoint"));
    let numbered: Vec<&String> = run
        .lines
        .iter()
        .filter(|l| l.starts_with("line "))
        .collect();
    if numbered.len() != 20000 {
        let sys: Vec<&String> = run
            .lines
            .iter()
            .filter(|l| !l.starts_with("line ") && !l.starts_with('x'))
            .collect();
        let first_gap = numbered
            .iter()
            .enumerate()
            .find(|(i, l)| ***l != format!("line {i}"))
            .map(|(i, l)| (i, (*l).clone()));
        panic!(
            "{} numbered lines; first gap {:?}; last {:?}; other lines {:?}",
            numbered.len(),
            first_gap,
            numbered.last(),
            sys
        );
    }
    for (i, l) in numbered.iter().enumerate() {
        assert_eq!(**l, format!("line {i}"));
    }
    let xs: usize = run
        .lines
        .iter()
        .filter(|l| l.starts_with('x'))
        .map(|l| l.len())
        .sum();
    assert_eq!(xs, 300000);
    assert!(run.lines.iter().any(|l| l == "done"));
}

#[tokio::test]
#[ignore = "needs a container engine: scripts/setup-podman.sh"]
async fn long_scripts_pass_unchanged() {
    let h = Harness::new();
    let dir = tmp();
    // Far more than one exec argument may hold (128 kB).
    let commands: Vec<String> = (0..3000)
        .map(|i| {
            format!(
                "echo 'cmd {i} with \"quotes\" and $dollars and a long tail {}'",
                "y".repeat(40)
            )
        })
        .collect();
    let mut spec = job(dir.path(), &[]);
    spec.script = commands;
    spec.script.push("echo \"last\"".to_string());
    let run = h.run(&spec).await;
    assert_eq!(run.outcome.status, ExecStatus::Success);
    assert!(run
        .lines
        .iter()
        .any(|l| l.starts_with("cmd 2999 with \"quotes\" and $dollars")));
    assert_eq!(
        run.lines.iter().filter(|l| l.starts_with("cmd ")).count(),
        3000
    );
}

async fn expect_unreachable(exec: ContainerExecutor, address: &str) {
    let dir = tmp();
    let err = exec.ping().await.expect_err("no engine there");
    assert!(err.contains(address), "{err}");
    assert!(err.contains("--executor shell"), "{err}");
    let log = Arc::new(LogSink::detached(Masker::default(), None));
    let outcome = exec
        .run(&job(dir.path(), &["true"]), log, CancellationToken::new())
        .await;
    match outcome.status {
        ExecStatus::SystemFailure(msg) => {
            assert!(
                msg.contains("Docker Engine API could not be reached"),
                "{msg}"
            );
            assert!(msg.contains(address), "{msg}");
            assert!(msg.contains("--executor shell"), "{msg}");
        }
        other => panic!("expected a system failure, got {other:?}"),
    }
}

#[tokio::test]
async fn unreachable_unix_socket_gives_a_clear_message() {
    expect_unreachable(
        ContainerExecutor::new(EngineAddress::parse("unix:///nonexistent/docker.sock")),
        "unix:///nonexistent/docker.sock",
    )
    .await;
}

#[tokio::test]
async fn unreachable_tcp_address_gives_a_clear_message() {
    // Port 1 on loopback: nothing listens there.
    expect_unreachable(
        ContainerExecutor::new(EngineAddress::parse("tcp://127.0.0.1:1")),
        "tcp://127.0.0.1:1",
    )
    .await;
}

#[test]
fn unreachable_docker_host_from_the_environment() {
    // In a child process: setting DOCKER_HOST here would race with the other tests.
    if std::env::var_os("SLIPWAY_TEST_CHILD").is_some() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(expect_unreachable(
            ContainerExecutor::from_env(),
            "unix:///nonexistent/from-env.sock",
        ));
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    let status = std::process::Command::new(exe)
        .args([
            "--exact",
            "unreachable_docker_host_from_the_environment",
            "--nocapture",
        ])
        .env("SLIPWAY_TEST_CHILD", "1")
        .env("DOCKER_HOST", "unix:///nonexistent/from-env.sock")
        .status()
        .expect("run child");
    assert!(status.success());
}

#[tokio::test]
#[ignore = "needs a container engine: scripts/setup-podman.sh"]
async fn failure_half_way_still_removes_everything() {
    // The network and the first service exist when the second service's image turns
    // out to be missing.
    let h = Harness::new();
    let dir = tmp();
    let mut spec = job(dir.path(), &["true"]);
    spec.after_script = vec!["echo after-should-not-run".to_string()];
    let missing = Service {
        name: "localhost/slipway-missing-service:1".to_string(),
        alias: Vec::new(),
        entrypoint: None,
        command: None,
        variables: Vec::new(),
        pull_policy: vec!["never".to_string()],
    };
    let first = Service {
        name: WEB_IMAGE.to_string(),
        ..missing.clone()
    };
    spec.services = vec![first, missing];
    let run = h.run(&spec).await;
    match &run.outcome.status {
        ExecStatus::SystemFailure(msg) => {
            assert!(msg.contains("localhost/slipway-missing-service:1"), "{msg}")
        }
        other => panic!("expected a system failure, got {other:?}\n{}", run.text()),
    }
    assert!(!run.text().contains("after-should-not-run"));
}

#[tokio::test]
#[ignore = "needs a container engine: scripts/setup-podman.sh"]
async fn dropping_the_job_future_still_removes_everything() {
    let h = Harness::new();
    let dir = tmp();
    let spec = job(dir.path(), &["sleep 300"]);
    let log = Arc::new(LogSink::detached(Masker::default(), None));
    let run = h.exec.run(&spec, log, CancellationToken::new());
    assert!(tokio::time::timeout(Duration::from_secs(3), run)
        .await
        .is_err());
    // The guard's cleanup runs in the background: give it a moment.
    let mut left = true;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let docker = bollard::Docker::connect_with_defaults().expect("engine");
        let found = docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(HashMap::from([(
                    "label".to_string(),
                    vec![format!("{TEST_LABEL}={}", h.id)],
                )])),
                ..Default::default()
            }))
            .await
            .expect("list");
        if found.is_empty() {
            left = false;
            break;
        }
    }
    assert!(!left, "the job container was not removed");
    h.assert_nothing_left().await;
}

#[tokio::test]
#[ignore = "needs a container engine: scripts/setup-podman.sh"]
async fn empty_entrypoint_clears_the_images_and_user_is_applied() {
    let h = Harness::new();
    let dir = tmp();
    let mut spec = job(dir.path(), &["id -u"]);
    let mut img = image(IMAGE);
    img.entrypoint = Some(vec![String::new()]);
    img.user = Some("1234".to_string());
    spec.image = Some(img);
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    let run = h.run(&spec).await;
    assert_eq!(run.outcome.status, ExecStatus::Success, "{}", run.text());
    assert!(run.lines.iter().any(|l| l == "1234"), "{}", run.text());
}

#[tokio::test]
#[ignore = "needs a container engine: scripts/setup-podman.sh"]
async fn bash_is_used_when_the_image_has_it_with_pipefail() {
    let h = Harness::new();
    let dir = tmp();
    let script = [
        "echo \"bash=${BASH_VERSION:+yes}\"",
        "false | true",
        "echo not-reached",
    ];
    // busybox sh: no bash, no pipefail: the pipeline succeeds.
    let run = h.run(&job(dir.path(), &script)).await;
    assert_eq!(run.outcome.status, ExecStatus::Success, "{}", run.text());
    assert!(run.lines.iter().any(|l| l == "bash="));
    assert!(run.lines.iter().any(|l| l == "not-reached"));
    // An image with bash: bash runs the script with `set -eo pipefail`.
    let mut spec = job(dir.path(), &script);
    spec.image = Some(image("localhost/busybox-bash:test"));
    let run = h.run(&spec).await;
    assert_eq!(run.outcome.status, ExecStatus::Failed, "{}", run.text());
    assert_eq!(run.outcome.exit_code, Some(1));
    assert!(run.lines.iter().any(|l| l == "bash=yes"), "{}", run.text());
    assert!(!run.lines.iter().any(|l| l == "not-reached"));
}

#[tokio::test]
#[ignore = "needs a container engine: scripts/setup-podman.sh"]
async fn odd_workspace_paths_are_mounted_whole() {
    let h = Harness::new();
    let base = tmp();
    // A bind string would split at the colon. (Podman 4.3 still refuses a `,` in a
    // mount's path; Docker takes it.)
    let dir = base.path().join("with space: and colon");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let run = h
        .run(&job(&dir, &["pwd", "echo ok > 'it'\\''s here.txt'"]))
        .await;
    assert_eq!(run.outcome.status, ExecStatus::Success, "{}", run.text());
    assert!(run.lines.iter().any(|l| *l == dir.to_string_lossy()));
    assert!(dir.join("it's here.txt").exists());
}
