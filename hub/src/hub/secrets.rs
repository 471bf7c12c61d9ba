//! Secrets as hub operations: set a value at a scope (a new version
//! re-renders exactly the devices the scope reaches whose apps mount it),
//! list (name, scope, version, sha256, size; never a value), remove (refused
//! while it would leave a mounting app without a value), and the sealing of
//! each mounted secret to its device's encryption key when a manifest is
//! signed. Which value a device gets is the configuration variables'
//! precedence (`crate::vars`): most specific scope wins.

use super::vars::{check_exists, reach};
use super::{pinned_deployments, GenerationUpdate, Hub, HubError};
use crate::deploy::SpecError;
use crate::secrets::{sha256_hex, SecretKeyError};
use crate::store::{SecretRecord, Tx};
use crate::vars::Scope;
use outpost_protocol::secret::{self, SecretContext};
use outpost_protocol::{AppSpec, DeviceId, SecretError, MAX_SECRET_BYTES};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use zeroize::Zeroizing;

/// Why a secret operation, or sealing a secret into a manifest, failed.
#[derive(Debug, thiserror::Error)]
pub enum SecretProblem {
    #[error(
        "device {device} has no encryption key, so secret {secret:?} of app {app:?} cannot be \
         sealed to it; register it with `outpost-hub device add {device} --public-key KEY \
         --encryption-key HEX` (both printed by `outpost-agent init`)"
    )]
    NoEncryptionKey {
        device: DeviceId,
        app: String,
        secret: String,
    },
    #[error(
        "app {app:?} (device {device}) mounts secret {secret:?}, which has no value for \
         this device; `outpost-hub secret set {secret} --from-file FILE` (for the fleet, or \
         with --device/--selector/--deployment) first"
    )]
    Unknown {
        device: DeviceId,
        app: String,
        secret: String,
    },
    #[error(
        "secret {secret:?} is the environment variable {var:?} of app {app:?}, but its value \
         is not UTF-8 text without NUL; mount it as a file (`path`) instead"
    )]
    NotText {
        app: String,
        secret: String,
        var: String,
    },
    #[error("secret {name:?} is mounted by deployment {deployment:?}; remove it from there first")]
    InUse { name: String, deployment: String },
    #[error(
        "removing secret {name:?} at {scope} would leave app {app:?} on device {device} \
         without a value; set one that applies there first"
    )]
    StillNeeded {
        name: String,
        scope: String,
        app: String,
        device: DeviceId,
    },
    #[error("this hub has no secret key (data dir `secrets.key`); secrets cannot be stored")]
    NoKey,
    #[error(transparent)]
    AtRest(#[from] SecretKeyError),
    #[error(transparent)]
    Seal(#[from] SecretError),
}

/// What the API shows of a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretInfo {
    pub name: String,
    /// Where this value applies; the whole fleet when absent.
    #[serde(default)]
    pub scope: Scope,
    #[serde(default)]
    pub scope_text: String,
    pub version: u64,
    pub sha256: String,
    pub size: u64,
    pub updated_at: u64,
    pub updated_by: String,
}

impl From<&SecretRecord> for SecretInfo {
    fn from(r: &SecretRecord) -> SecretInfo {
        SecretInfo {
            name: r.name.clone(),
            scope: r.scope.clone(),
            scope_text: r.scope.to_string(),
            version: r.version,
            sha256: r.sha256.clone(),
            size: r.size,
            updated_at: r.updated_at,
            updated_by: r.updated_by.clone(),
        }
    }
}

/// The answer to `secret set`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretOutcome {
    pub secret: SecretInfo,
    /// Was the value different from the stored one (a new version)?
    pub changed: bool,
    /// Devices that got a new manifest because an app of theirs mounts it.
    pub updated: Vec<GenerationUpdate>,
}

/// Is `name` a valid secret name (a DNS label, as app names)?
pub fn check_name(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(SpecError {
            field: "name".into(),
            problem: format!(
                "secret name {name:?} must be 1-63 lowercase letters, digits or '-', \
                 not starting or ending with '-'"
            ),
        })
    }
}

impl Hub {
    fn secret_key(&self) -> Result<&crate::secrets::SecretKey, SecretProblem> {
        self.secret_key.as_deref().ok_or(SecretProblem::NoKey)
    }

    /// Store `value` as the new version of secret `name` at `scope` (an
    /// unchanged value: nothing happens) and re-issue the manifests of the
    /// devices the scope reaches whose apps mount it.
    pub async fn set_secret(
        self: &std::sync::Arc<Self>,
        name: String,
        scope: Scope,
        value: Zeroizing<Vec<u8>>,
        who: String,
    ) -> Result<SecretOutcome, HubError> {
        check_name(&name)?;
        scope.check()?;
        if value.len() > MAX_SECRET_BYTES {
            return Err(SpecError {
                field: "value".into(),
                problem: format!(
                    "secret {name:?} is {} bytes; the limit is {MAX_SECRET_BYTES}",
                    value.len()
                ),
            }
            .into());
        }
        self.secret_key()?;
        self.transact(who.clone(), move |op| {
            let key = op.hub.secret_key()?;
            check_exists(op.tx, &scope)?;
            let sha256 = sha256_hex(&value);
            let old = op.tx.secret_at(&name, &scope)?;
            if let Some(old) = old.as_ref().filter(|o| o.sha256 == sha256) {
                op.commit = false;
                return Ok(SecretOutcome {
                    secret: SecretInfo::from(old),
                    changed: false,
                    updated: vec![],
                });
            }
            let version = op.tx.next_secret_version(&name)?;
            let at = key
                .encrypt(&name, version, &value)
                .map_err(SecretProblem::from)?;
            let rec = SecretRecord {
                name: name.clone(),
                scope: scope.clone(),
                version,
                sha256,
                size: value.len() as u64,
                nonce: hex::encode(at.nonce),
                ciphertext: hex::encode(&at.ciphertext),
                updated_at: op.now,
                updated_by: who.clone(),
            };
            op.tx.put_secret(&rec)?;
            // The devices the scope reaches: only those whose apps mount this
            // secret (and resolve to this value) render other content.
            let deployments = pinned_deployments(op.tx)?;
            let devices = reach(op.tx, &scope)?;
            let updated = op.render(&devices, &deployments)?;
            op.audit(
                "secret.set",
                &name,
                serde_json::json!({
                    "scope": scope,
                    "version": version,
                    "size": rec.size,
                    "devices": updated.len(),
                }),
            )?;
            tracing::info!(secret = %name, scope = %scope, version, devices = updated.len(), "secret set");
            Ok(SecretOutcome {
                secret: SecretInfo::from(&rec),
                changed: true,
                updated,
            })
        })
        .await
    }

