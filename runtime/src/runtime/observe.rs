//! Observing and ending containers: `stop`, `list`, `info`, and the status
//! decision that joins libcontainer's state, the side file and `/proc`.

use super::{io_err, ContainerInfo, ContainerStatus, Result, Runtime, RuntimeError};
use crate::meta::ContainerMeta;
use crate::process::{observe, Observed};
use crate::rootfs::Rootfs;
use crate::spec;
use libcontainer::container::{Container, ContainerStatus as LcStatus};
use nix::sys::signal::Signal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

impl Runtime {
    /// SIGTERM the init, wait up to `grace`, then SIGKILL everything in the
    /// container's cgroup. Returns the final status. Stopping a container that
    /// already ended is a no-op.
    pub fn stop(&self, id: &str, grace: Duration) -> Result<ContainerStatus> {
        let mut container = self.load(id)?;
        let dir = self.container_dir(id);
        let mut meta = ContainerMeta::load(&dir)?;
        let Some(pid) = container.pid().map(|p| p.as_raw()) else {
            return Ok(self.status_of(&container, &mut meta, &dir));
        };
        if matches!(observe(pid, meta.init_start_time), Observed::Ended { .. }) {
            return Ok(self.status_of(&container, &mut meta, &dir));
        }
        meta.stopped_by_runtime = true;
        meta.save(&dir)?;
        let kill = |c: &mut Container, sig: Signal, all: bool| {
            c.kill(sig, all)
                .map_err(|source| RuntimeError::Libcontainer {
                    id: id.to_string(),
                    action: "kill",
                    source: Box::new(source),
                })
        };
        tracing::info!(container = id, pid, ?grace, "stopping container (SIGTERM)");
        // A kill that fails because the process exited in the meantime is not
        // an error: the wait below sees it ended.
        let raced = |e: RuntimeError, meta: &mut ContainerMeta| {
            if wait_ended(pid, meta.init_start_time, Duration::ZERO, meta) {
                Ok(())
            } else {
                Err(e)
            }
        };
        if let Err(e) = kill(&mut container, Signal::SIGTERM, false) {
            raced(e, &mut meta)?;
        }
        if !wait_ended(pid, meta.init_start_time, grace, &mut meta) {
            tracing::warn!(container = id, pid, "grace period over, sending SIGKILL");
            if let Err(e) = kill(&mut container, Signal::SIGKILL, true) {
                raced(e, &mut meta)?;
            }
            if !wait_ended(
                pid,
                meta.init_start_time,
                Duration::from_secs(10),
                &mut meta,
            ) {
                return Err(RuntimeError::Unkillable {
                    id: id.to_string(),
                    pid,
                });
            }
        }
        meta.save(&dir)?;
        Ok(ContainerStatus::Stopped)
    }

    /// Every container in the state directory, once each, with its current
    /// status. Reaps (and records the exit code of) inits that are our children.
    pub fn list(&self) -> Result<Vec<ContainerInfo>> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(&self.config.state_dir)
            .map_err(io_err("list", &self.config.state_dir))?;
        let mut ids: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("state.json").exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        for id in ids {
            match self.info(&id) {
                Ok(info) => out.push(info),
                // One broken container must not hide the others.
                Err(e) => {
                    tracing::warn!(container = %id, error = %e, "skipping unreadable container")
                }
            }
        }
        Ok(out)
    }

    /// Status of one container.
    pub fn info(&self, id: &str) -> Result<ContainerInfo> {
        let container = self.load(id)?;
        let dir = self.container_dir(id);
        let annotations = container.state.annotations.clone().unwrap_or_default();
        let mut meta = match ContainerMeta::load(&dir) {
            Ok(m) => m,
            // Not created through this runtime's create (or side file lost):
            // fall back to what the spec annotations say.
            Err(_) => ContainerMeta {
                id: id.to_string(),
                app: annotations
                    .get(spec::ANNOTATION_APP)
                    .cloned()
                    .unwrap_or_default(),
                image_digest: annotations
                    .get(spec::ANNOTATION_IMAGE_DIGEST)
                    .cloned()
                    .unwrap_or_default(),
                spec_hash: annotations
                    .get(spec::ANNOTATION_SPEC_HASH)
                    .cloned()
                    .unwrap_or_default(),
                labels: annotations
                    .iter()
                    .filter_map(|(k, v)| {
                        k.strip_prefix(spec::ANNOTATION_LABEL_PREFIX)
                            .map(|k| (k.to_string(), v.clone()))
                    })
                    .collect(),
                rootfs: Rootfs::Dir(PathBuf::new()),
                init_start_time: None,
                exit_code: None,
                stopped_by_runtime: false,
            },
        };
        let status = self.status_of(&container, &mut meta, &dir);
        let pid = match status {
            ContainerStatus::Created | ContainerStatus::Running => {
                container.pid().map(|p| p.as_raw())
            }
            _ => None,
        };
        Ok(ContainerInfo {
            id: id.to_string(),
            app: meta.app,
            image_digest: meta.image_digest,
            spec_hash: meta.spec_hash,
            pid,
            status,
            exit_code: meta.exit_code,
            labels: meta.labels,
        })
    }

    fn status_of(&self, c: &Container, meta: &mut ContainerMeta, dir: &Path) -> ContainerStatus {
        let observed = match (c.pid(), meta.exit_code) {
            (_, Some(code)) => Observed::Ended {
                exit_code: Some(code),
            },
            (Some(pid), None) => observe(pid.as_raw(), meta.init_start_time),
            (None, None) => Observed::Ended { exit_code: None },
        };
        match observed {
            Observed::Alive => match c.status() {
                LcStatus::Creating | LcStatus::Created => ContainerStatus::Created,
                _ => ContainerStatus::Running,
            },
            Observed::Ended { exit_code } => {
                if exit_code.is_some() && meta.exit_code.is_none() {
                    meta.exit_code = exit_code;
                    if let Err(e) = meta.save(dir) {
                        tracing::warn!(container = %meta.id, error = %e, "cannot record exit code");
                    }
                }
                if meta.stopped_by_runtime {
                    ContainerStatus::Stopped
                } else {
                    ContainerStatus::Exited(exit_code)
                }
            }
        }
    }
}

/// Poll until the init ended or `limit` passed; records a reaped exit code.
fn wait_ended(pid: i32, start: Option<u64>, limit: Duration, meta: &mut ContainerMeta) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if let Observed::Ended { exit_code } = observe(pid, start) {
            if exit_code.is_some() {
                meta.exit_code = exit_code;
            }
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
