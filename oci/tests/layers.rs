//! Layer handling against real files: hostile layers are refused without
//! writing outside the store, whiteouts work under a real overlayfs mount,
//! gzip/zstd/plain layers unpack, layout import (dir and tar), and GC.
//! Runs as root (whiteouts are device nodes, opaque dirs use trusted xattrs).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use outpost_oci::build::{reproducible_tar, Entry, Layer};
use outpost_oci::{ImageStore, OciError};
use outpost_protocol::{Digest, Platform};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

const BUDGET: u64 = 1 << 30;

fn platform() -> Platform {
    Platform {
        architecture: "amd64".into(),
        variant: None,
    }
}

/// A layout holding one image made of `tar` as a gzip layer.
fn layout_with_raw_layer(dir: &Path, tar: Vec<u8>) -> Digest {
    let desc = single_image_layout(dir, &[Layer::gzip(&tar).unwrap()]);
    desc.digest.parse().unwrap()
}

fn hostile_tar(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    b.into_inner().unwrap()
}

/// Everything under `dir`, as relative paths.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if p.symlink_metadata().unwrap().is_dir() {
                walk(base, &p, out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn hostile_layers_are_refused_and_nothing_is_written_outside_the_store() {
    let work = tempfile::tempdir().unwrap();
    // The store lives two levels below `work`, so `../../x` from a layer dir's
    // temp location would land inside `work`, where we look for it.
    let store_dir = work.path().join("a/store");
    let outside = work.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let outside_s = outside.display().to_string();

    type Case = (
        &'static str,
        Box<dyn Fn(&mut tar::Builder<Vec<u8>>)>,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "dot-dot entry",
            Box::new(|b| {
                raw_entry(
                    b,
                    "../../../../../outside/pwned",
                    tar::EntryType::Regular,
                    None,
                    b"x",
                )
            }),
            "'..'",
        ),
        (
            "absolute entry",
            Box::new(move |b| {
                raw_entry(
                    b,
                    "/tmp/outpost-test-absolute-pwned",
                    tar::EntryType::Regular,
                    None,
                    b"x",
                )
            }),
            "absolute",
        ),
        (
            "symlink escape",
            Box::new(|b| {
                raw_entry(
                    b,
                    "esc",
                    tar::EntryType::Symlink,
                    Some("../../../../../outside"),
                    b"",
                )
            }),
            "points outside",
        ),
        (
            "write through a symlinked parent",
            Box::new({
                let target = outside_s.clone();
                move |b| {
                    // An absolute symlink is allowed (it resolves inside the
                    // container), but writing *through* it must be refused.
                    raw_entry(b, "lib", tar::EntryType::Symlink, Some(&target), b"");
                    raw_entry(b, "lib/pwned", tar::EntryType::Regular, None, b"x");
                }
            }),
            "symlink or not a directory",
        ),
        (
            "hardlink escape",
            Box::new(|b| {
                raw_entry(
                    b,
                    "hl",
                    tar::EntryType::Link,
                    Some("../../../../outside/f"),
                    b"",
                )
            }),
            "hardlink",
        ),
        (
            "whiteout of ..",
            Box::new(|b| raw_entry(b, "d/.wh...", tar::EntryType::Regular, None, b"")),
            "whiteout",
        ),
    ];

    for (name, build, expected) in cases {
        let layout = tempfile::tempdir().unwrap();
        let image = layout_with_raw_layer(layout.path(), hostile_tar(|b| build(b)));
        let store = ImageStore::open(&store_dir, BUDGET).unwrap();
        store.import_layout(layout.path()).unwrap();
        let err = store.prepare(&image, &platform()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, OciError::Layer { .. }), "{name}: {err:?}");
        assert!(msg.contains(expected), "{name}: {msg}");
        println!("{name}: refused with: {msg}");
        // Nothing outside, no published layer, no leftovers.
        assert!(
            tree(&outside).is_empty(),
            "{name}: wrote {:?}",
            tree(&outside)
        );
        assert!(!Path::new("/tmp/outpost-test-absolute-pwned").exists());
        assert_eq!(
            tree(&work.path().join("a"))
                .iter()
                .filter(|p| p.starts_with("store/layers/"))
                .count(),
            0,
            "{name}"
        );
        assert!(
            tree(&store_dir.join("tmp")).is_empty(),
            "{name}: {:?}",
            tree(&store_dir.join("tmp"))
        );
        let top: Vec<_> = tree(work.path())
            .into_iter()
            .filter(|p| !p.contains('/'))
            .collect();
        assert_eq!(top, vec!["a", "outside"], "{name}");
    }
}

