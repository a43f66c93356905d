//! Times the artifact store on 5,000 small files: collect (new blobs), collect again
//! (every blob already stored), save the manifest, extract into an empty directory and
//! over an existing copy, and a cache save and restore. The time to create the files
//! with plain writes is printed first, as the baseline: on a busy disk, file creation
//! dominates everything else.
//!
//! `cargo run --release -p slipway-runner --example store_bench [FILES]`

use slipway_core::model::Artifacts;
use slipway_runner::store::Store;
use std::time::{Duration, Instant};

fn main() -> std::io::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5_000);
    let tmp = tempfile::tempdir()?;
    let ws = tmp.path().join("ws");
    let mut bytes = 0;
    let t = Instant::now();
    for i in 0..n {
        let dir = ws.join(format!("out/d{:02}", i % 50));
        std::fs::create_dir_all(&dir)?;
        // 100 to ~2,000 bytes of text, distinct per file.
        let body = format!("file {i}\n").repeat(10 + i % 200);
        bytes += body.len();
        std::fs::write(dir.join(format!("f{i}.txt")), body)?;
    }
    // Baseline: what this machine takes to create the files at all.
    let create = t.elapsed();
    let store = Store::open(tmp.path().join("data"))?;
    let artifacts = Artifacts {
        paths: vec!["out/".into()],
        ..Artifacts::default()
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;

    let t = Instant::now();
    let set = store.collect_artifacts(&ws, &artifacts, &[])?;
    let collect_new = t.elapsed();
    let t = Instant::now();
    let again = store.collect_artifacts(&ws, &artifacts, &[])?;
    let collect_dedup = t.elapsed();
    assert_eq!(set.entries, again.entries);
    let t = Instant::now();
    store.save_artifacts("bench", &set, None)?;
    let save = t.elapsed();
    let dest = tmp.path().join("dest");
    let t = Instant::now();
    store.extract_artifacts(&set, &dest)?;
    let extract = t.elapsed();
    let t = Instant::now();
    store.extract_artifacts(&set, &dest)?;
    let overwrite = t.elapsed();
    let t = Instant::now();
    store.save_cache("bench", &ws, &["out".into()], None)?;
    let cache_save = t.elapsed();
    let t = Instant::now();
    store.restore_cache("bench", &[], &tmp.path().join("restored"))?;
    let cache_restore = t.elapsed();
    let (blobs, stored) = store.blob_stats()?;

    println!(
        "{n} files, {:.1} MiB; {blobs} blobs, {:.1} MiB stored",
        bytes as f64 / 1048576.0,
        stored as f64 / 1048576.0
    );
    println!("baseline: create files   {:8.1} ms", ms(create));
    println!("collect (new blobs)      {:8.1} ms", ms(collect_new));
    println!("collect (all stored)     {:8.1} ms", ms(collect_dedup));
    println!("save manifest            {:8.1} ms", ms(save));
    println!("extract (empty dir)      {:8.1} ms", ms(extract));
    println!("extract (overwrite)      {:8.1} ms", ms(overwrite));
    println!("cache save (all stored)  {:8.1} ms", ms(cache_save));
    println!("cache restore            {:8.1} ms", ms(cache_restore));
    Ok(())
}
