//! The store's behaviour, each case run on SQLite and (when configured) PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Backend, TestDb};
use serde_json::json;
use slipway_db::*;
use std::time::Duration;

fn admin() -> Actor {
    Actor::system("test")
}

async fn project(db: &TestDb, name: &str) -> Project {
    db.store
        .create_project(&admin(), NewProject::new(name, "/srv/git/app.git"))
        .await
        .unwrap()
}

fn job(name: &str, stage: &str, stage_index: usize, status: JobStatus) -> NewJob {
    NewJob {
        status,
        ..NewJob::new(name, stage, stage_index)
    }
}

async fn pipeline(
    db: &TestDb,
    p: &Project,
    ref_name: &str,
    jobs: Vec<NewJob>,
) -> (Pipeline, Vec<Job>) {
    let mut np = NewPipeline::new(
        p.id,
        ref_name,
        "0123456789abcdef0123456789abcdef01234567",
        PipelineSource::Push,
    );
    np.jobs = jobs;
    np.plan = Some(json!({"stages": ["build", "test"], "jobs": []}));
    db.store.create_pipeline(&admin(), np).await.unwrap()
}

// ---- projects -------------------------------------------------------------------------

async fn projects_crud(db: &TestDb) {
    let s = &db.store;
    let mut np = NewProject::new("app", "https://git.example.com/team/app.git");
    np.default_branch = "trunk".into();
    np.poll_interval = Some(Duration::from_secs(60));
    np.settings = json!({"concurrency": 4});
    let p = s.create_project(&admin(), np).await.unwrap();
    assert_eq!(p.default_branch, "trunk");
    assert_eq!(p.poll_interval, Some(Duration::from_secs(60)));
    assert_eq!(p.settings, json!({"concurrency": 4}));
    assert_eq!(s.project(p.id).await.unwrap(), p);
    assert_eq!(s.project_by_name("app").await.unwrap(), Some(p.clone()));

    // Names are unique and validated.
    let e = s
        .create_project(&admin(), NewProject::new("app", "/x"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Conflict(_)), "{e}");
    let e = s
        .create_project(&admin(), NewProject::new("bad name", "/x"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("project name"), "{e}");
    let mut bad = NewProject::new("ok", "/x");
    bad.default_branch = "a..b".into();
    assert!(s.create_project(&admin(), bad).await.is_err());

    let u = s
        .update_project(
            &admin(),
            p.id,
            ProjectUpdate {
                default_branch: Some("main".into()),
                poll_interval: Some(None),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(u.default_branch, "main");
    assert_eq!(u.poll_interval, None);
    assert_eq!(u.repository, p.repository);
    project(db, "other").await;
    let names: Vec<String> = s
        .projects()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["app", "other"]);
    // Deleting cascades (foreign keys are on in SQLite too).
    let (pl, jobs) = pipeline(
        db,
        &u,
        "main",
        vec![job("a", "build", 0, JobStatus::Pending)],
    )
    .await;
    s.append_log(jobs[0].id, b"hello\n").await.unwrap();
    s.delete_project(&admin(), p.id).await.unwrap();
    assert!(matches!(s.project(p.id).await, Err(Error::NotFound { .. })));
    assert!(matches!(
        s.pipeline(pl.id).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        s.job(jobs[0].id).await,
        Err(Error::NotFound { .. })
    ));
    assert!(!db.raw_dump("job_log_chunks").await.contains("hello"));
    if db.backend == Backend::Sqlite {
        let mode = db.raw_dump("pragma_journal_mode").await;
        assert!(mode.contains("journal_mode=wal"), "{mode}");
    }
}

async fn polling_bookkeeping(db: &TestDb) {
    let s = &db.store;
    let mut np = NewProject::new("remote", "https://git.example.com/r.git");
    np.poll_interval = Some(Duration::from_secs(30));
    let p = s.create_project(&admin(), np).await.unwrap();
    project(db, "local").await; // not polled
    let due = s.projects_due_for_poll().await.unwrap();
    assert_eq!(due.iter().map(|p| p.id).collect::<Vec<_>>(), [p.id]);
    let refs = [("refs/heads/main".to_string(), "abc".to_string())]
        .into_iter()
        .collect();
    assert!(s.record_poll(p.id, None, &refs).await.unwrap());
    // A second server that read the same "previous" loses the race.
    assert!(!s.record_poll(p.id, None, &refs).await.unwrap());
    assert_eq!(s.poll_refs(p.id).await.unwrap(), refs);
    assert!(s.projects_due_for_poll().await.unwrap().is_empty());
    db.clock.advance(Duration::from_secs(31));
    assert_eq!(s.projects_due_for_poll().await.unwrap().len(), 1);
}

// ---- variables and secrets ------------------------------------------------------------

async fn variables_and_secrets(db: &TestDb) {
    let s = &db.store;
    let p = project(db, "app").await;
    s.set_variable(
        &admin(),
        p.id,
        VariableInput::plain("DEPLOY_REGION", "eu-west-1"),
    )
    .await
    .unwrap();
    let secret_value = "s3cr3t-Pa55word-XYZ";
    let mut sec = VariableInput::secret("DB_PASSWORD", secret_value);
    sec.protected = true;
    let listed = s.set_variable(&admin(), p.id, sec).await.unwrap();
    assert_eq!(listed.value, None, "a secret is never returned");
    let mut prod = VariableInput::secret("API_KEY", "prod-key-123456");
    prod.environment_scope = "production".into();
    s.set_variable(&admin(), p.id, prod).await.unwrap();
    let mut rev = VariableInput::plain("API_KEY", "review-key");
    rev.environment_scope = "review/*".into();
    s.set_variable(&admin(), p.id, rev).await.unwrap();
    s.set_variable(
        &admin(),
        p.id,
        VariableInput::plain("API_KEY", "default-key"),
    )
    .await
    .unwrap();

    let vars = s.variables(p.id).await.unwrap();
    assert_eq!(vars.len(), 5);
    for v in &vars {
        assert_eq!(v.value.is_none(), v.secret, "{v:?}");
    }
    let region = vars.iter().find(|v| v.key == "DEPLOY_REGION").unwrap();
    assert_eq!(region.value.as_deref(), Some("eu-west-1"));

    // Masked values follow GitLab's rules.
    let mut short = VariableInput::secret("SHORT", "abc");
    short.masked = true;
    assert!(s.set_variable(&admin(), p.id, short).await.is_err());
    assert!(s
        .set_variable(&admin(), p.id, VariableInput::plain("BAD-KEY", "x"))
        .await
        .is_err());

    // For a job: protected secrets only on protected refs; the most specific scope wins.
    let get = |vars: &[JobVariable], k: &str| {
        vars.iter()
            .find(|v| v.key == k)
            .map(|v| v.value.expose().to_string())
    };
    let unprotected = s.variables_for_job(p.id, false, None).await.unwrap();
    assert_eq!(get(&unprotected, "DB_PASSWORD"), None);
    assert_eq!(get(&unprotected, "API_KEY").as_deref(), Some("default-key"));
    let protected = s
        .variables_for_job(p.id, true, Some("production"))
        .await
        .unwrap();
    assert_eq!(
        get(&protected, "DB_PASSWORD").as_deref(),
        Some(secret_value)
    );
    assert_eq!(
        get(&protected, "API_KEY").as_deref(),
        Some("prod-key-123456")
    );
    assert!(
        protected
            .iter()
            .find(|v| v.key == "DB_PASSWORD")
            .unwrap()
            .masked
    );
    let review = s
        .variables_for_job(p.id, false, Some("review/feature-x"))
        .await
        .unwrap();
    assert_eq!(get(&review, "API_KEY").as_deref(), Some("review-key"));

    // Replacing keeps one row; deleting removes it.
    s.set_variable(
        &admin(),
        p.id,
        VariableInput::plain("DEPLOY_REGION", "us-east-1"),
    )
    .await
    .unwrap();
    assert_eq!(s.variables(p.id).await.unwrap().len(), 5);
    s.delete_variable(&admin(), p.id, "DEPLOY_REGION", "*")
        .await
        .unwrap();
    assert_eq!(s.variables(p.id).await.unwrap().len(), 4);

    // Webhook secrets: sealed too.
    let hook_secret = SecretString::new("whsec-Very-Secret-42");
    s.set_webhook(&admin(), p.id, WebhookProvider::Github, &hook_secret, true)
        .await
        .unwrap();
    assert_eq!(
        s.webhook_secret(p.id, WebhookProvider::Github)
            .await
            .unwrap(),
        Some(hook_secret.clone())
    );
    assert_eq!(
        s.webhook_secret(p.id, WebhookProvider::Gitlab)
            .await
            .unwrap(),
        None
    );
    assert_eq!(s.webhooks(p.id).await.unwrap().len(), 1);

    // Nothing in clear text in the database: the rows, and on SQLite the files.
    let mut raw = String::new();
    for t in ["project_variables", "project_webhooks", "audit_log", "meta"] {
        raw.push_str(&db.raw_dump(t).await);
    }
    assert!(raw.contains("review-key"), "the dump must see plain values");
    for secret in [secret_value, "prod-key-123456", hook_secret.expose()] {
        assert!(!raw.contains(secret), "{secret} found in the database");
        assert!(!raw.contains(&slipway_db::crypto::hex(secret.as_bytes())));
    }
    if db.backend == Backend::Sqlite {
        let mut bytes = Vec::new();
        for f in std::fs::read_dir(db.dir.path()).unwrap() {
            let f = f.unwrap().path();
            if f.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("slipway.db")
            {
                bytes.extend(std::fs::read(&f).unwrap());
            }
        }
        assert!(bytes.windows(10).any(|w| w == b"review-key"));
        for secret in [secret_value, "prod-key-123456", hook_secret.expose()] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} in the SQLite files"
            );
        }
    }

    // A sealed value moved to another row does not open.
    db.raw_execute(
        "UPDATE project_variables SET sealed = (SELECT sealed FROM project_variables WHERE name = 'DB_PASSWORD') \
         WHERE name = 'API_KEY' AND environment_scope = 'production'",
    )
    .await;
    let e = s
        .variables_for_job(p.id, true, Some("production"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Decrypt(_)), "{e}");
}

