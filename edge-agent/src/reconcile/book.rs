//! The reconcile loop's memory of each app, and every decision about it, as
//! pure functions of (ledger, what was observed or done, now).
//!
//! Noticing exits, adopting containers, resetting the restart streak after a
//! stable run, counting restarts and failed actions, the retry delay after a
//! failure, marking an unhealthy app for replacement (`liveness.rs`), each
//! app's published state and the health checker's targets are all decided here without I/O or a clock: `now` is the agent's monotonic
//! milliseconds (see `crate::clock`), so a wall-clock step cannot shorten or
//! stretch a backoff. `Reconciler::pass` (`mod.rs`) observes, calls these,
//! plans (`plan.rs`), executes (`execute.rs`) and publishes.

use super::execute::Outcome;
use super::liveness::{self, Liveness};
use super::plan::{self, AppBook, CreateReason, DesiredApp, Observed, Policy};
use crate::driver::{app_of, error_chain, ContainerStatus, ObservedContainer};
use crate::health::{HealthTarget, Verdicts};
use outpost_protocol::{AppState, AppStatus, NetworkMode, RestartPolicy};
use std::collections::BTreeMap;

/// A container running this long resets its app's consecutive-restart count.
pub const STABLE_AFTER_MS: u64 = 10_000;

/// Outpost containers by name, as observed (and then as changed by a pass).
pub type Containers = BTreeMap<String, ObservedContainer>;

/// The last failed action of an app, as people see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastError {
    /// The error and its causes on one line (the status's `last_error`).
    pub message: String,
    /// Could the action succeed as is later (see `DriverCause::retryable` in
    /// `crate::driver`)? Both kinds are retried with the same backoff.
    pub retryable: bool,
}

/// Everything the loop remembers between passes, per app and per container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    pub books: BTreeMap<String, AppBook>,
    /// Apps whose last action failed; cleared when the app starts.
    pub errors: BTreeMap<String, LastError>,
    /// Containers last seen (or made) running, with their pids: the runtime is
    /// polled, so an exit is a container that was here and running and no
    /// longer is (or runs under another pid).
    pub running: BTreeMap<String, u32>,
    /// Apps whose container failed its health check after being ready, with
    /// why: the status's `last_error` (under a failed action's) until a
    /// container of the app is ready again, so the reason of a health restart
    /// is still there to read once the replacement runs.
    pub unhealthy: BTreeMap<String, String>,
    /// Each app's last unexpected exit, as people read it ("exited with code
    /// 1 at …"): the status's `last_error` when no action failed, until the
    /// app has run stably again.
    pub exits: BTreeMap<String, String>,
}

/// An app found failing its health check after it was ready, newly (each
/// container is reported once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unhealthy {
    pub app: String,
    pub reason: String,
    /// The number the restart under way will have; `None` when the restart
    /// policy keeps the app running (`liveness.rs`).
    pub restart: Option<u32>,
}

/// A container that stopped running since the last look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// `?` when the name is not one of ours (cannot happen for names the loop
    /// recorded, but an event needs some app).
    pub app: String,
    pub container: String,
    /// `None` when the runtime does not know it (not our child, or gone).
    pub code: Option<i32>,
}

impl Ledger {
    /// A fresh ledger with the restart counts persisted by an earlier run.
    pub fn with_restarts(restarts: &BTreeMap<String, u32>) -> Ledger {
        Ledger {
            books: restarts
                .iter()
                .map(|(app, n)| {
                    (
                        app.clone(),
                        AppBook {
                            restarts: *n,
                            ..AppBook::default()
                        },
                    )
                })
                .collect(),
            ..Ledger::default()
        }
    }

    /// Fold one observation of the runtime in at `now_ms`; returns the exits
    /// it shows, in container-name order.
    pub fn observe(
        &mut self,
        desired: &BTreeMap<String, DesiredApp>,
        containers: &Containers,
        now_ms: u64,
    ) -> Vec<Exit> {
        let mut exits = vec![];
        for (name, pid) in &self.running {
            let status = containers.get(name).map(|c| c.status);
            if !matches!(status, Some(ContainerStatus::Running { pid: p }) if p == *pid) {
                let code = match status {
                    Some(ContainerStatus::Exited { code }) => code,
                    _ => None,
                };
                exits.push(Exit {
                    app: app_of(name).unwrap_or("?").to_string(),
                    container: name.clone(),
                    code,
                });
            }
        }
        for e in &exits {
            self.running.remove(&e.container);
        }
        for (name, c) in containers {
            let Some(d) = desired.get(&c.app).filter(|d| &d.container == name) else {
                continue;
            };
            let book = self.books.entry(d.spec.name.clone()).or_default();
            match c.status {
                ContainerStatus::Running { pid } => {
                    if self.running.insert(name.clone(), pid).is_none() {
                        // Adopted (agent restart) or started elsewhere: count
                        // stability from now.
                        book.started_at_ms.get_or_insert(now_ms);
                    }
                    if book
                        .started_at_ms
                        .is_some_and(|t| now_ms.saturating_sub(t) >= STABLE_AFTER_MS)
                    {
                        book.consecutive = 0;
                        self.exits.remove(&d.spec.name);
                    }
                }
                ContainerStatus::Exited { .. } => {
                    book.exited_at_ms.get_or_insert(now_ms);
                    book.started_at_ms = None;
                }
                ContainerStatus::Created => {}
            }
        }
        exits
    }

