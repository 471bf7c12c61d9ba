//! Rollouts wired into the hub: the step that carries out the scheduler's
//! decision inside a store transaction ([`advance`]), the periodic driver
//! `outpost-hub serve` runs ([`drive`]), the operator's pause, resume and
//! abort, and the views `rollout status` reads.
//!
//! What a rollout knows lives in its [`RolloutRecord`] (table `rollouts`):
//! the admitted devices with the release issued to each and its outcome, and
//! the scheduler's state. Everything else (which devices the deployment
//! selects, what each reported last) is read from the store at every step, so
//! a hub restarted mid-rollout continues where it was: the driver's first
//! step after the restart sees the same facts.
//!
//! Devices not admitted render the deployment's previous revision (kept in
//! the record) so their manifests do not change; admitting a device renders
//! it with the new revision (see `render::Staged`). A device's outcome comes
//! from its latest status (`progress::decide`) and, once decided,
//! stays.

pub mod progress;
pub mod view;

use view::RolloutView;

use crate::hub::{all_devices, render_set, GenerationUpdate, Hub, HubError, Labelled, Op};
use crate::render;
use crate::rollout::{next_action, Action, DeviceProgress, Outcome, RolloutPolicy};
use crate::store::{
    AdmittedDevice, DeploymentRecord, RolloutRecord, StatusRecord, Store, StoreError, Tx,
};
use outpost_protocol::DeviceId;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the driver looks at running rollouts. Device reports arrive
/// every 30 s by default, so a second adds no noticeable delay; a step that
/// finds nothing to do commits nothing.
pub const TICK: Duration = Duration::from_secs(1);

/// What one [`advance`] did.
#[derive(Debug, Default)]
pub struct Advanced {
    /// Devices admitted, with the generation each got (if it got a new one).
    pub admitted: Vec<GenerationUpdate>,
    /// Anything stored (outcomes, admissions, a phase change)?
    pub changed: bool,
}

fn policy_of(ro: &RolloutRecord) -> Result<RolloutPolicy, HubError> {
    ro.def.policy().map_err(|e| {
        HubError::Internal(format!(
            "stored rollout of deployment {} has an invalid policy: {e}",
            ro.deployment
        ))
    })
}

fn deployment_in(tx: &Tx, name: &str) -> Result<Option<DeploymentRecord>, StoreError> {
    Ok(tx.deployments()?.into_iter().find(|d| d.spec.name == name))
}

/// The facts one rollout step reads: the devices the deployment selects now
/// (with labels) and the last status of those and of every admitted device.
struct Facts {
    matched: Vec<Labelled>,
    statuses: BTreeMap<String, StatusRecord>,
}

impl Facts {
    fn read(tx: &Tx, dep: &DeploymentRecord, ro: &RolloutRecord) -> Result<Facts, StoreError> {
        let matched: Vec<Labelled> = all_devices(tx)?
            .into_iter()
            .filter(|(_, l)| render::matches(&dep.spec.selector, l))
            .collect();
        let mut statuses = BTreeMap::new();
        for (id, _) in &matched {
            if let Some(s) = tx.status(id)? {
                statuses.insert(id.to_string(), s);
            }
        }
        for id in ro.devices.keys() {
            if statuses.contains_key(id) {
                continue;
            }
            if let Ok(device) = id.parse::<DeviceId>() {
                if let Some(s) = tx.status(&device)? {
                    statuses.insert(id.clone(), s);
                }
            }
        }
        Ok(Facts { matched, statuses })
    }

    fn ids(&self) -> Vec<DeviceId> {
        self.matched.iter().map(|(id, _)| id.clone()).collect()
    }

    fn fleet(&self, ro: &RolloutRecord) -> Vec<DeviceProgress> {
        progress::fleet(ro, &self.ids(), &self.statuses)
    }
}

/// Record the outcomes the admitted devices' latest statuses decide.
fn record_outcomes(
    ro: &mut RolloutRecord,
    statuses: &BTreeMap<String, StatusRecord>,
    now: u64,
) -> bool {
    let mut changed = false;
    for (id, d) in ro.devices.iter_mut() {
        if !matches!(d.outcome, Outcome::Pending { .. }) {
            continue;
        }
        let Some(st) = statuses.get(id) else {
            continue;
        };
        let Some(outcome) = progress::decide(d.issued, &st.report) else {
            continue;
        };
        match &outcome {
            Outcome::Committed => tracing::info!(
                device_id = %id, deployment = %ro.deployment, generation = d.issued.1,
                "rollout: device committed the release"
            ),
            Outcome::Failed { reason } | Outcome::RolledBack { reason } => tracing::warn!(
                device_id = %id, deployment = %ro.deployment, generation = d.issued.1,
                %reason, "rollout: device failed the release"
            ),
            _ => {}
        }
        d.outcome = outcome;
        d.decided_at = Some(now);
        changed = true;
    }
    changed
}

