//! Against a real registry (Debian's `docker-registry`, started per test on a
//! free loopback port): resolve tags, pull the sample multi-arch image for two
//! platforms, resume a pull cut by a dropped connection without re-fetching the
//! bytes already on disk, and respect the disk budget.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use outpost_oci::build::Layer;
use outpost_oci::{Client, ImageStore, OciError, PullProgress, RegistryConfig};
use outpost_protocol::{Digest, Platform};
use outpost_test_support::{eventually_async, ProcessGuard};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

fn client_for(hosts: &[String]) -> Client {
    Client::new(RegistryConfig {
        insecure_hosts: hosts.to_vec(),
        ..RegistryConfig::default()
    })
}

fn platform(arch: &str, variant: Option<&str>) -> Platform {
    Platform {
        architecture: arch.into(),
        variant: variant.map(Into::into),
    }
}

fn no_progress(_: PullProgress) {}

/// The sample image, built once per test binary run into target/ (build.sh is
/// idempotent), pushed to `registry` as outpost/hello:latest.
fn push_sample(registry: &Registry) -> String {
    let out = repo_root().join("target/test-images");
    let digest = build_sample_image(&out);
    skopeo_push(
        &out.join("hello"),
        "latest",
        &format!("{}/outpost/hello:latest", registry.host()),
    );
    digest
}

#[tokio::test]
async fn resolve_returns_the_index_digest_and_missing_tags_are_clear_errors() {
    let registry = registry();
    let index_digest = push_sample(&registry);
    let client = client_for(&[registry.host()]);

    let r = client
        .resolve(&format!("{}/outpost/hello:latest", registry.host()))
        .await
        .unwrap();
    assert_eq!(r.digest.to_string(), index_digest);
    assert_eq!(r.repository, format!("{}/outpost/hello", registry.host()));
    // The result is a valid pinned reference the hub can put in a manifest.
    assert_eq!(
        r.to_string().parse::<outpost_protocol::ImageRef>().unwrap(),
        r
    );

    // Resolving by digest checks it exists and returns it unchanged.
    let again = client.resolve(&r.to_string()).await.unwrap();
    assert_eq!(again, r);

    let missing = format!("{}/outpost/hello:no-such-tag", registry.host());
    let err = client.resolve(&missing).await.unwrap_err();
    assert!(matches!(err, OciError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains(&missing), "{err}");

    let err = client
        .resolve(&format!("{}/outpost/nothing:latest", registry.host()))
        .await
        .unwrap_err();
    assert!(matches!(err, OciError::NotFound { .. }), "{err:?}");

    let err = client.resolve("UPPER/Case:tag").await.unwrap_err();
    assert!(matches!(err, OciError::InvalidReference { .. }), "{err:?}");

    // A registry nobody listens on (a port reserved for this test, so nobody
    // else can start listening there either): a named error, no panic.
    let unused = outpost_test_support::PortLease::new().unwrap();
    let dead = format!("{}/x/y:latest", unused.addr());
    let err = client_for(&[dead.split('/').next().unwrap().to_string()])
        .resolve(&dead)
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&dead), "{err}");
}

#[tokio::test]
async fn pulls_the_sample_image_for_each_platform_and_prepares_it() {
    let registry = registry();
    push_sample(&registry);
    let client = client_for(&[registry.host()]);
    let image = client
        .resolve(&format!("{}/outpost/hello:latest", registry.host()))
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path(), 1 << 30).unwrap();
    let mut manifests = Vec::new();
    for p in [platform("amd64", None), platform("arm64", None)] {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let pulled = store
            .pull(&client, &image, &p, &move |pr| s.lock().unwrap().push(pr))
            .await
            .unwrap();
        let seen = seen.lock().unwrap();
        let last = seen.last().unwrap();
        assert_eq!(last.done_bytes, last.total_bytes);
        assert!(pulled.downloaded_bytes > 0);
        assert_eq!(pulled.config.entrypoint, vec!["/hello"]);
        manifests.push(pulled.manifest);

        let prepared = store.prepare(&image.digest, &p).unwrap();
        assert_eq!(prepared.manifest, pulled.manifest);
        let bin = prepared.layers[0].join("hello");
        let elf = std::fs::read(&bin).unwrap();
        let machine = u16::from_le_bytes([elf[18], elf[19]]);
        // ELF e_machine: 62 = x86-64, 183 = AArch64.
        assert_eq!(machine, if p.architecture == "amd64" { 62 } else { 183 });
        assert!(prepared.layers[0].join("data").is_dir());
    }
    assert_ne!(manifests[0], manifests[1]);

    // Pulling again fetches nothing.
    let again = store
        .pull(&client, &image, &platform("amd64", None), &no_progress)
        .await
        .unwrap();
    assert_eq!(again.downloaded_bytes, 0);

    let err = store
        .pull(&client, &image, &platform("riscv64", None), &no_progress)
        .await
        .unwrap_err();
    assert!(matches!(err, OciError::NoPlatform { .. }), "{err}");
    assert!(err.to_string().contains("linux/arm64"), "{err}");
}

