//! The artifact and cache store on real directories.

use slipway_core::model::{Artifacts, Cache, CacheKey};
use slipway_runner::store::{cache_key, expire_at, ArtifactSet, EntryKind, Store};
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tempfile::TempDir;

fn write(root: &Path, rel: &str, content: &str) -> PathBuf {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    fs::write(&p, content).expect("write");
    p
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn mode_of(p: &Path) -> u32 {
    fs::symlink_metadata(p).expect("stat").permissions().mode() & 0o777
}

/// A store whose garbage collection spares nothing for age.
fn store() -> (TempDir, Store) {
    let dir = TempDir::new().expect("tempdir");
    let store = Store::open(dir.path().join("data"))
        .expect("open")
        .with_gc_grace(Duration::ZERO);
    (dir, store)
}

fn arts(paths: &[&str], exclude: &[&str]) -> Artifacts {
    Artifacts {
        paths: paths.iter().map(|s| s.to_string()).collect(),
        exclude: exclude.iter().map(|s| s.to_string()).collect(),
        when: "on_success".into(),
        ..Artifacts::default()
    }
}

fn files(set: &ArtifactSet) -> Vec<&str> {
    set.entries
        .iter()
        .filter(|e| matches!(e.kind, EntryKind::File { .. }))
        .map(|e| e.path.as_str())
        .collect()
}

fn all(set: &ArtifactSet) -> Vec<&str> {
    set.entries.iter().map(|e| e.path.as_str()).collect()
}

fn blob_count(store: &Store) -> usize {
    store.blob_stats().expect("stats").0
}

/// A workspace with a little of everything.
fn workspace() -> TempDir {
    let ws = TempDir::new().expect("tempdir");
    let r = ws.path();
    write(r, "out/a.txt", "a");
    write(r, "out/b.log", "b");
    write(r, "out/sub/c.txt", "c");
    write(r, "out/sub/deep/d.txt", "d");
    write(r, "top.txt", "top");
    write(r, ".hidden.txt", "hidden");
    write(r, "src/x.rs", "fn main() {}");
    ws
}

fn collect(store: &Store, ws: &Path, paths: &[&str], exclude: &[&str]) -> ArtifactSet {
    store
        .collect_artifacts(ws, &arts(paths, exclude), &[])
        .expect("collect")
}

#[test]
fn single_star_stays_in_one_directory() {
    let (_d, store) = store();
    let ws = workspace();
    let set = collect(&store, ws.path(), &["out/*.txt"], &[]);
    assert_eq!(files(&set), ["out/a.txt"]);
    assert!(set.warnings.is_empty(), "{:?}", set.warnings);
    // Hidden files match `*`, as with doublestar.
    let set = collect(&store, ws.path(), &["*.txt"], &[]);
    assert_eq!(files(&set), [".hidden.txt", "top.txt"]);
}

#[test]
fn double_star_crosses_directories() {
    let (_d, store) = store();
    let ws = workspace();
    let set = collect(&store, ws.path(), &["out/**/*.txt"], &[]);
    assert_eq!(
        files(&set),
        ["out/a.txt", "out/sub/c.txt", "out/sub/deep/d.txt"]
    );
    let set = collect(&store, ws.path(), &["**/c.txt"], &[]);
    assert_eq!(files(&set), ["out/sub/c.txt"]);
    // A glob matching a directory takes the whole directory.
    let set = collect(&store, ws.path(), &["out/s*"], &[]);
    assert_eq!(
        all(&set),
        [
            "out/sub",
            "out/sub/c.txt",
            "out/sub/deep",
            "out/sub/deep/d.txt"
        ]
    );
    // Alternatives.
    let set = collect(&store, ws.path(), &["out/*.{txt,log}"], &[]);
    assert_eq!(files(&set), ["out/a.txt", "out/b.log"]);
}

#[test]
fn directories_are_taken_recursively() {
    let (_d, store) = store();
    let ws = workspace();
    for p in ["out", "out/", "./out", "out/sub/.."] {
        let set = collect(&store, ws.path(), &[p], &[]);
        assert_eq!(
            all(&set),
            [
                "out",
                "out/a.txt",
                "out/b.log",
                "out/sub",
                "out/sub/c.txt",
                "out/sub/deep",
                "out/sub/deep/d.txt"
            ],
            "{p}"
        );
        assert_eq!(
            set.notes,
            [format!(
                "{p}: found 7 matching artifact files and directories"
            )]
        );
    }
    // An absolute path inside the workspace is fine.
    let abs = ws.path().join("out/a.txt").display().to_string();
    let set = collect(&store, ws.path(), &[&abs], &[]);
    assert_eq!(files(&set), ["out/a.txt"]);
    // Overlapping entries are stored once.
    let set = collect(
        &store,
        ws.path(),
        &["out", "out/a.txt", "out/**", "out/*.txt"],
        &[],
    );
    assert_eq!(set.file_count(), 4);
    assert!(set.warnings.is_empty(), "{:?}", set.warnings);
    assert_eq!(
        set.notes[3],
        "out/*.txt: found 1 matching artifact files and directories"
    );
}

#[test]
fn exclude_with_double_star() {
    let (_d, store) = store();
    let ws = workspace();
    let set = collect(
        &store,
        ws.path(),
        &["out/"],
        &["**/*.log", "out/sub/deep/**"],
    );
    assert_eq!(files(&set), ["out/a.txt", "out/sub/c.txt"]);
    assert!(set.notes.iter().any(|n| n == "**/*.log: excluded 1 files"));
    // Excluding a directory by name leaves its files (they are judged one by one), as
    // GitLab documents: `dir/**/*` is the way to drop its content.
    let set = collect(&store, ws.path(), &["out/"], &["out/sub"]);
    assert!(files(&set).contains(&"out/sub/c.txt"));
    assert!(!all(&set).contains(&"out/sub"));
    let set = collect(&store, ws.path(), &["out/"], &["out/sub/**/*"]);
    assert_eq!(files(&set), ["out/a.txt", "out/b.log"]);
}

#[test]
fn missing_and_outside_paths_warn() {
    let (_d, store) = store();
    let ws = workspace();
    let set = collect(
        &store,
        ws.path(),
        &[
            "nope/",
            "missing/**/*.bin",
            "../etc/passwd",
            "/etc/passwd",
            "",
            "top.txt",
        ],
        &[],
    );
    assert_eq!(files(&set), ["top.txt"]);
    let w = &set.warnings;
    assert_eq!(w.len(), 5, "{w:?}");
    assert!(w[0].starts_with("nope/: no matching files. Ensure that the artifact path is relative to the working directory"));
    assert!(w[1].starts_with("missing/**/*.bin: no matching files"));
    assert_eq!(
        w[2],
        "artifact path is not a subpath of project directory: ../etc/passwd"
    );
    assert_eq!(
        w[3],
        "artifact path is not a subpath of project directory: /etc/passwd"
    );
    assert_eq!(w[4], "No matching files. Path is empty.");
}

#[test]
fn symlinked_directory_leading_out_is_refused() {
    let (_d, store) = store();
    let ws = workspace();
    let outside = TempDir::new().expect("tempdir");
    write(outside.path(), "secret", "s");
    symlink(outside.path(), ws.path().join("ext")).expect("symlink");
    let set = collect(&store, ws.path(), &["ext/secret", "ext/*"], &[]);
    assert!(set.entries.is_empty(), "{:?}", set.entries);
    assert_eq!(set.warnings.len(), 2, "{:?}", set.warnings);
    // The link itself is outside-pointing: listed by a glob, it is skipped with a warning.
    let set = collect(&store, ws.path(), &["e*"], &[]);
    assert!(set.entries.is_empty());
    assert!(set.warnings[0].contains("outside the working directory"));
}

#[test]
fn modes_symlinks_and_times_survive_a_round_trip() {
    let (_d, store) = store();
    let ws = TempDir::new().expect("tempdir");
    let r = ws.path();
    chmod(&write(r, "dist/run.sh", "#!/bin/sh\necho hi\n"), 0o755);
    chmod(&write(r, "dist/readonly.txt", "ro"), 0o444);
    write(r, "dist/private/key", "k");
    chmod(&r.join("dist/private"), 0o700);
    fs::create_dir_all(r.join("dist/empty")).expect("mkdir");
    symlink("run.sh", r.join("dist/link")).expect("symlink");
    symlink(r.join("dist/readonly.txt"), r.join("dist/abs-link")).expect("symlink");
    symlink("/etc/passwd", r.join("dist/evil")).expect("symlink");
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    fs::File::options()
        .write(true)
        .open(r.join("dist/run.sh"))
        .expect("open")
        .set_modified(old)
        .expect("touch");

    let set = collect(&store, r, &["dist"], &[]);
    assert_eq!(
        all(&set),
        [
            "dist",
            "dist/abs-link",
            "dist/empty",
            "dist/link",
            "dist/private",
            "dist/private/key",
            "dist/readonly.txt",
            "dist/run.sh"
        ]
    );
    assert_eq!(set.warnings.len(), 1);
    assert!(set.warnings[0].starts_with("dist/evil: symlink target /etc/passwd is outside"));
    match &set.entry("dist/abs-link").expect("entry").kind {
        EntryKind::Symlink { target } => assert_eq!(target, "readonly.txt"),
        k => panic!("{k:?}"),
    }

    store.save_artifacts("1-build", &set, None).expect("save");
    let loaded = store.load_artifacts("1-build").expect("load");
    assert_eq!(loaded, set);

    let dest = TempDir::new().expect("tempdir");
    let d = dest.path();
    store.extract_artifacts(&loaded, d).expect("extract");
    assert_eq!(
        fs::read_to_string(d.join("dist/run.sh")).expect("read"),
        "#!/bin/sh\necho hi\n"
    );
    assert_eq!(mode_of(&d.join("dist/run.sh")), 0o755);
    assert_eq!(mode_of(&d.join("dist/readonly.txt")), 0o444);
    assert_eq!(mode_of(&d.join("dist/private")), 0o700);
    assert!(d.join("dist/empty").is_dir());
    assert_eq!(
        fs::read_link(d.join("dist/link")).expect("link"),
        Path::new("run.sh")
    );
    assert_eq!(
        fs::read_to_string(d.join("dist/abs-link")).expect("read"),
        "ro"
    );
    assert!(!d.join("dist/evil").exists());
    let mtime = fs::metadata(d.join("dist/run.sh"))
        .expect("stat")
        .modified()
        .expect("mtime");
    assert_eq!(mtime, old);
}

#[test]
fn extraction_overwrites_and_never_writes_through_symlinks() {
    let (_d, store) = store();
    let ws = TempDir::new().expect("tempdir");
    write(ws.path(), "bin/tool", "new tool");
    write(ws.path(), "bin/conf", "new conf");
    write(ws.path(), "lib/x", "x");
    let set = collect(&store, ws.path(), &["bin", "lib"], &[]);

    let dest = TempDir::new().expect("tempdir");
    let outside = TempDir::new().expect("tempdir");
    let victim = write(outside.path(), "victim", "untouched");
    // An older read-only copy is replaced.
    chmod(&write(dest.path(), "bin/tool", "old tool"), 0o444);
    // A symlink where a file goes is replaced, not written through.
    symlink(&victim, dest.path().join("bin/conf")).expect("symlink");
    store.extract_artifacts(&set, dest.path()).expect("extract");
    assert_eq!(
        fs::read_to_string(dest.path().join("bin/tool")).expect("read"),
        "new tool"
    );
    assert_eq!(
        fs::read_to_string(dest.path().join("bin/conf")).expect("read"),
        "new conf"
    );
    assert!(!fs::symlink_metadata(dest.path().join("bin/conf"))
        .expect("stat")
        .file_type()
        .is_symlink());
    assert_eq!(fs::read_to_string(&victim).expect("read"), "untouched");

    // A directory symlinked out of the destination is refused with an error naming it.
    let dest2 = TempDir::new().expect("tempdir");
    symlink(outside.path(), dest2.path().join("lib")).expect("symlink");
    let err = store
        .extract_artifacts(&set, dest2.path())
        .expect_err("refused");
    assert!(err.to_string().contains("lib"), "{err}");
    assert!(!outside.path().join("x").exists());
}

#[test]
fn identical_files_are_stored_once() {
    let (_d, store) = store();
    let ws1 = TempDir::new().expect("tempdir");
    let ws2 = TempDir::new().expect("tempdir");
    write(ws1.path(), "a.txt", "same content");
    write(ws1.path(), "copy/a.txt", "same content");
    write(ws1.path(), "b.txt", "other");
    let big: String = (0..300_000).map(|i| format!("{i}\n")).collect();
    write(ws1.path(), "big.bin", &big);
    let set1 = collect(&store, ws1.path(), &["."], &[]);
    store.save_artifacts("p1-job", &set1, None).expect("save");
    assert_eq!(blob_count(&store), 3);

    // Another job of another pipeline with the same files adds no blob.
    write(ws2.path(), "renamed.txt", "same content");
    write(ws2.path(), "deep/big.bin", &big);
    let set2 = collect(&store, ws2.path(), &["."], &[]);
    store.save_artifacts("p2-job", &set2, None).expect("save");
    assert_eq!(blob_count(&store), 3);
    // A cache of the same files neither.
    store
        .save_cache("k", ws2.path(), &["renamed.txt".into()], None)
        .expect("cache");
    assert_eq!(blob_count(&store), 3);
    // A new content does.
    write(ws2.path(), "renamed.txt", "changed");
    collect(&store, ws2.path(), &["renamed.txt"], &[]);
    assert_eq!(blob_count(&store), 4);

    // Large blobs (streamed) round-trip too; compression works on text.
    let dest = TempDir::new().expect("tempdir");
    store
        .extract_artifacts(&set2, dest.path())
        .expect("extract");
    assert_eq!(
        fs::read_to_string(dest.path().join("deep/big.bin")).expect("read"),
        big
    );
    let (_, bytes) = store.blob_stats().expect("stats");
    assert!(bytes < big.len() as u64 / 2, "{bytes}");
}

#[test]
fn corrupt_blobs_are_detected() {
    let (d, store) = store();
    let ws = TempDir::new().expect("tempdir");
    write(ws.path(), "f", "payload");
    let set = collect(&store, ws.path(), &["f"], &[]);
    let EntryKind::File { blob, .. } = &set.entries[0].kind else {
        panic!("not a file")
    };
    let path = d
        .path()
        .join("data/objects")
        .join(&blob[..2])
        .join(&blob[2..]);
    fs::write(&path, zstd_of(b"tampered")).expect("write");
    let err = store
        .extract_artifacts(&set, &d.path().join("dest"))
        .expect_err("corrupt");
    assert!(err.to_string().contains("corrupt"), "{err}");
    fs::remove_file(&path).expect("rm");
    let err = store
        .extract_artifacts(&set, &d.path().join("dest"))
        .expect_err("missing");
    assert!(err.to_string().contains(&blob[2..]), "{err}");
}

fn zstd_of(data: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(data, 1).expect("compress")
}

#[test]
fn untracked_files_are_those_not_in_the_checkout() {
    let (_d, store) = store();
    let ws = TempDir::new().expect("tempdir");
    let r = ws.path();
    write(r, "README.md", "readme");
    write(r, "src/main.rs", "main");
    write(r, ".git/config", "git");
    write(r, "build/out.o", "object");
    write(r, "build/out.d", "deps");
    write(r, "new.txt", "new");
    let checkout: Vec<String> = vec!["README.md".into(), "./src/main.rs".into()];
    let mut a = arts(&[], &["build/*.d"]);
    a.untracked = true;
    let set = store.collect_artifacts(r, &a, &checkout).expect("collect");
    assert_eq!(files(&set), ["build/out.o", "new.txt"]);
    assert!(set.notes.contains(&"untracked: found 2 files".to_string()));
    // Without `untracked`, the checkout list is not used.
    let set = store
        .collect_artifacts(r, &arts(&["README.md"], &[]), &checkout)
        .expect("collect");
    assert_eq!(files(&set), ["README.md"]);
    // Nothing untracked: a warning, as the runner's `untracked: no files`.
    let everything: Vec<String> = [
        "README.md",
        "src/main.rs",
        "build/out.o",
        "build/out.d",
        "new.txt",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut a = arts(&[], &[]);
    a.untracked = true;
    let set = store
        .collect_artifacts(r, &a, &everything)
        .expect("collect");
    assert!(set.entries.is_empty());
    assert_eq!(set.warnings, ["untracked: no files"]);
    // Caches take untracked files too.
    store
        .save_cache("u", r, &[], Some(&checkout))
        .expect("save");
    let cached = store.load_cache("u").expect("load").expect("some");
    assert_eq!(files(&cached), ["build/out.d", "build/out.o", "new.txt"]);
}

#[test]
fn expiry_deletes_manifests_and_gc_keeps_referenced_blobs() {
    let (_d, store) = store();
    let ws = TempDir::new().expect("tempdir");
    let r = ws.path();
    write(r, "a/only-a", "only in A");
    write(r, "a/shared", "shared by A and C");
    write(r, "b/only-b", "only in B");
    write(r, "c/only-c", "only in C");
    write(r, "c/shared", "shared by A and C");
    write(r, "k/only-cache", "only in the cache");
    write(r, "orphan", "never referenced");
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    let day = Duration::from_secs(86_400);
    let set_a = collect(&store, r, &["a"], &[]);
    let set_b = collect(&store, r, &["b"], &[]);
    let set_c = collect(&store, r, &["c"], &[]);
    collect(&store, r, &["orphan"], &[]); // a blob no manifest names
    store
        .save_artifacts("a", &set_a, expire_at(Some("1 day"), t0, None))
        .expect("save");
    store
        .save_artifacts("b", &set_b, expire_at(Some("1 day"), t0, None))
        .expect("save");
    store
        .save_artifacts("c", &set_c, expire_at(Some("1 week"), t0, None))
        .expect("save");
    store
        .save_cache("k", r, &["k".into()], None)
        .expect("cache");
    assert_eq!(blob_count(&store), 6);
    assert_eq!(
        store.artifacts_expire_at("a").expect("expiry"),
        Some(t0 + day)
    );

    // Nothing has expired yet: only the orphan goes.
    assert_eq!(store.expire(t0, &|_| false).expect("expire"), 0);
    assert_eq!(blob_count(&store), 5);

    // Two days later A and B have expired; B is kept (a deployment may roll back to it).
    let n = store.expire(t0 + 2 * day, &|id| id == "b").expect("expire");
    assert_eq!(n, 1);
    assert_eq!(store.artifact_ids().expect("ids"), ["b", "c"]);
    let err = store.load_artifacts("a").expect_err("gone");
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    assert_eq!(blob_count(&store), 4); // only-a went; shared stays for C
    for (id, set) in [("b", &set_b), ("c", &set_c)] {
        let dest = TempDir::new().expect("tempdir");
        store
            .extract_artifacts(&store.load_artifacts(id).expect("load"), dest.path())
            .expect("extract");
        assert_eq!(dest.path().read_dir().expect("ls").count(), 1, "{set:?}");
    }
    let dest = TempDir::new().expect("tempdir");
    assert_eq!(
        store.restore_cache("k", &[], dest.path()).expect("restore"),
        Some("k".into())
    );

    // A manifest naming collected blobs cannot be saved: its blobs must be stored anew.
    let err = store
        .save_artifacts("n", &set_a, None)
        .expect_err("blob gone");
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    assert!(err.to_string().contains("a/only-a"), "{err}");
    // Artifacts that never expire stay.
    let set_a = collect(&store, r, &["a"], &[]);
    store.save_artifacts("n", &set_a, None).expect("save");
    assert_eq!(blob_count(&store), 5);
    assert_eq!(
        store.expire(t0 + 1000 * day, &|_| false).expect("expire"),
        2
    );
    assert_eq!(store.artifact_ids().expect("ids"), ["n"]);
    assert_eq!(blob_count(&store), 3); // A's two blobs and the cache's
}

#[test]
fn gc_spares_young_blobs() {
    let dir = TempDir::new().expect("tempdir");
    let store = Store::open(dir.path()).expect("open"); // default grace: an hour
    let ws = TempDir::new().expect("tempdir");
    write(ws.path(), "f", "unreferenced for now");
    collect(&store, ws.path(), &["f"], &[]);
    let stats = store.gc().expect("gc");
    assert_eq!(stats.blobs_removed, 0);
    assert_eq!(blob_count(&store), 1);
}

#[test]
fn expire_in_to_expire_at() {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
    let d30 = Some(Duration::from_secs(30 * 86_400));
    assert_eq!(
        expire_at(Some("2 hrs 20 min"), t, d30),
        Some(t + Duration::from_secs(8_400))
    );
    assert_eq!(expire_at(Some("never"), t, d30), None);
    assert_eq!(
        expire_at(None, t, d30),
        Some(t + Duration::from_secs(30 * 86_400))
    );
    assert_eq!(expire_at(None, t, None), None);
}

#[test]
fn artifact_ids_must_be_file_names() {
    let (_d, store) = store();
    for id in ["", "../x", "a/b", ".hidden"] {
        let err = store
            .save_artifacts(id, &ArtifactSet::default(), None)
            .expect_err("refused");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{id}");
    }
}

fn cache(key: CacheKey) -> Cache {
    Cache {
        key,
        paths: vec!["vendor/".into()],
        policy: "pull-push".into(),
        when: "on_success".into(),
        untracked: false,
        unprotect: false,
        fallback_keys: vec![],
    }
}

fn files_key(files: &[&str], prefix: Option<&str>) -> Cache {
    cache(CacheKey::Files {
        files: files.iter().map(|s| s.to_string()).collect(),
        prefix: prefix.map(str::to_string),
    })
}

fn expand(s: &str) -> String {
    s.replace("$CI_COMMIT_REF_SLUG", "main")
        .replace("$CI_JOB_NAME", "rspec")
        .replace("$EMPTY", "")
}

#[test]
fn literal_cache_keys() {
    let ws = TempDir::new().expect("tempdir");
    let k = |s: &str| cache_key(&cache(CacheKey::Literal(s.into())), 0, ws.path(), &expand);
    assert_eq!(k("default"), "default");
    assert_eq!(k("gems-$CI_COMMIT_REF_SLUG"), "gems-main");
}

#[test]
fn files_cache_keys() {
    let ws = TempDir::new().expect("tempdir");
    let r = ws.path();
    let lock = write(r, "Gemfile.lock", "hello\n");
    write(r, "package.json", "");
    write(r, "web/package.json", "hello\n");
    // SHA-1 of the git blob id of "hello\n" (ce013625...).
    let one = "126780f1d4ae55fc826963e2e5d7ba7916e8903f";
    // SHA-1 of "ce01...-e69d..." (the ids of "hello\n" and of the empty file, sorted).
    let two = "b7a9a04358a713b450e89c06fede85439b207aef";
    // SHA-1 of the empty file's id.
    let empty = "6af4929e6772c40297994e4036906cefa4c92d01";
    let k = |c: &Cache, i: usize| cache_key(c, i, r, &expand);

    assert_eq!(
        k(&files_key(&["Gemfile.lock"], Some("$CI_JOB_NAME")), 0),
        format!("rspec-{one}")
    );
    // Without a prefix, the cache's index is the prefix.
    assert_eq!(
        k(&files_key(&["Gemfile.lock"], None), 0),
        format!("0-{one}")
    );
    assert_eq!(
        k(&files_key(&["Gemfile.lock"], None), 2),
        format!("2-{one}")
    );
    // An empty prefix is dropped.
    assert_eq!(k(&files_key(&["Gemfile.lock"], Some("")), 0), one);
    // Order does not matter; duplicate contents count once.
    assert_eq!(
        k(&files_key(&["package.json", "Gemfile.lock"], Some("p")), 0),
        format!("p-{two}")
    );
    assert_eq!(
        k(
            &files_key(&["Gemfile.lock", "web/package.json"], Some("p")),
            0
        ),
        format!("p-{one}")
    );
    // Missing files are ignored; none at all gives `default`.
    assert_eq!(
        k(&files_key(&["Gemfile.lock", "nope"], Some("p")), 0),
        format!("p-{one}")
    );
    assert_eq!(
        k(&files_key(&["nope"], Some("$CI_JOB_NAME")), 0),
        "rspec-default"
    );
    assert_eq!(k(&files_key(&["nope"], None), 1), "1-default");
    // Repository paths only, as on GitLab: `./x` and directories match nothing.
    assert_eq!(
        k(&files_key(&["./Gemfile.lock"], Some("p")), 0),
        "p-default"
    );
    assert_eq!(k(&files_key(&["web"], Some("p")), 0), "p-default");
    // Wildcards: GitLab's `**/x` needs a directory before `x`.
    assert_eq!(
        k(&files_key(&["**/package.json"], Some("p")), 0),
        format!("p-{one}")
    );
    // `*` stays in the top directory: only the (empty) root package.json.
    assert_eq!(
        k(&files_key(&["*.json"], Some("p")), 0),
        format!("p-{empty}")
    );

    // Changing a file changes the key.
    let before = k(&files_key(&["Gemfile.lock"], None), 0);
    fs::write(&lock, "hello, world\n").expect("write");
    let after = k(&files_key(&["Gemfile.lock"], None), 0);
    assert_ne!(before, after);
    assert!(after.starts_with("0-") && after.len() == 42, "{after}");
}

#[test]
fn caches_restore_with_fallback_keys() {
    let (_d, store) = store();
    let ws = TempDir::new().expect("tempdir");
    write(ws.path(), "vendor/gem.rb", "gem");
    let warnings = store
        .save_cache(
            "gems",
            ws.path(),
            &["vendor/".into(), "missing/".into()],
            None,
        )
        .expect("save");
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].starts_with("missing/: no matching files"));

    let dest = TempDir::new().expect("tempdir");
    assert_eq!(
        store
            .restore_cache("gems-feature", &[], dest.path())
            .expect("restore"),
        None
    );
    assert!(!dest.path().join("vendor").exists());
    let hit = store
        .restore_cache("gems-feature", &["nope".into(), "gems".into()], dest.path())
        .expect("restore");
    assert_eq!(hit.as_deref(), Some("gems"));
    assert_eq!(
        fs::read_to_string(dest.path().join("vendor/gem.rb")).expect("read"),
        "gem"
    );

    // Keys are sanitised like the runner's: `a/../gems` is `gems`; keys with `/` work.
    let dest = TempDir::new().expect("tempdir");
    let hit = store
        .restore_cache("a/../gems", &[], dest.path())
        .expect("restore");
    assert_eq!(hit.as_deref(), Some("a/../gems"));
    store
        .save_cache("ref/main", ws.path(), &["vendor".into()], None)
        .expect("save");
    assert!(store.load_cache("ref/main").expect("load").is_some());
    assert!(store.load_cache("ref").expect("load").is_none());
    // A key that sanitises to nothing cannot be saved, and is skipped on restore.
    assert!(store.save_cache("..", ws.path(), &[], None).is_err());
    assert_eq!(
        store
            .restore_cache("..", &["gems".into()], dest.path())
            .expect("restore")
            .as_deref(),
        Some("gems")
    );
}

