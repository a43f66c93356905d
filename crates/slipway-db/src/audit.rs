//! The append-only, tamper-evident audit log.
//!
//! Each entry carries `hash = SHA-256(canonical encoding of its fields and the previous
//! entry's hash)` and `mac = HMAC(key, hash)`, with the key derived from the secret key
//! that the database does not hold. A one-row `audit_head` keeps the newest sequence
//! number and hash, also signed; the data directory keeps a copy of the newest head this
//! server wrote (`audit-head.<database id>`). So:
//!
//! - editing an entry breaks its hash; recomputing the hash breaks its MAC (needs the key);
//! - deleting entries in the middle leaves a gap in `seq` and a broken `prev_hash` link;
//! - inserting entries shifts `seq` (every later entry's hash changes) or lands after the
//!   signed head;
//! - deleting the newest entries contradicts the signed head; rolling the head back to an
//!   older signed value (a replay) contradicts the data-directory file.
//!
//! Limits: an attacker holding the secret key can rewrite everything consistently; one
//! who can write the database and replays an old head row is caught only by a server
//! whose data directory saw the newer head.
//!
//! Appends are serialised: on PostgreSQL by locking the head row (`FOR UPDATE`) inside
//! the writing transaction, so two servers on one database never fork the chain; on
//! SQLite by the single writer. Entries are written in the same transaction as the
//! change they record.

