//! The optional `/metrics` listener (`metrics_listen` in agent.toml, off by
//! default, loopback only): the agent's figures in the Prometheus text format
//! for a collector on the device.
//!
//! [`render`] is a pure function of the status view (whose parts each have
//! one writer, see [`crate::view`]) and the reporter's figures; [`serve`] is a
//! deliberately small HTTP/1.1 responder (one `GET` per connection, bounded
//! request, deadline), so the agent carries no HTTP server framework.

use crate::report::Reporter;
use crate::view::View;
use outpost_protocol::AppState;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The reporter's own figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReportFigures {
    pub reports_sent: u64,
    pub last_report_age_secs: Option<u64>,
}

type Labels = Vec<(String, String)>;

fn label(k: &str, v: &str) -> Labels {
    vec![(k.to_string(), v.to_string())]
}

/// An app's state as a `state` label value.
fn state_label(s: &AppState) -> &'static str {
    match s {
        AppState::Pending => "pending",
        AppState::Pulling { .. } => "pulling",
        AppState::Starting => "starting",
        AppState::Running { .. } => "running",
        AppState::Exited { .. } => "exited",
        AppState::BackingOff { .. } => "backing_off",
        AppState::Failed => "failed",
        AppState::Stopped => "stopped",
    }
}

const STATES: [&str; 8] = [
    "pending",
    "pulling",
    "starting",
    "running",
    "exited",
    "backing_off",
    "failed",
    "stopped",
];

/// The text of `/metrics`. (Pure.)
pub fn render(view: &View, report: ReportFigures) -> String {
    let mut reg = Registry::with_prefix("outpost_agent");
    let apps = Family::<Labels, Gauge>::default();
    for s in STATES {
        let n = view
            .apps
            .values()
            .filter(|a| state_label(&a.state) == s)
            .count();
        apps.get_or_create(&label("state", s)).set(n as i64);
    }
    reg.register("apps", "Apps by state", apps);
    let restarts = Family::<Labels, Counter>::default();
    for (name, a) in &view.apps {
        restarts
            .get_or_create(&label("app", name))
            .inc_by(u64::from(a.restarts));
    }
    reg.register("app_restarts", "Restarts of each app", restarts);
    let ready = Family::<Labels, Gauge>::default();
    for (name, a) in &view.apps {
        if let Some(r) = a.ready {
            ready.get_or_create(&label("app", name)).set(i64::from(r));
        }
    }
    reg.register(
        "app_ready",
        "1 if the app's health check passes (apps with a check only)",
        ready,
    );
    let r = &view.rejected;
    let rejected = Family::<Labels, Counter>::default();
    for (reason, n) in r.by_reason() {
        rejected.get_or_create(&label("reason", reason)).inc_by(n);
    }
    reg.register(
        "manifests_rejected",
        "Manifests and key sets refused, by reason",
        rejected,
    );
    let gen = |v: u64| {
        let g = Gauge::<i64>::default();
        g.set(i64::try_from(v).unwrap_or(i64::MAX));
        g
    };
    if let Some((epoch, generation)) = view.applied {
        reg.register(
            "manifest_epoch",
            "Epoch of the accepted manifest",
            gen(epoch),
        );
        reg.register(
            "manifest_generation",
            "Generation of the accepted manifest",
            gen(generation),
        );
    }
    reg.register(
        "broker_connected",
        "1 while the MQTT link is up",
        gen(u64::from(view.connected)),
    );
    let sent = Counter::<u64>::default();
    sent.inc_by(report.reports_sent);
    reg.register(
        "status_reports",
        "Signed status reports sent in this boot",
        sent,
    );
    if let Some(age) = report.last_report_age_secs {
        reg.register(
            "last_report_age_seconds",
            "Seconds since the last status report was sent",
            gen(age),
        );
    }
    let mut out = String::new();
    if let Err(e) = encode(&mut out, &reg) {
        tracing::error!(error = %e, "cannot encode /metrics");
        return String::from("# EOF\n");
    }
    out
}

/// Longest request head read; a scraper's is a few hundred bytes.
const MAX_REQUEST: usize = 8 * 1024;
/// A client that has not sent its request by then is dropped.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// What to answer to a request head. (Pure.)
fn respond(head: &str, body: impl FnOnce() -> String) -> (u16, &'static str, String) {
    let line = head.lines().next().unwrap_or("");
    let mut words = line.split_whitespace();
    match (words.next(), words.next()) {
        (Some("GET"), Some("/metrics")) => (
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body(),
        ),
        (Some("GET"), Some(_)) => (404, "text/plain", "only /metrics is served\n".into()),
        _ => (405, "text/plain", "only GET /metrics is served\n".into()),
    }
}

async fn one(mut stream: TcpStream, reporter: &Reporter) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let (code, kind, body) = respond(&head, || {
        render(
            &reporter.view(),
            ReportFigures {
                reports_sent: reporter.reports_sent(),
                last_report_age_secs: reporter.last_report_age_secs(),
            },
        )
    });
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        _ => "Method Not Allowed",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Answer scrapes on `listener` until `cancel`; one connection at a time
/// (a scraper asks every few seconds).
pub async fn serve(listener: TcpListener, reporter: Arc<Reporter>, cancel: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener cannot accept");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        match tokio::time::timeout(REQUEST_DEADLINE, one(stream, &reporter)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics request failed"),
            Err(_) => tracing::debug!(%peer, "metrics request timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_protocol::{AppStatus, RejectCounters};

    fn app(name: &str, state: AppState, restarts: u32) -> (String, AppStatus) {
        (
            name.to_string(),
            AppStatus {
                name: name.into(),
                state,
                restarts,
                last_error: None,
                image_digest: None,
                ready: Some(true),
            },
        )
    }

    #[test]
    fn the_view_and_report_figures_are_rendered() {
        let view = View {
            applied: Some((1, 4)),
            apps: [
                app("web", AppState::Running { pid: 7 }, 2),
                app("db", AppState::BackingOff { retry_in_secs: 4 }, 5),
            ]
            .into_iter()
            .collect(),
            rejected: RejectCounters {
                bad_signature: 3,
                ..Default::default()
            },
            last_rejection: None,
            connected: true,
            release: None,
            last_heartbeat: None,
            time_floor: 0,
        };
        let text = render(
            &view,
            ReportFigures {
                reports_sent: 9,
                last_report_age_secs: Some(12),
            },
        );
        for line in [
            "outpost_agent_apps{state=\"running\"} 1",
            "outpost_agent_apps{state=\"backing_off\"} 1",
            "outpost_agent_apps{state=\"failed\"} 0",
            "outpost_agent_app_restarts_total{app=\"db\"} 5",
            "outpost_agent_app_ready{app=\"web\"} 1",
            "outpost_agent_manifests_rejected_total{reason=\"bad_signature\"} 3",
            "outpost_agent_manifest_generation 4",
            "outpost_agent_broker_connected 1",
            "outpost_agent_status_reports_total 9",
            "outpost_agent_last_report_age_seconds 12",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        let quiet = render(&View::default(), ReportFigures::default());
        assert!(!quiet.contains("last_report_age_seconds"), "{quiet}");
        assert!(!quiet.contains("manifest_generation"), "{quiet}");
    }

    #[test]
    fn only_get_metrics_is_answered() {
        let body = || "x".to_string();
        assert_eq!(respond("GET /metrics HTTP/1.1\r\n", body).0, 200);
        assert_eq!(respond("GET / HTTP/1.1\r\n", body).0, 404);
        assert_eq!(respond("POST /metrics HTTP/1.1\r\n", body).0, 405);
        assert_eq!(respond("", body).0, 405);
    }
}
