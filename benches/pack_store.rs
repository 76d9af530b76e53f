//! Benches of the package store: ingest of a 1 GiB package next to plain
//! sha256 hashing of the same file, verified read, a pull where 90% of the
//! blobs are present, upload of an image whose blobs are all present,
//! listing and latest-version lookups.
//!
//! Sizes can be changed with `GRAVITY_BENCH_INGEST_MIB` (default 1024).
//! `ingest_*_tmpfs` runs the same ingest into a store on `/dev/shm`: the
//! store's own cost without the disk's.

use std::hint::black_box;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gravity::pack::image::{ImageSpec, ImportOptions, export_image, import_image};
use gravity::pack::{
    LocalStore, Locator, NoProgress, PackageOptions, PackageStore, PullOptions, pull,
};
use sha2::{Digest as _, Sha256};

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

/// Writes `mib` MiB of pseudo-random bytes to `path`, 1 MiB at a time.
fn write_file(path: &Path, mib: usize) {
    let mut f = std::fs::File::create(path).unwrap();
    for i in 0..mib {
        f.write_all(&content(i as u64 + 1, 1 << 20)).unwrap();
    }
    f.sync_all().unwrap();
}

fn ingest(c: &mut Criterion) {
    let mib: usize = std::env::var("GRAVITY_BENCH_INGEST_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("package.bin");
    write_file(&file, mib);
    let bytes = (mib as u64) << 20;
    eprintln!("ingest: package of {mib} MiB");

    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Bytes(bytes));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    // The reference: sha256 of the same file, read the same way.
    g.bench_function(format!("sha256_{mib}MiB"), |b| {
        b.iter(|| {
            let mut h = Sha256::new();
            let mut f = std::fs::File::open(&file).unwrap();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            black_box(h.finalize())
        })
    });
    let store = LocalStore::open(dir.path().join("store")).unwrap();
    // Durable ingest (hash, write, fsync, index commit) of `iters` packages
    // into `store`; each package is deleted again outside the timed part.
    let mut i = 0u64;
    let mut timed_ingest = |store: &LocalStore, iters: u64| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            i += 1;
            let l = Locator::parse(&format!("bench.io/p:1.0.{i}")).unwrap();
            let mut f = std::fs::File::open(&file).unwrap();
            let t = Instant::now();
            store.create(&l, &mut f, PackageOptions::default()).unwrap();
            total += t.elapsed();
            store.delete(&l).unwrap();
            store.gc().unwrap();
        }
        total
    };
    g.bench_function(format!("ingest_{mib}MiB"), |b| {
        b.iter_custom(|iters| timed_ingest(&store, iters))
    });
    // The same on a memory file system (where `fsync` costs nothing): the
    // store's own cost of hashing, copying and committing, without the
    // disk, to compare with the hashing reference.
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        let mem_dir = tempfile::tempdir_in(shm).unwrap();
        let mem_store = LocalStore::open(mem_dir.path().join("store")).unwrap();
        g.bench_function(format!("ingest_{mib}MiB_tmpfs"), |b| {
            b.iter_custom(|iters| timed_ingest(&mem_store, iters))
        });
    }
    let kept = Locator::parse("bench.io/p:2.0.0").unwrap();
    store
        .create(
            &kept,
            &mut std::fs::File::open(&file).unwrap(),
            PackageOptions::default(),
        )
        .unwrap();
    g.bench_function(format!("read_verified_{mib}MiB"), |b| {
        b.iter(|| {
            let (_, mut r) = store.read(&kept).unwrap();
            black_box(std::io::copy(&mut r, &mut std::io::sink()).unwrap())
        })
    });
    g.finish();
}

fn pull_mostly_present(c: &mut Criterion) {
    // 100 packages of 1 MiB; the destination has 90 of the blobs.
    let dir = tempfile::tempdir().unwrap();
    let src = LocalStore::open(dir.path().join("src")).unwrap();
    let mut locs = Vec::new();
    for i in 0..100u64 {
        let l = Locator::parse(&format!("gravitational.io/p{i}:1.0.0")).unwrap();
        src.create(
            &l,
            &mut content(i + 1, 1 << 20).as_slice(),
            PackageOptions::default(),
        )
        .unwrap();
        locs.push(l);
    }
    let mut g = c.benchmark_group("pull");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(10 << 20));
    let mut round = 0u32;
    g.bench_function("pull_100_packages_90pct_present", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                round += 1;
                let dst_dir = dir.path().join(format!("dst{round}"));
                let dst = LocalStore::open(&dst_dir).unwrap();
                // The same blobs under other names: content present, packages not.
                for (i, l) in locs.iter().enumerate().take(90) {
                    let other = Locator::parse(&format!("other.io/{}:9.9.9", l.name())).unwrap();
                    dst.create(
                        &other,
                        &mut content(i as u64 + 1, 1 << 20).as_slice(),
                        PackageOptions::default(),
                    )
                    .unwrap();
                }
                let t = Instant::now();
                let r = pull(&src, &dst, &locs, &PullOptions::default(), &NoProgress).unwrap();
                total += t.elapsed();
                assert_eq!(r.bytes_transferred(), 10 << 20);
                drop(dst);
                std::fs::remove_dir_all(&dst_dir).unwrap();
            }
            total
        })
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

criterion_group!(benches, ingest, pull_mostly_present, upload_present, index);
criterion_main!(benches);
