//! The artifacts index: which job produced which artifact of the runner's
//! content-addressed store, how big it is, when it expires, and whether something (a
//! deployment that may roll back to it) keeps it.

use crate::error::{Error, Result};
use crate::row::{flag, RowExt};
use crate::store::Store;
use crate::types::{ArtifactId, JobId, PipelineId, ProjectId, Timestamp};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Artifact {
    pub id: ArtifactId,
    pub job_id: JobId,
    pub pipeline_id: PipelineId,
    pub project_id: ProjectId,
    /// `archive` (artifacts:paths) or a report type (`junit`, `dotenv`, ...).
    pub file_type: String,
    pub name: String,
    /// The artifact's id in the runner's store (`slipway_runner::store`).
    pub store_id: String,
    pub size: i64,
    pub expire_at: Option<Timestamp>,
    pub keep: bool,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct NewArtifact {
    pub file_type: String,
    pub name: String,
    pub store_id: String,
    pub size: i64,
    pub expire_at: Option<Timestamp>,
}

fn artifact_from(r: &sqlx::any::AnyRow) -> Result<Artifact> {
    Ok(Artifact {
        id: ArtifactId(r.i64("id")?),
        job_id: JobId(r.i64("job_id")?),
        pipeline_id: PipelineId(r.i64("pipeline_id")?),
        project_id: ProjectId(r.i64("project_id")?),
        file_type: r.text("file_type")?,
        name: r.text("name")?,
        store_id: r.text("store_id")?,
        size: r.i64("size")?,
        expire_at: r.opt_ts("expire_at")?,
        keep: r.flag("keep")?,
        created_at: r.ts("created_at")?,
    })
}

impl Store {
    pub async fn add_artifact(&self, job: JobId, a: NewArtifact) -> Result<Artifact> {
        if a.store_id.is_empty() {
            return Err(Error::invalid("store id", "must not be empty"));
        }
        if a.size < 0 {
            return Err(Error::invalid("size", "must not be negative"));
        }
        let mut tx = self.write().await?;
        let now = tx.now();
        let r = sqlx::query(
            "INSERT INTO artifacts (job_id, pipeline_id, project_id, file_type, name, store_id, size, expire_at, \
             keep, created_at) SELECT id, pipeline_id, project_id, $1, $2, $3, $4, $5, 0, $6 FROM jobs WHERE id = $7 \
             RETURNING *",
        )
        .bind(&a.file_type)
        .bind(&a.name)
        .bind(&a.store_id)
        .bind(a.size)
        .bind(a.expire_at.map(|t| t.0))
        .bind(now.0)
        .bind(job.0)
        .fetch_optional(tx.conn())
        .await?
        .ok_or_else(|| Error::not_found("job", job))?;
        let art = artifact_from(&r)?;
        tx.commit().await?;
        Ok(art)
    }

    pub async fn artifact(&self, id: ArtifactId) -> Result<Artifact> {
        let r = sqlx::query("SELECT * FROM artifacts WHERE id = $1")
            .bind(id.0)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| Error::not_found("artifact", id))?;
        artifact_from(&r)
    }

    pub async fn job_artifacts(&self, job: JobId) -> Result<Vec<Artifact>> {
        let rows = sqlx::query("SELECT * FROM artifacts WHERE job_id = $1 ORDER BY id")
            .bind(job.0)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(artifact_from).collect()
    }

    pub async fn pipeline_artifacts(&self, pipeline: PipelineId) -> Result<Vec<Artifact>> {
        let rows = sqlx::query("SELECT * FROM artifacts WHERE pipeline_id = $1 ORDER BY id")
            .bind(pipeline.0)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(artifact_from).collect()
    }

    /// Pins or unpins an artifact (a kept artifact never expires).
    pub async fn set_artifact_keep(&self, id: ArtifactId, keep: bool) -> Result<()> {
        let mut tx = self.write().await?;
        let n = sqlx::query("UPDATE artifacts SET keep = $1 WHERE id = $2")
            .bind(flag(keep))
            .bind(id.0)
            .execute(tx.conn())
            .await?
            .rows_affected();
        if n == 0 {
            return Err(Error::not_found("artifact", id));
        }
        tx.commit().await
    }

    /// Artifacts past their `expire_at` and not kept.
    pub async fn expired_artifacts(&self, limit: i64) -> Result<Vec<Artifact>> {
        let rows = sqlx::query(
            "SELECT * FROM artifacts WHERE keep = 0 AND expire_at IS NOT NULL AND expire_at <= $1 ORDER BY expire_at LIMIT $2",
        )
        .bind(self.now().0)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(artifact_from).collect()
    }

    /// Drops index rows (after the blobs are gone). Kept artifacts are left alone.
    pub async fn delete_artifacts(&self, ids: &[ArtifactId]) -> Result<u64> {
        let mut tx = self.write().await?;
        let mut n = 0;
        for id in ids {
            n += sqlx::query("DELETE FROM artifacts WHERE id = $1 AND keep = 0")
                .bind(id.0)
                .execute(tx.conn())
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(n)
    }

    /// Store ids still referenced by some row (so the blob store keeps them).
    pub async fn referenced_store_ids(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT DISTINCT store_id FROM artifacts ORDER BY store_id")
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(|r| r.text("store_id")).collect()
    }
}
