//! The deployment commands against a server: `slipway environments`, `slipway
//! deployments ENV`, `slipway approve|reject DEPLOYMENT` and `slipway rollback ENV`. An
//! environment is named by its name, with `--project` when several projects have one
//! of that name.

use crate::client_cmd::{checked, enc, print_json, ServerOpts};
use serde_json::{json, Value};
use slipway_server::client::Client;
use std::process::ExitCode;
use std::time::Duration;

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("")
}

fn short_time(v: &Value) -> String {
    // `2024-05-01T12:00:00.123Z` -> `2024-05-01 12:00:00`
    v.as_str()
        .map(|t| t.replace('T', " ").chars().take(19).collect())
        .unwrap_or_else(|| "-".into())
}

/// The project owning environment `env`: `project` if given, else the only project the
/// caller sees with an environment of that name.
async fn project_of(c: &Client, env: &str, project: Option<String>) -> Result<String, String> {
    if let Some(p) = project {
        return Ok(p);
    }
    let all = checked(c.get("/api/v1/environments").await)?;
    let owners: Vec<String> = all["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| s(e, "name") == env)
        .map(|e| s(e, "project").to_string())
        .collect();
    match owners.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!(
            "no environment {env:?} in the projects you may see"
        )),
        many => Err(format!(
            "environment {env:?} exists in projects {}: pass --project",
            many.join(", ")
        )),
    }
}

pub async fn environments(
    opts: ServerOpts,
    project: Option<String>,
    json: bool,
) -> Result<ExitCode, String> {
    let c = opts.client()?;
    let path = match &project {
        Some(p) => format!("/api/v1/projects/{}/environments", enc(p)),
        None => "/api/v1/environments".into(),
    };
    let v = checked(c.get(&path).await)?;
    if json {
        print_json(&v["items"]);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<14} {:<14} {:<11} {:<12} {:<9} {:<20} {:<14} {:<14} ROUTER",
        "PROJECT",
        "ENVIRONMENT",
        "TIER",
        "VERSION",
        "COMMIT",
        "SINCE",
        "DEPLOYED BY",
        "APPROVED BY"
    );
    for e in v["items"].as_array().into_iter().flatten() {
        let cur = &e["current"];
        let approved: Vec<&str> = cur["approved_by"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str())
            .collect();
        let mut note = String::new();
        if let Some(w) = e["awaiting_approval"].as_array().filter(|a| !a.is_empty()) {
            note = format!(
                "  (awaiting approval: {})",
                w.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        println!(
            "{:<14} {:<14} {:<11} {:<12} {:<9} {:<20} {:<14} {:<14} {}{note}",
            s(e, "project"),
            s(e, "name"),
            s(e, "tier"),
            if cur.is_null() {
                "-"
            } else {
                s(cur, "version")
            },
            s(cur, "sha").chars().take(8).collect::<String>(),
            short_time(&cur["finished_at"]),
            if cur.is_null() {
                "-"
            } else {
                s(cur, "triggered_by_name")
            },
            if approved.is_empty() {
                "-".to_string()
            } else {
                approved.join(",")
            },
            e["router"].as_str().unwrap_or("-"),
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn deployments(
    opts: ServerOpts,
    env: String,
    project: Option<String>,
    limit: i64,
    json: bool,
) -> Result<ExitCode, String> {
    let c = opts.client()?;
    let project = project_of(&c, &env, project).await?;
    let v = checked(
        c.get(&format!(
            "/api/v1/projects/{}/environments/{}/deployments?limit={limit}",
            enc(&project),
            enc(&env)
        ))
        .await,
    )?;
    if json {
        print_json(&v["items"]);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<6} {:<12} {:<9} {:<18} {:<12} {:<20} {:<14} {:<14} NOTE",
        "ID", "VERSION", "COMMIT", "STATUS", "STRATEGY", "CREATED", "BY", "APPROVED BY"
    );
    for d in v["items"].as_array().into_iter().flatten() {
        let approved: Vec<&str> = d["approved_by"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str())
            .collect();
        let mut note = String::new();
        if let Some(r) = d["rollback_of"].as_i64() {
            note.push_str(&format!("rollback to {r}; "));
        }
        if let Some(ms) = d["switch_ms"].as_f64() {
            note.push_str(&format!("switch {ms:.1} ms; "));
        }
        if let Some(r) = d["reason"].as_str() {
            note.push_str(r);
        }
        println!(
            "{:<6} {:<12} {:<9} {:<18} {:<12} {:<20} {:<14} {:<14} {}",
            d["id"],
            s(d, "version"),
            s(d, "sha").chars().take(8).collect::<String>(),
            s(d, "status"),
            d["strategy"].as_str().unwrap_or("script"),
            short_time(&d["created_at"]),
            s(d, "triggered_by_name"),
            if approved.is_empty() {
                "-".to_string()
            } else {
                approved.join(",")
            },
            note.trim_end_matches("; ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn decide(
    opts: ServerOpts,
    verb: &str,
    deployment: i64,
    comment: Option<String>,
    json: bool,
) -> Result<ExitCode, String> {
    let c = opts.client()?;
    let body = match comment {
        Some(m) => json!({"comment": m}),
        None => json!({}),
    };
    let v = checked(
        c.post_json(&format!("/api/v1/deployments/{deployment}/{verb}"), &body)
            .await,
    )?;
    if json {
        print_json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    let d = &v["deployment"];
    let done = if verb == "approve" {
        "Approved"
    } else {
        "Rejected"
    };
    let approvals = d["approved_by"].as_array().map(|a| a.len()).unwrap_or(0);
    println!(
        "{done} deployment {deployment} of {} to {}: now {}{}",
        s(d, "version"),
        s(d, "environment"),
        s(d, "status").replace('_', " "),
        if verb == "approve" && d["status"] == "awaiting_approval" {
            format!(
                " ({approvals} approval{} so far)",
                if approvals == 1 { "" } else { "s" }
            )
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn rollback(
    opts: ServerOpts,
    env: String,
    project: Option<String>,
    to: Option<i64>,
    json: bool,
) -> Result<ExitCode, String> {
    let mut c = opts.client()?;
    // A rollback whose release must start again waits for its health checks.
    c.timeout = Duration::from_secs(15 * 60);
    let project = project_of(&c, &env, project).await?;
    let body = match to {
        Some(t) => json!({"to": t}),
        None => json!({}),
    };
    let r = c
        .post_json(
            &format!(
                "/api/v1/projects/{}/environments/{}/rollback",
                enc(&project),
                enc(&env)
            ),
            &body,
        )
        .await
        .map_err(|e| e.to_string())?;
    let v = r.json();
    if !r.ok() && v["deployment"].is_null() {
        return Err(r.error_message());
    }
    if json {
        print_json(&v);
    } else {
        let d = &v["deployment"];
        match v["status"].as_str() {
            Some("success") => println!(
                "Rolled {env} back to deployment {} ({}) as deployment {}: all traffic on it after {}",
                v["rolled_back_to"],
                s(d, "version"),
                d["id"],
                v["switch_ms"]
                    .as_f64()
                    .map(|ms| format!("{ms:.1} ms"))
                    .unwrap_or_else(|| "-".into())
            ),
            other => {
                eprintln!(
                    "Rollback of {env} (deployment {}) {}: {}",
                    d["id"],
                    other.unwrap_or("failed"),
                    v["reason"].as_str().unwrap_or("no reason given")
                );
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
