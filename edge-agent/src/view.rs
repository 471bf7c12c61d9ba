//! The device's view of itself, as parts with one writer each, and the pure
//! composition of the [`View`] that status reports and the local status file
//! show.
//!
//! Each fact has exactly one writer, the task that knows it:
//!
//! | `View` field                     | part          | only writer                    |
//! |----------------------------------|---------------|--------------------------------|
//! | `applied`                        | [`Desired`]   | the inbox ([`crate::inbox`])   |
//! | `rejected`, `last_rejection`     | [`Rejections`]| the inbox                      |
//! | `connected`                      | [`Link`]      | the link task ([`crate::agent`]) |
//! | `apps` (state, restarts, errors) | [`Apps`]      | the reconciler                 |
//! | `apps[..].state` while pulling   | [`Pulls`]     | the reconciler's executor      |
//! | `apps[..].ready`                 | [`Readiness`] | the health task ([`crate::health`]) |
//! | `release`                        | [`Release`]   | the reconciler                 |
//! | `last_heartbeat`, `time_floor`   | [`HubContact`]| the inbox (a quiet part: see [`crate::freshness`]) |
//!
//! `applied` is the manifest the device accepted and committed, which is what
//! the hub compares with what it published to decide whether to send it again;
//! the inbox accepts it, so the inbox is its writer, through the desired-state
//! part the reconciler follows (at start the part holds the persisted
//! manifest). How far the reconciler got with it is in `apps`.
//!
//! A part is a watch channel whose sender is wrapped in a [`Writer`], which is
//! not `Clone`: [`parts`] makes every writer once, and whoever holds it is the
//! part's only writer. Every writer also bumps one shared change counter, which
//! the status sender and the status-file writer watch. The [`View`] is built on
//! read by [`compose`], a pure function of the parts.

pub use crate::freshness::HubContact;
use outpost_protocol::{AppState, AppStatus, Manifest, RejectCounters, ReleaseStatus};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::watch;

/// The device's current view of itself, composed from the parts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct View {
    pub applied: Option<(u64, u64)>,
    pub apps: BTreeMap<String, AppStatus>,
    pub rejected: RejectCounters,
    pub last_rejection: Option<String>,
    /// Is the MQTT link up (local view only).
    pub connected: bool,
    /// The newest release's state (trial, committed, rolled back).
    pub release: Option<ReleaseStatus>,
    /// `issued_at` of the newest verified hub heartbeat.
    pub last_heartbeat: Option<u64>,
    /// The trusted-time floor (highest signed hub time seen).
    pub time_floor: u64,
}

/// The accepted manifest the reconciler works towards (`applied` in the view).
pub type Desired = Option<Arc<Manifest>>;

/// Refused manifests and key sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rejections {
    pub counters: RejectCounters,
    pub last: Option<String>,
}

/// The number of the current broker connection, `None` while down. The
/// sender waits on it too: a new number means a new session.
pub type Link = Option<u64>;

/// Every desired app as the reconciler last saw it. `ready` is `Some(false)`
/// for an app with a health check (the health task's verdict replaces it) and
/// `None` for one without.
pub type Apps = BTreeMap<String, AppStatus>;

/// Pulls under way: app -> (bytes done, bytes total). An entry lives exactly
/// as long as its pull.
pub type Pulls = BTreeMap<String, (u64, u64)>;

/// The health task's last verdict per app.
pub type Readiness = BTreeMap<String, bool>;

/// Where the newest accepted manifest is as a release (`reconcile/release.rs`).
pub type Release = Option<ReleaseStatus>;

/// The one writer of a part: a watch sender that also wakes the status
/// observers. Deliberately not `Clone`.
pub struct Writer<T> {
    tx: watch::Sender<T>,
    changed: Arc<watch::Sender<u64>>,
}

impl<T> std::fmt::Debug for Writer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Writer<{}>", std::any::type_name::<T>())
    }
}

