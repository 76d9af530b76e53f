//! Cluster image import refuses hostile archives and leaves the store as it
//! was: no package, no blob, no temporary file, nothing outside the store.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;

use gravity_pack::image::{
    ImageSpec, ImportOptions, MANIFEST_NAME, export_image, import_image, read_manifest,
};
use gravity_pack::{
    Digest, ImageError, LocalStore, Locator, NoProgress, PackError, PackageOptions, PackageStore,
};

struct Raw<'a> {
    name: &'a [u8],
    kind: tar::EntryType,
    data: &'a [u8],
    size: Option<u64>,
    link: &'a [u8],
}

fn entry<'a>(name: &'a str, data: &'a [u8]) -> Raw<'a> {
    Raw {
        name: name.as_bytes(),
        kind: tar::EntryType::Regular,
        data,
        size: None,
        link: b"",
    }
}

/// Writes a tar with raw headers (no path sanitising, unlike tar::Builder).
fn raw_tar(entries: &[Raw<'_>], end: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..e.name.len()].copy_from_slice(e.name);
        h.as_old_mut().linkname[..e.link.len()].copy_from_slice(e.link);
        h.set_mode(0o644);
        h.set_entry_type(e.kind);
        h.set_size(e.size.unwrap_or(e.data.len() as u64));
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(e.data);
        let pad = (512 - e.data.len() % 512) % 512;
        out.extend(std::iter::repeat_n(0u8, pad));
    }
    if end {
        out.extend(std::iter::repeat_n(0u8, 1024));
    }
    out
}

struct Fixture {
    dir: tempfile::TempDir,
    manifest_json: Vec<u8>,
    blobs: Vec<(String, Vec<u8>)>,
    valid: Vec<u8>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let build = LocalStore::open(dir.path().join("build")).unwrap();
    let app = Locator::parse("gravitational.io/telekube:5.5.50-dev.9").unwrap();
    let dep = Locator::parse("gravitational.io/planet:5.5.54-11312").unwrap();
    let a = common::content("telekube", 70_000);
    let b = common::content("planet", 3_000);
    build
        .create(&app, &mut a.as_slice(), PackageOptions::default())
        .unwrap();
    build
        .create(&dep, &mut b.as_slice(), PackageOptions::default())
        .unwrap();
    let img = dir.path().join("valid.tar");
    let spec = ImageSpec {
        application: app,
        packages: vec![dep],
        compress: false,
    };
    export_image(&build, &spec, &img, &NoProgress).unwrap();
    let manifest = read_manifest(&img).unwrap();
    let manifest_json = serde_json::to_vec(&manifest).unwrap();
    let path = |d: &Digest| format!("packages/blobs/{}/{}", &d.to_hex()[..3], d);
    let blobs = vec![(path(&Digest::of(&a)), a), (path(&Digest::of(&b)), b)];
    let valid = fs::read(&img).unwrap();
    drop(build);
    Fixture {
        dir,
        manifest_json,
        blobs,
        valid,
    }
}

fn assert_refused(f: &Fixture, bytes: &[u8], check: impl Fn(&ImageError) -> bool) {
    let path = f.dir.path().join("hostile.tar");
    fs::write(&path, bytes).unwrap();
    let store_dir = f.dir.path().join("target");
    let store = LocalStore::open(&store_dir).unwrap();
    let e = import_image(&store, &path, ImportOptions::default(), &NoProgress).unwrap_err();
    match &e {
        PackError::Image(ie) => assert!(check(ie), "unexpected refusal: {e}"),
        other => panic!("expected an image error, got {other:?}"),
    }
    assert!(store.list(None).unwrap().is_empty(), "no package visible");
    assert!(store.blobs().list().unwrap().is_empty(), "no blob left");
    assert_eq!(
        fs::read_dir(store_dir.join("tmp")).unwrap().count(),
        0,
        "tmp is clean"
    );
    for outside in ["evil", "evil.sh", "etc"] {
        assert!(!f.dir.path().join(outside).exists());
        assert!(!Path::new("/tmp/gravity-pack-evil").exists());
    }
}