    /// Apply the liveness decision (`liveness.rs`) to every desired app with
    /// the health task's `verdicts`: mark containers to replace, keep the
    /// reason for the status, forget it once the app is ready again. Returns
    /// what is newly unhealthy, for the log and the events.
    pub fn judge_liveness(
        &mut self,
        desired: &BTreeMap<String, DesiredApp>,
        containers: &Containers,
        verdicts: &Verdicts,
    ) -> Vec<Unhealthy> {
        let mut found = vec![];
        for (app, d) in desired {
            let current = containers.get(&d.container);
            let verdict = verdicts.get(app);
            let ready_now = verdict.is_some_and(|v| {
                v.ready == Some(true)
                    && v.container == d.container
                    && current.is_some_and(|c| c.status == ContainerStatus::Running { pid: v.pid })
            });
            if ready_now || d.spec.health.is_none() {
                self.unhealthy.remove(app);
            }
            let book = self.books.entry(app.clone()).or_default();
            match liveness::decide(d, current, verdict, book) {
                Liveness::Alive => {}
                Liveness::Restart { pid, reason } => {
                    if book.unhealthy_pid != Some(pid) {
                        book.unhealthy_pid = Some(pid);
                        self.unhealthy.insert(app.clone(), reason.clone());
                        found.push(Unhealthy {
                            app: app.clone(),
                            reason,
                            restart: Some(book.restarts.saturating_add(1)),
                        });
                    }
                }
                Liveness::Kept { reason } => {
                    if self.unhealthy.get(app) != Some(&reason) {
                        self.unhealthy.insert(app.clone(), reason.clone());
                        found.push(Unhealthy {
                            app: app.clone(),
                            reason,
                            restart: None,
                        });
                    }
                }
            }
        }
        found
    }

    /// Fold in what one executed action did, at `now_ms` (after execution).
    /// `after` is the pass's picture of the containers, brought up to date.
    pub fn record(
        &mut self,
        outcome: Outcome,
        desired: &BTreeMap<String, DesiredApp>,
        after: &mut Containers,
        now_ms: u64,
        policy: &Policy,
    ) {
        match outcome {
            Outcome::Started {
                app,
                container,
                pid,
            } => {
                self.running.insert(container.clone(), pid);
                if let Some(c) = after.get_mut(&container) {
                    c.status = ContainerStatus::Running { pid };
                }
                let b = self.books.entry(app.clone()).or_default();
                b.started_at_ms = Some(now_ms);
                b.failures = 0;
                b.retry_at_ms = None;
                self.errors.remove(&app);
            }
            Outcome::Created { app, reason } => {
                let b = self.books.entry(app.clone()).or_default();
                b.exited_at_ms = None;
                b.unhealthy_pid = None;
                if reason == CreateReason::Restart {
                    b.restarts += 1;
                    b.consecutive += 1;
                }
                if let Some(d) = desired.get(&app) {
                    after.insert(
                        d.container.clone(),
                        ObservedContainer {
                            name: d.container.clone(),
                            app,
                            status: ContainerStatus::Created,
                        },
                    );
                }
            }
            Outcome::Stopped { container, .. } => {
                self.running.remove(&container);
            }
            Outcome::Removed { container, .. } => {
                self.running.remove(&container);
                after.remove(&container);
            }
            Outcome::Failed { app, error } => {
                let b = self.books.entry(app.clone()).or_default();
                b.retry_at_ms = Some(now_ms.saturating_add(policy.backoff_ms(b.failures)));
                b.failures = b.failures.saturating_add(1);
                self.errors.insert(
                    app,
                    LastError {
                        message: error_chain(&error),
                        retryable: error.retryable(),
                    },
                );
            }
            Outcome::Pulled { .. } | Outcome::Kept { .. } | Outcome::Freed { .. } => {}
        }
    }

    /// Remember `app`'s exit for its status (`describe_exit` and when).
    pub fn note_exit(&mut self, app: &str, what: String) {
        self.exits.insert(app.to_string(), what);
    }

