//! `/metrics`: the hub's figures in the Prometheus text format.
//!
//! Nothing here counts. Each figure has one writer elsewhere (the store's
//! ingest counters are written by ingest, [`PublishStats`] by the publisher,
//! the embedded broker's refusal counters by its login and topic checks,
//! [`IngestStats`] by the ingest task, the rest is the store's state); a
//! scrape reads them into [`Facts`] (`api::metrics`) and [`render`] turns
//! those into text, a pure function of its input.
//!
//! The encoding is the `prometheus-client` crate's (the Prometheus project's
//! own Rust client): OpenMetrics text, which Prometheus scrapes natively;
//! counters end in `_total` and the body ends with `# EOF`. A registry is
//! built per scrape, so no metric object outlives the facts it was read from.
//!
//! [`PublishStats`]: crate::outbox::PublishStats
//! [`IngestStats`]: crate::ingest::IngestStats

use crate::fleet::{AppCounts, DeviceState};
use crate::hub::rollouts::view::RolloutView;
use crate::rollout::Phase;
use outpost_protocol::RejectCounters;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One device as `/metrics` counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFacts {
    pub state: DeviceState,
    pub apps: AppCounts,
    /// Manifests (and key sets) the device refused, per reason, from its
    /// last status report (the device's own counters).
    pub rejected: RejectCounters,
    /// Is its applied generation behind the desired one?
    pub behind: bool,
    /// Hub time of its last verified status.
    pub last_seen: Option<u64>,
}

/// The hub's own counters (not about any device).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HubCounters {
    /// Ingest counters from the store: `status_accepted`,
    /// `status_rejected.<reason>`, `events_duplicate`, …
    pub ingest: BTreeMap<String, u64>,
    pub manifests_published: u64,
    pub republish_all: u64,
    pub publish_errors: u64,
    pub watermarks_published: u64,
    /// `(logins, topics)` the embedded broker refused; `None` with an
    /// external broker.
    pub broker_refused: Option<(u64, u64)>,
    /// Device messages received from the broker and not yet stored.
    pub ingest_backlog: u64,
}

/// Everything one scrape shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// Hub clock, unix seconds.
    pub now: u64,
    /// The devices inside the scraping token's scope.
    pub devices: Vec<DeviceFacts>,
    pub deployments: usize,
    /// The rollouts of deployments inside the scope.
    pub rollouts: Vec<RolloutView>,
    pub counters: HubCounters,
}

/// What an ingest counter name says: `(kind, outcome, reason)`, e.g.
/// `status_rejected.replayed` → `("status", "rejected", "replayed")`.
/// `None` for a name of another shape. (Pure.)
pub fn message_counter(name: &str) -> Option<(&str, &str, &str)> {
    let (head, reason) = match name.split_once('.') {
        Some((h, r)) => (h, r),
        None => (name, ""),
    };
    let (kind, outcome) = head.split_once('_')?;
    if kind.is_empty() || outcome.is_empty() {
        return None;
    }
    Some((kind, outcome, reason))
}

/// The phase's `phase` label value.
fn phase_label(p: &Phase) -> &'static str {
    match p {
        Phase::Running => "running",
        Phase::Paused { .. } => "paused",
        Phase::Aborted => "aborted",
        Phase::Completed => "completed",
    }
}

const PHASES: [&str; 4] = ["running", "paused", "aborted", "completed"];

