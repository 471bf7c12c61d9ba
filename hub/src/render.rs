//! Pure rendering: deployments + devices → the apps (and release policy) each
//! device should run, and which devices need a new manifest generation.
//!
//! No I/O and no clock: the store feeds in what it holds, this decides, and the
//! caller signs and persists. A generation is bumped only when the rendered
//! content differs (compared by a digest of its canonical postcard encoding,
//! never by timestamps), so re-applying an unchanged deployment publishes
//! nothing new.
//!
//! A deployment in the middle of a rollout is [`Staged`]: only the devices the
//! rollout admitted render its new revision; every other device renders the
//! revision before it, so its manifest does not change until it is admitted.
//!
//! Every rendered app's environment is its deployment's `env` with the
//! configuration variables it takes applied (`crate::vars`, most specific
//! wins), so a variable's change is a content change of exactly the devices
//! whose apps take it.

use crate::vars::{Place, Vars};
use outpost_protocol::manifest::{ReleasePolicy, MAX_APPS};
use outpost_protocol::{AppSpec, DeviceId, Digest};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A deployment with every image already pinned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub name: String,
    pub selector: BTreeMap<String, String>,
    pub apps: Vec<AppSpec>,
    /// The `[release]` policy; `None`: this deployment does not say.
    pub release: Option<ReleasePolicy>,
    /// App name -> the configuration variables it takes (`config = [...]`).
    pub takes: BTreeMap<String, BTreeSet<String>>,
    /// Set while a rollout of this revision runs.
    pub staged: Option<Staged>,
}

/// Everything rendering reads: the deployments, the variables, and the
/// secrets' versions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    pub deployments: Vec<Deployment>,
    pub vars: Vars,
    /// Secret name -> its version (in decimal) at each scope where a value
    /// is set: a secret resolves to a value by the variables' precedence.
    pub secrets: Vars,
}

impl Inputs {
    /// Deployments without any configuration variable or secret.
    pub fn of(deployments: Vec<Deployment>) -> Inputs {
        Inputs {
            deployments,
            ..Inputs::default()
        }
    }
}

/// A revision being rolled out: who has it, and what the others keep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staged {
    /// Devices the rollout admitted: they render the new revision.
    pub admitted: BTreeSet<DeviceId>,
    /// What devices not admitted render; `None` (a deployment's first
    /// rollout): nothing from this deployment until they are admitted.
    pub previous: Option<Revision>,
}

/// One revision's content as rendering needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    pub selector: BTreeMap<String, String>,
    pub apps: Vec<AppSpec>,
    pub release: Option<ReleasePolicy>,
    pub takes: BTreeMap<String, BTreeSet<String>>,
}

/// What one deployment gives one device: its apps, release policy and the
/// variables each app takes.
type Given<'a> = (
    &'a [AppSpec],
    Option<ReleasePolicy>,
    &'a BTreeMap<String, BTreeSet<String>>,
);

impl Deployment {
    /// What this deployment gives `device`: its apps and release policy, or
    /// `None` when it does not select the device (in the revision the device
    /// is on).
    fn for_device(
        &self,
        device: &DeviceId,
        labels: &BTreeMap<String, String>,
    ) -> Option<Given<'_>> {
        match &self.staged {
            Some(s) if !s.admitted.contains(device) => s
                .previous
                .as_ref()
                .filter(|p| matches(&p.selector, labels))
                .map(|p| (p.apps.as_slice(), p.release, &p.takes)),
            _ => matches(&self.selector, labels).then_some((
                self.apps.as_slice(),
                self.release,
                &self.takes,
            )),
        }
    }
}

/// What one device should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// Sorted by name.
    pub apps: Vec<AppSpec>,
    /// The largest `stable_secs` and the largest `trial_deadline_secs` of the
    /// deployments that give the device apps and say either; the protocol's
    /// defaults when none says. Taking the maximum keeps every deployment's
    /// trial at least as strict as it asked (and stable ≤ deadline holds,
    /// since it holds for each).
    pub release: ReleasePolicy,
}

