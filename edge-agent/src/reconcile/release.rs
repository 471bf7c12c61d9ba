//! A manifest as one release: when its trial starts, when it commits, when it
//! is rolled back, decided as pure functions of (record, facts, now).
//!
//! A new generation is applied to all its apps at once and then stays in
//! trial until every app has run (and, with a health check, been ready)
//! for `stable_secs` without a break. An app failing during the trial (an
//! exit its restart policy would restart, a health check failing after it was
//! ready, an action that cannot succeed as is) or a trial not stable by
//! `trial_deadline_secs` rolls the whole release back to the last committed
//! one: its specs, and its images, which retention kept
//! (`crate::retention`). The failed generation is not retried until a newer
//! one arrives. The device decides all of it on its own, with no hub.
//!
//! The [`Record`] is persisted (JSON in the state database, written only on
//! a transition: a few times per release, never per pass). A trial found in
//! it at start was interrupted by a power cut, a crash or a kill: the release
//! never proved itself, so it is rolled back (Mender's rule), unless it had
//! committed, which the record then says.
//!
//! `route` decides what to run from the record alone (plus whether the new
//! release can start: images, update locks); `judge` decides a running trial
//! from each app's facts. Times are the agent's monotonic milliseconds.

use outpost_protocol::{Manifest, ReleasePhase, ReleasePolicy};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `(epoch, generation)` of a manifest.
pub type ReleaseId = (u64, u64);

/// What the device remembers about releases across restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The newest release that passed its trial: where a rollback goes.
    #[serde(default)]
    pub committed: Option<Committed>,
    /// A release whose trial started (its first container was about to
    /// change) and has not ended.
    #[serde(default)]
    pub trial: Option<ReleaseId>,
    /// The release that failed its trial; not tried again.
    #[serde(default)]
    pub failed: Option<Failure>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub id: ReleaseId,
    /// The whole manifest, so a rollback needs nothing from the hub.
    pub manifest: Manifest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub id: ReleaseId,
    pub app: String,
    pub reason: String,
}

/// Can a new release start replacing containers?
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Yes: every image it must have first is here and no lock holds it.
    Open,
    /// Images of download-first apps are still missing: pull them while the
    /// current apps keep serving.
    Downloading,
    /// `app` holds its update lock (and the release does not override it).
    Locked { app: String },
}

/// Which manifest the reconcile pass works towards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// The newest accepted manifest.
    Target,
    /// The last committed manifest (rolled back, or still serving while the
    /// target downloads or waits for a lock). With no committed release,
    /// containers are left as they are.
    Committed,
}

/// A change of the record, carried out (persisted, reported) by the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Persist `trial = target` before any container changes.
    StartTrial,
    /// The trial passed: the target becomes the committed release.
    Commit,
    /// The trial failed; go back to the committed release.
    RollBack { app: String, reason: String },
    /// The trial failed and there is no committed release to go back to.
    Fail { app: String, reason: String },
}

/// `route`'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub run: Run,
    pub transition: Option<Transition>,
    pub phase: ReleasePhase,
}

/// Why an interrupted trial is rolled back.
pub const INTERRUPTED: &str =
    "the agent restarted before the release was stable (power cut, crash or kill)";
/// The app named when a whole-release reason (an interrupted trial) applies.
pub const WHOLE_RELEASE: &str = "(release)";

/// Decide what to run for `target`. `trial_running` says whether this
/// process started (or restarted) the target's trial.
pub fn route(record: &Record, target: ReleaseId, trial_running: bool, gate: &Gate) -> Route {
    let committed = record.committed.as_ref().map(|c| c.id);
    if committed == Some(target) {
        return Route {
            run: Run::Target,
            transition: None,
            phase: ReleasePhase::Committed,
        };
    }
    if let Some(f) = record.failed.as_ref().filter(|f| f.id == target) {
        return match committed {
            Some(to) => Route {
                run: Run::Committed,
                transition: None,
                phase: ReleasePhase::RolledBack {
                    to,
                    app: f.app.clone(),
                    reason: f.reason.clone(),
                },
            },
            None => Route {
                run: Run::Target,
                transition: None,
                phase: ReleasePhase::Failed {
                    app: f.app.clone(),
                    reason: f.reason.clone(),
                },
            },
        };
    }
    if record.trial == Some(target) {
        if trial_running {
            return Route {
                run: Run::Target,
                transition: None,
                phase: ReleasePhase::Trial,
            };
        }
        // Found in the record at start: the trial was interrupted.
        return match committed {
            Some(to) => Route {
                run: Run::Committed,
                transition: Some(Transition::RollBack {
                    app: WHOLE_RELEASE.into(),
                    reason: INTERRUPTED.into(),
                }),
                phase: ReleasePhase::RolledBack {
                    to,
                    app: WHOLE_RELEASE.into(),
                    reason: INTERRUPTED.into(),
                },
            },
            // Nothing to go back to: try the release again from the start.
            None => start(),
        };
    }
    // A release newer than a trial still running supersedes it at once: the
    // apps running are unproven anyway, and waiting for downloads would mean
    // going back to the committed release in between.
    if record.trial.is_some() {
        return start();
    }
    match gate {
        Gate::Open => start(),
        Gate::Downloading => Route {
            run: Run::Committed,
            transition: None,
            phase: ReleasePhase::Downloading,
        },
        Gate::Locked { app } => Route {
            run: Run::Committed,
            transition: None,
            phase: ReleasePhase::WaitingForLock { app: app.clone() },
        },
    }
}

