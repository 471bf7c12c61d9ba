//! Configuration variables: where an operator sets them (a [`Scope`]), and
//! the one precedence rule deciding which value an app on a device gets
//! ([`Vars::resolve`]). Pure: rendering (`crate::render`) calls it for every
//! app it renders; `hub::vars` stores and changes the variables.
//!
//! Levels, least to most specific (a more specific level wins):
//!
//! | level            | set with                                         |
//! |------------------|--------------------------------------------------|
//! | fleet            | `config set KEY=V`                               |
//! | fleet, app       | `config set --app APP KEY=V`                     |
//! | selector         | `config set --selector K=V KEY=V`                |
//! | selector, app    | `config set --selector K=V --app APP KEY=V`      |
//! | deployment       | `config set --deployment NAME KEY=V`             |
//! | deployment, app  | the app's `env` table in the deployment file     |
//! | device           | `config set --device ID KEY=V`                   |
//! | device, app      | `config set --device ID --app APP KEY=V`         |
//!
//! An app takes a variable when its deployment says so (`config = [...]` or
//! a key of its `env`) or when it is set for that app by name (an `--app`
//! level); once taken, every level setting it competes. A variable set for
//! the whole fleet does not land in every container, so changing it restarts
//! only the apps that take it. Among
//! several selectors matching one device, the one with more labels is more
//! specific; between selectors with as many labels, the one whose text sorts
//! last wins (deterministic, and `config list --device` shows the winner).

use crate::deploy::{check_label, check_var_name, check_var_value, is_dns_label, SpecError};
use crate::scope::covers;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Variable name -> value.
pub type Values = BTreeMap<String, String>;

/// Variables one scope may hold: a bound on the store record and on what a
/// single command can add.
pub const MAX_VARS_PER_SCOPE: usize = 256;

/// Where variables are set: the whole fleet, the devices a selector matches,
/// the devices a deployment gives apps to, or one device; optionally narrowed
/// to one app. At most one of `device`, `selector`, `deployment`.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
}

/// How specific a value is; a later variant wins over an earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Level {
    Fleet,
    FleetApp,
    Selector,
    SelectorApp,
    Deployment,
    /// The app's `env` table in its deployment file.
    DeploymentApp,
    Device,
    DeviceApp,
}

impl Level {
    pub const ALL: [Level; 8] = [
        Level::Fleet,
        Level::FleetApp,
        Level::Selector,
        Level::SelectorApp,
        Level::Deployment,
        Level::DeploymentApp,
        Level::Device,
        Level::DeviceApp,
    ];

    /// Does this level name one app (its values reach that app whatever the
    /// app's deployment lists)?
    pub fn is_app(self) -> bool {
        matches!(
            self,
            Level::FleetApp | Level::SelectorApp | Level::DeploymentApp | Level::DeviceApp
        )
    }
}

impl Scope {
    /// The whole fleet.
    pub fn fleet() -> Scope {
        Scope::default()
    }

    /// Check names and shape; the scope's level when it is well formed.
    pub fn check(&self) -> Result<Level, SpecError> {
        let bad = |field: &str, problem: String| SpecError {
            field: field.into(),
            problem,
        };
        let targets = usize::from(self.device.is_some())
            + usize::from(!self.selector.is_empty())
            + usize::from(self.deployment.is_some());
        if targets > 1 {
            return Err(bad(
                "scope",
                "give at most one of device, selector and deployment".into(),
            ));
        }
        if let Some(app) = &self.app {
            if !is_dns_label(app) {
                return Err(bad(
                    "scope.app",
                    format!(
                        "{app:?} must be 1-63 lowercase letters, digits or '-', not starting or ending with '-'"
                    ),
                ));
            }
        }
        if let Some(device) = &self.device {
            device
                .parse::<outpost_protocol::DeviceId>()
                .map_err(|e| bad("scope.device", format!("{device:?}: {e}")))?;
        }
        for (k, v) in &self.selector {
            check_label("scope.selector", k, v)?;
        }
        if let Some(d) = &self.deployment {
            if !is_dns_label(d) {
                return Err(bad(
                    "scope.deployment",
                    format!("{d:?} is not a deployment name"),
                ));
            }
            if let Some(app) = &self.app {
                return Err(bad(
                    "scope.app",
                    format!(
                        "app {app:?} of deployment {d:?} takes its values from the `env` table \
                         in that deployment's file; change them there and apply it"
                    ),
                ));
            }
        }
        Ok(self.level())
    }

