//! Property tests: every wire type survives encode → seal → open → verify → decode
//! unchanged, and hostile bytes never panic the decoder.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use outpost_protocol::envelope::{decode_body, open, seal_value, Kind};
use outpost_protocol::keyset::SignedKeySet;
use outpost_protocol::manifest::{Protocol, VolumeMount};
use outpost_protocol::*;
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use std::sync::OnceLock;

fn key() -> &'static SigningKey {
    static K: OnceLock<SigningKey> = OnceLock::new();
    K.get_or_init(|| SigningKey::generate().expect("key"))
}

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 /._:=-]{0,24}"
}

fn device_id() -> impl Strategy<Value = DeviceId> {
    "[a-z0-9][a-z0-9._-]{0,20}".prop_map(|s| s.parse().expect("valid id"))
}

fn digest() -> impl Strategy<Value = Digest> {
    any::<[u8; 32]>().prop_map(Digest)
}

fn image_ref() -> impl Strategy<Value = ImageRef> {
    ("[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}", digest())
        .prop_map(|(repository, digest)| ImageRef { repository, digest })
}

fn restart() -> impl Strategy<Value = RestartPolicy> {
    prop_oneof![
        Just(RestartPolicy::Always),
        Just(RestartPolicy::Never),
        any::<u32>().prop_map(|max_retries| RestartPolicy::OnFailure { max_retries }),
    ]
}

fn health() -> impl Strategy<Value = HealthCheck> {
    let probe = prop_oneof![
        vec(text(), 0..3).prop_map(|command| Probe::Exec { command }),
        (any::<u16>(), text()).prop_map(|(port, path)| Probe::Http { port, path }),
        any::<u16>().prop_map(|port| Probe::Tcp { port }),
    ];
    (probe, any::<u32>(), any::<u32>(), any::<u32>()).prop_map(
        |(probe, interval_secs, timeout_secs, retries)| HealthCheck {
            probe,
            interval_secs,
            timeout_secs,
            retries,
        },
    )
}

prop_compose! {
    fn app_spec()(
        name in "[a-z][a-z0-9-]{0,12}",
        image in image_ref(),
        command in vec(text(), 0..3),
        args in vec(text(), 0..3),
        env in btree_map("[A-Z_]{1,8}", text(), 0..4),
        working_dir in option::of(text()),
        user in option::of("[0-9]{1,4}(:[0-9]{1,4})?"),
        volumes in vec((text(), text(), any::<bool>()), 0..3),
        devices in vec((text(), text(), "[rwm]{1,3}"), 0..2),
        ports in vec((any::<u16>(), any::<u16>(), any::<bool>()), 0..2),
        memory in option::of(any::<u64>()),
        cpu in option::of(any::<u32>()),
        restart in restart(),
        health in option::of(health()),
        start_first in any::<bool>(),
        ro in any::<bool>(),
        caps in vec("CAP_[A-Z_]{2,10}", 0..2),
        isolated in any::<bool>(),
        secrets in vec((text(), text(), any::<u64>(), vec(any::<u8>(), 0..40), vec(any::<u8>(), 0..40)), 0..3),
    ) -> AppSpec {
        AppSpec {
            name, image, command, args, env, working_dir, user,
            volumes: volumes.into_iter().map(|(name, container_path, read_only)| VolumeMount { name, container_path, read_only }).collect(),
            devices: devices.into_iter().map(|(host_path, container_path, permissions)| DeviceNode { host_path, container_path, permissions }).collect(),
            ports: ports.into_iter().map(|(container_port, host_port, udp)| PortMapping { container_port, host_port, protocol: if udp { Protocol::Udp } else { Protocol::Tcp } }).collect(),
            resources: Resources { memory_bytes: memory, cpu_millis: cpu },
            restart, health,
            update: if start_first { UpdateStrategy::HandOver } else { UpdateStrategy::DeleteThenDownload },
            read_only_rootfs: ro,
            capabilities: caps,
            network: if isolated { NetworkMode::Isolated } else { NetworkMode::Host },
            override_lock: false,
            handover_timeout_secs: outpost_protocol::manifest::DEFAULT_HANDOVER_TIMEOUT_SECS,
            secrets: secrets.into_iter().map(|(name, path, version, enc, ciphertext)| outpost_protocol::SecretMount {
                name, path, version, sealed: outpost_protocol::SealedSecret { enc, ciphertext },
            }).collect(),
        }
    }
}