/// Why rendering refused the set of deployments.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("app {app:?} is defined by both deployment {first:?} and deployment {second:?}, which both select device {device}")]
    AppConflict {
        device: DeviceId,
        app: String,
        first: String,
        second: String,
    },
    #[error("device {device} would get {count} apps; the limit is {MAX_APPS}")]
    TooManyApps { device: DeviceId, count: usize },
}

/// Does `selector` match `labels`? Every selector label must be present and equal.
/// An empty selector matches nothing (the API refuses empty selectors anyway).
pub fn matches(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The apps a device with `labels` should run, sorted by name.
pub fn desired_apps(
    device: &DeviceId,
    labels: &BTreeMap<String, String>,
    inputs: &Inputs,
) -> Result<Vec<AppSpec>, RenderError> {
    desired(device, labels, inputs).map(|d| d.apps)
}

/// One app a device gets: from which deployment, and the variables it takes.
struct Chosen<'a> {
    deployment: &'a str,
    app: &'a AppSpec,
    takes: Option<&'a BTreeSet<String>>,
}

/// The apps the deployments give `device` (by name, conflicts refused) and
/// their release policy.
fn chosen<'a>(
    device: &DeviceId,
    labels: &BTreeMap<String, String>,
    deployments: &'a [Deployment],
) -> Result<(BTreeMap<&'a str, Chosen<'a>>, ReleasePolicy), RenderError> {
    let mut by_name: BTreeMap<&str, Chosen> = BTreeMap::new();
    let mut release: Option<ReleasePolicy> = None;
    for d in deployments {
        let Some((apps, policy, takes)) = d.for_device(device, labels) else {
            continue;
        };
        if let (Some(p), false) = (policy, apps.is_empty()) {
            release = Some(match release {
                None => p,
                Some(r) => ReleasePolicy {
                    stable_secs: r.stable_secs.max(p.stable_secs),
                    trial_deadline_secs: r.trial_deadline_secs.max(p.trial_deadline_secs),
                },
            });
        }
        for app in apps {
            let c = Chosen {
                deployment: &d.name,
                app,
                takes: takes.get(&app.name),
            };
            if let Some(first) = by_name.insert(&app.name, c) {
                return Err(RenderError::AppConflict {
                    device: device.clone(),
                    app: app.name.clone(),
                    first: first.deployment.to_string(),
                    second: d.name.clone(),
                });
            }
        }
    }
    if by_name.len() > MAX_APPS {
        return Err(RenderError::TooManyApps {
            device: device.clone(),
            count: by_name.len(),
        });
    }
    Ok((by_name, release.unwrap_or_default()))
}

impl Chosen<'_> {
    fn place<'b>(
        &'b self,
        device: &'b DeviceId,
        labels: &'b BTreeMap<String, String>,
    ) -> Place<'b> {
        Place {
            device: device.as_str(),
            labels,
            deployment: self.deployment,
            app: &self.app.name,
        }
    }
}

/// The apps and release policy a device with `labels` should run, each app's
/// environment with the variables it takes applied.
pub fn desired(
    device: &DeviceId,
    labels: &BTreeMap<String, String>,
    inputs: &Inputs,
) -> Result<Desired, RenderError> {
    let (by_name, release) = chosen(device, labels, &inputs.deployments)?;
    let none = BTreeSet::new();
    let apps = by_name
        .values()
        .map(|c| {
            let mut app = c.app.clone();
            let at = c.place(device, labels);
            app.env = inputs.vars.env(&at, &c.app.env, c.takes.unwrap_or(&none));
            stamp_secret_versions(&mut app, &at, &inputs.secrets);
            app
        })
        .collect();
    Ok(Desired { apps, release })
}

