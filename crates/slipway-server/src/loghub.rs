//! The live log hub: every running job's log, tailed by any number of subscribers (the job
//! page's server-sent events, `slipway logs -f`), each starting from any byte offset.
//!
//! A job's log is a byte stream at offsets. The writer stores each piece first (the store
//! is the truth, and what is acknowledged must survive `kill -9`), then hands it to its
//! [`LogPublisher`], which broadcasts it. A [`LogSubscription`] subscribes to the broadcast
//! *before* reading the store from its offset, and keeps a single cursor: live pieces it
//! already has are dropped, a live piece beyond its cursor sends it back to the store for
//! what lies between. So a subscriber that joins late gets what it missed from storage,
//! then the live stream, with no gap and no duplicate, whatever the timing.
//!
//! Memory is bounded per job, not per subscriber: the broadcast keeps at most
//! [`HubConfig::buffer_chunks`] pieces of at most [`HubConfig::max_chunk`] bytes. A
//! subscriber that falls that far behind (a slow browser) is told it lagged and reads the
//! store instead until it is near the live end again.
//!
//! The store is reached through the small [`LogStore`] trait, which the database layer
//! implements; [`MemoryLogStore`] is the in-memory one used by tests.
//!
//! [`LogHub::set_latency_observer`] reports, for every piece a subscriber receives live,
//! the time since it was published: the log-line latency benchmark hangs off it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// A job's id as the store knows it.
pub type JobId = u64;

/// A boxed future, so [`LogStore`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A piece of a job's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    /// The byte offset of `data[0]` in the job's log.
    pub offset: u64,
    pub data: Arc<[u8]>,
    /// When the piece was published, for pieces received live; `None` for pieces read
    /// from the store.
    pub published_at: Option<Instant>,
}

impl LogChunk {
    /// The offset just past this piece.
    pub fn end(&self) -> u64 {
        self.offset + self.data.len() as u64
    }
}

/// What the store holds from an offset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredLog {
    /// Up to the requested number of bytes from the requested offset (fewer, or none, when
    /// that is all there is for now).
    pub data: Vec<u8>,
    /// The job's log is finished and `data` reaches its end: nothing will follow.
    pub complete: bool,
}

/// The store could not be read. The message is for the log; it must not contain secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogStoreError(pub String);

impl std::fmt::Display for LogStoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot read the job log: {}", self.0)
    }
}

impl std::error::Error for LogStoreError {}

/// Reading a job's stored log from an offset: the one thing the hub needs from the
/// database.
pub trait LogStore: Send + Sync + 'static {
    /// At most `max` bytes of `job`'s log from `offset`, and whether the log is complete
    /// after them. A job with no log yet (not started) is empty and not complete; an
    /// unknown job is an error.
    fn read_from(
        &self,
        job: JobId,
        offset: u64,
        max: usize,
    ) -> BoxFuture<'_, Result<StoredLog, LogStoreError>>;
}

/// Sizes and timings of the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubConfig {
    /// Pieces the broadcast of one job keeps for subscribers that are behind.
    pub buffer_chunks: usize,
    /// The largest piece broadcast; larger writes are split.
    pub max_chunk: usize,
    /// The most bytes read from the store at once.
    pub read_batch: usize,
    /// How often a subscriber checks the store while no publisher is live for its job (not
    /// started yet, running on another server, or the publisher went away).
    pub poll_interval: Duration,
}

impl Default for HubConfig {
    fn default() -> HubConfig {
        HubConfig {
            buffer_chunks: 128,
            max_chunk: 16 * 1024,
            read_batch: 256 * 1024,
            poll_interval: Duration::from_millis(500),
        }
    }
}

/// Counters for `/metrics` and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Pieces broadcast.
    pub published: u64,
    /// Pieces received live by subscribers (counted per subscriber).
    pub delivered_live: u64,
    /// Reads from the store.
    pub store_reads: u64,
    /// Times a subscriber fell behind the broadcast and went back to the store.
    pub lagged: u64,
}

#[derive(Debug, Clone)]
enum Event {
    Chunk(LogChunk),
    /// The publisher finished; the log is `total` bytes long.
    End {
        total: u64,
    },
}

type LatencyObserver = Arc<dyn Fn(JobId, Duration) + Send + Sync>;

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    delivered_live: AtomicU64,
    store_reads: AtomicU64,
    lagged: AtomicU64,
}

/// The hub: one broadcast per job with a live publisher.
pub struct LogHub {
    store: Arc<dyn LogStore>,
    config: HubConfig,
    live: Mutex<HashMap<JobId, (u64, broadcast::Sender<Event>)>>,
    observer: Mutex<Option<LatencyObserver>>,
    counters: Counters,
    next_publisher: AtomicU64,
    /// Wakes subscribers waiting for a job's publisher to appear.
    started: tokio::sync::Notify,
}

