//! The usual scenario setup: a registry holding the sample image, a hub, a
//! cuttable proxy between agent and broker, and a registered, running agent.

use crate::{eventually, unique, Agent, AppDef, Hub, Mosquitto, Proxy, Registry, PATIENCE};
use anyhow::Result;

/// Everything most scenarios need: registry with the sample image, a hub, a
/// proxy between agent and broker, and a registered, running agent.
#[derive(Debug)]
pub struct World {
    // Field order is drop order: the agent (and its containers) goes first.
    pub agent: Agent,
    pub proxy: Proxy,
    pub hub: Hub,
    pub registry: Registry,
    pub image: String,
    /// The external broker of [`World::start_on_open_broker`].
    pub open_broker: Option<Mosquitto>,
}

impl World {
    pub fn start(name: &str) -> Result<World> {
        World::start_inner(name, None)
    }

    /// [`World::start`] with the hub on an external Mosquitto that lets any
    /// client publish anywhere: the broker an attacker has taken over (or one
    /// configured without `outpost-hub broker-config`). The embedded broker
    /// keeps everyone but the hub off a device's manifest topic, so what the
    /// agent does with hostile manifests is tested here.
    pub fn start_on_open_broker(name: &str) -> Result<World> {
        World::start_inner(name, Some(Mosquitto::start()?))
    }

    fn start_inner(name: &str, open_broker: Option<Mosquitto>) -> Result<World> {
        let registry = Registry::start()?;
        let image = registry.push_sample("v1")?;
        let hub = match &open_broker {
            Some(m) => Hub::start_with_broker(&registry, &m.url())?,
            None => Hub::start(&registry)?,
        };
        let proxy = Proxy::start(hub.mqtt_addr())?;
        let device = unique(name);
        let mut agent = Agent::init(&hub, &device, proxy.port, &registry)?;
        hub.add_device_sealed(&device, &agent.public_key, &agent.encryption_key()?)?;
        agent.start()?;
        Ok(World {
            registry,
            hub,
            proxy,
            agent,
            image,
            open_broker,
        })
    }

    pub fn app(&self, prefix: &str) -> AppDef {
        AppDef::hello(&unique(prefix), &self.image)
    }

    /// Deploy and wait until the agent runs every app, the app answers and
    /// the release committed (so a reboot after this keeps it).
    pub fn deploy_and_wait(&self, apps: &[AppDef]) -> Result<()> {
        let before = self.agent.applied_generation().unwrap_or(0);
        self.hub.deploy(&self.agent.device_id, apps)?;
        eventually(PATIENCE, "the agent to apply the new generation", || {
            self.agent.applied_generation().filter(|g| *g > before)
        });
        for a in apps {
            eventually(PATIENCE, &format!("app {} to answer", a.name), || {
                a.get("/")
                    .filter(|b| b.contains(&format!("version {}", a.version)))
            });
        }
        // The generation that runs these apps (a first agent may see the
        // hub's empty generation before it) must commit: a reboot in its trial
        // would roll it back.
        let applied = self.agent.applied_generation().unwrap_or(0);
        eventually(PATIENCE, "the release to commit", || {
            self.agent.committed_generation().filter(|g| *g >= applied)
        });
        // The agent's local status file trails the apps answering by a moment
        // (writes are coalesced); callers read pids from it, so wait for one
        // written after the apps answered.
        // `written_at_ms` is the agent's wall clock (edge-agent/src/clock.rs),
        // on this same machine: compare wall time with wall time.
        #[allow(clippy::disallowed_methods)]
        let answered = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        eventually(PATIENCE, "the agent's status file to catch up", || {
            let written = self.agent.status().ok()?["written_at_ms"].as_u64()?;
            (written > answered).then_some(())
        });
        Ok(())
    }
}
