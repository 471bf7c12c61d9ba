//! The sample image: `images/build.sh` is reproducible (same inputs, same index
//! digest), the layout imports into the store, and the binary inside it serves
//! the endpoints other tests rely on (version, start count in the volume, alloc).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use outpost_oci::build::{build_static_image, PlatformBinary};
use outpost_oci::spec::{OciPlatform, RuntimeConfig};
use outpost_oci::ImageStore;
use outpost_protocol::Platform;
use std::io::{Read, Write};
use std::process::{Child, Command};

#[test]
fn building_the_sample_image_twice_gives_the_same_index_digest() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let first = build_sample_image(a.path());
    let second = build_sample_image(b.path());
    println!("sample image index digest: {first}");
    assert_eq!(first, second);
    let layout_a = std::fs::read(a.path().join("hello/index.json")).unwrap();
    let layout_b = std::fs::read(b.path().join("hello/index.json")).unwrap();
    assert_eq!(layout_a, layout_b);
}

#[test]
fn the_builder_ignores_file_timestamps_and_locations() {
    let src = tempfile::tempdir().unwrap();
    let (x, y) = (src.path().join("x"), src.path().join("sub-y"));
    std::fs::write(&x, b"\x7fELF pretend binary").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&y, b"\x7fELF pretend binary").unwrap();
    let build = |bin: &std::path::Path, out: &std::path::Path| {
        build_static_image(
            out,
            "latest",
            "/app",
            &["/data".into()],
            RuntimeConfig::default(),
            &[PlatformBinary {
                platform: OciPlatform {
                    architecture: "amd64".into(),
                    os: "linux".into(),
                    variant: None,
                },
                binary: bin.to_path_buf(),
            }],
        )
        .unwrap()
        .digest
    };
    let out = tempfile::tempdir().unwrap();
    assert_eq!(
        build(&x, &out.path().join("a")),
        build(&y, &out.path().join("b"))
    );
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(port: u16, path: &str) -> String {
    // Wait for the listener (bounded readiness loop, not a timing assertion).
    for _ in 0..200 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            return out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("hello did not listen on {port}");
}

#[test]
fn the_sample_binary_from_the_image_serves_version_count_and_alloc() {
    let out = repo_root().join("target/test-images");
    build_sample_image(&out);
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path().join("store"), 1 << 30).unwrap();
    let imported = store.import_layout(&out.join("hello")).unwrap();
    let platform = Platform {
        architecture: "amd64".into(),
        variant: None,
    };
    let prepared = store.prepare(&imported[0].digest, &platform).unwrap();
    assert_eq!(prepared.config.entrypoint, vec!["/hello"]);
    assert!(prepared.config.env.contains(&"DATA_DIR=/data".to_string()));
    let bin = prepared.layers[0].join("hello");
    let data = dir.path().join("volume");

    for start in 1..=2 {
        let port = free_port();
        let _child = Kill(
            Command::new(&bin)
                .env("PORT", port.to_string())
                .env("HELLO_VERSION", "v7")
                .env("DATA_DIR", &data)
                .spawn()
                .unwrap(),
        );
        assert_eq!(get(port, "/"), "hello from outpost version v7\n");
        assert_eq!(get(port, "/count"), format!("{start}\n"));
        assert_eq!(get(port, "/alloc?mb=8"), "allocated 8 MiB\n");
    }
}
