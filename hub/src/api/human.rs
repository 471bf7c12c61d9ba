//! What people read: the human form of the API's answers, as the CLI prints
//! them (and the words the dashboard shows): devices, a device's status,
//! events, deployments, stats and the audit log, with states, events and
//! generations in words ([`crate::text`] for tables and relative times).
//! Every function here is pure.

use super::{DeviceDetail, DeviceSummary, GenerationView, Stats};
use crate::store::{AuditEntry, DeploymentRecord, EventRecord};
pub use crate::text::{ago, ago_or_never, duration, fields, table};
use outpost_protocol::{AppState, AppStatus, EventKind};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// `epoch 1, generation 2`.
pub fn generation(epoch: u64, generation: u64) -> String {
    format!("epoch {epoch}, generation {generation}")
}

fn gen_view(g: Option<GenerationView>) -> String {
    g.map_or_else(|| "none".into(), |g| generation(g.epoch, g.generation))
}

/// How the applied generation stands against the desired one, in words.
pub fn applied_words(desired: Option<GenerationView>, applied: Option<GenerationView>) -> String {
    match (desired, applied) {
        (_, None) => "nothing yet".into(),
        (Some(d), Some(a)) if d == a => "up to date".into(),
        (Some(d), Some(a)) if (a.epoch, a.generation) < (d.epoch, d.generation) => {
            format!("behind: {}", generation(a.epoch, a.generation))
        }
        (_, Some(a)) => generation(a.epoch, a.generation),
    }
}

