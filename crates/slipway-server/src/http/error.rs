//! The API's one error shape: `{"error": {"code": "...", "message": "..."}}` with the
//! matching status code. Internal errors are logged with their cause and answered with a
//! generic message, so database or file system details never reach a client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// A stable, machine-readable code (`not_found`, `forbidden`, ...).
    pub code: &'static str,
    pub message: String,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }

    pub fn unauthenticated() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "sign in, or send a personal API token as `Authorization: Bearer TOKEN`",
        )
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// Something failed on our side: logged in full, answered in general terms.
    pub fn internal(context: &str, cause: &dyn std::fmt::Display) -> ApiError {
        tracing::error!(error = %cause, "{context}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{context} failed; the server log has the details"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<slipway_db::Error> for ApiError {
    fn from(e: slipway_db::Error) -> ApiError {
        use slipway_db::Error as E;
        match &e {
            E::NotFound { .. } => ApiError::not_found(e.to_string()),
            E::Conflict(_) => ApiError::conflict(e.to_string()),
            E::Invalid { .. } => ApiError::invalid(e.to_string()),
            E::State(m) => ApiError::new(StatusCode::CONFLICT, "invalid_state", m.clone()),
            E::LeaseLost { .. } => ApiError::new(StatusCode::CONFLICT, "lease_lost", e.to_string()),
            E::Forbidden { .. } => ApiError::forbidden(e.to_string()),
            _ => ApiError::internal("the request", &e),
        }
    }
}

impl From<crate::git::GitError> for ApiError {
    fn from(e: crate::git::GitError) -> ApiError {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "git_failed",
            redact_credentials(&format!("git: {e}")),
        )
    }
}

impl From<crate::pipelines::TriggerError> for ApiError {
    fn from(e: crate::pipelines::TriggerError) -> ApiError {
        use crate::pipelines::TriggerError as T;
        match e {
            T::UnknownRef(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_ref",
                e.to_string(),
            ),
            T::Git(g) => g.into(),
            T::Store(s) => s.into(),
        }
    }
}

/// `scheme://user:password@host` to `scheme://***@host` anywhere in `s`: clone URLs may
/// carry credentials, and git repeats them in its messages.
pub fn redact_credentials(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace() || c == '\'' || c == '"')
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&tail[at..end]);
            }
            None => out.push_str(&tail[..end]),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::redact_credentials;

    #[test]
    fn credentials_in_urls_are_redacted() {
        assert_eq!(
            redact_credentials("fatal: https://bob:s3cret@git.example/a.git not found"),
            "fatal: https://***@git.example/a.git not found"
        );
        assert_eq!(redact_credentials("no url here"), "no url here");
        assert_eq!(
            redact_credentials("ssh://git.example/x and http://t@h"),
            "ssh://git.example/x and http://***@h"
        );
    }
}
