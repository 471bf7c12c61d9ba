//! End-to-end lifecycle of real containers through libcontainer (run as root):
//! running, volumes, limits, devices, seccomp, stop semantics, logs.

mod common;

use common::*;
use outpost_protocol::{DeviceNode, VolumeMount};
use outpost_runtime::{ContainerStatus, Rootfs};
use std::io::{Read, Write};
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn container_writes_to_its_volume_and_serves_http_on_host_network() {
    let f = Fixture::new();
    let port = free_port();
    let mut app = sh_app(
        "web",
        &format!("echo written-by-$(hostname) > /data/out; exec httpd -f -p 127.0.0.1:{port} -h /www"),
    );
    app.volumes = vec![VolumeMount {
        name: "state".into(),
        container_path: "/data".into(),
        read_only: false,
    }];
    let info = f.run("web-1", &app);
    assert_eq!(info.app, "web");
    wait_for("http answer", || {
        http_get(port).is_some_and(|r| r.contains("hello from outpost"))
    });
    let out = std::fs::read_to_string(f.rt.volume_path("web", "state").join("out")).unwrap();
    assert_eq!(out, "written-by-web\n", "hostname is the app name");
    let listed = f.rt.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].status, ContainerStatus::Running);
    assert_eq!(listed[0].labels.get("test").map(String::as_str), Some("web-1"));
    assert_eq!(f.rt.stop("web-1", Duration::from_secs(5)).unwrap(), ContainerStatus::Stopped);
    f.rt.delete("web-1").unwrap();
    assert!(f.rt.list().unwrap().is_empty());
}
