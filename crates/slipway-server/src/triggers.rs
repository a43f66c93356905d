//! What turns events into pipelines: the post-receive hook's notifications, polling of
//! remote repositories, push webhooks, schedules, trigger tokens and manual runs all end
//! in `crate::pipelines::create`.

use crate::git::{GitError, Mirror};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The mirror's branches and tags as the store keeps them for polling
/// (`refs/heads/main` to commit).
pub async fn snapshot_map(mirror: &Arc<Mirror>) -> Result<BTreeMap<String, String>, GitError> {
    let m = mirror.clone();
    let snap = crate::mirrors::blocking(move || m.refs()).await?;
    Ok(snap.refs.into_iter().map(|(k, v)| (k, v.sha)).collect())
}
