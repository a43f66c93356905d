//! Project CI/CD variables and secrets, and webhook secrets.
//!
//! A plain variable's value is stored and listed as is. A secret's value is sealed (see
//! [`crate::crypto`]) and never leaves the store except through
//! [`Store::variables_for_job`], which the server calls to run a job, and
//! [`Store::webhook_secret`], which it calls to check a delivery's signature.
//! `masked` and `protected` follow GitLab: masked values are hidden in job logs;
//! protected ones reach only pipelines on protected branches and tags.

use crate::audit::{append, Actor};
use crate::error::{Error, Result};
use crate::row::{flag, RowExt};
use crate::store::Store;
use crate::types::{ProjectId, SecretString, Timestamp};
use serde::Serialize;
use serde_json::json;

/// A variable to create or replace.
#[derive(Debug, Clone)]
pub struct VariableInput {
    pub key: String,
    pub value: SecretString,
    /// Seal the value; listings then never show it.
    pub secret: bool,
    pub masked: bool,
    pub protected: bool,
    /// GitLab's `raw`: `$` references in the value are not expanded.
    pub raw: bool,
    /// GitLab's `file` type: the job gets a path to a file holding the value.
    pub file: bool,
    /// `*`, an environment name, or a wildcard like `review/*`.
    pub environment_scope: String,
    pub description: String,
}

impl VariableInput {
    pub fn plain(key: impl Into<String>, value: impl Into<String>) -> VariableInput {
        VariableInput {
            key: key.into(),
            value: SecretString::new(value.into()),
            secret: false,
            masked: false,
            protected: false,
            raw: false,
            file: false,
            environment_scope: "*".into(),
            description: String::new(),
        }
    }

    /// A sealed, masked variable.
    pub fn secret(key: impl Into<String>, value: impl Into<String>) -> VariableInput {
        VariableInput {
            secret: true,
            masked: true,
            ..VariableInput::plain(key, value)
        }
    }
}

/// A variable as listed: a secret's value is absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Variable {
    pub key: String,
    /// `None` for secrets.
    pub value: Option<String>,
    pub secret: bool,
    pub masked: bool,
    pub protected: bool,
    pub raw: bool,
    pub file: bool,
    pub environment_scope: String,
    pub description: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A variable with its clear value, for running a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobVariable {
    pub key: String,
    pub value: SecretString,
    pub masked: bool,
    pub raw: bool,
    pub file: bool,
    pub secret: bool,
}

/// Webhook formats the server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookProvider {
    Github,
    Gitlab,
    Gitea,
}

impl WebhookProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookProvider::Github => "github",
            WebhookProvider::Gitlab => "gitlab",
            WebhookProvider::Gitea => "gitea",
        }
    }

    pub fn parse(s: &str) -> Option<WebhookProvider> {
        match s {
            "github" => Some(WebhookProvider::Github),
            "gitlab" => Some(WebhookProvider::Gitlab),
            "gitea" => Some(WebhookProvider::Gitea),
            _ => None,
        }
    }
}

/// A webhook as listed: never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Webhook {
    pub project_id: ProjectId,
    pub provider: WebhookProvider,
    pub active: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

fn validate_key(k: &str) -> Result<()> {
    if k.is_empty() || k.len() > 255 || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(Error::invalid(
            "variable key",
            format!("{k:?}: use 1 to 255 letters, digits and '_' (as GitLab does)"),
        ));
    }
    Ok(())
}

fn validate_scope(s: &str) -> Result<()> {
    if s.is_empty() || s.len() > 255 || s.chars().any(|c| c.is_control()) {
        return Err(Error::invalid(
            "environment scope",
            "use `*`, a name or a wildcard",
        ));
    }
    Ok(())
}

/// GitLab's rules for masked values: at least 8 characters, one line.
fn validate_masked(v: &str) -> Result<()> {
    if v.chars().count() < 8 {
        return Err(Error::invalid(
            "value",
            "a masked value must be at least 8 characters",
        ));
    }
    if v.contains(['\n', '\r']) {
        return Err(Error::invalid(
            "value",
            "a masked value must be a single line",
        ));
    }
    Ok(())
}

/// The row context a sealed value is bound to.
fn var_context(project: ProjectId, key: &str, scope: &str) -> String {
    format!("variable:{project}:{key}:{scope}")
}

fn webhook_context(project: ProjectId, provider: WebhookProvider) -> String {
    format!("webhook:{project}:{}", provider.as_str())
}

/// GitLab's environment scope match: `*` in the scope matches any characters.
pub fn scope_matches(scope: &str, environment: Option<&str>) -> bool {
    if scope == "*" {
        return true;
    }
    let Some(env) = environment else { return false };
    let parts: Vec<&str> = scope.split('*').collect();
    if parts.len() == 1 {
        return scope == env;
    }
    let mut rest = env;
    for (i, p) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(p) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(p);
        } else {
            match rest.find(p) {
                Some(at) => rest = &rest[at + p.len()..],
                None => return false,
            }
        }
    }
    true
}

