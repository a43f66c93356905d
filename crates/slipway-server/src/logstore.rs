//! The log hub's view of the database: job logs read from any offset, and whether a log
//! is complete (its job finished and every byte was read).

use crate::loghub::{BoxFuture, JobId, LogStore, LogStoreError, StoredLog};
use slipway_db::Store;

pub struct DbLogStore {
    store: Store,
}

impl DbLogStore {
    pub fn new(store: Store) -> DbLogStore {
        DbLogStore { store }
    }
}

impl LogStore for DbLogStore {
    fn read_from(
        &self,
        job: JobId,
        offset: u64,
        max: usize,
    ) -> BoxFuture<'_, Result<StoredLog, LogStoreError>> {
        Box::pin(async move {
            let id = slipway_db::JobId(i64::try_from(job).unwrap_or(i64::MAX));
            let offset = i64::try_from(offset).unwrap_or(i64::MAX);
            let slice = self
                .store
                .read_log(id, offset, max)
                .await
                .map_err(|e| LogStoreError(e.to_string()))?;
            let at_end = slice.next_offset() >= slice.total_size;
            // A log is complete once its job has finished: the worker stores the last
            // bytes before it records the outcome.
            let complete = at_end
                && self
                    .store
                    .job(id)
                    .await
                    .map_err(|e| LogStoreError(e.to_string()))?
                    .status
                    .is_finished()
                && {
                    // The size may have grown between the two reads.
                    let size = self
                        .store
                        .log_size(id)
                        .await
                        .map_err(|e| LogStoreError(e.to_string()))?;
                    slice.next_offset() >= size
                };
            Ok(StoredLog {
                data: slice.data,
                complete,
            })
        })
    }
}
