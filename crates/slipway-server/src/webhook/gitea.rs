//! Gitea's `push`, `delete` and `pull_request` events (GitHub's shapes, with Gitea's
//! action names and users).

use super::github::{actor, pull_request, repository};
use super::{commits_from, push_from, Payload, Provider, PushEvent, WebhookError, WebhookEvent};
use crate::git::RefKind;

pub(super) fn parse(event: &str, p: &Payload<'_>) -> Result<WebhookEvent, WebhookError> {
    let repo = || {
        p.sub("/repository")
            .map(|r| repository(&r))
            .unwrap_or_default()
    };
    match event {
        "push" => {
            let pusher = p
                .sub("/pusher")
                .or_else(|| p.sub("/sender"))
                .map(|a| actor(&a));
            push_from(
                Provider::Gitea,
                p,
                repo(),
                commits_from(p, "/commits"),
                pusher,
            )
        }
        // Gitea reports a deleted branch or tag as its own event, with the short name.
        "delete" => {
            let name = p.req("/ref")?.to_string();
            let kind = match p.str("/ref_type") {
                Some("tag") => RefKind::Tag,
                Some("branch") => RefKind::Branch,
                other => {
                    return Ok(WebhookEvent::Ignored(format!(
                        "delete of {}",
                        other.unwrap_or("unknown ref type")
                    )))
                }
            };
            let prefix = if kind == RefKind::Tag {
                "refs/tags/"
            } else {
                "refs/heads/"
            };
            Ok(WebhookEvent::Push(Box::new(PushEvent {
                provider: Provider::Gitea,
                repository: repo(),
                ref_name: format!("{prefix}{name}"),
                kind,
                name,
                before: None,
                after: None,
                commits: Vec::new(),
                pusher: p.sub("/sender").map(|a| actor(&a)),
            })))
        }
        "pull_request" => pull_request(Provider::Gitea, p),
        other => Ok(WebhookEvent::Ignored(other.to_string())),
    }
}