prop_compose! {
    fn manifest()(device_id in device_id(), epoch in any::<u64>(), generation in any::<u64>(), issued_at in any::<u64>(), apps in vec(app_spec(), 0..5), expires_at in any::<u64>()) -> Manifest {
        Manifest { device_id, epoch, generation, issued_at, key_id: key().key_id(), apps , release: Default::default(), expires_at }
    }
}

fn app_state() -> impl Strategy<Value = AppState> {
    prop_oneof![
        Just(AppState::Pending),
        (any::<u64>(), any::<u64>()).prop_map(|(done, total)| AppState::Pulling { done, total }),
        Just(AppState::Starting),
        any::<u32>().prop_map(|pid| AppState::Running { pid }),
        any::<i32>().prop_map(|code| AppState::Exited { code }),
        any::<u64>().prop_map(|retry_in_secs| AppState::BackingOff { retry_in_secs }),
        Just(AppState::Failed),
        Just(AppState::Stopped),
    ]
}

prop_compose! {
    fn app_status()(name in text(), state in app_state(), restarts in any::<u32>(), last_error in option::of(text()), image_digest in option::of(digest()), ready in option::of(any::<bool>())) -> AppStatus {
        AppStatus { name, state, restarts, last_error, image_digest, ready }
    }
}

prop_compose! {
    fn counters()(c in vec(any::<u64>(), 13)) -> RejectCounters {
        RejectCounters { too_large: c[0], malformed: c[1], unsupported_version: c[2], unknown_key: c[3], bad_signature: c[4], wrong_device: c[5], rollback: c[6], conflicting_generation: c[7], invalid_spec: c[8], keyset: c[9], expired: c[10], heartbeat: c[11], root: c[12] }
    }
}

prop_compose! {
    fn status()(device_id in device_id(), applied in option::of(any::<(u64, u64)>()), (boot, seq, event_floor) in any::<(u64, u64, u64)>(), reported_at in any::<u64>(), agent_version in text(), uptime_secs in any::<u64>(), apps in vec(app_status(), 0..5), rejected in counters(), last_rejection in option::of(text()), (last_heartbeat, hub_silent_secs, time_floor) in (option::of(any::<u64>()), option::of(any::<u64>()), any::<u64>())) -> StatusReport {
        StatusReport { device_id, applied, boot, seq, event_floor, reported_at, agent_version, uptime_secs, apps, rejected, last_rejection , release: None, last_heartbeat, hub_silent_secs, time_floor }
    }
}

fn event_kind() -> impl Strategy<Value = EventKind> {
    prop_oneof![
        any::<(u64, u64)>()
            .prop_map(|(epoch, generation)| EventKind::ManifestApplied { epoch, generation }),
        text().prop_map(|reason| EventKind::ManifestRejected { reason }),
        any::<u64>().prop_map(|version| EventKind::KeySetAccepted { version }),
        (text(), any::<u32>()).prop_map(|(app, pid)| EventKind::AppStarted { app, pid }),
        (text(), any::<i32>()).prop_map(|(app, code)| EventKind::AppExited { app, code }),
        (text(), any::<u32>())
            .prop_map(|(app, restarts)| EventKind::AppRestarted { app, restarts }),
        text().prop_map(|app| EventKind::AppStopped { app }),
        (text(), text()).prop_map(|(app, error)| EventKind::AppFailed { app, error }),
        (text(), any::<u64>(), any::<u64>())
            .prop_map(|(app, done, total)| EventKind::PullProgress { app, done, total }),
        (text(), any::<bool>()).prop_map(|(app, ready)| EventKind::AppHealth { app, ready }),
        (text(), any::<u32>(), text()).prop_map(|(app, restarts, reason)| {
            EventKind::AppUnhealthyRestarted {
                app,
                restarts,
                reason,
            }
        }),
    ]
}

prop_compose! {
    fn event()(device_id in device_id(), seq in any::<u64>(), at in any::<u64>(), dropped_before in any::<u64>(), kind in event_kind()) -> Event {
        Event { device_id, seq, at, dropped_before, kind }
    }
}

