//! Bodies by envelope format version: the manifest layouts of versions 1 and
//! 2, frozen, read by this build and converted. (Key sets keep their old
//! layout in `keyset.rs` (`decode_keyset`), the agent's persisted trust
//! state in `verify.rs` (`decode_trust_state_v2`), status reports and reject
//! counters in `status.rs`.)
//!
//! Postcard has no field names or lengths: a struct that gained a field no
//! longer decodes from the old bytes. A device upgraded before its hub must
//! still read the hub's manifests, and its own persisted manifest, written
//! before the upgrade. (Status reports keep their version-1 layout in
//! `status.rs`, for a hub upgraded after some devices.)

use crate::envelope::{decode_body, OpenError};
use crate::image::ImageRef;
use crate::keys::KeyId;
use crate::manifest::{
    AppSpec, DeviceNode, HealthCheck, Manifest, NetworkMode, PortMapping, ReleasePolicy, Resources,
    RestartPolicy, UpdateStrategy, VolumeMount, DEFAULT_HANDOVER_TIMEOUT_SECS, MAX_APPS, NEVER,
};
pub use crate::status::v1::decode_counters_v2;
use crate::topics::DeviceId;
use serde::Deserialize;
use std::collections::BTreeMap;

const MAX_LIST: usize = 256;

#[derive(Deserialize)]
struct ManifestV1 {
    device_id: DeviceId,
    epoch: u64,
    generation: u64,
    issued_at: u64,
    key_id: KeyId,
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_APPS>")]
    apps: Vec<AppSpecV1>,
}

/// Version 1's `UpdateStrategy`: `Recreate` stopped the old container before
/// pulling, `StartFirst` handed over once the new one was ready.
#[derive(Deserialize)]
enum UpdateStrategyV1 {
    Recreate,
    StartFirst,
}

#[derive(Deserialize)]
struct AppSpecV1 {
    name: String,
    image: ImageRef,
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_LIST>")]
    command: Vec<String>,
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_LIST>")]
    args: Vec<String>,
    env: BTreeMap<String, String>,
    working_dir: Option<String>,
    user: Option<String>,
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_LIST>")]
    volumes: Vec<VolumeMount>,
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_LIST>")]
    devices: Vec<DeviceNode>,
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_LIST>")]
    ports: Vec<PortMapping>,
    resources: Resources,
    restart: RestartPolicy,
    health: Option<HealthCheck>,
    update: UpdateStrategyV1,
    read_only_rootfs: bool,
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_LIST>")]
    capabilities: Vec<String>,
    network: NetworkMode,
}

impl From<AppSpecV1> for AppSpec {
    fn from(a: AppSpecV1) -> AppSpec {
        AppSpec {
            name: a.name,
            image: a.image,
            command: a.command,
            args: a.args,
            env: a.env,
            working_dir: a.working_dir,
            user: a.user,
            volumes: a.volumes,
            devices: a.devices,
            ports: a.ports,
            resources: a.resources,
            restart: a.restart,
            health: a.health,
            update: match a.update {
                UpdateStrategyV1::Recreate => UpdateStrategy::KillThenDownload,
                UpdateStrategyV1::StartFirst => UpdateStrategy::HandOver,
            },
            read_only_rootfs: a.read_only_rootfs,
            capabilities: a.capabilities,
            network: a.network,
            handover_timeout_secs: DEFAULT_HANDOVER_TIMEOUT_SECS,
            override_lock: false,
            secrets: vec![],
        }
    }
}

/// Version 2's app spec: today's fields up to `override_lock`, no secrets.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct AppSpecV2 {
    name: String,
    image: ImageRef,
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_LIST>")]
    command: Vec<String>,
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_LIST>")]
    args: Vec<String>,
    env: BTreeMap<String, String>,
    working_dir: Option<String>,
    user: Option<String>,
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_LIST>")]
    volumes: Vec<VolumeMount>,
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_LIST>")]
    devices: Vec<DeviceNode>,
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_LIST>")]
    ports: Vec<PortMapping>,
    resources: Resources,
    restart: RestartPolicy,
    health: Option<HealthCheck>,
    update: UpdateStrategy,
    read_only_rootfs: bool,
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_LIST>")]
    capabilities: Vec<String>,
    network: NetworkMode,
    handover_timeout_secs: u32,
    override_lock: bool,
}

