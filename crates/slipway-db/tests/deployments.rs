//! Environments, protection rules, deployments and approvals, resource groups,
//! notification webhooks and artifact pins, each case on SQLite and (when configured)
//! PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestDb;
use serde_json::json;
use slipway_db::*;

fn system() -> Actor {
    Actor::system("test")
}

async fn project(s: &Store) -> Project {
    s.create_project(&system(), NewProject::new("shop", "/srv/shop.git"))
        .await
        .unwrap()
}

async fn pipeline_with(
    s: &Store,
    p: &Project,
    jobs: &[(&str, JobStatus, Option<&str>)],
) -> (Pipeline, Vec<Job>) {
    let mut np = NewPipeline::new(p.id, "main", "0123456789abcdef0123", PipelineSource::Push);
    np.jobs = jobs
        .iter()
        .map(|(n, st, group)| NewJob {
            status: *st,
            resource_group: group.map(str::to_string),
            ..NewJob::new(*n, "deploy", 0)
        })
        .collect();
    np.plan = Some(json!({}));
    s.create_pipeline(&system(), np).await.unwrap()
}

fn new_deployment(
    env: EnvironmentId,
    job: Option<JobId>,
    status: DeploymentStatus,
) -> NewDeployment {
    NewDeployment {
        environment: env,
        pipeline: None,
        job,
        ref_name: "main".into(),
        tag: false,
        sha: "0123456789abcdef0123".into(),
        version: "01234567".into(),
        digest: Some("sha256:aa".into()),
        release_artifacts: vec!["job-1".into()],
        settings: Some(json!({"command": "./app"})),
        strategy: Some("blue-green".into()),
        triggered_by: None,
        triggered_by_name: "push pipeline".into(),
        status,
        reason: None,
        rollback_of: None,
        wait_until: None,
        variables: None,
    }
}