/// `k=v,k2=v2`, or `-` for none.
pub fn labels(l: &BTreeMap<String, String>) -> String {
    if l.is_empty() {
        return "-".into();
    }
    l.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Bytes in the largest binary unit with one decimal: `812 B`, `1.5 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// An app's state in words.
pub fn app_state(s: &AppState) -> String {
    match s {
        AppState::Pending => "pending".into(),
        AppState::Pulling { done, total } => {
            format!("pulling its image ({} of {})", bytes(*done), bytes(*total))
        }
        AppState::Starting => "starting".into(),
        AppState::Running { pid } => format!("running (pid {pid})"),
        AppState::Exited { code } => format!("exited with code {code}"),
        AppState::BackingOff { retry_in_secs } => {
            format!("backing off, retry in {}", duration(*retry_in_secs))
        }
        AppState::Failed => "failed".into(),
        AppState::Stopped => "stopped".into(),
    }
}

/// What an event says, in words.
pub fn event(kind: &EventKind) -> String {
    let release = |r: &(u64, u64)| format!("release {}", generation(r.0, r.1));
    match kind {
        EventKind::ManifestApplied {
            epoch,
            generation: g,
        } => {
            format!("manifest accepted: {}", generation(*epoch, *g))
        }
        EventKind::ManifestRejected { reason } => format!("manifest refused: {reason}"),
        EventKind::KeySetAccepted { version } => format!("key set version {version} accepted"),
        EventKind::RootAdopted { version } => {
            format!("root key version {version} adopted through its rotation link")
        }
        EventKind::AppStarted { app, pid } => format!("{app} started (pid {pid})"),
        EventKind::AppExited { app, code } => format!("{app} exited with code {code}"),
        EventKind::AppRestarted { app, restarts } => {
            format!("{app} restarted (restart {restarts})")
        }
        EventKind::AppStopped { app } => format!("{app} stopped"),
        EventKind::AppFailed { app, error } => format!("{app} failed: {error}"),
        EventKind::PullProgress { app, done, total } => {
            format!("{app}: pulled {} of {}", bytes(*done), bytes(*total))
        }
        EventKind::AppHealth { app, ready: true } => format!("{app} is ready"),
        EventKind::AppHealth { app, ready: false } => format!("{app} is not ready"),
        EventKind::AppUnhealthyRestarted {
            app,
            restarts,
            reason,
        } => format!("{app} unhealthy, replaced (restart {restarts}): {reason}"),
        EventKind::ReleaseTrial { release: r } => format!("{} in trial", release(r)),
        EventKind::ReleaseCommitted { release: r } => format!("{} committed", release(r)),
        EventKind::RolledBack {
            from,
            to,
            app,
            reason,
        } => format!(
            "{} rolled back to {} ({app}: {reason})",
            release(from),
            generation(to.0, to.1)
        ),
        EventKind::WaitingForLock { app, release: r } => {
            format!("{} waiting: {app} holds its update lock", release(r))
        }
    }
}

/// `outpost-hub devices`.
pub fn devices(ds: &[DeviceSummary], now: u64) -> String {
    if ds.is_empty() {
        return "no devices\n".into();
    }
    let rows: Vec<Vec<String>> = ds
        .iter()
        .map(|d| {
            vec![
                d.id.clone(),
                d.state().to_string(),
                ago_or_never(d.last_seen, now),
                labels(&d.labels),
                gen_view(d.desired),
                applied_words(d.desired, d.applied),
                format!("{}/{}", d.apps.running, d.apps.total),
                d.apps.failing.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "STATE",
            "LAST SEEN",
            "LABELS",
            "DESIRED",
            "APPLIED",
            "RUNNING",
            "FAILING",
        ],
        &rows,
        &[6, 7],
    )
}

fn app_rows(apps: &[AppStatus]) -> String {
    let rows: Vec<Vec<String>> = apps
        .iter()
        .map(|a| {
            vec![
                a.name.clone(),
                app_state(&a.state),
                match a.ready {
                    None => "-".into(),
                    Some(true) => "yes".into(),
                    Some(false) => "no".into(),
                },
                a.restarts.to_string(),
                a.last_error.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(
        &["APP", "STATE", "READY", "RESTARTS", "LAST ERROR"],
        &rows,
        &[3],
    )
}

/// `outpost-hub status DEVICE`.
pub fn status(d: &DeviceDetail, now: u64) -> String {
    let s = &d.summary;
    let mut rows = vec![
        ("device", s.id.clone()),
        (
            "state",
            match s.last_seen {
                Some(t) => format!("{} (last report {})", s.state(), ago(t, now)),
                None => s.state().to_string(),
            },
        ),
        ("labels", labels(&s.labels)),
        ("key", s.public_key.clone()),
        (
            "desired",
            match s.desired {
                Some(g) if d.desired_apps.is_empty() => {
                    format!("{}, no apps", generation(g.epoch, g.generation))
                }
                Some(g) => format!(
                    "{}: {}",
                    generation(g.epoch, g.generation),
                    d.desired_apps.join(", ")
                ),
                None => "none".into(),
            },
        ),
        ("applied", applied_words(s.desired, s.applied)),
    ];
    if let Some(st) = &d.status {
        if let Some(r) = &st.release {
            rows.push(("release", release(r)));
        }
        rows.push((
            "agent",
            format!(
                "version {}, up {}, report {} of boot {}",
                st.agent_version,
                duration(st.uptime_secs),
                st.seq,
                st.boot
            ),
        ));
        rows.push(("hub", hub_freshness(st, now)));
        let refused = st.rejected.total();
        if refused > 0 || st.last_rejection.is_some() {
            rows.push((
                "refused",
                format!(
                    "{refused} manifest(s) or key set(s), last: {}",
                    st.last_rejection.as_deref().unwrap_or("-")
                ),
            ));
        }
    }
    rows.push(("registered", ago(s.registered_at, now)));
    let mut out = fields(&rows);
    if let Some(st) = &d.status {
        if !st.apps.is_empty() {
            out.push('\n');
            out.push_str(&app_rows(&st.apps));
        }
    }
    out
}

/// The hub's freshness as the device last reported it: "hub silent" is the
/// device's verdict (it is the one that may be cut off or fed stale data).
/// (Pure.)
pub fn hub_freshness(st: &outpost_protocol::StatusReport, now: u64) -> String {
    let heard = match st.last_heartbeat {
        Some(t) => format!("last heartbeat it verified was signed {}", ago(t, now)),
        None => "it verified no heartbeat since its agent started".to_string(),
    };
    match st.hub_silent_secs {
        Some(s) => format!(
            "SILENT for the device for {} (updates withheld or link cut); {heard}",
            duration(s)
        ),
        None => format!("heard by the device; {heard}"),
    }
}

/// A device's release state in words, e.g. `generation 3 rolled back to
/// generation 2 (web: exited with code 3)`.
pub fn release(r: &outpost_protocol::ReleaseStatus) -> String {
    use outpost_protocol::ReleasePhase as P;
    let g = |id: (u64, u64)| format!("generation {}", id.1);
    let what = match &r.phase {
        P::Downloading => "downloading its images".to_string(),
        P::WaitingForLock { app } => format!("waiting: {app} holds its update lock"),
        P::Trial => "in trial".to_string(),
        P::Committed => "committed".to_string(),
        P::RolledBack { to, app, reason } => {
            format!("rolled back to {} ({app}: {reason})", g(*to))
        }
        P::Failed { app, reason } => {
            format!("failed its trial, nothing to roll back to ({app}: {reason})")
        }
    };
    let committed = match (&r.phase, r.committed) {
        (P::Committed | P::RolledBack { .. }, _) | (_, None) => String::new(),
        (_, Some(c)) => format!("; last committed {}", g(c)),
    };
    format!("{} {what}{committed}", g(r.target))
}

/// Event rows (`events`, and each batch of `events --follow`); the header
/// only when `header`.
pub fn events(es: &[EventRecord], now: u64, header: bool) -> String {
    let rows: Vec<Vec<String>> = es
        .iter()
        .map(|e| {
            let mut what = event(&e.event.kind);
            if e.event.dropped_before > 0 {
                let _ = write!(
                    what,
                    " ({} earlier event(s) dropped on the device)",
                    e.event.dropped_before
                );
            }
            vec![e.event.seq.to_string(), ago(e.received_at, now), what]
        })
        .collect();
    let text = table(&["SEQ", "RECEIVED", "EVENT"], &rows, &[0]);
    if header {
        text
    } else {
        text.lines().skip(1).fold(String::new(), |mut o, l| {
            o.push_str(l);
            o.push('\n');
            o
        })
    }
}

/// `outpost-hub deployments`.
pub fn deployments(ds: &[DeploymentRecord], now: u64) -> String {
    if ds.is_empty() {
        return "no deployments\n".into();
    }
    let rows: Vec<Vec<String>> = ds
        .iter()
        .map(|d| {
            vec![
                d.spec.name.clone(),
                d.revision.to_string(),
                labels(&d.spec.selector),
                ago(d.updated_at, now),
                d.apps
                    .iter()
                    .map(|a| format!("{}={}", a.name, a.image))
                    .collect::<Vec<_>>()
                    .join(" "),
            ]
        })
        .collect();
    table(
        &["NAME", "REVISION", "SELECTOR", "UPDATED", "APPS"],
        &rows,
        &[1],
    )
}

/// `outpost-hub stats`.
pub fn stats(s: &Stats) -> String {
    let opt = |v: Option<u64>| v.map_or_else(|| "- (external broker)".into(), |v| v.to_string());
    let mut rows = vec![
        (
            "devices",
            format!(
                "{} registered, {} online{}",
                s.devices,
                s.online,
                if s.scope.is_empty() {
                    String::new()
                } else {
                    format!(" (scope {})", s.scope)
                }
            ),
        ),
        ("manifests published", s.manifests_published.to_string()),
        ("republished to all", s.republish_all.to_string()),
        ("publish errors", s.publish_errors.to_string()),
        ("watermarks published", s.watermarks_published.to_string()),
        ("broker logins refused", opt(s.broker_logins_refused)),
        ("broker topics refused", opt(s.broker_topics_refused)),
    ];
    let counters: Vec<(String, String)> = s
        .counters
        .iter()
        .map(|(k, v)| (k.replace(['_', '.'], " "), v.to_string()))
        .collect();
    rows.extend(counters.iter().map(|(k, v)| (k.as_str(), v.clone())));
    fields(&rows)
}

/// `outpost-hub audit`.
pub fn audit(es: &[AuditEntry], now: u64) -> String {
    if es.is_empty() {
        return "the audit log is empty\n".into();
    }
    let rows: Vec<Vec<String>> = es
        .iter()
        .map(|e| {
            vec![
                e.seq.to_string(),
                ago(e.at, now),
                e.who.clone(),
                e.action.clone(),
                e.target.clone(),
                if e.detail.is_null() {
                    "-".into()
                } else {
                    e.detail.to_string()
                },
            ]
        })
        .collect();
    table(
        &["SEQ", "WHEN", "WHO", "ACTION", "TARGET", "DETAIL"],
        &rows,
        &[0],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AppCounts;

    #[test]
    fn events_read_as_words() {
        let cases = [
            (
                EventKind::ManifestApplied {
                    epoch: 1,
                    generation: 2,
                },
                "manifest accepted: epoch 1, generation 2",
            ),
            (
                EventKind::AppStarted {
                    app: "web".into(),
                    pid: 2110,
                },
                "web started (pid 2110)",
            ),
            (
                EventKind::PullProgress {
                    app: "web".into(),
                    done: 1536,
                    total: 3 << 20,
                },
                "web: pulled 1.5 KiB of 3.0 MiB",
            ),
            (
                EventKind::RolledBack {
                    from: (1, 3),
                    to: (1, 2),
                    app: "web".into(),
                    reason: "exited with code 3".into(),
                },
                "release epoch 1, generation 3 rolled back to epoch 1, generation 2 (web: exited with code 3)",
            ),
        ];
        for (kind, want) in cases {
            assert_eq!(event(&kind), want);
        }
        assert_eq!(app_state(&AppState::Running { pid: 7 }), "running (pid 7)");
        assert_eq!(
            app_state(&AppState::BackingOff { retry_in_secs: 4 }),
            "backing off, retry in 4 s"
        );
    }

    #[test]
    fn release_states_read_as_words() {
        use outpost_protocol::{ReleasePhase, ReleaseStatus};
        let at = |phase| ReleaseStatus {
            target: (1, 3),
            phase,
            committed: Some((1, 2)),
        };
        let cases = [
            (
                at(ReleasePhase::Trial),
                "generation 3 in trial; last committed generation 2",
            ),
            (at(ReleasePhase::Committed), "generation 3 committed"),
            (
                at(ReleasePhase::RolledBack {
                    to: (1, 2),
                    app: "web".into(),
                    reason: "exited with code 3".into(),
                }),
                "generation 3 rolled back to generation 2 (web: exited with code 3)",
            ),
            (
                at(ReleasePhase::WaitingForLock { app: "db".into() }),
                "generation 3 waiting: db holds its update lock; last committed generation 2",
            ),
        ];
        for (status, want) in cases {
            assert_eq!(release(&status), want);
        }
    }

    #[test]
    fn applied_generation_reads_against_the_desired_one() {
        let g = |e, g| {
            Some(GenerationView {
                epoch: e,
                generation: g,
            })
        };
        assert_eq!(applied_words(g(1, 2), g(1, 2)), "up to date");
        assert_eq!(
            applied_words(g(1, 2), g(1, 1)),
            "behind: epoch 1, generation 1"
        );
        assert_eq!(applied_words(g(1, 2), None), "nothing yet");
    }

    #[test]
    fn the_device_list_says_states_and_generations_in_words() {
        let d = DeviceSummary {
            id: "pi-1".into(),
            public_key: "ab".into(),
            labels: [("site".to_string(), "a".to_string())].into(),
            registered_at: 0,
            online: true,
            last_seen: Some(820),
            desired: Some(GenerationView {
                epoch: 1,
                generation: 2,
            }),
            applied: Some(GenerationView {
                epoch: 1,
                generation: 2,
            }),
            apps: AppCounts {
                total: 2,
                running: 1,
                failing: 1,
            },
        };
        let text = devices(&[d], 1000);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ID"), "{text}");
        assert!(
            lines[1].contains("degraded")
                && lines[1].contains("3 min ago")
                && lines[1].contains("epoch 1, generation 2")
                && lines[1].contains("up to date")
                && lines[1].contains("site=a"),
            "{text}"
        );
    }
}
