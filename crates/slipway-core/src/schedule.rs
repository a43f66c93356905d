//! The pipeline state machine: given a plan and the status of every job so far, which
//! jobs start now, which wait, which are skipped, and what the pipeline's status is. It
//! follows GitLab's rules: a job without `needs` waits for every earlier stage, a job with
//! `needs` waits for those jobs only; `on_success` runs when they all passed (allowed
//! failures count as passed), `on_failure` when one failed, `always` in any case; manual
//! jobs wait to be played and delayed jobs to be due. The local runner, the server and the
//! agents all drive jobs through this one function, so they agree on semantics.

use crate::model::When;
use crate::plan::Plan;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for the jobs it depends on.
    Created,
    /// Ready: waiting for an executor slot.
    Pending,
    Running,
    Success,
    Failed,
    Canceled,
    Skipped,
    /// A manual job waiting to be played.
    Manual,
    /// A delayed job waiting for its `start_in` to pass (also a deployment job waiting
    /// for its environment's wait timer).
    Scheduled,
    /// A deployment job held until its protected environment's approvals are given
    /// (GitLab shows these as blocked manual jobs; they cannot be played).
    WaitingForApproval,
    /// Waiting for its `resource_group` to be free (GitLab's `waiting_for_resource`).
    WaitingForResource,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Created => "created",
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Success => "success",
            JobStatus::Failed => "failed",
            JobStatus::Canceled => "canceled",
            JobStatus::Skipped => "skipped",
            JobStatus::Manual => "manual",
            JobStatus::Scheduled => "scheduled",
            JobStatus::WaitingForApproval => "waiting_for_approval",
            JobStatus::WaitingForResource => "waiting_for_resource",
        }
    }

    /// Finished for good (a played manual job goes back to pending).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobStatus::Success | JobStatus::Failed | JobStatus::Canceled | JobStatus::Skipped
        )
    }

    pub fn parse(s: &str) -> Option<JobStatus> {
        Some(match s {
            "created" => JobStatus::Created,
            "pending" => JobStatus::Pending,
            "running" => JobStatus::Running,
            "success" => JobStatus::Success,
            "failed" => JobStatus::Failed,
            "canceled" => JobStatus::Canceled,
            "skipped" => JobStatus::Skipped,
            "manual" => JobStatus::Manual,
            "scheduled" => JobStatus::Scheduled,
            "waiting_for_approval" => JobStatus::WaitingForApproval,
            "waiting_for_resource" => JobStatus::WaitingForResource,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PipelineStatus {
    Created,
    Running,
    Success,
    Failed,
    Canceled,
    /// Waiting for a manual job that is not allowed to fail.
    Blocked,
    Skipped,
}

impl PipelineStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PipelineStatus::Created => "created",
            PipelineStatus::Running => "running",
            PipelineStatus::Success => "success",
            PipelineStatus::Failed => "failed",
            PipelineStatus::Canceled => "canceled",
            PipelineStatus::Blocked => "blocked",
            PipelineStatus::Skipped => "skipped",
        }
    }
}

/// What should happen to a job now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Keep waiting.
    Wait,
    /// Start it (it becomes pending).
    Start,
    /// It will not run.
    Skip,
    /// Becomes a playable manual job.
    AwaitPlay,
    /// Becomes scheduled; start when its delay has passed.
    Schedule,
}

/// The jobs a job waits for: its `needs`, or every job of earlier stages.
pub fn predecessors(plan: &Plan, job: usize) -> Vec<usize> {
    let j = &plan.jobs[job];
    match &j.needs {
        Some(needs) => needs
            .iter()
            .filter_map(|n| plan.jobs.iter().position(|p| p.name == n.job))
            .collect(),
        None => plan
            .jobs
            .iter()
            .enumerate()
            .filter(|(_, p)| p.stage_index < j.stage_index)
            .map(|(i, _)| i)
            .collect(),
    }
}