/// One app's configuration on one device, each value with its source: what
/// `config list --device` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppConfig {
    pub app: String,
    pub deployment: String,
    pub vars: BTreeMap<String, crate::vars::Resolved>,
}

/// Every app's configuration on `device`, with where each value comes from.
pub fn explain(
    device: &DeviceId,
    labels: &BTreeMap<String, String>,
    inputs: &Inputs,
) -> Result<Vec<AppConfig>, RenderError> {
    let (by_name, _) = chosen(device, labels, &inputs.deployments)?;
    let none = BTreeSet::new();
    Ok(by_name
        .values()
        .map(|c| AppConfig {
            app: c.app.name.clone(),
            deployment: c.deployment.to_string(),
            vars: inputs.vars.resolve(
                &c.place(device, labels),
                &c.app.env,
                c.takes.unwrap_or(&none),
            ),
        })
        .collect())
}

/// Set `app`'s secret mounts to the versions of the values that apply at
/// `at` (`secrets`: name -> version per scope, most specific wins); a secret
/// with no value there keeps version 0, which sealing refuses by name. A
/// changed value thus changes the content digest of exactly the devices
/// whose apps mount it and resolve to it, and nothing else.
pub fn stamp_secret_versions(app: &mut AppSpec, at: &Place, secrets: &Vars) {
    if app.secrets.is_empty() {
        return;
    }
    let names: BTreeSet<String> = app.secrets.iter().map(|s| s.name.clone()).collect();
    let got = secrets.resolve(at, &BTreeMap::new(), &names);
    for s in &mut app.secrets {
        s.version = got
            .get(&s.name)
            .and_then(|r| r.value.parse().ok())
            .unwrap_or(0);
    }
}

/// Digest of the canonical encoding of a device's apps.
pub fn apps_digest(apps: &[AppSpec]) -> Digest {
    // postcard of a Vec of plain structs and BTreeMaps is deterministic. The
    // sealed secret blobs (fresh randomness at every seal) are left out, and
    // apps without secrets digest as before the field existed.
    Digest::of(&AppSpec::canonical_list_bytes(apps))
}

/// Digest of everything a manifest carries besides its header: what decides
/// whether a device needs a new generation. With the default release policy
/// it is [`apps_digest`], the digest stored before `[release]` existed, so
/// upgrading the hub issues no new generation to any device.
pub fn content_digest(apps: &[AppSpec], release: &ReleasePolicy) -> Digest {
    if *release == ReleasePolicy::default() {
        return apps_digest(apps);
    }
    // The encoding of the tuple `(apps, release)`: one after the other.
    let mut bytes = AppSpec::canonical_list_bytes(apps);
    bytes.extend_from_slice(&postcard::to_stdvec(release).unwrap_or_default());
    Digest::of(&bytes)
}

/// What a device currently has (persisted by the store).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Current {
    pub epoch: u64,
    pub generation: u64,
    pub apps_digest: Digest,
}

/// The generation a device's next manifest gets, or `None` when its content is
/// unchanged. Generations restart at 1 in a new epoch.
pub fn next_generation(current: Option<&Current>, epoch: u64, digest: &Digest) -> Option<u64> {
    match current {
        Some(c) if c.epoch == epoch && &c.apps_digest == digest => None,
        Some(c) if c.epoch == epoch => Some(c.generation.saturating_add(1)),
        _ => Some(1),
    }
}

/// A device whose manifest must be (re)issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub device: DeviceId,
    pub generation: u64,
    pub apps: Vec<AppSpec>,
    pub release: ReleasePolicy,
    /// [`content_digest`] of `apps` and `release`.
    pub apps_digest: Digest,
}

