//! Users, UI sessions, personal API tokens and groups.

use crate::audit::{append, Actor};
use crate::crypto::{hash_password, new_token, token_hash, verify_password};
use crate::error::{conflict_on_unique, Error, Result};
use crate::row::{flag, RowExt};
use crate::store::Store;
use crate::types::{ApiTokenId, GroupId, SecretString, SessionId, Timestamp, UserId};
use serde::Serialize;
use serde_json::json;
use std::time::Duration;

/// Prefix of personal API tokens (like GitLab's `glpat-`), so leaked tokens are
/// recognisable by secret scanners.
pub const API_TOKEN_PREFIX: &str = "slwpat_";
pub const SESSION_TOKEN_PREFIX: &str = "slwsess_";

/// `last_used_at` of tokens is written at most this often (a write per API call would
/// cost an fsync each on SQLite).
const LAST_USED_GRANULARITY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub id: UserId,
    pub username: String,
    pub is_admin: bool,
    pub disabled: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Session {
    pub id: SessionId,
    pub user_id: UserId,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub last_seen_at: Timestamp,
}

/// What a personal API token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenScope {
    /// Everything the user may do (GitLab's `api`).
    Api,
    /// Read-only access (GitLab's `read_api`).
    ReadApi,
}

impl TokenScope {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenScope::Api => "api",
            TokenScope::ReadApi => "read_api",
        }
    }

    pub fn parse(s: &str) -> Option<TokenScope> {
        match s {
            "api" => Some(TokenScope::Api),
            "read_api" => Some(TokenScope::ReadApi),
            _ => None,
        }
    }
}

/// A personal API token as listed: never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiToken {
    pub id: ApiTokenId,
    pub user_id: UserId,
    pub name: String,
    pub scopes: Vec<TokenScope>,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
}

impl ApiToken {
    /// Whether the token allows mutating calls.
    pub fn can_write(&self) -> bool {
        self.scopes.contains(&TokenScope::Api)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Group {
    pub id: GroupId,
    pub name: String,
    pub created_at: Timestamp,
}

/// The first administrator, made on first start.
#[derive(Debug)]
pub struct FirstAdmin {
    pub user: User,
    /// Set when the caller gave no password: print it once.
    pub generated_password: Option<SecretString>,
}

pub(crate) fn validate_name(field: &'static str, s: &str, max: usize) -> Result<()> {
    if s.is_empty() || s.len() > max {
        return Err(Error::invalid(
            field,
            format!("must be 1 to {max} characters"),
        ));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || s.starts_with(['-', '.'])
    {
        return Err(Error::invalid(
            field,
            format!("{s:?}: use letters, digits, '-', '_' and '.', not starting with '-' or '.'"),
        ));
    }
    Ok(())
}

fn validate_password(p: &str) -> Result<()> {
    if p.chars().count() < 8 {
        return Err(Error::invalid("password", "must be at least 8 characters"));
    }
    if p.len() > 1024 {
        return Err(Error::invalid("password", "must be at most 1024 bytes"));
    }
    Ok(())
}

fn user_from(r: &sqlx::any::AnyRow) -> Result<User> {
    Ok(User {
        id: UserId(r.i64("id")?),
        username: r.text("username")?,
        is_admin: r.flag("is_admin")?,
        disabled: r.flag("disabled")?,
        created_at: r.ts("created_at")?,
        updated_at: r.ts("updated_at")?,
    })
}

fn token_from(r: &sqlx::any::AnyRow) -> Result<ApiToken> {
    let scopes: String = r.text("scopes")?;
    Ok(ApiToken {
        id: ApiTokenId(r.i64("id")?),
        user_id: UserId(r.i64("user_id")?),
        name: r.text("name")?,
        scopes: scopes
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| {
                TokenScope::parse(s).ok_or_else(|| Error::Corrupt(format!("token scope {s:?}")))
            })
            .collect::<Result<_>>()?,
        created_at: r.ts("created_at")?,
        last_used_at: r.opt_ts("last_used_at")?,
        expires_at: r.opt_ts("expires_at")?,
        revoked_at: r.opt_ts("revoked_at")?,
    })
}

async fn hash_blocking(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| Error::Task(e.to_string()))?
}

async fn verify_blocking(password: String, hash: String) -> Result<bool> {
    tokio::task::spawn_blocking(move || verify_password(&password, &hash))
        .await
        .map_err(|e| Error::Task(e.to_string()))
}

/// A valid Argon2 hash of nothing anyone knows: verifying against it when the user does
/// not exist keeps the time of a failed login independent of whether the name exists.
fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| hash_password(new_token("").expose()).unwrap_or_default())
}

