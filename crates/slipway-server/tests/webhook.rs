//! Webhook deliveries in the providers' documented shapes, verified and parsed.

use slipway_server::git::{RefChangeKind, RefKind};
use slipway_server::webhook::{
    self, gitea_signature, github_signature, Delivery, MergeRequestAction, MergeRequestEvent,
    Provider, PushEvent, SignatureError, WebhookError, WebhookEvent,
};

const SECRET: &str = "It's a Secret to Everybody";

fn payload(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/payloads/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A delivery as the provider sends it: event header, delivery id, signature or token.
fn deliver(provider: Provider, event: &str, body: &[u8]) -> Result<Delivery, WebhookError> {
    let headers: Vec<(String, String)> = match provider {
        Provider::GitHub => vec![
            ("X-GitHub-Event".into(), event.into()),
            (
                "X-GitHub-Delivery".into(),
                "72d3162e-cc78-11e3-81ab-4c9367dc0958".into(),
            ),
            ("x-hub-signature-256".into(), github_signature(SECRET, body)),
            ("Content-Type".into(), "application/json".into()),
        ],
        Provider::GitLab => vec![
            ("X-Gitlab-Event".into(), event.into()),
            ("X-Gitlab-Token".into(), SECRET.into()),
            (
                "X-Gitlab-Event-UUID".into(),
                "13792a34-cac6-4fda-95a8-c58e00a3954e".into(),
            ),
        ],
        Provider::Gitea => vec![
            ("X-Gitea-Event".into(), event.into()),
            // Gitea also sends GitHub's headers; Gitea's must win.
            ("X-GitHub-Event".into(), event.into()),
            (
                "X-Gitea-Delivery".into(),
                "f6266f16-1bf3-46a5-9ea4-602e06ead473".into(),
            ),
            ("X-Gitea-Signature".into(), gitea_signature(SECRET, body)),
        ],
    };
    webhook::receive(&headers, body, SECRET)
}

fn push(provider: Provider, event: &str, file: &str) -> PushEvent {
    let d = deliver(provider, event, &payload(file)).expect("accepted");
    assert_eq!(d.provider, provider);
    assert!(d.id.is_some());
    match d.event {
        WebhookEvent::Push(p) => *p,
        other => panic!("{file}: expected a push, got {other:?}"),
    }
}

fn merge_request(provider: Provider, event: &str, file: &str) -> MergeRequestEvent {
    match deliver(provider, event, &payload(file))
        .expect("accepted")
        .event
    {
        WebhookEvent::MergeRequest(m) => *m,
        other => panic!("{file}: expected a merge request, got {other:?}"),
    }
}

#[test]
fn github_pushes() {
    let p = push(Provider::GitHub, "push", "github-push.json");
    assert_eq!((p.kind, p.name.as_str()), (RefKind::Branch, "main"));
    assert_eq!(p.change(), RefChangeKind::Updated);
    assert_eq!(
        p.before.as_deref(),
        Some("6113728f27ae82c7b1a177c8d03f9e96e0adf246")
    );
    assert_eq!(
        p.after.as_deref(),
        Some("1481a2de7b2a7d02428ad93446ab166be7793fbb")
    );
    assert_eq!(p.repository.full_name, "baxterthehacker/public-repo");
    assert_eq!(
        p.repository.clone_url.as_deref(),
        Some("https://github.com/baxterthehacker/public-repo.git")
    );
    assert_eq!(p.repository.default_branch.as_deref(), Some("main"));
    assert_eq!(p.commits.len(), 2);
    assert_eq!(
        p.commits[1].author.as_deref(),
        Some("Baxter <baxter@example.com>")
    );
    assert_eq!(p.commits[1].added, vec!["build.sh"]);
    assert_eq!(p.commits[1].removed, vec!["old.sh"]);
    let pusher = p.pusher.expect("pusher");
    assert_eq!(
        (pusher.login.as_str(), pusher.id),
        ("baxterthehacker", Some(6752317))
    );

    let t = push(Provider::GitHub, "push", "github-push-tag.json");
    assert_eq!(
        (t.kind, t.name.as_str(), t.change()),
        (RefKind::Tag, "v1.2.0", RefChangeKind::Created)
    );
    assert_eq!(t.before, None);

    let d = push(Provider::GitHub, "push", "github-push-delete.json");
    assert_eq!(
        (d.name.as_str(), d.change()),
        ("feature/old", RefChangeKind::Deleted)
    );
    assert_eq!(d.after, None);
    assert_eq!(d.ref_update().ref_name, "refs/heads/feature/old");
}

#[test]
fn github_pull_requests_and_ping() {
    let m = merge_request(
        Provider::GitHub,
        "pull_request",
        "github-pull-request-opened.json",
    );
    assert_eq!(m.action, MergeRequestAction::Opened);
    assert!(m.starts_pipeline());
    assert_eq!((m.id, m.iid), (1946431513, 42));
    assert_eq!(m.title, "Add caching to the build");
    assert_eq!(m.source_branch, "cache");
    assert_eq!(m.source_sha, "e6d3c3a6b1f0ab7c8fe3d40e5b5cb5bb2a8c0f1d");
    assert_eq!(m.target_branch, "main");
    assert_eq!(
        m.target_sha.as_deref(),
        Some("9049f1265b7d61be4a8904a9a27120d2064dab3b")
    );
    assert_eq!(
        m.source_repository.as_ref().map(|r| r.full_name.as_str()),
        Some("hubot/app"),
        "a fork"
    );
    assert_eq!(m.repository.full_name, "octo-org/app");
    assert_eq!(m.labels, vec!["performance", "ci"]);
    assert_eq!(m.assignees, vec!["mona"]);
    assert_eq!(m.milestone.as_deref(), Some("v1.3"));
    assert_eq!(m.head_ref(), "refs/pull/42/head");
    let ctx = m.to_context();
    assert_eq!(
        (
            ctx.iid,
            ctx.source_branch.as_str(),
            ctx.target_branch.as_str()
        ),
        (42, "cache", "main")
    );
    assert_eq!(ctx.source_project_path.as_deref(), Some("hubot/app"));

    let s = merge_request(
        Provider::GitHub,
        "pull_request",
        "github-pull-request-synchronize.json",
    );
    assert_eq!(s.action, MergeRequestAction::NewCommits);
    assert!(s.starts_pipeline());
    assert_eq!(s.source_sha, "f00dfeedf00dfeedf00dfeedf00dfeedf00dfeed");
    assert_eq!(s.source_repository, None, "same repository");

    let merged = merge_request(
        Provider::GitHub,
        "pull_request",
        "github-pull-request-merged.json",
    );
    assert_eq!(merged.action, MergeRequestAction::Merged);
    assert!(!merged.starts_pipeline());

    assert_eq!(
        deliver(Provider::GitHub, "ping", &payload("github-ping.json"))
            .expect("ok")
            .event,
        WebhookEvent::Ping
    );
    assert_eq!(
        deliver(Provider::GitHub, "star", b"{\"action\":\"created\"}")
            .expect("ok")
            .event,
        WebhookEvent::Ignored("star".into())
    );
}

#[test]
fn gitlab_pushes_and_merge_requests() {
    let p = push(Provider::GitLab, "Push Hook", "gitlab-push.json");
    assert_eq!(
        (p.kind, p.name.as_str(), p.change()),
        (RefKind::Branch, "master", RefChangeKind::Updated)
    );
    assert_eq!(p.repository.full_name, "mike/diaspora");
    assert_eq!(
        p.repository.clone_url.as_deref(),
        Some("http://example.com/mike/diaspora.git")
    );
    assert_eq!(p.commits.len(), 2);
    assert_eq!(
        p.commits[0].author.as_deref(),
        Some("Jordi Mallach <jordi@softcatala.org>")
    );
    let u = p.pusher.expect("pusher");
    assert_eq!(
        (u.login.as_str(), u.name.as_deref(), u.id),
        ("jsmith", Some("John Smith"), Some(4))
    );

    let t = push(Provider::GitLab, "Tag Push Hook", "gitlab-tag-push.json");
    assert_eq!(
        (t.kind, t.name.as_str(), t.change()),
        (RefKind::Tag, "v1.0.0", RefChangeKind::Created)
    );

    let d = push(Provider::GitLab, "Push Hook", "gitlab-push-delete.json");
    assert_eq!(
        (d.name.as_str(), d.change()),
        ("feature-x", RefChangeKind::Deleted)
    );

    let m = merge_request(
        Provider::GitLab,
        "Merge Request Hook",
        "gitlab-merge-request-open.json",
    );
    assert_eq!(m.action, MergeRequestAction::Opened);
    assert_eq!((m.id, m.iid), (99, 1));
    assert_eq!(
        (m.source_branch.as_str(), m.target_branch.as_str()),
        ("ms-viewport", "master")
    );
    assert_eq!(m.source_sha, "da1560886d4f094c3e6c9ef40349f7d38b5d27d7");
    assert_eq!(m.repository.full_name, "gitlabhq/gitlab-test");
    assert_eq!(
        m.source_repository.as_ref().map(|r| r.full_name.as_str()),
        Some("awesome_space/awesome_project")
    );
    assert_eq!(m.labels, vec!["API"]);
    assert_eq!(m.assignees, vec!["user1"]);
    assert_eq!(m.head_ref(), "refs/merge-requests/1/head");
    assert_eq!(m.sender.as_ref().map(|s| s.login.as_str()), Some("root"));

    let u = merge_request(
        Provider::GitLab,
        "Merge Request Hook",
        "gitlab-merge-request-update.json",
    );
    assert_eq!(
        u.action,
        MergeRequestAction::NewCommits,
        "update with oldrev"
    );
    assert!(u.starts_pipeline());
    assert_eq!(u.source_sha, "a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9");

    let e = merge_request(
        Provider::GitLab,
        "Merge Request Hook",
        "gitlab-merge-request-edit.json",
    );
    assert_eq!(
        e.action,
        MergeRequestAction::Edited,
        "update without oldrev"
    );
    assert!(!e.starts_pipeline());
    assert!(e.draft);
}

#[test]
fn gitea_pushes_deletions_and_pull_requests() {
    let p = push(Provider::Gitea, "push", "gitea-push.json");
    assert_eq!(
        (p.kind, p.name.as_str(), p.change()),
        (RefKind::Branch, "develop", RefChangeKind::Updated)
    );
    assert_eq!(p.repository.full_name, "gitea/webhooks");
    assert_eq!(p.repository.default_branch.as_deref(), Some("master"));
    assert_eq!(p.commits[0].modified, vec!["README.md"]);
    assert_eq!(p.pusher.as_ref().map(|a| a.login.as_str()), Some("gitea"));

    let t = push(Provider::Gitea, "push", "gitea-push-tag.json");
    assert_eq!(
        (t.kind, t.name.as_str(), t.change()),
        (RefKind::Tag, "v2.0", RefChangeKind::Created)
    );

    let d = push(Provider::Gitea, "delete", "gitea-delete.json");
    assert_eq!(
        (d.kind, d.ref_name.as_str(), d.change()),
        (
            RefKind::Branch,
            "refs/heads/old-feature",
            RefChangeKind::Deleted
        )
    );

    let m = merge_request(
        Provider::Gitea,
        "pull_request",
        "gitea-pull-request-opened.json",
    );
    assert_eq!(m.action, MergeRequestAction::Opened);
    assert_eq!(
        (m.iid, m.source_branch.as_str(), m.target_branch.as_str()),
        (7, "deploy-stage", "master")
    );
    assert_eq!(m.labels, vec!["enhancement"]);
    assert!(m.assignees.is_empty(), "null assignees");
    assert_eq!(m.author.as_ref().map(|a| a.login.as_str()), Some("alice"));

    let s = merge_request(
        Provider::Gitea,
        "pull_request",
        "gitea-pull-request-synchronized.json",
    );
    assert_eq!(s.action, MergeRequestAction::NewCommits);
    assert_eq!(s.source_sha, "8d8c5f3ce0c0f5fc3b5f7f4d1f5b0a1c8b2d3e4f");
}

#[test]
fn bad_or_missing_signatures_are_refused() {
    let body = payload("github-push.json");
    let sig = github_signature(SECRET, &body);
    let h = [
        ("X-GitHub-Event", "push"),
        ("X-Hub-Signature-256", sig.as_str()),
    ];
    // The right signature with the wrong secret, a changed body, no signature.
    assert_eq!(
        webhook::receive(&h, &body, "another secret"),
        Err(WebhookError::Signature(SignatureError::Mismatch(
            "X-Hub-Signature-256"
        )))
    );
    let mut tampered = body.clone();
    tampered[20] ^= 1;
    assert!(matches!(
        webhook::receive(&h, &tampered, SECRET),
        Err(WebhookError::Signature(_))
    ));
    assert_eq!(
        webhook::receive(&[("X-GitHub-Event", "push")], &body, SECRET),
        Err(WebhookError::Signature(SignatureError::Missing(
            "X-Hub-Signature-256"
        )))
    );
    // A project without a secret takes nothing, even a correctly signed delivery.
    assert_eq!(
        webhook::receive(&h, &body, ""),
        Err(WebhookError::Signature(SignatureError::NoSecretConfigured))
    );
    // GitLab's token, Gitea's signature.
    let gl = payload("gitlab-push.json");
    assert_eq!(
        webhook::receive(
            &[("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", "guess")],
            &gl,
            SECRET
        ),
        Err(WebhookError::Signature(SignatureError::Mismatch(
            "X-Gitlab-Token"
        )))
    );
    let gt = payload("gitea-push.json");
    let wrong = gitea_signature("nope", &gt);
    assert_eq!(
        webhook::receive(
            &[
                ("X-Gitea-Event", "push"),
                ("X-Gitea-Signature", wrong.as_str())
            ],
            &gt,
            SECRET
        ),
        Err(WebhookError::Signature(SignatureError::Mismatch(
            "X-Gitea-Signature"
        )))
    );
    // A Gitea delivery carrying only a GitHub-style signature is not taken as GitHub's.
    let hub = github_signature(SECRET, &gt);
    assert_eq!(
        webhook::receive(
            &[
                ("X-Gitea-Event", "push"),
                ("X-Hub-Signature-256", hub.as_str())
            ],
            &gt,
            SECRET
        ),
        Err(WebhookError::Signature(SignatureError::Missing(
            "X-Gitea-Signature"
        )))
    );
    assert_eq!(
        webhook::receive(&[("Content-Type", "application/json")], &body, SECRET),
        Err(WebhookError::UnknownProvider)
    );
    // Errors never show the secret.
    let e = webhook::receive(&h, &body, "another secret").expect_err("refused");
    assert!(!e.to_string().contains(SECRET) && !e.to_string().contains(&sig[7..]));
}

#[test]
fn malformed_payloads_are_errors_not_panics() {
    for body in [
        &b"{}"[..],
        b"{\"ref\": 3}",
        b"{\"ref\":\"refs/heads/a\",\"before\":\"xyz\",\"after\":\"1\"}",
        b"\xff\xfe",
        b"null",
    ] {
        for (provider, event) in [
            (Provider::GitHub, "push"),
            (Provider::GitLab, "Push Hook"),
            (Provider::Gitea, "push"),
            (Provider::GitHub, "pull_request"),
            (Provider::GitLab, "Merge Request Hook"),
        ] {
            let r = deliver(provider, event, body);
            assert!(
                matches!(
                    r,
                    Err(WebhookError::Payload(_))
                        | Ok(Delivery {
                            event: WebhookEvent::Ignored(_),
                            ..
                        })
                ),
                "{provider} {event} {body:?}: {r:?}"
            );
        }
    }
    let e = deliver(Provider::GitHub, "pull_request", b"{\"action\":\"opened\",\"pull_request\":{\"head\":{\"sha\":\"e6d3c3a6b1f0ab7c8fe3d40e5b5cb5bb2a8c0f1d\"}}}").expect_err("no ref");
    assert_eq!(
        e.to_string(),
        "bad payload: missing string field `head.ref`"
    );
}
