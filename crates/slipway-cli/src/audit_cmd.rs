//! `slipway audit verify` and `slipway audit list`: run on the server's machine, they
//! open the state store directly (`--data`, `--database`, with the data directory's
//! secret key), not through the API. Verification must not trust the server being
//! checked: it recomputes the chain and the signatures itself, with the key only the
//! data directory (or `SLIPWAY_SECRET_KEY`) holds, and compares the head with the copy
//! the data directory keeps. Remote administrators list entries with `GET /api/v1/audit`.

use clap::Args;
use slipway_db::{SecretKey, Store, StoreOptions};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Clone)]
pub struct AuditStoreArgs {
    /// The server's data directory (default: $XDG_DATA_HOME/slipway/server).
    #[arg(long, env = "SLIPWAY_DATA")]
    pub data: Option<PathBuf>,
    /// The server's PostgreSQL URL, when it uses one.
    #[arg(long, env = "SLIPWAY_DATABASE_URL")]
    pub database: Option<String>,
}

async fn open(args: &AuditStoreArgs) -> Result<Store, String> {
    let data = crate::server_cmd::server_data_dir(&args.data);
    let database = args.database.clone().filter(|d| !d.is_empty());
    if std::env::var_os("SLIPWAY_SECRET_KEY").is_none()
        && !data.join(slipway_db::crypto::SECRET_KEY_FILE).exists()
    {
        return Err(format!(
            "{}: no secret key here: give the server's data directory with --data (or its key in SLIPWAY_SECRET_KEY)",
            data.display()
        ));
    }
    if database.is_none() && !data.join(slipway_db::store::SQLITE_FILE).exists() {
        return Err(format!(
            "{}: no database here: give the server's data directory with --data, or --database",
            data.display()
        ));
    }
    let key = SecretKey::from_env_or_data_dir(&data).map_err(|e| e.to_string())?;
    let mut opts = StoreOptions::new(&data, key);
    if let Some(url) = database {
        opts = opts.database_url(url);
    }
    Store::open(opts).await.map_err(|e| e.to_string())
}

/// Exit 0 when the chain is intact; 1 with one line per problem otherwise.
pub async fn verify(args: AuditStoreArgs, json: bool) -> Result<ExitCode, String> {
    let store = open(&args).await?;
    let report = store.verify_audit().await.map_err(|e| e.to_string())?;
    store.close().await;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else if report.is_intact() {
        println!(
            "audit log intact: {} entries, head at {}{}",
            report.entries,
            report.head_seq,
            if report.checked_data_dir_head {
                ", matching this data directory's copy of the head"
            } else {
                " (this data directory holds no copy of the head to compare)"
            }
        );
    } else {
        println!(
            "audit log NOT intact: {} problem{} in {} entries",
            report.problems.len(),
            if report.problems.len() == 1 { "" } else { "s" },
            report.entries
        );
        for p in &report.problems {
            println!(
                "entry {}: {}: {}",
                p.seq,
                serde_json::to_value(p.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                p.message
            );
        }
    }
    Ok(if report.is_intact() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The newest `limit` entries, oldest first.
pub async fn list(args: AuditStoreArgs, limit: i64, json: bool) -> Result<ExitCode, String> {
    let store = open(&args).await?;
    let mut entries = store
        .audit_recent(limit.clamp(1, 100_000))
        .await
        .map_err(|e| e.to_string())?;
    store.close().await;
    entries.reverse();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&entries).unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for e in entries {
        println!(
            "{:>6}  {}  {:<16} {:<22} {}:{}  {}",
            e.seq,
            e.at,
            e.actor,
            e.action,
            e.target_type,
            e.target_id,
            slipway_db::audit::canonical_json(&e.details)
        );
    }
    Ok(ExitCode::SUCCESS)
}