impl Store {
    pub async fn create_user(
        &self,
        actor: &Actor,
        username: &str,
        password: &str,
        is_admin: bool,
    ) -> Result<User> {
        validate_name("username", username, 64)?;
        validate_password(password)?;
        let hash = hash_blocking(password.to_string()).await?;
        let mut tx = self.write().await?;
        let now = tx.now();
        let r = sqlx::query(
            "INSERT INTO users (username, password_hash, is_admin, disabled, created_at, updated_at) \
             VALUES ($1, $2, $3, 0, $4, $4) RETURNING *",
        )
        .bind(username)
        .bind(hash)
        .bind(flag(is_admin))
        .bind(now.0)
        .fetch_one(tx.conn())
        .await;
        let r = conflict_on_unique(r, || format!("user {username:?} already exists"))?;
        let user = user_from(&r)?;
        append(
            &mut tx,
            actor,
            "user.create",
            "user",
            &user.id.to_string(),
            json!({"username": username, "admin": is_admin}),
        )
        .await?;
        tx.commit().await?;
        Ok(user)
    }

    /// Creates the first administrator if there is no user at all; `None` otherwise.
    /// Without `password`, one is generated and returned once.
    pub async fn create_first_admin(
        &self,
        username: &str,
        password: Option<&str>,
    ) -> Result<Option<FirstAdmin>> {
        validate_name("username", username, 64)?;
        let (password, generated) = match password {
            Some(p) => (SecretString::new(p), None),
            None => {
                let p = new_token("");
                (
                    SecretString::new(&p.expose()[..24]),
                    Some(SecretString::new(&p.expose()[..24])),
                )
            }
        };
        validate_password(password.expose())?;
        let hash = hash_blocking(password.expose().to_string()).await?;
        let mut tx = self.write().await?;
        let now = tx.now();
        // One statement, so two servers starting together make one admin.
        let r = sqlx::query(
            "INSERT INTO users (username, password_hash, is_admin, disabled, created_at, updated_at) \
             SELECT $1, $2, 1, 0, $3, $3 WHERE NOT EXISTS (SELECT 1 FROM users) RETURNING *",
        )
        .bind(username)
        .bind(hash)
        .bind(now.0)
        .fetch_optional(tx.conn())
        .await;
        let r = match r {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => None,
            other => other?,
        };
        let Some(r) = r else {
            return Ok(None);
        };
        let user = user_from(&r)?;
        append(
            &mut tx,
            &Actor::system("server"),
            "user.create",
            "user",
            &user.id.to_string(),
            json!({"username": username, "admin": true, "first_admin": true}),
        )
        .await?;
        tx.commit().await?;
        Ok(Some(FirstAdmin {
            user,
            generated_password: generated,
        }))
    }

