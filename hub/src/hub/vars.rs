//! Configuration variables as hub operations: change the variables of one
//! scope (only the devices that scope can reach are rendered again, and only
//! those whose apps' effective environment changed get a new manifest), list
//! them, and show a device's effective configuration with where each value
//! comes from. The precedence itself is `crate::vars`.

use super::{all_devices, pinned_deployments, GenerationUpdate, Hub, HubError, Labelled};
use crate::render::{self, AppConfig};
use crate::store::{ScopeVarsRecord, Tx, VarRecord};
use crate::vars::{check_changes, Level, Scope};
use outpost_protocol::DeviceId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// One change to the variables of one scope (`PATCH /v1/config`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigChange {
    #[serde(default)]
    pub scope: Scope,
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub unset: BTreeSet<String>,
}

/// The answer to a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigOutcome {
    pub scope: Scope,
    /// The scope in words (`device pi-01, app api`).
    pub scope_text: String,
    /// Variables whose value changed (set to another value, or unset).
    pub changed: Vec<String>,
    /// Devices that got a new manifest because an app's environment changed.
    pub updated: Vec<GenerationUpdate>,
}

/// One stored variable (`GET /v1/config`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigEntry {
    pub scope: Scope,
    pub scope_text: String,
    pub level: Level,
    pub key: String,
    pub value: String,
    pub updated_at: u64,
    pub updated_by: String,
}

/// A device's effective configuration (`GET /v1/devices/{id}/config`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceConfig {
    pub device: DeviceId,
    pub apps: Vec<AppConfig>,
}

/// Every variable as [`ConfigEntry`] rows, scope by scope.
pub fn entries(records: &[ScopeVarsRecord]) -> Vec<ConfigEntry> {
    records
        .iter()
        .flat_map(|r| {
            r.vars.iter().map(|(k, v)| ConfigEntry {
                scope: r.scope.clone(),
                scope_text: r.scope.to_string(),
                level: r.scope.level(),
                key: k.clone(),
                value: v.value.clone(),
                updated_at: v.updated_at,
                updated_by: v.updated_by.clone(),
            })
        })
        .collect()
}

/// Does `scope` name only what exists: its device, its deployment, and an
/// app some deployment defines? A typo must not store a variable nothing
/// will ever read.
pub(crate) fn check_exists(tx: &Tx, scope: &Scope) -> Result<(), HubError> {
    if let Some(d) = &scope.device {
        let id: DeviceId = d.parse().map_err(|e| {
            HubError::Invalid(crate::deploy::SpecError {
                field: "scope.device".into(),
                problem: format!("{d:?}: {e}"),
            })
        })?;
        if tx.device(&id)?.is_none() {
            return Err(HubError::NotFound {
                what: "device",
                name: d.clone(),
            });
        }
    }
    if let Some(d) = &scope.deployment {
        if !tx.deployments()?.iter().any(|r| &r.spec.name == d) {
            return Err(HubError::NotFound {
                what: "deployment",
                name: d.clone(),
            });
        }
    }
    if let Some(app) = &scope.app {
        let defined = tx
            .deployments()?
            .iter()
            .any(|d| d.spec.apps.iter().any(|a| &a.name == app));
        if !defined {
            return Err(HubError::NotFound {
                what: "app (in any deployment)",
                name: app.clone(),
            });
        }
    }
    Ok(())
}

/// The devices a variable at `scope` can reach: rendering the rest could
/// not change them.
pub(crate) fn reach(tx: &Tx, scope: &Scope) -> Result<Vec<Labelled>, HubError> {
    let all = all_devices(tx)?;
    Ok(match scope.level() {
        Level::Device | Level::DeviceApp => all
            .into_iter()
            .filter(|(id, _)| scope.device.as_deref() == Some(id.as_str()))
            .collect(),
        Level::Selector | Level::SelectorApp => all
            .into_iter()
            .filter(|(_, l)| render::matches(&scope.selector, l))
            .collect(),
        Level::Deployment => {
            // The devices of its revision and, during a rollout, of the one
            // the devices not admitted yet keep.
            let name = scope.deployment.clone().unwrap_or_default();
            let mut selectors = Vec::new();
            if let Some(d) = tx.deployments()?.into_iter().find(|r| r.spec.name == name) {
                selectors.push(d.spec.selector);
            }
            if let Some(p) = tx.rollout(&name)?.and_then(|r| r.previous) {
                selectors.push(p.spec.selector);
            }
            all.into_iter()
                .filter(|(_, l)| selectors.iter().any(|s| render::matches(s, l)))
                .collect()
        }
        Level::Fleet | Level::FleetApp | Level::DeploymentApp => all,
    })
}

