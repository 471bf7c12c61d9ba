//! The short-lived helper process that performs libcontainer's create.
//!
//! libcontainer creates the container by `clone`-ing the calling process and
//! running Rust code (allocation, logging) in the child. Doing that from the
//! multi-threaded tokio agent risks the child inheriting a lock held by another
//! thread (a raw `clone3` runs no `pthread_atfork` handlers). So the agent runs
//! this helper — single-threaded — for create. The container init ends up as the
//! helper's child; when the helper exits the init is re-parented to the nearest
//! subreaper (the agent, if it called [`crate::become_subreaper`]) or PID 1, so
//! no container ever depends on the agent staying alive.
//!
//! Any binary can host the helper: call [`run`] with its arguments (the
//! `outpost-runtime-helper` binary in this crate does only that).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The single argument the helper receives, as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateRequest {
    /// libcontainer's state root.
    pub state_dir: PathBuf,
    pub id: String,
    /// Directory holding `config.json`.
    pub bundle: PathBuf,
    /// File receiving the container's stdout and stderr (opened O_APPEND).
    pub log: PathBuf,
}

/// First argument selecting the create operation.
pub const CREATE_ARG: &str = "create";

#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error("usage: outpost-runtime-helper create '<json CreateRequest>'")]
    Usage,
    #[error("bad create request {json:?}: {source}")]
    BadRequest {
        json: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Log(#[from] crate::logs::LogError),
    #[error("cannot open /dev/null: {0}")]
    DevNull(#[source] std::io::Error),
    #[error("libcontainer refused to create container {id:?} (bundle {bundle:?}): {source}")]
    Create {
        id: String,
        bundle: PathBuf,
        #[source]
        source: Box<libcontainer::error::LibcontainerError>,
    },
}

/// Run the helper for `args` (without the program name). Returns once the
/// container is created (not started).
pub fn run(args: &[String]) -> Result<(), HelperError> {
    let [op, json] = args else {
        return Err(HelperError::Usage);
    };
    if op != CREATE_ARG {
        return Err(HelperError::Usage);
    }
    let req: CreateRequest =
        serde_json::from_str(json).map_err(|source| HelperError::BadRequest {
            json: json.clone(),
            source,
        })?;
    create(&req)
}

fn create(req: &CreateRequest) -> Result<(), HelperError> {
    use libcontainer::container::builder::ContainerBuilder;
    use libcontainer::syscall::syscall::SyscallType;

    let stdout = crate::logs::open_append(&req.log)?;
    let stderr = crate::logs::open_append(&req.log)?;
    let stdin = std::fs::File::open("/dev/null").map_err(HelperError::DevNull)?;
    let wrap = |source| HelperError::Create {
        id: req.id.clone(),
        bundle: req.bundle.clone(),
        source: Box::new(source),
    };
    ContainerBuilder::new(req.id.clone(), SyscallType::default())
        .validate_id()
        .map_err(wrap)?
        .with_root_path(&req.state_dir)
        .map_err(wrap)?
        .with_stdin(stdin)
        .with_stdout(stdout)
        .with_stderr(stderr)
        .as_init(&req.bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(wrap)?;
    Ok(())
}