    pub async fn user(&self, id: UserId) -> Result<User> {
        let r = sqlx::query("SELECT * FROM users WHERE id = $1")
            .bind(id.0)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| Error::not_found("user", id))?;
        user_from(&r)
    }

    pub async fn user_by_name(&self, username: &str) -> Result<Option<User>> {
        let r = sqlx::query("SELECT * FROM users WHERE username = $1")
            .bind(username)
            .fetch_optional(self.pool())
            .await?;
        r.as_ref().map(user_from).transpose()
    }

    pub async fn users(&self) -> Result<Vec<User>> {
        let rows = sqlx::query("SELECT * FROM users ORDER BY username")
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(user_from).collect()
    }

    pub async fn user_count(&self) -> Result<i64> {
        let r = sqlx::query("SELECT COUNT(*) AS n FROM users")
            .fetch_one(self.pool())
            .await?;
        r.i64("n")
    }

    /// Checks a username and password. Disabled users and wrong passwords get `None`;
    /// nothing is recorded (see [`Store::login`] for the audited UI login).
    pub async fn check_password(&self, username: &str, password: &str) -> Result<Option<User>> {
        let r = sqlx::query("SELECT * FROM users WHERE username = $1")
            .bind(username)
            .fetch_optional(self.pool())
            .await?;
        let (user, hash) = match &r {
            Some(r) => (Some(user_from(r)?), r.text("password_hash")?),
            None => (None, dummy_hash().to_string()),
        };
        let ok = verify_blocking(password.to_string(), hash).await?;
        Ok(match user {
            Some(u) if ok && !u.disabled => Some(u),
            _ => None,
        })
    }

    /// Logs a user in: checks the password and opens a session of `ttl`. Success and
    /// failure are both audited (`user.login`, `user.login_failed`); `from` (an address)
    /// goes into the entry's details.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        ttl: Duration,
        from: &str,
    ) -> Result<Option<(SecretString, Session, User)>> {
        let Some(user) = self.check_password(username, password).await? else {
            let mut tx = self.write().await?;
            append(
                &mut tx,
                &Actor::system(format!("login:{username}")),
                "user.login_failed",
                "user",
                username,
                json!({"from": from}),
            )
            .await?;
            tx.commit().await?;
            return Ok(None);
        };
        let token = new_token(SESSION_TOKEN_PREFIX);
        let mut tx = self.write().await?;
        let now = tx.now();
        let r = sqlx::query(
            "INSERT INTO sessions (token_hash, user_id, created_at, expires_at, last_seen_at) \
             VALUES ($1, $2, $3, $4, $3) RETURNING *",
        )
        .bind(token_hash(token.expose()))
        .bind(user.id.0)
        .bind(now.0)
        .bind(now.plus(ttl).0)
        .fetch_one(tx.conn())
        .await?;
        let session = session_from(&r)?;
        append(
            &mut tx,
            &Actor::user(&user),
            "user.login",
            "user",
            &user.id.to_string(),
            json!({"from": from, "session": session.id.0}),
        )
        .await?;
        tx.commit().await?;
        Ok(Some((token, session, user)))
    }

    /// The session and user of a session token, if valid (not expired, user enabled).
    pub async fn session_user(&self, token: &str) -> Result<Option<(Session, User)>> {
        let now = self.now();
        let r = sqlx::query(
            "SELECT s.id AS s_id, s.user_id, s.created_at AS s_created, s.expires_at, \
             s.last_seen_at, u.* FROM sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.token_hash = $1",
        )
        .bind(token_hash(token))
        .fetch_optional(self.pool())
        .await?;
        let Some(r) = r else { return Ok(None) };
        let session = Session {
            id: SessionId(r.i64("s_id")?),
            user_id: UserId(r.i64("user_id")?),
            created_at: r.ts("s_created")?,
            expires_at: r.ts("expires_at")?,
            last_seen_at: r.ts("last_seen_at")?,
        };
        let user = user_from(&r)?;
        if session.expires_at <= now || user.disabled {
            return Ok(None);
        }
        if now.0 - session.last_seen_at.0 > LAST_USED_GRANULARITY.as_millis() as i64 {
            let mut tx = self.write().await?;
            sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE id = $2")
                .bind(now.0)
                .bind(session.id.0)
                .execute(tx.conn())
                .await?;
            tx.commit().await?;
        }
        Ok(Some((session, user)))
    }

    /// Ends a session (logout). Unknown tokens are ignored.
    pub async fn logout(&self, token: &str) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
            .bind(token_hash(token))
            .execute(tx.conn())
            .await?;
        tx.commit().await
    }

    /// Deletes expired sessions; returns how many.
    pub async fn delete_expired_sessions(&self) -> Result<u64> {
        let mut tx = self.write().await?;
        let n = sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
            .bind(tx.now().0)
            .execute(tx.conn())
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    pub async fn set_password(&self, actor: &Actor, user: UserId, password: &str) -> Result<()> {
        validate_password(password)?;
        let hash = hash_blocking(password.to_string()).await?;
        let mut tx = self.write().await?;
        let now = tx.now();
        let n = sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3")
            .bind(hash)
            .bind(now.0)
            .bind(user.0)
            .execute(tx.conn())
            .await?
            .rows_affected();
        if n == 0 {
            return Err(Error::not_found("user", user));
        }
        // A new password ends every session (as after a suspected compromise).
        sqlx::query("DELETE FROM sessions WHERE user_id = $1")
            .bind(user.0)
            .execute(tx.conn())
            .await?;
        append(
            &mut tx,
            actor,
            "user.password",
            "user",
            &user.to_string(),
            json!({}),
        )
        .await?;
        tx.commit().await
    }

    /// Enables or disables a user; disabling ends their sessions. Tokens stay but do not
    /// authenticate while the user is disabled.
    pub async fn set_user_disabled(
        &self,
        actor: &Actor,
        user: UserId,
        disabled: bool,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        let now = tx.now();
        let n = sqlx::query("UPDATE users SET disabled = $1, updated_at = $2 WHERE id = $3")
            .bind(flag(disabled))
            .bind(now.0)
            .bind(user.0)
            .execute(tx.conn())
            .await?
            .rows_affected();
        if n == 0 {
            return Err(Error::not_found("user", user));
        }
        if disabled {
            sqlx::query("DELETE FROM sessions WHERE user_id = $1")
                .bind(user.0)
                .execute(tx.conn())
                .await?;
        }
        append(
            &mut tx,
            actor,
            if disabled {
                "user.disable"
            } else {
                "user.enable"
            },
            "user",
            &user.to_string(),
            json!({}),
        )
        .await?;
        tx.commit().await
    }

    pub async fn set_user_admin(&self, actor: &Actor, user: UserId, is_admin: bool) -> Result<()> {
        let mut tx = self.write().await?;
        let now = tx.now();
        let n = sqlx::query("UPDATE users SET is_admin = $1, updated_at = $2 WHERE id = $3")
            .bind(flag(is_admin))
            .bind(now.0)
            .bind(user.0)
            .execute(tx.conn())
            .await?
            .rows_affected();
        if n == 0 {
            return Err(Error::not_found("user", user));
        }
        append(
            &mut tx,
            actor,
            "user.admin",
            "user",
            &user.to_string(),
            json!({"admin": is_admin}),
        )
        .await?;
        tx.commit().await
    }

    /// Creates a personal API token. The token is returned here only; the database keeps
    /// its hash.
    pub async fn create_api_token(
        &self,
        actor: &Actor,
        user: UserId,
        name: &str,
        scopes: &[TokenScope],
        expires_at: Option<Timestamp>,
    ) -> Result<(SecretString, ApiToken)> {
        if name.trim().is_empty() || name.len() > 255 {
            return Err(Error::invalid("token name", "must be 1 to 255 characters"));
        }
        if scopes.is_empty() {
            return Err(Error::invalid("scopes", "give at least one scope"));
        }
        let token = new_token(API_TOKEN_PREFIX);
        let scopes_text: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
        let mut tx = self.write().await?;
        let now = tx.now();
        let r = sqlx::query(
            "INSERT INTO api_tokens (user_id, name, token_hash, scopes, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
        )
        .bind(user.0)
        .bind(name)
        .bind(token_hash(token.expose()))
        .bind(scopes_text.join(","))
        .bind(now.0)
        .bind(expires_at.map(|t| t.0))
        .fetch_one(tx.conn())
        .await?;
        let info = token_from(&r)?;
        append(
            &mut tx,
            actor,
            "token.create",
            "api_token",
            &info.id.to_string(),
            json!({"user": user.0, "name": name, "scopes": scopes_text}),
        )
        .await?;
        tx.commit().await?;
        Ok((token, info))
    }

    pub async fn api_tokens(&self, user: UserId) -> Result<Vec<ApiToken>> {
        let rows = sqlx::query("SELECT * FROM api_tokens WHERE user_id = $1 ORDER BY id")
            .bind(user.0)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(token_from).collect()
    }

    pub async fn revoke_api_token(&self, actor: &Actor, id: ApiTokenId) -> Result<()> {
        let mut tx = self.write().await?;
        let now = tx.now();
        let n = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(now.0)
        .bind(id.0)
        .execute(tx.conn())
        .await?
        .rows_affected();
        if n == 0 {
            return Err(Error::not_found("active API token", id));
        }
        append(
            &mut tx,
            actor,
            "token.revoke",
            "api_token",
            &id.to_string(),
            json!({}),
        )
        .await?;
        tx.commit().await
    }

    /// The token and its user, if the token is valid (not revoked, not expired, user
    /// enabled). Records when it was last used (to the minute).
    pub async fn authenticate_api_token(&self, token: &str) -> Result<Option<(ApiToken, User)>> {
        let now = self.now();
        let r = sqlx::query("SELECT * FROM api_tokens WHERE token_hash = $1")
            .bind(token_hash(token))
            .fetch_optional(self.pool())
            .await?;
        let Some(r) = r else { return Ok(None) };
        let info = token_from(&r)?;
        if info.revoked_at.is_some() || info.expires_at.is_some_and(|e| e <= now) {
            return Ok(None);
        }
        let user = self.user(info.user_id).await?;
        if user.disabled {
            return Ok(None);
        }
        if info
            .last_used_at
            .is_none_or(|t| now.0 - t.0 > LAST_USED_GRANULARITY.as_millis() as i64)
        {
            let mut tx = self.write().await?;
            sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2")
                .bind(now.0)
                .bind(info.id.0)
                .execute(tx.conn())
                .await?;
            tx.commit().await?;
        }
        Ok(Some((info, user)))
    }

    pub async fn create_group(&self, actor: &Actor, name: &str) -> Result<Group> {
        validate_name("group name", name, 64)?;
        let mut tx = self.write().await?;
        let now = tx.now();
        let r = sqlx::query("INSERT INTO groups (name, created_at) VALUES ($1, $2) RETURNING *")
            .bind(name)
            .bind(now.0)
            .fetch_one(tx.conn())
            .await;
        let r = conflict_on_unique(r, || format!("group {name:?} already exists"))?;
        let g = Group {
            id: GroupId(r.i64("id")?),
            name: r.text("name")?,
            created_at: r.ts("created_at")?,
        };
        append(
            &mut tx,
            actor,
            "group.create",
            "group",
            &g.id.to_string(),
            json!({"name": name}),
        )
        .await?;
        tx.commit().await?;
        Ok(g)
    }

    pub async fn groups(&self) -> Result<Vec<Group>> {
        let rows = sqlx::query("SELECT * FROM groups ORDER BY name")
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Group {
                    id: GroupId(r.i64("id")?),
                    name: r.text("name")?,
                    created_at: r.ts("created_at")?,
                })
            })
            .collect()
    }

    pub async fn add_group_member(
        &self,
        actor: &Actor,
        group: GroupId,
        user: UserId,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO group_members (group_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(group.0)
        .bind(user.0)
        .execute(tx.conn())
        .await?;
        append(
            &mut tx,
            actor,
            "group.add_member",
            "group",
            &group.to_string(),
            json!({"user": user.0}),
        )
        .await?;
        tx.commit().await
    }

    pub async fn remove_group_member(
        &self,
        actor: &Actor,
        group: GroupId,
        user: UserId,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query("DELETE FROM group_members WHERE group_id = $1 AND user_id = $2")
            .bind(group.0)
            .bind(user.0)
            .execute(tx.conn())
            .await?;
        append(
            &mut tx,
            actor,
            "group.remove_member",
            "group",
            &group.to_string(),
            json!({"user": user.0}),
        )
        .await?;
        tx.commit().await
    }

    pub async fn group_members(&self, group: GroupId) -> Result<Vec<User>> {
        let rows = sqlx::query(
            "SELECT u.* FROM users u JOIN group_members m ON m.user_id = u.id \
             WHERE m.group_id = $1 ORDER BY u.username",
        )
        .bind(group.0)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(user_from).collect()
    }

    pub async fn user_groups(&self, user: UserId) -> Result<Vec<Group>> {
        let rows = sqlx::query(
            "SELECT g.* FROM groups g JOIN group_members m ON m.group_id = g.id \
             WHERE m.user_id = $1 ORDER BY g.name",
        )
        .bind(user.0)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Group {
                    id: GroupId(r.i64("id")?),
                    name: r.text("name")?,
                    created_at: r.ts("created_at")?,
                })
            })
            .collect()
    }
}

fn session_from(r: &sqlx::any::AnyRow) -> Result<Session> {
    Ok(Session {
        id: SessionId(r.i64("id")?),
        user_id: UserId(r.i64("user_id")?),
        created_at: r.ts("created_at")?,
        expires_at: r.ts("expires_at")?,
        last_seen_at: r.ts("last_seen_at")?,
    })
}