fn reasons(r: &RejectCounters) -> [(&'static str, u64); 13] {
    r.by_reason()
}

type Labels = Vec<(String, String)>;

fn labels<const N: usize>(pairs: [(&str, &str); N]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn gauge(v: u64) -> Gauge {
    let g = Gauge::default();
    g.set(i64::try_from(v).unwrap_or(i64::MAX));
    g
}

fn counter(v: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(v);
    c
}

/// The text of `/metrics` for `facts`. (Pure.)
pub fn render(facts: &Facts) -> String {
    let mut reg = Registry::with_prefix("outpost_hub");

    let devices = Family::<Labels, Gauge>::default();
    for s in DeviceState::ALL {
        let n = facts.devices.iter().filter(|d| d.state == s).count();
        devices
            .get_or_create(&labels([("state", s.label())]))
            .set(n as i64);
    }
    reg.register(
        "devices",
        "Registered devices by state (online, degraded: online with a failing app, offline, never_seen)",
        devices,
    );
    reg.register(
        "devices_behind",
        "Devices whose applied generation is behind the desired one",
        gauge(facts.devices.iter().filter(|d| d.behind).count() as u64),
    );
    let apps = Family::<Labels, Gauge>::default();
    let (mut total, mut running, mut failing) = (0, 0, 0);
    for d in &facts.devices {
        total += d.apps.total;
        running += d.apps.running;
        failing += d.apps.failing;
    }
    for (state, n) in [
        ("reported", total),
        ("running", running),
        ("failing", failing),
    ] {
        apps.get_or_create(&labels([("state", state)]))
            .set(n as i64);
    }
    reg.register(
        "apps",
        "Apps in the devices' last status reports: reported, running, failing",
        apps,
    );
    let rejected = Family::<Labels, Gauge>::default();
    let mut sums: BTreeMap<&str, u64> = BTreeMap::new();
    for d in &facts.devices {
        for (reason, n) in reasons(&d.rejected) {
            *sums.entry(reason).or_insert(0) += n;
        }
    }
    for (reason, n) in &sums {
        rejected
            .get_or_create(&labels([("reason", reason)]))
            .set(i64::try_from(*n).unwrap_or(i64::MAX));
    }
    reg.register(
        "device_manifest_rejections",
        "Manifests and key sets the devices refused, by reason (sum of the devices' own counters)",
        rejected,
    );
    if let Some(last) = facts.devices.iter().filter_map(|d| d.last_seen).max() {
        reg.register(
            "ingest_last_status_age_seconds",
            "Seconds since the newest verified device status was stored",
            gauge(facts.now.saturating_sub(last)),
        );
    }

    reg.register(
        "deployments",
        "Deployments inside the token's scope",
        gauge(facts.deployments as u64),
    );
    let phases = Family::<Labels, Gauge>::default();
    for p in PHASES {
        let n = facts
            .rollouts
            .iter()
            .filter(|r| phase_label(&r.phase) == p)
            .count();
        phases.get_or_create(&labels([("phase", p)])).set(n as i64);
    }
    reg.register("rollouts", "Rollouts by phase", phases);
    let phase = Family::<Labels, Gauge>::default();
    let standing = Family::<Labels, Gauge>::default();
    for r in &facts.rollouts {
        for p in PHASES {
            phase
                .get_or_create(&labels([("deployment", &r.deployment), ("phase", p)]))
                .set(i64::from(phase_label(&r.phase) == p));
        }
        let t = &r.tally;
        for (s, n) in [
            ("committed", t.committed),
            ("failed", t.failed),
            ("pending", t.pending),
            ("skipped", t.skipped),
            ("not_updated", t.untargeted),
        ] {
            standing
                .get_or_create(&labels([("deployment", &r.deployment), ("standing", s)]))
                .set(n as i64);
        }
    }
    reg.register(
        "rollout_phase",
        "1 for the phase each deployment's latest rollout is in",
        phase,
    );
    reg.register(
        "rollout_devices",
        "Devices of each rollout by standing (committed, failed, pending, skipped, not_updated)",
        standing,
    );

    let c = &facts.counters;
    let messages = Family::<Labels, Counter>::default();
    for (name, n) in &c.ingest {
        if let Some((kind, outcome, reason)) = message_counter(name) {
            messages
                .get_or_create(&labels([
                    ("kind", kind),
                    ("outcome", outcome),
                    ("reason", reason),
                ]))
                .inc_by(*n);
        }
    }
    reg.register(
        "device_messages",
        "Device status reports and events the hub received, by kind, outcome and reason of a rejection",
        messages,
    );
    reg.register(
        "ingest_backlog_messages",
        "Device messages received from the broker and not yet stored",
        gauge(c.ingest_backlog),
    );
    reg.register(
        "manifests_published",
        "Signed manifests published to the broker",
        counter(c.manifests_published),
    );
    reg.register(
        "republish_all",
        "Times every manifest was republished (after the publish link connected)",
        counter(c.republish_all),
    );
    reg.register(
        "publish_errors",
        "Publishes that failed",
        counter(c.publish_errors),
    );
    reg.register(
        "watermarks_published",
        "Signed event watermarks published",
        counter(c.watermarks_published),
    );
    if let Some((logins, topics)) = c.broker_refused {
        reg.register(
            "broker_logins_refused",
            "Logins the embedded broker refused",
            counter(logins),
        );
        reg.register(
            "broker_topics_refused",
            "Connections the embedded broker closed over a topic they may not use",
            counter(topics),
        );
    }

    let mut out = String::new();
    // Writing into a String cannot fail; an error here would be the
    // encoder's own bug, and an empty scrape says so more safely than a panic.
    if let Err(e) = encode(&mut out, &reg) {
        tracing::error!(error = %e, "cannot encode /metrics");
        return String::from("# EOF\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(state: DeviceState, failing: usize) -> DeviceFacts {
        DeviceFacts {
            state,
            apps: AppCounts {
                total: 2,
                running: 2 - failing,
                failing,
            },
            rejected: RejectCounters {
                rollback: 1,
                ..Default::default()
            },
            behind: state == DeviceState::Offline,
            last_seen: (state != DeviceState::NeverSeen).then_some(900),
        }
    }

    fn facts() -> Facts {
        let mut ingest = BTreeMap::new();
        ingest.insert("status_accepted".to_string(), 7);
        ingest.insert("status_rejected.replayed".to_string(), 2);
        ingest.insert("events_duplicate".to_string(), 1);
        Facts {
            now: 1000,
            devices: vec![
                device(DeviceState::Online, 0),
                device(DeviceState::Online, 0),
                device(DeviceState::Degraded, 1),
                device(DeviceState::Offline, 0),
                device(DeviceState::NeverSeen, 0),
            ],
            deployments: 1,
            rollouts: vec![],
            counters: HubCounters {
                ingest,
                manifests_published: 12,
                broker_refused: Some((3, 0)),
                ..Default::default()
            },
        }
    }

    fn value<'a>(text: &'a str, sample: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
    }

    #[test]
    fn message_counter_names_split_into_kind_outcome_and_reason() {
        let cases = [
            ("status_accepted", Some(("status", "accepted", ""))),
            (
                "status_rejected.replayed",
                Some(("status", "rejected", "replayed")),
            ),
            (
                "events_rejected.wrong_key",
                Some(("events", "rejected", "wrong_key")),
            ),
            ("nounderscore", None),
            ("_x", None),
        ];
        for (name, want) in cases {
            assert_eq!(message_counter(name), want, "{name}");
        }
    }

    #[test]
    fn every_figure_is_rendered_from_the_facts() {
        let text = render(&facts());
        let want = [
            ("outpost_hub_devices{state=\"online\"}", "2"),
            ("outpost_hub_devices{state=\"degraded\"}", "1"),
            ("outpost_hub_devices{state=\"offline\"}", "1"),
            ("outpost_hub_devices{state=\"never_seen\"}", "1"),
            ("outpost_hub_devices_behind", "1"),
            ("outpost_hub_apps{state=\"failing\"}", "1"),
            ("outpost_hub_device_manifest_rejections{reason=\"rollback\"}", "5"),
            ("outpost_hub_ingest_last_status_age_seconds", "100"),
            ("outpost_hub_rollouts{phase=\"running\"}", "0"),
            (
                "outpost_hub_device_messages_total{kind=\"status\",outcome=\"rejected\",reason=\"replayed\"}",
                "2",
            ),
            ("outpost_hub_manifests_published_total", "12"),
            ("outpost_hub_broker_logins_refused_total", "3"),
        ];
        for (sample, v) in want {
            assert_eq!(value(&text, sample), Some(v), "{sample} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn an_external_broker_and_a_silent_fleet_leave_their_figures_out() {
        let mut f = facts();
        f.counters.broker_refused = None;
        f.devices.retain(|d| d.last_seen.is_none());
        let text = render(&f);
        assert!(!text.contains("broker_logins_refused"), "{text}");
        assert!(!text.contains("ingest_last_status_age_seconds"), "{text}");
        assert_eq!(
            value(&text, "outpost_hub_devices{state=\"online\"}"),
            Some("0")
        );
    }
}
