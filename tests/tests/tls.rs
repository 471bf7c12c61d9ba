//! The whole path over `mqtts://`: hub and agent both verify a TLS broker
//! (mosquitto) against a CA file; and an agent on the hub's embedded broker
//! served over TLS.

use outpost_e2e::{eventually, mqtt, unique, Agent, AppDef, Hub, Registry, TlsBroker, PATIENCE};

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

/// The embedded broker with `[mqtt] tls_cert` / `tls_key` (here the API's own
/// certificate, which names 127.0.0.1): the agent connects over `mqtts://`
/// trusting that certificate and runs what the hub deploys; a client that
/// speaks plain MQTT to the same port, even with the device's valid login,
/// gets nowhere.
#[test]
fn an_agent_reaches_the_embedded_broker_over_tls_and_plain_mqtt_gets_nowhere() -> anyhow::Result<()>
{
    let registry = Registry::start()?;
    let image = registry.push_sample("v1")?;
    let mut hub = Hub::start(&registry)?;
    hub.stop();
    let cert = hub.dir.path().join("api.crt");
    let key = hub.dir.path().join("api.key");
    let cfg_path = hub.dir.path().join("hub.toml");
    let cfg = std::fs::read_to_string(&cfg_path)?.replace(
        "[mqtt]\n",
        &format!(
            "[mqtt]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    );
    std::fs::write(&cfg_path, cfg)?;
    hub.serve()?;
    let url = format!("mqtts://127.0.0.1:{}", hub.mqtt_addr().port());
    let device = unique("etls");
    let mut agent = Agent::init_with(&hub, &device, &url, Some(&cert), &registry)?;
    hub.add_device(&device, &agent.public_key)?;
    agent.start()?;
    let app = AppDef::hello(&unique("etls-app"), &image);
    hub.deploy(&device, std::slice::from_ref(&app))?;
    eventually(PATIENCE, "the app to answer", || app.get("/"));
    eventually(PATIENCE, "the agent to be connected", || {
        agent.connected().filter(|c| *c)
    });

    let topic = outpost_protocol::topics::manifest(&device.parse()?);
    let plain = mqtt::retained_as(hub.mqtt_addr(), Some(&agent.broker_login()?), &topic);
    assert!(plain.is_err(), "plain MQTT on the TLS port read {plain:?}");
    eventually(PATIENCE, "the hub to log the failed handshake", || {
        hub.log()
            .contains("broker TLS handshake failed")
            .then_some(())
    });
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