/// Is `target` a renewal of the committed release: a newer generation with the
/// same apps and release policy (the hub re-issues manifests before they
/// expire, `outpost_protocol::verify`)? No container changes, so a trial
/// would prove nothing: it commits at once. (Pure.)
pub fn is_renewal(record: &Record, target: &Manifest) -> bool {
    record.trial.is_none()
        && record.committed.as_ref().is_some_and(|c| {
            c.id < target.release_id()
                && c.manifest.apps == target.apps
                && c.manifest.release == target.release
        })
}

/// The route of a renewal (see [`is_renewal`]): commit it, run it.
pub fn renewed() -> Route {
    Route {
        run: Run::Target,
        transition: Some(Transition::Commit),
        phase: ReleasePhase::Committed,
    }
}

fn start() -> Route {
    Route {
        run: Run::Target,
        transition: Some(Transition::StartTrial),
        phase: ReleasePhase::Trial,
    }
}

/// One app of a release under trial, as the pass sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppFacts {
    /// Up without a break since (running, or finished as its restart policy
    /// allows); `None` while not up.
    pub up_since: Option<u64>,
    /// Has a health check: must also be ready.
    pub checked: bool,
    /// Ready (the current container) without a break since.
    pub ready_since: Option<u64>,
    /// Something that fails the trial now (an exit to be restarted, a health
    /// check failing after ready, an action that cannot succeed as is).
    pub failure: Option<String>,
    /// Why it is not up or ready yet, for the deadline's reason.
    pub waiting: Option<String>,
}

/// The verdict on a running trial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// Keep going.
    Pending,
    /// Every app stable for `stable_secs`: commit.
    Stable,
    /// Roll back (or fail): `app`, `reason`.
    Failed { app: String, reason: String },
}

/// Judge a trial that started at `started_ms`.
pub fn judge(
    apps: &BTreeMap<String, AppFacts>,
    policy: &ReleasePolicy,
    started_ms: u64,
    now_ms: u64,
) -> Judgement {
    if let Some((app, reason)) = apps
        .iter()
        .find_map(|(app, f)| f.failure.as_ref().map(|r| (app, r)))
    {
        return Judgement::Failed {
            app: app.clone(),
            reason: reason.clone(),
        };
    }
    let stable_ms = u64::from(policy.stable_secs) * 1000;
    let stable_since =
        |since: Option<u64>| since.is_some_and(|s| now_ms.saturating_sub(s) >= stable_ms);
    let unstable = apps
        .iter()
        .find(|(_, f)| !(stable_since(f.up_since) && (!f.checked || stable_since(f.ready_since))));
    let Some((app, f)) = unstable else {
        return Judgement::Stable;
    };
    let deadline_ms = u64::from(policy.trial_deadline_secs) * 1000;
    if now_ms.saturating_sub(started_ms) < deadline_ms {
        return Judgement::Pending;
    }
    let why = if f.up_since.is_none() {
        f.waiting.clone().unwrap_or_else(|| "it never ran".into())
    } else if f.checked && f.ready_since.is_none() {
        f.waiting
            .clone()
            .unwrap_or_else(|| "its health check never passed".into())
    } else {
        format!("it did not stay up for {} s in a row", policy.stable_secs)
    };
    Judgement::Failed {
        app: app.clone(),
        reason: format!(
            "not stable within the {} s trial deadline: {why}",
            policy.trial_deadline_secs
        ),
    }
}

/// The record after `transition` of `target` (whose manifest is `manifest`).
pub fn apply(record: &Record, transition: &Transition, manifest: &Manifest) -> Record {
    let target = manifest.release_id();
    let mut next = record.clone();
    match transition {
        Transition::StartTrial => {
            next.trial = Some(target);
        }
        Transition::Commit => {
            next.committed = Some(Committed {
                id: target,
                manifest: manifest.clone(),
            });
            next.trial = None;
            next.failed = None;
        }
        Transition::RollBack { app, reason } | Transition::Fail { app, reason } => {
            next.trial = None;
            next.failed = Some(Failure {
                id: target,
                app: app.clone(),
                reason: reason.clone(),
            });
        }
    }
    next
}

#[cfg(test)]
mod tests;