#[test]
fn the_valid_image_imports() {
    let f = fixture();
    let path = f.dir.path().join("ok.tar");
    fs::write(
        &path,
        raw_tar(
            &[
                entry(MANIFEST_NAME, &f.manifest_json),
                entry(&f.blobs[0].0, &f.blobs[0].1),
                entry(&f.blobs[1].0, &f.blobs[1].1),
            ],
            true,
        ),
    )
    .unwrap();
    let store = LocalStore::open(f.dir.path().join("target")).unwrap();
    let r = import_image(&store, &path, ImportOptions::default(), &NoProgress).unwrap();
    assert_eq!(r.blobs_transferred, 2);
    assert_eq!(store.list(None).unwrap().len(), 2);
    // Importing the exported image (with directory entries) works too.
    fs::write(&path, &f.valid).unwrap();
    let r = import_image(&store, &path, ImportOptions::default(), &NoProgress).unwrap();
    assert_eq!((r.blobs_transferred, r.blobs_present), (0, 2));
}

#[test]
fn absolute_paths_are_refused() {
    let f = fixture();
    let t = raw_tar(
        &[
            entry(MANIFEST_NAME, &f.manifest_json),
            entry("/tmp/gravity-pack-evil", b"x"),
        ],
        true,
    );
    assert_refused(&f, &t, |e| {
        matches!(
            e,
            ImageError::UnsafePath {
                reason: "absolute path",
                ..
            }
        )
    });
}

#[test]
fn dot_dot_is_refused() {
    let f = fixture();
    let t = raw_tar(
        &[
            entry(MANIFEST_NAME, &f.manifest_json),
            entry("packages/../../evil", b"x"),
        ],
        true,
    );
    assert_refused(&f, &t, |e| matches!(e, ImageError::UnsafePath { .. }));
    let t = raw_tar(&[entry("../evil", b"x")], true);
    assert_refused(&f, &t, |e| matches!(e, ImageError::UnsafePath { .. }));
}

#[test]
fn links_and_devices_are_refused() {
    let f = fixture();
    for (kind, word) in [
        (tar::EntryType::Symlink, "symbolic link"),
        (tar::EntryType::Link, "hard link"),
        (tar::EntryType::Char, "character device"),
        (tar::EntryType::Block, "block device"),
        (tar::EntryType::Fifo, "FIFO"),
    ] {
        let t = raw_tar(
            &[
                entry(MANIFEST_NAME, &f.manifest_json),
                Raw {
                    name: f.blobs[0].0.as_bytes(),
                    kind,
                    data: b"",
                    size: None,
                    link: b"/etc/passwd",
                },
            ],
            true,
        );
        assert_refused(
            &f,
            &t,
            |e| matches!(e, ImageError::ForbiddenEntry { kind, .. } if kind == word),
        );
    }
}

#[test]
fn unlisted_entries_are_refused() {
    let f = fixture();
    let t = raw_tar(
        &[
            entry(MANIFEST_NAME, &f.manifest_json),
            entry(&f.blobs[0].0, &f.blobs[0].1),
            entry("evil.sh", b"#!/bin/sh\nrm -rf /\n"),
            entry(&f.blobs[1].0, &f.blobs[1].1),
        ],
        true,
    );
    assert_refused(
        &f,
        &t,
        |e| matches!(e, ImageError::Unlisted { path } if path == "evil.sh"),
    );
    let fake = format!("packages/blobs/000/{}", "0".repeat(64));
    let t = raw_tar(
        &[entry(MANIFEST_NAME, &f.manifest_json), entry(&fake, b"")],
        true,
    );
    assert_refused(&f, &t, |e| matches!(e, ImageError::Unlisted { .. }));
}

#[test]
fn duplicate_entries_are_refused() {
    let f = fixture();
    let t = raw_tar(
        &[
            entry(MANIFEST_NAME, &f.manifest_json),
            entry(&f.blobs[0].0, &f.blobs[0].1),
            entry(&f.blobs[0].0, &f.blobs[0].1),
        ],
        true,
    );
    assert_refused(&f, &t, |e| matches!(e, ImageError::Duplicate { .. }));
}

#[test]
fn a_manifest_pointing_to_a_missing_blob_is_refused() {
    let f = fixture();
    let t = raw_tar(
        &[
            entry(MANIFEST_NAME, &f.manifest_json),
            entry(&f.blobs[0].0, &f.blobs[0].1),
        ],
        true,
    );
    assert_refused(&f, &t, |e| matches!(e, ImageError::MissingBlob { .. }));
}

