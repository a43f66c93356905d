//! Opening the database (SQLite file or PostgreSQL), migrations, write transactions and
//! the handle every domain module hangs its operations on.

use crate::crypto::{Cipher, SecretKey};
use crate::error::{Error, Result};
use crate::events::{Event, Hub};
use crate::types::{Clock, Timestamp};
use sqlx::any::AnyPoolOptions;
use sqlx::{Any, AnyConnection, AnyPool, ConnectOptions, Row, Transaction};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, Mutex, OwnedMutexGuard};

/// The SQLite file's name in the data directory.
pub const SQLITE_FILE: &str = "slipway.db";

/// Which database the store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// How to open a [`Store`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The server's data directory: the SQLite file (by default), the audit head file.
    pub data_dir: PathBuf,
    /// `postgres://user@host:port/db` or `sqlite://PATH`; `None` is
    /// `DATA_DIR/slipway.db`.
    pub database_url: Option<String>,
    /// Seals secrets and signs the audit chain; see [`SecretKey::from_env_or_data_dir`].
    pub secret_key: SecretKey,
    pub clock: Clock,
    /// Connection pool size; `None` picks 8 for SQLite, 16 for PostgreSQL.
    pub max_connections: Option<u32>,
}

impl StoreOptions {
    pub fn new(data_dir: impl Into<PathBuf>, secret_key: SecretKey) -> StoreOptions {
        StoreOptions {
            data_dir: data_dir.into(),
            database_url: None,
            secret_key,
            clock: Clock::system(),
            max_connections: None,
        }
    }

    pub fn database_url(mut self, url: impl Into<String>) -> StoreOptions {
        self.database_url = Some(url.into());
        self
    }

    pub fn clock(mut self, clock: Clock) -> StoreOptions {
        self.clock = clock;
        self
    }
}

/// What the log writer and the transactions share.
pub(crate) struct Core {
    pub(crate) pool: AnyPool,
    pub(crate) dialect: Dialect,
    /// SQLite has one writer: writers queue here (fairly, in process) instead of
    /// spinning on `SQLITE_BUSY`. `None` on PostgreSQL, where row locks order writers.
    write_gate: Option<Arc<Mutex<()>>>,
    pub(crate) hub: Hub,
    /// Tags our own `NOTIFY`s so the listener skips them.
    pub(crate) instance: String,
    pub(crate) cipher: Cipher,
    pub(crate) clock: Clock,
    pub(crate) data_dir: PathBuf,
    /// A random id recorded in the database on first start; names the audit head file.
    pub(crate) database_id: std::sync::OnceLock<String>,
}

/// The state store. Cheap to clone; every clone shares one pool.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) core: Arc<Core>,
    pub(crate) logs: crate::logs::LogWriter,
    listener: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(l) = &self.listener {
            l.abort();
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dialect", &self.inner.core.dialect)
            .finish()
    }
}

impl Store {
    /// Opens (creating if needed) the database and brings its schema up to date.
    ///
    /// SQLite runs in WAL mode with `synchronous=FULL`: every commit is fsynced before
    /// it returns, so what the store acknowledged survives `kill -9` and power loss
    /// (NORMAL would survive `kill -9` only). The cost is one fsync per transaction,
    /// which log appends share through group commit.
    pub async fn open(opts: StoreOptions) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let url = match &opts.database_url {
            Some(u) => u.clone(),
            None => {
                std::fs::create_dir_all(&opts.data_dir)
                    .map_err(|e| Error::io(&opts.data_dir, e))?;
                sqlite_url(&opts.data_dir.join(SQLITE_FILE))
            }
        };
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Dialect::Postgres
        } else {
            return Err(Error::UnsupportedUrl(redact_url(&url)));
        };
        std::fs::create_dir_all(&opts.data_dir).map_err(|e| Error::io(&opts.data_dir, e))?;

        if dialect == Dialect::Sqlite {
            // journal_mode is a property of the file; set it once, before the pool's
            // connections exist (it needs an exclusive lock).
            let mut c = <AnyConnection as sqlx::Connection>::connect(&url).await?;
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&mut c)
                .await?;
            sqlx::Connection::close(c).await?;
        }
        let max = opts.max_connections.unwrap_or(match dialect {
            Dialect::Sqlite => 8,
            Dialect::Postgres => 16,
        });
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        for p in [
                            "PRAGMA synchronous=FULL",
                            "PRAGMA foreign_keys=ON",
                            "PRAGMA busy_timeout=10000",
                        ] {
                            sqlx::query(p).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        // `sqlx::migrate!` is this macro re-exported behind sqlx's `macros` feature,
        // which would also bring compile-time query checking; call it directly.
        match dialect {
            Dialect::Sqlite => {
                sqlx::sqlx_macros::migrate!("./migrations/sqlite")
                    .run(&pool)
                    .await?
            }
            Dialect::Postgres => {
                sqlx::sqlx_macros::migrate!("./migrations/postgres")
                    .run(&pool)
                    .await?
            }
        }

        let instance = crate::crypto::hex(&{
            use rand_core::RngCore;
            let mut b = [0u8; 8];
            rand_core::OsRng.fill_bytes(&mut b);
            b
        });
        let core = Arc::new(Core {
            pool,
            dialect,
            write_gate: (dialect == Dialect::Sqlite).then(|| Arc::new(Mutex::new(()))),
            hub: Hub::new(),
            instance: instance.clone(),
            cipher: Cipher::new(&opts.secret_key),
            clock: opts.clock.clone(),
            data_dir: opts.data_dir.clone(),
            database_id: std::sync::OnceLock::new(),
        });
        check_key(&core).await?;
        crate::audit::init_head(&core).await?;

        let listener = if dialect == Dialect::Postgres {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let h = crate::events::spawn_pg_listener(url.clone(), instance, core.hub.clone(), tx);
            match rx.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(Error::Task("the LISTEN task ended".into())),
            }
            Some(h)
        } else {
            None
        };
        let logs = crate::logs::LogWriter::spawn(core.clone());
        Ok(Store {
            inner: Arc::new(Inner {
                core,
                logs,
                listener,
            }),
        })
    }

    pub fn dialect(&self) -> Dialect {
        self.inner.core.dialect
    }

    /// The store's clock (the system clock unless the options gave another).
    pub fn clock(&self) -> &Clock {
        &self.inner.core.clock
    }

    pub fn now(&self) -> Timestamp {
        self.inner.core.clock.now()
    }

    /// Change notifications (this process's commits and, on PostgreSQL, other
    /// servers'). See [`Event`].
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.core.hub.subscribe()
    }

    /// Closes the pool (waits for connections in use to be returned).
    pub async fn close(&self) {
        self.inner.core.pool.close().await;
    }

    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.inner.core
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.inner.core.pool
    }

    pub(crate) fn cipher(&self) -> &Cipher {
        &self.inner.core.cipher
    }

    pub(crate) async fn write(&self) -> Result<WriteTx> {
        Core::write(&self.inner.core).await
    }
}

