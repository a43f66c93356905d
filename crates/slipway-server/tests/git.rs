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

/// Writes a raw commit object (any headers, any message) into `repo`; its name.
fn raw_commit(repo: &std::path::Path, text: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["hash-object", "-t", "commit", "-w", "--stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("git");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn object_reader_answers_as_the_git_commands_do() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = TestRepo::init(&tmp.path().join("app"));
    let c1 = src.commit(
        &[
            (".gitlab-ci.yml", "job:\n  script: [true]\n"),
            ("a b.txt", "spaces\n"),
            ("dir/ünï code.yml", "x: 1\n"),
            ("deep/x/y/z.txt", "deep\n"),
            ("tab\tname", "tab\n"),
            ("odd\nname", "newline\n"),
        ],
        "first\n\nwith a body\n\n\n",
    );
    std::os::unix::fs::symlink("a b.txt", src.path.join("link")).expect("symlink");
    std::fs::write(src.path.join("run.sh"), "#!/bin/sh\n").expect("write");
    std::fs::set_permissions(
        src.path.join("run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    src.git(&["add", "link", "run.sh"]);
    // A submodule entry: a commit of another repository, not a file.
    src.git(&[
        "update-index",
        "--add",
        "--cacheinfo",
        &format!("160000,{c1},vendor/sub"),
    ]);
    src.git(&["commit", "--quiet", "-m", "second [skip ci]"]);
    let c2 = src.git(&["rev-parse", "HEAD"]);
    src.git(&["tag", "v1", &c1]);
    src.git(&["tag", "-a", "v2", "-m", "Release 2"]);
    let tree = src.git(&["rev-parse", "HEAD^{tree}"]);
    let blob = src.git(&["rev-parse", "HEAD:a b.txt"]);
    // Commits written by other tools: another time zone, a merge, a signature header, UTC,
    // and a message in Latin-1 that `git log` converts.
    let west = raw_commit(
        &src.path,
        &format!(
            "tree {tree}\nparent {c2}\nauthor Grace  Hopper <grace@example.com> 1700000000 -0530\n\
             committer Ada <ada@example.com> 1700003600 -0530\n\nwest\n"
        ),
    );
    let merge = raw_commit(
        &src.path,
        &format!(
            "tree {tree}\nparent {c2}\nparent {west}\nauthor A <a@x> 1700000000 +0100\n\
             committer A <a@x> 1700000000 +0100\ngpgsig -----BEGIN PGP SIGNATURE-----\n \n \
             iQEz\n -----END PGP SIGNATURE-----\n\nMerge west\n\nencoding ISO-8859-1 is not a header here\n"
        ),
    );
    let utc = raw_commit(
        &src.path,
        &format!(
            "tree {tree}\nparent {merge}\nauthor A <a@x> 1700000000 +0000\n\
             committer A <a@x> 1700000000 +0000\n\nutc\n"
        ),
    );
    let latin = raw_commit(
        &src.path,
        &format!(
            "tree {tree}\nparent {utc}\nauthor A <a@x> 1700000000 +0100\n\
             committer A <a@x> 1700000000 +0100\nencoding ISO-8859-1\n\ncaf\u{e9}\n"
        ),
    );
    // The Latin-1 byte for é, as that encoding writes it.
    let latin = {
        let text = String::from_utf8(
            std::process::Command::new("git")
                .arg("-C")
                .arg(&src.path)
                .args(["cat-file", "commit", &latin])
                .output()
                .expect("git")
                .stdout,
        )
        .expect("utf8");
        let mut bytes = text.into_bytes();
        let at = bytes.len() - 3;
        bytes.splice(at..at + 2, [0xe9]);
        use std::io::Write;
        let mut child = std::process::Command::new("git")
            .arg("-C")
            .arg(&src.path)
            .args(["hash-object", "-t", "commit", "-w", "--stdin"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("git");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&bytes)
            .expect("write");
        let out = child.wait_with_output().expect("wait");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    src.git(&["update-ref", "refs/heads/odd", &latin]);

    let source = RepoSource::parse(src.path.to_str().expect("utf8")).expect("source");
    let m = Mirror::create_or_open(&tmp.path().join("m.git"), &source).expect("mirror");
    let mut r = m.objects().expect("reader");

    for rev in [
        c1.as_str(),
        &c2,
        &c2[..12],
        "main",
        "refs/heads/main",
        "refs/heads/odd",
        "refs/tags/v1",
        "refs/tags/v2",
        "v2",
        "main~1",
        "odd^2",
        "refs/heads/nope",
        "nope",
        &tree,
        &blob,
        "main:a b.txt",
        "HEAD",
        "a b",
    ] {
        assert_eq!(
            r.resolve_commit(&m, rev).expect("resolve"),
            m.resolve_commit(rev).expect("resolve"),
            "{rev}"
        );
    }
    assert!(r.resolve_commit(&m, "-x").is_err());
    assert!(r.resolve_commit(&m, "").is_err());
    assert_eq!(
        r.resolve_commit(&m, "refs/tags/v2").expect("v2").as_deref(),
        Some(c2.as_str()),
        "an annotated tag resolves to its commit"
    );

    for commit in [&c1, &c2, &west, &merge, &latin] {
        assert_eq!(
            r.commit_info(&m, commit).expect("info"),
            m.commit_info(commit).expect("info"),
            "{commit}"
        );
    }
    let info = r.commit_info(&m, &merge).expect("merge");
    assert_eq!(info.parents, vec![c2.clone(), west.clone()]);
    assert!(info.message.starts_with("Merge west\n\nencoding"));
    assert_eq!(
        r.commit_info(&m, &west).expect("west").author,
        "Grace  Hopper <grace@example.com>"
    );
    assert_eq!(r.commit_info(&m, &latin).expect("latin").message, "café");
    let utc_info = r.commit_info(&m, &utc).expect("utc");
    assert_eq!(utc_info.timestamp, "2023-11-14T22:13:20Z");
    assert_eq!(utc_info.message, "utc");
    assert_eq!(
        r.commit_info(&m, &c1).expect("c1").message,
        "first\n\nwith a body"
    );

    for commit in [&c1, &c2] {
        let listed = r.list_files(commit).expect("list");
        assert_eq!(listed, m.list_files(commit).expect("list"), "{commit}");
    }
    let listed = r.list_files(&c2).expect("list");
    assert!(listed.contains(&"odd\nname".to_string()));
    assert!(listed.contains(&"deep/x/y/z.txt".to_string()));
    assert!(listed.contains(&"link".to_string()));
    assert!(
        !listed.iter().any(|f| f.starts_with("vendor")),
        "{listed:?}"
    );
    assert!(r.list_files(&blob).is_err());

    for path in [
        ".gitlab-ci.yml",
        "a b.txt",
        "/a b.txt",
        "./dir/ünï code.yml",
        "dir/ünï code.yml",
        "deep/x/y/z.txt",
        "tab\tname",
        "link",
        "run.sh",
        "dir",
        "vendor/sub",
        "missing.yml",
        "deep/missing/z.txt",
    ] {
        assert_eq!(
            r.read_file(&c2, path).expect("read"),
            m.read_file(&c2, path).expect("read"),
            "{path}"
        );
    }
    assert_eq!(
        r.read_file(&c2, "link").expect("link").as_deref(),
        Some(&b"a b.txt"[..])
    );
    assert_eq!(r.read_file(&c2, "dir").expect("dir"), None);
    assert!(r.read_file(&c2, "../etc/passwd").is_err());
    assert!(r.read_file(&c2, "odd\nname").is_err());
    // After every kind of answer the stream is still in step.
    assert_eq!(
        r.read_file(&c1, "a b.txt").expect("read").as_deref(),
        Some(&b"spaces\n"[..])
    );

    // The loader reads through one reader and sees the same files.
    let at = m.at_commit(&c2);
    assert_eq!(at.read("a b.txt").as_deref(), Ok("spaces\n"));
    assert_eq!(at.read("a b.txt").as_deref(), Ok("spaces\n"));
    assert!(at.read("missing.yml").is_err());
    assert_eq!(at.list(), listed);
}
