//! Real git repositories in temporary directories for the server's tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A repository made with the `git` command, with a fixed identity and dates.
pub struct TestRepo {
    pub path: PathBuf,
    pub bare: bool,
}

pub fn git_in(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Ada Lovelace")
        .env("GIT_AUTHOR_EMAIL", "ada@example.com")
        .env("GIT_COMMITTER_NAME", "Ada Lovelace")
        .env("GIT_COMMITTER_EMAIL", "ada@example.com")
        .env("GIT_AUTHOR_DATE", "2024-05-01T10:00:00+02:00")
        .env("GIT_COMMITTER_DATE", "2024-05-01T10:00:00+02:00")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

impl TestRepo {
    /// A repository with a working tree on branch `main`.
    pub fn init(path: &Path) -> TestRepo {
        std::fs::create_dir_all(path).expect("mkdir");
        git_in(path, &["init", "--quiet", "--initial-branch=main"]);
        git_in(path, &["config", "commit.gpgsign", "false"]);
        git_in(path, &["config", "tag.gpgsign", "false"]);
        TestRepo {
            path: path.to_path_buf(),
            bare: false,
        }
    }

    /// A bare repository with `main` as its HEAD.
    pub fn init_bare(path: &Path) -> TestRepo {
        std::fs::create_dir_all(path).expect("mkdir");
        git_in(
            path,
            &["init", "--quiet", "--bare", "--initial-branch=main"],
        );
        TestRepo {
            path: path.to_path_buf(),
            bare: true,
        }
    }

    pub fn git(&self, args: &[&str]) -> String {
        git_in(&self.path, args)
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.path.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }

    /// Writes the files, commits everything, returns the new commit.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        for (rel, text) in files {
            self.write(rel, text);
        }
        // Only the given files, so a test can keep untracked files around; with none,
        // everything in the working tree.
        if files.is_empty() {
            self.git(&["add", "-A"]);
        } else {
            let mut args = vec!["add", "--"];
            args.extend(files.iter().map(|(rel, _)| *rel));
            self.git(&args);
        }
        self.git(&["commit", "--quiet", "--allow-empty", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }

    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
    }
}
