//! Starting and stopping a server: open the store, make the first administrator, recover
//! what the previous process left running, start the scheduler, the workers and the
//! trigger loops, serve HTTP until a shutdown signal, then stop everything in order.

use crate::app::{holder_name, App, AppState, ServerConfig};
use slipway_db::{SecretKey, Store, StoreOptions};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Who the first administrator is, when the database has no user yet.
#[derive(Debug, Clone)]
pub struct FirstAdminOptions {
    pub username: String,
    /// `None`: a password is generated and printed once.
    pub password: Option<String>,
}

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    Io(String),
    Store(slipway_db::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Io(m) => f.write_str(m),
            StartError::Store(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for StartError {}

impl From<slipway_db::Error> for StartError {
    fn from(e: slipway_db::Error) -> StartError {
        StartError::Store(e)
    }
}

/// A started server.
pub struct Started {
    pub app: AppState,
    pub addr: SocketAddr,
    listener: TcpListener,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Opens the store and everything around it, and binds the listener; nothing is served
/// until [`Started::serve`].
pub async fn start(config: ServerConfig, admin: FirstAdminOptions) -> Result<Started, StartError> {
    crate::worker::fix_allocator_thresholds();
    let data_dir = config.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| StartError::Io(format!("{}: {e}", data_dir.display())))?;
    let holder = holder_name(&data_dir)
        .map_err(|e| StartError::Io(format!("{}/server-id: {e}", data_dir.display())))?;
    let key = SecretKey::from_env_or_data_dir(&data_dir)?;
    let mut opts = StoreOptions::new(&data_dir, key);
    if let Some(url) = &config.database_url {
        opts = opts.database_url(url.clone());
    }
    let store = Store::open(opts).await?;
    if store.user_count().await? == 0 {
        if let Some(first) = store
            .create_first_admin(&admin.username, admin.password.as_deref())
            .await?
        {
            match &first.generated_password {
                // Printed once, on the terminal only: never logged.
                Some(p) => eprintln!(
                    "Created the first administrator {:?} with password {}\n(shown once; change it or set SLIPWAY_ADMIN_PASSWORD before the first start)",
                    first.user.username,
                    p.expose()
                ),
                None => eprintln!("Created the first administrator {:?}", first.user.username),
            }
        }
    }
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|e| StartError::Io(format!("cannot listen on {}: {e}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::Io(e.to_string()))?;
    let base_url = config.base_url(Some(addr));
    let app = Arc::new(
        App::new(store, config, holder, base_url)
            .map_err(|e| StartError::Io(format!("{}: {e}", data_dir.display())))?,
    );
    let tasks = crate::background::start(&app).await?;
    tracing::info!(%addr, holder = %app.holder, database = ?app.store.dialect(), "server listening");
    Ok(Started {
        app,
        addr,
        listener,
        tasks,
    })
}

impl Started {
    /// Serves HTTP until `shutdown` resolves, then stops the workers and loops.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) {
        let Started {
            app,
            listener,
            tasks,
            ..
        } = self;
        let router = crate::http::router(app.clone());
        let stop = app.shutdown.clone();
        tokio::spawn(async move {
            shutdown.await;
            stop.cancel();
        });
        let served = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(app.shutdown.clone().cancelled_owned());
        // Open event streams (live logs) end on the shutdown token too; connections that
        // still linger are given a few seconds.
        let app2 = app.clone();
        let result = tokio::select! {
            r = served => r.map_err(|e| e.to_string()),
            _ = async {
                app2.shutdown.cancelled().await;
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            } => Ok(()),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "HTTP server failed");
        }
        tracing::info!("shutting down");
        app.shutdown.cancel();
        for t in tasks {
            let _ = t.await;
        }
        // The environments' routers close and their releases stop; the records keep
        // what served, so the next start brings it back.
        if let Ok(engine) = app.deployer.engine() {
            engine.shutdown().await;
        }
        app.store.close().await;
        tracing::info!("stopped");
    }
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