impl From<AppSpecV2> for AppSpec {
    fn from(a: AppSpecV2) -> AppSpec {
        AppSpec {
            name: a.name,
            image: a.image,
            command: a.command,
            args: a.args,
            env: a.env,
            working_dir: a.working_dir,
            user: a.user,
            volumes: a.volumes,
            devices: a.devices,
            ports: a.ports,
            resources: a.resources,
            restart: a.restart,
            health: a.health,
            update: a.update,
            read_only_rootfs: a.read_only_rootfs,
            capabilities: a.capabilities,
            network: a.network,
            handover_timeout_secs: a.handover_timeout_secs,
            override_lock: a.override_lock,
            secrets: vec![],
        }
    }
}

/// Version 2's manifest: version 2's apps and release policy, no expiry.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct ManifestV2 {
    device_id: DeviceId,
    epoch: u64,
    generation: u64,
    issued_at: u64,
    key_id: KeyId,
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_APPS>")]
    apps: Vec<AppSpecV2>,
    release: ReleasePolicy,
}

/// Decode a manifest body written in envelope format `version`.
pub fn decode_manifest(version: u8, body: &[u8]) -> Result<Manifest, OpenError> {
    match version {
        1 => decode_manifest_v1(body),
        2 => {
            let m: ManifestV2 = decode_body("manifest (format version 2)", body)?;
            Ok(Manifest {
                device_id: m.device_id,
                epoch: m.epoch,
                generation: m.generation,
                issued_at: m.issued_at,
                key_id: m.key_id,
                apps: m.apps.into_iter().map(AppSpec::from).collect(),
                release: m.release,
                expires_at: NEVER,
            })
        }
        _ => decode_body("manifest", body),
    }
}