use crate::error::{Error, Result};
use crate::row::RowExt;
use crate::store::{Core, Dialect, Store, WriteTx};
use crate::types::{Timestamp, UserId};
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Who did something: a user, or a part of the system (`scheduler`, `webhook:github`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Actor {
    pub user_id: Option<UserId>,
    pub name: String,
}

impl Actor {
    pub fn user(user: &crate::users::User) -> Actor {
        Actor {
            user_id: Some(user.id),
            name: user.username.clone(),
        }
    }

    pub fn system(name: impl Into<String>) -> Actor {
        Actor {
            user_id: None,
            name: name.into(),
        }
    }
}

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: Timestamp,
    pub actor_id: Option<UserId>,
    pub actor: String,
    /// `user.login`, `project.create`, `secret.set`, `job.play`, ...
    pub action: String,
    /// `project`, `pipeline`, `job`, `user`, ...
    pub target_type: String,
    pub target_id: String,
    pub details: Value,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditProblemKind {
    /// An entry's contents or signature do not match.
    Edited,
    /// An entry that was not appended by Slipway.
    Inserted,
    /// Entries are missing.
    Deleted,
    /// The signed head row itself was altered.
    HeadAltered,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditProblem {
    /// The first entry concerned.
    pub seq: i64,
    pub kind: AuditProblemKind,
    pub message: String,
}

/// What [`Store::verify_audit`] found.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub entries: i64,
    pub head_seq: i64,
    /// Whether this data directory held a head for this database to compare with.
    pub checked_data_dir_head: bool,
    pub problems: Vec<AuditProblem>,
}

impl AuditReport {
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Appends an entry inside `tx`; returns its sequence number.
pub(crate) async fn append(
    tx: &mut WriteTx,
    actor: &Actor,
    action: &str,
    target_type: &str,
    target_id: &str,
    details: Value,
) -> Result<i64> {
    let lock = match tx.dialect() {
        Dialect::Postgres => "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE",
        Dialect::Sqlite => "SELECT seq, hash FROM audit_head WHERE id = 1",
    };
    let head = sqlx::query(lock).fetch_one(tx.conn()).await?;
    let prev_seq = head.i64("seq")?;
    let prev_hash = head.text("hash")?;
    let entry = AuditEntry {
        seq: prev_seq + 1,
        at: tx.now(),
        actor_id: actor.user_id,
        actor: actor.name.clone(),
        action: action.to_string(),
        target_type: target_type.to_string(),
        target_id: target_id.to_string(),
        details,
        prev_hash,
        hash: String::new(),
    };
    let hash = entry_hash(&entry);
    let mac = tx.core.cipher.mac_hex(hash.as_bytes());
    sqlx::query(
        "INSERT INTO audit_log (seq, at, actor_id, actor, action, target_type, target_id, \
         details, prev_hash, hash, mac) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(entry.seq)
    .bind(entry.at.0)
    .bind(entry.actor_id.map(|u| u.0))
    .bind(&entry.actor)
    .bind(&entry.action)
    .bind(&entry.target_type)
    .bind(&entry.target_id)
    .bind(canonical_json(&entry.details))
    .bind(&entry.prev_hash)
    .bind(&hash)
    .bind(&mac)
    .execute(tx.conn())
    .await?;
    let head_mac = tx
        .core
        .cipher
        .mac_hex(head_input(entry.seq, &hash).as_bytes());
    sqlx::query("UPDATE audit_head SET seq = $1, hash = $2, mac = $3 WHERE id = 1")
        .bind(entry.seq)
        .bind(&hash)
        .bind(head_mac)
        .execute(tx.conn())
        .await?;
    tx.audit_head = Some((entry.seq, hash));
    Ok(entry.seq)
}

fn head_input(seq: i64, hash: &str) -> String {
    format!("slipway audit head v1|{seq}|{hash}")
}

/// SHA-256 over a length-prefixed encoding of every field, so no two different entries
/// encode alike.
fn entry_hash(e: &AuditEntry) -> String {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(b"slipway audit entry v1\n");
    let fields: [&str; 9] = [
        &e.seq.to_string(),
        &e.at.0.to_string(),
        &e.actor_id.map(|u| u.0.to_string()).unwrap_or_default(),
        &e.actor,
        &e.action,
        &e.target_type,
        &e.target_id,
        &canonical_json(&e.details),
        &e.prev_hash,
    ];
    for f in fields {
        buf.extend_from_slice(&(f.len() as u64).to_be_bytes());
        buf.extend_from_slice(f.as_bytes());
    }
    crate::crypto::sha256_hex(&buf)
}

/// JSON with object keys sorted and no whitespace, independent of serde_json's map
/// ordering features.
pub fn canonical_json(v: &Value) -> String {
    let mut s = String::new();
    write_canonical(v, &mut s);
    s
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                if let Some(val) = m.get(*k) {
                    write_canonical(val, out);
                }
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Signs the initial head on first start, and records the database's id (which names
/// the head file in the data directory).
pub(crate) async fn init_head(core: &Arc<Core>) -> Result<()> {
    let mut tx = Core::write(core).await?;
    let head = sqlx::query("SELECT seq, hash, mac FROM audit_head WHERE id = 1")
        .fetch_one(tx.conn())
        .await?;
    if head.text("mac")?.is_empty() && head.i64("seq")? == 0 {
        let mac = core.cipher.mac_hex(head_input(0, GENESIS).as_bytes());
        sqlx::query("UPDATE audit_head SET mac = $1 WHERE id = 1 AND seq = 0 AND mac = ''")
            .bind(mac)
            .execute(tx.conn())
            .await?;
    }
    let id = crate::crypto::new_token("");
    sqlx::query(
        "INSERT INTO meta (name, value) VALUES ('database_id', $1) ON CONFLICT (name) DO NOTHING",
    )
    .bind(&id.expose()[..32])
    .execute(tx.conn())
    .await?;
    tx.commit().await?;
    let id = database_id(core).await?;
    let _ = core.database_id.set(id);
    Ok(())
}

async fn database_id(core: &Core) -> Result<String> {
    let r = sqlx::query("SELECT value FROM meta WHERE name = 'database_id'")
        .fetch_one(&core.pool)
        .await?;
    r.text("value")
}

fn head_file(core: &Core, db_id: &str) -> std::path::PathBuf {
    core.data_dir.join(format!("audit-head.{db_id}"))
}

/// Records the newest head this server committed, if newer than the file's.
pub(crate) fn write_head_file(core: &Core, seq: i64, hash: &str) -> Result<()> {
    // Process-wide: several stores of one process may share a data directory.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let Some(db_id) = core.database_id.get() else {
        return Ok(());
    };
    let path = head_file(core, db_id);
    if let Some((old, _)) = read_head_file(&path)? {
        if old >= seq {
            return Ok(());
        }
    }
    let tmp = core
        .data_dir
        .join(format!("audit-head.{db_id}.{}.tmp", core.instance));
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{seq} {hash}")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| Error::io(&path, e))?;
    crate::crypto::sync_dir(&core.data_dir)
}

fn read_head_file(path: &std::path::Path) -> Result<Option<(i64, String)>> {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let mut it = s.split_whitespace();
            match (it.next().and_then(|n| n.parse().ok()), it.next()) {
                (Some(seq), Some(h)) => Ok(Some((seq, h.to_string()))),
                _ => Err(Error::Corrupt(format!(
                    "{} is not `SEQ HASH`",
                    path.display()
                ))),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

fn row_entry(r: &sqlx::any::AnyRow) -> Result<(AuditEntry, String)> {
    let details: String = r.text("details")?;
    let e = AuditEntry {
        seq: r.i64("seq")?,
        at: r.ts("at")?,
        actor_id: r.opt_i64("actor_id")?.map(UserId),
        actor: r.text("actor")?,
        action: r.text("action")?,
        target_type: r.text("target_type")?,
        target_id: r.text("target_id")?,
        details: serde_json::from_str(&details).unwrap_or(Value::String(details)),
        prev_hash: r.text("prev_hash")?,
        hash: r.text("hash")?,
    };
    Ok((e, r.text("mac")?))
}

impl Store {
    /// Appends an entry for an action that no other store operation records (a refused
    /// webhook, an export, ...).
    pub async fn audit(
        &self,
        actor: &Actor,
        action: &str,
        target_type: &str,
        target_id: &str,
        details: Value,
    ) -> Result<i64> {
        let mut tx = self.write().await?;
        let seq = append(&mut tx, actor, action, target_type, target_id, details).await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// Entries after `after_seq`, oldest first, at most `limit`.
    pub async fn audit_entries(&self, after_seq: i64, limit: i64) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query("SELECT * FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(after_seq)
            .bind(limit)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(|r| row_entry(r).map(|(e, _)| e)).collect()
    }

    /// The newest entries first (for `slipway audit list`).
    pub async fn audit_recent(&self, limit: i64) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query("SELECT * FROM audit_log ORDER BY seq DESC LIMIT $1")
            .bind(limit)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(|r| row_entry(r).map(|(e, _)| e)).collect()
    }

    /// Checks the whole chain, the signed head and this data directory's head file.
    pub async fn verify_audit(&self) -> Result<AuditReport> {
        let core = self.core();
        let cipher = &core.cipher;
        let mut problems = Vec::new();
        let head = sqlx::query("SELECT seq, hash, mac FROM audit_head WHERE id = 1")
            .fetch_one(self.pool())
            .await?;
        let head_seq = head.i64("seq")?;
        let head_hash = head.text("hash")?;
        let head_ok = cipher.verify_mac_hex(
            head_input(head_seq, &head_hash).as_bytes(),
            &head.text("mac")?,
        );
        if !head_ok {
            problems.push(AuditProblem {
                seq: head_seq,
                kind: AuditProblemKind::HeadAltered,
                message: format!("the signed head (entry {head_seq}) was altered"),
            });
        }

        let mut expected_seq = 1i64;
        let mut prev_hash = GENESIS.to_string();
        let mut count = 0i64;
        let mut hash_at_head: Option<String> = None;
        let mut hashes_wanted: Vec<(i64, String)> = Vec::new();
        let db_id = database_id(core).await?;
        let file = read_head_file(&head_file(core, &db_id))?;
        let file_seq = file.as_ref().map(|(s, _)| *s);
        let mut hash_at_file: Option<String> = None;
        let mut after = 0i64;
        loop {
            let rows =
                sqlx::query("SELECT * FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT 1000")
                    .bind(after)
                    .fetch_all(self.pool())
                    .await?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                let (e, mac) = row_entry(r)?;
                after = e.seq;
                count += 1;
                let mut gap = false;
                if e.seq > expected_seq {
                    gap = true;
                    problems.push(AuditProblem {
                        seq: expected_seq,
                        kind: AuditProblemKind::Deleted,
                        message: if e.seq - 1 == expected_seq {
                            format!("entry {expected_seq} was deleted")
                        } else {
                            format!("entries {expected_seq} to {} were deleted", e.seq - 1)
                        },
                    });
                }
                let recomputed = entry_hash(&e);
                let beyond_head = e.seq > head_seq;
                if recomputed != e.hash {
                    problems.push(AuditProblem {
                        seq: e.seq,
                        kind: AuditProblemKind::Edited,
                        message: format!("entry {} was edited: it does not match its hash", e.seq),
                    });
                } else if !cipher.verify_mac_hex(e.hash.as_bytes(), &mac) {
                    problems.push(AuditProblem {
                        seq: e.seq,
                        kind: if beyond_head {
                            AuditProblemKind::Inserted
                        } else {
                            AuditProblemKind::Edited
                        },
                        message: format!(
                            "entry {} was {} without the key: its signature does not match",
                            e.seq,
                            if beyond_head { "inserted" } else { "rewritten" }
                        ),
                    });
                } else if e.prev_hash != prev_hash && !gap {
                    problems.push(AuditProblem {
                        seq: e.seq,
                        kind: AuditProblemKind::Inserted,
                        message: format!(
                            "entry {} does not follow entry {}: the chain was re-linked",
                            e.seq,
                            e.seq - 1
                        ),
                    });
                }
                if beyond_head && head_ok {
                    problems.push(AuditProblem {
                        seq: e.seq,
                        kind: AuditProblemKind::Inserted,
                        message: format!(
                            "entry {} comes after the signed head (entry {head_seq}): inserted",
                            e.seq
                        ),
                    });
                }
                if e.seq == head_seq {
                    hash_at_head = Some(e.hash.clone());
                }
                if Some(e.seq) == file_seq {
                    hash_at_file = Some(e.hash.clone());
                }
                prev_hash = e.hash;
                expected_seq = e.seq + 1;
            }
        }
        let last = expected_seq - 1;
        if head_ok && head_seq > last {
            problems.push(AuditProblem {
                seq: last + 1,
                kind: AuditProblemKind::Deleted,
                message: format!(
                    "the newest entries ({} to {head_seq}) were deleted: the signed head says {head_seq}",
                    last + 1
                ),
            });
        } else if head_ok && head_seq > 0 {
            if let Some(h) = &hash_at_head {
                if *h != head_hash {
                    hashes_wanted.push((head_seq, head_hash.clone()));
                }
            }
        }
        for (seq, _) in hashes_wanted {
            problems.push(AuditProblem {
                seq,
                kind: AuditProblemKind::Edited,
                message: format!("entry {seq} differs from the signed head's"),
            });
        }
        if let Some((fseq, fhash)) = &file {
            if *fseq > head_seq {
                problems.push(AuditProblem {
                    seq: head_seq + 1,
                    kind: AuditProblemKind::Deleted,
                    message: format!(
                        "this server recorded entry {fseq}, but the log ends at {}: the newest \
                         entries were deleted and the head rolled back",
                        head_seq.min(last)
                    ),
                });
            } else if let Some(h) = &hash_at_file {
                if h != fhash {
                    problems.push(AuditProblem {
                        seq: *fseq,
                        kind: AuditProblemKind::Edited,
                        message: format!("entry {fseq} differs from the one this server recorded"),
                    });
                }
            }
        }
        problems.sort_by_key(|p| p.seq);
        problems.dedup();
        Ok(AuditReport {
            entries: count,
            head_seq,
            checked_data_dir_head: file.is_some(),
            problems,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys() {
        let v: Value = serde_json::json!({"b": 1, "a": {"d": [1, "x"], "c": null}});
        assert_eq!(canonical_json(&v), r#"{"a":{"c":null,"d":[1,"x"]},"b":1}"#);
    }
}