async fn wrong_key_is_refused(db: &TestDb) {
    project(db, "app").await;
    let other = SecretKey::generate();
    let mut opts = StoreOptions::new(db.dir.path(), other);
    if let Some(u) = &db.url {
        opts = opts.database_url(u);
    }
    let e = Store::open(opts).await.unwrap_err();
    assert!(e.to_string().contains("different secret key"), "{e}");
    // The right key still opens it, migrations already applied.
    let again = db.reopen().await;
    assert_eq!(again.projects().await.unwrap().len(), 1);
}

// ---- users and access -----------------------------------------------------------------

async fn users_sessions_tokens(db: &TestDb) {
    let s = &db.store;
    let first = s.create_first_admin("root", None).await.unwrap().unwrap();
    let pw = first.generated_password.unwrap();
    assert!(first.user.is_admin);
    assert!(s
        .create_first_admin("root2", Some("password123"))
        .await
        .unwrap()
        .is_none());
    let root = first.user;
    let alice = s
        .create_user(&Actor::user(&root), "alice", "alice-password", false)
        .await
        .unwrap();
    assert!(matches!(
        s.create_user(&Actor::user(&root), "alice", "whatever123", false)
            .await,
        Err(Error::Conflict(_))
    ));
    assert!(s
        .create_user(&Actor::user(&root), "bob", "short", false)
        .await
        .is_err());

    assert_eq!(
        s.check_password("root", pw.expose())
            .await
            .unwrap()
            .map(|u| u.id),
        Some(root.id)
    );
    assert!(s
        .check_password("root", "wrong-password")
        .await
        .unwrap()
        .is_none());
    assert!(s
        .check_password("nobody", "wrong-password")
        .await
        .unwrap()
        .is_none());
    let raw = db.raw_dump("users").await;
    assert!(raw.contains("$argon2id$") && !raw.contains("alice-password"));

    // Sessions: token shown once, stored hashed, expire.
    let (token, session, user) = s
        .login(
            "alice",
            "alice-password",
            Duration::from_secs(3600),
            "127.0.0.1",
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(user.id, alice.id);
    assert!(token.expose().starts_with("slwsess_"));
    assert!(!db.raw_dump("sessions").await.contains(token.expose()));
    assert_eq!(
        s.session_user(token.expose()).await.unwrap().unwrap().0.id,
        session.id
    );
    assert!(s
        .login("alice", "nope-nope", Duration::from_secs(60), "10.0.0.9")
        .await
        .unwrap()
        .is_none());
    db.clock.advance(Duration::from_secs(3601));
    assert!(s.session_user(token.expose()).await.unwrap().is_none());
    assert_eq!(s.delete_expired_sessions().await.unwrap(), 1);
    let (token, _, _) = s
        .login("alice", "alice-password", Duration::from_secs(3600), "")
        .await
        .unwrap()
        .unwrap();
    s.logout(token.expose()).await.unwrap();
    assert!(s.session_user(token.expose()).await.unwrap().is_none());

    // API tokens.
    let (pat, info) = s
        .create_api_token(
            &Actor::user(&alice),
            alice.id,
            "ci",
            &[TokenScope::ReadApi],
            Some(db.clock.now().plus(Duration::from_secs(86400))),
        )
        .await
        .unwrap();
    assert!(pat.expose().starts_with("slwpat_"));
    assert!(!db.raw_dump("api_tokens").await.contains(pat.expose()));
    let (t, u) = s
        .authenticate_api_token(pat.expose())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((t.id, u.id), (info.id, alice.id));
    assert!(!t.can_write());
    assert!(t.last_used_at.is_none());
    assert!(s.api_tokens(alice.id).await.unwrap()[0]
        .last_used_at
        .is_some());
    assert!(s
        .authenticate_api_token("slwpat_0000")
        .await
        .unwrap()
        .is_none());
    // Disabled users cannot use their tokens or sessions.
    let (tok2, _, _) = s
        .login("alice", "alice-password", Duration::from_secs(3600), "")
        .await
        .unwrap()
        .unwrap();
    s.set_user_disabled(&Actor::user(&root), alice.id, true)
        .await
        .unwrap();
    assert!(s
        .authenticate_api_token(pat.expose())
        .await
        .unwrap()
        .is_none());
    assert!(s.session_user(tok2.expose()).await.unwrap().is_none());
    assert!(s
        .check_password("alice", "alice-password")
        .await
        .unwrap()
        .is_none());
    s.set_user_disabled(&Actor::user(&root), alice.id, false)
        .await
        .unwrap();
    assert!(s
        .authenticate_api_token(pat.expose())
        .await
        .unwrap()
        .is_some());
    s.revoke_api_token(&Actor::user(&alice), info.id)
        .await
        .unwrap();
    assert!(s
        .authenticate_api_token(pat.expose())
        .await
        .unwrap()
        .is_none());
    // Expiry.
    let (pat2, _) = s
        .create_api_token(
            &Actor::user(&alice),
            alice.id,
            "short",
            &[TokenScope::Api],
            Some(db.clock.now().plus(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    assert!(s
        .authenticate_api_token(pat2.expose())
        .await
        .unwrap()
        .unwrap()
        .0
        .can_write());
    db.clock.advance(Duration::from_secs(11));
    assert!(s
        .authenticate_api_token(pat2.expose())
        .await
        .unwrap()
        .is_none());

    s.set_password(&Actor::user(&alice), alice.id, "new-password-1")
        .await
        .unwrap();
    assert!(s
        .check_password("alice", "new-password-1")
        .await
        .unwrap()
        .is_some());
    assert_eq!(s.user_count().await.unwrap(), 2);
}

async fn roles_and_groups(db: &TestDb) {
    let s = &db.store;
    let p = project(db, "app").await;
    let q = project(db, "other").await;
    let mk = |n: &'static str| async move {
        s.create_user(&admin(), n, "password-123", false)
            .await
            .unwrap()
    };
    let viewer = mk("viewer").await;
    let dev = mk("dev").await;
    let maint = mk("maint").await;
    let owner = mk("owner").await;
    let outsider = mk("outsider").await;
    let root = s
        .create_user(&admin(), "root", "password-123", true)
        .await
        .unwrap();
    s.set_member(&admin(), p.id, viewer.id, Role::Viewer)
        .await
        .unwrap();
    s.set_member(&admin(), p.id, dev.id, Role::Developer)
        .await
        .unwrap();
    s.set_member(&admin(), p.id, maint.id, Role::Developer)
        .await
        .unwrap();
    s.set_member(&admin(), p.id, maint.id, Role::Maintainer)
        .await
        .unwrap(); // changes the role
    s.set_member(&admin(), p.id, owner.id, Role::Admin)
        .await
        .unwrap();
    assert_eq!(s.members(p.id).await.unwrap().len(), 4);
    assert_eq!(
        s.member_role(p.id, maint.id).await.unwrap(),
        Some(Role::Maintainer)
    );

    let cases = [
        (&viewer, Action::View, true),
        (&viewer, Action::Trigger, false),
        (&dev, Action::Trigger, true),
        (&dev, Action::PlayJob, true),
        (&dev, Action::CancelJob, true),
        (&dev, Action::ManageSecrets, false),
        (&maint, Action::ManageSecrets, true),
        (&maint, Action::ManageSettings, true),
        (&maint, Action::ManageMembers, false),
        (&owner, Action::ManageMembers, true),
        (&owner, Action::DeleteProject, true),
        (&outsider, Action::View, false),
        (&root, Action::DeleteProject, true),
    ];
    for (u, a, want) in cases {
        assert_eq!(
            s.can(u, p.id, a).await.unwrap(),
            want,
            "{} {a:?}",
            u.username
        );
    }
    // Roles are per project.
    assert!(!s.can(&owner, q.id, Action::View).await.unwrap());
    let e = s
        .require(&dev, p.id, Action::ManageMembers)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Forbidden { .. }));
    s.remove_member(&admin(), p.id, dev.id).await.unwrap();
    assert!(!s.can(&dev, p.id, Action::View).await.unwrap());

    let g = s.create_group(&admin(), "release-managers").await.unwrap();
    s.add_group_member(&admin(), g.id, maint.id).await.unwrap();
    s.add_group_member(&admin(), g.id, owner.id).await.unwrap();
    s.add_group_member(&admin(), g.id, owner.id).await.unwrap(); // idempotent
    let names: Vec<String> = s
        .group_members(g.id)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.username)
        .collect();
    assert_eq!(names, ["maint", "owner"]);
    assert_eq!(
        s.user_groups(owner.id).await.unwrap()[0].name,
        "release-managers"
    );
    s.remove_group_member(&admin(), g.id, maint.id)
        .await
        .unwrap();
    assert_eq!(s.group_members(g.id).await.unwrap().len(), 1);
    assert!(matches!(
        s.create_group(&admin(), "release-managers").await,
        Err(Error::Conflict(_))
    ));
}

