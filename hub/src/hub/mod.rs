//! The hub's operations: register devices, apply and delete deployments, and the
//! render → sign → persist → publish pipeline they share.
//!
//! Every operation validates first, then does all its writes in one redb write
//! transaction (so an invalid request changes nothing, and an apply over 10,000
//! devices costs one fsync), and only after the commit hands the affected device
//! ids to the publisher. The publisher reads the bytes back from the store, so
//! whatever it sends is the latest committed manifest (latest wins).

mod broker_certs;
pub mod rollouts;
pub mod secrets;
pub mod vars;

pub use broker_certs::BrokerCert;
pub use secrets::{SecretInfo, SecretOutcome, SecretProblem};
pub use vars::{ConfigChange, ConfigEntry, ConfigOutcome, DeviceConfig};

use crate::admission::{self, AdmissionPolicy, Refused};
use crate::clock::{Clock, SystemClock};
use crate::deploy::{check_label, DeploymentSpec, SpecError};
use crate::outbox::Outbox;
use crate::render::{self, Current, Deployment, Inputs, RenderError, Revision, Staged};
use crate::resolve::{self, ImageResolver, ResolveError};
use crate::rollout::{RolloutState, TransitionError};
use crate::signing::{KeyFileError, Signer};
use crate::store::{
    AuditEntry, DeploymentRecord, DeviceRecord, ManifestMeta, RolloutRecord, Store, StoreError, Tx,
};
use crate::vars::Vars;
use outpost_protocol::manifest::ReleasePolicy;
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
    /// The admission policy does not admit the deployment (HTTP 403).
    #[error(transparent)]
    Refused(#[from] Refused),
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
    #[error(transparent)]
    Conflict(#[from] Conflict),
    /// A rollout command the rollout's phase does not allow (HTTP 409).
    #[error(transparent)]
    Rollout(#[from] TransitionError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] KeyFileError),
    #[error(transparent)]
    BrokerCa(#[from] crate::broker::ca::CaError),
    #[error(transparent)]
    Secret(#[from] SecretProblem),
    #[error("internal error: {0}")]
    Internal(String),
}

/// A request that contradicts what the hub already holds (HTTP 409).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    #[error("device {device} is already registered; remove it first to change its key")]
    DeviceRegistered { device: DeviceId },
    #[error("device {device} appears more than once in the request")]
    DeviceRepeated { device: DeviceId },
    #[error(
        "deployment {deployment} is being rolled out (revision {revision}, {state}); \
         wait for it to complete or `outpost-hub rollout abort {deployment}` before applying a change"
    )]
    RolloutActive {
        deployment: String,
        revision: u64,
        state: String,
    },
}

pub use crate::clock::now_secs;

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
    /// Did this apply start a rollout (`[rollout]`)? Then `updated` holds
    /// only its first wave; the others follow as devices commit.
    #[serde(default)]
    pub rollout_started: bool,
    /// What the operator should know but does not refuse the apply: an app
    /// takes a configuration variable no level sets (it starts without it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
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
    /// The device's X25519 key for secrets (`outpost-agent init` prints it).
    #[serde(default)]
    pub encryption_key: Option<outpost_protocol::EncryptionKey>,
}

/// Shared state behind the API, ingest and publisher.
pub struct Hub {
    pub store: Store,
    pub signer: Signer,
    pub resolver: Arc<dyn ImageResolver>,
    clock: Arc<dyn Clock>,
    /// What deployments may ask for (`[[admission]]` in `hub.toml`); read
    /// once at start, so a change takes a restart.
    policy: AdmissionPolicy,
    outbox: mpsc::UnboundedSender<Outbox>,
    /// Issues and revokes devices' broker certificates (`broker_certs.rs`).
    pub(crate) broker_ca: Option<Arc<crate::broker::ca::BrokerCa>>,
    /// Hub clock (unix seconds) of the last "you are behind" republish per device,
    /// so a device that is slow to apply is not flooded.
    pub(crate) republished: Mutex<HashMap<DeviceId, u64>>,
    /// How long a manifest is valid (`[freshness] manifest_valid_secs`).
    manifest_valid_secs: u64,
    /// Log streams waiting for device chunks (`logs.rs`).
    pub logs: crate::logs::LogStreams,
    /// Encrypts secret values at rest (`secrets.key` in the data dir);
    /// `None`: this hub stores no secrets.
    pub(crate) secret_key: Option<Arc<crate::secrets::SecretKey>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("signer", &self.signer).finish()
    }
}

