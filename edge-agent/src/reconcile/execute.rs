//! Carries out planned actions through the image provider and container driver.
//!
//! Each action runs in `spawn_blocking` (registry I/O, unpacking, libcontainer).
//! An app's actions stop at its first failure; the typed error (with its causes
//! and a retry verdict) becomes the app's `last_error`, an `AppFailed` event and
//! a retry delay, never a panic.

use super::plan::{Action, CreateReason};
use crate::driver::{
    error_chain, ContainerDriver, CreateRequest, DriverCause, DriverError, ImageProvider,
};
use crate::outbox::Outbox;
use crate::view::{Pulls, Writer};
use outpost_protocol::{AppSpec, EventKind};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What happened to one action.
#[derive(Debug)]
pub enum Outcome {
    Kept {
        app: String,
    },
    Pulled {
        app: String,
    },
    Created {
        app: String,
        reason: CreateReason,
    },
    Started {
        app: String,
        container: String,
        pid: u32,
    },
    Stopped {
        app: String,
        container: String,
    },
    Removed {
        app: String,
        container: String,
    },
    /// Images deleted to make room for `app`'s new one.
    Freed {
        app: String,
        images: usize,
        bytes: u64,
    },
    /// The app's first failed action this pass; the error keeps its causes.
    Failed {
        app: String,
        error: DriverError,
    },
}

#[derive(Clone)]
pub struct Executor {
    pub images: Arc<dyn ImageProvider>,
    pub driver: Arc<dyn ContainerDriver>,
    pub outbox: Outbox,
    /// Pull progress; the executor is its only writer (see `crate::view`).
    pub pulls: Arc<Writer<Pulls>>,
    pub volumes_dir: PathBuf,
    pub stop_grace: Duration,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Executor")
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DriverError> + Send + 'static,
) -> Result<T, DriverError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DriverError::new("task", "executor", e))?
}

impl Executor {
    /// Run `actions` in order; `specs` gives the spec of every desired app.
    pub async fn run(
        &self,
        actions: &[Action],
        specs: &BTreeMap<String, AppSpec>,
        restarts: &BTreeMap<String, u32>,
    ) -> Vec<Outcome> {
        let mut failed: BTreeMap<String, ()> = BTreeMap::new();
        let mut pending_reason: BTreeMap<String, CreateReason> = BTreeMap::new();
        let mut out = vec![];
        for action in actions {
            let app = action.app().to_string();
            if action.is_keep() || failed.contains_key(&app) {
                continue;
            }
            let res = self.one(action, specs, restarts, &mut pending_reason).await;
            match res {
                Ok(o) => out.push(o),
                Err(e) => {
                    let error = error_chain(&e);
                    tracing::warn!(device_id = %self.outbox.device_id(), app = %app, error = %error, retryable = e.retryable(), "action failed");
                    self.outbox
                        .event(EventKind::AppFailed {
                            app: app.clone(),
                            error: error.clone(),
                        })
                        .await;
                    failed.insert(app.clone(), ());
                    out.push(Outcome::Failed { app, error: e });
                }
            }
        }
        out
    }

