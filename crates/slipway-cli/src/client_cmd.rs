//! The commands that talk to a Slipway server over its API: projects, pipelines, jobs,
//! logs (`-f` follows the live log), triggers, play / retry / cancel, installing the
//! post-receive hook, and `login`. A thin client: every decision is the server's.
//!
//! The server and token come from `--server`/`--token`, else `SLIPWAY_SERVER` /
//! `SLIPWAY_TOKEN`, else what `slipway login` saved (`$XDG_CONFIG_HOME/slipway/login.json`,
//! mode 0600), else `http://127.0.0.1:8080` without a token.

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use slipway_server::client::{Client, Reply, SseParser};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Clone, Debug)]
pub struct ServerOpts {
    /// The server's URL (default: SLIPWAY_SERVER, the saved login, or http://127.0.0.1:8080).
    #[arg(long, global = true)]
    pub server: Option<String>,
    /// A personal API token (default: SLIPWAY_TOKEN or the saved login).
    #[arg(long, global = true)]
    pub token: Option<String>,
}

#[derive(Subcommand, Clone)]
pub enum ProjectCmd {
    /// Add a project: a local repository (bare or not) or a clone URL; the server mirrors it.
    Add {
        name: String,
        /// Local path or clone URL.
        #[arg(long)]
        repo: String,
        #[arg(long)]
        default_branch: Option<String>,
        /// Seconds between polls of the repository; 0 turns polling off.
        #[arg(long)]
        poll_interval: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// List the projects you may see.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Clone)]
pub enum HookCmd {
    /// Install the post-receive hook in a repository on this machine, so each push
    /// reaches the server at once.
    Install {
        /// The project (name or id).
        #[arg(long)]
        project: String,
        /// The repository (default: the current directory).
        repo: Option<PathBuf>,
    },
}

fn config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|x| !x.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("slipway").join("login.json"))
}