/// A device and its labels, as rendering reads them.
pub(crate) type Labelled = (DeviceId, BTreeMap<String, String>);

/// What a committed operation hands to the publisher.
#[derive(Debug, Default)]
pub(crate) struct Publish {
    pub(crate) manifests: Vec<DeviceId>,
    pub(crate) watermarks: Vec<DeviceId>,
    pub(crate) cleared: Vec<DeviceId>,
}

/// One operation's view inside its write transaction: the transaction, the
/// operation's instant and author, and what to publish once it commits.
pub(crate) struct Op<'a> {
    pub(crate) hub: &'a Hub,
    pub(crate) tx: &'a mut Tx,
    pub(crate) now: u64,
    pub(crate) who: &'a str,
    pub(crate) publish: Publish,
    /// Cleared by an operation that found nothing to change: the transaction
    /// is then aborted (no fsync) and nothing is published.
    pub(crate) commit: bool,
}

impl Op<'_> {
    /// Append this operation's audit entry.
    pub(crate) fn audit(
        &mut self,
        action: &str,
        target: &str,
        detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        self.tx
            .append_audit(AuditEntry {
                seq: 0,
                at: self.now,
                who: self.who.to_string(),
                action: action.to_string(),
                target: target.to_string(),
                detail,
            })
            .map(|_| ())
    }

    /// Render `devices` against `deployments`, store a new manifest for each
    /// whose content changed, and publish those after the commit.
    pub(crate) fn render(
        &mut self,
        devices: &[Labelled],
        deployments: &Inputs,
    ) -> Result<Vec<GenerationUpdate>, HubError> {
        let updated = self
            .hub
            .render_into(self.tx, devices, deployments, self.now)?;
        self.publish
            .manifests
            .extend(updated.iter().map(|u| u.device.clone()));
        Ok(updated)
    }
}

