//! A process killed (SIGKILL) in the middle of an import leaves the store
//! consistent: on reopen no half package is visible, `tmp/` is swept and
//! verify finds nothing wrong. The test binary re-invokes itself as the
//! child with `GRAVITY_PACK_CRASH_CHILD` set.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gravity_pack::image::{ImageSpec, ImportOptions, export_image, import_image};
use gravity_pack::{LocalStore, Locator, NoProgress, PackageOptions, PackageStore};

const ENV: &str = "GRAVITY_PACK_CRASH_CHILD";

/// The child: commits one package, then imports an image (or streams a
/// package that never ends) until it is killed.
#[test]
fn crash_child() {
    let Ok(spec) = std::env::var(ENV) else { return };
    let (mode, dir) = spec.split_once(':').unwrap();
    let dir = PathBuf::from(dir);
    let store = LocalStore::open(dir.join("store")).unwrap();
    store
        .create(
            &Locator::parse("example.com/committed:1.0.0").unwrap(),
            &mut &b"done"[..],
            PackageOptions::default(),
        )
        .unwrap();
    std::fs::write(dir.join("ready"), b"").unwrap();
    match mode {
        "image" => {
            import_image(
                &store,
                &dir.join("image.tar"),
                ImportOptions::default(),
                &NoProgress,
            )
            .unwrap();
            std::fs::write(dir.join("finished"), b"").unwrap();
        }
        _ => {
            // An endless, slow stream: the create can never complete.
            struct Slow;
            impl std::io::Read for Slow {
                fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                    std::thread::sleep(Duration::from_millis(2));
                    let n = buf.len().min(64 * 1024);
                    buf[..n].fill(7);
                    Ok(n)
                }
            }
            let _ = store.create(
                &Locator::parse("example.com/never:1.0.0").unwrap(),
                &mut Slow,
                PackageOptions::default(),
            );
        }
    }
}

fn tmp_files(store: &Path) -> usize {
    std::fs::read_dir(store.join("tmp"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn run_and_kill(mode: &str, dir: &Path, min_tmp: usize) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(ENV, format!("{mode}:{}", dir.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let store = dir.join("store");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "child never got mid-import");
        assert!(
            !dir.join("finished").exists(),
            "the import finished before it could be killed"
        );
        if dir.join("ready").exists() && tmp_files(&store) >= min_tmp {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("child exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        tmp_files(&store) >= min_tmp,
        "the kill left partial files behind"
    );
    let s = LocalStore::open(&store).unwrap();
    assert_eq!(tmp_files(&store), 0, "tmp swept on open");
    let listed: Vec<String> = s
        .list(None)
        .unwrap()
        .iter()
        .map(|e| e.locator.to_string())
        .collect();
    assert_eq!(
        listed,
        vec!["example.com/committed:1.0.0".to_string()],
        "no half package visible"
    );
    let report = s.verify(&NoProgress).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    s.gc().unwrap();
    assert_eq!(s.blobs().list().unwrap().len(), 1);
}

#[test]
fn kill_during_package_import() {
    if std::env::var(ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    run_and_kill("stream", dir.path(), 1);
}

#[test]
fn kill_during_image_import() {
    if std::env::var(ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // An image of 40 blobs of 2 MiB: staged blobs stay in tmp/ until the
    // whole image is verified, so 3 files there means "mid-import".
    let build = LocalStore::open(dir.path().join("build")).unwrap();
    let mut locs = Vec::new();
    for i in 0..40 {
        let l = Locator::parse(&format!("gravitational.io/pkg{i}:1.0.0")).unwrap();
        build
            .create(
                &l,
                &mut common::content(&l.to_string(), 2 << 20).as_slice(),
                PackageOptions::default(),
            )
            .unwrap();
        locs.push(l);
    }
    let spec = ImageSpec {
        application: locs[0].clone(),
        packages: locs,
        compress: false,
    };
    export_image(&build, &spec, &dir.path().join("image.tar"), &NoProgress).unwrap();
    drop(build);
    run_and_kill("image", dir.path(), 3);
}
