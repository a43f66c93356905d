//! Small pieces the pages share: status badges and icons (never colour alone: each has
//! its word), relative times, durations, commits, sizes, and a stage's overall status.

use maud::{html, Markup, PreEscaped};
use slipway_core::schedule::{JobStatus, PipelineStatus};
use slipway_db::Timestamp;

/// A status as pages show it. `Warning` is a job that failed but was allowed to (and a
/// stage or pipeline that passed with such jobs), as GitLab shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Pending,
    Running,
    Success,
    Warning,
    Failed,
    Canceled,
    Skipped,
    Manual,
    Scheduled,
    Blocked,
    /// A deployment job waiting for its environment's approvals.
    Approval,
    /// Waiting for its resource group.
    Resource,
    /// A deployment whose traffic went back to the release before it.
    RolledBack,
}

impl Status {
    pub fn of_job(s: JobStatus, allow_failure: bool) -> Status {
        match s {
            JobStatus::Created => Status::Created,
            JobStatus::Pending => Status::Pending,
            JobStatus::Running => Status::Running,
            JobStatus::Success => Status::Success,
            JobStatus::Failed if allow_failure => Status::Warning,
            JobStatus::Failed => Status::Failed,
            JobStatus::Canceled => Status::Canceled,
            JobStatus::Skipped => Status::Skipped,
            JobStatus::Manual => Status::Manual,
            JobStatus::Scheduled => Status::Scheduled,
            JobStatus::WaitingForApproval => Status::Approval,
            JobStatus::WaitingForResource => Status::Resource,
        }
    }

    pub fn of_pipeline(s: PipelineStatus) -> Status {
        match s {
            PipelineStatus::Created => Status::Created,
            PipelineStatus::Running => Status::Running,
            PipelineStatus::Success => Status::Success,
            PipelineStatus::Failed => Status::Failed,
            PipelineStatus::Canceled => Status::Canceled,
            PipelineStatus::Blocked => Status::Blocked,
            PipelineStatus::Skipped => Status::Skipped,
        }
    }

    /// The CSS class suffix (`st-success`).
    pub fn key(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Success => "success",
            Status::Warning => "warning",
            Status::Failed => "failed",
            Status::Canceled => "canceled",
            Status::Skipped => "skipped",
            Status::Manual => "manual",
            Status::Scheduled => "scheduled",
            Status::Blocked => "blocked",
            Status::Approval => "approval",
            Status::Resource => "resource",
            Status::RolledBack => "rolledback",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Success => "passed",
            Status::Warning => "failed (allowed)",
            Status::Failed => "failed",
            Status::Canceled => "canceled",
            Status::Skipped => "skipped",
            Status::Manual => "manual",
            Status::Scheduled => "delayed",
            Status::Blocked => "blocked",
            Status::Approval => "waiting for approval",
            Status::Resource => "waiting for resource",
            Status::RolledBack => "rolled back",
        }
    }

    /// The icon's drawing inside a 16x16 view box.
    fn glyph(self) -> &'static str {
        match self {
            Status::Success => {
                r#"<path d="M4.5 8.5l2.2 2.2 4.8-5" fill="none" stroke="currentColor" stroke-width="1.8" stroke-linecap="round" stroke-linejoin="round"/>"#
            }
            Status::Failed => {
                r#"<path d="M5.5 5.5l5 5m0-5l-5 5" stroke="currentColor" stroke-width="1.8" stroke-linecap="round"/>"#
            }
            Status::Warning | Status::RolledBack => {
                r#"<path d="M8 4.5v4.2" stroke="currentColor" stroke-width="1.8" stroke-linecap="round"/><circle cx="8" cy="11.2" r="1.1" fill="currentColor"/>"#
            }
            Status::Running => r#"<path d="M8 3.8a4.2 4.2 0 0 1 0 8.4z" fill="currentColor"/>"#,
            Status::Pending | Status::Scheduled => {
                r#"<path d="M8 4.8V8l2.2 1.6" fill="none" stroke="currentColor" stroke-width="1.6" stroke-linecap="round"/>"#
            }
            Status::Canceled => {
                r#"<path d="M5 11L11 5" stroke="currentColor" stroke-width="1.8" stroke-linecap="round"/>"#
            }
            Status::Skipped => {
                r#"<path d="M5 5l3 3-3 3m3.5-6l3 3-3 3" fill="none" stroke="currentColor" stroke-width="1.5" stroke-linecap="round" stroke-linejoin="round"/>"#
            }
            Status::Manual => r#"<path d="M6.3 5v6l5-3z" fill="currentColor"/>"#,
            Status::Blocked | Status::Approval => {
                r#"<path d="M6.2 5.2v5.6m3.6-5.6v5.6" stroke="currentColor" stroke-width="1.8" stroke-linecap="round"/>"#
            }
            Status::Resource => {
                r#"<path d="M5 8h6" stroke="currentColor" stroke-width="1.8" stroke-linecap="round"/>"#
            }
            Status::Created => r#"<circle cx="8" cy="8" r="2.2" fill="currentColor"/>"#,
        }
    }
}

