//! Push and merge request webhooks from GitHub, GitLab and Gitea, read into one
//! [`PushEvent`] or [`MergeRequestEvent`] whatever the provider, after their signature or
//! token is checked.
//!
//! [`receive`] is the whole path for one delivery: tell the provider from the headers,
//! verify (GitHub's `X-Hub-Signature-256` HMAC-SHA256, Gitea's `X-Gitea-Signature`,
//! GitLab's `X-Gitlab-Token`, all compared in constant time), then parse. A delivery that
//! fails verification is a [`WebhookError::Signature`], which the HTTP layer logs and
//! answers with 401 without looking at the payload. A project without a webhook secret
//! accepts no webhook at all.

mod gitea;
mod github;
mod gitlab;

use crate::git::{RefChangeKind, RefKind, RefUpdate};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use slipway_core::variables::{MergeRequestContext, UserContext};
use std::fmt;

/// Compares two byte strings in time that depends only on their lengths, so a caller
/// probing a token or signature learns nothing from how long the answer takes.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Who sent a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    GitHub,
    GitLab,
    Gitea,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::GitHub => "github",
            Provider::GitLab => "gitlab",
            Provider::Gitea => "gitea",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Request headers, looked up case-insensitively.
pub trait Headers {
    fn header(&self, name: &str) -> Option<&str>;
}

impl Headers for [(&str, &str)] {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

impl<const N: usize> Headers for [(&str, &str); N] {
    fn header(&self, name: &str) -> Option<&str> {
        self.as_slice().header(name)
    }
}

impl Headers for [(String, String)] {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Headers for Vec<(String, String)> {
    fn header(&self, name: &str) -> Option<&str> {
        self.as_slice().header(name)
    }
}

/// Why a delivery's signature or token was not accepted. Never carries the secret or the
/// signature itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureError {
    /// The project has no webhook secret: every delivery is refused.
    NoSecretConfigured,
    /// The header that carries the signature or token is absent.
    Missing(&'static str),
    /// The header is there but is not a signature (wrong prefix, not hexadecimal).
    Malformed(&'static str),
    /// The signature or token does not match.
    Mismatch(&'static str),
}

impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignatureError::NoSecretConfigured => {
                f.write_str("the project has no webhook secret; webhooks are refused")
            }
            SignatureError::Missing(h) => write!(f, "no {h} header"),
            SignatureError::Malformed(h) => write!(f, "the {h} header is malformed"),
            SignatureError::Mismatch(h) => write!(f, "the {h} header does not match the secret"),
        }
    }
}

/// Why a delivery was not turned into an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookError {
    /// No `X-GitHub-Event`, `X-Gitlab-Event` or `X-Gitea-Event` header.
    UnknownProvider,
    Signature(SignatureError),
    /// The body is not the JSON the event should have; the message names the field or
    /// the JSON position.
    Payload(String),
}

impl fmt::Display for WebhookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WebhookError::UnknownProvider => f.write_str(
                "not a GitHub, GitLab or Gitea webhook (no X-GitHub-Event, X-Gitlab-Event or \
                 X-Gitea-Event header)",
            ),
            WebhookError::Signature(e) => write!(f, "signature refused: {e}"),
            WebhookError::Payload(m) => write!(f, "bad payload: {m}"),
        }
    }
}

impl std::error::Error for WebhookError {}

/// A repository as a webhook names it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepositoryRef {
    /// `owner/name` (GitHub, Gitea) or `group/sub/name` (GitLab).
    pub full_name: String,
    /// The URL to clone over HTTP(S), when given.
    pub clone_url: Option<String>,
    /// The repository's web page, when given.
    pub web_url: Option<String>,
    /// The provider's default branch, when given.
    pub default_branch: Option<String>,
}

/// A person as a webhook names them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actor {
    pub id: Option<u64>,
    pub login: String,
    pub name: Option<String>,
    pub email: Option<String>,
}

impl Actor {
    /// For `GITLAB_USER_*`.
    pub fn to_context(&self) -> UserContext {
        UserContext {
            id: self.id.unwrap_or(0),
            login: self.login.clone(),
            name: self.name.clone().unwrap_or_else(|| self.login.clone()),
            email: self.email.clone().unwrap_or_default(),
        }
    }
}