impl<T: PartialEq> Writer<T> {
    /// Replace the value and return the old one (like
    /// `watch::Sender::send_replace`); readers and status observers are woken
    /// only if it differs.
    pub fn send_replace(&self, value: T) -> T {
        // After the swap `slot` holds the old value.
        let mut slot = value;
        let changed = self.tx.send_if_modified(|v| {
            let differs = *v != slot;
            std::mem::swap(v, &mut slot);
            differs
        });
        self.bump_if(changed);
        slot
    }

    /// Change the value in place; readers and status observers are woken only
    /// if it changed.
    pub fn send_modify(&self, f: impl FnOnce(&mut T))
    where
        T: Clone,
    {
        let changed = self.tx.send_if_modified(|v| {
            let before = v.clone();
            f(v);
            *v != before
        });
        self.bump_if(changed);
    }

    fn bump_if(&self, changed: bool) {
        if changed {
            self.changed.send_modify(|n| *n += 1);
        }
    }
}

impl<T> Writer<T> {
    pub fn borrow(&self) -> watch::Ref<'_, T> {
        self.tx.borrow()
    }

    /// A reader of this part alone (the reconciler follows [`Desired`], the
    /// sender [`Link`]).
    pub fn subscribe(&self) -> watch::Receiver<T> {
        self.tx.subscribe()
    }
}

/// Every writer, made once by [`parts`]; the caller hands each to its owner.
#[derive(Debug)]
pub struct Writers {
    pub desired: Writer<Desired>,
    pub rejections: Writer<Rejections>,
    pub link: Writer<Link>,
    pub apps: Writer<Apps>,
    pub pulls: Writer<Pulls>,
    pub readiness: Writer<Readiness>,
    pub release: Writer<Release>,
    pub hub: Writer<HubContact>,
}

/// The reading side of every part, for the reporter.
#[derive(Debug, Clone)]
pub struct Parts {
    desired: watch::Receiver<Desired>,
    rejections: watch::Receiver<Rejections>,
    link: watch::Receiver<Link>,
    apps: watch::Receiver<Apps>,
    pulls: watch::Receiver<Pulls>,
    readiness: watch::Receiver<Readiness>,
    release: watch::Receiver<Release>,
    hub: watch::Receiver<HubContact>,
    changed: Arc<watch::Sender<u64>>,
}

fn part<T>(initial: T, changed: &Arc<watch::Sender<u64>>) -> (Writer<T>, watch::Receiver<T>) {
    let (tx, rx) = watch::channel(initial);
    (
        Writer {
            tx,
            changed: changed.clone(),
        },
        rx,
    )
}

/// The parts of a fresh view: what was accepted and refused before (from the
/// state database), nothing else known yet.
pub fn parts(desired: Desired, rejections: Rejections) -> (Writers, Parts) {
    let (changed, _) = watch::channel(0);
    let changed = Arc::new(changed);
    let (desired, desired_rx) = part(desired, &changed);
    let (rejections, rejections_rx) = part(rejections, &changed);
    let (link, link_rx) = part(None, &changed);
    let (apps, apps_rx) = part(Apps::new(), &changed);
    let (pulls, pulls_rx) = part(Pulls::new(), &changed);
    let (readiness, readiness_rx) = part(Readiness::new(), &changed);
    let (release, release_rx) = part(None, &changed);
    // Quiet: its own change counter, which nobody watches.
    let (hub, hub_rx) = part(HubContact::default(), &Arc::new(watch::channel(0).0));
    (
        Writers {
            desired,
            rejections,
            link,
            apps,
            pulls,
            readiness,
            release,
            hub,
        },
        Parts {
            desired: desired_rx,
            rejections: rejections_rx,
            link: link_rx,
            apps: apps_rx,
            pulls: pulls_rx,
            readiness: readiness_rx,
            release: release_rx,
            hub: hub_rx,
            changed,
        },
    )
}