/// The plan restricted to the jobs named in `names` (a planned name such as `test 1/3`,
/// or a job's key such as `test`, which selects all its instances) and, with
/// `with_needs`, every job they wait for, transitively (their `needs`, or for jobs without
/// `needs` every job of earlier stages). `needs` on jobs left out are dropped, so the
/// selected jobs start without them; `dependencies` are kept as planned, so a runner can
/// take those artifacts from an earlier run. An unknown name is an error naming it.
pub fn select(plan: &Plan, names: &[String], with_needs: bool) -> Result<Plan, String> {
    let n = plan.jobs.len();
    let mut keep = vec![false; n];
    let mut stack = Vec::new();
    for name in names {
        let mut found = false;
        for (i, j) in plan.jobs.iter().enumerate() {
            if &j.name == name || &j.job == name {
                found = true;
                if !keep[i] {
                    keep[i] = true;
                    stack.push(i);
                }
            }
        }
        if !found {
            return Err(format!("no job `{name}` in this pipeline"));
        }
    }
    if with_needs {
        while let Some(i) = stack.pop() {
            for p in predecessors(plan, i) {
                if !keep[p] {
                    keep[p] = true;
                    stack.push(p);
                }
            }
        }
    }
    let mut out = plan.clone();
    out.jobs = plan
        .jobs
        .iter()
        .enumerate()
        .filter(|(i, _)| keep[*i])
        .map(|(_, j)| j.clone())
        .collect();
    let kept: std::collections::HashSet<String> = out.jobs.iter().map(|j| j.name.clone()).collect();
    for j in out.jobs.iter_mut() {
        if let Some(needs) = j.needs.as_mut() {
            needs.retain(|nd| kept.contains(&nd.job));
        }
    }
    Ok(out)
}

/// Outcome of a set of finished predecessors, the way GitLab composes statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upstream {
    Passed,
    Failed,
    /// Every predecessor was skipped (a job needing only skipped jobs is skipped).
    Skipped,
    /// Something is still running, waiting, or is a blocking manual job.
    NotDone,
}

fn upstream(plan: &Plan, statuses: &[JobStatus], preds: &[usize], needs_mode: bool) -> Upstream {
    let mut failed = false;
    let mut all_skipped = !preds.is_empty();
    for &p in preds {
        let s = statuses[p];
        let job = &plan.jobs[p];
        match s {
            JobStatus::Success => all_skipped = false,
            JobStatus::Failed | JobStatus::Canceled => {
                all_skipped = false;
                if !job.allow_failure {
                    failed = true;
                }
            }
            JobStatus::Skipped => {}
            // An unplayed manual job that may fail does not hold up later stages; one that
            // is needed, or may not fail, does.
            JobStatus::Manual if !needs_mode && job.allow_failure => all_skipped = false,
            _ => return Upstream::NotDone,
        }
    }
    if failed {
        Upstream::Failed
    } else if all_skipped && needs_mode {
        Upstream::Skipped
    } else {
        Upstream::Passed
    }
}

/// Decide one job that is still `Created`.
pub fn decide(plan: &Plan, statuses: &[JobStatus], job: usize) -> Decision {
    if statuses[job] != JobStatus::Created {
        return Decision::Wait;
    }
    decide_after(plan, statuses, job, &predecessors(plan, job))
}

/// [`decide`] for a `Created` job whose predecessors are `preds`.
fn decide_after(plan: &Plan, statuses: &[JobStatus], job: usize, preds: &[usize]) -> Decision {
    let needs_mode = plan.jobs[job].needs.is_some();
    let up = upstream(plan, statuses, preds, needs_mode);
    let when = plan.jobs[job].when;
    match (up, when) {
        (Upstream::NotDone, _) => Decision::Wait,
        (_, When::Always) => Decision::Start,
        (Upstream::Failed, When::OnFailure) => Decision::Start,
        (Upstream::Failed, _) => Decision::Skip,
        (Upstream::Skipped, _) => Decision::Skip,
        (Upstream::Passed, When::OnSuccess) => Decision::Start,
        (Upstream::Passed, When::OnFailure) => Decision::Skip,
        (Upstream::Passed, When::Manual) => Decision::AwaitPlay,
        (Upstream::Passed, When::Delayed) => Decision::Schedule,
        (Upstream::Passed, When::Never) => Decision::Skip,
    }
}

/// Apply every decision that can be made now, repeatedly (a skip can unblock others).
/// Returns the indices of jobs that became pending, so the caller can start them.
pub fn advance(plan: &Plan, statuses: &mut [JobStatus]) -> Vec<usize> {
    Graph::new(plan).advance(plan, statuses)
}