/// One commit listed in a push webhook.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushCommit {
    pub id: String,
    pub message: String,
    pub timestamp: Option<String>,
    /// `Name <email>`.
    pub author: Option<String>,
    pub added: Vec<String>,
    pub modified: Vec<String>,
    pub removed: Vec<String>,
}

/// A push of one branch or tag: created, moved or deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushEvent {
    pub provider: Provider,
    pub repository: RepositoryRef,
    /// The full ref name, `refs/heads/main` or `refs/tags/v1.0`.
    pub ref_name: String,
    pub kind: RefKind,
    /// The short branch or tag name.
    pub name: String,
    /// The value before the push; `None` for a new ref.
    pub before: Option<String>,
    /// The value after the push; `None` when the ref was deleted.
    pub after: Option<String>,
    /// The commits the push brought, as the provider lists them (often capped at 20).
    pub commits: Vec<PushCommit>,
    pub pusher: Option<Actor>,
}

impl PushEvent {
    pub fn change(&self) -> RefChangeKind {
        self.ref_update().kind()
    }

    /// The same change as the `post-receive` hook would report it.
    pub fn ref_update(&self) -> RefUpdate {
        RefUpdate {
            ref_name: self.ref_name.clone(),
            old: self.before.clone(),
            new: self.after.clone(),
        }
    }
}

/// What happened to a merge request (pull request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeRequestAction {
    Opened,
    Reopened,
    /// New commits on the source branch (GitHub `synchronize`, Gitea `synchronized`,
    /// GitLab `update` with `oldrev`).
    NewCommits,
    /// Title, description, labels or other fields changed; no new commits.
    Edited,
    Closed,
    Merged,
    /// Anything else the provider sends (approvals, reviews, assignments...).
    Other(String),
}

/// A merge request (pull request) event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeRequestEvent {
    pub provider: Provider,
    pub action: MergeRequestAction,
    /// The repository the merge request targets.
    pub repository: RepositoryRef,
    /// Instance-wide id (`CI_MERGE_REQUEST_ID`).
    pub id: u64,
    /// Per-project number (`CI_MERGE_REQUEST_IID`, GitHub's and Gitea's PR number).
    pub iid: u64,
    pub title: String,
    pub description: String,
    pub url: Option<String>,
    pub source_branch: String,
    /// The source branch's head commit: what the pipeline runs on.
    pub source_sha: String,
    /// The source repository when it is not the target (a fork).
    pub source_repository: Option<RepositoryRef>,
    pub target_branch: String,
    pub target_sha: Option<String>,
    pub draft: bool,
    pub labels: Vec<String>,
    pub assignees: Vec<String>,
    pub milestone: Option<String>,
    pub author: Option<Actor>,
    /// Who caused this event (may differ from the author).
    pub sender: Option<Actor>,
}

impl MergeRequestEvent {
    /// Whether GitLab would create a merge request pipeline for this event: when the
    /// merge request is opened or reopened, and when new commits reach its source branch.
    pub fn starts_pipeline(&self) -> bool {
        matches!(
            self.action,
            MergeRequestAction::Opened
                | MergeRequestAction::Reopened
                | MergeRequestAction::NewCommits
        )
    }

    /// The ref the provider keeps the source head under in the target repository, to
    /// fetch commits from forks (`refs/pull/N/head` on GitHub and Gitea,
    /// `refs/merge-requests/N/head` on GitLab).
    pub fn head_ref(&self) -> String {
        match self.provider {
            Provider::GitLab => format!("refs/merge-requests/{}/head", self.iid),
            Provider::GitHub | Provider::Gitea => format!("refs/pull/{}/head", self.iid),
        }
    }

    /// For the `CI_MERGE_REQUEST_*` variables of a (detached) merge request pipeline.
    pub fn to_context(&self) -> MergeRequestContext {
        let fork = self.source_repository.as_ref();
        MergeRequestContext {
            id: self.id,
            iid: self.iid,
            title: self.title.clone(),
            description: self.description.clone(),
            source_branch: self.source_branch.clone(),
            target_branch: self.target_branch.clone(),
            source_project_path: fork.map(|r| r.full_name.clone()),
            source_project_url: fork.and_then(|r| r.web_url.clone()),
            event_type: "detached".into(),
            assignees: self.assignees.clone(),
            labels: self.labels.clone(),
            milestone: self.milestone.clone(),
            draft: self.draft,
            ..MergeRequestContext::default()
        }
    }
}

