//! The dashboard's pages as HTML strings, each a pure function of its view
//! model and `now`. Every piece of text that comes from the store or a
//! device goes through [`esc`]; the pages carry no script.

use crate::api::human;
use crate::api::{DeviceDetail, DeviceState, DeviceSummary};
use crate::hub::rollouts::view::RolloutView;
use crate::render::AppConfig;
use crate::rollout::Phase;
use crate::store::{DeploymentRecord, EventRecord};
use std::fmt::Write as _;

/// HTML-escape text for element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encode a path segment (device ids and deployment names are
/// plain, but a page must not trust that).
fn seg(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Who is looking, shown in the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewer {
    pub token: String,
    pub role: String,
    pub scope: String,
}

fn layout(title: &str, page: &str, viewer: Option<&Viewer>, body: &str) -> String {
    let nav = match viewer {
        Some(v) => format!(
            "<nav><a href=\"/ui\">Fleet</a> <a href=\"/ui/deployments\">Deployments</a>\
             <span class=\"who\">token {} ({}{})</span>\
             <form method=\"post\" action=\"/ui/logout\" class=\"inline\"><button>Log out</button></form></nav>",
            esc(&v.token),
            esc(&v.role),
            if v.scope.is_empty() {
                String::new()
            } else {
                format!(", scope {}", esc(&v.scope))
            }
        ),
        None => String::new(),
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Outpost</title><link rel=\"stylesheet\" href=\"/ui/style.css\"></head>\
         <body><header><h1><a href=\"/ui\">Outpost</a></h1>{nav}</header>\
         <main data-page=\"{}\">{body}</main></body></html>\n",
        esc(title),
        esc(page)
    )
}

fn state_class(s: DeviceState) -> &'static str {
    match s {
        DeviceState::Online => "ok",
        DeviceState::Degraded => "warn",
        DeviceState::Offline => "bad",
        DeviceState::NeverSeen => "idle",
    }
}

/// The login form; `error` when a token was refused.
pub fn login(error: Option<&str>) -> String {
    let err = error
        .map(|e| format!("<p class=\"error\">{}</p>", esc(e)))
        .unwrap_or_default();
    layout(
        "Log in",
        "login",
        None,
        &format!(
            "<h2>Log in</h2>{err}<form method=\"post\" action=\"/ui/login\" class=\"login\">\
             <label>API token <input type=\"password\" name=\"token\" autocomplete=\"off\" required></label>\
             <button>Log in</button></form>\
             <p class=\"hint\">Any token works: a viewer sees, an operator may also pause, resume \
             and abort rollouts (<code>outpost-hub token create NAME --role viewer</code>), \
             or run <code>outpost-hub dashboard</code> for a one-time login link.</p>"
        ),
    )
}

/// The fleet overview: counts by state, then one row per device.
pub fn overview(viewer: &Viewer, devices: &[DeviceSummary], now: u64) -> String {
    let mut body = String::new();
    let _ = write!(
        body,
        "<h2>Fleet</h2><section class=\"counts\"><div class=\"count\"><b data-count=\"devices\">{}</b> devices</div>",
        devices.len()
    );
    for s in DeviceState::ALL {
        let n = devices.iter().filter(|d| d.state() == s).count();
        let _ = write!(
            body,
            "<div class=\"count {}\"><b data-count=\"{}\">{n}</b> {}</div>",
            state_class(s),
            s.label(),
            esc(s.as_str())
        );
    }
    body.push_str("</section>");
    if devices.is_empty() {
        body.push_str("<p>No devices registered.</p>");
    } else {
        body.push_str(
            "<table class=\"devices\"><thead><tr><th>Device</th><th>State</th><th>Last seen</th>\
             <th>Labels</th><th>Desired</th><th>Applied</th><th>Apps running</th><th>Failing</th>\
             </tr></thead><tbody>",
        );
        for d in devices {
            let s = d.state();
            let desired = d
                .desired
                .map_or("none".into(), |g| human::generation(g.epoch, g.generation));
            let _ = write!(
                body,
                "<tr data-device=\"{id}\"><td><a href=\"/ui/devices/{href}\">{id}</a></td>\
                 <td><span class=\"state {cls}\">{state}</span></td><td>{seen}</td><td>{labels}</td>\
                 <td>{desired}</td><td>{applied}</td><td class=\"num\">{run}/{total}</td>\
                 <td class=\"num{fail_cls}\">{failing}</td></tr>",
                id = esc(&d.id),
                href = seg(&d.id),
                cls = state_class(s),
                state = esc(s.as_str()),
                seen = esc(&human::ago_or_never(d.last_seen, now)),
                labels = esc(&human::labels(&d.labels)),
                desired = esc(&desired),
                applied = esc(&human::applied_words(d.desired, d.applied)),
                run = d.apps.running,
                total = d.apps.total,
                fail_cls = if d.apps.failing > 0 { " bad" } else { "" },
                failing = d.apps.failing,
            );
        }
        body.push_str("</tbody></table>");
    }
    layout("Fleet", "overview", Some(viewer), &body)
}