/// Who waits for whom in a plan, worked out once: a caller that advances the same plan
/// after every finished job ([`Graph::advance`]) then does not look every job's `needs`
/// up by name each time.
#[derive(Debug, Clone)]
pub struct Graph {
    preds: Vec<Preds>,
    /// Job indices ordered by stage: a job without `needs` waits for a prefix of it.
    by_stage: Vec<usize>,
}

#[derive(Debug, Clone)]
enum Preds {
    /// The jobs its `needs` name.
    Needs(Vec<usize>),
    /// Every job of an earlier stage: `by_stage[..n]`.
    EarlierStages(usize),
}

impl Graph {
    pub fn new(plan: &Plan) -> Graph {
        let mut first: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for (i, j) in plan.jobs.iter().enumerate() {
            first.entry(j.name.as_str()).or_insert(i);
        }
        let mut by_stage: Vec<usize> = (0..plan.jobs.len()).collect();
        by_stage.sort_by_key(|&i| plan.jobs[i].stage_index);
        let preds = plan
            .jobs
            .iter()
            .map(|j| match &j.needs {
                Some(needs) => Preds::Needs(
                    needs
                        .iter()
                        .filter_map(|n| first.get(n.job.as_str()).copied())
                        .collect(),
                ),
                None => Preds::EarlierStages(
                    by_stage.partition_point(|&i| plan.jobs[i].stage_index < j.stage_index),
                ),
            })
            .collect();
        Graph { preds, by_stage }
    }

    /// The jobs `job` waits for (the same set as [`predecessors`]).
    fn preds(&self, job: usize) -> &[usize] {
        match &self.preds[job] {
            Preds::Needs(v) => v,
            Preds::EarlierStages(n) => &self.by_stage[..*n],
        }
    }

    /// [`advance`] for the plan this graph was made from.
    pub fn advance(&self, plan: &Plan, statuses: &mut [JobStatus]) -> Vec<usize> {
        let mut started = Vec::new();
        loop {
            let mut changed = false;
            for i in 0..plan.jobs.len() {
                if statuses[i] != JobStatus::Created {
                    continue;
                }
                let next = match decide_after(plan, statuses, i, self.preds(i)) {
                    Decision::Wait => continue,
                    Decision::Start => {
                        started.push(i);
                        JobStatus::Pending
                    }
                    Decision::Skip => JobStatus::Skipped,
                    Decision::AwaitPlay => JobStatus::Manual,
                    Decision::Schedule => JobStatus::Scheduled,
                };
                statuses[i] = next;
                changed = true;
            }
            if !changed {
                return started;
            }
        }
    }
}

/// The original, job-by-job form of [`Graph::advance`], kept to check it against.
#[cfg(test)]
fn advance_by_lookup(plan: &Plan, statuses: &mut [JobStatus]) -> Vec<usize> {
    let mut started = Vec::new();
    loop {
        let mut changed = false;
        for i in 0..plan.jobs.len() {
            let next = match decide(plan, statuses, i) {
                Decision::Wait => continue,
                Decision::Start => {
                    started.push(i);
                    JobStatus::Pending
                }
                Decision::Skip => JobStatus::Skipped,
                Decision::AwaitPlay => JobStatus::Manual,
                Decision::Schedule => JobStatus::Scheduled,
            };
            statuses[i] = next;
            changed = true;
        }
        if !changed {
            return started;
        }
    }
}

/// When nothing more can happen by itself (only manual jobs and what waits on them are
/// left), the jobs still waiting will not run in this pipeline: mark them skipped.
pub fn settle(plan: &Plan, statuses: &mut [JobStatus]) {
    let busy = statuses.iter().any(|s| {
        matches!(
            s,
            JobStatus::Pending
                | JobStatus::Running
                | JobStatus::Scheduled
                | JobStatus::WaitingForApproval
                | JobStatus::WaitingForResource
        )
    });
    if busy {
        return;
    }
    let _ = plan;
    for s in statuses.iter_mut() {
        if *s == JobStatus::Created {
            *s = JobStatus::Skipped;
        }
    }
}

