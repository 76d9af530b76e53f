//! Benches of the package store: ingest throughput, upload of an image whose
//! blobs are all present, listing and latest-version lookups.
//!
//! Compare `ingest_64MiB` with `openssl dgst -sha256` on a file of the same
//! size on the same machine (the target is >= 80% of it).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gravity::pack::image::{ImageSpec, ImportOptions, export_image, import_image};
use gravity::pack::{LocalStore, Locator, NoProgress, PackageOptions, PackageStore};

fn content(seed: u64, size: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn ingest(c: &mut Criterion) {
    let data = content(1, 64 << 20);
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.bench_function("ingest_64MiB", |b| {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::open(dir.path()).unwrap();
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            let l = Locator::parse(&format!("bench.io/p:1.0.{i}")).unwrap();
            let mut d = data.clone();
            d[0] = i as u8;
            d[1] = (i >> 8) as u8;
            s.create(&l, &mut d.as_slice(), PackageOptions::default())
                .unwrap();
        });
    });
    g.finish();
}

fn upload_present(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let build = LocalStore::open(dir.path().join("build")).unwrap();
    let mut locs = Vec::new();
    for i in 0..32 {
        let l = Locator::parse(&format!("gravitational.io/p{i}:1.0.0")).unwrap();
        build
            .create(
                &l,
                &mut content(i, 4 << 20).as_slice(),
                PackageOptions::default(),
            )
            .unwrap();
        locs.push(l);
    }
    let img = dir.path().join("image.tar");
    let spec = ImageSpec {
        application: locs[0].clone(),
        packages: locs,
        compress: false,
    };
    export_image(&build, &spec, &img, &NoProgress).unwrap();
    let cluster = LocalStore::open(dir.path().join("cluster")).unwrap();
    import_image(&cluster, &img, ImportOptions::default(), &NoProgress).unwrap();
    c.bench_function("upload_128MiB_image_all_present", |b| {
        b.iter(|| {
            let r = import_image(&cluster, &img, ImportOptions::default(), &NoProgress).unwrap();
            assert_eq!(r.blobs_transferred, 0);
        })
    });
}

fn index(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStore::open(dir.path()).unwrap();
    // 100,000 packages (10,000 versions of one name plus 90,000 others)
    // sharing one blob, written in one transaction.
    let first = Locator::parse("gravitational.io/planet:0.0.1").unwrap();
    let base = s
        .create(&first, &mut &b"x"[..], PackageOptions::default())
        .unwrap();
    let envs: Vec<_> = (0..100_000u32)
        .map(|i| {
            let locator = if i < 10_000 {
                Locator::parse(&format!(
                    "gravitational.io/planet:5.{}.{}-{}",
                    i / 100,
                    i % 100,
                    i
                ))
                .unwrap()
            } else {
                Locator::parse(&format!("repo{}.io/pkg{}:1.0.{}", i % 7, i % 1000, i)).unwrap()
            };
            gravity::pack::Envelope {
                locator,
                ..base.clone()
            }
        })
        .collect();
    let refs: Vec<_> = envs.iter().collect();
    s.put_batch(&refs, gravity::pack::WriteMode::Create)
        .unwrap();
    c.bench_function("list_100k_packages", |b| {
        b.iter(|| black_box(s.list(None).unwrap().len()))
    });
    c.bench_function("latest_among_10k_versions", |b| {
        b.iter(|| black_box(s.latest("gravitational.io", "planet").unwrap()))
    });
}

criterion_group!(benches, ingest, upload_present, index);
criterion_main!(benches);