#[tokio::test]
async fn an_interrupted_pull_resumes_from_the_bytes_on_disk() {
    // One big incompressible layer so the cut lands inside it.
    const LAYER_BYTES: usize = 4 << 20;
    let mut noise = vec![0u8; LAYER_BYTES];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let layer =
        Layer::plain(outpost_oci::build::reproducible_tar(&[file("noise", &noise)]).unwrap());
    let layer_digest = Digest::of(&layer.blob);
    let layer_size = layer.blob.len() as u64;
    let layout = tempfile::tempdir().unwrap();
    single_image_layout(layout.path(), &[layer]);

    let registry = registry();
    skopeo_push(
        layout.path(),
        "latest",
        &format!("{}/outpost/big:latest", registry.host()),
    );
    let proxy = Proxy::start(registry.addr).await;
    let via = proxy.addr.to_string();
    let client = client_for(std::slice::from_ref(&via));
    let image = client
        .resolve(&format!("{via}/outpost/big:latest"))
        .await
        .unwrap();

    // 1. The link drops after ~1.5 MiB.
    let cut_at = 1_500_000;
    proxy.limit.store(
        proxy.downstream_bytes.load(Ordering::SeqCst) + cut_at,
        Ordering::SeqCst,
    );
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path(), 1 << 30).unwrap();
    let p = platform("amd64", None);
    let err = store
        .pull(&client, &image, &p, &no_progress)
        .await
        .unwrap_err();
    println!("first pull: {err}");
    assert!(matches!(err, OciError::Transfer { .. }), "{err:?}");
    let partial = store.blobs().partial_path(&layer_digest);
    let on_disk = std::fs::metadata(&partial).unwrap().len();
    assert!(
        on_disk > 0 && on_disk < layer_size,
        "partial holds {on_disk} bytes"
    );
    assert!(!store.blobs().contains(&layer_digest));

    // 2. The link is back: only the missing bytes cross it.
    proxy.limit.store(u64::MAX, Ordering::SeqCst);
    let before = proxy.downstream_bytes.load(Ordering::SeqCst);
    let pulled = store.pull(&client, &image, &p, &no_progress).await.unwrap();
    let crossed = proxy.downstream_bytes.load(Ordering::SeqCst) - before;
    let missing = layer_size - on_disk;
    println!(
        "layer {layer_size} B, on disk after cut {on_disk} B, missing {missing} B, \
         resumed pull moved {crossed} B through the proxy (body {} B)",
        pulled.downloaded_bytes
    );
    assert_eq!(pulled.downloaded_bytes, missing);
    // Headers, the tiny manifests/config and auth probes: well under 64 KiB.
    assert!(
        crossed >= missing && crossed < missing + 64 * 1024,
        "{crossed}"
    );
    assert!(store.blobs().contains(&layer_digest));
    assert!(!partial.exists());
    // The blob on disk is verified again when unpacked.
    let prepared = store.prepare(&image.digest, &p).unwrap();
    assert_eq!(
        std::fs::read(prepared.layers[0].join("noise")).unwrap(),
        noise
    );

    // 3. A complete layer is never fetched again.
    let before = proxy.downstream_bytes.load(Ordering::SeqCst);
    let again = store.pull(&client, &image, &p, &no_progress).await.unwrap();
    assert_eq!(again.downloaded_bytes, 0);
    assert!(proxy.downstream_bytes.load(Ordering::SeqCst) - before < 16 * 1024);
}

#[tokio::test]
async fn a_pull_over_the_disk_budget_is_refused_before_downloading() {
    let layout = tempfile::tempdir().unwrap();
    let layer = Layer::plain(
        outpost_oci::build::reproducible_tar(&[file("blob", &vec![1u8; 256 * 1024])]).unwrap(),
    );
    let layer_digest = Digest::of(&layer.blob);
    single_image_layout(layout.path(), &[layer]);
    let registry = registry();
    skopeo_push(
        layout.path(),
        "latest",
        &format!("{}/outpost/budget:v1", registry.host()),
    );
    let client = client_for(&[registry.host()]);
    let image = client
        .resolve(&format!("{}/outpost/budget:v1", registry.host()))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path(), 64 * 1024).unwrap();
    let err = store
        .pull(&client, &image, &platform("amd64", None), &no_progress)
        .await
        .unwrap_err();
    assert!(matches!(err, OciError::BudgetExceeded { .. }), "{err:?}");
    assert!(err.to_string().contains("garbage-collect"), "{err}");
    assert!(!store.blobs().contains(&layer_digest));
    assert!(std::fs::read_dir(store.blobs().partial_dir())
        .unwrap()
        .next()
        .is_none());
}

