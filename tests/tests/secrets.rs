//! Secrets sealed end to end to one device: the value is in no retained
//! manifest, in neither data dir (container specs included) and in no log;
//! the app reads it at its path, another as an environment variable;
//! rotating it restarts only the app that mounts it; a faithful offline reboot
//! opens it again from the persisted (sealed) manifest; a device holding
//! another device's sealed secret cannot open it; and the refusals name what
//! is wrong.

use anyhow::Result;
use outpost_e2e::{eventually, mqtt, unique, Agent, World, PATIENCE};
use std::path::Path;

/// A value no file could hold by chance.
fn marker() -> String {
    format!("sekret-{:032x}", rand_u128())
}

fn rand_u128() -> u128 {
    let a: u64 = rand::random();
    let b: u64 = rand::random();
    (u128::from(a) << 64) | u128::from(b)
}

/// Every file under `dir` (not following symlinks, skipping `skip`) whose
/// bytes contain `needle`.
fn files_containing(dir: &Path, skip: Option<&Path>, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if Some(p.as_path()) == skip {
                continue;
            }
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                if let Ok(bytes) = std::fs::read(&p) {
                    if bytes.windows(needle.len()).any(|w| w == needle) {
                        hits.push(p.display().to_string());
                    }
                }
            }
        }
    }
    hits
}

/// Nothing at rest or on the broker holds `value`: the retained manifest read
/// as the device (by an MQTT client and by `mosquitto_sub`), the hub's whole data dir (database, keys, logs), the
/// agent's whole dir except its tmpfs run dir (state database, images,
/// container bundles, logs), and the hub's API answer about secrets.
fn assert_nowhere_but_tmpfs(w: &World, value: &str) -> Result<()> {
    let topic = outpost_protocol::topics::manifest(&w.agent.device_id.parse()?);
    let login = w.agent.broker_login()?;
    for (how, manifest) in [
        (
            "an MQTT client",
            mqtt::retained_as(w.hub.mqtt_addr(), Some(&login), &topic)?,
        ),
        (
            "mosquitto_sub",
            mqtt::retained_with_mosquitto_sub(w.hub.mqtt_addr(), Some(&login), &topic)?,
        ),
    ] {
        assert!(manifest.len() > 100, "{how} read no manifest");
        assert!(
            !manifest.windows(value.len()).any(|x| x == value.as_bytes()),
            "the retained manifest, read with {how}, holds the plaintext"
        );
    }
    let run = w.agent.dir.path().join("run");
    for (what, dir, skip) in [
        ("hub data dir", w.hub.dir.path(), None),
        ("agent dirs", w.agent.dir.path(), Some(run.as_path())),
    ] {
        let hits = files_containing(dir, skip, value.as_bytes());
        assert!(hits.is_empty(), "{what}: plaintext in {hits:?}");
    }
    let listed = w.hub.cli(&["secret", "list", "--json"])?;
    assert!(!listed.contains(value), "the API shows the value");
    Ok(())
}