    /// Every secret's name, version, hash and size.
    pub fn secrets(&self) -> Result<Vec<SecretInfo>, HubError> {
        Ok(self.store.secrets()?.iter().map(SecretInfo::from).collect())
    }

    /// Delete secret `name`'s value at `scope`. Its last value is refused
    /// while a deployment (or the revision a rollout keeps for devices not
    /// yet admitted) mounts it; a scoped one while a device it reaches would
    /// be left without a value. Devices it reached fall back to the next
    /// value that applies and get a new manifest.
    pub async fn remove_secret(
        self: &std::sync::Arc<Self>,
        name: String,
        scope: Scope,
        who: String,
    ) -> Result<SecretInfo, HubError> {
        self.transact(who, move |op| {
            let Some(rec) = op.tx.secret_at(&name, &scope)? else {
                return Err(HubError::NotFound {
                    what: "secret",
                    name: format!("{name} at {scope}"),
                });
            };
            if op.tx.secret_values(&name)?.len() == 1 {
                let mut users = Vec::new();
                for d in op.tx.deployments()? {
                    users.push((d.spec.name.clone(), d.apps));
                }
                for r in op.tx.rollouts()? {
                    if let Some(p) = r.previous {
                        users.push((p.spec.name.clone(), p.apps));
                    }
                }
                if let Some((deployment, _)) = users.iter().find(|(_, apps)| {
                    apps.iter()
                        .any(|a| a.secrets.iter().any(|s| s.name == name))
                }) {
                    return Err(SecretProblem::InUse {
                        name,
                        deployment: deployment.clone(),
                    }
                    .into());
                }
            }
            op.tx.remove_secret(&name, &scope)?;
            let deployments = pinned_deployments(op.tx)?;
            let devices = reach(op.tx, &scope)?;
            let updated = op.render(&devices, &deployments).map_err(|e| match e {
                HubError::Secret(SecretProblem::Unknown { device, app, .. }) => {
                    SecretProblem::StillNeeded {
                        name: name.clone(),
                        scope: scope.to_string(),
                        app,
                        device,
                    }
                    .into()
                }
                other => other,
            })?;
            op.audit(
                "secret.remove",
                &name,
                serde_json::json!({
                    "scope": scope,
                    "version": rec.version,
                    "devices": updated.len(),
                }),
            )?;
            Ok(SecretInfo::from(&rec))
        })
        .await
    }

    /// `apps` with every mounted secret sealed to `device`'s encryption key,
    /// bound to the device, the app, the secret's name and version.
    pub(crate) fn seal_secrets(
        &self,
        tx: &Tx,
        device: &DeviceId,
        mut apps: Vec<AppSpec>,
    ) -> Result<Vec<AppSpec>, HubError> {
        if apps.iter().all(|a| a.secrets.is_empty()) {
            return Ok(apps);
        }
        let enc_key = tx.device(device)?.and_then(|d| d.encryption_key);
        let mut values: BTreeMap<(String, u64), Zeroizing<Vec<u8>>> = BTreeMap::new();
        for app in &mut apps {
            for s in &mut app.secrets {
                let unknown = || SecretProblem::Unknown {
                    device: device.clone(),
                    app: app.name.clone(),
                    secret: s.name.clone(),
                };
                let Some(recipient) = enc_key.as_ref() else {
                    return Err(SecretProblem::NoEncryptionKey {
                        device: device.clone(),
                        app: app.name.clone(),
                        secret: s.name.clone(),
                    }
                    .into());
                };
                // The value rendering chose for this device: the one holding
                // that version (versions are unique per name, across scopes).
                let k = (s.name.clone(), s.version);
                if !values.contains_key(&k) {
                    let rec = tx
                        .secret_values(&s.name)?
                        .into_iter()
                        .find(|r| r.version == s.version && s.version != 0)
                        .ok_or_else(unknown)?;
                    let value = self
                        .secret_key()?
                        .decrypt(&rec)
                        .map_err(SecretProblem::from)?;
                    values.insert(k.clone(), value);
                }
                let value = &values[&k];
                if let Some(var) = s.env_var() {
                    if std::str::from_utf8(value).is_err() || value.contains(&0) {
                        return Err(SecretProblem::NotText {
                            app: app.name.clone(),
                            secret: s.name.clone(),
                            var: var.to_string(),
                        }
                        .into());
                    }
                }
                let ctx = SecretContext {
                    device,
                    app: &app.name,
                    name: &s.name,
                    version: s.version,
                };
                s.sealed = secret::seal(recipient, &ctx, value).map_err(SecretProblem::from)?;
            }
        }
        Ok(apps)
    }
}