impl LogHub {
    pub fn new(store: Arc<dyn LogStore>, config: HubConfig) -> Arc<LogHub> {
        Arc::new(LogHub {
            store,
            config,
            live: Mutex::new(HashMap::new()),
            observer: Mutex::new(None),
            counters: Counters::default(),
            next_publisher: AtomicU64::new(1),
            started: tokio::sync::Notify::new(),
        })
    }

    /// Calls `f(job, latency)` for every piece a subscriber receives live, with the time
    /// since it was published.
    pub fn set_latency_observer(&self, f: impl Fn(JobId, Duration) + Send + Sync + 'static) {
        *self.observer.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(f));
    }

    pub fn stats(&self) -> HubStats {
        HubStats {
            published: self.counters.published.load(Ordering::Relaxed),
            delivered_live: self.counters.delivered_live.load(Ordering::Relaxed),
            store_reads: self.counters.store_reads.load(Ordering::Relaxed),
            lagged: self.counters.lagged.load(Ordering::Relaxed),
        }
    }

    /// Jobs with a live publisher.
    pub fn live_jobs(&self) -> usize {
        self.lock_live().len()
    }

    fn lock_live(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<JobId, (u64, broadcast::Sender<Event>)>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The publisher of `job`'s log, whose next byte is at `offset` (0 for a new job; the
    /// stored length when a job is re-attached after a restart). A second publisher for
    /// the same job replaces the first, whose subscribers move to the new one via the
    /// store.
    pub fn publisher(self: &Arc<Self>, job: JobId, offset: u64) -> LogPublisher {
        let (tx, _) = broadcast::channel(self.config.buffer_chunks.max(1));
        let id = self.next_publisher.fetch_add(1, Ordering::Relaxed);
        self.lock_live().insert(job, (id, tx.clone()));
        self.started.notify_waiters();
        LogPublisher {
            hub: Arc::clone(self),
            job,
            id,
            tx,
            offset,
            finished: false,
        }
    }

    /// Follows `job`'s log from byte `from`: what is stored, then what is published, until
    /// the log is complete.
    pub fn subscribe(self: &Arc<Self>, job: JobId, from: u64) -> LogSubscription {
        let rx = self.receiver(job);
        LogSubscription {
            hub: Arc::clone(self),
            job,
            offset: from,
            rx,
            catch_up: true,
            ended_at: None,
            done: false,
        }
    }

    fn receiver(&self, job: JobId) -> Option<broadcast::Receiver<Event>> {
        self.lock_live().get(&job).map(|(_, tx)| tx.subscribe())
    }
}

/// Broadcasts one job's log. Publish only what is already stored, in order.
pub struct LogPublisher {
    hub: Arc<LogHub>,
    job: JobId,
    id: u64,
    tx: broadcast::Sender<Event>,
    offset: u64,
    finished: bool,
}

impl LogPublisher {
    /// The offset the next byte will have.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Broadcasts `data`, which the caller has stored at [`offset`](Self::offset)
    /// already. Returns the new offset. Never blocks: subscribers that are behind lose
    /// the oldest pieces and read them from the store.
    pub fn publish(&mut self, data: &[u8]) -> u64 {
        let now = Instant::now();
        for piece in data.chunks(self.hub.config.max_chunk.max(1)) {
            let chunk = LogChunk {
                offset: self.offset,
                data: Arc::from(piece),
                published_at: Some(now),
            };
            self.offset = chunk.end();
            // No receiver is fine: nobody is watching.
            let _ = self.tx.send(Event::Chunk(chunk));
            self.hub.counters.published.fetch_add(1, Ordering::Relaxed);
        }
        self.offset
    }

    /// The log is complete (and stored as such): subscribers end once they have
    /// everything.
    pub fn finish(mut self) {
        let _ = self.tx.send(Event::End { total: self.offset });
        self.finished = true;
        self.unregister();
    }

    fn unregister(&self) {
        let mut live = self.hub.lock_live();
        if live.get(&self.job).is_some_and(|(id, _)| *id == self.id) {
            live.remove(&self.job);
        }
    }
}

impl Drop for LogPublisher {
    /// A publisher dropped without [`finish`](Self::finish) (the job's runner went away):
    /// subscribers fall back to polling the store, which tells them when the log is
    /// complete.
    fn drop(&mut self) {
        if !self.finished {
            self.unregister();
        }
    }
}

/// One subscriber's view of a job's log: pieces in order from its start offset.
pub struct LogSubscription {
    hub: Arc<LogHub>,
    job: JobId,
    offset: u64,
    rx: Option<broadcast::Receiver<Event>>,
    /// The store may hold bytes past `offset` that the broadcast will not bring.
    catch_up: bool,
    /// The publisher finished at this length.
    ended_at: Option<u64>,
    done: bool,
}

