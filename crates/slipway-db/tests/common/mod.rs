//! Test databases: a fresh SQLite file in a temp dir, or a fresh PostgreSQL database on
//! the server named by `SLIPWAY_TEST_POSTGRES_URL` (one database per test). With
//! `SLIPWAY_REQUIRE_POSTGRES=1`, a missing PostgreSQL fails the PostgreSQL tests
//! instead of skipping them.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use slipway_db::{Clock, SecretKey, Store, StoreOptions, Timestamp};
use sqlx::Connection;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestDb {
    pub backend: Backend,
    pub store: Store,
    pub dir: tempfile::TempDir,
    pub key: SecretKey,
    pub clock: Clock,
    /// The PostgreSQL database URL (None on SQLite).
    pub url: Option<String>,
    admin_url: Option<String>,
    db_name: Option<String>,
}

pub fn postgres_admin_url() -> Option<String> {
    match std::env::var("SLIPWAY_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            if std::env::var("SLIPWAY_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("SLIPWAY_REQUIRE_POSTGRES=1 but SLIPWAY_TEST_POSTGRES_URL is not set");
            }
            None
        }
    }
}

/// `postgres://u@h:p/db?x` with the database replaced.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[after_scheme..].find('/') {
        Some(i) => &base[..after_scheme + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

impl TestDb {
    /// `None` only for PostgreSQL when it is not configured (and not required).
    pub async fn new(backend: Backend) -> Option<TestDb> {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate();
        let clock = Clock::manual(Timestamp::from_millis(1_700_000_000_000));
        let (url, admin_url, db_name) = match backend {
            Backend::Sqlite => (None, None, None),
            Backend::Postgres => {
                let admin = postgres_admin_url()?;
                let name = format!(
                    "slipway_t_{}",
                    &slipway_db::crypto::new_token("").expose()[..16]
                );
                let mut c = sqlx::PgConnection::connect(&admin)
                    .await
                    .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {admin}: {e}"));
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut c)
                    .await
                    .unwrap();
                c.close().await.unwrap();
                (Some(with_database(&admin, &name)), Some(admin), Some(name))
            }
        };
        let store = open_store(dir.path(), url.as_deref(), &key, &clock).await;
        Some(TestDb {
            backend,
            store,
            dir,
            key,
            clock,
            url,
            admin_url,
            db_name,
        })
    }

    /// Another store on the same database and data directory (a restarted server, or a
    /// second server on PostgreSQL).
    pub async fn reopen(&self) -> Store {
        open_store(self.dir.path(), self.url.as_deref(), &self.key, &self.clock).await
    }

    /// Drops the PostgreSQL database.
    pub async fn finish(self) {
        self.store.close().await;
        if let (Some(admin), Some(name)) = (&self.admin_url, &self.db_name) {
            let mut c = sqlx::PgConnection::connect(admin).await.unwrap();
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut c)
                .await;
            let _ = c.close().await;
        }
    }

    /// Raw SQL against the test database, bypassing the store (to inspect or tamper).
    pub async fn raw_execute(&self, sql: &str) {
        match self.backend {
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&format!(
                    "sqlite://{}",
                    self.dir.path().join("slipway.db").display()
                ))
                .await
                .unwrap();
                sqlx::query(sql).execute(&mut c).await.unwrap();
                c.close().await.unwrap();
            }
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(self.url.as_ref().unwrap())
                    .await
                    .unwrap();
                sqlx::query(sql).execute(&mut c).await.unwrap();
                c.close().await.unwrap();
            }
        }
    }

    /// Every value of every row of `table`, as text (bytes as lossy UTF-8 and hex).
    pub async fn raw_dump(&self, table: &str) -> String {
        use sqlx::{Column, Row, TypeInfo, ValueRef};
        let sql = format!("SELECT * FROM {table}");
        let mut out = String::new();
        macro_rules! dump {
            ($rows:expr) => {
                for r in $rows {
                    for (i, col) in r.columns().iter().enumerate() {
                        let raw = r.try_get_raw(i).unwrap();
                        if raw.is_null() {
                            continue;
                        }
                        let ty = raw.type_info().name().to_uppercase();
                        let text = if ty.contains("BLOB") || ty.contains("BYTEA") {
                            let b: Vec<u8> = r.try_get(i).unwrap();
                            format!(
                                "{} {}",
                                String::from_utf8_lossy(&b),
                                slipway_db::crypto::hex(&b)
                            )
                        } else if ty.contains("INT") {
                            let v: i64 = r.try_get(i).unwrap();
                            v.to_string()
                        } else {
                            r.try_get::<String, _>(i).unwrap_or_default()
                        };
                        out.push_str(&format!("{}={}\n", col.name(), text));
                    }
                }
            };
        }
        match self.backend {
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&format!(
                    "sqlite://{}",
                    self.dir.path().join("slipway.db").display()
                ))
                .await
                .unwrap();
                let rows = sqlx::query(&sql).fetch_all(&mut c).await.unwrap();
                dump!(&rows);
            }
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(self.url.as_ref().unwrap())
                    .await
                    .unwrap();
                let rows = sqlx::query(&sql).fetch_all(&mut c).await.unwrap();
                dump!(&rows);
            }
        }
        out
    }
}

pub async fn open_store(
    dir: &std::path::Path,
    url: Option<&str>,
    key: &SecretKey,
    clock: &Clock,
) -> Store {
    let mut opts = StoreOptions::new(dir, key.clone()).clock(clock.clone());
    if let Some(u) = url {
        opts = opts.database_url(u);
    }
    Store::open(opts).await.unwrap()
}

/// Runs each listed `async fn NAME(db: &TestDb)` on SQLite and on PostgreSQL.
#[macro_export]
macro_rules! db_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::common::TestDb::new($crate::common::Backend::Sqlite).await.unwrap();
                    super::$name(&db).await;
                    db.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = $crate::common::TestDb::new($crate::common::Backend::Postgres).await else {
                        return;
                    };
                    super::$name(&db).await;
                    db.finish().await;
                }
            )*
        }
    };
}
