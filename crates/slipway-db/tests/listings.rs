//! The list queries behind the web pages, each case on SQLite and (when configured)
//! PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestDb;
use slipway_db::*;

fn system() -> Actor {
    Actor::system("test")
}

async fn pipeline(
    s: &Store,
    project: ProjectId,
    ref_name: &str,
    tag: bool,
    user: Option<UserId>,
    jobs: &[(&str, &str, usize, JobStatus)],
) -> Pipeline {
    let mut np = NewPipeline::new(
        project,
        ref_name,
        "0123456789abcdef0123456789abcdef01234567",
        PipelineSource::Push,
    );
    np.tag = tag;
    np.user = user;
    np.jobs = jobs
        .iter()
        .map(|(name, stage, i, status)| NewJob {
            status: *status,
            ..NewJob::new(*name, *stage, *i)
        })
        .collect();
    s.create_pipeline(&system(), np).await.unwrap().0
}

async fn pipeline_rows_name_the_trigger(db: &TestDb) {
    let s = &db.store;
    let root = s
        .create_first_admin("root", Some("root-password"))
        .await
        .unwrap()
        .unwrap()
        .user;
    let alice = s
        .create_user(&Actor::user(&root), "alice", "alice-password", false)
        .await
        .unwrap();
    let p = s
        .create_project(&system(), NewProject::new("app", "/srv/app.git"))
        .await
        .unwrap();
    let a = pipeline(s, p.id, "main", false, Some(alice.id), &[]).await;
    let b = pipeline(s, p.id, "main", false, None, &[]).await;
    let rows = s
        .pipeline_rows(&PipelineQuery {
            project: Some(p.id),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| (r.pipeline.id, r.username.clone()))
            .collect::<Vec<_>>(),
        [(b.id, None), (a.id, Some("alice".to_string()))]
    );
    assert_eq!(rows[1].pipeline, a);
    assert_eq!(s.pipeline_row(a.id).await.unwrap(), rows[1]);
    assert!(matches!(
        s.pipeline_row(PipelineId(9999)).await,
        Err(Error::NotFound { .. })
    ));
    // Filters and paging as in `pipelines`.
    let older = s
        .pipeline_rows(&PipelineQuery {
            project: Some(p.id),
            before: Some(b.id),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(older.len(), 1);
    assert_eq!(older[0].pipeline.id, a.id);
    let names = s
        .usernames(&[alice.id, root.id, UserId(777)])
        .await
        .unwrap();
    assert_eq!(names.len(), 2);
    assert_eq!(names[&alice.id], "alice");
    assert!(s.usernames(&[]).await.unwrap().is_empty());
}

async fn latest_pipeline_of_each_ref(db: &TestDb) {
    let s = &db.store;
    let p = s
        .create_project(&system(), NewProject::new("app", "/srv/app.git"))
        .await
        .unwrap();
    let other = s
        .create_project(&system(), NewProject::new("other", "/srv/other.git"))
        .await
        .unwrap();
    let _m1 = pipeline(s, p.id, "main", false, None, &[]).await;
    let f1 = pipeline(s, p.id, "feature", false, None, &[]).await;
    let m2 = pipeline(s, p.id, "main", false, None, &[]).await;
    // A tag named like a branch is another ref.
    let t1 = pipeline(s, p.id, "main", true, None, &[]).await;
    let o1 = pipeline(s, other.id, "main", false, None, &[]).await;
    let rows = s.latest_pipeline_per_ref(p.id, 50).await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.pipeline.id).collect::<Vec<_>>(),
        [t1.id, m2.id, f1.id]
    );
    assert_eq!(s.latest_pipeline_per_ref(p.id, 1).await.unwrap().len(), 1);

    // Default branches: `main` for both; a tag does not count.
    let latest = s.latest_default_branch_pipelines().await.unwrap();
    assert_eq!(latest.len(), 2);
    assert_eq!(latest[&p.id].id, m2.id);
    assert_eq!(latest[&other.id].id, o1.id);
    let p = s
        .update_project(
            &system(),
            p.id,
            ProjectUpdate {
                default_branch: Some("feature".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        s.latest_default_branch_pipelines().await.unwrap()[&p.id].id,
        f1.id
    );
}

async fn stage_statuses_of_many_pipelines(db: &TestDb) {
    let s = &db.store;
    let p = s
        .create_project(&system(), NewProject::new("app", "/srv/app.git"))
        .await
        .unwrap();
    let a = pipeline(
        s,
        p.id,
        "main",
        false,
        None,
        &[
            ("build", "build", 0, JobStatus::Pending),
            ("unit 1/3", "test", 1, JobStatus::Created),
            ("unit 2/3", "test", 1, JobStatus::Created),
            ("unit 3/3", "test", 1, JobStatus::Pending),
        ],
    )
    .await;
    let b = pipeline(
        s,
        p.id,
        "main",
        false,
        None,
        &[("lint", "test", 0, JobStatus::Pending)],
    )
    .await;
    let empty = pipeline(s, p.id, "main", false, None, &[]).await;
    // A retried attempt is replaced by the new one.
    let jobs = s.current_jobs(b.id).await.unwrap();
    s.cancel_job(&system(), jobs[0].id).await.unwrap();
    s.retry_job(&system(), jobs[0].id).await.unwrap();

    let stages = s.stage_statuses(&[a.id, b.id, empty.id]).await.unwrap();
    assert_eq!(
        stages[&a.id]
            .iter()
            .map(|x| (x.stage.as_str(), x.stage_index, x.status, x.jobs))
            .collect::<Vec<_>>(),
        [
            ("build", 0, JobStatus::Pending, 1),
            ("test", 1, JobStatus::Created, 2),
            ("test", 1, JobStatus::Pending, 1),
        ]
    );
    assert_eq!(
        stages[&b.id]
            .iter()
            .map(|x| (x.status, x.jobs))
            .collect::<Vec<_>>(),
        [(JobStatus::Pending, 1)],
        "the canceled attempt no longer counts"
    );
    assert!(!stages.contains_key(&empty.id));
    assert!(s.stage_statuses(&[]).await.unwrap().is_empty());

    // More pipelines than one IN list holds.
    let mut ids = Vec::new();
    for _ in 0..520 {
        ids.push(
            pipeline(
                s,
                p.id,
                "many",
                false,
                None,
                &[("only", "test", 0, JobStatus::Created)],
            )
            .await
            .id,
        );
    }
    let stages = s.stage_statuses(&ids).await.unwrap();
    assert_eq!(stages.len(), 520);
    assert!(stages.values().all(|v| v.len() == 1 && v[0].jobs == 1));
}

async fn roles_of_a_user(db: &TestDb) {
    let s = &db.store;
    let root = s
        .create_first_admin("root", Some("root-password"))
        .await
        .unwrap()
        .unwrap()
        .user;
    let bob = s
        .create_user(&Actor::user(&root), "bob", "bob-password", false)
        .await
        .unwrap();
    let a = s
        .create_project(&system(), NewProject::new("a", "/srv/a.git"))
        .await
        .unwrap();
    let b = s
        .create_project(&system(), NewProject::new("b", "/srv/b.git"))
        .await
        .unwrap();
    s.create_project(&system(), NewProject::new("c", "/srv/c.git"))
        .await
        .unwrap();
    s.set_member(&system(), a.id, bob.id, Role::Viewer)
        .await
        .unwrap();
    s.set_member(&system(), b.id, bob.id, Role::Maintainer)
        .await
        .unwrap();
    let roles = s.member_roles(bob.id).await.unwrap();
    assert_eq!(roles.len(), 2);
    assert_eq!(roles[&a.id], Role::Viewer);
    assert_eq!(roles[&b.id], Role::Maintainer);
    assert!(s.member_roles(root.id).await.unwrap().is_empty());
}

db_tests!(
    pipeline_rows_name_the_trigger,
    latest_pipeline_of_each_ref,
    stage_statuses_of_many_pipelines,
    roles_of_a_user,
);