async fn actions_since(s: &Store, seq: i64) -> Vec<String> {
    s.audit_entries(seq, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect()
}

async fn head(s: &Store) -> i64 {
    s.audit_recent(1)
        .await
        .unwrap()
        .first()
        .map(|e| e.seq)
        .unwrap_or(0)
}

async fn environments_and_engine_state(db: &TestDb) {
    let s = &db.store;
    let p = project(s).await;
    let e = s
        .ensure_environment(
            p.id,
            "production",
            "production",
            Some("https://shop.example"),
            "shop/production",
        )
        .await
        .unwrap();
    assert_eq!(e.tier, "production");
    // Again: the same row; a missing URL keeps the stored one.
    let again = s
        .ensure_environment(p.id, "production", "production", None, "shop/production")
        .await
        .unwrap();
    assert_eq!(again.id, e.id);
    assert_eq!(again.url.as_deref(), Some("https://shop.example"));
    assert!(s
        .ensure_environment(p.id, "", "other", None, "x")
        .await
        .is_err());
    s.set_environment_listen(e.id, "127.0.0.1:4100")
        .await
        .unwrap();
    assert_eq!(
        s.environment_by_engine_name("shop/production")
            .await
            .unwrap()
            .unwrap()
            .listen
            .as_deref(),
        Some("127.0.0.1:4100")
    );
    assert_eq!(s.environments(p.id).await.unwrap().len(), 1);

    // The engine's record and the deployments it runs change in one transaction.
    let d = s
        .create_deployment(
            &system(),
            new_deployment(e.id, None, DeploymentStatus::Running),
        )
        .await
        .unwrap();
    assert!(d.started_at.is_some());
    assert!(s.engine_states().await.unwrap().is_empty());
    let seq = head(s).await;
    s.save_engine_state(
        "shop/production",
        r#"{"name":"shop/production"}"#,
        &[EngineSync {
            deployment: d.id,
            status: DeploymentStatus::Success,
            phase: json!({"phase": "keeping_old_warm", "until": 5}),
            reason: None,
            release_id: d.id.to_string(),
            switch_us: Some(1500),
        }],
    )
    .await
    .unwrap();
    let now = s.deployment(d.id).await.unwrap();
    assert_eq!(now.status, DeploymentStatus::Success);
    assert_eq!(now.switch_us, Some(1500));
    assert_eq!(now.release_id.as_deref(), Some(d.id.to_string().as_str()));
    assert_eq!(now.phase.as_ref().unwrap()["phase"], "keeping_old_warm");
    assert!(now.finished_at.is_some());
    assert_eq!(actions_since(s, seq).await, ["deployment.finish"]);
    assert_eq!(
        s.engine_states().await.unwrap(),
        [(
            "shop/production".to_string(),
            r#"{"name":"shop/production"}"#.to_string()
        )]
    );
    // An unknown environment is an error, not a silent loss of the record.
    assert!(s.save_engine_state("nope/x", "{}", &[]).await.is_err());
}

async fn protection_rules(db: &TestDb) {
    let s = &db.store;
    let p = project(s).await;
    let alice = s
        .create_user(&system(), "alice", "alice-password", false)
        .await
        .unwrap();
    let bob = s
        .create_user(&system(), "bob", "bob-password-1", false)
        .await
        .unwrap();
    let g = s.create_group(&system(), "release-managers").await.unwrap();
    s.add_group_member(&system(), g.id, bob.id).await.unwrap();
    let seq = head(s).await;
    let rule = s
        .set_protection_rule(
            &system(),
            p.id,
            "production",
            &ProtectionInput {
                required_approvals: 2,
                allow_self_approval: false,
                allowed_branches: vec!["main".into()],
                allowed_tags: vec!["v*".into()],
                wait_timer_ms: 30_000,
                approver_users: vec!["alice".into()],
                approver_groups: vec!["release-managers".into()],
            },
        )
        .await
        .unwrap();
    assert_eq!(rule.required_approvals, 2);
    assert_eq!(rule.approver_users[0].username, "alice");
    assert_eq!(rule.approver_groups[0].name, "release-managers");
    assert_eq!(rule.allowed_tags, ["v*"]);
    assert!(s.is_named_approver(&rule, alice.id).await.unwrap());
    assert!(
        s.is_named_approver(&rule, bob.id).await.unwrap(),
        "through the group"
    );
    assert_eq!(actions_since(s, seq).await, ["protection.set"]);
    let carol = s
        .create_user(&system(), "carol", "carol-password", false)
        .await
        .unwrap();
    assert!(!s.is_named_approver(&rule, carol.id).await.unwrap());

    // Replacing keeps one rule; unknown approvers are refused.
    let rule = s
        .set_protection_rule(
            &system(),
            p.id,
            "production",
            &ProtectionInput {
                required_approvals: 1,
                approver_users: vec!["carol".into()],
                ..ProtectionInput::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(rule.approver_users.len(), 1);
    assert!(rule.approver_groups.is_empty());
    assert_eq!(s.protection_rules(p.id).await.unwrap().len(), 1);
    let e = s
        .set_protection_rule(
            &system(),
            p.id,
            "production",
            &ProtectionInput {
                approver_users: vec!["nobody".into()],
                ..ProtectionInput::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
    let e = s
        .set_protection_rule(
            &system(),
            p.id,
            "production",
            &ProtectionInput {
                required_approvals: 99,
                ..ProtectionInput::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }), "{e}");
    s.delete_protection_rule(&system(), p.id, "production")
        .await
        .unwrap();
    assert!(s
        .protection_rule(p.id, "production")
        .await
        .unwrap()
        .is_none());
    assert!(s
        .delete_protection_rule(&system(), p.id, "production")
        .await
        .is_err());
    assert!(actions_since(s, seq)
        .await
        .contains(&"protection.delete".to_string()));
}

async fn approvals_settle_once(db: &TestDb) {
    let s = &db.store;
    let p = project(s).await;
    let e = s
        .ensure_environment(p.id, "production", "production", None, "shop/production")
        .await
        .unwrap();
    let alice = s
        .create_user(&system(), "alice", "alice-password", false)
        .await
        .unwrap();
    let bob = s
        .create_user(&system(), "bob", "bob-password-1", false)
        .await
        .unwrap();
    let (_, jobs) = pipeline_with(s, &p, &[("deploy", JobStatus::Created, None)]).await;
    let seq = head(s).await;
    let d = s
        .create_deployment(
            &system(),
            new_deployment(e.id, Some(jobs[0].id), DeploymentStatus::AwaitingApproval),
        )
        .await
        .unwrap();
    assert_eq!(
        s.deployment_for_job(jobs[0].id).await.unwrap().unwrap().id,
        d.id
    );
    // One deployment per job attempt.
    let e2 = s
        .create_deployment(
            &system(),
            new_deployment(e.id, Some(jobs[0].id), DeploymentStatus::AwaitingApproval),
        )
        .await
        .unwrap_err();
    assert!(matches!(e2, Error::Conflict(_)), "{e2}");

    let first = s
        .decide_deployment(
            &Actor::user(&alice),
            d.id,
            Decision::Approved,
            Some("looks good"),
            2,
            DeploymentStatus::Created,
        )
        .await
        .unwrap();
    assert!(!first.settled);
    assert_eq!(first.deployment.status, DeploymentStatus::AwaitingApproval);
    // Each approver decides once.
    let again = s
        .decide_deployment(
            &Actor::user(&alice),
            d.id,
            Decision::Approved,
            None,
            2,
            DeploymentStatus::Created,
        )
        .await
        .unwrap_err();
    assert!(matches!(again, Error::Conflict(_)), "{again}");
    let second = s
        .decide_deployment(
            &Actor::user(&bob),
            d.id,
            Decision::Approved,
            None,
            2,
            DeploymentStatus::Waiting,
        )
        .await
        .unwrap();
    assert!(second.settled);
    assert_eq!(second.deployment.status, DeploymentStatus::Waiting);
    assert_eq!(second.approvals.len(), 2);
    assert_eq!(second.approvals[0].comment.as_deref(), Some("looks good"));
    // Nothing more to decide.
    let late = s
        .decide_deployment(
            &Actor::user(&bob),
            d.id,
            Decision::Rejected,
            None,
            2,
            DeploymentStatus::Created,
        )
        .await
        .unwrap_err();
    assert!(matches!(late, Error::State(_)), "{late}");
    let got = actions_since(s, seq).await;
    assert_eq!(
        got,
        [
            "deployment.create",
            "deployment.approve",
            "deployment.approve"
        ]
    );

    // A rejection cancels with the approver's reason.
    let (_, jobs) = pipeline_with(s, &p, &[("deploy", JobStatus::Created, None)]).await;
    let d = s
        .create_deployment(
            &system(),
            new_deployment(e.id, Some(jobs[0].id), DeploymentStatus::AwaitingApproval),
        )
        .await
        .unwrap();
    let r = s
        .decide_deployment(
            &Actor::user(&alice),
            d.id,
            Decision::Rejected,
            Some("not on a Friday"),
            1,
            DeploymentStatus::Created,
        )
        .await
        .unwrap();
    assert!(r.settled);
    assert_eq!(r.deployment.status, DeploymentStatus::Canceled);
    assert_eq!(
        r.deployment.reason.as_deref(),
        Some("rejected by alice: not on a Friday")
    );
    // Systems do not approve.
    let d = s
        .create_deployment(
            &system(),
            new_deployment(e.id, None, DeploymentStatus::AwaitingApproval),
        )
        .await
        .unwrap();
    assert!(s
        .decide_deployment(
            &system(),
            d.id,
            Decision::Approved,
            None,
            1,
            DeploymentStatus::Created
        )
        .await
        .is_err());
    let r = s.verify_audit().await.unwrap();
    assert!(r.is_intact(), "{:?}", r.problems);
}

async fn variables_are_sealed_when_secret(db: &TestDb) {
    let s = &db.store;
    let p = project(s).await;
    let e = s
        .ensure_environment(p.id, "dev", "development", None, "shop/dev")
        .await
        .unwrap();
    let mut nd = new_deployment(e.id, None, DeploymentStatus::Running);
    nd.variables = Some(vec![
        DeploymentVariable {
            key: "GREETING".into(),
            value: SecretString::new("hello"),
            secret: false,
        },
        DeploymentVariable {
            key: "API_KEY".into(),
            value: SecretString::new("key-7f3a9-very-secret"),
            secret: true,
        },
    ]);
    let d = s.create_deployment(&system(), nd).await.unwrap();
    assert!(d.has_variables && d.secret_variables);
    let vars = s.deployment_variables(d.id).await.unwrap();
    assert_eq!(vars.len(), 2);
    assert_eq!(vars[1].value.expose(), "key-7f3a9-very-secret");
    let dump = db.raw_dump("deployments").await;
    assert!(!dump.contains("key-7f3a9-very-secret"), "{dump}");
    assert!(!dump.contains("hello"), "sealed as a whole: {dump}");

    // Plain ones are kept readable; a copy brings the old values to a rollback.
    let mut plain = new_deployment(e.id, None, DeploymentStatus::Running);
    plain.variables = Some(vec![DeploymentVariable {
        key: "GREETING".into(),
        value: SecretString::new("bonjour"),
        secret: false,
    }]);
    let d2 = s.create_deployment(&system(), plain).await.unwrap();
    assert!(d2.has_variables && !d2.secret_variables);
    let d3 = s
        .create_deployment(
            &system(),
            new_deployment(e.id, None, DeploymentStatus::Running),
        )
        .await
        .unwrap();
    s.copy_deployment_variables(d.id, d3.id).await.unwrap();
    assert_eq!(s.deployment_variables(d3.id).await.unwrap(), vars);
    // A sealed value moved to another row does not open there.
    db.raw_execute(&format!(
        "UPDATE deployments SET sealed_variables = (SELECT sealed_variables FROM deployments WHERE id = {}) WHERE id = {}",
        d.id, d2.id
    ))
    .await;
    assert!(matches!(
        s.deployment_variables(d2.id).await.unwrap_err(),
        Error::Decrypt(_)
    ));
}

async fn history_and_promotion_queries(db: &TestDb) {
    let s = &db.store;
    let p = project(s).await;
    let staging = s
        .ensure_environment(p.id, "staging", "staging", None, "shop/staging")
        .await
        .unwrap();
    let mut ok = new_deployment(staging.id, None, DeploymentStatus::Success);
    ok.digest = Some("sha256:good".into());
    s.create_deployment(&system(), ok).await.unwrap();
    let mut bad = new_deployment(staging.id, None, DeploymentStatus::Failed);
    bad.digest = Some("sha256:bad".into());
    s.create_deployment(&system(), bad).await.unwrap();
    let mut back = new_deployment(staging.id, None, DeploymentStatus::RolledBack);
    back.digest = Some("sha256:back".into());
    s.create_deployment(&system(), back).await.unwrap();
    assert!(s
        .digest_deployed(p.id, "staging", "sha256:good")
        .await
        .unwrap());
    assert!(!s
        .digest_deployed(p.id, "staging", "sha256:bad")
        .await
        .unwrap());
    assert!(!s
        .digest_deployed(p.id, "staging", "sha256:back")
        .await
        .unwrap());
    assert!(!s.digest_deployed(p.id, "dev", "sha256:good").await.unwrap());

    let all = s.deployments(staging.id, None, 10).await.unwrap();
    assert_eq!(all.len(), 3);
    assert!(all[0].id > all[1].id, "newest first");
    let older = s
        .deployments(staging.id, Some(all[0].id), 10)
        .await
        .unwrap();
    assert_eq!(older.len(), 2);
    assert!(s.unfinished_deployments().await.unwrap().is_empty());

    // A status moves only from what the caller expects.
    let d = s
        .create_deployment(
            &system(),
            new_deployment(staging.id, None, DeploymentStatus::Created),
        )
        .await
        .unwrap();
    assert_eq!(s.unfinished_deployments().await.unwrap().len(), 1);
    assert!(!s
        .set_deployment_status(
            &system(),
            d.id,
            &[DeploymentStatus::Running],
            DeploymentStatus::Failed,
            None
        )
        .await
        .unwrap());
    assert!(s
        .set_deployment_status(
            &system(),
            d.id,
            &[DeploymentStatus::Created],
            DeploymentStatus::Failed,
            Some("refused")
        )
        .await
        .unwrap());
    let d = s.deployment(d.id).await.unwrap();
    assert_eq!(d.reason.as_deref(), Some("refused"));
    assert!(d.finished_at.is_some());
}

async fn resource_groups_follow_their_mode(db: &TestDb) {
    let s = &db.store;
    let p = project(s).await;
    // Three pipelines' deploy jobs in one group; the first holds it (running).
    let (_, a) = pipeline_with(s, &p, &[("deploy", JobStatus::Pending, Some("prod"))]).await;
    let (_, b) = pipeline_with(s, &p, &[("deploy", JobStatus::Pending, Some("prod"))]).await;
    let (_, c) = pipeline_with(s, &p, &[("deploy", JobStatus::Pending, Some("prod"))]).await;
    let claim = |s: &Store| {
        let s = s.clone();
        async move {
            s.claim_job(
                "srv",
                "shell",
                &ClaimFilter::any(),
                std::time::Duration::from_secs(60),
            )
            .await
            .unwrap()
            .unwrap()
        }
    };
    let (la, ja) = claim(s).await;
    assert_eq!(ja.id, a[0].id);
    assert!(s.acquire_resource(ja.id).await.unwrap());
    assert!(
        s.acquire_resource(ja.id).await.unwrap(),
        "held: asked again, still its own"
    );
    let (lb, jb) = claim(s).await;
    assert!(!s.acquire_resource(jb.id).await.unwrap(), "a holds it");
    s.hold_claimed_job(&lb, JobStatus::WaitingForResource, None)
        .await
        .unwrap();
    let (lc, jc) = claim(s).await;
    assert!(!s.acquire_resource(jc.id).await.unwrap());
    s.hold_claimed_job(&lc, JobStatus::WaitingForResource, None)
        .await
        .unwrap();
    assert_eq!(
        s.waiting_resource_groups().await.unwrap(),
        [(p.id, "prod".to_string())]
    );
    // Nothing moves while a holds it.
    assert_eq!(s.release_next_in_group(p.id, "prod").await.unwrap(), None);

    // newest_first: when a ends, c (newer pipeline) goes before b.
    s.set_resource_group_mode(&system(), p.id, "prod", ProcessMode::NewestFirst)
        .await
        .unwrap();
    s.finish_job(&la, &JobOutcome::success()).await.unwrap();
    assert_eq!(
        s.release_next_in_group(p.id, "prod").await.unwrap(),
        Some(c[0].id)
    );
    assert_eq!(s.job(c[0].id).await.unwrap().status, JobStatus::Pending);
    assert!(s.job(c[0].id).await.unwrap().resource_assigned);
    // Given to c, so b still waits; c's claim passes at once.
    assert_eq!(s.release_next_in_group(p.id, "prod").await.unwrap(), None);
    let (lc, jc) = claim(s).await;
    assert_eq!(jc.id, c[0].id);
    assert!(s.acquire_resource(jc.id).await.unwrap());
    s.finish_job(&lc, &JobOutcome::success()).await.unwrap();
    assert_eq!(
        s.release_next_in_group(p.id, "prod").await.unwrap(),
        Some(b[0].id)
    );

    // oldest_first waits for an older pipeline's job still to come.
    let p2 = s
        .create_project(&system(), NewProject::new("other", "/srv/other.git"))
        .await
        .unwrap();
    s.set_resource_group_mode(&system(), p2.id, "prod", ProcessMode::OldestFirst)
        .await
        .unwrap();
    let (_, old) = pipeline_with(s, &p2, &[("deploy", JobStatus::Created, Some("prod"))]).await;
    let (_, new) = pipeline_with(s, &p2, &[("deploy", JobStatus::Pending, Some("prod"))]).await;
    let (ln, jn) = loop {
        let (l, j) = claim(s).await;
        if j.id == new[0].id {
            break (l, j);
        }
        // b of the first project, released above: not this case's concern.
        s.finish_job(&l, &JobOutcome::success()).await.unwrap();
    };
    assert!(
        !s.acquire_resource(jn.id).await.unwrap(),
        "an older pipeline's job comes first"
    );
    s.hold_claimed_job(&ln, JobStatus::WaitingForResource, None)
        .await
        .unwrap();
    assert_eq!(s.release_next_in_group(p2.id, "prod").await.unwrap(), None);
    // The older one is skipped (its pipeline went another way): the newer one goes.
    s.set_job_status(old[0].id, JobStatus::Created, JobStatus::Skipped)
        .await
        .unwrap();
    assert_eq!(
        s.release_next_in_group(p2.id, "prod").await.unwrap(),
        Some(new[0].id)
    );
    let groups = s.resource_groups(p2.id).await.unwrap();
    assert_eq!(groups[0].process_mode, ProcessMode::OldestFirst);
    assert!(actions_since(s, 0)
        .await
        .contains(&"resource_group.update".to_string()));
}

async fn held_jobs_give_their_claim_back(db: &TestDb) {
    let s = &db.store;
    let p = project(s).await;
    let (_, jobs) = pipeline_with(s, &p, &[("deploy", JobStatus::Pending, None)]).await;
    let (lease, job) = s
        .claim_job(
            "srv",
            "shell",
            &ClaimFilter::any(),
            std::time::Duration::from_secs(60),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.id, jobs[0].id);
    let held = s
        .hold_claimed_job(&lease, JobStatus::WaitingForApproval, None)
        .await
        .unwrap();
    assert_eq!(held.status, JobStatus::WaitingForApproval);
    assert!(held.lease_holder.is_none() && held.started_at.is_none());
    // The old lease is gone.
    assert!(matches!(
        s.finish_job(&lease, &JobOutcome::success())
            .await
            .unwrap_err(),
        Error::LeaseLost { .. }
    ));
    assert!(s
        .claim_job(
            "srv",
            "shell",
            &ClaimFilter::any(),
            std::time::Duration::from_secs(60)
        )
        .await
        .unwrap()
        .is_none());
    // Released with a wait timer: scheduled until then.
    let at = s.now().plus(std::time::Duration::from_secs(30));
    assert!(s
        .release_held_job(
            job.id,
            JobStatus::WaitingForApproval,
            JobStatus::Scheduled,
            Some(at)
        )
        .await
        .unwrap());
    let j = s.job(job.id).await.unwrap();
    assert_eq!((j.status, j.scheduled_at), (JobStatus::Scheduled, Some(at)));
    assert!(!s
        .release_held_job(
            job.id,
            JobStatus::WaitingForApproval,
            JobStatus::Pending,
            None
        )
        .await
        .unwrap());
    s.set_job_status(job.id, JobStatus::Scheduled, JobStatus::Pending)
        .await
        .unwrap();
    let (lease, _) = s
        .claim_job(
            "srv",
            "shell",
            &ClaimFilter::any(),
            std::time::Duration::from_secs(60),
        )
        .await
        .unwrap()
        .unwrap();
    let refused = s
        .refuse_claimed_job(&lease, "deployment_rejected")
        .await
        .unwrap();
    assert_eq!(refused.status, JobStatus::Failed);
    assert_eq!(
        refused.failure_reason.as_deref(),
        Some("deployment_rejected")
    );
}

/// A cancel that arrives while the gate holds the claim (a rejection racing the hold)
/// only asks the holder to stop; giving the claim back then cancels the job instead of
/// leaving it held with nobody to act on the request.
async fn a_cancel_while_claimed_wins_over_the_hold(db: &TestDb) {
    let s = &db.store;
    let p = project(s).await;
    let (_, jobs) = pipeline_with(s, &p, &[("deploy", JobStatus::Pending, None)]).await;
    let (lease, job) = s
        .claim_job(
            "srv",
            "shell",
            &ClaimFilter::any(),
            std::time::Duration::from_secs(60),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.id, jobs[0].id);
    let asked = s.cancel_job(&system(), job.id).await.unwrap();
    assert_eq!(asked.status, JobStatus::Running);
    assert!(asked.cancel_requested);
    let held = s
        .hold_claimed_job(&lease, JobStatus::WaitingForApproval, None)
        .await
        .unwrap();
    assert_eq!(held.status, JobStatus::Canceled);
    assert!(held.finished_at.is_some() && held.lease_holder.is_none());
    assert_eq!(s.job(job.id).await.unwrap().status, JobStatus::Canceled);
}

async fn notification_webhooks_are_sealed(db: &TestDb) {
    let s = &db.store;
    let p = project(s).await;
    let url = SecretString::new("http://hooks.example:9000/services/T0/B0/XXXXSECRETPATH");
    let hook = s
        .add_deployment_webhook(&system(), p.id, None, "slack", &url, None)
        .await
        .unwrap();
    assert_eq!(hook.url_origin, "http://hooks.example:9000");
    let signed = s
        .add_deployment_webhook(
            &system(),
            p.id,
            Some("production"),
            "json",
            &SecretString::new("http://127.0.0.1:1/hook"),
            Some(&SecretString::new("whsec-0123456789")),
        )
        .await
        .unwrap();
    assert!(signed.signed);
    assert_eq!(s.deployment_webhooks(p.id).await.unwrap().len(), 2);
    let dump = db.raw_dump("deployment_webhooks").await;
    assert!(
        !dump.contains("XXXXSECRETPATH") && !dump.contains("whsec-0123456789"),
        "{dump}"
    );
    // Per environment: staging gets the project-wide one only.
    assert_eq!(s.webhook_targets(p.id, "staging").await.unwrap().len(), 1);
    let prod = s.webhook_targets(p.id, "production").await.unwrap();
    assert_eq!(prod.len(), 2);
    assert_eq!(
        prod[1].secret.as_ref().unwrap().expose(),
        "whsec-0123456789"
    );
    assert_eq!(prod[0].url.expose(), url.expose());
    assert!(s
        .add_deployment_webhook(&system(), p.id, None, "teams", &url, None)
        .await
        .is_err());
    s.delete_deployment_webhook(&system(), p.id, hook.id)
        .await
        .unwrap();
    assert_eq!(s.webhook_targets(p.id, "staging").await.unwrap().len(), 0);
    let got = actions_since(s, 0).await;
    assert!(got.contains(&"deployment_webhook.create".to_string()));
    assert!(got.contains(&"deployment_webhook.delete".to_string()));
}

async fn recent_deployments_pin_their_artifacts(db: &TestDb) {
    let s = &db.store;
    let p = project(s).await;
    let e = s
        .ensure_environment(p.id, "production", "production", None, "shop/production")
        .await
        .unwrap();
    let (_, jobs) = pipeline_with(s, &p, &[("build", JobStatus::Created, None)]).await;
    let past = s.now().minus(std::time::Duration::from_secs(60));
    let mut arts = Vec::new();
    for i in 0..4 {
        arts.push(
            s.add_artifact(
                jobs[0].id,
                NewArtifact {
                    file_type: "archive".into(),
                    name: "artifacts".into(),
                    store_id: format!("job-{i}"),
                    size: 1,
                    expire_at: Some(past),
                },
            )
            .await
            .unwrap(),
        );
    }
    for i in 0..3 {
        let mut nd = new_deployment(e.id, None, DeploymentStatus::Success);
        nd.release_artifacts = vec![format!("job-{i}")];
        s.create_deployment(&system(), nd).await.unwrap();
    }
    // The last two successful deployments keep theirs; the oldest and the unused do not.
    assert_eq!(s.refresh_artifact_pins(p.id, 2).await.unwrap(), 2);
    let kept: Vec<String> = s.kept_store_ids().await.unwrap();
    assert_eq!(kept, ["job-1", "job-2"]);
    let expired: Vec<String> = s
        .expired_artifacts(100)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.store_id)
        .collect();
    assert_eq!(expired, ["job-0", "job-3"]);
    // A deployment in progress pins too, and a newer window unpins the old.
    let mut running = new_deployment(e.id, None, DeploymentStatus::Running);
    running.release_artifacts = vec!["job-3".into()];
    s.create_deployment(&system(), running).await.unwrap();
    assert_eq!(s.refresh_artifact_pins(p.id, 1).await.unwrap(), 2);
    assert_eq!(s.kept_store_ids().await.unwrap(), ["job-2", "job-3"]);
    assert_eq!(
        s.delete_artifacts(&[arts[2].id, arts[0].id]).await.unwrap(),
        1
    );
}

db_tests!(
    environments_and_engine_state,
    protection_rules,
    approvals_settle_once,
    variables_are_sealed_when_secret,
    history_and_promotion_queries,
    resource_groups_follow_their_mode,
    held_jobs_give_their_claim_back,
    a_cancel_while_claimed_wins_over_the_hold,
    notification_webhooks_are_sealed,
    recent_deployments_pin_their_artifacts,
);