/// One step of deployment `name`'s rollout inside `op`: record the outcomes
/// devices reported, then carry out [`next_action`] until it says wait
/// (admit a wave: render and issue its devices' manifests; pause; complete).
/// A rollout that is not running only gets its outcomes recorded.
pub(crate) fn advance(op: &mut Op, name: &str) -> Result<Advanced, HubError> {
    let mut out = Advanced::default();
    let Some(mut ro) = op.tx.rollout(name)? else {
        return Ok(out);
    };
    if !ro.is_active() {
        return Ok(out);
    }
    let Some(dep) = deployment_in(op.tx, name)? else {
        return Ok(out);
    };
    let policy = policy_of(&ro)?;
    let facts = Facts::read(op.tx, &dep, &ro)?;
    let now = op.now;
    out.changed = record_outcomes(&mut ro, &facts.statuses, now);
    let mut completed = false;
    loop {
        let action = next_action(&ro.state, &facts.fleet(&ro), &policy, now);
        match &action {
            Action::Wait { .. } => break,
            Action::Target { wave, devices } => {
                for id in devices {
                    ro.devices.insert(
                        id.to_string(),
                        AdmittedDevice {
                            wave: *wave,
                            targeted_at: now,
                            issued: (0, 0),
                            outcome: Outcome::Pending { targeted_at: now },
                            decided_at: None,
                        },
                    );
                }
                let mut rollouts = op.tx.rollouts()?;
                rollouts.retain(|r| r.deployment != name);
                rollouts.push(ro.clone());
                let deployments =
                    crate::hub::with_vars(op.tx, render_set(&op.tx.deployments()?, &rollouts))?;
                let labelled: Vec<Labelled> = facts
                    .matched
                    .iter()
                    .filter(|(id, _)| devices.contains(id))
                    .cloned()
                    .collect();
                let updated = op.render(&labelled, &deployments)?;
                for id in devices {
                    let issued = op
                        .tx
                        .manifest_meta(id)?
                        .map_or((0, 0), |m| (m.epoch, m.generation));
                    if let Some(d) = ro.devices.get_mut(id.as_str()) {
                        d.issued = issued;
                    }
                }
                tracing::info!(
                    deployment = %name, revision = ro.revision, wave, devices = devices.len(),
                    "rollout: wave admitted"
                );
                op.audit(
                    "rollout.wave",
                    name,
                    serde_json::json!({
                        "revision": ro.revision,
                        "wave": wave,
                        "devices": devices,
                    }),
                )?;
                out.admitted.extend(updated);
            }
            Action::Pause { reason } => {
                tracing::warn!(deployment = %name, revision = ro.revision, %reason, "rollout paused");
                op.audit(
                    "rollout.pause",
                    name,
                    serde_json::json!({ "revision": ro.revision, "reason": reason.to_string() }),
                )?;
            }
            Action::Complete => {
                tracing::info!(deployment = %name, revision = ro.revision, "rollout completed");
                op.audit(
                    "rollout.complete",
                    name,
                    serde_json::json!({ "revision": ro.revision, "devices": ro.devices.len() }),
                )?;
                completed = true;
            }
        }
        ro.state = ro.state.after(&action, now);
        out.changed = true;
        if !matches!(action, Action::Target { .. }) {
            break;
        }
    }
    if out.changed {
        op.tx.put_rollout(&ro)?;
    }
    if completed {
        // No longer staged: devices the old revision selected and the new one
        // does not lose its apps now (every selected device was admitted).
        let deployments = crate::hub::pinned_deployments(op.tx)?;
        let devices = all_devices(op.tx)?;
        op.render(&devices, &deployments)?;
    }
    Ok(out)
}

/// Run every active rollout one step, in its own transaction (committed only
/// when something changed). Returns how many changed.
pub async fn tick(hub: &Arc<Hub>) -> Result<usize, HubError> {
    let store = hub.store.clone();
    let active: Vec<String> = tokio::task::spawn_blocking(move || store.rollouts())
        .await
        .map_err(|e| HubError::Internal(format!("store task failed: {e}")))??
        .into_iter()
        .filter(RolloutRecord::is_active)
        .map(|r| r.deployment)
        .collect();
    let mut changed = 0;
    for name in active {
        let stepped = hub
            .transact("hub", move |op| {
                let a = advance(op, &name)?;
                op.commit = a.changed;
                Ok(a.changed)
            })
            .await?;
        changed += usize::from(stepped);
    }
    Ok(changed)
}

/// The rollout driver `outpost-hub serve` runs: a step every [`TICK`] until
/// `shutdown`. A failed step is logged and retried at the next tick.
pub async fn drive(hub: Arc<Hub>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        if let Err(e) = tick(&hub).await {
            tracing::error!(error = %e, "rollout step failed; retrying at the next tick");
        }
    }
}

