//! The projects' bare mirrors, one per project under `DATA_DIR/mirrors/<id>.git`, opened
//! once and shared (a [`Mirror`] serialises its own fetches). Git runs blocking, so every
//! call here goes through `spawn_blocking`.

use crate::git::{GitError, Mirror, RepoSource};
use slipway_db::{Project, ProjectId};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub struct Mirrors {
    root: PathBuf,
    open: Mutex<HashMap<ProjectId, Arc<Mirror>>>,
    /// Held while a mirror is opened or created: after a restart every worker asks for
    /// the mirror at once, and concurrent `git config` writes to it fail on git's lock.
    opening: tokio::sync::Mutex<()>,
    /// Serialises "fetch, compare, create pipelines" per project, so the hook, a webhook
    /// and polling seeing the same push make one pipeline.
    triggers: Mutex<HashMap<ProjectId, Arc<tokio::sync::Mutex<()>>>>,
}

impl Mirrors {
    pub fn new(root: PathBuf) -> Mirrors {
        Mirrors {
            root,
            open: Mutex::new(HashMap::new()),
            opening: tokio::sync::Mutex::new(()),
            triggers: Mutex::new(HashMap::new()),
        }
    }

    /// Held while a push is turned into pipelines for `project`.
    pub async fn trigger_lock(&self, project: ProjectId) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .triggers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(project)
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    pub fn path(&self, project: ProjectId) -> PathBuf {
        self.root.join(format!("{project}.git"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ProjectId, Arc<Mirror>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The project's mirror, created (and fetched in full) on first use.
    pub async fn get(&self, project: &Project) -> Result<Arc<Mirror>, GitError> {
        if let Some(m) = self.lock().get(&project.id) {
            return Ok(m.clone());
        }
        let _opening = self.opening.lock().await;
        if let Some(m) = self.lock().get(&project.id) {
            return Ok(m.clone());
        }
        let path = self.path(project.id);
        let repo = project.repository.clone();
        let m = blocking(move || {
            let source = RepoSource::parse(&repo)?;
            Mirror::create_or_open(&path, &source)
        })
        .await?;
        let m = Arc::new(m);
        Ok(self.lock().entry(project.id).or_insert(m).clone())
    }

    /// Fetches the project's mirror from its source; returns the mirror.
    pub async fn fetch(&self, project: &Project) -> Result<Arc<Mirror>, GitError> {
        let m = self.get(project).await?;
        let m2 = m.clone();
        blocking(move || m2.fetch().map(|_| ())).await?;
        Ok(m)
    }

    /// Forgets the project's mirror and removes it from disk (project deleted).
    pub async fn remove(&self, project: ProjectId) {
        self.lock().remove(&project);
        let path = self.path(project);
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(path)).await;
    }

    /// Points the mirror at a new repository location (project settings changed).
    pub async fn set_source(&self, project: &Project) -> Result<(), GitError> {
        let m = self.get(project).await?;
        let repo = project.repository.clone();
        blocking(move || m.set_source(&RepoSource::parse(&repo)?)).await
    }
}

/// Runs blocking git work off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, GitError> + Send + 'static,
) -> Result<T, GitError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(GitError::Io {
            context: "running git".into(),
            error: std::io::Error::other(e.to_string()),
        }),
    }
}
