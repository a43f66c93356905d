//! Job logs, stored in the database as appended chunks.
//!
//! [`Store::append_log`] returns only after the bytes are committed (fsynced on SQLite
//! with `synchronous=FULL`), so an acknowledged line survives `kill -9`. Appends from
//! all jobs go through one writer task that commits whatever has queued up in a single
//! transaction (group commit): fifty jobs logging at once cost one fsync per batch, not
//! one per line. Reads take any offset, for live tails and resumed downloads; there is
//! no size limit (chunks are at most 1 MiB each, and a job's log is their sequence).

use crate::error::{Error, Result};
use crate::events::Event;
use crate::row::RowExt;
use crate::store::{Core, Store};
use crate::types::JobId;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// The largest chunk row; bigger appends are split.
pub const MAX_CHUNK: usize = 1 << 20;
/// A batch is committed once it holds this much (or the queue is empty).
const MAX_BATCH_BYTES: usize = 16 << 20;

/// A piece of a job's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSlice {
    /// Where `data` starts in the log.
    pub offset: i64,
    pub data: Vec<u8>,
    /// The log's size when read.
    pub total_size: i64,
}

impl LogSlice {
    /// Where the next read should start.
    pub fn next_offset(&self) -> i64 {
        self.offset + self.data.len() as i64
    }
}

struct Append {
    job: JobId,
    data: Vec<u8>,
    done: oneshot::Sender<Result<i64>>,
}

/// The group-committing writer's queue.
pub(crate) struct LogWriter {
    tx: mpsc::Sender<Append>,
}

impl LogWriter {
    pub(crate) fn spawn(core: Arc<Core>) -> LogWriter {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(run_writer(core, rx));
        LogWriter { tx }
    }
}

async fn run_writer(core: Arc<Core>, mut rx: mpsc::Receiver<Append>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let mut bytes = batch[0].data.len();
        while bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(a) => {
                    bytes += a.data.len();
                    batch.push(a);
                }
                Err(_) => break,
            }
        }
        match write_batch(&core, &batch).await {
            Ok(sizes) => {
                for (a, size) in batch.into_iter().zip(sizes) {
                    let _ = a.done.send(size);
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for a in batch {
                    let _ = a
                        .done
                        .send(Err(Error::Task(format!("log append failed: {msg}"))));
                }
            }
        }
    }
}

/// Writes a batch in one transaction; per append, the new log size or "no such job".
async fn write_batch(core: &Arc<Core>, batch: &[Append]) -> Result<Vec<Result<i64>>> {
    let mut tx = Core::write(core).await?;
    let mut out = Vec::with_capacity(batch.len());
    for a in batch {
        let len = a.data.len() as i64;
        let r = sqlx::query(
            "UPDATE jobs SET log_size = log_size + $1 WHERE id = $2 RETURNING log_size",
        )
        .bind(len)
        .bind(a.job.0)
        .fetch_optional(tx.conn())
        .await?;
        let Some(r) = r else {
            out.push(Err(Error::not_found("job", a.job)));
            continue;
        };
        let end = r.i64("log_size")?;
        let mut start = end - len;
        for chunk in a.data.chunks(MAX_CHUNK) {
            sqlx::query("INSERT INTO job_log_chunks (job_id, start_offset, end_offset, data) VALUES ($1, $2, $3, $4)")
                .bind(a.job.0)
                .bind(start)
                .bind(start + chunk.len() as i64)
                .bind(chunk.to_vec())
                .execute(tx.conn())
                .await?;
            start += chunk.len() as i64;
        }
        tx.emit(Event::LogAppended {
            job: a.job,
            size: end,
        });
        out.push(Ok(end));
    }
    tx.commit().await?;
    Ok(out)
}

impl Store {
    /// Appends `data` to the job's log; returns the log's new size once committed.
    pub async fn append_log(&self, job: JobId, data: &[u8]) -> Result<i64> {
        if data.is_empty() {
            return self.log_size(job).await;
        }
        let (done, rx) = oneshot::channel();
        self.inner
            .logs
            .tx
            .send(Append {
                job,
                data: data.to_vec(),
                done,
            })
            .await
            .map_err(|_| Error::Task("the log writer stopped".into()))?;
        rx.await
            .map_err(|_| Error::Task("the log writer stopped".into()))?
    }

    /// Up to `max` bytes of the log from `offset` (a slice shorter than `max` may come
    /// back at chunk boundaries only when the log ends there).
    pub async fn read_log(&self, job: JobId, offset: i64, max: usize) -> Result<LogSlice> {
        if offset < 0 {
            return Err(Error::invalid("offset", "must not be negative"));
        }
        let total_size = self.log_size(job).await?;
        let mut data = Vec::new();
        let mut pos = offset;
        while data.len() < max && pos < total_size {
            let rows = sqlx::query(
                "SELECT start_offset, data FROM job_log_chunks WHERE job_id = $1 AND end_offset > $2 \
                 ORDER BY start_offset LIMIT 16",
            )
            .bind(job.0)
            .bind(pos)
            .fetch_all(self.pool())
            .await?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                let start = r.i64("start_offset")?;
                let chunk = r.blob("data")?;
                if start > pos {
                    return Err(Error::Corrupt(format!(
                        "log of job {job} has a hole at byte {pos}"
                    )));
                }
                let from = (pos - start) as usize;
                let take = (chunk.len() - from).min(max - data.len());
                data.extend_from_slice(&chunk[from..from + take]);
                pos += take as i64;
                if data.len() >= max {
                    break;
                }
            }
        }
        Ok(LogSlice {
            offset,
            data,
            total_size,
        })
    }

    /// The whole log (for downloads of finished jobs; live views use [`Store::read_log`]).
    pub async fn read_full_log(&self, job: JobId) -> Result<Vec<u8>> {
        let size = self.log_size(job).await?;
        Ok(self.read_log(job, 0, size.max(0) as usize).await?.data)
    }

    pub async fn log_size(&self, job: JobId) -> Result<i64> {
        let r = sqlx::query("SELECT log_size FROM jobs WHERE id = $1")
            .bind(job.0)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| Error::not_found("job", job))?;
        r.i64("log_size")
    }
}
