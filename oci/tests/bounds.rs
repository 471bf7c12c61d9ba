//! Size bounds on what a registry hands us: manifests and indexes over 4 MiB
//! are refused (by Content-Length before reading, and while reading when the
//! length is not announced), and a layer that decompresses far beyond its
//! size (a gzip bomb) is refused while unpacking with the store left clean.
//!
//! The bomb and the just-under-the-limit manifest go through a real
//! `docker-registry`. It will neither store nor serve a manifest over 4 MiB,
//! so the oversized manifests come from a small hostile HTTP server, which is
//! what would send one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use outpost_oci::build::Layer;
use outpost_oci::spec::MAX_DOCUMENT_BYTES;
use outpost_oci::{Client, ImageStore, LayerLimits, OciError, PullProgress, RegistryConfig};
use outpost_protocol::{Digest, ImageRef, Platform};
use std::io::Write;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn client_for(host: &str) -> Client {
    Client::try_new(RegistryConfig {
        insecure_hosts: vec![host.to_string()],
        ..RegistryConfig::default()
    })
    .unwrap()
}

fn amd64_platform() -> Platform {
    Platform {
        architecture: "amd64".into(),
        variant: None,
    }
}

fn no_progress(_: PullProgress) {}

/// Files and directories under `dir` (recursively), for "left clean" checks.
fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd {
            let p = e.unwrap().path();
            out.push(p.display().to_string());
            if p.is_dir() {
                out.extend(entries(&p));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_just_under_the_limit_from_a_real_registry_resolves_and_pulls() {
    // docker-registry itself refuses to store or serve manifests over 4 MiB
    // ("request body too large", "storage: read exceeds limit"), so the
    // oversized cases below need a hostile server; this checks that our limit
    // is not below what a real registry serves.
    let registry = registry();
    let layout = tempfile::tempdir().unwrap();
    let desc = single_image_layout(layout.path(), &[layer_of(&[file("app", b"small")])]);
    skopeo_push(
        layout.path(),
        "latest",
        &format!("{}/outpost/big:base", registry.host()),
    );
    let hex = desc.digest.strip_prefix("sha256:").unwrap();
    let manifest = std::fs::read(layout.path().join("blobs/sha256").join(hex)).unwrap();
    let mut doc: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let target = MAX_DOCUMENT_BYTES as usize - 4096;
    doc["annotations"] = serde_json::json!({ "org.example.padding": "" });
    let pad = target - serde_json::to_vec(&doc).unwrap().len();
    doc["annotations"] = serde_json::json!({ "org.example.padding": "x".repeat(pad) });
    let big = serde_json::to_vec(&doc).unwrap();
    assert_eq!(big.len(), target);
    // Built first: it installs the rustls crypto provider reqwest needs.
    let client = client_for(&registry.host());
    let put = reqwest::Client::new()
        .put(format!(
            "http://{}/v2/outpost/big/manifests/big",
            registry.host()
        ))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    let status = put.status();
    assert!(
        status.is_success(),
        "PUT: {status} {}",
        put.text().await.unwrap()
    );

    let image = client
        .resolve(&format!("{}/outpost/big:big", registry.host()))
        .await
        .unwrap();
    assert_eq!(image.digest, Digest::of(&big));
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path(), 1 << 30).unwrap();
    let p = amd64_platform();
    store.pull(&client, &image, &p, &no_progress).await.unwrap();
    let prepared = store.prepare(&image.digest, &p).unwrap();
    assert_eq!(
        std::fs::read(prepared.layers[0].join("app")).unwrap(),
        b"small"
    );
}

/// How the hostile registry sends a manifest body.
#[derive(Clone, Copy)]
enum Framing {
    /// `Content-Length` announcing the (oversized) length, then the body.
    Announced,
    /// `Transfer-Encoding: chunked`, no length, more bytes than the limit.
    Chunked,
}

/// A hostile "registry": answers `/v2/`, then serves every manifest as 8 MiB
/// of spaces, framed as `framing` says. Returns its address.
async fn hostile_registry(framing: Framing) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut len = 0;
                while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf[len..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => len += n,
                    }
                }
                let head = String::from_utf8_lossy(&buf[..len]).to_string();
                if !head.contains("/manifests/") {
                    let _ = conn
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                        )
                        .await;
                    return;
                }
                let total = 2 * MAX_DOCUMENT_BYTES;
                let chunk = vec![b' '; 64 * 1024];
                let (header, framed) = match framing {
                    Framing::Announced => (format!("Content-Length: {total}"), chunk.clone()),
                    Framing::Chunked => (
                        "Transfer-Encoding: chunked".to_string(),
                        [
                            format!("{:x}\r\n", chunk.len()).into_bytes(),
                            chunk.clone(),
                            b"\r\n".to_vec(),
                        ]
                        .concat(),
                    ),
                };
                let _ = conn
                    .write_all(format!("HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n{header}\r\nConnection: close\r\n\r\n").as_bytes())
                    .await;
                // Bounded, so the task ends by itself; the client hangs up first.
                for _ in 0..(total / chunk.len() as u64) {
                    if conn.write_all(&framed).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_manifest_is_refused_at_resolve_and_pull_announced_or_not() {
    for (framing, says) in [
        (Framing::Announced, "announced"),
        (Framing::Chunked, "arrived"),
    ] {
        let (addr, task) = hostile_registry(framing).await;
        let client = client_for(&addr.to_string());
        // The hub's path: tag -> digest.
        let reference = format!("{addr}/outpost/liar:latest");
        let err = client.resolve(&reference).await.unwrap_err();
        println!("resolve: {err}");
        assert!(
            matches!(&err, OciError::ManifestTooLarge { limit, detail, .. }
                if *limit == MAX_DOCUMENT_BYTES && detail.contains(says)),
            "{err:?}"
        );
        assert!(err.to_string().contains(&reference), "{err}");
        // The agent's path: a pull pinned by digest; nothing is stored.
        let image = ImageRef {
            repository: format!("{addr}/outpost/liar"),
            digest: Digest::of(b"anything"),
        };
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path(), 1 << 30).unwrap();
        let err = store
            .pull(&client, &image, &amd64_platform(), &no_progress)
            .await
            .unwrap_err();
        println!("pull: {err}");
        assert!(matches!(err, OciError::ManifestTooLarge { .. }), "{err:?}");
        assert!(store.images().unwrap().is_empty());
        assert!(store.usage_bytes().unwrap() < 64 * 1024);
        task.abort();
    }
}

