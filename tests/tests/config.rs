//! Configuration variables end to end (real hub, agent, registry and
//! containers): a fleet variable reaches the apps that take it; changing it
//! restarts exactly those apps, not one overridden for the device nor one
//! that does not take it; a per-device override of a deployment's env value
//! replaces it on that device alone and unsetting it brings the file's value
//! back; `config list --device` says where every value comes from; and the
//! refusals name what is wrong.

use anyhow::Result;
use outpost_e2e::{eventually, World, PATIENCE};
use serde_json::Value;

/// Wait until the agent committed what it last applied (a later check of
/// pids must not race a replacement still in its trial).
fn settle(w: &World) {
    let applied = w.agent.applied_generation().unwrap_or(0);
    eventually(PATIENCE, "the release to commit", || {
        w.agent.committed_generation().filter(|g| *g >= applied)
    });
}

#[test]
fn a_fleet_variable_restarts_exactly_the_apps_that_take_it() -> Result<()> {
    let w = World::start("config")?;
    let dev = w.agent.device_id.clone();
    w.hub.cli(&["config", "set", "GREETING=hello"])?;

    let mut takes = w.app("takes");
    takes.extra_toml.push("config = [\"GREETING\"]".into());
    let mut over = w.app("over");
    over.extra_toml.push("config = [\"GREETING\"]".into());
    let plain = w.app("plain");
    w.deploy_and_wait(&[takes.clone(), over.clone(), plain.clone()])?;
    assert_eq!(takes.get("/env?name=GREETING").as_deref(), Some("hello"));
    assert_eq!(over.get("/env?name=GREETING").as_deref(), Some("hello"));
    assert_eq!(
        plain.get("/env?name=GREETING"),
        None,
        "plain does not take it"
    );

    // A device-and-app value beats the fleet's for that one app.
    let out: Value = serde_json::from_str(&w.hub.cli(&[
        "config",
        "set",
        "--device",
        &dev,
        "--app",
        &over.name,
        "GREETING=mine",
        "--json",
    ])?)?;
    assert_eq!(out["updated"].as_array().map(Vec::len), Some(1), "{out}");
    eventually(PATIENCE, "the override to reach its app", || {
        over.get("/env?name=GREETING").filter(|v| v == "mine")
    });
    settle(&w);

    // The fleet value changes: only `takes` is restarted.
    let pid = |name: &str| eventually(PATIENCE, "an app's pid", || w.agent.app_pid(name));
    let (takes_pid, over_pid, plain_pid) = (pid(&takes.name), pid(&over.name), pid(&plain.name));
    let out: Value =
        serde_json::from_str(&w.hub.cli(&["config", "set", "GREETING=bye", "--json"])?)?;
    assert_eq!(out["changed"], serde_json::json!(["GREETING"]), "{out}");
    assert_eq!(out["updated"].as_array().map(Vec::len), Some(1), "{out}");
    eventually(PATIENCE, "the new fleet value to reach the app", || {
        takes.get("/env?name=GREETING").filter(|v| v == "bye")
    });
    settle(&w);
    assert_ne!(
        w.agent.app_pid(&takes.name),
        Some(takes_pid),
        "not restarted"
    );
    assert_eq!(
        w.agent.app_pid(&over.name),
        Some(over_pid),
        "the app with its own value was restarted"
    );
    assert_eq!(
        w.agent.app_pid(&plain.name),
        Some(plain_pid),
        "an app that does not take GREETING was restarted"
    );
    assert_eq!(over.get("/env?name=GREETING").as_deref(), Some("mine"));
    // The same value again changes nothing.
    let out: Value =
        serde_json::from_str(&w.hub.cli(&["config", "set", "GREETING=bye", "--json"])?)?;
    assert_eq!(out["changed"], serde_json::json!([]), "{out}");

    // Where each value comes from, as the hub rendered it.
    let cfg: Value =
        serde_json::from_str(&w.hub.cli(&["config", "list", "--device", &dev, "--json"])?)?;
    let from = |app: &str, key: &str| {
        cfg["apps"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["app"] == app))
            .map(|x| x["vars"][key]["from"].as_str().unwrap_or("").to_string())
    };
    assert_eq!(from(&takes.name, "GREETING").as_deref(), Some("fleet"));
    assert_eq!(
        from(&over.name, "GREETING"),
        Some(format!("device {dev}, app {}", over.name))
    );
    let human = w.hub.cli(&["config", "list", "--device", &dev])?;
    assert!(human.contains("FROM") && human.contains("mine"), "{human}");

    // A per-device override of a value of the deployment file (the app's
    // env), then unset: the file's value is back.
    let plain_pid = pid(&plain.name);
    w.hub.cli(&[
        "config",
        "set",
        "--device",
        &dev,
        "--app",
        &plain.name,
        "HELLO_VERSION=field",
    ])?;
    eventually(PATIENCE, "the device's own value of the file's env", || {
        plain.get("/").filter(|b| b.contains("version field"))
    });
    settle(&w);
    assert_ne!(w.agent.app_pid(&plain.name), Some(plain_pid));
    assert_eq!(w.agent.app_pid(&over.name), Some(over_pid));
    w.hub.cli(&[
        "config",
        "unset",
        "--device",
        &dev,
        "--app",
        &plain.name,
        "HELLO_VERSION",
    ])?;
    eventually(PATIENCE, "the file's value to be back", || {
        plain.get("/").filter(|b| b.contains("version 1"))
    });

    // Refusals name the problem and change nothing.
    for (args, needle) in [
        (
            vec!["config", "set", "--device", "no-such-device", "X=1"],
            "device \"no-such-device\" not found",
        ),
        (
            vec![
                "config",
                "set",
                "--deployment",
                &dev,
                "--app",
                &takes.name,
                "X=1",
            ],
            "the `env` table",
        ),
        (vec!["config", "set", "1BAD=x"], "not starting with a digit"),
        (
            vec!["config", "unset", "NEVER_SET"],
            "variable \"NEVER_SET at fleet\" not found",
        ),
    ] {
        // The API's message may arrive JSON-escaped inside the CLI's error.
        let e = w.hub.cli(&args).unwrap_err().to_string().replace('\\', "");
        assert!(e.contains(needle), "{args:?}: {e}");
    }
    let listed: Value = serde_json::from_str(&w.hub.cli(&["config", "list", "--json"])?)?;
    let keys: Vec<&str> = listed
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["key"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(keys, vec!["GREETING", "GREETING"], "{listed}");
    Ok(())
}
