//! MQTT helpers speaking directly to the broker, as an attacker (or observer)
//! with network access to it would: anonymously (the embedded broker refuses
//! that; the open Mosquitto of `World::start_on_open_broker` lets it in) or
//! with a device's login ([`Login`]).

use anyhow::{bail, Result};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use std::net::SocketAddr;
use std::time::Duration;

/// Client id, username and password to log in with.
#[derive(Debug, Clone)]
pub struct Login {
    pub client_id: String,
    pub password: String,
}

/// Publish every payload on `topic` from one connection (QoS 1, pipelined)
/// and wait for all the broker's PUBACKs. Returns how many were acked.
pub fn flood(addr: SocketAddr, topic: &str, payloads: Vec<Vec<u8>>) -> Result<usize> {
    rt()?.block_on(async {
        let (c, mut el) = client(addr, None);
        let n = payloads.len();
        let topic = topic.to_string();
        let sender = tokio::spawn(async move {
            for p in payloads {
                c.publish(&topic, QoS::AtLeastOnce, false, p).await?;
            }
            Ok::<_, anyhow::Error>(c)
        });
        let mut acks = 0;
        let res = tokio::time::timeout(crate::PATIENCE, async {
            while acks < n {
                match el.poll().await {
                    Ok(Event::Incoming(Incoming::PubAck(_))) => acks += 1,
                    Ok(_) => {}
                    Err(e) => bail!("flood connection failed after {acks} acks: {e}"),
                }
            }
            Ok(())
        })
        .await;
        match res {
            Ok(r) => r?,
            Err(_) => bail!("only {acks} of {n} publishes were acked"),
        }
        sender.await??;
        Ok(acks)
    })
}

fn client(addr: SocketAddr, login: Option<&Login>) -> (AsyncClient, rumqttc::EventLoop) {
    let id = match login {
        Some(l) => l.client_id.clone(),
        None => crate::unique("e2e-client"),
    };
    let mut o = MqttOptions::new(id.clone(), addr.ip().to_string(), addr.port());
    if let Some(l) = login {
        o.set_credentials(id, l.password.clone());
    }
    o.set_max_packet_size(4 << 20, 4 << 20)
        .set_keep_alive(Duration::from_secs(30));
    AsyncClient::new(o, 16)
}

fn rt() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The retained message on `topic`, read anonymously.
pub fn retained(addr: SocketAddr, topic: &str) -> Result<Vec<u8>> {
    retained_as(addr, None, topic)
}

/// The retained message on `topic`, read with `login` (or anonymously).
pub fn retained_as(addr: SocketAddr, login: Option<&Login>, topic: &str) -> Result<Vec<u8>> {
    rt()?.block_on(async {
        let (c, mut el) = client(addr, login);
        c.subscribe(topic, QoS::AtLeastOnce).await?;
        let res = tokio::time::timeout(crate::PATIENCE, async {
            loop {
                if let Event::Incoming(Incoming::Publish(p)) = el.poll().await? {
                    return Ok::<_, anyhow::Error>(p.payload.to_vec());
                }
            }
        })
        .await;
        match res {
            Ok(r) => r,
            Err(_) => bail!("no retained message on {topic}"),
        }
    })
}

/// The retained message on `topic` as the `mosquitto_sub` command line tool
/// (package mosquitto-clients) reads it, with `login` (or anonymously): what
/// an operator or an attacker with a login would see.
pub fn retained_with_mosquitto_sub(
    addr: SocketAddr,
    login: Option<&Login>,
    topic: &str,
) -> Result<Vec<u8>> {
    let mut cmd = std::process::Command::new("mosquitto_sub");
    cmd.args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-t", topic, "-q", "1", "-C", "1", "-N", "-W", "60"]);
    if let Some(l) = login {
        cmd.args(["-i", &l.client_id, "-u", &l.client_id, "-P", &l.password]);
    }
    let out = cmd
        .output()
        .map_err(|e| anyhow::anyhow!("running mosquitto_sub (package mosquitto-clients): {e}"))?;
    if !out.status.success() || out.stdout.is_empty() {
        bail!(
            "mosquitto_sub read nothing on {topic} ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// Publish once (QoS 1, not retained) and wait for the broker's PUBACK or
/// for the broker to drop us (which it may do for an oversized payload).
pub fn publish(addr: SocketAddr, topic: &str, payload: Vec<u8>) -> Result<bool> {
    publish_as(addr, None, topic, payload)
}

/// [`publish`] with `login` (or anonymously).
pub fn publish_as(
    addr: SocketAddr,
    login: Option<&Login>,
    topic: &str,
    payload: Vec<u8>,
) -> Result<bool> {
    rt()?.block_on(async {
        let (c, mut el) = client(addr, login);
        c.publish(topic, QoS::AtLeastOnce, false, payload).await?;
        let res = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Incoming::PubAck(_))) => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
        })
        .await;
        Ok(res.unwrap_or(false))
    })
}
