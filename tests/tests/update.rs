//! A new version of an app replaces the old container; volume data survives.

use outpost_e2e::{eventually, World, PATIENCE};

#[test]
fn update_replaces_the_app_and_keeps_volume_data() -> anyhow::Result<()> {
    let w = World::start("update")?;
    let mut app = w.app("web");
    w.deploy_and_wait(std::slice::from_ref(&app))?;
    let pid1 = eventually(PATIENCE, "app pid", || w.agent.app_pid(&app.name));
    assert_eq!(app.get("/count").unwrap().trim(), "1");

    app.version = "2".into();
    w.deploy_and_wait(std::slice::from_ref(&app))?;
    let pid2 = eventually(PATIENCE, "new app pid", || w.agent.app_pid(&app.name));
    assert_ne!(pid1, pid2);
    assert!(app.get("/").unwrap().contains("version 2"));
    // The volume kept the first container's start record.
    assert_eq!(app.get("/count").unwrap().trim(), "2");
    let containers = std::fs::read_dir(w.agent.dir.path().join("run/containers"))?.count();
    assert_eq!(containers, 1, "the old container was not removed");
    Ok(())
}