fn variable_from(r: &sqlx::any::AnyRow) -> Result<Variable> {
    let secret = r.flag("is_secret")?;
    Ok(Variable {
        key: r.text("name")?,
        value: if secret { None } else { r.opt_text("value")? },
        secret,
        masked: r.flag("masked")?,
        protected: r.flag("protected")?,
        raw: r.flag("raw")?,
        file: r.flag("is_file")?,
        environment_scope: r.text("environment_scope")?,
        description: r.text("description")?,
        created_at: r.ts("created_at")?,
        updated_at: r.ts("updated_at")?,
    })
}

impl Store {
    /// Creates or replaces the variable `key` in `environment_scope`.
    pub async fn set_variable(
        &self,
        actor: &Actor,
        project: ProjectId,
        v: VariableInput,
    ) -> Result<Variable> {
        validate_key(&v.key)?;
        validate_scope(&v.environment_scope)?;
        if v.masked {
            validate_masked(v.value.expose())?;
        }
        let (value, sealed) = if v.secret {
            let sealed = self.cipher().seal_str(
                v.value.expose(),
                &var_context(project, &v.key, &v.environment_scope),
            )?;
            (None, Some(sealed))
        } else {
            (Some(v.value.expose().to_string()), None)
        };
        let mut tx = self.write().await?;
        let now = tx.now();
        let r = sqlx::query(
            "INSERT INTO project_variables (project_id, name, environment_scope, value, sealed, \
             is_secret, masked, protected, raw, is_file, description, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12) \
             ON CONFLICT (project_id, name, environment_scope) DO UPDATE SET \
             value = excluded.value, sealed = excluded.sealed, is_secret = excluded.is_secret, \
             masked = excluded.masked, protected = excluded.protected, raw = excluded.raw, \
             is_file = excluded.is_file, description = excluded.description, \
             updated_at = excluded.updated_at RETURNING *",
        )
        .bind(project.0)
        .bind(&v.key)
        .bind(&v.environment_scope)
        .bind(value)
        .bind(sealed)
        .bind(flag(v.secret))
        .bind(flag(v.masked))
        .bind(flag(v.protected))
        .bind(flag(v.raw))
        .bind(flag(v.file))
        .bind(&v.description)
        .bind(now.0)
        .fetch_one(tx.conn())
        .await;
        let r = match r {
            Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
                return Err(Error::not_found("project", project))
            }
            other => other?,
        };
        let var = variable_from(&r)?;
        append(
            &mut tx,
            actor,
            if v.secret {
                "secret.set"
            } else {
                "variable.set"
            },
            "project",
            &project.to_string(),
            json!({"key": v.key, "environment_scope": v.environment_scope, "masked": v.masked,
                   "protected": v.protected, "secret": v.secret}),
        )
        .await?;
        tx.commit().await?;
        Ok(var)
    }

    /// Every variable of the project, secrets without their values.
    pub async fn variables(&self, project: ProjectId) -> Result<Vec<Variable>> {
        let rows = sqlx::query(
            "SELECT * FROM project_variables WHERE project_id = $1 ORDER BY name, environment_scope",
        )
        .bind(project.0)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(variable_from).collect()
    }

    pub async fn delete_variable(
        &self,
        actor: &Actor,
        project: ProjectId,
        key: &str,
        environment_scope: &str,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        let r = sqlx::query(
            "DELETE FROM project_variables WHERE project_id = $1 AND name = $2 AND environment_scope = $3 \
             RETURNING is_secret",
        )
        .bind(project.0)
        .bind(key)
        .bind(environment_scope)
        .fetch_optional(tx.conn())
        .await?
        .ok_or_else(|| Error::not_found("variable", key))?;
        let secret = r.flag("is_secret")?;
        append(
            &mut tx,
            actor,
            if secret {
                "secret.delete"
            } else {
                "variable.delete"
            },
            "project",
            &project.to_string(),
            json!({"key": key, "environment_scope": environment_scope}),
        )
        .await?;
        tx.commit().await
    }

    /// The variables a job of `project` gets, decrypted: protected ones only when the
    /// pipeline runs for a protected ref; per key, the most specific matching
    /// environment scope wins (exact name, then wildcard, then `*`).
    pub async fn variables_for_job(
        &self,
        project: ProjectId,
        protected_ref: bool,
        environment: Option<&str>,
    ) -> Result<Vec<JobVariable>> {
        let rows =
            sqlx::query("SELECT * FROM project_variables WHERE project_id = $1 ORDER BY name")
                .bind(project.0)
                .fetch_all(self.pool())
                .await?;
        let mut best: std::collections::BTreeMap<String, (u8, JobVariable)> = Default::default();
        for r in &rows {
            let key = r.text("name")?;
            let scope = r.text("environment_scope")?;
            if r.flag("protected")? && !protected_ref {
                continue;
            }
            if !scope_matches(&scope, environment) {
                continue;
            }
            let rank = if scope == "*" {
                0
            } else if scope.contains('*') {
                1
            } else {
                2
            };
            if best.get(&key).is_some_and(|(b, _)| *b >= rank) {
                continue;
            }
            let secret = r.flag("is_secret")?;
            let value = if secret {
                let sealed = r
                    .opt_blob("sealed")?
                    .ok_or_else(|| Error::Corrupt(format!("secret {key} has no sealed value")))?;
                self.cipher()
                    .open_str(&sealed, &var_context(project, &key, &scope))?
            } else {
                SecretString::new(r.opt_text("value")?.unwrap_or_default())
            };
            let v = JobVariable {
                key: key.clone(),
                value,
                masked: r.flag("masked")?,
                raw: r.flag("raw")?,
                file: r.flag("is_file")?,
                secret,
            };
            best.insert(key, (rank, v));
        }
        Ok(best.into_values().map(|(_, v)| v).collect())
    }

    /// Creates or replaces the project's webhook secret for `provider` (GitHub's and
    /// Gitea's HMAC secret, GitLab's token).
    pub async fn set_webhook(
        &self,
        actor: &Actor,
        project: ProjectId,
        provider: WebhookProvider,
        secret: &SecretString,
        active: bool,
    ) -> Result<Webhook> {
        if secret.expose().len() < 8 {
            return Err(Error::invalid(
                "webhook secret",
                "must be at least 8 characters",
            ));
        }
        let sealed = self
            .cipher()
            .seal_str(secret.expose(), &webhook_context(project, provider))?;
        let mut tx = self.write().await?;
        let now = tx.now();
        let r = sqlx::query(
            "INSERT INTO project_webhooks (project_id, provider, sealed_secret, active, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (project_id, provider) DO UPDATE SET \
             sealed_secret = excluded.sealed_secret, active = excluded.active, updated_at = excluded.updated_at \
             RETURNING *",
        )
        .bind(project.0)
        .bind(provider.as_str())
        .bind(sealed)
        .bind(flag(active))
        .bind(now.0)
        .fetch_one(tx.conn())
        .await?;
        let hook = webhook_from(&r)?;
        append(
            &mut tx,
            actor,
            "webhook.set",
            "project",
            &project.to_string(),
            json!({"provider": provider.as_str(), "active": active}),
        )
        .await?;
        tx.commit().await?;
        Ok(hook)
    }

    pub async fn webhooks(&self, project: ProjectId) -> Result<Vec<Webhook>> {
        let rows =
            sqlx::query("SELECT * FROM project_webhooks WHERE project_id = $1 ORDER BY provider")
                .bind(project.0)
                .fetch_all(self.pool())
                .await?;
        rows.iter().map(webhook_from).collect()
    }

    /// The secret to verify a delivery with; `None` when no active webhook is set.
    pub async fn webhook_secret(
        &self,
        project: ProjectId,
        provider: WebhookProvider,
    ) -> Result<Option<SecretString>> {
        let r = sqlx::query(
            "SELECT sealed_secret FROM project_webhooks WHERE project_id = $1 AND provider = $2 AND active = 1",
        )
        .bind(project.0)
        .bind(provider.as_str())
        .fetch_optional(self.pool())
        .await?;
        match r {
            Some(r) => Ok(Some(self.cipher().open_str(
                &r.blob("sealed_secret")?,
                &webhook_context(project, provider),
            )?)),
            None => Ok(None),
        }
    }

    pub async fn delete_webhook(
        &self,
        actor: &Actor,
        project: ProjectId,
        provider: WebhookProvider,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        let n = sqlx::query("DELETE FROM project_webhooks WHERE project_id = $1 AND provider = $2")
            .bind(project.0)
            .bind(provider.as_str())
            .execute(tx.conn())
            .await?
            .rows_affected();
        if n == 0 {
            return Err(Error::not_found("webhook", provider.as_str()));
        }
        append(
            &mut tx,
            actor,
            "webhook.delete",
            "project",
            &project.to_string(),
            json!({"provider": provider.as_str()}),
        )
        .await?;
        tx.commit().await
    }
}

fn webhook_from(r: &sqlx::any::AnyRow) -> Result<Webhook> {
    let p = r.text("provider")?;
    Ok(Webhook {
        project_id: ProjectId(r.i64("project_id")?),
        provider: WebhookProvider::parse(&p)
            .ok_or_else(|| Error::Corrupt(format!("provider {p:?}")))?,
        active: r.flag("active")?,
        created_at: r.ts("created_at")?,
        updated_at: r.ts("updated_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::scope_matches;

    #[test]
    fn environment_scopes() {
        assert!(scope_matches("*", None));
        assert!(scope_matches("*", Some("production")));
        assert!(scope_matches("production", Some("production")));
        assert!(!scope_matches("production", Some("staging")));
        assert!(!scope_matches("production", None));
        assert!(scope_matches("review/*", Some("review/feature-1")));
        assert!(!scope_matches("review/*", Some("staging")));
        assert!(scope_matches("*-eu", Some("prod-eu")));
        assert!(scope_matches("a*b*c", Some("axxbyyc")));
        assert!(!scope_matches("a*b*c", Some("axxcyyb")));
    }
}