/// A version-1 manifest body, with the default release policy.
pub fn decode_manifest_v1(body: &[u8]) -> Result<Manifest, OpenError> {
    let m: ManifestV1 = decode_body("manifest (format version 1)", body)?;
    Ok(Manifest {
        device_id: m.device_id,
        epoch: m.epoch,
        generation: m.generation,
        issued_at: m.issued_at,
        key_id: m.key_id,
        apps: m.apps.into_iter().map(AppSpec::from).collect(),
        release: ReleasePolicy::default(),
        expires_at: NEVER,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{open, seal_version, Kind};
    use crate::keys::SigningKey;
    use serde::Serialize;

    /// Version 1's layouts, written the way a version-1 build wrote them.
    #[derive(Serialize)]
    struct OldManifest<'a> {
        device_id: &'a DeviceId,
        epoch: u64,
        generation: u64,
        issued_at: u64,
        key_id: &'a KeyId,
        apps: Vec<OldApp<'a>>,
    }

    #[derive(Serialize)]
    enum OldUpdate {
        Recreate,
        StartFirst,
    }

    #[derive(Serialize)]
    struct OldApp<'a> {
        name: &'a str,
        image: &'a ImageRef,
        command: Vec<String>,
        args: Vec<String>,
        env: BTreeMap<String, String>,
        working_dir: Option<String>,
        user: Option<String>,
        volumes: Vec<VolumeMount>,
        devices: Vec<DeviceNode>,
        ports: Vec<PortMapping>,
        resources: Resources,
        restart: RestartPolicy,
        health: Option<HealthCheck>,
        update: OldUpdate,
        read_only_rootfs: bool,
        capabilities: Vec<String>,
        network: NetworkMode,
    }

    fn old_app<'a>(name: &'a str, image: &'a ImageRef, update: OldUpdate) -> OldApp<'a> {
        OldApp {
            name,
            image,
            command: vec!["/bin/app".into()],
            args: vec![],
            env: [("A".to_string(), "1".to_string())].into(),
            working_dir: None,
            user: Some("1000".into()),
            volumes: vec![],
            devices: vec![],
            ports: vec![],
            resources: Resources::default(),
            restart: RestartPolicy::OnFailure { max_retries: 3 },
            health: None,
            update,
            read_only_rootfs: true,
            capabilities: vec![],
            network: NetworkMode::Host,
        }
    }

    #[test]
    fn a_version_1_manifest_envelope_opens_and_keeps_its_meaning() {
        let key = SigningKey::generate().unwrap();
        let device: DeviceId = "pi-1".parse().unwrap();
        let image: ImageRef = format!("reg/web@sha256:{}", "ab".repeat(32))
            .parse()
            .unwrap();
        let old = OldManifest {
            device_id: &device,
            epoch: 1,
            generation: 4,
            issued_at: 9,
            key_id: &key.key_id(),
            apps: vec![
                old_app("web", &image, OldUpdate::Recreate),
                old_app("ui", &image, OldUpdate::StartFirst),
            ],
        };
        let bytes = seal_version(1, Kind::Manifest, &key, &postcard::to_stdvec(&old).unwrap());
        let opened = open(Kind::Manifest, &bytes).unwrap();
        assert!(opened.signed_by(&key.public_key()));
        // The current layout cannot read it; the version says which one can.
        assert!(decode_body::<Manifest>("manifest", opened.body).is_err());
        let m = decode_manifest(opened.version, opened.body).unwrap();
        assert_eq!((m.epoch, m.generation, m.issued_at), (1, 4, 9));
        assert_eq!(m.release, ReleasePolicy::default());
        assert_eq!(m.apps[0].update, UpdateStrategy::KillThenDownload);
        assert_eq!(m.apps[1].update, UpdateStrategy::HandOver);
        assert_eq!(
            m.apps[0].restart,
            RestartPolicy::OnFailure { max_retries: 3 }
        );
        assert_eq!(m.apps[0].user.as_deref(), Some("1000"));
        assert!(m.apps[0].read_only_rootfs && !m.apps[0].override_lock);
        m.validate().unwrap();
    }

    #[test]
    fn a_version_2_manifest_envelope_opens_without_secrets() {
        let key = SigningKey::generate().unwrap();
        let device: DeviceId = "pi-2".parse().unwrap();
        let image: ImageRef = format!("reg/web@sha256:{}", "cd".repeat(32))
            .parse()
            .unwrap();
        let app = |name: &str, update| AppSpecV2 {
            name: name.into(),
            image: image.clone(),
            command: vec![],
            args: vec!["-v".into()],
            env: [("B".to_string(), "2".to_string())].into(),
            working_dir: None,
            user: Some("1000:1000".into()),
            volumes: vec![],
            devices: vec![],
            ports: vec![],
            resources: Resources::default(),
            restart: RestartPolicy::Always,
            health: None,
            update,
            read_only_rootfs: false,
            capabilities: vec![],
            network: NetworkMode::Host,
            handover_timeout_secs: 7,
            override_lock: true,
        };
        let old = ManifestV2 {
            device_id: device.clone(),
            epoch: 2,
            generation: 5,
            issued_at: 11,
            key_id: key.key_id(),
            apps: vec![
                app("web", UpdateStrategy::DeleteThenDownload),
                app("ui", UpdateStrategy::HandOver),
            ],
            release: ReleasePolicy {
                stable_secs: 3,
                trial_deadline_secs: 40,
            },
        };
        let web_v2 = postcard::to_stdvec(&old.apps[0]).unwrap();
        let bytes = seal_version(2, Kind::Manifest, &key, &postcard::to_stdvec(&old).unwrap());
        let opened = open(Kind::Manifest, &bytes).unwrap();
        assert_eq!(opened.version, 2);
        // Version 3's layout (with secrets) cannot read it.
        assert!(decode_body::<Manifest>("manifest", opened.body).is_err());
        let m = decode_manifest(opened.version, opened.body).unwrap();
        assert_eq!((m.epoch, m.generation, m.issued_at), (2, 5, 11));
        assert_eq!(m.expires_at, NEVER);
        assert_eq!(m.release.trial_deadline_secs, 40);
        assert_eq!(m.apps[0].update, UpdateStrategy::DeleteThenDownload);
        assert_eq!(m.apps[1].update, UpdateStrategy::HandOver);
        assert_eq!(m.apps[0].handover_timeout_secs, 7);
        assert!(m.apps[0].override_lock);
        assert_eq!(m.apps[0].user.as_deref(), Some("1000:1000"));
        assert!(m.apps.iter().all(|a| a.secrets.is_empty()));
        // An app without secrets keeps its version-2 bytes as its identity
        // (container name, hub digest): upgrading restarts nothing.
        assert_eq!(m.apps[0].canonical_bytes(), web_v2);
        m.validate().unwrap();
    }
}