impl Hub {
    /// A hub on the system clock.
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
            clock: Arc::new(SystemClock),
            policy: AdmissionPolicy::default(),
            outbox,
            broker_ca: None,
            republished: Mutex::new(HashMap::new()),
            manifest_valid_secs: crate::config::FreshnessConfig::default().manifest_valid_secs,
            logs: crate::logs::LogStreams::default(),
            secret_key: None,
        }
    }

    /// The same hub storing secret values encrypted under `key`.
    pub fn with_secret_key(mut self, key: crate::secrets::SecretKey) -> Hub {
        self.secret_key = Some(Arc::new(key));
        self
    }

    /// The same hub issuing manifests valid for `secs`.
    pub fn with_manifest_validity(mut self, secs: u64) -> Hub {
        self.manifest_valid_secs = secs.max(1);
        self
    }

    /// The same hub on another clock (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Hub {
        self.clock = clock;
        self
    }

    /// The same hub under another admission policy (the default is the
    /// built-in deny list alone).
    pub fn with_policy(mut self, policy: AdmissionPolicy) -> Hub {
        self.policy = policy;
        self
    }

    /// Unix seconds now, on the hub's clock.
    pub fn now(&self) -> u64 {
        self.clock.now_secs()
    }

    pub(crate) fn send(&self, msg: Outbox) {
        // Only fails when the publisher stopped, i.e. during shutdown.
        if self.outbox.send(msg).is_err() {
            tracing::debug!("publisher stopped; message dropped");
        }
    }

    /// The skeleton every operation shares: off the async threads, read the
    /// clock once, run `f` in one write transaction (nothing is stored if it
    /// fails), and only after the commit hand what it touched to the publisher.
    pub(crate) async fn transact<T: Send + 'static>(
        self: &Arc<Self>,
        who: impl Into<String>,
        f: impl FnOnce(&mut Op) -> Result<T, HubError> + Send + 'static,
    ) -> Result<T, HubError> {
        let hub = Arc::clone(self);
        let who = who.into();
        let (value, publish) = tokio::task::spawn_blocking(move || {
            let now = hub.now();
            hub.store.write_if(|tx| {
                let mut op = Op {
                    hub: &hub,
                    tx,
                    now,
                    who: &who,
                    publish: Publish::default(),
                    commit: true,
                };
                let value = f(&mut op)?;
                let publish = if op.commit {
                    op.publish
                } else {
                    Publish::default()
                };
                Ok::<_, HubError>(((value, publish), op.commit))
            })
        })
        .await
        .map_err(|e| HubError::Internal(format!("store task failed: {e}")))??;
        for id in publish.cleared {
            self.send(Outbox::Clear(id));
        }
        if !publish.manifests.is_empty() {
            self.send(Outbox::Manifests(publish.manifests));
        }
        if !publish.watermarks.is_empty() {
            self.send(Outbox::Watermarks(publish.watermarks));
        }
        Ok(value)
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
                    encryption_key: None,
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
            .transact(who, move |op| {
                let mut recs = Vec::with_capacity(new.len());
                let mut seen = std::collections::BTreeSet::new();
                for d in new {
                    if !seen.insert(d.id.clone()) {
                        return Err(Conflict::DeviceRepeated { device: d.id }.into());
                    }
                    if op.tx.device(&d.id)?.is_some() {
                        return Err(Conflict::DeviceRegistered { device: d.id }.into());
                    }
                    let rec = DeviceRecord {
                        id: d.id,
                        public_key: d.public_key,
                        labels: d.labels,
                        registered_at: op.now,
                        encryption_key: d.encryption_key,
                    };
                    op.tx.put_device(&rec)?;
                    op.audit(
                        "device.add",
                        rec.id.as_str(),
                        serde_json::json!({
                            "public_key": rec.public_key.to_string(),
                            "encryption_key": rec.encryption_key.map(|k| k.to_string()),
                            "labels": rec.labels,
                        }),
                    )?;
                    recs.push(rec);
                }
                let deployments = pinned_deployments(op.tx)?;
                let only: Vec<_> = recs
                    .iter()
                    .map(|r| (r.id.clone(), r.labels.clone()))
                    .collect();
                op.render(&only, &deployments)?;
                // Publish whatever each has now (new or, for a re-added
                // device, its old one), and its event watermark, so the
                // device learns the hub's session.
                op.publish.manifests = recs.iter().map(|r| r.id.clone()).collect();
                op.publish.watermarks = op.publish.manifests.clone();
                Ok(recs)
            })
            .await?;
        for rec in &recs {
            tracing::info!(device_id = %rec.id, "device registered");
        }
        Ok(recs)
    }

    pub async fn remove_device(
        self: &Arc<Self>,
        id: DeviceId,
        who: String,
    ) -> Result<(), HubError> {
        // Revoked first: a removal that fails after this leaves a device
        // still registered whose certificate is revoked, which a retried
        // removal completes; never a removed device with a valid one.
        let revoked = self.revoke_broker_certs(&id).await?;
        let id2 = id.clone();
        self.transact(who, move |op| {
            if !op.tx.remove_device(&id2)? {
                return Err(HubError::NotFound {
                    what: "device",
                    name: id2.to_string(),
                });
            }
            // Its own variables and secret values go with it: a device
            // re-added later starts from the fleet's, as a new one would.
            let mine = |s: &crate::vars::Scope| s.device.as_deref() == Some(id2.as_str());
            let vars = op.tx.remove_config_where(mine)?;
            let secrets = op.tx.remove_secrets_where(mine)?;
            let detail = if vars.is_empty() && secrets.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::json!({
                    "config_removed": vars.iter().map(|r| r.scope.to_string()).collect::<Vec<_>>(),
                    "secret_values_removed": secrets.iter().map(|r| format!("{} ({})", r.name, r.scope)).collect::<Vec<_>>(),
                })
            };
            op.audit("device.remove", id2.as_str(), detail)?;
            op.publish.cleared.push(id2);
            Ok(())
        })
        .await?;
        tracing::info!(device_id = %id, "device removed");
        if !revoked.is_empty() {
            self.after_revocation().await?;
        }
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
        self.transact(who, move |op| {
            let mut rec = op.tx.device(&id)?.ok_or_else(|| HubError::NotFound {
                what: "device",
                name: id.to_string(),
            })?;
            for (k, v) in &changes {
                match v {
                    Some(v) => rec.labels.insert(k.clone(), v.clone()),
                    None => rec.labels.remove(k),
                };
            }
            op.tx.put_device(&rec)?;
            let deployments = pinned_deployments(op.tx)?;
            let only = [(rec.id.clone(), rec.labels.clone())];
            let updated = op.render(&only, &deployments)?;
            op.audit("device.label", id.as_str(), serde_json::json!(changes))?;
            Ok((rec, updated.first().map(|u| u.generation)))
        })
        .await
    }

    /// Validate, pin images, render all devices, persist, then publish.
    pub async fn apply(
        self: &Arc<Self>,
        spec: DeploymentSpec,
        who: String,
    ) -> Result<ApplyOutcome, HubError> {
        spec.check()?;
        // Before any registry round trip or write: a refused apply changes
        // nothing but the audit log.
        if let Err(refusals) = admission::admit(&spec, &self.policy) {
            return Err(self.refuse(spec, refusals, who).await);
        }
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
            .transact(who, move |op| {
                check_secrets_exist(op.tx, &apps)?;
                let mut records = op.tx.deployments()?;
                let old = records.iter().position(|r| r.spec.name == spec.name);
                let old_rec = old.map(|i| records[i].clone());
                // Content: what the devices get. A selector change alone is
                // applied at once (nobody's content changes).
                let content_changed = old_rec
                    .as_ref()
                    .is_none_or(|r| r.apps != apps || r.spec.release != spec.release);
                let (revision, changed) = match &old_rec {
                    Some(r) if !content_changed && r.spec.selector == spec.selector => {
                        (r.revision, false)
                    }
                    Some(r) => (r.revision + 1, true),
                    None => (1, true),
                };
                if changed {
                    if let Some(ro) = op.tx.rollout(&spec.name)?.filter(|r| r.is_active()) {
                        return Err(Conflict::RolloutActive {
                            deployment: spec.name.clone(),
                            revision: ro.revision,
                            state: ro.state.phase.to_string(),
                        }
                        .into());
                    }
                }
                let rec = DeploymentRecord {
                    spec: spec.clone(),
                    apps,
                    revision,
                    updated_at: op.now,
                };
                match old {
                    Some(i) => records[i] = rec.clone(),
                    None => records.push(rec.clone()),
                }
                op.tx.put_deployment(&rec)?;
                let rollout_started = content_changed && spec.rollout.is_some();
                if rollout_started {
                    let ro = RolloutRecord {
                        deployment: spec.name.clone(),
                        revision,
                        previous: old_rec,
                        def: spec.rollout.clone().unwrap_or_default(),
                        state: RolloutState::new(format!("{}@{revision}", spec.name), op.now),
                        started_at: op.now,
                        devices: BTreeMap::new(),
                    };
                    op.tx.put_rollout(&ro)?;
                }
                let deployments = with_vars(op.tx, render_set(&records, &op.tx.rollouts()?))?;
                let devices = all_devices(op.tx)?;
                let matched = devices
                    .iter()
                    .filter(|(_, l)| render::matches(&spec.selector, l))
                    .count();
                let mut updated = op.render(&devices, &deployments)?;
                if changed || !updated.is_empty() {
                    op.audit(
                        "deployment.apply",
                        &spec.name,
                        serde_json::json!({
                            "revision": revision,
                            "spec": spec,
                            "updated_devices": updated.len(),
                            "rollout_started": rollout_started,
                        }),
                    )?;
                }
                if rollout_started {
                    // The first wave (canary) goes out with the apply.
                    updated.extend(rollouts::advance(op, &spec.name)?.admitted);
                }
                let sets: Vec<(crate::vars::Scope, crate::vars::Values)> = op
                    .tx
                    .config()?
                    .iter()
                    .map(|r| (r.scope.clone(), r.values()))
                    .collect();
                let warnings = spec
                    .apps
                    .iter()
                    .flat_map(|a| {
                        crate::vars::never_set(&spec.name, &a.name, &a.config, &a.env, &sets)
                            .into_iter()
                            .map(|k| {
                                format!(
                                    "app {:?} takes {k:?}, which no level sets: it starts \
                                     without it until `outpost-hub config set {k}=...`",
                                    a.name
                                )
                            })
                            .collect::<Vec<_>>()
                    })
                    .collect();
                Ok(ApplyOutcome {
                    name: spec.name.clone(),
                    revision,
                    changed,
                    matched_devices: matched,
                    updated,
                    rollout_started,
                    warnings,
                })
            })
            .await?;
        tracing::info!(
            deployment = %outcome.name,
            revision = outcome.revision,
            updated = outcome.updated.len(),
            "deployment applied"
        );
        Ok(outcome)
    }

    /// Record a refused apply in the audit log (its own transaction, which
    /// writes nothing else and publishes nothing) and return the refusal.
    async fn refuse(
        self: &Arc<Self>,
        spec: DeploymentSpec,
        refusals: Vec<admission::Refusal>,
        who: String,
    ) -> HubError {
        for r in &refusals {
            tracing::warn!(deployment = %spec.name, field = %r.field, problem = %r.problem, rule = %r.rule, "deployment refused by the admission policy");
        }
        let detail = serde_json::json!({ "refusals": refusals, "spec": spec });
        let name = spec.name.clone();
        let audited = self
            .transact(who, move |op| {
                op.audit("deployment.refused", &name, detail)?;
                Ok(())
            })
            .await;
        match audited {
            Ok(()) => Refused(refusals).into(),
            // The refusal stands; failing to record it is the bigger news.
            Err(e) => e,
        }
    }

    pub async fn delete_deployment(
        self: &Arc<Self>,
        name: String,
        who: String,
    ) -> Result<ApplyOutcome, HubError> {
        let outcome = self
            .transact(who, move |op| {
                let records = op.tx.deployments()?;
                let Some(old) = records.iter().find(|r| r.spec.name == name).cloned() else {
                    return Err(HubError::NotFound {
                        what: "deployment",
                        name,
                    });
                };
                op.tx.remove_deployment(&name)?;
                // Its rollout goes with it: nothing is left to roll out.
                op.tx.remove_rollout(&name)?;
                // And its variables and secret values: they named only this
                // deployment.
                let ours = |s: &crate::vars::Scope| s.deployment.as_deref() == Some(name.as_str());
                op.tx.remove_config_where(ours)?;
                op.tx.remove_secrets_where(ours)?;
                let remaining: Vec<DeploymentRecord> = records
                    .iter()
                    .filter(|r| r.spec.name != name)
                    .cloned()
                    .collect();
                let deployments = with_vars(op.tx, render_set(&remaining, &op.tx.rollouts()?))?;
                let devices = all_devices(op.tx)?;
                let matched = devices
                    .iter()
                    .filter(|(_, l)| render::matches(&old.spec.selector, l))
                    .count();
                let updated = op.render(&devices, &deployments)?;
                op.audit(
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
                    rollout_started: false,
                    warnings: vec![],
                })
            })
            .await?;
        tracing::info!(deployment = %outcome.name, updated = outcome.updated.len(), "deployment deleted");
        Ok(outcome)
    }

    /// Re-issue, under the signing key's epoch, every device manifest that was
    /// signed under an older one: after `keys rotate`, agents must get their
    /// desired state signed by the new key (generations restart at 1 in the
    /// new epoch). Called at start, before the first republish; returns how many
    /// manifests were re-issued.
    pub async fn reissue_for_current_epoch(self: &Arc<Self>) -> Result<usize, HubError> {
        let reissued = self
            .transact("hub", |op| {
                let epoch = op.hub.signer.epoch();
                let mut stale = Vec::new();
                for d in op.tx.devices()? {
                    if op
                        .tx
                        .manifest_meta(&d.id)?
                        .is_some_and(|m| m.epoch != epoch)
                    {
                        stale.push((d.id, d.labels));
                    }
                }
                if stale.is_empty() {
                    return Ok(0);
                }
                let deployments = pinned_deployments(op.tx)?;
                let updated = op.render(&stale, &deployments)?;
                // Not published here: the caller republishes everything next.
                op.publish.manifests.clear();
                op.audit(
                    "keys.epoch",
                    "*",
                    serde_json::json!({
                        "epoch": epoch,
                        "key_id": op.hub.signer.key_id().0,
                        "reissued": updated.len(),
                    }),
                )?;
                Ok(updated.len())
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

    /// Re-issue, with a new generation and a fresh expiry, every manifest past
    /// half its validity (at most `limit` per call, the soonest to expire
    /// first, so renewing a large fleet is spread over several calls).
    /// Returns how many were re-issued. Called by the heartbeat task.
    pub async fn renew_expiring(self: &Arc<Self>, limit: usize) -> Result<usize, HubError> {
        let renewed = self
            .transact("hub", move |op| {
                let half = op.hub.manifest_valid_secs / 2;
                let epoch = op.hub.signer.epoch();
                let mut due = Vec::new();
                for d in op.tx.devices()? {
                    if let Some(m) = op.tx.manifest_meta(&d.id)? {
                        if m.epoch == epoch && m.expires_at.saturating_sub(half) <= op.now {
                            due.push((m.expires_at, d.id, d.labels, m.generation));
                        }
                    }
                }
                due.sort_by_key(|(exp, ..)| *exp);
                due.truncate(limit);
                if due.is_empty() {
                    return Ok(0);
                }
                let deployments = pinned_deployments(op.tx)?;
                let mut sealed = Vec::with_capacity(due.len());
                for (_, id, labels, generation) in &due {
                    let desired = render::desired(id, labels, &deployments)?;
                    let digest = render::content_digest(&desired.apps, &desired.release);
                    let (meta, bytes) = op.hub.seal_one(
                        op.tx,
                        id,
                        (epoch, generation.saturating_add(1)),
                        (desired.apps, desired.release),
                        digest,
                        op.now,
                    )?;
                    sealed.push((id.clone(), meta, bytes));
                }
                op.tx
                    .put_manifests(sealed.iter().map(|(id, m, b)| (id, m, b.as_slice())))?;
                op.publish
                    .manifests
                    .extend(sealed.iter().map(|(id, ..)| id.clone()));
                op.audit(
                    "manifest.renew",
                    "*",
                    serde_json::json!({ "renewed": sealed.len() }),
                )?;
                Ok(sealed.len())
            })
            .await?;
        if renewed > 0 {
            tracing::info!(renewed, "re-issued manifests past half their validity");
        }
        Ok(renewed)
    }

    /// Re-issue a device's current desired state with a generation above
    /// `applied`, the generation the device reports having accepted. Used when a
    /// device is ahead of the hub (its database restored from an older backup).
    pub async fn reissue_above(
        self: &Arc<Self>,
        id: DeviceId,
        applied: u64,
    ) -> Result<Option<u64>, HubError> {
        self.transact("hub", move |op| {
            let Some(dev) = op.tx.device(&id)? else {
                return Ok(None);
            };
            let epoch = op.hub.signer.epoch();
            if op
                .tx
                .manifest_meta(&id)?
                .is_some_and(|m| m.epoch != epoch || m.generation > applied)
            {
                return Ok(None);
            }
            let deployments = pinned_deployments(op.tx)?;
            let desired = render::desired(&id, &dev.labels, &deployments)?;
            let generation = applied.saturating_add(1);
            let digest = render::content_digest(&desired.apps, &desired.release);
            let (meta, bytes) = op.hub.seal_one(
                op.tx,
                &id,
                (epoch, generation),
                (desired.apps, desired.release),
                digest,
                op.now,
            )?;
            op.tx.put_manifests([(&id, &meta, bytes.as_slice())])?;
            op.audit(
                "manifest.reissue",
                id.as_str(),
                serde_json::json!({
                    "device_applied": applied,
                    "generation": generation,
                }),
            )?;
            op.publish.manifests.push(id);
            Ok(Some(generation))
        })
        .await
    }

    /// Build, validate, sign and size-check one manifest.
    fn seal_one(
        &self,
        tx: &Tx,
        device: &DeviceId,
        (epoch, generation): (u64, u64),
        (apps, release): (Vec<outpost_protocol::AppSpec>, ReleasePolicy),
        apps_digest: outpost_protocol::Digest,
        now: u64,
    ) -> Result<(ManifestMeta, Vec<u8>), HubError> {
        let apps = self.seal_secrets(tx, device, apps)?;
        let manifest = Manifest {
            device_id: device.clone(),
            epoch,
            generation,
            issued_at: now,
            key_id: self.signer.key_id(),
            apps,
            release,
            expires_at: now.saturating_add(self.manifest_valid_secs),
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
            expires_at: manifest.expires_at,
        };
        Ok((meta, bytes))
    }

    /// Render `devices`, and seal and store a new manifest for each whose content
    /// changed. Runs inside the caller's transaction: nothing is stored if any
    /// device fails.
    fn render_into(
        &self,
        tx: &mut Tx,
        devices: &[Labelled],
        deployments: &Inputs,
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
            let (meta, bytes) = self.seal_one(
                tx,
                &r.device,
                (epoch, r.generation),
                (r.apps, r.release),
                r.apps_digest,
                now,
            )?;
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

/// One revision's content as rendering reads it. The `[release]` table was
/// checked when the deployment was applied; a record that somehow holds a bad
/// one renders with the defaults rather than failing every operation.
fn revision_of(r: &DeploymentRecord) -> Revision {
    Revision {
        selector: r.spec.selector.clone(),
        apps: r.apps.clone(),
        release: r.spec.release_policy().ok().flatten(),
        takes: r
            .spec
            .apps
            .iter()
            .filter(|a| !a.config.is_empty())
            .map(|a| (a.name.clone(), a.config.iter().cloned().collect()))
            .collect(),
    }
}

/// The deployments as rendering reads them: each with its release policy and,
/// while its rollout runs (or is paused), staged: only admitted devices get
/// the new revision.
pub(crate) fn render_set(
    records: &[DeploymentRecord],
    rollouts: &[RolloutRecord],
) -> Vec<Deployment> {
    records
        .iter()
        .map(|r| {
            let staged = rollouts
                .iter()
                .find(|ro| {
                    ro.deployment == r.spec.name && ro.revision == r.revision && ro.is_active()
                })
                .map(|ro| Staged {
                    admitted: ro.devices.keys().filter_map(|id| id.parse().ok()).collect(),
                    previous: ro.previous.as_ref().map(revision_of),
                });
            let Revision {
                selector,
                apps,
                release,
                takes,
            } = revision_of(r);
            Deployment {
                name: r.spec.name.clone(),
                selector,
                apps,
                release,
                takes,
                staged,
            }
        })
        .collect()
}

/// What rendering reads now: the stored deployments (staged by their
/// rollouts) and the configuration variables.
pub(crate) fn pinned_deployments(tx: &Tx) -> Result<Inputs, StoreError> {
    with_vars(tx, render_set(&tx.deployments()?, &tx.rollouts()?))
}

/// `deployments` with the stored configuration variables and secret
/// versions.
pub(crate) fn with_vars(tx: &Tx, deployments: Vec<Deployment>) -> Result<Inputs, StoreError> {
    Ok(inputs(deployments, &tx.config()?, &tx.secrets()?))
}

/// Rendering's inputs from what the store holds.
pub(crate) fn inputs(
    deployments: Vec<Deployment>,
    config: &[crate::store::ScopeVarsRecord],
    secrets: &[crate::store::SecretRecord],
) -> Inputs {
    let mut versions: BTreeMap<crate::vars::Scope, crate::vars::Values> = BTreeMap::new();
    for s in secrets {
        versions
            .entry(s.scope.clone())
            .or_default()
            .insert(s.name.clone(), s.version.to_string());
    }
    Inputs {
        deployments,
        vars: Vars::new(config.iter().map(|r| (r.scope.clone(), r.values()))),
        secrets: Vars::new(versions),
    }
}

/// Every registered device with its labels, the input of a fleet-wide render.
pub(crate) fn all_devices(tx: &Tx) -> Result<Vec<Labelled>, StoreError> {
    Ok(tx
        .devices()?
        .into_iter()
        .map(|d| (d.id, d.labels))
        .collect())
}

/// Every secret the apps mount is set on the hub; else the field of the first
/// that is not (an apply must not store what no device could receive).
fn check_secrets_exist(tx: &Tx, apps: &[outpost_protocol::AppSpec]) -> Result<(), HubError> {
    for (i, app) in apps.iter().enumerate() {
        for (j, s) in app.secrets.iter().enumerate() {
            if tx.secret_values(&s.name)?.is_empty() {
                return Err(SpecError {
                    field: format!("apps[{i}].secrets[{j}].name"),
                    problem: format!(
                        "secret {:?} is not set; `outpost-hub secret set {} --from-file FILE` first",
                        s.name, s.name
                    ),
                }
                .into());
            }
        }
    }
    Ok(())
}
