//! The hub's operations: register devices, apply and delete deployments, and the
//! render → sign → persist → publish pipeline they share.
//!
//! Every operation validates first, then does all its writes in one redb write
//! transaction (so an invalid request changes nothing, and an apply over 10,000
//! devices costs one fsync), and only after the commit hands the affected device
//! ids to the publisher. The publisher reads the bytes back from the store, so
//! whatever it sends is the latest committed manifest (latest wins).

use crate::deploy::{check_label, DeploymentSpec, SpecError};
use crate::publish::Outbox;
use crate::render::{self, Current, Deployment, RenderError};
use crate::resolve::{self, ImageResolver, ResolveError};
use crate::signing::{KeyFileError, Signer};
use crate::store::{
    AuditEntry, DeploymentRecord, DeviceRecord, ManifestMeta, Store, StoreError, Tx,
};
use outpost_protocol::{DeviceId, Manifest, PublicKey, MAX_MESSAGE_BYTES};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Why an operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{0}")]
    Invalid(#[from] SpecError),
    #[error("field `{field}`: {source}")]
    Resolve { field: String, source: ResolveError },
    #[error("{0}")]
    Render(#[from] RenderError),
    #[error("the manifest for device {device} would be {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        device: DeviceId,
        size: usize,
        limit: usize,
    },
    #[error("manifest for device {device} is invalid: {problem}")]
    InvalidManifest { device: DeviceId, problem: String },
    #[error("{what} {name:?} not found")]
    NotFound { what: &'static str, name: String },
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] KeyFileError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Unix seconds now.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Result of an apply or delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyOutcome {
    pub name: String,
    pub revision: u64,
    /// Did the deployment's pinned content or selector change?
    pub changed: bool,
    pub matched_devices: usize,
    /// Devices that got a new manifest generation, with that generation.
    pub updated: Vec<GenerationUpdate>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationUpdate {
    pub device: DeviceId,
    pub generation: u64,
}

/// A device to register.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewDevice {
    pub id: DeviceId,
    pub public_key: PublicKey,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Shared state behind the API, ingest and publisher.
pub struct Hub {
    pub store: Store,
    pub signer: Signer,
    pub resolver: Arc<dyn ImageResolver>,
    outbox: mpsc::UnboundedSender<Outbox>,
    /// Hub clock (unix seconds) of the last "you are behind" republish per device,
    /// so a device that is slow to apply is not flooded.
    pub(crate) republished: Mutex<HashMap<DeviceId, u64>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("signer", &self.signer).finish()
    }
}

impl Hub {
    pub fn new(
        store: Store,
        signer: Signer,
        resolver: Arc<dyn ImageResolver>,
        outbox: mpsc::UnboundedSender<Outbox>,
    ) -> Hub {
        Hub {
            store,
            signer,
            resolver,
            outbox,
            republished: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn send(&self, msg: Outbox) {
        // Only fails when the publisher stopped, i.e. during shutdown.
        if self.outbox.send(msg).is_err() {
            tracing::debug!("publisher stopped; message dropped");
        }
    }

    /// Run blocking store work off the async threads.
    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Hub) -> Result<T, HubError> + Send + 'static,
    ) -> Result<T, HubError> {
        let hub = Arc::clone(self);
        tokio::task::spawn_blocking(move || f(&hub))
            .await
            .map_err(|e| HubError::Internal(e.to_string()))?
    }

    /// Register a device with its public key and labels; issues its first manifest.
    pub async fn add_device(
        self: &Arc<Self>,
        id: DeviceId,
        public_key: PublicKey,
        labels: BTreeMap<String, String>,
        who: String,
    ) -> Result<DeviceRecord, HubError> {
        for (k, v) in &labels {
            check_label("labels", k, v)?;
        }
        let mut recs = self
            .add_devices(
                vec![NewDevice {
                    id,
                    public_key,
                    labels,
                }],
                who,
            )
            .await?;
        recs.pop()
            .ok_or_else(|| HubError::Internal("registration returned no record".into()))
    }

    /// Register many devices in one transaction (one fsync), e.g. a fleet
    /// simulator or a bulk import. All or nothing.
    pub async fn add_devices(
        self: &Arc<Self>,
        new: Vec<NewDevice>,
        who: String,
    ) -> Result<Vec<DeviceRecord>, HubError> {
        for (i, d) in new.iter().enumerate() {
            for (k, v) in &d.labels {
                check_label(&format!("devices[{i}].labels"), k, v)?;
            }
        }
        let recs = self
            .blocking(move |hub| {
                let now = now_secs();
                hub.store.write(|tx| {
                    let mut recs = Vec::with_capacity(new.len());
                    let mut seen = std::collections::BTreeSet::new();
                    for d in new {
                        if !seen.insert(d.id.clone()) || tx.device(&d.id)?.is_some() {
                            return Err(HubError::Conflict(format!(
                                "device {} is already registered; remove it first to change its key",
                                d.id
                            )));
                        }
                        let rec = DeviceRecord {
                            id: d.id,
                            public_key: d.public_key,
                            labels: d.labels,
                            registered_at: now,
                        };
                        tx.put_device(&rec)?;
                        audit(
                            tx,
                            now,
                            &who,
                            "device.add",
                            rec.id.as_str(),
                            serde_json::json!({
                                "public_key": rec.public_key.to_string(),
                                "labels": rec.labels,
                            }),
                        )?;
                        recs.push(rec);
                    }
                    let deployments = pinned_deployments(tx)?;
                    let only: Vec<_> = recs.iter().map(|r| (r.id.clone(), r.labels.clone())).collect();
                    hub.render_into(tx, &only, &deployments, now)?;
                    Ok(recs)
                })
            })
            .await?;
        for rec in &recs {
            tracing::info!(device_id = %rec.id, "device registered");
        }
        // Publish whatever each has now (new or, for a re-added device, its old one).
        self.send(Outbox::Manifests(
            recs.iter().map(|r| r.id.clone()).collect(),
        ));
        // And its event watermark, so the device learns the hub's session.
        self.send(Outbox::Watermarks(
            recs.iter().map(|r| r.id.clone()).collect(),
        ));
        Ok(recs)
    }

    pub async fn remove_device(
        self: &Arc<Self>,
        id: DeviceId,
        who: String,
    ) -> Result<(), HubError> {
        let id2 = id.clone();
        self.blocking(move |hub| {
            let now = now_secs();
            hub.store.write(|tx| {
                if !tx.remove_device(&id2)? {
                    return Err(HubError::NotFound {
                        what: "device",
                        name: id2.to_string(),
                    });
                }
                audit(
                    tx,
                    now,
                    &who,
                    "device.remove",
                    id2.as_str(),
                    serde_json::Value::Null,
                )?;
                Ok(())
            })
        })
        .await?;
        tracing::info!(device_id = %id, "device removed");
        self.send(Outbox::Clear(id));
        Ok(())
    }

    /// Set (`Some`) or remove (`None`) labels on a device and re-render it.
    pub async fn label_device(
        self: &Arc<Self>,
        id: DeviceId,
        changes: BTreeMap<String, Option<String>>,
        who: String,
    ) -> Result<(DeviceRecord, Option<u64>), HubError> {
        for (k, v) in &changes {
            check_label("labels", k, v.as_deref().unwrap_or("x"))?;
        }
        let (rec, updated) = self
            .blocking(move |hub| {
                let now = now_secs();
                hub.store.write(|tx| {
                    let mut rec = tx.device(&id)?.ok_or_else(|| HubError::NotFound {
                        what: "device",
                        name: id.to_string(),
                    })?;
                    for (k, v) in &changes {
                        match v {
                            Some(v) => rec.labels.insert(k.clone(), v.clone()),
                            None => rec.labels.remove(k),
                        };
                    }
                    tx.put_device(&rec)?;
                    let deployments = pinned_deployments(tx)?;
                    let only = [(rec.id.clone(), rec.labels.clone())];
                    let updated = hub.render_into(tx, &only, &deployments, now)?;
                    audit(
                        tx,
                        now,
                        &who,
                        "device.label",
                        id.as_str(),
                        serde_json::json!(changes),
                    )?;
                    Ok((rec, updated.first().map(|u| u.generation)))
                })
            })
            .await?;
        if updated.is_some() {
            self.send(Outbox::Manifests(vec![rec.id.clone()]));
        }
        Ok((rec, updated))
    }

    /// Validate, pin images, render all devices, persist, then publish.
    pub async fn apply(
        self: &Arc<Self>,
        spec: DeploymentSpec,
        who: String,
    ) -> Result<ApplyOutcome, HubError> {
        spec.check()?;
        let mut apps = Vec::with_capacity(spec.apps.len());
        for (i, app) in spec.apps.iter().enumerate() {
            let pinned = resolve::pin(self.resolver.as_ref(), &app.image)
                .await
                .map_err(|source| HubError::Resolve {
                    field: format!("apps[{i}].image"),
                    source,
                })?;
            apps.push(app.to_app_spec(i, pinned)?);
        }
        let outcome = self
            .blocking(move |hub| {
                let now = now_secs();
                hub.store.write(|tx| {
                    let mut records = tx.deployments()?;
                    let old = records.iter().position(|r| r.spec.name == spec.name);
                    let (revision, changed) = match old.map(|i| &records[i]) {
                        Some(r) if r.apps == apps && r.spec.selector == spec.selector => {
                            (r.revision, false)
                        }
                        Some(r) => (r.revision + 1, true),
                        None => (1, true),
                    };
                    let rec = DeploymentRecord {
                        spec: spec.clone(),
                        apps,
                        revision,
                        updated_at: now,
                    };
                    match old {
                        Some(i) => records[i] = rec.clone(),
                        None => records.push(rec.clone()),
                    }
                    let deployments: Vec<Deployment> = records.iter().map(to_render).collect();
                    let devices: Vec<(DeviceId, BTreeMap<String, String>)> = tx
                        .devices()?
                        .into_iter()
                        .map(|d| (d.id, d.labels))
                        .collect();
                    let matched = devices
                        .iter()
                        .filter(|(_, l)| render::matches(&spec.selector, l))
                        .count();
                    let updated = hub.render_into(tx, &devices, &deployments, now)?;
                    tx.put_deployment(&rec)?;
                    if changed || !updated.is_empty() {
                        audit(
                            tx,
                            now,
                            &who,
                            "deployment.apply",
                            &spec.name,
                            serde_json::json!({
                                "revision": revision,
                                "spec": spec,
                                "updated_devices": updated.len(),
                            }),
                        )?;
                    }
                    Ok(ApplyOutcome {
                        name: spec.name.clone(),
                        revision,
                        changed,
                        matched_devices: matched,
                        updated,
                    })
                })
            })
            .await?;
        tracing::info!(
            deployment = %outcome.name,
            revision = outcome.revision,
            updated = outcome.updated.len(),
            "deployment applied"
        );
        self.publish_updates(&outcome.updated);
        Ok(outcome)
    }

    pub async fn delete_deployment(
        self: &Arc<Self>,
        name: String,
        who: String,
    ) -> Result<ApplyOutcome, HubError> {
        let outcome = self
            .blocking(move |hub| {
                let now = now_secs();
                hub.store.write(|tx| {
                    let records = tx.deployments()?;
                    let Some(old) = records.iter().find(|r| r.spec.name == name).cloned() else {
                        return Err(HubError::NotFound {
                            what: "deployment",
                            name,
                        });
                    };
                    tx.remove_deployment(&name)?;
                    let deployments: Vec<Deployment> = records
                        .iter()
                        .filter(|r| r.spec.name != name)
                        .map(to_render)
                        .collect();
                    let devices: Vec<(DeviceId, BTreeMap<String, String>)> = tx
                        .devices()?
                        .into_iter()
                        .map(|d| (d.id, d.labels))
                        .collect();
                    let matched = devices
                        .iter()
                        .filter(|(_, l)| render::matches(&old.spec.selector, l))
                        .count();
                    let updated = hub.render_into(tx, &devices, &deployments, now)?;
                    audit(
                        tx,
                        now,
                        &who,
                        "deployment.delete",
                        &name,
                        serde_json::json!({
                            "revision": old.revision,
                            "updated_devices": updated.len(),
                        }),
                    )?;
                    Ok(ApplyOutcome {
                        name,
                        revision: old.revision,
                        changed: true,
                        matched_devices: matched,
                        updated,
                    })
                })
            })
            .await?;
        tracing::info!(deployment = %outcome.name, updated = outcome.updated.len(), "deployment deleted");
        self.publish_updates(&outcome.updated);
        Ok(outcome)
    }

    /// Re-issue, under the signing key's epoch, every device manifest that was
    /// signed under an older one: after `keys rotate`, agents must get their
    /// desired state signed by the new key (generations restart at 1 in the
    /// new epoch). Called at start, before the first republish; returns how many
    /// manifests were re-issued.
    pub async fn reissue_for_current_epoch(self: &Arc<Self>) -> Result<usize, HubError> {
        let reissued = self
            .blocking(|hub| {
                let epoch = hub.signer.epoch();
                let now = now_secs();
                hub.store.write(|tx| {
                    let mut stale = Vec::new();
                    for d in tx.devices()? {
                        if tx.manifest_meta(&d.id)?.is_some_and(|m| m.epoch != epoch) {
                            stale.push((d.id, d.labels));
                        }
                    }
                    if stale.is_empty() {
                        return Ok(0);
                    }
                    let deployments = pinned_deployments(tx)?;
                    let updated = hub.render_into(tx, &stale, &deployments, now)?;
                    audit(
                        tx,
                        now,
                        "hub",
                        "keys.epoch",
                        "*",
                        serde_json::json!({
                            "epoch": epoch,
                            "key_id": hub.signer.key_id().0,
                            "reissued": updated.len(),
                        }),
                    )?;
                    Ok(updated.len())
                })
            })
            .await?;
        if reissued > 0 {
            tracing::info!(
                epoch = self.signer.epoch(),
                reissued,
                "re-signed device manifests under the new signing key"
            );
        }
        Ok(reissued)
    }

    /// Re-issue a device's current desired state with a generation above
    /// `applied`, the generation the device reports having accepted. Used when a
    /// device is ahead of the hub (its database restored from an older backup).
    pub async fn reissue_above(
        self: &Arc<Self>,
        id: DeviceId,
        applied: u64,
    ) -> Result<Option<u64>, HubError> {
        let id2 = id.clone();
        let issued = self
            .blocking(move |hub| {
                let now = now_secs();
                hub.store.write(|tx| {
                    let Some(dev) = tx.device(&id2)? else {
                        return Ok(None);
                    };
                    let epoch = hub.signer.epoch();
                    if tx
                        .manifest_meta(&id2)?
                        .is_some_and(|m| m.epoch != epoch || m.generation > applied)
                    {
                        return Ok(None);
                    }
                    let deployments = pinned_deployments(tx)?;
                    let apps = render::desired_apps(&id2, &dev.labels, &deployments)?;
                    let generation = applied.saturating_add(1);
                    let digest = render::apps_digest(&apps);
                    let (meta, bytes) = hub.seal_one(&id2, epoch, generation, apps, digest, now)?;
                    tx.put_manifests([(&id2, &meta, bytes.as_slice())])?;
                    audit(
                        tx,
                        now,
                        "hub",
                        "manifest.reissue",
                        id2.as_str(),
                        serde_json::json!({
                            "device_applied": applied,
                            "generation": generation,
                        }),
                    )?;
                    Ok(Some(generation))
                })
            })
            .await?;
        if issued.is_some() {
            self.send(Outbox::Manifests(vec![id]));
        }
        Ok(issued)
    }

    /// Build, validate, sign and size-check one manifest.
    fn seal_one(
        &self,
        device: &DeviceId,
        epoch: u64,
        generation: u64,
        apps: Vec<outpost_protocol::AppSpec>,
        apps_digest: outpost_protocol::Digest,
        now: u64,
    ) -> Result<(ManifestMeta, Vec<u8>), HubError> {
        let manifest = Manifest {
            device_id: device.clone(),
            epoch,
            generation,
            issued_at: now,
            key_id: self.signer.key_id(),
            apps,
        };
        manifest.validate().map_err(|e| HubError::InvalidManifest {
            device: device.clone(),
            problem: e.to_string(),
        })?;
        let bytes = self.signer.seal(&manifest)?;
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(HubError::TooLarge {
                device: device.clone(),
                size: bytes.len(),
                limit: MAX_MESSAGE_BYTES,
            });
        }
        let meta = ManifestMeta {
            epoch,
            generation,
            apps_digest,
            issued_at: now,
            apps: manifest.apps.iter().map(|a| a.name.clone()).collect(),
        };
        Ok((meta, bytes))
    }

    fn publish_updates(&self, updated: &[GenerationUpdate]) {
        if !updated.is_empty() {
            self.send(Outbox::Manifests(
                updated.iter().map(|u| u.device.clone()).collect(),
            ));
        }
    }

    /// Render `devices`, and seal and store a new manifest for each whose content
    /// changed. Runs inside the caller's transaction: nothing is stored if any
    /// device fails.
    fn render_into(
        &self,
        tx: &mut Tx,
        devices: &[(DeviceId, BTreeMap<String, String>)],
        deployments: &[Deployment],
        now: u64,
    ) -> Result<Vec<GenerationUpdate>, HubError> {
        // Point lookups, not a table scan: registering one device must not cost
        // O(fleet).
        let mut metas = BTreeMap::new();
        for (id, _) in devices {
            if let Some(m) = tx.manifest_meta(id)? {
                metas.insert(id.to_string(), m);
            }
        }
        let epoch = self.signer.epoch();
        let plan = render::plan(
            devices.iter().map(|(id, l)| (id, l)),
            deployments,
            |id| {
                metas.get(id.as_str()).map(|m| Current {
                    epoch: m.epoch,
                    generation: m.generation,
                    apps_digest: m.apps_digest,
                })
            },
            epoch,
        )?;
        let mut sealed = Vec::with_capacity(plan.len());
        for r in plan {
            let (meta, bytes) =
                self.seal_one(&r.device, epoch, r.generation, r.apps, r.apps_digest, now)?;
            sealed.push((r.device, meta, bytes));
        }
        tx.put_manifests(sealed.iter().map(|(id, m, b)| (id, m, b.as_slice())))?;
        for (id, m, _) in &sealed {
            tracing::debug!(device_id = %id, generation = m.generation, "manifest issued");
        }
        Ok(sealed
            .into_iter()
            .map(|(device, m, _)| GenerationUpdate {
                device,
                generation: m.generation,
            })
            .collect())
    }
}

fn to_render(r: &DeploymentRecord) -> Deployment {
    Deployment {
        name: r.spec.name.clone(),
        selector: r.spec.selector.clone(),
        apps: r.apps.clone(),
    }
}

fn pinned_deployments(tx: &Tx) -> Result<Vec<Deployment>, StoreError> {
    Ok(tx.deployments()?.iter().map(to_render).collect())
}

fn audit(
    tx: &mut Tx,
    now: u64,
    who: &str,
    action: &str,
    target: &str,
    detail: serde_json::Value,
) -> Result<(), StoreError> {
    tx.append_audit(AuditEntry {
        seq: 0,
        at: now,
        who: who.to_string(),
        action: action.to_string(),
        target: target.to_string(),
        detail,
    })
    .map(|_| ())
}