impl LogSubscription {
    /// The offset of the next byte this subscriber will receive (for an SSE `id:` so a
    /// reconnecting browser resumes there).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn job(&self) -> JobId {
        self.job
    }

    /// The next piece, or `None` once the log is complete and everything was delivered.
    /// Cancel-safe: dropping the future loses nothing (the cursor only moves when a piece
    /// is returned).
    pub async fn next(&mut self) -> Option<Result<LogChunk, LogStoreError>> {
        loop {
            if self.done {
                return None;
            }
            if self.rx.is_none() && self.ended_at.is_none() {
                self.rx = self.hub.receiver(self.job);
            }
            if self.catch_up {
                self.hub
                    .counters
                    .store_reads
                    .fetch_add(1, Ordering::Relaxed);
                let read = self
                    .hub
                    .store
                    .read_from(self.job, self.offset, self.hub.config.read_batch.max(1))
                    .await;
                let stored = match read {
                    Ok(s) => s,
                    Err(e) => return Some(Err(e)),
                };
                if !stored.data.is_empty() {
                    let chunk = LogChunk {
                        offset: self.offset,
                        data: Arc::from(stored.data),
                        published_at: None,
                    };
                    self.offset = chunk.end();
                    if stored.complete {
                        self.done = true;
                    }
                    return Some(Ok(chunk));
                }
                if stored.complete || self.ended_at.is_some_and(|end| self.offset >= end) {
                    self.done = true;
                    return None;
                }
                if self.rx.is_none() {
                    // Nobody publishes this job here: look again when a publisher starts
                    // or after the poll interval (the job may run on another server).
                    let started = self.hub.started.notified();
                    tokio::pin!(started);
                    started.as_mut().enable();
                    if self.ended_at.is_some() || self.hub.receiver(self.job).is_none() {
                        tokio::select! {
                            _ = tokio::time::sleep(self.hub.config.poll_interval) => {}
                            _ = started => {}
                        }
                    }
                    continue;
                }
                self.catch_up = false;
            }
            let Some(rx) = self.rx.as_mut() else {
                self.catch_up = true;
                continue;
            };
            match rx.recv().await {
                Ok(Event::Chunk(c)) => {
                    if c.end() <= self.offset {
                        continue;
                    }
                    if c.offset > self.offset {
                        // Pieces between were published before we listened or were lost
                        // to lag: they are in the store.
                        self.catch_up = true;
                        continue;
                    }
                    let skip = (self.offset - c.offset) as usize;
                    let data: Arc<[u8]> = if skip == 0 {
                        c.data
                    } else {
                        Arc::from(&c.data[skip..])
                    };
                    let chunk = LogChunk {
                        offset: self.offset,
                        data,
                        published_at: c.published_at,
                    };
                    self.offset = chunk.end();
                    self.hub
                        .counters
                        .delivered_live
                        .fetch_add(1, Ordering::Relaxed);
                    if let Some(at) = chunk.published_at {
                        let observer = self
                            .hub
                            .observer
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .clone();
                        if let Some(f) = observer {
                            f(self.job, at.elapsed());
                        }
                    }
                    return Some(Ok(chunk));
                }
                Ok(Event::End { total }) => {
                    self.rx = None;
                    self.ended_at = Some(total);
                    if self.offset >= total {
                        self.done = true;
                        return None;
                    }
                    self.catch_up = true;
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.hub.counters.lagged.fetch_add(1, Ordering::Relaxed);
                    self.catch_up = true;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    // The publisher went away without finishing.
                    self.rx = None;
                    self.catch_up = true;
                }
            }
        }
    }
}

/// Job logs in memory: for tests, and as the reference behaviour of a [`LogStore`].
#[derive(Debug, Default)]
pub struct MemoryLogStore {
    logs: Mutex<HashMap<JobId, (Vec<u8>, bool)>>,
}

impl MemoryLogStore {
    pub fn new() -> MemoryLogStore {
        MemoryLogStore::default()
    }

    /// Makes `job` known with an empty log.
    pub fn create(&self, job: JobId) {
        self.lock().entry(job).or_default();
    }

    /// Appends to `job`'s log and returns its new length.
    pub fn append(&self, job: JobId, data: &[u8]) -> u64 {
        let mut logs = self.lock();
        let log = logs.entry(job).or_default();
        log.0.extend_from_slice(data);
        log.0.len() as u64
    }

    /// Marks `job`'s log complete.
    pub fn complete(&self, job: JobId) {
        self.lock().entry(job).or_default().1 = true;
    }

    pub fn contents(&self, job: JobId) -> Vec<u8> {
        self.lock()
            .get(&job)
            .map(|l| l.0.clone())
            .unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, (Vec<u8>, bool)>> {
        self.logs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl LogStore for MemoryLogStore {
    fn read_from(
        &self,
        job: JobId,
        offset: u64,
        max: usize,
    ) -> BoxFuture<'_, Result<StoredLog, LogStoreError>> {
        let result = match self.lock().get(&job) {
            None => Err(LogStoreError(format!("no job {job}"))),
            Some((data, complete)) => {
                let start = (offset as usize).min(data.len());
                let end = start.saturating_add(max).min(data.len());
                Ok(StoredLog {
                    data: data[start..end].to_vec(),
                    complete: *complete && end == data.len(),
                })
            }
        };
        Box::pin(async move { result })
    }
}
