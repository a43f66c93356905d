//! Pipeline trigger tokens and schedules. Cron expressions are stored as written; the
//! server computes run times (the store only keeps `next_run_at` and hands each due run
//! to exactly one server).

use crate::audit::{append, Actor};
use crate::crypto::{new_token, token_hash};
use crate::error::{Error, Result};
use crate::row::{flag, to_json, RowExt};
use crate::store::Store;
use crate::types::{
    PipelineId, ProjectId, ScheduleId, SecretString, Timestamp, TriggerTokenId, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Prefix of trigger tokens (GitLab's are `glptt-`).
pub const TRIGGER_TOKEN_PREFIX: &str = "slwtrig_";

/// A variable given with a trigger, a schedule or a played job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

impl KeyValue {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.into(),
        }
    }
}

/// A trigger token as listed: never the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TriggerToken {
    pub id: TriggerTokenId,
    pub project_id: ProjectId,
    pub description: String,
    pub owner_id: Option<UserId>,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Schedule {
    pub id: ScheduleId,
    pub project_id: ProjectId,
    pub description: String,
    /// Cron syntax as GitLab takes it (`0 2 * * *`).
    pub cron: String,
    pub cron_timezone: String,
    pub ref_name: String,
    pub variables: Vec<KeyValue>,
    pub next_run_at: Timestamp,
    pub active: bool,
    /// Pipelines run as this user (GitLab's schedule owner).
    pub owner_id: Option<UserId>,
    pub last_pipeline_id: Option<PipelineId>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct NewSchedule {
    pub description: String,
    pub cron: String,
    pub cron_timezone: String,
    pub ref_name: String,
    pub variables: Vec<KeyValue>,
    /// Computed by the caller from `cron`.
    pub next_run_at: Timestamp,
    pub active: bool,
    pub owner_id: Option<UserId>,
}

/// Changes to a schedule; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ScheduleUpdate {
    pub description: Option<String>,
    /// With a new cron, give the new `next_run_at` too.
    pub cron: Option<String>,
    pub cron_timezone: Option<String>,
    pub ref_name: Option<String>,
    pub variables: Option<Vec<KeyValue>>,
    pub next_run_at: Option<Timestamp>,
    pub active: Option<bool>,
    pub owner_id: Option<Option<UserId>>,
}

fn token_from(r: &sqlx::any::AnyRow) -> Result<TriggerToken> {
    Ok(TriggerToken {
        id: TriggerTokenId(r.i64("id")?),
        project_id: ProjectId(r.i64("project_id")?),
        description: r.text("description")?,
        owner_id: r.opt_i64("owner_id")?.map(UserId),
        created_at: r.ts("created_at")?,
        last_used_at: r.opt_ts("last_used_at")?,
        revoked_at: r.opt_ts("revoked_at")?,
    })
}

fn schedule_from(r: &sqlx::any::AnyRow) -> Result<Schedule> {
    Ok(Schedule {
        id: ScheduleId(r.i64("id")?),
        project_id: ProjectId(r.i64("project_id")?),
        description: r.text("description")?,
        cron: r.text("cron")?,
        cron_timezone: r.text("cron_timezone")?,
        ref_name: r.text("ref_name")?,
        variables: r.json("variables")?,
        next_run_at: r.ts("next_run_at")?,
        active: r.flag("active")?,
        owner_id: r.opt_i64("owner_id")?.map(UserId),
        last_pipeline_id: r.opt_i64("last_pipeline_id")?.map(PipelineId),
        created_at: r.ts("created_at")?,
        updated_at: r.ts("updated_at")?,
    })
}

fn validate_cron(c: &str) -> Result<()> {
    let fields = c.split_whitespace().count();
    if !(5..=6).contains(&fields) && !c.trim().starts_with('@') {
        return Err(Error::invalid(
            "cron",
            format!("{c:?}: expected 5 fields (minute hour day month weekday)"),
        ));
    }
    Ok(())
}

fn validate_ref(r: &str) -> Result<()> {
    if r.is_empty() || r.len() > 255 || r.chars().any(|c| c.is_control() || c == ' ') {
        return Err(Error::invalid(
            "ref",
            format!("{r:?} is not a branch or tag name"),
        ));
    }
    Ok(())
}