/// One device: its facts, apps, each app's configuration with where every
/// value comes from (or why it cannot be shown), and latest events (newest
/// first).
pub fn device(
    viewer: &Viewer,
    d: &DeviceDetail,
    config: Result<&[AppConfig], String>,
    events: &[EventRecord],
    now: u64,
) -> String {
    let s = &d.summary;
    let mut body = format!(
        "<h2>Device <span data-device-id>{}</span> <span class=\"state {}\">{}</span></h2>",
        esc(&s.id),
        state_class(s.state()),
        esc(s.state().as_str())
    );
    let text = human::status(d, now);
    // The facts as a definition list, from the CLI's words.
    body.push_str("<dl class=\"facts\">");
    for line in text.lines().take_while(|l| !l.is_empty()) {
        if let Some((k, v)) = line.split_once(':') {
            let _ = write!(body, "<dt>{}</dt><dd>{}</dd>", esc(k), esc(v.trim()));
        }
    }
    body.push_str("</dl><h3>Apps</h3>");
    match &d.status {
        Some(st) if !st.apps.is_empty() => {
            body.push_str(
                "<table class=\"apps\"><thead><tr><th>App</th><th>State</th><th>Ready</th>\
                 <th>Restarts</th><th>Last error</th></tr></thead><tbody>",
            );
            for a in &st.apps {
                let failing = matches!(
                    a.state,
                    outpost_protocol::AppState::Failed
                        | outpost_protocol::AppState::BackingOff { .. }
                        | outpost_protocol::AppState::Exited { .. }
                ) || a.ready == Some(false);
                let _ = write!(
                    body,
                    "<tr data-app=\"{name}\"><td>{name}</td><td class=\"{cls}\">{state}</td><td>{ready}</td>\
                     <td class=\"num\">{restarts}</td><td>{err}</td></tr>",
                    name = esc(&a.name),
                    cls = if failing { "bad" } else { "ok" },
                    state = esc(&human::app_state(&a.state)),
                    ready = match a.ready {
                        None => "-",
                        Some(true) => "yes",
                        Some(false) => "no",
                    },
                    restarts = a.restarts,
                    err = esc(a.last_error.as_deref().unwrap_or("-")),
                );
            }
            body.push_str("</tbody></table>");
        }
        _ => body.push_str("<p>No apps reported.</p>"),
    }
    body.push_str("<h3>Configuration</h3>");
    match config {
        Err(e) => {
            let _ = write!(body, "<p class=\"error\">{}</p>", esc(&e));
        }
        Ok(apps) if apps.iter().all(|a| a.vars.is_empty()) => {
            body.push_str("<p>No app takes configuration.</p>");
        }
        Ok(apps) => {
            body.push_str(
                "<table class=\"config\"><thead><tr><th>App</th><th>Variable</th><th>Value</th>\
                 <th>From</th></tr></thead><tbody>",
            );
            for a in apps {
                for (k, r) in &a.vars {
                    let _ = write!(
                        body,
                        "<tr data-var=\"{app}/{key}\"><td>{app}</td><td>{key}</td><td>{value}</td><td>{from}</td></tr>",
                        app = esc(&a.app),
                        key = esc(k),
                        value = esc(&r.value),
                        from = esc(&r.from),
                    );
                }
            }
            body.push_str("</tbody></table>");
        }
    }
    body.push_str("<h3>Events</h3>");
    if events.is_empty() {
        body.push_str("<p>No events.</p>");
    } else {
        body.push_str(
            "<table class=\"events\"><thead><tr><th>#</th><th>Received</th><th>Event</th></tr></thead><tbody>",
        );
        for e in events.iter().rev() {
            let _ = write!(
                body,
                "<tr><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
                e.event.seq,
                esc(&human::ago(e.received_at, now)),
                esc(&human::event(&e.event.kind))
            );
        }
        body.push_str("</tbody></table>");
    }
    layout(&s.id, "device", Some(viewer), &body)
}