    /// The scope's level (the shape [`Scope::check`] accepts).
    pub fn level(&self) -> Level {
        let app = self.app.is_some();
        match (&self.device, self.selector.is_empty(), &self.deployment) {
            (Some(_), ..) if app => Level::DeviceApp,
            (Some(_), ..) => Level::Device,
            (None, false, _) if app => Level::SelectorApp,
            (None, false, _) => Level::Selector,
            (None, true, Some(_)) => Level::Deployment,
            _ if app => Level::FleetApp,
            _ => Level::Fleet,
        }
    }

    /// The store's key: the canonical JSON of the scope (sorted maps, no
    /// empty fields), so one scope is one record.
    pub fn key(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.device, &self.deployment) {
            (Some(d), _) => write!(f, "device {d}")?,
            (None, Some(d)) => write!(f, "deployment {d}")?,
            (None, None) if !self.selector.is_empty() => {
                let parts: Vec<String> = self
                    .selector
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                write!(f, "selector {}", parts.join(","))?
            }
            _ => write!(f, "fleet")?,
        }
        if let Some(app) = &self.app {
            write!(f, ", app {app}")?;
        }
        Ok(())
    }
}

/// Check a set of changes to one scope: names and values.
pub fn check_changes(set: &Values, unset: &BTreeSet<String>) -> Result<(), SpecError> {
    if set.is_empty() && unset.is_empty() {
        return Err(SpecError {
            field: "set".into(),
            problem: "nothing to set or unset".into(),
        });
    }
    if set.len() + unset.len() > MAX_VARS_PER_SCOPE {
        return Err(SpecError {
            field: "set".into(),
            problem: format!(
                "{} variables at once; a scope holds at most {MAX_VARS_PER_SCOPE}",
                set.len() + unset.len()
            ),
        });
    }
    for (k, v) in set {
        check_var_name(&format!("set.{k}"), k)?;
        check_var_value(&format!("set.{k}"), k, v)?;
        if unset.contains(k) {
            return Err(SpecError {
                field: format!("unset.{k}"),
                problem: format!("{k:?} is both set and unset"),
            });
        }
    }
    for k in unset {
        check_var_name(&format!("unset.{k}"), k)?;
    }
    Ok(())
}

/// Where one app runs: what resolution needs to know.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    pub device: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    /// The deployment giving the app to the device.
    pub deployment: &'a str,
    pub app: &'a str,
}

/// The value an app gets for one variable, and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolved {
    pub value: String,
    pub level: Level,
    /// The scope in words (`selector site=a`, `deployment web's file`).
    pub from: String,
}

/// Every variable of the fleet, indexed for resolution: rendering a device
/// looks up its own scopes by key, so per-device variables on a large fleet
/// cost a lookup each, not a scan; selectors (few) are scanned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vars {
    fleet: Values,
    fleet_app: BTreeMap<String, Values>,
    /// Sorted from least to most specific.
    selectors: Vec<(Scope, Values)>,
    deployments: BTreeMap<String, Values>,
    devices: BTreeMap<String, Values>,
    device_apps: BTreeMap<(String, String), Values>,
}

/// Selector order: fewer labels first, then by text; later ones win.
fn selector_rank(s: &Scope) -> (usize, String) {
    (s.selector.len(), s.to_string())
}

impl Vars {
    /// Index `sets` (one entry per scope). A scope that does not check is
    /// skipped: the API never stores one.
    pub fn new(sets: impl IntoIterator<Item = (Scope, Values)>) -> Vars {
        let mut v = Vars::default();
        for (scope, values) in sets {
            if values.is_empty() {
                continue;
            }
            match (scope.check(), scope.app.clone()) {
                (Ok(Level::Fleet), _) => v.fleet = values,
                (Ok(Level::FleetApp), Some(app)) => {
                    v.fleet_app.insert(app, values);
                }
                (Ok(Level::Selector | Level::SelectorApp), _) => v.selectors.push((scope, values)),
                (Ok(Level::Deployment), _) => {
                    if let Some(d) = scope.deployment {
                        v.deployments.insert(d, values);
                    }
                }
                (Ok(Level::Device), _) => {
                    if let Some(d) = scope.device {
                        v.devices.insert(d, values);
                    }
                }
                (Ok(Level::DeviceApp), Some(app)) => {
                    if let Some(d) = scope.device {
                        v.device_apps.insert((d, app), values);
                    }
                }
                _ => {}
            }
        }
        v.selectors.sort_by_key(|(s, _)| selector_rank(s));
        v
    }