impl Store {
    /// Creates a trigger token; the token is returned here only.
    pub async fn create_trigger_token(
        &self,
        actor: &Actor,
        project: ProjectId,
        description: &str,
    ) -> Result<(SecretString, TriggerToken)> {
        let token = new_token(TRIGGER_TOKEN_PREFIX);
        let mut tx = self.write().await?;
        let now = tx.now();
        let r = sqlx::query(
            "INSERT INTO trigger_tokens (project_id, description, token_hash, owner_id, created_at) \
             VALUES ($1, $2, $3, $4, $5) RETURNING *",
        )
        .bind(project.0)
        .bind(description)
        .bind(token_hash(token.expose()))
        .bind(actor.user_id.map(|u| u.0))
        .bind(now.0)
        .fetch_one(tx.conn())
        .await?;
        let t = token_from(&r)?;
        append(
            &mut tx,
            actor,
            "trigger_token.create",
            "project",
            &project.to_string(),
            json!({"id": t.id.0, "description": description}),
        )
        .await?;
        tx.commit().await?;
        Ok((token, t))
    }

    pub async fn trigger_tokens(&self, project: ProjectId) -> Result<Vec<TriggerToken>> {
        let rows = sqlx::query("SELECT * FROM trigger_tokens WHERE project_id = $1 ORDER BY id")
            .bind(project.0)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(token_from).collect()
    }

    pub async fn revoke_trigger_token(&self, actor: &Actor, id: TriggerTokenId) -> Result<()> {
        let mut tx = self.write().await?;
        let now = tx.now();
        let r = sqlx::query("UPDATE trigger_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL RETURNING project_id")
            .bind(now.0)
            .bind(id.0)
            .fetch_optional(tx.conn())
            .await?
            .ok_or_else(|| Error::not_found("active trigger token", id))?;
        let project = r.i64("project_id")?;
        append(
            &mut tx,
            actor,
            "trigger_token.revoke",
            "project",
            &project.to_string(),
            json!({"id": id.0}),
        )
        .await?;
        tx.commit().await
    }

    /// The token's record if `token` is a valid (unrevoked) trigger token of `project`.
    pub async fn authenticate_trigger_token(
        &self,
        project: ProjectId,
        token: &str,
    ) -> Result<Option<TriggerToken>> {
        let r = sqlx::query("SELECT * FROM trigger_tokens WHERE token_hash = $1 AND project_id = $2 AND revoked_at IS NULL")
            .bind(token_hash(token))
            .bind(project.0)
            .fetch_optional(self.pool())
            .await?;
        let Some(r) = r else { return Ok(None) };
        let t = token_from(&r)?;
        let mut tx = self.write().await?;
        sqlx::query("UPDATE trigger_tokens SET last_used_at = $1 WHERE id = $2")
            .bind(tx.now().0)
            .bind(t.id.0)
            .execute(tx.conn())
            .await?;
        tx.commit().await?;
        Ok(Some(t))
    }

    pub async fn create_schedule(
        &self,
        actor: &Actor,
        project: ProjectId,
        s: NewSchedule,
    ) -> Result<Schedule> {
        validate_cron(&s.cron)?;
        validate_ref(&s.ref_name)?;
        let mut tx = self.write().await?;
        let now = tx.now();
        let r = sqlx::query(
            "INSERT INTO schedules (project_id, description, cron, cron_timezone, ref_name, variables, \
             next_run_at, active, owner_id, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) RETURNING *",
        )
        .bind(project.0)
        .bind(&s.description)
        .bind(&s.cron)
        .bind(&s.cron_timezone)
        .bind(&s.ref_name)
        .bind(to_json(&s.variables)?)
        .bind(s.next_run_at.0)
        .bind(flag(s.active))
        .bind(s.owner_id.map(|u| u.0))
        .bind(now.0)
        .fetch_one(tx.conn())
        .await?;
        let sch = schedule_from(&r)?;
        append(
            &mut tx,
            actor,
            "schedule.create",
            "schedule",
            &sch.id.to_string(),
            json!({"project": project.0, "cron": s.cron, "ref": s.ref_name}),
        )
        .await?;
        tx.commit().await?;
        Ok(sch)
    }

