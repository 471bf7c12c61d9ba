//! The web dashboard in a real browser: headless Chromium (Debian's
//! `chromium`, installed by scripts/deps.sh) loads each page from a real hub
//! binary with devices reporting over its embedded broker and a rollout in
//! progress, logged in through a one-time link (`outpost-hub dashboard`).
//! The test reads the DOM Chromium rendered: the fleet's device count and
//! states, a device's apps and events, the rollout's progress and its
//! buttons; a page that errors fails it. The pause button's form is then
//! posted as a browser would (cookie, Origin) and the rollout pauses.
//!
//! Screenshots of each page are taken too; with `OUTPOST_UPDATE_SCREENSHOTS=1`
//! they are copied to docs/screenshots/ (the README shows them).
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use common::*;
use outpost_hub::api::DeviceSummary;
use outpost_protocol::status::{ReleasePhase, ReleaseStatus};
use outpost_protocol::{AppState, EventKind};
use outpost_test_support::eventually_async;
use reqwest::Method;
use std::path::{Path, PathBuf};
use std::process::Command;

const CHROMIUM: &str = "chromium";

/// Run headless Chromium on `url` with `args`; its stdout. Fails the test
/// (naming the command) if it cannot run or exits non-zero.
fn chromium(profile: &Path, url: &str, args: &[&str]) -> String {
    let out = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--ignore-certificate-errors",
            "--hide-scrollbars",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `{CHROMIUM}` (scripts/deps.sh installs Debian's chromium): {e}")
        });
    assert!(
        out.status.success(),
        "{CHROMIUM} {args:?} {url} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh one-time login link to `page`.
async fn link(hub: &HubProc, page: &str) -> String {
    let v: serde_json::Value = hub
        .api
        .call(
            Method::POST,
            "/v1/ui/links",
            Some(&serde_json::json!({ "next": page })),
        )
        .await
        .unwrap();
    format!("{}{}", hub.addrs.url(), v["path"].as_str().unwrap())
}

/// Load `page` in Chromium (through a login link); the rendered DOM, after
/// checking it is the page asked for and not an error.
async fn load(hub: &HubProc, profile: &Path, page: &str, kind: &str) -> String {
    let dom = chromium(profile, &link(hub, page).await, &["--dump-dom"]);
    assert!(
        dom.contains(&format!("data-page=\"{kind}\"")),
        "{page} did not render the {kind} page:\n{dom}"
    );
    dom
}

/// A screenshot of `page` into `dir/name`.
async fn screenshot(hub: &HubProc, profile: &Path, page: &str, dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    chromium(
        profile,
        &link(hub, page).await,
        &[&format!("--screenshot={}", path.display())],
    );
    let png = std::fs::read(&path).unwrap();
    assert!(
        png.starts_with(b"\x89PNG"),
        "{} is not a PNG",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_pages_render_in_headless_chromium_with_the_fleet_as_it_is() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    init(&dir);
    let hub = HubProc::start(&dir, None).await;

    // Five devices: three report (one with a failing app), two never do.
    let mut reporting = Vec::new();
    for id in ["gw-berlin-01", "gw-berlin-02", "gw-lyon-01"] {
        reporting.push(FakeDevice::register(&hub, id, &["site=a"]).await);
    }
    for id in ["gw-oslo-01", "gw-oslo-02"] {
        FakeDevice::register(&hub, id, &["site=b"]).await;
    }
    hub.cli(&["apply", "-f", &web_file(tmp.path(), 1, false)]);
    let g1 = desired_of(&hub, "gw-berlin-01").await;
    for (i, d) in reporting.iter_mut().enumerate() {
        let state = if i == 2 {
            AppState::BackingOff { retry_in_secs: 8 }
        } else {
            AppState::Running {
                pid: 2100 + i as u32,
            }
        };
        let release = ReleaseStatus {
            target: g1,
            phase: ReleasePhase::Committed,
            committed: Some(g1),
        };
        d.report(g1, vec![app("web", state)], Some(release)).await;
    }
    let first = &reporting[0];
    first
        .event(
            1,
            EventKind::ManifestApplied {
                epoch: g1.0,
                generation: g1.1,
            },
        )
        .await;
    first
        .event(
            2,
            EventKind::AppStarted {
                app: "web".into(),
                pid: 2100,
            },
        )
        .await;
    eventually_async(DEADLINE, "three devices online, two events", || async {
        let ds: Vec<DeviceSummary> = hub.api.get("/v1/devices").await.ok()?;
        let es: Vec<serde_json::Value> =
            hub.api.get("/v1/devices/gw-berlin-01/events").await.ok()?;
        (ds.iter().filter(|d| d.online).count() == 3 && es.len() == 2).then_some(())
    })
    .await;
    // A new image rolled out with a canary: in progress.
    let out = hub.cli(&["apply", "-f", &web_file(tmp.path(), 2, true)]);
    assert!(out.contains("rollout started"), "{out}");

    let profile = tmp.path().join("chromium");
    let shots = tmp.path().join("shots");
    std::fs::create_dir_all(&shots).unwrap();

    // The fleet overview: 5 devices, 2 online, 1 degraded, 2 never seen.
    let dom = load(&hub, &profile, "/ui", "overview").await;
    for (what, n) in [
        ("devices", 5),
        ("online", 2),
        ("degraded", 1),
        ("offline", 0),
        ("never_seen", 2),
    ] {
        assert!(
            dom.contains(&format!("data-count=\"{what}\">{n}</b>")),
            "{what} should be {n}:\n{dom}"
        );
    }
    assert_eq!(dom.matches("<tr data-device=").count(), 5, "{dom}");
    assert!(dom.contains("href=\"/ui/devices/gw-lyon-01\""), "{dom}");

    // A device page: its app and events in words.
    let dom = load(&hub, &profile, "/ui/devices/gw-berlin-01", "device").await;
    assert!(dom.contains("running (pid 2100)"), "{dom}");
    assert!(dom.contains("web started (pid 2100)"), "{dom}");
    assert!(
        dom.contains(&format!(
            "manifest accepted: epoch {}, generation {}",
            g1.0, g1.1
        )),
        "{dom}"
    );

    // Deployments and the rollout in progress, with buttons for the admin.
    let dom = load(&hub, &profile, "/ui/deployments", "deployments").await;
    assert!(
        dom.contains("data-rollout=\"web\" data-phase=\"running\""),
        "{dom}"
    );
    assert!(dom.contains("<b data-matched=\"\">3</b>"), "{dom}");
    assert!(dom.contains("<b data-pending=\"\">1</b>"), "{dom}");
    assert!(dom.contains("action=\"/ui/rollouts/web/pause\""), "{dom}");
    assert!(dom.contains("action=\"/ui/rollouts/web/abort\""), "{dom}");

    // A page that does not exist is an error page, not a blank one.
    let dom = chromium(
        &profile,
        &link(&hub, "/ui/devices/no-such-device").await,
        &["--dump-dom"],
    );
    assert!(
        dom.contains("data-page=\"error\"") && dom.contains("no-such-device"),
        "{dom}"
    );
    // Without a session, the login form.
    let dom = chromium(
        &tmp.path().join("fresh-profile"),
        &format!("{}/ui", hub.addrs.url()),
        &["--dump-dom"],
    );
    assert!(dom.contains("data-page=\"login\""), "{dom}");

    // A viewer sees the rollout but gets no buttons.
    let made: serde_json::Value =
        serde_json::from_str(&hub.cli(&["token", "create", "wall", "--role", "viewer", "--json"]))
            .unwrap();
    let viewer = outpost_hub::client::ApiClient::with_trust(
        hub.addrs.url(),
        made["secret"].as_str().unwrap(),
        outpost_hub::client::Trust::choose(None, &outpost_hub::config::DataDir::new(&dir)),
    )
    .unwrap();
    let v: serde_json::Value = viewer
        .call(
            Method::POST,
            "/v1/ui/links",
            Some(&serde_json::json!({ "next": "/ui/deployments" })),
        )
        .await
        .unwrap();
    let dom = chromium(
        &tmp.path().join("viewer-profile"),
        &format!("{}{}", hub.addrs.url(), v["path"].as_str().unwrap()),
        &["--dump-dom"],
    );
    assert!(dom.contains("data-rollout=\"web\""), "{dom}");
    assert!(!dom.contains("/ui/rollouts/web/pause"), "{dom}");

    // Screenshots of each page.
    let mut taken = Vec::new();
    for (page, name) in [
        ("/ui", "dashboard-fleet.png"),
        ("/ui/devices/gw-berlin-01", "dashboard-device.png"),
        ("/ui/deployments", "dashboard-deployments.png"),
    ] {
        taken.push(screenshot(&hub, &profile, page, &shots, name).await);
    }
    if std::env::var_os("OUTPOST_UPDATE_SCREENSHOTS").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
        std::fs::create_dir_all(&docs).unwrap();
        for p in &taken {
            std::fs::copy(p, docs.join(p.file_name().unwrap())).unwrap();
        }
    }

    // A device's configuration, each value with its source (set last, so the
    // pages above show the fleet as it was; an escaped value stays text).
    hub.cli(&[
        "config",
        "set",
        "--device",
        "gw-berlin-01",
        "--app",
        "web",
        "GREETING=<b>hi</b>",
    ]);
    let dom = load(&hub, &profile, "/ui/devices/gw-berlin-01", "device").await;
    assert!(dom.contains("<tr data-var=\"web/GREETING\">"), "{dom}");
    assert!(dom.contains("&lt;b&gt;hi&lt;/b&gt;"), "{dom}");
    assert!(dom.contains("device gw-berlin-01, app web"), "{dom}");
    let dom = load(&hub, &profile, "/ui/devices/gw-lyon-01", "device").await;
    assert!(dom.contains("No app takes configuration."), "{dom}");

    // The pause button's form, posted as the browser would: the session
    // cookie (from a login link) and the page's own origin.
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = http
        .get(link(&hub, "/ui/deployments").await)
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict")
            && cookie.contains("Secure"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    let origin = hub.addrs.url();
    let forged = http
        .post(format!("{origin}/ui/rollouts/web/pause"))
        .header("cookie", &session)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 400);
    let paused = http
        .post(format!("{origin}/ui/rollouts/web/pause"))
        .header("cookie", &session)
        .header("origin", &origin)
        .send()
        .await
        .unwrap();
    assert_eq!(paused.status(), 303);
    let v: serde_json::Value = hub.api.get("/v1/rollouts/web").await.unwrap();
    assert!(v["state"].as_str().unwrap().starts_with("paused"), "{v}");
    // The audit log names the token behind the browser.
    let audit: Vec<outpost_hub::store::AuditEntry> =
        serde_json::from_str(&hub.cli(&["audit", "--json"])).unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.action == "rollout.pause" && e.who == "token:admin"),
        "{audit:?}"
    );
}