#[tokio::test]
async fn https_with_a_private_ca_and_basic_auth() {
    let certs = tempfile::tempdir().unwrap();
    let tls = make_tls(certs.path());
    let registry = registry_with(&tls, ("edge", "s3cret"));
    let layout = tempfile::tempdir().unwrap();
    single_image_layout(layout.path(), &[layer_of(&[file("app", b"secure")])]);
    skopeo_push_as(
        layout.path(),
        "latest",
        &format!("{}/outpost/private:latest", registry.host()),
        Some("edge:s3cret"),
    );
    let reference = format!("{}/outpost/private:latest", registry.host());
    let config = |creds: Option<(&str, &str)>, ca: bool| RegistryConfig {
        insecure_hosts: vec![],
        credentials: creds
            .map(|(u, p)| {
                [(
                    registry.host(),
                    outpost_oci::Credentials::Basic {
                        username: u.into(),
                        password: p.into(),
                    },
                )]
                .into()
            })
            .unwrap_or_default(),
        extra_root_certificates_pem: if ca { vec![tls.ca_pem.clone()] } else { vec![] },
    };

    // Right CA and credentials: resolve and pull over HTTPS (rustls + ring).
    let client = Client::try_new(config(Some(("edge", "s3cret")), true)).unwrap();
    let image = client.resolve(&reference).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path(), 1 << 30).unwrap();
    let p = platform("amd64", None);
    store.pull(&client, &image, &p, &no_progress).await.unwrap();
    let prepared = store.prepare(&image.digest, &p).unwrap();
    assert_eq!(
        std::fs::read(prepared.layers[0].join("app")).unwrap(),
        b"secure"
    );

    // Wrong password and no credentials: refused, named as an auth problem.
    for creds in [Some(("edge", "wrong")), None] {
        let err = Client::try_new(config(creds, true))
            .unwrap()
            .resolve(&reference)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, OciError::Unauthorized { registry: r, anonymous, .. }
                if *r == registry.host() && *anonymous == creds.is_none()),
            "{creds:?}: {err:?}"
        );
        // The message names the registry and says which case it is.
        let text = err.to_string();
        let case = if creds.is_none() {
            "anonymous"
        } else {
            "credentials"
        };
        assert!(
            text.contains(&registry.host()) && text.contains(case),
            "{text}"
        );
    }

    // Unknown CA: the TLS handshake fails; no silent fallback to plain HTTP.
    let err = Client::try_new(config(Some(("edge", "s3cret")), false))
        .unwrap()
        .resolve(&reference)
        .await
        .unwrap_err();
    println!("without the CA: {err}");
    assert!(matches!(err, OciError::Registry { .. }), "{err:?}");
}

/// An image with one incompressible layer of `bytes` bytes; returns the
/// layout dir, the layer digest and the layer size.
fn big_image(bytes: usize, seed: u64) -> (tempfile::TempDir, Digest, u64) {
    let mut noise = vec![0u8; bytes];
    let mut x = seed | 1;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let layer =
        Layer::plain(outpost_oci::build::reproducible_tar(&[file("noise", &noise)]).unwrap());
    let digest = Digest::of(&layer.blob);
    let size = layer.blob.len() as u64;
    let layout = tempfile::tempdir().unwrap();
    single_image_layout(layout.path(), &[layer]);
    (layout, digest, size)
}

/// Child-process half of `a_pull_killed_mid_download_resumes_in_the_next_process`:
/// pulls what the parent names in env vars. Ignored when run on its own.
#[tokio::test]
#[ignore = "helper run as a child process by the kill test"]
async fn helper_pull_in_child_process() {
    let (Ok(reference), Ok(dir), Ok(host)) = (
        std::env::var("OUTPOST_TEST_PULL_REF"),
        std::env::var("OUTPOST_TEST_PULL_DIR"),
        std::env::var("OUTPOST_TEST_PULL_HOST"),
    ) else {
        return;
    };
    let client = client_for(&[host]);
    let store = ImageStore::open(dir, 1 << 30).unwrap();
    let image: outpost_protocol::ImageRef = reference.parse().unwrap();
    let _ = store
        .pull(&client, &image, &platform("amd64", None), &no_progress)
        .await;
}

