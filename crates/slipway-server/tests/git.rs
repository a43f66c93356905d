//! Mirrors, refs, push detection, files, changes and exports against real repositories.

mod common;

use common::{git_in, TestRepo};
use slipway_core::source::SourceLoader;
use slipway_server::git::{Mirror, RefChangeKind, RepoSource};
use std::os::unix::fs::PermissionsExt;
use std::time::Instant;

fn kinds(changes: &[slipway_server::git::RefUpdate]) -> Vec<(String, RefChangeKind)> {
    changes
        .iter()
        .map(|c| (c.ref_name.clone(), c.kind()))
        .collect()
}

#[test]
fn mirror_of_a_working_tree_follows_branches_and_tags() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = TestRepo::init(&tmp.path().join("app"));
    let c1 = src.commit(&[("README.md", "hello\n")], "first");
    src.git(&["tag", "v1"]);
    src.git(&["tag", "-a", "v1-annotated", "-m", "Release 1\n\nNotes."]);
    // A stash and a remote-tracking ref are not branches: the mirror leaves them out.
    src.git(&["update-ref", "refs/remotes/origin/x", &c1]);

    let source = RepoSource::parse(src.path.to_str().expect("utf8")).expect("source");
    assert!(matches!(source, RepoSource::Local(_)));
    let m = Mirror::create_or_open(&tmp.path().join("mirrors/app.git"), &source).expect("mirror");
    let refs = m.refs().expect("refs");
    let names: Vec<&str> = refs.refs.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        vec!["refs/heads/main", "refs/tags/v1", "refs/tags/v1-annotated"]
    );
    assert_eq!(refs.branch("main").expect("main").commit, c1);
    let annotated = refs.tag("v1-annotated").expect("tag");
    assert_ne!(annotated.sha, annotated.commit, "the tag object is kept");
    assert_eq!(annotated.commit, c1);
    assert!(refs.packed_refs().contains(&format!("^{c1}\n")));
    assert_eq!(m.default_branch().as_deref(), Some("main"));
    assert_eq!(
        m.tag_message("v1-annotated").expect("msg").as_deref(),
        Some("Release 1\n\nNotes.")
    );
    assert_eq!(m.tag_message("v1").expect("msg"), None);

    let info = m.commit_info(&c1).expect("info");
    assert_eq!(info.author, "Ada Lovelace <ada@example.com>");
    assert_eq!(info.timestamp, "2024-05-01T10:00:00+02:00");
    assert_eq!(info.message, "first");
    assert!(info.parents.is_empty());

    // Pushes: a new commit on main, a new branch, a deleted tag, a force-pushed branch.
    src.git(&["checkout", "--quiet", "-b", "feature"]);
    let f1 = src.commit(&[("src/lib.rs", "fn a() {}\n")], "feature work");
    src.git(&["checkout", "--quiet", "main"]);
    let c2 = src.commit(&[("README.md", "hello again\n")], "second");
    src.git(&["tag", "-d", "v1"]);
    let (before, after) = m.fetch().expect("fetch");
    assert_eq!(
        kinds(&before.changes_to(&after)),
        vec![
            ("refs/heads/feature".to_string(), RefChangeKind::Created),
            ("refs/heads/main".to_string(), RefChangeKind::Updated),
            ("refs/tags/v1".to_string(), RefChangeKind::Deleted),
        ]
    );
    assert_eq!(after.branch("main").expect("main").commit, c2);
    assert_eq!(after.branch("feature").expect("feature").commit, f1);

    src.git(&["checkout", "--quiet", "feature"]);
    src.git(&["reset", "--quiet", "--hard", &c1]);
    let f2 = src.commit(&[("other.txt", "x\n")], "rewritten");
    let (before, after) = m.fetch().expect("fetch");
    let ch = before.changes_to(&after);
    assert_eq!(ch.len(), 1);
    assert_eq!(ch[0].old.as_deref(), Some(f1.as_str()));
    assert_eq!(ch[0].new.as_deref(), Some(f2.as_str()));
    // The old commit is still in the mirror's objects until gc: its diff still works.
    assert_eq!(
        m.changed_files(&f1, &f2).expect("diff"),
        vec!["other.txt".to_string()]
    );

    // Nothing changed: nothing reported.
    let (before, after) = m.fetch().expect("fetch");
    assert!(before.changes_to(&after).is_empty());

    // Reopening finds the same mirror.
    let again = Mirror::create_or_open(&tmp.path().join("mirrors/app.git"), &source).expect("open");
    assert_eq!(again.refs().expect("refs"), after);
}