impl Hub {
    /// Set and unset variables at one scope, then re-render the devices it
    /// reaches. Unchanged values change nothing (no write, no manifest).
    pub async fn change_config(
        self: &std::sync::Arc<Self>,
        change: ConfigChange,
        who: String,
    ) -> Result<ConfigOutcome, HubError> {
        change.scope.check()?;
        check_changes(&change.set, &change.unset)?;
        self.transact(who.clone(), move |op| {
            let ConfigChange { scope, set, unset } = change;
            if !set.is_empty() {
                check_exists(op.tx, &scope)?;
            }
            let mut rec = op.tx.config_at(&scope)?.unwrap_or(ScopeVarsRecord {
                scope: scope.clone(),
                vars: BTreeMap::new(),
            });
            for k in &unset {
                if !rec.vars.contains_key(k) {
                    return Err(HubError::NotFound {
                        what: "variable",
                        name: format!("{k} at {scope}"),
                    });
                }
            }
            let mut changed = Vec::new();
            for (k, v) in &set {
                if rec.vars.get(k).map(|r| &r.value) != Some(v) {
                    changed.push(k.clone());
                    rec.vars.insert(
                        k.clone(),
                        VarRecord {
                            value: v.clone(),
                            updated_at: op.now,
                            updated_by: who.clone(),
                        },
                    );
                }
            }
            for k in &unset {
                rec.vars.remove(k);
                changed.push(k.clone());
            }
            changed.sort();
            if rec.vars.len() > crate::vars::MAX_VARS_PER_SCOPE {
                return Err(HubError::Invalid(crate::deploy::SpecError {
                    field: "set".into(),
                    problem: format!(
                        "{scope} would hold {} variables; the limit is {}",
                        rec.vars.len(),
                        crate::vars::MAX_VARS_PER_SCOPE
                    ),
                }));
            }
            let scope_text = scope.to_string();
            if changed.is_empty() {
                op.commit = false;
                return Ok(ConfigOutcome {
                    scope,
                    scope_text,
                    changed,
                    updated: vec![],
                });
            }
            op.tx.put_config(&rec)?;
            let devices = reach(op.tx, &scope)?;
            let inputs = pinned_deployments(op.tx)?;
            let updated = op.render(&devices, &inputs)?;
            op.audit(
                "config.change",
                &scope_text,
                serde_json::json!({
                    "scope": scope,
                    "set": set,
                    "unset": unset,
                    "devices": updated.len(),
                }),
            )?;
            tracing::info!(
                scope = %scope_text,
                changed = changed.len(),
                devices = updated.len(),
                "configuration changed"
            );
            Ok(ConfigOutcome {
                scope,
                scope_text,
                changed,
                updated,
            })
        })
        .await
    }

    /// Every stored variable.
    pub fn config(&self) -> Result<Vec<ConfigEntry>, HubError> {
        Ok(entries(&self.store.config()?))
    }

    /// The configuration each app on `id` runs with, and where each value
    /// comes from (what its current manifest was rendered from).
    pub async fn device_config(
        self: &std::sync::Arc<Self>,
        id: DeviceId,
    ) -> Result<DeviceConfig, HubError> {
        let hub = std::sync::Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            // Read transactions only: a view must not queue behind writers.
            let store = &hub.store;
            let Some(dev) = store.device(&id)? else {
                return Err(HubError::NotFound {
                    what: "device",
                    name: id.to_string(),
                });
            };
            let inputs = super::inputs(
                super::render_set(&store.deployments()?, &store.rollouts()?),
                &store.config()?,
                &store.secrets()?,
            );
            let apps = render::explain(&id, &dev.labels, &inputs)?;
            Ok(DeviceConfig { device: id, apps })
        })
        .await
        .map_err(|e| HubError::Internal(format!("store task failed: {e}")))?
    }
}
