//! Job logs in the page, and live.
//!
//! The page renders what is stored with [`crate::ansi::render_document`]: the whole log of
//! a finished job, or, while it runs, everything up to the last complete line (its open
//! sections come out as `<details>` like closed ones). The live part continues from
//! there: `GET /projects/{p}/jobs/{id}/log.events?start=S&offset=O` is a server-sent
//! event stream whose `log` events carry the HTML of the lines completed since, one
//! [`crate::ansi::Event::to_html`] fragment after another (the script files each under
//! its section), each event's id being the log offset it reached; `end` carries the
//! job's final status. The terminal state (colours, open sections) at `O` is rebuilt by
//! feeding `[S, O)` to a [`LogRenderer`] before streaming, so a browser that reconnects
//! with `Last-Event-ID` gets exactly the lines it missed.
//!
//! Logs past [`INLINE_MAX`] are shown from their last part only (with a link to the raw
//! log), starting on a line boundary; the live renderer starts at the same place.

use crate::ansi::{render_document, LogRenderer};
use crate::app::AppState;
use crate::loghub::LogSubscription;
use crate::ui::page::{open_project, PageError, SignedIn};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use slipway_db::{Job, JobId};
use std::convert::Infallible;
use std::time::Duration;

/// The most of a log the page renders inline.
pub const INLINE_MAX: u64 = 2 << 20;

/// What the page shows of a log, and where the live stream continues.
pub struct PageLog {
    pub html: String,
    /// Where the shown part starts (0 unless the log is long).
    pub start: u64,
    /// Where the live stream continues.
    pub offset: u64,
    pub size: u64,
}

async fn read_range(app: &AppState, job: JobId, from: u64, to: u64) -> Result<Vec<u8>, PageError> {
    let mut data = Vec::with_capacity((to - from) as usize);
    let mut pos = from;
    while pos < to {
        let want = ((to - pos) as usize).min(8 << 20);
        let slice = app.store.read_log(job, pos as i64, want).await?;
        if slice.data.is_empty() {
            break;
        }
        pos += slice.data.len() as u64;
        data.extend_from_slice(&slice.data);
    }
    Ok(data)
}

/// The log as the job page first shows it.
pub async fn for_page(app: &AppState, job: &Job) -> Result<PageLog, PageError> {
    let size = app.store.log_size(job.id).await?.max(0) as u64;
    let mut start = size.saturating_sub(INLINE_MAX);
    let mut data = read_range(app, job.id, start, size).await?;
    if start > 0 {
        // Start on a line of its own.
        let cut = data
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| i + 1)
            .unwrap_or(0);
        data.drain(..cut);
        start += cut as u64;
    }
    let finished = job.status.is_finished();
    let shown = if finished {
        data.len()
    } else {
        data.iter()
            .rposition(|&b| b == b'\n')
            .map(|i| i + 1)
            .unwrap_or(0)
    };
    let html = render_document(&data[..shown]);
    Ok(PageLog {
        html,
        start,
        offset: start + shown as u64,
        size,
    })
}

#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    #[serde(default)]
    pub start: u64,
    #[serde(default)]
    pub offset: u64,
}

struct Live {
    sub: LogSubscription,
    renderer: LogRenderer,
    done: bool,
}

fn fragments(events: Vec<crate::ansi::Event>) -> String {
    events.iter().map(|e| e.to_html()).collect()
}

/// `GET /projects/{project}/jobs/{id}/log.events`: the live log as rendered HTML.
pub async fn events(
    State(app): State<AppState>,
    SignedIn(viewer): SignedIn,
    Path((name, id)): Path<(String, i64)>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    let (project, _) = open_project(&app, &viewer, &name).await?;
    let job = crate::ui::jobs::job_of(&app, &project, id).await?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let offset = resume.unwrap_or(q.offset).max(q.start);
    let mut renderer = LogRenderer::new();
    let before = read_range(&app, job.id, q.start, offset).await?;
    // The terminal state at `offset`; these lines are on the page already.
    renderer.push(&before);
    let offset = q.start + before.len() as u64;
    let live = Live {
        sub: app.hub.subscribe(job.id.0.max(0) as u64, offset),
        renderer,
        done: false,
    };
    let shutdown = app.shutdown.clone();
    let store = app.store.clone();
    let job_id = job.id;
    let stream = futures_util::stream::unfold(live, move |mut st| {
        let shutdown = shutdown.clone();
        let store = store.clone();
        async move {
            if st.done {
                return None;
            }
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    n = st.sub.next() => n,
                };
                match next {
                    Some(Ok(chunk)) => {
                        let html = fragments(st.renderer.push(&chunk.data));
                        if html.is_empty() {
                            continue;
                        }
                        let ev = SseEvent::default()
                            .event("log")
                            .id(chunk.end().to_string())
                            .data(html);
                        return Some((Ok::<_, Infallible>(ev), st));
                    }
                    Some(Err(e)) => {
                        st.done = true;
                        tracing::warn!(job = job_id.0, error = %e, "live log failed");
                        let ev = SseEvent::default()
                            .event("failure")
                            .data("the log could not be read; reload the page");
                        return Some((Ok(ev), st));
                    }
                    None => {
                        st.done = true;
                        let rest = fragments(st.renderer.finish());
                        let status = store.job(job_id).await.ok().map(|j| j.status.as_str());
                        let ev = SseEvent::default()
                            .event("end")
                            .id(st.sub.offset().to_string())
                            .data(json!({"status": status, "html": rest}).to_string());
                        return Some((Ok(ev), st));
                    }
                }
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
