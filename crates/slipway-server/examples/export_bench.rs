//! Exports one commit of a mirror into fresh directories, timing `Mirror::export` and,
//! side by side in the same run, `git archive | tar -x` (the usual alternative).
//!
//! usage: export_bench MIRROR COMMIT ITERATIONS

use slipway_server::git::Mirror;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mirror), Some(commit)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: export_bench MIRROR COMMIT ITERATIONS");
        std::process::exit(2);
    };
    let iterations: usize = args
        .get(3)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
        .max(1);
    let m = match Mirror::open(Path::new(mirror)) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let Ok(scratch) = tempfile::tempdir() else {
        eprintln!("no temporary directory");
        std::process::exit(1);
    };
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let mut files = 0;
    for i in 0..iterations {
        let dest = scratch.path().join(format!("slipway-{i}"));
        let t = Instant::now();
        match m.export(commit, &dest) {
            Ok(s) => files = s.files,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
        ours.push(t.elapsed().as_secs_f64() * 1000.0);

        let dest = scratch.path().join(format!("archive-{i}"));
        let _ = std::fs::create_dir_all(&dest);
        let t = Instant::now();
        let status = Command::new("sh")
            .arg("-c")
            .arg("git --git-dir=\"$1\" archive \"$2\" | tar -x -C \"$3\"")
            .args(["sh", mirror, commit])
            .arg(&dest)
            .status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("git archive | tar failed");
            std::process::exit(1);
        }
        theirs.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (a, b) = (median(ours), median(theirs));
    println!(
        "{files} files, {iterations} runs: Mirror::export median {a:.0} ms, git archive | tar median {b:.0} ms, ratio {:.2}",
        a / b
    );
}