#[test]
fn mirror_of_a_bare_repository_by_url_follows_its_default_branch() {
    let tmp = tempfile::tempdir().expect("tmp");
    let bare = TestRepo::init_bare(&tmp.path().join("origin.git"));
    let work = TestRepo::init(&tmp.path().join("work"));
    work.commit(&[("a.txt", "a\n")], "a");
    work.git(&["checkout", "--quiet", "-b", "trunk"]);
    work.git(&["remote", "add", "origin", bare.path.to_str().expect("utf8")]);
    work.git(&["push", "--quiet", "origin", "main", "trunk"]);
    bare.git(&["symbolic-ref", "HEAD", "refs/heads/trunk"]);

    let url = format!("file://{}", bare.path.display());
    let source = RepoSource::parse(&url).expect("url");
    assert!(matches!(source, RepoSource::Url(_)));
    let m = Mirror::create_or_open(&tmp.path().join("m.git"), &source).expect("mirror");
    assert_eq!(m.default_branch().as_deref(), Some("trunk"));

    bare.git(&["symbolic-ref", "HEAD", "refs/heads/main"]);
    m.fetch().expect("fetch");
    assert_eq!(m.default_branch().as_deref(), Some("main"));

    // A pull request head (from a fork) lives outside branches: fetched on demand, and
    // not reported by polling.
    work.git(&["checkout", "--quiet", "-b", "fork-work"]);
    let pr = work.commit(&[("fork.txt", "f\n")], "from a fork");
    work.git(&["push", "--quiet", "origin", "HEAD:refs/pull/7/head"]);
    assert!(m.poll().expect("poll").is_empty());
    assert_eq!(m.resolve_commit(&pr).expect("rev"), None);
    m.fetch_refspecs(&["+refs/pull/7/head:refs/pull/7/head"])
        .expect("fetch the pull head");
    assert_eq!(m.resolve_commit("refs/pull/7/head").expect("rev"), Some(pr));
    assert!(m.fetch_refspecs(&["--upload-pack=x"]).is_err());
    assert!(
        m.poll().expect("poll").is_empty(),
        "pull heads are not branches"
    );
    assert!(
        m.resolve_commit("refs/pull/7/head").expect("rev").is_some(),
        "--prune leaves refs outside the mirror's refspecs"
    );
}

#[test]
fn a_failed_first_fetch_leaves_no_mirror() {
    let tmp = tempfile::tempdir().expect("tmp");
    let url = format!("file://{}/missing.git", tmp.path().display());
    let source = RepoSource::parse(&url).expect("url");
    let err = Mirror::create_or_open(&tmp.path().join("m.git"), &source).expect_err("no repo");
    assert!(err.to_string().contains("git"), "{err}");
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn files_and_pipeline_loading_at_a_commit() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = TestRepo::init(&tmp.path().join("app"));
    let c1 = src.commit(
        &[
            (
                ".gitlab-ci.yml",
                "include:\n  - local: ci/*.yml\nbuild:\n  script: make\n",
            ),
            ("ci/test.yml", "test:\n  script: make test\n"),
            ("docs/a b.md", "spaces\n"),
            ("é.txt", "unicode\n"),
        ],
        "pipeline",
    );
    let c2 = src.commit(
        &[("ci/test.yml", "test:\n  script: [make check\n")],
        "broken",
    );
    let m = Mirror::create_or_open(
        &tmp.path().join("m.git"),
        &RepoSource::Local(src.path.clone()),
    )
    .expect("mirror");

    assert_eq!(
        m.list_files(&c1).expect("files"),
        vec![".gitlab-ci.yml", "ci/test.yml", "docs/a b.md", "é.txt"]
    );
    assert_eq!(
        m.read_file(&c1, "docs/a b.md").expect("read").as_deref(),
        Some(&b"spaces\n"[..])
    );
    assert_eq!(m.read_file(&c1, "ci").expect("dir"), None);
    assert_eq!(m.read_file(&c1, "nope.txt").expect("missing"), None);
    assert!(m.read_file(&c1, "../outside").is_err());

    let at1 = m.at_commit(&c1);
    assert_eq!(at1.list().len(), 4);
    let loaded = slipway_core::load_pipeline(&at1, ".gitlab-ci.yml", &|_| None);
    let p = loaded.pipeline.as_ref().expect("valid pipeline");
    let mut names: Vec<&str> = p.jobs.iter().map(|j| j.name.as_str()).collect();
    names.sort();
    assert_eq!(names, vec!["build", "test"]);

    // The broken include is reported with its file, line and column.
    let at2 = m.at_commit(&c2);
    let loaded = slipway_core::load_pipeline(&at2, ".gitlab-ci.yml", &|_| None);
    let diags = loaded.pipeline.as_ref().expect_err("invalid");
    let rendered = diags.render(&loaded.sources);
    assert!(
        rendered.starts_with("ci/test.yml:3:1: error: YAML syntax error"),
        "{rendered}"
    );
}