impl Core {
    /// Starts a write transaction. SQLite: `BEGIN IMMEDIATE` behind the process's write
    /// gate, so the transaction holds the write lock from its first statement (a
    /// deferred transaction that reads first can fail to upgrade under contention).
    pub(crate) async fn write(core: &Arc<Core>) -> Result<WriteTx> {
        let gate = match &core.write_gate {
            Some(g) => Some(g.clone().lock_owned().await),
            None => None,
        };
        let tx = match core.dialect {
            Dialect::Sqlite => core.pool.begin_with("BEGIN IMMEDIATE").await?,
            Dialect::Postgres => core.pool.begin().await?,
        };
        Ok(WriteTx {
            tx,
            events: Vec::new(),
            audit_head: None,
            core: core.clone(),
            _gate: gate,
        })
    }
}

/// A write transaction; events and the audit head file are published after commit.
pub(crate) struct WriteTx {
    pub(crate) tx: Transaction<'static, Any>,
    events: Vec<Event>,
    pub(crate) audit_head: Option<(i64, String)>,
    pub(crate) core: Arc<Core>,
    _gate: Option<OwnedMutexGuard<()>>,
}

impl WriteTx {
    pub(crate) fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }

    pub(crate) fn emit(&mut self, e: Event) {
        if !self.events.contains(&e) {
            self.events.push(e);
        }
    }

    pub(crate) fn now(&self) -> Timestamp {
        self.core.clock.now()
    }

    pub(crate) fn dialect(&self) -> Dialect {
        self.core.dialect
    }

    pub(crate) async fn commit(mut self) -> Result<()> {
        if self.core.dialect == Dialect::Postgres && !self.events.is_empty() {
            // Delivered by PostgreSQL at commit, only if the transaction commits.
            let payloads: Vec<String> = self
                .events
                .iter()
                .map(|e| format!("{}|{}", self.core.instance, e.encode()))
                .collect();
            for p in payloads {
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(crate::events::PG_CHANNEL)
                    .bind(p)
                    .execute(&mut *self.tx)
                    .await?;
            }
        }
        self.tx.commit().await?;
        drop(self._gate.take());
        if let Some((seq, hash)) = self.audit_head.take() {
            // The change is committed whatever happens here: the head file is a second
            // line of defence, and `verify_audit` says whether it had one to check.
            let _ = crate::audit::write_head_file(&self.core, seq, &hash);
        }
        for e in self.events.drain(..) {
            self.core.hub.publish(e);
        }
        Ok(())
    }
}

fn sqlite_url(path: &Path) -> String {
    sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .to_url_lossy()
        .to_string()
}

/// The URL without its password, for error messages.
pub(crate) fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

const KEY_CHECK_CONTEXT: &str = "meta:key_check";
const KEY_CHECK_TEXT: &[u8] = b"slipway secret key check";

/// The first start records a value sealed with the key; later starts must open it, so a
/// wrong key is refused at once instead of when a secret is first needed.
async fn check_key(core: &Arc<Core>) -> Result<()> {
    let row = sqlx::query("SELECT value FROM meta WHERE name = 'key_check'")
        .fetch_optional(&core.pool)
        .await?;
    match row {
        Some(r) => {
            let v: String = r.try_get("value")?;
            let sealed = crate::crypto::decode_hex(&v)
                .ok_or_else(|| Error::Corrupt("meta.key_check is not hex".into()))?;
            match core.cipher.open(&sealed, KEY_CHECK_CONTEXT) {
                Ok(p) if p == KEY_CHECK_TEXT => Ok(()),
                _ => Err(Error::Key(
                    "this database was created with a different secret key (secret.key in \
                     the data directory or SLIPWAY_SECRET_KEY)"
                        .into(),
                )),
            }
        }
        None => {
            let sealed = core.cipher.seal(KEY_CHECK_TEXT, KEY_CHECK_CONTEXT)?;
            let mut tx = Core::write(core).await?;
            // Another server may have written it first: then check theirs.
            sqlx::query("INSERT INTO meta (name, value) VALUES ('key_check', $1) ON CONFLICT (name) DO NOTHING")
                .bind(crate::crypto::hex(&sealed))
                .execute(tx.conn())
                .await?;
            tx.commit().await?;
            Box::pin(check_key(core)).await
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(
            super::redact_url("postgres://u:secret@h:5/db"),
            "postgres://u:***@h:5/db"
        );
        assert_eq!(super::redact_url("postgres://u@h/db"), "postgres://u@h/db");
    }
}