/// What a delivery was about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookEvent {
    Push(Box<PushEvent>),
    MergeRequest(Box<MergeRequestEvent>),
    /// The provider checking that the endpoint works (GitHub's `ping`).
    Ping,
    /// An event Slipway does not act on, by its provider's name; the HTTP layer answers
    /// 2xx so the provider does not retry it.
    Ignored(String),
}

/// One verified, parsed delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub provider: Provider,
    /// The provider's delivery id (`X-GitHub-Delivery`, `X-Gitea-Delivery`,
    /// `X-Gitlab-Event-UUID`), for logs and to drop redelivered duplicates.
    pub id: Option<String>,
    pub event: WebhookEvent,
}

/// Which provider sent the delivery, from its event header. Gitea also sends
/// `X-GitHub-Event` for compatibility, so it is recognised first.
pub fn detect(headers: &(impl Headers + ?Sized)) -> Option<Provider> {
    if headers.header("X-Gitea-Event").is_some() || headers.header("X-Gogs-Event").is_some() {
        Some(Provider::Gitea)
    } else if headers.header("X-Gitlab-Event").is_some() {
        Some(Provider::GitLab)
    } else if headers.header("X-GitHub-Event").is_some() {
        Some(Provider::GitHub)
    } else {
        None
    }
}

/// Detects the provider, verifies the delivery against the project's `secret`, and
/// parses it. Nothing in the body is read before verification succeeds.
pub fn receive(
    headers: &(impl Headers + ?Sized),
    body: &[u8],
    secret: &str,
) -> Result<Delivery, WebhookError> {
    let provider = detect(headers).ok_or(WebhookError::UnknownProvider)?;
    verify(provider, headers, body, secret).map_err(WebhookError::Signature)?;
    let (event_header, id_header) = match provider {
        Provider::GitHub => ("X-GitHub-Event", "X-GitHub-Delivery"),
        Provider::GitLab => ("X-Gitlab-Event", "X-Gitlab-Event-UUID"),
        Provider::Gitea => ("X-Gitea-Event", "X-Gitea-Delivery"),
    };
    let event_name = headers
        .header(event_header)
        .or_else(|| headers.header("X-Gogs-Event"))
        .unwrap_or_default();
    let event = parse(provider, event_name, body)?;
    Ok(Delivery {
        provider,
        id: headers.header(id_header).map(str::to_string),
        event,
    })
}

/// Checks a delivery's signature or token against `secret`.
pub fn verify(
    provider: Provider,
    headers: &(impl Headers + ?Sized),
    body: &[u8],
    secret: &str,
) -> Result<(), SignatureError> {
    if secret.is_empty() {
        return Err(SignatureError::NoSecretConfigured);
    }
    match provider {
        Provider::GitHub => verify_github(headers.header("X-Hub-Signature-256"), body, secret),
        Provider::GitLab => verify_gitlab(headers.header("X-Gitlab-Token"), secret),
        Provider::Gitea => verify_gitea(headers.header("X-Gitea-Signature"), body, secret),
    }
}

fn hmac_sha256(secret: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    };
    mac.update(body);
    mac
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn verify_hmac(
    header_name: &'static str,
    hex_sig: &str,
    body: &[u8],
    secret: &str,
) -> Result<(), SignatureError> {
    let sig = decode_hex(hex_sig.trim()).ok_or(SignatureError::Malformed(header_name))?;
    if sig.len() != 32 {
        return Err(SignatureError::Malformed(header_name));
    }
    // `verify_slice` compares in constant time.
    hmac_sha256(secret, body)
        .verify_slice(&sig)
        .map_err(|_| SignatureError::Mismatch(header_name))
}

/// GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`.
pub fn verify_github(
    header: Option<&str>,
    body: &[u8],
    secret: &str,
) -> Result<(), SignatureError> {
    const H: &str = "X-Hub-Signature-256";
    let value = header.ok_or(SignatureError::Missing(H))?;
    let hex = value
        .trim()
        .strip_prefix("sha256=")
        .ok_or(SignatureError::Malformed(H))?;
    verify_hmac(H, hex, body, secret)
}

