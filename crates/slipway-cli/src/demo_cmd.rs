//! `slipway demo`: a server with a bundled example project, so a new user sees the whole
//! flow in the browser. On first start it writes the example repository (a small HTTP
//! service with nothing but the standard library, and a pipeline: build, test, deploy
//! to dev by itself, to staging on a click, to production after an approval with
//! blue-green) into the data directory as a bare repository plus a working clone, adds
//! the project, protects production (one approval from the administrator), installs the
//! post-receive hook and pushes the first commit. Later starts reuse all of it.
//!
//! It needs only what building Slipway needed: Rust (the pipeline builds the service
//! with `rustc`) and git.

use clap::Args;
use serde_json::json;
use slipway_runner::pipeline::ExecutorChoice;
use slipway_server::app::{AppState, ServerConfig};
use slipway_server::client::Client;
use slipway_server::server::{self, FirstAdminOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const PIPELINE: &str = include_str!("../../../examples/demo/.gitlab-ci.yml");
const SERVICE: &str = include_str!("../../../examples/demo/src/main.rs");
const README: &str = include_str!("../../../examples/demo/README.md");

#[derive(Args, Clone)]
pub struct DemoArgs {
    /// Where the demo keeps its server (database, artifacts, releases) and the example
    /// repository; delete it to start over.
    #[arg(long, default_value = "slipway-demo")]
    pub data: PathBuf,
    /// Address of the web UI and API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
}

fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .output()
        .map_err(|e| format!("cannot run git (is it installed?): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// A secret kept in the demo's directory (mode 0600), made on first use.
fn kept_secret(path: &Path, make: impl FnOnce() -> String) -> Result<String, String> {
    if let Ok(s) = std::fs::read_to_string(path) {
        if !s.trim().is_empty() {
            return Ok(s.trim().to_string());
        }
    }
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let value = make();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(value.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(value)
}

/// The example repository: a bare one the server watches, and a clone to edit.
fn write_repository(bare: &Path, work: &Path) -> Result<(), String> {
    std::fs::create_dir_all(bare).map_err(|e| format!("{}: {e}", bare.display()))?;
    git(
        bare,
        &["init", "--quiet", "--bare", "--initial-branch=main"],
    )?;
    std::fs::create_dir_all(work).map_err(|e| format!("{}: {e}", work.display()))?;
    git(work, &["init", "--quiet", "--initial-branch=main"])?;
    // A fresh machine has no git identity: the demo's own, for this clone only.
    git(work, &["config", "user.name", "Slipway demo"])?;
    git(work, &["config", "user.email", "demo@slipway.invalid"])?;
    git(work, &["config", "commit.gpgsign", "false"])?;
    git(
        work,
        &["remote", "add", "origin", &bare.display().to_string()],
    )?;
    write(&work.join(".gitlab-ci.yml"), PIPELINE)?;
    write(&work.join("src/main.rs"), SERVICE)?;
    write(&work.join("README.md"), README)?;
    git(work, &["add", "-A"])?;
    git(
        work,
        &["commit", "--quiet", "-m", "The shop, version 1.0.0"],
    )?;
    Ok(())
}

async fn checked(
    r: Result<slipway_server::client::Reply, slipway_server::client::ClientError>,
) -> Result<serde_json::Value, String> {
    let r = r.map_err(|e| e.to_string())?;
    if r.ok() {
        Ok(r.json())
    } else {
        Err(r.error_message())
    }
}

/// First start: the repository, the project, its variables, the protection of
/// production, the hook, and the first push.
async fn set_up(api: &Client, bare: &Path, work: &Path) -> Result<(), String> {
    write_repository(bare, work)?;
    checked(
        api.post_json(
            "/api/v1/projects",
            &json!({"name": "shop", "repository": bare.display().to_string()}),
        )
        .await,
    )
    .await?;
    for (env, greeting) in [
        ("dev", "Hello from dev"),
        ("staging", "Hello from staging"),
        ("production", "Welcome to the shop"),
    ] {
        checked(
            api.json(
                "PUT",
                "/api/v1/projects/shop/variables/GREETING",
                &json!({"value": greeting, "environment_scope": env}),
            )
            .await,
        )
        .await?;
    }
    checked(
        api.json(
            "PUT",
            "/api/v1/projects/shop/protected-environments/production",
            &json!({"required_approvals": 1, "approvers": ["admin"], "allowed_branches": ["main"]}),
        )
        .await,
    )
    .await?;
    let hook = checked(
        api.post_json("/api/v1/projects/shop/hook-token", &json!({}))
            .await,
    )
    .await?;
    slipway_server::hook::install(
        bare,
        &slipway_server::hook::HookTarget {
            url: hook["url"].as_str().unwrap_or_default().to_string(),
            token: hook["token"].as_str().unwrap_or_default().to_string(),
        },
    )
    .map_err(|e| e.to_string())?;
    // The push reaches the server through the hook, as a team's pushes would.
    git(
        work,
        &["push", "--quiet", "--set-upstream", "origin", "main"],
    )?;
    Ok(())
}

async fn cli_token(app: &AppState, data: &Path) -> Result<String, String> {
    let path = data.join("cli-token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_string());
        }
    }
    let admin = app
        .store
        .user_by_name("admin")
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the demo's administrator is missing")?;
    let (token, _) = app
        .store
        .create_api_token(
            &slipway_db::Actor::user(&admin),
            admin.id,
            "slipway demo",
            &[slipway_db::TokenScope::Api],
            None,
        )
        .await
        .map_err(|e| e.to_string())?;
    let t = token.expose().to_string();
    kept_secret(&path, || t.clone())?;
    Ok(t)
}

pub fn run(args: &DemoArgs) -> ExitCode {
    if std::env::var_os("SLIPWAY_LOG").is_none() && std::env::var_os("RUST_LOG").is_none() {
        // The banner is what matters here; problems still show.
        std::env::set_var("SLIPWAY_LOG", "warn");
    }
    crate::server_cmd::init_logging();
    let data = match std::path::absolute(&args.data) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {}: {e}", args.data.display());
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::fs::create_dir_all(&data) {
        eprintln!("error: {}: {e}", data.display());
        return ExitCode::FAILURE;
    }
    let password = match kept_secret(&data.join("admin-password"), || {
        slipway_server::hook::new_token()
            .map(|t| t[..20].to_string())
            .unwrap_or_else(|_| "change-me-now".into())
    }) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut config = ServerConfig::new(data.join("server"));
    config.listen = args.listen.clone();
    config.executor = ExecutorChoice::Shell;
    config.concurrency = config.concurrency.clamp(2, 4);
    let admin = FirstAdminOptions {
        username: "admin".into(),
        password: Some(password.clone()),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let started = match server::start(config, admin).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                if e.to_string().contains("cannot listen") {
                    eprintln!(
                        "(another program uses {}: try --listen 127.0.0.1:8090)",
                        args.listen
                    );
                }
                return ExitCode::FAILURE;
            }
        };
        let url = format!("http://{}", started.addr);
        let app = started.app.clone();
        let serve = tokio::spawn(started.serve(server::shutdown_signal()));
        let token = match cli_token(&app, &data).await {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                app.shutdown.cancel();
                let _ = serve.await;
                return ExitCode::FAILURE;
            }
        };
        let bare = data.join("shop.git");
        let work = data.join("shop");
        let fresh = matches!(app.store.project_by_name("shop").await, Ok(None));
        if fresh {
            let api = match Client::new(&url, Some(token.clone())) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if let Err(e) = set_up(&api, &bare, &work).await {
                eprintln!("error: setting up the example project: {e}");
                eprintln!("(delete {} and try again)", data.display());
                app.shutdown.cancel();
                let _ = serve.await;
                return ExitCode::FAILURE;
            }
        }
        println!(
            "\nSlipway demo: {url}/projects/shop/pipelines\n\
             \n  Sign in as admin, password {password}\n\
             \nWhat happens:\n\
             \x20 1. {first} builds and tests the shop service, then deploys it to dev by itself.\n\
             \x20 2. Deploy to staging: the play button of the pipeline's deploy-staging job.\n\
             \x20 3. Production waits for your approval (Environments > production > Approve),\n\
             \x20    then deploys with blue-green. Each environment's page links its address.\n\
             \x20 4. Release the next version: change VERSION in {work}/.gitlab-ci.yml, then\n\
             \x20      git -C {work} commit -qam v2 && git -C {work} push -q\n\
             \x20 5. Roll back: the button on production's page, or\n\
             \x20      SLIPWAY_SERVER={url} SLIPWAY_TOKEN=$(cat {token_file}) slipway rollback production\n\
             \nCtrl-C stops the server and its environments; the same command starts them again.\n\
             Everything is in {data} (delete it to start over).",
            first = if fresh {
                "The first push (made just now)"
            } else {
                "Each push"
            },
            work = work.display(),
            data = data.display(),
            token_file = data.join("cli-token").display(),
        );
        match serve.await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