#[test]
fn concurrent_saves_and_restores_of_one_key_are_atomic() {
    const FILES: usize = 40;
    const ROUNDS: usize = 15;
    let (_d, store) = store();
    let store = Arc::new(store);
    let mut threads = Vec::new();
    for w in 0..3 {
        let store = Arc::clone(&store);
        threads.push(std::thread::spawn(move || {
            let ws = TempDir::new().expect("tempdir");
            for round in 0..ROUNDS {
                let version = format!("writer {w} round {round}");
                for i in 0..FILES {
                    write(
                        ws.path(),
                        &format!("vendor/{i:02}.txt"),
                        &format!("{version} file {i}"),
                    );
                }
                store
                    .save_cache("shared", ws.path(), &["vendor".into()], None)
                    .expect("save");
            }
            0usize
        }));
    }
    for _ in 0..3 {
        let store = Arc::clone(&store);
        threads.push(std::thread::spawn(move || {
            let mut seen = 0;
            for _ in 0..ROUNDS * 2 {
                let dest = TempDir::new().expect("tempdir");
                match store
                    .restore_cache("shared", &[], dest.path())
                    .expect("restore")
                {
                    None => continue,
                    Some(_) => seen += 1,
                }
                let mut version: Option<String> = None;
                for i in 0..FILES {
                    let text = fs::read_to_string(dest.path().join(format!("vendor/{i:02}.txt")))
                        .expect("every file of the cache is there");
                    let (v, n) = text.rsplit_once(" file ").expect("format");
                    assert_eq!(n, i.to_string());
                    match &version {
                        None => version = Some(v.to_string()),
                        Some(first) => assert_eq!(first, v, "a restore mixed two saves"),
                    }
                }
                assert_eq!(
                    dest.path().join("vendor").read_dir().expect("ls").count(),
                    FILES
                );
            }
            seen
        }));
    }
    let seen: usize = threads.into_iter().map(|t| t.join().expect("thread")).sum();
    assert!(seen > 0, "no restore saw a cache");
    // All 3 × 15 versions stored, 40 files each.
    assert_eq!(blob_count(&store), 3 * ROUNDS * FILES);
}

#[test]
fn concurrent_writers_of_the_same_blob() {
    let (_d, store) = store();
    let store = Arc::new(store);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let ws = TempDir::new().expect("tempdir");
                for i in 0..50 {
                    write(ws.path(), &format!("f{i}"), &format!("content {i}"));
                }
                let set = store
                    .collect_artifacts(ws.path(), &arts(&["."], &[]), &[])
                    .expect("collect");
                let dest = TempDir::new().expect("tempdir");
                store.extract_artifacts(&set, dest.path()).expect("extract");
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    assert_eq!(blob_count(&store), 50);
    let tmp_left = walk_names(&store.root().join("objects"))
        .into_iter()
        .filter(|n| n.starts_with(".tmp-"))
        .count();
    assert_eq!(tmp_left, 0);
}

fn walk_names(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).expect("ls").flatten() {
        if e.path().is_dir() {
            out.extend(walk_names(&e.path()));
        } else {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out
}