impl Parts {
    /// The view as of now.
    pub fn view(&self) -> View {
        // Each part is cloned out on its own: no lock is held across two.
        let desired = self.desired.borrow().clone();
        let rejections = self.rejections.borrow().clone();
        let link = *self.link.borrow();
        let apps = self.apps.borrow().clone();
        let pulls = self.pulls.borrow().clone();
        let readiness = self.readiness.borrow().clone();
        let release = self.release.borrow().clone();
        let hub = *self.hub.borrow();
        compose(
            desired.as_deref(),
            &rejections,
            link,
            apps,
            &pulls,
            &readiness,
            release,
            &hub,
        )
    }

    /// What the device last heard from the hub.
    pub fn hub_contact(&self) -> HubContact {
        *self.hub.borrow()
    }

    /// Bumped whenever any part changed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// The view from its parts. (Pure.)
///
/// An app being pulled shows the pull's progress; an app with a health check
/// shows the health task's last verdict (not ready until there is one). Pulls
/// and verdicts of apps the reconciler does not list are not shown.
// One argument per part: the composition is the one place that sees them all.
#[allow(clippy::too_many_arguments)]
pub fn compose(
    desired: Option<&Manifest>,
    rejections: &Rejections,
    link: Link,
    mut apps: Apps,
    pulls: &Pulls,
    readiness: &Readiness,
    release: Release,
    hub: &HubContact,
) -> View {
    for (name, app) in apps.iter_mut() {
        if let Some(&(done, total)) = pulls.get(name) {
            app.state = AppState::Pulling { done, total };
        }
        if app.ready.is_some() {
            // Readiness belongs to the running container: an app that exited
            // (crash loop, backoff) is not ready whatever its last verdict said.
            app.ready =
                Some(app.state.is_running() && readiness.get(name).copied().unwrap_or(false));
        }
    }
    View {
        applied: desired.map(|m| (m.epoch, m.generation)),
        apps,
        rejected: rejections.counters.clone(),
        last_rejection: rejections.last.clone(),
        connected: link.is_some(),
        release,
        last_heartbeat: hub.last_heartbeat,
        time_floor: hub.time_floor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_protocol::KeyId;

    fn manifest(epoch: u64, generation: u64) -> Arc<Manifest> {
        Arc::new(Manifest {
            device_id: "pi-1".parse().unwrap(),
            epoch,
            generation,
            issued_at: 0,
            key_id: KeyId("k".into()),
            apps: vec![],
            release: Default::default(),
            expires_at: outpost_protocol::NEVER,
        })
    }

    fn app(name: &str, state: AppState, ready: Option<bool>) -> AppStatus {
        AppStatus {
            name: name.into(),
            state,
            restarts: 0,
            last_error: None,
            image_digest: None,
            ready,
        }
    }

    #[test]
    fn compose_table() {
        let running = AppState::Running { pid: 7 };
        let pulling = AppState::Pulling { done: 3, total: 9 };
        let apps: Apps = [
            ("plain", app("plain", running.clone(), None)),
            ("checked", app("checked", running.clone(), Some(false))),
            ("unjudged", app("unjudged", running.clone(), Some(false))),
            ("pulled", app("pulled", AppState::Pending, None)),
            (
                "crashing",
                app(
                    "crashing",
                    AppState::BackingOff { retry_in_secs: 2 },
                    Some(false),
                ),
            ),
        ]
        .into_iter()
        .map(|(n, a)| (n.to_string(), a))
        .collect();
        let pulls: Pulls = [("pulled".into(), (3, 9)), ("gone".into(), (1, 2))].into();
        let readiness: Readiness = [
            ("checked".into(), true),
            ("plain".into(), true),
            ("gone".into(), true),
            ("crashing".into(), true),
        ]
        .into();
        let rejections = Rejections {
            counters: RejectCounters {
                rollback: 2,
                ..RejectCounters::default()
            },
            last: Some("replay".into()),
        };
        let m = manifest(2, 5);
        let v = compose(
            Some(&m),
            &rejections,
            Some(3),
            apps.clone(),
            &pulls,
            &readiness,
            None,
            &HubContact {
                last_heartbeat: Some(40),
                time_floor: 50,
                heard_at: None,
            },
        );
        // (app, state, ready)
        let cases = [
            ("plain", running.clone(), None), // no check: a stray verdict is not shown
            ("checked", running.clone(), Some(true)), // the health task's verdict
            ("unjudged", running.clone(), Some(false)), // checked, no verdict yet
            ("pulled", pulling, None),        // a pull under way
            // Backing off after a crash: its last verdict was about a container
            // that no longer runs.
            (
                "crashing",
                AppState::BackingOff { retry_in_secs: 2 },
                Some(false),
            ),
        ];
        for (name, state, ready) in cases {
            let got = &v.apps[name];
            assert_eq!((&got.state, got.ready), (&state, ready), "{name}");
        }
        assert_eq!(v.apps.len(), 5, "pulls and verdicts add no apps");
        assert_eq!(v.applied, Some((2, 5)));
        assert_eq!(
            (v.rejected.rollback, v.last_rejection.as_deref()),
            (2, Some("replay"))
        );
        assert!(v.connected);
        assert_eq!((v.last_heartbeat, v.time_floor), (Some(40), 50));
        let empty = compose(
            None,
            &Rejections::default(),
            None,
            Apps::new(),
            &pulls,
            &readiness,
            None,
            &HubContact::default(),
        );
        assert_eq!(empty, View::default());
    }

    #[test]
    fn each_part_has_its_own_writer_and_only_changes_wake_observers() {
        let (w, parts) = parts(Some(manifest(1, 1)), Rejections::default());
        let mut changes = parts.subscribe();
        let mut link = w.link.subscribe();
        assert_eq!(parts.view().applied, Some((1, 1)));

        w.link.send_replace(Some(1));
        assert!(changes.has_changed().unwrap() && link.has_changed().unwrap());
        changes.borrow_and_update();
        link.borrow_and_update();
        // The same value again (a second `Disconnected`, an unchanged pass): silent.
        assert_eq!(w.link.send_replace(Some(1)), Some(1));
        w.apps.send_modify(|_| {});
        assert!(!changes.has_changed().unwrap() && !link.has_changed().unwrap());

        w.apps.send_replace(
            [(
                "web".to_string(),
                app("web", AppState::Pending, Some(false)),
            )]
            .into(),
        );
        w.pulls.send_modify(|p| {
            p.insert("web".into(), (1, 4));
        });
        w.readiness.send_modify(|r| {
            r.insert("web".into(), true);
        });
        w.rejections.send_modify(|r| {
            r.counters.keyset += 1;
            r.last = Some("key set: bad".into());
        });
        w.desired.send_replace(Some(manifest(1, 2)));
        w.release.send_replace(Some(ReleaseStatus {
            target: (1, 2),
            phase: outpost_protocol::ReleasePhase::Trial,
            committed: Some((1, 1)),
        }));
        assert_eq!(*changes.borrow_and_update(), 7);
        let v = parts.view();
        assert_eq!(v.applied, Some((1, 2)));
        assert_eq!(v.apps["web"].state, AppState::Pulling { done: 1, total: 4 });
        // A verdict is about a running container; a pulling app has none.
        assert_eq!(v.apps["web"].ready, Some(false));
        assert_eq!(v.release.as_ref().map(|r| r.target), Some((1, 2)));
        assert_eq!((v.rejected.keyset, v.connected), (1, true));
        // The pull ends: the reconciler's state shows again.
        w.pulls.send_modify(|p| {
            p.remove("web");
        });
        assert_eq!(parts.view().apps["web"].state, AppState::Pending);
        // The hub contact is shown but wakes nobody (a heartbeat a minute
        // from every device must not become a status report each).
        let before = *changes.borrow_and_update();
        w.hub.send_replace(HubContact {
            last_heartbeat: Some(9),
            time_floor: 9,
            heard_at: None,
        });
        assert!(!changes.has_changed().unwrap());
        assert_eq!(*changes.borrow(), before);
        assert_eq!(parts.view().last_heartbeat, Some(9));
    }
}
