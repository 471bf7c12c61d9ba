//! The whole path over `mqtts://`: hub and agent both verify a TLS broker
//! (mosquitto) against a CA file.

use outpost_e2e::{eventually, unique, Agent, AppDef, Hub, Registry, TlsBroker, PATIENCE};

#[test]
fn deployment_over_an_mqtts_broker_runs_and_reports() -> anyhow::Result<()> {
    let registry = Registry::start()?;
    let image = registry.push_sample("v1")?;
    let broker = TlsBroker::start()?;
    let hub = Hub::start_with(&registry, Some((&broker.url(), &broker.ca)))?;
    let device = unique("tls");
    let mut agent = Agent::init_with(&hub, &device, &broker.url(), Some(&broker.ca), &registry)?;
    hub.add_device(&device, &agent.public_key)?;
    agent.start()?;
    let app = AppDef::hello(&unique("tls-app"), &image);
    hub.deploy(&device, std::slice::from_ref(&app))?;
    eventually(PATIENCE, "the app to answer", || app.get("/"));
    eventually(PATIENCE, "the hub to see the app running", || {
        let d = hub.device(&device).ok()?;
        d["status"]["apps"]
            .as_array()?
            .iter()
            .any(|a| a["name"] == app.name.as_str() && a["state"]["Running"].is_object())
            .then_some(())
    });
    assert_eq!(agent.connected(), Some(true));
    Ok(())
}

/// The locked-down Mosquitto (`outpost-hub broker-config mosquitto`): the
/// agent, provisioned with the certificate `device add --cert-out` issued
/// (`outpost-agent init --broker-cert`), gets its app and reports it.
#[test]
fn an_agent_with_a_broker_certificate_runs_an_app_through_the_locked_down_mosquitto(
) -> anyhow::Result<()> {
    let registry = Registry::start()?;
    let image = registry.push_sample("v1")?;
    let (hub, _mosquitto, ca) = Hub::start_with_locked_mosquitto(&registry)?;
    let device = unique("mtls");
    let url = format!("mqtts://127.0.0.1:{}", hub.mqtt_port);
    let mut agent = Agent::init_with(&hub, &device, &url, Some(&ca), &registry)?;
    let cert = agent.dir.path().join("broker-cert.pem");
    hub.add_device_with_cert(&device, &agent.public_key, &cert)?;
    agent.provision_broker_cert(&cert)?;
    agent.start()?;
    let app = AppDef::hello(&unique("mtls-app"), &image);
    hub.deploy(&device, std::slice::from_ref(&app))?;
    eventually(PATIENCE, "the app to answer", || app.get("/"));
    eventually(PATIENCE, "the hub to see the app running", || {
        let d = hub.device(&device).ok()?;
        d["status"]["apps"]
            .as_array()?
            .iter()
            .any(|a| a["name"] == app.name.as_str() && a["state"]["Running"].is_object())
            .then_some(())
    });
    assert_eq!(agent.connected(), Some(true));
    Ok(())
}