/// The status icon alone (with its word as a tooltip and for screen readers).
pub fn icon(s: Status) -> Markup {
    html! {
        svg class={"icon st-" (s.key())} viewBox="0 0 16 16" width="16" height="16" role="img" aria-label=(s.label()) {
            title { (s.label()) }
            circle.ring cx="8" cy="8" r="7" {}
            (PreEscaped(s.glyph()))
        }
    }
}

/// A badge: icon and word.
pub fn badge(s: Status) -> Markup {
    html! {
        span class={"badge st-" (s.key())} data-status=(s.key()) {
            svg class={"icon st-" (s.key())} viewBox="0 0 16 16" width="14" height="14" aria-hidden="true" {
                circle.ring cx="8" cy="8" r="7" {}
                (PreEscaped(s.glyph()))
            }
            span { (s.label()) }
        }
    }
}

/// The overall status of some jobs (a stage), GitLab's composite order: anything
/// running or waiting makes it so; then a failure that counts; then what waits for a
/// person; passed with warnings when only allowed failures failed.
pub fn composite<I: IntoIterator<Item = (JobStatus, bool)>>(jobs: I) -> Status {
    let mut seen = [false; 14];
    let mut any = false;
    for (s, allow) in jobs {
        any = true;
        seen[Status::of_job(s, allow) as usize] = true;
    }
    let has = |s: Status| seen[s as usize];
    if !any {
        return Status::Created;
    }
    for s in [
        Status::Running,
        Status::Pending,
        Status::Resource,
        Status::Failed,
        Status::Approval,
        Status::Manual,
        Status::Scheduled,
        Status::Created,
        Status::Canceled,
    ] {
        if has(s) {
            return s;
        }
    }
    if has(Status::Warning) {
        return Status::Warning;
    }
    if has(Status::Success) {
        return Status::Success;
    }
    Status::Skipped
}

/// "3 minutes ago", from `now`.
pub fn ago(t: Timestamp, now: Timestamp) -> String {
    let secs = (now.as_millis() - t.as_millis()) / 1000;
    if secs < 0 {
        return "just now".into();
    }
    let (n, unit) = match secs {
        0..=9 => return "just now".into(),
        10..=59 => (secs, "second"),
        60..=3599 => (secs / 60, "minute"),
        3600..=86_399 => (secs / 3600, "hour"),
        86_400..=2_591_999 => (secs / 86_400, "day"),
        2_592_000..=31_535_999 => (secs / 2_592_000, "month"),
        _ => (secs / 31_536_000, "year"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

/// `2024-05-01 12:00:00 UTC`.
pub fn absolute(t: Timestamp) -> String {
    let s = t.to_rfc3339();
    format!("{} {} UTC", &s[..10], &s[11..19])
}

/// A `<time>` showing the relative time, the exact one as a tooltip; the script keeps
/// the relative text current.
pub fn time(t: Timestamp, now: Timestamp) -> Markup {
    html! {
        time datetime=(t.to_rfc3339()) title=(absolute(t)) data-relative { (ago(t, now)) }
    }
}

/// `45s`, `3m 05s`, `2h 01m`.
pub fn duration_ms(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
    }
}

/// From start to finish, or to now while it runs; `None` before it started (the API's
/// `duration_ms`).
pub use crate::http::api::pipelines::duration;

/// A running duration ticks in the browser (`data-since`).
pub fn duration_cell(
    started: Option<Timestamp>,
    finished: Option<Timestamp>,
    now: Timestamp,
) -> Markup {
    match duration(started, finished, now) {
        None => html! { span.muted { "—" } },
        Some(ms) => match (started, finished) {
            (Some(s), None) => {
                html! { span.duration data-since=(s.as_millis()) { (duration_ms(ms)) } }
            }
            _ => html! { span.duration { (duration_ms(ms)) } },
        },
    }
}

pub fn short_sha(sha: &str) -> &str {
    &sha[..sha.len().min(8)]
}

/// The first line of a commit message, cut to `max` characters.
pub fn title_line(message: &str, max: usize) -> String {
    let line = message.lines().next().unwrap_or("").trim();
    if line.chars().count() > max {
        let cut: String = line.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        line.to_string()
    }
}

/// `1.2 MiB`.
pub fn size(bytes: i64) -> String {
    let b = bytes.max(0) as f64;
    if b < 1024.0 {
        format!("{bytes} B")
    } else if b < 1024.0 * 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else if b < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / 1024.0 / 1024.0)
    } else {
        format!("{:.1} GiB", b / 1024.0 / 1024.0 / 1024.0)
    }
}