    pub fn is_empty(&self) -> bool {
        *self == Vars::default()
    }

    /// The layers that apply at `at`, least specific first: (level, where
    /// from, values). `env` is the app's table from its deployment file.
    fn layers<'a>(&'a self, at: &Place<'a>, env: &'a Values) -> Vec<(Level, String, &'a Values)> {
        let mut out: Vec<(Level, String, &Values)> = Vec::new();
        out.push((Level::Fleet, "fleet".into(), &self.fleet));
        if let Some(v) = self.fleet_app.get(at.app) {
            out.push((Level::FleetApp, format!("fleet, app {}", at.app), v));
        }
        let matching = self
            .selectors
            .iter()
            .filter(|(s, _)| !s.selector.is_empty() && covers(&s.selector, at.labels));
        for (s, v) in matching.clone().filter(|(s, _)| s.app.is_none()) {
            out.push((Level::Selector, s.to_string(), v));
        }
        for (s, v) in matching.filter(|(s, _)| s.app.as_deref() == Some(at.app)) {
            out.push((Level::SelectorApp, s.to_string(), v));
        }
        if let Some(v) = self.deployments.get(at.deployment) {
            out.push((
                Level::Deployment,
                format!("deployment {}", at.deployment),
                v,
            ));
        }
        out.push((
            Level::DeploymentApp,
            format!("deployment {}'s file", at.deployment),
            env,
        ));
        if let Some(v) = self.devices.get(at.device) {
            out.push((Level::Device, format!("device {}", at.device), v));
        }
        if let Some(v) = self
            .device_apps
            .get(&(at.device.to_string(), at.app.to_string()))
        {
            out.push((
                Level::DeviceApp,
                format!("device {}, app {}", at.device, at.app),
                v,
            ));
        }
        out
    }

    /// The variables the app at `at` gets, each with where its value comes
    /// from. `env` is the app's `env` table, `takes` its `config` list.
    pub fn resolve(
        &self,
        at: &Place,
        env: &Values,
        takes: &BTreeSet<String>,
    ) -> BTreeMap<String, Resolved> {
        let layers = self.layers(at, env);
        let wanted: BTreeSet<&String> = takes
            .iter()
            .chain(
                layers
                    .iter()
                    .filter(|(level, ..)| level.is_app())
                    .flat_map(|(_, _, v)| v.keys()),
            )
            .collect();
        let mut out = BTreeMap::new();
        for (level, from, values) in &layers {
            for (k, v) in values.iter() {
                if wanted.contains(k) {
                    out.insert(
                        k.clone(),
                        Resolved {
                            value: v.clone(),
                            level: *level,
                            from: from.clone(),
                        },
                    );
                }
            }
        }
        out
    }

    /// The environment the app at `at` gets: [`Vars::resolve`] without the
    /// sources. With no variables set anywhere it is `env` itself.
    pub fn env(&self, at: &Place, env: &Values, takes: &BTreeSet<String>) -> Values {
        if self.is_empty() {
            return env.clone();
        }
        self.resolve(at, env, takes)
            .into_iter()
            .map(|(k, r)| (k, r.value))
            .collect()
    }
}

