//! A private registry (TLS from the test's own CA, htpasswd auth) through the
//! real binaries: the hub resolves a tag at apply time with credentials from
//! hub.toml, the agent pulls with credentials from agent.toml (written by
//! `outpost-agent init --registry-ca-file --registry-auth`). Without
//! credentials both are refused with an error naming the registry. The
//! password never shows up in either log, the hub's API answers, the
//! configs or the published manifest.

use outpost_e2e::{eventually, mqtt, unique, Agent, AppDef, Hub, Registry, PATIENCE};

#[test]
fn hub_resolves_and_agent_pulls_from_a_private_registry_with_configured_credentials(
) -> anyhow::Result<()> {
    let registry = Registry::start_private()?;
    let access = registry
        .private
        .clone()
        .ok_or_else(|| anyhow::anyhow!("start_private gave an open registry"))?;
    let image = registry.push_sample("v1")?;

    // The hub starts with the CA but no credentials: applying the tag is
    // refused, and the error says which registry wants credentials.
    let mut hub = Hub::start(&registry)?;
    hub.stop();
    hub.set_registry(registry.client_settings(false))?;
    hub.serve()?;
    let device = unique("private");
    let mut agent = Agent::init(&hub, &device, hub.mqtt_port, &registry)?;
    hub.add_device(&device, &agent.public_key)?;
    let app = AppDef::hello(&unique("private-app"), &image);
    let err = hub
        .deploy(&device, std::slice::from_ref(&app))
        .expect_err("apply must fail without registry credentials");
    let text = format!("{err:#}");
    println!("apply without credentials: {text}");
    assert!(
        text.contains(&format!(
            "registry {} refused anonymous access",
            registry.host()
        )),
        "{text}"
    );

    // With hub.toml's credentials the tag resolves.
    hub.stop();
    hub.set_registry(registry.client_settings(true))?;
    hub.serve()?;

    // The agent without credentials (CA only): the pull is refused and the
    // agent says why, naming the registry.
    agent.set_registry(registry.client_settings(false))?;
    agent.start()?;
    hub.deploy(&device, std::slice::from_ref(&app))?;
    let error = eventually(PATIENCE, "the agent to report the refused pull", || {
        let st = agent.status().ok()?;
        st["apps"][&app.name]["last_error"]
            .as_str()
            .filter(|e| e.contains("refused anonymous access"))
            .map(str::to_string)
    });
    println!("agent pull without credentials: {error}");
    assert!(error.contains(&registry.host()), "{error}");
    assert!(app.get("/").is_none());

    // Back to the credentials `init` wrote: the pull works and the app runs.
    agent.stop();
    agent.set_registry(registry.client_settings(true))?;
    agent.start()?;
    eventually(PATIENCE, "the app to answer", || app.get("/"));
    eventually(PATIENCE, "the hub to see the app running", || {
        let d = hub.device(&device).ok()?;
        d["status"]["apps"]
            .as_array()?
            .iter()
            .any(|a| a["name"] == app.name.as_str() && a["state"]["Running"].is_object())
            .then_some(())
    });

    // Docker's config.json works as the credentials source too: the hub,
    // restarted with only `docker_config`, resolves the tag again (a changed
    // app forces a new resolution).
    hub.stop();
    let docker_config = hub.dir.path().join("docker-config.json");
    std::fs::write(
        &docker_config,
        format!(
            r#"{{"auths": {{"{}": {{"auth": "{}"}}}}}}"#,
            registry.host(),
            base64_basic(&access.username, &access.password)
        ),
    )?;
    let mut section = registry.client_settings(false);
    section.insert(
        "docker_config".into(),
        docker_config.display().to_string().into(),
    );
    hub.set_registry(section)?;
    hub.serve()?;
    let mut app_v2 = app.clone();
    app_v2.version = "2".into();
    hub.deploy(&device, std::slice::from_ref(&app_v2))?;
    eventually(PATIENCE, "the app to answer as version 2", || {
        app_v2.get("/").filter(|b| b.contains("version 2"))
    });

    // The password is nowhere it could leak from.
    let mut places: Vec<(String, String)> = vec![
        ("agent logs".into(), agent.logs()),
        ("hub log".into(), hub.log()),
        (
            "agent.toml".into(),
            std::fs::read_to_string(agent.config())?,
        ),
        (
            "hub.toml".into(),
            std::fs::read_to_string(hub.dir.path().join("hub.toml"))?,
        ),
    ];
    for path in [
        "/v1/devices".to_string(),
        format!("/v1/devices/{device}"),
        format!("/v1/devices/{device}/events"),
        "/v1/deployments".to_string(),
        format!("/v1/deployments/{device}"),
        "/v1/audit".to_string(),
        "/v1/stats".to_string(),
    ] {
        let body = hub.api_get(&path)?;
        places.push((format!("hub API {path}"), body));
    }
    let topic = outpost_protocol::topics::manifest(&device.parse()?);
    let manifest = mqtt::retained_as(hub.mqtt_addr(), Some(&agent.broker_login()?), &topic)?;
    places.push((
        "published manifest".into(),
        String::from_utf8_lossy(&manifest).into_owned(),
    ));
    // The API answers are about this device and its deployment, so a miss is
    // not a test that looked in the wrong place.
    assert!(places.iter().any(|(_, t)| t.contains(&device)));
    let basic = base64_basic(&access.username, &access.password);
    for (place, text) in &places {
        assert!(
            !text.contains(&access.password),
            "the registry password appears in the {place}"
        );
        assert!(
            !text.contains(&basic),
            "the Basic authorization appears in the {place}"
        );
    }
    Ok(())
}

/// `base64(user:password)`, as an `Authorization: Basic` header carries it.
fn base64_basic(user: &str, password: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

#[test]
fn unreadable_or_invalid_registry_files_stop_the_binaries_naming_the_file() -> anyhow::Result<()> {
    let registry = Registry::start_private()?;
    let access = registry
        .private
        .clone()
        .ok_or_else(|| anyhow::anyhow!("start_private gave an open registry"))?;

    // The hub with a "CA file" that is the password file: it does not start,
    // says which file is wrong, and does not quote it.
    let mut hub = Hub::start(&registry)?;
    hub.stop();
    let mut section = registry.client_settings(true);
    section.insert(
        "ca_file".into(),
        access.password_file.display().to_string().into(),
    );
    hub.set_registry(section)?;
    let err = hub.serve().expect_err("the hub must refuse a bad CA file");
    let text = format!("{err:#}");
    println!("hub: {}", text.lines().last().unwrap_or_default());
    assert!(
        text.contains(&format!("CA file {}", access.password_file.display())),
        "{text}"
    );
    assert!(!text.contains(&access.password), "{text}");

    // `outpost-agent init` with a password file that does not exist.
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("no-such.pass");
    let out = std::process::Command::new(&outpost_e2e::bins().agent)
        .arg("--config")
        .arg(dir.path().join("agent.toml"))
        .args([
            "init",
            "--device-id",
            "bad-files",
            "--broker",
            "mqtt://127.0.0.1:1",
        ])
        .arg("--root-key")
        .arg(hub.dir.path().join("root.pub"))
        .arg("--keyset")
        .arg(hub.dir.path().join("keyset.bin"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--registry-auth")
        .arg(format!("{}=edge:{}", registry.host(), missing.display()))
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("agent init: {stderr}");
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("password file {}", missing.display())),
        "{stderr}"
    );
    assert!(!dir.path().join("agent.toml").exists());
    Ok(())
}
