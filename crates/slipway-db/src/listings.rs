//! The queries behind lists of many things at once (the web pages' projects and
//! pipeline lists), so that a page costs a fixed number of queries however many rows it
//! shows: the newest pipeline of each ref, the stage statuses of many pipelines in one query,
//! pipelines with the name of whoever triggered them, a user's roles in every project.

use crate::access::Role;
use crate::error::{Error, Result};
use crate::pipelines::{pipeline_from, Pipeline, PipelineQuery};
use crate::row::RowExt;
use crate::store::Store;
use crate::types::{PipelineId, ProjectId, UserId};
use serde::Serialize;
use slipway_core::schedule::JobStatus;
use std::collections::HashMap;

/// Ids bound per `IN (...)` list: well under SQLite's and PostgreSQL's parameter limits.
const IN_CHUNK: usize = 500;

/// A pipeline as lists show it, with the name of the user who triggered it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PipelineRow {
    #[serde(flatten)]
    pub pipeline: Pipeline,
    /// The triggering user's name (`None` for pushes without a known user, schedules,
    /// or a deleted user).
    pub username: Option<String>,
}

/// How many current jobs of a pipeline's stage are in one status: what a list's stage
/// summary (mini graph) needs, a few rows per pipeline instead of one per job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageStatus {
    pub pipeline_id: PipelineId,
    pub stage_index: usize,
    pub stage: String,
    pub status: JobStatus,
    pub allow_failure: bool,
    pub jobs: i64,
}

fn row_from(r: &sqlx::any::AnyRow) -> Result<PipelineRow> {
    Ok(PipelineRow {
        pipeline: pipeline_from(r)?,
        username: r.opt_text("trigger_username")?,
    })
}

/// `$first, $first+1, ...` for `n` ids.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Store {
    /// [`Store::pipelines`] with the triggering user's name, newest first.
    pub async fn pipeline_rows(&self, q: &PipelineQuery) -> Result<Vec<PipelineRow>> {
        let rows = sqlx::query(
            "SELECT p.*, u.username AS trigger_username FROM pipelines p \
             LEFT JOIN users u ON u.id = p.user_id \
             WHERE ($1 < 0 OR p.project_id = $1) AND ($2 = '' OR p.ref_name = $2) \
             AND ($3 = '' OR p.status = $3) AND ($4 < 0 OR p.id < $4) ORDER BY p.id DESC LIMIT $5",
        )
        .bind(q.project.map(|p| p.0).unwrap_or(-1))
        .bind(q.ref_name.clone().unwrap_or_default())
        .bind(q.status.map(|s| s.as_str()).unwrap_or(""))
        .bind(q.before.map(|p| p.0).unwrap_or(-1))
        .bind(q.limit.unwrap_or(50).clamp(1, 1000))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(row_from).collect()
    }

    /// One pipeline with the triggering user's name.
    pub async fn pipeline_row(&self, id: PipelineId) -> Result<PipelineRow> {
        let r = sqlx::query(
            "SELECT p.*, u.username AS trigger_username FROM pipelines p \
             LEFT JOIN users u ON u.id = p.user_id WHERE p.id = $1",
        )
        .bind(id.0)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| Error::not_found("pipeline", id))?;
        row_from(&r)
    }

    /// The newest pipeline of each ref (branch or tag) of `project`, newest first, at
    /// most `limit`: the project's branches as a list shows them.
    pub async fn latest_pipeline_per_ref(
        &self,
        project: ProjectId,
        limit: i64,
    ) -> Result<Vec<PipelineRow>> {
        let rows = sqlx::query(
            "SELECT p.*, u.username AS trigger_username FROM pipelines p \
             LEFT JOIN users u ON u.id = p.user_id \
             WHERE p.id IN (SELECT MAX(id) FROM pipelines WHERE project_id = $1 \
             GROUP BY ref_name, is_tag) ORDER BY p.id DESC LIMIT $2",
        )
        .bind(project.0)
        .bind(limit.clamp(1, 1000))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(row_from).collect()
    }

    /// For every project, its newest pipeline on its default branch (projects without
    /// one are absent).
    pub async fn latest_default_branch_pipelines(&self) -> Result<HashMap<ProjectId, Pipeline>> {
        let rows = sqlx::query(
            "SELECT * FROM pipelines WHERE id IN (SELECT MAX(p.id) FROM pipelines p \
             JOIN projects r ON r.id = p.project_id \
             WHERE p.ref_name = r.default_branch AND p.is_tag = 0 GROUP BY p.project_id)",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| pipeline_from(r).map(|p| (p.project_id, p)))
            .collect()
    }

    /// The stage statuses of each pipeline in `pipelines` (current attempts, counted by
    /// stage, status and `allow_failure`), by stage, in one query per 500 pipelines.
    pub async fn stage_statuses(
        &self,
        pipelines: &[PipelineId],
    ) -> Result<HashMap<PipelineId, Vec<StageStatus>>> {
        let mut out: HashMap<PipelineId, Vec<StageStatus>> = HashMap::new();
        for ids in pipelines.chunks(IN_CHUNK) {
            let sql = format!(
                "SELECT pipeline_id, stage_index, stage, status, allow_failure, COUNT(*) AS n \
                 FROM jobs WHERE retried = 0 AND pipeline_id IN ({}) \
                 GROUP BY pipeline_id, stage_index, stage, status, allow_failure \
                 ORDER BY pipeline_id, stage_index, stage, status, allow_failure",
                placeholders(1, ids.len())
            );
            let mut q = sqlx::query(&sql);
            for id in ids {
                q = q.bind(id.0);
            }
            for r in q.fetch_all(self.pool()).await? {
                let status = r.text("status")?;
                let s = StageStatus {
                    pipeline_id: PipelineId(r.i64("pipeline_id")?),
                    stage_index: r.i64("stage_index")?.max(0) as usize,
                    stage: r.text("stage")?,
                    status: JobStatus::parse(&status)
                        .ok_or_else(|| Error::Corrupt(format!("job status {status:?}")))?,
                    allow_failure: r.flag("allow_failure")?,
                    jobs: r.i64("n")?,
                };
                out.entry(s.pipeline_id).or_default().push(s);
            }
        }
        Ok(out)
    }

    /// The user's role in every project they are a member of.
    pub async fn member_roles(&self, user: UserId) -> Result<HashMap<ProjectId, Role>> {
        let rows = sqlx::query("SELECT project_id, role FROM project_members WHERE user_id = $1")
            .bind(user.0)
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                let s = r.text("role")?;
                Ok((
                    ProjectId(r.i64("project_id")?),
                    Role::parse(&s).ok_or_else(|| Error::Corrupt(format!("role {s:?}")))?,
                ))
            })
            .collect()
    }

    /// Names of the given users (unknown ids are absent).
    pub async fn usernames(&self, users: &[UserId]) -> Result<HashMap<UserId, String>> {
        let mut out = HashMap::new();
        for ids in users.chunks(IN_CHUNK) {
            let sql = format!(
                "SELECT id, username FROM users WHERE id IN ({})",
                placeholders(1, ids.len())
            );
            let mut q = sqlx::query(&sql);
            for id in ids {
                q = q.bind(id.0);
            }
            for r in q.fetch_all(self.pool()).await? {
                out.insert(UserId(r.i64("id")?), r.text("username")?);
            }
        }
        Ok(out)
    }
}