#[test]
fn changed_files_use_the_merge_base() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = TestRepo::init(&tmp.path().join("app"));
    let base = src.commit(&[("a.txt", "a\n"), ("gone.txt", "x\n")], "base");
    src.git(&["checkout", "--quiet", "-b", "topic"]);
    src.git(&["rm", "--quiet", "gone.txt"]);
    let topic = src.commit(&[("b/c.txt", "c\n")], "topic");
    src.git(&["checkout", "--quiet", "main"]);
    let main2 = src.commit(&[("main-only.txt", "m\n")], "main moves on");
    let m = Mirror::create_or_open(
        &tmp.path().join("m.git"),
        &RepoSource::Local(src.path.clone()),
    )
    .expect("mirror");
    // What the topic branch changed since it forked, not what main did meanwhile.
    assert_eq!(
        m.changed_files(&main2, &topic).expect("diff"),
        vec!["b/c.txt", "gone.txt"]
    );
    assert_eq!(
        m.changed_files(&base, &main2).expect("diff"),
        vec!["main-only.txt"]
    );
    assert_eq!(m.resolve_commit("main").expect("rev"), Some(main2.clone()));
    assert_eq!(m.resolve_commit("topic~1").expect("rev"), Some(base));
    assert_eq!(m.resolve_commit("no-such-branch").expect("rev"), None);
    assert!(m.changed_files("--output=/tmp/x", &topic).is_err());
}

#[test]
fn export_writes_a_commit_with_modes_and_links() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = TestRepo::init(&tmp.path().join("app"));
    for i in 0..5000 {
        src.write(&format!("d{}/f{i}.txt", i % 50), &format!("file {i}\n"));
    }
    src.write("run.sh", "#!/bin/sh\necho hi\n");
    std::fs::set_permissions(
        src.path.join("run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    std::os::unix::fs::symlink("run.sh", src.path.join("link.sh")).expect("symlink");
    let sha = src.commit(&[], "many files");
    src.write("untracked.txt", "not committed\n");
    let m = Mirror::create_or_open(
        &tmp.path().join("m.git"),
        &RepoSource::Local(src.path.clone()),
    )
    .expect("mirror");

    let dest = tmp.path().join("ws/build");
    let t = Instant::now();
    let stats = m.export(&sha, &dest).expect("export");
    eprintln!("exported {} files in {:?}", stats.files, t.elapsed());
    assert_eq!(stats.files, 5002);
    assert_eq!(
        std::fs::read_to_string(dest.join("d7/f4007.txt")).expect("read"),
        "file 4007\n"
    );
    let mode = std::fs::metadata(dest.join("run.sh"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "executable bit kept");
    assert_eq!(
        std::fs::read_link(dest.join("link.sh")).expect("link"),
        std::path::Path::new("run.sh")
    );
    assert!(!dest.join("untracked.txt").exists());
    assert!(!dest.join(".git").exists());
    // The mirror has no index of its own afterwards, and nothing was left beside it.
    assert!(!m.path().join("index").exists());
    let stray: Vec<_> = std::fs::read_dir(m.path())
        .expect("ls")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("slipway-"))
        .collect();
    assert!(stray.is_empty());

    // A non-empty directory is refused rather than mixed with another commit's files.
    assert!(m.export(&sha, &dest).is_err());
    // Git agrees the export is the commit: same tree when added to a fresh index.
    let check = tmp.path().join("check");
    std::fs::create_dir_all(&check).expect("mkdir");
    git_in(&check, &["init", "--quiet"]);
    let out = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(check.join(".git"))
        .arg("--work-tree")
        .arg(&dest)
        .args(["add", "-A"])
        .output()
        .expect("git add");
    assert!(out.status.success());
    let tree = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(check.join(".git"))
        .args(["write-tree"])
        .output()
        .expect("write-tree");
    assert_eq!(
        String::from_utf8_lossy(&tree.stdout).trim(),
        src.git(&["rev-parse", &format!("{sha}^{{tree}}")])
    );
}
