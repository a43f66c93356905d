//! The store's error type. Messages name what failed and never contain secret values
//! (sqlx errors do not include bound parameters).

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{what} {key} not found")]
    NotFound { what: &'static str, key: String },
    /// A unique name is taken, or a row changed under the caller.
    #[error("{0}")]
    Conflict(String),
    /// Input that does not satisfy the domain's rules; `field` names it.
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// The operation does not apply to the object's current state (for example playing
    /// a job that is not manual).
    #[error("{0}")]
    State(String),
    /// The lease on a job is no longer held by the caller (finished, canceled or
    /// expired and handed on).
    #[error("job {job} is not leased under this lease any more")]
    LeaseLost { job: i64 },
    /// The user may not do this (see [`crate::access`]).
    #[error("{user} may not {action:?} here")]
    Forbidden {
        user: String,
        action: crate::access::Action,
    },
    #[error("secret key: {0}")]
    Key(String),
    /// A sealed value could not be opened: wrong key, or the value was altered.
    #[error("a stored secret could not be decrypted ({0}): wrong key or altered data")]
    Decrypt(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Stored data that does not parse (a JSON column, an unknown status).
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    #[error("background task failed: {0}")]
    Task(String),
}

impl Error {
    pub(crate) fn not_found(what: &'static str, key: impl std::fmt::Display) -> Error {
        Error::NotFound {
            what,
            key: key.to_string(),
        }
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
        Error::Invalid {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Whether this is a unique-constraint violation from the database.
    pub fn is_unique_violation(&self) -> bool {
        match self {
            Error::Database(sqlx::Error::Database(e)) => e.is_unique_violation(),
            _ => false,
        }
    }
}

/// Turns a unique violation into a [`Error::Conflict`] with `message`.
pub(crate) fn conflict_on_unique<T>(
    r: Result<T, sqlx::Error>,
    message: impl FnOnce() -> String,
) -> Result<T> {
    match r {
        Ok(v) => Ok(v),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(Error::Conflict(message())),
        Err(e) => Err(e.into()),
    }
}
