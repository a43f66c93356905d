//! The server's background work, started with it and stopped by its shutdown token:
//! restart recovery first, then the deployment engine, the scheduler, the deployments'
//! sweep, the local workers, polling, schedules and lease expiry.

use crate::app::AppState;
use crate::server::StartError;

/// Starts every background task; their handles end once `app.shutdown` is cancelled.
pub async fn start(app: &AppState) -> Result<Vec<tokio::task::JoinHandle<()>>, StartError> {
    crate::recovery::recover(app).await?;
    // Before any worker claims a deployment job: the engine closes what a previous
    // process left half done, and serves the releases its records say serve.
    crate::deployments::engine::start(app)
        .await
        .map_err(|e| StartError::Io(format!("the deployment engine: {e}")))?;
    let mut tasks = vec![tokio::spawn(crate::scheduler::run(app.clone()))];
    tasks.push(tokio::spawn(crate::deployments::sweep::run(app.clone())));
    tasks.extend(crate::worker::start(app));
    tasks.push(tokio::spawn(crate::triggers::poll_loop(app.clone())));
    tasks.push(tokio::spawn(crate::triggers::schedule_loop(app.clone())));
    tasks.push(tokio::spawn(crate::recovery::expire_loop(app.clone())));
    Ok(tasks)
}