/// `CI_PIPELINE_SOURCE` in words.
pub fn source_label(source: slipway_db::PipelineSource) -> &'static str {
    use slipway_db::PipelineSource as S;
    match source {
        S::Push => "push",
        S::Web => "run from the web",
        S::Schedule => "schedule",
        S::Api => "API",
        S::Trigger => "trigger token",
        S::MergeRequestEvent => "merge request",
        S::ExternalPullRequestEvent => "pull request",
        S::Pipeline | S::ParentPipeline => "upstream pipeline",
        S::Chat => "chat",
        S::External => "external",
        S::Webide => "web IDE",
        S::OndemandDastScan | S::OndemandDastValidation => "DAST",
        S::SecurityOrchestrationPolicy => "security policy",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times() {
        let now = Timestamp(1_000_000_000);
        let at = |secs: i64| ago(Timestamp(now.0 - secs * 1000), now);
        assert_eq!(at(3), "just now");
        assert_eq!(at(45), "45 seconds ago");
        assert_eq!(at(60), "1 minute ago");
        assert_eq!(at(7200), "2 hours ago");
        assert_eq!(at(86_400 * 3), "3 days ago");
        assert_eq!(at(-50), "just now");
        assert_eq!(absolute(Timestamp(0)), "1970-01-01 00:00:00 UTC");
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(duration_ms(4_200), "4s");
        assert_eq!(duration_ms(185_000), "3m 05s");
        assert_eq!(duration_ms(7_260_000), "2h 01m");
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(5 << 20), "5.0 MiB");
        assert_eq!(
            duration(Some(Timestamp(1000)), None, Timestamp(4000)),
            Some(3000)
        );
        assert_eq!(duration(None, None, Timestamp(4000)), None);
    }

    #[test]
    fn stage_status_follows_gitlab() {
        use JobStatus as J;
        assert_eq!(
            composite([(J::Success, false), (J::Running, false)]),
            Status::Running
        );
        assert_eq!(
            composite([(J::Success, false), (J::Failed, false)]),
            Status::Failed
        );
        assert_eq!(
            composite([(J::Success, false), (J::Failed, true)]),
            Status::Warning
        );
        assert_eq!(
            composite([(J::Success, false), (J::Manual, false)]),
            Status::Manual
        );
        assert_eq!(
            composite([(J::Skipped, false), (J::Skipped, false)]),
            Status::Skipped
        );
        assert_eq!(
            composite([(J::Skipped, false), (J::Success, false)]),
            Status::Success
        );
        assert_eq!(composite([]), Status::Created);
    }

    #[test]
    fn commit_titles() {
        assert_eq!(title_line("Fix it\n\nLong body", 40), "Fix it");
        assert_eq!(title_line("abcdefghij", 5), "abcd…");
        assert_eq!(short_sha("0123456789abcdef"), "01234567");
        assert_eq!(short_sha("abc"), "abc");
    }
}