/// Gitea: `X-Gitea-Signature: <hex HMAC-SHA256 of the body>`.
pub fn verify_gitea(header: Option<&str>, body: &[u8], secret: &str) -> Result<(), SignatureError> {
    const H: &str = "X-Gitea-Signature";
    verify_hmac(H, header.ok_or(SignatureError::Missing(H))?, body, secret)
}

/// GitLab: `X-Gitlab-Token: <the secret token itself>`.
pub fn verify_gitlab(header: Option<&str>, secret: &str) -> Result<(), SignatureError> {
    const H: &str = "X-Gitlab-Token";
    let given = header.ok_or(SignatureError::Missing(H))?;
    if constant_time_eq(given.as_bytes(), secret.as_bytes()) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch(H))
    }
}

/// The `sha256=...` value GitHub would send for `body`: for tests and for Slipway's own
/// outgoing webhooks.
pub fn github_signature(secret: &str, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex(&hmac_sha256(secret, body).finalize().into_bytes())
    )
}

/// The value Gitea would send in `X-Gitea-Signature` for `body`.
pub fn gitea_signature(secret: &str, body: &[u8]) -> String {
    hex(&hmac_sha256(secret, body).finalize().into_bytes())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a verified body for `event_name` (the provider's event header value).
pub fn parse(
    provider: Provider,
    event_name: &str,
    body: &[u8],
) -> Result<WebhookEvent, WebhookError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        WebhookError::Payload(format!(
            "not JSON at line {} column {}: {e}",
            e.line(),
            e.column()
        ))
    })?;
    if !v.is_object() {
        return Err(WebhookError::Payload(
            "the payload is not a JSON object".into(),
        ));
    }
    let p = Payload(&v);
    match provider {
        Provider::GitHub => github::parse(event_name, &p),
        Provider::GitLab => gitlab::parse(event_name, &p),
        Provider::Gitea => gitea::parse(event_name, &p),
    }
}

/// Field access on a payload with errors that name the missing field.
struct Payload<'a>(&'a Value);

impl<'a> Payload<'a> {
    fn at(&self, pointer: &str) -> Option<&'a Value> {
        self.0.pointer(pointer).filter(|v| !v.is_null())
    }

    fn str(&self, pointer: &str) -> Option<&'a str> {
        self.at(pointer).and_then(Value::as_str)
    }

    fn string(&self, pointer: &str) -> Option<String> {
        self.str(pointer).map(str::to_string)
    }

    fn req(&self, pointer: &str) -> Result<&'a str, WebhookError> {
        self.str(pointer).ok_or_else(|| {
            WebhookError::Payload(format!(
                "missing string field `{}`",
                pointer.trim_start_matches('/').replace('/', ".")
            ))
        })
    }

    fn u64(&self, pointer: &str) -> Option<u64> {
        self.at(pointer).and_then(Value::as_u64)
    }

    fn bool(&self, pointer: &str) -> bool {
        self.at(pointer).and_then(Value::as_bool).unwrap_or(false)
    }

    fn array(&self, pointer: &str) -> &'a [Value] {
        self.at(pointer)
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Strings of `array[*].field`.
    fn names(&self, pointer: &str, field: &str) -> Vec<String> {
        self.array(pointer)
            .iter()
            .filter_map(|x| x.get(field).and_then(Value::as_str).map(str::to_string))
            .collect()
    }

    fn strings(&self, pointer: &str) -> Vec<String> {
        self.array(pointer)
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect()
    }

    fn sub(&self, pointer: &str) -> Option<Payload<'a>> {
        self.at(pointer).map(Payload)
    }
}

/// A SHA from a payload: `None` for absent or forty zeros; an error when it is not an
/// object name at all.
fn sha_field(p: &Payload<'_>, pointer: &str) -> Result<Option<String>, WebhookError> {
    match p.str(pointer) {
        None => Ok(None),
        Some(s) if s.bytes().all(|b| b == b'0') => Ok(None),
        Some(s) if crate::git::is_sha(s) => Ok(Some(s.to_ascii_lowercase())),
        Some(s) => Err(WebhookError::Payload(format!(
            "`{}` is not a commit SHA: {s:?}",
            pointer.trim_start_matches('/')
        ))),
    }
}

