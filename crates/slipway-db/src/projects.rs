//! Projects: a repository (local path, bare or not, or clone URL) with its default
//! branch, polling interval and settings; and the polling bookkeeping.

use crate::audit::{append, Actor};
use crate::error::{conflict_on_unique, Error, Result};
use crate::row::{to_json, RowExt};
use crate::store::Store;
use crate::types::{ProjectId, Timestamp};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Project {
    pub id: ProjectId,
    pub name: String,
    /// A local path (bare or not) or a clone URL.
    pub repository: String,
    pub default_branch: String,
    /// How often a remote repository is polled; `None`: not polled (hook or webhook).
    #[serde(serialize_with = "ser_secs")]
    pub poll_interval: Option<Duration>,
    pub last_polled_at: Option<Timestamp>,
    /// Free-form settings the server owns (a JSON object).
    pub settings: Value,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

fn ser_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs()),
        None => s.serialize_none(),
    }
}

/// A project to create.
#[derive(Debug, Clone)]
pub struct NewProject {
    pub name: String,
    pub repository: String,
    pub default_branch: String,
    pub poll_interval: Option<Duration>,
    pub settings: Value,
}

impl NewProject {
    pub fn new(name: impl Into<String>, repository: impl Into<String>) -> NewProject {
        NewProject {
            name: name.into(),
            repository: repository.into(),
            default_branch: "main".into(),
            poll_interval: None,
            settings: json!({}),
        }
    }
}

/// Changes to a project; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ProjectUpdate {
    pub repository: Option<String>,
    pub default_branch: Option<String>,
    /// `Some(None)` stops polling.
    pub poll_interval: Option<Option<Duration>>,
    pub settings: Option<Value>,
}

fn project_from(r: &sqlx::any::AnyRow) -> Result<Project> {
    Ok(Project {
        id: ProjectId(r.i64("id")?),
        name: r.text("name")?,
        repository: r.text("repository")?,
        default_branch: r.text("default_branch")?,
        poll_interval: r
            .opt_i64("poll_interval_secs")?
            .map(|s| Duration::from_secs(s.max(0) as u64)),
        last_polled_at: r.opt_ts("last_polled_at")?,
        settings: r.json("settings")?,
        created_at: r.ts("created_at")?,
        updated_at: r.ts("updated_at")?,
    })
}

fn validate_branch(b: &str) -> Result<()> {
    if b.is_empty()
        || b.len() > 255
        || b.starts_with(['-', '/'])
        || b.ends_with(['/', '.'])
        || b.contains("..")
        || b.chars()
            .any(|c| c.is_control() || c == ' ' || "~^:?*[\\".contains(c))
    {
        return Err(Error::invalid(
            "default branch",
            format!("{b:?} is not a valid branch name"),
        ));
    }
    Ok(())
}

fn validate_repository(r: &str) -> Result<()> {
    if r.trim().is_empty() || r.len() > 4096 || r.chars().any(|c| c.is_control()) {
        return Err(Error::invalid(
            "repository",
            "give a local path or a clone URL",
        ));
    }
    Ok(())
}

fn poll_secs(d: Option<Duration>) -> Result<Option<i64>> {
    match d {
        Some(d) if d.as_secs() == 0 => Err(Error::invalid(
            "polling interval",
            "must be at least 1 second",
        )),
        Some(d) => Ok(Some(d.as_secs().min(i64::MAX as u64) as i64)),
        None => Ok(None),
    }
}

impl Store {
    pub async fn create_project(&self, actor: &Actor, p: NewProject) -> Result<Project> {
        crate::users::validate_name("project name", &p.name, 100)?;
        validate_repository(&p.repository)?;
        validate_branch(&p.default_branch)?;
        if !p.settings.is_object() {
            return Err(Error::invalid("settings", "must be a JSON object"));
        }
        let mut tx = self.write().await?;
        let now = tx.now();
        let r = sqlx::query(
            "INSERT INTO projects (name, repository, default_branch, poll_interval_secs, settings, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING *",
        )
        .bind(&p.name)
        .bind(&p.repository)
        .bind(&p.default_branch)
        .bind(poll_secs(p.poll_interval)?)
        .bind(to_json(&p.settings)?)
        .bind(now.0)
        .fetch_one(tx.conn())
        .await;
        let r = conflict_on_unique(r, || format!("project {:?} already exists", p.name))?;
        let project = project_from(&r)?;
        append(
            &mut tx,
            actor,
            "project.create",
            "project",
            &project.id.to_string(),
            json!({"name": p.name, "repository": p.repository, "default_branch": p.default_branch}),
        )
        .await?;
        tx.commit().await?;
        Ok(project)
    }