/// The variables an app takes (`takes`, its `config` list) that no scope
/// sets for it anywhere (no level that could reach this app of
/// `deployment` on any device has the name, and its own `env` does not):
/// what an apply warns about, since the app would start without them.
pub fn never_set<'a>(
    deployment: &str,
    app: &str,
    takes: &'a [String],
    env: &Values,
    sets: &[(Scope, Values)],
) -> Vec<&'a str> {
    let reaches = |s: &Scope| {
        s.app.as_deref().is_none_or(|a| a == app)
            && s.deployment.as_deref().is_none_or(|d| d == deployment)
    };
    takes
        .iter()
        .filter(|k| {
            !env.contains_key(*k)
                && !sets
                    .iter()
                    .any(|(s, values)| reaches(s) && values.contains_key(*k))
        })
        .map(String::as_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::labels;

    fn one(k: &str, v: &str) -> Values {
        BTreeMap::from([(k.to_string(), v.to_string())])
    }

    fn scope_at(level: Level) -> Scope {
        let app = Some("api".to_string());
        match level {
            Level::Fleet => Scope::fleet(),
            Level::FleetApp => Scope {
                app,
                ..Scope::default()
            },
            Level::Selector => Scope {
                selector: labels(&[("site", "a")]),
                ..Scope::default()
            },
            Level::SelectorApp => Scope {
                selector: labels(&[("site", "a")]),
                app,
                ..Scope::default()
            },
            Level::Deployment => Scope {
                deployment: Some("web".into()),
                ..Scope::default()
            },
            Level::DeploymentApp => unreachable!("the deployment file, not a scope"),
            Level::Device => Scope {
                device: Some("pi-01".into()),
                ..Scope::default()
            },
            Level::DeviceApp => Scope {
                device: Some("pi-01".into()),
                app,
                ..Scope::default()
            },
        }
    }

    /// The same key at other places, which must never reach app `api` of
    /// deployment `web` on `pi-01` (labels site=a): another app, another
    /// device, another deployment, a selector that does not match.
    fn elsewhere() -> Vec<(Scope, Values)> {
        let v = || one("K", "elsewhere");
        vec![
            (
                Scope {
                    app: Some("db".into()),
                    ..Scope::default()
                },
                v(),
            ),
            (
                Scope {
                    selector: labels(&[("site", "b")]),
                    ..Scope::default()
                },
                v(),
            ),
            (
                Scope {
                    selector: labels(&[("site", "a")]),
                    app: Some("db".into()),
                    ..Scope::default()
                },
                v(),
            ),
            (
                Scope {
                    deployment: Some("other".into()),
                    ..Scope::default()
                },
                v(),
            ),
            (
                Scope {
                    device: Some("pi-02".into()),
                    ..Scope::default()
                },
                v(),
            ),
            (
                Scope {
                    device: Some("pi-01".into()),
                    app: Some("db".into()),
                    ..Scope::default()
                },
                v(),
            ),
        ]
    }

    /// Every combination of the eight levels setting `K`: the most specific
    /// level present wins; an app that does not take `K` gets it only from a
    /// level that names the app; values set elsewhere never reach it.
    #[test]
    fn precedence_table_every_level_combination() {
        let l = labels(&[("site", "a"), ("role", "gw")]);
        let at = Place {
            device: "pi-01",
            labels: &l,
            deployment: "web",
            app: "api",
        };
        for mask in 0u32..(1 << Level::ALL.len()) {
            let present: Vec<Level> = Level::ALL
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, l)| *l)
                .collect();
            let name = |lv: Level| format!("{lv:?}");
            let mut sets = elsewhere();
            let mut env = Values::new();
            for lv in &present {
                if *lv == Level::DeploymentApp {
                    env = one("K", &name(*lv));
                } else {
                    sets.push((scope_at(*lv), one("K", &name(*lv))));
                }
            }
            let vars = Vars::new(sets);
            for takes in [true, false] {
                let t: BTreeSet<String> = takes.then(|| "K".to_string()).into_iter().collect();
                // A key of the app's `env` is taken as if listed: the env
                // table names the app.
                let got = vars.resolve(&at, &env, &t);
                // The app takes K when listed or when any level naming the
                // app sets it; then every level setting K competes.
                let taken = takes || present.iter().any(|lv| lv.is_app());
                let want = present.iter().filter(|_| taken).max();
                match want {
                    Some(lv) => {
                        let r = got
                            .get("K")
                            .unwrap_or_else(|| panic!("{present:?} takes={takes}: K missing"));
                        assert_eq!(r.level, *lv, "{present:?} takes={takes}");
                        assert_eq!(r.value, name(*lv), "{present:?} takes={takes}");
                    }
                    None => assert!(
                        !got.contains_key("K"),
                        "{present:?} takes={takes}: got {got:?}"
                    ),
                }
                assert_eq!(got.len(), usize::from(want.is_some()), "{got:?}");
                let env_only: Values = got.into_iter().map(|(k, r)| (k, r.value)).collect();
                assert_eq!(vars.env(&at, &env, &t), env_only);
            }
        }
    }

    #[test]
    fn the_selector_with_more_labels_wins_then_the_later_text() {
        let l = labels(&[("site", "a"), ("role", "gw"), ("zone", "1")]);
        let at = Place {
            device: "pi-01",
            labels: &l,
            deployment: "web",
            app: "api",
        };
        let sel = |pairs: &[(&str, &str)]| Scope {
            selector: labels(pairs),
            ..Scope::default()
        };
        let takes = BTreeSet::from(["K".to_string()]);
        let vars = Vars::new([
            (sel(&[("site", "a"), ("role", "gw")]), one("K", "two")),
            (sel(&[("zone", "1")]), one("K", "one")),
        ]);
        let r = &vars.resolve(&at, &Values::new(), &takes)["K"];
        assert_eq!(
            (r.value.as_str(), r.from.as_str()),
            ("two", "selector role=gw,site=a")
        );
        let vars = Vars::new([
            (sel(&[("site", "a")]), one("K", "site")),
            (sel(&[("role", "gw")]), one("K", "role")),
        ]);
        assert_eq!(vars.resolve(&at, &Values::new(), &takes)["K"].value, "site");
    }

    #[test]
    fn with_no_variables_the_env_is_the_deployments() {
        let l = labels(&[("site", "a")]);
        let at = Place {
            device: "pi-01",
            labels: &l,
            deployment: "web",
            app: "api",
        };
        let env = one("PORT", "80");
        let takes = BTreeSet::from(["LOG".to_string()]);
        assert_eq!(Vars::default().env(&at, &env, &takes), env);
        // A device override of an env value; an untaken fleet value stays out.
        let vars = Vars::new([
            (scope_at(Level::Device), one("PORT", "81")),
            (scope_at(Level::Fleet), one("OTHER", "x")),
        ]);
        assert_eq!(vars.env(&at, &env, &takes), one("PORT", "81"));
    }

    #[test]
    fn scopes_check_their_shape_and_names() {
        let ok = [
            (Scope::fleet(), Level::Fleet, "fleet"),
            (scope_at(Level::FleetApp), Level::FleetApp, "fleet, app api"),
            (
                scope_at(Level::Selector),
                Level::Selector,
                "selector site=a",
            ),
            (
                scope_at(Level::SelectorApp),
                Level::SelectorApp,
                "selector site=a, app api",
            ),
            (
                scope_at(Level::Deployment),
                Level::Deployment,
                "deployment web",
            ),
            (scope_at(Level::Device), Level::Device, "device pi-01"),
            (
                scope_at(Level::DeviceApp),
                Level::DeviceApp,
                "device pi-01, app api",
            ),
        ];
        for (s, level, text) in ok {
            assert_eq!(s.check().unwrap(), level);
            assert_eq!(s.to_string(), text);
            let back: Scope = serde_json::from_str(&s.key()).unwrap();
            assert_eq!(back, s);
        }
        let bad = [
            (
                Scope {
                    device: Some("pi-01".into()),
                    deployment: Some("web".into()),
                    ..Scope::default()
                },
                "at most one",
            ),
            (
                Scope {
                    deployment: Some("web".into()),
                    app: Some("api".into()),
                    ..Scope::default()
                },
                "env",
            ),
            (
                Scope {
                    app: Some("Not An App".into()),
                    ..Scope::default()
                },
                "lowercase",
            ),
            (
                Scope {
                    selector: labels(&[("site", "a b")]),
                    ..Scope::default()
                },
                "label value",
            ),
        ];
        for (s, needle) in bad {
            let e = s.check().unwrap_err().to_string();
            assert!(e.contains(needle), "{s:?}: {e}");
        }
    }

    #[test]
    fn a_taken_variable_set_nowhere_is_named() {
        let takes = vec![
            "A".to_string(),
            "B".to_string(),
            "C".to_string(),
            "D".to_string(),
        ];
        let env = one("D", "file");
        let sets = vec![
            // A: for another app only; B: for this app on one device; C: for
            // another deployment only.
            (
                Scope {
                    app: Some("other".into()),
                    ..Scope::default()
                },
                one("A", "x"),
            ),
            (scope_at(Level::DeviceApp), one("B", "x")),
            (
                Scope {
                    deployment: Some("elsewhere".into()),
                    ..Scope::default()
                },
                one("C", "x"),
            ),
        ];
        assert_eq!(never_set("web", "api", &takes, &env, &sets), vec!["A", "C"]);
        assert!(never_set("web", "api", &[], &env, &sets).is_empty());
    }

    #[test]
    fn changes_are_checked() {
        let set = |k: &str, v: &str| one(k, v);
        let none = BTreeSet::new();
        assert!(check_changes(&set("LOG_LEVEL", "debug"), &none).is_ok());
        for (s, u, needle) in [
            (Values::new(), BTreeSet::new(), "nothing"),
            (set("1X", "v"), BTreeSet::new(), "not starting with a digit"),
            (set("A=B", "v"), BTreeSet::new(), "variable name"),
            (set("A", "v\0"), BTreeSet::new(), "NUL"),
            (
                set("A", &"x".repeat(4097)),
                BTreeSet::new(),
                "limit is 4096",
            ),
            (set("A", "v"), BTreeSet::from(["A".to_string()]), "both"),
        ] {
            let e = check_changes(&s, &u).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }
}
