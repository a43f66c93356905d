//! Live pages: `GET /-/events?watch=W` is a server-sent event stream that says `changed`
//! whenever what a page shows may have changed, so its script fetches the page again
//! and swaps its `data-live` regions (the HTML stays server-rendered; no state lives in
//! the browser). `W` is `pipeline:ID` (the pipeline and its jobs), `project:ID` (its
//! pipelines and their jobs) or `projects` (any pipeline the viewer may see).
//!
//! The stream follows the store's change events (from this server, and from the others
//! on PostgreSQL through `LISTEN`), collects them for a moment so a burst of job changes
//! makes one reload, and is silent otherwise but for keep-alives.

use crate::app::AppState;
use crate::ui::page::{PageError, SignedIn};
use axum::extract::{Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use slipway_db::{Action, Event, PipelineId, ProjectId};
use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// How long changes are gathered before the page is told.
const SETTLE: Duration = Duration::from_millis(150);

#[derive(Debug, Deserialize)]
pub struct WatchQuery {
    pub watch: String,
}

#[derive(Debug, Clone, Copy)]
enum Watch {
    Pipeline(PipelineId),
    Project(ProjectId),
    Projects,
}

fn parse(w: &str) -> Option<Watch> {
    if w == "projects" {
        return Some(Watch::Projects);
    }
    let (kind, id) = w.split_once(':')?;
    let id: i64 = id.parse().ok()?;
    match kind {
        "pipeline" => Some(Watch::Pipeline(PipelineId(id))),
        "project" => Some(Watch::Project(ProjectId(id))),
        _ => None,
    }
}

/// The projects of pipelines seen so far (job events name only the pipeline).
#[derive(Default)]
struct Projects(HashMap<PipelineId, ProjectId>);

impl Projects {
    async fn of(&mut self, app: &AppState, p: PipelineId) -> Option<ProjectId> {
        if let Some(id) = self.0.get(&p) {
            return Some(*id);
        }
        let project = app.store.pipeline(p).await.ok()?.project_id;
        if self.0.len() > 4096 {
            self.0.clear();
        }
        self.0.insert(p, project);
        Some(project)
    }
}

async fn matters(app: &AppState, w: Watch, e: &Event, known: &mut Projects) -> bool {
    match (w, *e) {
        (Watch::Pipeline(id), Event::PipelineChanged { pipeline, .. }) => pipeline == id,
        (Watch::Pipeline(id), Event::JobChanged { pipeline, .. }) => pipeline == id,
        (Watch::Project(id), Event::PipelineChanged { project, .. }) => project == id,
        (Watch::Project(id), Event::JobChanged { pipeline, .. }) => {
            known.of(app, pipeline).await == Some(id)
        }
        (Watch::Project(id), Event::DeploymentChanged { project, .. }) => project == id,
        (Watch::Projects, Event::PipelineChanged { .. }) => true,
        _ => false,
    }
}

/// `GET /-/events?watch=...`.
pub async fn events(
    State(app): State<AppState>,
    SignedIn(viewer): SignedIn,
    Query(q): Query<WatchQuery>,
) -> Result<Response, PageError> {
    let watch = parse(&q.watch).ok_or_else(|| {
        PageError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "Invalid request",
            format!("cannot watch {:?}", q.watch),
        )
    })?;
    // What is watched must be visible to the viewer.
    let project = match watch {
        Watch::Pipeline(p) => Some(app.store.pipeline(p).await?.project_id),
        Watch::Project(p) => Some(p),
        Watch::Projects => None,
    };
    if let Some(p) = project {
        if !app.store.can(&viewer.user, p, Action::View).await? {
            return Err(PageError::not_found("Nothing to watch here."));
        }
    }
    let rx = app.store.subscribe();
    let shutdown = app.shutdown.clone();
    let state = (rx, Projects::default());
    let stream = futures_util::stream::unfold(state, move |(mut rx, mut known)| {
        let app = app.clone();
        let shutdown = shutdown.clone();
        async move {
            // Wait for a change that matters (a lag may have hidden one: count it).
            loop {
                let e = tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    e = rx.recv() => e,
                };
                match e {
                    Ok(e) if matters(&app, watch, &e, &mut known).await => break,
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => return None,
                }
            }
            // Let the rest of a burst arrive, then drop what queued meanwhile.
            tokio::time::sleep(SETTLE).await;
            while let Ok(_) | Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) =
                rx.try_recv()
            {}
            let ev = SseEvent::default().event("changed").data("1");
            Some((Ok::<_, Infallible>(ev), (rx, known)))
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_names() {
        assert!(matches!(
            parse("pipeline:12"),
            Some(Watch::Pipeline(PipelineId(12)))
        ));
        assert!(matches!(
            parse("project:3"),
            Some(Watch::Project(ProjectId(3)))
        ));
        assert!(matches!(parse("projects"), Some(Watch::Projects)));
        assert!(parse("job:1").is_none());
        assert!(parse("pipeline:x").is_none());
    }
}