#[test]
fn a_secret_reaches_its_app_sealed_rotates_alone_and_returns_after_an_offline_reboot() -> Result<()>
{
    let mut w = World::start("secret")?;
    let first = marker();
    let set = w.hub.set_secret("db", first.as_bytes())?;
    assert_eq!(set["secret"]["version"].as_u64(), Some(1));
    assert_eq!(set["secret"]["size"].as_u64(), Some(first.len() as u64));

    let mut with = w.app("uses-db");
    with.secrets = vec!["db".into()];
    // The same secret as an environment variable of another app.
    let mut envy = w.app("env-db");
    envy.extra_toml
        .push("secrets = [{ name = \"db\", env = \"DB_PASSWORD\" }]".into());
    let plain = w.app("plain");
    w.deploy_and_wait(&[with.clone(), envy.clone(), plain.clone()])?;
    assert_eq!(with.get("/secret?name=db").as_deref(), Some(first.as_str()));
    assert_eq!(
        envy.get("/env?name=DB_PASSWORD").as_deref(),
        Some(first.as_str())
    );
    assert!(
        envy.get("/secret?name=db").is_none(),
        "a variable secret was also mounted as a file"
    );
    // Read-only file, mode 0400, owned by the app's user (root here).
    assert_eq!(
        with.get("/secret-meta?name=db").as_deref(),
        Some("mode 400 uid 0\n")
    );
    assert!(
        plain.get("/secret?name=db").is_none(),
        "mounted into an app that did not ask"
    );
    assert_nowhere_but_tmpfs(&w, &first)?;

    // Rotation: a new version reaches the app that mounts it; the other app
    // keeps its very process.
    let plain_pid = eventually(PATIENCE, "plain app pid", || w.agent.app_pid(&plain.name));
    let with_pid = eventually(PATIENCE, "secret app pid", || w.agent.app_pid(&with.name));
    let second = marker();
    let set = w.hub.set_secret("db", second.as_bytes())?;
    assert_eq!(set["secret"]["version"].as_u64(), Some(2));
    assert_eq!(set["updated"].as_array().map(Vec::len), Some(1));
    eventually(PATIENCE, "the app to read the rotated secret", || {
        with.get("/secret?name=db").filter(|v| *v == second)
    });
    eventually(PATIENCE, "the variable to carry the rotated secret", || {
        envy.get("/env?name=DB_PASSWORD").filter(|v| *v == second)
    });
    let applied = w.agent.applied_generation().unwrap_or(0);
    eventually(PATIENCE, "the rotation to commit", || {
        w.agent.committed_generation().filter(|g| *g >= applied)
    });
    assert_ne!(w.agent.app_pid(&with.name), Some(with_pid), "not restarted");
    assert_eq!(
        w.agent.app_pid(&plain.name),
        Some(plain_pid),
        "rotating a secret restarted an app that does not mount it"
    );
    // The same value again: no new version, no new manifest.
    let again = w.hub.set_secret("db", second.as_bytes())?;
    assert_eq!(again["changed"].as_bool(), Some(false));
    assert_eq!(again["secret"]["version"].as_u64(), Some(2));
    assert_nowhere_but_tmpfs(&w, &second)?;
    assert_nowhere_but_tmpfs(&w, &first)?;

    // A value for this device alone beats the fleet's; removing it brings
    // the fleet's back. The app that does not mount it keeps its process.
    let own = marker();
    let dev = w.agent.device_id.clone();
    let set = w
        .hub
        .set_secret_at("db", own.as_bytes(), &["--device", &dev])?;
    assert_eq!(
        set["secret"]["scope"]["device"].as_str(),
        Some(dev.as_str())
    );
    assert_eq!(set["updated"].as_array().map(Vec::len), Some(1));
    eventually(PATIENCE, "the device's own value", || {
        with.get("/secret?name=db").filter(|v| *v == own)
    });
    let listed: serde_json::Value =
        serde_json::from_str(&w.hub.cli(&["secret", "list", "--json"])?)?;
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    w.hub.cli(&["secret", "rm", "db", "--device", &dev])?;
    eventually(PATIENCE, "the fleet's value again", || {
        with.get("/secret?name=db").filter(|v| *v == second)
    });
    let applied = w.agent.applied_generation().unwrap_or(0);
    eventually(PATIENCE, "the fallback to commit", || {
        w.agent.committed_generation().filter(|g| *g >= applied)
    });
    assert_eq!(w.agent.app_pid(&plain.name), Some(plain_pid));
    assert_nowhere_but_tmpfs(&w, &own)?;
    // The last value cannot go while apps mount it.
    let e = w.hub.cli(&["secret", "rm", "db"]).unwrap_err().to_string();
    assert!(e.contains("mounted by deployment"), "{e}");

    // A faithful reboot with no network: tmpfs (and the opened file) gone,
    // the data dir kept; the agent opens the secret again from the sealed
    // manifest it persisted.
    w.agent.reboot_offline()?;
    let back = eventually(
        PATIENCE,
        "the app to read its secret after the reboot",
        || {
            w.agent
                .http_get_in_netns(with.port, "/secret?name=db")
                .filter(|v| *v == second)
        },
    );
    assert_eq!(back, second);
    let back = eventually(PATIENCE, "the variable after the reboot", || {
        w.agent
            .http_get_in_netns(envy.port, "/env?name=DB_PASSWORD")
            .filter(|v| *v == second)
    });
    assert_eq!(back, second);
    let hits = files_containing(
        w.agent.dir.path(),
        Some(&w.agent.dir.path().join("run")),
        second.as_bytes(),
    );
    assert!(
        hits.is_empty(),
        "plaintext on disk after the reboot: {hits:?}"
    );
    Ok(())
}