/// Render every device; return only those whose content changed. O(devices ×
/// deployments); one failure refuses the whole set.
pub fn plan<'a>(
    devices: impl IntoIterator<Item = (&'a DeviceId, &'a BTreeMap<String, String>)>,
    inputs: &Inputs,
    current: impl Fn(&DeviceId) -> Option<Current>,
    epoch: u64,
) -> Result<Vec<Rendered>, RenderError> {
    let mut out = Vec::new();
    for (id, labels) in devices {
        let Desired { apps, release } = desired(id, labels, inputs)?;
        let digest = content_digest(&apps, &release);
        if let Some(generation) = next_generation(current(id).as_ref(), epoch, &digest) {
            out.push(Rendered {
                device: id.clone(),
                generation,
                apps,
                release,
                apps_digest: digest,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::labels;
    use proptest::prelude::*;

    fn app(name: &str, img: u8) -> AppSpec {
        AppSpec::new(
            name,
            format!("reg/{name}@sha256:{}", hex::encode([img; 32]))
                .parse()
                .unwrap(),
        )
    }

    fn dep(name: &str, sel: &[(&str, &str)], apps: Vec<AppSpec>) -> Deployment {
        Deployment {
            name: name.into(),
            selector: labels(sel),
            apps,
            release: None,
            takes: BTreeMap::new(),
            staged: None,
        }
    }

    #[test]
    fn the_release_policy_is_the_maximum_over_deployments_that_give_apps() {
        let id: DeviceId = "d1".parse().unwrap();
        let l = labels(&[("site", "x"), ("role", "gw")]);
        let policy = |stable, deadline| ReleasePolicy {
            stable_secs: stable,
            trial_deadline_secs: deadline,
        };
        let mut a = dep("a", &[("site", "x")], vec![app("web", 1)]);
        let mut b = dep("b", &[("role", "gw")], vec![app("db", 1)]);
        // Nobody says: the protocol's default, and the digest is the apps'.
        let d = desired(&id, &l, &Inputs::of(vec![a.clone(), b.clone()])).unwrap();
        assert_eq!(d.release, ReleasePolicy::default());
        assert_eq!(content_digest(&d.apps, &d.release), apps_digest(&d.apps));
        a.release = Some(policy(60, 200));
        b.release = Some(policy(10, 900));
        let d = desired(&id, &l, &Inputs::of(vec![a.clone(), b.clone()])).unwrap();
        assert_eq!(d.release, policy(60, 900));
        assert_ne!(content_digest(&d.apps, &d.release), apps_digest(&d.apps));
        // A deployment that selects the device but gives it no app does not count.
        b.apps.clear();
        let d = desired(&id, &l, &Inputs::of(vec![a.clone(), b])).unwrap();
        assert_eq!(d.release, policy(60, 200));
        // Not selected: does not count either.
        let d = desired(&id, &labels(&[("role", "gw")]), &Inputs::of(vec![a])).unwrap();
        assert_eq!(d.release, ReleasePolicy::default());
    }

    #[test]
    fn a_staged_deployment_gives_its_new_revision_only_to_admitted_devices() {
        let d1: DeviceId = "d1".parse().unwrap();
        let d2: DeviceId = "d2".parse().unwrap();
        let l = labels(&[("site", "x")]);
        let mut next = dep("a", &[("site", "x")], vec![app("web", 2)]);
        next.staged = Some(Staged {
            admitted: [d1.clone()].into(),
            previous: Some(Revision {
                selector: labels(&[("site", "x")]),
                apps: vec![app("web", 1)],
                release: None,
                takes: BTreeMap::new(),
            }),
        });
        assert_eq!(
            desired_apps(&d1, &l, &Inputs::of(vec![next.clone()])).unwrap(),
            vec![app("web", 2)]
        );
        assert_eq!(
            desired_apps(&d2, &l, &Inputs::of(vec![next.clone()])).unwrap(),
            vec![app("web", 1)]
        );
        // A first rollout: devices not admitted get nothing from it yet.
        if let Some(s) = next.staged.as_mut() {
            s.previous = None;
        }
        assert_eq!(
            desired_apps(&d2, &l, &Inputs::of(vec![next.clone()])).unwrap(),
            vec![]
        );
        assert_eq!(
            desired_apps(&d1, &l, &Inputs::of(vec![next])).unwrap(),
            vec![app("web", 2)]
        );
    }

    #[test]
    fn a_fleet_variable_reaches_only_the_apps_that_take_it() {
        use crate::vars::Scope;
        let devices: Vec<(DeviceId, BTreeMap<String, String>)> = (0..4)
            .map(|i| {
                let site = if i < 2 { "a" } else { "b" };
                (format!("d{i}").parse().unwrap(), labels(&[("site", site)]))
            })
            .collect();
        // Site a runs `takes` (config = ["LOG"]) and `plain`; site b only
        // `plain`. Device d1 overrides LOG for its app.
        let mut a = dep("a", &[("site", "a")], vec![app("takes", 1)]);
        a.takes = BTreeMap::from([("takes".to_string(), BTreeSet::from(["LOG".to_string()]))]);
        let b = dep("b", &[("site", "b")], vec![app("plain", 2)]);
        let c = dep("c", &[("site", "a")], vec![app("plain2", 3)]);
        let vars = |fleet: &str| {
            crate::vars::Vars::new([
                (
                    Scope::fleet(),
                    BTreeMap::from([("LOG".to_string(), fleet.to_string())]),
                ),
                (
                    Scope {
                        device: Some("d1".into()),
                        app: Some("takes".into()),
                        ..Scope::default()
                    },
                    BTreeMap::from([("LOG".to_string(), "trace".to_string())]),
                ),
            ])
        };
        let inputs = |fleet: &str| Inputs {
            deployments: vec![a.clone(), b.clone(), c.clone()],
            vars: vars(fleet),
            secrets: crate::vars::Vars::default(),
        };
        let mut state: BTreeMap<DeviceId, Current> = BTreeMap::new();
        for r in plan(
            devices.iter().map(|(i, l)| (i, l)),
            &inputs("info"),
            |_| None,
            1,
        )
        .unwrap()
        {
            state.insert(
                r.device.clone(),
                Current {
                    epoch: 1,
                    generation: r.generation,
                    apps_digest: r.apps_digest,
                },
            );
        }
        let d0 = &devices[0].0;
        let got = desired(d0, &devices[0].1, &inputs("info")).unwrap();
        let env_of =
            |d: &Desired, name: &str| d.apps.iter().find(|x| x.name == name).unwrap().env.clone();
        assert_eq!(
            env_of(&got, "takes").get("LOG").map(String::as_str),
            Some("info")
        );
        assert!(
            env_of(&got, "plain2").is_empty(),
            "an app that does not take LOG got it"
        );
        let d1 = desired(&devices[1].0, &devices[1].1, &inputs("info")).unwrap();
        assert_eq!(
            env_of(&d1, "takes").get("LOG").map(String::as_str),
            Some("trace")
        );
        // Changing the fleet value: only d0 (its app takes LOG, no override).
        let p = plan(
            devices.iter().map(|(i, l)| (i, l)),
            &inputs("debug"),
            |id| state.get(id).copied(),
            1,
        )
        .unwrap();
        let bumped: Vec<&str> = p.iter().map(|r| r.device.as_str()).collect();
        assert_eq!(bumped, vec!["d0"]);
        // The explanation says where each value comes from.
        let why = explain(&devices[1].0, &devices[1].1, &inputs("debug")).unwrap();
        let takes = why.iter().find(|x| x.app == "takes").unwrap();
        assert_eq!(takes.vars["LOG"].from, "device d1, app takes");
        assert_eq!(takes.deployment, "a");
    }

    #[test]
    fn selector_table() {
        let l = labels(&[("site", "a"), ("role", "gw")]);
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[("site", "a")], true),
            (&[("site", "a"), ("role", "gw")], true),
            (&[("site", "b")], false),
            (&[("site", "a"), ("zone", "1")], false),
            (&[], false),
        ];
        for (sel, want) in cases {
            assert_eq!(matches(&labels(sel), &l), *want, "{sel:?}");
        }
    }

    #[test]
    fn conflicting_app_names_across_deployments_are_refused() {
        let id: DeviceId = "d1".parse().unwrap();
        let deps = vec![
            dep("a", &[("site", "x")], vec![app("web", 1)]),
            dep("b", &[("role", "gw")], vec![app("web", 2)]),
        ];
        let err = desired_apps(
            &id,
            &labels(&[("site", "x"), ("role", "gw")]),
            &Inputs::of(deps.clone()),
        )
        .unwrap_err();
        assert!(matches!(err, RenderError::AppConflict { .. }), "{err}");
        // Only one matches: fine.
        let ok = desired_apps(&id, &labels(&[("site", "x")]), &Inputs::of(deps)).unwrap();
        assert_eq!(ok, vec![app("web", 1)]);
    }

    #[test]
    fn generation_rules() {
        let d1 = apps_digest(&[app("a", 1)]);
        let d2 = apps_digest(&[app("a", 2)]);
        let cur = Current {
            epoch: 1,
            generation: 4,
            apps_digest: d1,
        };
        assert_eq!(next_generation(None, 1, &d1), Some(1));
        assert_eq!(next_generation(Some(&cur), 1, &d1), None);
        assert_eq!(next_generation(Some(&cur), 1, &d2), Some(5));
        assert_eq!(next_generation(Some(&cur), 2, &d1), Some(1));
    }

    proptest! {
        /// Rendering converges: after applying a plan, planning again yields
        /// nothing, and every issued generation is above the previous one.
        #[test]
        fn plan_converges_and_generations_grow(
            dev_labels in proptest::collection::vec(0u8..3, 1..20),
            dep_sel in proptest::collection::vec((0u8..3, 0u8..4), 0..5),
        ) {
            let devices: Vec<(DeviceId, BTreeMap<String, String>)> = dev_labels
                .iter()
                .enumerate()
                .map(|(i, l)| (format!("d{i}").parse().unwrap(), labels(&[("g", &l.to_string())])))
                .collect();
            let deps: Vec<Deployment> = dep_sel
                .iter()
                .enumerate()
                .map(|(i, (g, img))| dep(&format!("dep{i}"), &[("g", &g.to_string())], vec![app(&format!("app{i}"), *img)]))
                .collect();
            let mut state: BTreeMap<DeviceId, Current> = BTreeMap::new();
            for round in 0..2 {
                let p = plan(devices.iter().map(|(i, l)| (i, l)), &Inputs::of(deps.clone()), |id| state.get(id).copied(), 1).unwrap();
                if round == 1 {
                    prop_assert!(p.is_empty());
                }
                for r in p {
                    if let Some(old) = state.get(&r.device) {
                        prop_assert!(r.generation > old.generation);
                    }
                    state.insert(r.device.clone(), Current { epoch: 1, generation: r.generation, apps_digest: r.apps_digest });
                }
            }
            // Changing one deployment's image bumps exactly the devices it selects.
            if let Some(first) = deps.first().cloned() {
                let mut changed = deps.clone();
                changed[0].apps[0].image.digest = Digest([0xee; 32]);
                let p = plan(devices.iter().map(|(i, l)| (i, l)), &Inputs::of(changed), |id| state.get(id).copied(), 1).unwrap();
                let expect = devices.iter().filter(|(_, l)| matches(&first.selector, l)).count();
                prop_assert_eq!(p.len(), expect);
            }
        }
    }

    /// `app` mounting secret `db` at `/run/secrets/db`, version not stamped.
    fn mounting_db(mut app: AppSpec) -> AppSpec {
        app.secrets = vec![outpost_protocol::SecretMount {
            name: "db".into(),
            path: "/run/secrets/db".into(),
            version: 0,
            sealed: Default::default(),
        }];
        app
    }

    #[test]
    fn a_scoped_secret_value_reaches_only_the_devices_it_applies_to() {
        use crate::vars::{Scope, Vars};
        let a = mounting_db(app("web", 1));
        let deps = vec![dep("dep", &[("g", "1")], vec![a])];
        let version = |secrets: &Vars, dev: &str, site: &str| {
            let id: DeviceId = dev.parse().unwrap();
            let inputs = Inputs {
                deployments: deps.clone(),
                vars: Vars::default(),
                secrets: secrets.clone(),
            };
            desired(&id, &labels(&[("g", "1"), ("site", site)]), &inputs)
                .unwrap()
                .apps[0]
                .secrets[0]
                .version
        };
        let v = |n: u64| BTreeMap::from([("db".to_string(), n.to_string())]);
        let secrets = Vars::new([
            (Scope::fleet(), v(1)),
            (
                Scope {
                    selector: labels(&[("site", "b")]),
                    ..Scope::default()
                },
                v(2),
            ),
            (
                Scope {
                    device: Some("d3".into()),
                    ..Scope::default()
                },
                v(3),
            ),
        ]);
        assert_eq!(version(&secrets, "d1", "a"), 1);
        assert_eq!(version(&secrets, "d2", "b"), 2);
        assert_eq!(version(&secrets, "d3", "b"), 3);
        // Only a scoped value: devices outside it have none (version 0,
        // refused by name when sealing).
        let only_b = Vars::new([(
            Scope {
                selector: labels(&[("site", "b")]),
                ..Scope::default()
            },
            v(2),
        )]);
        assert_eq!(version(&only_b, "d1", "a"), 0);
        assert_eq!(version(&only_b, "d2", "b"), 2);
    }

    #[test]
    fn the_digest_follows_secret_versions_not_ciphertext() {
        let a = mounting_db(app("web", 1));
        let other = app("ui", 2);
        let l = labels(&[("site", "x")]);
        let at = Place {
            device: "d1",
            labels: &l,
            deployment: "dep",
            app: "web",
        };
        let versions = |v: u64| {
            crate::vars::Vars::new([(
                crate::vars::Scope::fleet(),
                BTreeMap::from([("db".to_string(), v.to_string())]),
            )])
        };
        let stamp = |apps: &mut Vec<AppSpec>, secrets: &crate::vars::Vars| {
            for a in apps.iter_mut() {
                stamp_secret_versions(a, &at, secrets);
            }
        };
        let mut v1 = vec![a.clone(), other.clone()];
        stamp(&mut v1, &versions(1));
        assert_eq!(v1[0].secrets[0].version, 1);
        let base = content_digest(&v1, &ReleasePolicy::default());
        // A sealed blob (fresh at every seal) does not change the digest.
        let mut sealed = v1.clone();
        sealed[0].secrets[0].sealed = outpost_protocol::SealedSecret {
            enc: vec![7; 32],
            ciphertext: vec![9; 40],
        };
        assert_eq!(content_digest(&sealed, &ReleasePolicy::default()), base);
        // A new version does; an unknown secret renders as version 0.
        let mut v2 = vec![a.clone(), other.clone()];
        stamp(&mut v2, &versions(2));
        assert_ne!(content_digest(&v2, &ReleasePolicy::default()), base);
        let mut none = vec![a, other.clone()];
        stamp(&mut none, &crate::vars::Vars::default());
        assert_eq!(none[0].secrets[0].version, 0);
        // Apps without secrets digest exactly as before the field existed.
        let plain = [other];
        let mut old = postcard::to_stdvec(&1usize).unwrap();
        let mut enc = postcard::to_stdvec(&plain[0]).unwrap();
        assert_eq!(
            enc.pop(),
            Some(0),
            "the empty secrets list is the last byte"
        );
        old.extend_from_slice(&enc);
        assert_eq!(apps_digest(&plain), Digest::of(&old));
    }
}