/// The pipeline's status from its jobs' statuses.
pub fn pipeline_status(plan: &Plan, statuses: &[JobStatus]) -> PipelineStatus {
    if statuses.is_empty() {
        return PipelineStatus::Skipped;
    }
    let active = statuses.iter().any(|s| {
        matches!(
            s,
            JobStatus::Pending
                | JobStatus::Running
                | JobStatus::Scheduled
                | JobStatus::WaitingForResource
        )
    });
    if active {
        return PipelineStatus::Running;
    }
    if statuses.contains(&JobStatus::Canceled) {
        let failed_hard = statuses
            .iter()
            .enumerate()
            .any(|(i, s)| *s == JobStatus::Failed && !plan.jobs[i].allow_failure);
        return if failed_hard {
            PipelineStatus::Failed
        } else {
            PipelineStatus::Canceled
        };
    }
    if statuses
        .iter()
        .enumerate()
        .any(|(i, s)| *s == JobStatus::Failed && !plan.jobs[i].allow_failure)
    {
        return PipelineStatus::Failed;
    }
    if statuses
        .iter()
        .enumerate()
        .any(|(i, s)| *s == JobStatus::Manual && !plan.jobs[i].allow_failure)
        || statuses.contains(&JobStatus::WaitingForApproval)
    {
        return PipelineStatus::Blocked;
    }
    if statuses.contains(&JobStatus::Created) {
        return PipelineStatus::Created;
    }
    if statuses.iter().all(|s| *s == JobStatus::Skipped) {
        return PipelineStatus::Skipped;
    }
    PipelineStatus::Success
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{PlannedJob, PlannedNeed};

    fn job(
        name: &str,
        stage: usize,
        when: When,
        allow_failure: bool,
        needs: Option<&[&str]>,
    ) -> PlannedJob {
        PlannedJob {
            name: name.into(),
            job: name.into(),
            stage: format!("s{stage}"),
            stage_index: stage,
            when,
            start_in: None,
            allow_failure,
            allow_failure_exit_codes: Vec::new(),
            needs: needs.map(|n| {
                n.iter()
                    .map(|j| PlannedNeed {
                        job: j.to_string(),
                        artifacts: true,
                        optional: false,
                    })
                    .collect()
            }),
            dependencies: Vec::new(),
            variables: Vec::new(),
            node_index: None,
            node_total: 1,
            interruptible: false,
            definition: 0,
        }
    }

    fn plan(jobs: Vec<PlannedJob>) -> Plan {
        Plan {
            name: None,
            stages: Vec::new(),
            workflow_variables: Vec::new(),
            jobs,
        }
    }

    fn run(plan: &Plan, outcomes: &[(&str, JobStatus)]) -> Vec<JobStatus> {
        let mut st = vec![JobStatus::Created; plan.jobs.len()];
        loop {
            let started = advance(plan, &mut st);
            let pending: Vec<usize> = (0..st.len())
                .filter(|i| st[*i] == JobStatus::Pending)
                .collect();
            if pending.is_empty() && started.is_empty() {
                break;
            }
            for i in pending {
                let name = &plan.jobs[i].name;
                st[i] = outcomes
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, s)| *s)
                    .unwrap_or(JobStatus::Success);
            }
        }
        settle(plan, &mut st);
        st
    }

    /// The precomputed graph decides exactly as looking every job up does, over many
    /// generated plans (stages, needs, missing needs, every `when`, allowed failures)
    /// and outcomes.
    #[test]
    fn graph_advances_like_the_lookup() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n.max(1)
        };
        let whens = [
            When::OnSuccess,
            When::OnSuccess,
            When::OnFailure,
            When::Always,
            When::Manual,
            When::Delayed,
            When::Never,
        ];
        for _ in 0..300 {
            let n = 1 + next(12) as usize;
            let names: Vec<String> = (0..n).map(|i| format!("j{i}")).collect();
            let mut jobs = Vec::new();
            for i in 0..n {
                let needs: Option<Vec<&str>> = (next(3) == 0).then(|| {
                    (0..next(3))
                        .map(|_| {
                            if next(5) == 0 {
                                "missing"
                            } else {
                                names[next(n as u64) as usize].as_str()
                            }
                        })
                        .collect()
                });
                jobs.push(job(
                    &names[i],
                    next(4) as usize,
                    whens[next(whens.len() as u64) as usize],
                    next(3) == 0,
                    needs.as_deref(),
                ));
            }
            let p = plan(jobs);
            let graph = Graph::new(&p);
            let mut a = vec![JobStatus::Created; n];
            let mut b = a.clone();
            for _ in 0..(3 * n) {
                assert_eq!(graph.advance(&p, &mut a), advance_by_lookup(&p, &mut b));
                assert_eq!(a, b);
                // Finish, play or fire some of what waits.
                for st in a.iter_mut() {
                    let roll = next(4);
                    *st = match (*st, roll) {
                        (JobStatus::Pending | JobStatus::Scheduled, 0) => JobStatus::Success,
                        (JobStatus::Pending | JobStatus::Scheduled, 1) => JobStatus::Failed,
                        (JobStatus::Pending, 2) => JobStatus::Canceled,
                        (JobStatus::Manual, 0) => JobStatus::Success,
                        (s, _) => s,
                    };
                }
                b.clone_from(&a);
            }
        }
    }

    #[test]
    fn stages_run_in_order() {
        let p = plan(vec![
            job("a", 0, When::OnSuccess, false, None),
            job("b", 1, When::OnSuccess, false, None),
        ]);
        let mut st = vec![JobStatus::Created; 2];
        assert_eq!(advance(&p, &mut st), vec![0]);
        assert_eq!(st[1], JobStatus::Created);
        st[0] = JobStatus::Success;
        assert_eq!(advance(&p, &mut st), vec![1]);
    }

    #[test]
    fn failure_skips_later_stages_and_runs_on_failure_jobs() {
        let p = plan(vec![
            job("a", 0, When::OnSuccess, false, None),
            job("b", 1, When::OnSuccess, false, None),
            job("c", 2, When::OnSuccess, false, None),
            job("cleanup", 2, When::OnFailure, false, None),
            job("report", 2, When::Always, false, None),
        ]);
        let st = run(&p, &[("a", JobStatus::Failed)]);
        assert_eq!(
            st,
            vec![
                JobStatus::Failed,
                JobStatus::Skipped,
                JobStatus::Skipped,
                JobStatus::Success,
                JobStatus::Success
            ]
        );
        assert_eq!(pipeline_status(&p, &st), PipelineStatus::Failed);
    }

    #[test]
    fn allowed_failure_does_not_stop_the_pipeline() {
        let p = plan(vec![
            job("a", 0, When::OnSuccess, true, None),
            job("b", 1, When::OnSuccess, false, None),
            job("c", 1, When::OnFailure, false, None),
        ]);
        let st = run(&p, &[("a", JobStatus::Failed)]);
        assert_eq!(
            st,
            vec![JobStatus::Failed, JobStatus::Success, JobStatus::Skipped]
        );
        assert_eq!(pipeline_status(&p, &st), PipelineStatus::Success);
    }

    #[test]
    fn needs_start_before_the_stage_is_done() {
        let p = plan(vec![
            job("slow", 0, When::OnSuccess, false, None),
            job("fast", 0, When::OnSuccess, false, None),
            job("after-fast", 1, When::OnSuccess, false, Some(&["fast"])),
        ]);
        let mut st = vec![JobStatus::Created; 3];
        advance(&p, &mut st);
        st[0] = JobStatus::Running;
        st[1] = JobStatus::Success;
        assert_eq!(advance(&p, &mut st), vec![2]);
    }

    #[test]
    fn empty_needs_start_at_once() {
        let p = plan(vec![
            job("a", 0, When::OnSuccess, false, None),
            job("b", 1, When::OnSuccess, false, Some(&[])),
        ]);
        let mut st = vec![JobStatus::Created; 2];
        assert_eq!(advance(&p, &mut st), vec![0, 1]);
    }

    #[test]
    fn a_job_needing_a_skipped_job_is_skipped() {
        let p = plan(vec![
            job("a", 0, When::OnSuccess, false, None),
            job("b", 1, When::OnSuccess, false, Some(&["a"])),
            job("c", 2, When::OnSuccess, false, Some(&["b"])),
        ]);
        let st = run(&p, &[("a", JobStatus::Failed)]);
        assert_eq!(
            st,
            vec![JobStatus::Failed, JobStatus::Skipped, JobStatus::Skipped]
        );
    }

    #[test]
    fn manual_jobs_wait_and_blocking_ones_block() {
        let p = plan(vec![
            job("build", 0, When::OnSuccess, false, None),
            job("optional", 1, When::Manual, true, None),
            job("gate", 1, When::Manual, false, None),
            job("deploy", 2, When::OnSuccess, false, None),
        ]);
        let st = run(&p, &[]);
        assert_eq!(st[1], JobStatus::Manual);
        assert_eq!(st[2], JobStatus::Manual);
        assert_eq!(st[3], JobStatus::Skipped);
        assert_eq!(pipeline_status(&p, &st), PipelineStatus::Blocked);
    }

    #[test]
    fn optional_manual_job_does_not_hold_later_stages() {
        let p = plan(vec![
            job("optional", 0, When::Manual, true, None),
            job("next", 1, When::OnSuccess, false, None),
        ]);
        let st = run(&p, &[]);
        assert_eq!(st, vec![JobStatus::Manual, JobStatus::Success]);
        assert_eq!(pipeline_status(&p, &st), PipelineStatus::Success);
    }

    #[test]
    fn delayed_jobs_are_scheduled() {
        let p = plan(vec![job("later", 0, When::Delayed, false, None)]);
        let mut st = vec![JobStatus::Created];
        advance(&p, &mut st);
        assert_eq!(st[0], JobStatus::Scheduled);
        assert_eq!(pipeline_status(&p, &st), PipelineStatus::Running);
    }

    #[test]
    fn canceled_pipeline() {
        let p = plan(vec![
            job("a", 0, When::OnSuccess, false, None),
            job("b", 1, When::OnSuccess, false, None),
        ]);
        let st = vec![JobStatus::Canceled, JobStatus::Skipped];
        assert_eq!(pipeline_status(&p, &st), PipelineStatus::Canceled);
    }

    #[test]
    fn select_adds_needs_transitively() {
        let p = plan(vec![
            job("setup", 0, When::OnSuccess, false, None),
            job("build", 1, When::OnSuccess, false, Some(&["setup"])),
            job("lint", 1, When::OnSuccess, false, Some(&[])),
            job("test", 2, When::OnSuccess, false, Some(&["build"])),
            job("deploy", 3, When::OnSuccess, false, None),
        ]);
        let names = |p: &Plan| p.jobs.iter().map(|j| j.name.clone()).collect::<Vec<_>>();
        let only = select(&p, &["test".into()], false).expect("select");
        assert_eq!(names(&only), vec!["test"]);
        assert_eq!(only.jobs[0].needs.as_ref().map(|n| n.len()), Some(0));
        let with = select(&p, &["test".into()], true).expect("select");
        assert_eq!(names(&with), vec!["setup", "build", "test"]);
        // Without `needs`, a job waits for every earlier stage.
        let all = select(&p, &["deploy".into()], true).expect("select");
        assert_eq!(all.jobs.len(), 5);
        assert!(select(&p, &["nope".into()], true)
            .expect_err("unknown job")
            .contains("nope"));
    }

    #[test]
    fn status_names_round_trip() {
        for s in [
            JobStatus::Created,
            JobStatus::Pending,
            JobStatus::Running,
            JobStatus::Success,
            JobStatus::Failed,
            JobStatus::Canceled,
            JobStatus::Skipped,
            JobStatus::Manual,
            JobStatus::Scheduled,
            JobStatus::WaitingForApproval,
            JobStatus::WaitingForResource,
        ] {
            assert_eq!(JobStatus::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn held_deployment_jobs_hold_later_jobs_and_the_pipeline() {
        let p = plan(vec![
            job("build", 0, When::OnSuccess, false, None),
            job("deploy", 1, When::OnSuccess, false, None),
            job("smoke", 2, When::OnSuccess, false, None),
        ]);
        let mut st = vec![
            JobStatus::Success,
            JobStatus::WaitingForApproval,
            JobStatus::Created,
        ];
        assert!(advance(&p, &mut st).is_empty());
        assert_eq!(st[2], JobStatus::Created, "smoke waits for the approval");
        assert_eq!(pipeline_status(&p, &st), PipelineStatus::Blocked);
        st[1] = JobStatus::WaitingForResource;
        assert!(advance(&p, &mut st).is_empty());
        assert_eq!(pipeline_status(&p, &st), PipelineStatus::Running);
    }
}