#[test]
fn a_device_cannot_open_a_secret_sealed_to_another_and_refusals_name_the_problem() -> Result<()> {
    let w = World::start("seal-a")?;
    // Device B is registered with device A's encryption key (a mistake, or an
    // attacker's substitution): everything sealed for B is sealed to A's key.
    let b_id = unique("seal-b");
    let mut b = Agent::init(&w.hub, &b_id, w.proxy.port, &w.registry)?;
    w.hub
        .add_device_sealed(&b_id, &b.public_key, &w.agent.encryption_key()?)?;
    b.start()?;
    let value = marker();
    w.hub.set_secret("token", value.as_bytes())?;
    let mut app = w.app("sealed-elsewhere");
    app.secrets = vec!["token".into()];
    w.hub.deploy(&b_id, std::slice::from_ref(&app))?;
    let err = eventually(
        PATIENCE,
        "device B to report the secret it cannot open",
        || {
            // The app's last error while its release is in trial or failed;
            // the release's rollback reason when B had already committed its
            // first (empty) manifest and went back to it.
            let st = b.status().ok()?;
            let app_error = st["apps"][&app.name]["last_error"].as_str();
            let rolled_back = st["release"]["phase"]["RolledBack"]["reason"].as_str();
            let e = app_error.or(rolled_back)?.to_string();
            e.contains("does not open").then_some(e)
        },
    );
    assert!(err.contains("token") && err.contains(&b_id), "{err}");
    assert!(app.get("/").is_none(), "the app ran without its secret");
    assert!(!err.contains(&value));
    let hits = files_containing(b.dir.path(), None, value.as_bytes());
    assert!(hits.is_empty(), "device B holds the plaintext in {hits:?}");

    // An app mounting a secret the hub does not hold.
    let mut unknown = w.app("unknown-secret");
    unknown.secrets = vec!["nope".into()];
    let e = w
        .hub
        .deploy(&w.agent.device_id, std::slice::from_ref(&unknown))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("secret \\\"nope\\\" is not set") || e.contains("secret \"nope\" is not set"),
        "{e}"
    );
    assert!(e.contains("apps[0].secrets[0].name"), "{e}");

    // A device registered without an encryption key.
    let c_id = unique("seal-c");
    let c_key = outpost_protocol::SigningKey::generate()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .public_key()
        .to_string();
    w.hub.add_device(&c_id, &c_key)?;
    let e = w
        .hub
        .deploy(&c_id, std::slice::from_ref(&app))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("device {c_id} has no encryption key")),
        "{e}"
    );

    // A value over the limit.
    let big = vec![b'x'; outpost_protocol::MAX_SECRET_BYTES + 1];
    let e = w.hub.set_secret("huge", &big).unwrap_err().to_string();
    assert!(
        e.contains("secret \"huge\" is 65537 bytes; the limit is 65536"),
        "{e}"
    );

    // A mounted secret cannot be removed.
    let e = w
        .hub
        .cli(&["secret", "rm", "token"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("is mounted by deployment"), "{e}");
    drop(b);
    Ok(())
}