prop_compose! {
    fn keyset()(version in any::<u64>(), issued_at in any::<u64>(), keys in vec(any::<[u8; 32]>().prop_map(PublicKey), 1..4), expires_at in 1..=u64::MAX, root_version in any::<u64>()) -> KeySet {
        KeySet { version, issued_at, keys, expires_at, root_version }
    }
}

fn round_trip<T>(kind: Kind, value: &T)
where
    T: serde::Serialize + for<'a> serde::Deserialize<'a> + PartialEq + std::fmt::Debug,
{
    let bytes = seal_value(kind, key(), value).unwrap();
    let opened = open(kind, &bytes).unwrap();
    assert!(opened.signed_by(&key().public_key()));
    let back: T = decode_body("value", opened.body).unwrap();
    assert_eq!(&back, value);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn manifest_round_trips(m in manifest()) {
        round_trip(Kind::Manifest, &m);
    }

    #[test]
    fn status_round_trips_and_verifies_with_device_key(s in status()) {
        round_trip(Kind::Status, &s);
        let bytes = s.seal(key());
        prop_assert_eq!(StatusReport::open(&bytes, &s.device_id, &key().public_key()).unwrap(), s);
    }

    #[test]
    fn event_round_trips(e in event()) {
        round_trip(Kind::Event, &e);
        let bytes = e.seal(key());
        prop_assert_eq!(Event::open(&bytes, &e.device_id, &key().public_key()).unwrap(), e);
    }

    #[test]
    fn keyset_round_trips(k in keyset()) {
        let signed = SignedKeySet::sign(&k, key());
        prop_assert_eq!(SignedKeySet::verify(&signed.0, &key().public_key(), None, 0).unwrap(), k);
    }

    #[test]
    fn trust_state_round_trips(k in keyset(), last in option::of((any::<u64>(), any::<u64>(), digest())), (time_floor, root_version) in any::<(u64, u64)>()) {
        let state = TrustState {
            root: key().public_key(),
            keyset: k,
            last: last.map(|(epoch, generation, body_digest)| LastAccepted { epoch, generation, body_digest }),
            time_floor,
            root_version,
        };
        let bytes = postcard::to_stdvec(&state).unwrap();
        prop_assert_eq!(postcard::from_bytes::<TrustState>(&bytes).unwrap(), state);
    }

    #[test]
    fn digest_and_image_ref_text_round_trips(r in image_ref()) {
        prop_assert_eq!(r.to_string().parse::<ImageRef>().unwrap(), r.clone());
        prop_assert_eq!(r.digest.to_string().parse::<Digest>().unwrap(), r.digest);
    }

    /// Any single flipped bit in a sealed manifest is refused (never accepted as
    /// a different manifest), and never panics.
    #[test]
    fn flipped_bits_are_always_rejected(m in manifest(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut bytes = seal_value(Kind::Manifest, key(), &m).unwrap();
        let i = pos.index(bytes.len());
        bytes[i] ^= 1 << bit;
        let keyset = KeySet { version: u64::MAX, issued_at: 0, keys: vec![key().public_key()], expires_at: u64::MAX, root_version: 1 };
        let verifier = Verifier::new(m.device_id.clone(), TrustState { root: key().public_key(), keyset, last: None, time_floor: 0, root_version: 1 });
        match verifier.verify(&bytes, 0) {
            Ok(Verdict::Accept(a)) => prop_assert!(false, "flipped bit {i}:{bit} accepted: {:?}", a.manifest),
            Ok(Verdict::Duplicate { .. }) => prop_assert!(false, "flipped bit accepted as duplicate"),
            Err(_) => {}
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..2048)) {
        let keyset = KeySet { version: 1, issued_at: 0, keys: vec![key().public_key()], expires_at: u64::MAX, root_version: 1 };
        let verifier = Verifier::new("d".parse().unwrap(), TrustState { root: key().public_key(), keyset, last: None, time_floor: 0, root_version: 1 });
        let _ = verifier.verify(&bytes, 0);
        let _ = postcard::from_bytes::<Manifest>(&bytes);
        let _ = postcard::from_bytes::<StatusReport>(&bytes);
        let _ = postcard::from_bytes::<Event>(&bytes);
    }
}
