//! Representative values for examples, benchmarks, fuzz seeds and other crates'
//! tests: a realistic 5-app gateway manifest. Not used by the protocol itself.

use crate::image::{Digest, ImageRef};
use crate::keys::KeyId;
use crate::manifest::{
    AppSpec, DeviceNode, HealthCheck, Manifest, NetworkMode, PortMapping, Probe, Protocol,
    Resources, RestartPolicy, UpdateStrategy, VolumeMount,
};
use crate::topics::DeviceId;

fn image(repo: &str, seed: u8) -> ImageRef {
    ImageRef {
        repository: format!("registry.example.com:5000/factory/{repo}"),
        digest: Digest([seed; 32]),
    }
}

/// Five apps as a typical factory gateway runs them: a Modbus reader on a serial
/// port, an MQTT bridge, a local time-series store, a dashboard and a watchdog.
pub fn gateway_manifest(device_id: DeviceId, key_id: KeyId, generation: u64) -> Manifest {
    let mut reader = AppSpec::new("modbus-reader", image("modbus-reader", 1));
    reader.args = vec![
        "--port".into(),
        "/dev/ttyUSB0".into(),
        "--baud".into(),
        "19200".into(),
    ];
    reader.env.insert("RUST_LOG".into(), "info".into());
    reader.env.insert("POLL_INTERVAL_MS".into(), "500".into());
    reader.devices.push(DeviceNode {
        host_path: "/dev/ttyUSB0".into(),
        container_path: "/dev/ttyUSB0".into(),
        permissions: "rw".into(),
    });
    reader.resources = Resources {
        memory_bytes: Some(32 << 20),
        cpu_millis: Some(250),
    };
    reader.restart = RestartPolicy::Always;

    let mut bridge = AppSpec::new("mqtt-bridge", image("mqtt-bridge", 2));
    bridge
        .env
        .insert("UPSTREAM".into(), "mqtts://cloud.example.com:8883".into());
    bridge.volumes.push(VolumeMount {
        name: "bridge-buffer".into(),
        container_path: "/var/lib/bridge".into(),
        read_only: false,
    });
    bridge.resources = Resources {
        memory_bytes: Some(48 << 20),
        cpu_millis: Some(200),
    };
    bridge.health = Some(HealthCheck {
        probe: Probe::Tcp { port: 1884 },
        interval_secs: 10,
        timeout_secs: 2,
        retries: 3,
    });

    let mut tsdb = AppSpec::new("tsdb", image("tsdb", 3));
    tsdb.command = vec!["/usr/bin/tsdb".into()];
    tsdb.args = vec!["--retention".into(), "14d".into()];
    tsdb.volumes.push(VolumeMount {
        name: "tsdb-data".into(),
        container_path: "/data".into(),
        read_only: false,
    });
    tsdb.user = Some("1000:1000".into());
    tsdb.resources = Resources {
        memory_bytes: Some(128 << 20),
        cpu_millis: Some(500),
    };
    tsdb.update = UpdateStrategy::KillThenDownload;
    // Nothing to publish, so it can do without the host's network.
    tsdb.network = NetworkMode::Isolated;

    let mut dash = AppSpec::new("dashboard", image("dashboard", 4));
    dash.ports.push(PortMapping {
        container_port: 8080,
        host_port: 8080,
        protocol: Protocol::Tcp,
    });
    dash.health = Some(HealthCheck {
        probe: Probe::Http {
            port: 8080,
            path: "/healthz".into(),
        },
        interval_secs: 15,
        timeout_secs: 3,
        retries: 3,
    });
    dash.read_only_rootfs = true;
    dash.update = UpdateStrategy::HandOver;

    let mut watchdog = AppSpec::new("watchdog", image("watchdog", 5));
    watchdog.capabilities.push("CAP_SYS_TIME".into());
    watchdog.restart = RestartPolicy::OnFailure { max_retries: 5 };
    watchdog.working_dir = Some("/srv".into());

    Manifest {
        device_id,
        epoch: 1,
        generation,
        issued_at: 1_780_000_000,
        key_id,
        apps: vec![reader, bridge, tsdb, dash, watchdog],
        release: crate::manifest::ReleasePolicy::default(),
        expires_at: crate::manifest::NEVER,
    }
}