/// An operator's command on a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Pause,
    Resume,
    Abort,
}

impl Command {
    fn verb(self) -> &'static str {
        match self {
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Abort => "abort",
        }
    }
}

fn not_found(name: &str) -> HubError {
    HubError::NotFound {
        what: "rollout of deployment",
        name: name.to_string(),
    }
}

impl Hub {
    /// `rollout pause|resume|abort DEPLOYMENT`, audited as `rollout.<verb>`.
    ///
    /// Abort stops admitting and re-issues the previous release to the
    /// devices already updated: the deployment goes back to its previous
    /// revision's content, as a new revision, so every device that got the
    /// new one gets a new generation with the old apps, and the devices not
    /// yet admitted, which still have the old apps, get nothing new. Aborting
    /// a deployment's first rollout (nothing before it) deletes the
    /// deployment.
    pub async fn rollout_command(
        self: &Arc<Self>,
        name: String,
        cmd: Command,
        who: String,
    ) -> Result<Vec<GenerationUpdate>, HubError> {
        self.transact(who, move |op| {
            let mut ro = op.tx.rollout(&name)?.ok_or_else(|| not_found(&name))?;
            let now = op.now;
            let dep = deployment_in(op.tx, &name)?;
            let mut detail = serde_json::json!({ "revision": ro.revision });
            let mut updated = Vec::new();
            match cmd {
                Command::Pause => ro.state = ro.state.pause()?,
                Command::Resume => {
                    let fleet = match &dep {
                        Some(dep) => {
                            let facts = Facts::read(op.tx, dep, &ro)?;
                            record_outcomes(&mut ro, &facts.statuses, now);
                            facts.fleet(&ro)
                        }
                        None => Vec::new(),
                    };
                    ro.state = ro.state.resume(&fleet, now)?;
                }
                Command::Abort => {
                    let was_active = ro.is_active();
                    ro.state = ro.state.abort()?;
                    if was_active {
                        let current = dep.ok_or_else(|| not_found(&name))?;
                        let revision = current.revision + 1;
                        match &ro.previous {
                            Some(prev) => op.tx.put_deployment(&DeploymentRecord {
                                revision,
                                updated_at: now,
                                ..prev.clone()
                            })?,
                            None => {
                                op.tx.remove_deployment(&name)?;
                            }
                        }
                        op.tx.put_rollout(&ro)?;
                        let deployments = crate::hub::pinned_deployments(op.tx)?;
                        let devices = all_devices(op.tx)?;
                        updated = op.render(&devices, &deployments)?;
                        detail = serde_json::json!({
                            "revision": ro.revision,
                            "restored_revision": ro.previous.as_ref().map(|p| p.revision),
                            "new_revision": ro.previous.as_ref().map(|_| revision),
                            "reissued_devices": updated.len(),
                        });
                        tracing::warn!(
                            deployment = %name, revision = ro.revision, reissued = updated.len(),
                            "rollout aborted; previous release re-issued to updated devices"
                        );
                    }
                }
            }
            op.tx.put_rollout(&ro)?;
            op.audit(&format!("rollout.{}", cmd.verb()), &name, detail)?;
            if cmd == Command::Resume {
                updated.extend(advance(op, &name)?.admitted);
            }
            Ok(updated)
        })
        .await
    }
}

/// The view of deployment `name`'s latest rollout at `now`.
pub fn view(store: &Store, name: &str, now: u64) -> Result<Option<RolloutView>, HubError> {
    let Some(ro) = store.rollout(name)? else {
        return Ok(None);
    };
    Ok(Some(view_of(store, &ro, now)?))
}

/// Views of every deployment's latest rollout, by deployment name.
pub fn views(store: &Store, now: u64) -> Result<Vec<RolloutView>, HubError> {
    store
        .rollouts()?
        .iter()
        .map(|ro| view_of(store, ro, now))
        .collect()
}

fn view_of(store: &Store, ro: &RolloutRecord, now: u64) -> Result<RolloutView, HubError> {
    let policy = policy_of(ro)?;
    // The fleet as the rollout saw it: the deployment's selector now (the
    // previous revision's after an abort that deleted the deployment).
    let selector = store
        .deployment(&ro.deployment)?
        .map(|d| d.spec.selector)
        .or_else(|| ro.previous.as_ref().map(|p| p.spec.selector.clone()))
        .unwrap_or_default();
    let statuses = store.statuses()?;
    let matched: Vec<DeviceId> = store
        .devices()?
        .into_iter()
        .filter(|d| render::matches(&selector, &d.labels))
        .map(|d| d.id)
        .collect();
    let fleet = progress::fleet(ro, &matched, &statuses);
    Ok(RolloutView::build(ro, &fleet, &policy, now))
}