/// What the deployments page shows of each rollout, and which commands the
/// viewer may give it.
#[derive(Debug, Clone)]
pub struct RolloutRow {
    pub view: RolloutView,
    /// `pause`, `resume`, `abort` the viewer's token may give now.
    pub commands: Vec<&'static str>,
}

/// The commands a rollout in `phase` accepts. (Pure.)
pub fn commands_for(phase: &Phase) -> Vec<&'static str> {
    match phase {
        Phase::Running => vec!["pause", "abort"],
        Phase::Paused { .. } => vec!["resume", "abort"],
        Phase::Aborted | Phase::Completed => vec![],
    }
}

/// Deployments, and the rollouts with progress and (for operators) buttons.
pub fn deployments(
    viewer: &Viewer,
    deployments: &[DeploymentRecord],
    rollouts: &[RolloutRow],
    now: u64,
) -> String {
    let mut body = String::from("<h2>Deployments</h2>");
    if deployments.is_empty() {
        body.push_str("<p>No deployments.</p>");
    } else {
        body.push_str(
            "<table class=\"deployments\"><thead><tr><th>Name</th><th>Revision</th><th>Selector</th>\
             <th>Updated</th><th>Apps</th></tr></thead><tbody>",
        );
        for d in deployments {
            let apps: Vec<String> = d
                .apps
                .iter()
                .map(|a| format!("{}={}", a.name, a.image))
                .collect();
            let _ = write!(
                body,
                "<tr data-deployment=\"{name}\"><td>{name}</td><td class=\"num\">{rev}</td><td>{sel}</td>\
                 <td>{upd}</td><td class=\"mono\">{apps}</td></tr>",
                name = esc(&d.spec.name),
                rev = d.revision,
                sel = esc(&human::labels(&d.spec.selector)),
                upd = esc(&human::ago(d.updated_at, now)),
                apps = esc(&apps.join(" ")),
            );
        }
        body.push_str("</tbody></table>");
    }
    body.push_str("<h2>Rollouts</h2>");
    if rollouts.is_empty() {
        body.push_str("<p>No rollouts.</p>");
    }
    for r in rollouts {
        let v = &r.view;
        let t = &v.tally;
        let _ = write!(
            body,
            "<section class=\"rollout\" data-rollout=\"{name}\" data-phase=\"{phase}\">\
             <h3>{name} <small>revision {rev}</small></h3><p class=\"phase\">{state}, started {started}</p>\
             <div class=\"bar\" title=\"{c} committed, {f} failed, {p} pending of {m}\">{bar}</div>\
             <p><b data-committed>{c}</b> of <b data-matched>{m}</b> committed, {f} failed, <b data-pending>{p}</b> pending, \
             {s} skipped (offline), {u} not yet updated</p>",
            name = esc(&v.deployment),
            phase = match v.phase {
                Phase::Running => "running",
                Phase::Paused { .. } => "paused",
                Phase::Aborted => "aborted",
                Phase::Completed => "completed",
            },
            rev = v.revision,
            state = esc(&v.state),
            started = esc(&human::ago(v.started_at, now)),
            c = t.committed,
            f = t.failed,
            p = t.pending,
            s = t.skipped,
            u = t.untargeted,
            m = v.matched,
            bar = bar(&[
                ("committed", t.committed),
                ("failed", t.failed),
                ("pending", t.pending),
                ("rest", v.matched.saturating_sub(t.committed + t.failed + t.pending)),
            ]),
        );
        if !r.commands.is_empty() {
            body.push_str("<div class=\"commands\">");
            for c in &r.commands {
                let _ = write!(
                    body,
                    "<form method=\"post\" action=\"/ui/rollouts/{}/{c}\" class=\"inline\">\
                     <button class=\"{c}\" name=\"command\" value=\"{c}\">{}</button></form>",
                    seg(&v.deployment),
                    match *c {
                        "pause" => "Pause",
                        "resume" => "Resume",
                        _ => "Abort",
                    }
                );
            }
            body.push_str("</div>");
        }
        body.push_str("</section>");
    }
    layout("Deployments", "deployments", Some(viewer), &body)
}