    pub async fn schedule(&self, id: ScheduleId) -> Result<Schedule> {
        let r = sqlx::query("SELECT * FROM schedules WHERE id = $1")
            .bind(id.0)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| Error::not_found("schedule", id))?;
        schedule_from(&r)
    }

    pub async fn schedules(&self, project: ProjectId) -> Result<Vec<Schedule>> {
        let rows = sqlx::query("SELECT * FROM schedules WHERE project_id = $1 ORDER BY id")
            .bind(project.0)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(schedule_from).collect()
    }

    pub async fn update_schedule(
        &self,
        actor: &Actor,
        id: ScheduleId,
        u: ScheduleUpdate,
    ) -> Result<Schedule> {
        if let Some(c) = &u.cron {
            validate_cron(c)?;
        }
        if let Some(r) = &u.ref_name {
            validate_ref(r)?;
        }
        let cur = self.schedule(id).await?;
        let mut tx = self.write().await?;
        let now = tx.now();
        let r = sqlx::query(
            "UPDATE schedules SET description = $1, cron = $2, cron_timezone = $3, ref_name = $4, \
             variables = $5, next_run_at = $6, active = $7, owner_id = $8, updated_at = $9 \
             WHERE id = $10 RETURNING *",
        )
        .bind(u.description.clone().unwrap_or(cur.description))
        .bind(u.cron.clone().unwrap_or(cur.cron))
        .bind(u.cron_timezone.clone().unwrap_or(cur.cron_timezone))
        .bind(u.ref_name.clone().unwrap_or(cur.ref_name))
        .bind(to_json(&u.variables.clone().unwrap_or(cur.variables))?)
        .bind(u.next_run_at.unwrap_or(cur.next_run_at).0)
        .bind(flag(u.active.unwrap_or(cur.active)))
        .bind(u.owner_id.unwrap_or(cur.owner_id).map(|o| o.0))
        .bind(now.0)
        .bind(id.0)
        .fetch_optional(tx.conn())
        .await?
        .ok_or_else(|| Error::not_found("schedule", id))?;
        let sch = schedule_from(&r)?;
        append(
            &mut tx,
            actor,
            "schedule.update",
            "schedule",
            &id.to_string(),
            json!({"cron": u.cron, "ref": u.ref_name, "active": u.active}),
        )
        .await?;
        tx.commit().await?;
        Ok(sch)
    }

    pub async fn delete_schedule(&self, actor: &Actor, id: ScheduleId) -> Result<()> {
        let mut tx = self.write().await?;
        let n = sqlx::query("DELETE FROM schedules WHERE id = $1")
            .bind(id.0)
            .execute(tx.conn())
            .await?
            .rows_affected();
        if n == 0 {
            return Err(Error::not_found("schedule", id));
        }
        append(
            &mut tx,
            actor,
            "schedule.delete",
            "schedule",
            &id.to_string(),
            json!({}),
        )
        .await?;
        tx.commit().await
    }

    /// Active schedules whose `next_run_at` has come.
    pub async fn due_schedules(&self) -> Result<Vec<Schedule>> {
        let rows = sqlx::query("SELECT * FROM schedules WHERE active = 1 AND next_run_at <= $1 ORDER BY next_run_at, id")
            .bind(self.now().0)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(schedule_from).collect()
    }

    /// Takes the due run of `schedule` planned for `expected_next_run_at` and moves the
    /// schedule to `next_run_at`. True for exactly one caller (compare-and-set), so with
    /// several servers each run starts one pipeline.
    pub async fn claim_schedule_run(
        &self,
        schedule: ScheduleId,
        expected_next_run_at: Timestamp,
        next_run_at: Timestamp,
    ) -> Result<bool> {
        let mut tx = self.write().await?;
        let now = tx.now();
        let n = sqlx::query("UPDATE schedules SET next_run_at = $1, updated_at = $2 WHERE id = $3 AND next_run_at = $4 AND active = 1")
            .bind(next_run_at.0)
            .bind(now.0)
            .bind(schedule.0)
            .bind(expected_next_run_at.0)
            .execute(tx.conn())
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }
}
