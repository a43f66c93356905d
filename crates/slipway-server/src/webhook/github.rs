//! GitHub's `push` and `pull_request` events.

use super::{
    commits_from, push_from, Actor, MergeRequestAction, MergeRequestEvent, Payload, Provider,
    RepositoryRef, WebhookError, WebhookEvent,
};

pub(super) fn repository(p: &Payload<'_>) -> RepositoryRef {
    RepositoryRef {
        full_name: p.string("/full_name").unwrap_or_default(),
        clone_url: p.string("/clone_url"),
        web_url: p.string("/html_url"),
        default_branch: p.string("/default_branch"),
    }
}

pub(super) fn actor(p: &Payload<'_>) -> Actor {
    Actor {
        id: p.u64("/id"),
        login: p
            .string("/login")
            .or_else(|| p.string("/username"))
            .or_else(|| p.string("/name"))
            .unwrap_or_default(),
        name: p.string("/full_name").or_else(|| p.string("/name")),
        email: p.string("/email").filter(|e| !e.is_empty()),
    }
}

pub(super) fn parse(event: &str, p: &Payload<'_>) -> Result<WebhookEvent, WebhookError> {
    match event {
        "ping" => Ok(WebhookEvent::Ping),
        "push" => {
            let repo = p
                .sub("/repository")
                .map(|r| repository(&r))
                .unwrap_or_default();
            // `pusher` has only name and email; `sender` is the GitHub account.
            let pusher = p.sub("/sender").map(|s| {
                let mut a = actor(&s);
                if a.email.is_none() {
                    a.email = p.string("/pusher/email");
                }
                a
            });
            push_from(
                Provider::GitHub,
                p,
                repo,
                commits_from(p, "/commits"),
                pusher,
            )
        }
        "pull_request" => pull_request(Provider::GitHub, p),
        other => Ok(WebhookEvent::Ignored(other.to_string())),
    }
}

/// GitHub's pull request payload, which Gitea follows closely; `provider` says whose
/// action names apply.
pub(super) fn pull_request(
    provider: Provider,
    p: &Payload<'_>,
) -> Result<WebhookEvent, WebhookError> {
    let action_name = p.req("/action")?;
    let pr = p
        .sub("/pull_request")
        .ok_or_else(|| WebhookError::Payload("missing object `pull_request`".into()))?;
    let merged = pr.bool("/merged");
    let action = match action_name {
        "opened" => MergeRequestAction::Opened,
        "reopened" => MergeRequestAction::Reopened,
        "synchronize" | "synchronized" => MergeRequestAction::NewCommits,
        "edited" => MergeRequestAction::Edited,
        "closed" if merged => MergeRequestAction::Merged,
        "closed" => MergeRequestAction::Closed,
        other => MergeRequestAction::Other(other.to_string()),
    };
    let target_repo = p
        .sub("/repository")
        .map(|r| repository(&r))
        .unwrap_or_default();
    let source_repo = pr.sub("/head/repo").map(|r| repository(&r));
    let fork = source_repo.filter(|s| s.full_name != target_repo.full_name);
    let source_sha = super::sha_field(&pr, "/head/sha")?.ok_or_else(|| {
        WebhookError::Payload("missing string field `pull_request.head.sha`".into())
    })?;
    Ok(WebhookEvent::MergeRequest(Box::new(MergeRequestEvent {
        provider,
        action,
        repository: target_repo,
        id: pr.u64("/id").unwrap_or(0),
        iid: pr.u64("/number").or_else(|| p.u64("/number")).unwrap_or(0),
        title: pr.string("/title").unwrap_or_default(),
        description: pr.string("/body").unwrap_or_default(),
        url: pr.string("/html_url"),
        source_branch: pr.req("/head/ref")?.to_string(),
        source_sha,
        source_repository: fork,
        target_branch: pr.req("/base/ref")?.to_string(),
        target_sha: super::sha_field(&pr, "/base/sha")?,
        draft: pr.bool("/draft"),
        labels: pr.names("/labels", "name"),
        assignees: pr.names("/assignees", "login"),
        milestone: pr.string("/milestone/title"),
        author: pr.sub("/user").map(|u| actor(&u)),
        sender: p.sub("/sender").map(|s| actor(&s)),
    })))
}