    pub async fn project(&self, id: ProjectId) -> Result<Project> {
        let r = sqlx::query("SELECT * FROM projects WHERE id = $1")
            .bind(id.0)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| Error::not_found("project", id))?;
        project_from(&r)
    }

    pub async fn project_by_name(&self, name: &str) -> Result<Option<Project>> {
        let r = sqlx::query("SELECT * FROM projects WHERE name = $1")
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        r.as_ref().map(project_from).transpose()
    }

    pub async fn projects(&self) -> Result<Vec<Project>> {
        let rows = sqlx::query("SELECT * FROM projects ORDER BY name")
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(project_from).collect()
    }

    pub async fn update_project(
        &self,
        actor: &Actor,
        id: ProjectId,
        u: ProjectUpdate,
    ) -> Result<Project> {
        if let Some(r) = &u.repository {
            validate_repository(r)?;
        }
        if let Some(b) = &u.default_branch {
            validate_branch(b)?;
        }
        if u.settings.as_ref().is_some_and(|s| !s.is_object()) {
            return Err(Error::invalid("settings", "must be a JSON object"));
        }
        let mut tx = self.write().await?;
        let now = tx.now();
        let cur = sqlx::query("SELECT * FROM projects WHERE id = $1")
            .bind(id.0)
            .fetch_optional(tx.conn())
            .await?
            .ok_or_else(|| Error::not_found("project", id))?;
        let cur = project_from(&cur)?;
        let mut changed = serde_json::Map::new();
        if let Some(r) = &u.repository {
            changed.insert("repository".into(), json!(r));
        }
        if let Some(b) = &u.default_branch {
            changed.insert("default_branch".into(), json!(b));
        }
        if let Some(p) = &u.poll_interval {
            changed.insert("poll_interval_secs".into(), json!(p.map(|d| d.as_secs())));
        }
        if u.settings.is_some() {
            changed.insert("settings".into(), json!(true));
        }
        let r = sqlx::query(
            "UPDATE projects SET repository = $1, default_branch = $2, poll_interval_secs = $3, \
             settings = $4, updated_at = $5 WHERE id = $6 RETURNING *",
        )
        .bind(u.repository.unwrap_or(cur.repository))
        .bind(u.default_branch.unwrap_or(cur.default_branch))
        .bind(poll_secs(u.poll_interval.unwrap_or(cur.poll_interval))?)
        .bind(to_json(&u.settings.unwrap_or(cur.settings))?)
        .bind(now.0)
        .bind(id.0)
        .fetch_one(tx.conn())
        .await?;
        let project = project_from(&r)?;
        append(
            &mut tx,
            actor,
            "project.update",
            "project",
            &id.to_string(),
            Value::Object(changed),
        )
        .await?;
        tx.commit().await?;
        Ok(project)
    }

    /// Deletes a project with its pipelines, jobs, logs, variables and artifact rows
    /// (the artifact blobs are collected by the artifact store's own expiry).
    pub async fn delete_project(&self, actor: &Actor, id: ProjectId) -> Result<()> {
        let mut tx = self.write().await?;
        let r = sqlx::query("DELETE FROM projects WHERE id = $1 RETURNING name")
            .bind(id.0)
            .fetch_optional(tx.conn())
            .await?
            .ok_or_else(|| Error::not_found("project", id))?;
        let name = r.text("name")?;
        append(
            &mut tx,
            actor,
            "project.delete",
            "project",
            &id.to_string(),
            json!({"name": name}),
        )
        .await?;
        tx.commit().await
    }

    /// Projects whose polling interval has passed since their last poll.
    pub async fn projects_due_for_poll(&self) -> Result<Vec<Project>> {
        let now = self.now();
        let rows = sqlx::query(
            "SELECT * FROM projects WHERE poll_interval_secs IS NOT NULL AND \
             (last_polled_at IS NULL OR last_polled_at + poll_interval_secs * 1000 <= $1) ORDER BY id",
        )
        .bind(now.0)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(project_from).collect()
    }

    /// The refs (`refs/heads/main` to commit SHA) seen at the last poll.
    pub async fn poll_refs(&self, id: ProjectId) -> Result<BTreeMap<String, String>> {
        let r = sqlx::query("SELECT poll_refs FROM projects WHERE id = $1")
            .bind(id.0)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| Error::not_found("project", id))?;
        r.json("poll_refs")
    }

    /// Records a poll and the refs it saw. Returns false if another server recorded a
    /// poll since `previous` (compare-and-set on `last_polled_at`), so only one server
    /// acts on a given change.
    pub async fn record_poll(
        &self,
        id: ProjectId,
        previous: Option<Timestamp>,
        refs: &BTreeMap<String, String>,
    ) -> Result<bool> {
        let mut tx = self.write().await?;
        let now = tx.now();
        let n = sqlx::query(
            "UPDATE projects SET last_polled_at = $1, poll_refs = $2 WHERE id = $3 AND \
             ((last_polled_at IS NULL AND $4 < 0) OR last_polled_at = $4)",
        )
        .bind(now.0)
        .bind(to_json(refs)?)
        .bind(id.0)
        .bind(previous.map(|t| t.0).unwrap_or(-1))
        .execute(tx.conn())
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }
}