/// A gzip layer holding one file of `zeros` zero bytes: kilobytes on the wire.
fn gzip_bomb(zeros: u64) -> Layer {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_path("zeros").unwrap();
    header.set_size(zeros);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    tar.append(&header, std::io::Read::take(std::io::repeat(0), zeros))
        .unwrap();
    let tar = tar.into_inner().unwrap();
    let diff_id = Digest::of(&tar);
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&tar).unwrap();
    Layer {
        media_type: outpost_oci::spec::MEDIA_OCI_LAYER_GZIP.into(),
        blob: enc.finish().unwrap(),
        diff_id,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_layer_is_refused_while_unpacking_and_leaves_the_store_clean() {
    let registry = registry();
    let layout = tempfile::tempdir().unwrap();
    // 96 MiB of zeros: about 100 KiB of gzip, a ratio near 1000.
    let bomb = gzip_bomb(96 * 1024 * 1024);
    let blob_len = bomb.blob.len() as u64;
    let bomb_digest = Digest::of(&bomb.blob);
    println!("bomb: {blob_len} compressed bytes");
    single_image_layout(layout.path(), &[bomb]);
    let reference = format!("{}/outpost/bomb:latest", registry.host());
    skopeo_push(layout.path(), "latest", &reference);

    let client = client_for(&registry.host());
    let image = client.resolve(&reference).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let budget = 1 << 30;
    // Default limits: 100 × the blob, but at least 64 MiB, at most the budget.
    let store = ImageStore::open(dir.path(), budget).unwrap();
    let p = amd64_platform();
    store.pull(&client, &image, &p, &no_progress).await.unwrap();
    let expected_limit = LayerLimits::for_budget(budget).limit_for(blob_len);
    assert_eq!(expected_limit, LayerLimits::RATIO_FLOOR_BYTES);

    let err = store.prepare(&image.digest, &p).unwrap_err();
    let text = err.to_string();
    println!("prepare: {text}");
    assert!(
        matches!(
            &err,
            OciError::Layer { digest, source: outpost_oci::unpack::UnpackError::TooLarge { limit } }
                if *digest == bomb_digest && *limit == expected_limit
        ),
        "{err:?}"
    );
    assert!(
        text.contains(&bomb_digest.to_string()) && text.contains(&expected_limit.to_string()),
        "{text}"
    );
    // Nothing half-unpacked is left behind, and the store did not grow by the
    // bomb's payload.
    assert_eq!(entries(&dir.path().join("layers")), Vec::<String>::new());
    assert_eq!(entries(&dir.path().join("tmp")), Vec::<String>::new());
    assert!(store.usage_bytes().unwrap() < 4 * 1024 * 1024);

    // An absolute cap works the same way, and a generous one lets it through.
    let tight = store.clone().with_layer_limits(LayerLimits {
        max_bytes: 1024 * 1024,
        max_ratio: u64::MAX,
    });
    let err = tight.prepare(&image.digest, &p).unwrap_err();
    assert!(err.to_string().contains("1048576"), "{err}");
    assert_eq!(entries(&dir.path().join("layers")), Vec::<String>::new());
    let generous = store.with_layer_limits(LayerLimits {
        max_bytes: budget,
        max_ratio: 10_000,
    });
    let prepared = generous.prepare(&image.digest, &p).unwrap();
    assert_eq!(
        std::fs::metadata(prepared.layers[0].join("zeros"))
            .unwrap()
            .len(),
        96 * 1024 * 1024
    );
}