/// A push from its `ref`, `before` and `after`, shared by the three providers.
fn push_from(
    provider: Provider,
    p: &Payload<'_>,
    repository: RepositoryRef,
    commits: Vec<PushCommit>,
    pusher: Option<Actor>,
) -> Result<WebhookEvent, WebhookError> {
    let ref_name = p.req("/ref")?.to_string();
    let Some((kind, name)) = crate::git::split_ref(&ref_name) else {
        return Ok(WebhookEvent::Ignored(format!("push of {ref_name}")));
    };
    let name = name.to_string();
    let before = sha_field(p, "/before")?;
    let after = sha_field(p, "/after")?;
    if before.is_none() && after.is_none() {
        return Err(WebhookError::Payload(
            "`before` and `after` are both empty".into(),
        ));
    }
    Ok(WebhookEvent::Push(Box::new(PushEvent {
        provider,
        repository,
        ref_name,
        kind,
        name,
        before,
        after,
        commits,
        pusher,
    })))
}

/// Commits in the shape GitHub, Gitea and GitLab share (`id`, `message`, `timestamp`,
/// `author.name/email`, `added`, `modified`, `removed`).
fn commits_from(p: &Payload<'_>, pointer: &str) -> Vec<PushCommit> {
    p.array(pointer)
        .iter()
        .map(|c| {
            let c = Payload(c);
            let author = match (c.str("/author/name"), c.str("/author/email")) {
                (Some(n), Some(e)) => Some(format!("{n} <{e}>")),
                (Some(n), None) => Some(n.to_string()),
                _ => None,
            };
            PushCommit {
                id: c.string("/id").unwrap_or_default(),
                message: c.string("/message").unwrap_or_default(),
                timestamp: c.string("/timestamp"),
                author,
                added: c.strings("/added"),
                modified: c.strings("/modified"),
                removed: c.strings("/removed"),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        let body = br#"{"zen":"Keep it logically awesome."}"#;
        let sig = github_signature("s3cret", body);
        assert!(sig.starts_with("sha256=") && sig.len() == 71);
        assert_eq!(verify_github(Some(&sig), body, "s3cret"), Ok(()));
        assert_eq!(
            verify_github(Some(&sig), body, "other"),
            Err(SignatureError::Mismatch("X-Hub-Signature-256"))
        );
        assert_eq!(
            verify_github(Some(&sig), b"tampered", "s3cret"),
            Err(SignatureError::Mismatch("X-Hub-Signature-256"))
        );
        assert_eq!(
            verify_github(Some("sha1=abcd"), body, "s3cret"),
            Err(SignatureError::Malformed("X-Hub-Signature-256"))
        );
        assert_eq!(
            verify_github(Some("sha256=zz"), body, "s3cret"),
            Err(SignatureError::Malformed("X-Hub-Signature-256"))
        );
        assert_eq!(
            verify_github(None, body, "s3cret"),
            Err(SignatureError::Missing("X-Hub-Signature-256"))
        );
        let g = gitea_signature("k", body);
        assert_eq!(verify_gitea(Some(&g), body, "k"), Ok(()));
        assert_eq!(verify_gitea(Some(&g.to_uppercase()), body, "k"), Ok(()));
        assert!(verify_gitea(Some(&g), body, "j").is_err());
        assert_eq!(verify_gitlab(Some("tok"), "tok"), Ok(()));
        assert!(verify_gitlab(Some("tok "), "tok").is_err());
        assert!(verify_gitlab(None, "tok").is_err());
        let h = [("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", "")];
        assert_eq!(
            verify(Provider::GitLab, &h, body, ""),
            Err(SignatureError::NoSecretConfigured)
        );
    }

    /// The HMAC test vector GitHub documents for `X-Hub-Signature-256`.
    #[test]
    fn githubs_documented_example() {
        assert_eq!(
            github_signature("It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn bad_json_is_positioned() {
        let e = parse(Provider::GitHub, "push", b"{\n  \"ref\": }").expect_err("bad");
        assert!(e.to_string().contains("line 2 column"), "{e}");
        assert!(parse(Provider::GitHub, "push", b"[1]").is_err());
    }
}
