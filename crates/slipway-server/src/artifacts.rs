//! Artifacts for download: a job's artifact set from the content-addressed store, packed
//! as a tar archive in a temporary file (unlinked once open, so nothing is left behind).

use slipway_runner::store::{EntryKind, Store};
use std::io::{self, BufWriter, Seek, Write};
use std::path::Path;

/// A readable tar archive of artifacts `id`, positioned at its start.
pub fn tar_of(store: &Store, id: &str, tmp: &Path) -> io::Result<std::fs::File> {
    let set = store.load_artifacts(id)?;
    std::fs::create_dir_all(tmp)?;
    let token = crate::hook::new_token()?;
    let dir = tmp.join(format!("extract-{}", &token[..16]));
    let path = tmp.join(format!("archive-{}.tar", &token[..16]));
    let result = (|| {
        store.extract_artifacts(&set, &dir)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let mut w = BufWriter::new(file);
        for e in &set.entries {
            match &e.kind {
                EntryKind::File { mode, mtime_ns, .. } => {
                    let data = std::fs::read(dir.join(&e.path))?;
                    let mtime = mtime_ns.map(|n| n / 1_000_000_000).unwrap_or(0);
                    crate::tar::append(
                        &mut w,
                        &e.path,
                        mtime,
                        crate::tar::Member::File {
                            mode: *mode,
                            data: &data,
                        },
                    )?;
                }
                EntryKind::Dir { mode } => {
                    crate::tar::append(&mut w, &e.path, 0, crate::tar::Member::Dir { mode: *mode })?
                }
                EntryKind::Symlink { target } => {
                    crate::tar::append(&mut w, &e.path, 0, crate::tar::Member::Symlink { target })?
                }
            }
        }
        crate::tar::finish(&mut w)?;
        let mut file = w.into_inner().map_err(|e| e.into_error())?;
        file.flush()?;
        file.rewind()?;
        Ok(file)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&path);
    result
}