// ---- pipelines and jobs ---------------------------------------------------------------

async fn pipelines_and_jobs(db: &TestDb) {
    let s = &db.store;
    let p = project(db, "app").await;
    let q = project(db, "other").await;
    let (p1, jobs) = pipeline(
        db,
        &p,
        "main",
        vec![
            job("build", "build", 0, JobStatus::Pending),
            job("test", "test", 1, JobStatus::Created),
            NewJob {
                when: slipway_core::model::When::Manual,
                ..job("deploy", "deploy", 2, JobStatus::Manual)
            },
        ],
    )
    .await;
    assert_eq!(p1.iid, 1);
    assert_eq!(p1.source, PipelineSource::Push);
    assert_eq!(
        jobs.iter().map(|j| j.plan_index).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert!(jobs[0].queued_at.is_some());
    let (p2, _) = pipeline(db, &p, "feature", vec![]).await;
    assert_eq!(p2.iid, 2, "iid counts per project");
    let (q1, _) = pipeline(db, &q, "main", vec![]).await;
    assert_eq!(q1.iid, 1);
    assert_eq!(s.pipeline_by_iid(p.id, 2).await.unwrap().unwrap().id, p2.id);
    assert_eq!(
        s.pipeline_plan(p1.id).await.unwrap().unwrap()["stages"][0],
        "build"
    );

    // Trigger variables and sources are kept.
    let mut np = NewPipeline::new(
        p.id,
        "v1.0.0",
        "fedcba9876543210fedcba9876543210fedcba98",
        PipelineSource::Web,
    );
    np.tag = true;
    np.variables = vec![KeyValue::new("DEPLOY", "yes")];
    let (p3, _) = s.create_pipeline(&admin(), np).await.unwrap();
    let p3 = s.pipeline(p3.id).await.unwrap();
    assert!(p3.tag);
    assert_eq!(p3.variables, vec![KeyValue::new("DEPLOY", "yes")]);
    assert_eq!(p3.source.as_str(), "web");

    let listed = s
        .pipelines(&PipelineQuery {
            project: Some(p.id),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.iter().map(|p| p.iid).collect::<Vec<_>>(), [3, 2, 1]);
    let main = s
        .pipelines(&PipelineQuery {
            ref_name: Some("main".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(main.len(), 2);
    let page = s
        .pipelines(&PipelineQuery {
            project: Some(p.id),
            before: Some(p3.id),
            limit: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.iter().map(|p| p.iid).collect::<Vec<_>>(), [2]);

    // Pipeline status timestamps.
    let r = s
        .set_pipeline_status(p1.id, PipelineStatus::Running)
        .await
        .unwrap();
    let started = r.started_at.unwrap();
    db.clock.advance(Duration::from_secs(5));
    let r = s
        .set_pipeline_status(p1.id, PipelineStatus::Running)
        .await
        .unwrap();
    assert_eq!(r.started_at, Some(started));
    let r = s
        .set_pipeline_status(p1.id, PipelineStatus::Failed)
        .await
        .unwrap();
    assert!(r.finished_at.is_some());
    assert_eq!(
        s.pipelines(&PipelineQuery {
            status: Some(PipelineStatus::Failed),
            ..Default::default()
        })
        .await
        .unwrap()
        .len(),
        1
    );
    let r = s
        .set_pipeline_status(p1.id, PipelineStatus::Running)
        .await
        .unwrap();
    assert_eq!(r.finished_at, None, "a retried pipeline runs again");
    assert_eq!(s.unfinished_pipelines().await.unwrap().len(), 4);

    // Scheduler transitions are compare-and-set.
    assert!(s
        .set_job_status(jobs[1].id, JobStatus::Created, JobStatus::Pending)
        .await
        .unwrap());
    assert!(!s
        .set_job_status(jobs[1].id, JobStatus::Created, JobStatus::Skipped)
        .await
        .unwrap());
    assert!(s
        .set_job_status(jobs[1].id, JobStatus::Pending, JobStatus::Running)
        .await
        .is_err());
    let statuses: Vec<JobStatus> = s
        .current_jobs(p1.id)
        .await
        .unwrap()
        .iter()
        .map(|j| j.status)
        .collect();
    assert_eq!(
        statuses,
        [JobStatus::Pending, JobStatus::Pending, JobStatus::Manual]
    );

    // Play, cancel, retry.
    assert!(matches!(
        s.play_job(&admin(), jobs[0].id, vec![]).await,
        Err(Error::State(_))
    ));
    let played = s
        .play_job(&admin(), jobs[2].id, vec![KeyValue::new("TARGET", "eu")])
        .await
        .unwrap();
    assert_eq!(played.status, JobStatus::Pending);
    assert_eq!(played.variables, vec![KeyValue::new("TARGET", "eu")]);
    let c = s.cancel_job(&admin(), jobs[2].id).await.unwrap();
    assert_eq!(c.status, JobStatus::Canceled);
    assert!(c.finished_at.is_some());
    assert!(matches!(
        s.cancel_job(&admin(), jobs[2].id).await,
        Err(Error::State(_))
    ));
    let retry = s.retry_job(&admin(), jobs[2].id).await.unwrap();
    assert_eq!(
        (retry.attempt, retry.retry_of, retry.status),
        (2, Some(jobs[2].id), JobStatus::Pending)
    );
    assert_eq!(retry.plan_index, 2);
    assert!(s.job(jobs[2].id).await.unwrap().retried);
    assert!(matches!(
        s.retry_job(&admin(), jobs[2].id).await,
        Err(Error::State(_))
    ));
    assert!(matches!(
        s.retry_job(&admin(), jobs[0].id).await,
        Err(Error::State(_))
    ));
    let current = s.current_jobs(p1.id).await.unwrap();
    assert_eq!(current.len(), 3);
    assert_eq!(current[2].id, retry.id);
    assert_eq!(s.jobs(p1.id).await.unwrap().len(), 4);

    // Cancel a pipeline: running jobs get a request, the rest stop at once.
    let (lease, running) = s
        .claim_job(
            "server-1",
            "shell",
            &ClaimFilter::any(),
            Duration::from_secs(60),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(running.id, jobs[0].id);
    let changed = s.cancel_pipeline(&admin(), p1.id).await.unwrap();
    assert_eq!(changed.len(), 3);
    let after = s.current_jobs(p1.id).await.unwrap();
    assert_eq!(after[0].status, JobStatus::Running);
    assert!(after[0].cancel_requested);
    assert_eq!(after[1].status, JobStatus::Canceled);
    let mut lease = lease;
    assert!(
        s.heartbeat(&mut lease, Duration::from_secs(60))
            .await
            .unwrap()
            .cancel_requested
    );
    s.finish_job(&lease, &JobOutcome::canceled()).await.unwrap();
    assert_eq!(s.job(jobs[0].id).await.unwrap().status, JobStatus::Canceled);

    // Every action above is in the audit log.
    let actions: Vec<String> = s
        .audit_entries(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    for a in [
        "pipeline.create",
        "job.play",
        "job.cancel",
        "job.retry",
        "pipeline.cancel",
    ] {
        assert!(
            actions.iter().any(|x| x == a),
            "{a} missing from {actions:?}"
        );
    }
}

async fn auto_cancel_queries(db: &TestDb) {
    let s = &db.store;
    let p = project(db, "app").await;
    let interruptible = |n: &str, st| NewJob {
        interruptible: true,
        ..job(n, "test", 0, st)
    };
    // Old pipeline A: an interruptible job running, a non-interruptible one waiting.
    let (a, aj) = pipeline(
        db,
        &p,
        "main",
        vec![
            interruptible("lint", JobStatus::Pending),
            job("deploy", "deploy", 1, JobStatus::Created),
        ],
    )
    .await;
    s.claim_job("srv", "shell", &ClaimFilter::any(), Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    // Old pipeline B: a non-interruptible job already started.
    let (b, _) = pipeline(
        db,
        &p,
        "main",
        vec![
            job("migrate", "build", 0, JobStatus::Pending),
            interruptible("test", JobStatus::Created),
        ],
    )
    .await;
    s.claim_job("srv", "shell", &ClaimFilter::any(), Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    // Another branch, and a finished pipeline: not candidates.
    pipeline(
        db,
        &p,
        "other",
        vec![interruptible("x", JobStatus::Created)],
    )
    .await;
    let (done, _) = pipeline(db, &p, "main", vec![]).await;
    s.set_pipeline_status(done.id, PipelineStatus::Success)
        .await
        .unwrap();
    let (new, _) = pipeline(db, &p, "main", vec![]).await;

    let c = s
        .auto_cancel_candidates(p.id, "main", new.id)
        .await
        .unwrap();
    assert_eq!(
        c.iter().map(|c| c.pipeline.id).collect::<Vec<_>>(),
        [a.id, b.id]
    );
    assert!(!c[0].non_interruptible_started);
    assert_eq!(c[0].interruptible_jobs, [aj[0].id]);
    assert_eq!(c[0].unfinished_jobs.len(), 2);
    assert!(c[1].non_interruptible_started);
    // `interruptible` mode: only interruptible jobs go.
    let canceled = s.auto_cancel(a.id, new.id, true).await.unwrap();
    assert_eq!(canceled, [aj[0].id]);
    let aj_now = s.current_jobs(a.id).await.unwrap();
    assert!(aj_now[0].cancel_requested);
    assert_eq!(aj_now[1].status, JobStatus::Created);
    let entry = s.audit_recent(1).await.unwrap().remove(0);
    assert_eq!(entry.action, "pipeline.auto_cancel");
    assert_eq!(entry.details["by"], new.id.0);
}

// ---- the queue ------------------------------------------------------------------------

/// The same lease with a token nobody was given.
fn lb_wrong_token(l: &Lease) -> Lease {
    Lease::from_parts(
        l.job,
        l.pipeline,
        l.holder.clone(),
        "not-the-token",
        l.expires_at,
    )
}

async fn queue_claim_lease_finish(db: &TestDb) {
    let s = &db.store;
    let p = project(db, "app").await;
    let (pl, jobs) = pipeline(
        db,
        &p,
        "main",
        vec![
            job("a", "build", 0, JobStatus::Pending),
            NewJob {
                tags: vec!["docker".into()],
                ..job("b", "build", 0, JobStatus::Pending)
            },
            job("c", "build", 0, JobStatus::Created),
        ],
    )
    .await;
    // Tags: an agent with only `docker` and no untagged jobs takes b.
    let docker_only = ClaimFilter {
        any: false,
        tags: vec!["docker".into()],
        run_untagged: false,
    };
    let (lb, jb) = s
        .claim_job("agent-1", "docker", &docker_only, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(jb.id, jobs[1].id);
    assert_eq!(jb.status, JobStatus::Running);
    assert_eq!(jb.lease_holder.as_deref(), Some("agent-1"));
    assert_eq!(jb.executor.as_deref(), Some("docker"));
    assert!(jb.started_at.is_some());
    assert!(s
        .claim_job("agent-1", "docker", &docker_only, Duration::from_secs(30))
        .await
        .unwrap()
        .is_none());
    let (la, ja) = s
        .claim_job(
            "server",
            "shell",
            &ClaimFilter::any(),
            Duration::from_secs(30),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ja.id, jobs[0].id);
    assert!(
        s.claim_job(
            "server",
            "shell",
            &ClaimFilter::any(),
            Duration::from_secs(30)
        )
        .await
        .unwrap()
        .is_none(),
        "created jobs are not claimable"
    );

    // Heartbeats extend; finishing needs the lease.
    let mut la = la;
    db.clock.advance(Duration::from_secs(20));
    let st = s.heartbeat(&mut la, Duration::from_secs(30)).await.unwrap();
    assert!(!st.cancel_requested);
    assert_eq!(st.expires_at, db.clock.now().plus(Duration::from_secs(30)));
    // The dotenv report's variables are kept with the job, under the lease only.
    s.set_job_dotenv(&la, &[KeyValue::new("VERSION", "1.2.3")])
        .await
        .unwrap();
    assert!(matches!(
        s.set_job_dotenv(&lb_wrong_token(&la), &[]).await,
        Err(Error::LeaseLost { .. })
    ));
    assert_eq!(
        s.job(ja.id).await.unwrap().dotenv,
        vec![KeyValue::new("VERSION", "1.2.3")]
    );
    let done = s
        .finish_job(&la, &JobOutcome::failed(Some(2), "script_failure"))
        .await
        .unwrap();
    assert_eq!(
        (done.status, done.exit_code, done.failure_reason.as_deref()),
        (JobStatus::Failed, Some(2), Some("script_failure"))
    );
    assert!(matches!(
        s.finish_job(&la, &JobOutcome::success()).await,
        Err(Error::LeaseLost { .. })
    ));
    assert!(matches!(
        s.heartbeat(&mut la, Duration::from_secs(1)).await,
        Err(Error::LeaseLost { .. })
    ));

    // agent-1 goes silent: its lease expires and the job fails (and is retried when the
    // caller's policy says so).
    db.clock.advance(Duration::from_secs(31));
    let report = s
        .expire_leases(|j| Recovery::Fail {
            retry: j.attempt < 2,
        })
        .await
        .unwrap();
    assert_eq!(report.failed, [jb.id]);
    assert_eq!(report.retried.len(), 1);
    let old = s.job(jb.id).await.unwrap();
    assert_eq!(
        (old.status, old.failure_reason.as_deref(), old.retried),
        (JobStatus::Failed, Some("lease expired"), true)
    );
    let new = s.job(report.retried[0].1).await.unwrap();
    assert_eq!(
        (new.status, new.attempt, new.tags.clone()),
        (JobStatus::Pending, 2, vec!["docker".to_string()])
    );
    assert!(matches!(
        s.finish_job(&lb, &JobOutcome::success()).await,
        Err(Error::LeaseLost { .. })
    ));
    assert_eq!(s.current_jobs(pl.id).await.unwrap().len(), 3);
}

async fn queue_concurrent_claims_take_each_job_once(db: &TestDb) {
    let p = project(db, "app").await;
    let jobs: Vec<NewJob> = (0..40)
        .map(|i| job(&format!("j{i}"), "build", 0, JobStatus::Pending))
        .collect();
    pipeline(db, &p, "main", jobs).await;
    // Two stores on one database (two servers), four claimers each.
    let second = db.reopen().await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = if i % 2 == 0 {
            db.store.clone()
        } else {
            second.clone()
        };
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Some((lease, job)) = s
                .claim_job(
                    &format!("c{i}"),
                    "shell",
                    &ClaimFilter::any(),
                    Duration::from_secs(60),
                )
                .await
                .unwrap()
            {
                mine.push(job.id);
                s.finish_job(&lease, &JobOutcome::success()).await.unwrap();
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    let n = all.len();
    all.dedup();
    assert_eq!((n, all.len()), (40, 40), "every job claimed exactly once");
    second.close().await;
}

async fn queue_waiters_wake_on_enqueue(db: &TestDb) {
    let p = project(db, "app").await;
    let (_, jobs) = pipeline(
        db,
        &p,
        "main",
        vec![job("later", "build", 0, JobStatus::Created)],
    )
    .await;
    // A claimer waits; the job is queued by another handle. On PostgreSQL that is a
    // second store (another server: LISTEN/NOTIFY); SQLite has one server process, so
    // the waiter shares its store (in-process events). Either way the job must be
    // picked up long before the 5 s fallback poll.
    let other = match db.backend {
        Backend::Postgres => db.reopen().await,
        Backend::Sqlite => db.store.clone(),
    };
    let waiter = tokio::spawn({
        let other = other.clone();
        async move {
            let t = std::time::Instant::now();
            let got = other
                .claim_job_wait(
                    "srv-2",
                    "shell",
                    &ClaimFilter::any(),
                    Duration::from_secs(60),
                    Duration::from_secs(20),
                )
                .await
                .unwrap();
            (got.map(|(_, j)| j.id), t.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let queued_at = std::time::Instant::now();
    assert!(db
        .store
        .set_job_status(jobs[0].id, JobStatus::Created, JobStatus::Pending)
        .await
        .unwrap());
    let (got, _) = waiter.await.unwrap();
    let pickup = queued_at.elapsed();
    assert_eq!(got, Some(jobs[0].id));
    // Not a timing assertion of performance, a check that the wake-up path is used at
    // all: without it the claim would wait for the 5 s fallback poll.
    assert!(
        pickup < Duration::from_secs(4),
        "woken by the poll, not by the event ({pickup:?})"
    );
    eprintln!("{:?}: pickup after enqueue took {pickup:?}", db.backend);
    // Waiting with nothing queued times out with None.
    let none = other
        .claim_job_wait(
            "srv-2",
            "shell",
            &ClaimFilter::any(),
            Duration::from_secs(60),
            Duration::from_millis(200),
        )
        .await
        .unwrap();
    assert!(none.is_none());
    if db.backend == Backend::Postgres {
        other.close().await;
    }
}

async fn restart_recovery(db: &TestDb) {
    let s = &db.store;
    let p = project(db, "app").await;
    let (_, jobs) = pipeline(
        db,
        &p,
        "main",
        vec![
            job("retryable", "build", 0, JobStatus::Pending),
            job("no-retry", "build", 0, JobStatus::Pending),
            job("survivor", "build", 0, JobStatus::Pending),
            job("agent-job", "build", 0, JobStatus::Pending),
            job("waiting", "build", 0, JobStatus::Pending),
        ],
    )
    .await;
    for _ in 0..3 {
        s.claim_job(
            "server-a",
            "shell",
            &ClaimFilter::any(),
            Duration::from_secs(60),
        )
        .await
        .unwrap()
        .unwrap();
    }
    s.claim_job(
        "agent-7",
        "docker",
        &ClaimFilter::any(),
        Duration::from_secs(60),
    )
    .await
    .unwrap()
    .unwrap();
    // The server restarts (a new store on the same database).
    let restarted = db.reopen().await;
    let report = restarted
        .recover_after_restart("server-a", |j| match j.name.as_str() {
            "retryable" => Recovery::Fail { retry: true },
            "survivor" => Recovery::Reattach,
            _ => Recovery::Fail { retry: false },
        })
        .await
        .unwrap();
    assert_eq!(report.failed, [jobs[0].id, jobs[1].id]);
    assert_eq!(report.retried.len(), 1);
    assert_eq!(report.retried[0].0, jobs[0].id);
    assert_eq!(report.reattached.len(), 1);
    assert_eq!(report.reattached[0].job, jobs[2].id);
    for j in [jobs[0].id, jobs[1].id] {
        let j = restarted.job(j).await.unwrap();
        assert_eq!(
            (j.status, j.failure_reason.as_deref()),
            (JobStatus::Failed, Some("server restarted"))
        );
    }
    let retry = restarted.job(report.retried[0].1).await.unwrap();
    assert_eq!((retry.status, retry.attempt), (JobStatus::Pending, 2));
    // The re-attached job runs on under its new lease; the agent's job is untouched.
    let mut lease = report.reattached[0].clone();
    restarted
        .heartbeat(&mut lease, Duration::from_secs(60))
        .await
        .unwrap();
    restarted
        .finish_job(&lease, &JobOutcome::success())
        .await
        .unwrap();
    assert_eq!(
        restarted.job(jobs[3].id).await.unwrap().status,
        JobStatus::Running
    );
    assert_eq!(
        restarted.job(jobs[4].id).await.unwrap().status,
        JobStatus::Pending
    );
    // Nothing left to recover.
    assert_eq!(
        restarted
            .recover_after_restart("server-a", |_| Recovery::Reattach)
            .await
            .unwrap(),
        RecoveryReport::default()
    );
    restarted.close().await;
}

// ---- logs -----------------------------------------------------------------------------

async fn logs_append_and_read(db: &TestDb) {
    let s = &db.store;
    let p = project(db, "app").await;
    let (_, jobs) = pipeline(
        db,
        &p,
        "main",
        vec![job("a", "build", 0, JobStatus::Pending)],
    )
    .await;
    let j = jobs[0].id;
    let mut events = s.subscribe();
    assert_eq!(s.append_log(j, b"$ make\n").await.unwrap(), 7);
    assert_eq!(s.append_log(j, b"").await.unwrap(), 7);
    // Bigger than a chunk, and not a multiple of it.
    let big: Vec<u8> = (0..(2 * slipway_db::logs::MAX_CHUNK + 12345))
        .map(|i| (i % 251) as u8)
        .collect();
    let size = s.append_log(j, &big).await.unwrap();
    assert_eq!(size, 7 + big.len() as i64);
    assert_eq!(s.log_size(j).await.unwrap(), size);
    let all = s.read_full_log(j).await.unwrap();
    assert_eq!(&all[..7], b"$ make\n");
    assert_eq!(&all[7..], &big[..]);
    // Reads from any offset, bounded.
    let slice = s.read_log(j, 5, 10).await.unwrap();
    assert_eq!(slice.data, all[5..15]);
    assert_eq!(
        (slice.offset, slice.next_offset(), slice.total_size),
        (5, 15, size)
    );
    let across = s
        .read_log(j, slipway_db::logs::MAX_CHUNK as i64 - 3, 100)
        .await
        .unwrap();
    assert_eq!(
        across.data,
        all[slipway_db::logs::MAX_CHUNK - 3..slipway_db::logs::MAX_CHUNK + 97]
    );
    let end = s.read_log(j, size, 100).await.unwrap();
    assert!(end.data.is_empty());
    assert!(s.read_log(j, -1, 1).await.is_err());
    assert!(matches!(
        s.append_log(JobId(999_999), b"x").await,
        Err(Error::NotFound { .. })
    ));
    // Live tails are told.
    let mut saw = false;
    while let Ok(e) = events.try_recv() {
        if e == (Event::LogAppended { job: j, size }) {
            saw = true;
        }
    }
    assert!(saw);
}

async fn logs_many_jobs_at_once(db: &TestDb) {
    // The scaled-down version of the 50 x 10 MB test (tests/log_load.rs runs that).
    let p = project(db, "app").await;
    let jobs: Vec<NewJob> = (0..50)
        .map(|i| job(&format!("j{i}"), "build", 0, JobStatus::Pending))
        .collect();
    let (_, jobs) = pipeline(db, &p, "main", jobs).await;
    let per_job = 256 * 1024;
    let mut tasks = Vec::new();
    for j in &jobs {
        let s = db.store.clone();
        let id = j.id;
        tasks.push(tokio::spawn(async move {
            // Lines batched into appends of about 4 KiB, as the server flushes a job's
            // output.
            let mut written = 0usize;
            let mut n = 0;
            while written < per_job {
                let mut batch = String::new();
                while batch.len() < 4096 {
                    batch.push_str(&format!("job {} line {n:06} {}\n", id.0, "x".repeat(40)));
                    n += 1;
                }
                s.append_log(id, batch.as_bytes()).await.unwrap();
                written += batch.len();
            }
            (id, written as i64, n)
        }));
    }
    for t in tasks {
        let (id, written, lines) = t.await.unwrap();
        let log = db.store.read_full_log(id).await.unwrap();
        assert_eq!(log.len() as i64, written);
        let text = String::from_utf8(log).unwrap();
        assert_eq!(text.lines().count(), lines);
        for (i, l) in text.lines().enumerate() {
            assert!(l.starts_with(&format!("job {} line {i:06} ", id.0)), "{l}");
        }
    }
}

// ---- artifacts, schedules, trigger tokens ---------------------------------------------

async fn artifacts_index(db: &TestDb) {
    let s = &db.store;
    let p = project(db, "app").await;
    let (pl, jobs) = pipeline(
        db,
        &p,
        "main",
        vec![job("build", "build", 0, JobStatus::Pending)],
    )
    .await;
    let now = db.clock.now();
    let a = s
        .add_artifact(
            jobs[0].id,
            NewArtifact {
                file_type: "archive".into(),
                name: "dist".into(),
                store_id: "a1b2".into(),
                size: 1234,
                expire_at: Some(now.plus(Duration::from_secs(60))),
            },
        )
        .await
        .unwrap();
    let b = s
        .add_artifact(
            jobs[0].id,
            NewArtifact {
                file_type: "junit".into(),
                name: "report.xml".into(),
                store_id: "c3d4".into(),
                size: 10,
                expire_at: Some(now.plus(Duration::from_secs(60))),
            },
        )
        .await
        .unwrap();
    s.add_artifact(
        jobs[0].id,
        NewArtifact {
            file_type: "archive".into(),
            name: "forever".into(),
            store_id: "e5".into(),
            size: 1,
            expire_at: None,
        },
    )
    .await
    .unwrap();
    assert_eq!((a.pipeline_id, a.project_id), (pl.id, p.id));
    assert_eq!(s.job_artifacts(jobs[0].id).await.unwrap().len(), 3);
    assert_eq!(s.pipeline_artifacts(pl.id).await.unwrap().len(), 3);
    assert!(s
        .add_artifact(
            JobId(424242),
            NewArtifact {
                file_type: "archive".into(),
                name: "x".into(),
                store_id: "y".into(),
                size: 1,
                expire_at: None
            }
        )
        .await
        .is_err());
    s.set_artifact_keep(a.id, true).await.unwrap();
    assert!(s.expired_artifacts(100).await.unwrap().is_empty());
    db.clock.advance(Duration::from_secs(61));
    let expired = s.expired_artifacts(100).await.unwrap();
    assert_eq!(
        expired.iter().map(|a| a.id).collect::<Vec<_>>(),
        [b.id],
        "kept artifacts never expire"
    );
    assert_eq!(s.delete_artifacts(&[a.id, b.id]).await.unwrap(), 1);
    assert_eq!(s.referenced_store_ids().await.unwrap(), ["a1b2", "e5"]);
    assert!(s.artifact(a.id).await.unwrap().keep);
}

async fn schedules_and_trigger_tokens(db: &TestDb) {
    let s = &db.store;
    let p = project(db, "app").await;
    let owner = s
        .create_user(&admin(), "owner", "password-123", false)
        .await
        .unwrap();
    let now = db.clock.now();
    let sch = s
        .create_schedule(
            &Actor::user(&owner),
            p.id,
            NewSchedule {
                description: "nightly".into(),
                cron: "0 2 * * *".into(),
                cron_timezone: "UTC".into(),
                ref_name: "main".into(),
                variables: vec![KeyValue::new("NIGHTLY", "1")],
                next_run_at: now.plus(Duration::from_secs(10)),
                active: true,
                owner_id: Some(owner.id),
            },
        )
        .await
        .unwrap();
    assert!(s
        .create_schedule(
            &admin(),
            p.id,
            NewSchedule {
                cron: "every day".into(),
                ..NewSchedule {
                    description: String::new(),
                    cron: String::new(),
                    cron_timezone: "UTC".into(),
                    ref_name: "main".into(),
                    variables: vec![],
                    next_run_at: now,
                    active: true,
                    owner_id: None
                }
            }
        )
        .await
        .is_err());
    assert!(s.due_schedules().await.unwrap().is_empty());
    db.clock.advance(Duration::from_secs(10));
    let due = s.due_schedules().await.unwrap();
    assert_eq!(due.len(), 1);
    // Two servers race for the run: one wins.
    let next = due[0].next_run_at.plus(Duration::from_secs(86400));
    assert!(s
        .claim_schedule_run(sch.id, due[0].next_run_at, next)
        .await
        .unwrap());
    assert!(!s
        .claim_schedule_run(sch.id, due[0].next_run_at, next)
        .await
        .unwrap());
    assert!(s.due_schedules().await.unwrap().is_empty());
    let mut np = NewPipeline::new(p.id, "main", "abc", PipelineSource::Schedule);
    np.schedule = Some(sch.id);
    let (pl, _) = s.create_pipeline(&Actor::user(&owner), np).await.unwrap();
    assert_eq!(
        s.schedule(sch.id).await.unwrap().last_pipeline_id,
        Some(pl.id)
    );
    let u = s
        .update_schedule(
            &admin(),
            sch.id,
            ScheduleUpdate {
                active: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(!u.active);
    assert_eq!(u.variables, vec![KeyValue::new("NIGHTLY", "1")]);
    assert_eq!(s.schedules(p.id).await.unwrap().len(), 1);
    s.delete_schedule(&admin(), sch.id).await.unwrap();
    assert!(s.schedules(p.id).await.unwrap().is_empty());

    let (token, info) = s
        .create_trigger_token(&Actor::user(&owner), p.id, "deploy bot")
        .await
        .unwrap();
    assert!(token.expose().starts_with("slwtrig_"));
    assert!(!db.raw_dump("trigger_tokens").await.contains(token.expose()));
    let t = s
        .authenticate_trigger_token(p.id, token.expose())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((t.id, t.owner_id), (info.id, Some(owner.id)));
    assert!(s.trigger_tokens(p.id).await.unwrap()[0]
        .last_used_at
        .is_some());
    let other = project(db, "other").await;
    assert!(
        s.authenticate_trigger_token(other.id, token.expose())
            .await
            .unwrap()
            .is_none(),
        "tokens are per project"
    );
    s.revoke_trigger_token(&admin(), info.id).await.unwrap();
    assert!(s
        .authenticate_trigger_token(p.id, token.expose())
        .await
        .unwrap()
        .is_none());
}

// ---- audit log ------------------------------------------------------------------------

async fn audit_entries_n(db: &TestDb, n: usize) {
    for i in 0..n {
        db.store
            .audit(
                &admin(),
                "test.action",
                "thing",
                &i.to_string(),
                json!({"i": i, "note": "ünïcode"}),
            )
            .await
            .unwrap();
    }
}

fn kinds(r: &AuditReport) -> Vec<(i64, AuditProblemKind)> {
    r.problems.iter().map(|p| (p.seq, p.kind)).collect()
}

async fn audit_chain_detects_tampering(db: &TestDb) {
    use AuditProblemKind::*;
    // Intact.
    audit_entries_n(db, 10).await;
    let r = db.store.verify_audit().await.unwrap();
    assert!(r.is_intact(), "{:?}", r.problems);
    assert_eq!(
        (r.entries, r.head_seq, r.checked_data_dir_head),
        (10, 10, true)
    );
    let listed = db.store.audit_entries(0, 100).await.unwrap();
    assert_eq!(
        listed.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(listed[3].details["note"], "ünïcode");
    assert_eq!(listed[4].prev_hash, listed[3].hash);
    assert_eq!(db.store.audit_recent(2).await.unwrap()[0].seq, 10);

    // Each tampering on a fresh database.
    let fresh = || async {
        let t = TestDb::new(db.backend).await.unwrap();
        audit_entries_n(&t, 10).await;
        t
    };
    let t = fresh().await;
    t.raw_execute(
        "UPDATE audit_log SET details = '{\"i\":4,\"note\":\"nothing to see\"}' WHERE seq = 5",
    )
    .await;
    assert_eq!(kinds(&t.store.verify_audit().await.unwrap()), [(5, Edited)]);
    t.finish().await;

    let t = fresh().await;
    t.raw_execute("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 2")
        .await;
    assert_eq!(kinds(&t.store.verify_audit().await.unwrap()), [(2, Edited)]);
    t.finish().await;

    // Signatures swapped between entries: the hashes are right, the MACs are not.
    let t = fresh().await;
    t.raw_execute(
        "UPDATE audit_log SET mac = (SELECT mac FROM audit_log WHERE seq = 3) WHERE seq = 6",
    )
    .await;
    let r = t.store.verify_audit().await.unwrap();
    assert_eq!(kinds(&r), [(6, Edited)]);
    assert!(r.problems[0].message.contains("signature"));
    t.finish().await;

    let t = fresh().await;
    t.raw_execute("DELETE FROM audit_log WHERE seq IN (4, 5)")
        .await;
    let r = t.store.verify_audit().await.unwrap();
    assert_eq!(kinds(&r), [(4, Deleted)]);
    assert!(
        r.problems[0].message.contains("4 to 5"),
        "{}",
        r.problems[0].message
    );
    t.finish().await;

    // The newest entries deleted: the signed head says otherwise.
    let t = fresh().await;
    t.raw_execute("DELETE FROM audit_log WHERE seq >= 9").await;
    assert_eq!(
        kinds(&t.store.verify_audit().await.unwrap()),
        [(9, Deleted)]
    );
    t.finish().await;

    // ... and the head rolled back to an older signed value (a replay): the data
    // directory's copy of the head catches it.
    let t = TestDb::new(db.backend).await.unwrap();
    audit_entries_n(&t, 8).await;
    let head8 = t.raw_dump("audit_head").await;
    let field = |name: &str| {
        head8
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap()
            .to_string()
    };
    let (hash8, mac8) = (field("hash"), field("mac"));
    audit_entries_n(&t, 2).await;
    t.raw_execute("DELETE FROM audit_log WHERE seq >= 9").await;
    t.raw_execute(&format!(
        "UPDATE audit_head SET seq = 8, hash = '{hash8}', mac = '{mac8}'"
    ))
    .await;
    let r = t.store.verify_audit().await.unwrap();
    assert_eq!(kinds(&r), [(9, Deleted)]);
    assert!(
        r.problems[0]
            .message
            .contains("this server recorded entry 10"),
        "{}",
        r.problems[0].message
    );
    t.finish().await;

    // A forged head (no key): refused.
    let t = fresh().await;
    t.raw_execute("DELETE FROM audit_log WHERE seq >= 9").await;
    t.raw_execute("UPDATE audit_head SET seq = 8").await;
    assert!(kinds(&t.store.verify_audit().await.unwrap()).contains(&(8, HeadAltered)));
    t.finish().await;

    // An entry added behind Slipway's back, after the head.
    let t = fresh().await;
    t.raw_execute(
        "INSERT INTO audit_log (seq, at, actor_id, actor, action, target_type, target_id, details, prev_hash, hash, mac) \
         SELECT 11, at, actor_id, 'intruder', action, target_type, target_id, details, hash, hash, mac FROM audit_log WHERE seq = 10",
    )
    .await;
    let r = t.store.verify_audit().await.unwrap();
    assert!(kinds(&r).contains(&(11, Inserted)), "{:?}", r.problems);
    t.finish().await;

    // An entry inserted in the middle by renumbering the later ones.
    let t = fresh().await;
    t.raw_execute("UPDATE audit_log SET seq = seq + 100 WHERE seq > 5")
        .await;
    t.raw_execute("UPDATE audit_log SET seq = seq - 99 WHERE seq > 100")
        .await;
    t.raw_execute(
        "INSERT INTO audit_log (seq, at, actor_id, actor, action, target_type, target_id, details, prev_hash, hash, mac) \
         SELECT 6, at, actor_id, 'intruder', action, target_type, target_id, details, hash, hash, mac FROM audit_log WHERE seq = 5",
    )
    .await;
    let r = t.store.verify_audit().await.unwrap();
    assert!(!r.is_intact());
    assert!(r.problems.iter().any(|p| p.seq == 6), "{:?}", r.problems);
    t.finish().await;
}

async fn audit_appends_never_fork(db: &TestDb) {
    // Two stores (two servers on PostgreSQL; two handles on one SQLite file) append at
    // once; the chain stays one line.
    let second = db.reopen().await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let s = if i % 2 == 0 {
            db.store.clone()
        } else {
            second.clone()
        };
        tasks.push(tokio::spawn(async move {
            s.audit(
                &Actor::system(format!("w{i}")),
                "test.concurrent",
                "t",
                &i.to_string(),
                json!({}),
            )
            .await
            .unwrap()
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap());
    }
    seqs.sort();
    assert_eq!(seqs, (1..=40).collect::<Vec<i64>>());
    let r = db.store.verify_audit().await.unwrap();
    assert!(r.is_intact(), "{:?}", r.problems);
    assert_eq!(r.entries, 40);
    second.close().await;
}

db_tests!(
    projects_crud,
    polling_bookkeeping,
    variables_and_secrets,
    wrong_key_is_refused,
    users_sessions_tokens,
    roles_and_groups,
    pipelines_and_jobs,
    auto_cancel_queries,
    queue_claim_lease_finish,
    queue_concurrent_claims_take_each_job_once,
    queue_waiters_wake_on_enqueue,
    restart_recovery,
    logs_append_and_read,
    logs_many_jobs_at_once,
    artifacts_index,
    schedules_and_trigger_tokens,
    audit_chain_detects_tampering,
    audit_appends_never_fork,
);
