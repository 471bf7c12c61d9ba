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
use outpost_test_support::{eventually, listening_addrs, ProcessGuard, STARTUP};
use std::io::{Read, Write};
use std::process::Command;

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
    std::fs::write(&y, b"\x7fELF pretend binary").unwrap();
    // Different timestamps, set rather than waited for.
    let later =
        std::fs::metadata(&x).unwrap().modified().unwrap() + std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&y)
        .unwrap()
        .set_modified(later)
        .unwrap();
    assert_ne!(
        std::fs::metadata(&x).unwrap().modified().unwrap(),
        std::fs::metadata(&y).unwrap().modified().unwrap()
    );
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

fn get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
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
        // Port 0: the binary binds a free port itself, read back from /proc.
        let hello = ProcessGuard::spawn(
            "hello",
            Command::new(&bin)
                .env("PORT", "0")
                .env("HELLO_VERSION", "v7")
                .env("DATA_DIR", &data),
            &dir.path().join(format!("hello-{start}.log")),
        )
        .unwrap();
        let port = eventually(STARTUP, "hello to listen", || {
            listening_addrs(hello.pid()).ok()?.first().map(|a| a.port())
        });
        assert_eq!(get(port, "/"), "hello from outpost version v7\n");
        assert_eq!(get(port, "/count"), format!("{start}\n"));
        assert_eq!(get(port, "/alloc?mb=8"), "allocated 8 MiB\n");
    }
}