#[test]
fn blob_content_must_match_its_name() {
    let f = fixture();
    let mut bad = f.blobs[0].1.clone();
    bad[10] ^= 0xff;
    let t = raw_tar(
        &[
            entry(MANIFEST_NAME, &f.manifest_json),
            entry(&f.blobs[0].0, &bad),
            entry(&f.blobs[1].0, &f.blobs[1].1),
        ],
        true,
    );
    assert_refused(&f, &t, |e| matches!(e, ImageError::BlobMismatch { .. }));
    // A size that disagrees with the manifest.
    let t = raw_tar(
        &[
            entry(MANIFEST_NAME, &f.manifest_json),
            entry(&f.blobs[0].0, &bad[..100]),
        ],
        true,
    );
    assert_refused(&f, &t, |e| matches!(e, ImageError::BlobMismatch { .. }));
}

#[test]
fn truncated_archives_are_refused() {
    let f = fixture();
    // Cut in the middle of the first (large) blob.
    let cut = f.valid.len() / 2;
    assert_refused(&f, &f.valid[..cut], |e| {
        matches!(e, ImageError::Truncated { .. })
    });
    // Cut in the middle of a header.
    let t = raw_tar(
        &[
            entry(MANIFEST_NAME, &f.manifest_json),
            entry(&f.blobs[1].0, &f.blobs[1].1),
        ],
        false,
    );
    let mut t2 = t.clone();
    let mut h = tar::Header::new_gnu();
    h.set_path("x").unwrap();
    t2.extend_from_slice(&h.as_bytes()[..200]);
    assert_refused(&f, &t2, |e| matches!(e, ImageError::Truncated { .. }));
    // Gzip-compressed and cut.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&f.valid).unwrap();
    let gz = gz.finish().unwrap();
    assert_refused(&f, &gz[..gz.len() * 2 / 3], |e| {
        matches!(e, ImageError::Truncated { .. })
    });
}

#[test]
fn size_fields_larger_than_the_data_are_refused() {
    let f = fixture();
    let (name, data) = &f.blobs[1];
    // The header claims the manifest's size but the data stops early.
    let mut t = raw_tar(&[entry(MANIFEST_NAME, &f.manifest_json)], false);
    let mut h = tar::Header::new_gnu();
    h.set_path(name).unwrap();
    h.set_size(data.len() as u64);
    h.set_cksum();
    t.extend_from_slice(h.as_bytes());
    t.extend_from_slice(&data[..1000]);
    assert_refused(&f, &t, |e| matches!(e, ImageError::Truncated { .. }));
    // The same through gzip (no seeking possible).
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&t).unwrap();
    assert_refused(&f, &gz.finish().unwrap(), |e| {
        matches!(e, ImageError::Truncated { .. })
    });
    // A manifest entry whose size exceeds the data.
    let mut t = Vec::new();
    let mut h = tar::Header::new_gnu();
    h.set_path(MANIFEST_NAME).unwrap();
    h.set_size(f.manifest_json.len() as u64 + 10_000);
    h.set_cksum();
    t.extend_from_slice(h.as_bytes());
    t.extend_from_slice(&f.manifest_json);
    assert_refused(&f, &t, |e| matches!(e, ImageError::Truncated { .. }));
}

#[test]
fn the_manifest_must_come_first_and_parse() {
    let f = fixture();
    let t = raw_tar(
        &[
            entry(&f.blobs[1].0, &f.blobs[1].1),
            entry(MANIFEST_NAME, &f.manifest_json),
        ],
        true,
    );
    assert_refused(&f, &t, |e| matches!(e, ImageError::BadManifest(_)));
    let t = raw_tar(&[entry(MANIFEST_NAME, b"{not json")], true);
    assert_refused(&f, &t, |e| matches!(e, ImageError::BadManifest(_)));
    assert_refused(&f, &[], |e| matches!(e, ImageError::BadManifest(_)));
}

#[test]
fn gzip_images_import() {
    let f = fixture();
    let dir = f.dir.path();
    let build = LocalStore::open(dir.join("build")).unwrap();
    let app = Locator::parse("gravitational.io/telekube:5.5.50-dev.9").unwrap();
    let img = dir.join("gz.tar.gz");
    export_image(
        &build,
        &ImageSpec {
            application: app,
            packages: vec![],
            compress: true,
        },
        &img,
        &NoProgress,
    )
    .unwrap();
    assert_eq!(&fs::read(&img).unwrap()[..2], &[0x1f, 0x8b]);
    let store = LocalStore::open(dir.join("target")).unwrap();
    let r = import_image(&store, &img, ImportOptions::default(), &NoProgress).unwrap();
    assert_eq!(r.packages.len(), 1);
    assert_eq!(store.list(None).unwrap().len(), 1);
    assert!(store.verify(&NoProgress).unwrap().is_ok());
}
