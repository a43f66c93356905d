//! Change notifications, so waiters wake in milliseconds instead of polling: a job was
//! queued, a job or pipeline changed, log bytes were appended.
//!
//! Every committed change is published on an in-process broadcast channel. On
//! PostgreSQL the same events travel between servers with `NOTIFY` (sent inside the
//! writing transaction, so PostgreSQL delivers it only if the change commits) and a
//! `LISTEN`ing connection per store feeds them into the local channel. Events are hints
//! to look again, never the data itself: a lagging receiver re-reads the state.

use crate::types::{DeploymentId, JobId, PipelineId, ProjectId};
use tokio::sync::broadcast;

/// The `NOTIFY` channel used on PostgreSQL.
pub(crate) const PG_CHANNEL: &str = "slipway_events";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// One or more jobs became pending: claimers should try again.
    JobsQueued,
    /// A job's status, lease or cancel request changed.
    JobChanged { job: JobId, pipeline: PipelineId },
    /// A pipeline was created or its status changed.
    PipelineChanged {
        pipeline: PipelineId,
        project: ProjectId,
    },
    /// The job's log grew to `size` bytes.
    LogAppended { job: JobId, size: i64 },
    /// A deployment was created, approved, rejected, or changed status or phase.
    DeploymentChanged {
        deployment: DeploymentId,
        project: ProjectId,
    },
    /// A resource group's process mode changed: a waiting job may go now.
    ResourceGroupChanged { project: ProjectId },
}

impl Event {
    pub(crate) fn encode(&self) -> String {
        match *self {
            Event::JobsQueued => "q".to_string(),
            Event::JobChanged { job, pipeline } => format!("j:{job}:{pipeline}"),
            Event::PipelineChanged { pipeline, project } => format!("p:{pipeline}:{project}"),
            Event::LogAppended { job, size } => format!("l:{job}:{size}"),
            Event::DeploymentChanged {
                deployment,
                project,
            } => format!("d:{deployment}:{project}"),
            Event::ResourceGroupChanged { project } => format!("r:{project}"),
        }
    }

    pub(crate) fn decode(s: &str) -> Option<Event> {
        let mut parts = s.split(':');
        let kind = parts.next()?;
        let mut num = || parts.next().and_then(|p| p.parse::<i64>().ok());
        Some(match kind {
            "q" => Event::JobsQueued,
            "j" => Event::JobChanged {
                job: JobId(num()?),
                pipeline: PipelineId(num()?),
            },
            "p" => Event::PipelineChanged {
                pipeline: PipelineId(num()?),
                project: ProjectId(num()?),
            },
            "l" => Event::LogAppended {
                job: JobId(num()?),
                size: num()?,
            },
            "d" => Event::DeploymentChanged {
                deployment: DeploymentId(num()?),
                project: ProjectId(num()?),
            },
            "r" => Event::ResourceGroupChanged {
                project: ProjectId(num()?),
            },
            _ => return None,
        })
    }
}

/// The in-process hub.
#[derive(Clone)]
pub(crate) struct Hub {
    tx: broadcast::Sender<Event>,
}

impl Hub {
    pub(crate) fn new() -> Hub {
        let (tx, _) = broadcast::channel(8192);
        Hub { tx }
    }

    pub(crate) fn publish(&self, e: Event) {
        // No receivers is fine.
        let _ = self.tx.send(e);
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

/// Forwards `NOTIFY`s from other servers into `hub`. Payloads are
/// `<instance>|<event>`; our own (already published locally) are skipped. Reconnects
/// with a short pause when the connection drops, and then wakes every waiter once since
/// notifications may have been missed meanwhile.
pub(crate) fn spawn_pg_listener(
    url: String,
    instance: String,
    hub: Hub,
    ready: tokio::sync::oneshot::Sender<Result<(), sqlx::Error>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ready = Some(ready);
        loop {
            let listener = async {
                let mut l = sqlx::postgres::PgListener::connect(&url).await?;
                l.listen(PG_CHANNEL).await?;
                Ok::<_, sqlx::Error>(l)
            }
            .await;
            let mut listener = match listener {
                Ok(l) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(Ok(()));
                    } else {
                        hub.publish(Event::JobsQueued);
                    }
                    l
                }
                Err(e) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(Err(e));
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    continue;
                }
            };
            loop {
                match listener.try_recv().await {
                    Ok(Some(n)) => {
                        if let Some((from, ev)) = n.payload().split_once('|') {
                            if from != instance {
                                if let Some(e) = Event::decode(ev) {
                                    hub.publish(e);
                                }
                            }
                        }
                    }
                    // The connection was lost and will be re-established by the next
                    // call; notifications may have been missed.
                    Ok(None) => hub.publish(Event::JobsQueued),
                    Err(_) => break,
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for e in [
            Event::JobsQueued,
            Event::JobChanged {
                job: JobId(3),
                pipeline: PipelineId(9),
            },
            Event::PipelineChanged {
                pipeline: PipelineId(1),
                project: ProjectId(2),
            },
            Event::LogAppended {
                job: JobId(5),
                size: 1 << 40,
            },
        ] {
            assert_eq!(Event::decode(&e.encode()), Some(e));
        }
        assert_eq!(Event::decode("x:1"), None);
        assert_eq!(Event::decode("j:1"), None);
    }
}