/// A progress bar without inline styles (the pages' CSP allows none): one
/// equal-width segment per device, or per 1% of devices beyond 100, each
/// with its part's class. (Pure.)
pub fn bar(parts: &[(&str, usize)]) -> String {
    let total: usize = parts.iter().map(|(_, n)| n).sum();
    let mut out = String::new();
    for (class, n) in parts {
        let segments = if total <= 100 {
            *n
        } else {
            (n * 100).div_ceil(total)
        };
        for _ in 0..segments {
            let _ = write!(out, "<span class=\"{class}\"></span>");
        }
    }
    out
}

/// A page for an error (404, 403, …), with what failed.
pub fn error(viewer: Option<&Viewer>, status: u16, message: &str) -> String {
    layout(
        "Error",
        "error",
        viewer,
        &format!(
            "<h2>Error {status}</h2><p class=\"error\">{}</p><p><a href=\"/ui\">Back to the fleet</a></p>",
            esc(message)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AppCounts, GenerationView};

    fn viewer() -> Viewer {
        Viewer {
            token: "ops".into(),
            role: "operator".into(),
            scope: String::new(),
        }
    }

    fn summary(id: &str, online: bool, seen: Option<u64>, failing: usize) -> DeviceSummary {
        DeviceSummary {
            id: id.into(),
            public_key: "ab".into(),
            labels: Default::default(),
            registered_at: 0,
            online,
            last_seen: seen,
            desired: Some(GenerationView {
                epoch: 1,
                generation: 2,
            }),
            applied: None,
            apps: AppCounts {
                total: 1,
                running: 1 - failing,
                failing,
            },
        }
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(seg("a b/c"), "a%20b%2Fc");
        let page = error(None, 404, "device \"<script>\" not found");
        assert!(!page.contains("<script>"), "{page}");
    }

    #[test]
    fn the_overview_counts_devices_by_state() {
        let ds = [
            summary("a", true, Some(90), 0),
            summary("b", true, Some(90), 1),
            summary("c", false, Some(1), 0),
            summary("d", false, None, 0),
        ];
        let page = overview(&viewer(), &ds, 100);
        for (what, n) in [
            ("devices", 4),
            ("online", 1),
            ("degraded", 1),
            ("offline", 1),
            ("never_seen", 1),
        ] {
            assert!(
                page.contains(&format!("data-count=\"{what}\">{n}</b>")),
                "{what} {n}: {page}"
            );
        }
        assert!(page.contains("href=\"/ui/devices/a\""), "{page}");
        assert!(page.contains("epoch 1, generation 2"), "{page}");
        assert!(!page.contains("<script"), "{page}");
    }

    #[test]
    fn the_progress_bar_has_a_segment_per_device_or_percent() {
        let small = bar(&[("committed", 2), ("pending", 1)]);
        assert_eq!(small.matches("class=\"committed\"").count(), 2);
        assert_eq!(small.matches("class=\"pending\"").count(), 1);
        let big = bar(&[("committed", 500), ("rest", 500)]);
        assert_eq!(big.matches("<span").count(), 100);
        assert!(!big.contains("style="));
    }

    #[test]
    fn rollout_buttons_follow_the_phase() {
        assert_eq!(commands_for(&Phase::Running), ["pause", "abort"]);
        assert_eq!(
            commands_for(&Phase::Paused {
                reason: crate::rollout::PauseReason::Operator
            }),
            ["resume", "abort"]
        );
        assert!(commands_for(&Phase::Completed).is_empty());
    }
}