    /// Drop what is remembered of apps the manifest no longer has (their
    /// errors too: a removed app's failure must not keep a release unsettled).
    pub fn forget_undesired(&mut self, desired: &BTreeMap<String, DesiredApp>) {
        self.books.retain(|app, _| desired.contains_key(app));
        self.errors.retain(|app, _| desired.contains_key(app));
        self.unhealthy.retain(|app, _| desired.contains_key(app));
        self.exits.retain(|app, _| desired.contains_key(app));
    }

    /// Restart counts of every app with a book (the executor numbers its
    /// `AppRestarted` events from them).
    pub fn restarts(&self) -> BTreeMap<String, u32> {
        self.books
            .iter()
            .map(|(k, b)| (k.clone(), b.restarts))
            .collect()
    }

    /// The restart counts worth persisting: apps that restarted at least once.
    pub fn persisted_restarts(&self) -> BTreeMap<String, u32> {
        self.books
            .iter()
            .filter(|(_, b)| b.restarts > 0)
            .map(|(k, b)| (k.clone(), b.restarts))
            .collect()
    }
}

/// Has the desired release settled: the pass planned nothing but `Keep`, no
/// desired app has a failed action, and every desired app runs or finished
/// cleanly?
pub fn settled(
    acted: bool,
    ledger: &Ledger,
    desired: &BTreeMap<String, DesiredApp>,
    after: &Containers,
) -> bool {
    !acted
        && !desired.keys().any(|app| ledger.errors.contains_key(app))
        && desired.values().all(|d| {
            after.get(&d.container).is_some_and(|c| {
                c.status.is_running()
                    || matches!(c.status, ContainerStatus::Exited { code: Some(0) })
            })
        })
}

/// The state of each desired app as the status shows it, at `now_ms`
/// (monotonic). `ready` is left `None`: readiness belongs to the health task.
pub fn app_statuses(
    desired: &BTreeMap<String, DesiredApp>,
    after: &Containers,
    ledger: &Ledger,
    now_ms: u64,
    policy: &Policy,
) -> BTreeMap<String, AppStatus> {
    let observed = Observed {
        containers: after.clone(),
        books: ledger.books.clone(),
        ..Observed::default()
    };
    let mut apps = BTreeMap::new();
    for (name, d) in desired {
        let restarts = ledger.books.get(name).map_or(0, |b| b.restarts);
        let state = match after.get(&d.container).map(|c| c.status) {
            Some(ContainerStatus::Running { pid }) => AppState::Running { pid },
            Some(ContainerStatus::Created) => AppState::Starting,
            Some(ContainerStatus::Exited { code }) => {
                if let Some(ms) = plan::backoff_remaining(d, &observed, now_ms, policy) {
                    AppState::BackingOff {
                        retry_in_secs: ms.div_ceil(1000),
                    }
                } else {
                    let unhealthy = ledger
                        .books
                        .get(name)
                        .is_some_and(|b| b.unhealthy_pid.is_some());
                    match d.spec.restart {
                        RestartPolicy::OnFailure { .. } if code != Some(0) || unhealthy => {
                            AppState::Failed
                        }
                        _ => AppState::Exited {
                            code: code.unwrap_or(-1),
                        },
                    }
                }
            }
            None if ledger.errors.contains_key(name) => AppState::Failed,
            None => AppState::Pending,
        };
        apps.insert(
            name.clone(),
            AppStatus {
                name: name.clone(),
                state,
                restarts,
                last_error: ledger
                    .errors
                    .get(name)
                    .map(|e| e.message.clone())
                    .or_else(|| ledger.unhealthy.get(name).cloned())
                    .or_else(|| ledger.exits.get(name).cloned()),
                image_digest: Some(d.spec.image.digest),
                ready: None,
            },
        );
    }
    apps
}

/// An exit as people read it: the code, or the signal behind a code above
/// 128 (the runtime reports a signalled init as 128 + signal).
pub fn describe_exit(code: Option<i32>) -> String {
    match code {
        None => "exited with an unknown code (the container was gone)".into(),
        Some(c) if (129..=128 + 64).contains(&c) => {
            let signal = c - 128;
            match nix::sys::signal::Signal::try_from(signal) {
                Ok(s) => format!("killed by signal {signal} ({s}, exit code {c})"),
                Err(_) => format!("killed by signal {signal} (exit code {c})"),
            }
        }
        Some(c) => format!("exited with code {c}"),
    }
}

/// What the health checker probes: each desired app with a check whose
/// container is running.
pub fn health_targets(
    desired: &BTreeMap<String, DesiredApp>,
    after: &Containers,
) -> BTreeMap<String, HealthTarget> {
    desired
        .values()
        .filter_map(|d| {
            let check = d.spec.health.clone()?;
            match after.get(&d.container)?.status {
                ContainerStatus::Running { pid } => Some((
                    d.spec.name.clone(),
                    HealthTarget {
                        container: d.container.clone(),
                        pid,
                        check,
                        isolated: d.spec.network == NetworkMode::Isolated,
                    },
                )),
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod health_restarts;
#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