#[tokio::test]
async fn a_pull_killed_mid_download_resumes_in_the_next_process() {
    let (layout, layer_digest, layer_size) = big_image(4 << 20, 42);
    let registry = registry();
    skopeo_push(
        layout.path(),
        "latest",
        &format!("{}/outpost/killed:latest", registry.host()),
    );
    let proxy = Proxy::start(registry.addr).await;
    let via = proxy.addr.to_string();
    let client = client_for(std::slice::from_ref(&via));
    let image = client
        .resolve(&format!("{via}/outpost/killed:latest"))
        .await
        .unwrap();

    // The link stalls after ~2 MB; the child process is SIGKILLed while stuck.
    proxy.stall.store(true, Ordering::SeqCst);
    proxy.limit.store(
        proxy.downstream_bytes.load(Ordering::SeqCst) + 2_000_000,
        Ordering::SeqCst,
    );
    let dir = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mut child = ProcessGuard::spawn(
        "the pulling child",
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "helper_pull_in_child_process",
                "--ignored",
                "--nocapture",
            ])
            .env("OUTPOST_TEST_PULL_REF", image.to_string())
            .env("OUTPOST_TEST_PULL_DIR", dir.path())
            .env("OUTPOST_TEST_PULL_HOST", &via),
        &logs.path().join("child.log"),
    )
    .unwrap();
    let store = ImageStore::open(dir.path(), 1 << 30).unwrap();
    let partial = store.blobs().partial_path(&layer_digest);
    eventually_async(
        std::time::Duration::from_secs(30),
        "the child to have most of the allowed bytes on disk",
        || async {
            let on_disk = std::fs::metadata(&partial).map_or(0, |m| m.len());
            if on_disk >= 1_900_000 {
                Ok(())
            } else {
                Err(format!("child wrote only {on_disk} bytes"))
            }
        },
    )
    .await;
    // SIGKILL while it is stuck.
    child.kill_group();
    let on_disk = std::fs::metadata(&partial).unwrap().len();

    // The next "process" (this one) continues from the partial file.
    proxy.stall.store(false, Ordering::SeqCst);
    proxy.limit.store(u64::MAX, Ordering::SeqCst);
    let before = proxy.downstream_bytes.load(Ordering::SeqCst);
    let pulled = store
        .pull(&client, &image, &platform("amd64", None), &no_progress)
        .await
        .unwrap();
    let crossed = proxy.downstream_bytes.load(Ordering::SeqCst) - before;
    let missing = layer_size - on_disk;
    println!(
        "killed child left {on_disk} of {layer_size} B; resumed pull received {} B, \
         {crossed} B crossed the proxy",
        pulled.downloaded_bytes
    );
    assert_eq!(pulled.downloaded_bytes, missing);
    assert!(
        crossed >= missing && crossed < missing + 64 * 1024,
        "{crossed}"
    );
    assert!(store.blobs().contains(&layer_digest));
}

// Multi-threaded: skopeo (a blocking child process) fetches tokens from the
// in-process token service while this thread waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_auth_through_a_token_service() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = token::TokenServer::start(dir.path(), "edge", "t0ken-pw").await;
    let registry = registry_with_token_auth(&tokens);
    let layout = tempfile::tempdir().unwrap();
    single_image_layout(layout.path(), &[layer_of(&[file("app", b"token")])]);
    let reference = format!("{}/outpost/tokened:latest", registry.host());
    skopeo_push_as(layout.path(), "latest", &reference, Some("edge:t0ken-pw"));

    let with = |creds: Option<outpost_oci::Credentials>| {
        Client::new(RegistryConfig {
            insecure_hosts: vec![registry.host()],
            credentials: creds
                .map(|c| [(registry.host(), c)].into())
                .unwrap_or_default(),
            ..RegistryConfig::default()
        })
    };
    // Username/password exchanged for a bearer token at the realm the registry names.
    let client = with(Some(outpost_oci::Credentials::Basic {
        username: "edge".into(),
        password: "t0ken-pw".into(),
    }));
    let image = client.resolve(&reference).await.unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(store_dir.path(), 1 << 30).unwrap();
    let p = platform("amd64", None);
    store.pull(&client, &image, &p, &no_progress).await.unwrap();
    let prepared = store.prepare(&image.digest, &p).unwrap();
    assert_eq!(
        std::fs::read(prepared.layers[0].join("app")).unwrap(),
        b"token"
    );

    // A token obtained out of band.
    let bearer = with(Some(outpost_oci::Credentials::Bearer(
        tokens.token_for("outpost/tokened"),
    )));
    assert_eq!(bearer.resolve(&reference).await.unwrap(), image);

    // Anonymous and wrong password: refused as an auth problem.
    for creds in [
        None,
        Some(outpost_oci::Credentials::Basic {
            username: "edge".into(),
            password: "nope".into(),
        }),
    ] {
        let err = with(creds).resolve(&reference).await.unwrap_err();
        assert!(matches!(err, OciError::Unauthorized { .. }), "{err:?}");
    }
}