#[test]
fn a_blob_that_does_not_match_its_digest_is_refused_on_import() {
    let layout = tempfile::tempdir().unwrap();
    let layer = layer_of(&[file("app", b"real")]);
    let layer_digest = Digest::of(&layer.blob);
    single_image_layout(layout.path(), &[layer]);
    let blob = layout.path().join("blobs/sha256").join(layer_digest.hex());
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path(), BUDGET).unwrap();
    let err = store.import_layout(layout.path()).unwrap_err();
    assert!(matches!(err, OciError::DigestMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&layer_digest.to_string()) && msg.contains(&blob.display().to_string()),
        "{msg}"
    );
    assert!(!store.blobs().contains(&layer_digest));
    assert!(tree(&dir.path().join("tmp")).is_empty());
}

#[test]
fn whiteouts_and_opaque_dirs_hide_lower_files_under_a_real_overlay_mount() {
    let layout = tempfile::tempdir().unwrap();
    let lower = layer_of(&[
        file("a/x", b"deleted"),
        file("a/y", b"kept"),
        file("d/old", b"hidden by opaque"),
    ]);
    let upper_tar = hostile_tar(|b| {
        raw_entry(b, "a/.wh.x", tar::EntryType::Regular, None, b"");
        raw_entry(b, "d/", tar::EntryType::Directory, None, b"");
        raw_entry(b, "d/.wh..wh..opq", tar::EntryType::Regular, None, b"");
        raw_entry(b, "d/new", tar::EntryType::Regular, None, b"new");
    });
    let image = single_image_layout(layout.path(), &[lower, Layer::zstd(&upper_tar)]);
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path(), BUDGET).unwrap();
    store.import_layout(layout.path()).unwrap();
    let prepared = store
        .prepare(&image.digest.parse().unwrap(), &platform())
        .unwrap();
    assert_eq!(prepared.layers.len(), 2);
    let up = &prepared.layers[1];

    let wh = std::fs::symlink_metadata(up.join("a/x")).unwrap();
    assert!(wh.file_type().is_char_device());
    use std::os::unix::fs::MetadataExt;
    assert_eq!(wh.rdev(), 0);
    let mut buf = [0u8; 8];
    let n = rustix::fs::lgetxattr(up.join("d"), "trusted.overlay.opaque", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"y");

    // The real test: what a container would see.
    let mnt = tempfile::tempdir().unwrap();
    let lowerdirs = format!(
        "{}:{}",
        prepared.layers[1].display(),
        prepared.layers[0].display()
    );
    let status = std::process::Command::new("mount")
        .args([
            "-t",
            "overlay",
            "overlay",
            "-o",
            &format!("lowerdir={lowerdirs}"),
        ])
        .arg(mnt.path())
        .status()
        .unwrap();
    assert!(status.success(), "overlay mount failed");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(mnt.path());
    let m = mnt.path();
    assert!(!m.join("a/x").exists(), "whiteout not honoured");
    assert_eq!(std::fs::read(m.join("a/y")).unwrap(), b"kept");
    assert!(!m.join("d/old").exists(), "opaque dir not honoured");
    assert_eq!(std::fs::read(m.join("d/new")).unwrap(), b"new");
}