fn saved_login() -> Option<(String, String)> {
    let text = std::fs::read_to_string(config_path()?).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    Some((
        v["server"].as_str()?.to_string(),
        v["token"].as_str()?.to_string(),
    ))
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl ServerOpts {
    pub fn client(&self) -> Result<Client, String> {
        let saved = saved_login();
        let server = self
            .server
            .clone()
            .or_else(|| env("SLIPWAY_SERVER"))
            .or_else(|| saved.as_ref().map(|s| s.0.clone()))
            .unwrap_or_else(|| "http://127.0.0.1:8080".into());
        let token = self
            .token
            .clone()
            .or_else(|| env("SLIPWAY_TOKEN"))
            .or_else(|| {
                // The saved token belongs to the saved server only.
                saved
                    .as_ref()
                    .filter(|s| s.0.trim_end_matches('/') == server.trim_end_matches('/'))
                    .map(|s| s.1.clone())
            });
        Client::new(&server, token).map_err(|e| e.to_string())
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// Runs `f` and turns an error into a message and exit status 1.
pub fn run<F>(f: F) -> ExitCode
where
    F: std::future::Future<Output = Result<ExitCode, String>>,
{
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn checked(
    r: Result<Reply, slipway_server::client::ClientError>,
) -> Result<Value, String> {
    let r = r.map_err(|e| e.to_string())?;
    if r.ok() {
        Ok(r.json())
    } else {
        Err(r.error_message())
    }
}

pub(crate) fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn parse_vars(vars: &[String]) -> Result<Vec<Value>, String> {
    vars.iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok(json!({"key": k, "value": v})),
            _ => Err(format!("--variable {kv}: expected KEY=VALUE")),
        })
        .collect()
}

pub(crate) fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn duration(v: &Value) -> String {
    match v["duration_ms"].as_i64() {
        Some(ms) if ms >= 60_000 => format!("{}m{:02}s", ms / 60_000, ms % 60_000 / 1000),
        Some(ms) => format!("{:.1}s", ms as f64 / 1000.0),
        None => "-".into(),
    }
}

pub async fn project(opts: ServerOpts, cmd: ProjectCmd) -> Result<ExitCode, String> {
    let c = opts.client()?;
    match cmd {
        ProjectCmd::Add {
            name,
            repo,
            default_branch,
            poll_interval,
            json,
        } => {
            // A local path is sent absolute: the server resolves it on its machine.
            let repo = match std::fs::canonicalize(&repo) {
                Ok(p) if p.is_dir() => p.display().to_string(),
                _ => repo,
            };
            let mut body = json!({"name": name, "repository": repo});
            if let Some(b) = default_branch {
                body["default_branch"] = json!(b);
            }
            if let Some(p) = poll_interval {
                body["poll_interval_secs"] = json!(p);
            }
            let v = checked(c.post_json("/api/v1/projects", &body).await)?;
            if json {
                print_json(&v);
            } else {
                println!(
                    "Added project {} (id {}), default branch {}",
                    v["name"].as_str().unwrap_or(""),
                    v["id"],
                    v["default_branch"].as_str().unwrap_or("")
                );
            }
        }
        ProjectCmd::List { json } => {
            let v = checked(c.get("/api/v1/projects").await)?;
            if json {
                print_json(&v["items"]);
            } else {
                for p in v["items"].as_array().into_iter().flatten() {
                    println!(
                        "{:<5} {:<24} {:<12} {}",
                        p["id"],
                        p["name"].as_str().unwrap_or(""),
                        p["default_branch"].as_str().unwrap_or(""),
                        p["repository"].as_str().unwrap_or("")
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn pipelines(
    opts: ServerOpts,
    project: Option<String>,
    ref_name: Option<String>,
    json: bool,
) -> Result<ExitCode, String> {
    let c = opts.client()?;
    let projects: Vec<String> = match project {
        Some(p) => vec![p],
        None => checked(c.get("/api/v1/projects").await)?["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["name"].as_str().map(str::to_string))
            .collect(),
    };
    let mut all: Vec<(String, Value)> = Vec::new();
    for p in projects {
        let mut path = format!("/api/v1/projects/{}/pipelines?limit=20", enc(&p));
        if let Some(r) = &ref_name {
            path.push_str(&format!("&ref={}", enc(r)));
        }
        let v = checked(c.get(&path).await)?;
        for item in v["items"].as_array().into_iter().flatten() {
            all.push((p.clone(), item.clone()));
        }
    }
    all.sort_by_key(|(_, p)| std::cmp::Reverse(p["id"].as_i64().unwrap_or(0)));
    if json {
        print_json(&Value::Array(
            all.into_iter()
                .map(|(name, mut p)| {
                    p["project"] = json!(name);
                    p
                })
                .collect(),
        ));
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<7} {:<16} {:<5} {:<20} {:<9} {:<10} {:<8} SOURCE",
        "ID", "PROJECT", "#", "REF", "SHA", "STATUS", "DURATION"
    );
    for (name, p) in all {
        println!(
            "{:<7} {:<16} {:<5} {:<20} {:<9} {:<10} {:<8} {}",
            p["id"],
            name,
            p["iid"],
            p["ref_name"].as_str().unwrap_or(""),
            &p["sha"].as_str().unwrap_or("")[..8.min(p["sha"].as_str().unwrap_or("").len())],
            p["status"].as_str().unwrap_or(""),
            duration(&p),
            p["source"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn jobs(opts: ServerOpts, pipeline: i64, json: bool) -> Result<ExitCode, String> {
    let c = opts.client()?;
    let v = checked(c.get(&format!("/api/v1/pipelines/{pipeline}")).await)?;
    if json {
        print_json(&v["jobs"]);
        return Ok(ExitCode::SUCCESS);
    }
    let p = &v["pipeline"];
    println!(
        "Pipeline {} (#{}) on {}: {}",
        p["id"],
        p["iid"],
        p["ref_name"].as_str().unwrap_or(""),
        p["status"].as_str().unwrap_or("")
    );
    if let Some(msg) = p["error_message"].as_str() {
        println!("{msg}");
    }
    println!(
        "{:<7} {:<12} {:<28} {:<10} {:<8} NEEDS",
        "ID", "STAGE", "NAME", "STATUS", "DURATION"
    );
    for j in v["jobs"].as_array().into_iter().flatten() {
        let needs = match j["needs"].as_array() {
            Some(n) => n
                .iter()
                .filter_map(|x| x["job"].as_str())
                .collect::<Vec<_>>()
                .join(","),
            None => "-".into(),
        };
        println!(
            "{:<7} {:<12} {:<28} {:<10} {:<8} {}",
            j["id"],
            j["stage"].as_str().unwrap_or(""),
            j["name"].as_str().unwrap_or(""),
            j["status"].as_str().unwrap_or(""),
            duration(j),
            needs
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn logs(opts: ServerOpts, job: i64, follow: bool) -> Result<ExitCode, String> {
    let c = opts.client()?;
    let mut out = std::io::stdout().lock();
    if !follow {
        let mut offset = 0i64;
        loop {
            let r = c
                .get(&format!("/api/v1/jobs/{job}/log?offset={offset}"))
                .await
                .map_err(|e| e.to_string())?;
            if !r.ok() {
                return Err(r.error_message());
            }
            let _ = out.write_all(&r.body);
            let next: i64 = r
                .header("x-log-next-offset")
                .and_then(|v| v.parse().ok())
                .unwrap_or(offset);
            let size: i64 = r
                .header("x-log-size")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if next >= size || next == offset {
                break;
            }
            offset = next;
        }
        let _ = out.flush();
        return Ok(ExitCode::SUCCESS);
    }
    let mut s = c
        .stream(&format!("/api/v1/jobs/{job}/log/stream"), &[])
        .await
        .map_err(|e| e.to_string())?;
    if s.status != 200 {
        let mut body = Vec::new();
        while let Some(Ok(b)) = s.chunk().await {
            body.extend_from_slice(&b);
        }
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        return Err(v["error"]["message"]
            .as_str()
            .map(|m| format!("{m} (HTTP {})", s.status))
            .unwrap_or_else(|| format!("HTTP {}", s.status)));
    }
    let mut parser = SseParser::default();
    while let Some(chunk) = s.chunk().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        for ev in parser.push(&chunk) {
            match ev.event.as_str() {
                "log" => {
                    let _ = out.write_all(ev.data.as_bytes());
                    let _ = out.flush();
                }
                "end" => {
                    let v: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
                    eprintln!(
                        "-- job {job} {}",
                        v["status"].as_str().unwrap_or("finished")
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                "error" => return Err(ev.data),
                _ => {}
            }
        }
    }
    Err("the server closed the log stream".into())
}

pub async fn trigger(
    opts: ServerOpts,
    project: String,
    ref_name: Option<String>,
    variables: Vec<String>,
    json: bool,
) -> Result<ExitCode, String> {
    let c = opts.client()?;
    let mut body = json!({"variables": parse_vars(&variables)?});
    if let Some(r) = ref_name {
        body["ref"] = json!(r);
    }
    let v = checked(
        c.post_json(
            &format!("/api/v1/projects/{}/pipelines", enc(&project)),
            &body,
        )
        .await,
    )?;
    if json {
        print_json(&v);
    } else {
        let p = &v["pipeline"];
        println!(
            "Pipeline {} (#{}) for {} at {}: {}",
            p["id"],
            p["iid"],
            p["ref_name"].as_str().unwrap_or(""),
            &p["sha"].as_str().unwrap_or("")[..8.min(p["sha"].as_str().unwrap_or("").len())],
            p["status"].as_str().unwrap_or("")
        );
        if let Some(msg) = p["error_message"].as_str() {
            println!("{msg}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `play`, `retry` or `cancel` a job (or, with `--pipeline`, cancel or retry a pipeline).
pub async fn action(
    opts: ServerOpts,
    what: &str,
    id: i64,
    pipeline: bool,
    variables: Vec<String>,
) -> Result<ExitCode, String> {
    let c = opts.client()?;
    let path = if pipeline {
        format!("/api/v1/pipelines/{id}/{what}")
    } else {
        format!("/api/v1/jobs/{id}/{what}")
    };
    let body = json!({"variables": parse_vars(&variables)?});
    let v = checked(c.post_json(&path, &body).await)?;
    if pipeline {
        println!("Pipeline {id}: {what} done");
    } else {
        println!(
            "Job {} ({}): {}",
            v["id"],
            v["name"].as_str().unwrap_or(""),
            v["status"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn hook(opts: ServerOpts, cmd: HookCmd) -> Result<ExitCode, String> {
    let HookCmd::Install { project, repo } = cmd;
    let c = opts.client()?;
    let repo = match repo {
        Some(r) => r,
        None => std::env::current_dir().map_err(|e| e.to_string())?,
    };
    let v = checked(
        c.post_json(
            &format!("/api/v1/projects/{}/hook-token", enc(&project)),
            &json!({}),
        )
        .await,
    )?;
    let token = v["token"].as_str().unwrap_or_default().to_string();
    // The hook posts where this command reached the server, unless the server knows
    // better (an external URL) and no --server was given.
    let url = match &opts.server {
        Some(s) => format!(
            "{}/api/v1/projects/{}/hook",
            s.trim_end_matches('/'),
            v["project"]
        ),
        None => v["url"].as_str().unwrap_or_default().to_string(),
    };
    let installed = slipway_server::hook::install(
        &repo,
        &slipway_server::hook::HookTarget {
            url: url.clone(),
            token,
        },
    )
    .map_err(|e| e.to_string())?;
    println!(
        "Installed the post-receive hook at {} (posts to {url})",
        installed.path.display()
    );
    if let Some(chained) = &installed.chained {
        println!(
            "The hook that was there runs after it: {}",
            chained.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn login(
    opts: ServerOpts,
    username: String,
    password_stdin: bool,
) -> Result<ExitCode, String> {
    let server = opts
        .server
        .clone()
        .or_else(|| env("SLIPWAY_SERVER"))
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let password = if password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        line.trim_end_matches(['\n', '\r']).to_string()
    } else {
        env("SLIPWAY_PASSWORD").ok_or(
            "give the password on standard input (--password-stdin) or in SLIPWAY_PASSWORD",
        )?
    };
    let c = Client::new(&server, None).map_err(|e| e.to_string())?;
    let r = c
        .post_json(
            "/api/v1/session",
            &json!({"username": username, "password": password}),
        )
        .await
        .map_err(|e| e.to_string())?;
    if !r.ok() {
        return Err(r.error_message());
    }
    let cookie = r
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .unwrap_or_default()
        .to_string();
    let csrf = r.json()["csrf_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "cli".into());
    let r = c
        .send(
            "POST",
            "/api/v1/user/tokens",
            Some((
                "application/json",
                json!({"name": format!("slipway login on {host}")})
                    .to_string()
                    .into_bytes(),
            )),
            &[("Cookie", cookie.as_str()), ("X-CSRF-Token", csrf.as_str())],
        )
        .await
        .map_err(|e| e.to_string())?;
    if !r.ok() {
        return Err(r.error_message());
    }
    let token = r.json()["token"].as_str().unwrap_or_default().to_string();
    let _ = c
        .send(
            "DELETE",
            "/api/v1/session",
            None,
            &[("Cookie", cookie.as_str()), ("X-CSRF-Token", csrf.as_str())],
        )
        .await;
    let path = config_path().ok_or("no HOME or XDG_CONFIG_HOME to keep the login in")?;
    write_private(
        &path,
        &json!({"server": server, "token": token}).to_string(),
    )
    .map_err(|e| format!("{}: {e}", path.display()))?;
    println!(
        "Logged in to {server} as {username}; token saved in {}",
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