    async fn one(
        &self,
        action: &Action,
        specs: &BTreeMap<String, AppSpec>,
        restarts: &BTreeMap<String, u32>,
        pending_reason: &mut BTreeMap<String, CreateReason>,
    ) -> Result<Outcome, DriverError> {
        let device = self.outbox.device_id().clone();
        match action {
            Action::Keep { app, .. } => Ok(Outcome::Kept { app: app.clone() }),
            Action::Pull { app, image } => {
                let images = self.images.clone();
                let image = image.clone();
                let outbox = self.outbox.clone();
                let pulls = self.pulls.clone();
                let a = app.clone();
                tracing::info!(device_id = %device, app = %app, image = %image, "pulling image");
                blocking(move || {
                    // Progress: an event at the start, at each quarter, at the end
                    // (bounded count, whatever the image size).
                    let last_quarter = std::sync::Mutex::new(None);
                    let progress = |done: u64, total: u64| {
                        let quarter = (done * 4).checked_div(total).map_or(4, |q| q.min(4));
                        pulls.send_modify(|p| {
                            p.insert(a.clone(), (done, total));
                        });
                        let mut last = last_quarter.lock().unwrap_or_else(|p| p.into_inner());
                        if *last != Some(quarter) {
                            *last = Some(quarter);
                            let _ = outbox.event_blocking(EventKind::PullProgress {
                                app: a.clone(),
                                done,
                                total,
                            });
                        }
                    };
                    let pulled = images.pull(&image, &progress);
                    // Shown as pulling only while the pull runs.
                    pulls.send_modify(|p| {
                        p.remove(&a);
                    });
                    pulled
                })
                .await?;
                Ok(Outcome::Pulled { app: app.clone() })
            }
            Action::Create {
                app,
                container,
                reason,
            } => {
                let spec = specs.get(app).cloned().ok_or_else(|| {
                    DriverError::new("create", container.clone(), DriverCause::NotDesired)
                })?;
                let images = self.images.clone();
                let driver = self.driver.clone();
                let req_container = container.clone();
                let volumes_dir = self.volumes_dir.join(app);
                blocking(move || {
                    let image = images.prepare(&spec.image)?;
                    std::fs::create_dir_all(&volumes_dir).map_err(|e| {
                        DriverError::new("create volume dir", volumes_dir.display().to_string(), e)
                    })?;
                    driver.create(&CreateRequest {
                        container: req_container,
                        spec,
                        image,
                        volumes_dir,
                    })
                })
                .await?;
                pending_reason.insert(app.clone(), *reason);
                Ok(Outcome::Created {
                    app: app.clone(),
                    reason: *reason,
                })
            }
            Action::Start { app, container } => {
                let driver = self.driver.clone();
                let c = container.clone();
                let pid = blocking(move || driver.start(&c)).await?;
                let reason = pending_reason.remove(app).unwrap_or(CreateReason::Initial);
                tracing::info!(device_id = %device, app = %app, container = %container, pid, "app started");
                self.outbox
                    .event(EventKind::AppStarted {
                        app: app.clone(),
                        pid,
                    })
                    .await;
                if reason == CreateReason::Restart {
                    let n = restarts.get(app).copied().unwrap_or(0) + 1;
                    self.outbox
                        .event(EventKind::AppRestarted {
                            app: app.clone(),
                            restarts: n,
                        })
                        .await;
                }
                Ok(Outcome::Started {
                    app: app.clone(),
                    container: container.clone(),
                    pid,
                })
            }
            Action::Stop { app, container } => {
                let driver = self.driver.clone();
                let c = container.clone();
                let grace = self.stop_grace;
                blocking(move || driver.stop(&c, grace)).await?;
                tracing::info!(device_id = %device, app = %app, container = %container, "container stopped");
                self.outbox
                    .event(EventKind::AppStopped { app: app.clone() })
                    .await;
                Ok(Outcome::Stopped {
                    app: app.clone(),
                    container: container.clone(),
                })
            }
            Action::Remove { app, container } => {
                let driver = self.driver.clone();
                let c = container.clone();
                blocking(move || driver.remove(&c)).await?;
                Ok(Outcome::Removed {
                    app: app.clone(),
                    container: container.clone(),
                })
            }
            Action::FreeImages { app } => {
                // Kept: what the remaining containers run and every image the
                // desired release names (present ones need no pull again).
                let mut keep: std::collections::BTreeSet<_> =
                    specs.values().map(|s| s.image.digest).collect();
                let driver = self.driver.clone();
                let images = self.images.clone();
                let report = blocking(move || {
                    keep.extend(driver.images_in_use()?);
                    images.collect(&keep)
                })
                .await;
                // Making room is best effort: a failure is logged and the pull
                // still runs (it fails on its own if the room is not there).
                let (count, bytes) = match report {
                    Ok(Some(r)) => (r.removed_images.len(), r.freed_bytes),
                    Ok(None) => (0, 0),
                    Err(e) => {
                        tracing::warn!(device_id = %device, app = %app, error = %error_chain(&e), "delete-then-download: could not delete old images");
                        (0, 0)
                    }
                };
                tracing::info!(device_id = %device, app = %app, images = count, freed_bytes = bytes, "delete-then-download: deleted images no container or desired app uses before pulling");
                Ok(Outcome::Freed {
                    app: app.clone(),
                    images: count,
                    bytes,
                })
            }
        }
    }
}
