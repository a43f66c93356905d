//! GitLab's push, tag push and merge request hooks.

use super::{
    commits_from, push_from, sha_field, Actor, MergeRequestAction, MergeRequestEvent, Payload,
    Provider, RepositoryRef, WebhookError, WebhookEvent,
};

fn project(p: &Payload<'_>) -> RepositoryRef {
    RepositoryRef {
        full_name: p.string("/path_with_namespace").unwrap_or_default(),
        clone_url: p.string("/git_http_url"),
        web_url: p.string("/web_url"),
        default_branch: p.string("/default_branch"),
    }
}

/// `X-Gitlab-Event` names (`Push Hook`) and `object_kind` values (`push`) both work, so
/// system hooks are understood too.
pub(super) fn parse(event: &str, p: &Payload<'_>) -> Result<WebhookEvent, WebhookError> {
    let kind = p.str("/object_kind").unwrap_or(match event {
        "Push Hook" => "push",
        "Tag Push Hook" => "tag_push",
        "Merge Request Hook" => "merge_request",
        _ => "",
    });
    match kind {
        "push" | "tag_push" => {
            let repo = p.sub("/project").map(|r| project(&r)).unwrap_or_default();
            let pusher = Actor {
                id: p.u64("/user_id"),
                login: p.string("/user_username").unwrap_or_default(),
                name: p.string("/user_name"),
                email: p
                    .string("/user_email")
                    .filter(|e| !e.is_empty() && e != "[REDACTED]"),
            };
            push_from(
                Provider::GitLab,
                p,
                repo,
                commits_from(p, "/commits"),
                Some(pusher),
            )
        }
        "merge_request" => merge_request(p),
        "" => Ok(WebhookEvent::Ignored(event.to_string())),
        other => Ok(WebhookEvent::Ignored(other.to_string())),
    }
}

fn merge_request(p: &Payload<'_>) -> Result<WebhookEvent, WebhookError> {
    let a = p
        .sub("/object_attributes")
        .ok_or_else(|| WebhookError::Payload("missing object `object_attributes`".into()))?;
    let action = match a.str("/action").unwrap_or("") {
        "open" => MergeRequestAction::Opened,
        "reopen" => MergeRequestAction::Reopened,
        // GitLab sends `oldrev` only when the update brought new commits.
        "update" if a.str("/oldrev").is_some() => MergeRequestAction::NewCommits,
        "update" => MergeRequestAction::Edited,
        "close" => MergeRequestAction::Closed,
        "merge" => MergeRequestAction::Merged,
        other => MergeRequestAction::Other(other.to_string()),
    };
    let repository = p
        .sub("/project")
        .or_else(|| a.sub("/target"))
        .map(|r| project(&r))
        .unwrap_or_default();
    let source = a.sub("/source").map(|r| project(&r));
    let fork = source.filter(|s| s.full_name != repository.full_name);
    let source_sha = sha_field(&a, "/last_commit/id")?.ok_or_else(|| {
        WebhookError::Payload("missing string field `object_attributes.last_commit.id`".into())
    })?;
    let user = p.sub("/user").map(|u| Actor {
        id: u.u64("/id"),
        login: u.string("/username").unwrap_or_default(),
        name: u.string("/name"),
        email: u
            .string("/email")
            .filter(|e| !e.is_empty() && e != "[REDACTED]"),
    });
    let mut labels = p.names("/labels", "title");
    if labels.is_empty() {
        labels = a.names("/labels", "title");
    }
    Ok(WebhookEvent::MergeRequest(Box::new(MergeRequestEvent {
        provider: Provider::GitLab,
        action,
        repository,
        id: a.u64("/id").unwrap_or(0),
        iid: a.u64("/iid").unwrap_or(0),
        title: a.string("/title").unwrap_or_default(),
        description: a.string("/description").unwrap_or_default(),
        url: a.string("/url"),
        source_branch: a.req("/source_branch")?.to_string(),
        source_sha,
        source_repository: fork,
        target_branch: a.req("/target_branch")?.to_string(),
        target_sha: None,
        draft: a.bool("/draft") || a.bool("/work_in_progress"),
        labels,
        assignees: p.names("/assignees", "username"),
        milestone: a.string("/milestone/title"),
        author: None,
        sender: user,
    })))
}
