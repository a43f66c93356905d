//! The pipeline graph: one column per stage, one card per job, and the `needs` edges as
//! an SVG drawn under the cards. The layout is computed here (fixed card sizes), so the
//! page needs no script to draw it, stays readable with dozens of jobs per stage (columns
//! grow downwards, the graph scrolls sideways), and the edges land on the cards exactly.

use crate::ui::page::{icon_button, Viewer};
use crate::ui::view::{self, Status};
use maud::{html, Markup};
use slipway_core::plan::Plan;
use slipway_core::schedule::JobStatus;
use slipway_db::Job;
use std::collections::HashMap;
use std::fmt::Write;

const CARD_W: i64 = 224;
const CARD_H: i64 = 40;
const GAP_X: i64 = 64;
const GAP_Y: i64 = 8;
const HEAD_H: i64 = 36;

/// What a card may offer.
#[derive(Debug, Clone, Copy, Default)]
pub struct CardActions {
    pub play: bool,
    pub retry: bool,
    pub cancel: bool,
}

/// One job placed in the graph.
struct Placed<'a> {
    job: &'a Job,
    col: i64,
    row: i64,
}

impl Placed<'_> {
    fn left(&self) -> i64 {
        self.col * (CARD_W + GAP_X)
    }
    fn top(&self) -> i64 {
        HEAD_H + self.row * (CARD_H + GAP_Y)
    }
    fn mid_y(&self) -> i64 {
        self.top() + CARD_H / 2
    }
}

/// The stages in order with their jobs (current attempts), skipping empty stages as
/// GitLab does.
pub fn stages<'a>(plan: Option<&Plan>, jobs: &'a [Job]) -> Vec<(String, Vec<&'a Job>)> {
    let mut order: Vec<(usize, String)> = jobs
        .iter()
        .map(|j| (j.stage_index, j.stage.clone()))
        .collect();
    order.sort();
    order.dedup();
    // The plan's own order wins when the indices do not say (they always should).
    if let Some(p) = plan {
        order.sort_by_key(|(i, name)| {
            (
                p.stages
                    .iter()
                    .position(|s| s == name)
                    .unwrap_or(usize::MAX),
                *i,
            )
        });
    }
    order
        .into_iter()
        .map(|(i, name)| {
            let js: Vec<&Job> = jobs
                .iter()
                .filter(|j| j.stage_index == i && j.stage == name)
                .collect();
            (name, js)
        })
        .collect()
}

/// The edges: (from plan index, to plan index) for every `needs` entry that names a
/// job of this pipeline.
pub fn edges(plan: Option<&Plan>, jobs: &[Job]) -> Vec<(usize, usize)> {
    let Some(plan) = plan else {
        return Vec::new();
    };
    let by_name: HashMap<&str, usize> = plan
        .jobs
        .iter()
        .enumerate()
        .map(|(i, j)| (j.name.as_str(), i))
        .collect();
    let present: std::collections::HashSet<usize> = jobs.iter().map(|j| j.plan_index).collect();
    let mut out = Vec::new();
    for (to, pj) in plan.jobs.iter().enumerate() {
        for n in pj.needs.iter().flatten() {
            if let Some(&from) = by_name.get(n.job.as_str()) {
                if present.contains(&from) && present.contains(&to) {
                    out.push((from, to));
                }
            }
        }
    }
    out
}

