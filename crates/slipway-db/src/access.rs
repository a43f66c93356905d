//! Roles per project and the one place that says which role may do what.
//!
//! | action | viewer | developer | maintainer | admin |
//! |---|---|---|---|---|
//! | view pipelines, jobs, logs, artifacts | yes | yes | yes | yes |
//! | trigger a pipeline | | yes | yes | yes |
//! | play, retry, cancel jobs and pipelines | | yes | yes | yes |
//! | manage settings, variables, secrets, webhooks, schedules, trigger tokens | | | yes | yes |
//! | manage members, delete the project | | | | yes |
//!
//! Instance administrators may do everything everywhere; disabled users nothing.

use crate::audit::{append, Actor};
use crate::error::{Error, Result};
use crate::row::RowExt;
use crate::store::Store;
use crate::types::{ProjectId, UserId};
use crate::users::User;
use serde::Serialize;
use serde_json::json;

/// A member's role in a project, from least to most trusted (GitLab's names, minus
/// reporter and guest, plus `admin` for the project's owners).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Developer,
    Maintainer,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Developer => "developer",
            Role::Maintainer => "maintainer",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "developer" => Some(Role::Developer),
            "maintainer" => Some(Role::Maintainer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// The least role that may perform `action`.
    pub fn required_for(action: Action) -> Role {
        match action {
            Action::View => Role::Viewer,
            Action::Trigger | Action::PlayJob | Action::RetryJob | Action::CancelJob => {
                Role::Developer
            }
            Action::ManageSettings | Action::ManageSecrets => Role::Maintainer,
            Action::ManageMembers | Action::DeleteProject => Role::Admin,
        }
    }

    pub fn allows(self, action: Action) -> bool {
        self >= Role::required_for(action)
    }
}

/// Something a user may want to do in a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// See the project, its pipelines, jobs, logs and artifacts.
    View,
    /// Start a pipeline (manual run, schedule ownership).
    Trigger,
    PlayJob,
    RetryJob,
    /// Cancel a job or a pipeline.
    CancelJob,
    /// Project settings, plain variables, webhooks, schedules, trigger tokens.
    ManageSettings,
    /// Secrets (and masked or protected variables).
    ManageSecrets,
    ManageMembers,
    DeleteProject,
}

/// The decision for a user whose role in the project is `role` (`None`: not a member).
pub fn permits(user: &User, role: Option<Role>, action: Action) -> bool {
    if user.disabled {
        return false;
    }
    if user.is_admin {
        return true;
    }
    role.is_some_and(|r| r.allows(action))
}

/// A member of a project as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    pub user_id: UserId,
    pub username: String,
    pub role: Role,
}

impl Store {
    /// Whether `user` may do `action` in `project`.
    pub async fn can(&self, user: &User, project: ProjectId, action: Action) -> Result<bool> {
        if user.disabled {
            return Ok(false);
        }
        if user.is_admin {
            return Ok(true);
        }
        let role = self.member_role(project, user.id).await?;
        Ok(permits(user, role, action))
    }

    /// [`Store::can`] as an error, for handlers that stop at the first refusal.
    pub async fn require(&self, user: &User, project: ProjectId, action: Action) -> Result<()> {
        if self.can(user, project, action).await? {
            Ok(())
        } else {
            Err(Error::Forbidden {
                user: user.username.clone(),
                action,
            })
        }
    }

    pub async fn member_role(&self, project: ProjectId, user: UserId) -> Result<Option<Role>> {
        let r =
            sqlx::query("SELECT role FROM project_members WHERE project_id = $1 AND user_id = $2")
                .bind(project.0)
                .bind(user.0)
                .fetch_optional(self.pool())
                .await?;
        match r {
            Some(r) => {
                let s = r.text("role")?;
                Role::parse(&s)
                    .map(Some)
                    .ok_or_else(|| Error::Corrupt(format!("role {s:?}")))
            }
            None => Ok(None),
        }
    }

    /// Adds a member or changes their role.
    pub async fn set_member(
        &self,
        actor: &Actor,
        project: ProjectId,
        user: UserId,
        role: Role,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO project_members (project_id, user_id, role) VALUES ($1, $2, $3) \
             ON CONFLICT (project_id, user_id) DO UPDATE SET role = excluded.role",
        )
        .bind(project.0)
        .bind(user.0)
        .bind(role.as_str())
        .execute(tx.conn())
        .await?;
        append(
            &mut tx,
            actor,
            "member.set",
            "project",
            &project.to_string(),
            json!({"user": user.0, "role": role.as_str()}),
        )
        .await?;
        tx.commit().await
    }

    pub async fn remove_member(
        &self,
        actor: &Actor,
        project: ProjectId,
        user: UserId,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        let n = sqlx::query("DELETE FROM project_members WHERE project_id = $1 AND user_id = $2")
            .bind(project.0)
            .bind(user.0)
            .execute(tx.conn())
            .await?
            .rows_affected();
        if n == 0 {
            return Err(Error::not_found(
                "member",
                format!("{user} of project {project}"),
            ));
        }
        append(
            &mut tx,
            actor,
            "member.remove",
            "project",
            &project.to_string(),
            json!({"user": user.0}),
        )
        .await?;
        tx.commit().await
    }

    pub async fn members(&self, project: ProjectId) -> Result<Vec<Member>> {
        let rows = sqlx::query(
            "SELECT m.user_id, m.role, u.username FROM project_members m \
             JOIN users u ON u.id = m.user_id WHERE m.project_id = $1 ORDER BY u.username",
        )
        .bind(project.0)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let s = r.text("role")?;
                Ok(Member {
                    user_id: UserId(r.i64("user_id")?),
                    username: r.text("username")?,
                    role: Role::parse(&s).ok_or_else(|| Error::Corrupt(format!("role {s:?}")))?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Timestamp;

    fn user(admin: bool, disabled: bool) -> User {
        User {
            id: UserId(1),
            username: "u".into(),
            is_admin: admin,
            disabled,
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
        }
    }

    #[test]
    fn role_matrix() {
        use Action::*;
        let all = [
            View,
            Trigger,
            PlayJob,
            RetryJob,
            CancelJob,
            ManageSettings,
            ManageSecrets,
            ManageMembers,
            DeleteProject,
        ];
        let allowed = |r: Role| {
            all.iter()
                .filter(|a| r.allows(**a))
                .copied()
                .collect::<Vec<_>>()
        };
        assert_eq!(allowed(Role::Viewer), vec![View]);
        assert_eq!(
            allowed(Role::Developer),
            vec![View, Trigger, PlayJob, RetryJob, CancelJob]
        );
        assert_eq!(
            allowed(Role::Maintainer),
            vec![
                View,
                Trigger,
                PlayJob,
                RetryJob,
                CancelJob,
                ManageSettings,
                ManageSecrets
            ]
        );
        assert_eq!(allowed(Role::Admin), all.to_vec());
        assert!(permits(&user(true, false), None, DeleteProject));
        assert!(!permits(&user(true, true), Some(Role::Admin), View));
        assert!(!permits(&user(false, false), None, View));
    }
}
