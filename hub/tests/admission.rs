//! The admission policy through the real binary: a deployment asking for
//! CAP_SYS_ADMIN or /dev/mem is refused through the CLI and the HTTP API with
//! the field and the rule named, changes nothing (no deployment, no new
//! manifest generation) but the audit log, and is accepted once an
//! `[[admission]]` table in `hub.toml` grants it in the deployment's scope.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use common::*;
use outpost_hub::api::DeviceDetail;
use outpost_hub::client::ClientError;
use outpost_hub::deploy::DeploymentSpec;
use outpost_hub::hub::ApplyOutcome;
use outpost_hub::store::{AuditEntry, DeploymentRecord};
use outpost_protocol::{topics, DeviceId, SigningKey};
use reqwest::{Method, StatusCode};
use std::path::Path;

/// A deployment of one pinned app on `site`, with `extra` app fields.
fn deployment(dir: &Path, name: &str, site: &str, extra: &str) -> std::path::PathBuf {
    let text = format!(
        "name = \"{name}\"\nselector = {{ site = \"{site}\" }}\n\n[[apps]]\nname = \"{name}\"\nimage = \"{}\"\n{extra}\n",
        pinned("reg/priv", 7)
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

async fn generation(hub: &HubProc, device: &str) -> u64 {
    let d: DeviceDetail = hub.api.get(&format!("/v1/devices/{device}")).await.unwrap();
    d.summary.desired.unwrap().generation
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_privileged_deployment_is_refused_until_the_policy_grants_it_in_its_scope() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    init(&dir);
    let hub = HubProc::start(&dir, None).await;
    let key = SigningKey::generate().unwrap();
    hub.cli(&[
        "device",
        "add",
        "gw-1",
        "--public-key",
        &key.public_key().to_string(),
        "--label",
        "site=plant-a",
    ]);
    let id: DeviceId = "gw-1".parse().unwrap();
    let topic = topics::manifest(&id);
    let mut sub =
        Subscriber::device(&id, &key, hub.mqtt_port(), std::slice::from_ref(&topic)).await;
    let mut v = verifier(&dir, &id);
    let (first, _) = manifest_where(&mut sub, &topic, &mut v, |_| true).await;
    assert!(first.apps.is_empty());

    // CLI: CAP_SYS_ADMIN under the default policy.
    let admin = deployment(
        tmp.path(),
        "admin",
        "plant-a",
        "capabilities = [\"CAP_SYS_ADMIN\"]",
    );
    let err = hub.cli_err(&["apply", "-f", admin.to_str().unwrap()]);
    assert!(
        err.contains(
            "deployment \"admin\": apps[0].capabilities: CAP_SYS_ADMIN is not allowed by the admission policy \
             (rule: default deny list; grant it with [[admission]] scope \"site=plant-a\" allow_capabilities)"
        ) && err.contains("403"),
        "{err}"
    );

    // HTTP API: /dev/mem, refused with 403 and the field.
    let mem_file = deployment(
        tmp.path(),
        "memdump",
        "plant-a",
        "devices = [{ host_path = \"/dev/mem\", permissions = \"r\" }]",
    );
    let mem = DeploymentSpec::from_toml(&std::fs::read_to_string(&mem_file).unwrap()).unwrap();
    let refused = hub
        .api
        .call::<_, ApplyOutcome>(Method::PUT, "/v1/deployments", Some(&mem))
        .await
        .unwrap_err();
    match &refused {
        ClientError::Api {
            status,
            field,
            message,
            ..
        } => {
            assert_eq!(*status, StatusCode::FORBIDDEN, "{refused}");
            assert_eq!(
                field.as_deref(),
                Some("apps[0].devices[0].host_path"),
                "{refused}"
            );
            assert!(
                message.contains("/dev/mem is not allowed by the admission policy")
                    && message.contains("default deny list (/dev/mem)")
                    && message.contains("scope \"site=plant-a\" allow_devices"),
                "{refused}"
            );
        }
        other => panic!("expected a refusal, got {other}"),
    }

    // Refused applies changed nothing: no deployment, no new generation; the
    // audit log records both refusals.
    let stored: Vec<DeploymentRecord> = hub.api.get("/v1/deployments").await.unwrap();
    assert!(stored.is_empty(), "{stored:?}");
    assert_eq!(generation(&hub, "gw-1").await, first.generation);
    let audit: Vec<AuditEntry> = hub.api.get("/v1/audit?limit=10").await.unwrap();
    let refusals: Vec<&str> = audit
        .iter()
        .filter(|e| e.action == "deployment.refused")
        .map(|e| e.target.as_str())
        .collect();
    assert_eq!(refusals, ["memdump", "admin"], "{audit:?}");

    // The operator grants both in plant-a (hub.toml, read at start).
    hub.kill();
    let config = dir.join("hub.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(
        "\n[[admission]]\nscope = \"site=plant-a\"\nallow_capabilities = [\"CAP_SYS_ADMIN\"]\nallow_devices = [\"/dev/mem\"]\n",
    );
    std::fs::write(&config, text).unwrap();
    let hub = HubProc::start(&dir, None).await;
    // The restarted hub's embedded broker listens on a new port.
    drop(sub);
    let mut sub =
        Subscriber::device(&id, &key, hub.mqtt_port(), std::slice::from_ref(&topic)).await;

    let out = hub.cli(&["apply", "-f", admin.to_str().unwrap()]);
    assert!(out.contains("1 device(s) matched"), "{out}");
    let applied: ApplyOutcome = hub
        .api
        .call(Method::PUT, "/v1/deployments", Some(&mem))
        .await
        .unwrap();
    assert_eq!(applied.matched_devices, 1);
    // The next generation the device sees carries the privileged apps: the
    // refused applies used none up.
    let (granted, _) = manifest_where(&mut sub, &topic, &mut v, |m| m.apps.len() == 2).await;
    assert_eq!(granted.generation, first.generation + 2);
    let admin_app = granted.apps.iter().find(|a| a.name == "admin").unwrap();
    assert_eq!(admin_app.capabilities, ["CAP_SYS_ADMIN"]);
    let mem_app = granted.apps.iter().find(|a| a.name == "memdump").unwrap();
    assert_eq!(mem_app.devices[0].host_path, "/dev/mem");

    // Outside the scope the grant does not reach.
    let elsewhere = deployment(
        tmp.path(),
        "elsewhere",
        "plant-b",
        "capabilities = [\"CAP_SYS_ADMIN\"]",
    );
    let err = hub.cli_err(&["apply", "-f", elsewhere.to_str().unwrap()]);
    assert!(
        err.contains("scope \"site=plant-b\" allow_capabilities"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_as_non_root_and_a_bad_policy_through_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    init(&dir);
    let config = dir.join("hub.toml");
    let base = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{base}\n[[admission]]\nscope = {{ site = \"plant-a\" }}\nrun_as_non_root = true\ndeny_host_network = true\n"),
    )
    .unwrap();
    let hub = HubProc::start(&dir, None).await;

    let rooted = deployment(tmp.path(), "rooted", "plant-a", "user = \"0:0\"");
    let err = hub.cli_err(&["apply", "-f", rooted.to_str().unwrap()]);
    assert!(
        err.contains("apps[0].user: \"0:0\" is root")
            && err.contains("[[admission]] #1 (scope \"site=plant-a\") run_as_non_root")
            && err.contains("apps[0].network: host networking is not allowed"),
        "{err}"
    );
    let ok = deployment(
        tmp.path(),
        "rootless",
        "plant-a",
        "user = \"1000:1000\"\nnetwork = \"isolated\"",
    );
    hub.cli(&["apply", "-f", ok.to_str().unwrap()]);
    // The same root app elsewhere is no business of this rule.
    let other = deployment(tmp.path(), "other", "plant-b", "user = \"0:0\"");
    hub.cli(&["apply", "-f", other.to_str().unwrap()]);
    hub.kill();

    // A policy naming an unknown capability stops the hub at start, saying where.
    std::fs::write(
        &config,
        format!("{base}\n[[admission]]\nscope = \"site=plant-a\"\nallow_capabilities = [\"SYS_ADMIN\"]\n"),
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .arg("--data-dir")
        .arg(&dir)
        .args([
            "serve",
            "--http-listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("[[admission]] #1") && stderr.contains("SYS_ADMIN"),
        "{stderr}"
    );
}