/// The graph of a pipeline. `actions` says what the viewer may do to each job
/// (already checked against their role and the job's state).
pub fn render(
    viewer: &Viewer,
    project: &str,
    plan: Option<&Plan>,
    jobs: &[Job],
    actions: &dyn Fn(&Job) -> CardActions,
) -> Markup {
    let stages = stages(plan, jobs);
    let mut placed: HashMap<usize, Placed> = HashMap::new();
    let mut tallest = 0;
    for (col, (_, js)) in stages.iter().enumerate() {
        tallest = tallest.max(js.len() as i64);
        for (row, j) in js.iter().enumerate() {
            placed.insert(
                j.plan_index,
                Placed {
                    job: j,
                    col: col as i64,
                    row: row as i64,
                },
            );
        }
    }
    let width = (stages.len() as i64 * (CARD_W + GAP_X) - GAP_X).max(CARD_W);
    let height = HEAD_H + tallest * (CARD_H + GAP_Y);
    let edges = edges(plan, jobs);
    let mut paths = String::new();
    for (from, to) in &edges {
        let (Some(a), Some(b)) = (placed.get(from), placed.get(to)) else {
            continue;
        };
        let d = if a.col < b.col {
            // Right side of the need to the left side of the job.
            let (x1, y1, x2, y2) = (a.left() + CARD_W, a.mid_y(), b.left(), b.mid_y());
            let c = (x2 - x1) / 2;
            format!("M{x1} {y1}C{} {y1} {} {y2} {x2} {y2}", x1 + c, x2 - c)
        } else {
            // A need in the same stage (or a later one): a loop on the left side.
            let (x, y1, y2) = (b.left(), a.mid_y(), b.mid_y());
            let bulge = 18 + (y2 - y1).abs() / 12;
            format!("M{x} {y1}C{} {y1} {} {y2} {x} {y2}", x - bulge, x - bulge)
        };
        let _ = write!(
            paths,
            "<path class=\"edge\" data-from=\"{from}\" data-to=\"{to}\" d=\"{d}\"/>"
        );
    }
    let needs_of = |i: usize| -> Vec<&str> {
        edges
            .iter()
            .filter(|(_, t)| *t == i)
            .filter_map(|(f, _)| placed.get(f).map(|p| p.job.name.as_str()))
            .collect()
    };
    html! {
        div.graph-scroll {
            div.graph style=(format!("width:{width}px;height:{height}px")) data-edges=(edges.len()) {
                svg.edges width=(width) height=(height) aria-hidden="true" {
                    (maud::PreEscaped(paths))
                }
                @for (col, (name, js)) in stages.iter().enumerate() {
                    @let status = view::composite(js.iter().map(|j| (j.status, j.allow_failure)));
                    h3.stage-head id=(format!("stage-{name}")) style=(format!("left:{}px;width:{CARD_W}px", col as i64 * (CARD_W + GAP_X))) {
                        (view::icon(status)) span { (name) } span.count { (js.len()) }
                    }
                }
                @for p in placed.values() {
                    @let j = p.job;
                    @let st = Status::of_job(j.status, j.allow_failure);
                    @let a = actions(j);
                    @let needs = needs_of(j.plan_index);
                    div class={"job-card st-" (st.key())} id=(format!("job-{}", j.plan_index)) data-index=(j.plan_index) data-stage=(j.stage)
                        style=(format!("left:{}px;top:{}px;width:{CARD_W}px;height:{CARD_H}px", p.left(), p.top())) {
                        a.job-link href=(format!("/projects/{project}/jobs/{}", j.id))
                            title=(if needs.is_empty() { format!("{} — {}", j.name, st.label()) } else { format!("{} — {} (needs {})", j.name, st.label(), needs.join(", ")) }) {
                            (view::icon(st))
                            span.job-name { (j.name) }
                        }
                        @if a.play {
                            (icon_button(viewer, &format!("/projects/{project}/jobs/{}/play", j.id), "▶", &format!("Run {}", j.name), "icon-btn play"))
                        } @else if a.cancel {
                            (icon_button(viewer, &format!("/projects/{project}/jobs/{}/cancel", j.id), "✕", &format!("Cancel {}", j.name), "icon-btn cancel"))
                        } @else if a.retry {
                            (icon_button(viewer, &format!("/projects/{project}/jobs/{}/retry", j.id), "↻", &format!("Retry {}", j.name), "icon-btn retry"))
                        }
                    }
                }
            }
        }
    }
}

/// What can be done to a job in its state, if the role allows (GitLab's rules: play a
/// manual job, cancel one that waits for a runner, runs or is delayed, retry a finished
/// one that was not skipped). Jobs still waiting for earlier stages are canceled with
/// their pipeline.
pub fn possible(j: &Job) -> CardActions {
    CardActions {
        play: j.status == JobStatus::Manual,
        cancel: matches!(
            j.status,
            JobStatus::Pending
                | JobStatus::Running
                | JobStatus::Scheduled
                | JobStatus::WaitingForApproval
                | JobStatus::WaitingForResource
        ),
        retry: matches!(
            j.status,
            JobStatus::Success | JobStatus::Failed | JobStatus::Canceled
        ),
    }
}