#[test]
fn gzip_zstd_and_plain_layers_all_unpack_with_modes_and_symlinks() {
    let layout = tempfile::tempdir().unwrap();
    let entries = |tag: &str| {
        vec![
            Entry::File {
                path: format!("bin/{tag}"),
                mode: 0o755,
                contents: tag.as_bytes().to_vec(),
            },
            Entry::Symlink {
                path: format!("bin/{tag}-link"),
                target: format!("/bin/{tag}"),
            },
        ]
    };
    let layers = vec![
        Layer::gzip(&reproducible_tar(&entries("gz")).unwrap()).unwrap(),
        Layer::zstd(&reproducible_tar(&entries("zst")).unwrap()),
        Layer::plain(reproducible_tar(&entries("tar")).unwrap()),
    ];
    let image = single_image_layout(layout.path(), &layers);
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path(), BUDGET).unwrap();
    store.import_layout(layout.path()).unwrap();
    let prepared = store
        .prepare(&image.digest.parse().unwrap(), &platform())
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    for (layer, tag) in prepared.layers.iter().zip(["gz", "zst", "tar"]) {
        let f = layer.join("bin").join(tag);
        assert_eq!(std::fs::read(&f).unwrap(), tag.as_bytes());
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o755
        );
        let link = std::fs::read_link(layer.join(format!("bin/{tag}-link"))).unwrap();
        assert_eq!(link, Path::new(&format!("/bin/{tag}")));
    }
    assert_eq!(prepared.config.entrypoint, vec!["/app"]);
}

#[test]
fn a_layout_tar_imports_like_the_directory() {
    let layout = tempfile::tempdir().unwrap();
    let image = single_image_layout(layout.path(), &[layer_of(&[file("app", b"x")])]);
    let tar_path = layout.path().with_extension("tar");
    {
        let f = std::fs::File::create(&tar_path).unwrap();
        let mut b = tar::Builder::new(f);
        b.append_dir_all(".", layout.path()).unwrap();
        b.finish().unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path(), BUDGET).unwrap();
    let imported = store.import_layout(&tar_path).unwrap();
    std::fs::remove_file(&tar_path).unwrap();
    assert_eq!(imported.len(), 1);
    assert_eq!(imported[0].digest.to_string(), image.digest);
    assert_eq!(imported[0].name.as_deref(), Some("latest"));
    let prepared = store.prepare(&imported[0].digest, &platform()).unwrap();
    assert_eq!(std::fs::read(prepared.layers[0].join("app")).unwrap(), b"x");
}

#[test]
fn gc_removes_unreferenced_images_and_keeps_shared_layers() {
    let shared = layer_of(&[file("lib/shared", b"shared")]);
    let only_a = layer_of(&[file("a", b"a")]);
    let only_b = layer_of(&[file("b", b"b")]);
    let (la, lb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a: Digest = single_image_layout(la.path(), &[shared.clone(), only_a.clone()])
        .digest
        .parse()
        .unwrap();
    let b: Digest = single_image_layout(lb.path(), &[shared.clone(), only_b.clone()])
        .digest
        .parse()
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path(), BUDGET).unwrap();
    store.import_layout(la.path()).unwrap();
    store.import_layout(lb.path()).unwrap();
    let pa = store.prepare(&a, &platform()).unwrap();
    let pb = store.prepare(&b, &platform()).unwrap();
    // The shared layer is unpacked once and used by both images.
    assert_eq!(pa.layers[0], pb.layers[0]);

    let report = store.gc(&[a]).unwrap();
    println!("{report:?}");
    assert_eq!(report.removed_images, vec![b]);
    assert_eq!(report.removed_layers, 1);
    // b's manifest, config and unique layer.
    assert_eq!(report.removed_blobs, 3);
    assert!(report.freed_bytes > 0);
    assert!(!pb.layers[1].exists());
    assert!(pa.layers.iter().all(|l| l.exists()));
    assert!(!store.blobs().contains(&Digest::of(&only_b.blob)));
    assert!(store.blobs().contains(&Digest::of(&shared.blob)));
    assert_eq!(store.prepare(&a, &platform()).unwrap(), pa);
    assert!(matches!(
        store.prepare(&b, &platform()),
        Err(OciError::UnknownImage(_))
    ));

    let report = store.gc(&[]).unwrap();
    assert_eq!(report.removed_images, vec![a]);
    assert!(store.blobs().list().unwrap().is_empty());
    assert!(tree(&dir.path().join("layers")).is_empty());
}
