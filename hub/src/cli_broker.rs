//! The command line's broker-credential commands: `broker-config mosquitto`
//! (local: it needs the CA key in the data directory), writing a device's
//! broker certificate (`device add --cert-out`, `device cert`), and the CA
//! that `init` makes. The work is in `broker::ca` and `broker::mosquitto`.

use crate::broker::ca::{BrokerCa, CaFiles};
use crate::broker::mosquitto;
use crate::client::ApiClient;
use crate::config::{DataDir, HubConfig};
use crate::hub::{now_secs, BrokerCert};
use anyhow::{Context, Result};
use reqwest::Method;
use std::path::Path;

/// The hub's two link client ids from its config.
fn hub_ids(config: &HubConfig) -> [String; 2] {
    let ingest = config.mqtt.client_id.clone();
    let publish = crate::link::publisher_client_id(&ingest);
    [ingest, publish]
}

/// `init`: the broker CA and the hub's link certificates.
pub fn init_ca(dir: &DataDir, config: &HubConfig) -> Result<()> {
    let ca = BrokerCa::open_or_create(CaFiles::new(dir.broker_ca()), now_secs(), Vec::new())?;
    let ids = hub_ids(config);
    ca.ensure_link_certs([&ids[0], &ids[1]], now_secs())?;
    println!(
        "  broker CA:         {} (for an external Mosquitto: `outpost-hub broker-config mosquitto`)",
        ca.files().ca_cert().display()
    );
    Ok(())
}

/// `broker-config mosquitto`.
pub fn mosquitto_config(dir: &DataDir, host: &str, port: u16, out: &Path) -> Result<()> {
    let config = HubConfig::load(&dir.config()).with_context(|| {
        format!(
            "run `outpost-hub init --data-dir {}` first",
            dir.root.display()
        )
    })?;
    let w = mosquitto::write(dir, &hub_ids(&config), host, port, out, now_secs())?;
    println!(
        "wrote {} (with acl, ca.pem, server.pem, server.key)",
        w.conf.display()
    );
    println!(
        "Mosquitto listens on port {port} of every address of its host (TLS; clients dial {host}:{port});"
    );
    println!(
        "its CRL {} is rewritten by the hub at every device removal (hub.toml crl_file below).",
        w.paths.crl.display()
    );
    println!("\nhub.toml (then restart the hub):\n{}", w.hub_toml());
    println!("agent.toml, on each device (or `outpost-agent init --broker mqtts://{host}:{port} --ca-file CA --broker-cert CERT`):\n{}", w.agent_toml());
    println!("device certificates: `outpost-hub device add ID --public-key KEY --cert-out FILE`, or `outpost-hub device cert ID --out FILE` for devices added before");
    Ok(())
}

/// Write a device's certificate (PEM) to `out`.
pub fn write_cert(cert: &BrokerCert, out: &Path) -> Result<()> {
    std::fs::write(out, &cert.cert_pem)
        .with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "broker certificate of {} (serial {}) written to {}",
        cert.device,
        cert.serial,
        out.display()
    );
    Ok(())
}

/// `device cert ID --out FILE`.
pub async fn device_cert(c: &ApiClient, id: &str, out: &Path) -> Result<()> {
    let cert: BrokerCert = c
        .call::<(), _>(Method::POST, &format!("/v1/devices/{id}/broker-cert"), None)
        .await?;
    write_cert(&cert, out)
}
