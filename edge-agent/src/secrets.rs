//! Secret files on the device: the device's X25519 decryption key
//! (`encryption.key`, 0600, next to the device key), and the opening of each
//! sealed secret of an app into `<run_dir>/secrets/<container>/<name>` (a
//! tmpfs), mode 0400, owned by the app's user, just before the container is
//! created. The runtime bind-mounts each file read-only at its path and
//! removes the directory with the container.
//!
//! The persisted manifest keeps only the sealed form: after a reboot the
//! tmpfs is empty and the files are opened again from it. Plaintext is never
//! written under the data dir, logged, or reported.

use outpost_protocol::secret::{self, SecretContext};
use outpost_protocol::{AppSpec, DecryptionKey, DeviceId, SecretError};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error(
        "app {app:?} mounts secret {secret:?}, but this device has no encryption key at {path} \
         (made by `outpost-agent init`)"
    )]
    NoKey {
        app: String,
        secret: String,
        path: PathBuf,
    },
    #[error(transparent)]
    Open(#[from] SecretError),
    #[error("encryption key {path}: {detail}")]
    Key { path: PathBuf, detail: String },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SecretFileError {
    let path = path.to_path_buf();
    move |source| SecretFileError::Io {
        action,
        path,
        source,
    }
}

/// Read the device's decryption key; `None` when the file does not exist (a
/// device initialised before secrets existed: apps without secrets run).
pub fn load_decryption_key(path: &Path) -> Result<Option<DecryptionKey>, SecretFileError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let bytes = zeroize::Zeroizing::new(bytes);
            DecryptionKey::from_bytes(&bytes)
                .map(Some)
                .map_err(|e| SecretFileError::Key {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("read", path)(e)),
    }
}

/// Write a fresh decryption key to `path` (mode 0600, never overwriting).
pub fn create_decryption_key(path: &Path) -> Result<DecryptionKey, SecretFileError> {
    let key = DecryptionKey::generate()?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io("create", path))?;
    f.write_all(&key.to_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io("write", path))?;
    Ok(key)
}

/// Opens an app's sealed secrets into files for its container.
#[derive(Debug)]
pub struct SecretFiles {
    /// `<run_dir>/secrets`: tmpfs, so plaintext does not outlive a reboot.
    pub dir: PathBuf,
    pub device: DeviceId,
    pub key: Option<DecryptionKey>,
    /// Where the key is (or should be), for errors.
    pub key_path: PathBuf,
}

impl SecretFiles {
    /// Open every secret of `app` into `<dir>/<container>/<name>`, mode 0400,
    /// owned by `uid:gid`. Replaces files left by an earlier attempt.
    pub fn write(
        &self,
        container: &str,
        app: &AppSpec,
        (uid, gid): (u32, u32),
    ) -> Result<(), SecretFileError> {
        if app.secrets.is_empty() {
            return Ok(());
        }
        let dir = self.dir.join(container);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io("create", &dir))?;
        for s in &app.secrets {
            let key = self.key.as_ref().ok_or_else(|| SecretFileError::NoKey {
                app: app.name.clone(),
                secret: s.name.clone(),
                path: self.key_path.clone(),
            })?;
            let ctx = SecretContext {
                device: &self.device,
                app: &app.name,
                name: &s.name,
                version: s.version,
            };
            let value = secret::open(key, &ctx, &s.sealed)?;
            let path = dir.join(&s.name);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("replace", &path)(e)),
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .open(&path)
                .map_err(io("create", &path))?;
            f.write_all(&value).map_err(io("write", &path))?;
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(io("chown", &path))?;
            tracing::debug!(app = %app.name, secret = %s.name, version = s.version, "secret file written");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_protocol::SecretMount;
    use std::os::unix::fs::PermissionsExt;

    fn app_with(device: &DeviceId, to: &DecryptionKey, value: &[u8]) -> AppSpec {
        let image = format!("reg/web@sha256:{}", "ab".repeat(32))
            .parse()
            .unwrap();
        let mut app = AppSpec::new("web", image);
        let ctx = SecretContext {
            device,
            app: "web",
            name: "db",
            version: 2,
        };
        app.secrets = vec![SecretMount {
            name: "db".into(),
            path: "/run/secrets/db".into(),
            version: 2,
            sealed: secret::seal(&to.public_key(), &ctx, value).unwrap(),
        }];
        app
    }

    #[test]
    fn opens_into_a_0400_file_and_refuses_another_devices_blob() {
        let dir = tempfile::tempdir().unwrap();
        let device: DeviceId = "pi-a".parse().unwrap();
        let key_path = dir.path().join("encryption.key");
        let key = create_decryption_key(&key_path).unwrap();
        assert!(
            create_decryption_key(&key_path).is_err(),
            "never overwrites"
        );
        let loaded = load_decryption_key(&key_path).unwrap().unwrap();
        assert_eq!(loaded.public_key(), key.public_key());
        let files = SecretFiles {
            dir: dir.path().join("secrets"),
            device: device.clone(),
            key: Some(loaded),
            key_path: key_path.clone(),
        };
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        files
            .write(
                "outpost-web-1",
                &app_with(&device, &key, b"marker"),
                (uid, gid),
            )
            .unwrap();
        let path = dir.path().join("secrets/outpost-web-1/db");
        assert_eq!(std::fs::read(&path).unwrap(), b"marker");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o400);

        // Sealed for another device's key: refused, no file written.
        let other = DecryptionKey::generate().unwrap();
        let err = files
            .write(
                "outpost-web-2",
                &app_with(&device, &other, b"x"),
                (uid, gid),
            )
            .unwrap_err();
        assert!(matches!(err, SecretFileError::Open(_)), "{err}");
        assert!(!dir.path().join("secrets/outpost-web-2/db").exists());

        // No key at all: an error naming the key file.
        let none = SecretFiles { key: None, ..files };
        let err = none
            .write("outpost-web-3", &app_with(&device, &key, b"x"), (uid, gid))
            .unwrap_err();
        assert!(err.to_string().contains("encryption.key"), "{err}");
    }
}
