//! Times workspace preparation on a source tree (`bench/workspace-prepare.sh` makes one of
//! 5,000 files): the first job in a new workspace (everything copied), the next jobs of a
//! run (only what the previous job touched is fixed, from inotify), the first job of a
//! later run (every file compared by size, mtime and mode), and, for reference, a plain
//! copy of every file as a naive runner would make per job.
//!
//! `cargo run --release -p slipway-runner --example workspace_bench SOURCE_DIR [ROUNDS]`

use slipway_runner::workspace::{Source, Workspace};
use std::path::Path;
use std::time::Instant;

fn files_of(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                if e.file_name() != ".git" {
                    walk(root, &p, out);
                }
            } else if let Ok(rel) = p.strip_prefix(root) {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(src) = args.next() else {
        eprintln!("usage: workspace_bench SOURCE_DIR [ROUNDS]");
        std::process::exit(2);
    };
    let rounds: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let src = Path::new(&src);
    let files = files_of(src);
    let source = Source::new(src, files.clone());
    let scratch = tempfile::tempdir()?;
    let (mut first, mut untouched, mut touched, mut later, mut naive) =
        (vec![], vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        let dir = scratch.path().join(format!("ws{round}"));
        let mut ws = Workspace::new(&dir);
        let t = Instant::now();
        let s = ws.prepare(&source, None)?;
        first.push(ms(t));
        assert_eq!(s.copied, files.len());

        let t = Instant::now();
        let s = ws.prepare(&source, None)?;
        untouched.push(ms(t));
        assert_eq!((s.copied, s.removed), (0, 0));

        // What a job typically does: edit a few files, write build output.
        for f in files.iter().take(10) {
            std::fs::write(dir.join(f), "edited by the job")?;
        }
        std::fs::create_dir_all(dir.join("target/out"))?;
        for i in 0..100 {
            std::fs::write(dir.join(format!("target/out/o{i}.o")), "object")?;
        }
        let t = Instant::now();
        let s = ws.prepare(&source, None)?;
        touched.push(ms(t));
        assert_eq!((s.copied, s.removed), (10, 1), "{s:?}");

        // A later run: nothing is known about the workspace, every file is compared.
        let mut again = Workspace::new(&dir);
        let t = Instant::now();
        again.prepare(&source, None)?;
        later.push(ms(t));

        let copy = scratch.path().join(format!("copy{round}"));
        let t = Instant::now();
        for f in &files {
            let to = copy.join(f);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::copy(src.join(f), to)?;
        }
        naive.push(ms(t));
        std::fs::remove_dir_all(&copy)?;
        std::fs::remove_dir_all(&dir)?;
    }
    println!(
        "workspace of {} files, median of {rounds} rounds:",
        files.len()
    );
    println!(
        "  first job, new workspace (copy everything): {:8.2} ms",
        median(first)
    );
    println!(
        "  next job, nothing touched:                  {:8.2} ms",
        median(untouched)
    );
    println!(
        "  next job after 10 edits + 100 new files:    {:8.2} ms",
        median(touched)
    );
    println!(
        "  first job of a later run (compare all):     {:8.2} ms",
        median(later)
    );
    println!(
        "  naive full copy, for reference:             {:8.2} ms",
        median(naive)
    );
    Ok(())
}
