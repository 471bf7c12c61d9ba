//! The real container driver: `outpost-runtime` (youki's libcontainer) behind the
//! agent's [`ContainerDriver`] seam.
//!
//! Only containers whose id carries our prefix and parses back to an app are
//! reported, so other containers on the host are never touched.

use crate::driver::{
    app_of, ContainerDriver, ContainerStatus, CreateRequest, DriverError, ObservedContainer,
};
use outpost_runtime::{
    ContainerRequest, HelperCommand, LogPolicy, Rootfs, Runtime, RuntimeConfig, RuntimeError,
};

/// First argument under which `outpost-agent` runs as the runtime's create helper.
pub const HELPER_SUBCOMMAND: &str = "__runtime-helper";
use outpost_protocol::Digest;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

pub struct RuntimeDriver {
    rt: Runtime,
    /// Opens apps' sealed secrets into tmpfs files before create.
    secrets: Option<crate::secrets::SecretFiles>,
}

impl std::fmt::Debug for RuntimeDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RuntimeDriver")
    }
}

impl RuntimeDriver {
    /// `state_dir`: libcontainer state (tmpfs); `data_dir`: the agent's data dir
    /// (bundles, overlay upper dirs, logs, `volumes/<app>/<volume>`).
    pub fn open(state_dir: &Path, data_dir: &Path) -> Result<RuntimeDriver, DriverError> {
        Self::open_with_logs(
            state_dir,
            data_dir,
            &data_dir.join("logs"),
            LogPolicy::default(),
            crate::config::DEFAULT_CGROUP_PARENT,
            None,
        )
    }

    /// [`RuntimeDriver::open`] with app logs in `logs_dir`, rotated by
    /// `policy`, and the apps' cgroups under `cgroup_parent`.
    pub fn open_with_logs(
        state_dir: &Path,
        data_dir: &Path,
        logs_dir: &Path,
        policy: LogPolicy,
        cgroup_parent: &str,
        secrets: Option<crate::secrets::SecretFiles>,
    ) -> Result<RuntimeDriver, DriverError> {
        let mut config = RuntimeConfig::new(state_dir, data_dir);
        config.secrets_dir = secrets.as_ref().map(|s| s.dir.clone());
        config.logs_dir = logs_dir.to_path_buf();
        config.log_policy = policy;
        config.cgroup_parent = cgroup_parent.to_string();
        // The agent binary hosts the create helper itself (hidden subcommand), so
        // a device installs one file. Fall back to a separate helper binary only
        // if the running executable cannot be found.
        if let Ok(exe) = std::env::current_exe() {
            config.helper = HelperCommand {
                program: exe,
                args_prefix: vec![HELPER_SUBCOMMAND.to_string()],
            };
        }
        let rt = Runtime::new(config)
            .map_err(|e| DriverError::new("open runtime", state_dir.display().to_string(), e))?;
        Ok(RuntimeDriver { rt, secrets })
    }

    pub fn runtime(&self) -> &Runtime {
        &self.rt
    }
}

impl ContainerDriver for RuntimeDriver {
    fn list(&self) -> Result<Vec<ObservedContainer>, DriverError> {
        let all = self
            .rt
            .list()
            .map_err(|e| DriverError::new("list", "containers", e))?;
        Ok(all
            .into_iter()
            .filter_map(|c| {
                let app = app_of(&c.id)?.to_string();
                let status = match c.status {
                    outpost_runtime::ContainerStatus::Created => ContainerStatus::Created,
                    outpost_runtime::ContainerStatus::Running => ContainerStatus::Running {
                        pid: c.pid.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
                    },
                    outpost_runtime::ContainerStatus::Stopped => {
                        ContainerStatus::Exited { code: None }
                    }
                    outpost_runtime::ContainerStatus::Exited(code) => {
                        ContainerStatus::Exited { code }
                    }
                };
                Some(ObservedContainer {
                    name: c.id,
                    app,
                    status,
                })
            })
            .collect())
    }

    fn create(&self, req: &CreateRequest) -> Result<(), DriverError> {
        if !req.spec.secrets.is_empty() {
            let user =
                outpost_runtime::spec::app_user(&req.spec, &req.image.config).map_err(|e| {
                    DriverError::new("create", req.container.clone(), RuntimeError::from(e))
                })?;
            let files = self.secrets.as_ref().ok_or_else(|| {
                DriverError::new(
                    "create",
                    req.container.clone(),
                    RuntimeError::NoSecretsDir {
                        app: req.spec.name.clone(),
                    },
                )
            })?;
            files
                .write(&req.container, &req.spec, user)
                .map_err(|e| DriverError::new("open secrets of", req.container.clone(), e))?;
        }
        let labels = BTreeMap::from([("image".to_string(), req.spec.image.to_string())]);
        self.rt
            .create(&ContainerRequest {
                id: &req.container,
                app: &req.spec,
                image: &req.image.config,
                image_digest: req.spec.image.digest,
                rootfs: Rootfs::Layers(req.image.layers.clone()),
                labels,
            })
            .map_err(|e| DriverError::new("create", req.container.clone(), e))?;
        Ok(())
    }

    fn start(&self, container: &str) -> Result<u32, DriverError> {
        self.rt
            .start(container)
            .map_err(|e| DriverError::new("start", container, e))?;
        let info = self
            .rt
            .info(container)
            .map_err(|e| DriverError::new("inspect", container, e))?;
        Ok(info.pid.and_then(|p| u32::try_from(p).ok()).unwrap_or(0))
    }

    fn stop(&self, container: &str, grace: Duration) -> Result<(), DriverError> {
        self.rt
            .stop(container, grace)
            .map_err(|e| DriverError::new("stop", container, e))?;
        Ok(())
    }

    fn maintain_logs(&self) -> Result<(), DriverError> {
        self.rt
            .rotate_logs()
            .map_err(|e| DriverError::new("rotate", "app logs", e))
    }

    fn images_in_use(&self) -> Result<BTreeSet<Digest>, DriverError> {
        Ok(self
            .rt
            .list()
            .map_err(|e| DriverError::new("list", "containers", e))?
            .into_iter()
            .filter(|c| app_of(&c.id).is_some())
            .filter_map(|c| c.image_digest.parse().ok())
            .collect())
    }

    fn remove(&self, container: &str) -> Result<(), DriverError> {
        self.rt
            .delete(container)
            .map_err(|e| DriverError::new("delete", container, e))
    }

    fn lock_held(&self, app: &str) -> Result<bool, DriverError> {
        let dir = self.rt.lock_dir(app);
        crate::locks::held(&dir)
            .map_err(|e| DriverError::new("probe update lock", dir.display().to_string(), e))
    }
}
