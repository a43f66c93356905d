//! The JSON report of a pipeline run (`slipway run --report FILE`): the pipeline's
//! status and, for each job, its name, stage, status, `allow_failure`, exit code,
//! duration and log lines. The log lines are streamed from the job's log file (already
//! masked), so a report of a job that printed gigabytes takes no more memory than one
//! line. The file is written to a temporary name and renamed into place: a reader sees
//! the previous report or the new one whole.

use crate::pipeline::{JobResult, RunResult};
use serde::Serialize;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::Path;

#[derive(Serialize)]
struct JobHeader<'a> {
    name: &'a str,
    stage: &'a str,
    status: &'a str,
    allow_failure: bool,
    exit_code: Option<i32>,
    duration_ms: u64,
    attempts: u32,
    failure_reason: Option<&'a str>,
    artifacts: Option<&'a str>,
    executor: &'a str,
}

/// Write the report of `result` to `path`, atomically.
pub fn write(path: &Path, result: &RunResult) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "report.json".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| {
        let file = File::create(&tmp)?;
        let mut out = BufWriter::with_capacity(256 * 1024, file);
        write_to(&mut out, result)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    })();
    match written.and_then(|()| std::fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(io::Error::new(
                e.kind(),
                format!("cannot write the report {}: {e}", path.display()),
            ))
        }
    }
}

/// A line longer than this is reported in pieces of this size, so memory stays bounded
/// whatever a job prints.
const MAX_REPORT_LINE: usize = 1 << 20;

/// The next line without its newline; `None` at the end.
fn next_line(reader: &mut impl BufRead) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok((!line.is_empty()).then_some(line));
        }
        let room = MAX_REPORT_LINE - line.len();
        match buf.iter().take(room).position(|b| *b == b'\n') {
            Some(pos) => {
                line.extend_from_slice(&buf[..pos]);
                reader.consume(pos + 1);
                return Ok(Some(line));
            }
            None => {
                let n = buf.len().min(room);
                line.extend_from_slice(&buf[..n]);
                reader.consume(n);
                if line.len() >= MAX_REPORT_LINE {
                    return Ok(Some(line));
                }
            }
        }
    }
}

fn json<T: Serialize + ?Sized>(out: &mut impl Write, value: &T) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value).map_err(io::Error::other)
}

fn write_to(out: &mut impl Write, result: &RunResult) -> io::Result<()> {
    out.write_all(b"{\"status\":")?;
    json(out, result.status.as_str())?;
    write!(out, ",\"duration_ms\":{},\"jobs\":[", result.duration_ms)?;
    for (i, job) in result.jobs.iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        write_job(out, job)?;
    }
    out.write_all(b"]}\n")
}

fn write_job(out: &mut impl Write, job: &JobResult) -> io::Result<()> {
    let header = JobHeader {
        name: &job.name,
        stage: &job.stage,
        status: job.status.as_str(),
        allow_failure: job.allow_failure,
        exit_code: job.exit_code,
        duration_ms: job.duration_ms,
        attempts: job.attempts,
        failure_reason: job.failure_reason.as_deref(),
        artifacts: job.artifacts.as_deref(),
        executor: if job.container { "docker" } else { "shell" },
    };
    let mut head = serde_json::to_vec(&header).map_err(io::Error::other)?;
    // Reopen the object to append the log.
    head.pop();
    out.write_all(&head)?;
    out.write_all(b",\"log\":[")?;
    if let Some(path) = &job.log_path {
        if let Ok(file) = File::open(path) {
            let mut reader = BufReader::with_capacity(256 * 1024, file);
            let mut first = true;
            while let Some(line) = next_line(&mut reader)? {
                if !first {
                    out.write_all(b",")?;
                }
                first = false;
                json(out, &String::from_utf8_lossy(&line))?;
            }
        }
    }
    out.write_all(b"]}")
}
