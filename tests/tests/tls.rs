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
